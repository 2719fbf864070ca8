"""Smooth, differentiable replacements for the hard clamps of LaD (physics-reference §1.5, §9.4).

Every function is C-infinity (or at least C^p) in its inputs, keeps the sign/range guarantees of
the clamp it replaces, and is safe under ``jax.grad`` (no ``inf * 0`` in a discarded branch).
The ``scale`` arguments are the width of the smoothed region, in the unit of the input.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.custom_jvp
def softplus(x):
    """log(1 + exp(x)), the same value as ``jax.nn.softplus`` for finite x (max(x, 0) +
    log1p(exp(-|x|))), with a cheaper derivative: sigmoid(x) from the same exp(-|x|), where
    ``jax.nn.softplus`` (``logaddexp``) differentiates through exp(x - softplus(x)) and NaN
    selects. It is evaluated ~15 times per cell and step, so its backward pass matters
    (docs/performance.md)."""
    return jnp.maximum(x, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(x)))


@softplus.defjvp
def _softplus_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    e = jnp.exp(-jnp.abs(x))
    y = jnp.maximum(x, 0.0) + jnp.log1p(e)
    return y, dx * (jnp.where(x >= 0, 1.0, e) / (1.0 + e))


def smooth_relu(x, scale):
    """max(x, 0) smoothed over ``scale``: scale * softplus(x / scale) (always > 0)."""
    return scale * softplus(x / scale)


def smooth_min(x, upper, scale):
    """min(x, upper) smoothed over ``scale`` (always < upper)."""
    return x - smooth_relu(x - upper, scale)


def smooth_max(x, lower, scale):
    """max(x, lower) smoothed over ``scale`` (always > lower)."""
    return x + smooth_relu(lower - x, scale)


def smooth_clip01(x, scale):
    """clip(x, 0, 1) smoothed over ``scale``; strictly inside (0, 1), monotone increasing."""
    return smooth_relu(x, scale) - smooth_relu(x - 1.0, scale)


def soft_cap(amount, cap, power: float = 8.0):
    """min(amount, cap) for amount >= 0, cap >= 0, smoothed so that the result never exceeds either.

    cap * g(amount / cap) with g(r) = r / (1 + r^p)^(1/p): g(r) = r - r^(p+1)/p + ... for small r
    (the identity to order p), g -> 1 for r -> infinity, g(1) = 2^(-1/p) (0.917 for p = 8).
    Evaluated in log space, so no overflow for amount >> cap; exactly 0 when amount <= 0 or
    cap <= 0.
    """
    positive = (amount > 0) & (cap > 0)
    safe_amount = jnp.where(positive, amount, 1.0)
    safe_cap = jnp.where(positive, cap, 1.0)
    log_ratio = jnp.log(safe_amount) - jnp.log(safe_cap)
    capped = safe_amount * jnp.exp(-softplus(power * log_ratio) / power)
    return jnp.where(positive, capped, 0.0)


def limit_positive_slope(amount, cap, power: float = 8.0):
    """d limit_positive(amount, cap) / d amount: 1 for amount <= 0, g'(amount/cap) above."""
    positive = (amount > 0) & (cap > 0)
    safe_amount = jnp.where(positive, amount, 1.0)
    safe_cap = jnp.where(positive, cap, 1.0)
    log_ratio = jnp.log(safe_amount) - jnp.log(safe_cap)
    slope = jnp.exp(-(1.0 + 1.0 / power) * softplus(power * log_ratio))
    return jnp.where(amount > 0, jnp.where(cap > 0, slope, 0.0), 1.0)


def limit_positive(amount, cap, power: float = 8.0):
    """Limit positive ``amount`` smoothly to ``cap`` (soft_cap); negative amounts pass unchanged.

    With cap <= 0 a positive amount is limited to 0. Smooth (C^p) across amount = 0.
    """
    return jnp.where(amount > 0, soft_cap(amount, cap, power), amount)


def sigmoid_blend(x, scale):
    """Weight that goes smoothly from 0 (x << -scale) to 1 (x >> scale): sigmoid(x / scale)."""
    return jax.nn.sigmoid(x / scale)
