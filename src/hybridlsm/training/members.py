"""Ensemble members stacked on a leading member axis, so that one vmapped update trains them all
(``trainer.fit(..., members=M)``), as in Equinox's ensembles example.

Members are built one by one (each by its model's own ``build``, with its own seed) and their arrays
stacked: the stacked model's every array leaf has a leading axis of M, its static structure is the
members' common one. Stacking members built by the sequential path keeps each member's
initialisation identical to the one the member would train from alone.
"""

from __future__ import annotations

import os

from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["as_member_array", "available_memory", "member_keys", "member_of", "select_members", "stack_batches",
           "stack_members", "unstack_members"]


def stack_members(models: Sequence[Any]) -> Any:
    """The members' array leaves stacked on a new leading axis (every member must have the same
    structure: same options but the seed)."""
    arrays = [eqx.filter(m, eqx.is_array) for m in models]
    _, static = eqx.partition(models[0], eqx.is_array)
    return eqx.combine(jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *arrays), static)


def member_of(stacked: Any, k: int) -> Any:
    """Member ``k`` of a stacked model (or of any tree stacked on its array leaves)."""
    return jax.tree_util.tree_map(lambda x: x[k] if eqx.is_array(x) else x, stacked)


def unstack_members(stacked: Any, n: int) -> list:
    return [member_of(stacked, k) for k in range(n)]


def stack_batches(member_batches: Sequence[Callable]) -> Callable:
    """``keys (M,) -> list of batches stacked on the member axis`` from each member's own
    ``key -> list of batches`` (``windows.batches_of``): member k's batches, in the order its own key
    draws, are exactly those it would train on alone. Every member must give as many batches."""

    def make(keys) -> list:
        per_member = [batches(keys[k]) for k, batches in enumerate(member_batches)]
        counts = {len(b) for b in per_member}
        if len(counts) != 1:
            raise ValueError(f"members give different numbers of batches per epoch: {sorted(counts)}")
        return [jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *batch) for batch in zip(*per_member)]

    return make


def select_members(take, new, old):
    """``new`` where ``take``: the whole tree for one model (``take`` a scalar), per member (along
    the leading axis) for stacked members."""
    take = np.asarray(take)
    if take.ndim == 0:
        return new if take else old
    mask = jnp.asarray(take)
    return jax.tree_util.tree_map(lambda a, b: jnp.where(mask.reshape((-1,) + (1,) * (a.ndim - 1)), a, b), new, old)


def available_memory() -> int:
    """Bytes free on the default device: the accelerator's free memory, or the host's available RAM."""
    stats = jax.devices()[0].memory_stats()
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def member_keys(seed: int, n: int):
    """Member k's PRNG key is that of seed ``seed + k``: the key a sequential ensemble's member k
    trains with."""
    return jnp.stack([jax.random.key(seed + k) for k in range(n)])


def as_member_array(x: Any, n: int) -> np.ndarray:
    """A per-member counter (a scalar broadcast to every member, or a checkpoint's list) as (n,)."""
    return np.broadcast_to(np.asarray(x), (n,)).copy()
