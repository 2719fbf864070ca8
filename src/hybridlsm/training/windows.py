"""Training data of the rollout models: records, windows and batches (NumPy, then JAX).

A :class:`SiteRecord` is one column's record as arrays (N = 1): forcing, default parameters, an
initial state, targets and masks. Windows of several records are stacked on the model's column
axis N, so one compiled rollout trains on all of them at once. Windows and batches are assembled
in NumPy: eager ``jax.numpy`` ops would each compile once per shape, which costs more than the
training steps on a small CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from hybridlsm.data.schema import DataError
from hybridlsm.training.sharding import pad_to_devices, shard_columns

__all__ = ["COLUMN_AXIS", "SiteRecord", "batches_of", "concat_trees", "make_windows", "record_windows", "state_at",
           "top_up"]

STATE_OUTPUTS = ("SoilTemp", "SoilMoist", "SWE", "GWS")


@dataclass
class SiteRecord:
    """One column prepared for the rollout models (N = 1).

    ``trajectory``: the states (and fluxes) of a continuous rollout over the record, (T, ...), from
    which windows take their initial states (``state_at``)."""

    site: str
    forcing: Any
    base: dict
    state0: Any
    obs: np.ndarray  # (T, K)
    mask: np.ndarray  # (T, K)
    rnet: np.ndarray  # (T,)
    qg: np.ndarray  # (T,)
    split_mask: np.ndarray | None = None  # (T,) the domain's loss_mask (steps of its split)
    trajectory: dict | None = None
    igbp: str = ""


def concat_trees(trees: Sequence[Any], axis: int):
    return jax.tree_util.tree_map(lambda *a: np.concatenate([np.asarray(x) for x in a], axis=axis), *trees)


def state_at(rec: SiteRecord, index: int, state_type: Callable) -> Any:
    """The trajectory's state at the start of step ``index`` (N = 1), as NumPy arrays;
    ``state_type(soil_temp, soil_water, snow, groundwater)`` builds it."""
    if index == 0:
        return jax.tree_util.tree_map(np.asarray, rec.state0)
    s = rec.trajectory
    return state_type(s["SoilTemp"][index - 1], s["SoilMoist"][index - 1], s["SWE"][index - 1], s["GWS"][index - 1])


def _default_weights(records: Sequence[SiteRecord], weights) -> list[np.ndarray]:
    if weights is None:
        return [np.ones(rec.obs.shape[-1]) for rec in records]
    if len(weights) != len(records):
        raise ValueError(f"{len(weights)} weights for {len(records)} records")
    return [np.asarray(w, float) for w in weights]


def make_windows(records: Sequence[SiteRecord], spin: int, length: int, state_type: Callable,
                 weights: Sequence[np.ndarray] | None = None) -> dict:
    """All training windows of all records stacked on the column axis: forcing (L, W), state0
    (W, ...), base (W,), obs/mask (L, W, K), rnet/qg (L, W), weight (W, K) (each window's record's
    ``weights`` entry, default 1). Windows without a usable target are skipped."""
    total = spin + length
    parts = []
    weights = _default_weights(records, weights)
    for rec, weight in zip(records, weights):
        n = rec.forcing.n_steps
        for start in range(0, max(n - total, 0) + 1, length):
            stop = start + total
            if stop > n:
                break
            m = rec.mask[start:stop].copy()
            m[:spin] = False
            if m.any():
                parts.append((rec, start, stop, m, weight))
    if not parts:
        longest = max((rec.forcing.n_steps for rec in records), default=0)
        if longest < total:
            raise DataError(f"no training window fits: data.spinup_days and data.window_days give {spin} + {length} "
                            f"steps, more than the longest training record ({longest} steps); shorten "
                            "data.window_days")  # fmt: skip
        raise DataError("no training window with a usable target value (check data.max_qc, data.split and "
                        "data.window_days)")
    forcing = concat_trees([jax.tree_util.tree_map(lambda a, s=s, e=e: np.asarray(a)[s:e], r.forcing)
                            for r, s, e, *_ in parts], axis=1)  # fmt: skip
    return {
        "forcing": forcing,
        "state0": concat_trees([state_at(r, s, state_type) for r, s, *_ in parts], axis=0),
        "base": concat_trees([r.base for r, *_ in parts], axis=0),
        "obs": np.stack([r.obs[s:e] for r, s, e, *_ in parts], axis=1),
        "mask": np.stack([p[3] for p in parts], axis=1),
        "rnet": np.stack([r.rnet[s:e] for r, s, e, *_ in parts], axis=1),
        "qg": np.stack([r.qg[s:e] for r, s, e, *_ in parts], axis=1),
        "weight": np.stack([p[4] for p in parts], axis=0),
    }


def record_windows(records: Sequence[SiteRecord], state0s: Sequence[Any], periods: Sequence[int],
                   weights: Sequence[np.ndarray] | None = None) -> dict:
    """Every record as one window (the ``make_windows`` layout, W = number of records).

    Each window starts from its ``state0s`` entry (the model's spun-up state) and first repeats the
    record's first ``periods`` steps (its spin-up cycle) without loss, then runs the record with its
    mask up to its last step with a target (later steps cannot change the loss); the gradient thus
    reaches the state at the record's start through one cycle. Shorter windows are padded at the
    end by repeating their last step, with the mask cleared."""
    parts = []
    for rec, state0, period in zip(records, state0s, periods):
        used = np.flatnonzero(rec.mask.any(axis=-1))
        stop = int(used[-1]) + 1 if used.size else 1
        idx = np.concatenate([np.arange(period), np.arange(stop)])

        def pad(a, fill, period=period, stop=stop):
            return np.concatenate([np.full((period,) + a.shape[1:], fill, a.dtype), a[:stop]])

        parts.append((rec, idx, jax.tree_util.tree_map(np.asarray, state0), pad(rec.obs, np.nan),
                      pad(rec.mask, False), pad(rec.rnet, np.nan), pad(rec.qg, np.nan)))  # fmt: skip
    length = max(len(p[1]) for p in parts)

    def extend(a, fill=None):  # to the common length: repeat the last step, or ``fill``
        tail = np.repeat(a[-1:], length - len(a), axis=0) if fill is None else \
            np.full((length - len(a),) + a.shape[1:], fill, a.dtype)
        return np.concatenate([a, tail])

    return {
        "forcing": concat_trees([jax.tree_util.tree_map(lambda a, i=idx: extend(np.asarray(a)[i]), r.forcing)
                                 for r, idx, *_ in parts], axis=1),  # fmt: skip
        "state0": concat_trees([p[2] for p in parts], axis=0),
        "base": concat_trees([p[0].base for p in parts], axis=0),
        "obs": np.stack([extend(p[3], np.nan) for p in parts], axis=1),
        "mask": np.stack([extend(p[4], False) for p in parts], axis=1),
        "rnet": np.stack([extend(p[5], np.nan) for p in parts], axis=1),
        "qg": np.stack([extend(p[6], np.nan) for p in parts], axis=1),
        "weight": np.stack(_default_weights(records, weights), axis=0),
    }


#: the column axis of each array of a batch (``make_windows`` layout): what ``batches_of`` splits
#: over devices
COLUMN_AXIS = {"forcing": 1, "state0": 0, "base": 0, "obs": 1, "mask": 1, "rnet": 1, "qg": 1, "weight": 0}


def top_up(windows: dict, n: int) -> dict:
    """``windows`` topped up to ``n`` windows with repeated ones whose loss mask is cleared."""
    have = windows["obs"].shape[1]
    if have >= n:
        return windows
    idx = np.resize(np.arange(have), n)
    out = {k: jax.tree_util.tree_map(lambda a, ax=COLUMN_AXIS[k]: np.take(np.asarray(a), idx, axis=ax), v)
           for k, v in windows.items()}  # fmt: skip
    out["mask"][:, have:] = False
    return out


def batches_of(windows: dict, batch_size: int, mesh: Mesh | None = None) -> Callable:
    """``key -> list of batches``: windows shuffled and cut into fixed-size batches (the last batch
    is topped up with repeated windows whose loss mask is cleared, so shapes never change).

    With a ``mesh`` (``training.sharding.cell_mesh``) every array is split over the devices along
    its column axis (``COLUMN_AXIS``); each batch (the same windows as on one device) is topped up
    to a multiple of the device count with repeated windows whose loss mask is cleared."""
    n = windows["obs"].shape[1]
    step = min(batch_size, n)  # windows per batch, as on one device
    size = pad_to_devices(step, mesh)  # columns per batch array
    dtype = jnp.zeros(0).dtype

    def place(a, axis):
        a = np.asarray(a)
        if np.issubdtype(a.dtype, np.floating):
            a = a.astype(dtype)
        return jnp.asarray(a) if mesh is None else shard_columns(a, mesh, axis)

    def select(idx, valid):
        b = {
            "forcing": jax.tree_util.tree_map(lambda a: a[:, idx], windows["forcing"]),
            "state0": jax.tree_util.tree_map(lambda a: a[idx], windows["state0"]),
            "base": {k: v[idx] for k, v in windows["base"].items()},
        }
        for k in ("obs", "rnet", "qg"):
            b[k] = windows[k][:, idx]
        b["weight"] = windows["weight"][idx]
        b["mask"] = windows["mask"][:, idx] & valid[None, :, None]
        return {k: jax.tree_util.tree_map(lambda a, ax=COLUMN_AXIS[k]: place(a, ax), v) for k, v in b.items()}

    def make(key):
        order = np.asarray(jax.random.permutation(key, n))
        out = []
        for i in range(0, n, step):
            idx = order[i : i + step]
            valid = np.ones(size, bool)
            if idx.size < size:
                valid[idx.size :] = False
                idx = np.concatenate([idx, np.resize(order, size - idx.size)])
            out.append(select(idx, valid))
        return out

    return make
