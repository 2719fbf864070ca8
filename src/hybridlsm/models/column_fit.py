"""Training of the column models (calibrated physics and the hybrids) over Domains.

Truncated back-propagation through time over windows:

- the record of every training column is spun up and rolled out with the model as it stands at
  the start of each of a few rounds; its states at the window starts initialise the windows (the
  window's first ``spinup_days`` adapt them to the model being trained and carry no loss);
- windows of ``spinup_days + window_days`` from all training columns form one batch axis (the
  model's column axis N), so one compiled rollout trains on all of them at once;
- the loss sees only the steps the domain's ``loss_mask`` (the split) and QC allow;
- with several training sites every site has the same say in the loss (``site_weights``);
- validation rolls out each validation record continuously from the model's spun-up state, as
  prediction does.

Ensemble members (``member_train``) train together: the members stacked on a leading axis
(``training.members``), each with its own trajectories, windows, batch order and validation runs, as
it would train alone; one vmapped update (``trainer.fit(..., members=M)``) advances all of them.

``fit="record"`` trains on whole records instead (the calibrated physics' default): one batch holds
every training column's full record, rolled out continuously from the model's own spun-up state and
preceded by one *differentiated* spin-up cycle, so parameters that act through months of storage
(the root-zone capacity W_max through the soil water carried from the wet season into the dry one)
get the gradient of that memory, which windows of a few weeks cannot see.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from pydantic import BaseModel, Field

from ..config import OPTIONS_CONFIG, TrainConfig
from ..data import DataError
from ..domain import Domain
from ..training.losses import (
    discovery_loss,
    energy_residual_loss,
    normalised_mse,
    normalised_nll,
    site_loss_weights,
    sparsity_l1,
    target_scale,
    total_loss,
)
from ..training.sharding import cell_mesh
from ..training.members import member_of, select_members, stack_batches, unstack_members
from ..training.trainer import ValidationScore, fit
from ..training.windows import SiteRecord, batches_of, make_windows, record_windows, top_up
from ..physics import GRADIENT_CHUNK, RUN_TIME_CELLS, LaDState
from ..physics.exchange import ExchangeLaw, LawFitError, fit_branches, law_from_fit
from .column import SIGMA_SUFFIX, ColumnModel, prepare_site, run_jit, spinup_period, with_model_trajectory
from .registry import TrainingContext

__all__ = ["FitOptions", "delta_sparsity", "exchange_law_filter", "exchange_laws", "make_loss", "records_of",
           "refit_exchange_law", "train_column_model", "training_bytes", "training_config", "validation_fn"]


def records_of(domains: Sequence[Domain], targets: Sequence[str], ctx: TrainingContext,
               model: ColumnModel | None = None) -> list[SiteRecord]:
    """One record per column of every domain."""
    return [prepare_site(d.column(i), targets, ctx.max_qc, model=model, cache=ctx.cache)
            for d in domains for i in range(d.n_columns)]  # fmt: skip


def make_loss(targets: Sequence[str], scale: np.ndarray, sparsity_fn: Callable | None = None,
              deterministic: bool = False, prior: tuple[Callable, float] | None = None):
    """The loss of the column models: normalised MSE, or the normalised Gaussian NLL for a model
    with ``aleatoric_targets`` (+ phase-2 energy residual, sparsity and discovery terms,
    weighted by the trainer's schedule). ``deterministic``: the networks run without dropout.
    ``prior``: ``(fn, weight)``, ``weight * fn(model, out)`` added in every epoch (a prior that keeps
    the learned parameters near the defaults; logged as the term ``prior``)."""
    scale = jnp.asarray(scale)

    def loss_fn(model: ColumnModel, batch: dict, key, weights: dict):
        model = replace(model, chunk=GRADIENT_CHUNK)  # differentiated: store each step's carry
        _, out = model.run(batch["forcing"], batch["base"], batch["state0"], None if deterministic else key)
        sim = jnp.stack([out[t] for t in targets], axis=-1)
        if model.aleatoric_targets:  # the networks' aleatoric SD of each target, per step
            sigma = jnp.stack([out[f"{t}{SIGMA_SUFFIX}"] for t in targets], axis=-1)
            mse = normalised_nll(sim, sigma, batch["obs"], batch["mask"], scale, batch.get("weight"))
        else:
            mse = normalised_mse(sim, batch["obs"], batch["mask"], scale, batch.get("weight"))
        loss_mask = jnp.any(batch["mask"], axis=-1)
        terms = {"energy": energy_residual_loss(out["Qh"], out["Qle"], batch["rnet"], batch["qg"], loss_mask)}
        if sparsity_fn is not None:
            terms["sparsity"] = sparsity_fn(model, out)
        if model.law is not None:
            terms["discovery"] = discovery_loss(model.law, out["Kh"], batch["forcing"].wind, out["RiB"], loss_mask)
        if prior is None:
            return total_loss(mse, terms, weights)
        prior_term = prior[0](model, out)
        loss, aux = total_loss(mse + prior[1] * prior_term, terms, weights)
        return loss, {**aux, "mse": mse, "prior": prior_term}

    return loss_fn


def delta_sparsity(model: ColumnModel, out: dict):
    """L1 on the calibrated offsets (calibration should move few parameters)."""
    if not model.deltas:
        return jnp.zeros(())
    return sparsity_l1(model.deltas)


def validation_fn(records: Sequence[SiteRecord], targets: Sequence[str], scale: np.ndarray,
                  weights: Sequence[np.ndarray] | None = None):
    """The training loss's data term on whole validation records (``weights`` as in training): the
    mean over values of the squared standardised error, or of the Gaussian NLL for a Gaussian model;
    with each site's own mean as the score's parts (per-site validation curves)."""
    scale = np.asarray(scale)
    weights = [np.ones(len(targets)) for _ in records] if weights is None else weights

    def val_fn(model: ColumnModel) -> ValidationScore:
        sse, n = 0.0, 0
        by_site: dict[str, list[float]] = {}  # site -> [its loss sum, its values]
        for rec, weight in zip(records, weights):
            if not rec.mask.any():
                continue
            before = sse
            _, out = run_jit(model, rec.forcing, rec.base, rec.state0)
            sim = np.stack([np.asarray(out[t])[:, 0] for t in targets], -1)
            m = rec.mask
            if model.aleatoric_targets:  # the sum of each value's NLL (of the standardised error)
                sigma = np.stack([np.asarray(out[f"{t}{SIGMA_SUFFIX}"])[:, 0] for t in targets], -1)
                z = np.where(m, (np.where(m, rec.obs, 0.0) - sim) / sigma, 0.0)
                nll = np.log(sigma / scale) + 0.5 * z * z + 0.5 * np.log(2.0 * np.pi)
                sse += float(np.sum(np.where(m, nll, 0.0) * weight))
            else:
                err = np.where(m, (sim - np.where(m, rec.obs, 0.0)) / scale, 0.0)
                sse += float(np.sum(err**2 * weight))
            n += int(m.sum())
            part = by_site.setdefault(rec.site, [0.0, 0])
            part[0] += sse - before
            part[1] += int(m.sum())
        return ValidationScore(sse / n if n else float("nan"), {s: v / k for s, (v, k) in by_site.items() if k})

    return val_fn


def law_warm_start(records: Sequence[SiteRecord]) -> Callable[[ColumnModel], ColumnModel]:
    """Phase 2's start for a model with a co-trained law: the law refitted (OLS per branch,
    ``physics.exchange.fit_branches``) to the K_h the phase-1 model produces over the training
    records (its own spun-up runs, steps with a usable target), so the discovery term pulls the
    network towards the closed form closest to what it learned, not towards the law's arbitrary
    start. A branch with too few steps keeps the model's law as it was."""

    def start(model: ColumnModel) -> ColumnModel:
        kh, wind, ri = [], [], []
        for rec in records:
            _, out = run_jit(model, rec.forcing, rec.base, model.spun_up_state(rec.forcing, rec.base))
            use = rec.mask.any(axis=1)
            kh.append(np.asarray(out["Kh"])[:, 0][use])
            ri.append(np.asarray(out["RiB"])[:, 0][use])
            wind.append(np.asarray(rec.forcing.wind)[:, 0][use])
        try:
            fitted = fit_branches(np.concatenate(kh), np.concatenate(wind), np.concatenate(ri))
        except LawFitError as err:
            warnings.warn(f"the co-trained law keeps its start: {err}", stacklevel=2)
            return model
        return replace(model, law=ExchangeLaw(law_from_fit(fitted), dtype=model.law.log_a.dtype))

    return start


def train_column_model(
    model: ColumnModel,
    train: Sequence[Domain],
    val: Sequence[Domain],
    ctx: TrainingContext,
    *,
    targets: Sequence[str],
    train_cfg: TrainConfig,
    sparsity_fn: Callable | None = None,
    filter_spec=None,
    validity_fn=None,
    target_override: Callable[[SiteRecord], SiteRecord] | None = None,
    state_rounds: int = 3,
    fit_mode: str = "windows",
    member_train: Sequence[Sequence[Domain]] | None = None,
    deterministic: bool = False,
    start_is_candidate: bool = False,
    prior: tuple[Callable, float] | None = None,
) -> ColumnModel:
    """Fit a column model by truncated BPTT over windows (``fit_mode="windows"``) or over whole
    records (``"record"``); early stopping on the validation records (module docstring).
    ``deterministic``: the networks run without dropout (for fits that train no network);
    ``start_is_candidate``: the model as given competes with the trained ones on validation (a refit
    then never returns a model that validates worse than its start); ``prior``: see
    :func:`make_loss` (validation scores the data term alone).

    With ``member_train`` (member k's training Domains: ``train`` itself, or a bootstrap resample's
    loss masks) ``model`` is that many members stacked (``training.members.stack_members``) and
    they train together, each as it would alone, except that the target scale and site weights are
    ``train``'s for every member (a member trained alone on a resample takes its resample's), and a
    member with fewer windows (a resample's) is topped up with masked windows so that every member
    has as many batches."""
    if fit_mode not in ("windows", "record"):
        raise ValueError(f"fit_mode must be 'windows' or 'record', not {fit_mode!r}")
    n_members = 0 if member_train is None else len(member_train)
    members = unstack_members(model, n_members) if n_members else [model]

    def records(domains, member):
        recs = records_of(domains, targets, ctx, member)
        return recs if target_override is None else [target_override(r) for r in recs]

    train_recs = records(train, members[0])
    unobserved = [t for t, n in zip(targets, sum(r.mask.sum(axis=0) for r in train_recs)) if n == 0]
    if unobserved:
        raise DataError(f"target(s) {unobserved} have no usable observation in the training data of "
                        f"{sorted({r.site for r in train_recs})}; train on the targets the sites observe")
    member_recs = [records(t, m) for t, m in zip(member_train, members)] if n_members else [train_recs]
    val_recs = records_of(val, targets, ctx, members[0])
    dt = train_recs[0].forcing.time_step_s
    spin, length = ctx.steps(ctx.spinup_days, dt), ctx.steps(ctx.window_days, dt)
    scale = target_scale(train_recs)
    train_weights, val_weights = site_loss_weights(train_recs, val_recs, scale, train_cfg.site_weighting)
    loss_fn = make_loss(targets, scale, sparsity_fn, deterministic, prior)
    mesh = cell_mesh(train_cfg.devices)
    # Rounds: each round restarts training and validation from the state the current model spins
    # up to, and takes the window initial states from its own continuous trajectory, so the slow
    # stores (soil water, groundwater) the loss sees match what the model produces when it runs
    # continuously (as in prediction).
    rounds = 1 if train_cfg.two_phase.enabled else max(1, min(state_rounds, train_cfg.epochs))
    per_round = -(-train_cfg.epochs // rounds)
    best, best_val = None, float("inf")
    for r in range(rounds):
        members = unstack_members(model, n_members) if n_members else [model]
        val_fns = [validation_fn([replace(rec, state0=m.spun_up_state(rec.forcing, rec.base)) for rec in val_recs],
                                 targets, scale, val_weights) for m in members]  # fmt: skip
        if r == 0 and start_is_candidate and not n_members:  # scored by the first round's validation
            best, best_val = model, float(val_fns[0](model))
        if fit_mode == "record":
            windows = [record_windows(recs, [m.spun_up_state(r.forcing, r.base) for r in recs],
                                      [spinup_period(r.forcing) for r in recs], train_weights)
                       for m, recs in zip(members, member_recs)]  # fmt: skip
            batch_size = len(train_recs)
        else:
            member_recs = [[with_model_trajectory(m, rec) for rec in recs] for m, recs in zip(members, member_recs)]
            windows = [make_windows(recs, spin, length, LaDState, train_weights) for recs in member_recs]
            batch_size = train_cfg.batch_windows
        if n_members:
            most = max(w["obs"].shape[1] for w in windows)
            batches = stack_batches([batches_of(top_up(w, most), batch_size) for w in windows])

            def val_fn(stacked, val_fns=val_fns):  # one score per member
                return [f(member_of(stacked, k)) for k, f in enumerate(val_fns)]
        else:
            batches, val_fn = batches_of(windows[0], batch_size, mesh), val_fns[0]
        ckpt = ctx.checkpoint_dir
        result = fit(
            model,
            loss_fn,
            batches,
            val_fn,
            train_cfg.model_copy(update={"epochs": per_round}) if rounds > 1 else train_cfg,
            checkpoint_dir=None if ckpt is None else (ckpt / f"round{r}" if rounds > 1 else ckpt),
            filter_spec=filter_spec,
            progress=ctx.progress,
            resume=ckpt is not None,
            validity_fn=validity_fn,
            on_phase2=None if model.law is None else law_warm_start(train_recs),
            members=n_members,
            run_time=batch_size >= RUN_TIME_CELLS,  # a batch of many windows: XLA's fusion emitters
        )
        model = result.model
        # the best model over the rounds (same validation), per member
        better = np.asarray(result.best_val) < best_val
        best = model if best is None else select_members(better, model, best)
        best_val = np.where(better, result.best_val, best_val)
    return best


def exchange_law_filter(model) -> object:
    """Filter spec that trains only the coefficients of the :class:`ExchangeLaw` closures in
    ``model`` (not a co-trained law: a model fitting its law has ``law`` None)."""
    def mark(node):
        return jax.tree_util.tree_map(eqx.is_inexact_array, node) if isinstance(node, ExchangeLaw) else False

    return jax.tree_util.tree_map(mark, model, is_leaf=lambda n: isinstance(n, ExchangeLaw))


def exchange_laws(model) -> list[ExchangeLaw]:
    """The :class:`ExchangeLaw` closures inside ``model``."""
    return [n for n in jax.tree_util.tree_leaves(model, is_leaf=lambda n: isinstance(n, ExchangeLaw))
            if isinstance(n, ExchangeLaw)]


def refit_exchange_law(model: ColumnModel, train: Sequence[Domain], val: Sequence[Domain], ctx: TrainingContext,
                       *, targets: Sequence[str], train_cfg: TrainConfig) -> ColumnModel:
    """The online step of discovery (seed 002's offline -> symbolic -> online loop): ``model``, a
    hybrid whose learned K_h a closed form replaced (``ColumnModel.with_exchange_law``), with the
    law's coefficients refitted through the physics to the observations of ``train`` (windows,
    early stopping on ``val``, ``train_cfg`` without its two phases), every other parameter and
    network fixed and run without dropout. An offline fit to a network's K_h inherits the shape of
    the physics scheme the network multiplies wherever the fluxes constrain K_h weakly (the
    stable branch of a twin: Louis' Ri dependence shows through); the refit sees only the data. The
    law as given competes on validation, so the refit never validates worse than its start."""
    if len(exchange_laws(model)) != 1 or model.law is not None:
        raise ValueError("refit_exchange_law: the model needs exactly one exchange law in place of its learned K_h "
                         "(ColumnModel.with_exchange_law) and no co-trained law")  # fmt: skip
    cfg = train_cfg.model_copy(update={"two_phase": train_cfg.two_phase.model_copy(update={"enabled": False})})
    return train_column_model(model, train, val, ctx, targets=targets, train_cfg=cfg,
                              filter_spec=exchange_law_filter(model), state_rounds=1, deterministic=True,
                              start_is_candidate=True)


#: memory of one column-step of a training batch in float64, about twice what was measured for
#: hybrid_param (width 32, dropout): XLA's scratch for the update ~140 B (the rollout
#: rematerialises its chunks for the gradient), the batch's arrays ~120 B
BYTES_PER_COLUMN_STEP = 512


def training_bytes(train: Sequence[Domain], ctx: TrainingContext, train_cfg: TrainConfig, fit_mode: str) -> int:
    """A rough estimate of the memory one column model's training step needs: the batch's
    column-steps (``batch_windows`` windows of spin-up + window steps, or every training column's
    record) times ``BYTES_PER_COLUMN_STEP``."""
    if fit_mode == "record":
        column_steps = sum(d.n_steps * d.n_columns for d in train)
    else:
        column_steps = train_cfg.batch_windows * ctx.steps(ctx.spinup_days + ctx.window_days, train[0].time_step_s)
    return int(column_steps * BYTES_PER_COLUMN_STEP * jnp.zeros(0).dtype.itemsize / 8)


class FitOptions(BaseModel):
    """Options every column model has: its own overrides of the run's ``training`` section."""

    model_config = OPTIONS_CONFIG

    lr: float | None = Field(None, gt=0.0, le=1.0, description="learning rate (null: training.lr)")
    epochs: int | None = Field(None, ge=1, description="epochs (null: training.epochs)")
    patience: int | None = Field(None, ge=1, description="early-stopping patience (null: training.patience)")


def training_config(ctx: TrainingContext, options: FitOptions) -> TrainConfig:
    """The run's training section with the model's own overrides (lr, epochs, patience)."""
    return with_model_overrides(ctx.training, options)


def with_model_overrides(training: TrainConfig, options) -> TrainConfig:
    """``training`` with a model's own ``lr``, ``epochs`` and ``patience`` (where not None). With
    two-phase training a model's epochs may end inside the phases (the physics' whole-record
    calibration sits in phase 1) or run past them, where the phase-2 weights and the learning rate
    hold their end values (``trainer.loss_weights``, ``trainer.learning_rate``)."""
    update = {"lr": options.lr, "epochs": options.epochs, "patience": options.patience}
    return training.model_copy(update={k: v for k, v in update.items() if v is not None})
