"""Discovery: closed forms fitted to a hybrid's learned exchange coefficient (seed 000 §4.3, Table 5).

Given a learned bulk K_h series with the wind u and bulk Richardson number Ri at the same steps:

- ``power_law``: K_h = a u^b |Ri|^c with **separate stable and unstable branches** (6 coefficients;
  ordinary least squares of log K_h on log u_eff and log |Ri|_eff, the regressors of
  :func:`hybridlsm.physics.exchange.law_features`, so the fitted law runs unchanged as the physics'
  ``exchange_law``);
- ``zhang_abs_ri``: a Zhang-type single power law in |Ri| for both signs (3 coefficients; the form
  of seed 000's Table 5, which cannot tell stable from unstable air);
- ``businger_dyer``, ``louis``: the physics' stability schemes for the site's roughness and heights
  (:func:`hybridlsm.physics.aerodynamic_resistance`, K_h = (z - d) / r_a) with one fitted scale
  factor each.

Every form is scored on the same steps (|Ri| > ``RI_FIT_MIN``, where the branch is unambiguous):
R² and RMSE of K_h [m2 s-1] (Table 5's columns), and AIC = n ln(RSS/n) + 2k on the log residuals
(what the fits minimise; k coefficients), with n. The second method is a sparse regression
(scikit-learn's cross-validated Lasso) per branch over a small library of candidate terms in log u,
log |Ri|, u and |Ri|: the terms it keeps say whether the data ask for more than a power law.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from ..physics import aerodynamic_resistance, default_params
from ..physics.exchange import (BRANCHES, RI_FIT_MIN, ExchangeLaw, LawFitError, fit_branches, fit_mask,
                                law_features, law_from_fit, least_squares)
from . import metrics
FORMS = ("power_law", "zhang_abs_ri", "businger_dyer", "louis")
#: the sparse regression's candidate terms (per branch; log_u and log_ri are law_features')
LIBRARY = ("log_u", "log_ri", "u", "abs_ri", "log_u^2", "log_ri^2", "log_u*log_ri")


class DiscoveryError(ValueError):
    """Too little or unusable data for a fit; the message says what was missing."""


def _usable(kh, wind, ri) -> np.ndarray:
    """The steps a fit uses (``physics.exchange.fit_mask``)."""
    try:
        return fit_mask(kh, wind, ri)
    except ValueError as err:
        raise DiscoveryError(str(err)) from None


def _clean(kh, wind, ri) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ok = _usable(kh, wind, ri)
    return tuple(np.asarray(x, float).ravel()[ok] for x in (kh, wind, ri))


def _scores(kh: np.ndarray, log_pred: np.ndarray, k: int) -> dict:
    """R² (1 − SSE/SST, i.e. the NSE of the form against the learned K_h) and RMSE of K_h, R² of log
    K_h, and AIC on the log residuals with ``k`` coefficients."""
    n = kh.size
    log_resid = np.log(kh) - log_pred
    rss_log = float(log_resid @ log_resid)
    return {"n": int(n), "k": k, "r2": metrics.nse(np.exp(log_pred), kh), "rmse": metrics.rmse(np.exp(log_pred), kh),
            "r2_log": metrics.nse(log_pred, np.log(kh)), "aic": n * np.log(max(rss_log, 1e-300) / n) + 2 * k}  # fmt: skip


def fit_power_law(kh, wind, ri, min_points: int = 30) -> dict:
    """The branched power law by OLS in log space (``physics.exchange.fit_branches``): ``{"stable":
    {a, b, c, b_se, c_se, n}, "unstable": {...}, "scores": {n, k, r2, rmse, r2_log, aic}}``."""
    try:
        out: dict = fit_branches(kh, wind, ri, min_points)
    except LawFitError as err:
        raise DiscoveryError(str(err)) from None
    kh, wind, ri = _clean(kh, wind, ri)
    out["scores"] = _scores(kh, np.asarray(ExchangeLaw(law_from_fit(out)).log_kh(wind, ri)), 6)
    return out


def fit_abs_ri_law(kh, wind, ri) -> dict:
    """One power law K_h = a u^b |Ri|^c for both signs of Ri (Zhang-type)."""
    kh, wind, ri = _clean(kh, wind, ri)
    log_u, log_ri, _ = law_features(wind, ri, xp=np)
    x = np.column_stack([np.ones(kh.size), log_u, log_ri])
    beta, _ = least_squares(np.log(kh), x)
    return {"a": float(np.exp(beta[0])), "b": float(beta[1]), "c": float(beta[2]), "scores": _scores(kh, x @ beta, 3)}


def scheme_kh(wind, ri, scheme: str, igbp: str, canopy_height: float, measurement_height: float) -> np.ndarray:
    """K_h = (z - d) / r_a of a stability scheme with the LaD default roughness and heights of a site."""
    p = {k: float(np.asarray(v)[0]) for k, v in
         default_params([igbp], canopy_height=canopy_height, measurement_height=measurement_height).items()}
    zd = max(p["reference_height"] - p["displacement_fraction"] * p["canopy_height"], 2.0 * p["z0m"])
    z0h = p["z0m"] * np.exp(-p["kB_inv"])
    u = np.sqrt(np.asarray(wind, float) ** 2 + p["gustiness"] ** 2)
    return zd / np.asarray(aerodynamic_resistance(np.asarray(ri, float), u, zd, p["z0m"], z0h, scheme))


GEOMETRY = ("igbp", "canopy_height", "measurement_height")


def fit_scheme(kh, wind, ri, scheme: str, site: Mapping[str, object]) -> dict:
    """A stability scheme with one fitted factor alpha (K_h = alpha K_h,scheme), in log space.
    ``site``: the :data:`GEOMETRY` of the steps, scalars or one value per step (pooled sites, each
    step with its own site's roughness and heights)."""
    ok = _usable(kh, wind, ri)
    geometry = pd.DataFrame({k: np.broadcast_to(np.asarray(site[k], object), ok.shape) for k in GEOMETRY})[ok]
    kh, wind, ri = _clean(kh, wind, ri)
    ref = np.empty(kh.size)
    for (igbp, canopy, height), rows in geometry.groupby(list(GEOMETRY), dropna=False).indices.items():
        ref[rows] = np.log(scheme_kh(wind[rows], ri[rows], scheme, str(igbp), float(canopy), float(height)))
    log_alpha = float(np.mean(np.log(kh) - ref))
    return {"alpha": float(np.exp(log_alpha)), "scores": _scores(kh, ref + log_alpha, 1)}


def library_terms(wind, ri) -> np.ndarray:
    """(n, len(LIBRARY)) candidate terms of the sparse regression."""
    log_u, log_ri, _ = law_features(wind, ri, xp=np)
    u, abs_ri = np.asarray(wind, float), np.abs(np.asarray(ri, float))
    return np.column_stack([log_u, log_ri, u, abs_ri, log_u**2, log_ri**2, log_u * log_ri])


def sparse_search(kh, wind, ri, seed: int = 0, min_points: int = 30) -> dict:
    """Per branch: cross-validated Lasso of log K_h on the standardised :data:`LIBRARY` terms;
    the kept terms with their coefficients in the original units, and the CV R² (log space)."""
    from sklearn.linear_model import LassoCV
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    kh, wind, ri = _clean(kh, wind, ri)
    x_all = library_terms(wind, ri)
    out = {}
    for name, where in zip(BRANCHES, (ri > 0, ri < 0)):
        if where.sum() < min_points:
            raise DiscoveryError(f"sparse search: the {name} branch has only {int(where.sum())} usable steps")
        x, y = x_all[where], np.log(kh[where])
        model = make_pipeline(StandardScaler(), LassoCV(cv=5, random_state=seed, max_iter=20000))
        model.fit(x, y)
        scaler, lasso = model[0], model[1]
        coef = lasso.coef_ / scaler.scale_
        # a term is kept when it moves log K_h by more than 2 % of its spread (Lasso leaves tiny
        # coefficients on terms correlated with the true ones)
        kept = {t: float(c) for t, c, s in zip(LIBRARY, coef, scaler.scale_) if abs(c) * s > 0.02 * np.std(y)}
        r2 = cross_val_score(make_pipeline(StandardScaler(), LassoCV(cv=5, random_state=seed, max_iter=20000)),
                             x, y, cv=5, scoring="r2")  # fmt: skip
        out[name] = {"terms": kept, "intercept": float(lasso.intercept_ - np.sum(lasso.coef_ * scaler.mean_ / scaler.scale_)),
                     "alpha": float(lasso.alpha_), "cv_r2_log": float(np.mean(r2)), "n": int(where.sum())}  # fmt: skip
    return out


def compare_forms(kh, wind, ri, site: Mapping[str, object]) -> tuple[pd.DataFrame, dict]:
    """Every form of :data:`FORMS` fitted and scored on the same steps: a Table-5-like frame (form,
    expression, n, k, R², RMSE, AIC, ΔAIC) sorted by AIC, and the fits by form."""
    fits = {"power_law": fit_power_law(kh, wind, ri), "zhang_abs_ri": fit_abs_ri_law(kh, wind, ri)}
    for scheme in ("businger_dyer", "louis"):
        fits[scheme] = fit_scheme(kh, wind, ri, scheme, site)
    rows = []
    for form, fit in fits.items():
        rows.append({"form": form, "expression": expression(form, fit), **fit["scores"]})
    table = pd.DataFrame(rows).sort_values("aic", ignore_index=True)
    table["delta_aic"] = table["aic"] - table["aic"].min()
    return table, fits


def expression(form: str, fit: dict) -> str:
    """The fitted form as text."""
    if form == "power_law":
        return "; ".join(f"{b}: K_h = {fit[b]['a']:.3g} u^{fit[b]['b']:.3f} |Ri|^{fit[b]['c']:.3f}" for b in BRANCHES)
    if form == "zhang_abs_ri":
        return f"K_h = {fit['a']:.3g} u^{fit['b']:.3f} |Ri|^{fit['c']:.3f} (both signs)"
    return f"K_h = {fit['alpha']:.3g} x (z - d) / r_a,{form}"


def law_coefficients(form: str, fit: dict) -> dict[str, tuple[float, float, float]] | None:
    """The (a, b, c) per branch of a fitted power-law form (an ``ExchangeLaw``), None for the schemes."""
    if form == "power_law":
        return law_from_fit(fit)
    if form == "zhang_abs_ri":
        return {b: (fit["a"], fit["b"], fit["c"]) for b in BRANCHES}
    return None


def plot_fit(path, kh, wind, ri, fits: dict, title: str, truth: Mapping[str, tuple] | None = None) -> None:
    """Learned K_h against Ri (symlog) with each form at the median wind of its branch, and the
    learned against the fitted branched law (1:1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kh, wind, ri = _clean(kh, wind, ri)
    rng = np.random.default_rng(0)
    pick = rng.choice(kh.size, size=min(kh.size, 4000), replace=False)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax1.scatter(ri[pick], kh[pick], s=3, alpha=0.25, color="0.4", label="learned K_h")
    curves = {"power_law": ("C0", "branched power law"), "zhang_abs_ri": ("C1", "power law in |Ri|")}
    for sign, grid in ((1, np.geomspace(RI_FIT_MIN, max(ri.max(), 0.02), 100)), (-1, -np.geomspace(RI_FIT_MIN, max(-ri.min(), 0.02), 100))):
        side = ri > 0 if sign > 0 else ri < 0
        u_med = float(np.median(wind[side])) if side.any() else float(np.median(wind))
        for form, (color, label) in curves.items():
            law = ExchangeLaw(law_coefficients(form, fits[form]))
            ax1.plot(grid, np.exp(np.asarray(law.log_kh(np.full_like(grid, u_med), grid))), color=color,
                     label=label if sign > 0 else None)  # fmt: skip
        if truth is not None:
            law = ExchangeLaw(truth)
            ax1.plot(grid, np.exp(np.asarray(law.log_kh(np.full_like(grid, u_med), grid))), "k--",
                     label="true law" if sign > 0 else None)  # fmt: skip
    ax1.set_xscale("symlog", linthresh=RI_FIT_MIN)
    ax1.set_yscale("log")
    ax1.set_xlabel("bulk Richardson number Ri (unstable < 0 < stable)")
    ax1.set_ylabel("K_h [m² s⁻¹]")
    ax1.legend(fontsize=8)
    ax1.set_title("curves at the median wind of each branch", fontsize=9)
    law = ExchangeLaw(law_coefficients("power_law", fits["power_law"]))
    fitted = np.exp(np.asarray(law.log_kh(wind, ri)))
    ax2.scatter(fitted[pick], kh[pick], s=3, alpha=0.25, c=np.where(ri[pick] > 0, "C3", "C2"))
    lims = [min(kh.min(), fitted.min()), max(kh.max(), fitted.max())]
    ax2.plot(lims, lims, "k-", lw=0.8)
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("branched power law K_h [m² s⁻¹]")
    ax2.set_ylabel("learned K_h [m² s⁻¹]")
    ax2.set_title(f"R² = {fits['power_law']['scores']['r2']:.3f} (red stable, green unstable)", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
