"""The column axis over devices: one ``jax.sharding.Mesh`` with a named axis ``"cells"``.

Data parallelism the JAX way (``jax.sharding``, GSPMD): a training batch's arrays are laid out
across the mesh along their column (site, window or grid-cell) axis and the model's parameters are
replicated; ``jax.jit`` then partitions the rollout, the loss and the gradient itself, inserting the
all-reduce of the gradient. The same code runs on one CPU, several GPUs, or several machines once
``jax.distributed`` is initialised (``initialize_distributed``): the mesh then spans every
process's devices and each process supplies only its own devices' shards
(``jax.make_array_from_callback``).

On a CPU, several devices for testing come from
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (set before JAX starts).

Which axis of a batch array is the column axis is the batch producer's knowledge
(``training.windows.batches_of`` declares it per array); this module only places arrays.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from hybridlsm.config import ConfigError

__all__ = ["CELLS", "cell_mesh", "cell_sharding", "initialize_distributed", "on_this_process", "pad_to_devices",
           "replicate", "shard_columns"]

#: name of the mesh axis the columns are split over
CELLS = "cells"


@functools.cache
def _mesh(n_devices: int) -> Mesh:
    devices = jax.devices()
    if n_devices > len(devices):
        raise ConfigError(f"training.devices = {n_devices}, but JAX sees {len(devices)} device(s) "
                         f"({jax.default_backend()}: {', '.join(str(d) for d in devices[:8])}); on a CPU, set "
                         f"XLA_FLAGS=--xla_force_host_platform_device_count={n_devices} before starting, or lower "
                         "training.devices")  # fmt: skip
    return Mesh(np.asarray(devices[:n_devices]), (CELLS,))


def cell_mesh(devices: int | None) -> Mesh | None:
    """The mesh over the first ``devices`` devices (None: all of them, over every process once
    ``jax.distributed`` is initialised); None when that is one device (nothing to split)."""
    n = len(jax.devices()) if devices is None else int(devices)
    if n < 1:
        raise ConfigError(f"training.devices must be at least 1, not {devices}")
    return None if n == 1 else _mesh(n)


def cell_sharding(mesh: Mesh, axis: int, ndim: int) -> NamedSharding:
    """Arrays of ``ndim`` dimensions split over ``mesh`` along ``axis``, whole along the others."""
    spec = [None] * ndim
    spec[axis] = CELLS
    return NamedSharding(mesh, PartitionSpec(*spec))


def pad_to_devices(n: int, mesh: Mesh | None) -> int:
    """The smallest multiple of the mesh's device count that holds ``n`` columns."""
    k = 1 if mesh is None else mesh.size
    return -(-n // k) * k


def shard_columns(array, mesh: Mesh, axis: int) -> jax.Array:
    """A global array from host data, split along ``axis`` (its length a multiple of the device
    count): each process puts only the shards of its own devices (``make_array_from_callback``), so
    the same call serves one process and many."""
    host = np.asarray(array)
    if host.shape[axis] % mesh.size:
        raise ValueError(f"column axis {axis} of an array of shape {host.shape} does not split over "
                         f"{mesh.size} devices; pad it with pad_to_devices")  # fmt: skip
    return jax.make_array_from_callback(host.shape, cell_sharding(mesh, axis, host.ndim), lambda idx: host[idx])


def replicate(tree, mesh: Mesh):
    """Every array leaf of ``tree`` copied whole to every device of ``mesh`` (parameters, optimiser
    state); other leaves are kept as they are."""
    sharding = NamedSharding(mesh, PartitionSpec())

    def put(leaf):
        if isinstance(leaf, jax.Array | np.ndarray):
            host = np.asarray(leaf)
            return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])
        return leaf

    return jax.tree_util.tree_map(put, tree)


def initialize_distributed(coordinator_address: str, num_processes: int, process_id: int,
                           local_device_ids: Sequence[int] | None = None) -> None:
    """Join a multi-process (multi-host) JAX job: ``jax.distributed.initialize`` with the CPU
    collectives JAX ships (gloo) so that CPU processes can all-reduce too. Call it before anything
    else touches JAX; ``cell_mesh(None)`` then spans every process's devices."""
    # before initialize, and without asking for a backend (that would start one too early)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, local_device_ids=local_device_ids)  # fmt: skip


def on_this_process(tree):
    """``tree`` with every array that spans several processes (the replicated parameters a
    ``jax.distributed`` training returns) replaced by this process's copy of it, so that what
    follows (saving, predicting) runs on this process alone, without the others."""

    def local(leaf):
        if not isinstance(leaf, jax.Array) or leaf.is_fully_addressable:
            return leaf
        if not leaf.is_fully_replicated:
            raise ValueError(f"an array of shape {leaf.shape} split over processes ({leaf.sharding}) has no whole "
                             "copy on this process; only replicated arrays (parameters) can be taken")
        return jax.numpy.asarray(np.asarray(leaf.addressable_data(0)))

    return jax.tree_util.tree_map(local, tree)
