"""Skill metrics for simulated vs observed fluxes (NumPy), following docs/physics-reference §6.

Conventions
-----------
- Deterministic scores take ``(sim, obs, mask=None)``. A pair counts only where **both** ``sim`` and
  ``obs`` are finite and, when given, ``mask`` is True (arrays are broadcast against each other and
  flattened). ``n`` is the number of such pairs.
- Probabilistic scores take the observation first, like properscoring: ``crps_gaussian(obs, mu,
  sigma)``, ``crps_ensemble(obs, ensemble)``, ``interval_scores(obs, lower, upper, alpha)``.
- Undefined values are NaN, never an exception and never ``-inf``:
  * zero valid pairs -> every score is NaN (and ``n = 0``);
  * constant observations (σ_o = 0) -> NSE, NME, r, R², KGE and KGE′ are NaN (the benchmark
    "observed mean" has zero error, so the skill ratio is undefined);
  * constant simulation (σ_s = 0) -> r, R² and KGE are NaN (r is undefined);
  * Σo = 0 -> percent bias is NaN; μ_o = 0 -> KGE is NaN (β undefined); μ_s = 0 or μ_o = 0 ->
    KGE′ is NaN (γ undefined); σ_o = 0 -> KGE″ is NaN.
- Near-zero observed mean (`mean_near_zero`: μ_o ≤ 0.1·σ_o, e.g. H at night or in winter, G):
  percent bias and β = μ_s/μ_o are still defined but meaningless (they divide by ~0 or flip sign).
  The functions return them as defined; `skill_table` withholds percent bias there (NaN with a
  note, the absolute bias is always a column) and reports KGE″ (`kge_2021`, bias term
  (μ_s − μ_o)/σ_o) instead of KGE 2009.
- SDs are population SDs (ddof = 0); the ratios α, γ do not depend on that choice.

Aggregation to daily and weekly means (`aggregate`) and the per-site skill table (`skill_table`) are
at the end of the module.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import special, stats

from ..data.schema import DataWarning

__all__ = [
    "valid_pairs",
    "count_valid",
    "point_scores",
    "mse",
    "rmse",
    "mae",
    "bias",
    "mbe",
    "percent_bias",
    "nse",
    "KGEComponents",
    "KGE2012Components",
    "kge",
    "kge_components",
    "kge_2012",
    "kge_2012_components",
    "KGE2021Components",
    "kge_2021",
    "kge_2021_components",
    "NEAR_ZERO_MEAN",
    "mean_near_zero",
    "pearson_r",
    "r_squared",
    "nme",
    "crps_gaussian",
    "crps_ensemble",
    "gaussian_interval",
    "IntervalScores",
    "interval_scores",
    "picp",
    "mean_interval_width",
    "interval_score",
    "EnergyResidual",
    "energy_balance_residual",
    "closure_ratio",
    "SCALES",
    "Aggregated",
    "aggregate",
    "joint_mask",
    "SKILL_COLUMNS",
    "skill_table",
]

_NAN = float("nan")


# --------------------------------------------------------------------------------------------
# pairing


def joint_mask(*arrays: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Boolean array (broadcast shape) that is True where every array is finite and ``mask`` is True."""
    arrs = [np.asarray(a, dtype=float) for a in arrays]
    if mask is not None:
        arrs.append(np.asarray(mask))
    b = np.broadcast_arrays(*arrs)
    ok = np.ones(b[0].shape, dtype=bool)
    for a in b[: len(arrays)]:
        ok &= np.isfinite(a)
    if mask is not None:
        m = b[-1]
        if m.dtype != bool:
            raise TypeError(f"mask must be boolean, got dtype {m.dtype}")
        ok &= m
    return ok


def valid_pairs(
    sim: np.ndarray, obs: np.ndarray, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The 1-D arrays ``(s, o)`` of pairs where both are finite and ``mask`` (if given) is True."""
    s, o = np.broadcast_arrays(np.asarray(sim, dtype=float), np.asarray(obs, dtype=float))
    ok = joint_mask(s, o, mask=mask)
    return s[ok], o[ok]


def count_valid(sim: np.ndarray, obs: np.ndarray, mask: np.ndarray | None = None) -> int:
    """Number of valid pairs ``n``."""
    return int(valid_pairs(sim, obs, mask)[0].size)


# --------------------------------------------------------------------------------------------
# deterministic scores


def mse(sim, obs, mask=None) -> float:
    """Mean squared error  mean (s − o)²."""
    s, o = valid_pairs(sim, obs, mask)
    return float(np.mean((s - o) ** 2)) if s.size else _NAN


def point_scores(sim, obs, mask=None, min_n: int = 2) -> dict[str, float]:
    """``{mse, mae, r, bias, n}`` over the valid pairs (NaN scores with fewer than ``min_n``; r NaN
    for a constant series)."""
    s, o = valid_pairs(sim, obs, mask)
    if s.size < min_n:
        return {"mse": _NAN, "mae": _NAN, "r": _NAN, "bias": _NAN, "n": int(s.size)}
    return {"mse": float(np.mean((s - o) ** 2)), "mae": float(np.mean(np.abs(s - o))), "r": _pearson(s, o),
            "bias": float(np.mean(s - o)), "n": int(s.size)}


def rmse(sim, obs, mask=None) -> float:
    """Root-mean-square error  √(mean (s − o)²)."""
    return math.sqrt(mse(sim, obs, mask))


def mae(sim, obs, mask=None) -> float:
    """Mean absolute error  mean |s − o|."""
    s, o = valid_pairs(sim, obs, mask)
    return float(np.mean(np.abs(s - o))) if s.size else _NAN


def bias(sim, obs, mask=None) -> float:
    """Mean bias error (MBE)  mean (s − o), in the units of the data."""
    s, o = valid_pairs(sim, obs, mask)
    return float(np.mean(s - o)) if s.size else _NAN


mbe = bias


def percent_bias(sim, obs, mask=None) -> float:
    """Percent bias (hydroGOF PBIAS)  100·Σ(s − o)/Σo; NaN when Σo = 0."""
    s, o = valid_pairs(sim, obs, mask)
    if not s.size:
        return _NAN
    denom = np.sum(o)
    return float(100.0 * np.sum(s - o) / denom) if denom != 0 else _NAN


def nse(sim, obs, mask=None) -> float:
    """Nash–Sutcliffe efficiency  1 − Σ(s − o)²/Σ(o − ō)²; NaN for constant observations."""
    s, o = valid_pairs(sim, obs, mask)
    if not s.size:
        return _NAN
    denom = np.sum((o - o.mean()) ** 2)
    if denom == 0:
        return _NAN
    return float(1.0 - np.sum((s - o) ** 2) / denom)


def _pearson(s: np.ndarray, o: np.ndarray) -> float:
    if s.size < 2:
        return _NAN
    ds, do = s - s.mean(), o - o.mean()
    # each scaled by its largest deviation, so that the sums of squares neither overflow (a diverging
    # model's 1e76 gave r = 0) nor underflow (1e-170 gave NaN, as if constant)
    ms, mo = float(np.max(np.abs(ds))), float(np.max(np.abs(do)))
    if ms == 0 or mo == 0:
        return _NAN
    ds, do = ds / ms, do / mo
    den = math.sqrt(float(np.sum(ds * ds)) * float(np.sum(do * do)))
    return float(np.clip(np.sum(ds * do) / den, -1.0, 1.0))


def pearson_r(sim, obs, mask=None) -> float:
    """Pearson correlation  cov(s, o)/(σ_s σ_o); NaN if either series is constant or n < 2."""
    return _pearson(*valid_pairs(sim, obs, mask))


def r_squared(sim, obs, mask=None) -> float:
    """Coefficient of determination as the squared Pearson correlation r² (hydroGOF ``R2``).

    (The "1 − SSE/SST" form is `nse`.)
    """
    return pearson_r(sim, obs, mask) ** 2


def nme(sim, obs, mask=None) -> float:
    """Normalised mean error (Best et al. 2015)  Σ|s − o|/Σ|o − ō|; NaN for constant observations."""
    s, o = valid_pairs(sim, obs, mask)
    if not s.size:
        return _NAN
    denom = np.sum(np.abs(o - o.mean()))
    return float(np.sum(np.abs(s - o)) / denom) if denom != 0 else _NAN


class KGEComponents(NamedTuple):
    """KGE (Gupta et al. 2009) and its components r, α = σ_s/σ_o, β = μ_s/μ_o; n valid pairs."""

    kge: float
    r: float
    alpha: float
    beta: float
    n: int


class KGE2012Components(NamedTuple):
    """KGE′ (Kling et al. 2012) and its components r, γ = (σ_s/μ_s)/(σ_o/μ_o), β = μ_s/μ_o."""

    kge: float
    r: float
    gamma: float
    beta: float
    n: int


class KGE2021Components(NamedTuple):
    """KGE″ (Tang et al. 2021) and its components r, α = σ_s/σ_o, β″ = (μ_s − μ_o)/σ_o."""

    kge: float
    r: float
    alpha: float
    beta: float  # β″, ideal 0 (not 1)
    n: int


def _ratio(a: float, b: float) -> float:
    return a / b if b != 0 else _NAN


def _kge(*deviations: float) -> float:
    """1 − Euclidean norm of the deviations; hypot, because squaring an absurd β (1e200) overflows
    a Python float."""
    if any(math.isnan(d) for d in deviations):
        return _NAN
    return 1.0 - math.hypot(*deviations)


def kge_components(sim, obs, mask=None) -> KGEComponents:
    """KGE 2009 = 1 − √[(r − 1)² + (α − 1)² + (β − 1)²] with its components."""
    s, o = valid_pairs(sim, obs, mask)
    n = int(s.size)
    if n == 0:
        return KGEComponents(_NAN, _NAN, _NAN, _NAN, 0)
    r = _pearson(s, o)
    alpha = _ratio(float(s.std()), float(o.std()))
    beta = _ratio(float(s.mean()), float(o.mean()))
    return KGEComponents(_kge(r - 1.0, alpha - 1.0, beta - 1.0), r, alpha, beta, n)


def kge(sim, obs, mask=None) -> float:
    """Kling–Gupta efficiency (Gupta et al. 2009); see `kge_components`."""
    return kge_components(sim, obs, mask).kge


def kge_2012_components(sim, obs, mask=None) -> KGE2012Components:
    """KGE′ 2012 = 1 − √[(r − 1)² + (γ − 1)² + (β − 1)²] with its components."""
    s, o = valid_pairs(sim, obs, mask)
    n = int(s.size)
    if n == 0:
        return KGE2012Components(_NAN, _NAN, _NAN, _NAN, 0)
    r = _pearson(s, o)
    mu_s, mu_o = float(s.mean()), float(o.mean())
    beta = _ratio(mu_s, mu_o)
    cv_s = _ratio(float(s.std()), mu_s)
    cv_o = _ratio(float(o.std()), mu_o)
    gamma = _ratio(cv_s, cv_o)
    return KGE2012Components(_kge(r - 1.0, gamma - 1.0, beta - 1.0), r, gamma, beta, n)


def kge_2012(sim, obs, mask=None) -> float:
    """Modified Kling–Gupta efficiency KGE′ (Kling et al. 2012); see `kge_2012_components`."""
    return kge_2012_components(sim, obs, mask).kge


def kge_2021_components(sim, obs, mask=None) -> KGE2021Components:
    """KGE″ 2021 = 1 − √[(r − 1)² + (α − 1)² + β″²], β″ = (μ_s − μ_o)/σ_o (Tang et al. 2021, J.
    Climate; hydroGOF ``KGE(method = "2021")``): the mean error in units of the observed SD, so it
    stays finite for series whose mean is near zero (H, G, temperatures in °C)."""
    s, o = valid_pairs(sim, obs, mask)
    n = int(s.size)
    if n == 0:
        return KGE2021Components(_NAN, _NAN, _NAN, _NAN, 0)
    r = _pearson(s, o)
    sd_o = float(o.std())
    alpha = _ratio(float(s.std()), sd_o)
    beta = _ratio(float(s.mean() - o.mean()), sd_o)
    return KGE2021Components(_kge(r - 1.0, alpha - 1.0, beta), r, alpha, beta, n)


def kge_2021(sim, obs, mask=None) -> float:
    """KGE″ (Tang et al. 2021); see `kge_2021_components`."""
    return kge_2021_components(sim, obs, mask).kge


NEAR_ZERO_MEAN = 0.1  # κ in μ_o ≤ κ·σ_o


def mean_near_zero(obs, mask=None) -> bool:
    """True when the observed mean is too close to zero for ratios to it: μ_o ≤ κ·σ_o, κ = 0.1.

    That covers μ_o ≤ 0 (the sign of percent bias flips; β = μ_s/μ_o is negative) and 0 < μ_o ≤
    σ_o/10, where |PBIAS|/100 = |β″|·σ_o/μ_o is at least 10× the bias in units of σ_o (β″ of
    `kge_2021`). Uses the finite ``obs`` where ``mask`` (if given) is True; False when there are none.
    """
    o = np.asarray(obs, dtype=float)
    o = o[joint_mask(o, mask=mask)]
    return bool(o.size) and float(o.mean()) <= NEAR_ZERO_MEAN * float(o.std())


# --------------------------------------------------------------------------------------------
# probabilistic scores


def crps_gaussian(obs, mu, sigma) -> np.ndarray:
    """Pointwise CRPS of the Gaussian predictive N(μ, σ²) at observation y (Gneiting et al. 2005).

    CRPS = σ·[z(2Φ(z) − 1) + 2φ(z) − 1/√π], z = (y − μ)/σ; for σ = 0 it is |y − μ|.
    Returns an array of the broadcast shape, NaN where any input is not finite; average it with
    ``np.nanmean`` (or index with a mask). Raises ValueError for σ < 0.
    """
    y, m, sg = np.broadcast_arrays(
        np.asarray(obs, dtype=float), np.asarray(mu, dtype=float), np.asarray(sigma, dtype=float)
    )
    if np.any(sg < 0):
        raise ValueError("crps_gaussian: sigma must be >= 0")
    out = np.full(y.shape, np.nan)
    ok = np.isfinite(y) & np.isfinite(m) & np.isfinite(sg)
    pos = ok & (sg > 0)
    z = (y[pos] - m[pos]) / sg[pos]
    out[pos] = sg[pos] * (
        z * (2.0 * special.ndtr(z) - 1.0) + 2.0 * stats.norm.pdf(z) - 1.0 / math.sqrt(math.pi)
    )
    zero = ok & (sg == 0)
    out[zero] = np.abs(y[zero] - m[zero])
    return out if out.ndim else out[()]


def crps_ensemble(obs, ensemble, *, fair: bool = False, axis: int = -1) -> np.ndarray:
    """Pointwise CRPS of an ensemble x_1..x_M at observation y (energy form, Gneiting & Raftery 2007).

    CRPS = (1/M)Σ|x_i − y| − (1/(2M²))ΣΣ|x_i − x_j|; ``fair=True`` uses 1/(2M(M − 1)) in the second
    term (Ferro 2014). The double sum is computed in O(M log M) from the sorted members:
    ΣΣ|x_i − x_j| = 2Σ_i (2i − M − 1) x_(i). ``axis`` is the member axis of ``ensemble``; ``obs``
    has the shape of ``ensemble`` without that axis. NaN where ``obs`` or any member is not finite.
    """
    x = np.moveaxis(np.asarray(ensemble, dtype=float), axis, -1)
    y = np.asarray(obs, dtype=float)
    m = x.shape[-1]
    if m == 0:
        raise ValueError("crps_ensemble: the ensemble has no members")
    if fair and m < 2:
        raise ValueError("crps_ensemble: the fair CRPS needs at least 2 members")
    y_b = np.broadcast_to(y, x.shape[:-1])
    term1 = np.mean(np.abs(x - y_b[..., None]), axis=-1)
    xs = np.sort(x, axis=-1)
    w = 2.0 * np.arange(1, m + 1) - m - 1.0
    pair_sum = 2.0 * np.sum(w * xs, axis=-1)  # = Σ_i Σ_j |x_i − x_j|
    denom = 2.0 * m * (m - 1) if fair else 2.0 * m * m
    out = term1 - pair_sum / denom
    bad = ~np.isfinite(y_b) | ~np.all(np.isfinite(x), axis=-1)
    out = np.where(bad, np.nan, out)
    return out if out.ndim else out[()]


def gaussian_interval(mu, sigma, level: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """Central interval μ ± z_{(1+level)/2}·σ of N(μ, σ²) (z = 1.645 for 90 %, 1.960 for 95 %)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"gaussian_interval: level must be in (0, 1), got {level}")
    z = stats.norm.ppf(0.5 + level / 2.0)
    mu, sigma = np.asarray(mu, dtype=float), np.asarray(sigma, dtype=float)
    return mu - z * sigma, mu + z * sigma


class IntervalScores(NamedTuple):
    """Prediction-interval scores over the n valid triples (obs, lower, upper)."""

    picp: float  # fraction of obs inside [L, U]; compare with the nominal level 1 − α
    mean_width: float  # mean (U − L)
    interval_score: float  # mean Winkler score IS_α
    n: int


def interval_scores(obs, lower, upper, alpha: float, mask=None) -> IntervalScores:
    """Coverage (PICP), mean width and mean interval (Winkler) score of the central (1 − α) interval.

    IS_α = (U − L) + (2/α)(L − o)·1[o < L] + (2/α)(o − U)·1[o > U]. A triple counts where all three
    are finite and ``mask`` (if given) is True. Raises ValueError if L > U anywhere valid.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"interval_scores: alpha must be in (0, 1), got {alpha}")
    o, lo, up = np.broadcast_arrays(
        np.asarray(obs, dtype=float), np.asarray(lower, dtype=float), np.asarray(upper, dtype=float)
    )
    ok = joint_mask(o, lo, up, mask=mask)
    o, lo, up = o[ok], lo[ok], up[ok]
    if np.any(lo > up):
        raise ValueError("interval_scores: lower bound above upper bound")
    n = int(o.size)
    if n == 0:
        return IntervalScores(_NAN, _NAN, _NAN, 0)
    width = up - lo
    score = width + (2.0 / alpha) * (lo - o) * (o < lo) + (2.0 / alpha) * (o - up) * (o > up)
    inside = (o >= lo) & (o <= up)
    return IntervalScores(float(inside.mean()), float(width.mean()), float(score.mean()), n)


def picp(obs, lower, upper, mask=None) -> float:
    """Prediction-interval coverage probability (1/N)Σ1[L ≤ o ≤ U]."""
    return interval_scores(obs, lower, upper, 0.5, mask).picp


def mean_interval_width(obs, lower, upper, mask=None) -> float:
    """Mean width U − L over the triples where obs, L and U are valid."""
    return interval_scores(obs, lower, upper, 0.5, mask).mean_width


def interval_score(obs, lower, upper, alpha: float, mask=None) -> float:
    """Mean interval (Winkler) score of the central (1 − α) interval; see `interval_scores`."""
    return interval_scores(obs, lower, upper, alpha, mask).interval_score


# --------------------------------------------------------------------------------------------
# energy balance


class EnergyResidual(NamedTuple):
    """Rn − G − H − LE over the n complete steps: its mean and its mean absolute value [W m-2]."""

    mean: float
    mean_abs: float
    n: int


def energy_balance_residual(rnet, qg, qh, qle, mask=None) -> EnergyResidual:
    """Energy-balance residual ε = Rn − G − H − LE [W m-2] over steps where all four are finite.

    For a model this is the part of the surface balance not carried by the four fluxes (storage,
    melt); for tower data it is the non-closure (§5 of the physics reference).
    """
    rn, g, h, le = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (rnet, qg, qh, qle)))
    ok = joint_mask(rn, g, h, le, mask=mask)
    if not ok.any():
        return EnergyResidual(_NAN, _NAN, 0)
    res = rn[ok] - g[ok] - h[ok] - le[ok]
    return EnergyResidual(float(res.mean()), float(np.abs(res).mean()), int(ok.sum()))


def closure_ratio(rnet, qg, qh, qle, mask=None) -> float:
    """Energy-balance ratio EBR = Σ(H + LE)/Σ(Rn − G) over complete steps (bigleaf convention).

    With model H, LE and observed Rn, G this is the "model-vs-obs" EBR of the physics reference §5.3.
    NaN when no complete step or Σ(Rn − G) = 0.
    """
    rn, g, h, le = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (rnet, qg, qh, qle)))
    ok = joint_mask(rn, g, h, le, mask=mask)
    if not ok.any():
        return _NAN
    avail = float(np.sum(rn[ok] - g[ok]))
    return float(np.sum(h[ok] + le[ok]) / avail) if avail != 0 else _NAN


# --------------------------------------------------------------------------------------------
# aggregation

SCALES = ("halfhourly", "daily", "weekly")
_PERIOD_DAYS = {"daily": 1, "weekly": 7}


class Aggregated(NamedTuple):
    """Period means: ``values`` (NaN for periods that fail the valid fraction), the period starts,
    and the number of valid periods."""

    values: np.ndarray
    period: np.ndarray  # datetime64[ns] start of each period
    n_valid: int


def _time_step_seconds(time: np.ndarray, time_step_s: float | None) -> float:
    if time_step_s is not None:
        return float(time_step_s)
    if time.size < 2:
        raise ValueError("aggregate: cannot infer the time step from fewer than 2 times; pass time_step_s")
    d = np.diff(time).astype("timedelta64[ns]").astype(np.int64) / 1e9
    step = float(np.median(d))
    if step <= 0:
        raise ValueError("aggregate: time must be increasing")
    return step


def _as_datetime64(time) -> np.ndarray:
    return np.asarray(pd.DatetimeIndex(np.asarray(time)).values, dtype="datetime64[ns]")


def aggregate(
    series,
    time,
    scale: str,
    *,
    min_valid_fraction: float = 0.5,
    time_step_s: float | None = None,
) -> Aggregated:
    """Mean of ``series`` over calendar periods of ``time`` (axis 0 of ``series`` is time).

    Scales: ``"halfhourly"`` = the native step (no aggregation; the name is the protocol's, the step
    is whatever the data has), ``"daily"`` = calendar days of ``time`` (local standard time, interval
    start), ``"weekly"`` = ISO weeks (Monday 00:00 to Sunday 24:00).

    A period's mean uses its finite values only, and the period counts (is not NaN) only when the
    number of finite values is at least ``min_valid_fraction`` × the number of steps a complete
    period has (period length / time step; the step is inferred as the median spacing of ``time``
    unless ``time_step_s`` is given). So periods cut by the start or end of the record, or by a
    split boundary, count only when enough of them is present. For a pairwise comparison mask both
    series to the same steps first (`skill_table` does). ``n_valid`` counts the valid periods (for
    ``halfhourly`` the finite values; for multi-dimensional series, periods × trailing elements).
    """
    x = np.asarray(series, dtype=float)
    t = _as_datetime64(time)
    if x.shape[:1] != t.shape:
        raise ValueError(f"aggregate: series has {x.shape[:1]} steps on axis 0 but time has {t.shape}")
    if not 0.0 <= min_valid_fraction <= 1.0:
        raise ValueError(f"aggregate: min_valid_fraction must be in [0, 1], got {min_valid_fraction}")
    if scale == "halfhourly":
        return Aggregated(x.copy(), t.copy(), int(np.isfinite(x).sum()))
    if scale not in _PERIOD_DAYS:
        raise ValueError(f"aggregate: unknown scale {scale!r}; allowed: {', '.join(SCALES)}")
    if t.size == 0:
        return Aggregated(np.empty((0,) + x.shape[1:]), t.copy(), 0)
    step = _time_step_seconds(t, time_step_s)
    days = t.astype("datetime64[D]").astype(np.int64)  # days since 1970-01-01 (a Thursday)
    if scale == "weekly":
        days = days - (days + 3) % 7  # back to Monday
    starts, codes = np.unique(days, return_inverse=True)
    codes = codes.reshape(-1)
    expected = _PERIOD_DAYS[scale] * 86400.0 / step
    finite = np.isfinite(x)
    sums = np.zeros((starts.size,) + x.shape[1:])
    counts = np.zeros((starts.size,) + x.shape[1:])
    np.add.at(sums, codes, np.where(finite, x, 0.0))
    np.add.at(counts, codes, finite.astype(float))
    ok = counts >= min_valid_fraction * expected - 1e-9
    ok &= counts > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(ok, sums / np.where(counts > 0, counts, 1.0), np.nan)
    period = starts.astype("datetime64[D]").astype("datetime64[ns]")
    return Aggregated(values, period, int(ok.sum()))


# --------------------------------------------------------------------------------------------
# skill table

SKILL_COLUMNS = (
    "site", "model", "flux", "scale", "split", "rmse", "nse", "kge", "kge_form", "bias", "bias_pct",
    "bias_pct_note", "r", "n", "suspect", "suspect_reason",
)  # fmt: skip


def _common_pairs(o: np.ndarray, sims: Mapping[str, np.ndarray], mask, where: str) -> np.ndarray:
    """The steps every model of ``sims`` is scored on (``skill_table``): obs finite, ``mask``, and
    each model that predicts any of those steps finite."""
    scored = joint_mask(o, mask=mask)
    finite = {}
    for model, sim in sims.items():
        s = np.asarray(sim, dtype=float)
        if s.shape != o.shape:
            raise ValueError(f"skill_table: model {model!r} has shape {s.shape}, obs has {o.shape}")
        finite[model] = np.isfinite(s)
    predicting = {m: f for m, f in finite.items() if (f & scored).any()}  # the others get empty rows
    common = np.all([scored, *predicting.values()], axis=0)
    for model, f in predicting.items():
        if not f[scored].all():
            warnings.warn(f"{where or 'skill table'}: {model} has no prediction at {int((scored & ~f).sum())} "
                          f"of the {int(scored.sum())} observed steps; every model is scored on the "
                          f"{int(common.sum())} steps all of them predict", DataWarning, stacklevel=4)
    return common


def skill_table(
    obs,
    sims: Mapping[str, np.ndarray],
    time,
    scales: Sequence[str] = SCALES,
    *,
    site: str = "",
    flux: str = "",
    split: str = "all",
    mask: np.ndarray | None = None,
    min_valid_fraction: float = 0.5,
    time_step_s: float | None = None,
    units: str = "W m-2",
) -> pd.DataFrame:
    """Skill of every model in ``sims`` against ``obs`` (1-D arrays on ``time``), per scale.

    Every model is scored on the same pairs: the steps where obs are finite, ``mask`` (e.g. "test
    split and QC ≤ 1") is True and every model that predicts anything there is finite (a model
    missing at steps the others predict would otherwise be ranked on easier steps; a DataWarning
    names it and how many steps it removes); both series are set to NaN elsewhere and then
    aggregated with `aggregate`, so daily and weekly means of obs and sim cover the same half-hours.
    A model without any prediction at those steps gets an empty row (n = 0). Columns
    (`SKILL_COLUMNS`): RMSE, NSE, KGE, mean bias [``units``], percent bias, Pearson r and the number
    of pairs (or valid periods) n; ``site``, ``flux`` and ``split`` are labels copied into every row.

    - Near-zero observed mean: when `mean_near_zero` holds for the observations ``mask`` admits
      (native step, all models alike, so a site's rows stay comparable), ``bias_pct`` is NaN with
      the reason in ``bias_pct_note`` and ``kge`` is KGE″ (`kge_2021`, ``kge_form = "2021"``);
      otherwise KGE 2009 (``kge_form = "2009"``).
    - Suspect rows (``suspect``, reason in ``suspect_reason``): |bias| larger than the range
      max − min of the model's scored observations (native step, so every scale uses the same
      yardstick), or a non-finite RMSE with n > 0 — a model that far off has a unit or sign error,
      not a skill. Rows without pairs (n = 0) are empty, not suspect.
    """
    o = np.asarray(obs, dtype=float)
    if o.ndim != 1:
        raise ValueError(f"skill_table: obs must be 1-D, got shape {o.shape}")
    near_zero = mean_near_zero(o, mask)
    note = ""
    if near_zero:
        o_ok = o[joint_mask(o, mask=mask)]
        note = (f"observed mean near zero: μo = {o_ok.mean():.3g} ≤ {NEAR_ZERO_MEAN:g}·σo = "
                f"{NEAR_ZERO_MEAN * o_ok.std():.3g} {units}")
    rows = []
    common = _common_pairs(o, sims, mask, f"{site} {flux}".strip())
    for model, sim in sims.items():
        s = np.asarray(sim, dtype=float)
        ok = common & np.isfinite(s)
        s_m = np.where(ok, s, np.nan)
        o_m = np.where(ok, o, np.nan)
        obs_range = float(np.ptp(o[ok])) if ok.any() else _NAN
        for scale in scales:
            kw = dict(min_valid_fraction=min_valid_fraction, time_step_s=time_step_s)
            a_s = aggregate(s_m, time, scale, **kw).values
            a_o = aggregate(o_m, time, scale, **kw).values
            n = count_valid(a_s, a_o)
            with np.errstate(over="ignore", invalid="ignore"):  # absurd models overflow; flagged below
                e, b = rmse(a_s, a_o), bias(a_s, a_o)
                scores = dict(
                    rmse=e, nse=nse(a_s, a_o),
                    kge=kge_2021(a_s, a_o) if near_zero else kge(a_s, a_o), kge_form="2021" if near_zero else "2009",
                    bias=b, bias_pct=_NAN if near_zero else percent_bias(a_s, a_o), bias_pct_note=note,
                    r=pearson_r(a_s, a_o), n=n,
                )  # fmt: skip
            reasons = []
            if n > 0 and not math.isfinite(e):
                reasons.append(f"RMSE {e}")
            if abs(b) > obs_range:
                reasons.append(f"|bias| {abs(b):.3g} {units} exceeds the observed range {obs_range:.3g} {units}")
            if reasons:
                reasons[-1] += " — check the forcing units"
            rows.append(dict(site=site, model=model, flux=flux, scale=scale, split=split) | scores
                        | dict(suspect=bool(reasons), suspect_reason="; ".join(reasons)))
    return pd.DataFrame(rows, columns=list(SKILL_COLUMNS))
