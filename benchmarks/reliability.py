"""Reliability cases of issue 11 ("Trust: nothing lost, nothing silent, nothing outside the run
directory"): faults, bad inputs and attacks, each run through the user-facing entry points, with
the outcome of each written to ``results/reliability.json``.

    .venv/bin/python benchmarks/reliability.py                    # every case -> results/reliability.json
    .venv/bin/python benchmarks/reliability.py --only d8_         # the cases whose name contains "d8_"
    .venv/bin/python benchmarks/reliability.py --out /tmp/r.json

A case is a :class:`Case`: a short name, its ``kind`` (``fault``, ``bad_input``, ``security``), the
behaviour it expects (``clear_error``, ``flagged_repair``, ``identical_resume``, ...), the issue's
defect number (1..10) it covers or None, and ``check(tmp) -> str``, which performs the case in its
own temporary folder and returns what it observed; it raises AssertionError (with what was seen)
when the expected behaviour is not observed. The runner catches everything per case: an
unexpected exception is ``ok: false`` with its type and message as the outcome.

A "clear error" is: a non-zero exit code, no traceback (and no exception escaping the command),
a message naming the file / column / row / key at fault, and nothing written (no run directory
created, or an existing run left byte for byte as it was).

The commands run in-process (``typer.testing.CliRunner`` on ``hybridlsm.cli.app``) except where a
real process is needed (kill -9, the run lock). Real data are read from ../shared/data (never copied
into the repository); the cases that need them fail with a clear outcome when it is absent. Every
file a case writes is under ``tempfile.mkdtemp()`` and removed afterwards; the only file written in
the repository is the results file.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import csv
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
FLUXNET = SHARED_DATA / "fluxnet"
WKG = "US-Wkg_200405-200412_HH.csv"
DEFAULT_OUT = ROOT / "results" / "reliability.json"
SITES_COLUMNS = ("SITE_ID", "SITE_NAME", "LAT", "LON", "ELEV_M", "IGBP", "CANOPY_HEIGHT_M", "MEASUREMENT_HEIGHT_M",
                 "UTC_OFFSET_H", "FILE", "START", "END")  # fmt: skip
KINDS = ("fault", "bad_input", "security")
DEFECTS = {
    1: "run --overwrite with unreadable data destroyed the previous run",
    2: "site ids wrote outside the run directory",
    3: "--resume with a different config mixed two runs",
    4: "settings ignored silently",
    5: "impossible forcing, training that learned nothing and absurd skill passed silently",
    6: "user errors as tracebacks; missing land cover",
    7: "silent repairs scored as observations",
    8: "damaged checkpoints, models and predictions trusted",
    9: "two processes on one run directory",
    10: "metrics undefined at near-zero observed means",
}


# ======================================================================================= cases


@dataclass
class Case:
    """One reliability case (module docstring)."""

    name: str
    kind: str
    expected: str
    check: Callable[[Path], str]
    defect: int | None = None
    needs_data: bool = True


CASES: list[Case] = []


def case(name: str, kind: str, expected: str, defect: int | None = None, needs_data: bool = True):
    """Register ``check(tmp) -> outcome`` as a case."""
    if kind not in KINDS:
        raise ValueError(f"case {name}: kind {kind!r} is not one of {KINDS}")

    def register(fn: Callable[[Path], str]) -> Callable[[Path], str]:
        if any(c.name == name for c in CASES):
            raise ValueError(f"duplicate case name {name}")
        CASES.append(Case(name, kind, expected, fn, defect, needs_data))
        return fn

    return register


# ===================================================================================== helpers


def need(condition: bool, message: str) -> None:
    """AssertionError with ``message`` unless ``condition`` (kept under ``python -O``)."""
    if not condition:
        raise AssertionError(message)


def flat(text: str) -> str:
    """``text`` with rich's box characters removed and all whitespace collapsed to single spaces."""
    return " ".join(re.sub(r"[\u2500-\u257f]", " ", text).split())


def short(text: str, n: int = 240) -> str:
    text = flat(text)
    return text if len(text) <= n else text[: n - 1] + "…"


@dataclass
class Result:
    """What a command did: exit code, output (stdout and stderr), an exception that escaped it."""

    code: int
    output: str
    exception: BaseException | None = None

    @property
    def text(self) -> str:
        return flat(self.output)

    def error_line(self) -> str:
        """The error message as one line: from the line that states it to its hint (or the last
        line printed)."""
        lines = [ln.strip() for ln in self.output.splitlines() if ln.strip()]
        pat = re.compile(r"^(config error|data error|error|file error|training failed|damaged run file)\b|Error",
                         re.IGNORECASE)
        first = next((i for i, ln in enumerate(lines) if pat.search(ln) and not re.match(r"^\w*Warning:", ln)), None)
        if first is None:
            return lines[-1] if lines else "(no output)"
        block = []
        for ln in lines[first : first + 8]:
            if ln.startswith(("hint:", "Usage:", "Try ")) or (block and re.match(r"^\w*Warning:", ln)):
                break
            block.append(ln)
        return flat(" ".join(block))


def cli(*args) -> Result:
    """``hybridlsm ARGS`` in this process (typer's CliRunner; wide console, no wrapping)."""
    from typer.testing import CliRunner

    from hybridlsm.cli import app

    r = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"})
    escaped = r.exception if r.exception is not None and not isinstance(r.exception, SystemExit) else None
    return Result(r.exit_code, r.output, escaped)


def expect_ok(r: Result, what: str) -> None:
    need(r.exception is None, f"{what}: uncaught {type(r.exception).__name__}: {r.exception}")
    need(r.code == 0, f"{what}: exit {r.code}: {short(r.output, 400)}")


def expect_clear_error(r: Result, *names: str, code: int | None = None, nothing_in: Path | None = None) -> str:
    """Check the clear-error contract (module docstring); ``names``: what the message must name
    (after collapsing whitespace); ``nothing_in``: a folder that must not exist or be empty.
    Returns the outcome text."""
    need(r.exception is None, f"uncaught {type(r.exception).__name__} (a traceback for the user): {r.exception}")
    need(r.code != 0, f"exit code 0 on bad input: {short(r.output, 300)}")
    if code is not None:
        need(r.code == code, f"exit {r.code}, expected {code}: {short(r.error_line(), 300)}")
    need("Traceback" not in r.output, f"a traceback in the output: {short(r.output, 300)}")
    text = r.text
    missing = [n for n in names if flat(n) not in text]
    need(not missing, f"the message does not name {missing}: {short(r.error_line(), 400)}")
    if nothing_in is not None:
        left = sorted(str(p.relative_to(nothing_in)) for p in nothing_in.rglob("*")) if nothing_in.exists() else []
        need(not left, f"written although the command failed: {left[:5]}")
    return f"exit {r.code}: {r.error_line()}"


def names_row(text: str, index: int, stamp: str) -> bool:
    """Whether ``text`` locates data row ``index`` (0-based) of a file whose TIMESTAMP_START there
    is ``stamp`` (YYYYMMDDHHMM): by its time, its row or time-step number, or its line."""
    when = f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]} {stamp[8:10]}:{stamp[10:12]}"
    number = rf"\b(rows?|time steps?|steps?)\s+{index}\b|\blines?\s+{index + 2}\b"
    return when in text or re.search(number, text) is not None


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tree_digest(folder: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``folder`` ('<dir>' for folders)."""
    return {str(p.relative_to(folder)): ("<dir>" if p.is_dir() else sha256(p)) for p in sorted(folder.rglob("*"))}


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def flip(path: Path, n: int = 8) -> None:
    """Invert ``n`` bytes in the middle of ``path`` (the size stays the same)."""
    data = bytearray(Path(path).read_bytes())
    mid = len(data) // 2
    data[mid : mid + n] = bytes(b ^ 0xFF for b in data[mid : mid + n])
    Path(path).write_bytes(bytes(data))


# ----------------------------------------------------------------------------- real data


_WKG_CACHE: dict[str, object] = {}


def wkg_table(days: int, start_day: int = 0) -> tuple[list[str], list[list[str]]]:
    """Header and rows (fields) of ``days`` days of US-Wkg from day ``start_day``."""
    if "lines" not in _WKG_CACHE:
        if not (FLUXNET / WKG).is_file():
            raise FileNotFoundError(f"real data not found: {FLUXNET / WKG} (../shared/data beside the repository)")
        with open(FLUXNET / WKG) as f:
            _WKG_CACHE["lines"] = [next(f).rstrip("\n") for _ in range(60 * 48 + 1)]
    lines = _WKG_CACHE["lines"]
    header = lines[0].split(",")
    rows = [ln.split(",") for ln in lines[1 + start_day * 48 : 1 + (start_day + days) * 48]]
    return header, rows


def wkg_site_row() -> dict[str, str]:
    if "row" not in _WKG_CACHE:
        with open(FLUXNET / "sites.csv", newline="") as f:
            _WKG_CACHE["row"] = next(r for r in csv.DictReader(f) if r["FILE"] == WKG)
    return dict(_WKG_CACHE["row"])


def write_sites(folder: Path, rows: list[dict[str, str]]) -> Path:
    path = folder / "sites.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(SITES_COLUMNS), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def site_row(name: str, rows: list[list[str]], **overrides) -> dict[str, str]:
    """US-Wkg's sites.csv row for a file ``name`` holding ``rows``, with ``overrides``."""
    row = wkg_site_row()
    row.update(FILE=name, START=rows[0][0], END=rows[-1][1])
    row.update(overrides)
    return row


def write_csv(path: Path, header: list[str], rows: list[list[str]], newline: str = "\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((newline.join([",".join(header)] + [",".join(r) for r in rows]) + newline).encode())
    return path


def wkg_slice(folder: Path, days: int, edit=None, name: str = WKG, sites: dict | bool = True,
              start_day: int = 0) -> Path:
    """``days`` days of US-Wkg as a FLUXNET CSV ``folder/name``, ``edit(header, rows)`` applied, with
    a ``sites.csv`` beside it (US-Wkg's row; ``sites`` a dict overrides its fields; False: none)."""
    header, rows = wkg_table(days, start_day)
    header, rows = list(header), [list(r) for r in rows]
    if edit is not None:
        edit(header, rows)
    path = write_csv(folder / name, header, rows)
    if sites is not False:
        write_sites(folder, [site_row(name, rows, **(sites if isinstance(sites, dict) else {}))])
    return path


def set_column(column: str, fn):
    def edit(header, rows):
        j = header.index(column)
        for r in rows:
            r[j] = fn(r[j])

    return edit


def drop_columns(*columns: str):
    def edit(header, rows):
        for c in columns:
            j = header.index(c)
            del header[j]
            for r in rows:
                del r[j]

    return edit


def numeric(fn):
    """Apply ``fn`` to a cell's number, leaving -9999 as it is."""
    return lambda v: v if v == "-9999" else f"{fn(float(v)):.4f}"


def write_config(folder: Path, sites: list, models: list | None = None, name: str = "r", training: dict | None = None,
                 **data) -> Path:
    """A run config in ``folder`` whose run directory is ``folder/runs/<name>``."""
    d = {"sites": [s if isinstance(s, dict) else str(s) for s in sites],
         "split": {"train": 0.5, "val": 0.2, "test": 0.3}, "spinup_days": 1, "window_days": 2}
    d.update(data)
    cfg = {"name": name, "data": d, "models": models or [{"name": "1lin"}], "output": {"run_dir": str(folder / "runs")}}
    if training:
        cfg["training"] = training
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


PHYSICS = {"name": "physics", "options": {"epochs": 2, "calibrate": ["rs_scale"]}}


def run_expecting_error(tmp: Path, data_path, *names: str, code: int | None = 2, **config) -> str:
    """``hybridlsm run`` on a config with the one site ``data_path``: a clear error naming ``names``."""
    cfg = write_config(tmp, [data_path], **config)
    return expect_clear_error(cli("run", cfg), *names, code=code, nothing_in=tmp / "runs")


# ---------------------------------------------------------------------- a finished run


class _Fixtures:
    """Expensive things several cases share, built once in a temporary folder of their own."""

    def __init__(self) -> None:
        self.root: Path | None = None
        self._base: dict | BaseException | None = None

    def folder(self) -> Path:
        if self.root is None:
            self.root = Path(tempfile.mkdtemp(prefix="hybridlsm-reliability-shared-"))
        return self.root

    def base_run(self) -> dict:
        """A finished run (1lin and a 2-epoch calibrated physics) on 20 days of US-Wkg: its config,
        run directory, data file and console output."""
        if isinstance(self._base, BaseException):
            raise RuntimeError(f"the shared finished run failed: {self._base}") from self._base
        if self._base is None:
            try:
                folder = self.folder() / "base"
                data = wkg_slice(folder / "data", 20)
                cfg = write_config(folder, [data], [{"name": "1lin"}, PHYSICS], name="base")
                r = cli("run", cfg)
                expect_ok(r, "the shared run")
                self._base = {"cfg": cfg, "run": folder / "runs" / "base", "data": data, "output": r.output}
            except BaseException as err:
                self._base = err
                raise
        return self._base

    def copy_run(self, tmp: Path) -> tuple[Path, Path, Path]:
        """A copy of the finished run under ``tmp/runs/base``: (config pointing there, run, data)."""
        base = self.base_run()
        run = tmp / "runs" / "base"
        shutil.copytree(base["run"], run)
        cfg = yaml.safe_load(base["cfg"].read_text())
        cfg["output"]["run_dir"] = str(tmp / "runs")
        path = tmp / "base.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path, run, base["data"]

    def cleanup(self) -> None:
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
        self._base = None


FIX = _Fixtures()


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["COLUMNS"] = "400"
    return env


# ============================================================================ the ten defects

# ----------------------------------------------------------------- 1. --overwrite with bad data


@case("d1_overwrite_with_path_typo", "fault", "clear_error", defect=1)
def _(tmp: Path) -> str:
    cfg, run, data = FIX.copy_run(tmp)
    before = tree_digest(run)
    text = cfg.read_text().replace(str(data), str(data.with_name("US-Wgk_200405-200412_HH.csv")))
    cfg.write_text(text)
    out = expect_clear_error(cli("run", cfg, "--overwrite"), "US-Wgk_200405-200412_HH.csv", "data.sites", code=2)
    need(tree_digest(run) == before, "the previous run directory changed")
    need(sorted(p.name for p in run.parent.iterdir()) == ["base"], f"left beside it: {list(run.parent.iterdir())}")
    return out + f"; previous run untouched ({len(before)} files compared)"


@case("d1_overwrite_with_unreadable_file", "fault", "clear_error", defect=1)
def _(tmp: Path) -> str:
    cfg, run, data = FIX.copy_run(tmp)
    before = tree_digest(run)
    bad = tmp / "in" / "garbled.csv"
    bad.parent.mkdir()
    bad.write_bytes(b"TIMESTAMP_START,TIMESTAMP_END,TA_F\n200405061100,200405061130,\x00\x9f\x92\x96\n")
    cfg.write_text(cfg.read_text().replace(str(data), str(bad)))
    out = expect_clear_error(cli("run", cfg, "--overwrite"), "garbled.csv", code=2)
    need(tree_digest(run) == before, "the previous run directory changed")
    need(sorted(p.name for p in run.parent.iterdir()) == ["base"], f"left beside it: {list(run.parent.iterdir())}")
    return out + f"; previous run untouched ({len(before)} files compared)"


# ---------------------------------------------------------------------- 2. site ids as paths


def _site_id_run(tmp: Path, site_id: str) -> tuple[Path, set[str], Result]:
    data = wkg_slice(tmp / "in", 10, name="tower.csv", sites={"SITE_ID": site_id})
    cfg = write_config(tmp / "cfg", [data])
    before = tree(tmp)
    r = cli("run", cfg)
    expect_ok(r, f"run with site id {site_id!r}")
    new = tree(tmp) - before
    return tmp / "cfg" / "runs" / "r", new, r


@case("d2_site_id_path_traversal", "security", "writes_inside_run_dir", defect=2)
def _(tmp: Path) -> str:
    import xarray as xr

    from hybridlsm.domain import site_file_name

    run, new, _ = _site_id_run(tmp, "../../X")
    outside = sorted(p for p in new if not (p == "cfg/runs" or p.startswith("cfg/runs/r")))
    need(not outside, f"written outside the run directory: {outside}")
    need(not (tmp / "X").exists() and not (tmp.parent / "X").exists(), "a folder X appeared above the run")
    folder = run / "predictions" / site_file_name("../../X")
    need(folder.is_dir() and "/" not in folder.name and folder.name not in (".", ".."), f"no folder {folder}")
    with xr.open_dataset(folder / "obs.nc") as obs:
        need(obs.attrs.get("site_id") == "../../X", f"obs.nc site_id {obs.attrs.get('site_id')!r}")
    return f"site '../../X' written to predictions/{folder.name}/ (obs.nc site_id '../../X'); {len(new)} new paths, all in the run directory"


@case("d2_site_id_with_slash", "security", "writes_inside_run_dir", defect=2)
def _(tmp: Path) -> str:
    import xarray as xr

    run, new, _ = _site_id_run(tmp, "US/Wkg")
    outside = sorted(p for p in new if not (p == "cfg/runs" or p.startswith("cfg/runs/r")))
    need(not outside, f"written outside the run directory: {outside}")
    sites = sorted(p.name for p in (run / "predictions").iterdir())
    need(sites == ["US_Wkg"], f"site folders {sites}")
    with xr.open_dataset(run / "predictions" / "US_Wkg" / "1lin.nc") as ds:
        need(ds["Qle"].size > 0, "empty prediction")
    with xr.open_dataset(run / "predictions" / "US_Wkg" / "obs.nc") as obs:
        need(obs.attrs.get("site_id") == "US/Wkg", f"obs.nc site_id {obs.attrs.get('site_id')!r}")
    return "site 'US/Wkg' written to predictions/US_Wkg/ (id kept in obs.nc); nothing outside the run directory"


@case("d2_site_ids_mapping_to_one_folder", "bad_input", "clear_error", defect=2)
def _(tmp: Path) -> str:
    header, rows = wkg_table(10)
    a = write_csv(tmp / "in" / "a.csv", header, rows)
    b = write_csv(tmp / "in" / "b.csv", header, rows)
    write_sites(tmp / "in", [site_row("a.csv", rows, SITE_ID="US/X"), site_row("b.csv", rows, SITE_ID="US_X")])
    cfg = write_config(tmp, [a, b])
    return expect_clear_error(cli("run", cfg), "US/X", "US_X", "same folder", code=2, nothing_in=tmp / "runs")


# ------------------------------------------------------------------ 3. --resume, other config


def _resume_with(tmp: Path, change, *names: str) -> str:
    cfg, run, _ = FIX.copy_run(tmp)
    stored = (run / "config.yaml").read_bytes()
    before = tree_digest(run)
    data = yaml.safe_load(cfg.read_text())
    change(data)
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    out = expect_clear_error(cli("run", cfg, "--resume"), *names, code=2)
    need((run / "config.yaml").read_bytes() == stored, "the stored config.yaml changed")
    need(tree_digest(run) == before, "the run directory changed")
    return out + "; stored config.yaml and run unchanged"


@case("d3_resume_with_other_training", "fault", "clear_error", defect=3)
def _(tmp: Path) -> str:
    return _resume_with(tmp, lambda d: d.setdefault("training", {}).update(epochs=7), "training.epochs", "--resume")


@case("d3_resume_with_other_models", "fault", "clear_error", defect=3)
def _(tmp: Path) -> str:
    def change(d):
        d["models"][1]["options"]["epochs"] = 3

    out = _resume_with(tmp, change, "models", "epochs", "--resume")
    if "models[1].options.epochs" not in out:
        out += " (names the section 'models' and shows both lists, not the key models[1].options.epochs)"
    return out


@case("d3_resume_with_other_data", "fault", "clear_error", defect=3)
def _(tmp: Path) -> str:
    return _resume_with(tmp, lambda d: d["data"].update(window_days=3), "data.window_days", "--resume")


@case("d3_resume_with_changed_data_file", "fault", "clear_error", defect=3)
def _(tmp: Path) -> str:
    cfg, run, data = FIX.copy_run(tmp)
    changed = tmp / "in" / data.name
    changed.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(data, changed)
    text = yaml.safe_load(cfg.read_text())
    text["data"]["sites"] = [str(changed)]
    recorded = json.loads((run / "inputs.json").read_text())
    (run / "inputs.json").write_text(json.dumps({str(changed): recorded[str(data)]}))  # the run read this copy
    stored = yaml.safe_load((run / "config.yaml").read_text())
    stored["data"]["sites"] = [str(changed)]
    (run / "config.yaml").write_text(yaml.safe_dump(stored, sort_keys=False))
    cfg.write_text(yaml.safe_dump(text, sort_keys=False))
    lines = changed.read_text().splitlines()
    lines[5] = lines[5].replace(",", ", ", 1)  # the same numbers, other bytes: a changed file all the same
    changed.write_text("\n".join(lines) + "\n")
    before = tree_digest(run)
    out = expect_clear_error(cli("run", cfg, "--resume"), str(changed), "changed since", "inputs.json", code=2)
    need(tree_digest(run) == before, "the run directory changed")
    return out + "; run unchanged"


@case("d1_resume_or_overwrite_into_a_folder_that_is_not_a_run", "fault", "clear_error", defect=1)
def _(tmp: Path) -> str:
    data = wkg_slice(tmp / "in", 5)
    cfg = write_config(tmp, [data], name="thesis")
    folder = tmp / "runs" / "thesis"
    folder.mkdir(parents=True)
    (folder / "metrics.csv").write_text("my own metrics")
    (folder / "chapter1.txt").write_text("my own text")
    before = tree_digest(folder)
    outs = [expect_clear_error(cli("run", cfg, flag), str(folder), "not a hybridlsm run directory", code=1)
            for flag in ("--resume", "--overwrite")]
    need(tree_digest(folder) == before, "the user's folder changed")
    return "; ".join(outs) + "; the folder unchanged"


# -------------------------------------------------------------------- 4. ignored settings


@case("d4_targets_qh_trains_gbm_on_qh", "bad_input", "setting_used", defect=4)
def _(tmp: Path) -> str:
    import pandas as pd
    import xarray as xr

    data = wkg_slice(tmp / "in", 10)
    cfg = write_config(tmp, [data], [{"name": "gbm"}], targets=["Qh"])
    expect_ok(cli("run", cfg), "run with data.targets [Qh]")
    run = tmp / "runs" / "r"
    meta = json.loads((run / "models" / "gbm" / "all" / "model.json").read_text())
    need(meta["options"]["targets"] == ["Qh"], f"stored options.targets {meta['options']['targets']}")
    with xr.open_dataset(run / "predictions" / "US-Wkg" / "gbm.nc") as ds:
        need("Qh" in ds and np.isfinite(ds["Qh"].values).any(), f"gbm.nc variables {list(ds.data_vars)}")
    m = pd.read_csv(run / "metrics.csv")
    scored = set(m[m["n"] > 0]["flux"])
    need(scored == {"Qh"}, f"metrics.csv scores {scored}")
    empty = sorted(set(m[m["n"] == 0]["flux"]) - {"Qh"})
    note = f"; metrics.csv also lists {empty} with n = 0 (nothing scored)" if empty else ""
    return f"gbm trained on and predicted Qh only (model.json options.targets ['Qh']; gbm.nc has Qh){note}"


@case("d4_targets_soil_temperature_refused", "bad_input", "clear_error", defect=4, needs_data=False)
def _(tmp: Path) -> str:
    dummy = tmp / "x.csv"
    dummy.write_text("x")
    return run_expecting_error(tmp, dummy, "data.targets", "SoilTemp", models=[{"name": "gbm"}],
                               targets=["Qle", "Qh", "SoilTemp"])


@case("d4_targets_physics_cannot_train_on_qh_cor", "bad_input", "clear_error", defect=4, needs_data=False)
def _(tmp: Path) -> str:
    dummy = tmp / "x.csv"
    dummy.write_text("x")
    return run_expecting_error(tmp, dummy, "models[0] (physics) cannot train on data.targets ['Qh_cor']",
                               models=[{"name": "physics"}], targets=["Qle", "Qh", "Qh_cor"])


# ------------------------------------------- 5. impossible forcing, learned nothing, absurd skill


def _kelvin(picked: list):
    def edit(header, rows):
        j = header.index("TA_F")
        rng = np.random.default_rng(0)
        chosen = sorted(int(i) for i in rng.choice(len(rows), int(0.3 * len(rows)), replace=False))
        for i in chosen:
            rows[i][j] = f"{float(rows[i][j]) + 273.15:.3f}"
        picked.extend(chosen)

    return edit


@case("d5_air_temperature_partly_in_kelvin", "bad_input", "clear_error", defect=5)
def _(tmp: Path) -> str:
    picked: list[int] = []
    data = wkg_slice(tmp / "in", 10, _kelvin(picked))
    cfg = write_config(tmp, [data])
    r = cli("run", cfg)
    out = expect_clear_error(r, "TA_F (Tair)", "look like K", WKG, code=2, nothing_in=tmp / "runs")
    stamp = wkg_table(10)[1][picked[0]][0]
    need(names_row(r.text, picked[0], stamp), f"the first bad row ({picked[0]}, {stamp}) is not named")
    need("training 1lin" not in r.text, "training started")
    return out


@case("d5_kelvin_values_set_missing_on_request", "bad_input", "flagged_repair", defect=5)
def _(tmp: Path) -> str:
    import xarray as xr

    picked: list[int] = []
    data = wkg_slice(tmp / "in", 10, _kelvin(picked))
    cfg = write_config(tmp, [data], forcing_out_of_range="missing")
    r = cli("run", cfg)
    expect_ok(r, "run with forcing_out_of_range: missing")
    need("data repairs and gaps" in r.text and "Tair" in r.text, f"repairs not listed: {short(r.output, 400)}")
    run = tmp / "runs" / "r"
    with xr.open_dataset(run / "predictions" / "US-Wkg" / "obs.nc") as obs:
        n = int(obs["Tair_filled"].values.sum())
        summary = obs.attrs.get("repairs_summary", "")
        need(n >= len(picked), f"Tair_filled marks {n} steps, {len(picked)} were in K")
        need("Tair" in summary, f"obs.nc repairs_summary: {summary}")
    report = (run / "report.html").read_text()
    need("Data repairs and gaps" in report and "Tair" in report.split("Data repairs and gaps", 1)[1],
         "the report does not list the repair")
    return f"run completed; {len(picked)} kelvin values set missing, filled, flagged (Tair_filled {n}) and listed as repairs"


class _Affine:  # defined lazily (equinox imported on first use)
    cls = None


def _affine():
    if _Affine.cls is None:
        import equinox as eqx
        import jax

        class Affine(eqx.Module):
            w: jax.Array
            b: jax.Array

            def __call__(self, x):
                return x @ self.w + self.b

        _Affine.cls = Affine
    import jax.numpy as jnp

    return _Affine.cls(jnp.zeros(2), jnp.zeros(()))


def _affine_batches():
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    out = []
    for _ in range(4):
        x = rng.normal(size=(16, 2))
        out.append({"x": jnp.asarray(x), "y": jnp.asarray(x @ np.array([1.5, -2.0]) + 0.5)})
    return out


def _mse(model, batch, key, weights):
    import jax.numpy as jnp

    loss = jnp.mean((model(batch["x"]) - batch["y"]) ** 2)
    return loss, {"mse": loss}


@case("d5_loss_always_nan_stops_training", "fault", "clear_error", defect=5, needs_data=False)
def _(tmp: Path) -> str:
    import jax.numpy as jnp

    from hybridlsm.config import TrainConfig
    from hybridlsm.training import TrainingError, fit

    def nan_loss(model, batch, key, weights):
        loss, aux = _mse(model, batch, key, weights)
        return loss * jnp.nan, aux

    try:
        fit(_affine(), nan_loss, _affine_batches(), lambda m: 1.0, TrainConfig(epochs=10, lr=0.1), progress=False)
    except TrainingError as err:
        need("20 updates in a row rejected" in str(err), f"TrainingError without the count: {err}")
        return f"TrainingError: {err}"
    raise AssertionError("fit returned a model although every loss was NaN")


@case("d5_absurd_bias_flagged_suspect", "fault", "flagged_suspect", defect=5)
def _(tmp: Path) -> str:
    import pandas as pd
    import xarray as xr

    _, run, _ = FIX.copy_run(tmp)
    site = run / "predictions" / "US-Wkg"
    ds = xr.load_dataset(site / "1lin.nc")
    for v in ("Qh", "Qle"):
        ds[v] = ds[v] * 1800.0
    ds.attrs["model"] = "units"
    ds.to_netcdf(site / "units.nc")
    r = cli("report", run)
    expect_ok(r, "report")
    m = pd.read_csv(run / "metrics.csv")
    units = m[(m.model == "units") & (m["n"] > 0)]
    need(len(units) > 0, "the fake model is not scored")
    need(units["suspect"].astype(bool).all(),
         f"suspect flags {units[['flux', 'scale', 'suspect']].to_dict('records')}")
    need(not m[m.model == "1lin"]["suspect"].astype(bool).any(), "1lin flagged suspect too")
    report = (run / "report.html").read_text()
    need("Suspect scores" in report, "the report has no 'Suspect scores' paragraph")
    return (f"'units' (fluxes x 1800) flagged suspect in all {len(units)} scored rows, report paragraph "
            f"'Suspect scores': {units['suspect_reason'].iloc[0]}")


# ------------------------------------------------------------- 6. user errors, missing class


@case("d6_data_error_is_one_line", "bad_input", "clear_error", defect=6)
def _(tmp: Path) -> str:
    def dup(header, rows):
        rows[10] = list(rows[9])

    data = wkg_slice(tmp / "in", 10, dup)
    r = cli("run", write_config(tmp, [data]))
    out = expect_clear_error(r, WKG, "line 11", "duplicated timestamp", code=2, nothing_in=tmp / "runs")
    errors = [ln for ln in r.output.splitlines() if ln.startswith("data error")]
    need(len(errors) == 1, f"{len(errors)} 'data error' lines")
    return out


@case("d6_empty_igbp_uses_gra_defaults", "bad_input", "flagged_repair", defect=6)
def _(tmp: Path) -> str:
    import xarray as xr

    data = wkg_slice(tmp / "in", 20, sites={"IGBP": ""})
    cfg = write_config(tmp, [data], [PHYSICS])
    r = cli("run", cfg)
    expect_ok(r, "run with an empty IGBP field")
    run = tmp / "runs" / "r"
    with xr.open_dataset(run / "predictions" / "US-Wkg" / "physics.nc") as ds:
        where = str(ds.attrs.get("parameters_from", ""))
    need("GRA" in where, f"parameters_from: {where!r}")
    report = (run / "report.html").read_text()
    section = report.split("Where the parameters came from", 1)[-1].split("<h2>", 1)[0]
    need("GRA defaults" in section, "the report's provenance table does not mention the GRA defaults")
    need("igbp" in r.text, f"the missing class is not reported: {short(r.output, 300)}")
    return f"run completed; parameters_from: {where}"


# ---------------------------------------------------------------------- 7. silent repairs


def _gap(first: int, n: int, columns=("TA_F", "SW_IN_F", "WS_F", "VPD_F", "PA_F")):
    def edit(header, rows):
        for c in columns:
            j = header.index(c)
            for i in range(first, first + n):
                rows[i][j] = "-9999"

    return edit


@case("d7_three_day_forcing_gap_flagged_not_scored", "bad_input", "flagged_repair", defect=7)
def _(tmp: Path) -> str:
    import pandas as pd
    import xarray as xr

    gap0, gap_n = 14 * 48, 3 * 48
    data = wkg_slice(tmp / "in", 20, _gap(gap0, gap_n))
    r = cli("run", write_config(tmp, [data]))
    expect_ok(r, "run with a 3-day gap")
    need("data repairs and gaps" in r.text and "144 filled from the mean diurnal cycle" in r.text,
         f"the console does not list the gap: {short(r.output, 400)}")
    run = tmp / "runs" / "r"
    obs = xr.load_dataset(run / "predictions" / "US-Wkg" / "obs.nc")
    level = obs["forcing_filled"].values
    need((level[gap0 : gap0 + gap_n] == 2).all() and int((level == 2).sum()) == gap_n,
         f"forcing_filled == 2 at {int((level == 2).sum())} steps")
    for f in sorted((run / "predictions" / "US-Wkg").glob("*.nc")):
        with xr.open_dataset(f) as ds:
            need("forcing_filled" in ds and np.array_equal(ds["forcing_filled"].values, level), f"{f.name}: flags differ")
    test = obs["split"].values == 3
    usable = np.isfinite(obs["Qle"].values) & (obs["Qle_qc"].values <= 1)
    n = pd.read_csv(run / "metrics.csv").query("flux == 'Qle' and scale == 'halfhourly'")["n"].item()
    need(n == int((test & usable & (level < 2)).sum()) and n < int((test & usable).sum()),
         f"metrics n {n}; usable test steps {int((test & usable).sum())}, outside the gap {int((test & usable & (level < 2)).sum())}")
    report = (run / "report.html").read_text()
    need("144 filled from the diurnal cycle or estimated (not scored)" in report, "the report does not list the gap")
    return f"144 gap steps flagged forcing_filled=2 in obs.nc and every model file; n={n} excludes them; listed in console and report"


@case("d7_no_longwave_estimated_and_listed", "bad_input", "flagged_repair", defect=7)
def _(tmp: Path) -> str:
    data = wkg_slice(tmp / "in", 10, drop_columns("LW_IN_F"))
    r = cli("run", write_config(tmp, [data]))
    expect_ok(r, "run without LW_IN_F")
    need(re.search(r"Warning: .*LWdown estimated", r.text) is not None, f"no warning: {short(r.output, 400)}")
    need("LWdown: estimated" in r.text, "the console's repair list does not name LWdown")
    report = (tmp / "runs" / "r" / "report.html").read_text()
    need("LWdown: estimated" in report, "the report does not list the estimate")
    line = next(ln.strip() for ln in r.output.splitlines() if "LWdown: estimated" in ln)
    return f"warned and listed: {line}"


@case("d7_missing_qc_column_listed", "bad_input", "flagged_repair", defect=7)
def _(tmp: Path) -> str:
    data = wkg_slice(tmp / "in", 10, drop_columns("LE_F_MDS_QC"))
    r = cli("run", write_config(tmp, [data]))
    expect_ok(r, "run without LE_F_MDS_QC")
    need("no QC flags for Qle" in r.text, f"not listed: {short(r.output, 400)}")
    report = (tmp / "runs" / "r" / "report.html").read_text()
    need("no QC flags for Qle" in report, "the report does not list it")
    return "listed in console and report: no QC flags for Qle"


@case("d7_empty_measurement_height_listed", "bad_input", "flagged_repair", defect=7)
def _(tmp: Path) -> str:
    base = FIX.base_run()
    with open(base["data"].parent / "sites.csv", newline="") as f:
        row = next(csv.DictReader(f))
    need(row["MEASUREMENT_HEIGHT_M"] == "", f"sites.csv gives MEASUREMENT_HEIGHT_M {row['MEASUREMENT_HEIGHT_M']!r}")
    text = flat(base["output"])
    listed = re.search(r"site metadata not given: [^\n]*measurement_height", text)
    need(listed is not None, f"the console does not list it: {short(base['output'], 400)}")
    report = (base["run"] / "report.html").read_text()
    need(re.search(r"site metadata not given: [^<]*measurement_height", report) is not None, "the report does not list it")
    return "listed in console and report: site metadata not given: measurement_height"


# ------------------------------------------------------------------------------ 8. integrity


@case("d8_damaged_checkpoint_falls_back", "fault", "fallback_to_good_checkpoint", defect=8, needs_data=False)
def _(tmp: Path) -> str:
    import jax.numpy as jnp

    from hybridlsm.training import CheckpointError
    from hybridlsm.training.checkpoint import read_checkpoint, write_checkpoint

    def trees(v):
        return {"w": jnp.full(4000, float(v))}

    for epoch in (1, 2, 3):
        write_checkpoint(tmp, epoch, trees(epoch), {"epoch": epoch})
    flip(tmp / "epoch_0003.eqx")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded, meta = read_checkpoint(tmp, trees(0))
    need(meta["epoch"] == 2 and float(np.asarray(loaded["w"])[0]) == 2.0, f"loaded epoch {meta['epoch']}")
    said = [str(w.message) for w in caught if "epoch_0003.eqx" in str(w.message)]
    need(said, "no warning names the damaged file")
    flip(tmp / "epoch_0002.eqx")
    try:
        read_checkpoint(tmp, trees(0))
    except CheckpointError as err:
        need("epoch_0003.eqx" in str(err) and "epoch_0002.eqx" in str(err), f"error does not name both: {err}")
        return f"epoch 3 damaged -> epoch 2 used ({short(said[0], 120)}); both damaged -> CheckpointError naming both"
    raise AssertionError("a checkpoint with both files damaged was loaded")


@case("d8_resumed_fit_skips_damaged_checkpoint", "fault", "identical_resume", defect=8, needs_data=False)
def _(tmp: Path) -> str:
    from hybridlsm.config import TrainConfig
    from hybridlsm.training import fit

    cfg = TrainConfig(epochs=3, lr=0.2, min_lr=1e-4, weight_decay=0.01, patience=50, seed=3)
    batches = _affine_batches()
    val = batches[0]

    def val_fn(m):
        return float(_mse(m, val, None, None)[0])

    full = fit(_affine(), _mse, batches, val_fn, cfg, tmp, progress=False)
    flip(tmp / "epoch_0003.eqx")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = fit(_affine(), _mse, batches, val_fn, cfg, tmp, progress=False, resume=True)
    need(any("epoch_0003.eqx" in str(w.message) for w in caught), "no warning names the damaged checkpoint")

    def params(m):
        return np.concatenate([np.ravel(m.w), np.ravel(m.b)])

    need(np.array_equal(params(resumed.model), params(full.model)),
         f"resumed {params(resumed.model)} != uninterrupted {params(full.model)}")
    return "damaged epoch-3 checkpoint skipped with a warning; training redone from epoch 2 to identical parameters"


@case("d8_flipped_model_eqx_refused_by_predict", "fault", "clear_error", defect=8)
def _(tmp: Path) -> str:
    _, run, data = FIX.copy_run(tmp)
    target = run / "models" / "physics" / "all" / "model.eqx"
    flip(target)
    r = cli("predict", run, data, "--model", "physics")
    out = expect_clear_error(r, str(target), "checksum")
    need(not (run / "applied").exists() or not any((run / "applied").rglob("*.nc")), "predictions written")
    return out


@case("d8_flipped_empirical_npz_refused_by_predict", "fault", "clear_error", defect=8)
def _(tmp: Path) -> str:
    _, run, data = FIX.copy_run(tmp)
    target = run / "models" / "1lin" / "all" / "Qle.npz"
    flip(target)
    r = cli("predict", run, data, "--model", "1lin")
    out = expect_clear_error(r, "Qle.npz", "checksum")
    need(not (run / "applied").exists() or not any((run / "applied").rglob("*.nc")), "predictions written")
    return out


@case("d8_truncated_prediction_recomputed_on_resume", "fault", "recomputed", defect=8)
def _(tmp: Path) -> str:
    import xarray as xr

    from hybridlsm.rundir import problem

    cfg, run, _ = FIX.copy_run(tmp)
    pred = run / "predictions" / "US-Wkg" / "1lin.nc"
    good = xr.load_dataset(pred)["Qle"].values
    pred.write_bytes(pred.read_bytes()[: pred.stat().st_size // 2])
    physics_before = sha256(run / "predictions" / "US-Wkg" / "physics.nc")
    r = cli("run", cfg, "--resume")
    expect_ok(r, "run --resume")
    need(str(pred) in r.text and "recomputing" in r.text, f"the console does not name the file: {short(r.output, 400)}")
    need(problem(pred) is None, f"after the resume: {problem(pred)}")
    again = xr.load_dataset(pred)["Qle"].values
    need(np.allclose(again, good, equal_nan=True), "the recomputed prediction differs")
    need(sha256(run / "predictions" / "US-Wkg" / "physics.nc") == physics_before, "physics.nc rewritten")
    line = next(ln.strip() for ln in r.output.splitlines() if "recomputing" in ln)
    return f"{short(line, 160)}; file verifies; physics.nc kept"


# --------------------------------------------------------------------------- 9. concurrency


def _hold_lock(run_dir: Path) -> subprocess.Popen:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from hybridlsm.rundir import hold_run_lock; "
         "hold_run_lock(sys.argv[1]); print('locked', flush=True); time.sleep(300)", str(run_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env())  # fmt: skip
    line = holder.stdout.readline().strip()
    if line != "locked":
        holder.kill()
        err = holder.stderr.read()[-500:]
        _kill(holder)
        raise AssertionError(f"the lock holder did not start: {line!r} {err}")
    return holder


def _kill(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGKILL)
    p.wait()
    for stream in (p.stdout, p.stderr):
        if stream is not None:
            stream.close()


@case("d9_second_run_refused_while_locked", "fault", "clear_error", defect=9)
def _(tmp: Path) -> str:
    cfg, run, _ = FIX.copy_run(tmp)
    before = tree_digest(run)
    holder = _hold_lock(run)
    try:
        r = cli("run", cfg, "--resume")
        out = expect_clear_error(r, f"process {holder.pid}", "in use by", code=1)
        refusal = [ln for ln in r.output.splitlines() if "in use by" in ln]
        need(len(refusal) == 1, f"{len(refusal)} lines say so")
        need(tree_digest(run) == before, "the run directory changed while locked")
    finally:
        _kill(holder)
    r = cli("run", cfg, "--resume")
    expect_ok(r, "run --resume after the holder was killed")
    return out + "; after SIGKILL of the holder the resume ran (exit 0)"


@case("d9_predict_refused_while_locked", "fault", "clear_error", defect=9)
def _(tmp: Path) -> str:
    _, run, data = FIX.copy_run(tmp)
    holder = _hold_lock(run)
    try:
        r = cli("predict", run, data, "--model", "1lin")
        out = expect_clear_error(r, f"process {holder.pid}")
        need(not (run / "applied").exists() or not any((run / "applied").rglob("*.nc")), "predictions written")
    finally:
        _kill(holder)
    expect_ok(cli("predict", run, data, "--model", "1lin"), "predict after the holder was killed")
    return out + "; after SIGKILL of the holder predict ran"


# ----------------------------------------------------------------------- 10. metric edge cases


@case("d10_night_time_h_near_zero_mean", "bad_input", "defined_metrics", defect=10, needs_data=False)
def _(tmp: Path) -> str:
    import pandas as pd

    from hybridlsm.evaluation.metrics import skill_table

    rng = np.random.default_rng(1)
    n = 48 * 14
    time_ = pd.date_range("2020-01-01", periods=n, freq="30min").values
    obs = rng.normal(0.0, 10.0, n)  # night-time H: mean about 0
    sims = {"m": obs + 5.0 + rng.normal(0.0, 3.0, n)}
    t = skill_table(obs, sims, time_, site="S", flux="Qh")
    row = t[t.scale == "halfhourly"].iloc[0]
    need(np.isnan(row.bias_pct), f"bias_pct {row.bias_pct}")
    need("near zero" in str(row.bias_pct_note), f"bias_pct_note {row.bias_pct_note!r}")
    need(abs(row.bias - 5.0) < 1.0, f"bias {row.bias}")
    need(row.kge_form == "2021" and np.isfinite(row.kge), f"kge {row.kge} form {row.kge_form}")
    need(not t.suspect.any(), "flagged suspect")
    return f"bias_pct NaN ({row.bias_pct_note}); bias {row.bias:.2f} W m-2; KGE'' {row.kge:.3f} (form 2021)"


@case("d10_no_scored_pairs_is_empty_not_suspect", "bad_input", "defined_metrics", defect=10, needs_data=False)
def _(tmp: Path) -> str:
    import pandas as pd

    from hybridlsm.evaluation.metrics import skill_table

    n = 48 * 3
    time_ = pd.date_range("2020-01-01", periods=n, freq="30min").values
    obs = np.full(n, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        t = skill_table(obs, {"m": np.ones(n)}, time_, site="S", flux="Qh")
    need((t["n"] == 0).all(), f"n {t['n'].tolist()}")
    need(not t.suspect.any(), "rows without pairs flagged suspect")
    need(t["rmse"].isna().all(), f"rmse {t['rmse'].tolist()}")
    return "no observations: n = 0, scores empty (NaN), not suspect"


# ======================================================================= further: bad files

_GOOD_ROW = "200405061100,200405061130,25.149,1006.58,331.402,27.45,14.1,85.348,0,3.525"


@case("file_empty", "bad_input", "clear_error")
def _(tmp: Path) -> str:
    p = tmp / "in" / WKG
    p.parent.mkdir()
    p.write_bytes(b"")
    return run_expecting_error(tmp, p, WKG, "empty")


@case("file_header_only", "bad_input", "clear_error")
def _(tmp: Path) -> str:
    header, _ = wkg_table(1)
    p = write_csv(tmp / "in" / WKG, header, [])
    return run_expecting_error(tmp, p, WKG, "no data rows")


@case("file_binary_garbage", "bad_input", "clear_error")
def _(tmp: Path) -> str:
    p = tmp / "in" / WKG
    p.parent.mkdir()
    p.write_bytes(bytes(np.random.default_rng(3).integers(0, 256, 4000, dtype=np.uint8)))
    return run_expecting_error(tmp, p, WKG)


@case("file_truncated_mid_line", "bad_input", "clear_error")
def _(tmp: Path) -> str:
    p = wkg_slice(tmp / "in", 10)
    text = p.read_text()
    p.write_text(text[: len(text) - 60])  # the last line cut after a few fields
    return run_expecting_error(tmp, p, WKG, "line 481")


@case("file_not_utf8", "bad_input", "clear_error")
def _(tmp: Path) -> str:
    p = wkg_slice(tmp / "in", 10)
    data = p.read_bytes().replace(b"\n200405061200,", b"\n20040506\xff\xfe00,", 1)
    p.write_bytes(data)
    out = run_expecting_error(tmp, p, WKG, "not UTF-8")
    need(re.search(r"\b(line|byte) \d+", out) is not None, f"the message does not say where: {out}")
    return out


@case("file_timestamps_going_backwards", "bad_input", "clear_error")
def _(tmp: Path) -> str:
    def swap(header, rows):
        rows[10], rows[11] = rows[11], rows[10]

    return run_expecting_error(tmp, wkg_slice(tmp / "in", 10, swap), WKG, "TIMESTAMP_START", "line 1")


@case("file_off_grid_timestamp", "bad_input", "clear_error")
def _(tmp: Path) -> str:
    def shift(header, rows):
        rows[10][0] = rows[10][0][:-2] + "10"
        rows[10][1] = rows[10][1][:-2] + "40"

    return run_expecting_error(tmp, wkg_slice(tmp / "in", 10, shift), WKG, "TIMESTAMP", "line 12")


@case("file_missing_row_inserted_and_flagged", "bad_input", "flagged_repair")
def _(tmp: Path) -> str:
    from hybridlsm.data import prepare_forcing, read_site

    def drop(header, rows):
        del rows[100]

    p = wkg_slice(tmp / "in", 10, drop)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = read_site(p)
        prepared = prepare_forcing(ds)
    said = [str(w.message) for w in caught if "missing rows" in str(w.message)]
    need(said and WKG in said[0], f"no warning names the missing row: {[str(w.message)[:100] for w in caught]}")
    need(ds.sizes["time"] == 480, f"{ds.sizes['time']} steps")
    need(bool(prepared["Tair_filled"].values[100]), "the inserted step is not flagged as filled")
    return f"warned ({short(said[0], 150)}); the step is filled and flagged Tair_filled"


@case("file_text_in_numeric_column", "bad_input", "clear_error")
def _(tmp: Path) -> str:
    def text(header, rows):
        rows[5][header.index("SW_IN_F")] = "abc"

    return run_expecting_error(tmp, wkg_slice(tmp / "in", 10, text), WKG, "SW_IN_F", "'abc'", "line 7")


@case("file_missing_air_temperature", "bad_input", "clear_error")
def _(tmp: Path) -> str:
    return run_expecting_error(tmp, wkg_slice(tmp / "in", 10, drop_columns("TA_F")), WKG, "Tair")


@case("file_missing_shortwave", "bad_input", "clear_error")
def _(tmp: Path) -> str:
    return run_expecting_error(tmp, wkg_slice(tmp / "in", 10, drop_columns("SW_IN_F")), WKG, "SWdown")


@case("file_air_temperature_in_kelvin", "bad_input", "clear_error")
def _(tmp: Path) -> str:
    p = wkg_slice(tmp / "in", 10, set_column("TA_F", numeric(lambda v: v + 273.15)))
    return run_expecting_error(tmp, p, WKG, "TA_F", "look like K")


@case("file_pressure_in_hpa", "bad_input", "clear_error")
def _(tmp: Path) -> str:
    p = wkg_slice(tmp / "in", 10, set_column("PA_F", numeric(lambda v: v * 10.0)))
    return run_expecting_error(tmp, p, WKG, "PA_F", "hPa")


@case("file_vpd_in_kpa", "bad_input", "clear_error")
def _(tmp: Path) -> str:
    p = wkg_slice(tmp / "in", 10, set_column("VPD_F", numeric(lambda v: v / 10.0)))
    return run_expecting_error(tmp, p, WKG, "VPD_F", "kPa")


@case("file_wind_all_missing", "bad_input", "clear_error")
def _(tmp: Path) -> str:
    p = wkg_slice(tmp / "in", 10, set_column("WS_F", lambda v: "-9999"))
    return run_expecting_error(tmp, p, WKG, "Wind")


@case("file_wind_nan_tokens", "bad_input", "clear_error")
def _(tmp: Path) -> str:
    p = wkg_slice(tmp / "in", 10, set_column("WS_F", lambda v: "NaN"))
    return run_expecting_error(tmp, p, WKG, "Wind")


@case("file_absurd_value_1e30", "bad_input", "clear_error")
def _(tmp: Path) -> str:
    def huge(header, rows):
        rows[7][header.index("WS_F")] = "1e30"

    out = run_expecting_error(tmp, wkg_slice(tmp / "in", 10, huge), WKG, "WS_F (Wind)")
    need(names_row(out, 7, wkg_table(10)[1][7][0]), f"the row is not named: {out}")
    return out


@case("file_infinite_value", "bad_input", "clear_error")
def _(tmp: Path) -> str:
    def inf(header, rows):
        rows[7][header.index("WS_F")] = "inf"

    return run_expecting_error(tmp, wkg_slice(tmp / "in", 10, inf), WKG, "WS_F", "line 9")


@case("file_crlf_line_ends_read_identically", "bad_input", "accepted_identical")
def _(tmp: Path) -> str:
    import xarray as xr

    from hybridlsm.data import read_site

    header, rows = wkg_table(5)
    a = write_csv(tmp / "a" / WKG, header, rows)
    b = write_csv(tmp / "b" / WKG, header, rows, newline="\r\n")
    b.write_bytes(b"\xef\xbb\xbf" + b.read_bytes())  # and a byte-order mark, as Excel writes
    for folder in ("a", "b"):
        write_sites(tmp / folder, [site_row(WKG, rows)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        da, db = read_site(a), read_site(b)
    try:
        xr.testing.assert_identical(da.assign_attrs(source_file=""), db.assign_attrs(source_file=""))
    except AssertionError as err:
        raise AssertionError(f"the CRLF + BOM file reads differently: {short(str(err), 300)}") from None
    return f"CRLF + BOM file read to the same dataset as the LF file ({da.sizes['time']} steps, {len(da.data_vars)} variables)"


@case("file_duplicated_column_name", "bad_input", "clear_error")
def _(tmp: Path) -> str:
    def dup(header, rows):
        header[header.index("WS_F")] = "TA_F"

    return run_expecting_error(tmp, wkg_slice(tmp / "in", 5, dup), WKG, "TA_F", "header")


@case("file_without_flux_observations", "bad_input", "clear_error")
def _(tmp: Path) -> str:
    edit = set_column("LE_F_MDS", lambda v: "-9999")
    p = wkg_slice(tmp / "in", 10, lambda h, r: (edit(h, r), set_column("H_F_MDS", lambda v: "-9999")(h, r)))
    return run_expecting_error(tmp, p, WKG, "LE_F_MDS", "Qle")


@case("path_does_not_exist", "bad_input", "clear_error", needs_data=False)
def _(tmp: Path) -> str:
    return run_expecting_error(tmp, tmp / "no" / "such.csv", "such.csv", "data.sites", "not found")


@case("path_is_a_directory", "bad_input", "clear_error", needs_data=False)
def _(tmp: Path) -> str:
    folder = tmp / "adir.csv"
    folder.mkdir()
    return run_expecting_error(tmp, folder, "adir.csv", "data.sites")


@case("file_unknown_extension", "bad_input", "clear_error")
def _(tmp: Path) -> str:
    p = wkg_slice(tmp / "in", 2)
    q = p.with_suffix(".txt")
    p.rename(q)
    return run_expecting_error(tmp, q, q.name, "unknown file format", "fluxnet-csv")


# -------------------------------------------------------------------------- netCDF inputs

_NC: dict[str, object] = {}


def plumber_pair():
    """The first 10 days of DK-Fou's PLUMBER2 Met and Flux files (loaded once)."""
    import xarray as xr

    if "pair" not in _NC:
        orig = FLUXNET / "original"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with xr.open_dataset(orig / "DK-Fou_2005-2005_FLUXNET2015_Met.nc") as m, \
                    xr.open_dataset(orig / "DK-Fou_2005-2005_FLUXNET2015_Flux.nc") as f:  # fmt: skip
                _NC["pair"] = (m.isel(time=slice(0, 480)).load(), f.isel(time=slice(0, 480)).load())
    met, flux = _NC["pair"]
    return met.copy(deep=True), flux.copy(deep=True)


def write_pair(folder: Path, met, flux) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    m, f = folder / "DK-Fou_2005-2005_FLUXNET2015_Met.nc", folder / "DK-Fou_2005-2005_FLUXNET2015_Flux.nc"
    met.to_netcdf(m)
    flux.to_netcdf(f)
    return {"met": str(m), "flux": str(f)}


@case("netcdf_unknown_units_attribute", "bad_input", "clear_error")
def _(tmp: Path) -> str:
    met, flux = plumber_pair()
    met["Tair"].attrs["units"] = "furlongs"
    pair = write_pair(tmp / "in", met, flux)
    return run_expecting_error(tmp, pair, "DK-Fou_2005-2005_FLUXNET2015_Met.nc", "Tair", "furlongs")


@case("netcdf_units_attribute_lies", "bad_input", "clear_error")
def _(tmp: Path) -> str:
    met, flux = plumber_pair()
    met["Tair"].attrs["units"] = "degC"  # the values are in K
    pair = write_pair(tmp / "in", met, flux)
    return run_expecting_error(tmp, pair, "DK-Fou_2005-2005_FLUXNET2015_Met.nc", "Tair", "look like K")


@case("netcdf_plumber2_extra_dimension", "bad_input", "clear_error")
def _(tmp: Path) -> str:
    met, flux = plumber_pair()
    met["Tair"] = met["Tair"].expand_dims(z=2, axis=1)
    pair = write_pair(tmp / "in", met, flux)
    return run_expecting_error(tmp, pair, "DK-Fou_2005-2005_FLUXNET2015_Met.nc", "dimension z")


@case("netcdf_without_time_dimension", "bad_input", "clear_error")
def _(tmp: Path) -> str:
    met, flux = plumber_pair()
    pair = write_pair(tmp / "in", met.isel(time=0, drop=True), flux)
    return run_expecting_error(tmp, pair, "DK-Fou_2005-2005_FLUXNET2015_Met.nc", "'time' dimension")


@case("netcdf_garbage_inspect", "bad_input", "clear_error", needs_data=False)
def _(tmp: Path) -> str:
    p = tmp / "grid.nc"
    p.write_bytes(b"CDF\x01" + bytes(range(256)) * 8)
    return expect_clear_error(cli("data", "inspect", p), "grid.nc", code=1)


@case("netcdf_grid_without_time_inspect", "bad_input", "clear_error", needs_data=False)
def _(tmp: Path) -> str:
    import xarray as xr

    p = tmp / "grid_static.nc"
    xr.Dataset({"Tair": (("y", "x"), np.full((3, 3), 290.0), {"units": "K"})}).to_netcdf(p)
    return expect_clear_error(cli("data", "inspect", p), "grid_static.nc", "time", code=1)


# ------------------------------------------------------------------------------- sites.csv


@case("sites_csv_text_in_latitude", "bad_input", "clear_error")
def _(tmp: Path) -> str:
    p = wkg_slice(tmp / "in", 5, sites={"LAT": "north"})
    return run_expecting_error(tmp, p, "sites.csv", "LAT", "'north'", "row 2")


@case("sites_csv_missing_columns", "bad_input", "clear_error")
def _(tmp: Path) -> str:
    p = wkg_slice(tmp / "in", 5)
    table = tmp / "in" / "sites.csv"
    lines = table.read_text().splitlines()
    cut = [",".join(ln.split(",")[:4]) for ln in lines]  # SITE_ID, SITE_NAME, LAT, LON only
    table.write_text("\n".join(cut) + "\n")
    return run_expecting_error(tmp, p, "sites.csv", "IGBP")


@case("sites_csv_other_site_for_the_file", "bad_input", "clear_error")
def _(tmp: Path) -> str:
    p = wkg_slice(tmp / "in", 5, sites={"SITE_ID": "US-Me2"})
    return run_expecting_error(tmp, p, "sites.csv", WKG, "US-Me2")


# ================================================================================= configs


def _config_text(tmp: Path, text: str | bytes, *names: str) -> str:
    dummy = tmp / "x.csv"
    dummy.write_text("x")
    path = tmp / "c.yaml"
    body = text if isinstance(text, bytes) else text.replace("DATA", str(dummy)).replace("RUNS", str(tmp / "runs")).encode()
    path.write_bytes(body)
    return expect_clear_error(cli("run", path), *names, code=2, nothing_in=tmp / "runs")


GOOD = """name: c
data:
  sites: [DATA]
  split: {train: 0.5, val: 0.2, test: 0.3}
  spinup_days: 1
  window_days: 2
models:
  - {name: 1lin}
training: {epochs: 2}
output: {run_dir: RUNS}
"""


@case("config_unknown_key", "bad_input", "clear_error", needs_data=False)
def _(tmp: Path) -> str:
    return _config_text(tmp, GOOD.replace("window_days", "window_dayz"), "c.yaml", "window_dayz", "allowed keys")


@case("config_wrong_type", "bad_input", "clear_error", needs_data=False)
def _(tmp: Path) -> str:
    return _config_text(tmp, GOOD.replace("epochs: 2", "epochs: many"), "c.yaml", "training.epochs", "'many'")


@case("config_invalid_yaml", "bad_input", "clear_error", needs_data=False)
def _(tmp: Path) -> str:
    return _config_text(tmp, GOOD.replace("spinup_days: 1", "spinup_days: [1"), "c.yaml", "invalid YAML", "line")


@case("config_empty_file", "bad_input", "clear_error", needs_data=False)
def _(tmp: Path) -> str:
    return _config_text(tmp, "", "c.yaml", "empty")


@case("config_not_utf8", "bad_input", "clear_error", needs_data=False)
def _(tmp: Path) -> str:
    text = GOOD.replace("DATA", str(tmp / "x.csv")).replace("RUNS", str(tmp / "runs")).encode()
    text = text.replace(b"name: c\n", b"name: c  # caf\xe9\n")
    return _config_text(tmp, text, "c.yaml", "line 1", "UTF-8")


@case("config_duplicate_key", "bad_input", "clear_error", needs_data=False)
def _(tmp: Path) -> str:
    return _config_text(tmp, GOOD.replace("  window_days: 2\n", "  window_days: 2\n  window_days: 5\n"),
                        "c.yaml", "duplicate key", "window_days", "line")


@case("config_file_does_not_exist", "bad_input", "clear_error", needs_data=False)
def _(tmp: Path) -> str:
    return expect_clear_error(cli("run", tmp / "nope.yaml"), "nope.yaml", code=2, nothing_in=tmp / "runs")


@case("config_unknown_model", "bad_input", "clear_error", needs_data=False)
def _(tmp: Path) -> str:
    return _config_text(tmp, GOOD.replace("{name: 1lin}", "{name: lgbm}"), "models[0].name", "'lgbm'", "allowed")


@case("config_unknown_model_option", "bad_input", "clear_error", needs_data=False)
def _(tmp: Path) -> str:
    return _config_text(tmp, GOOD.replace("{name: 1lin}", "{name: physics, options: {epoch: 2}}"),
                        "models[0]", "'epoch'", "allowed keys")


@case("config_duplicate_model_labels", "bad_input", "clear_error", needs_data=False)
def _(tmp: Path) -> str:
    return _config_text(tmp, GOOD.replace("  - {name: 1lin}\n", "  - {name: 1lin}\n  - {name: 1lin}\n"),
                        "duplicate model label", "1lin")


@case("config_split_not_summing_to_one", "bad_input", "clear_error", needs_data=False)
def _(tmp: Path) -> str:
    return _config_text(tmp, GOOD.replace("test: 0.3", "test: 0.4"), "data.split", "sum to 1")


@case("config_leave_one_site_out_with_one_site", "bad_input", "clear_error", needs_data=False)
def _(tmp: Path) -> str:
    return _config_text(tmp, GOOD.replace("{train: 0.5, val: 0.2, test: 0.3}", "{leave_one_site_out: true}"),
                        "leave_one_site_out", "at least 2 sites")


@case("config_negative_epochs", "bad_input", "clear_error", needs_data=False)
def _(tmp: Path) -> str:
    return _config_text(tmp, GOOD.replace("epochs: 2", "epochs: -3"), "training.epochs", "-3")


@case("config_dates_start_after_end", "bad_input", "clear_error", needs_data=False)
def _(tmp: Path) -> str:
    split = "{train: [2004-05-20, 2004-05-10], val: [2004-05-21, 2004-05-22], test: [2004-05-23, 2004-05-25]}"
    return _config_text(tmp, GOOD.replace("{train: 0.5, val: 0.2, test: 0.3}", split), "data.split", "start <= end")


@case("config_test_sites_unknown_site", "bad_input", "clear_error")
def _(tmp: Path) -> str:
    header, rows = wkg_table(10)
    a = write_csv(tmp / "in" / "a.csv", header, rows)
    b = write_csv(tmp / "in" / "b.csv", header, rows)
    write_sites(tmp / "in", [site_row("a.csv", rows, SITE_ID="US-Aaa"), site_row("b.csv", rows, SITE_ID="US-Bbb")])
    cfg = write_config(tmp, [a, b], split={"test_sites": ["US-Zzz"]})
    return expect_clear_error(cli("run", cfg), "split.test_sites", "US-Zzz", "US-Aaa", code=2, nothing_in=tmp / "runs")


@case("config_yaml_python_object_tag", "security", "clear_error", needs_data=False)
def _(tmp: Path) -> str:
    marker = tmp / "pwned"
    text = GOOD.replace("name: c", f"name: !!python/object/apply:os.system ['touch {marker}']")
    out = _config_text(tmp, text, "c.yaml", "line")
    need(not marker.exists(), "the YAML tag ran a command")
    return out + "; no command ran"


@case("config_run_name_with_path", "security", "clear_error", needs_data=False)
def _(tmp: Path) -> str:
    out = _config_text(tmp, GOOD.replace("name: c", "name: ../../escaped"), "name", "../../escaped")
    need(not (tmp.parent / "escaped").exists() and not (tmp / "escaped").exists(), "a folder escaped appeared")
    return out


# ================================================================================= runs


@case("run_again_without_resume_refused", "fault", "clear_error")
def _(tmp: Path) -> str:
    cfg, run, _ = FIX.copy_run(tmp)
    before = tree_digest(run)
    out = expect_clear_error(cli("run", cfg), str(run), "exists", "--resume", code=1)
    need(tree_digest(run) == before, "the run directory changed")
    return out + "; run unchanged"


@case("resume_with_damaged_stored_config", "fault", "clear_error")
def _(tmp: Path) -> str:
    cfg, run, _ = FIX.copy_run(tmp)
    (run / "config.yaml").write_text("name: [unclosed\n")
    before = tree_digest(run)
    out = expect_clear_error(cli("run", cfg, "--resume"), str(run / "config.yaml"), code=2)
    need(tree_digest(run) == before, "the run directory changed")
    return out


@case("kill_9_then_resume_is_identical", "fault", "identical_resume")
def _(tmp: Path) -> str:
    import pandas as pd

    data = wkg_slice(tmp / "in", 20)
    # 60 epochs in 3 rounds: a checkpoint after each; the victim runs at a lower priority than this
    # process, which polls for the first checkpoint every 5 ms, so the kill lands during training
    models = [{"name": "1lin"}, {"name": "physics", "options": {"epochs": 60, "patience": 60, "calibrate": ["rs_scale"]}}]
    ref_cfg = write_config(tmp / "ref", [data], models, name="k")
    cfg = write_config(tmp / "killed", [data], models, name="k")
    run = tmp / "killed" / "runs" / "k"
    nice = ["nice", "-n", "10"] if shutil.which("nice") else []  # (a preexec_fn would fork() this JAX process)
    cmd = [sys.executable, "-m", "hybridlsm", "run"]
    logs = {k: open(tmp / f"{k}.log", "w") for k in ("ref", "killed", "resumed")}
    ref = victim = None
    try:
        ref = subprocess.Popen(nice + cmd + [str(ref_cfg)], stdout=logs["ref"], stderr=subprocess.STDOUT, cwd=tmp,
                               env=subprocess_env())
        victim = subprocess.Popen(nice + cmd + [str(cfg)], stdout=logs["killed"], stderr=subprocess.STDOUT, cwd=tmp,
                                  env=subprocess_env())
        # the folder the run writes to: the run directory, or its hidden sibling until it has finished
        works = [run, run.with_name(f".{run.name}.partial"), run.with_name(f".{run.name}.overwrite")]
        first = [w / "checkpoints" / "physics" / "all" / "round0" / "checkpoint.json" for w in works]
        t0 = time.time()
        try:
            while victim.poll() is None and time.time() - t0 < 300:
                if any(f.exists() for f in first):
                    victim.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.005)
        finally:
            _kill(victim)
        need(victim.returncode == -signal.SIGKILL, f"the run ended before a checkpoint appeared (exit {victim.returncode}): "
             f"{(tmp / 'killed.log').read_text()[-400:]}")
        need(not (run / "report.html").exists(), "killed after the run had finished")
        work = next(w for w in works if w.exists())
        ckpts = sorted(str(c.parent.relative_to(work / "checkpoints")) for c in work.rglob("checkpoint.json"))
        preds = sorted(f.name for f in (work / "predictions").rglob("*.nc")) if (work / "predictions").exists() else []
        where = "during physics training" if "physics.nc" not in preds else "after physics was trained"
        state = f"killed {where} in {work.name}/ (checkpoints {ckpts}; predictions {preds})"
        again = cli("run", cfg)  # without --resume: refused, naming the unfinished run
        expect_clear_error(again, "--resume", code=1)
        state += f"; a plain rerun refused ({short(again.error_line(), 90)})"
        resumed = subprocess.run(cmd + [str(cfg), "--resume"], stdout=logs["resumed"], stderr=subprocess.STDOUT,
                                 cwd=tmp, env=subprocess_env(), timeout=600)
        need(resumed.returncode == 0, f"resume exit {resumed.returncode}: {(tmp / 'resumed.log').read_text()[-600:]}")
        need(ref.wait(timeout=600) == 0, f"reference run exit {ref.returncode}: {(tmp / 'ref.log').read_text()[-600:]}")
    finally:
        for f in logs.values():
            f.close()
        for p in (ref, victim):
            if p is not None:
                _kill(p)
    a = pd.read_csv(tmp / "ref" / "runs" / "k" / "metrics.csv")
    b = pd.read_csv(run / "metrics.csv")
    need(a.shape == b.shape and list(a.columns) == list(b.columns), f"metrics shapes {a.shape} vs {b.shape}")
    num = a.select_dtypes("number").columns
    same = np.array_equal(a[num].to_numpy(), b[num].to_numpy(), equal_nan=True)
    txt = [c for c in a.columns if c not in num]
    need(same and a[txt].fillna("").equals(b[txt].fillna("")),
         f"metrics differ: max |diff| {np.nanmax(np.abs(a[num].to_numpy(float) - b[num].to_numpy(float)))}")
    return f"{state}; resumed run's metrics.csv identical to the uninterrupted run ({len(a)} rows)"


@case("checkpoint_metadata_corrupt_falls_back", "fault", "fallback_to_good_checkpoint", needs_data=False)
def _(tmp: Path) -> str:
    import jax.numpy as jnp

    from hybridlsm.training.checkpoint import read_checkpoint, write_checkpoint

    def trees(v):
        return {"w": jnp.full(100, float(v))}

    for epoch in (1, 2):
        write_checkpoint(tmp, epoch, trees(epoch), {"epoch": epoch})
    (tmp / "checkpoint.json").write_text('{"format": "hybridlsm-checkpoint-1", "epoch": ')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, meta = read_checkpoint(tmp, trees(0))
    said = [str(w.message) for w in caught if "checkpoint.json" in str(w.message)]
    need(meta["epoch"] == 1, f"loaded epoch {meta['epoch']}")
    need(said, "no warning names the damaged checkpoint.json")
    return f"epoch 1 used; warned: {short(said[0], 160)}"


@case("predict_with_model_json_missing", "fault", "clear_error")
def _(tmp: Path) -> str:
    _, run, data = FIX.copy_run(tmp)
    (run / "models" / "1lin" / "all" / "model.json").unlink()
    # what a run killed while saving leaves: the model's files without model.json (written last)
    out = expect_clear_error(cli("predict", run, data, "--model", "1lin"), "1lin", "model.json", code=2)
    need(not (run / "applied").exists() or not any((run / "applied").rglob("*.nc")), "predictions written")
    return out


@case("predict_with_model_json_corrupt", "fault", "clear_error")
def _(tmp: Path) -> str:
    _, run, data = FIX.copy_run(tmp)
    target = run / "models" / "physics" / "all" / "model.json"
    target.write_text(target.read_text()[:40])
    out = expect_clear_error(cli("predict", run, data, "--model", "physics"), str(target), code=2)
    need(not (run / "applied").exists() or not any((run / "applied").rglob("*.nc")), "predictions written")
    return out


@case("prediction_without_checksum_recomputed_on_resume", "fault", "recomputed")
def _(tmp: Path) -> str:
    from hybridlsm.rundir import checksum_path, problem

    cfg, run, _ = FIX.copy_run(tmp)
    pred = run / "predictions" / "US-Wkg" / "1lin.nc"
    checksum_path(pred).unlink()
    r = cli("run", cfg, "--resume")
    expect_ok(r, "run --resume")
    need(str(pred) in r.text and "recomputing" in r.text, f"the console does not name the file: {short(r.output, 400)}")
    need(problem(pred) is None, f"after the resume: {problem(pred)}")
    return "1lin.nc without its .sha256 sidecar was named, recomputed and verifies"


@case("run_dir_parent_is_a_file", "bad_input", "clear_error")
def _(tmp: Path) -> str:
    data = wkg_slice(tmp / "in", 5)
    cfg = write_config(tmp, [data])
    (tmp / "runs").write_text("not a folder")
    r = cli("run", cfg)
    out = expect_clear_error(r, str(tmp / "runs"))
    need((tmp / "runs").read_text() == "not a folder", "the file was changed")
    return out


# ================================================================================= predict / report


@case("predict_unknown_model_label", "bad_input", "clear_error")
def _(tmp: Path) -> str:
    _, run, data = FIX.copy_run(tmp)
    return expect_clear_error(cli("predict", run, data, "--model", "lstm"), "'lstm'", "1lin", "physics", code=2)


@case("predict_file_missing_a_needed_variable", "bad_input", "clear_error")
def _(tmp: Path) -> str:
    _, run, _ = FIX.copy_run(tmp)
    p = wkg_slice(tmp / "in", 5, drop_columns("WS_F"))
    out = expect_clear_error(cli("predict", run, p, "--model", "physics"), WKG, "Wind", code=2)
    need(not (run / "applied").exists() or not any((run / "applied").rglob("*.nc")), "predictions written")
    return out


@case("predict_period_outside_record", "bad_input", "clear_error")
def _(tmp: Path) -> str:
    _, run, data = FIX.copy_run(tmp)
    r = cli("predict", run, data, "--model", "1lin", "--start", "2010-01-01", "--end", "2010-02-01")
    return expect_clear_error(r, "2010-01-01", "outside", code=2)


@case("predict_not_a_run_directory", "bad_input", "clear_error", needs_data=False)
def _(tmp: Path) -> str:
    (tmp / "x.csv").write_text("x")
    return expect_clear_error(cli("predict", tmp, tmp / "x.csv", "--model", "1lin"), str(tmp), "not a run directory",
                              code=2)


@case("predict_site_id_path_traversal", "security", "writes_inside_run_dir")
def _(tmp: Path) -> str:
    _, run, _ = FIX.copy_run(tmp)
    p = wkg_slice(tmp / "in", 5, name="tower.csv", sites={"SITE_ID": "../../../Y"})
    before = tree(tmp)
    expect_ok(cli("predict", run, p, "--model", "1lin"), "predict")
    new = tree(tmp) - before
    outside = sorted(x for x in new if not x.startswith("runs/base/applied"))
    need(not outside, f"written outside RUN_DIR/applied: {outside}")
    need(any("predictions/_.._.._Y/1lin.nc" in x for x in new), f"no sanitised folder among {sorted(new)[:8]}")
    return f"predict wrote {len(new)} paths, all under runs/base/applied/1lin (site folder _.._.._Y)"


@case("report_on_a_folder_that_is_not_a_run", "bad_input", "clear_error", needs_data=False)
def _(tmp: Path) -> str:
    (tmp / "notes.txt").write_text("x")
    out = expect_clear_error(cli("report", tmp), "predictions/", "run directory", code=2)
    need(sorted(p.name for p in tmp.iterdir()) == ["notes.txt"], "files written")
    return out


@case("report_with_missing_observations", "fault", "clear_error")
def _(tmp: Path) -> str:
    _, run, _ = FIX.copy_run(tmp)
    (run / "predictions" / "US-Wkg" / "obs.nc").unlink()
    return expect_clear_error(cli("report", run), "obs.nc")


@case("inspect_bad_file_exits_1", "bad_input", "clear_error", needs_data=False)
def _(tmp: Path) -> str:
    p = tmp / "broken.csv"
    p.write_text("TIMESTAMP_START,TIMESTAMP_END,TA_F\n200405061100,200405061130,warm\n")
    r = cli("data", "inspect", p)
    out = expect_clear_error(r, "broken.csv", "TA_F", code=1)
    need("ERROR" in r.output, "no ERROR row")
    return out


@case("inspect_directory_exits_1", "bad_input", "clear_error", needs_data=False)
def _(tmp: Path) -> str:
    folder = tmp / "folder.csv"
    folder.mkdir()
    return expect_clear_error(cli("data", "inspect", folder), "folder.csv", code=1)


@case("inspect_path_does_not_exist", "bad_input", "clear_error", needs_data=False)
def _(tmp: Path) -> str:
    return expect_clear_error(cli("data", "inspect", tmp / "missing_file.csv"), "missing_file.csv", code=1)


# ================================================================================ security


@case("html_report_escapes_site_id", "security", "escaped")
def _(tmp: Path) -> str:
    evil = "<script>alert(1)</script>"
    data = wkg_slice(tmp / "in", 10, name="tower.csv", sites={"SITE_ID": evil, "SITE_NAME": "<b>x</b>"})
    expect_ok(cli("run", write_config(tmp, [data])), "run")
    run = tmp / "runs" / "r"
    report = (run / "report.html").read_text()
    need("<script" not in report.lower(), "an unescaped <script> in report.html")
    need("&lt;script&gt;alert(1)&lt;/script&gt;" in report, "the escaped site id is not in the report")
    names = sorted(p.name for p in (run / "predictions").iterdir())
    need(all("/" not in n and "<" not in n for n in names), f"site folders {names}")
    return f"report.html shows the id escaped (&lt;script&gt;…); site folder {names[0]}"


def _pickle_findings(name: str, data: bytes) -> list[str]:
    found = []
    if len(data) > 2 and data[0] == 0x80 and data[1] in (2, 3, 4, 5):
        found.append(f"{name}: starts with a pickle protocol-{data[1]} header")
    for m in re.finditer(rb"\x93NUMPY", data):
        i = m.start()
        major = data[i + 6]
        if major == 1:
            n, off = int.from_bytes(data[i + 8 : i + 10], "little"), i + 10
        else:
            n, off = int.from_bytes(data[i + 8 : i + 12], "little"), i + 12
        try:
            header = ast.literal_eval(data[off : off + n].decode("latin1"))
            descr = str(header.get("descr"))
        except (ValueError, SyntaxError, AttributeError):
            continue
        if "O" in descr:
            found.append(f"{name}: a numpy array of Python objects (pickled), descr {descr}")
    return found


@case("no_pickle_in_a_finished_run", "security", "no_pickle")
def _(tmp: Path) -> str:
    run = FIX.base_run()["run"]
    files = [p for p in run.rglob("*") if p.is_file()]
    found = [f"{p.relative_to(run)}: pickle file name" for p in files if p.suffix in (".pkl", ".pickle", ".joblib")]
    npz = 0
    for p in files:
        data = p.read_bytes()
        found += _pickle_findings(str(p.relative_to(run)), data)
        if zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as z:
                for member in z.namelist():
                    found += _pickle_findings(f"{p.relative_to(run)}!{member}", z.read(member))
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                for k in z.files:
                    z[k]  # noqa: B018 - raises ValueError for an object array
            npz += 1
    need(not found, "; ".join(found[:5]))
    need(npz > 0, "no .npz file to check")
    return f"{len(files)} files scanned (zip members too): no pickle header or object array; {npz} .npz load with allow_pickle=False"


@case("nothing_written_outside_the_run_directory", "security", "writes_inside_run_dir")
def _(tmp: Path) -> str:
    data = wkg_slice(tmp / "in", 10)
    cfg = write_config(tmp / "cfg", [data], [{"name": "1lin"}, {"name": "2lin"}])
    before = tree_digest(tmp)
    expect_ok(cli("run", cfg), "run")
    after = tree_digest(tmp)
    changed = sorted(k for k in before if after.get(k) != before[k])
    new = sorted(k for k in after if k not in before)
    outside = [k for k in new if not (k == "cfg/runs" or k.startswith("cfg/runs/r/") or k == "cfg/runs/r")]
    need(not changed, f"existing files changed: {changed}")
    need(not outside, f"written outside the run directory: {outside}")
    need(not (tmp / "cfg" / "runs" / ".r.lock").exists(), "the lock file was left behind")
    tmp_left = [k for k in new if k.endswith(".tmp")]
    need(not tmp_left, f"temporary files left: {tmp_left}")
    return f"{len(new)} new paths, all inside runs/r; inputs unchanged; no lock or .tmp file left"


# ========================================================================== the runner


def run_case(c: Case) -> dict:
    """Perform one case in a fresh temporary folder (the working directory meanwhile); every
    exception is caught and recorded."""
    record = {"case": c.name, "kind": c.kind, "expected": c.expected, "outcome": "", "ok": False, "defect": c.defect,
              "seconds": 0.0}
    if c.needs_data and not (FLUXNET / WKG).is_file():
        record["outcome"] = f"not run: real data not found at {FLUXNET} (../shared/data beside the repository)"
        return record
    tmp = Path(tempfile.mkdtemp(prefix=f"hybridlsm-rel-{c.name[:40]}-"))
    cwd = os.getcwd()
    sink = io.StringIO()
    t0 = time.perf_counter()
    try:
        os.chdir(tmp)
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("always")
            warnings.simplefilter("ignore", DeprecationWarning)
            outcome = c.check(tmp)
        record.update(outcome=str(outcome), ok=True)
    except AssertionError as err:
        record["outcome"] = f"FAILED: {err}"
    except BaseException as err:  # noqa: BLE001 - every failure is recorded, the next case runs
        if isinstance(err, KeyboardInterrupt):
            raise
        tb = traceback.extract_tb(err.__traceback__)
        where = f" ({Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""
        record["outcome"] = f"unexpected {type(err).__name__}: {err}{where}"
    finally:
        os.chdir(cwd)
        shutil.rmtree(tmp, ignore_errors=True)
    record["outcome"] = record["outcome"].replace(str(tmp), "<tmp>")
    if FIX.root is not None:
        record["outcome"] = record["outcome"].replace(str(FIX.root), "<shared tmp>")
    record["seconds"] = round(time.perf_counter() - t0, 2)
    return record


def run_cases(cases: list[Case], console) -> list[dict]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    records = []
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console, transient=True, redirect_stdout=False,
                        redirect_stderr=False)  # fmt: skip
    try:
        with progress:
            task = progress.add_task("cases", total=len(cases))
            for c in cases:
                progress.update(task, description=f"[cyan]{c.name}[/cyan]")
                records.append(run_case(c))
                progress.advance(task)
    finally:
        FIX.cleanup()
    return records


def print_table(records: list[dict], console, seconds: float) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"Reliability cases (issue 11): {sum(r['ok'] for r in records)} of {len(records)} ok, "
                        f"{seconds:.0f} s")  # fmt: skip
    for col in ("case", "kind", "expected", "ok"):
        table.add_column(col, no_wrap=True)
    table.add_column("outcome", overflow="fold", ratio=1, min_width=30)
    for r in records:
        label = r["case"] + (f" [dim](#{r['defect']})[/dim]" if r["defect"] else "")
        table.add_row(label, r["kind"], r["expected"], "[green]yes[/green]" if r["ok"] else "[red]NO[/red]",
                      escape(short(r["outcome"], 110)))
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results file (default results/reliability.json)")
    parser.add_argument("--only", default=None, help="run only the cases whose name contains this")
    parser.add_argument("--kind", choices=KINDS, default=None, help="run only the cases of this kind")
    args = parser.parse_args(argv)

    from rich.console import Console

    console = Console(file=sys.stdout)
    if not console.is_terminal:
        console = Console(file=sys.stdout, width=220)
    cases = [c for c in CASES if (args.only is None or args.only in c.name) and args.kind in (None, c.kind)]
    if not cases:
        console.print(f"no case matches {args.only!r} of kind {args.kind!r}")
        return 2
    t0 = time.perf_counter()
    records = run_cases(cases, console)
    seconds = time.perf_counter() - t0
    print_table(records, console, seconds)
    slow = sorted(records, key=lambda r: -r["seconds"])[:5]
    console.print("slowest: " + ", ".join(f"{r['case']} {r['seconds']:.0f} s" for r in slow))
    out = args.out if args.out.is_absolute() else Path.cwd() / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    keys = ("case", "kind", "expected", "outcome", "ok", "defect")
    out.write_text(json.dumps([{k: r[k] for k in keys} for r in records], indent=1, ensure_ascii=False) + "\n")
    covered = sorted({r["defect"] for r in records if r["defect"]})
    bad = [r for r in records if not r["ok"]]
    kinds = ", ".join(f"{k} {sum(r['kind'] == k for r in records)}" for k in KINDS)
    for d in sorted(set(DEFECTS) - set(covered)) if args.only is None and args.kind is None else []:
        console.print(f"[red]defect {d} ({DEFECTS[d]}) has no case[/red]")
    console.print(f"{len(records)} cases ({kinds}); defects covered: {covered}; {len(bad)} not ok; "
                  f"{seconds:.0f} s -> {out}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
