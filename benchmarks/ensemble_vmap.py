"""Deep-ensemble training, members one after the other vs together (stacked, one vmapped update).

An ensemble of ``--members`` hybrid_param members (dropout 0.15, physics_init default) on a short
virtual site (``data.virtual.virtual_site``: ``--days`` days, the first 70 % training, the rest
validation), trained both ways with the same seeds in float32 (the training default) on the default
JAX backend. Each way is trained once with compilation (``*_first_train_s``) and then ``--repeats``
times more, the two ways alternating so that both share the machine's load; ``*_train_s`` is the
fastest of those (compiled functions reused; the machine's other work only ever slows a run down). ``max_abs_diff_prediction``: the largest
difference [W m-2] between the two ensembles' Qh and Qle predictions over the whole record.

    .venv/bin/python benchmarks/ensemble_vmap.py   # -> results/ensemble_vmap.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np

from hybridlsm.data.virtual import virtual_site
from hybridlsm.domain import domain_from_site
from hybridlsm.models.registry import TrainingContext, get_model, validate_options, validate_run_config

OUT = Path(__file__).resolve().parents[1] / "results" / "ensemble_vmap.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    ds = virtual_site(site_id="VMAP", days=args.days, seed=1, noise=5.0)
    n, cut = ds.sizes["time"], int(0.7 * args.days) * 48
    train, val = ds.copy(), ds.copy()
    train["loss_mask"] = ("time", np.arange(n) < cut)
    val["loss_mask"] = ("time", np.arange(n) >= cut)
    train, val = [domain_from_site(train)], [domain_from_site(val)]
    run = validate_run_config({"name": "bench", "data": {"sites": [{"virtual": {"days": args.days}}],
                                                         "spinup_days": 1, "window_days": 3},
                               "models": [{"name": "physics"}],
                               "training": {"epochs": args.epochs, "batch_windows": 4, "patience": 50}})  # fmt: skip
    ctx = TrainingContext.from_config(run, progress=False)
    spec = get_model("ensemble")
    member = {"dropout": 0.15, "mc_samples": 10, "physics_init": "default", "calibrate": [], "discovery": False}
    trained, first, warm = {}, {}, {False: [], True: []}
    for attempt in range(1 + args.repeats):
        for vmap in (False, True):
            opts = validate_options("ensemble", {"model": "hybrid_param", "size": args.members, "vmap": vmap,
                                                 "options": member})  # fmt: skip
            t0 = time.perf_counter()
            trained[vmap] = spec.train(spec.build(opts), opts, train, val, ctx)
            took = time.perf_counter() - t0
            if attempt == 0:
                first[vmap] = took
            else:
                warm[vmap].append(took)
            print(f"{trained[vmap].trained}: run {attempt} {took:.1f} s", flush=True)
    pred = {vmap: spec.predict(m, val[0]) for vmap, m in trained.items()}
    diff = max(float(np.nanmax(np.abs(pred[True][t] - pred[False][t]))) for t in ("Qh", "Qle"))
    result = {
        "members": args.members,
        "sequential_train_s": round(min(warm[False]), 2),
        "vmapped_train_s": round(min(warm[True]), 2),
        "speedup": round(min(warm[False]) / min(warm[True]), 2),
        "sequential_first_train_s": round(first[False], 2),
        "vmapped_first_train_s": round(first[True], 2),
        "max_abs_diff_prediction": diff,
        "days": args.days,
        "epochs": args.epochs,
        "model": "hybrid_param (width 32, depth 2, dropout 0.15), batch_windows 4, 3-day windows",
        "dtype": str(jax.numpy.zeros(0).dtype),
        "backend": jax.default_backend(),
    }
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
