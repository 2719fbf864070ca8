"""Discovery and uncertainty benchmark (issue 13): results/discovery.json and the tables of docs/results.md.

Cases: the twin (configs/twin-discovery.yaml: a virtual site whose K_h follows the known branched law
data.virtual.TWIN_LAW) and two reference sites on blocked splits (configs/us-wkg-discovery.yaml,
configs/us-me2-discovery.yaml). For each: ``hybridlsm run`` (a finished run is reused), ``hybridlsm
discover`` and ``hybridlsm validate`` (50 recycled years), then the figures of hybrid_param:

- ``b_fit_*``, ``c_fit_*``, ``a_fit_*``: the discovered branched power law: fitted to its learned K_h
  (training and validation steps), then refitted online through the physics (``hybridlsm discover``;
  the offline fit is in the docs table beside it; ``b_true_*``, ``c_true_*`` the twin's law);
- ``r2_kh``: R² of the learned against the true K_h on the test steps (twin only);
- ``reasonability_kh``, ``reasonability_rs``: r of log values against the observation-derived K_h and
  r_s on the test steps (seed 000 Table 3; the twin has no u*: r against its true K_h, no r_s);
- ``coverage90_*``, ``crps_*``, ``crps_climatology_*``: half-hourly, test steps (report's
  metrics_probabilistic.csv; the climatological ensemble of the same month and half-hour);
- ``nse_*``: half-hourly test NSE; ``drift_energy_wm2``, ``drift_water_mm_yr``: the 50-year online run.

Table 3 ablations on the twin: the full model, no parameteriser (the calibrated physics), no physics
residual (phase 2 without the energy term), no discovery loss, no UQ (no dropout, MSE likelihood).

Epistemic fallback: the trained hybrid_param predicts again with ``fallback_threshold`` (the physics
where the SD of a learned log multiplier over dropout passes exceeds it; prediction only, no
retraining) for a few thresholds; the threshold is chosen on the validation weeks, its test skill
reported beside the hybrid's and the physics'.

    .venv/bin/python benchmarks/discovery.py [--cases twin us-wkg us-me2] [--years 50]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from hybridlsm.data.virtual import TWIN_LAW
from hybridlsm.discover import discover
from hybridlsm.evaluation import metrics
from hybridlsm.evaluation.report import build_report, flux_mask, load_run, parameter_reasonability
from hybridlsm.models.registry import load_run_config, load_saved_model, validate_run_config
from hybridlsm.data.splits import VALIDATION
from hybridlsm.physics.exchange import BRANCHES
from hybridlsm.pipeline import run as run_pipeline
from hybridlsm.validate import validate_run

from docblock import replace_block  # benchmarks/docblock.py

ROOT = Path(__file__).resolve().parents[1]
CASES = {"twin": "configs/twin-discovery.yaml", "us-wkg": "configs/us-wkg-discovery.yaml",
         "us-me2": "configs/us-me2-discovery.yaml"}  # fmt: skip
MODEL = "hybrid_param"
#: a deep ensemble against one MC-dropout member, scored like the cases (docs table only)
ENSEMBLE_CONFIG = "configs/us-wkg-ensemble.yaml"
ENSEMBLE_MODELS = ("hybrid_param_ensemble", "hybrid_param_mc_dropout")
#: the three couplings, their multi-model ensemble and two deep ensembles at US-Me2 (docs table
#: only; validation CRPS is what one would choose among them on)
COUPLINGS_CONFIG = "configs/us-me2-ensemble.yaml"
COUPLINGS_MODELS = ("hybrid_param", "hybrid_flux", "hybrid_lstm", "hybrid_couplings", "hybrid_lstm_ensemble",
                    "hybrid_lstm_ensemble10", "hybrid_param_ensemble")
FLUXES = {"qh": "Qh", "qle": "Qle"}
#: the twin's NSE target (issue 13)
NSE_TARGET = 0.95
KEYS = ["case", *(f"{k}_true_{b}" for b in BRANCHES for k in "bc"), *(f"{k}_fit_{b}" for b in BRANCHES for k in "bca"),
        "r2_kh", "reasonability_kh", "reasonability_rs", "coverage90_qh", "coverage90_qle", "crps_qh", "crps_qle",
        "crps_climatology_qh", "crps_climatology_qle", "nse_qh", "nse_qle", "drift_energy_wm2", "drift_water_mm_yr"]
ABLATIONS = {  # label: (what changes, training.two_phase update, hybrid_param options update)
    "no_physics_residual": ("phase 2 without the energy residual", {"lambda_energy": (0.0, 0.0)}, {}),
    "no_discovery_loss": ("phase 2 without the discovery term", {"lambda_discovery": (0.0, 0.0)}, {}),
    "no_uq": ("no dropout, MSE likelihood", {}, {"dropout": 0.0, "likelihood": "mse"}),
    "no_surface_temperature": ("trained on Qh and Qle only, not on the radiometric surface temperature", {},
                               {"targets": ["Qle", "Qh"]}),
}


def _num(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else float(x)


def run_case(config: Path, name: str | None = None, two_phase: dict | None = None, options: dict | None = None,
             only_model: bool = False) -> Path:
    """Run (or reuse) the config, optionally as a variant: a new name, training.two_phase and
    hybrid_param options updated, and only hybrid_param trained."""
    cfg = load_run_config(config)
    if name is not None:
        models = [m for m in cfg.models if m.label == MODEL or not only_model]
        models = [m.model_copy(update={"options": {**m.options, **(options or {})}}) if m.label == MODEL else m
                  for m in models]  # fmt: skip
        tp = cfg.training.two_phase.model_copy(update=two_phase or {})
        cfg = cfg.model_copy(update={"name": name, "models": models,
                                     "training": cfg.training.model_copy(update={"two_phase": tp})})  # fmt: skip
        cfg = validate_run_config(cfg.model_dump(mode="json"), source=f"{config} ({name})")  # re-validated whole
    return run_pipeline(cfg, config_name=str(config), resume=True)


def point_scores(run: Path, label: str) -> dict:
    """Half-hourly test MSE, MAE, r per flux, the validation NSE (what a configuration is chosen on)
    and the model's energy residual |Rn - G - H - LE - Qf|."""
    out = {}
    for sid, sd in load_run(run).items():
        ds = sd.models[label]
        max_qc = int(sd.obs.attrs.get("max_qc", 1))
        for key, flux in FLUXES.items():
            m = flux_mask(sd.obs, flux, max_qc) & sd.test
            sim, obs = ds[flux].values.ravel(), sd.obs[flux].values
            out[f"mse_{key}"] = metrics.mse(sim, obs, m)
            out[f"mae_{key}"] = metrics.mae(sim, obs, m)
            out[f"r_{key}"] = metrics.pearson_r(sim, obs, m)
            val = flux_mask(sd.obs, flux, max_qc) & (sd.obs["split"].values == VALIDATION)
            out[f"nse_{key}_val"] = metrics.nse(sim[val], obs[val])
        resid = ds["Rnet"].values - ds["Qg"].values - ds["Qh"].values - ds["Qle"].values - ds["Qf"].values
        out["energy_residual_wm2"] = float(np.nanmean(np.abs(resid.ravel()[sd.test])))
    return out


def probabilistic(run: Path, label: str) -> dict:
    path = run / "metrics_probabilistic.csv"
    out = {}
    table = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=["model", "flux", "scale"])
    for key, flux in FLUXES.items():
        row = table[(table["model"] == label) & (table["flux"] == flux) & (table["scale"] == "halfhourly")]
        clim = table[(table["model"] == "climatology") & (table["flux"] == flux) & (table["scale"] == "halfhourly")]
        out[f"coverage90_{key}"] = _num(row["coverage_90"].iloc[0]) if len(row) else None
        out[f"crps_{key}"] = _num(row["crps"].iloc[0]) if len(row) else None
        out[f"crps_climatology_{key}"] = _num(clim["crps"].iloc[0]) if len(clim) else None
    return out


def r_log_true(sd, label: str) -> float:
    """r of log K_h learned by ``label`` against the twin's true log K_h on the test steps."""
    with np.errstate(divide="ignore", invalid="ignore"):  # K_h <= 0 gives a non-finite log: left out
        return metrics.pearson_r(np.log(sd.models[label]["Kh"].values.ravel()), np.log(sd.obs["Kh_true"].values),
                                 sd.test)


def reasonability(run: Path, label: str) -> dict:
    sites = load_run(run)
    if any("Kh_true" in sd.obs for sd in sites.values()):  # twin: against the true K_h
        rows = [r_log_true(sd, label) for sd in sites.values()]
        return {"reasonability_kh": float(np.mean(rows)), "reasonability_rs": None}
    table = parameter_reasonability(sites)
    row = table[table["model"] == label]
    return {"reasonability_kh": _num(row["r Kh"].iloc[0]) if len(row) else None,
            "reasonability_rs": _num(row["r rs"].iloc[0]) if len(row) else None}  # fmt: skip


def noise_ceiling(run: Path) -> dict[str, dict[str, float]]:
    """The twin's attainable test NSE: its noise-free truth (the same virtual site with noise and
    gaps 0) scored against the noisy test observations the hybrid is scored against; beside it
    ``MODEL``'s RMSE against that truth and the RMSE against the truth at which its NSE against
    the observations would reach ``NSE_TARGET`` (the errors against the truth and the noise being
    independent, the squared errors add)."""
    import yaml

    from hybridlsm.data.splits import TEST
    from hybridlsm.data.virtual import virtual_site

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    spec = cfg["data"]["sites"][0]["virtual"]
    truth = virtual_site(**{**spec, "noise": 0.0, "gap_fraction": 0.0})
    sd = next(iter(load_run(run).values()))
    out = {}
    for key, flux in FLUXES.items():
        mask = flux_mask(sd.obs, flux, int(cfg["data"]["max_qc"])) & (sd.obs["split"].values == TEST)
        y, true = sd.obs[flux].values[mask], truth[flux].values.ravel()[mask]
        model = sd.models[MODEL][flux].values.ravel()[mask]
        var = float(np.var(y))
        noise_ms = float(np.mean((true - y) ** 2))
        out[key] = {"nse": metrics.nse(true, y), "rmse_truth": float(np.sqrt(np.mean((model - true) ** 2))),
                    "rmse_truth_needed": math.sqrt(max((1.0 - NSE_TARGET) * var - noise_ms, 0.0))}
    return out


def case_record(case: str, run: Path, years: float) -> tuple[dict, dict]:
    disc = json.loads((discover(run, [MODEL]) / "discovery.json").read_text())
    entry = disc["models"][MODEL]
    fit = next(iter(entry["classes"].values()))
    validation = validate_run(run, years=years, labels=[MODEL], progress=False)
    build_report(run)  # with the discovery and validation sections
    online = next(iter(validation["models"][MODEL]["sites"].values()))["online"]
    skill = pd.read_csv(run / "metrics.csv")
    rec = {"case": case}
    for b in BRANCHES:
        truth = TWIN_LAW[b] if case == "twin" else (None, None, None)
        rec |= {f"b_true_{b}": truth[1], f"c_true_{b}": truth[2]}
        rec |= {f"{k}_fit_{b}": (entry["online_law"] or fit["fits"]["power_law"])[b][k] for k in "bca"}
    rec["r2_kh"] = _num(fit.get("r2_kh_true_test_steps"))
    rec |= reasonability(run, MODEL)
    rec |= probabilistic(run, MODEL)
    for key, flux in FLUXES.items():
        row = skill[(skill["model"] == MODEL) & (skill["flux"] == flux) & (skill["scale"] == "halfhourly")]
        rec[f"nse_{key}"] = _num(row["nse"].iloc[0])
    rec["drift_energy_wm2"] = _num(online.get("energy_drift_w_m2"))
    rec["drift_water_mm_yr"] = _num(online.get("water_drift_mm_yr"))
    extra = {"forms": fit["forms"], "co_trained_law": entry.get("co_trained_law"), "sparse": fit.get("sparse"),
             "offline_law": fit["fits"]["power_law"], "online_law": entry["online_law"],
             "skill": [r for r in disc["skill"] if r["scale"] == "halfhourly"], "online": online,
             "fallback": fallback_skill(run),
             "extrapolation": extrapolation_spread(run) if case == "twin" else None,
             "noise_ceiling_nse": noise_ceiling(run) if case == "twin" else None}  # fmt: skip
    return {k: rec.get(k) for k in KEYS}, extra


def ablations(config: Path, full_run: Path) -> list[dict]:
    rows = []
    variants = [("full model", "all components", full_run, MODEL), ("no parameteriser", "the calibrated physics",
                full_run, "physics")]  # fmt: skip
    name = load_run_config(config).name
    for label, (what, tp, opts) in ABLATIONS.items():
        run = run_case(config, f"{name}-{label.replace('_', '-')}", tp, opts, only_model=True)
        variants.append((label.replace("_", " "), what, run, MODEL))
    for variant, what, run, model in variants:
        sites = load_run(run)
        row = {"configuration": variant, "what changes": what, **point_scores(run, model), **probabilistic(run, model)}
        sd = next(iter(sites.values()))
        if "Kh_true" in sd.obs:
            row["reasonability_kh"] = r_log_true(sd, model)
        rows.append(row)
    return rows


FALLBACK_THRESHOLDS = (0.05, 0.1, 0.2, 0.4)


def fallback_skill(run: Path) -> list[dict]:
    """Half-hourly NSE of hybrid_param with the epistemic fallback at each threshold, on the validation
    and the test steps, and the fraction of multipliers that fell back (test)."""
    from hybridlsm.data.splits import TEST, VALIDATION
    from hybridlsm.models.hybrid import HybridParam
    from hybridlsm.pipeline import load_domains
    from hybridlsm.predict import saved_model_dir

    _, _, model = load_saved_model(saved_model_dir(run, MODEL))
    domains = {d.column_ids[0]: d for d in load_domains(load_run_config(run / "config.yaml"))}
    rows = []
    for sid, sd in load_run(run).items():
        max_qc = int(sd.obs.attrs.get("max_qc", 1))
        for threshold in FALLBACK_THRESHOLDS:
            out = HybridParam().predict(replace(model, land=replace(model.land, fallback_threshold=threshold)),
                                        domains[sid])  # fmt: skip
            row = {"site": sid, "threshold": threshold, "fallback_fraction": float(np.mean(out["fallback"][sd.test]))}
            for key, flux in FLUXES.items():
                usable = flux_mask(sd.obs, flux, max_qc)
                for split, name in ((VALIDATION, "val"), (TEST, "test")):
                    row[f"nse_{key}_{name}"] = metrics.nse(out[flux][:, 0], sd.obs[flux].values, usable & (sd.split == split))
            rows.append(row)
    return rows


def extrapolation_spread(run: Path) -> dict:
    """The epistemic SD of hybrid_param (MC dropout) on its site's forcing and on the same forcing
    moved outside the training range (air 8 K warmer, wind x 2.5, shortwave x 1.2): the medians of
    Qh_sd_epistemic and Qle_sd_epistemic over daytime steps (SWdown > 50 W m-2), and their ratios."""
    from hybridlsm.pipeline import load_domains
    from hybridlsm.predict import saved_model_dir

    spec, _, model = load_saved_model(saved_model_dir(run, MODEL))
    domain = load_domains(load_run_config(run / "config.yaml"))[0]
    data = domain.data.copy()
    data["Tair"] = data["Tair"] + 8.0
    data["Wind"] = data["Wind"] * 2.5
    data["SWdown"] = data["SWdown"] * 1.2
    outside = replace(domain, data=data)
    day = domain.data["SWdown"].values[:, 0] > 50.0
    inside_out, outside_out = spec.predict(model, domain), spec.predict(model, outside)
    res = {}
    for key, flux in FLUXES.items():
        a = float(np.median(inside_out[f"{flux}_sd_epistemic"][day, 0]))
        b = float(np.median(outside_out[f"{flux}_sd_epistemic"][day, 0]))
        res |= {f"inside_{key}": a, f"outside_{key}": b, f"ratio_{key}": b / a}
    return res


def _fmt(v, digits=3):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:.3e}"
    return str(v)


def validation_crps(sites: dict, label: str) -> dict:
    """Half-hourly CRPS of ``label``'s Gaussian predictive on the validation weeks (split 2) of the
    run's ``sites`` (``load_run``)."""
    out = {}
    for sd in sites.values():
        ds, max_qc = sd.models[label], int(sd.obs.attrs.get("max_qc", 1))
        for key, flux in FLUXES.items():
            m = flux_mask(sd.obs, flux, max_qc) & (sd.obs["split"].values == VALIDATION)
            out[f"crps_{key}_val"] = float(np.nanmean(metrics.crps_gaussian(
                sd.obs[flux].values[m], ds[flux].values.ravel()[m], ds[f"{flux}_sd"].values.ravel()[m])))
    return out


def ensemble_rows(run: Path, labels=ENSEMBLE_MODELS, validation: bool = False) -> list[dict]:
    """Half-hourly test coverage, CRPS and NSE of ``labels`` (and with ``validation`` their
    validation CRPS)."""
    skill = pd.read_csv(run / "metrics.csv")
    sites = load_run(run) if validation else None
    rows = []
    for label in labels:
        row = {"model": label, **probabilistic(run, label), **(validation_crps(sites, label) if validation else {})}
        for key, flux in FLUXES.items():
            s = skill[(skill["model"] == label) & (skill["flux"] == flux) & (skill["scale"] == "halfhourly")]
            row[f"nse_{key}"] = _num(s["nse"].iloc[0]) if len(s) else None
        rows.append(row)
    return rows


def markdown(records: list[dict], extras: dict, ablation_rows: list[dict], seconds: float,
             ensemble: list[dict] | None = None, couplings: list[dict] | None = None) -> str:  # noqa: C901
    lines = ["<!-- discovery:begin (written by benchmarks/discovery.py; do not edit by hand) -->",
             "", f"`benchmarks/discovery.py` ({seconds / 60:.0f} min on 2 CPU cores, finished runs are reused when present); model: hybrid_param "
             "(stability inputs, Gaussian likelihood, MC dropout 0.15 × 50, two-phase). Figures on the test "
             "weeks of the blocked splits (half-hourly); fits on the training and validation steps.", "",
             "| case | b stable (true) | c stable (true) | b unstable (true) | c unstable (true) | R² K_h | r K_h | r r_s "
             "| cov90 H | cov90 LE | CRPS H (clim.) | CRPS LE (clim.) | NSE H | NSE LE | drift E W m⁻² | drift W mm yr⁻¹ |",
             "|" + "---|" * 16]  # fmt: skip
    for r in records:
        def pair(k, b):
            t = r[f"{k}_true_{b}"]
            return _fmt(r[f"{k}_fit_{b}"]) + (f" ({_fmt(t)})" if t is not None else "")

        lines.append(f"| {r['case']} | {pair('b', 'stable')} | {pair('c', 'stable')} | {pair('b', 'unstable')} | "
                     f"{pair('c', 'unstable')} | {_fmt(r['r2_kh'])} | {_fmt(r['reasonability_kh'])} | "
                     f"{_fmt(r['reasonability_rs'])} | {_fmt(r['coverage90_qh'])} | {_fmt(r['coverage90_qle'])} | "
                     f"{_fmt(r['crps_qh'])} ({_fmt(r['crps_climatology_qh'])}) | "
                     f"{_fmt(r['crps_qle'])} ({_fmt(r['crps_climatology_qle'])}) | {_fmt(r['nse_qh'])} | "
                     f"{_fmt(r['nse_qle'])} | {_fmt(r['drift_energy_wm2'])} | {_fmt(r['drift_water_mm_yr'])} |")  # fmt: skip
    for case, ex in extras.items():
        if ex.get("noise_ceiling_nse"):
            c = ex["noise_ceiling_nse"]
            lines += ["", f"The {case}'s observations carry noise: its noise-free truth scores NSE H "
                      f"{_fmt(c['qh']['nse'])} and LE {_fmt(c['qle']['nse'])} against the same noisy test observations "
                      f"(the attainable NSE). {MODEL}'s RMSE against the truth is {_fmt(c['qh']['rmse_truth'])} (H) and "
                      f"{_fmt(c['qle']['rmse_truth'])} W m⁻² (LE); an NSE of {NSE_TARGET} against the observations "
                      f"needs at most {_fmt(c['qh']['rmse_truth_needed'])} and {_fmt(c['qle']['rmse_truth_needed'])} "
                      "W m⁻²."]
    lines += ["", "The branched law offline (OLS on the learned K_h) and online (its coefficients refitted through the "
              "physics to the training fluxes, early stopping on validation; the law of the first table):", "",
              "| case | law | a stable | b stable | c stable | a unstable | b unstable | c unstable |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for case, ex in extras.items():
        for name in ("offline_law", "online_law"):
            law = ex.get(name)
            if law:
                lines.append(f"| {case} | {name.split('_')[0]} | " + " | ".join(
                    _fmt(law[b][k]) for b in BRANCHES for k in "abc") + " |")  # fmt: skip
    lines += ["", "Closed forms fitted to the learned K_h (seed 000 Table 5; AIC on the log residuals):", "",
              "| case | form | expression | n | k | R² | RMSE m² s⁻¹ | ΔAIC |", "|---|---|---|---|---|---|---|---|"]
    for case, ex in extras.items():
        for f in ex["forms"]:
            expression = f["expression"].replace("|", "\\|")  # |Ri| inside a markdown table cell
            lines.append(f"| {case} | {f['form']} | {expression} | {f['n']} | {f['k']} | {_fmt(f['r2'])} | "
                         f"{_fmt(f['rmse'])} | {_fmt(f['delta_aic'])} |")
    lines += ["", "The law re-run in place of the learned K_h (the hybrid's r_s network kept), test weeks, NSE:", "",
              "| case | flux | hybrid_param | with its law | physics |", "|---|---|---|---|---|"]
    for case, ex in extras.items():
        skill = pd.DataFrame(ex["skill"])
        for flux in ("Qh", "Qle"):
            val = {m: skill[(skill["model"] == m) & (skill["flux"] == flux)]["nse"] for m in
                   (MODEL, f"{MODEL}_law", "physics")}  # fmt: skip
            lines.append(f"| {case} | {flux} | " + " | ".join(_fmt(float(v.iloc[0])) if len(v) else "–"
                                                          for v in val.values()) + " |")  # fmt: skip
    lines += ["", "Epistemic fallback (prediction only: the physics where the SD of a learned log multiplier over 10 "
              "dropout passes exceeds the threshold; the threshold with the best mean validation NSE is marked *):", "",
              "| case | threshold | fell back (test) | NSE H val / test | NSE LE val / test |", "|---|---|---|---|---|"]
    for case, ex in extras.items():
        rows = ex.get("fallback", [])
        best = max(rows, key=lambda r: r["nse_qh_val"] + r["nse_qle_val"]) if rows else None
        for r in rows:
            mark = " *" if r is best else ""
            lines.append(f"| {case} | {r['threshold']}{mark} | {_fmt(r['fallback_fraction'])} | "
                         f"{_fmt(r['nse_qh_val'])} / {_fmt(r['nse_qh_test'])} | "
                         f"{_fmt(r['nse_qle_val'])} / {_fmt(r['nse_qle_test'])} |")  # fmt: skip
    ex = extras.get("twin", {}).get("extrapolation")
    if ex:
        lines += ["", "Epistemic spread on the twin's forcing and outside the training range (air 8 K warmer, wind × 2.5, "
                  "shortwave × 1.2; median MC-dropout SD of daytime steps, W m⁻²):", "",
                  "| flux | inside | outside | ratio |", "|---|---|---|---|",
                  f"| Qh | {_fmt(ex['inside_qh'])} | {_fmt(ex['outside_qh'])} | {_fmt(ex['ratio_qh'])} |",
                  f"| Qle | {_fmt(ex['inside_qle'])} | {_fmt(ex['outside_qle'])} | {_fmt(ex['ratio_qle'])} |"]  # fmt: skip
    if ensemble:
        lines += ["", "Deep ensemble at US-Wkg (configs/us-wkg-ensemble.yaml: 5 hybrid_param members, seeds and bootstrap "
                  "days, Gaussian likelihood) against one member with MC dropout; test weeks, half-hourly:", "",
                  "| model | cov90 H | cov90 LE | CRPS H (clim.) | CRPS LE (clim.) | NSE H | NSE LE |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in ensemble:
            lines.append(f"| {r['model']} | {_fmt(r['coverage90_qh'])} | {_fmt(r['coverage90_qle'])} | "
                         f"{_fmt(r['crps_qh'])} ({_fmt(r['crps_climatology_qh'])}) | "
                         f"{_fmt(r['crps_qle'])} ({_fmt(r['crps_climatology_qle'])}) | {_fmt(r['nse_qh'])} | "
                         f"{_fmt(r['nse_qle'])} |")  # fmt: skip
    if couplings:
        lines += ["", f"The three couplings and their multi-model ensemble at US-Me2 ({COUPLINGS_CONFIG}: each with a "
                  "Gaussian likelihood and MC dropout 0.15 × 50, two-phase; `hybrid_couplings` averages them and adds "
                  "their spread to the epistemic variance; `hybrid_lstm_ensemble` and `hybrid_param_ensemble` are deep "
                  "ensembles of 5 seeds of one coupling, `hybrid_lstm_ensemble10` of 10 (its first 5 members are "
                  "`hybrid_lstm_ensemble`'s), combined the same way). CRPS on the validation weeks (where "
                  "a choice among them is made) and on the test weeks (climatology in brackets); half-hourly, W m⁻²:", "",
                  "| model | CRPS H val. | CRPS LE val. | CRPS H test (clim.) | CRPS LE test (clim.) | CRPSS H / LE test "
                  "| cov90 H | cov90 LE | NSE H | NSE LE |", "|" + "---|" * 10]  # fmt: skip
        scale = {k: np.mean([r[f"crps_{k}_val"] for r in couplings]) for k in ("qh", "qle")}
        best = min(couplings, key=lambda r: sum(r[f"crps_{k}_val"] / scale[k] for k in scale))
        for r in couplings:
            skill = [1.0 - r[f"crps_{k}"] / r[f"crps_climatology_{k}"] for k in ("qh", "qle")]
            lines.append(f"| {r['model']}{' *' if r is best else ''} | {_fmt(r['crps_qh_val'])} | "
                         f"{_fmt(r['crps_qle_val'])} | {_fmt(r['crps_qh'])} ({_fmt(r['crps_climatology_qh'])}) | "
                         f"{_fmt(r['crps_qle'])} ({_fmt(r['crps_climatology_qle'])}) | {skill[0]:.1%} / {skill[1]:.1%} | "
                         f"{_fmt(r['coverage90_qh'])} | {_fmt(r['coverage90_qle'])} | {_fmt(r['nse_qh'])} | "
                         f"{_fmt(r['nse_qle'])} |")  # fmt: skip
        lines += ["", "\\* lowest validation CRPS (the sum over H and LE of each CRPS over the models' mean "
                  "validation CRPS of that flux)."]
    if ablation_rows:
        lines += ["", "Ablations on the twin (seed 000 Table 3; test weeks, half-hourly; r K_h against the true K_h; "
                  "energy residual: mean |Rn − G − H − LE − Q_f| of the model):", "",
                  "| configuration | what changes | MSE H | MAE H | r H | MSE LE | MAE LE | r LE | energy residual | "
                  "r K_h | cov90 H / LE | CRPS H / LE | NSE H / LE, validation |", "|" + "---|" * 13]  # fmt: skip
        for r in ablation_rows:
            lines.append(f"| {r['configuration']} | {r['what changes']} | {_fmt(r['mse_qh'])} | {_fmt(r['mae_qh'])} | "
                         f"{_fmt(r['r_qh'])} | {_fmt(r['mse_qle'])} | {_fmt(r['mae_qle'])} | {_fmt(r['r_qle'])} | "
                         f"{_fmt(r['energy_residual_wm2'])} | {_fmt(r.get('reasonability_kh'))} | "
                         f"{_fmt(r['coverage90_qh'])} / {_fmt(r['coverage90_qle'])} | "
                         f"{_fmt(r['crps_qh'])} / {_fmt(r['crps_qle'])} | "
                         f"{_fmt(r['nse_qh_val'], 4)} / {_fmt(r['nse_qle_val'], 4)} |")  # fmt: skip
    lines += ["", "<!-- discovery:end -->"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--years", type=float, default=50.0, help="length of the online run")
    parser.add_argument("--no-ablations", action="store_true")
    parser.add_argument("--no-ensemble", action="store_true")
    args = parser.parse_args()
    t0 = time.perf_counter()
    records, extras = [], {}
    runs = {}
    for case in args.cases:
        print(f"== {case}", flush=True)
        runs[case] = run_case(ROOT / CASES[case])
        rec, extra = case_record(case, runs[case], args.years)
        records.append(rec)
        extras[case] = extra
        print(json.dumps(rec, indent=1), flush=True)
    rows = [] if args.no_ablations or "twin" not in runs else ablations(ROOT / CASES["twin"], runs["twin"])
    out = ROOT / "results" / "discovery.json"
    out.write_text(json.dumps(records, indent=1) + "\n")
    ensemble = None if args.no_ensemble else ensemble_rows(run_case(ROOT / ENSEMBLE_CONFIG))
    couplings = None if args.no_ensemble else ensemble_rows(run_case(ROOT / COUPLINGS_CONFIG), COUPLINGS_MODELS,
                                                            validation=True)
    text = markdown(records, extras, rows, time.perf_counter() - t0, ensemble, couplings)
    doc = ROOT / "docs" / "results.md"
    replace_block(doc, "<!-- discovery:begin", "<!-- discovery:end -->", text,
                  heading="## Discovery and uncertainty (issue 13)\n\n")
    print(text)
    print(f"wrote {out} and the discovery tables of {doc}")


if __name__ == "__main__":
    main()
