"""Loss terms for supervised and physics-enhanced (two-phase) training.

Total loss in phase 2 (Zeng et al. 2025, eq. 5)::

    L = L_mse + lambda_energy * L_energy + lambda_sparsity * L_sparse + lambda_discovery * L_disc

Every term is a mean over the valid entries only (mask from QC, split and finiteness of the
observation); entries that are masked out contribute neither value nor gradient, even when the
observation there is NaN. A term with no valid entry is 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ..physics.exchange import ExchangeLaw

__all__ = [
    "WEIGHT_NAMES",
    "discovery_loss",
    "energy_residual_loss",
    "gaussian_nll",
    "log_multiplier_prior",
    "masked_mean",
    "masked_mse",
    "normalised_mse",
    "normalised_nll",
    "site_loss_weights",
    "site_weights",
    "target_scale",
    "sparsity_l1",
    "total_loss",
]

#: Names of the physics-term weights passed to every loss function (``weights[name]``).
WEIGHT_NAMES = ("energy", "sparsity", "discovery")


def _valid(obs: Array, mask: ArrayLike | None) -> Array:
    valid = jnp.isfinite(obs)
    if mask is not None:
        valid = valid & jnp.broadcast_to(jnp.asarray(mask, dtype=bool), obs.shape)
    return valid


def masked_mean(values: Array, mask: ArrayLike) -> Array:
    """Mean of ``values`` where ``mask``; 0 when nothing is valid. NaN outside the mask is ignored."""
    mask = jnp.broadcast_to(jnp.asarray(mask, dtype=bool), values.shape)
    total = jnp.sum(jnp.where(mask, values, 0.0))
    count = jnp.sum(mask)
    return total / jnp.maximum(count, 1)


def masked_mse(
    pred: Float[Array, "..."], obs: Float[ArrayLike, "..."], mask: ArrayLike | None = None
) -> Float[Array, ""]:
    """Mean square of ``pred - obs`` over entries where ``mask`` is true and ``obs`` is finite."""
    obs = jnp.asarray(obs, dtype=pred.dtype)
    valid = _valid(obs, mask)
    err = pred - jnp.where(valid, obs, 0.0)
    return masked_mean(err * err, valid)


def energy_residual_loss(
    sensible_heat: Float[Array, "..."],
    latent_heat: Float[Array, "..."],
    net_radiation_obs: Float[ArrayLike, "..."],
    ground_heat_obs: Float[ArrayLike, "..."] | None = None,
    mask: ArrayLike | None = None,
    scale: float | None = None,
) -> Float[Array, ""]:
    """Normalised mean square of the energy-balance residual ``Rn_obs - G_obs - H - LE``.

    Only entries where ``Rn_obs`` (and ``G_obs`` when given) are observed (finite) and ``mask`` is
    true count. Normalisation: by ``scale**2`` (W m-2) when given, otherwise by the mean square of
    the observed available energy ``Rn_obs - G_obs`` over the same entries, which makes the term
    dimensionless (1 = residual as large as the available energy itself). ``G_obs=None`` means the
    site has no ground heat flux: the residual is then ``Rn_obs - H - LE``.

    Tower energy balance typically closes to 70-95 %, so this term pulls H + LE towards the
    available energy; weigh it accordingly (or train on closure-corrected fluxes).
    """
    rn = jnp.asarray(net_radiation_obs, dtype=sensible_heat.dtype)
    valid = _valid(rn, mask)
    if ground_heat_obs is not None:
        g = jnp.asarray(ground_heat_obs, dtype=sensible_heat.dtype)
        valid = valid & jnp.isfinite(g)
        available = jnp.where(valid, rn, 0.0) - jnp.where(valid, g, 0.0)
    else:
        available = jnp.where(valid, rn, 0.0)
    residual = available - sensible_heat - latent_heat
    if scale is None:
        norm = jax.lax.stop_gradient(masked_mean(available * available, valid))
        norm = jnp.maximum(norm, 1.0)  # 1 (W m-2)^2 floor: no blow-up on an all-zero record
    else:
        if not scale > 0:
            raise ValueError(f"energy_residual_loss: scale must be > 0 W m-2, got {scale}")
        norm = scale * scale
    return masked_mean(residual * residual, valid) / norm


def sparsity_l1(deviations: Any, mask: ArrayLike | None = None) -> Float[Array, ""]:
    """Mean absolute value of learned parameter deviations (an array or a PyTree of arrays).

    Pass deviations in comparable units, e.g. ``(theta - theta_default) / (upper - lower)``.
    With a PyTree, the mean runs over all elements of all leaves; ``mask`` applies to a single array.
    """
    leaves = _leaves(deviations, "sparsity_l1")
    if mask is not None:
        if len(leaves) != 1:
            raise ValueError("sparsity_l1: mask is only supported for a single array")
        return masked_mean(jnp.abs(leaves[0]), mask)
    return _mean_over_leaves(jnp.abs, leaves)


def log_multiplier_prior(multipliers: Any) -> Float[Array, ""]:
    """Mean square log of learned multipliers of default parameters (an array or a PyTree of
    arrays): the negative log of a Gaussian prior centred on the defaults (multiplier 1), up to a
    constant, per value. A weight ``w`` on it next to a variance-normalised MSE acts as a prior of SD
    about ``sigma / sqrt(w)`` in log units, ``sigma`` the normalised error SD (about 0.4 for a model
    with NSE 0.8)."""
    return _mean_over_leaves(lambda x: jnp.square(jnp.log(x)), _leaves(multipliers, "log_multiplier_prior"))


def _leaves(tree: Any, who: str) -> list[Array]:
    leaves = [jnp.asarray(x) for x in jax.tree_util.tree_leaves(tree)]
    if not leaves:
        raise ValueError(f"{who}: no arrays given")
    return leaves


def _mean_over_leaves(fn: Callable, leaves: list[Array]) -> Float[Array, ""]:
    """Mean of ``fn`` over every element of every leaf."""
    return sum(jnp.sum(fn(x)) for x in leaves) / sum(x.size for x in leaves)


def discovery_loss(
    law: ExchangeLaw,
    kh_learned: Float[Array, "..."],
    wind: Float[ArrayLike, "..."],
    ri: Float[ArrayLike, "..."],
    mask: ArrayLike | None = None,
) -> Float[Array, ""]:
    """Mean square of ``log K_h_learned - log K_h_law(u, Ri)`` over valid entries (the law's stable
    and unstable branches, ``physics.exchange.ExchangeLaw``).

    Gradients flow both into the network that produced ``kh_learned`` (pulling it towards an
    analytical form) and into the law's ``a, b, c`` (fitting the form). ``kh_learned`` must be
    positive (e.g. from a log-space :class:`~hybridlsm.neural.BoundedHead`).
    """
    kh = jnp.asarray(kh_learned)
    valid = jnp.isfinite(kh) & (kh > 0)
    if mask is not None:
        valid = valid & jnp.broadcast_to(jnp.asarray(mask, dtype=bool), kh.shape)
    log_kh = jnp.log(jnp.where(valid, kh, 1.0))
    err = log_kh - law.log_kh(wind, ri)
    return masked_mean(err * err, valid)


def gaussian_nll(
    mean: Float[Array, "..."],
    std: Float[Array, "..."],
    obs: Float[ArrayLike, "..."],
    mask: ArrayLike | None = None,
) -> Float[Array, ""]:
    """Mean Gaussian negative log-likelihood ``log std + (obs - mean)^2 / (2 std^2) + log(2 pi)/2``."""
    obs = jnp.asarray(obs, dtype=mean.dtype)
    valid = _valid(obs, mask)
    z = (jnp.where(valid, obs, 0.0) - mean) / std
    nll = jnp.log(std) + 0.5 * z * z + 0.5 * jnp.log(2.0 * jnp.pi)
    return masked_mean(nll, valid)


def total_loss(
    supervised: Float[Array, ""], terms: dict[str, Array], weights: dict[str, Array]
) -> tuple[Float[Array, ""], dict[str, Array]]:
    """``supervised + sum(weights[k] * terms[k])`` and the aux dict of every term (for history).

    A term without a weight, or a weight name that is not one of :data:`WEIGHT_NAMES`, is an error.
    """
    unknown = sorted(set(terms) - set(WEIGHT_NAMES))
    if unknown:
        raise ValueError(f"total_loss: unknown term(s) {unknown}; allowed: {list(WEIGHT_NAMES)}")
    loss = supervised
    aux = {"mse": supervised}
    for name, value in terms.items():
        loss = loss + weights[name] * value
        aux[name] = value
    return loss, aux


# ------------------------------------------------------- multi-site data term of the rollout models
# ``records`` are ``training.windows.SiteRecord``s: ``site``, ``obs`` (T, K) and ``mask`` (T, K).


def normalised_mse(sim, obs, mask, scale, weight=None):
    """Mean over targets of the masked MSE divided by each target's variance scale; ``weight``
    (W, K) weighs each window's squared errors (``site_weights``)."""
    err = jnp.where(mask, (sim - jnp.where(mask, obs, 0.0)) / scale, 0.0)
    sq = err * err if weight is None else err * err * weight[None]
    per_target = jnp.sum(sq, axis=(0, 1)) / jnp.maximum(jnp.sum(mask, axis=(0, 1)), 1)
    return jnp.mean(per_target)


def normalised_nll(sim, sigma, obs, mask, scale, weight=None):
    """Mean over targets of the masked Gaussian negative log-likelihood of the standardised errors
    (``(obs - sim) / scale`` with SD ``sigma / scale``), each window's terms weighted as in
    :func:`normalised_mse`. With sigma = scale it is normalised_mse / 2 + log(2 pi) / 2."""
    std = sigma / scale
    z = jnp.where(mask, (jnp.where(mask, obs, 0.0) - sim) / sigma, 0.0)
    nll = jnp.where(mask, jnp.log(std) + 0.5 * z * z + 0.5 * jnp.log(2.0 * jnp.pi), 0.0)
    nll = nll if weight is None else nll * weight[None]
    per_target = jnp.sum(nll, axis=(0, 1)) / jnp.maximum(jnp.sum(mask, axis=(0, 1)), 1)
    return jnp.mean(per_target)


def target_scale(records: Sequence) -> np.ndarray:
    """Standard deviation of each target over the usable training values (>= 10 W m-2)."""
    obs = np.concatenate([np.where(r.mask, r.obs, np.nan) for r in records])
    return np.maximum(np.nanstd(obs, axis=0), 10.0)


def site_weights(records: Sequence, scale: np.ndarray,
                 site_scale: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
    """(K,) weights per record that give every site the same say in the loss.

    With weight v_s = N / (S n_s) * scale^2 / sigma_s^2 on the squared errors of site s (S sites,
    n_s usable values of a target at site s, N = sum n_s, sigma_s the site's ``target_scale``), the
    loss sum(v err^2 / scale^2) / N is the mean over sites of each site's MSE / sigma_s^2. One site:
    all weights are 1 (the loss is unchanged). ``site_scale`` (default: from ``records``) lets the
    validation records use the training sites' sigma_s.
    """
    sites = sorted({rec.site for rec in records})
    if len(sites) <= 1:
        return [np.ones(len(scale)) for _ in records]
    by_site = {s: [rec for rec in records if rec.site == s] for s in sites}
    site_scale = dict(site_scale or {})
    for s in set(sites) - set(site_scale):
        site_scale[s] = target_scale(by_site[s])
    counts = {s: sum(rec.mask.sum(axis=0) for rec in recs) for s, recs in by_site.items()}
    total = sum(counts.values())
    scale = np.asarray(scale, float)
    weight = {}
    for s in sites:  # a site without values of a target (sigma_s NaN) gets weight 0 for it
        sigma = np.where(np.isfinite(site_scale[s]), site_scale[s], scale)
        weight[s] = np.where(counts[s] > 0, total / (len(sites) * np.maximum(counts[s], 1)) * (scale / sigma) ** 2, 0.0)
    return [weight[rec.site] for rec in records]


def site_loss_weights(train_recs: Sequence, val_recs: Sequence, scale: np.ndarray,
                 mode: str = "balanced") -> tuple[list[np.ndarray] | None, list[np.ndarray] | None]:
    """Weights of the training and validation records for ``TrainConfig.site_weighting``:
    ``site_weights`` (validation with the training sites' sigma_s) or None (pooled)."""
    if mode == "pooled":
        return None, None
    if mode != "balanced":
        raise ValueError(f"site_weighting must be 'balanced' or 'pooled', not {mode!r}")
    sites = {rec.site for rec in train_recs}
    site_scale = {s: target_scale([r for r in train_recs if r.site == s]) for s in sites}
    return site_weights(train_recs, scale, site_scale), site_weights(val_recs, scale, site_scale)
