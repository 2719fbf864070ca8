"""Regional benchmark on the virtual region (issue 15): train the hybrid (spatiotemporal
parameteriser + gridded physics, two-phase) and the CNN-LSTM on the tower fluxes and the gappy
surface-temperature product of the training blocks, run the fixed-K_h physics, and score all of
them at the held-out cells over the test blocks against the truth.

    python benchmarks/regional.py [--ny 32] [--days 30] [--epochs1 12 --epochs2 6] [--quick]

Writes results/regional.json (the keys issue 15 names; ``peak_mem_gb_128x128_month`` is read from
results/regional_memory.json, written by benchmarks/regional_memory.py) and the block between
``<!-- regional:begin -->`` and ``<!-- regional:end -->`` in docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

import hybridlsm  # noqa: F401  (XLA flags before jax starts)
from hybridlsm.config import TrainConfig
from hybridlsm.data.virtual_region import CLASS_NAMES, virtual_region
from hybridlsm.evaluation.regional import class_parameters, degradation, field_correlation, score_records, surface_masks
from hybridlsm.models.regional import (
    blocked_split, build_cnn_lstm, build_hybrid, fixed_kh_model, predict_regional, region_data, train_regional,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docblock import replace_block  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BEGIN = "<!-- regional:begin (written by benchmarks/regional.py; do not edit by hand) -->"
END = "<!-- regional:end -->"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ny", type=int, default=32)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--epochs1", type=int, default=12)
    ap.add_argument("--epochs2", type=int, default=6)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--quick", action="store_true", help="a 12x12, 10-day smoke run; writes nothing")
    ap.add_argument("--docs-only", action="store_true",
                    help="rewrite the docs block from results/regional.json (and its memory figure from "
                         "results/regional_memory.json)")
    args = ap.parse_args()
    if args.docs_only:  # also takes the latest streaming figure of benchmarks/regional_memory.py
        summary = json.loads((ROOT / "results" / "regional.json").read_text())
        summary["peak_mem_gb_128x128_month"] = _memory()
        (ROOT / "results" / "regional.json").write_text(json.dumps(summary, indent=1) + "\n")
        write_docs(summary)
        return
    if args.quick:
        args.ny, args.days, args.epochs1, args.epochs2 = 12, 10, 2, 1

    t0 = time.time()
    ds = virtual_region(args.ny, args.ny, days=args.days)
    print(f"virtual region {args.ny}x{args.ny}, {args.days} days: {time.time() - t0:.0f} s", flush=True)
    data = region_data(ds, jnp.float32)
    split = blocked_split(data.n_steps)
    masks = surface_masks(ds, split["test"])
    two_phase = {"enabled": True, "phase1_epochs": args.epochs1, "phase2_epochs": args.epochs2}
    cfg = TrainConfig(lr=args.lr, min_lr=1e-5, patience=6, two_phase=two_phase)
    cfg_cnn = TrainConfig(lr=args.lr, min_lr=1e-5, patience=6, epochs=args.epochs1 + args.epochs2)

    outputs, minutes, epochs = {}, {}, {}
    outputs["fixed_kh"] = predict_regional(fixed_kh_model(data), data)
    for name, build, config in (("hybrid", build_hybrid, cfg), ("cnn_lstm", build_cnn_lstm, cfg_cnn)):
        t0 = time.time()
        result = train_regional(build(data), data, config, split=split)
        minutes[name] = (time.time() - t0) / 60.0
        epochs[name] = len(result.history)
        print(f"{name}: trained in {minutes[name]:.1f} min, {epochs[name]} epochs, best val {result.best_val:.4f}",
              flush=True)
        outputs[name] = predict_regional(result.model, data)

    records = [rec for name, out in outputs.items() for rec in score_records(name, out, ds, masks)]
    t = ds.sizes["time"]
    kh_true = np.asarray(ds["Kh_true"].values).reshape(t, -1)
    energy = outputs["hybrid"]
    residual = np.abs(energy["Rnet"] - energy["Qh"] - energy["Qle"] - energy["Qg"] - energy["Qf"])
    summary = {
        "energy_residual_wm2": float(max(residual[masks["all"]].mean(), energy["air_energy_residual"].max())),
        "kh_field_corr": field_correlation(outputs["hybrid"]["Kh"], kh_true, masks["all"]),
        "kh_field_corr_fixed_kh": field_correlation(outputs["fixed_kh"]["Kh"], kh_true, masks["all"]),
        "train_minutes": minutes["hybrid"],
        "peak_mem_gb_128x128_month": _memory(),
        "records": records,
        "degradation": {m: degradation(records, m) for m in outputs},
        "class_parameters": {m: class_parameters(outputs[m], ds, masks["all"], CLASS_NAMES) for m in ("hybrid", "fixed_kh")},
        "truth_class_order_kh": _order(ds, masks["all"], "Kh_true"),
        "epochs": epochs,
        "grid": {"ny": args.ny, "nx": args.ny, "days": args.days, "forcing_site": ds.attrs["forcing_site"],
                 "towers": int(ds["tower"].sum()), "test_steps": int(split["test"].sum())},
        "command": "python benchmarks/regional.py " + " ".join(sys.argv[1:]),
    }
    print(json.dumps({k: v for k, v in summary.items() if k not in ("records", "class_parameters")}, indent=1))
    for rec in records:
        print(rec)
    if args.quick:
        return
    (ROOT / "results" / "regional.json").write_text(json.dumps(summary, indent=1) + "\n")
    write_docs(summary)


def write_docs(summary: dict) -> None:
    block = f"{BEGIN}\n{_table(summary)}\n{END}"
    replace_block(ROOT / "docs" / "results.md", BEGIN, END, block, heading="## Regional mode: the virtual region\n\n")


def _memory() -> float | None:
    path = ROOT / "results" / "regional_memory.json"
    if not path.exists():
        return None
    return json.loads(path.read_text()).get("peak_mem_gb_128x128_month")


def _order(ds, mask, name):
    t = ds.sizes["time"]
    cls = np.asarray(ds["surface_class"].values).reshape(-1)
    values = np.asarray(ds[name].values).reshape(t, -1)
    means = {c: float(values[mask & (cls == i)[None, :]].mean()) for i, c in enumerate(CLASS_NAMES)
             if (mask & (cls == i)[None, :]).any()}
    return sorted(means, key=means.get, reverse=True)


def _fmt(v, digits=0):
    return "–" if v is None else f"{v:.{digits}f}"


def _table(s: dict) -> str:
    lines = [
        f"Virtual region {s['grid']['ny']}x{s['grid']['nx']} km, {s['grid']['days']} days hourly "
        f"(forcing {s['grid']['forcing_site']}), {s['grid']['towers']} tower cells; scored at the held-out cells "
        f"over the test blocks ({s['grid']['test_steps']} steps). `{s['command']}`.",
        "",
        "| model | surface | MSE H | MSE LE | MAE H | MAE LE | r H | r LE | n |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in s["records"]:
        lines.append(f"| {r['model']} | {r['surface']} | {_fmt(r['mse_h'])} | {_fmt(r['mse_le'])} | {_fmt(r['mae_h'], 1)} | "
                     f"{_fmt(r['mae_le'], 1)} | {_fmt(r['r_h'], 2)} | {_fmt(r['r_le'], 2)} | {r['n']} |")
    lines += ["", f"Energy residual {s['energy_residual_wm2']:.2e} W m-2; learned vs true log K_h r = "
              f"{s['kh_field_corr']:.2f} (fixed K_h: {s['kh_field_corr_fixed_kh']:.2f}); hybrid training "
              f"{s['train_minutes']:.1f} min; degradation under extremes (MSE ratio - 1): "
              + "; ".join(f"{m} hot {_fmt(d['extreme_hot'], 2)}, wind {_fmt(d['extreme_wind'], 2)}"
                          for m, d in s["degradation"].items()) + ".",
              "", "| model | class | K_h mean ± sd | true K_h | r_s mean ± sd | true r_s | r(K_h, u) | r(K_h, ΔT) |",
              "|---|---|---|---|---|---|---|---|"]
    for m, rows in s["class_parameters"].items():
        for r in rows:
            lines.append(f"| {m} | {r['class']} | {r['kh_mean']:.3f} ± {r['kh_sd']:.3f} | {r['kh_true_mean']:.3f} | "
                         f"{r['rs_mean']:.0f} ± {r['rs_sd']:.0f} | {r['rs_true_mean']:.0f} | {r['r_kh_wind']:.2f} | "
                         f"{r['r_kh_dT']:.2f} |")
    lines += ["", f"True K_h order of the classes: {', '.join(s['truth_class_order_kh'])}."]
    if s.get("peak_mem_gb_128x128_month") is not None:
        lines += ["", f"A 128x128-cell month of the physics streamed from zarr peaks at "
                      f"{s['peak_mem_gb_128x128_month']:.2f} GB (`benchmarks/regional_memory.py`)."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
