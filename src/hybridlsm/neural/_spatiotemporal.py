"""The spatiotemporal neural parameteriser of seed paper 000 (§2.3, §3), regional mode: gridded
climate fields in, parameter fields on the physics grid out (turbulent exchange coefficient K_h
and surface resistance r_s by default).

Shapes (channel first; time is the first of the three convolved axes)::

    variables (V, T, ny, nx)   dynamic inputs, already normalised; e.g. wind, temperature,
                               humidity, pressure and the normalised :func:`physical_features`
    static    (S, ny, nx)      land-cover one-hot or fractions, normalised elevation, ...
    output    (P, T, ny, nx)   parameter fields in physical units, in the order of ``names``

Pipeline (sizes are :class:`SpatiotemporalOptions`; the defaults train on two CPU cores):

1. :class:`VariableFusion`: every variable gets its own embedding to E channels, fused as
   ``sum_k omega_k emb_k`` with ``omega = softmax(logits)`` (seed §2.3, cross-modal fusion);
   the static fields, broadcast over time, are concatenated: ``x0`` with E + S channels.
2. Encoder: 3 ``Conv3d`` layers, kernel (time 3) x (5 x 5), time length kept, spatial strides
   (2, 2, 1): a 32 x 32 grid becomes 8 x 8 (each stride-s layer maps n to ceil(n / s)).
   Activation and dropout after each layer.
3. A bidirectional GRU over time at every latent cell (forward and reversed ``lax.scan``).
4. :class:`CosineAttention` on the latent field: 8 heads, scores ``tau_h cos(q, k)`` with a learned
   temperature per head (seed eq. 3 with learned projections), residual.
5. Decoder: one ``ConvTranspose3d`` per encoder layer in reverse order, kernel (1, 5, 5), the
   same strides, each output cropped to the size of the matching encoder input; so the output is
   exactly (T, ny, nx) for any ny, nx >= 1 (41 x 41 -> 21 -> 11 -> 21 -> 41). Activation and
   dropout after each layer. Kernels start as a normalised Gaussian spatial profile times a random
   channel-mixing amplitude, plus small noise (seed §2.3, "spatial smoothness initialisation").
6. Output block at the physics grid: a pointwise layer over [decoder features, ``x0``], activation,
   a 1 x 1 projection to P raw channels and a log-space :class:`BoundedHead` (K_h in
   [1e-3, 1e2] m2 s-1, r_s in [1e2, 1e4] s m-1, never outside, seed §2.3 "hard threshold"). The
   projection's bias is ``BoundedHead.inverse(prior)`` and its weights are small, so the initial
   field is close to the prior everywhere.

Design choices and departures from the seed:

- Seed §3 gives the encoder stride 1 but a decoder "matching the encoder's downsampling factor";
  we downsample by 2 in the first two layers by default (``spatial_strides=(1, 1, 1)`` is the
  literal stride-1 network). Sizes are smaller than the seed's (Bi-GRU 256, attention 128) so that
  the network trains on a CPU; all are options.
- U-Net skips: each decoder layer after the first also sees the encoder features at its input
  resolution, and the output block sees ``x0``. Land-cover edges and point dependencies would
  otherwise have to pass the 4x-coarser latent grid and come back blurred by the Gaussian decoder.
- The decoder's time kernel is 1: the Bi-GRU and the attention window already mix time, and a
  time kernel of 1 keeps the Gaussian initialisation a pure spatial smoother.
- Attention: the latent cell (i, j) at step t attends to every latent cell (i', j') at steps
  t - w .. t + w (``attention_window`` w, default 1; eq. 3 is the case w = 0). Time steps are
  processed ``attention_time_chunk`` at a time under ``jax.checkpoint``, so the score memory is
  ``chunk x heads x N x (2w + 1) N`` for N latent cells, whatever T (also in the backward pass).
- Dropout (rate 0.15 by default, seed §3) is on only when a key is passed, as for the package's
  MLP and LSTM: pass a key in training and for MC-dropout prediction, none for the deterministic
  network. The rate is the ``dropout`` attribute, named as in MLP and LSTM.
- Encoder kernels and decoder channel amplitudes are He-uniform: with Equinox's default the signal
  shrank ~3x per layer and the latent field fed to the Bi-GRU and attention started near zero.
- Parameters have the dtype given at construction (float32 or float64); inputs are cast to it.
- Speed on CPU: the strided layers keep Equinox's ``Conv3d`` / ``ConvTranspose3d`` weights but run
  as stride-1 convolutions (space-to-depth in the encoder, sub-pixel phases in the decoder, equal
  to the layers' own calls to rounding), and the dropout masks of all layers come from one random
  draw. XLA's zero-inserted convolutions and per-shape threefry draws made a forward pass ~15x and
  the first MC-dropout compilation ~20x slower. float64 convolutions remain ~10x slower than
  float32 on CPU; the network does not need float64 (train it in float32 beside a float64 physics).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from hybridlsm.constants import CP_AIR, GRAVITY, R_DRY
from hybridlsm.neural._common import activation_fn, check_rate, float_dtype, linear, uniform_tensors
from hybridlsm.neural._heads import BoundedHead

__all__ = [
    "PARAMETER_BOUNDS",
    "PARAMETER_PRIOR",
    "CosineAttention",
    "SpatiotemporalOptions",
    "SpatiotemporalParameteriser",
    "VariableFusion",
    "gaussian_profile",
    "physical_features",
]

#: physical range of each parameter the network can produce (seed §2.3): K_h [m2 s-1], r_s [s m-1],
#: and Kh_scale, a multiplier of the physics' own K_h (``physics.lad.PRESCRIBED_KH_SCALE``)
PARAMETER_BOUNDS: dict[str, tuple[float, float]] = {"Kh": (1e-3, 1e2), "rs": (1e2, 1e4), "Kh_scale": (1e-2, 1e2)}
#: initial value of each field: K_h of a few-metre surface layer, r_s of a crop by day, the
#: physics' own K_h
PARAMETER_PRIOR: dict[str, float] = {"Kh": 0.5, "rs": 200.0, "Kh_scale": 1.0}
#: reference pressure of the potential temperature [Pa]
REFERENCE_PRESSURE = 1.0e5
ENCODER_KERNEL = (3, 5, 5)  # (time, y, x)
DECODER_KERNEL = (1, 5, 5)
#: names of the rows of :func:`physical_features`
PHYSICAL_FEATURES = ("wind_shear", "temperature_gradient", "bulk_richardson")


# ------------------------------------------------------------------------------------------
# derived physical features
# ------------------------------------------------------------------------------------------


def _centred_gradient(f: Array, axis: int, spacing: float) -> Array:
    """d f / d axis by centred differences (one-sided at the edges); 0 along an axis of length 1."""
    if f.shape[axis] < 2:
        return jnp.zeros_like(f)
    return jnp.gradient(f, spacing, axis=axis)


def physical_features(
    t_air: Float[ArrayLike, "T ny nx"],
    q_air: Float[ArrayLike, "T ny nx"],
    wind_u: Float[ArrayLike, "T ny nx"],
    wind_v: Float[ArrayLike, "T ny nx"],
    p_surf: Float[ArrayLike, "T ny nx"],
    t_surface: Float[ArrayLike, "T ny nx"],
    *,
    height: Float[ArrayLike, "..."],
    z0: Float[ArrayLike, "..."],
    grid_spacing: float | tuple[float, float] = 1000.0,
    gustiness: float = 1.0,
) -> tuple[Float[Array, "3 T ny nx"], tuple[str, str, str]]:
    """Derived features that drive turbulent exchange (seed §2.3, "physical feature extraction").

    Args:
        t_air, t_surface: air temperature at ``height`` and surface temperature [K]
        q_air: specific humidity [kg kg-1]; wind_u, wind_v: wind components [m s-1]
        p_surf: surface pressure [Pa]
        height: reference height above the displacement height z - d [m] (scalar or (ny, nx))
        z0: roughness length for momentum [m], below ``height``
        grid_spacing: grid spacing [m], one value or (dy, dx); the seed's grid is 1 km
        gustiness: gust speed added in quadrature to the wind [m s-1] (the physics' default),
            which keeps the Richardson number finite in calm air

    Returns:
        ``(features, names)``: features (3, T, ny, nx) in the order of names:

        - ``wind_shear`` [s-1]: ``sqrt((dU/dz)^2 + |grad_h U|^2)`` with the log-law vertical shear
          ``dU/dz = U / (z ln(z / z0))`` (``u* = k U / ln(z / z0)``, ``dU/dz = u* / (k z)``) and the
          horizontal gradient of the wind speed U by centred differences (0 for uniform fields);
        - ``temperature_gradient`` [K m-1]: ``(theta_s - theta_a) / z``, positive when the surface
          is warmer than the air (unstable, upward sensible heat);
        - ``bulk_richardson`` [-]: ``g z (theta_v,a - theta_v,s) / (mean theta_v U^2)``, positive
          when stable (surface colder than the air).

        Potential temperatures are referred to 1000 hPa; the air's pressure at ``height`` comes
        from the hypsometric equation, so ``theta_a = T_a (p0 / p_s)^kappa exp(g z / (c_p T_v))``.
        Without a surface humidity, ``theta_v = theta (1 + 0.608 q_air)`` on both sides, so the
        virtual correction cancels in the Richardson number.
    """
    t_air, q_air, wind_u, wind_v, p_surf, t_surface = jnp.broadcast_arrays(
        *(jnp.asarray(a) for a in (t_air, q_air, wind_u, wind_v, p_surf, t_surface))
    )
    if t_air.ndim != 3:
        raise ValueError(f"physical_features: fields must be (T, ny, nx), got shape {t_air.shape}")
    z = jnp.asarray(height, dtype=t_air.dtype)
    z0 = jnp.asarray(z0, dtype=t_air.dtype)
    try:
        if np.any(np.asarray(z) <= np.asarray(z0)):
            raise ValueError("physical_features: height (z - d) must be above the roughness length z0")
    except jax.errors.TracerArrayConversionError:
        pass  # traced: no check
    dy, dx = (grid_spacing, grid_spacing) if np.isscalar(grid_spacing) else grid_spacing

    speed = jnp.sqrt(wind_u**2 + wind_v**2 + gustiness**2)
    vertical_shear = speed / (z * jnp.log(z / z0))
    horizontal_gradient = jnp.hypot(_centred_gradient(speed, 1, dy), _centred_gradient(speed, 2, dx))
    wind_shear = jnp.sqrt(vertical_shear**2 + horizontal_gradient**2)

    virtual = 1.0 + 0.608 * q_air
    exner_ref = (REFERENCE_PRESSURE / p_surf) ** (R_DRY / CP_AIR)
    theta_surface = t_surface * exner_ref
    theta_air = t_air * exner_ref * jnp.exp(GRAVITY * z / (CP_AIR * t_air * virtual))
    temperature_gradient = (theta_surface - theta_air) / z

    # Bulk Richardson number as hybridlsm.physics.turbulence.bulk_richardson, written out here
    # because neural may import only thermo and constants of the package.
    thv_air, thv_surface = theta_air * virtual, theta_surface * virtual
    richardson = GRAVITY * z * (thv_air - thv_surface) / (0.5 * (thv_air + thv_surface) * speed**2)
    return jnp.stack([wind_shear, temperature_gradient, richardson]), PHYSICAL_FEATURES


# ------------------------------------------------------------------------------------------
# options and initialisation helpers
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpatiotemporalOptions:
    """Sizes of :class:`SpatiotemporalParameteriser` (defaults: about 0.25 M weights).

    Attributes:
        embed_size: channels E of every variable's embedding (and of the fused field)
        encoder_channels: output channels of the encoder's Conv3d layers
        spatial_strides: spatial stride of each encoder layer (the decoder mirrors them)
        gru_hidden: hidden size of each direction of the Bi-GRU
        attention_heads, attention_size: heads and total query/key/value width (divisible)
        attention_window: time steps w on each side that a latent cell attends to
        attention_time_chunk: time steps whose scores are held at once
        decoder_channels: output channels of the decoder's transposed convolutions
        head_width: width of the pointwise layer before the output projection
        dropout: rate of the encoder and decoder dropout (on only with a key)
        activation: "silu", "tanh", "relu" or "gelu"
        gaussian_sigma: SD [kernel cells] of the decoder kernels' initial spatial profile
        gaussian_noise: uniform noise on that profile, relative to its peak (channels differ anyway
            by their random amplitude)
        output_weight_scale: initial output-projection weights relative to the default init
        attention_temperature: initial temperature tau of the cosine scores (learned; capped at 100)
    """

    embed_size: int = 8
    encoder_channels: tuple[int, ...] = (16, 24, 32)
    spatial_strides: tuple[int, ...] = (2, 2, 1)
    gru_hidden: int = 32
    attention_heads: int = 8
    attention_size: int = 64
    attention_window: int = 1
    attention_time_chunk: int = 8
    decoder_channels: tuple[int, ...] = (32, 24, 16)
    head_width: int = 16
    dropout: float = 0.15
    activation: str = "silu"
    gaussian_sigma: float = 1.0
    gaussian_noise: float = 0.01
    output_weight_scale: float = 1e-2
    attention_temperature: float = 10.0

    def __post_init__(self):
        n = len(self.encoder_channels)
        if n < 1 or len(self.spatial_strides) != n or len(self.decoder_channels) != n:
            raise ValueError(
                "SpatiotemporalOptions: encoder_channels, spatial_strides and decoder_channels need "
                f"the same length >= 1, got {len(self.encoder_channels)}, {len(self.spatial_strides)}, "
                f"{len(self.decoder_channels)}"
            )
        sizes = (self.embed_size, self.gru_hidden, self.attention_heads, self.attention_size,
                 self.attention_time_chunk, self.head_width, *self.encoder_channels,
                 *self.decoder_channels, *self.spatial_strides)  # fmt: skip
        if min(sizes) < 1:
            raise ValueError(f"SpatiotemporalOptions: sizes and strides must be >= 1, got {self}")
        if self.attention_size % self.attention_heads:
            raise ValueError(
                f"SpatiotemporalOptions: attention_size {self.attention_size} is not divisible by "
                f"attention_heads {self.attention_heads}"
            )
        if self.attention_window < 0:
            raise ValueError(f"SpatiotemporalOptions: attention_window must be >= 0, got {self.attention_window}")
        check_rate("SpatiotemporalOptions dropout", self.dropout)
        activation_fn(self.activation)
        if not (self.gaussian_sigma > 0 and self.gaussian_noise >= 0 and self.output_weight_scale >= 0
                and 0 < self.attention_temperature <= 100):  # fmt: skip
            raise ValueError(f"SpatiotemporalOptions: invalid initialisation scales in {self}")


def gaussian_profile(size: int, sigma: float, gain: float = 1.0) -> np.ndarray:
    """(size, size) Gaussian ``exp(-r^2 / (2 sigma^2))`` about the centre, summing to ``gain``.

    A transposed convolution of stride s spreads each input over s^2 output cells per kernel sum;
    ``gain = s^2`` makes the initial decoder pass a uniform field at unit gain.
    """
    d = np.arange(size) - (size - 1) / 2
    g = np.exp(-(d[:, None] ** 2 + d[None, :] ** 2) / (2.0 * sigma**2))
    return g * (gain / g.sum())


def _downsample(layer: eqx.nn.Conv3d, x: Float[Array, "I T ny nx"]) -> Float[Array, "O T my mx"]:
    """``layer(x)`` for an encoder layer of spatial stride s, computed as space-to-depth (each of the
    s^2 phases of the padded grid becomes a channel group) and one stride-1 convolution with
    ``ceil(K / s)`` taps.

    Equal to ``layer(x)`` to rounding (a test checks it); on CPU the gradient of a strided
    convolution with respect to its input is a zero-inserted convolution that XLA runs on a slow
    path (~0.4 s for the first layer on a 32 x 32 x 24 grid), while this form is stride-1 both ways.
    """
    _, sy, sx = layer.stride
    if sy == sx == 1:
        return layer(x)
    if sy != sx:
        raise NotImplementedError("unequal spatial strides")
    s = sy
    n_out, n_in, kt, ky, kx = layer.weight.shape
    (pt, pt1), (py, _), (px, _) = layer.padding
    a_y, a_x = -(-ky // s), -(-kx // s)
    _, n_t, ny, nx = x.shape
    oy, ox = (ny + 2 * py - ky) // s + 1, (nx + 2 * px - kx) // s + 1
    my, mx = oy + a_y - 1, ox + a_x - 1  # phase-grid cells the outputs read
    zero = jnp.zeros((), x.dtype)
    # pad (or crop: lax.pad takes negative widths) to s * m cells per axis, then space to depth
    x = jax.lax.pad(x, zero, ((0, 0, 0), (0, 0, 0), (py, s * my - ny - py, 0), (px, s * mx - nx - px, 0)))
    x = x.reshape(n_in, n_t, my, s, mx, s).transpose(0, 3, 5, 1, 2, 4).reshape(n_in * s * s, n_t, my, mx)
    w = jnp.pad(layer.weight, ((0, 0), (0, 0), (0, 0), (0, s * a_y - ky), (0, s * a_x - kx)))
    w = w.reshape(n_out, n_in, kt, a_y, s, a_x, s).transpose(0, 1, 4, 6, 2, 3, 5)
    w = w.reshape(n_out, n_in * s * s, kt, a_y, a_x)
    y = jax.lax.conv_general_dilated(x[None], w, (1, 1, 1), ((pt, pt1), (0, 0), (0, 0)))[0]
    return y + layer.bias


def _phase_taps(kernel: int, stride: int, pad: int) -> tuple[int, np.ndarray]:
    """Sub-pixel form of a 1-D transposed convolution (kernel K, stride s, padding p, output
    padding s - 1, as Equinox lowers it: zero-insert, pad K - 1 - p, correlate).

    Output cell ``s q + r`` is ``sum_j w[j] x[q + c]`` over the taps j with ``j = s c + K - 1 - p - r``.
    Returns the smallest offset c over all phases and ``taps`` (s, W): the tap j used by phase r at
    offset ``c_min + a``, or K (a zero tap) where none.
    """
    lead = kernel - 1 - pad
    offsets = [(r, (j + r - lead) // stride, j) for r in range(stride) for j in range(kernel)
               if (j + r - lead) % stride == 0]  # fmt: skip
    c_min = min(c for _, c, _ in offsets)
    width = max(c for _, c, _ in offsets) - c_min + 1
    taps = np.full((stride, width), kernel)
    for r, c, j in offsets:
        taps[r, c - c_min] = j
    return c_min, taps


def _upsample(layer: eqx.nn.ConvTranspose3d, x: Float[Array, "I T my mx"]) -> Float[Array, "O T sy*my sx*mx"]:
    """``layer(x)`` for a decoder layer, computed as one stride-1 convolution on the coarse grid
    with s^2 phase kernels, then depth-to-space ("sub-pixel" convolution).

    Equal to ``layer(x)`` to rounding (a test checks it) but several times faster on CPU, where XLA
    runs the zero-inserted (lhs-dilated) convolution of ``ConvTranspose`` on a slow path, and it
    does ~2.8x fewer multiplications for kernel 5 and stride 2.
    """
    _, sy, sx = layer.stride
    if sy == sx == 1:
        return layer(x)
    kt, ky, kx = layer.kernel_size
    (pt, _), (py, _), (px, _) = layer.padding
    c_y, taps_y = _phase_taps(ky, sy, py)
    c_x, taps_x = _phase_taps(kx, sx, px)
    wy, wx = taps_y.shape[1], taps_x.shape[1]
    w = jnp.pad(layer.weight, ((0, 0), (0, 0), (0, 0), (0, 1), (0, 1)))  # index K: a zero tap
    w = w[:, :, :, taps_y[:, :, None, None], taps_x[None, None, :, :]]  # (O, I, kt, sy, wy, sx, wx)
    n_out, n_in = w.shape[:2]
    w = w.transpose(3, 5, 0, 1, 2, 4, 6).reshape(sy * sx * n_out, n_in, kt, wy, wx)
    y = jax.lax.conv_general_dilated(
        x[None], w, window_strides=(1, 1, 1),
        padding=((kt - 1 - pt, kt - 1 - pt), (-c_y, c_y + wy - 1), (-c_x, c_x + wx - 1)),
    )[0]  # fmt: skip
    _, n_t, my, mx = y.shape
    y = y.reshape(sy, sx, n_out, n_t, my, mx).transpose(2, 3, 4, 0, 5, 1).reshape(n_out, n_t, my * sy, mx * sx)
    return y + layer.bias


def _keep_masks(key: PRNGKeyArray, rate: float, shapes: Sequence[tuple[int, ...]]) -> list[Array]:
    """Inverted-dropout keep masks (``True`` with probability 1 - rate) for arrays of ``shapes``,
    from **one** Bernoulli draw: XLA on CPU compiles each threefry draw of a new shape in ~1 s, so
    one draw per layer made the first MC-dropout call ~10 s slower to compile than one draw."""
    sizes = [math.prod(s) for s in shapes]
    keep = jax.random.bernoulli(key, 1.0 - rate, (sum(sizes),))
    ends = np.cumsum(sizes)
    return [keep[end - n : end].reshape(s) for n, end, s in zip(sizes, ends, shapes)]


def _dropout(x: Array, keep: Array | None, rate: float) -> Array:
    return x if keep is None else jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


class _Draws:
    """Collects ``(shape, limit)`` specs and draws them all as U(-limit, limit) in one random call
    (one compilation for a whole network, as ``_common.uniform_tensors``)."""

    def __init__(self):
        self.specs: list[tuple[tuple[int, ...], float]] = []

    def add(self, shape: tuple[int, ...], lim: float) -> int:
        self.specs.append((tuple(shape), float(lim)))
        return len(self.specs) - 1

    def draw(self, key: PRNGKeyArray, dtype: Any) -> list[np.ndarray]:
        return uniform_tensors(key, self.specs, dtype)


def _filled(make, fields: Sequence[str], arrays: Sequence[np.ndarray]):
    """The module ``make()`` builds, with its ``fields`` set to ``arrays`` (its own random
    initialisation is only traced, never run)."""
    skeleton = eqx.filter_eval_shape(make)
    where = lambda m: tuple(getattr(m, f) for f in fields)  # noqa: E731
    return eqx.tree_at(where, skeleton, tuple(jnp.asarray(a) for a in arrays))


# ------------------------------------------------------------------------------------------
# modules
# ------------------------------------------------------------------------------------------


class VariableFusion(eqx.Module):
    """Cross-modal fusion of V variables (seed §2.3): ``fused = sum_k omega_k emb_k``.

    Each variable has its own embedding to E channels, ``emb_k = tanh(a_k x_k + b_k)`` (a 1x1x1
    convolution of one input channel, then tanh), and ``omega = softmax(logits)`` sums to 1 exactly.
    Because every embedding is bounded by 1, ``omega_k`` bounds the share of variable k in every
    fused channel; :meth:`weights` reports omega (which variables drive the parameters).
    """

    embedding_weight: Float[Array, "V E"]
    embedding_bias: Float[Array, "V E"]
    logits: Float[Array, " V"]

    def __init__(self, n_variables: int, embed_size: int, dtype: Any = None, *, key: PRNGKeyArray):
        if n_variables < 1 or embed_size < 1:
            raise ValueError(f"VariableFusion: need n_variables, embed_size >= 1, got {n_variables}, {embed_size}")
        dtype = float_dtype(dtype)
        # a 1x1x1 convolution has fan-in 1: U(-1, 1) as Equinox's default; zero bias, uniform omega
        self.embedding_weight = jax.random.uniform(key, (n_variables, embed_size), dtype, -1.0, 1.0)
        self.embedding_bias = jnp.zeros((n_variables, embed_size), dtype)
        self.logits = jnp.zeros((n_variables,), dtype)

    @property
    def n_variables(self) -> int:
        return self.logits.shape[0]

    def weights(self) -> Float[Array, " V"]:
        """The variable weights omega (>= 0, summing to 1)."""
        return jax.nn.softmax(self.logits)

    def __call__(self, variables: Float[Array, "V *dims"]) -> Float[Array, "E *dims"]:
        if variables.shape[0] != self.n_variables:
            raise ValueError(f"VariableFusion expects {self.n_variables} variables, got {variables.shape[0]}")
        extra = (None,) * (variables.ndim - 1)
        emb = jnp.tanh(variables[:, None] * self.embedding_weight[(...,) + extra]
                       + self.embedding_bias[(...,) + extra])  # fmt: skip
        return jnp.tensordot(self.weights(), emb, axes=1)


class CosineAttention(eqx.Module):
    """Multi-head attention with cosine-similarity scores (seed eq. 3) over a latent field.

    Input and output ``(T, N, C)`` (N latent cells). Cell n at step t attends to every cell n' at
    steps t - w .. t + w inside the sequence (w = ``window``; w = 0 is eq. 3, attention over space
    within a time step). Head h scores ``tau_h cos(q_h, k_h)`` with query, key and value learned
    projections and a learned temperature ``tau_h = exp(log_temperature_h)`` capped at 100 (cosine
    scores lie in [-1, 1], so without tau the softmax could never be sharp). The result is added to
    the input (residual). ``time_chunk`` steps are processed at once under ``jax.checkpoint``: the
    scores held are ``time_chunk x heads x N x (2w + 1) N``, forward and backward.
    """

    qkv: eqx.nn.Linear
    out: eqx.nn.Linear
    log_temperature: Float[Array, " heads"]
    heads: int = eqx.field(static=True)
    window: int = eqx.field(static=True)
    time_chunk: int = eqx.field(static=True)

    def __init__(self, size: int, attention_size: int, heads: int, window: int, time_chunk: int,
                 temperature: float, *, arrays: Sequence[np.ndarray], dtype: Any):  # fmt: skip
        key0 = jax.random.key(0)
        self.qkv = _filled(lambda: eqx.nn.Linear(size, 3 * attention_size, dtype=dtype, key=key0),
                           ("weight", "bias"), arrays[:2])  # fmt: skip
        self.out = _filled(lambda: eqx.nn.Linear(attention_size, size, dtype=dtype, key=key0),
                           ("weight", "bias"), arrays[2:])  # fmt: skip
        self.log_temperature = jnp.full((heads,), math.log(temperature), dtype)
        self.heads = heads
        self.window = window
        self.time_chunk = time_chunk

    @staticmethod
    def specs(size: int, attention_size: int) -> list[tuple[tuple[int, ...], float]]:
        """Shapes and init limits of the weights (Equinox's default init)."""
        a, b = 1.0 / math.sqrt(size), 1.0 / math.sqrt(attention_size)
        return [((3 * attention_size, size), a), ((3 * attention_size,), a),
                ((size, attention_size), b), ((size,), b)]  # fmt: skip

    def __call__(self, f: Float[Array, "T N C"]) -> Float[Array, "T N C"]:
        n_t, n, _ = f.shape
        h, w = self.heads, self.window
        q, k, v = jnp.split(linear(self.qkv, f).reshape(n_t, n, 3 * h, -1), 3, axis=2)  # (T, N, h, d)
        tiny = jnp.finfo(f.dtype).tiny
        q = q * jax.lax.rsqrt(jnp.sum(q**2, -1, keepdims=True) + tiny)
        k = k * jax.lax.rsqrt(jnp.sum(k**2, -1, keepdims=True) + tiny)
        tau = jnp.exp(jnp.minimum(self.log_temperature, math.log(100.0)))
        # keys and values of steps t - w .. t + w: (T, 2w + 1, N, h, d); padded steps are masked
        pad = ((w, w), (0, 0), (0, 0), (0, 0))
        k_pad, v_pad = jnp.pad(k, pad), jnp.pad(v, pad)
        k_win = jnp.stack([k_pad[i : i + n_t] for i in range(2 * w + 1)], axis=1)
        v_win = jnp.stack([v_pad[i : i + n_t] for i in range(2 * w + 1)], axis=1)
        steps = jnp.arange(n_t)[:, None] + jnp.arange(-w, w + 1)[None, :]
        valid = (steps >= 0) & (steps < n_t)  # (T, 2w + 1); the centre is always valid

        @jax.checkpoint
        def one_step(args):
            q_t, k_t, v_t, valid_t = args  # (N, h, d), (W, N, h, d), (W, N, h, d), (W,)
            s = jnp.einsum("nhd,wmhd->hnwm", q_t, k_t) * tau[:, None, None, None]
            s = jnp.where(valid_t[None, None, :, None], s, jnp.finfo(s.dtype).min)
            a = jax.nn.softmax(s.reshape(h, n, -1), axis=-1).reshape(s.shape)
            return jnp.einsum("hnwm,wmhd->nhd", a, v_t).reshape(n, -1)

        o = jax.lax.map(one_step, (q, k_win, v_win, valid), batch_size=min(self.time_chunk, n_t))
        return f + linear(self.out, o)


class SpatiotemporalParameteriser(eqx.Module):
    """Encoder-decoder network from gridded climate fields to bounded parameter fields (seed §2.3).

    ``model(variables (V, T, ny, nx), static (S, ny, nx)) -> (P, T, ny, nx)`` in the order of
    ``names`` and in physical units, every value inside ``PARAMETER_BOUNDS`` (or ``bounds``). See
    the module docstring for the architecture. Pass ``key`` for dropout (training, MC dropout);
    without it the network is deterministic.

    Args:
        n_variables: V, dynamic input variables (normalised)
        n_static: S, static fields (S = 0 allowed)
        names: parameters to produce, keys of ``bounds``
        prior: initial value of each parameter (default ``PARAMETER_PRIOR``)
        bounds: ``{name: (lower, upper)}`` (default ``PARAMETER_BOUNDS``); log-space squashing
        options: sizes (:class:`SpatiotemporalOptions`)
        dtype: of the weights (float32 or float64; default: JAX's default float)
    """

    fusion: VariableFusion
    encoder: tuple[eqx.nn.Conv3d, ...]
    gru_forward: eqx.nn.GRUCell
    gru_backward: eqx.nn.GRUCell
    attention: CosineAttention
    decoder: tuple[eqx.nn.ConvTranspose3d, ...]
    hidden: eqx.nn.Linear
    projection: eqx.nn.Linear
    head: BoundedHead
    names: tuple[str, ...] = eqx.field(static=True)
    options: SpatiotemporalOptions = eqx.field(static=True)
    n_variables: int = eqx.field(static=True)
    n_static: int = eqx.field(static=True)
    dropout: float = eqx.field(static=True)

    def __init__(
        self,
        n_variables: int,
        n_static: int,
        names: Sequence[str] = ("Kh", "rs"),
        prior: Mapping[str, float] | None = None,
        bounds: Mapping[str, tuple[float, float]] | None = None,
        options: SpatiotemporalOptions | None = None,
        dtype: Any = None,
        *,
        key: PRNGKeyArray,
    ):
        opt = SpatiotemporalOptions() if options is None else options
        names = tuple(names)
        bounds = {**PARAMETER_BOUNDS, **(bounds or {})}
        prior = {**PARAMETER_PRIOR, **(prior or {})}
        if n_variables < 1 or n_static < 0 or not names:
            raise ValueError(
                f"SpatiotemporalParameteriser: need n_variables >= 1, n_static >= 0 and at least one "
                f"name; got {n_variables}, {n_static}, {names}"
            )
        missing = [n for n in names if n not in bounds or n not in prior]
        if missing:
            raise ValueError(f"SpatiotemporalParameteriser: no bounds or prior for {missing}; give them")
        outside = [n for n in names if not bounds[n][0] < prior[n] < bounds[n][1]]
        if outside:
            raise ValueError(
                f"SpatiotemporalParameteriser: prior outside the bounds for {outside}: "
                + ", ".join(f"{n}={prior[n]} not in {bounds[n]}" for n in outside)
            )
        dtype = float_dtype(dtype)
        fusion_key, key = jax.random.split(key)
        self.fusion = VariableFusion(n_variables, opt.embed_size, dtype, key=fusion_key)

        # every other weight from one random draw
        draws = _Draws()
        n_layers = len(opt.encoder_channels)
        enc_in = [opt.embed_size + n_static, *opt.encoder_channels[:-1]]
        enc_specs = []
        for c_in, c_out in zip(enc_in, opt.encoder_channels):
            # He-uniform: Equinox's default (U(+-1/sqrt(fan_in))) shrinks the signal ~3x per layer,
            # which left the latent field (and so the Bi-GRU and attention) near zero at the start
            fan_in = c_in * math.prod(ENCODER_KERNEL)
            enc_specs.append((draws.add((c_out, c_in, *ENCODER_KERNEL), math.sqrt(6.0 / fan_in)),
                              draws.add((c_out, 1, 1, 1), 1.0 / math.sqrt(fan_in))))  # fmt: skip
        hg, c_lat = opt.gru_hidden, opt.encoder_channels[-1]
        gru_specs = []
        for _ in range(2):
            lim = 1.0 / math.sqrt(hg)
            gru_specs.append(tuple(draws.add(s, lim) for s in ((3 * hg, c_lat), (3 * hg, hg), (3 * hg,), (hg,))))
        att_specs = [draws.add(s, lim) for s, lim in CosineAttention.specs(2 * hg, opt.attention_size)]
        # decoder layer j undoes encoder layer L-1-j; after the first it also sees that layer's input
        dec_strides = opt.spatial_strides[::-1]
        dec_in = [2 * hg] + [opt.decoder_channels[j - 1] + opt.encoder_channels[n_layers - 1 - j]
                             for j in range(1, n_layers)]  # fmt: skip
        dec_specs = []
        for c_in, c_out in zip(dec_in, opt.decoder_channels):
            # amplitude of a 1x1 channel mix (He-uniform); the Gaussian, of unit gain, carries space
            dec_specs.append((draws.add((c_out, c_in), math.sqrt(6.0 / c_in)),
                              draws.add((c_out, c_in, *DECODER_KERNEL), 1.0),
                              draws.add((c_out, 1, 1, 1), 1.0 / math.sqrt(c_in * math.prod(DECODER_KERNEL)))))
        out_in = opt.decoder_channels[-1] + opt.embed_size + n_static
        hidden_specs = (draws.add((opt.head_width, out_in), 1.0 / math.sqrt(out_in)),
                        draws.add((opt.head_width,), 1.0 / math.sqrt(out_in)))  # fmt: skip
        proj_spec = draws.add((len(names), opt.head_width), opt.output_weight_scale / math.sqrt(opt.head_width))
        arr = draws.draw(key, dtype)

        key0 = jax.random.key(0)  # only traced by _filled
        self.encoder = tuple(
            _filled(lambda c_in=c_in, c_out=c_out, s=s: eqx.nn.Conv3d(
                c_in, c_out, ENCODER_KERNEL, stride=(1, s, s), padding=tuple(k // 2 for k in ENCODER_KERNEL),
                dtype=dtype, key=key0), ("weight", "bias"), [arr[i] for i in idx])
            for idx, c_in, c_out, s in zip(enc_specs, enc_in, opt.encoder_channels, opt.spatial_strides)
        )  # fmt: skip
        self.gru_forward, self.gru_backward = (
            _filled(lambda: eqx.nn.GRUCell(c_lat, hg, dtype=dtype, key=key0),
                    ("weight_ih", "weight_hh", "bias", "bias_n"), [arr[i] for i in idx])
            for idx in gru_specs
        )  # fmt: skip
        self.attention = CosineAttention(
            2 * hg, opt.attention_size, opt.attention_heads, opt.attention_window, opt.attention_time_chunk,
            opt.attention_temperature, arrays=[arr[i] for i in att_specs], dtype=dtype,
        )  # fmt: skip
        decoder = []
        for (amp, noise, b), c_in, c_out, s in zip(dec_specs, dec_in, opt.decoder_channels, dec_strides):
            profile = gaussian_profile(DECODER_KERNEL[-1], opt.gaussian_sigma, gain=s * s)[None]  # (1, 5, 5)
            # per (out, in) channel pair: amplitude x (Gaussian + noise relative to its peak)
            weight = arr[amp][:, :, None, None, None] * (profile + opt.gaussian_noise * profile.max() * arr[noise])
            decoder.append(_filled(lambda c_in=c_in, c_out=c_out, s=s: eqx.nn.ConvTranspose3d(
                c_in, c_out, DECODER_KERNEL, stride=(1, s, s), padding=tuple(k // 2 for k in DECODER_KERNEL),
                output_padding=(0, s - 1, s - 1), dtype=dtype, key=key0),
                ("weight", "bias"), [weight.astype(dtype), arr[b]]))  # fmt: skip
        self.decoder = tuple(decoder)
        self.hidden = _filled(lambda: eqx.nn.Linear(out_in, opt.head_width, dtype=dtype, key=key0),
                              ("weight", "bias"), [arr[i] for i in hidden_specs])  # fmt: skip
        self.head = BoundedHead([bounds[n][0] for n in names], [bounds[n][1] for n in names],
                                log_space="auto", dtype=dtype)  # fmt: skip  (log for K_h, r_s; linear for fluxes)
        bias = self.head.inverse(jnp.asarray([prior[n] for n in names], dtype))
        self.projection = _filled(lambda: eqx.nn.Linear(opt.head_width, len(names), dtype=dtype, key=key0),
                                  ("weight", "bias"), [arr[proj_spec], bias])  # fmt: skip

        self.names = names
        self.options = opt
        self.n_variables = n_variables
        self.n_static = n_static
        self.dropout = opt.dropout

    def variable_weights(self) -> Float[Array, " V"]:
        """The fusion weights omega of the dynamic variables (sum 1)."""
        return self.fusion.weights()

    def _bigru(self, z: Float[Array, "T N C"]) -> Float[Array, "T N 2H"]:
        h0 = jnp.zeros((z.shape[1], self.options.gru_hidden), z.dtype)

        def run(cell):
            def step(h, x_t):
                h = jax.vmap(cell)(x_t, h)
                return h, h

            return step

        _, forward = jax.lax.scan(run(self.gru_forward), h0, z)
        _, backward = jax.lax.scan(run(self.gru_backward), h0, z, reverse=True)
        return jnp.concatenate([forward, backward], axis=-1)

    def __call__(
        self,
        variables: Float[ArrayLike, "V T ny nx"],
        static: Float[ArrayLike, "S ny nx"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "P T ny nx"]:
        dtype = self.projection.weight.dtype
        x = jnp.asarray(variables, dtype)
        s = jnp.asarray(static, dtype)
        if x.ndim != 4 or x.shape[0] != self.n_variables or min(x.shape) < 1:
            raise ValueError(f"expected variables ({self.n_variables}, T, ny, nx), got shape {x.shape}")
        if s.shape != (self.n_static, *x.shape[2:]):
            raise ValueError(f"expected static ({self.n_static}, {x.shape[2]}, {x.shape[3]}), got shape {s.shape}")
        opt = self.options
        act = activation_fn(opt.activation)
        n_layers = len(self.encoder)
        _, n_t, ny, nx = x.shape
        grids = [(ny, nx)]  # of the input of each encoder layer, then the latent grid
        for st in opt.spatial_strides:
            grids.append((-(-grids[-1][0] // st), -(-grids[-1][1] // st)))
        if key is None or self.dropout == 0.0:
            keep = [None] * (2 * n_layers)
        else:  # the outputs of the encoder layers, then of the decoder layers
            shapes = [(c, n_t, *g) for c, g in zip(opt.encoder_channels, grids[1:])]
            shapes += [(c, n_t, *g) for c, g in zip(opt.decoder_channels, grids[-2::-1])]
            keep = _keep_masks(key, self.dropout, shapes)

        x0 = jnp.concatenate([self.fusion(x), jnp.broadcast_to(s[:, None], (s.shape[0], n_t, ny, nx))])
        features = [x0]  # the input of every encoder layer, then the latent field
        for conv, k in zip(self.encoder, keep[:n_layers]):
            features.append(_dropout(act(_downsample(conv, features[-1])), k, self.dropout))
        latent = features[-1]
        c, _, my, mx = latent.shape
        g = self._bigru(latent.reshape(c, n_t, my * mx).transpose(1, 2, 0))  # (T, N, 2H)
        g = self.attention(g)
        d = g.transpose(2, 0, 1).reshape(-1, n_t, my, mx)
        for j, (deconv, k) in enumerate(zip(self.decoder, keep[n_layers:])):
            if j:
                d = jnp.concatenate([d, features[n_layers - j]])
            ty, tx = grids[n_layers - 1 - j]
            d = _upsample(deconv, d)[:, :, :ty, :tx]  # s n >= the encoder input: crop the end
            d = _dropout(act(d), k, self.dropout)
        u = jnp.moveaxis(jnp.concatenate([d, x0]), 0, -1)  # (T, ny, nx, C)
        raw = linear(self.projection, act(linear(self.hidden, u)))
        return jnp.moveaxis(self.head(raw), -1, 0)

    def fields(
        self, variables: Float[ArrayLike, "V T ny nx"], static: Float[ArrayLike, "S ny nx"], *,
        key: PRNGKeyArray | None = None,
    ) -> dict[str, Float[Array, "T ny nx"]]:  # fmt: skip
        """The output as ``{name: (T, ny, nx)}``."""
        out = self(variables, static, key=key)
        return {n: out[i] for i, n in enumerate(self.names)}
