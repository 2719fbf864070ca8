"""The validation hierarchy of a learned closure (seed 002), for every model of a finished run.

Three levels, each for the physics model and every hybrid of ``RUN/`` at every site it predicted:

1. **Offline** — the closure alone, fed observed states and forcing. For a column model (one
   whose land model carries a LaD state: ``physics``, ``fixed_kh`` and the hybrids), each step t of
   the record starts from the model's own trajectory (the state its prediction passes through,
   spun up as in prediction) with the **top soil temperature T_1 set to the observed SoilTemp**
   (the tower's shallowest layer, the surface-temperature proxy: the sites have no skin
   temperature); one ``step`` with the observed forcing gives H and LE, scored against Qh and Qle
   on the test steps (NSE, RMSE, bias). Soil water, snow, groundwater and the deeper layers come
   from the model's trajectory. Without an observed SoilTemp the level is *not available*.
2. **Partially coupled** — the column driven by observed forcing with its own states: the run's
   predictions (``predictions/<site>/<label>.nc``) scored on the same test steps (for an MC-dropout
   model, the MC mean it predicted).
3. **Online** — a multi-decade run, deterministic (no dropout: ``key=None``), from the model's
   spun-up state, on the site's forcing recycled: the record, trimmed to whole years of 365 days
   when it spans one (so every cycle starts in the same season), else whole, is repeated
   round(``years`` × 365 d / cycle length) times (at least twice). Reported: the count of
   non-finite outputs; the drift of stored energy and water; emergent statistics of daily means
   against the observed record.

Stored energy E = Σ_k c_k (T_k − T_f) − L_f S [J m-2] (soil heat content relative to freezing, the
``SR`` output, minus the latent heat needed to melt the snow S); stored water M = W + S + W_g
[kg m-2 = mm] (root-zone water, snow, groundwater). **Drift** = (mean over the last cycle − mean
over the first cycle) / the time between them, (n_cycles − 1) × cycle length: W m-2 for E (ΔE/Δt),
mm per year (365.25 d) for M. A run is *stable* when every output is finite, |energy drift| <
``ENERGY_DRIFT_TOL`` and |water drift| < ``WATER_DRIFT_TOL``.

Emergent statistics (daily means of full days; observed days: all steps finite, gap-filled values
included, every split; the model's days pooled over all cycles), each flagged *within the
observed range*:

- daily-mean H and LE: the 5/50/95 % quantiles; within range when the model's median lies in the
  observed 5–95 % range and its 5 % and 95 % quantiles within the observed min–max;
- Bowen ratio by season (DJF/MAM/JJA/SON): median of daily H/LE over days with LE > 10 W m-2;
  within range when the model's median lies in the observed 10–90 % range of that season's daily
  ratios (needs ≥ 5 observed days);
- dry-down after rain: mean LE on days 1..5 after a wet day (P ≥ 5 mm) followed by 5 dry days
  (P < 1 mm), relative to day 1 (events with LE_1 > 10 W m-2); within range when the model's mean
  day-5 ratio lies in the observed events' 10–90 % range (needs ≥ 3 observed events).

Models without a prognostic state (``lstm``, the empirical baselines) are *not applicable* at the
offline and online levels. ``post_correction`` runs its physics column and corrects Qh and Qle
afterwards (the correction does not feed back: its storage drift is that of its physics).
``hybrid_lstm``'s LSTM restarts with each recycled cycle (its parameters come from the cycle's
forcing alone).

Every level runs the model as ``predict`` does (``ModelSpec.as_predicted``): hybrid_param with
``fallback_threshold`` falls back to the physics where its network is unsure at the offline and
online levels too, and each level reports ``fallback_fraction``, the mean fraction of its learned
multipliers that fell back (offline and partially coupled: over the scored test steps; online: over
every step of every cycle). Models without the fallback have no ``fallback_fraction``.

``hybridlsm.validate.validate_run`` writes ``RUN/validation/``: ``validation.json`` (everything, per model, site and
level), ``levels.csv`` (one row per quantity), ``<label>_online.png`` (cycle-mean stored energy
and water over the years) and ``<label>_emergent.png``, atomically with SHA-256 sidecars, holding
the run's lock. ``validation_html`` gives the report's section from those files.
"""

from __future__ import annotations

import html
import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import xarray as xr
from rich.console import Console
from rich.progress import track

from hybridlsm.constants import LATENT_HEAT_FUSION
from hybridlsm.data.preprocess import FILLED_LONG, forcing_filled
from hybridlsm.data.schema import DataWarning
from hybridlsm.data.splits import TEST
from hybridlsm.domain import Domain
from hybridlsm.evaluation import plots
from hybridlsm.evaluation.html_parts import img_html
from hybridlsm.evaluation.metrics import bias, count_valid, nse, rmse
from hybridlsm.models.column import ColumnModel, domain_inputs, run_jit
from hybridlsm.models.hybrid import FALLBACK_OUTPUT, PostCorrection
from hybridlsm.physics import LaDState
from hybridlsm.rundir import json_safe, read_json_object, verified, write_checked

__all__ = ["ENERGY_DRIFT_TOL", "LEVELS", "WATER_DRIFT_TOL", "ValidationRunError", "column_of", "cycle_drift",
           "daily_means", "emergent_statistics", "levels_table", "offline", "online", "online_run", "partially_coupled",
           "storage_drift", "stored_energy", "stored_water", "usable", "not_applicable", "validation_html", "write_validation"]  # fmt: skip

LEVELS = ("offline", "partially_coupled", "online")
FLUXES = ("Qh", "Qle")
CHECKED_FORCING = ("SWdown", "Tair", "Wind", "VPD", "Psurf", "Precip")  # those obs.nc keeps
ENERGY_DRIFT_TOL = 0.1  # W m-2
WATER_DRIFT_TOL = 1.0  # mm per year
SECONDS_PER_YEAR = 365.25 * 86400.0
YEAR_DAYS = 365  # a recycled "year" of forcing
WET_DAY_MM, DRY_DAY_MM, DRY_DOWN_DAYS = 5.0, 1.0, 5
MIN_LE = 10.0  # W m-2: the LE a Bowen ratio or a dry-down event needs
MIN_SEASON_DAYS, MIN_EVENTS = 5, 3
#: Outputs an online cycle keeps (post_correction's features need Rnet, Qg and the states).
ONLINE_OUTPUTS = ("Qh", "Qle", "Rnet", "Qg", "SR", "SWE", "SoilMoist", "GWS", "SoilTemp")


class ValidationRunError(ValueError):
    """Bad input to ``validate_run``: the message names the run directory, file or label."""


def not_applicable(status: str, reason: str) -> dict:
    return {"status": status, "reason": reason}


# ------------------------------------------------------------------------- storage and drift


def stored_energy(soil_heat: np.ndarray, snow: np.ndarray) -> np.ndarray:
    """E = S_R − L_f S [J m-2]: soil heat content relative to T_f (``SR``) minus the latent heat of
    the snow S [kg m-2]."""
    return np.asarray(soil_heat, float) - LATENT_HEAT_FUSION * np.asarray(snow, float)


def stored_water(soil_water: np.ndarray, snow: np.ndarray, groundwater: np.ndarray) -> np.ndarray:
    """M = W + S + W_g [kg m-2 = mm]."""
    return np.asarray(soil_water, float) + np.asarray(snow, float) + np.asarray(groundwater, float)


def cycle_drift(cycle_means: Sequence[float], cycle_seconds: float) -> float:
    """(last cycle's mean − first cycle's mean) / ((n − 1) × cycle length): per second."""
    m = np.asarray(cycle_means, float)
    if m.size < 2:
        return float("nan")
    return float((m[-1] - m[0]) / ((m.size - 1) * cycle_seconds))


def storage_drift(stored: np.ndarray, steps_per_cycle: int, time_step_s: float) -> float:
    """``cycle_drift`` of a stored quantity sampled every step over whole cycles (per second)."""
    x = np.asarray(stored, float)
    if x.size % steps_per_cycle:
        raise ValueError(f"{x.size} steps are not whole cycles of {steps_per_cycle}")
    return cycle_drift(x.reshape(-1, steps_per_cycle).mean(axis=1), steps_per_cycle * time_step_s)


# ------------------------------------------------------------------------ emergent statistics


def daily_means(x: np.ndarray, time: np.ndarray, time_step_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(days, means) over the full calendar days of ``time`` (a day with a NaN step is NaN)."""
    day = np.asarray(time, "datetime64[ns]").astype("datetime64[D]")
    days, index, count = np.unique(day, return_inverse=True, return_counts=True)
    means = np.bincount(index, weights=np.asarray(x, float), minlength=days.size) / count
    full = count == round(86400.0 / time_step_s)
    return days[full], means[full]


def _quantiles(model: np.ndarray, obs: np.ndarray) -> dict:
    m, o = model[np.isfinite(model)], obs[np.isfinite(obs)]
    if not m.size or not o.size:
        return not_applicable("not available", "no finite daily mean")
    mq, oq = np.quantile(m, [0.05, 0.5, 0.95]), np.quantile(o, [0.05, 0.5, 0.95])
    inside = bool(oq[0] <= mq[1] <= oq[2] and o.min() <= mq[0] and mq[2] <= o.max())
    return {"status": "ok", "model_q05_q50_q95": mq.tolist(), "obs_q05_q50_q95": oq.tolist(),
            "obs_min_max": [float(o.min()), float(o.max())], "within_observed_range": inside}  # fmt: skip


def _bowen(h: np.ndarray, le: np.ndarray) -> np.ndarray:
    ok = np.isfinite(h) & np.isfinite(le) & (le > MIN_LE)
    return np.where(ok, h / np.where(ok, le, 1.0), np.nan)


def _dry_down_events(precip_mm: np.ndarray, days: np.ndarray) -> list[int]:
    """Index of each wet day followed by ``DRY_DOWN_DAYS`` consecutive dry days."""
    out = []
    for i in range(days.size - DRY_DOWN_DAYS):
        window = slice(i + 1, i + 1 + DRY_DOWN_DAYS)
        consecutive = (days[i + DRY_DOWN_DAYS] - days[i]).astype(int) == DRY_DOWN_DAYS
        if precip_mm[i] >= WET_DAY_MM and consecutive and (precip_mm[window] < DRY_DAY_MM).all():
            out.append(i)
    return out


def _dry_down_ratios(le: np.ndarray, events: list[int]) -> np.ndarray:
    """(..., E, 5) LE on days 1..5 after each wet day / LE on day 1 (NaN when LE_1 <= MIN_LE)."""
    curves = np.stack([le[..., i + 1:i + 1 + DRY_DOWN_DAYS] for i in events], axis=-2)
    first = curves[..., :1]
    return np.where(first > MIN_LE, curves / np.where(first > MIN_LE, first, 1.0), np.nan)


def emergent_statistics(h_model: np.ndarray, le_model: np.ndarray, h_obs: np.ndarray, le_obs: np.ndarray,
                        precip_mm: np.ndarray, days: np.ndarray) -> dict:
    """Daily-flux quantiles, seasonal Bowen ratios and the LE dry-down of a recycled run.

    ``h_model``, ``le_model``: (cycles, D) daily means of each cycle; ``h_obs``, ``le_obs``,
    ``precip_mm`` (daily total): (D,) on ``days`` (the record's full days, the same in every
    cycle). Definitions and flags: module docstring."""
    out = {f"daily_{f}": _quantiles(np.ravel(m), o) for f, m, o in (("Qh", h_model, h_obs), ("Qle", le_model, le_obs))}
    season = plots.season_of(days)
    bm, bo = _bowen(h_model, le_model), _bowen(h_obs, le_obs)
    bowen = {}
    for name in plots.SEASONS:
        sel = season == name
        m, o = bm[..., sel], bo[sel]
        m, o = m[np.isfinite(m)], o[np.isfinite(o)]
        if o.size < MIN_SEASON_DAYS:
            bowen[name] = not_applicable("not available", f"{o.size} observed days with LE > {MIN_LE:g} W m-2 "
                              f"(need {MIN_SEASON_DAYS})")  # fmt: skip
            continue
        lo, hi = np.quantile(o, [0.1, 0.9])
        med = float(np.median(m)) if m.size else float("nan")  # no model day with LE > 10: outside the range
        bowen[name] = {"status": "ok", "model_median": med, "obs_median": float(np.median(o)),
                       "obs_p10_p90": [float(lo), float(hi)], "n_obs_days": int(o.size), "n_model_days": int(m.size),
                       "within_observed_range": bool(lo <= med <= hi)}  # fmt: skip
    out["bowen_ratio"] = bowen
    events = _dry_down_events(precip_mm, days)
    if not events:
        out["dry_down"] = not_applicable("not available", f"no wet day (P >= {WET_DAY_MM:g} mm) followed by "
                              f"{DRY_DOWN_DAYS} dry days (P < {DRY_DAY_MM:g} mm)")  # fmt: skip
        return out
    ro = _dry_down_ratios(le_obs, events)
    ro = ro[np.isfinite(ro).all(axis=-1)]
    rm = _dry_down_ratios(le_model, events).reshape(-1, DRY_DOWN_DAYS)
    rm = rm[np.isfinite(rm).all(axis=-1)]
    if ro.shape[0] < MIN_EVENTS:
        out["dry_down"] = not_applicable("not available", f"{ro.shape[0]} observed dry-down events with LE_1 > {MIN_LE:g} "
                              f"W m-2 (need {MIN_EVENTS})")  # fmt: skip
        return out
    lo, hi = np.quantile(ro[:, -1], [0.1, 0.9])
    mean = rm.mean(axis=0) if rm.size else np.full(DRY_DOWN_DAYS, np.nan)  # no model event: outside the range
    out["dry_down"] = {"status": "ok", "model_mean_ratio": mean.tolist(), "obs_mean_ratio": ro.mean(axis=0).tolist(),
                       "obs_day5_p10_p90": [float(lo), float(hi)], "n_obs_events": int(ro.shape[0]),
                       "n_model_events": int(rm.shape[0]), "within_observed_range": bool(lo <= mean[-1] <= hi)}
    return out


def _flags(emergent: dict) -> list[bool]:
    entries = [emergent["daily_Qh"], emergent["daily_Qle"], *emergent["bowen_ratio"].values(), emergent["dry_down"]]
    return [e["within_observed_range"] for e in entries if e["status"] == "ok"]


# ------------------------------------------------------------------------------- the levels


def _fallback_fraction(fallback: np.ndarray, masks: dict) -> float:
    """The mean fraction of fallen-back multipliers over the steps where a flux is scored."""
    scored = np.any([masks[f] for f in FLUXES], axis=0)
    return float(np.mean(np.ravel(fallback)[scored])) if scored.any() else float("nan")


def _skill(sim: np.ndarray, obs: np.ndarray, mask: np.ndarray) -> dict:
    return {"nse": nse(sim, obs, mask), "rmse": rmse(sim, obs, mask), "bias": bias(sim, obs, mask),
            "n": count_valid(sim, obs, mask)}  # fmt: skip


def usable(obs: xr.Dataset, flux: str, max_qc: int) -> np.ndarray:
    """The steps a flux is scored on (as the report): test split, finite, QC <= max_qc, forcing
    not filled from the diurnal cycle or estimated."""
    ok = np.isfinite(obs[flux].values) & (forcing_filled(obs) < FILLED_LONG) & (obs["split"].values == TEST)
    if f"{flux}_qc" in obs:
        qc = np.asarray(obs[f"{flux}_qc"].values, float)
        ok &= (qc >= 0) & (qc <= max_qc)
    return ok


Correction = Callable[[dict, Domain], dict]


def column_of(model) -> tuple[ColumnModel | None, Correction | None]:
    """The column model that carries the states, and the post-hoc flux correction (or None)."""
    if isinstance(model, ColumnModel):
        return model, None
    if isinstance(model, PostCorrection):
        return model.physics, model.corrected
    return None, None


@eqx.filter_jit
def _one_step_fluxes(model: ColumnModel, states, forcing, params: dict, dynamic: dict):
    """Every step t from ``states[t]`` with ``forcing[t]``: the observed outputs (T, N)."""

    def one(xs):
        state, f, dyn = xs
        new, fluxes = model.land.step(state, f, {**params, **dyn})
        out = model.land.observe(new, fluxes)
        return {k: out[k] for k in (*ONLINE_OUTPUTS, FALLBACK_OUTPUT) if k in out}

    return jax.lax.map(one, (states, forcing, dynamic), batch_size=2048)


def offline(model: ColumnModel, correct: Correction | None, domain: Domain, obs: xr.Dataset, masks: dict,
            state0) -> dict:
    """Level 1 (module docstring) at one site; ``state0`` the spun-up state."""
    if "SoilTemp" not in obs or not np.isfinite(obs["SoilTemp"].values).any():
        return not_applicable("not available", "the site has no observed SoilTemp (the surface-temperature proxy); "
                   "no skin temperature either")  # fmt: skip
    forcing, base = domain_inputs(model, domain)
    _, traj = run_jit(model, forcing, base, state0)
    dtype = traj["SoilTemp"].dtype

    def prev(x0, x):  # the state at the start of each step
        return jnp.concatenate([jnp.asarray(x0)[None], x[:-1]])

    t_obs = jnp.asarray(obs["SoilTemp"].values, dtype)[:, None]
    states = LaDState(soil_temp=prev(state0.soil_temp, traj["SoilTemp"]).at[..., 0].set(t_obs),
                      soil_water=prev(state0.soil_water, traj["SoilMoist"]), snow=prev(state0.snow, traj["SWE"]),
                      groundwater=prev(state0.groundwater, traj["GWS"]))  # fmt: skip
    params = model.site_params(base)
    out = {k: np.asarray(v) for k, v in
           _one_step_fluxes(model, states, forcing, params, model.dynamic(forcing, params) or {}).items()}
    if correct is not None:
        out |= correct(out, domain)
    depth = obs["SoilTemp"].attrs.get("depth_m", "unknown")
    res = {"status": "ok", "surface_temperature_proxy": f"observed SoilTemp (shallowest tower layer, depth {depth} m)",
           "other_state": "the model's own trajectory (soil water, snow, groundwater, deeper layers)"}  # fmt: skip
    if FALLBACK_OUTPUT in out:
        res["fallback_fraction"] = _fallback_fraction(out[FALLBACK_OUTPUT], masks)
    return res | {f: _skill(out[f][:, 0], obs[f].values, masks[f]) for f in FLUXES}


def partially_coupled(pred: xr.Dataset, obs: xr.Dataset, masks: dict, source: str) -> dict:
    """Level 2: the run's prediction on the test steps."""
    pred = pred.reindex(time=obs["time"])
    res = {"status": "ok", "source": source}
    if FALLBACK_OUTPUT in pred:
        res["fallback_fraction"] = _fallback_fraction(pred[FALLBACK_OUTPUT].values, masks)
    return res | {
        f: _skill(np.ravel(pred[f].values), obs[f].values, masks[f]) if f in pred else not_applicable("not available", f"no {f}")
        for f in FLUXES}  # fmt: skip


@eqx.filter_jit
def _cycle_jit(model: ColumnModel, forcing, base, state0):
    state, out = model.run(forcing, base, state0)  # key None: deterministic networks, no MC dropout
    return state, {k: out[k] for k in (*ONLINE_OUTPUTS, FALLBACK_OUTPUT) if k in out}


def _cycle_domain(domain: Domain) -> Domain:
    """The record trimmed to whole years of ``YEAR_DAYS`` days (the whole record when shorter)."""
    per_year = round(YEAR_DAYS * 86400.0 / domain.time_step_s)
    n = domain.n_steps // per_year * per_year or domain.n_steps
    return replace(domain, data=domain.data.isel(time=slice(0, n)))


def online_run(model: ColumnModel, domain: Domain, *, years: float = 50.0, state0=None,
               correct: Correction | None = None, progress: bool = True, label: str = "") -> dict:
    """Level 3 without the observations: the recycled run's non-finite counts, cycle means of
    stored energy and water and their drifts, and the (cycles, days) daily means of Qh and Qle.
    The record (whole years of it) is recycled the whole number of times nearest ``years``, at
    least twice (a drift needs two cycles); ``simulated_years`` and ``cycles`` say what ran."""
    cycle = _cycle_domain(domain)
    forcing, base = domain_inputs(model, cycle)
    state = model.spun_up_state(forcing, base) if state0 is None else state0
    cycle_s = cycle.n_steps * cycle.time_step_s
    n_cycles = max(2, round(years * YEAR_DAYS * 86400.0 / cycle_s))
    nonfinite = dict.fromkeys(ONLINE_OUTPUTS, 0)
    energy, water, daily = [], [], {f: [] for f in FLUXES}
    first_bad = None
    fallen = []  # each cycle's mean fallen-back fraction (models with the epistemic fallback)
    t0 = time.perf_counter()
    for c in track(range(n_cycles), description=f"online {label} {domain.name}: {n_cycles} cycles",
                   disable=not progress, console=Console(stderr=True)):  # fmt: skip
        state, out = _cycle_jit(model, forcing, base, state)
        out = {k: np.asarray(v) for k, v in out.items()}
        if FALLBACK_OUTPUT in out:
            fallen.append(float(np.mean(out.pop(FALLBACK_OUTPUT))))
        if correct is not None:
            out |= correct(out, cycle)
        for k, v in out.items():
            nonfinite[k] += int(np.size(v) - np.isfinite(v).sum())
        if first_bad is None and sum(nonfinite.values()):
            first_bad = c
        energy.append(float(np.mean(stored_energy(out["SR"], out["SWE"]))))
        water.append(float(np.mean(stored_water(out["SoilMoist"], out["SWE"], out["GWS"]))))
        for f in FLUXES:
            days, means = daily_means(out[f][:, 0], cycle.time, cycle.time_step_s)
            daily[f].append(means)
    res = {"cycles": n_cycles, "cycle_days": cycle_s / 86400.0, "steps": n_cycles * cycle.n_steps,
           "simulated_years": n_cycles * cycle_s / 86400.0 / YEAR_DAYS, "wall_s": round(time.perf_counter() - t0, 2),
           "nonfinite": nonfinite, "first_nonfinite_cycle": first_bad,
           "energy_drift_w_m2": cycle_drift(energy, cycle_s),
           "water_drift_mm_yr": cycle_drift(water, cycle_s) * SECONDS_PER_YEAR,
           "cycle_mean_energy_j_m2": energy, "cycle_mean_water_mm": water,
           "days": days, "daily": {f: np.stack(v) for f, v in daily.items()}, "cycle": cycle}  # fmt: skip
    if fallen:  # every cycle has the same number of steps
        res["fallback_fraction"] = float(np.mean(fallen))
    return res


def online(model: ColumnModel, correct: Correction | None, domain: Domain, obs: xr.Dataset, years: float,
           state0, progress: bool, label: str) -> dict:
    """Level 3 (module docstring) at one site."""
    run = online_run(model, domain, years=years, state0=state0, correct=correct, progress=progress, label=label)
    cycle, days = run.pop("cycle"), run.pop("days")
    daily = run.pop("daily")
    step = cycle.time_step_s
    obs = obs.isel(time=slice(0, cycle.n_steps))
    o = {f: daily_means(obs[f].values, cycle.time, step)[1] for f in FLUXES}
    precip = daily_means(cycle.data["Precip"].values[:, 0] * 86400.0, cycle.time, step)[1]
    emergent = emergent_statistics(daily["Qh"], daily["Qle"], o["Qh"], o["Qle"], precip, days)
    finite = not sum(run["nonfinite"].values())
    stable = bool(finite and abs(run["energy_drift_w_m2"]) < ENERGY_DRIFT_TOL
                  and abs(run["water_drift_mm_yr"]) < WATER_DRIFT_TOL)  # fmt: skip
    flags = _flags(emergent)
    return {"status": "ok", **run, "finite": finite, "stable": stable,
            "emergent": emergent, "emergent_within_range": f"{sum(flags)}/{len(flags)}"}  # fmt: skip


# --------------------------------------------------------------------------------- outputs


def levels_table(result: dict) -> pd.DataFrame:
    """One row per (site, model, level, quantity): value, observed, unit, within_observed_range, note."""
    rows = []

    def add(site, label, level, status, quantity="", value=None, observed=None, unit="", inside=None, note=""):
        rows.append({"site": site, "model": label, "level": level, "status": status, "quantity": quantity,
                     "value": value, "observed": observed, "unit": unit, "within_observed_range": inside, "note": note})

    for label, entry in result["models"].items():
        for site, levels in entry["sites"].items():
            for level in LEVELS:
                r = levels[level]
                if r["status"] != "ok":
                    add(site, label, level, r["status"], note=r["reason"])
                    continue
                if "fallback_fraction" in r:
                    add(site, label, level, "ok", "fallen back", r["fallback_fraction"], unit="-",
                        note="fraction of the learned multipliers replaced by the physics (epistemic fallback)")
                if level != "online":
                    for f in FLUXES:
                        for k, unit in (("nse", "-"), ("rmse", "W m-2"), ("bias", "W m-2"), ("n", "steps")):
                            add(site, label, level, "ok", f"{f} {k}", r[f].get(k), unit=unit)
                    continue
                add(site, label, level, "ok", "non-finite outputs", sum(r["nonfinite"].values()), unit="values")
                add(site, label, level, "ok", "energy drift", r["energy_drift_w_m2"], unit="W m-2",
                    note=f"{r['simulated_years']:.1f} years, {r['cycles']} cycles of {r['cycle_days']:g} days")
                add(site, label, level, "ok", "water drift", r["water_drift_mm_yr"], unit="mm yr-1")
                em = r["emergent"]
                for f in FLUXES:
                    q = em[f"daily_{f}"]
                    if q["status"] == "ok":
                        for i, p in enumerate(("q05", "q50", "q95")):
                            add(site, label, level, "ok", f"daily {f} {p}", q["model_q05_q50_q95"][i],
                                q["obs_q05_q50_q95"][i], "W m-2", q["within_observed_range"] if p == "q50" else None)
                for season, b in em["bowen_ratio"].items():
                    if b["status"] == "ok":
                        add(site, label, level, "ok", f"Bowen ratio {season}", b["model_median"], b["obs_median"], "-",
                            b["within_observed_range"])
                    else:
                        add(site, label, level, b["status"], f"Bowen ratio {season}", note=b["reason"])
                d = em["dry_down"]
                if d["status"] == "ok":
                    add(site, label, level, "ok", "dry-down LE day 5 / day 1", d["model_mean_ratio"][-1],
                        d["obs_mean_ratio"][-1], "-", d["within_observed_range"])
                else:
                    add(site, label, level, d["status"], "dry-down LE day 5 / day 1", note=d["reason"])
    return pd.DataFrame(rows)


def _plot_online(label: str, runs: dict[str, dict], path: Path) -> None:
    fig, axes = plots.new_figure(1, 2, width=5.0)
    for site, r in runs.items():
        t = (np.arange(r["cycles"]) + 0.5) * r["cycle_days"] / YEAR_DAYS
        e, w = np.asarray(r["cycle_mean_energy_j_m2"]), np.asarray(r["cycle_mean_water_mm"])
        axes[0, 0].plot(t, (e - e[0]) / 1e6, marker=".", label=f"{site}: {r['energy_drift_w_m2']:.3g} W m-2")
        axes[0, 1].plot(t, w - w[0], marker=".", label=f"{site}: {r['water_drift_mm_yr']:.3g} mm/yr")
    for ax, what in zip(axes[0], ("stored energy − first cycle [MJ m$^{-2}$]", "stored water − first cycle [mm]")):
        ax.set_xlabel("simulated years")
        ax.set_ylabel(what)
        ax.legend(fontsize=7, title="drift", title_fontsize=7)
    fig.suptitle(f"{label}: online run, cycle means of stored energy and water")
    write_checked(path, lambda p: plots.save_figure(fig, p))


def _plot_emergent(label: str, runs: dict[str, dict], path: Path) -> None:
    fig, axes = plots.new_figure(len(runs), 3, width=4.0)
    for row, (site, r) in zip(axes, runs.items()):
        em = r["emergent"]
        for i, f in enumerate(FLUXES):
            q = em[f"daily_{f}"]
            if q["status"] != "ok":
                continue
            for j, (key, colour) in enumerate((("obs_q05_q50_q95", "black"), ("model_q05_q50_q95", "C0"))):
                lo, mid, hi = q[key]
                row[0].errorbar(2 * i + j, mid, yerr=[[mid - lo], [hi - mid]], fmt="o", color=colour, capsize=4)
        row[0].set_xticks([0, 1, 2, 3], ["H obs", "H model", "LE obs", "LE model"])
        row[0].set_ylabel("daily mean, 5/50/95 % [W m$^{-2}$]")
        row[0].set_title(f"{site}: daily fluxes", fontsize=9)
        for i, (season, b) in enumerate(em["bowen_ratio"].items()):
            if b["status"] == "ok":
                lo, hi = b["obs_p10_p90"]
                row[1].errorbar(i - 0.1, b["obs_median"], yerr=[[b["obs_median"] - lo], [hi - b["obs_median"]]],
                                fmt="o", color="black", capsize=4)  # fmt: skip
                row[1].plot(i + 0.1, b["model_median"], "o", color="C0")
        row[1].set_xticks(range(4), list(em["bowen_ratio"]))
        row[1].set_xlim(-0.5, 3.5)
        row[1].set_ylabel("median daily H/LE")
        row[1].set_title("Bowen ratio (obs 10–90 %)", fontsize=9)
        d = em["dry_down"]
        if d["status"] == "ok":
            days = np.arange(1, DRY_DOWN_DAYS + 1)
            row[2].plot(days, d["obs_mean_ratio"], "o-", color="black", label=f"obs ({d['n_obs_events']} events)")
            row[2].plot(days, d["model_mean_ratio"], "o-", color="C0", label="model")
            row[2].legend(fontsize=7)
        else:
            row[2].text(0.5, 0.5, "not available:\n" + d["reason"], ha="center", va="center", wrap=True, fontsize=7,
                        transform=row[2].transAxes)
        row[2].set_xlabel("day after the wet day")
        row[2].set_ylabel("LE / LE on day 1")
        row[2].set_title("dry-down", fontsize=9)
    fig.suptitle(f"{label}: emergent statistics of the online run (black: observed)")
    write_checked(path, lambda p: plots.save_figure(fig, p))


def write_validation(out: Path, result: dict, series: dict) -> dict:
    """Write ``RUN/validation/`` (plots, levels.csv, validation.json) and return what it holds: the
    models of ``result`` beside those an earlier validation of the same length wrote (``hybridlsm
    validate --model X`` adds X; results of another length are replaced, with a warning)."""
    path = out / "validation.json"
    if path.is_file():
        earlier = read_json_object(verified(path))
        kept = {k: v for k, v in earlier.get("models", {}).items() if k not in result["models"]}
        if kept and earlier.get("years") == result["years"]:
            result = {**result, "models": {**kept, **result["models"]}}
        elif kept:
            warnings.warn(f"{path}: the earlier validation of {', '.join(kept)} ran {earlier.get('years')} years, this "
                          f"one {result['years']}; it is replaced (validate them again with --years "
                          f"{result['years']:g})", DataWarning, stacklevel=2)
    for label in result["models"]:
        runs = {site: r for (lab, site), r in series.items() if lab == label}
        if runs:
            _plot_online(label, runs, out / f"{label}_online.png")
            _plot_emergent(label, runs, out / f"{label}_emergent.png")
    table = levels_table(result)
    write_checked(out / "levels.csv", lambda p: table.to_csv(p, index=False))
    text = json.dumps(json_safe(result), indent=1, allow_nan=False)
    write_checked(out / "validation.json", lambda p: p.write_text(text))
    return result


# ------------------------------------------------------------------------------- the report


def _cell(v) -> str:
    if isinstance(v, str):
        return f"<td class='txt'>{html.escape(v)}</td>"
    return f"<td>{'' if v is None or (isinstance(v, float) and not math.isfinite(v)) else f'{v:.3g}'}</td>"


def validation_html(run_dir: Path) -> str:
    """The report's "Validation levels" section from ``RUN/validation/`` ('' when there is none)."""
    folder = Path(run_dir) / "validation"
    path = folder / "validation.json"
    if not path.is_file():
        return ""
    result = read_json_object(verified(path))
    head = ["site", "model", "offline NSE H", "offline NSE LE", "coupled NSE H", "coupled NSE LE", "online non-finite",
            "energy drift [W m-2]", "water drift [mm/yr]", "stable", "emergent in obs. range"]  # fmt: skip
    # the epistemic fallback's share per level, where a model of the run has one
    fallback = any("fallback_fraction" in r for e in result["models"].values() for lv in e["sites"].values()
                   for r in lv.values())  # fmt: skip
    if fallback:
        head += ["fallen back offline", "fallen back coupled", "fallen back online"]
    rows, notes = [], []
    for label, entry in result["models"].items():
        for site, lv in entry["sites"].items():
            cells = [site, label]
            for level in ("offline", "partially_coupled"):
                r = lv[level]
                cells += ([r[f].get("nse", r[f].get("status")) for f in FLUXES] if r["status"] == "ok"
                          else [r["status"]] * 2)  # a flux the model does not predict: its status
                if r["status"] != "ok":
                    notes.append(f"{label} at {site}, {level}: {r['status']}: {r['reason']}")
            r = lv["online"]
            if r["status"] == "ok":
                cells += [sum(r["nonfinite"].values()), r["energy_drift_w_m2"], r["water_drift_mm_yr"],
                          "yes" if r["stable"] else "NO", r["emergent_within_range"]]  # fmt: skip
            else:
                cells += [r["status"]] * 5
                notes.append(f"{label} at {site}, online: {r['status']}: {r['reason']}")
            if fallback:
                cells += [lv[level].get("fallback_fraction") for level in LEVELS]
            rows.append("<tr>" + "".join(_cell(c) for c in cells) + "</tr>")
    h = ["<h2>Validation levels</h2>",
         f"<p class='note'>Offline: one step from the model's own state with T<sub>1</sub> set to the observed "
         f"SoilTemp, observed forcing; partially coupled: the run's predictions; both on the test steps. Online: "
         f"{result['years']:g} years of the recycled forcing from the spun-up state, deterministic; drift = "
         "(last − first cycle mean) / elapsed time of stored energy Σc(T−T<sub>f</sub>) − L<sub>f</sub>S "
         "and water "
         f"W + S + W<sub>g</sub>; stable: all outputs finite, |drift| &lt; {result['energy_drift_tol_w_m2']:g} W m-2 "
         f"and {result['water_drift_tol_mm_yr']:g} mm/yr. Emergent statistics (daily H and LE quantiles, seasonal "
         "Bowen ratio, LE dry-down after rain) within the observed range: passed/evaluated. Every level runs a "
         "model as it predicts; fallen back: the fraction of learned multipliers that the epistemic fallback "
         "replaced by the physics (scored steps; online: every step). Details: "
         "<code>validation/validation.json</code>, <code>validation/levels.csv</code> "
         "(<code>hybridlsm.evaluation.validation</code>).</p>",
         "<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>" + "".join(rows) + "</table>"]
    if notes:
        h.append("<ul class='note'>" + "".join(f"<li>{html.escape(n)}</li>" for n in dict.fromkeys(notes)) + "</ul>")
    for label in result["models"]:
        for kind in ("online", "emergent"):
            png = folder / f"{label}_{kind}.png"
            if png.is_file():
                h.append(img_html(png, f"{label} {kind}"))
    return "\n".join(h)
