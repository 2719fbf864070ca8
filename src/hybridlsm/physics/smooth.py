"""Smooth, differentiable replacements for the hard clamps of LaD (physics-reference §1.5, §9.4).

Every function is C-infinity (or at least C^p) in its inputs, keeps the sign/range guarantees of
the clamp it replaces, and is safe under ``jax.grad`` (no ``inf * 0`` in a discarded branch).
The ``scale`` arguments are the width of the smoothed region, in the unit of the input.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools

import jax
import jax.numpy as jnp

_RUN_TIME_CODE = contextvars.ContextVar("hybridlsm_run_time_code", default=False)


@contextlib.contextmanager
def run_time_code(on: bool = True):
    """Trace for run-time code generation: functions traced inside (``physics.run_time_jit`` does
    it for the executables it compiles with ``RUN_TIME_OPTIONS``) choose the forms that XLA's CPU
    fusion emitters run fastest; see ``log1p_unit``. Results agree to float rounding either way.
    JAX caches a trace by its function: trace each mode through a function of its own, as the
    decorator form ``run_time_code(on)(fun)`` gives (a new function each time; ``run_time_jit``
    uses it); a function jitted on its own and called inside keeps the trace of its first call,
    whichever the mode (the same results; only the speed differs)."""
    token = _RUN_TIME_CODE.set(bool(on))
    try:
        yield
    finally:
        _RUN_TIME_CODE.reset(token)


def log1p_unit(e):
    """log(1 + e) for e in [0, 1], to float rounding (a few ulps, as ``jnp.log1p``).

    Traced for run time (``run_time_code``) it is Goldberg's form log(u) * e / (u - 1) with
    u = 1 + e rounded (e itself where u rounds to 1): XLA's CPU fusion emitters run the LaD step
    40-50 % faster at 1024 cells with it than with ``log1p`` (17 per cell and step, in ``softplus``).
    It splits the step into more kernels (104 against 77 per step for one site), which costs more
    than it gains for a few cells (a site's training step took 0.031 s against 0.018 s), so it is
    used only for run time (docs/performance.md)."""
    if not _RUN_TIME_CODE.get():
        return jnp.log1p(e)
    u = jnp.where(e > 0.0, 1.0 + e, 1.0)  # the select keeps XLA from simplifying (1 + e) - 1 to e
    d = u - 1.0
    return jnp.where(d == 0.0, e, jnp.log(u) * (e / jnp.where(d == 0.0, 1.0, d)))


@jax.custom_jvp
def softplus(x):
    """log(1 + exp(x)), the same value as ``jax.nn.softplus`` for finite x (max(x, 0) +
    log1p(exp(-|x|))), with a cheaper derivative: sigmoid(x) from the same exp(-|x|), where
    ``jax.nn.softplus`` (``logaddexp``) differentiates through exp(x - softplus(x)) and NaN
    selects. It is evaluated ~15 times per cell and step, so its backward pass matters
    (docs/performance.md)."""
    return jnp.maximum(x, 0.0) + log1p_unit(jnp.exp(-jnp.abs(x)))


@softplus.defjvp
def _softplus_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    e = jnp.exp(-jnp.abs(x))
    y = jnp.maximum(x, 0.0) + log1p_unit(e)
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


def _cap_terms(amount, cap, power):
    """The terms of ``soft_cap`` and ``limit_positive_slope`` at r = amount / cap, in log space (no
    overflow for amount >> cap): (positive, amount, cap, x, e, s) with x = p log r, e = exp(-|x|)
    and s = softplus(x) = log(1 + r^p); amount and cap are replaced by 1 where either is <= 0 (the
    callers select 0 or 1 there)."""
    positive = (amount > 0) & (cap > 0)
    safe_amount = jnp.where(positive, amount, 1.0)
    safe_cap = jnp.where(positive, cap, 1.0)
    x = power * (jnp.log(safe_amount) - jnp.log(safe_cap))
    e = jnp.exp(-jnp.abs(x))
    return positive, safe_amount, safe_cap, x, e, jnp.maximum(x, 0.0) + log1p_unit(e)


def _sigmoids(x, e):
    """(1 / (1 + r^p), r^p / (1 + r^p)) = (sigmoid(-x), sigmoid(x)) from e = exp(-|x|), each
    without a difference (1 - q would lose r^p / (1 + r^p) for r << 1)."""
    return jnp.where(x >= 0, e, 1.0) / (1.0 + e), jnp.where(x >= 0, 1.0, e) / (1.0 + e)


# soft_cap and limit_positive_slope carry written-out derivatives: differentiated through their logs
# and softplus they made the LaD step's gradient 15-25 % slower (docs/performance.md). Their values
# keep the forms the forward pass runs fastest (the slope as the product w q made XLA's forward at
# 1024 cells 50 % slower); the rules use whichever form the gradient runs fastest (the same values to
# rounding).
@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def soft_cap(amount, cap, power: float = 8.0):
    """min(amount, cap) for amount >= 0, cap >= 0, smoothed so that the result never exceeds either.

    cap * g(amount / cap) with g(r) = r / (1 + r^p)^(1/p): g(r) = r - r^(p+1)/p + ... for small r
    (the identity to order p), g -> 1 for r -> infinity, g(1) = 2^(-1/p) (0.917 for p = 8).
    Evaluated in log space, so no overflow for amount >> cap; exactly 0 when amount <= 0 or
    cap <= 0.
    """
    positive, safe_amount, _, _, _, s = _cap_terms(amount, cap, power)
    return jnp.where(positive, safe_amount * jnp.exp(-s / power), 0.0)


@soft_cap.defjvp
def _soft_cap_jvp(power, primals, tangents):
    (amount, cap), (d_amount, d_cap) = primals, tangents
    positive, safe_amount, safe_cap, x, e, s = _cap_terms(amount, cap, power)
    w = jnp.exp(-s / power)  # g(r) / r
    q, q_complement = _sigmoids(x, e)
    y = safe_amount * w
    # dy/da = g'(r) = w q; dy/dc = g(r) - r g'(r) = r w (1 - q)
    dy = w * q * d_amount + (y / safe_cap) * q_complement * d_cap
    return jnp.where(positive, y, 0.0), jnp.where(positive, dy, 0.0)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def limit_positive_slope(amount, cap, power: float = 8.0):
    """d limit_positive(amount, cap) / d amount: 1 for amount <= 0, g'(amount/cap) =
    (1 + r^p)^(-1 - 1/p) above (0 where cap <= 0)."""
    positive, _, _, _, _, s = _cap_terms(amount, cap, power)
    return jnp.where(amount > 0, jnp.where(positive, jnp.exp(-(1.0 + 1.0 / power) * s), 0.0), 1.0)


@limit_positive_slope.defjvp
def _limit_positive_slope_jvp(power, primals, tangents):
    (amount, cap), (d_amount, d_cap) = primals, tangents
    positive, safe_amount, safe_cap, x, e, s = _cap_terms(amount, cap, power)
    q, q_complement = _sigmoids(x, e)
    # the function's value to rounding; its own form, exp(-(1 + 1/p) s), made the gradient 20 % slower
    slope = jnp.exp(-s / power) * q
    # d log g' = -(p + 1) (1 - q) d log r, d log r = da / a - dc / c
    d_slope = -(power + 1.0) * slope * q_complement * (d_amount / safe_amount - d_cap / safe_cap)
    return (jnp.where(amount > 0, jnp.where(positive, slope, 0.0), 1.0),
            jnp.where(positive, d_slope, 0.0))


def limit_positive(amount, cap, power: float = 8.0):
    """Limit positive ``amount`` smoothly to ``cap`` (soft_cap); negative amounts pass unchanged.

    With cap <= 0 a positive amount is limited to 0. Smooth (C^p) across amount = 0.
    """
    return jnp.where(amount > 0, soft_cap(amount, cap, power), amount)


def sigmoid_blend(x, scale):
    """Weight that goes smoothly from 0 (x << -scale) to 1 (x >> scale): sigmoid(x / scale)."""
    return jax.nn.sigmoid(x / scale)
