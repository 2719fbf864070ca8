"""Generic gradient trainer for every model: calibration of physics parameters and hybrid networks.

One loop serves both (as in JAX-CanVeg): a filter spec chooses which leaves train
(``eqx.partition``); everything else, including :class:`~hybridlsm.neural.NonTrainable`
normalisation statistics and bounds, stays fixed.

- optimiser: AdamW (optax ``scale_by_adam`` + decoupled weight decay) after global-norm clipping;
- learning rate: warm-up, then cosine decay ``lr -> min_lr`` (or constant); in two-phase training
  constant in phase 1 and cosine over phase 2; halved by each rejected update and doubled back
  (up to its setting) after ``LR_RECOVERY_UPDATES`` accepted updates in a row, so that a rare bad
  window costs a little speed, not the rest of the run;
- early stopping on ``val_fn`` with ``patience``; the best model is kept and returned;
- two-phase schedule: phase 1 supervised (physics weights 0); phase 2 starts from the best phase-1
  model with a fresh optimiser state and fresh early-stopping bookkeeping, and the physics weights
  ramp linearly per epoch (``TwoPhaseConfig``); the current weights dict is passed to ``loss_fn``.
  Patience running out in phase 1 ends phase 1 early (phase 2 still runs);
- physical-validity hook ``validity_fn(model) -> (ok, message)`` after each update: a failed check
  (or a non-finite loss or parameter) rolls the update back and halves the learning rate; every
  rejection is recorded in the epoch's history entry;
- training that cannot recover or learned nothing raises :class:`TrainingError` (never returns the
  untrained model as if trained): ``MAX_CONSECUTIVE_REJECTIONS`` rejected updates in a row, a
  learning rate that collapses below ``MIN_LR_SCALE`` of its setting (updates rejected faster than
  it recovers: some windows give non-finite gradients at every step), no update accepted at all,
  or no epoch with a finite validation loss;
- deterministic for a given ``cfg.seed``: all randomness comes from one threaded ``jax.random`` key;
- one :class:`TrainState` (parameters, optimiser state, best model, PRNG key, counters, history)
  is checkpointed whole every epoch (``checkpoint.py``); ``resume=True`` continues from it and
  gives the same result as an uninterrupted run;
- ``members=M``: M models stacked on a leading axis (``members.stack_members``, an ensemble) train
  together: the update vmaps the loss, gradient and optimiser over them, and each member keeps its
  own counters above (rejections, learning-rate halvings, early stopping, best epoch) as (M,) arrays.
"""

from __future__ import annotations

import abc
import functools
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, PRNGKeyArray

from hybridlsm.neural import trainable_filter
from hybridlsm.physics import run_time_jit
from hybridlsm.training.checkpoint import CheckpointError, DamagedCheckpointError, read_checkpoint, write_checkpoint
from hybridlsm.config import TrainConfig
from hybridlsm.training.losses import WEIGHT_NAMES
from hybridlsm.training.members import as_member_array, member_keys, select_members
from hybridlsm.training.sharding import cell_mesh, replicate

__all__ = ["FitResult", "LossFn", "ModelBatches", "TrainState", "TrainingError", "TrainingWarning", "ValidationScore",
           "fit", "learning_rate", "loss_weights", "phase_of_epoch"]

#: Rejected updates in a row (each halving the learning rate) after which training stops.
MAX_CONSECUTIVE_REJECTIONS = 20
#: Accepted updates in a row after which a halved learning rate doubles back (never above its setting).
LR_RECOVERY_UPDATES = 10
#: Fraction of the set learning rate below which training stops with an error: the model no longer
#: learns, though single updates still pass (2**-20, twenty halvings not won back).
MIN_LR_SCALE = 2.0**-20


class TrainingError(RuntimeError):
    """Training that cannot recover (updates rejected again and again) or learned nothing."""


class TrainingWarning(UserWarning):
    """Updates rejected in an epoch (non-finite loss or parameters, a failed validity check)."""


class ValidationScore(float):
    """A validation loss (a float, lower is better) with its parts, e.g. one per validation site;
    ``fit`` records the parts in each epoch's history entry (``val_parts``), so per-site
    validation curves can be drawn."""

    parts: dict[str, float]

    def __new__(cls, value: float, parts: dict[str, float]):
        score = super().__new__(cls, value)
        score.parts = {str(k): float(v) for k, v in parts.items()}
        return score

Batch = Any
#: ``loss_fn(model, batch, key, weights) -> (scalar loss, {term name: scalar})``
LossFn = Callable[[eqx.Module, Batch, PRNGKeyArray, dict[str, Array]], tuple[Array, dict[str, Array]]]
ValidityFn = Callable[[eqx.Module], tuple[bool, str]]


@dataclass(frozen=True)
class FitResult:
    """Outcome of :func:`fit`: the best model, one history record per epoch, and how it ended."""

    model: eqx.Module
    history: list[dict[str, Any]]
    best_epoch: int | list[int]  # 1-based epoch whose model is returned (0: no epoch ran); per member: a list
    stopped_early: bool | list[bool]
    best_val: float | list[float] = math.nan
    final_model: eqx.Module | None = field(default=None, repr=False)  # the model after the last epoch


@dataclass
class TrainState:
    """Everything :func:`fit` carries from one epoch to the next; a checkpoint is this object whole
    (``to_checkpoint`` / ``from_checkpoint``), so a resumed run continues exactly where it stopped.

    ``params`` and ``best_params`` are the trainable part of the model (``eqx.partition`` with the
    filter spec); the rest of the model is the static part ``fit`` holds. With stacked members the
    key and the ``_PER_MEMBER`` counters hold one entry per member.
    """

    params: Any
    opt_state: Any
    best_params: Any
    key: PRNGKeyArray
    epoch: int = 0
    step: int = 0
    best_val: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    lr_scale: float = 1.0
    accepted: int = 0  # updates accepted so far
    rejected_in_a_row: int = 0
    accepted_in_a_row: int = 0  # since the last rejection or learning-rate recovery
    stopped_early: bool = False
    finished: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)

    _SCALARS = ("epoch", "step", "best_val", "best_epoch", "bad_epochs", "lr_scale", "accepted", "rejected_in_a_row",
                "accepted_in_a_row", "stopped_early", "finished")
    _PER_MEMBER = ("best_val", "best_epoch", "bad_epochs", "lr_scale", "accepted", "rejected_in_a_row",
                   "accepted_in_a_row", "stopped_early")

    def to_checkpoint(self, static: Any, config_hash: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """(trees, JSON metadata) for ``write_checkpoint``."""
        trees = {"model": eqx.combine(self.params, static), "opt_state": self.opt_state,
                 "best_model": eqx.combine(self.best_params, static)}  # fmt: skip
        meta = {k: _plain(getattr(self, k)) for k in self._SCALARS}
        meta.update(history=self.history, rng=_key_to_ints(self.key), rng_impl=str(jax.random.key_impl(self.key)),
                    config_hash=config_hash)  # fmt: skip
        return trees, meta

    @classmethod
    def from_checkpoint(cls, trees: dict[str, Any], meta: dict[str, Any], filter_spec: Any) -> tuple[TrainState, Any]:
        """The state and the model's static part from what ``read_checkpoint`` returned."""
        params, static = eqx.partition(trees["model"], filter_spec)
        scalars = {k: meta[k] for k in cls._SCALARS if k in meta}
        scalars.setdefault("accepted", meta["step"])  # a checkpoint from before the count was kept
        best = meta["best_val"]  # JSON has null for infinity
        scalars["best_val"] = ([math.inf if v is None else float(v) for v in best] if isinstance(best, list)
                               else math.inf if best is None else float(best))
        state = cls(params=params, opt_state=trees["opt_state"], best_params=eqx.filter(trees["best_model"], filter_spec),
                    key=_key_from_ints(meta["rng"], meta["rng_impl"]), history=list(meta["history"]), **scalars)  # fmt: skip
        return state, static


# ------------------------------------------------------------------------------ schedules


def phase_of_epoch(cfg: TrainConfig, epoch: int) -> tuple[int, int, int]:
    """``(phase, epoch_in_phase, phase_length)`` for the 0-based ``epoch`` (phase 0: single phase)."""
    tp = cfg.two_phase
    if not tp.enabled:
        return 0, epoch, int(cfg.epochs)
    if epoch < tp.phase1_epochs:
        return 1, epoch, tp.phase1_epochs
    return 2, epoch - tp.phase1_epochs, tp.phase2_epochs


def loss_weights(cfg: TrainConfig, epoch: int) -> dict[str, float]:
    """Physics-term weights for the 0-based ``epoch``: 0 outside phase 2, linear ramps within it.

    In phase 2 epoch ``j`` of ``P`` gets ``start + (end - start) * j / (P - 1)`` (``end`` when P = 1).
    """
    phase, j, length = phase_of_epoch(cfg, epoch)
    if phase != 2:
        return {name: 0.0 for name in WEIGHT_NAMES}
    frac = 1.0 if length == 1 else min(j / (length - 1), 1.0)  # held at the end value past phase 2
    tp = cfg.two_phase
    ramps = {"energy": tp.lambda_energy, "sparsity": tp.lambda_sparsity, "discovery": tp.lambda_discovery}
    return {name: float(a + (b - a) * frac) for name, (a, b) in ramps.items()}


def learning_rate(cfg: TrainConfig, epoch: int, batch: int, n_batches: int, step: int) -> float:
    """Learning rate (before halvings) for batch ``batch`` of ``n_batches`` in 0-based ``epoch``.

    ``step`` is the global update-step count (for warm-up).
    """
    phase, j, length = phase_of_epoch(cfg, epoch)
    warm = 1.0 if cfg.warmup_steps == 0 else min(1.0, (step + 1) / cfg.warmup_steps)
    if cfg.schedule == "constant" or phase == 1:
        return cfg.lr * warm
    t = min((j + batch / max(n_batches, 1)) / length, 1.0)  # held at min_lr past the schedule's end
    return warm * (cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t)))


# ------------------------------------------------------------------------------- the step


@functools.lru_cache(maxsize=32)
def _optimizer(clip_norm: float, weight_decay: float) -> optax.GradientTransformation:
    # AdamW as in optax.adamw, with the learning rate applied outside (so it can change freely).
    return optax.chain(
        optax.clip_by_global_norm(clip_norm),
        optax.scale_by_adam(),
        optax.add_decayed_weights(weight_decay),
    )


def _update(params, opt_state, static, batch, key, weights, lr, *, loss_fn, opt):
    def loss_of(p):
        return loss_fn(eqx.combine(p, static), batch, key, weights)

    (loss, aux), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
    updates, new_opt_state = opt.update(grads, opt_state, params)
    updates = jax.tree_util.tree_map(lambda u: -lr * u, updates)
    new_params = eqx.apply_updates(params, updates)
    leaves = jax.tree_util.tree_leaves(new_params)
    finite = jnp.isfinite(loss) & jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in leaves]))
    return new_params, new_opt_state, loss, aux, optax.tree.norm(grads), finite


_train_step = eqx.filter_jit(_update)
#: the same update compiled for run time (``physics.run_time_jit``: XLA's CPU fusion emitters;
#: ``fit(run_time=True)``): a faster step for a grid's batch of columns (docs/performance.md)
_train_step_run_time = run_time_jit(_update)


@eqx.filter_jit
def _members_step(params, opt_state, static, batch, key, weights, lr, *, loss_fn, opt):
    """``_update`` of every stacked member at once: each its own loss, gradient, optimiser state
    (so the global-norm clip is per member), key, batch and learning rate; the weights are shared."""
    update = functools.partial(_update, loss_fn=loss_fn, opt=opt)
    each = eqx.if_array(0)
    return eqx.filter_vmap(update, in_axes=(each, each, each, each, each, None, each))(
        params, opt_state, static, batch, key, weights, lr)


# ------------------------------------------------------------------------------- progress


class _Progress:
    """A rich progress bar (epoch, batch, train loss, val loss, loss terms); inert when disabled."""

    def __init__(self, enabled: bool, total_epochs: int):
        self.bar = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        console = Console(file=sys.stderr)
        if not console.is_terminal:
            return
        self.total_epochs = total_epochs
        self.bar = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(bar_width=20),
            MofNCompleteColumn(),
            TextColumn("train {task.fields[loss]}  val {task.fields[val]}  {task.fields[terms]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self.bar.start()
        self.task = self.bar.add_task("fit", total=None, epoch="-", loss="-", val="-", terms="")

    def epoch(self, epoch: int, n_batches: int) -> None:
        if self.bar is not None:
            self.bar.reset(self.task, total=n_batches)  # keeps the fields (loss, val, terms)
            self.bar.update(self.task, epoch=f"{epoch + 1}/{self.total_epochs}")

    def batch(self, loss: float, terms: dict[str, float]) -> None:
        if self.bar is not None:
            text = " ".join(f"{k} {v:.3g}" for k, v in terms.items())
            self.bar.update(self.task, advance=1, loss=f"{loss:.4g}", terms=text)

    def val(self, val: float) -> None:
        if self.bar is not None:
            self.bar.update(self.task, val=f"{val:.4g}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


# ------------------------------------------------------------------------------------ fit


def _key_to_ints(key: PRNGKeyArray) -> list:
    return np.asarray(jax.random.key_data(key)).tolist()  # one list per member for stacked keys


def _key_from_ints(ints: Sequence, impl: str) -> PRNGKeyArray:
    return jax.random.wrap_key_data(jnp.asarray(ints, dtype=jnp.uint32), impl=impl)


def _split(key: PRNGKeyArray, n: int) -> PRNGKeyArray:
    """``n`` keys from one key, or from each member's key: (n,) or (n, M)."""
    if key.ndim == 0:
        return jax.random.split(key, n)
    return jnp.swapaxes(jax.vmap(lambda k: jax.random.split(k, n))(key), 0, 1)


def _plain(x):
    """A counter as JSON-ready Python: a scalar, or a list with one entry per member."""
    return np.asarray(x).tolist()


def _fmt(x) -> str:
    x = np.asarray(x)
    return f"{x:.3g}" if x.ndim == 0 else "[" + ", ".join(f"{v:.3g}" for v in x) + "]"


class ModelBatches(abc.ABC):
    """Training batches that depend on the model being trained, e.g. windows that start from the
    states the model itself carries through the record (``models.regional``). :func:`fit` calls it
    at the start of every epoch with the model as it is then and visits the batches in a new random
    order, as it does a sequence; so a resumed run builds the same batches as an uninterrupted one."""

    @abc.abstractmethod
    def __call__(self, model: eqx.Module) -> Sequence[Batch]:
        """The epoch's batches (in any order)."""


def _epoch_batches(train_batches: Any, key: PRNGKeyArray, model: Callable[[], eqx.Module]) -> list[Batch]:
    if isinstance(train_batches, ModelBatches):
        train_batches = train_batches(model())
    if callable(train_batches):
        batches = list(train_batches(key))
    else:
        order = np.asarray(jax.random.permutation(key, len(train_batches)))
        batches = [train_batches[int(i)] for i in order]
    if not batches:
        raise ValueError("fit: the training data gave no batches")
    return batches


def fit(
    model: eqx.Module,
    loss_fn: LossFn,
    train_batches: Sequence[Batch] | Callable[[PRNGKeyArray], Iterable[Batch]],
    val_fn: Callable[[eqx.Module], float],
    cfg: TrainConfig,
    checkpoint_dir: str | Path | None = None,
    filter_spec: Any = None,
    progress: bool = True,
    *,
    resume: bool = False,
    validity_fn: ValidityFn | None = None,
    on_phase2: Callable[[eqx.Module], eqx.Module] | None = None,
    members: int = 0,
    run_time: bool = False,
) -> FitResult:
    """Train ``model`` by minimising ``loss_fn`` over ``train_batches``; early-stop on ``val_fn``.

    - ``loss_fn(model, batch, key, weights) -> (loss, aux)``: ``key`` is a fresh PRNG key per
      update (dropout, sampling); ``weights`` maps ``"energy"``, ``"sparsity"``, ``"discovery"`` to the
      scheduled physics-term weights (scalars; 0 outside phase 2); ``aux`` is a dict of scalar terms
      averaged into the history.
    - ``train_batches``: a sequence of batches (PyTrees; visited in a new random order each epoch),
      a callable ``key -> iterable of batches`` building the epoch's batches itself, or a
      :class:`ModelBatches` (``model -> batches``, shuffled like a sequence, for batches that depend on
      the model). Keep
      batch shapes fixed to avoid recompilation.
    - ``val_fn(model) -> float``: lower is better; NaN counts as no improvement. A
      :class:`ValidationScore` also gives its parts (per site), recorded as ``val_parts``.
    - ``filter_spec``: which leaves train (default :func:`hybridlsm.neural.trainable_filter`,
      i.e. every floating array outside ``NonTrainable`` modules).
    - ``checkpoint_dir``: a checkpoint after every epoch; with ``resume=True`` training continues
      from the checkpoint there (the previous one when the latest is damaged; a fresh start when
      there is none or none verifies; an error when it was written with a different ``cfg``). A finished run is returned as it was.
    - ``validity_fn(model) -> (ok, message)``: see the module docstring.
    - ``on_phase2(model) -> model``: called once with the best phase-1 model when phase 2 starts
      (e.g. to start a co-trained law from a fit to what phase 1 learned); phase 2 trains its result.
    - ``cfg.devices`` > 1: the trainable arrays and the optimiser state are replicated over the
      devices of ``sharding.cell_mesh``; the batches should come split over the same mesh
      (``windows.batches_of(..., mesh)``), and ``jax.jit`` partitions each update over the devices.
    - ``members`` = M > 0: ``model`` is M members stacked on a leading axis
      (``members.stack_members``). Member k's keys come from seed ``cfg.seed + k`` (a sequential
      ensemble's member k); ``train_batches`` is a callable ``keys (M,) -> batches stacked on the
      member axis`` (``members.stack_batches``); ``val_fn`` gives one score per member. Each member
      has its own optimiser state, rejections, learning-rate halvings and early stopping: a member
      whose patience has run out keeps its best epoch and takes no further update; training ends
      when every member has stopped. The history's per-member entries are lists (an epoch in which
      members stop lists them in ``members_stopped``); the result's ``best_epoch``, ``best_val`` and
      ``stopped_early`` too. Single-phase training on one device
      without ``validity_fn``.
    - ``run_time``: compile the update with XLA's CPU fusion emitters (``physics.run_time_jit``;
      off process-wide for fast compilation; ignored off the CPU and with ``members``): worth it for
      a large batch of columns, such as a regional grid's.
    """
    if members and (cfg.two_phase.enabled or (cfg.devices or 0) != 1 or validity_fn is not None):
        raise ValueError("fit: stacked members train in one phase on one device, without validity_fn")
    if filter_spec is None:
        filter_spec = trainable_filter(model)
    params, static = eqx.partition(model, filter_spec)
    if not jax.tree_util.tree_leaves(params):
        raise ValueError("fit: the filter spec selects no trainable array")
    opt = _optimizer(float(cfg.clip_norm), float(cfg.weight_decay))
    opt_init = jax.vmap(opt.init) if members else opt.init
    step_fn = _members_step if members else _train_step
    if run_time and not members:
        step_fn = _train_step_run_time  # run_time_jit's default: the fusion emitters on the CPU
    total_epochs = int(cfg.epochs)
    config_hash = cfg.config_hash()
    dtype = jax.tree_util.tree_leaves(params)[0].dtype
    ckpt_dir = None if checkpoint_dir is None else Path(checkpoint_dir)

    key = member_keys(cfg.seed, members) if members else jax.random.key(cfg.seed)
    state = TrainState(params=params, opt_state=opt_init(params), best_params=params, key=key)
    if resume:
        if ckpt_dir is None:
            raise ValueError("fit: resume=True needs a checkpoint_dir")
        like = {"model": model, "opt_state": state.opt_state, "best_model": model}
        try:
            loaded = read_checkpoint(ckpt_dir, like)
        except DamagedCheckpointError as err:  # nothing there can be trusted
            warnings.warn(f"{err}; training starts afresh", stacklevel=2)
            loaded = None
        if loaded is not None:
            trees, meta = loaded
            if meta["config_hash"] != config_hash:
                raise CheckpointError(
                    f"{ckpt_dir}: checkpoint was written with a different training config "
                    "(config hash differs); resume only with the same config, or use a new checkpoint_dir"
                )
            # the saved model whole, non-trainable leaves (e.g. normalisation statistics) included
            state, static = TrainState.from_checkpoint(trees, meta, filter_spec)
    if members:
        for name in TrainState._PER_MEMBER:
            setattr(state, name, as_member_array(getattr(state, name), members))

    mesh = cell_mesh(cfg.devices)

    def placed(tree):  # on every device of the mesh (a checkpoint or on_phase2 gives host arrays)
        return tree if mesh is None else replicate(tree, mesh)

    state.params, state.opt_state, state.best_params = placed((state.params, state.opt_state, state.best_params))

    def save() -> None:
        if ckpt_dir is not None:
            write_checkpoint(ckpt_dir, state.epoch, *state.to_checkpoint(static, config_hash))

    def who(mask) -> str:  # the members a per-member condition holds for, as words
        return f" (member {', '.join(map(str, np.flatnonzero(mask)))})" if members else ""

    bar = _Progress(progress and not state.finished, total_epochs)
    try:
        while not state.finished and state.epoch < total_epochs:
            phase, epoch_in_phase, _ = phase_of_epoch(cfg, state.epoch)
            event = None
            if phase == 2 and epoch_in_phase == 0:
                # Phase 2 starts from the best supervised model with fresh optimiser and patience.
                state.params = state.best_params
                if on_phase2 is not None:
                    state.params, _ = eqx.partition(on_phase2(eqx.combine(state.params, static)), filter_spec)
                    state.params = placed(state.params)
                state.opt_state = opt.init(state.params)
                state.best_val, state.bad_epochs = math.inf, 0
                event = "phase2_start"
            weights = loss_weights(cfg, state.epoch)
            weights_arr = {k: jnp.asarray(v, dtype=dtype) for k, v in weights.items()}
            state.key, k_batches, k_steps = _split(state.key, 3)
            batches = _epoch_batches(train_batches, k_batches, lambda: eqx.combine(state.params, static))
            step_keys = _split(k_steps, len(batches))
            bar.epoch(state.epoch, len(batches))
            t0 = time.perf_counter()
            losses: list = []
            norms: list = []
            term_sums: dict[str, Any] = {}
            rejections: list[dict[str, Any]] = []
            active = ~np.asarray(state.stopped_early)  # members still training (one model: True)
            lr = math.nan
            for b, batch in enumerate(batches):
                lr = learning_rate(cfg, state.epoch, b, len(batches), state.step) * state.lr_scale
                new_params, new_opt_state, loss, aux, gnorm, finite = step_fn(
                    state.params, state.opt_state, static, batch, step_keys[b], weights_arr,
                    jnp.asarray(lr, dtype=dtype), loss_fn=loss_fn, opt=opt,
                )  # fmt: skip
                state.step += 1
                loss_f = np.asarray(loss, float)
                ok, message = np.asarray(finite), "non-finite loss or parameters"
                if ok.all() and validity_fn is not None:
                    valid, message = validity_fn(eqx.combine(new_params, static))
                    ok = np.asarray(bool(valid))
                accept, rejected = ok & active, ~ok & active
                state.params, state.opt_state = select_members(accept, (new_params, new_opt_state), (state.params, state.opt_state))
                state.accepted = state.accepted + accept
                state.rejected_in_a_row = np.where(rejected, state.rejected_in_a_row + 1, 0)
                state.lr_scale = np.where(rejected, state.lr_scale * 0.5, state.lr_scale)
                run = np.where(accept, state.accepted_in_a_row + 1, np.where(rejected, 0, state.accepted_in_a_row))
                recover = (run >= LR_RECOVERY_UPDATES) & (state.lr_scale < 1.0)
                state.lr_scale = np.where(recover, np.minimum(1.0, state.lr_scale * 2.0), state.lr_scale)
                state.accepted_in_a_row = np.where(run >= LR_RECOVERY_UPDATES, 0, run)
                if rejected.any():
                    rejections.append({"batch": b, "message": str(message) + who(rejected),
                                       "lr_scale": _plain(state.lr_scale)})
                    stuck = state.rejected_in_a_row >= MAX_CONSECUTIVE_REJECTIONS
                    if stuck.any():
                        raise TrainingError(
                            f"training cannot recover{who(stuck)}: {np.max(state.rejected_in_a_row)} updates in a row "
                            f"rejected (epoch {state.epoch + 1}, last: {message}; loss {np.max(loss_f):.4g}), the "
                            f"learning rate halved to {np.min(state.lr_scale):.3g} of its setting; check the forcing "
                            "and targets for impossible values, or lower the learning rate")
                    collapsed = state.lr_scale < MIN_LR_SCALE
                    if collapsed.any():
                        n_rej = sum(len(r["rejections"]) for r in state.history) + len(rejections)
                        raise TrainingError(
                            f"the learning rate collapsed{who(collapsed)} to {np.min(state.lr_scale):.3g} of its "
                            f"setting in epoch {state.epoch + 1}: {n_rej} of {state.step} updates rejected, faster "
                            f"than {LR_RECOVERY_UPDATES} accepted updates in a row win a halving back (last: "
                            f"{message}), so the model stopped learning; some training windows give non-finite "
                            "losses or gradients at every step: check their forcing (`hybridlsm data inspect`) and the "
                            "model, or lower the learning rate")
                losses.append(loss_f)
                norms.append(np.asarray(gnorm, float))
                terms = {k: np.asarray(v, float) for k, v in aux.items()}
                for k, v in terms.items():
                    term_sums[k] = term_sums.get(k, 0.0) + v
                bar.batch(float(np.mean(loss_f)), {k: float(np.mean(v)) for k, v in terms.items()})

            score = val_fn(eqx.combine(state.params, static))
            val = np.asarray(score, float)
            bar.val(float(np.nanmean(val)) if np.isfinite(val).any() else math.nan)
            improved = np.isfinite(val) & (val < np.asarray(state.best_val) - cfg.min_delta) & active
            state.best_params = select_members(improved, state.params, state.best_params)
            state.best_val = np.where(improved, val, state.best_val)
            state.best_epoch = np.where(improved, state.epoch + 1, state.best_epoch)
            state.bad_epochs = np.where(improved, 0, state.bad_epochs + 1)
            state.epoch += 1
            record = {
                "epoch": state.epoch,
                "phase": phase,
                "train_loss": _plain(np.mean(losses, axis=0)),
                "val_loss": _plain(val),
                "best_val": _plain(state.best_val),
                "improved": _plain(improved),
                "lr": _plain(lr),
                "lr_scale": _plain(state.lr_scale),
                "grad_norm": _plain(np.mean(norms, axis=0)),
                "weights": weights,
                "terms": {k: _plain(v / len(batches)) for k, v in term_sums.items()},
                "rejections": rejections,
                "n_batches": len(batches),
                "wall_s": time.perf_counter() - t0,
            }
            if isinstance(score, ValidationScore):
                record["val_parts"] = score.parts
            elif members and all(isinstance(v, ValidationScore) for v in score):
                record["val_parts"] = [v.parts for v in score]
            if event is not None:
                record["event"] = event
            if rejections:  # logged in the history too; said here so that a user sees it
                warnings.warn(f"epoch {state.epoch}: {len(rejections)} of {len(batches)} update(s) rejected "
                              f"(last: {rejections[-1]['message']}); learning rate now {_fmt(state.lr_scale)} of "
                              "its setting", TrainingWarning, stacklevel=2)
            out_of_patience = (state.bad_epochs >= cfg.patience) & active
            if out_of_patience.any():
                if phase == 1:
                    record["event"] = "phase1_early_stop"
                    state.epoch = cfg.two_phase.phase1_epochs  # jump to phase 2
                else:
                    record["event"] = "early_stop"
                    if members:
                        record["members_stopped"] = np.flatnonzero(out_of_patience).tolist()
                    state.stopped_early = state.stopped_early | out_of_patience
                    state.finished = bool(np.all(state.stopped_early))
            if state.epoch >= total_epochs:
                state.finished = True
            state.history.append(record)
            save()
    finally:
        bar.close()
    if np.any(np.asarray(state.accepted) == 0):
        last = next((r["rejections"][-1]["message"] for r in reversed(state.history) if r["rejections"]), "")
        raise TrainingError(f"no update was accepted{who(np.asarray(state.accepted) == 0)} in {state.epoch} epoch(s) "
                            f"({state.step} steps; last rejection: {last}); the model learned nothing")
    if np.any(np.asarray(state.best_epoch) == 0):
        raise TrainingError(f"no epoch gave a finite validation loss{who(np.asarray(state.best_epoch) == 0)} in "
                            f"{state.epoch} epoch(s) (last: {state.history[-1]['val_loss'] if state.history else 'none'}"
                            "); the model learned nothing that could be validated: check the validation period has "
                            "usable observations")

    return FitResult(
        model=eqx.combine(state.best_params, static),
        history=state.history,
        best_epoch=_plain(state.best_epoch),
        stopped_early=_plain(state.stopped_early),
        best_val=_plain(state.best_val),
        final_model=eqx.combine(state.params, static),
    )
