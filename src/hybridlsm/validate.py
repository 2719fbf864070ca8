"""``hybridlsm validate RUN``: the validation hierarchy (offline, partially coupled, online) of every
model of a finished run (the levels, drifts and emergent statistics: ``evaluation.validation``).

The run's sites are rebuilt from its ``config.yaml`` as ``hybridlsm run`` read them
(``pipeline.read_site_spec``) and checked against its ``obs.nc``; each model is loaded from
``RUN/models/<label>/<experiment>/`` and run as ``predict`` runs it (``ModelSpec.as_predicted``:
hybrid_param's epistemic fallback acts at every level); ``RUN/validation/`` is written while the
run's lock is held.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from .config import ConfigError
from .data import prepare_forcing
from .domain import Domain, domain_from_site, site_file_name
from .evaluation.validation import (CHECKED_FORCING, ENERGY_DRIFT_TOL, FLUXES, LEVELS, WATER_DRIFT_TOL,
                                    ValidationRunError, column_of, not_applicable, offline, online, partially_coupled, usable,
                                    write_validation)
from .models.column import domain_inputs
from .models.registry import load_run_config, load_saved_model
from .pipeline import read_site_spec
from .rundir import load_checked_dataset, run_lock, unfinished_run

__all__ = ["site_domains", "validate_run"]


def site_domains(run_dir: Path, obs: dict[str, xr.Dataset]) -> dict[str, Domain]:
    """The run's sites (folder name -> Domain) regenerated from its config.yaml, each checked against
    the run's obs.nc."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ValidationRunError(f"{run_dir}: not a finished run directory (no config.yaml)")
    try:
        cfg = load_run_config(path, stored=True)
    except ConfigError as err:
        raise ValidationRunError(f"{path}: {err} (validation rebuilds the forcing from the run's sites)") from None
    if cfg.data.grid is not None:
        raise ValidationRunError(f"{path}: a regional run (data.grid); validation replays site runs")
    out = {}
    for spec in cfg.data.sites:
        d = domain_from_site(prepare_forcing(read_site_spec(spec), out_of_range=cfg.data.forcing_out_of_range))
        folder = site_file_name(d.column_ids[0])
        if folder not in obs:
            continue
        o, same = obs[folder], d.n_steps == obs[folder].sizes["time"]
        # the forcing exactly; the fluxes to 1 W m-2 (a virtual site's twin run depends on the dtype)
        same = same and (d.time == o["time"].values).all() and all(
            np.allclose(d.data[v].values[:, 0], o[v].values, rtol=1e-6, atol=0.0 if v in CHECKED_FORCING else 1.0,
                        equal_nan=True) for v in (*CHECKED_FORCING, *FLUXES) if v in o and v in d.data)  # fmt: skip
        if not same:
            raise ValidationRunError(f"site {d.column_ids[0]} read from {path}'s data.sites does not match "
                                     f"{run_dir / 'predictions' / folder / 'obs.nc'} (its file changed since the run?)")
        out[folder] = d
    missing = sorted(set(obs) - set(out))
    if missing:
        raise ValidationRunError(f"{path}: no configured site gives the predicted site(s) {missing}")
    return out


def _experiment(run_dir: Path, label: str, pred: xr.Dataset, pred_path: Path) -> Path:
    root = run_dir / "models" / label
    exp = pred.attrs.get("experiment")
    if exp is None:
        exps = sorted(p.name for p in root.glob("*") if (p / "model.json").is_file())
        if len(exps) != 1:
            raise ValidationRunError(f"{pred_path}: no 'experiment' attribute and {root} holds {exps or 'no model'}")
        exp = exps[0]
    if not (root / exp / "model.json").is_file():
        raise ValidationRunError(f"{pred_path}: its trained model {root / exp / 'model.json'} is missing")
    return root / exp


def validate_run(run_dir: Path, years: float = 50.0, labels: Sequence[str] | None = None, *,
                 progress: bool = True, then: Callable[[], object] | None = None) -> dict:
    """Validate every model of a finished run at the three levels (module docstring); write
    ``RUN/validation/`` and return what ``validation.json`` holds (NaN where it has null):
    ``{"run_dir", "years", "models": {label: {"type", "sites": {site: {level: {...}}}}}}``. Each
    level is ``{"status": "ok", ...}`` or ``{"status": "not applicable" | "not available", "reason"}``.
    Holds the run's lock (``rundir.run_lock``) throughout, ``then`` included; ``progress``: a bar
    per online run."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValidationRunError(f"run directory {run_dir} does not exist")
    pred_root = run_dir / "predictions"
    if not pred_root.is_dir() or not (run_dir / "models").is_dir():
        raise ValidationRunError(f"{run_dir}: not a finished run directory (no predictions/ or models/ folder)")
    if unfinished_run(run_dir):
        raise ValidationRunError(unfinished_run(run_dir))
    if not (math.isfinite(years) and years > 0):
        raise ValidationRunError(f"years must be a positive number, got {years}")
    with run_lock(run_dir):
        folders = sorted(p for p in pred_root.iterdir() if (p / "obs.nc").is_file())
        obs = {p.name: load_checked_dataset(p / "obs.nc") for p in folders}
        available = sorted({f.stem for p in folders for f in p.glob("*.nc") if f.name != "obs.nc"})
        unknown = sorted(set(labels or ()) - set(available))
        if unknown or not available:
            raise ValidationRunError(f"{run_dir}: no predictions of model(s) {unknown or 'any'}; the run has: "
                                     f"{', '.join(available) or 'none'}")  # fmt: skip
        domains = site_domains(run_dir, obs)
        result = {"run_dir": str(run_dir.resolve()), "years": years, "energy_drift_tol_w_m2": ENERGY_DRIFT_TOL,
                  "water_drift_tol_mm_yr": WATER_DRIFT_TOL, "models": {}}  # fmt: skip
        series = {}
        for label in labels or available:
            entry = result["models"].setdefault(label, {"type": None, "sites": {}})
            for folder, o in obs.items():
                pred_path = run_dir / "predictions" / folder / f"{label}.nc"
                if not pred_path.is_file():
                    continue
                pred = load_checked_dataset(pred_path)
                spec, _, model = load_saved_model(_experiment(run_dir, label, pred, pred_path))
                model = spec.as_predicted(model)  # e.g. hybrid_param's epistemic fallback on, as in predict
                entry["type"] = spec.name
                site = str(o.attrs.get("site_id", folder))
                max_qc = int(o.attrs.get("max_qc", 1))
                masks = {f: usable(o, f, max_qc) for f in FLUXES}
                levels = {"partially_coupled": partially_coupled(pred, o, masks, str(pred_path.relative_to(run_dir)))}
                column, correct = column_of(model)
                if column is None:
                    why = f"{spec.name} has no prognostic state (not a column model)"
                    levels |= {"offline": not_applicable("not applicable", why), "online": not_applicable("not applicable", why)}
                else:
                    forcing, base = domain_inputs(column, domains[folder])
                    state0 = column.spun_up_state(forcing, base)
                    levels["offline"] = offline(column, correct, domains[folder], o, masks, state0)
                    levels["online"] = online(column, correct, domains[folder], o, years, state0, progress, label)
                    series[(label, site)] = levels["online"]
                entry["sites"][site] = {k: levels[k] for k in LEVELS}
        result = write_validation(run_dir / "validation", result, series)
        if then is not None:  # e.g. the report's rebuild, under the same lock
            then()
    return result
