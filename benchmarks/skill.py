"""Skill tables of the shipped configs: run them (unless their run directory is complete), then
collect every run's skill.json into results/skill.json and write docs/results.md.

    .venv/bin/python benchmarks/skill.py                      # all shipped configs
    .venv/bin/python benchmarks/skill.py configs/us-wkg.yaml  # run some of them, collect all
    .venv/bin/python benchmarks/skill.py --collect-only       # tables from existing runs

Runs go to runs/<name>/ (see each config); an interrupted run resumes. Every shipped config is
collected: one whose run directory is absent keeps its records from the existing results/skill.json
(for the models it still lists) and the date docs/results.md gave them, so one rerun config can be
collected without rerunning the others.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ["configs/us-wkg.yaml", "configs/us-me2.yaml", "configs/multisite.yaml", "configs/loso.yaml",
           "configs/us-wkg-blocked.yaml", "configs/us-me2-blocked.yaml", "configs/test-sites.yaml",
           "configs/multisite-static.yaml", "configs/loso-static.yaml", "configs/loso-static-dpl.yaml",
           "configs/loso-static-prior.yaml", "configs/test-sites-static.yaml"]  # the *-static: benchmarks/generalisation.py
KEYS = ["site", "model", "flux", "scale", "split", "rmse", "nse", "kge", "kge_form", "bias", "bias_pct", "r", "n",
        "suspect", "config"]


def load_config(config: str):
    sys.path.insert(0, str(ROOT / "src"))
    from hybridlsm.models.registry import load_run_config

    return load_run_config(ROOT / config)


def run_dir_of(config: str) -> Path:
    cfg = load_config(config)
    return ROOT / cfg.output.run_dir / cfg.name


def previous_records(config: str) -> list[dict]:
    """``config``'s records in the existing results/skill.json, for the models it still lists."""
    path = ROOT / "results" / "skill.json"
    if not path.is_file():
        return []
    labels = {m.label for m in load_config(config).models}
    return [r for r in json.loads(path.read_text()) if r.get("config") == config and r.get("model") in labels]


def previous_made(config: str) -> str:
    """When the records of ``config`` kept from results/skill.json were made, as the existing
    docs/results.md says (its line under the config's heading, or its header's date)."""
    path = ROOT / "docs" / "results.md"
    text = path.read_text() if path.is_file() else ""
    section = re.search(rf"^## `{re.escape(config)}`\n\n(.+)$", text, re.M)
    if section and section.group(1).startswith(("Run finished", "Records kept")):
        return section.group(1)
    header = re.search(r"^Made on (\d{4}-\d{2}-\d{2})", text, re.M)
    when = f"made on {header.group(1)}" if header else "of an earlier run"
    return f"Records kept from results/skill.json ({when}; no run directory here)."


def ensure_run(config: str) -> Path:
    run_dir = run_dir_of(config)
    if not (run_dir / "skill.json").exists():
        cmd = [str(ROOT / ".venv/bin/hybridlsm"), "run", config]
        if run_dir.exists():
            cmd.append("--resume")
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True)
    return run_dir


def _fmt(x, d=2):
    return "–" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{d}f}"


def markdown(records: list[dict], commands: list[str], made: dict[str, str]) -> str:
    """The tables; ``made`` says for each config when its records were made."""
    df = pd.DataFrame(records)
    lines = [
        "# Skill of the shipped configurations",
        "",
        f"Collected on {dt.date.today().isoformat()} on {platform.machine()} ({platform.processor() or 'cpu'}), "
        "CPU only, from the runs of (each config's section says when its run finished):",
        "",
        "```",
        *commands,
        "```",
        "",
        "Scores are on held-out data only: the last 20 % of each site's record for the per-site and "
        "multi-site configs (`split = test`), every 5th week of the record for the blocked configs "
        "(`split = blocked`), the whole record of the left-out site for leave-one-site-out "
        "(`split = loso`), the whole record of a site no model trained on (`split = test_sites`). Observed fluxes count where QC <= 1. NSE and KGE (2009) are "
        "dimensionless, RMSE in W m-2, bias in % of the observed sum. Machine-readable: "
        "`results/skill.json`.",
        "",
    ]
    for config, cdf in df.groupby("config", sort=False):
        lines += [f"## `{config}`", "", made[config], ""]
        for (split, scale), sdf in cdf.groupby(["split", "scale"], sort=False):
            lines += [f"### {scale}, split = {split}", ""]
            lines += ["| site | model | Qle RMSE | Qle NSE | Qle KGE | Qle bias % | Qh RMSE | Qh NSE | Qh KGE | Qh bias % | n |",
                      "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
            for (site, model), mdf in sdf.groupby(["site", "model"], sort=True):
                row = {f: mdf[mdf.flux == f].iloc[0] for f in ("Qle", "Qh") if (mdf.flux == f).any()}
                cells = []
                for f in ("Qle", "Qh"):
                    r = row.get(f)
                    cells += ["–"] * 4 if r is None else [_fmt(r.rmse, 1), _fmt(r.nse), _fmt(r.kge), _fmt(r.bias_pct, 1)]
                n = int(row["Qle"].n) if "Qle" in row else int(row["Qh"].n)
                lines.append(f"| {site} | {model} | " + " | ".join(cells) + f" | {n} |")
            lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("configs", nargs="*", default=CONFIGS)
    ap.add_argument("--collect-only", action="store_true")
    args = ap.parse_args()
    args.configs = [Path(c).resolve().relative_to(ROOT).as_posix() if Path(c).resolve().is_relative_to(ROOT) else c
                    for c in args.configs]  # ./configs/x.yaml or an absolute path names configs/x.yaml
    unknown = sorted(set(args.configs) - set(CONFIGS))
    if unknown:
        ap.error(f"not a shipped config of the skill tables: {', '.join(unknown)} (known: {', '.join(CONFIGS)})")
    records, commands, made = [], [], {}
    # Every shipped config is collected, the ones named are run first: naming a subset must not
    # drop the other configs' records from results/skill.json and docs/results.md.
    for config in CONFIGS:
        run_dir = ensure_run(config) if config in args.configs and not args.collect_only else run_dir_of(config)
        path = run_dir / "skill.json"
        commands.append(f".venv/bin/hybridlsm run {config}")
        if not path.exists():
            kept = previous_records(config)
            print(f"{config}: no {path}; {len(kept)} records kept from results/skill.json", file=sys.stderr)
            records += kept
            made[config] = previous_made(config)
            continue
        finished = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc)
        where = run_dir.relative_to(ROOT) if run_dir.is_relative_to(ROOT) else run_dir
        made[config] = f"Run finished {finished:%Y-%m-%d %H:%M} UTC ({where})."
        for rec in json.loads(path.read_text()):
            rec["config"] = config
            records.append({k: rec.get(k) for k in KEYS})
    (ROOT / "results").mkdir(exist_ok=True)
    (ROOT / "results" / "skill.json").write_text(json.dumps(records, indent=1))
    out = ROOT / "docs" / "results.md"
    marker = "<!-- analysis: written by hand, kept by benchmarks/skill.py -->"
    analysis = out.read_text().split(marker, 1)[1] if out.exists() and marker in out.read_text() else "\n"
    out.write_text(markdown(records, commands + ["python benchmarks/skill.py --collect-only"], made) + marker + analysis)
    print(f"{len(records)} records -> results/skill.json, docs/results.md")


if __name__ == "__main__":
    main()
