"""A closed-form exchange coefficient with separate stable and unstable branches.

    K_h = a_s u^b_s |Ri|^c_s   (Ri > 0, stable)
    K_h = a_u u^b_u |Ri|^c_u   (Ri < 0, unstable)

K_h is the bulk exchange coefficient the LaD column reports, (z - d) / r_a [m2 s-1]; u the measured
wind speed [m s-1]; Ri the bulk Richardson number. The branches are never merged into one law of
|Ri| (which would make very stable and very unstable air exchange alike). Near neutral the power
laws diverge or vanish, so |Ri| is floored smoothly, |Ri|_eff = sqrt(Ri^2 + RI_FLOOR^2), and u
likewise, u_eff = sqrt(u^2 + WIND_FLOOR^2); the two branches are joined by a sigmoid in Ri of width
RI_BLEND (the branch is exact to 1e-4 beyond |Ri| = 0.01). :func:`law_features` gives the same
log u_eff, log |Ri|_eff that the fits of ``hybridlsm discover`` regress on, so a law fitted to a
model's K_h series and re-run here is the same function.

Three uses: the "truth" of the twin experiment (``data.virtual``), the law trained jointly with a
hybrid in phase 2 (``training.losses.discovery_loss``), and the discovered law run as the physics'
exchange closure (``LaDModel(exchange_law=...)``: r_a = (z - d) / K_h instead of the Louis or
Businger-Dyer stability scheme).
"""

from __future__ import annotations

from collections.abc import Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .smooth import smooth_max, smooth_min

BRANCHES = ("stable", "unstable")
RI_FLOOR = 0.01  # |Ri| below this is near neutral: the power laws are evaluated at about this value
WIND_FLOOR = 0.1  # m s-1
RI_BLEND = 1e-3  # width of the sigmoid joining the branches at Ri = 0
#: |Ri| below this is left out of fits: within 10 RI_BLEND of 0 the branches are blended
RI_FIT_MIN = 0.01
#: bounds of K_h when the law sets r_a [m2 s-1] (seed 000: K_h in [1e-3, 1e2]; lower here because the
#: bulk K_h of a 2 m grass tower at night is below 1e-3)
KH_MIN, KH_MAX = 1e-4, 1e2


def law_features(wind: ArrayLike, ri: ArrayLike, xp=jnp):
    """``(log u_eff, log |Ri|_eff, stable)``: the regressors of the law (``xp``: jnp or np)."""
    wind = xp.asarray(wind)
    ri = xp.asarray(ri)
    return 0.5 * xp.log(wind * wind + WIND_FLOOR**2), 0.5 * xp.log(ri * ri + RI_FLOOR**2), ri > 0


class ExchangeLaw(eqx.Module):
    """The branched power law; arrays of length 2 in :data:`BRANCHES` order (stable, unstable).
    ``a`` is stored as ``log_a`` so that gradient steps keep it positive."""

    log_a: Float[Array, "2"]
    b: Float[Array, "2"]
    c: Float[Array, "2"]

    def __init__(self, coefficients: Mapping[str, tuple[float, float, float]], dtype=None):
        """``coefficients``: ``{"stable": (a, b, c), "unstable": (a, b, c)}``."""
        missing = [b for b in BRANCHES if b not in coefficients]
        if missing or set(coefficients) - set(BRANCHES):
            raise ValueError(f"ExchangeLaw: give exactly the branches {BRANCHES}, got {sorted(coefficients)}")
        rows = np.asarray([coefficients[b] for b in BRANCHES], dtype=float)
        if rows.shape != (2, 3) or not np.all(np.isfinite(rows)) or np.any(rows[:, 0] <= 0):
            raise ValueError(f"ExchangeLaw: each branch is (a > 0, b, c), finite; got {dict(coefficients)}")
        dtype = jnp.zeros(0).dtype if dtype is None else dtype
        self.log_a = jnp.asarray(np.log(rows[:, 0]), dtype)
        self.b = jnp.asarray(rows[:, 1], dtype)
        self.c = jnp.asarray(rows[:, 2], dtype)

    @classmethod
    def neutral(cls, dtype=None) -> ExchangeLaw:
        """The starting law of a co-trained law: K_h = 0.02 u in both branches (about the neutral
        bulk K_h of a 3 m grass tower; no Ri dependence assumed)."""
        return cls({b: (0.02, 1.0, 0.0) for b in BRANCHES}, dtype)

    def coefficients(self) -> dict[str, dict[str, float]]:
        """``{branch: {"a", "b", "c"}}`` as floats (what ``discover`` reports)."""
        a, b, c = np.exp(np.asarray(self.log_a)), np.asarray(self.b), np.asarray(self.c)
        return {name: {"a": float(a[i]), "b": float(b[i]), "c": float(c[i])} for i, name in enumerate(BRANCHES)}

    def log_kh(self, wind: Float[ArrayLike, "..."], ri: Float[ArrayLike, "..."]) -> Float[Array, "..."]:
        """log K_h, the branches blended at Ri = 0."""
        log_u, log_ri, _ = law_features(wind, ri)
        branch = self.log_a[:, None] + self.b[:, None] * log_u.reshape(-1) + self.c[:, None] * log_ri.reshape(-1)
        w = jax.nn.sigmoid(jnp.asarray(ri).reshape(-1) / RI_BLEND)
        return (w * branch[0] + (1.0 - w) * branch[1]).reshape(jnp.shape(log_u))

    def __call__(self, wind: Float[ArrayLike, "..."], ri: Float[ArrayLike, "..."]) -> Float[Array, "..."]:
        """K_h [m2 s-1], bounded smoothly to [KH_MIN, KH_MAX] (so r_a stays finite and positive)."""
        log_kh = self.log_kh(wind, ri)
        lo, hi = np.log(KH_MIN), np.log(KH_MAX)
        return jnp.exp(smooth_min(smooth_max(log_kh, lo, 0.1), hi, 0.1))


class ClassExchangeLaw(eqx.Module):
    """One :class:`ExchangeLaw` per land-cover class, each cell following its class's law: the
    truth of a virtual region (``data.virtual_region``), whose classes exchange differently.
    ``cover``: (N,) class index of every cell into ``laws``."""

    laws: tuple[ExchangeLaw, ...]
    cover: Array

    def __call__(self, wind: Float[ArrayLike, " N"], ri: Float[ArrayLike, " N"]) -> Float[Array, " N"]:
        kh = jnp.stack([law(wind, ri) for law in self.laws], axis=-1)
        return jnp.take_along_axis(kh, self.cover[..., None], axis=-1)[..., 0]


class LawFitError(ValueError):
    """Too few usable steps in a branch for a fit (the message says which and how many)."""


def fit_mask(kh, wind, ri) -> np.ndarray:
    """The steps a fit uses: a finite, positive K_h, a finite wind and |Ri| > RI_FIT_MIN."""
    kh, wind, ri = (np.asarray(x, float).ravel() for x in (kh, wind, ri))
    if not (kh.shape == wind.shape == ri.shape):
        raise ValueError(f"K_h, wind and Ri differ in length: {kh.size}, {wind.size}, {ri.size}")
    return np.isfinite(kh) & (kh > 0) & np.isfinite(wind) & (wind >= 0) & np.isfinite(ri) & (np.abs(ri) > RI_FIT_MIN)


def least_squares(y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients and their standard errors of y = x beta (ordinary least squares)."""
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ beta
    cov = np.linalg.pinv(x.T @ x) * float(resid @ resid) / max(len(y) - x.shape[1], 1)
    return beta, np.sqrt(np.clip(np.diag(cov), 0.0, None))


def fit_branches(kh, wind, ri, min_points: int = 30) -> dict[str, dict[str, float]]:
    """Each branch of the law by ordinary least squares of log K_h on (1, log u_eff, log |Ri|_eff)
    over the steps with a finite, positive K_h and |Ri| > RI_FIT_MIN: ``{branch: {a, b, c, b_se,
    c_se, n}}`` (standard errors of b and c). NumPy; ``ExchangeLaw(law_from_fit(...))`` runs it."""
    kh, wind, ri = (np.asarray(x, float).ravel() for x in (kh, wind, ri))
    ok = fit_mask(kh, wind, ri)
    log_u, log_ri, stable = law_features(wind[ok], ri[ok], xp=np)
    y = np.log(kh[ok])
    out = {}
    for name, where in zip(BRANCHES, (stable, ~stable)):
        if where.sum() < min_points:
            raise LawFitError(f"the {name} branch has {int(where.sum())} steps with |Ri| > {RI_FIT_MIN} and a "
                              f"positive K_h; a fit needs at least {min_points}")  # fmt: skip
        x = np.column_stack([np.ones(where.sum()), log_u[where], log_ri[where]])
        beta, se = least_squares(y[where], x)
        out[name] = {"a": float(np.exp(beta[0])), "b": float(beta[1]), "c": float(beta[2]),
                     "b_se": float(se[1]), "c_se": float(se[2]), "n": int(where.sum())}  # fmt: skip
    return out


def law_from_fit(fit: Mapping[str, Mapping[str, float]]) -> dict[str, tuple[float, float, float]]:
    """The ``(a, b, c)`` per branch of a :func:`fit_branches` result (``ExchangeLaw``'s argument)."""
    return {b: (fit[b]["a"], fit[b]["b"], fit[b]["c"]) for b in BRANCHES}
