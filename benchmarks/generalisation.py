"""Skill of the one-model-for-every-site hybrids (issue 12): leave-one-site-out folds (as Dask
tasks, ``hybridlsm sweep``) and the never-seen test site, against the LaD defaults and the empirical
benchmarks trained on the same sites; and in-site, the one cross-site model against the per-site
hybrids at US-Wkg and US-Me2 on the same test weeks.

    .venv/bin/python benchmarks/generalisation.py                  # run what is missing, then summarise
    .venv/bin/python benchmarks/generalisation.py --runs /tmp/r    # runs in another folder
    .venv/bin/python benchmarks/generalisation.py --loso runs/loso-static-dpl   # print one LOSO run's tables
    .venv/bin/python benchmarks/generalisation.py --loso runs/loso-static-dpl --merge  # ... and its summary

Runs ``configs/loso-static.yaml``, ``configs/loso-static-dpl.yaml`` (the same folds for the hybrids that
also learn six LaD parameters from the attributes) and ``configs/loso-static-prior.yaml`` (the same folds
with a prior on the learned parameters; the weight chosen per coupling on the folds' validation loss) with
``hybridlsm sweep``, ``configs/test-sites-static.yaml`` and
``configs/multisite-static.yaml`` with ``hybridlsm run`` into ``--runs`` (default ``runs/``) unless
their run directories are complete; the per-site hybrids' scores are read from ``results/skill.json``
(``configs/us-wkg.yaml``, ``configs/us-me2.yaml``; ``benchmarks/skill.py``). It
then writes ``results/generalisation.json`` (per model: ``sites_positive_nse_qle``,
``sites_beating_best_empirical_qle``, ``median_loso_nse_qle``, ``median_loso_nse_qh``) and the block
between ``<!-- generalisation:begin -->`` and ``<!-- generalisation:end -->`` of ``docs/results.md``:
the LOSO, test-site and in-site tables (half-hourly NSE and RMSE) and where each training stopped.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd

from docblock import replace_block  # benchmarks/docblock.py

ROOT = Path(__file__).resolve().parents[1]
LOSO, TEST_SITES, MULTISITE = "configs/loso-static.yaml", "configs/test-sites-static.yaml", "configs/multisite-static.yaml"
LOSO_PRIOR = "configs/loso-static-prior.yaml"  # the same folds with a prior on the learned multipliers
LOSO_DPL = "configs/loso-static-dpl.yaml"  # the same folds for the `_dpl` variants (VARIANTS)
PER_SITE = {"US-Wkg": "configs/us-wkg.yaml", "US-Me2": "configs/us-me2.yaml"}  # their per-site hybrids
COUPLINGS = ("hybrid_param", "hybrid_flux", "hybrid_lstm")  # X_static is the cross-site form of X
ENSEMBLE = "hybrid_ensemble_static"  # the three static couplings' mean (a multi-model ensemble)
#: the multi-model ensembles of the in-site table: label (before the variant suffix) -> row name
ENSEMBLES = {ENSEMBLE: "ensemble of the three",
             "hybrid_stacked_static": "the three stacked on validation (weights: validation)",
             "hybrid_seeds_static": "the three, three initialisations each (9 members, equal weights)"}
#: label suffixes of the cross-site variants in MULTISITE: "" attributes as inputs; "_dpl" the networks also
#: set six LaD parameters per site from its attributes (``static_parameters``)
DPL_PARAMETERS = "albedo, kB_inv, soil_thermal_conductivity, root_zone_capacity, beta_threshold, deep_root_fraction"
VARIANTS = {"": "static attributes as inputs",
            "_dpl": f"static attributes as inputs, and six LaD parameters set from them (`static_parameters`: "
                    f"{DPL_PARAMETERS})"}
EMPIRICAL = ("1lin", "2lin", "3km27", "gbm")
BEGIN, END = "<!-- generalisation:begin -->", "<!-- generalisation:end -->"


def ensure(config: str, runs: Path, sweep: bool) -> Path:
    import yaml

    name = yaml.safe_load((ROOT / config).read_text())["name"]
    run_dir = runs / name
    if not (run_dir / "metrics.csv").is_file():
        cmd = [str(ROOT / ".venv/bin/hybridlsm"), "sweep" if sweep else "run", config, "--run-dir", str(runs)]
        if (runs / f".{name}.partial").exists():
            cmd.append("--resume")
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True)
    return run_dir


def halfhourly(run_dir: Path) -> pd.DataFrame:
    if not (run_dir / "metrics.csv").is_file():
        raise SystemExit(f"{run_dir}: no metrics.csv; expected a finished run directory (hybridlsm run/sweep)")
    m = pd.read_csv(run_dir / "metrics.csv")
    return m[m["scale"] == "halfhourly"]


def merge_runs(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Metrics of several runs over the same folds, each model once (the first run that has it: the
    reference models, trained identically in each, are not repeated)."""
    seen: set = set()
    out = []
    for df in frames:
        out.append(df[~df["model"].isin(seen)])
        seen |= set(df["model"])
    return pd.concat(out, ignore_index=True)


def site_nse(loso: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """NSE per (site, model) and flux, and per site the best empirical model's Qle NSE."""
    nse = loso.pivot_table(index=["site", "model"], columns="flux", values="nse")
    return nse, nse.reset_index().query("model in @EMPIRICAL").groupby("site")["Qle"].max()


def summary(loso: pd.DataFrame) -> dict:
    nse, best_empirical = site_nse(loso)
    out = {}
    for model in sorted(set(loso["model"]) - set(EMPIRICAL)):
        m = nse.xs(model, level="model")
        out[model] = {
            "sites_positive_nse_qle": int((m["Qle"] > 0).sum()),
            "sites_beating_best_empirical_qle": int((m["Qle"] > best_empirical.reindex(m.index)).sum()),
            "median_loso_nse_qle": float(np.median(m["Qle"])),
            "median_loso_nse_qh": float(np.median(m["Qh"])),
        }
    return out


def targets(loso: pd.DataFrame) -> list[str]:
    """Issue 12's targets per model: sites with Qle NSE > 0 and above the best empirical model, with
    Qh NSE above the uncalibrated LaD (``physics_default``) and above 3km27."""
    nse, best_empirical = site_nse(loso)
    sites = sorted(loso["site"].unique())
    ref = {m: nse.xs(m, level="model").reindex(sites) for m in ("3km27", "physics_default")}
    best_qle = best_empirical.reindex(sites)
    lines = ["| model | Qle NSE > 0 | Qle above the best empirical | Qh above physics_default | Qh above 3km27 |",
             "|---|---|---|---|---|"]
    n = len(sites)
    for model in sorted(set(loso["model"]) - set(EMPIRICAL) - {"physics_default"}):
        m = nse.xs(model, level="model").reindex(sites)
        counts = [(m["Qle"] > 0).sum(), (m["Qle"] > best_qle).sum(), (m["Qh"] > ref["physics_default"]["Qh"]).sum(),
                  (m["Qh"] > ref["3km27"]["Qh"]).sum()]
        lines.append(f"| {model} | " + " | ".join(f"{int(c)} of {n}" for c in counts) + " |")
    return lines


def table(df: pd.DataFrame) -> list[str]:
    models = list(dict.fromkeys(sorted(df["model"], key=lambda m: (m in EMPIRICAL, m))))
    lines = ["| site | flux | " + " | ".join(models) + " |", "|---|---|" + "---|" * len(models)]
    for (site, flux), g in df.groupby(["site", "flux"]):
        cells = []
        for m in models:
            r = g[g["model"] == m]
            cells.append("–" if r.empty else f"{r['nse'].iloc[0]:.2f} ({r['rmse'].iloc[0]:.1f})")
        lines.append(f"| {site} | {flux} | " + " | ".join(cells) + " |")
    return lines


def in_site(multisite: pd.DataFrame, variant: str = "") -> list[str]:
    """The cross-site static hybrids (labels ``<coupling>_static<variant>``) against the per-site
    hybrids of the same coupling, same test weeks."""
    per_site = pd.DataFrame(json.loads((ROOT / "results" / "skill.json").read_text()))
    per_site = per_site[(per_site["scale"] == "halfhourly") & (per_site["split"] == "test")]
    lines = ["| site | flux | coupling | per-site RMSE (NSE) | cross-site RMSE (NSE) | RMSE ratio |",
             "|---|---|---|---|---|---|"]
    for site, config in PER_SITE.items():
        for flux in ("Qle", "Qh"):
            for coupling in COUPLINGS:
                ref = per_site[(per_site["config"] == config) & (per_site["site"] == site)
                               & (per_site["model"] == coupling) & (per_site["flux"] == flux)]
                new = multisite[(multisite["site"] == site) & (multisite["model"] == f"{coupling}_static{variant}")
                                & (multisite["flux"] == flux)]
                if ref.empty or new.empty:
                    continue
                a, b = ref.iloc[0], new.iloc[0]
                lines.append(f"| {site} | {flux} | {coupling} | {a['rmse']:.1f} ({a['nse']:.2f}) | "
                             f"{b['rmse']:.1f} ({b['nse']:.2f}) | {b['rmse'] / a['rmse']:.3f} |")
            # the ensembles of the couplings against the best per-site coupling at this site and flux
            ref = per_site[(per_site["config"] == config) & (per_site["site"] == site)
                           & per_site["model"].isin(COUPLINGS) & (per_site["flux"] == flux)]
            if ref.empty:
                continue
            a = ref.loc[ref["rmse"].idxmin()]
            for label, what in ENSEMBLES.items():
                new = multisite[(multisite["site"] == site) & (multisite["model"] == label + variant)
                                & (multisite["flux"] == flux)]
                if new.empty:
                    continue
                b = new.iloc[0]
                lines.append(f"| {site} | {flux} | {what} (against the best per-site: {a['model']}) | "
                             f"{a['rmse']:.1f} ({a['nse']:.2f}) | {b['rmse']:.1f} ({b['nse']:.2f}) | "
                             f"{b['rmse'] / a['rmse']:.3f} |")
    return lines


def in_site_tables(multisite: pd.DataFrame) -> list[str]:
    """``in_site`` of every variant the multi-site run has, each under its description."""
    lines = []
    for variant, what in VARIANTS.items():
        if (multisite["model"] == f"{COUPLINGS[0]}_static{variant}").any():
            lines += ["", f"Cross-site models `*_static{variant}`: {what}.", "", *in_site(multisite, variant)]
    return lines[1:]


def prior_weights(run_dir: Path) -> dict[str, tuple[str, float]]:
    """``label -> (coupling, prior_weight)`` of the static parameter-learning hybrids of a run (those
    whose networks set only the r_a and r_s multipliers: the ``_dpl`` variants are another design)."""
    import yaml

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    return {m.get("label") or m["name"]: (m["name"], float((m.get("options") or {}).get("prior_weight", 0.0)))
            for m in cfg["models"]
            if m["name"] in ("hybrid_param", "hybrid_lstm") and not (m.get("options") or {}).get("static_parameters")}


def prior_choice(run_dirs: list[Path]) -> pd.DataFrame:
    """Per coupling and prior weight: the mean over folds of each fold's best validation loss (the
    training sites' validation weeks; the best over a fold's rounds, as training keeps it), and
    which weight has the lowest (``chosen``)."""
    rows = []
    for run_dir in run_dirs:
        t = pd.read_csv(run_dir / "training.csv")
        for label, (coupling, weight) in prior_weights(run_dir).items():
            folds = t[t["model"] == label].groupby("experiment")["best_val_loss"].min()
            rows.append({"coupling": coupling, "prior_weight": weight, "model": label,
                         "mean_val_loss": float(folds.mean()), "folds": len(folds)})
    df = pd.DataFrame(rows).sort_values(["coupling", "prior_weight"])
    df["chosen"] = df["mean_val_loss"] == df.groupby("coupling")["mean_val_loss"].transform("min")
    return df


def prior_cross_check(loso: pd.DataFrame, choice: pd.DataFrame) -> list[str]:
    """A check of the validation choice with the left-out sites' own skill: for each site, the weight
    whose models score best (mean of the Qle and Qh NSE) at the *other* left-out sites."""
    nse = loso.pivot_table(index="site", columns=["model", "flux"], values="nse")
    lines = ["| coupling | " + " | ".join(nse.index) + " |", "|---|" + "---|" * len(nse.index)]
    for coupling, g in choice.groupby("coupling"):
        skill = {r.prior_weight: (nse[(r.model, "Qle")] + nse[(r.model, "Qh")]) / 2 for r in g.itertuples()}
        picks = [max(skill, key=lambda w: skill[w].drop(site).mean()) for site in nse.index]
        lines.append(f"| {coupling} | " + " | ".join(f"{w:g}" for w in picks) + " |")
    return lines


def prior_table(choice: pd.DataFrame) -> list[str]:
    lines = ["| coupling | prior weight | model | mean validation loss over folds | folds | chosen on validation |",
             "|---|---|---|---|---|---|"]
    for r in choice.itertuples():
        lines.append(f"| {r.coupling} | {r.prior_weight:g} | {r.model} | {r.mean_val_loss:.4f} | {r.folds} | "
                     f"{'yes' if r.chosen else ''} |")
    return lines


def stops(run_dir: Path) -> list[str]:
    path = run_dir / "training.csv"
    if not path.is_file():
        return ["(no training.csv)"]
    t = pd.read_csv(path)
    t = t[t["model"].str.contains("static")].sort_values(["model", "experiment", "part"])
    lines = ["| model | experiment | stage | epochs | kept epoch | stopped |", "|---|---|---|---|---|---|"]
    for r in t.itertuples():
        part = "" if isinstance(r.part, float) else r.part
        lines.append(f"| {r.model} | {r.experiment} | {part} | {r.epochs} | {r.best_epoch} | {r.stopped} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, default=ROOT / "runs")
    ap.add_argument("--in-site", type=Path, metavar="RUN_DIR", help=f"only print the in-site tables of a finished "
                    f"run of {MULTISITE} (writes nothing; the other runs are not needed)")
    ap.add_argument("--loso", type=Path, nargs="+", metavar="RUN_DIR", help="only print the leave-one-site-out "
                    "table and the targets of finished LOSO runs (merged; writes nothing unless --merge)")
    ap.add_argument("--merge", action="store_true", help="with --loso: also write those runs' models into "
                    "results/generalisation.json (the other models' entries kept)")
    args = ap.parse_args()
    if args.merge and args.loso is None:
        ap.error("--merge writes the models of the runs given with --loso: give --loso RUN_DIR ...")
    if args.loso is not None:
        loso = merge_runs([halfhourly(d) for d in args.loso])
        result = summary(loso)
        print("\n".join([*table(loso), "", *targets(loso), "", json.dumps(result, indent=1)]))
        if args.merge:
            path = ROOT / "results" / "generalisation.json"
            merged = {**(json.loads(path.read_text()) if path.is_file() else {}), **result}
            path.write_text(json.dumps(dict(sorted(merged.items())), indent=1) + "\n")
            print(f"wrote {', '.join(result)} into {path.relative_to(ROOT)}")
        return
    if args.in_site is not None:
        ms = halfhourly(args.in_site)
        print("\n".join([*in_site_tables(ms), "", "All sites in-site, NSE (RMSE):", "", *table(ms)]))
        return
    loso_dir, ts_dir = ensure(LOSO, args.runs, sweep=True), ensure(TEST_SITES, args.runs, sweep=False)
    dpl_dir = ensure(LOSO_DPL, args.runs, sweep=True)
    prior_dir = ensure(LOSO_PRIOR, args.runs, sweep=True)
    ms_dir = ensure(MULTISITE, args.runs, sweep=False)
    loso, ts, ms = merge_runs([halfhourly(loso_dir), halfhourly(dpl_dir)]), halfhourly(ts_dir), halfhourly(ms_dir)
    with_prior = pd.concat([loso[loso["model"].isin(prior_weights(loso_dir))], halfhourly(prior_dir)])
    choice = prior_choice([loso_dir, prior_dir])
    print(choice.to_string(index=False))
    result = summary(merge_runs([loso, halfhourly(prior_dir)]))
    (ROOT / "results").mkdir(exist_ok=True)
    (ROOT / "results" / "generalisation.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    block = [
        BEGIN,
        "## One hybrid for every site: static attributes, no per-site parameters",
        "",
        f"Made on {dt.date.today().isoformat()} by `python benchmarks/generalisation.py` (`hybridlsm sweep {LOSO}`, "
        f"`hybridlsm sweep {LOSO_DPL}`, "
        f"`hybridlsm run {TEST_SITES}`, `hybridlsm run {MULTISITE}`; CPU). `hybrid_param_static`, `hybrid_flux_static`, `hybrid_lstm_static`: "
        "hybrid_param, hybrid_flux and hybrid_lstm whose networks also take latitude, elevation, IGBP cover, canopy "
        "height and the climate summaries of each site (`static_inputs`), from the LaD defaults with deep roots "
        "(`deep_water: table`) and no calibrated or per-site parameter; US-Bi1 is irrigated (site metadata; every "
        "LaD-based model, `physics_default` included). Both choices were made on validation weeks "
        "(`benchmarks/water.py`). Cells: half-hourly NSE (RMSE, W m-2) on the whole record of the left-out site "
        "(leave-one-site-out) or of the never-seen site (test_sites). `hybrid_ensemble_static`: the mean of the "
        "three static couplings (a multi-model ensemble, `{name: ensemble, options: {members: ...}}`, whose members "
        "are the three models of the same run, not trained again; its spread is its SD). `*_static_dpl` (where a "
        "run has them): the same, whose networks also set six LaD parameters of every site from its attributes "
        f"(`static_parameters`: {DPL_PARAMETERS}).",
        "",
        "### Leave-one-site-out",
        "",
        *table(loso),
        "",
        f"Issue 12's targets, sites out of {loso['site'].nunique()} (leave-one-site-out, half-hourly NSE):",
        "",
        *targets(loso),
        "",
        "Summary (`results/generalisation.json`): " + "; ".join(
            f"{m}: Qle NSE > 0 at {v['sites_positive_nse_qle']} of {loso['site'].nunique()} sites, above the best "
            f"empirical model at {v['sites_beating_best_empirical_qle']}, median NSE Qle {v['median_loso_nse_qle']:.2f}, "
            f"Qh {v['median_loso_nse_qh']:.2f}" for m, v in result.items()) + ".",
        "",
        "### A prior on the learned parameters",
        "",
        f"`{LOSO_PRIOR}`: the same folds, with a Gaussian prior on the log multipliers of r_a and r_s centred on "
        "the LaD defaults (`prior_weight`: the mean square log multiplier next to the variance-normalised MSE). The "
        "weight is chosen per coupling by the mean over folds of the validation loss (the training sites' "
        "validation weeks; the left-out sites unused):",
        "",
        *prior_table(choice),
        "",
        "Chosen on validation: " + ", ".join(f"{r.coupling} weight {r.prior_weight:g}"
                                             for r in choice[choice["chosen"]].itertuples()) + ".",
        "",
        "As a check, the weight each left-out site would get from the other left-out sites' skill (the mean "
        "of their Qle and Qh NSE; the site's own scores unused):",
        "",
        *prior_cross_check(with_prior, choice),
        "",
        "Leave-one-site-out NSE (RMSE) of every weight:",
        "",
        *table(with_prior),
        "",
        "### Test site (never seen)",
        "",
        *table(ts),
        "",
        "### In-site: one cross-site model against the per-site hybrids",
        "",
        f"`{MULTISITE}` trains each static hybrid once on the first 60 % of all seven records and scores the "
        "last 20 % of each; the per-site hybrids (calibrated LaD under a network, one model per site) score the "
        "same weeks in `configs/us-wkg.yaml` and `configs/us-me2.yaml` (`results/skill.json`). Ratio < 1.05: within "
        "5 % of the per-site RMSE.",
        "",
        *in_site_tables(ms),
        "",
        f"All sites in-site (`{MULTISITE}`):",
        "",
        *table(ms),
        "",
        "### Where the static hybrids' training stopped",
        "",
        *stops(loso_dir),
        *stops(dpl_dir)[2:],
        *stops(prior_dir)[2:],
        *stops(ts_dir)[2:],
        *stops(ms_dir)[2:],
        END,
    ]  # fmt: skip
    replace_block(ROOT / "docs" / "results.md", BEGIN, END, "\n".join(block))
    print("wrote results/generalisation.json and the generalisation block of docs/results.md")


if __name__ == "__main__":
    main()
