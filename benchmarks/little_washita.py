"""Little Washita (issue 15 item 6b): the fixed-K_h regional physics (``models.regional.fixed_kh_model``:
Louis-scheme K_h, LaD's r_s per class) over the 41 x 41 x 1 km NLDAS-2 forcing of
``../shared/data/gridded/LittleWashita_NLDAS_41x41_120h.nc`` and its land-cover map, compared with
the file's one ParFlow-CLM reference snapshot (``evaluation.regional.compare_reference_snapshot``):
spatial correlation, mean bias and pattern standard deviations of H, LE and surface temperature
(model AvgSurfT against CLM's ground temperature t_grnd) at 1998-10-01 10:00 local standard time.
The snapshot is ParFlow-CLM model output, not observations.

Two runs: the headline one spun up by repeating the record's first day ``--spin-up-days`` times
before it (``data.virtual_region.with_spin_up``), and a cold start from the physics' initial state
at the record's start, as the ParFlow-CLM reference itself is 12 h from its start.

    python benchmarks/little_washita.py [--spin-up-days 3] [--quick]

Writes results/little_washita.json (corr_qh, corr_qle, corr_avgsurft, bias_*, snapshot_time,
command, details) and the block between ``<!-- little-washita:begin ... -->`` and
``<!-- little-washita:end -->`` in docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from hybridlsm.data.gridded import read_gridded, read_reference_snapshot  # first: the package sets XLA flags
from hybridlsm.data.schema import DataError
from hybridlsm.data.virtual_region import with_igbp_land_cover, with_spin_up
from hybridlsm.evaluation.regional import REFERENCE_FIELDS, compare_reference_snapshot
from hybridlsm.models.regional import fixed_kh_model, predict_regional, region_data

import jax.numpy as jnp  # noqa: E402  (after the package)
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docblock import replace_block  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FILE = ROOT.parent / "shared" / "data" / "gridded" / "LittleWashita_NLDAS_41x41_120h.nc"
BEGIN = "<!-- little-washita:begin (written by benchmarks/little_washita.py; do not edit by hand) -->"
END = "<!-- little-washita:end -->"
SHORT = {"Qh": "qh", "Qle": "qle", "AvgSurfT": "avgsurft"}


def run(grid, snapshot, spin_up_days: int) -> dict:
    """The fixed-K_h physics over ``grid`` (with the first day repeated ``spin_up_days`` times
    before it) compared with ``snapshot``."""
    ds = with_spin_up(grid, spin_up_days) if spin_up_days else grid
    data = region_data(ds, jnp.float32)
    out = predict_regional(fixed_kh_model(data), data)
    result = compare_reference_snapshot(out, data.time, snapshot)
    result["max_coupling_residual_wm2"] = float(out["coupling_residual"].max())
    step = result["step"]
    ref_cls = snapshot["land_cover"].values.reshape(-1) if "land_cover" in snapshot.coords else None
    result["by_class"] = {
        cls: {"cells": int((data.cell_class == i).sum()),
              **{f"{n}_model": float(np.asarray(out[n])[step][data.cell_class == i].mean()) for n in ("Qh", "Qle")},
              **({f"{n}_reference": float(snapshot[n].values.reshape(-1)[ref_cls == code].mean()) for n in ("Qh", "Qle")}
                 if ref_cls is not None else {})}
        for i, (cls, code) in enumerate(zip(data.classes, _codes(data.classes)))}
    return result


def _codes(classes):
    from hybridlsm.data.schema import IGBP_BY_INDEX

    return [IGBP_BY_INDEX.index(c) + 1 for c in classes]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--file", type=Path, default=FILE)
    ap.add_argument("--spin-up-days", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="prints the comparison; writes nothing")
    args = ap.parse_args()
    if not args.file.exists():
        raise DataError(f"{args.file}: not found (the Little Washita sample of ../shared/data/gridded)")
    grid = with_igbp_land_cover(read_gridded(args.file).load())
    snapshot = read_reference_snapshot(args.file)
    t0 = time.time()
    spun = run(grid, snapshot, args.spin_up_days)
    cold = run(grid, snapshot, 0)
    print(f"two runs in {time.time() - t0:.0f} s", flush=True)
    summary = {
        **{f"corr_{SHORT[n]}": spun[n]["corr"] for n in REFERENCE_FIELDS},
        **{f"bias_{SHORT[n]}": spun[n]["bias"] for n in REFERENCE_FIELDS},
        "snapshot_time": spun["snapshot_time"],
        "snapshot_time_note": "start of the model hour in local standard time (UTC-6); the file's ref_time "
                              "1998-10-01 17:00 UTC is its end; forcing step 12",
        "reference": spun["reference"],
        "model": "fixed_kh (Louis-scheme K_h, LaD r_s per IGBP class), regional physics, open boundaries",
        "spin_up_days": args.spin_up_days,
        "fields": {n: spun[n] for n in REFERENCE_FIELDS},
        "by_class": spun["by_class"],
        "cold_start": {n: cold[n] for n in REFERENCE_FIELDS},
        "max_coupling_residual_wm2": spun["max_coupling_residual_wm2"],
        "command": " ".join(["python benchmarks/little_washita.py", *sys.argv[1:]]),
    }
    print(json.dumps(summary, indent=1))
    if args.quick:
        return
    (ROOT / "results" / "little_washita.json").write_text(json.dumps(summary, indent=1) + "\n")
    block = f"{BEGIN}\n{_table(summary)}\n{END}"
    replace_block(ROOT / "docs" / "results.md", BEGIN, END, block,
                  heading="## Regional mode: Little Washita against ParFlow-CLM\n\n")


def _fmt(v, digits=2):
    return "–" if v is None else f"{v:.{digits}f}"


def _table(s: dict) -> str:
    lines = [
        f"The fixed-K_h regional physics over the Little Washita NLDAS-2 forcing (41 x 41 x 1 km, 120 h, its "
        f"IGBP map; first day repeated {s['spin_up_days']} times as spin-up) against the one ParFlow-CLM "
        f"snapshot of the file, {s['snapshot_time']} local standard time (UTC-6). The snapshot is another "
        f"model's output (a ParFlow test's regression reference, 12 h from its start), not observations. "
        f"`{s['command']}`.",
        "",
        "| model field | ParFlow-CLM | spatial r | bias (model - ref) | sd model | sd ref | mean model | mean ref "
        "| r, cold start |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, f in s["fields"].items():
        cold = s["cold_start"][name]
        lines.append(f"| {name} | {f['reference_variable']} | {_fmt(f['corr'])} | {_fmt(f['bias'], 1)} | "
                     f"{_fmt(f['sd_model'], 1)} | {_fmt(f['sd_reference'], 1)} | {_fmt(f['mean_model'], 1)} | "
                     f"{_fmt(f['mean_reference'], 1)} | {_fmt(cold['corr'])} |")
    lines += ["", "Fluxes in W m-2, temperatures in K; Tsurf is CLM's ground temperature t_grnd, AvgSurfT the "
                  "LaD column's surface temperature. Class means at the snapshot (model / ParFlow-CLM):", "",
              "| IGBP class | cells | H model | H ParFlow-CLM | LE model | LE ParFlow-CLM |", "|---|---|---|---|---|---|"]
    for cls, c in s["by_class"].items():
        lines.append(f"| {cls} | {c['cells']} | {_fmt(c['Qh_model'], 0)} | {_fmt(c.get('Qh_reference'), 0)} | "
                     f"{_fmt(c['Qle_model'], 0)} | {_fmt(c.get('Qle_reference'), 0)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
