"""Output heads: bounded physical parameters, an energy-conserving H/LE split, a Gaussian.

Heads have no trainable weights: they are fixed transforms of a network's raw (unbounded) output.
Put a linear layer (e.g. the last layer of :class:`~hybridlsm.neural.MLP`) in front of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from hybridlsm.neural._normaliser import NonTrainable

__all__ = ["BoundedHead", "EnergySplitHead", "GaussianHead"]


class BoundedHead(NonTrainable):
    """Map raw outputs ``(..., P)`` into ``[lower_p, upper_p]`` per output ``p``.

    - linear: ``y = lower + (upper - lower) * sigmoid(z)``;
    - log-space (for positive quantities spanning decades, e.g. K_h in 1e-3..1e2 m2 s-1 or r_s in
      1e2..1e4 s m-1): ``y = exp(log lower + (log upper - log lower) * sigmoid(z))``.

    ``lower``/``upper`` are arrays or lists (e.g. from the physics parameter table); ``log_space`` is
    one bool, one bool per output, or ``"auto"`` (log-space where ``lower > 0`` and
    ``upper / lower >= 100``). The result is clipped to the bounds so rounding can never leave them;
    ``z = 0`` gives the (geometric, in log-space) midpoint, and :meth:`inverse` gives the raw value
    that produces a chosen output (use it to initialise a network's bias at the default parameter).
    Bounds are non-trainable leaves.
    """

    lower: Float[Array, " P"]
    upper: Float[Array, " P"]
    log_space: tuple[bool, ...] = eqx.field(static=True)

    def __init__(
        self,
        lower: ArrayLike,
        upper: ArrayLike,
        log_space: bool | Sequence[bool] | Literal["auto"] = False,
        dtype: Any = None,
    ):
        lo = np.atleast_1d(np.asarray(lower, dtype=np.float64))
        hi = np.atleast_1d(np.asarray(upper, dtype=np.float64))
        if lo.ndim != 1 or lo.shape != hi.shape:
            raise ValueError(f"BoundedHead: lower and upper must be 1-D of equal length, got {lo.shape}, {hi.shape}")
        bad = np.flatnonzero(~(np.isfinite(lo) & np.isfinite(hi) & (hi > lo)))
        if bad.size:
            raise ValueError(
                f"BoundedHead: need finite lower < upper; violated at output(s) {bad.tolist()} "
                f"(lower={lo[bad].tolist()}, upper={hi[bad].tolist()})"
            )
        if isinstance(log_space, str):
            if log_space != "auto":
                raise ValueError(f"BoundedHead: log_space must be a bool, a list of bools or 'auto', got {log_space!r}")
            logs = tuple(bool(lo_i > 0 and hi_i / lo_i >= 100.0) for lo_i, hi_i in zip(lo, hi))
        elif isinstance(log_space, (bool, np.bool_)):
            logs = (bool(log_space),) * lo.size
        else:
            logs = tuple(bool(b) for b in log_space)
            if len(logs) != lo.size:
                raise ValueError(f"BoundedHead: log_space has {len(logs)} entries for {lo.size} outputs")
        nonpos = [i for i, (b, lo_i) in enumerate(zip(logs, lo)) if b and lo_i <= 0]
        if nonpos:
            raise ValueError(
                f"BoundedHead: log-space output(s) {nonpos} need lower > 0, got lower={lo[nonpos].tolist()}"
            )
        self.lower = jnp.asarray(lo, dtype=dtype)
        self.upper = jnp.asarray(hi, dtype=dtype)
        self.log_space = logs

    @property
    def size(self) -> int:
        return len(self.log_space)

    def _log_bounds(self) -> tuple[Array, Array, Array, Array, Array]:
        lo = jax.lax.stop_gradient(self.lower)
        hi = jax.lax.stop_gradient(self.upper)
        is_log = jnp.asarray(self.log_space)
        # Safe logs: non-log outputs use 1 so that no NaN enters either branch of the where.
        log_lo = jnp.log(jnp.where(is_log, lo, 1.0))
        log_hi = jnp.log(jnp.where(is_log, hi, 1.0))
        return lo, hi, is_log, log_lo, log_hi

    def __call__(self, raw: Float[Array, "... P"]) -> Float[Array, "... P"]:
        if raw.shape[-1] != self.size:
            raise ValueError(f"BoundedHead expects {self.size} raw outputs, got {raw.shape[-1]}")
        lo, hi, is_log, log_lo, log_hi = self._log_bounds()
        s = jax.nn.sigmoid(raw)
        y_lin = lo + (hi - lo) * s
        y_log = jnp.exp(log_lo + (log_hi - log_lo) * s)
        return jnp.clip(jnp.where(is_log, y_log, y_lin), lo, hi)

    def inverse(self, y: Float[ArrayLike, "... P"], eps: float = 1e-6) -> Float[Array, "... P"]:
        """Raw value mapping to ``y`` (``y`` is pulled ``eps`` of the range inside the bounds)."""
        lo, hi, is_log, log_lo, log_hi = self._log_bounds()
        y = jnp.asarray(y, dtype=lo.dtype)
        s_lin = (y - lo) / (hi - lo)
        s_log = (jnp.log(jnp.where(is_log, jnp.maximum(y, lo), 1.0)) - log_lo) / jnp.where(
            is_log, log_hi - log_lo, 1.0
        )
        s = jnp.clip(jnp.where(is_log, s_log, s_lin), eps, 1.0 - eps)
        return jnp.log(s) - jnp.log1p(-s)


class EnergySplitHead(eqx.Module):
    """Split available energy into sensible heat H and latent heat LE, conserving energy exactly.

    With net radiation ``Rn`` and ground heat flux ``G`` (W m-2; ``G`` optional, 0 if omitted) the
    available energy is ``A = Rn - G``. From two raw outputs ``z = (z_ef, z_res)``:

    - evaporative fraction ``EF = sigmoid(z_ef)`` in (0, 1);
    - positive part of the available energy, smoothed: ``A+ = s * softplus(A / s)`` with
      ``s = smoothing`` (10 W m-2 by default; ``A+ ~= A`` for ``A >> s`` and ``~= 0`` for ``A << -s``);
    - bounded residual ``r = residual_scale * tanh(z_res)`` in ``(-residual_scale, residual_scale)``;
    - ``LE = EF * A+ + r`` and ``H = A - LE``.

    ``H + LE + G = Rn`` therefore holds by construction, to rounding (one subtraction), for any raw
    output. Night-time / negative available energy (``A < 0``): ``A+ ~= 0`` so ``LE`` is the bounded
    residual only (small dew or evaporation, ``|LE| < residual_scale``) and ``H = A - LE`` carries the
    deficit (downward sensible heat), which is the usual stable-night regime. By day the residual
    also lets LE exceed A slightly (advection, "oasis" conditions, ``H < 0``). ``residual_scale = 0``
    gives the plain evaporative-fraction split (then one raw output suffices).
    """

    residual_scale: float = eqx.field(static=True)
    smoothing: float = eqx.field(static=True)

    def __init__(self, residual_scale: float = 50.0, smoothing: float = 10.0):
        if not residual_scale >= 0:
            raise ValueError(f"EnergySplitHead: residual_scale must be >= 0 W m-2, got {residual_scale}")
        if not smoothing > 0:
            raise ValueError(f"EnergySplitHead: smoothing must be > 0 W m-2, got {smoothing}")
        self.residual_scale = float(residual_scale)
        self.smoothing = float(smoothing)

    @property
    def raw_size(self) -> int:
        """Number of raw outputs the head consumes (2, or 1 when ``residual_scale == 0``)."""
        return 2 if self.residual_scale > 0 else 1

    def __call__(
        self,
        raw: Float[Array, "... R"],
        net_radiation: Float[ArrayLike, "..."],
        ground_heat: Float[ArrayLike, "..."] | None = None,
    ) -> tuple[Float[Array, "..."], Float[Array, "..."]]:
        """Return ``(H, LE)`` in W m-2 with ``H + LE + G == Rn`` to rounding."""
        if raw.shape[-1] != self.raw_size:
            raise ValueError(f"EnergySplitHead expects {self.raw_size} raw outputs, got {raw.shape[-1]}")
        rn = jnp.asarray(net_radiation)
        available = rn if ground_heat is None else rn - jnp.asarray(ground_heat)
        ef = jax.nn.sigmoid(raw[..., 0])
        s = self.smoothing
        available_pos = s * jax.nn.softplus(available / s)
        latent = ef * available_pos
        if self.residual_scale > 0:
            latent = latent + self.residual_scale * jnp.tanh(raw[..., 1])
        sensible = available - latent
        return sensible, latent


#: (min, max) SD of the aleatoric Gaussian heads of the site models, in units of the target's scale
#: (lstm, hybrid_param, hybrid_lstm, post_correction)
TARGET_STD_RANGE = (1e-2, 10.0)


class GaussianHead(eqx.Module):
    """Heteroscedastic Gaussian: raw ``(..., 2K)`` -> ``mean (..., K)``, ``std (..., K)``.

    ``mean = raw[..., :K]``; ``std = clip(softplus(raw[..., K:]) + min_std, max=max_std)``: strictly
    positive, at least ``min_std`` (the variance floor ``min_std**2``) and at most ``max_std`` (no
    bound when None), i.e. the log-variance is clipped to ``[2 log min_std, 2 log max_std]``. The
    units are those of the network's targets (standardised in the models). Train with
    :func:`hybridlsm.training.losses.gaussian_nll`; :meth:`raw_for_std` gives the raw value of a
    chosen ``std`` (to initialise the output bias).
    """

    out_size: int = eqx.field(static=True)
    min_std: float = eqx.field(static=True)
    max_std: float | None = eqx.field(static=True, default=None)

    def __init__(self, out_size: int, min_std: float = 1e-3, max_std: float | None = None):
        if out_size < 1:
            raise ValueError(f"GaussianHead: out_size must be >= 1, got {out_size}")
        if not min_std > 0:
            raise ValueError(f"GaussianHead: min_std must be > 0, got {min_std}")
        if max_std is not None and not max_std > min_std:
            raise ValueError(f"GaussianHead: max_std must be > min_std = {min_std}, got {max_std}")
        self.out_size = int(out_size)
        self.min_std = float(min_std)
        self.max_std = None if max_std is None else float(max_std)

    @property
    def raw_size(self) -> int:
        return 2 * self.out_size

    def __call__(self, raw: Float[Array, "... R"]) -> tuple[Float[Array, "... K"], Float[Array, "... K"]]:
        if raw.shape[-1] != self.raw_size:
            raise ValueError(f"GaussianHead expects {self.raw_size} raw outputs, got {raw.shape[-1]}")
        k = self.out_size
        return raw[..., :k], self.std(raw[..., k:])

    def std(self, raw_std: Float[Array, "... K"]) -> Float[Array, "... K"]:
        """The SD from its raw half alone (a model whose mean comes from elsewhere, e.g. the physics)."""
        std = jax.nn.softplus(raw_std) + self.min_std
        return std if self.max_std is None else jnp.minimum(std, self.max_std)

    def raw_for_std(self, std: float) -> float:
        """The raw value whose ``std`` is ``std`` (inverse softplus of ``std - min_std``)."""
        s = float(std) - self.min_std
        if not s > 0 or (self.max_std is not None and std > self.max_std):
            raise ValueError(f"GaussianHead: std {std} outside ({self.min_std}, {self.max_std}]")
        return float(s + np.log(-np.expm1(-s)))
