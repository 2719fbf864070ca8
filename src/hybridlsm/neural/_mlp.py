"""Multi-layer perceptron with stored input normalisation and optional (MC) dropout."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from hybridlsm.neural._common import activation_fn, check_rate, dropout, linear, linear_layers
from hybridlsm.neural._normaliser import Normaliser, input_normaliser

__all__ = ["MLP"]


class MLP(eqx.Module):
    """Feed-forward network ``in_size -> width_size x depth -> out_size``.

    Inputs are standardised with the stored, non-trainable :class:`Normaliser` (``mean``/``std``),
    then pass through ``depth`` hidden layers with the chosen activation (``"silu"`` or ``"tanh"``;
    ``"relu"``, ``"gelu"`` also accepted) and a linear output layer. The network maps the last axis
    and broadcasts over any leading axes, e.g. ``(N, in)`` for N sites or ``(T, N, in)``.

    Dropout (rate ``dropout``) is applied after every hidden activation **only when a key is
    passed**: pass a key while training, and also at inference for Monte-Carlo dropout; call
    without a key for the deterministic network.
    """

    normaliser: Normaliser
    layers: tuple[eqx.nn.Linear, ...]
    activation: str = eqx.field(static=True)
    dropout: float = eqx.field(static=True)
    in_size: int = eqx.field(static=True)
    out_size: int = eqx.field(static=True)

    def __init__(
        self,
        in_size: int,
        out_size: int,
        width_size: int = 64,
        depth: int = 2,
        activation: str = "silu",
        dropout: float = 0.0,
        mean: ArrayLike | None = None,
        std: ArrayLike | None = None,
        dtype: Any = None,
        *,
        key: PRNGKeyArray,
    ):
        activation_fn(activation)  # validates the name
        if in_size < 1 or out_size < 1 or width_size < 1 or depth < 0:
            raise ValueError(
                f"MLP: need in_size, out_size, width_size >= 1 and depth >= 0; got "
                f"{in_size}, {out_size}, {width_size}, {depth}"
            )
        sizes = [in_size] + [width_size] * depth + [out_size]
        self.layers = linear_layers(sizes, dtype, key)
        dtype = self.layers[0].weight.dtype
        self.normaliser = input_normaliser("MLP", in_size, mean, std, dtype)
        self.activation = activation
        self.dropout = check_rate("MLP dropout", dropout)
        self.in_size = in_size
        self.out_size = out_size

    def __call__(
        self, x: Float[Array, "... in_size"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "... out_size"]:
        act = activation_fn(self.activation)
        h = self.normaliser(x)
        keys = (None,) * len(self.layers) if key is None else tuple(jax.random.split(key, len(self.layers)))
        for layer, k in zip(self.layers[:-1], keys[:-1]):
            h = dropout(act(linear(layer, h)), self.dropout, k)
        return linear(self.layers[-1], h)

    def with_normalisation(self, mean: ArrayLike, std: ArrayLike) -> "MLP":
        """A copy whose stored input statistics are ``mean`` and ``std``."""
        dtype = self.layers[0].weight.dtype
        return eqx.tree_at(lambda m: m.normaliser, self, Normaliser(mean, std, dtype=dtype))
