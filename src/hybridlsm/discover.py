"""``hybridlsm discover RUN``: closed forms for a hybrid's learned exchange coefficient, re-run as physics.

The offline -> symbolic -> online loop of seed 002, on a finished run directory:

1. **Offline**: the learned K_h series of every model that learns it (``ModelSpec.learned_parameters``;
   or the models named) with the wind and bulk Richardson number of the same steps, on the training
   and validation steps with observed forcing (``evaluation.discovery`` describes the forms and
   scores). Sites are pooled per IGBP class and, with several classes, over all.
2. **Symbolic**: the branched power law K_h = a u^b |Ri|^c (stable and unstable branches), a
   Zhang-type law in |Ri|, and the Businger-Dyer and Louis schemes with a fitted scale, compared by
   R², RMSE and AIC on the same steps (seed 000 Table 5); a cross-validated Lasso over a library of
   candidate terms per branch. A model that co-trained a law in phase 2 has its a, b, c reported too.
3. **Online**: the power-law form with the lower AIC replaces the hybrid's learned K_h
   (``ColumnModel.with_exchange_law``: the law becomes the LaD exchange closure, the networks' r_a
   multipliers and the calibrated ``ra_scale`` are dropped, the r_s network and the other parameters
   are kept), runs over every site of the run and is scored on the test steps next to the hybrid
   that produced it and the run's ``physics`` model.

Writes ``RUN/discovery/``: ``discovery.json`` (everything), ``forms.csv`` (the Table-5 comparison),
``skill.csv`` (the re-run's skill), ``predictions/<site>/<label>_law.nc`` and the fit plots
``plots/<label>_<class>.png``; the run's report shows them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from .config import ConfigError
from .data.preprocess import FILLED_LONG, forcing_filled
from .data.splits import TEST, TRAIN, VALIDATION
from .domain import site_file_name, write_site_outputs
from .evaluation import metrics
from .evaluation.discovery import (DiscoveryError, compare_forms, law_coefficients, plot_fit, sparse_search)
from .evaluation.report import SiteData, load_run, site_skill
from .models.registry import MODEL_FILE, SavedModelError, load_run_config, load_saved_model
from .predict import PredictError, saved_model_dir
from .rundir import RunLockedError, atomic_write, json_safe, run_lock, write_checked

__all__ = ["discover", "DISCOVERY_DIR"]

DISCOVERY_DIR = "discovery"
RUNNABLE_FORMS = ("power_law", "zhang_abs_ri")  # the forms an ExchangeLaw runs


def learned_models(run_dir: Path, sites: dict[str, SiteData]) -> list[str]:
    """The run's models whose spec declares a learned K_h (hybrid_param, hybrid_lstm)."""
    from .models.registry import get_model, read_model_json

    labels = sorted({m for sd in sites.values() for m, ds in sd.models.items() if "Kh" in ds.variables})
    out = []
    for label in labels:
        experiments = sorted(p.parent.name for p in (Path(run_dir) / "models" / label).glob(f"*/{MODEL_FILE}"))
        if len(experiments) > 1:
            raise PredictError(f"{run_dir}: model {label} was trained in {len(experiments)} experiments "
                               f"({', '.join(experiments)}); discover works on runs with one experiment "
                               "(not yet leave-one-site-out or test-sites runs)")  # fmt: skip
        try:
            name = read_model_json(saved_model_dir(run_dir, label))["model"]
        except SavedModelError as err:  # damaged or missing: said, not skipped
            raise PredictError(str(err)) from None
        if "Kh" in get_model(name).learned_parameters:
            out.append(label)
    return out


def _series(sites: dict[str, SiteData], label: str, splits: Sequence[int]) -> pd.DataFrame:
    """Learned K_h, Ri, wind, the site's class and heights, and the true K_h where a twin has it,
    at the given split labels with observed forcing."""
    frames = []
    for sid, sd in sites.items():
        if label not in sd.models:
            continue
        ds, obs = sd.models[label], sd.obs
        keep = np.isin(sd.split, splits) & (forcing_filled(obs) < FILLED_LONG)
        frame = pd.DataFrame({"kh": ds["Kh"].values, "ri": ds["RiB"].values, "wind": obs["Wind"].values,
                              "kh_true": obs["Kh_true"].values if "Kh_true" in obs else np.nan})[keep]  # fmt: skip
        frame["site"] = sid
        frame["igbp"] = str(obs.attrs.get("igbp", "") or "unknown")
        frame["canopy_height"] = float(obs.attrs.get("canopy_height", np.nan))
        frame["measurement_height"] = float(obs.attrs.get("measurement_height", np.nan))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def fit_class(frame: pd.DataFrame, test: pd.DataFrame, seed: int = 0) -> dict:
    """Every form and the sparse search on one class's steps (the schemes with each step's site
    geometry; an unknown class takes the GRA defaults, as the models do)."""
    site = {"igbp": frame["igbp"].replace("unknown", "GRA").to_numpy(),
            "canopy_height": frame["canopy_height"].to_numpy(), "measurement_height": frame["measurement_height"].to_numpy()}
    table, fits = compare_forms(frame["kh"], frame["wind"], frame["ri"], site)
    runnable = table[table["form"].isin(RUNNABLE_FORMS)].iloc[0]["form"]
    law = law_coefficients(runnable, fits[runnable])
    out = {"n_sites": int(frame["site"].nunique()), "forms": table.to_dict(orient="records"), "fits": fits,
           "chosen_form": runnable, "chosen_law": {b: dict(zip("abc", v)) for b, v in law.items()}}  # fmt: skip
    try:
        out["sparse"] = sparse_search(frame["kh"], frame["wind"], frame["ri"], seed=seed)
    except DiscoveryError as err:
        out["sparse"] = {"error": str(err)}
    if frame["kh_true"].notna().any():  # a twin: how close the learned K_h is to the truth
        # R² = 1 - SSE/SST of the learned against the true K_h: the NSE with the truth as observation
        out["r2_kh_true_fit_steps"] = metrics.nse(frame["kh"].to_numpy(), frame["kh_true"].to_numpy())
        out["r2_kh_true_test_steps"] = metrics.nse(test["kh"].to_numpy(), test["kh_true"].to_numpy()) if len(test) else None
    return out


def _law_model(directory: Path, law: dict):
    """The saved hybrid with its learned K_h replaced by the law (``ColumnModel.with_exchange_law``)."""
    from .models.column import ColumnModel
    from .physics.exchange import ExchangeLaw

    spec, _, model = load_saved_model(directory)
    if not isinstance(model, ColumnModel):
        raise PredictError(f"{directory}: model {spec.name} is not a LaD column model; a law cannot replace its K_h")
    return model.with_exchange_law(ExchangeLaw({b: (c["a"], c["b"], c["c"]) for b, c in law.items()}))


def discover(run_dir: Path, labels: Sequence[str] | None = None, seed: int = 0,
             then: Callable[[], object] | None = None) -> Path:
    """Run the loop of the module docstring for ``labels`` (default: every model with a learned K_h);
    returns ``RUN/discovery``. Holds the run's lock while it writes, and while ``then`` (e.g. the
    report's rebuild) runs."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PredictError(f"{run_dir}: no such run directory")
    try:
        with run_lock(run_dir):
            out = _discover(run_dir, labels, seed)
            if then is not None:
                then()
            return out
    except RunLockedError as err:
        raise PredictError(str(err)) from None


def _discover(run_dir: Path, labels: Sequence[str] | None, seed: int) -> Path:
    from .models.column import ColumnModel, predict_column_model
    from .evaluation.validation import ValidationRunError
    from .validate import site_domains

    try:
        sites = load_run(run_dir)
    except (FileNotFoundError, ValueError) as err:
        raise PredictError(f"{run_dir}: {err}") from None
    found = learned_models(run_dir, sites)
    if labels:
        unknown = [lb for lb in labels if lb not in found]
        if unknown:
            raise PredictError(f"{run_dir}: {unknown} have no learned K_h to fit; models that learn it: "
                               f"{', '.join(found) or 'none'}")  # fmt: skip
        found = list(labels)
    if not found:
        raise PredictError(f"{run_dir}: no model of the run learns K_h (hybrid_param, hybrid_lstm); nothing to discover")
    out = run_dir / DISCOVERY_DIR
    try:
        cfg = load_run_config(run_dir / "config.yaml")
    except (ConfigError, FileNotFoundError) as err:
        raise PredictError(f"{run_dir}/config.yaml: {err}") from None
    # the run's sites rebuilt from its config and checked against its obs.nc (keyed by site id)
    try:
        rebuilt = site_domains(run_dir, {site_file_name(s): sd.obs for s, sd in sites.items()})
    except ValidationRunError as err:
        raise PredictError(str(err)) from None
    domains = {d.column_ids[0]: d for d in rebuilt.values()}
    result: dict = {"run": str(run_dir.resolve()), "models": {}}
    form_rows, skill_frames = [], []
    for label in found:
        directory = saved_model_dir(run_dir, label)
        fit_steps, test_steps = _series(sites, label, (TRAIN, VALIDATION)), _series(sites, label, (TEST,))
        classes = {c: fit_steps[fit_steps["igbp"] == c] for c in sorted(fit_steps["igbp"].unique())}
        if len(classes) > 1:
            classes["all"] = fit_steps
        entry: dict = {"classes": {}}
        _, _, saved = load_saved_model(directory)
        tp = cfg.training.two_phase
        if isinstance(saved, ColumnModel) and saved.law is not None and tp.enabled and max(tp.lambda_discovery) > 0:
            entry["co_trained_law"] = saved.law.coefficients()  # only a law that phase 2 trained
        for cls, frame in classes.items():
            test = test_steps if cls == "all" else test_steps[test_steps["igbp"] == cls]
            try:
                fitted = fit_class(frame, test, seed)
            except DiscoveryError as err:
                entry["classes"][cls] = {"error": str(err)}
                continue
            entry["classes"][cls] = fitted
            form_rows += [{"model": label, "class": cls, **row} for row in fitted["forms"]]
            plot = out / "plots" / f"{site_file_name(label)}_{site_file_name(cls)}.png"
            truth = _twin_truth(sites)
            atomic_write(plot, lambda p: plot_fit(p, frame["kh"], frame["wind"], frame["ri"], fitted["fits"],
                                                   f"{label}: learned K_h and the fitted forms ({cls})", truth))
        # online: the law of the pooled class (or of the only one) run at every site
        fitted_classes = [c for c in ("all", *classes) if "chosen_law" in entry["classes"].get(c, {})]
        if not fitted_classes:
            problems = "; ".join(f"{c}: {e['error']}" for c, e in entry["classes"].items())
            raise PredictError(f"{run_dir}: no closed form could be fitted to {label}'s K_h ({problems})")
        chosen = entry["classes"][fitted_classes[0]]
        entry["law_from_class"] = fitted_classes[0]
        law_model = _law_model(directory, chosen["chosen_law"])
        law_label = f"{label}_law"
        for sid, sd in sites.items():
            if sid not in domains or label not in sd.models:
                continue
            outputs = predict_column_model(law_model, domains[sid])
            write_site_outputs(domains[sid], outputs, out / "predictions", f"{law_label}.nc",
                               {"model": law_label, "model_type": "physics with discovered exchange law",
                                "law": json.dumps(chosen["chosen_law"]), "discovered_from": label})  # fmt: skip
            ds = xr.load_dataset(out / "predictions" / site_file_name(sid) / f"{law_label}.nc")
            models = {m: sd.models[m] for m in (label, "physics") if m in sd.models}
            models[law_label] = ds.reindex(time=sd.obs["time"])
            skill_frames.append(site_skill(SiteData(sid, sd.obs, models, sd.obs_path), max_qc=int(sd.obs.attrs.get("max_qc", 1))))
        result["models"][label] = entry
    forms = pd.DataFrame(form_rows)
    skill = pd.concat(skill_frames, ignore_index=True) if skill_frames else pd.DataFrame()
    result["skill"] = skill.to_dict(orient="records")
    write_checked(out / "forms.csv", lambda p: forms.to_csv(p, index=False))
    write_checked(out / "skill.csv", lambda p: skill.to_csv(p, index=False))
    text = json.dumps(json_safe(result), indent=1, allow_nan=False)
    write_checked(out / "discovery.json", lambda p: p.write_text(text))
    return out


def _twin_truth(sites: dict[str, SiteData]):
    """The known law of a twin run (its obs carry Kh_true), for the fit plot."""
    if any("Kh_true" in sd.obs for sd in sites.values()):
        from .data.virtual import TWIN_LAW

        return TWIN_LAW
    return None
