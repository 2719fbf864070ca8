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
   are kept). Its coefficients are then refitted through the physics to the observed fluxes of the
   training steps, early stopping on the validation steps, everything else fixed
   (``models.column_fit.refit_exchange_law``; :class:`Refit`, ``epochs=0`` skips it): the offline
   fit to a network's K_h keeps the shape of the scheme the network multiplies wherever the fluxes
   constrain K_h weakly (at night), the refit only what the data say. Both laws are reported
   (``offline_law``, ``online_law``); the online one runs over every site of the run and is scored
   on the test steps next to the hybrid that produced it and the run's ``physics`` model.

A leave-one-site-out run has one trained model per fold: each fold's model is run (as ``predict``
runs it) over its own training sites, the forms are fitted to the K_h it learned on their training
and validation steps, and its law is re-run at its held-out site. ``folds.csv`` has one row per fold
(the chosen law's a, b, c per branch, R², n, and the held-out site's half-hourly test NSE of the
law, the hybrid and the physics), ``fold_summary.csv`` the spread of a, b, c per branch across
folds (mean, SD, min, max). A ``test_sites`` run is refused: it predicts only its test sites.

Writes ``RUN/discovery/``: ``discovery.json`` (everything), ``forms.csv`` (the Table-5 comparison),
``skill.csv`` (the re-run's skill), ``predictions/<site>/<label>_law.nc`` and the fit plots
``plots/<label>[_<fold>]_<class>.png``; the run's report shows them.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from .config import ConfigError
from .data.preprocess import FILLED_LONG, forcing_filled
from .data.schema import DataWarning
from .data.splits import TEST, TRAIN, VALIDATION
from .domain import site_file_name, write_site_outputs
from .evaluation import metrics
from .evaluation.discovery import (DiscoveryError, compare_forms, law_coefficients, plot_fit, sparse_search)
from .evaluation.report import SiteData, load_run, site_skill
from .models.registry import MODEL_FILE, SavedModelError, load_run_config, load_saved_model
from .physics.exchange import BRANCHES
from .predict import PredictError, saved_model_dir
from .rundir import (RunLockedError, atomic_write, finish_run_dir, json_safe, read_json_object, restore_replaced,
                     run_lock, unfinished_dir, unfinished_run, verified, write_checked)

__all__ = ["DISCOVERY_DIR", "Refit", "discover"]

DISCOVERY_DIR = "discovery"
RUNNABLE_FORMS = ("power_law", "zhang_abs_ri")  # the forms an ExchangeLaw runs


@dataclass(frozen=True)
class Refit:
    """The online refit of the chosen law's coefficients (the run's training section otherwise;
    ``epochs=0``: no refit, the offline law is re-run as fitted)."""

    epochs: int = 300
    lr: float = 0.02
    patience: int = 60

    def __post_init__(self):
        if self.epochs < 0 or not self.lr > 0 or self.patience < 1:
            raise ValueError(f"refit: epochs must be >= 0, lr > 0 and patience >= 1; got epochs {self.epochs}, "
                             f"lr {self.lr}, patience {self.patience}")


def learned_models(run_dir: Path, sites: dict[str, SiteData], per_fold: bool = False) -> list[str]:
    """The run's models whose spec declares a learned K_h (hybrid_param, hybrid_lstm); ``per_fold``:
    a leave-one-site-out run, whose models are trained once per fold."""
    from .models.registry import get_model, read_model_json

    labels = sorted({m for sd in sites.values() for m, ds in sd.models.items() if "Kh" in ds.variables})
    out = []
    for label in labels:
        experiments = sorted(p.parent.name for p in (Path(run_dir) / "models" / label).glob(f"*/{MODEL_FILE}"))
        if len(experiments) > 1 and not per_fold:
            raise PredictError(f"{run_dir}: model {label} was trained in {len(experiments)} experiments "
                               f"({', '.join(experiments)}); discover fits one model per run, or one per fold of a "
                               "leave-one-site-out run")  # fmt: skip
        fold = experiments[0] if per_fold and experiments else None  # every fold has the same model type
        try:
            name = read_model_json(saved_model_dir(run_dir, label, fold))["model"]
        except SavedModelError as err:  # damaged or missing: said, not skipped
            raise PredictError(str(err)) from None
        if "Kh" in get_model(name).learned_parameters:
            out.append(label)
    return out


def _frame(kh, ri, obs: xr.Dataset, keep: np.ndarray, site: str) -> pd.DataFrame:
    """Learned K_h, Ri, wind, the site's class and heights, and the true K_h where a twin has it, at
    the ``keep`` steps with observed forcing."""
    keep = keep & (forcing_filled(obs) < FILLED_LONG)
    frame = pd.DataFrame({"kh": np.ravel(kh), "ri": np.ravel(ri), "wind": obs["Wind"].values,
                          "kh_true": obs["Kh_true"].values if "Kh_true" in obs else np.nan})[keep]  # fmt: skip
    frame["site"] = site
    frame["igbp"] = str(obs.attrs.get("igbp", "") or "unknown")
    frame["canopy_height"] = float(obs.attrs.get("canopy_height", np.nan))
    frame["measurement_height"] = float(obs.attrs.get("measurement_height", np.nan))
    return frame


def _series(sites: dict[str, SiteData], label: str, splits: Sequence[int]) -> pd.DataFrame:
    """``_frame`` of the run's predictions of ``label`` at the given split labels."""
    frames = [_frame(sd.models[label]["Kh"].values, sd.models[label]["RiB"].values, sd.obs,
                     np.isin(sd.split, splits), sid)
              for sid, sd in sites.items() if label in sd.models]  # fmt: skip
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


def _fit_classes(label: str, fit_steps: pd.DataFrame, test_steps: pd.DataFrame, truth, plot_stem: Path,
                 seed: int, where: str) -> tuple[dict, list[dict]]:
    """The forms fitted per IGBP class (and pooled, with several): the model's entry (``classes``;
    ``law_from_class``, the pooled class or the only one, whose law is re-run) and the forms' rows.
    ``where`` names the run (and fold) in the error when no class could be fitted."""
    igbp = sorted(fit_steps["igbp"].unique()) if len(fit_steps) else []
    classes = {c: fit_steps[fit_steps["igbp"] == c] for c in igbp}
    if len(classes) > 1:
        classes["all"] = fit_steps
    entry: dict = {"classes": {}}
    rows = []
    for cls, frame in classes.items():
        test = test_steps if cls == "all" or not len(test_steps) else test_steps[test_steps["igbp"] == cls]
        try:
            fitted = fit_class(frame, test, seed)
        except DiscoveryError as err:
            entry["classes"][cls] = {"error": str(err)}
            continue
        entry["classes"][cls] = fitted
        rows += [{"model": label, "class": cls, **row} for row in fitted["forms"]]
        plot = plot_stem.with_name(f"{plot_stem.name}_{site_file_name(cls)}.png")
        atomic_write(plot, lambda p: plot_fit(p, frame["kh"], frame["wind"], frame["ri"], fitted["fits"],
                                               f"{label}: learned K_h and the fitted forms ({cls})", truth))
    fitted_classes = [c for c in ("all", *classes) if "chosen_law" in entry["classes"].get(c, {})]
    if not fitted_classes:
        problems = "; ".join(f"{c}: {e['error']}" for c, e in entry["classes"].items()) or "no usable step"
        raise PredictError(f"{where}: no closed form could be fitted to {label}'s K_h ({problems})")
    entry["law_from_class"] = fitted_classes[0]
    return entry, rows


def _with_law(model, law: dict, where: Path):
    """The hybrid with its learned K_h replaced by the law (``ColumnModel.with_exchange_law``)."""
    from .models.column import ColumnModel
    from .physics.exchange import ExchangeLaw

    if not isinstance(model, ColumnModel):
        raise PredictError(f"{where}: model {type(model).__name__} is not a LaD column model; a law cannot replace "
                           "its K_h")
    return model.with_exchange_law(ExchangeLaw({b: (c["a"], c["b"], c["c"]) for b, c in law.items()}))


def _online_law(model, entry: dict, where: Path, options, cfg, train: Sequence, val: Sequence, refit: Refit,
                progress: bool):
    """``model`` with its learned K_h replaced by ``entry``'s offline law and, unless ``refit`` is
    off, that law refitted through the physics on ``train`` (early stopping on ``val``; module
    docstring, step 3), recorded as ``entry["online_law"]`` (None without a refit); returns the
    model and the law it runs."""
    from .models.column_fit import exchange_laws, refit_exchange_law
    from .models.registry import TrainingContext

    law_model = _with_law(model, entry["offline_law"], where)
    entry["online_law"] = None
    if refit.epochs > 0:
        train_cfg = cfg.training.model_copy(update={"epochs": refit.epochs, "lr": refit.lr, "min_lr": min(
            cfg.training.min_lr, refit.lr), "patience": refit.patience})  # fmt: skip
        law_model = refit_exchange_law(law_model, train, val, TrainingContext.from_config(cfg, progress=progress),
                                       targets=list(options.targets), train_cfg=train_cfg)  # fmt: skip
        entry["online_law"] = exchange_laws(law_model)[0].coefficients()
    return law_model, entry["online_law"] or entry["offline_law"]


def _co_trained_law(model, cfg) -> dict | None:
    """The a, b, c of a law that phase 2 trained (None otherwise)."""
    from .models.column import ColumnModel

    tp = cfg.training.two_phase
    if isinstance(model, ColumnModel) and model.law is not None and tp.enabled and max(tp.lambda_discovery) > 0:
        return model.law.coefficients()
    return None


def _rerun(law_model, label: str, law: dict, sd: SiteData, domain, out: Path) -> pd.DataFrame:
    """The law run at one site (written to ``out/predictions``) and its test skill next to the hybrid
    that produced it and the run's physics."""
    from .models.column import predict_column_model

    law_label = f"{label}_law"
    outputs = predict_column_model(law_model, domain)
    write_site_outputs(domain, outputs, out / "predictions", f"{law_label}.nc",
                       {"model": law_label, "model_type": "physics with discovered exchange law",
                        "law": json.dumps(law), "discovered_from": label})  # fmt: skip
    ds = xr.load_dataset(out / "predictions" / site_file_name(sd.site) / f"{law_label}.nc")
    models = {m: sd.models[m] for m in (label, "physics") if m in sd.models}
    models[law_label] = ds.reindex(time=sd.obs["time"])
    return site_skill(SiteData(sd.site, sd.obs, models, sd.obs_path), max_qc=int(sd.obs.attrs.get("max_qc", 1)))


def discover(run_dir: Path, labels: Sequence[str] | None = None, seed: int = 0,
             then: Callable[[], object] | None = None, refit: Refit = Refit(), progress: bool = False) -> Path:
    """Run the loop of the module docstring for ``labels`` (default: every model with a learned K_h);
    returns ``RUN/discovery``. Holds the run's lock while it writes, and while ``then`` (e.g. the
    report's rebuild) runs."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PredictError(f"{run_dir}: no such run directory")
    if unfinished_run(run_dir):
        raise PredictError(unfinished_run(run_dir))
    try:
        with run_lock(run_dir):
            out = _discover(run_dir, labels, seed, refit, progress)
            if then is not None:
                then()
            return out
    except RunLockedError as err:
        raise PredictError(str(err)) from None


def _discover(run_dir: Path, labels: Sequence[str] | None, seed: int, refit: Refit, progress: bool) -> Path:
    try:
        sites = load_run(run_dir)
    except (FileNotFoundError, ValueError) as err:
        raise PredictError(f"{run_dir}: {err}") from None
    try:
        cfg = load_run_config(run_dir / "config.yaml", stored=True)
    except (ConfigError, FileNotFoundError) as err:
        raise PredictError(f"{run_dir}/config.yaml: {err}") from None
    per_fold = cfg.data.split.mode == "leave_one_site_out"
    if cfg.data.split.mode == "test_sites":
        raise PredictError(f"{run_dir}: a test_sites run predicts only its test sites, so the K_h its models learned "
                           "on the training sites is not in the run; discover works on runs split in time and on "
                           "leave-one-site-out runs")  # fmt: skip
    found = learned_models(run_dir, sites, per_fold)
    if labels:
        labels = list(dict.fromkeys(labels))  # a label given twice is fitted once
        in_run = {m for sd in sites.values() for m in sd.models} | {p.name for p in (run_dir / "models").glob("*")}
        absent = [lb for lb in labels if lb not in in_run]
        if absent:
            raise PredictError(f"{run_dir}: no model {', '.join(absent)} in the run; it has: {', '.join(sorted(in_run))}")
        unknown = [lb for lb in labels if lb not in found]
        if unknown:
            raise PredictError(f"{run_dir}: {unknown} have no learned K_h to fit (or no predictions of it in "
                               f"predictions/); models that learn it: {', '.join(found) or 'none'}")  # fmt: skip
        found = labels
    if not found:
        saved = sorted(p.name for p in (run_dir / "models").glob("*"))
        raise PredictError(f"{run_dir}: no model with predictions in predictions/ learns K_h (hybrid_param, hybrid_lstm; "
                           f"the run's saved models: {', '.join(saved) or 'none'}); nothing to discover")
    final = run_dir / DISCOVERY_DIR
    restore_replaced(final)  # an earlier discovery left aside by a discover stopped while swapping
    if (final / "discovery.json").is_file():  # say what an earlier discover found that this one replaces
        earlier = read_json_object(verified(final / "discovery.json")).get("models", {})
        dropped = sorted(set(earlier) - set(found))
        if dropped:
            warnings.warn(f"{final}: the earlier discovery of {', '.join(dropped)} is replaced by this one of "
                          f"{', '.join(found)} (run discover without --model to fit every model)", DataWarning,
                          stacklevel=3)
    # built in a hidden folder and swapped in whole: an earlier discovery's plots and law predictions
    # never stay beside this one's tables, and one stopped part-way leaves the earlier one as it was
    out = unfinished_dir(final)
    shutil.rmtree(out, ignore_errors=True)  # left by a discover that was killed
    try:
        _fit_and_write(run_dir, cfg, found, sites, per_fold, out, seed, refit, progress)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    finish_run_dir(out, final)  # as a run replaces an old one
    return final


def _fit_and_write(run_dir: Path, cfg, found: Sequence[str], sites: dict[str, SiteData], per_fold: bool, out: Path,
                   seed: int, refit: Refit, progress: bool) -> None:
    """The fits, the online laws and their skill of ``_discover``, written into ``out``."""
    from .evaluation.validation import ValidationRunError
    from .validate import site_domains

    # the run's sites rebuilt from its config and checked against its obs.nc (keyed by site id)
    try:
        rebuilt = site_domains(run_dir, {site_file_name(s): sd.obs for s, sd in sites.items()})
    except ValidationRunError as err:
        raise PredictError(str(err)) from None
    if per_fold:
        result, form_rows, skill_frames = _discover_folds(run_dir, cfg, found, sites, list(rebuilt.values()), out, seed,
                                                          refit, progress)  # fmt: skip
    else:
        domains = {d.column_ids[0]: d for d in rebuilt.values()}
        result, form_rows, skill_frames = {"run": str(run_dir.resolve()), "models": {}}, [], []
        truth = _twin_truth(sites)
        for label in found:
            directory = saved_model_dir(run_dir, label)
            fit_steps, test_steps = _series(sites, label, (TRAIN, VALIDATION)), _series(sites, label, (TEST,))
            entry, rows = _fit_classes(label, fit_steps, test_steps, truth, out / "plots" / site_file_name(label),
                                       seed, str(run_dir))  # fmt: skip
            form_rows += rows
            _, options, saved = load_saved_model(directory)
            co_trained = _co_trained_law(saved, cfg)
            if co_trained is not None:
                entry["co_trained_law"] = co_trained
            # online: the law of the pooled class (or of the only one), refitted on the sites' training
            # steps, run at every site
            entry["offline_law"] = entry["classes"][entry["law_from_class"]]["chosen_law"]
            trained = [sid for sid, sd in sites.items() if sid in domains and label in sd.models]
            split = {sid: sites[sid].obs["split"].values for sid in trained}
            law_model, law = _online_law(saved, entry, directory, options, cfg,
                                         [domains[s].with_loss_mask(split[s] == TRAIN) for s in trained],
                                         [domains[s].with_loss_mask(split[s] == VALIDATION) for s in trained],
                                         refit, progress)  # fmt: skip
            skill_frames += [_rerun(law_model, label, law, sd, domains[sid], out) for sid, sd in sites.items()
                             if sid in domains and label in sd.models]  # fmt: skip
            result["models"][label] = entry
    forms = pd.DataFrame(form_rows)
    skill = pd.concat(skill_frames, ignore_index=True) if skill_frames else pd.DataFrame()
    result["skill"] = skill.to_dict(orient="records")
    write_checked(out / "forms.csv", lambda p: forms.to_csv(p, index=False))
    write_checked(out / "skill.csv", lambda p: skill.to_csv(p, index=False))
    text = json.dumps(json_safe(result), indent=1, allow_nan=False)
    write_checked(out / "discovery.json", lambda p: p.write_text(text))


# ------------------------------------------------------------------------ leave-one-site-out


def _fold_learned_series(spec, model, train, val, sd: SiteData) -> pd.DataFrame:
    """A fold's model predicted over one of its training sites (as ``predict`` runs it): the
    ``_frame`` of its training and validation steps in that fold."""
    out = spec.predict(model, train)
    keep = train.data["loss_mask"].values[:, 0] | val.data["loss_mask"].values[:, 0]
    return _frame(out["Kh"][:, 0], out["RiB"][:, 0], sd.obs, keep, sd.site)


def _discover_folds(run_dir: Path, cfg, found: Sequence[str], sites: dict[str, SiteData], site_list: list,
                    out: Path, seed: int, refit: Refit, progress: bool) -> tuple[dict, list[dict], list[pd.DataFrame]]:
    """Each fold's model fitted on the K_h it learned at its own training sites, its law re-run at
    its held-out site; ``folds.csv`` (one row per fold) and ``fold_summary.csv`` (the spread of
    the fitted a, b, c per branch across folds)."""
    from .pipeline import experiments

    result: dict = {"run": str(run_dir.resolve()), "split": "leave_one_site_out", "models": {}}
    form_rows, skill_frames, fold_rows = [], [], []
    truth = _twin_truth(sites)
    for label in found:
        folds = {}
        for exp in experiments(cfg, site_list):
            directory = saved_model_dir(run_dir, label, exp.name)
            spec, options, model = load_saved_model(directory)
            held_out = [d.column_ids[0] for d in exp.test]
            training = [d.column_ids[0] for d in exp.train]
            fit_steps = pd.concat([_fold_learned_series(spec, model, tr, va, sites[sid])
                                   for sid, tr, va in zip(training, exp.train, exp.val)],
                                  ignore_index=True)  # fmt: skip
            test_steps = _series({s: sites[s] for s in held_out}, label, (TEST,))
            entry, rows = _fit_classes(label, fit_steps, test_steps, truth,
                                       out / "plots" / f"{site_file_name(label)}_{site_file_name(exp.name)}", seed,
                                       f"{run_dir}, fold {exp.name}")  # fmt: skip
            form_rows += [{"fold": exp.name, **r} for r in rows]
            entry |= {"held_out": held_out, "training_sites": training}
            co_trained = _co_trained_law(model, cfg)
            if co_trained is not None:
                entry["co_trained_law"] = co_trained
            entry["offline_law"] = entry["classes"][entry["law_from_class"]]["chosen_law"]
            law_model, law = _online_law(model, entry, directory, options, cfg, exp.train, exp.val, refit, progress)
            skill = pd.concat([_rerun(law_model, label, law, sites[s], d, out)
                               for s, d in zip(held_out, exp.test)], ignore_index=True)  # fmt: skip
            skill.insert(0, "fold", exp.name)
            skill_frames.append(skill)
            fold_rows.append(_fold_row(label, exp.name, held_out, training, entry, skill))
            folds[exp.name] = entry
        result["models"][label] = {"folds": folds}
    table = pd.DataFrame(fold_rows)
    summary = fold_summary(table)
    for label in found:
        result["models"][label]["fold_summary"] = summary[summary["model"] == label].to_dict(orient="records")
    write_checked(out / "folds.csv", lambda p: table.to_csv(p, index=False))
    write_checked(out / "fold_summary.csv", lambda p: summary.to_csv(p, index=False))
    return result, form_rows, skill_frames


def _fold_row(label: str, fold: str, held_out, training, entry: dict, skill: pd.DataFrame) -> dict:
    """One fold: its law as re-run (a, b, c per branch: online where refitted), the offline fit's R²
    and n, and the held-out site's half-hourly test NSE of the law, the hybrid and the physics."""
    fit = entry["classes"][entry["law_from_class"]]
    law = entry["online_law"] or entry["offline_law"]
    form = next(r for r in fit["forms"] if r["form"] == fit["chosen_form"])
    row = {"model": label, "fold": fold, "held_out": " ".join(held_out), "training_sites": " ".join(training),
           "class": entry["law_from_class"], "form": fit["chosen_form"], "n": form["n"], "r2": form["r2"],
           "refit": entry["online_law"] is not None}
    for branch in BRANCHES:
        row |= {f"{k}_{branch}": law[branch][k] for k in "abc"}
    half = skill[skill["scale"] == "halfhourly"]
    for m, name in ((f"{label}_law", "law"), (label, "hybrid"), ("physics", "physics")):
        for flux in sorted(set(half["flux"])):
            v = half[(half["model"] == m) & (half["flux"] == flux)]["nse"]
            row[f"nse_{flux}_{name}"] = float(v.mean()) if len(v) else np.nan
    return row


def fold_summary(folds: pd.DataFrame) -> pd.DataFrame:
    """Per model, branch and coefficient: the number of folds and the mean, SD (ddof 1), min and
    max of the fitted value across folds."""
    rows = []
    for label, group in folds.groupby("model", sort=False):
        for branch in BRANCHES:
            for k in "abc":
                v = group[f"{k}_{branch}"].to_numpy(float)
                rows.append({"model": label, "branch": branch, "coefficient": k, "folds": v.size, "mean": v.mean(),
                             "sd": v.std(ddof=1) if v.size > 1 else np.nan, "min": v.min(), "max": v.max()})
    return pd.DataFrame(rows)


def _twin_truth(sites: dict[str, SiteData]):
    """The known law of a twin run (its obs carry Kh_true), for the fit plot."""
    if any("Kh_true" in sd.obs for sd in sites.values()):
        from .data.virtual import TWIN_LAW

        return TWIN_LAW
    return None
