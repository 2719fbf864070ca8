"""Small shared helpers: activations, dropout, applying a Linear to any leading shape."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "silu": jax.nn.silu,
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
}


def activation_fn(name: str) -> Callable[[Array], Array]:
    """The activation called ``name``; an unknown name is an error listing the allowed ones."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; allowed: {', '.join(sorted(ACTIVATIONS))}"
        ) from None


def check_rate(name: str, rate: float) -> float:
    rate = float(rate)
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {rate}")
    return rate


def linear(layer: eqx.nn.Linear, x: Array) -> Array:
    """``layer`` applied over the last axis of ``x`` (any leading shape)."""
    y = x @ layer.weight.T
    if layer.bias is not None:
        y = y + layer.bias
    return y


def dropout(x: Array, rate: float, key: PRNGKeyArray | None) -> Array:
    """Inverted dropout; active only when a key is given and ``rate > 0`` (MC dropout at inference)."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def float_dtype(dtype: Any = None) -> Any:
    """``dtype``, or the default floating dtype (float64 when x64 is enabled, else float32)."""
    return jnp.zeros((), dtype=float if dtype is None else dtype).dtype


def uniform_tensors(
    key: PRNGKeyArray, specs: Sequence[tuple[tuple[int, ...], float]], dtype: Any
) -> list[np.ndarray]:
    """NumPy tensors ``U(-lim, lim)`` of the given shapes and ``dtype`` from **one** random draw.

    Equivalent in distribution to Equinox's default initialisation, but one random call (one
    compilation) for a whole network instead of one per parameter shape.
    """
    sizes = [math.prod(shape) for shape, _ in specs]
    u = np.asarray(jax.random.uniform(key, (sum(sizes),), dtype=dtype, minval=-1.0, maxval=1.0))
    out, offset = [], 0
    for (shape, lim), n in zip(specs, sizes):
        out.append((u[offset : offset + n].reshape(shape) * lim).astype(dtype))
        offset += n
    return out


def linear_layers(sizes: Sequence[int], dtype: Any, key: PRNGKeyArray) -> tuple[eqx.nn.Linear, ...]:
    """``eqx.nn.Linear`` layers ``sizes[i] -> sizes[i+1]`` with Equinox's default init distribution."""
    dtype = float_dtype(dtype)
    pairs = list(zip(sizes[:-1], sizes[1:]))
    specs = []
    for a, b in pairs:
        lim = 1.0 / math.sqrt(a)
        specs += [((b, a), lim), ((b,), lim)]
    arrays = uniform_tensors(key, specs, dtype)
    layers = []
    for i, (a, b) in enumerate(pairs):
        shape = eqx.filter_eval_shape(lambda a=a, b=b: eqx.nn.Linear(a, b, dtype=dtype, key=jax.random.key(0)))
        params = (jnp.asarray(arrays[2 * i]), jnp.asarray(arrays[2 * i + 1]))
        layers.append(eqx.tree_at(lambda l: (l.weight, l.bias), shape, params))
    return tuple(layers)
