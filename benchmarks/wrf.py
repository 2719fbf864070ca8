"""WRF cutout (issue 15 item 6b): the fixed-K_h regional physics (``models.regional.fixed_kh_model``:
Louis-scheme K_h, LaD's r_s per IGBP class) driven by WRF's own forcing on the 8 x 10 cells of
``../shared/data/gridded/wrf_d01_allvars_cropped.nc`` (``data.wrf.read_wrf``: local standard time,
Q2 as specific humidity, earth-relative winds, differenced precipitation, Qg = -GRDFLX, USGS land use
as IGBP, the water cell masked), scored against WRF's H, LE, ground heat flux and skin temperature at
each of the file's four 3-hourly steps (``evaluation.regional.compare_reference_snapshot``: spatial
correlation, bias, pattern SDs over the land cells).

WRF's fluxes come from its own land model (Noah): this is agreement between two models on WRF's
forcing, the loading and scoring path of a real gridded-flux target, not skill against observations.
The record is 12 h long and the file has no soil state, so the physics starts cold from its own
initial state at the first step (no spin-up is possible: the record is shorter than a day).

    python benchmarks/wrf.py [--quick]

Writes results/wrf.json (per step and field: corr, bias, rmse, sd_model, sd_reference, mean_model,
mean_reference, n; the means over steps; command) and the block between ``<!-- wrf:begin ... -->``
and ``<!-- wrf:end -->`` in docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hybridlsm.data.schema import DataError  # first: the package sets XLA flags
from hybridlsm.data.wrf import read_wrf
from hybridlsm.evaluation import metrics
from hybridlsm.evaluation.regional import compare_reference_snapshot
from hybridlsm.models.regional import fixed_kh_model, predict_regional, region_data

import jax.numpy as jnp  # noqa: E402  (after the package)
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docblock import replace_block  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FILE = ROOT.parent / "shared" / "data" / "gridded" / "wrf_d01_allvars_cropped.nc"
BEGIN = "<!-- wrf:begin (written by benchmarks/wrf.py; do not edit by hand) -->"
END = "<!-- wrf:end -->"
#: model output -> WRF variable (as read_wrf names them)
FIELDS = {"Qh": "Qh", "Qle": "Qle", "Qg": "Qg", "AvgSurfT": "AvgSurfT"}


def score(path: Path) -> dict:
    ds = read_wrf(path).load()
    data = region_data(ds, jnp.float32)
    out = predict_regional(fixed_kh_model(data), data)
    steps = []
    for k, when in enumerate(ds["time"].values):
        snapshot = ds.isel(time=k)[list(FIELDS.values())]
        snapshot.attrs = {"source_file": str(path), "data_kind": ds.attrs.get("data_kind", "WRF model output")}
        cmp = compare_reference_snapshot(out, data.time, snapshot, FIELDS)
        for name in FIELDS:  # RMSE over the same cells as the correlation (both finite)
            cmp[name]["rmse"] = metrics.rmse(np.asarray(out[name])[k].reshape(-1), snapshot[FIELDS[name]].values.reshape(-1))
        steps.append({"time": str(when)[:16], **{n: cmp[n] for n in FIELDS}})
    means = {n: {q: float(np.mean([s[n][q] for s in steps if s[n][q] is not None]))
                 for q in ("corr", "bias", "rmse", "mean_model", "mean_reference")} for n in FIELDS}  # fmt: skip
    return {"file": str(path), "cells": int(np.asarray(data.active).sum()), "steps": steps, "mean_over_steps": means,
            "model": "fixed_kh (Louis-scheme K_h, LaD r_s per IGBP class), regional physics, cold start",
            "reference": ds.attrs.get("data_kind", "WRF model output"),
            "max_coupling_residual_wm2": float(np.nanmax(np.asarray(out["coupling_residual"])))}


def _fmt(v, digits=2):
    return "–" if v is None else f"{v:.{digits}f}"


def _table(s: dict) -> str:
    lines = [f"The fixed-K_h regional physics on WRF's own forcing (`{Path(s['file']).name}`, {s['cells']} land cells "
             f"of 8 x 10, four 3-hourly steps, local standard time), cold start, against WRF's fields. WRF's fluxes "
             f"are its land model's output, not observations. `{s['command']}`.", "",
             "| step | field | spatial r | bias (model - WRF) | RMSE | mean model | mean WRF |", "|---|---|---|---|---|---|---|"]
    for st in s["steps"]:
        for name in FIELDS:
            f = st[name]
            lines.append(f"| {st['time'][11:]} | {name} | {_fmt(f['corr'])} | {_fmt(f['bias'], 1)} | {_fmt(f['rmse'], 1)} | "
                         f"{_fmt(f['mean_model'], 1)} | {_fmt(f['mean_reference'], 1)} |")
    lines += ["", "Fluxes in W m-2 (Qg positive into the ground), temperatures in K."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--file", type=Path, default=FILE)
    ap.add_argument("--quick", action="store_true", help="prints the comparison; writes nothing")
    args = ap.parse_args()
    if not args.file.exists():
        raise DataError(f"{args.file}: not found (the WRF sample of ../shared/data/gridded)")
    summary = {**score(args.file), "command": " ".join(["python benchmarks/wrf.py", *sys.argv[1:]])}
    print(json.dumps(summary["mean_over_steps"], indent=1))
    if args.quick:
        return
    (ROOT / "results" / "wrf.json").write_text(json.dumps(summary, indent=1) + "\n")
    replace_block(ROOT / "docs" / "results.md", BEGIN, END, f"{BEGIN}\n{_table(summary)}\n{END}",
                  heading="## Regional mode: the WRF cutout against WRF's own fluxes\n\n")


if __name__ == "__main__":
    main()
