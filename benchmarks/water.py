"""Structural water errors of the calibrated LaD (issue 12 item 2): summer (JJA) LE bias at US-Me2
and US-Wkg with LaD's closed root zone and with deep roots (``physics`` option ``deep_water``).

For each site (the blocked splits of ``configs/us-me2-blocked.yaml`` and
``configs/us-wkg-blocked.yaml``: calibration on the training weeks, early stopping and judgement on
the validation weeks; the test weeks are never looked at) and each variant:

- ``lad``: LaD as today (the calibrated ``physics`` of the configs, ``deep_water: none``);
- ``groundwater``: deep roots draw on LaD's groundwater store W_g, ``deep_root_fraction`` calibrated;
- ``table_jackson``: deep roots draw on water below the column, ``deep_root_fraction`` at the
  Jackson et al. (1996) value (not calibrated);
- ``table``: as ``table_jackson`` with ``deep_root_fraction`` calibrated;
- ``default`` / ``default_table``: uncalibrated LaD table parameters, without / with deep roots;

it calibrates (in this process, nothing written to ``runs/``), predicts the whole record and writes
``results/water.json``: JJA LE bias [%] on every step with a usable observation and on the validation
weeks alone, validation NSE of Qle and Qh, the calibrated parameters, and the record's water budget
(precipitation, observed ET = LE / L_v, modelled ET, deep supply, groundwater runoff) [mm].

    PYTHONPATH=src .venv/bin/python benchmarks/water.py             # both sites, ~10 min on 2 cores
    PYTHONPATH=src .venv/bin/python benchmarks/water.py --sites us-me2-blocked --variants lad table
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT / "src"))

from hybridlsm.data.splits import VALIDATION  # noqa: E402
from hybridlsm.models.registry import TrainingContext, get_model, load_run_config  # noqa: E402
from hybridlsm.physics import default_params, from_unconstrained, to_unconstrained  # noqa: E402
from hybridlsm.pipeline import experiments, load_domains  # noqa: E402

SITES = {"us-me2-blocked": "configs/us-me2-blocked.yaml", "us-wkg-blocked": "configs/us-wkg-blocked.yaml"}
SITES_IRRIGATED = {"us-bi1-blocked": "configs/us-bi1-blocked.yaml"}  # judged with and without irrigation
VARIANTS = {  # label -> (options over the config's physics options, extra calibrated parameters, irrigated)
    "lad": ({}, [], False),
    "groundwater": ({"deep_water": "groundwater"}, ["deep_root_fraction"], False),
    "table_jackson": ({"deep_water": "table"}, [], False),
    "table": ({"deep_water": "table"}, ["deep_root_fraction"], False),
    "default": ({"calibrate": []}, [], False),
    "default_table": ({"calibrate": [], "deep_water": "table"}, [], False),
    "irrigated": ({}, [], True),
    "default_irrigated": ({"calibrate": []}, [], True),
}
IRRIGATION_VARIANTS = ("lad", "irrigated", "default", "default_irrigated")
JJA = (6, 7, 8)
LATENT_HEAT_VAPORISATION = 2.45e6  # [J kg-1], for the observed ET of the budget


def nse(obs, sim) -> float:
    return float(1.0 - np.sum((obs - sim) ** 2) / np.sum((obs - obs.mean()) ** 2))


def bias_pct(obs, sim) -> float:
    return float(100.0 * (sim.mean() / obs.mean() - 1.0))


def usable(ds, name: str, max_qc: int) -> np.ndarray:
    ok = np.isfinite(ds[name].values[:, 0])
    if f"{name}_qc" in ds:
        qc = ds[f"{name}_qc"].values[:, 0]
        ok &= np.isfinite(qc) & (qc <= max_qc)
    return ok


def default_variants(site: str) -> list[str]:
    """The irrigation variants at an irrigated site, every other variant elsewhere."""
    if site in SITES_IRRIGATED:
        return list(IRRIGATION_VARIANTS)
    return [v for v, (_, _, irrigated) in VARIANTS.items() if not irrigated]


def with_irrigation(cfg, irrigated: bool):
    """``cfg`` whose one site has the site metadata ``irrigated`` set to ``irrigated``."""
    site = cfg.data.sites[0]
    options = {**site.options, "metadata": {**site.options.get("metadata", {}), "irrigated": irrigated}}
    data = cfg.data.model_copy(update={"sites": [site.model_copy(update={"options": options})]})
    return cfg.model_copy(update={"data": data})


def evaluate(cfg_path: str, variants: list[str]) -> dict:
    cfg = load_run_config(ROOT / cfg_path)
    runs = {}  # irrigated -> (config, experiment)
    for irrigated in sorted({VARIANTS[v][2] for v in variants}):
        c = with_irrigation(cfg, irrigated)
        runs[irrigated] = (c, experiments(c, load_domains(c))[0])
    cfg, exp = next(iter(runs.values()))
    domain = exp.test[0]
    labels = exp.labels[domain.column_ids[0]]
    ds = domain.data
    months = pd.DatetimeIndex(domain.time).month
    summer = np.isin(months, JJA)
    val = labels == VALIDATION
    ok = {t: usable(ds, t, cfg.data.max_qc) for t in ("Qle", "Qh")}
    obs = {t: ds[t].values[:, 0] for t in ("Qle", "Qh")}
    entry = next(m for m in cfg.models if m.name == "physics" and (m.label or m.name) == "physics")
    spec = get_model("physics")
    dt_s = domain.time_step_s
    precip = ds["Precip"].values[:, 0] * dt_s
    year = np.arange(domain.n_steps) >= round(cfg.data.spinup_days * 86400.0 / dt_s)  # after the spin-up days
    out = {"config": cfg_path, "site": domain.column_ids[0], "steps": int(domain.n_steps),
           "validation_steps_qle": int((val & ok["Qle"]).sum()),
           "jja_validation_steps_qle": int((val & summer & ok["Qle"]).sum()), "variants": {}}
    for name in variants:
        extra, add, irrigated = VARIANTS[name]
        cfg, exp = runs[irrigated]
        domain = exp.test[0]
        opts = {**dict(entry.options), **extra}
        opts["calibrate"] = list(opts["calibrate"]) + add
        options = spec.Options.model_validate(opts)
        ctx = TrainingContext.from_config(cfg, shared_parameters=False, cache={}, checkpoint_dir=None)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = spec.train(spec.build(options), options, exp.train, exp.val, ctx)
            pred = spec.predict(model, domain)
        seconds = time.perf_counter() - t0
        sim = {t: np.asarray(pred[t])[:, 0] for t in ("Qle", "Qh")}
        base = default_params([str(domain.static_value("igbp")[0])])
        params = {k: float(from_unconstrained(k, to_unconstrained(k, base[k]) + model.delta_gain * d)[0])
                  for k, d in model.deltas.items()}  # fmt: skip
        if "deep_root_fraction" not in params and options.deep_water != "none":
            params["deep_root_fraction"] = float(base["deep_root_fraction"][0])
        evap = np.asarray(pred["Evap"])[:, 0] * dt_s
        qsb = np.asarray(pred["Qsb"])[:, 0] * dt_s
        supply = -np.minimum(qsb, 0.0).sum() if options.deep_water == "table" else 0.0
        irrigation = np.asarray(pred["Qirrig"])[:, 0] * dt_s
        le_ok = ok["Qle"] & year
        rec = {
            "options": {"deep_water": options.deep_water, "calibrate": options.calibrate, "irrigated": irrigated},
            "seconds": round(seconds, 1),
            "parameters": {k: round(v, 4) for k, v in sorted(params.items())},
            "jja_le_bias_pct": bias_pct(obs["Qle"][summer & le_ok], sim["Qle"][summer & le_ok]),
            "jja_le_bias_pct_validation": bias_pct(obs["Qle"][summer & val & ok["Qle"]],
                                                   sim["Qle"][summer & val & ok["Qle"]]),
            "jja_le_mean_w_m2": {"obs": float(obs["Qle"][summer & le_ok].mean()),
                                 "model": float(sim["Qle"][summer & le_ok].mean())},
            "validation_nse_qle": nse(obs["Qle"][val & ok["Qle"]], sim["Qle"][val & ok["Qle"]]),
            "validation_nse_qh": nse(obs["Qh"][val & ok["Qh"]], sim["Qh"][val & ok["Qh"]]),
            "validation_bias_pct_qle": bias_pct(obs["Qle"][val & ok["Qle"]], sim["Qle"][val & ok["Qle"]]),
            "budget_mm": {  # over the steps after the spin-up days (observed ET: gap-free steps scaled)
                "precipitation": float(precip[year].sum()),
                "et_model": float(evap[year].sum()),
                "et_observed": float(np.mean(obs["Qle"][le_ok]) / LATENT_HEAT_VAPORISATION * dt_s * year.sum()),
                "deep_supply": float(supply),
                "irrigation": float(irrigation[year].sum()),
                "groundwater_runoff": float(np.maximum(qsb[year], 0.0).sum()),
                "root_zone_start_end": [float(np.asarray(pred["SoilMoist"])[0, 0]),
                                        float(np.asarray(pred["SoilMoist"])[-1, 0])],
            },
        }
        out["variants"][name] = rec
        print(f"{cfg.name} {name:14s} JJA bias {rec['jja_le_bias_pct']:6.1f} % (val weeks "
              f"{rec['jja_le_bias_pct_validation']:6.1f} %), val NSE Qle {rec['validation_nse_qle']:.3f} "
              f"Qh {rec['validation_nse_qh']:.3f}; ET {rec['budget_mm']['et_model']:.0f} / obs "
              f"{rec['budget_mm']['et_observed']:.0f} / P {rec['budget_mm']['precipitation']:.0f} mm "
              f"({seconds:.0f} s)", flush=True)  # fmt: skip
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sites", nargs="+", default=list(SITES) + list(SITES_IRRIGATED),
                    choices=list(SITES) + list(SITES_IRRIGATED))
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                    help=f"default: every variant but the irrigated ones at {', '.join(SITES)}; "
                         f"{', '.join(IRRIGATION_VARIANTS)} at {', '.join(SITES_IRRIGATED)}")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "water.json")
    args = ap.parse_args(argv)
    result = {
        "what": "JJA LE bias and validation skill of the calibrated LaD with and without deep roots "
                "(benchmarks/water.py; blocked splits, test weeks unused)",
        "date": dt.date.today().isoformat(),
        "sites": {name: evaluate({**SITES, **SITES_IRRIGATED}[name], args.variants or default_variants(name))
                  for name in args.sites},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
