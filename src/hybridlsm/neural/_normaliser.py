"""Non-trainable leaves: input/output normalisation statistics and the trainable-leaf filter.

A module that subclasses :class:`NonTrainable` holds arrays that must never be updated by an
optimiser (normalisation statistics, bounds taken from the physics parameter table). Its arrays are
still ordinary PyTree leaves, so they are saved by ``eqx.tree_serialise_leaves`` with the rest of the
model, but :func:`trainable_filter` marks them ``False`` so that ``eqx.partition`` keeps them out of
the optimiser (no gradient step, no weight decay). The forward pass additionally wraps them in
``jax.lax.stop_gradient`` so that they stay constant even under a hand-written filter.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

__all__ = ["NonTrainable", "Normaliser", "trainable_filter"]


def _concrete(x: Any) -> bool:
    """Whether ``x`` holds values (False for tracers inside jit/vmap)."""
    try:
        np.asarray(x)
    except Exception:  # a tracer cannot be turned into a NumPy array
        return False
    return True


class NonTrainable(eqx.Module):
    """Marker base class: every array inside a subclass is excluded by :func:`trainable_filter`."""


def trainable_filter(model: Any) -> Any:
    """Filter spec (a PyTree of bools) selecting the leaves that train.

    ``True`` for every inexact (floating) array, ``False`` for everything else and for every leaf
    inside a :class:`NonTrainable` sub-module. Use with ``eqx.partition(model, trainable_filter(model))``.
    """

    def mark(node: Any) -> Any:
        if isinstance(node, NonTrainable):
            return jax.tree_util.tree_map(lambda _: False, node)
        return eqx.is_inexact_array(node)

    return jax.tree_util.tree_map(mark, model, is_leaf=lambda n: isinstance(n, NonTrainable))


class Normaliser(NonTrainable):
    """Affine standardisation ``(x - mean) / std`` over the last axis, with stored statistics.

    ``mean`` and ``std`` have shape ``(features,)``; they are non-trainable leaves.
    """

    mean: Float[Array, " features"]
    std: Float[Array, " features"]

    def __init__(self, mean: ArrayLike, std: ArrayLike, dtype: Any = None):
        mean = jnp.asarray(mean, dtype=dtype)
        std = jnp.asarray(std, dtype=dtype)
        if mean.ndim != 1 or mean.shape != std.shape:
            raise ValueError(
                f"Normaliser: mean and std must be 1-D of equal shape, got {mean.shape} and {std.shape}"
            )
        if _concrete(mean) and _concrete(std) and not (
            np.all(np.isfinite(np.asarray(mean))) and np.all(np.asarray(std) > 0)
        ):
            raise ValueError(
                "Normaliser: mean must be finite and std strictly positive; "
                f"got mean={np.asarray(mean).tolist()}, std={np.asarray(std).tolist()}"
            )
        self.mean = mean
        self.std = std

    @classmethod
    def identity(cls, features: int, dtype: Any = None) -> "Normaliser":
        """Statistics that leave inputs unchanged (mean 0, std 1)."""
        return cls(jnp.zeros(features), jnp.ones(features), dtype=dtype)

    @classmethod
    def from_data(cls, x: ArrayLike, min_std: float = 1e-6, dtype: Any = None) -> "Normaliser":
        """NaN-aware statistics of ``x`` with shape ``(..., features)`` over all leading axes.

        A feature whose standard deviation is below ``min_std`` (constant, e.g. a pressure that was
        filled with one value) gets std 1, so it is centred but not inflated. A feature with no
        finite value is an error.
        """
        x = np.asarray(x, dtype=np.float64)
        flat = x.reshape(-1, x.shape[-1])
        finite = np.isfinite(flat)
        empty = np.flatnonzero(~finite.any(axis=0))
        if empty.size:
            raise ValueError(f"Normaliser.from_data: feature(s) {empty.tolist()} have no finite value")
        mean = np.nanmean(flat, axis=0)
        std = np.nanstd(flat, axis=0)
        std = np.where(std < min_std, 1.0, std)
        return cls(mean, std, dtype=dtype)

    @property
    def features(self) -> int:
        return int(self.mean.shape[0])

    def __call__(self, x: Float[Array, "... features"]) -> Float[Array, "... features"]:
        """Standardise: ``(x - mean) / std``."""
        mean = jax.lax.stop_gradient(self.mean)
        std = jax.lax.stop_gradient(self.std)
        return (x - mean) / std

    def inverse(self, z: Float[Array, "... features"]) -> Float[Array, "... features"]:
        """Undo the standardisation: ``z * std + mean``."""
        mean = jax.lax.stop_gradient(self.mean)
        std = jax.lax.stop_gradient(self.std)
        return z * std + mean


def input_normaliser(owner: str, in_size: int, mean, std, dtype) -> "Normaliser":
    """The stored input statistics of a network: identity when neither ``mean`` nor ``std`` is
    given, otherwise those (a missing one defaults to 0 or 1); checked against ``in_size``."""
    if mean is None and std is None:
        norm = Normaliser.identity(in_size, dtype=dtype)
    else:
        mean = np.zeros(in_size) if mean is None else mean
        std = np.ones(in_size) if std is None else std
        norm = Normaliser(mean, std, dtype=dtype)
    if norm.features != in_size:
        raise ValueError(f"{owner}: normalisation has {norm.features} features, in_size is {in_size}")
    return norm
