"""``hybridlsm devices``: the devices JAX sees, and a check that training split over them gives what
one device gives.

The check builds a small ``hybrid_param`` model on a virtual site, cuts training windows, and takes
the loss and gradient of one batch twice: on one device (plain arrays) and split over the mesh of
``training.devices`` (``training.sharding``: the batch's columns split, parameters replicated). It
then trains one epoch of one update on the split batch with the trainer (``training.fit``). It reports the largest differences, how each
batch array was split, and the updated loss, as JSON. Under ``jax.distributed`` (``--coordinator``)
every process runs the same check; the mesh then spans the processes, and each process holds only
its own devices' shards.

Used by ``tests/test_sharding.py`` (4 forced CPU devices; two processes on the loopback address)
and ``benchmarks/scaling.py``; on a cluster, run it once per process before a long job.
"""

from __future__ import annotations

from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["ShardingCheck", "check_sharding", "describe_devices"]

CHECK_TARGETS = ("Qle", "Qh")


@dataclass(frozen=True)
class ShardingCheck:
    """What ``check_sharding`` measured (see the module docstring)."""

    n_devices: int
    n_processes: int
    batch_columns: int
    loss_single: float
    loss_sharded: float
    max_abs_diff_loss: float
    max_abs_diff_grad: float
    max_abs_grad: float
    shard_columns: dict[str, list[int]]  # batch array -> columns of each addressable shard
    loss_after_update: float


def describe_devices() -> dict:
    """The backend, the devices JAX sees (all processes), this process's own, and the processes."""
    return {"backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
            "local_devices": [str(d) for d in jax.local_devices()], "process_index": jax.process_index(),
            "process_count": jax.process_count()}  # fmt: skip


def _problem(n_windows: int):
    """A hybrid_param model, its loss function and the training windows of a 12-day virtual site."""
    from .data.virtual import virtual_site
    from .domain import domain_from_site
    from .models import column, column_fit
    from .models.registry import get_model, validate_options
    from .physics import LaDState
    from .training import losses, windows

    domain = domain_from_site(virtual_site(site_id="CHK-GRA", days=12, seed=5, noise=5.0, latitude=35.0,
                                           longitude=-100.0))  # fmt: skip
    model = get_model("hybrid_param").build(validate_options("hybrid_param", {"width": 8}))
    rec = column.prepare_site(domain.column(0), CHECK_TARGETS, 3)
    rec = column.with_model_trajectory(model, rec)
    wins = windows.make_windows([rec], 48, 48, LaDState)
    if wins["obs"].shape[1] < n_windows:
        raise ValueError(f"the check site gives {wins['obs'].shape[1]} windows, fewer than {n_windows}")
    loss_fn = column_fit.make_loss(CHECK_TARGETS, losses.target_scale([rec]))
    return model, loss_fn, wins


def check_sharding(devices: int | None = None, n_windows: int = 8, lr: float = 1e-3) -> ShardingCheck:
    """Loss and gradient of one batch on one device and split over ``devices`` (None: all), and the
    loss after one training update on the split batch."""
    from .config import TrainConfig
    from .training import fit
    from .training.sharding import cell_mesh, replicate
    from .training.windows import batches_of

    mesh = cell_mesh(devices)
    if mesh is None:
        raise ValueError("check_sharding needs more than one device (on a CPU: XLA_FLAGS="
                         "--xla_force_host_platform_device_count=4 before starting)")
    if n_windows % mesh.size:
        raise ValueError(f"{n_windows} windows do not split over {mesh.size} devices")
    model, loss_fn, wins = _problem(n_windows)
    key = jax.random.key(0)
    weights = {"energy": jnp.float32(0.0), "sparsity": jnp.float32(0.0), "discovery": jnp.float32(0.0)}
    params, static = eqx.partition(model, eqx.is_inexact_array)

    @eqx.filter_jit
    def value_and_grad(p, batch):
        return jax.value_and_grad(lambda q: loss_fn(eqx.combine(q, static), batch, key, weights)[0])(p)

    # the first batch of the same shuffle, on one device and split over the mesh
    single = batches_of(wins, n_windows)(key)[0]
    sharded = batches_of(wins, n_windows, mesh)(key)[0]
    loss_1, grad_1 = value_and_grad(params, single)
    rep = replicate(params, mesh)
    loss_n, grad_n = value_and_grad(rep, sharded)

    def gathered(tree):  # a replicated result: this process's copy of it
        return [np.asarray(a.addressable_shards[0].data) if isinstance(a, jax.Array) else np.asarray(a)
                for a in jax.tree_util.tree_leaves(tree)]  # fmt: skip

    g1, gn = gathered(grad_1), gathered(grad_n)
    cfg = TrainConfig(epochs=1, lr=lr, devices=mesh.size)

    def val_fn(m):
        return float(gathered(value_and_grad(eqx.partition(m, eqx.is_inexact_array)[0], sharded)[0])[0])

    trained = fit(model, loss_fn, [sharded], val_fn, cfg, progress=False)
    cols = {k: [int(s.data.shape[1]) for s in sharded[k].addressable_shards] for k in ("obs", "mask")}
    cols["forcing.t_air"] = [int(s.data.shape[1]) for s in sharded["forcing"].t_air.addressable_shards]
    cols["weight"] = [int(s.data.shape[0]) for s in sharded["weight"].addressable_shards]
    return ShardingCheck(
        n_devices=mesh.size, n_processes=jax.process_count(), batch_columns=int(sharded["obs"].shape[1]),
        loss_single=float(np.asarray(loss_1)), loss_sharded=float(gathered(loss_n)[0]),
        max_abs_diff_loss=float(abs(np.asarray(loss_1) - gathered(loss_n)[0])),
        max_abs_diff_grad=float(max(np.max(np.abs(a - b)) for a, b in zip(g1, gn))),
        max_abs_grad=float(max(np.max(np.abs(a)) for a in g1)),
        shard_columns=cols, loss_after_update=trained.best_val,
    )  # fmt: skip
