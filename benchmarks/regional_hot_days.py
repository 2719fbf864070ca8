"""Which field misses on hot days (issue 15): the regional models' K_h and r_s fields swapped, one
at a time, with the truth's, and the physics run through each pair in the closed loop.

Every learned regional model degrades on the hot days of the virtual region by as much as the
others (seed 000 Table 2's daily rate, docs/results.md), no_parameteriser (one constant K_h and
r_s per land-cover class, no network) included. This script separates the two fields. For each
model it runs the gridded physics (``models.regional.run_fields``, the closed loop a hybrid
predicts with) through three pairs of fields:

* ``model``: the model's own K_h and r_s (its prediction, up to the closed loop's recomputations);
* ``true_kh``: the truth's K_h with the model's r_s;
* ``true_rs``: the model's K_h with the truth's r_s;

and, once for all models, ``truth``: both of the truth's fields (what is left: the albedo product's
noise, the closed loop's recomputations, and the initial state: every model starts from the physics'
initial state, the truth from its spin-up over the days before the record), ``truth_albedo``: the
truth's fields with the truth's class albedo instead of the product, and ``truth_spun_up``: the
truth's fields from a state spun up over the record's first days (``SPIN_UP_DAYS`` repeated
``SPIN_UP_CYCLES`` times, as the truth was over the days before);

and scores each at the held-out cells over the test blocks as benchmarks/regional.py does: the MSE
of H and LE over all values and on the hot steps (Tair > 35 °C), and the seed's daily degradation
rate of the hot days against the homogeneous farmland's daily MSE. It also gives, over the
homogeneous farmland's test steps, the ratio of each field to the truth's by day and on hot days.

Models (``--models``): ``no_parameteriser`` of ``hybrid`` (a constant K_h and r_s per class), its class
constants taken from results/regional.json (trained there; the same region, seed 0) where that file
holds this grid's no_parameteriser of ``hybrid``, else trained here, and ``hybrid_scale``, trained here;
both as benchmarks/regional.py trains them (``--epochs1``, ``--epochs2``, ``--lr``). hybrid_scale's K_h
field is its realised K_h, the multiplier times the physics' own.

    python benchmarks/regional_hot_days.py [--ny 32 --days 21] [--models no_parameteriser,hybrid_scale]

Writes results/regional_hot_days.json and the block between ``<!-- regional-hot-days:begin -->``
and ``<!-- regional-hot-days:end -->`` in docs/results.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import regional as bench  # noqa: E402  (the regional benchmark's region, training and scoring)
from docblock import replace_block  # noqa: E402

import jax.numpy as jnp  # noqa: E402

from hybridlsm.data.virtual_region import class_albedo  # noqa: E402
from hybridlsm.evaluation.regional import daily_extreme_scores, extreme_rows, score_records  # noqa: E402
from hybridlsm.models.regional import DAY_SWDOWN, region_data, regional_physics, run_fields  # noqa: E402
from hybridlsm.physics import spin_up  # noqa: E402
from hybridlsm.physics.lad import PRESCRIBED_KH, PRESCRIBED_RS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "regional_hot_days.json"
BEGIN = "<!-- regional-hot-days:begin (written by benchmarks/regional_hot_days.py; do not edit by hand) -->"
END = "<!-- regional-hot-days:end -->"
MODELS = ("no_parameteriser", "hybrid_scale")
#: the truth's spin-up before the record (``virtual_region``'s defaults), repeated here on the record's first days
SPIN_UP_DAYS, SPIN_UP_CYCLES = 5, 2


def model_fields(name: str, data, ds, split, args) -> tuple[np.ndarray, np.ndarray, dict]:
    """(K_h, r_s, info): a model's (T, N) fields over the record."""
    held = json.loads(bench.RESULTS.read_text()) if bench.RESULTS.is_file() else {}
    entry = held.get("models", {}).get(name)
    same_grid = held.get("grid", {}).get("ny") == args.ny and held.get("grid", {}).get("days") == args.days
    # a no_parameteriser of another hybrid (its base) holds a K_h multiplier, not K_h: trained below
    if name == "no_parameteriser" and entry and same_grid and bench.base_of(entry) == "hybrid":
        constants = entry["class_constants"]
        cls = [data.classes[i] for i in data.cell_class]
        kh = np.array([constants[c]["Kh"] for c in cls])
        rs = np.array([constants[c]["rs"] for c in cls])
        shape = (data.n_steps, len(cls))
        return (np.broadcast_to(kh, shape), np.broadcast_to(rs, shape),
                {"source": f"class constants of {bench.RESULTS.name} (commit {entry.get('commit')})"})
    _, out, info = bench.run_model(name, data, ds, split, args)
    kept = {k: info[k] for k in ("train_minutes", "epochs", "lr", "best_val")}
    return np.asarray(out["Kh"]), np.asarray(out["rs_field"]), kept


def field_ratios(kh, rs, kh_true, rs_true, day: np.ndarray, hot: np.ndarray) -> dict:
    """Median ratio of each field to the truth's over the (T, N) masks ``day`` and ``hot``."""
    ratio = {"kh": kh / kh_true, "rs": rs / rs_true}
    return {f"{k}_ratio_{w}": float(np.median(v[m])) for k, v in ratio.items()
            for w, m in (("day", day), ("hot", hot))}


def score_pair(name: str, pair: str, out: dict, kh, rs, ds, masks, truth, day, hot) -> dict:
    """One record of the table: the run of ``name``'s ``pair`` of fields scored as benchmarks/regional.py
    scores a model (printed as it comes)."""
    records = score_records(name, out, ds, masks)
    by = {r["surface"]: r for r in records}
    rows = extreme_rows(records, name, daily=daily_extreme_scores(out, ds, masks))
    hot_row = next(r for r in rows if r["surface"] == "extreme_hot")
    rec = {"model": name, "fields": pair,
           **{f"{k}_all": by["all"][k] for k in ("mse_h", "mse_le")},
           **{f"{k}_hot": by["extreme_hot"][k] for k in ("mse_h", "mse_le")},
           "degradation_daily_h_pct": hot_row["degradation_daily_h_pct"],
           "degradation_daily_le_pct": hot_row["degradation_daily_le_pct"],
           "hot_days_n": hot_row["daily_n"],
           "recomputed_steps": out["closed_loop"]["recomputed_steps"],
           **field_ratios(kh, rs, truth["Kh"], truth["rs"], day, hot)}
    print(f"{name} {pair}: MSE H / LE all {rec['mse_h_all']:.0f} / {rec['mse_le_all']:.0f}, hot "
          f"{rec['mse_h_hot']:.0f} / {rec['mse_le_hot']:.0f}; daily hot-day rate H / LE "
          f"{rec['degradation_daily_h_pct']:+.0f} / {rec['degradation_daily_le_pct']:+.0f} %; r_s / true "
          f"day {rec['rs_ratio_day']:.2f}, hot {rec['rs_ratio_hot']:.2f}; K_h / true day "
          f"{rec['kh_ratio_day']:.2f}, hot {rec['kh_ratio_hot']:.2f}", flush=True)
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ny", type=int, default=32)
    ap.add_argument("--days", type=int, default=21)
    ap.add_argument("--epochs1", type=int, default=24)
    ap.add_argument("--epochs2", type=int, default=6)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ", ".join(MODELS))
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models or set(models) - set(MODELS):
        ap.error(f"--models {args.models!r}: choose from {', '.join(MODELS)}")
    # what benchmarks/regional.py's run_model reads
    args.lrs, args.class_pooling, args.seed, args.base = [args.lr], [None], 0, "hybrid"
    command = " ".join(["python benchmarks/regional_hot_days.py", *sys.argv[1:]])
    commit = bench._commit()

    t0 = time.time()
    ds, data, split, masks = bench.experiment_region(args.ny, args.days)
    t = ds.sizes["time"]
    truth = {k: np.asarray(ds[f"{k}_true"].values).reshape(t, -1) for k in ("Kh", "rs")}
    sw = np.asarray(ds["SWdown"].values).reshape(t, -1)
    day = masks["homogeneous"] & (sw > DAY_SWDOWN)
    hot = masks["homogeneous"] & masks["extreme_hot"]

    summary = {"grid": {"ny": args.ny, "nx": args.ny, "days": args.days, "forcing_site": ds.attrs["forcing_site"],
                        "test_steps": int(split["test"].sum())},
               "command": command, "commit": commit, "date": datetime.datetime.now().isoformat(timespec="seconds"),
               "models": {}, "records": []}
    for name in models:
        kh_m, rs_m, info = model_fields(name, data, ds, split, args)
        summary["models"][name] = info
        pairs = {"model": (kh_m, rs_m), "true_kh": (truth["Kh"], rs_m), "true_rs": (kh_m, truth["rs"])}
        for pair, (kh, rs) in pairs.items():
            summary["records"].append(score_pair(name, pair, run_fields(data, kh, rs), kh, rs, ds, masks, truth, day,
                                                 hot))
    # the floor, the truth's fields: with the albedo product, with the truth's albedo, and from a state
    # spun up over the record's first SPIN_UP_DAYS repeated SPIN_UP_CYCLES times, as the truth was
    # spun up before the record (every model starts cold)
    exact = region_data(ds.assign(Albedo=(("y", "x"), class_albedo(ds["surface_class"].values))), jnp.float32)
    n = SPIN_UP_DAYS * 24
    state0, _ = spin_up(regional_physics(data), data.params, data.forcing.at(slice(0, n)), max_cycles=SPIN_UP_CYCLES,
                        dynamic={PRESCRIBED_KH: jnp.asarray(truth["Kh"][:n], jnp.float32),
                                 PRESCRIBED_RS: jnp.asarray(truth["rs"][:n], jnp.float32)})
    floors = {"truth": (data, None), "truth_albedo": (exact, None), "truth_spun_up": (data, state0)}
    for pair, (grid, start) in floors.items():
        out = run_fields(grid, truth["Kh"], truth["rs"], state0=start)
        summary["records"].append(score_pair("truth", pair, out, truth["Kh"], truth["rs"], ds, masks, truth, day, hot))
    summary["wall_minutes"] = (time.time() - t0) / 60.0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    if args.out.resolve() == RESULTS.resolve():
        replace_block(ROOT / "docs" / "results.md", BEGIN, END, f"{BEGIN}\n{table(summary)}\n{END}",
                      heading="### Which field misses on hot days\n\n")
    print(table(summary))


def table(s: dict) -> str:
    """The docs block: one row per model and pair of fields."""
    f = lambda v, d=0: "–" if v is None else f"{v:.{d}f}"  # noqa: E731
    g = s["grid"]
    lines = [f"{g['ny']}x{g['nx']} virtual region, {g['days']} days, held-out cells over the test blocks "
             f"({g['test_steps']} steps); commit {s['commit']}, `{s['command']}`. MSE in W² m⁻⁴; hot: steps with "
             "Tair > 35 °C; daily rate: seed 000 Table 2's, hot days against all days of the homogeneous farmland "
             "(daily means); field ratios: median of the field over the truth's on the homogeneous farmland's "
             "daytime test steps and on its hot steps.", "",
             "| model | K_h, r_s | MSE H all / hot | MSE LE all / hot | daily hot-day rate H / LE % | "
             "K_h / true day, hot | r_s / true day, hot | recomputed steps |",
             "|---|---|---|---|---|---|---|---|"]
    words = {"model": "model's, model's", "true_kh": "**true**, model's", "true_rs": "model's, **true**",
             "truth": "true, true", "truth_albedo": "true, true; and the true albedo",
             "truth_spun_up": f"true, true; from a state spun up over the first {SPIN_UP_DAYS} days"}
    for r in s["records"]:
        lines.append(f"| {r['model']} | {words[r['fields']]} | {f(r['mse_h_all'])} / {f(r['mse_h_hot'])} | "
                     f"{f(r['mse_le_all'])} / {f(r['mse_le_hot'])} | {f(r['degradation_daily_h_pct'])} / "
                     f"{f(r['degradation_daily_le_pct'])} | {f(r['kh_ratio_day'], 2)}, {f(r['kh_ratio_hot'], 2)} | "
                     f"{f(r['rs_ratio_day'], 2)}, {f(r['rs_ratio_hot'], 2)} | {r['recomputed_steps']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
