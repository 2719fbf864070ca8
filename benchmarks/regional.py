"""Regional benchmark on the virtual region (issue 15 items 7 and 8): train the hybrid (spatiotemporal
parameteriser + gridded physics, two-phase), its ablations, the CNN-LSTM and the column hybrid on the
tower fluxes (and, for the regional hybrids, the gappy surface-temperature product) of the training
blocks, run the fixed-K_h physics, and score all of them at the held-out cells over the test blocks
against the truth, with the seed's Tables 1-5.

    python benchmarks/regional.py [--ny 32] [--days 30] [--epochs1 12 --epochs2 6] [--models a,b] [--quick]

Models (``--models``, default all): ``hybrid``, ``fixed_kh``, ``cnn_lstm``, ``column_hybrid`` (the
registry's hybrid_param trained on the tower cells and run on every cell as independent columns
under the forcing's air), and the ablations of seed 000 Table 3, each of the hybrid ``--base``
(default ``hybrid_scale_vpd``, the one validation chose; a model's record holds its ``base``, and records
without one predate the option and are of ``hybrid``):
``no_parameteriser`` (one learned pair of its fields per land-cover class instead of the network),
``no_physics_residual`` (lambda_energy 0), ``no_discovery`` (lambda_discovery 0), ``no_uq`` (dropout 0),
and ``hybrid_ensemble``: a deep ensemble
(Lakshminarayanan et al. 2017) of ``--members`` hybrids ``--base``, member 0 that hybrid itself (taken from
this run when it trains it too), member k trained from seed + k at the learning rate the hybrid chose on
validation; its prediction is the members' mean (fields and fluxes), its epistemic SD that of the
members' spread and their own MC dropout (``models.ensemble.combine_members``), and each member's
scores are kept (``models.hybrid_ensemble.members``); ``hybrid_fallback``: the hybrid ``--base`` (taken
from this run when it trains it too) with the epistemic fallback (``models.regional.epistemic_fallback``:
wherever the SD of the log field over 10 dropout passes exceeds the threshold, the field falls back to
its reference: ``class_mean``, the hybrid's own geometric mean of the field over each class's cells and
the training steps (``models.regional.class_reference``), or ``physics``, the physics' own K_h
multiplier of 1 and LaD's class r_s), the reference and threshold chosen among those and
``FALLBACK_THRESHOLDS``, or none, by the data terms of the validation loss (the scaled MSE of H and LE
at the towers and of the surface-temperature product over the grid, as training scores the validation
steps; the MSE of H and LE at the towers alone, the criterion before, is recorded beside it); ``hybrid_scale_vpd``: hybrid_scale whose network gives r_s at
a vapour-pressure deficit of 0, raised by the physics in drier air, r_s (1 + D / D0) with Leuning's D0 of
``physics.lad.RS_VPD_D0`` (``RegionalHybrid.rs_vpd_d0``). A run of some models merges their
records and table rows into results/regional.json (replacing those models' own, keeping the others,
and recording per model the command and settings it came from); the grid must be the one already
there (``--fresh`` starts a new file). Models with dropout get ``--mc-samples`` MC-dropout passes
for Table 3's coverage and CRPS, whose predictive SD is the MC SD plus the residual SD of the
validation steps by day and night (``models.regional.residual_sd``; the MC-only scores are kept as
the model's ``uq_mc_dropout_only``).

The region has a surface albedo product (the truth's class albedo with noise,
``data.virtual_region.ALBEDO_NOISE``), which every model with physics runs instead of LaD's class albedo.
Variants of the experiment (``--seed``: another training seed of the networks; ``--towers every-class``:
also a tower in each class the default four leave unobserved, water and bare soil; ``--lad-albedo``: no
albedo product, the models run LaD's class albedo, which is not the truth's) are written to the
file of ``--out``, never into results/regional.json, and ``--compare FILE...`` tabulates the hybrids
(hybrid, hybrid_ensemble, hybrid_scale, hybrid_scale_vpd, hybrid_pooled), no_parameteriser and the
baselines of several such files beside the default experiment's (the block between ``<!-- regional-variants:begin -->`` and
``<!-- regional-variants:end -->`` in docs/results.md).

Writes results/regional.json (the keys issue 15 names; ``peak_mem_gb_128x128_month`` is read from
results/regional_memory.json, written by benchmarks/regional_memory.py) after every model, and the
block between ``<!-- regional:begin -->`` and ``<!-- regional:end -->`` in docs/results.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

import hybridlsm  # noqa: F401  (XLA flags before jax starts)
from hybridlsm.config import TrainConfig
from hybridlsm.data.virtual_region import ALBEDO_NOISE, CLASS_NAMES, every_class_towers, virtual_region
from hybridlsm.evaluation.metrics import mse
from hybridlsm.evaluation.regional import (ablation_row, class_parameters, daily_extreme_scores, degradation,
                                           degradation_daily, extreme_rows, field_correlation, kh_law_rows, scale_rows,
                                           score_records, surface_masks, uq_scores)
from hybridlsm.models.regional import (
    blocked_split, build_cnn_lstm, build_hybrid, fixed_kh_model, predict_regional, region_data, train_regional,
)
from hybridlsm.models.ensemble import combine_members
from hybridlsm.models.hybrid import FALLBACK_OUTPUT
from hybridlsm.models.regional import (SCALES, TARGETS, class_reference, epistemic_fallback, field_spread,
                                       mc_dropout_regional, network_fields, residual_sd, with_residual_sd)
from hybridlsm.models.regional_baselines import (COLUMN_SPINUP_DAYS, COLUMN_WINDOW_DAYS, LAD_CLASS_OF, build_class_constants,
                                                 column_domains, predict_column_hybrid, train_column_hybrid)
from hybridlsm.neural import SpatiotemporalOptions
from hybridlsm.physics.lad import RS_VPD_D0

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docblock import replace_block  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "regional.json"
BEGIN = "<!-- regional:begin (written by benchmarks/regional.py; do not edit by hand) -->"
END = "<!-- regional:end -->"
VARIANTS_BEGIN = "<!-- regional-variants:begin (written by benchmarks/regional.py --compare; do not edit by hand) -->"
VARIANTS_END = "<!-- regional-variants:end -->"
#: the regional hybrids this benchmark trains, as ``build_hybrid``'s options
HYBRIDS = {"hybrid": {}, "hybrid_scale": {"exchange": "scale"},
           "hybrid_scale_vpd": {"exchange": "scale", "rs_vpd_d0": RS_VPD_D0}}
#: the ablations of seed 000 Table 3, each of the hybrid ``--base``
ABLATIONS = ("no_parameteriser", "no_physics_residual", "no_discovery", "no_uq")
#: the models built on the hybrid ``--base`` (their records name it: ``base_of``)
ON_BASE = ("hybrid_ensemble", "hybrid_fallback", "hybrid_pooled", *ABLATIONS)
MODELS = ("hybrid", "hybrid_ensemble", "hybrid_scale", "hybrid_fallback", "hybrid_scale_vpd", "hybrid_pooled", "fixed_kh",
          "cnn_lstm", "column_hybrid", *ABLATIONS)
#: hybrid_fallback's candidate references: whether the fallback is to the class reference
#: (``models.regional.class_reference``) or to the physics' own fields
FALLBACK_REFERENCES = {"class_mean": True, "physics": False}
#: hybrid_fallback's candidate thresholds (SD of a log field; the column hybrids' in
#: benchmarks/discovery.py)
FALLBACK_THRESHOLDS = (0.05, 0.1, 0.2, 0.4)
#: the per-model row lists of the seed's tables (each row has ``model``); Table 4 is ``class_parameters``
TABLES = ("table1_scales", "table2_extremes", "table3_ablations", "table5_kh_laws")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ny", type=int, default=32)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--epochs1", type=int, default=12)
    ap.add_argument("--epochs2", type=int, default=6)
    ap.add_argument("--lr", default="3e-3", help="learning rate, or comma-separated rates: each model trained "
                    "by train_regional trains at each and keeps the lowest validation loss")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ", ".join(MODELS))
    ap.add_argument("--mc-samples", type=int, default=50, help="MC-dropout passes of the models with dropout "
                    "(0: none; each pass is one prediction over the record)")
    ap.add_argument("--class-pooling", default="0.1,1", help="hybrid_pooled (--base with the class-pooling prior): "
                    "weight(s) of the prior, "
                    "comma-separated: it trains at each (and each --lr) and keeps the lowest validation loss")
    ap.add_argument("--base", "--ablation-base", choices=tuple(HYBRIDS), default="hybrid_scale_vpd",
                    help="the hybrid that hybrid_ensemble's members and hybrid_pooled are, and whose parts the "
                    "ablations (no_*) remove: the one validation chose (default)")
    ap.add_argument("--members", type=int, default=3, help="hybrid_ensemble: number of members (>= 2)")
    ap.add_argument("--seed", type=int, default=0, help="training seed: the networks' initialisation, the order "
                    "of the training windows and the dropout masks (the region itself is always seed 0's)")
    ap.add_argument("--towers", choices=("default", "every-class"), default="default",
                    help="tower cells: the default four (farmland, fringe, forest, urban), or also one in each "
                    "class without one (water, bare soil)")
    ap.add_argument("--lad-albedo", action="store_true", help="the region has no surface albedo product (by default "
                    f"it has one: the truth's class albedo with noise of SD {ALBEDO_NOISE:g}) and the models run LaD's "
                    "class albedo, not the truth's (a variant)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results file; a variant (--seed other than 0, "
                    "--towers every-class, --lad-albedo) needs one of its own")
    ap.add_argument("--compare", type=Path, nargs="+", metavar="FILE",
                    help="tabulate the variants' results files beside results/regional.json (and write the "
                    "docs block); trains nothing")
    ap.add_argument("--fresh", action="store_true", help="start a new results file instead of merging")
    ap.add_argument("--quick", action="store_true", help="a 12x12, 10-day smoke run; writes nothing")
    ap.add_argument("--docs-only", action="store_true",
                    help="rewrite the docs block from results/regional.json (and its memory figure from "
                         "results/regional_memory.json)")
    args = ap.parse_args()
    if args.compare:
        missing = [str(f) for f in args.compare if not f.is_file()]
        if missing:
            ap.error(f"--compare: no results file {', '.join(missing)}")
        for f in args.compare:
            try:
                held = json.loads(f.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                ap.error(f"--compare: {f} is not a JSON file: {e}")
            lacking = [k for k in ("grid", "records") if not isinstance(held, dict) or k not in held]
            if lacking:
                ap.error(f"--compare: {f} is not a results file of this benchmark (no key {', '.join(lacking)})")
        table = compare(args.compare)
        print(table)
        replace_block(ROOT / "docs" / "results.md", VARIANTS_BEGIN, VARIANTS_END,
                      f"{VARIANTS_BEGIN}\n{table}\n{VARIANTS_END}", heading="### Variants of the experiment\n\n")
        return
    variant = args.seed != 0 or args.towers != "default" or args.lad_albedo
    if variant and args.out.resolve() == RESULTS.resolve():
        ap.error("a variant (--seed other than 0, --towers every-class or --lad-albedo) is not the experiment of "
                 "results/regional.json: give it a file of its own with --out")
    if args.seed < 0:
        ap.error(f"--seed {args.seed}: expected a seed >= 0")
    if args.members < 2:
        ap.error(f"--members {args.members}: an ensemble needs at least 2 members")
    if args.docs_only:  # also takes the latest streaming figure of benchmarks/regional_memory.py
        summary = json.loads(RESULTS.read_text())
        summary["peak_mem_gb_128x128_month"] = _memory()
        RESULTS.write_text(json.dumps(summary, indent=1) + "\n")
        write_docs(summary)
        return
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(MODELS))
    if not models:
        ap.error("--models names no model")
    if unknown:
        ap.error(f"unknown models {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    if args.quick:
        args.ny, args.days, args.epochs1, args.epochs2 = 12, 10, 2, 1
        args.mc_samples = min(args.mc_samples, 3)
    command = "python benchmarks/regional.py " + " ".join(sys.argv[1:])
    commit = _commit()  # the code this run imports now (the checkout may move on while it trains)
    try:
        args.lrs = [float(v) for v in args.lr.split(",") if v.strip()]
    except ValueError:
        ap.error(f"--lr {args.lr!r}: expected numbers separated by commas")
    if not args.lrs or any(not (0.0 < v <= 1.0) for v in args.lrs):
        ap.error(f"--lr {args.lr!r}: expected rates in (0, 1]")
    try:
        args.class_pooling = [float(v) for v in args.class_pooling.split(",") if v.strip()]
    except ValueError:
        ap.error(f"--class-pooling {args.class_pooling!r}: expected numbers separated by commas")
    if not args.class_pooling or any(not (0.0 <= v < math.inf) for v in args.class_pooling):
        ap.error(f"--class-pooling {args.class_pooling!r}: expected finite weights >= 0")

    towers = every_class_towers(args.ny, args.ny) if args.towers == "every-class" else None
    ds, data, split, masks = experiment_region(args.ny, args.days, towers=towers,
                                               albedo_noise=None if args.lad_albedo else ALBEDO_NOISE)
    grid = {"ny": args.ny, "nx": args.ny, "days": args.days, "forcing_site": ds.attrs["forcing_site"],
            "towers": int(ds["tower"].sum()), "test_steps": int(split["test"].sum()),
            "albedo": "lad" if args.lad_albedo else "product"}
    if variant:  # the default experiment's grid has neither key
        grid.update(seed=args.seed, tower_layout=args.towers)
    _start_summary(grid, args.out, fresh=args.fresh or args.quick)  # a grid other than the file's: refused now
    common = {"truth_class_order_kh": _order(ds, masks["all"], "Kh_true"), "peak_mem_gb_128x128_month": _memory()}
    finished, written = [], False
    t = ds.sizes["time"]
    kh_true = np.asarray(ds["Kh_true"].values).reshape(t, -1)
    truth = {k: np.asarray(ds[f"{k}_true"].values).reshape(t, -1) for k in ("Qh", "Qle")}
    geometry = _geometry(data)

    trained = {}  # the hybrids of this run: the ensemble's member 0 (or, ensemble first, the base itself)
    for name in models:
        t0 = time.time()
        fallback = None
        if name == "hybrid_ensemble":
            members, out, info = run_ensemble(data, ds, split, args, trained, masks, kh_true)
        elif name == "hybrid_fallback":
            if args.base not in trained:
                trained[args.base] = run_model(args.base, data, ds, split, args)
            model, out, info, fallback = run_fallback(trained[args.base], data, truth, split, masks)
            info["base"] = args.base
            members = [model]
        else:
            model, out, info = trained.get(name) or run_model(name, data, ds, split, args)
            if name in HYBRIDS:  # hybrid_ensemble's member 0, hybrid_fallback's model
                trained[name] = (model, out, info)
            members = [] if model is None else [model]
        print(f"{name}: {info}", flush=True)
        uq = None
        if members and args.mc_samples >= 2 and _dropout(members[0]) > 0:
            t1 = time.time()
            mc = _mc_members(members, data, args, fallback)
            # the predictive SD: MC dropout's plus the residual SD of the validation steps (day, night)
            table = residual_sd(out, data, split["val"])
            total = with_residual_sd({**{k: v["mean"] for k, v in mc.items()},
                                      **{f"{k}_sd": v["sd"] for k, v in mc.items()}}, table, data)
            uq = {k: uq_scores(total[k], total[f"{k}_sd"], truth[k], masks["all"]) for k in ("Qh", "Qle")}
            uq["mean_sd"] = {k: float(v["sd"][masks["all"]].mean()) for k, v in mc.items()}
            info["residual_sd"] = table
            info["uq_mc_dropout_only"] = {k: uq_scores(mc[k]["mean"], mc[k]["sd"], truth[k], masks["all"])
                                          for k in ("Qh", "Qle")}
            info["mc_samples"] = args.mc_samples
            info["mc_minutes"] = (time.time() - t1) / 60.0
            print(f"{name}: MC dropout {args.mc_samples} passes in {info['mc_minutes']:.1f} min: {uq}", flush=True)
        records = score_records(name, out, ds, masks)
        rows = {
            "table1_scales": scale_rows(name, out, ds, masks),
            "table2_extremes": extreme_rows(records, name, daily=daily_extreme_scores(out, ds, masks)),
            "table3_ablations": [ablation_row(name, records, out, masks["all"], kh_true, uq)],
            "table5_kh_laws": kh_law_rows(name, out, ds, masks["all"], CLASS_NAMES, geometry)
            if "Kh" in out and "RiB" in out else [],
        }
        if isinstance(out.get("closed_loop"), dict):  # the hybrids' prediction: steps recomputed, residuals
            info["closed_loop"] = out["closed_loop"]
        info.update(command=command, commit=commit, wall_minutes=(time.time() - t0) / 60.0,
                    date=datetime.datetime.now().isoformat(timespec="seconds"),
                    settings={"ny": args.ny, "days": args.days, "epochs1": args.epochs1, "epochs2": args.epochs2,
                              "lr": info.get("lr"), "lr_candidates": args.lrs})
        top = {"command": command}
        if name == "hybrid":
            top.update(energy_residual_wm2=rows["table3_ablations"][0]["energy_residual_wm2"],
                       kh_field_corr=field_correlation(out["Kh"], kh_true, masks["all"]),
                       train_minutes=info["train_minutes"])
        if name == "fixed_kh":
            top["kh_field_corr_fixed_kh"] = field_correlation(out["Kh"], kh_true, masks["all"])
        params = class_parameters(out, ds, masks["all"], CLASS_NAMES) if "Kh" in out and "AvgSurfT" in out else None
        finished.append((name, records, rows, info, params, top))
        for rec in records:
            print(rec)
        print(json.dumps(rows["table3_ablations"][0]), flush=True)
        # the file as it is now (another sitting may have merged models since this one started), with
        # every model this run finished; written after every model: a long run keeps what it finished
        summary = {**_start_summary(grid, args.out, fresh=(args.fresh and not written) or args.quick), **common}
        for name_, records_, rows_, info_, params_, top_ in finished:
            _merge(summary, name_, records_, rows_, info_, params_)
            summary.update(top_)
        if not args.quick:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(summary, indent=1) + "\n")
            if args.out.resolve() == RESULTS.resolve():  # the docs show the default experiment only
                write_docs(summary)
            written = True
    if args.quick:
        print(_table(summary))


def experiment_region(ny: int, days: int, **region):
    """The experiment's ny x ny virtual region (seed 0, from June 2011 unless ``region`` says otherwise)
    as every regional benchmark scores it: (dataset, float32 RegionData, blocked split, surface masks of
    the held-out cells on the test blocks)."""
    t0 = time.time()
    ds = virtual_region(ny, ny, days=days, **region)
    data = region_data(ds, jnp.float32)
    split = blocked_split(data.n_steps)
    masks = surface_masks(ds, split["test"])
    print(f"virtual region {ny}x{ny}, {days} days: {time.time() - t0:.0f} s", flush=True)
    return ds, data, split, masks


def _class_order(rows: list[dict], key: str) -> str:
    """Classes from the largest to the smallest class mean ``key`` (Table 4 rows)."""
    return " > ".join(r["class"] for r in sorted(rows, key=lambda r: -r[key]))


def compare(paths: list[Path]) -> str:
    """Markdown: the models of results/regional.json and of each variant file side by side (all held-out
    values, the extreme-heat subset, the degradation, the K_h field correlation and the class orders)."""
    files = [RESULTS] + [p.resolve() for p in paths if p.resolve() != RESULTS.resolve()]
    lines = ["Each row is one training run (the held-out cells over the test blocks; MSE in W2 m-4; degradation = "
             "MSE extreme / MSE all - 1, hourly, mean of H and LE). Class orders: largest mean first.", "",
             "| experiment | model | MSE H | MSE LE | hot MSE H | hot MSE LE | degradation hot | K_h r | "
             "K_h class order | r_s class order | validation loss | commit | file |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    truth = None
    for path in files:
        s = json.loads(path.read_text())
        grid = s["grid"]
        label = (f"seed {grid.get('seed', 0)}, towers: {grid.get('tower_layout', 'default')} "
                 f"({grid['towers']})" + (", albedo product" if grid.get("albedo") == "product" else ", LaD albedo"))
        by = {(r["model"], r["surface"]): r for r in s["records"]}
        kh_r = {r["model"]: r.get("kh_field_corr") for r in s.get("table3_ablations", [])}
        for model in [m for m in ("hybrid", "hybrid_ensemble", "hybrid_scale", "hybrid_scale_vpd", "hybrid_pooled",
                                  "no_parameteriser", "fixed_kh", "cnn_lstm")
                      if (m, "all") in by]:
            rows = s.get("class_parameters", {}).get(model) or []
            if rows and truth is None:
                truth = (_class_order(rows, "kh_true_mean"), _class_order(rows, "rs_true_mean"))
            all_, hot = by[(model, "all")], by.get((model, "extreme_hot"), {})
            deg = (s.get("degradation", {}).get(model) or {}).get("extreme_hot")
            info = s.get("models", {}).get(model) or {}
            best = info.get("best_val")
            lines.append(f"| {label} | {_label(model, info)} | {_fmt(all_['mse_h'])} | {_fmt(all_['mse_le'])} | "
                         f"{_fmt(hot.get('mse_h'))} | {_fmt(hot.get('mse_le'))} | {_fmt(deg, 2)} | "
                         f"{_fmt(kh_r.get(model), 3)} | {_class_order(rows, 'kh_mean') if rows else '–'} | "
                         f"{_class_order(rows, 'rs_mean') if rows and model != 'fixed_kh' else '–'} | "
                         f"{_fmt(best, 3)} | {info.get('commit') or '–'} | "
                         f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} |")
    if truth:
        lines += ["", f"Truth: K_h {truth[0]}; r_s {truth[1]}."]
    return "\n".join(lines)


def _commit() -> str | None:
    """The repository's commit (the code a model's figures came from), with ``+`` when the code
    (src/, benchmarks/) differs from it in the working tree."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return git("rev-parse", "--short", "HEAD") + ("+" if git("status", "--porcelain", "--", "src", "benchmarks") else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def run_ensemble(data, ds, split, args, trained: dict, masks: dict, kh_true: np.ndarray):
    """``hybrid_ensemble`` (module docstring): (the members, the ensemble's outputs, info with each
    member's seed, validation loss, training minutes and scores)."""
    if args.base not in trained:
        trained[args.base] = run_model(args.base, data, ds, split, args)
    first, out0, info0 = trained[args.base]
    lr = info0["lr"]
    members, outs, infos = [first], [out0], [info0]
    for k in range(1, args.members):
        member_args = argparse.Namespace(**{**vars(args), "seed": args.seed + k})
        result, info = train_model(args.base, data, split, member_args, lr)
        print(f"hybrid_ensemble member {k} (seed {args.seed + k}): best validation loss {info['best_val']:.4f} "
              f"after {info['epochs']} epochs ({info['train_minutes']:.1f} min)", flush=True)
        members.append(result.model)
        outs.append(predict_regional(result.model, data))
        infos.append(info)
    out = combine_members([{k: v for k, v in o.items() if np.ndim(v) == 2} for o in outs], spread=())
    out["closed_loop"] = {"members": [o["closed_loop"] for o in outs]}
    rows = []
    for k, (o, i) in enumerate(zip(outs, infos)):
        rec = next(r for r in score_records(args.base, o, ds, masks) if r["surface"] == "all")
        rows.append({"seed": args.seed + k, "best_val": i["best_val"], "epochs": i["epochs"],
                     "train_minutes": i["train_minutes"], "mse_h": rec["mse_h"], "mse_le": rec["mse_le"],
                     "kh_field_corr": field_correlation(o["Kh"], kh_true, masks["all"])})
    info = {"train_minutes": sum(i["train_minutes"] for i in infos), "epochs": [i["epochs"] for i in infos],
            "lr": lr, "best_val": None, "two_phase": info0["two_phase"], "dropout": info0["dropout"],
            "members": rows, "base": args.base}
    return members, out, info


def _mc_members(members: list, data, args, fallback=None) -> dict[str, dict[str, np.ndarray]]:
    """MC dropout of one model (with its epistemic ``fallback`` masks), or of an ensemble's members
    combined by the law of total variance (``models.ensemble.combine_members``): {field: {"mean",
    "sd"}} as ``mc_dropout_regional``."""
    per = [mc_dropout_regional(m, data, samples=args.mc_samples, seed=args.seed + k, fallback=fallback)
           for k, m in enumerate(members)]
    if len(per) == 1:
        return per[0]
    fields = list(per[0])
    out = combine_members([{**{f: mc[f]["mean"] for f in fields}, **{f"{f}_sd_epistemic": mc[f]["sd"] for f in fields}}
                           for mc in per], spread=fields)
    return {f: {"mean": out[f], "sd": out[f"{f}_sd"]} for f in fields}


def _dropout(model) -> float:
    return float(getattr(getattr(model, "net", None), "dropout", 0.0) or 0.0)


def run_fallback(trained, data, truth, split, masks):
    """``hybrid_fallback`` (module docstring) from its base hybrid's (model, outputs, info) and the
    region's (T, N) true Qh and Qle: (the model, its outputs with the chosen reference and threshold,
    info with each candidate's validation loss (``fallback_selection``; the towers' H and LE MSE in
    ``fallback_selection_towers``), the class reference, the fraction of the test cell-steps' fields
    that fell back and, for the reader only (the choice is made on validation), each candidate's MSE of
    H and LE at the held-out test cells; the chosen ``Fallback`` or None)."""
    model, plain, info = trained
    t0 = time.time()
    spread = field_spread(model, data)
    reference = class_reference(model, data, split["train"])
    val = np.asarray(split["val"], bool)[:, None] & data.active[None]

    def val_loss(out) -> float:  # the validation loss's data terms: each target's MSE over its scale squared
        return float(sum(mse(out[k], data.observed[k], val) / SCALES[k] ** 2 for k in TARGETS if k in data.observed))

    def towers(out) -> float:  # mean over H and LE of the MSE at the towers' validation steps (the criterion before)
        return float(np.mean([mse(out[k], data.observed[k], val) for k in ("Qh", "Qle")]))

    candidates = {"none": (plain, None)}
    for to, ref in FALLBACK_REFERENCES.items():
        for threshold in FALLBACK_THRESHOLDS:
            fallback = epistemic_fallback(model, data, threshold, spread=spread, reference=reference if ref else None)
            candidates[f"{to} {threshold:g}"] = (predict_regional(model, data, fallback=fallback), fallback)
    selection = {k: val_loss(v[0]) for k, v in candidates.items()}
    chosen = min(selection, key=selection.get)
    out, fallback = candidates[chosen]
    info = {**info, "fallback_selection": selection, "fallback_selection_towers": {k: towers(v[0]) for k, v in candidates.items()},
            "fallback_threshold": chosen, "fallback_reference": {c: dict(zip(network_fields(model.exchange), v)) for c, v in reference.items()},
            "fallback_minutes": (time.time() - t0) / 60.0,
            "fallback_heldout_mse": {k: {"h": mse(v[0]["Qh"], truth["Qh"], masks["all"]),
                                         "le": mse(v[0]["Qle"], truth["Qle"], masks["all"])}
                                     for k, v in candidates.items()}}
    for part in ("all", "heterogeneous", "extreme_hot"):  # the share of the two fields fallen back at the held-out test cells
        info[f"fallback_fraction_{part}"] = {
            k: 0.0 if v[1] is None or not masks[part].any()
            else float(np.mean(v[0][FALLBACK_OUTPUT][masks[part]], dtype=np.float64))  # the output: the share per cell-step
            for k, v in candidates.items()}
    print(f"hybrid_fallback: validation loss by candidate {selection}; chosen {chosen}; class reference {reference}; "
          f"fraction fallen back at the held-out test cells {info['fallback_fraction_all']}; held-out MSE H / LE "
          f"(not used to choose) {info['fallback_heldout_mse']}", flush=True)
    return model, out, info, fallback


def run_model(name: str, data, ds, split, args):
    """Train (or run) one model: (the trained regional model or None, its (T, N) outputs, info).
    A model trained by ``train_regional`` trains once per learning rate of ``--lr`` and keeps the
    one with the lowest validation loss (``info["lr_selection"]``: rate -> best validation loss);
    the column hybrid trains at the first rate."""
    if name == "fixed_kh":
        return None, predict_regional(fixed_kh_model(data), data), {"train_minutes": 0.0}
    if name == "column_hybrid":
        t0 = time.time()
        cfg = TrainConfig(lr=args.lrs[0], min_lr=1e-5, patience=6, two_phase=_two_phase(args), seed=args.seed)
        full, train, val = column_domains(ds, split)
        model, opts = train_column_hybrid(train, val, cfg)
        minutes = (time.time() - t0) / 60.0
        return None, predict_column_hybrid(model, full), {
            "train_minutes": minutes, "lr": cfg.lr, "options": opts.model_dump(mode="json"), "trained_on": "tower cells",
            "spinup_days": COLUMN_SPINUP_DAYS, "window_days": COLUMN_WINDOW_DAYS, "two_phase": cfg.two_phase.model_dump(mode="json")}
    best, selection, total = None, {}, time.time()
    poolings = args.class_pooling if name == "hybrid_pooled" else [None]
    for lr, pooling in [(lr, w) for lr in args.lrs for w in poolings]:
        result, info = train_model(name, data, split, args, lr, pooling)
        what = f"lr {lr:g}" + ("" if pooling is None else f", class pooling {pooling:g}")
        selection[what] = info["best_val"]
        print(f"{name}, {what}: best validation loss {info['best_val']:.4f} after {info['epochs']} epochs "
              f"({info['train_minutes']:.1f} min)", flush=True)
        if best is None or info["best_val"] < best[1]["best_val"]:  # NaN never wins
            best = (result, info)
    result, info = best
    if len(selection) > 1:
        info.update(lr_selection=selection, selection_minutes=(time.time() - total) / 60.0)
    return result.model, predict_regional(result.model, data), info


def _two_phase(args) -> dict:
    return {"enabled": True, "phase1_epochs": args.epochs1, "phase2_epochs": args.epochs2}


def train_model(name: str, data, split, args, lr: float, pooling: float | None = None):
    """One training of a regional model at learning rate ``lr`` (``hybrid_pooled``: with the class-pooling
    weight ``pooling``): (fit's result, info)."""
    two_phase = _two_phase(args)
    seed = args.seed
    cfg = TrainConfig(lr=lr, min_lr=1e-5, patience=6, two_phase=two_phase, seed=seed)
    t0 = time.time()
    if name == "cnn_lstm":
        model, config = build_cnn_lstm(data, seed=seed), TrainConfig(lr=lr, min_lr=1e-5, patience=6, seed=seed,
                                                                     epochs=args.epochs1 + args.epochs2)
    elif name in HYBRIDS:  # hybrid_scale: K_h a multiplier of the physics' own; _vpd: r_s raised with the VPD (Leuning)
        model, config = build_hybrid(data, seed=seed, **HYBRIDS[name]), cfg
    elif name == "hybrid_pooled":  # the base with the class-pooling prior on its fields
        model, config = build_hybrid(data, seed=seed, class_pooling=pooling, **HYBRIDS[args.base]), cfg
    elif name == "no_parameteriser":
        model, config = build_class_constants(data, seed=seed, **HYBRIDS[args.base]), cfg
    elif name == "no_uq":
        model, config = build_hybrid(data, options=SpatiotemporalOptions(dropout=0.0), seed=seed,
                                     **HYBRIDS[args.base]), cfg
    elif name in ("no_physics_residual", "no_discovery"):
        weight = "lambda_energy" if name == "no_physics_residual" else "lambda_discovery"
        model, config = (build_hybrid(data, seed=seed, **HYBRIDS[args.base]),
                         TrainConfig(lr=lr, min_lr=1e-5, patience=6, seed=seed, two_phase={**two_phase, weight: 0.0}))
    else:
        raise ValueError(f"train_model: no regional model {name!r}")
    result = train_regional(model, data, config, split=split)
    info = {"train_minutes": (time.time() - t0) / 60.0, "epochs": len(result.history), "lr": lr,
            "best_val": float(result.best_val), **({} if pooling is None else {"class_pooling": pooling}), "two_phase": config.two_phase.model_dump(mode="json")
            if config.two_phase.enabled else None, "dropout": _dropout(result.model)}
    if name in ON_BASE:
        info["base"] = args.base
    if name == "no_parameteriser":
        values = result.model.net.values()
        info["class_constants"] = {c: {k: float(v[i]) for k, v in values.items()} for i, c in enumerate(data.classes)}
    return result, info


def _geometry(data) -> dict[str, np.ndarray]:
    """Each cell's LaD class and heights, for the stability schemes of Table 5."""
    codes = np.array([LAD_CLASS_OF.get(data.classes[i], data.classes[i]) for i in data.cell_class], object)
    return {"igbp": codes, "canopy_height": np.asarray(data.params["canopy_height"], float),
            "measurement_height": np.asarray(data.params["reference_height"], float)}


def _start_summary(grid: dict, path: Path, fresh: bool) -> dict:
    """The results to merge into: the existing file at ``path`` when its grid is this run's, else a
    refusal (a new file with ``fresh``)."""
    if fresh or not path.exists():
        return {"grid": grid, "records": [], "models": {}, "degradation": {}, "degradation_daily": {}, "class_parameters": {},
                **{k: [] for k in TABLES}}
    summary = json.loads(path.read_text())
    if summary.get("grid") != grid:
        sys.exit(f"{path} holds the grid {summary.get('grid')}, this run {grid}: run every model "
                 "on that grid, or start a new file with --fresh")
    old = summary.get("command")
    summary.setdefault("models", {})
    for m in sorted({r["model"] for r in summary["records"]} - set(summary["models"])):
        # records from before per-model provenance: the file's command, epochs and the hybrid's minutes
        summary["models"][m] = {"command": old, "epochs": summary.get("epochs", {}).get(m),
                                "train_minutes": summary.get("train_minutes") if m == "hybrid" else None}
    for key in TABLES:
        summary.setdefault(key, [])
    return summary


def _merge(summary: dict, name: str, records: list, rows: dict, info: dict, params) -> None:
    """Replace ``name``'s records, table rows and provenance in ``summary``; keep the others'."""
    summary["records"] = [r for r in summary["records"] if r["model"] != name] + records
    for key, new in rows.items():
        summary[key] = [r for r in summary[key] if r["model"] != name] + new
    summary["models"][name] = info
    summary["degradation"][name] = degradation(records, name)
    summary.setdefault("degradation_daily", {})[name] = degradation_daily(rows["table2_extremes"])
    if params is None:
        summary["class_parameters"].pop(name, None)
    else:
        summary["class_parameters"][name] = params
    order = {m: i for i, m in enumerate(MODELS)}
    summary["records"].sort(key=lambda r: order.get(r["model"], len(order)))
    for key in TABLES:
        summary[key].sort(key=lambda r: order.get(r["model"], len(order)))
    summary["models"] = dict(sorted(summary["models"].items(), key=lambda kv: order.get(kv[0], len(order))))


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


def base_of(info: dict) -> str:
    """The hybrid a record (``summary["models"][name]``) of one of ``ON_BASE`` is built on: one without
    a recorded base was run before ``--base``, on hybrid."""
    return info.get("base", "hybrid")


def _label(model: str, info: dict) -> str:
    """A model's name in the tables; one built on a base hybrid with that hybrid."""
    return f"{model} (of {base_of(info)})" if model in ON_BASE else model


def _fmt(v, digits=0):
    return "–" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _epochs(v) -> str:
    """Epochs trained: one count, or one per ensemble member."""
    return "/".join(map(str, v)) if isinstance(v, list) else str(v or "–")


def _sci(v):
    return "–" if v is None else f"{v:.1e}"


def _scores(r: dict) -> str:
    return (f"{_fmt(r['mse_h'])} | {_fmt(r['mse_le'])} | {_fmt(r['mae_h'], 1)} | {_fmt(r['mae_le'], 1)} | "
            f"{_fmt(r['r_h'], 2)} | {_fmt(r['r_le'], 2)}")


def _table(s: dict) -> str:
    g = s["grid"]
    name = lambda m: _label(m, s.get("models", {}).get(m) or {})  # noqa: E731
    lines = [
        f"Virtual region {g['ny']}x{g['nx']} km, {g['days']} days hourly (forcing {g['forcing_site']}), "
        f"{g['towers']} tower cells, "
        + ("a surface albedo product (the models run it instead of LaD's class albedo)" if g.get("albedo") == "product"
           else "no albedo product (the models run LaD's class albedo)")
        + f"; scored at the held-out cells over the test blocks ({g['test_steps']} steps) "
        "against the truth. Each model's figures come from the command in the last table of this block "
        "(`benchmarks/regional.py --models ...` merges models into results/regional.json).",
        "",
        "| model | surface | MSE H | MSE LE | MAE H | MAE LE | r H | r LE | n |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in s["records"]:
        lines.append(f"| {name(r['model'])} | {r['surface']} | {_scores(r)} | {r['n']} |")
    if "kh_field_corr" in s:
        lines += ["", f"Hybrid: energy residual {s['energy_residual_wm2']:.2e} W m-2; learned vs true log K_h r = "
                  f"{s['kh_field_corr']:.2f} (fixed K_h: {_fmt(s.get('kh_field_corr_fixed_kh'), 2)}); training "
                  f"{s['train_minutes']:.1f} min; degradation under extremes (MSE ratio - 1, hourly): "
                  + "; ".join(f"{m} hot {_fmt(d['extreme_hot'], 2)}, wind {_fmt(d['extreme_wind'], 2)}"
                              for m, d in s["degradation"].items()) + "."]
        if s.get("degradation_daily"):
            lines[-1] += (" As seed 000 Table 2 defines it (homogeneous farmland, daily means: MSE of the extreme's "
                          "days over the MSE of all days, minus one, H and LE averaged): "
                          + "; ".join(f"{m} hot {_fmt(d.get('extreme_hot'), 2)}, wind {_fmt(d.get('extreme_wind'), 2)}"
                                      for m, d in s["degradation_daily"].items()) + ".")
        if not any(r["n"] for r in s["records"] if r["surface"] == "extreme_wind"):
            lines[-1] += (" No test step has wind above 8 m s-1 (wind –): benchmarks/regional_periods.py scores "
                          "the windy steps of another month of the region (results/regional_periods.json).")
    if s.get("table1_scales"):
        lines += ["", "**Table 1 analogue** (seed 000): period means of the scored steps of each held-out cell "
                  "(daily; weekly = calendar weeks from the record's start, so with 3-day test blocks a week's "
                  "value is the mean over its test days), with the mean |energy residual| of the period means "
                  "(– for a model without an energy budget).", "",
                  "| scale | surface | model | MSE H | MSE LE | MAE H | MAE LE | r H | r LE | energy residual | n |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(s["table1_scales"], key=lambda r: (r["scale"] != "daily", r["surface"])):
            lines.append(f"| {r['scale']} | {r['surface']} | {name(r['model'])} | {_scores(r)} | "
                         f"{_sci(r['energy_residual_wm2'])} | {r['n']} |")
    if s.get("table2_extremes"):
        lines += ["", "**Table 2 analogue**: the extremes (T > 35 °C, u > 8 m s-1) at the held-out cells over the "
                  "test blocks; degradation rate, hourly = (MSE extreme - MSE all) / MSE all over the hours; "
                  "daily (seed 000 Table 2) = (MSE extreme days - MSE all days) / MSE all days over the daily "
                  "means of the homogeneous farmland, an extreme day being a cell-day with an extreme hour; in % "
                  "(– for a model scored before the daily rate was added). MSE and n in the first columns: hourly, "
                  "all held-out cells; n daily: farmland cell-days.", "",
                  "| extreme | model | MSE H | MSE LE | MAE H | MAE LE | r H | r LE | degradation H / LE %, hourly | "
                  "degradation H / LE %, daily (seed) | n hours / cell-days |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(s["table2_extremes"], key=lambda r: r["surface"]):
            lines.append(f"| {r['surface']} | {name(r['model'])} | {_scores(r)} | {_fmt(r['degradation_h_pct'], 1)} / "
                         f"{_fmt(r['degradation_le_pct'], 1)} | {_fmt(r.get('degradation_daily_h_pct'), 1)} / "
                         f"{_fmt(r.get('degradation_daily_le_pct'), 1)} | {r['n']} / {r.get('daily_n', '–')} |")
        empty = sorted({r["surface"] for r in s["table2_extremes"] if r["empty"]})
        if empty:
            lines += ["", f"Empty in the test blocks (no scored value): {', '.join(empty)}."]
    if s.get("table3_ablations"):
        lines += ["", "**Table 3 analogue** (ablations and baselines): all held-out values; parameter reasonability "
                  "= r of learned vs true log K_h; coverage of the 90 % interval (mean ± 1.645 sd) and Gaussian "
                  "CRPS [W m-2] of the MC-dropout passes, whose sd is the MC sd plus the residual sd of the "
                  "validation steps by day and night (– without dropout; MC dropout alone in brackets; "
                  "`MC only` marks a model run before the residual sd was added).", "",
                  "| model | MSE H | MSE LE | MAE H | MAE LE | r H | r LE | energy residual | K_h r | "
                  "coverage H / LE % | CRPS H / LE |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        pct = lambda v: _fmt(None if v is None else 100.0 * v, 1)  # noqa: E731
        for r in s["table3_ablations"]:
            info = s["models"].get(r["model"], {})
            mc = info.get("uq_mc_dropout_only")
            note = "" if r["coverage90_h"] is None else " (MC only)" if mc is None else \
                f" ({pct(mc['Qh']['coverage'])} / {pct(mc['Qle']['coverage'])})"
            crps = "" if not mc else f" ({_fmt(mc['Qh']['crps'], 1)} / {_fmt(mc['Qle']['crps'], 1)})"
            lines.append(f"| {name(r['model'])} | {_scores(r)} | {_sci(r['energy_residual_wm2'])} | "
                         f"{_fmt(r['kh_field_corr'], 2)} | {pct(r['coverage90_h'])} / {pct(r['coverage90_le'])}{note} | "
                         f"{_fmt(r['crps_h'], 1)} / {_fmt(r['crps_le'], 1)}{crps} |")
    lines += ["", "**Table 4 analogue**: per land-cover class, K_h and r_s over the held-out cells and test steps.",
              "", "| model | class | K_h mean ± sd | true K_h | r_s mean ± sd | true r_s | r(K_h, u) | r(K_h, ΔT) |",
              "|---|---|---|---|---|---|---|---|"]
    for m, rows in s["class_parameters"].items():
        for r in rows:
            lines.append(f"| {name(m)} | {r['class']} | {r['kh_mean']:.3f} ± {r['kh_sd']:.3f} | {r['kh_true_mean']:.3f} | "
                         f"{r['rs_mean']:.0f} ± {r['rs_sd']:.0f} | {r['rs_true_mean']:.0f} | {_fmt(r['r_kh_wind'], 2)} | "
                         f"{_fmt(r['r_kh_dT'], 2)} |")
    lines += ["", f"True K_h order of the classes: {', '.join(s['truth_class_order_kh'])}."]
    if s.get("table5_kh_laws"):
        lines += ["", "**Table 5 analogue**: each model's learned K_h field (held-out cells, test steps, |Ri| above "
                  "the fit threshold) fitted by the branched power law (discovered form), the Zhang-type law in "
                  "|Ri|, and Businger-Dyer and Louis with a fitted scale (`evaluation.discovery.compare_forms`).", "",
                  "| model | class | form | R² | RMSE [m² s⁻¹] | AIC | ΔAIC | n | expression |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in s["table5_kh_laws"]:
            if "error" in r:
                lines.append(f"| {name(r['model'])} | {r['class']} | – | – | – | – | – | – | {r['error']} |")
                continue
            lines.append(f"| {name(r['model'])} | {r['class']} | {r['form']} | {r['r2']:.3f} | {r['rmse']:.3g} | "
                         f"{r['aic']:.0f} | {r['delta_aic']:.0f} | {r['n']} | {r['expression']} |")
    if s.get("models"):
        lines += ["", "Provenance of each model's figures (the regional hybrids' training windows start from the "
                  "states the model carries itself since commit 343187f, from the fixed-K_h physics' before):", "",
                  "| model | command | commit | date | train min | epochs | learning rate: best validation loss "
                  "(kept: lowest) | MC passes |", "|---|---|---|---|---|---|---|---|"]
        for m, info in s["models"].items():
            chosen = (info.get("settings") or {}).get("lr")
            rates = ", ".join(f"{lr}: {v:.4f}" for lr, v in info["lr_selection"].items()) \
                if info.get("lr_selection") else (f"{chosen:g}" if chosen is not None else "–")
            lines.append(f"| {name(m)} | `{info.get('command')}` | {info.get('commit') or '–'} | "
                         f"{(info.get('date') or '–')[:10]} | {_fmt(info.get('train_minutes'), 1)} | "
                         f"{_epochs(info.get('epochs'))} | {rates} | {info.get('mc_samples') or '–'} |")
    fallback = s.get("models", {}).get("hybrid_fallback") or {}
    if "fallback_selection_towers" in fallback:  # recorded since the class reference (a run before has neither)
        lines += _fallback_table(fallback)
    members = (s.get("models", {}).get("hybrid_ensemble") or {}).get("members")
    if members:
        lines += ["", "The members of hybrid_ensemble, each scored alone (all held-out values):", "",
                  "| seed | MSE H | MSE LE | K_h r | best validation loss | epochs | train min |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {m['seed']} | {_fmt(m['mse_h'])} | {_fmt(m['mse_le'])} | {_fmt(m['kh_field_corr'], 3)} | "
                  f"{_fmt(m['best_val'], 4)} | {m['epochs']} | {_fmt(m['train_minutes'], 1)} |" for m in members]
    if s.get("peak_mem_gb_128x128_month") is not None:
        lines += ["", f"A 128x128-cell month of the physics streamed from zarr peaks at "
                      f"{s['peak_mem_gb_128x128_month']:.2f} GB (`benchmarks/regional_memory.py`)."]
    return "\n".join(lines)


def _fallback_table(info: dict) -> list[str]:
    """hybrid_fallback's candidates: reference and threshold, validation figures, and the held-out
    figures that were not used to choose."""
    lines = ["", f"hybrid_fallback (of {base_of(info)}): the epistemic fallback's candidates, chosen by the validation "
             "loss's data terms (each target's MSE over its scale squared: H and LE at the towers, the surface-"
             "temperature product over the grid); the towers' MSE (the mean of H's and LE's, the criterion before), "
             "and everything at the held-out cells, for the reader (not used to choose):", "",
             "| candidate | validation loss | towers' MSE | held-out MSE H / LE | fallen back: all / "
             "heterogeneous / hot |", "|---|---|---|---|---|"]
    for k, v in info["fallback_selection"].items():
        held = info["fallback_heldout_mse"][k]
        share = " / ".join(f"{100.0 * info[f'fallback_fraction_{p}'][k]:.1f} %" for p in ("all", "heterogeneous", "extreme_hot"))
        mark = " (chosen)" if k == info["fallback_threshold"] else ""
        lines.append(f"| {k}{mark} | {v:.5f} | {info['fallback_selection_towers'][k]:.2f} | {_fmt(held['h'])} / "
                     f"{_fmt(held['le'])} | {share} |")
    ref = "; ".join(f"{c} " + ", ".join(f"{n} {x:.3g}" for n, x in v.items()) for c, v in info["fallback_reference"].items())
    return lines + ["", f"Class reference (geometric means of the hybrid's fields over the training steps): {ref}."]


if __name__ == "__main__":
    main()
