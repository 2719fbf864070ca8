"""Scores of probabilistic (Gaussian) predictions against a climatological ensemble (issue 13).

A model states its predictive uncertainty in its prediction file as ``<flux>_sd``: the total
predictive standard deviation [W m-2] of a Gaussian N(μ, σ²) around its ``<flux>`` (μ), optionally
with the parts ``<flux>_sd_epistemic`` and ``<flux>_sd_aleatoric`` (σ² = σ_e² + σ_a², law of total
variance). This module scores such predictions; the report (`report.build_report`) calls it.

Definitions (per model, flux and scale, over the scored steps: obs, μ and σ finite and ``mask``)
-------------------------------------------------------------------------------------------
- **CRPS** [W m-2]: mean of the closed form for N(μ, σ²) (`metrics.crps_gaussian`); for the
  climatology, the energy form of the ensemble CRPS over its members (`metrics.crps_ensemble`,
  the standard estimator with 1/(2M²): the exact CRPS of the M-member ensemble, as properscoring
  and xskillscore compute it).
- **CRPSS** = 1 − CRPS_model/CRPS_clim, both means over the steps where the model *and* the
  climatology have a forecast (``n_skill`` of them), the climatology scored against the same
  target values (at the daily scale: the model's daily means of the observations). > 0: the model
  beats the climatology; 1: perfect. NaN without a reference.
- ``crpss_fair``: the same against the *fair* CRPS of the climatology (1/(2M(M − 1)), Ferro 2014),
  the unbiased estimate of the CRPS of the climatological distribution the members sample, which
  an ensemble of finitely many members scores worse than (by about E|X − X'|/(2M)). The model's
  Gaussian CRPS is exact, so this is the comparison with the climatology itself rather than with
  its M-member ensemble; it is the lower of the two. On the climatology's own row it is
  1 − CRPS_ensemble/CRPS_fair (≤ 0, that penalty). With 10–30 members it is 0.03–0.1 below CRPSS.
- **Coverage** ``coverage_<L>``: fraction of observations inside the central L % interval
  μ ± z_{(1+L)/2}·σ (`metrics.gaussian_interval`, `metrics.interval_scores`); a calibrated model
  has coverage ≈ L, an overconfident one less. **Width** ``width_<L>``: mean U − L [W m-2]. For the
  climatology the interval runs between the empirical (1 − L)/2 and (1 + L)/2 quantiles of the
  members (``np.quantile``, linear interpolation).
- **Spread–skill**: ``spread_skill_r`` = Pearson r between σ and |μ − y| (NaN for a constant σ);
  ``spread`` = √(mean σ²) (the RMS spread); ``rmse`` = RMSE of μ; ``spread_skill_ratio`` =
  spread/RMSE, ≈ 1 for a calibrated forecast (E[(y − μ)²] = E[σ²]), < 1 overconfident, > 1
  underconfident. The RMS spread and not the mean σ is used: with a σ that varies, mean σ < √(mean
  σ²) (Jensen), so mean σ/RMSE is below 1 even for a calibrated forecast (Fortin et al. 2014).
- ``epistemic_share`` = mean σ_e²/mean σ² (σ_e² = σ² − σ_a² where only the aleatoric part is given;
  NaN where neither part is given).
- ``n``: number of scored steps (days at the daily scale).

Climatological ensemble (the reference to beat)
-----------------------------------------------
The members for a target step are the observed values of the same site in the same calendar month
and the same time-of-day slot (half-hour for half-hourly data: ⌊seconds since midnight / time
step⌋), taken from the **reference steps only** — in the report the usable observations of the
training and validation splits (split 1 and 2), never the test steps being scored (a target that
is also a reference step is refused, and so is a reference mask overlapping the scored mask). All
years of the reference period pool together. **Minimum members rule**: a target gets a
climatological forecast only when its month and slot have at least ``min_members`` (default
`MIN_MEMBERS` = 10) finite reference values; otherwise it has none (NaN) and the climatology is not
scored there (nor is that step counted in ``n_skill``). The climatology's predictive mean is the
member mean and its σ is √((M + 1)/M)·s (s the sample SD, ddof = 1), the SD of a new value
exchangeable with the M members, so that its spread–skill ratio is ≈ 1 (Fortin et al. 2014).

At the daily (or weekly) scale the members are the daily (weekly) means of the reference period
(each period valid by `metrics.aggregate`'s ``min_valid_fraction``) whose period starts in the same
calendar month; the slot is then always 0. A day that the split boundary cuts can give a member
(its reference half-hours) and a target (its scored half-hours) — never the same half-hours.

Daily scale of a Gaussian prediction
------------------------------------
Daily μ and obs are the means over the scored half-hours of the day (the same half-hours for
both, `metrics.aggregate` with ``min_valid_fraction``). The daily σ is the SD of the daily mean
when the errors within the day are **independent** (default, ``daily_sd="independent"``):
σ_day = √(Σ σ_i²)/n_d over the n_d scored half-hours. Within-day errors of a land-surface model are
usually positively correlated (a wrong soil-moisture state biases the whole day), and then this σ
**underestimates** the daily uncertainty (by up to √n_d for fully correlated errors), so daily
coverage below nominal may be the rule's doing, not the model's. ``daily_sd="correlated"`` uses the
other bound, σ_day = mean σ_i (exact for perfectly correlated errors; never smaller than the SD of
the mean for any correlation). Models that write ensembles could be scored exactly; that is not done.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd

from hybridlsm.evaluation.metrics import (
    SCALES,
    _as_datetime64,
    _time_step_seconds,
    aggregate,
    crps_ensemble,
    crps_gaussian,
    gaussian_interval,
    interval_scores,
    joint_mask,
    pearson_r,
    rmse,
)

__all__ = [
    "MIN_MEMBERS",
    "LEVELS",
    "PROB_SCALES",
    "RELIABILITY_LEVELS",
    "CLIMATOLOGY",
    "DAILY_SD_RULES",
    "climatological_ensemble",
    "crps_ragged",
    "AggregatedGaussian",
    "aggregate_gaussian",
    "probabilistic_columns",
    "probabilistic_table",
    "Reliability",
    "reliability_curve",
    "reliability_curves",
]

MIN_MEMBERS = 10
LEVELS = (0.5, 0.8, 0.9, 0.95)
PROB_SCALES = ("halfhourly", "daily")
RELIABILITY_LEVELS = np.linspace(0.05, 0.95, 19)
CLIMATOLOGY = "climatology"  # the model name of the reference rows
DAILY_SD_RULES = ("independent", "correlated")

_NAN = float("nan")


def _level_key(level: float) -> str:
    return f"{100 * level:g}"


# --------------------------------------------------------------------------------------------
# climatological ensemble


def _slot_keys(time, step_s: float) -> np.ndarray:
    """month·100000 + ⌊seconds since midnight / step⌋ (slot 0 for steps of a day or more)."""
    t = _as_datetime64(time)
    month = t.astype("datetime64[M]").astype(np.int64) % 12 + 1
    tod = (t - t.astype("datetime64[D]")).astype("timedelta64[s]").astype(np.int64)
    slot = tod // max(int(round(step_s)), 1) if step_s < 86400 else np.zeros_like(tod)
    return month * 100000 + slot


class _Climatology:
    """Reference values grouped by key; only groups with at least ``min_members`` finite values."""

    def __init__(self, values: np.ndarray, keys: np.ndarray, min_members: int):
        if min_members < 1:
            raise ValueError(f"min_members must be >= 1, got {min_members}")
        ok = np.isfinite(values)
        v, k = values[ok], keys[ok]
        order = np.argsort(k, kind="stable")
        v, k = v[order], k[order]
        uk, start, count = np.unique(k, return_index=True, return_counts=True)
        self.groups = {int(key): np.sort(v[s : s + c]) for key, s, c in zip(uk, start, count) if c >= min_members}

    def targets(self, keys: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(members, indices of the targets with that key) for every target key that has members."""
        order = np.argsort(keys, kind="stable")
        uk, start, count = np.unique(keys[order], return_index=True, return_counts=True)
        for key, s, c in zip(uk, start, count):
            members = self.groups.get(int(key))
            if members is not None:
                yield members, order[s : s + c]

    def padded(self, keys: np.ndarray) -> np.ndarray:
        groups = list(self.targets(keys))
        width = max((m.size for m, _ in groups), default=0)
        out = np.full((keys.size, width), np.nan)
        for m, idx in groups:
            out[idx, : m.size] = m
        return out

    def crps(self, y: np.ndarray, keys: np.ndarray, fair: bool = False) -> np.ndarray:
        """The ensemble CRPS of the targets ``y`` (standard, or ``fair``: NaN for one member)."""
        out = np.full(keys.size, np.nan)
        for m, idx in self.targets(keys):
            idx = idx[np.isfinite(y[idx])]
            if idx.size and (m.size > 1 or not fair):
                out[idx] = crps_ensemble(y[idx], np.broadcast_to(m, (idx.size, m.size)), fair=fair)
        return out

    def moments(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Member mean and predictive SD √((M + 1)/M)·s (s with ddof = 1; 0 for one member)."""
        mean = np.full(keys.size, np.nan)
        sd = np.full(keys.size, np.nan)
        for m, idx in self.targets(keys):
            mean[idx] = m.mean()
            sd[idx] = math.sqrt((m.size + 1) / m.size) * m.std(ddof=1) if m.size > 1 else 0.0
        return mean, sd

    def interval(self, keys: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
        lo = np.full(keys.size, np.nan)
        hi = np.full(keys.size, np.nan)
        for m, idx in self.targets(keys):
            lo[idx], hi[idx] = np.quantile(m, [0.5 - level / 2, 0.5 + level / 2])
        return lo, hi


def _check_reference(reference, mask, shape) -> np.ndarray:
    ref = np.asarray(reference)
    if ref.dtype != bool or ref.shape != shape:
        raise ValueError(f"reference must be a boolean array of shape {shape}, got {ref.dtype} {ref.shape}")
    if mask is not None:
        both = int(np.sum(ref & mask))
        if both:
            raise ValueError(
                f"reference and scored steps overlap at {both} steps: the climatology must come from other "
                "steps (the training/validation split), never from the steps being scored")
    return ref


def climatological_ensemble(
    obs,
    time,
    reference_mask,
    target_times,
    *,
    min_members: int = MIN_MEMBERS,
    time_step_s: float | None = None,
) -> np.ndarray:
    """Climatological ensemble of every target time: an (T, M) array, NaN-padded.

    Row i holds, sorted ascending, the finite ``obs`` at the steps where ``reference_mask`` is True
    (the training/validation steps; never the steps being scored) that fall in the calendar month
    and the time-of-day slot (⌊seconds since midnight / time step⌋, the half-hour for half-hourly
    data) of ``target_times[i]``, then NaN up to M = the largest such count. A row whose month and
    slot have fewer than ``min_members`` reference values is all NaN (no forecast). The time step
    is ``time_step_s`` or the median spacing of ``time``. Raises ValueError if a target time is a
    reference step. Score it with `crps_ragged` (it handles the NaN padding).
    """
    o = np.asarray(obs, dtype=float)
    t = _as_datetime64(time)
    if o.shape != t.shape:
        raise ValueError(f"climatological_ensemble: obs has shape {o.shape}, time {t.shape}")
    ref = _check_reference(reference_mask, None, o.shape)
    tt = _as_datetime64(target_times)
    inside = np.isin(tt, t[ref])
    if inside.any():
        raise ValueError(
            f"climatological_ensemble: {int(inside.sum())} target times are reference steps (first "
            f"{tt[inside][0]}); the reference must not contain the steps being scored")
    step = _time_step_seconds(t, time_step_s)
    clim = _Climatology(np.where(ref, o, np.nan), _slot_keys(t, step), min_members)
    return clim.padded(_slot_keys(tt, step))


def crps_ragged(obs, members, *, min_members: int = 1) -> np.ndarray:
    """Pointwise ensemble CRPS of NaN-padded ensembles (rows of ``members``, (T, M)).

    Each row is scored with `metrics.crps_ensemble` over its finite members; NaN where the
    observation is not finite or the row has fewer than ``min_members`` (≥ 1) finite members.
    """
    x = np.asarray(members, dtype=float)
    y = np.asarray(obs, dtype=float)
    if x.ndim != 2 or y.shape != x.shape[:1]:
        raise ValueError(f"crps_ragged: members must be (T, M) and obs (T,), got {x.shape} and {y.shape}")
    xs = np.sort(x, axis=1)  # NaN last
    count = np.isfinite(x).sum(axis=1)
    out = np.full(y.shape, np.nan)
    for c in np.unique(count):
        if c < max(min_members, 1):
            continue
        rows = np.flatnonzero((count == c) & np.isfinite(y))
        if rows.size:
            out[rows] = crps_ensemble(y[rows], xs[rows, :c])
    return out


# --------------------------------------------------------------------------------------------
# aggregation of Gaussian predictions


class AggregatedGaussian(NamedTuple):
    """Period values of obs, μ and σ (NaN where the period is not valid) and the period starts."""

    obs: np.ndarray
    mu: np.ndarray
    sd: np.ndarray
    period: np.ndarray


def _period_counts(ok: np.ndarray, time: np.ndarray, scale: str) -> tuple[np.ndarray, np.ndarray]:
    """Number of ``ok`` steps per calendar period, on the periods of `metrics.aggregate`."""
    days = time.astype("datetime64[D]").astype(np.int64)
    if scale == "weekly":
        days = days - (days + 3) % 7
    starts, codes = np.unique(days, return_inverse=True)
    counts = np.bincount(codes.reshape(-1), weights=ok.astype(float), minlength=starts.size)
    return counts, starts.astype("datetime64[D]").astype("datetime64[ns]")


def _aggregate_sd(sd, ok, time, scale, rule, min_valid_fraction, time_step_s) -> np.ndarray:
    kw = dict(min_valid_fraction=min_valid_fraction, time_step_s=time_step_s)
    if scale == "halfhourly":
        return np.where(ok, sd, np.nan)
    if rule == "correlated":
        return aggregate(np.where(ok, sd, np.nan), time, scale, **kw).values
    mean_var = aggregate(np.where(ok, sd * sd, np.nan), time, scale, **kw)
    counts, starts = _period_counts(ok, time, scale)
    assert np.array_equal(starts, mean_var.period)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt(mean_var.values / counts)  # √(Σσ²)/n = √(mean σ² / n)


def aggregate_gaussian(
    obs,
    mu,
    sd,
    time,
    scale: str,
    mask=None,
    *,
    daily_sd: str = "independent",
    min_valid_fraction: float = 0.5,
    time_step_s: float | None = None,
) -> AggregatedGaussian:
    """Gaussian predictions N(μ, σ²) and the observations at ``scale`` (see the module docs).

    The scored steps are where obs, μ and σ are finite and ``mask`` is True. ``"halfhourly"``:
    the inputs, NaN elsewhere. ``"daily"``/``"weekly"``: obs and μ are the period means over the
    scored steps (`metrics.aggregate`, valid with ≥ ``min_valid_fraction`` of the period's steps);
    σ = √(Σσ_i²)/n (``daily_sd="independent"``, errors independent within the period: too small when
    they are correlated) or mean σ_i (``"correlated"``, perfectly correlated errors).
    """
    o, m, s = (np.asarray(a, dtype=float) for a in (obs, mu, sd))
    t = _as_datetime64(time)
    if not (o.shape == m.shape == s.shape == t.shape):
        raise ValueError(f"aggregate_gaussian: shapes differ: obs {o.shape}, mu {m.shape}, sd {s.shape}, "
                         f"time {t.shape}")
    if scale not in SCALES:
        raise ValueError(f"aggregate_gaussian: unknown scale {scale!r}; allowed: {', '.join(SCALES)}")
    if daily_sd not in DAILY_SD_RULES:
        raise ValueError(f"aggregate_gaussian: daily_sd must be one of {DAILY_SD_RULES}, got {daily_sd!r}")
    if np.any(s < 0):
        raise ValueError("aggregate_gaussian: sd must be >= 0")
    ok = joint_mask(o, m, s, mask=None if mask is None else np.asarray(mask))
    kw = dict(min_valid_fraction=min_valid_fraction, time_step_s=time_step_s)
    a_o = aggregate(np.where(ok, o, np.nan), t, scale, **kw)
    a_m = aggregate(np.where(ok, m, np.nan), t, scale, **kw)
    a_s = _aggregate_sd(s, ok, t, scale, daily_sd, min_valid_fraction, time_step_s)
    a_s = np.where(np.isfinite(a_o.values), a_s, np.nan)
    return AggregatedGaussian(a_o.values, a_m.values, a_s, a_o.period)


# --------------------------------------------------------------------------------------------
# table


def probabilistic_columns(levels: Sequence[float] = LEVELS) -> list[str]:
    """Columns of `probabilistic_table` for these interval levels."""
    cov = [c for lv in levels for c in (f"coverage_{_level_key(lv)}", f"width_{_level_key(lv)}")]
    return ["site", "model", "flux", "scale", "split", "crps", "crpss", "crpss_fair", "n_skill", *cov,
            "spread_skill_r", "spread", "rmse", "spread_skill_ratio", "epistemic_share", "n"]  # fmt: skip


def _as_models(x) -> dict[str, np.ndarray]:
    if isinstance(x, Mapping):
        return {str(k): np.asarray(v, dtype=float) for k, v in x.items()}
    if x is None:
        return {}
    return {"model": np.asarray(x, dtype=float)}


def _scores(y, mu, sd, ok, crps, levels, interval) -> dict:
    """Scores of predictive mean/SD/intervals on the steps ``ok``."""
    out: dict = {"crps": float(np.mean(crps[ok])) if ok.any() else _NAN}
    for lv in levels:
        lo, hi = interval(lv)
        sc = interval_scores(y, lo, hi, 1.0 - lv, mask=ok)
        out[f"coverage_{_level_key(lv)}"] = sc.picp
        out[f"width_{_level_key(lv)}"] = sc.mean_width
    err = np.abs(mu - y)
    spread = math.sqrt(float(np.mean(sd[ok] ** 2))) if ok.any() else _NAN
    e = rmse(mu, y, ok) if ok.any() else _NAN
    constant = not ok.any() or float(np.ptp(sd[ok])) == 0.0  # r undefined (rounding would give ~1e-17)
    out |= dict(spread_skill_r=_NAN if constant else pearson_r(sd, err, ok), spread=spread, rmse=e,
                spread_skill_ratio=spread / e if e and math.isfinite(e) else _NAN, n=int(ok.sum()))
    return out


def _skill(crps: np.ndarray, reference: np.ndarray) -> float:
    """1 − mean CRPS / mean reference CRPS over the steps where both are finite; NaN without one
    or where the reference's is 0."""
    both = np.isfinite(crps) & np.isfinite(reference)
    if not both.any():
        return _NAN
    ref = float(np.mean(reference[both]))
    return 1.0 - float(np.mean(crps[both])) / ref if ref > 0 else _NAN


def _climatology_at(o, t, ref, scale, *, min_members, min_valid_fraction, time_step_s):
    """(climatology, step in seconds for the keys) at ``scale`` from the reference steps."""
    if scale == "halfhourly":
        step = _time_step_seconds(t, time_step_s)
        return _Climatology(np.where(ref, o, np.nan), _slot_keys(t, step), min_members), step
    a = aggregate(np.where(ref, o, np.nan), t, scale, min_valid_fraction=min_valid_fraction, time_step_s=time_step_s)
    return _Climatology(a.values, _slot_keys(a.period, 86400.0), min_members), 86400.0


def probabilistic_table(
    obs,
    mu,
    sd,
    time,
    mask=None,
    scales: Sequence[str] = PROB_SCALES,
    levels: Sequence[float] = LEVELS,
    reference=None,
    *,
    epistemic=None,
    aleatoric=None,
    site: str = "",
    flux: str = "",
    split: str = "test",
    min_members: int = MIN_MEMBERS,
    daily_sd: str = "independent",
    min_valid_fraction: float = 0.5,
    time_step_s: float | None = None,
) -> pd.DataFrame:
    """Probabilistic scores of every model, per scale, beside the climatological ensemble.

    ``obs`` (1-D on ``time``); ``mu`` and ``sd``: {model: predictive mean}, {model: predictive SD}
    (or single arrays, model name ``"model"``); ``mask``: the steps to score (e.g. test split and
    QC); ``reference``: boolean mask of the steps whose observations make the climatology (e.g.
    usable train/validation steps; must not overlap ``mask``) — without it there is no climatology
    row and CRPSS is NaN. ``epistemic``/``aleatoric``: optional {model: SD part}. Definitions and
    the daily σ rule (``daily_sd``) in the module docs; columns `probabilistic_columns`. Rows: per
    scale the models in order, then ``"climatology"``. Raises ValueError for a negative σ.
    """
    o = np.asarray(obs, dtype=float)
    if o.ndim != 1:
        raise ValueError(f"probabilistic_table: obs must be 1-D, got shape {o.shape}")
    t = _as_datetime64(time)
    mus, sds = _as_models(mu), _as_models(sd)
    if set(mus) != set(sds):
        raise ValueError(f"probabilistic_table: mu has models {sorted(mus)}, sd has {sorted(sds)}")
    epis, ales = _as_models(epistemic), _as_models(aleatoric)
    for model in mus:
        for name, arr in (("mean", mus[model]), ("sd", sds[model])):
            if arr.shape != o.shape:
                raise ValueError(f"probabilistic_table: model {model!r} {name} has shape {arr.shape}, obs {o.shape}")
        neg = int(np.sum(sds[model] < 0))
        if neg:
            raise ValueError(f"probabilistic_table: model {model!r} has a negative predictive sd at {neg} steps")
    m_all = np.ones(o.shape, bool) if mask is None else np.asarray(mask)
    if m_all.dtype != bool or m_all.shape != o.shape:
        raise ValueError(f"probabilistic_table: mask must be boolean of shape {o.shape}")
    ref = None if reference is None else _check_reference(reference, m_all, o.shape)
    label = dict(site=site, flux=flux, split=split)
    agg_kw = dict(min_valid_fraction=min_valid_fraction, time_step_s=time_step_s)

    rows = []
    for scale in scales:
        clim = step = None
        if ref is not None:
            clim, step = _climatology_at(o, t, ref, scale, min_members=min_members, **agg_kw)
        for model in mus:
            m_, s_ = mus[model], sds[model]
            a = aggregate_gaussian(o, m_, s_, t, scale, m_all, daily_sd=daily_sd, **agg_kw)
            ok = np.isfinite(a.obs) & np.isfinite(a.mu) & np.isfinite(a.sd)
            crps = crps_gaussian(a.obs, a.mu, a.sd)
            row = _scores(a.obs, a.mu, a.sd, ok, crps, levels, lambda lv: gaussian_interval(a.mu, a.sd, lv))
            crpss, crpss_fair, n_skill = _NAN, _NAN, 0
            if clim is not None:
                keys = _slot_keys(a.period, step)
                c, c_fair = clim.crps(a.obs, keys), clim.crps(a.obs, keys, fair=True)
                common = ok & np.isfinite(c)
                n_skill = int(common.sum())
                if n_skill:
                    crpss = _skill(crps[common], c[common])
                    crpss_fair = _skill(crps[common], c_fair[common])
            share = _NAN
            if model in epis or model in ales:
                ok_steps = joint_mask(o, m_, s_, mask=m_all)
                if model in epis:
                    var_e = epis[model] ** 2
                else:
                    var_e = np.clip(s_**2 - ales[model] ** 2, 0.0, None)
                ok_e = ok_steps & np.isfinite(var_e)
                sd_e = _aggregate_sd(np.sqrt(var_e), ok_e, t, scale, daily_sd, min_valid_fraction, time_step_s)
                both = ok & np.isfinite(sd_e)
                if both.any() and np.sum(a.sd[both] ** 2) > 0:
                    share = float(np.mean(sd_e[both] ** 2) / np.mean(a.sd[both] ** 2))
            rows.append(label | dict(model=model, scale=scale, crpss=crpss, crpss_fair=crpss_fair, n_skill=n_skill,
                                     epistemic_share=share) | row)
        if clim is not None:
            a = aggregate(np.where(m_all, o, np.nan), t, scale, **agg_kw)
            keys = _slot_keys(a.period, step)
            y = a.values
            crps = clim.crps(y, keys)
            ok = np.isfinite(crps)
            mean, sdc = clim.moments(keys)
            row = _scores(y, mean, sdc, ok, crps, levels, lambda lv: clim.interval(keys, lv))
            c_mean = row["crps"]
            fair = clim.crps(y, keys, fair=True)
            rows.append(label | dict(model=CLIMATOLOGY, scale=scale, n_skill=row["n"], epistemic_share=_NAN,
                                     crpss=0.0 if c_mean > 0 else _NAN, crpss_fair=_skill(crps[ok], fair[ok]))
                        | row)
    return pd.DataFrame(rows, columns=probabilistic_columns(levels))


# --------------------------------------------------------------------------------------------
# reliability


class Reliability(NamedTuple):
    """Reliability-diagram data: nominal level of each central interval and the observed coverage."""

    nominal: np.ndarray
    observed: np.ndarray
    n: int


def reliability_curve(obs, mu, sd, mask=None, levels=RELIABILITY_LEVELS) -> Reliability:
    """Observed coverage of the central Gaussian intervals μ ± z_{(1+p)/2}·σ at each nominal level
    p of ``levels``, over the steps where obs, μ and σ are finite and ``mask`` is True. A
    calibrated forecast lies on the 1:1 line, an overconfident one below it."""
    y, m, s = (np.asarray(a, dtype=float) for a in (obs, mu, sd))
    ok = joint_mask(y, m, s, mask=None if mask is None else np.asarray(mask))
    lv = np.asarray(levels, dtype=float)
    cov = np.array([interval_scores(y, *gaussian_interval(m, s, p), 1.0 - p, mask=ok).picp for p in lv])
    return Reliability(lv, cov, int(ok.sum()))


def reliability_curves(
    obs,
    mu,
    sd,
    time,
    mask=None,
    reference=None,
    *,
    scale: str = "halfhourly",
    levels=RELIABILITY_LEVELS,
    min_members: int = MIN_MEMBERS,
    daily_sd: str = "independent",
    min_valid_fraction: float = 0.5,
    time_step_s: float | None = None,
) -> dict[str, Reliability]:
    """{model: `reliability_curve` at ``scale``} (Gaussians aggregated by `aggregate_gaussian`), plus
    ``"climatology"`` (coverage of the member-quantile intervals, as in `probabilistic_table`)
    when ``reference`` is given."""
    o = np.asarray(obs, dtype=float)
    t = _as_datetime64(time)
    m_all = np.ones(o.shape, bool) if mask is None else np.asarray(mask)
    agg_kw = dict(min_valid_fraction=min_valid_fraction, time_step_s=time_step_s)
    mus, sds = _as_models(mu), _as_models(sd)
    out = {}
    for model in mus:
        a = aggregate_gaussian(o, mus[model], sds[model], t, scale, m_all, daily_sd=daily_sd, **agg_kw)
        out[model] = reliability_curve(a.obs, a.mu, a.sd, levels=levels)
    if reference is not None:
        ref = _check_reference(reference, m_all, o.shape)
        clim, step = _climatology_at(o, t, ref, scale, min_members=min_members, **agg_kw)
        a = aggregate(np.where(m_all, o, np.nan), t, scale, **agg_kw)
        keys = _slot_keys(a.period, step)
        lv = np.asarray(levels, dtype=float)
        cov, n = [], 0
        for p in lv:
            lo, hi = clim.interval(keys, p)
            sc = interval_scores(a.values, lo, hi, 1.0 - p)
            cov.append(sc.picp)
            n = sc.n
        out[CLIMATOLOGY] = Reliability(lv, np.array(cov), n)
    return out
