"""Hybrid models: networks embedded in the LaD column, trained end to end through the rollout.

- ``hybrid_flux``: an MLP replaces the H / LE closure; inputs are the forcing and (switchable) the
  model's internal states; by default an energy-conserving head splits the available energy
  Rn - G so that H + LE + G = Rn by construction.
- ``hybrid_param``: an MLP maps forcing and states to bounded multipliers of the aerodynamic and
  stomatal resistance (equivalently K_h and r_s) that the physics then uses.
- ``hybrid_lstm``: an LSTM over the forcing produces the same multipliers step by step (dynamic
  parameterisation), passed to the rollout as time-varying parameters.
- ``post_correction``: the physics runs, an MLP corrects its Qh / Qle (the cascading paradigm).
- ``pretrain_then_finetune``: ``hybrid_flux`` first trained on the default physics' own output,
  then on observations.

MC dropout (``dropout`` > 0; seed 000 uses 0.15): every network drops units in training (the loss's
key reaches the closures through the rollout, one key per step) and at prediction, which is the mean
of ``mc_samples`` stochastic runs with the SD of Qh and Qle (``column.predict_column_model``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Annotated, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from pydantic import AfterValidator, BaseModel, Field, model_validator

from ..config import OPTIONS_CONFIG, Seed, unique_items
from ..data import usable_targets
from ..domain import Domain
from ..neural import (LSTM, MC_KEY, MC_SAMPLES, MLP, TARGET_STD_RANGE, BoundedHead, EnergySplitHead, GaussianHead, dropout_rate,
                      mc_batch_size, mc_dropout, trainable_filter)
from ..physics import PARAMETERS, AbstractLandModel, LaDModel, LaDState
from ..physics.closure import BulkClosure, Closure, SurfaceContext, TurbulentFluxes
from ..physics.exchange import ExchangeLaw
from ..thermo import latent_heat_vaporisation
from ..training.losses import gaussian_nll, log_multiplier_prior, sparsity_l1
from ..training.members import stack_members, unstack_members
from ..training.trainer import fit
from ..training.windows import SiteRecord
from .column import (
    COLUMN_TARGETS,
    DEFAULT_COLUMN_TARGETS,
    LEARNED_PARAMETERS,
    PREDICTION_OUTPUTS,
    SIGMA_SCALE,
    SIGMA_SUFFIX,
    STATIC_OFFSETS,
    ColumnModel,
    column_provenance,
    column_skeleton,
    column_structure,
    domain_base_params,
    predict_column_model,
    run_jit,
)
from .column_fit import FitOptions, train_column_model, training_bytes, training_config
from .column_spec import ColumnSpec
from .features import (N_FORCING_FEATURES, N_STABILITY_FEATURES, N_STATE_FEATURES, STATIC_INPUTS, STATIC_KEY,
                       n_static_features, forcing_features,
                       stability_features, state_features)
from .physics import DEFAULT_CALIBRATED, LandOptions, PhysicsOptions, calibrate_physics, calibrated_offsets
from .registry import (NEEDS_DROPOUT, EquinoxSpec, TrainingContext, options_of_others, register_model,
                       training_time_steps)

MULTIPLIED = ("ra_scale", "rs_scale")
#: dropout passes per step that measure the network's spread for the epistemic fallback
FALLBACK_SAMPLES = 10
#: the output of a model with the epistemic fallback: the fraction of its multipliers that fell back
FALLBACK_OUTPUT = "fallback"


class HybridOptions(FitOptions, LandOptions):
    """``options`` of the hybrid models."""

    model_config = OPTIONS_CONFIG

    use_states: bool = Field(True, description="physics states as network inputs (off: the ablation)")
    energy_split: bool = Field(True, description="hybrid_flux: conserve H + LE + G = Rn via the split head")
    width: int = Field(32, ge=1, le=1024)
    depth: int = Field(2, ge=1, le=8)
    hidden_size: int = Field(32, ge=1, le=1024, description="hybrid_lstm hidden units")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout rate of every network, in training and at "
                           "prediction (MC dropout; seed 000: 0.15); 0: deterministic")
    mc_samples: int = Field(MC_SAMPLES, ge=2, le=1000, description="MC-dropout runs of a prediction (with dropout)")
    targets: list[Literal[COLUMN_TARGETS]] = Field(default_factory=lambda: list(DEFAULT_COLUMN_TARGETS), min_length=1)  # type: ignore[valid-type]
    discovery: bool = Field(True, description="train a K_h = a u^b |Ri|^c law with stable and unstable branches "
                            "jointly (phase 2; physics.exchange)")
    calibrate: list[str] = Field(default_factory=lambda: list(DEFAULT_CALIBRATED),
                                 description="physical parameters calibrated (see physics_init)")
    physics_init: Literal["calibrated", "default"] = Field(
        "calibrated", description="calibrated: start from the calibrated LaD (the `physics` model, fitted "
        "on whole records) with its parameters fixed; default: start from the table's defaults")
    train_physics: bool = Field(False, description="also train the calibrated parameters with the network")
    pretrain_epochs: int = Field(10, ge=1, description="pretrain_then_finetune: epochs on the simulator")
    fit: Literal["windows", "record"] = Field(
        "windows", description="windows: truncated BPTT over windows started from the model's own trajectory; "
        "record: whole records from the model's spun-up state, one step per epoch (as the calibration)")
    lr: float | None = Field(1e-2, gt=0.0, le=1.0, description="AdamW step (default 1e-2; null: training.lr)")
    epochs: int | None = Field(None, ge=1)
    patience: int | None = Field(None, ge=1)
    seed: Seed = 0
    static_inputs: Annotated[list[Literal[STATIC_INPUTS]], AfterValidator(unique_items)] = Field(  # type: ignore[valid-type]
        default_factory=list, description="static attributes of each site or cell the networks also take "
        "(latitude, elevation, canopy_height, measurement_height, sand_fraction, clay_fraction, the climate "
        "summaries, igbp): one network for every site, no per-site parameters; a site without one is refused")
    static_parameters: list[str] = Field(
        default_factory=list, description="physical parameters (e.g. albedo, kB_inv, soil_thermal_conductivity) "
        "that a network sets for every column from its static attributes, as offsets from the LaD defaults that "
        "start near 0 (differentiable parameter learning, Tsai et al. 2021): one network for every site, so a new "
        "site gets its parameters from its attributes; needs static_inputs")
    static_prior_weight: float = Field(
        0.1, ge=0.0, le=100.0, description="weight of a Gaussian prior on the static_parameters' unconstrained "
        "offsets (their mean square, added to the loss): learned parameters stay near the published defaults "
        "unless the data say otherwise")

    @model_validator(mode="after")
    def _static_parameters(self):
        if not self.static_parameters:
            return self
        if not self.static_inputs:
            raise ValueError(f"static_parameters {self.static_parameters} need static_inputs: the network sets each "
                             "column's parameters from its static attributes")
        unknown = sorted(set(self.static_parameters) - set(self.calibratable()))
        if unknown:
            raise ValueError(f"static_parameters: not learnable: {unknown}; allowed: {self.calibratable()}")
        both = sorted(set(self.static_parameters) & set(self.calibrate))
        if both:  # calibrated (or, from the defaults, trained as a shared offset) and learned: one way only
            raise ValueError(f"{both} both in calibrate and in static_parameters: take each parameter one way "
                             "(leave it out of calibrate)")
        if len(set(self.static_parameters)) < len(self.static_parameters):
            raise ValueError(f"static_parameters: a name repeats in {self.static_parameters}")
        return self


#: the options of HybridOptions that only some of the models taking them read: key -> those models
OPTION_USERS = {
    "use_states": ("hybrid_param", "hybrid_flux", "pretrain_then_finetune"),
    "energy_split": ("hybrid_flux", "pretrain_then_finetune"),
    "depth": ("hybrid_param", "hybrid_flux", "pretrain_then_finetune", "post_correction"),
    "hidden_size": ("hybrid_lstm",),
    "discovery": ("hybrid_param", "hybrid_lstm"),
    "pretrain_epochs": ("pretrain_then_finetune",),
    "fit": ("hybrid_param", "hybrid_flux", "hybrid_lstm"),
    "train_physics": ("hybrid_param", "hybrid_flux", "hybrid_lstm", "pretrain_then_finetune"),
}


def unused_hybrid_options(name: str, opts: HybridOptions) -> dict[str, str]:
    """``ModelSpec.unused_options`` of the hybrid ``name``: the keys other hybrids read (OPTION_USERS)
    and those another option switches off."""
    unused = options_of_others(name, OPTION_USERS)
    if opts.dropout == 0:
        unused["mc_samples"] = NEEDS_DROPOUT
    if opts.physics_init == "default":
        unused.setdefault("train_physics", "used only with physics_init: calibrated (from the default physics the "
                                           "calibrate offsets always train with the network)")
        if name == "post_correction" and opts.calibrate:  # (calibrate: [] says as much, and is accepted)
            unused["calibrate"] = ("post_correction with physics_init: default corrects the default physics, "
                                   "calibrated on nothing")
    if not opts.static_parameters:
        unused["static_prior_weight"] = "used only with static_parameters (a prior on them)"
        if name == "hybrid_lstm":  # its LSTM has hidden_size; width is the static-parameter network's
            unused["width"] = ("hybrid_lstm uses width only for the static_parameters network (hidden_size sizes "
                               "the LSTM)")
    return unused


class LikelihoodOption(BaseModel):
    """The ``likelihood`` option of the hybrids with an aleatoric head (the others refuse the key)."""

    likelihood: Literal["mse", "gaussian"] = Field(
        "mse", description="mse: point prediction trained on the mean square error; gaussian: also an aleatoric "
        "SD per target and step, trained on the Gaussian negative log-likelihood")


class ParameterPriorOption(BaseModel):
    """The ``prior_weight`` option of the hybrids whose networks set parameters (hybrid_param,
    hybrid_lstm); the others refuse the key."""

    prior_weight: float = Field(
        0.0, ge=0.0, le=100.0, description="weight of a Gaussian prior on the learned log multipliers of r_a and "
        "r_s, centred on the LaD defaults (multiplier 1), added to the loss in every epoch: the mean square log "
        "multiplier next to the variance-normalised MSE (0: none). Parameter learning is then pulled toward the "
        "published defaults unless the data say otherwise (issue 12: priors, not free offsets)")


class HybridFluxOptions(HybridOptions, LikelihoodOption):
    """``options`` of ``{name: hybrid_flux}``: the hybrids' options and the likelihood (the flux
    network then also gives each target's aleatoric SD at every step)."""


class HybridParamOptions(HybridOptions, LikelihoodOption, ParameterPriorOption):
    """``options`` of ``{name: hybrid_param}``: the hybrids' options, the likelihood and the derived
    stability inputs."""

    stability_inputs: bool = Field(False, description="also give the parameter network log u and the signed bulk "
                                   "Richardson number (stable and unstable parts) of each step")
    fallback_threshold: float | None = Field(
        None, gt=0.0, description="at prediction, use the physics (multiplier 1) wherever the SD of a learned log "
        "multiplier over 10 dropout passes of the step exceeds this (epistemic fallback; needs dropout > 0)")

    @model_validator(mode="after")
    def _fallback_needs_dropout(self):
        if self.fallback_threshold is not None and self.dropout == 0:
            raise ValueError("fallback_threshold needs dropout > 0: the spread it compares comes from dropout passes")
        return self


class HybridLSTMOptions(HybridOptions, LikelihoodOption, ParameterPriorOption):
    """``options`` of ``{name: hybrid_lstm}``: the hybrids' options and the likelihood (the LSTM
    then also gives each target's aleatoric SD at every step)."""


class PostCorrectionOptions(HybridOptions, LikelihoodOption):
    """``options`` of ``{name: post_correction}``: the hybrids' options and the likelihood."""

    @model_validator(mode="after")
    def _no_static_inputs(self):
        if self.static_inputs:
            raise ValueError("post_correction does not take static_inputs (its network corrects the physics "
                             "from the run's outputs); use hybrid_param, hybrid_flux or hybrid_lstm")
        return self


def _n_inputs(use_states: bool, n_static: int = 0) -> int:
    return N_FORCING_FEATURES + 1 + (N_STATE_FEATURES + 2 if use_states else 0) + n_static


def closure_inputs(c: SurfaceContext, use_states: bool, static: bool = False) -> jax.Array:
    """Network inputs at one step: scaled forcing, net radiation and, optionally, the states and the
    column's static attributes."""
    x = [forcing_features(c.forcing), (c.net_radiation / 500.0)[..., None]]
    if use_states:
        x += [state_features(c.state, c.forcing, c.params), c.beta[..., None], c.snow_cover[..., None]]
    if static:
        x.append(c.params[STATIC_KEY])
    return jnp.concatenate(x, axis=-1)


def _start_near(layer: eqx.nn.Linear, bias) -> eqx.nn.Linear:
    """An output layer that starts near a chosen output: weights x 0.01 and the given bias."""
    return eqx.tree_at(lambda l: (l.weight, l.bias), layer, (layer.weight * 0.01, jnp.asarray(bias, layer.bias.dtype)))


def _small_output_layer(mlp: MLP, bias) -> MLP:
    return eqx.tree_at(lambda m: m.layers[-1], mlp, _start_near(mlp.layers[-1], bias))


# ------------------------------------------------------------------------------ hybrid_flux


class NetworkFluxClosure(Closure):
    """H and LE from an MLP.

    With ``energy_split`` (the default) the network decides how the turbulent energy is split:
    the physics gives the available turbulent energy A = H_bulk + LE_bulk at the current surface
    temperature (with its derivative, so the implicit surface solve keeps its physical feedback),
    the network scales it by a bounded factor m in [0.5, 2] and splits m A into LE and H with the
    energy-split head (H + LE = m A exactly), its evaporative fraction a learned correction (in
    logit space) of the bulk one, so an untrained network starts at the physics. Without ``energy_split`` it predicts H and LE freely
    (300 W m-2 x raw), linearised in T_s with the bulk derivatives. Either way H and LE enter the
    surface flux that drives the soil column, so the model's energy balance Rn = H + LE + G + dS/dt
    closes exactly. With an ``aleatoric`` head (``likelihood: gaussian``) the network also gives each
    target's aleatoric SD at the step, reported as ``<target>_sigma`` [W m-2] and trained on the
    Gaussian NLL, as in hybrid_param."""

    mlp: MLP
    head: EnergySplitHead | None
    use_states: bool = eqx.field(static=True)
    static: bool = eqx.field(static=True, default=False)  # the column's static attributes as inputs
    aleatoric: GaussianHead | None = None  # likelihood gaussian: the SD of each of aleatoric_targets
    aleatoric_targets: tuple[str, ...] = eqx.field(static=True, default=())

    @property
    def n_flux_outputs(self) -> int:
        """Raw outputs that set H and LE (the aleatoric SDs' follow them)."""
        return 2 if self.head is None else 3

    def __call__(self, c: SurfaceContext) -> TurbulentFluxes:
        bulk = BulkClosure()(c)
        lv = c.latent_heat
        raw = self.mlp(closure_inputs(c, self.use_states, self.static), key=c.key)
        n = self.n_flux_outputs
        sigma = {f"{t}{SIGMA_SUFFIX}": SIGMA_SCALE * self.aleatoric.std(raw[..., n + k])
                 for k, t in enumerate(self.aleatoric_targets)}  # fmt: skip
        if self.head is None:
            return TurbulentFluxes(300.0 * raw[..., 0], 300.0 * raw[..., 1] / lv, bulk.dsensible_dt,
                                   bulk.devaporation_dt, sigma)  # fmt: skip
        available = bulk.sensible_heat + lv * bulk.evaporation
        d_available = bulk.dsensible_dt + lv * bulk.devaporation_dt
        factor = 0.5 + 1.5 * jax.nn.sigmoid(raw[..., 2])
        # the network corrects the physics' evaporative fraction in logit space, so an untrained
        # network reproduces the bulk partition and training learns the closure's deviation
        s = self.head.smoothing
        # the positive part of A floored: softplus underflows to 0 in float32 for A < -1000 W m-2
        # (a strong wind over a cold surface), and 0/0 in the derivative made the gradient NaN
        positive = jnp.maximum(s * jax.nn.softplus(available / s), 1e-3)
        ef_bulk = jnp.clip(lv * bulk.evaporation / positive, 0.02, 0.98)
        prior = jnp.log(ef_bulk) - jnp.log1p(-ef_bulk)
        h, le = self.head(jnp.stack([raw[..., 0] + prior, raw[..., 1]], axis=-1), factor * available)
        ef = le / jnp.where(jnp.abs(factor * available) > 1e-6, factor * available, 1.0)
        ef = jax.lax.stop_gradient(jnp.clip(ef, 0.0, 1.0))
        dh = factor * (1.0 - ef) * d_available
        de = factor * ef * d_available / lv
        return TurbulentFluxes(h, le / lv, dh, de, sigma)


def build_flux_closure(opts: HybridOptions, aleatoric: GaussianHead | None = None,
                       targets: tuple[str, ...] = ()) -> NetworkFluxClosure:
    """The flux network of ``opts``; with an ``aleatoric`` head (see ``_aleatoric``) it also gives
    the SD of each of ``targets``."""
    head = EnergySplitHead(residual_scale=30.0) if opts.energy_split else None
    # start at the physics: bulk evaporative fraction (logit correction 0), factor 1 (sigmoid^-1(1/3))
    bias = jnp.asarray([0.0, 0.0, -0.6931] if opts.energy_split else [0.0, 0.0])
    if aleatoric is not None:  # and at an SD of SIGMA_SCALE
        bias = jnp.r_[bias, jnp.full(len(targets), aleatoric.raw_for_std(1.0))]
    mlp = MLP(_n_inputs(opts.use_states, n_static_features(opts.static_inputs)), len(bias), width_size=opts.width,
              depth=opts.depth, dropout=opts.dropout, key=jax.random.key(opts.seed))  # fmt: skip
    mlp = _small_output_layer(mlp, bias)
    return NetworkFluxClosure(mlp, head, opts.use_states, bool(opts.static_inputs), aleatoric, targets)


def flux_column_model(opts: HybridOptions, aleatoric: GaussianHead | None = None,
                      targets: tuple[str, ...] = ()) -> ColumnModel:
    """hybrid_flux's column: the LaD with the flux network as its closure."""
    dtype = jnp.zeros(0).dtype
    land = opts.lad(build_flux_closure(opts, aleatoric, targets))
    return ColumnModel(land=land, deltas=_deltas(opts, dtype), delta_gain=DELTA_GAIN, mc_samples=opts.mc_samples,
                       aleatoric_targets=targets, static_inputs=tuple(opts.static_inputs),
                       **parameter_network(opts, dtype))  # fmt: skip


# ----------------------------------------------------------------------------- hybrid_param


def multiplier_head(dtype=None) -> BoundedHead:
    """Multipliers of r_a and r_s bounded by the parameter table's ra_scale / rs_scale bounds."""
    lo = [PARAMETERS[n].lower for n in MULTIPLIED]
    hi = [PARAMETERS[n].upper for n in MULTIPLIED]
    return BoundedHead(lo, hi, log_space=True, dtype=dtype)


class ParameterNetworkLand(AbstractLandModel):
    """LaD whose r_a and r_s multipliers come from an MLP of forcing and states at every step.

    The learned multipliers scale ``ra_scale`` and ``rs_scale`` before the physics step, so the
    reported Kh, ra and rs are the ones actually used; the step's fluxes carry them as the
    diagnostics ``ra_mult`` and ``rs_mult``, which ``observe`` reports. With ``stability_inputs`` the
    network also sees log u and the signed bulk Richardson number at the start of the step
    (``features.stability_features``), the variables an exchange law is written in. With an
    ``aleatoric`` head (``likelihood: gaussian``) the network also gives each target's aleatoric
    SD at every step, reported as ``<target>_sigma`` [W m-2] and trained on the Gaussian NLL."""

    lad: LaDModel
    mlp: MLP
    head: BoundedHead
    use_states: bool = eqx.field(static=True)
    stability_inputs: bool = eqx.field(static=True, default=False)
    replaced: tuple[str, ...] = eqx.field(static=True, default=())  # multipliers fixed at 1 (a law sets them)
    aleatoric: GaussianHead | None = None  # likelihood gaussian: the SD of each of aleatoric_targets
    aleatoric_targets: tuple[str, ...] = eqx.field(static=True, default=())
    fallback_threshold: float | None = eqx.field(static=True, default=None)  # SD of a log multiplier
    fallback_active: bool = eqx.field(static=True, default=False)  # set at prediction only
    static: bool = eqx.field(static=True, default=False)  # the column's static attributes as inputs

    def init_state(self, params, forcing):
        return self.lad.init_state(params, forcing)

    def with_exchange_law(self, law):
        """The network keeps setting r_s; K_h comes from ``law`` (its r_a multiplier is fixed at 1)."""
        return replace(self, lad=self.lad.with_exchange_law(law), replaced=tuple({*self.replaced, "ra_scale"}))

    def network_outputs(self, state, forcing, params, key=None) -> jax.Array:
        """Raw outputs: the multipliers' (2) and, with an aleatoric head, the SDs' (one per target)."""
        x = [forcing_features(forcing)]
        if self.use_states:
            x.append(state_features(state, forcing, params))
        if self.stability_inputs:
            x.append(stability_features(forcing.wind, self.lad.surface_layer(state, forcing, params).richardson))
        if self.static:
            x.append(params[STATIC_KEY])
        return self.mlp(jnp.concatenate(x, axis=-1), key=key)

    def step(self, state, forcing, params, key=None):
        key_mlp, key_lad = (None, None) if key is None else jax.random.split(key)
        raw = self.network_outputs(state, forcing, params, key_mlp)
        m = self.head(raw[..., : len(MULTIPLIED)])
        fallback = None
        if self.fallback_active and self.fallback_threshold is not None:
            m, fallback = self._fallback(m, state, forcing, params, key_mlp)
        if self.replaced:
            m = jnp.stack([jnp.ones_like(m[..., i]) if name in self.replaced else m[..., i]
                           for i, name in enumerate(MULTIPLIED)], axis=-1)  # fmt: skip
        p = dict(params)
        for i, name in enumerate(MULTIPLIED):
            p[name] = params[name] * m[..., i]
        new_state, fluxes = self.lad.step(state, forcing, p, key_lad)
        diagnostics = {**fluxes.diagnostics, "ra_mult": m[..., 0], "rs_mult": m[..., 1]}
        if fallback is not None:
            diagnostics[FALLBACK_OUTPUT] = fallback
        for k, target in enumerate(self.aleatoric_targets):  # the aleatoric SD [W m-2] of each target
            diagnostics[f"{target}{SIGMA_SUFFIX}"] = SIGMA_SCALE * self.aleatoric.std(raw[..., len(MULTIPLIED) + k])
        return new_state, replace(fluxes, diagnostics=diagnostics)

    def _fallback(self, m, state, forcing, params, key):
        """The multipliers with 1 (the physics) wherever the network is unsure: where the SD of a log
        multiplier over FALLBACK_SAMPLES dropout passes of this step exceeds ``fallback_threshold``
        (the passes use the step's key, or a fixed one in a deterministic run); and the fraction of
        the two multipliers that fell back."""
        key = jax.random.key(MC_KEY) if key is None else jax.random.fold_in(key, 1)
        raws = jax.vmap(lambda k: self.network_outputs(state, forcing, params, k))(
            jax.random.split(key, FALLBACK_SAMPLES))
        spread = jnp.std(jnp.log(self.head(raws[..., : len(MULTIPLIED)])), axis=0, ddof=1)
        unsure = spread > self.fallback_threshold
        return jnp.where(unsure, jnp.ones_like(m), m), jnp.mean(unsure.astype(m.dtype), axis=-1)

    def observe(self, state, fluxes):
        return self.lad.observe(state, fluxes)

    def state_change(self, old, new):
        return self.lad.state_change(old, new)


def multiplier_sparsity(model: ColumnModel, out: dict):
    """L1 on the log multipliers of r_a and r_s (the parameter network's or the LSTM's): learned
    parameters stay at the physics unless data say otherwise."""
    return sparsity_l1([jnp.log(out["ra_mult"]), jnp.log(out["rs_mult"])])


def multiplier_prior(model: ColumnModel, out: dict):
    """The Gaussian prior on the learned multipliers of r_a and r_s (``losses.log_multiplier_prior``)."""
    return log_multiplier_prior([out["ra_mult"], out["rs_mult"]])


def static_parameter_prior(model: ColumnModel, out: dict):
    """A Gaussian prior on the learned static parameters, centred on the defaults: the mean square
    of the parameter network's unconstrained offsets (``STATIC_OFFSETS``)."""
    return jnp.mean(out[STATIC_OFFSETS] ** 2)


def parameter_network(opts: HybridOptions, dtype) -> dict:
    """The ColumnModel fields of the static-parameter network (``static_parameters``), or none: an
    MLP from the static attributes to one offset per parameter, starting near 0 (the defaults)."""
    if not opts.static_parameters:
        return {}
    n = len(opts.static_parameters)
    mlp = MLP(n_static_features(opts.static_inputs), n, width_size=opts.width, depth=1, dtype=dtype,
              key=jax.random.key(opts.seed + 1))  # fmt: skip
    return {"parameter_net": _small_output_layer(mlp, jnp.zeros(n, dtype)),
            "static_parameters": tuple(opts.static_parameters)}


# ------------------------------------------------------------------------------ registry


#: the calibrated offsets of a hybrid take Adam steps DELTA_GAIN times the network's learning rate
DELTA_GAIN = 5.0


def _deltas(opts: HybridOptions, dtype, exclude=()) -> dict:
    return {name: jnp.zeros((), dtype) for name in opts.calibrate if name not in exclude}


class _HybridSpec(ColumnSpec):
    Options = HybridOptions
    sparsity_fn = None

    def unused_options(self, options: HybridOptions) -> dict[str, str]:
        return unused_hybrid_options(self.name, options)

    def _law(self, opts, dtype):
        return ExchangeLaw.neutral(dtype) if opts.discovery else None

    def provenance(self, model, domain):
        return [f"network shared by every column; physical parameters: {p}" for p in column_provenance(model, domain)]

    def priors(self, options: HybridOptions) -> list[tuple]:
        """``(fn, weight)`` of each prior on what the networks learn."""
        return [(static_parameter_prior, options.static_prior_weight)] if options.static_parameters else []

    def loss_prior(self, options: HybridOptions) -> tuple | None:
        """``(fn, weight)`` of the prior term of the training loss (``column_fit.make_loss``), or None."""
        priors = [(fn, w) for fn, w in self.priors(options) if w > 0]
        if not priors:
            return None
        if len(priors) == 1:
            return priors[0]
        return (lambda model, out: sum(w * fn(model, out) for fn, w in priors)), 1.0

    def train(self, model, options: HybridOptions, train, val, ctx: TrainingContext):
        model, filter_spec, _ = start_from_physics(model, train, val, ctx, options)
        return train_column_model(
            model, train, val, ctx, targets=options.targets, train_cfg=training_config(ctx, options),
            sparsity_fn=self.sparsity_fn, filter_spec=filter_spec, fit_mode=options.fit,
            prior=self.loss_prior(options),
        )  # fmt: skip

    vmapped_members = True

    def vmap_refusal(self, options: HybridOptions, training) -> str | None:
        if not self.vmapped_members:
            return super().vmap_refusal(options, training)
        if training.two_phase.enabled:
            return "two-phase training stops phase 1 at a different epoch for each member"
        if training.devices != 1:
            return "the columns of a batch are split over several devices"
        return None

    def train_members(self, models, options, train, val, ctx: TrainingContext, member_train):
        starts = [start_from_physics(m, t, val, ctx, o) for m, o, t in zip(models, options, member_train)]
        trained = train_column_model(
            stack_members([s[0] for s in starts]), train, val, ctx, targets=options[0].targets,
            train_cfg=training_config(ctx, options[0]), sparsity_fn=self.sparsity_fn, filter_spec=starts[0][1],
            fit_mode=options[0].fit, member_train=member_train, prior=self.loss_prior(options[0]),
        )  # fmt: skip
        return unstack_members(trained, len(models))

    def training_bytes(self, options: HybridOptions, train, ctx: TrainingContext) -> int:
        return training_bytes(train, ctx, training_config(ctx, options), options.fit)


def start_from_physics(model: ColumnModel, train, val, ctx: TrainingContext, opts: HybridOptions):
    """``model`` with the calibrated LaD's parameter offsets (``physics_init="calibrated"``), the
    filter spec of what trains (the offsets stay fixed unless ``train_physics``) and the physics
    model it started from (the default LaD with ``physics_init="default"``).

    Calibration on whole records captures seasonal water storage that the hybrid's windows cannot
    (module ``column_fit``), so the network learns what calibrated physics misses; its multipliers
    and energy split start at the calibrated physics (multiplier 1, bulk split)."""
    model = replace(model, time_steps=training_time_steps(train))
    if opts.physics_init == "default":
        return model, None, ColumnModel(land=opts.lad(), deltas={})
    physics = calibrate_physics(
        train, val, ctx.sub("physics_init"),
        PhysicsOptions(calibrate=opts.calibrate, stability=opts.stability, deep_water=opts.deep_water,
                       targets=opts.targets),
    )  # fmt: skip
    deltas = {k: v / model.delta_gain for k, v in calibrated_offsets(physics).items()}
    model = replace(model, deltas=deltas, sites=physics.sites, site_classes=physics.site_classes,
                    calibrated_on=physics.calibrated_on)
    spec = trainable_filter(model)
    if not opts.train_physics:
        spec = eqx.tree_at(lambda m: m.deltas, spec, {k: False for k in deltas})
    return model, spec, physics


@register_model("hybrid_flux")
class HybridFlux(_HybridSpec):
    Options = HybridFluxOptions

    def build(self, options: HybridFluxOptions) -> ColumnModel:
        return flux_column_model(options, *_aleatoric(options))


def _aleatoric(options) -> tuple[GaussianHead | None, tuple[str, ...]]:
    """The aleatoric head and its targets of a ``likelihood: gaussian`` hybrid; (None, ()) for mse."""
    if options.likelihood != "gaussian":
        return None, ()
    return GaussianHead(len(options.targets), *TARGET_STD_RANGE), tuple(options.targets)


def _start_bias(head: BoundedHead, aleatoric: GaussianHead | None, targets: tuple[str, ...]) -> jax.Array:
    """Output biases that start a parameter network at the physics (multipliers 1) and, with an
    aleatoric head, at an SD of SIGMA_SCALE."""
    bias = head.inverse(jnp.ones(len(MULTIPLIED)))
    return bias if aleatoric is None else jnp.r_[bias, jnp.full(len(targets), aleatoric.raw_for_std(1.0))]


class _LearnsMultipliers(_HybridSpec):
    """A hybrid whose network sets the r_a and r_s multipliers (``prior_weight``)."""

    def priors(self, options: HybridParamOptions | HybridLSTMOptions) -> list[tuple]:
        return [(multiplier_prior, options.prior_weight), *super().priors(options)]


@register_model("hybrid_param")
class HybridParam(_LearnsMultipliers):
    Options = HybridParamOptions
    learned_parameters = LEARNED_PARAMETERS
    sparsity_fn = staticmethod(multiplier_sparsity)

    def build(self, options: HybridParamOptions) -> ColumnModel:
        dtype = jnp.zeros(0).dtype
        head = multiplier_head(dtype)
        n_in = (N_FORCING_FEATURES + (N_STATE_FEATURES if options.use_states else 0)
                + (N_STABILITY_FEATURES if options.stability_inputs else 0) + n_static_features(options.static_inputs))
        aleatoric, targets = _aleatoric(options)
        mlp = MLP(n_in, len(MULTIPLIED) + len(targets), width_size=options.width, depth=options.depth,
                  dropout=options.dropout, key=jax.random.key(options.seed))  # fmt: skip
        mlp = _small_output_layer(mlp, _start_bias(head, aleatoric, targets))
        land = ParameterNetworkLand(options.lad(), mlp, head, options.use_states,
                                    options.stability_inputs, aleatoric=aleatoric, aleatoric_targets=targets,
                                    fallback_threshold=options.fallback_threshold, static=bool(options.static_inputs))
        return ColumnModel(land=land, deltas=_deltas(options, dtype, MULTIPLIED), law=self._law(options, dtype),
                           delta_gain=DELTA_GAIN, mc_samples=options.mc_samples, aleatoric_targets=targets,
                           static_inputs=tuple(options.static_inputs), **parameter_network(options, dtype))  # fmt: skip

    def as_predicted(self, model: ColumnModel) -> ColumnModel:
        """With ``fallback_threshold``: the epistemic fallback active (it never acts in training)."""
        if model.land.fallback_threshold is None:
            return model
        return replace(model, land=replace(model.land, fallback_active=True))

    def predict(self, model: ColumnModel, domain: Domain) -> dict[str, np.ndarray]:
        """With ``fallback_threshold`` the epistemic fallback acts and the output ``fallback`` is
        the fraction of the multipliers that fell back at each step."""
        if model.land.fallback_threshold is None:
            return predict_column_model(model, domain)
        return predict_column_model(self.as_predicted(model), domain, (*PREDICTION_OUTPUTS, FALLBACK_OUTPUT))


@register_model("hybrid_lstm")
class HybridLSTM(_LearnsMultipliers):
    Options = HybridLSTMOptions
    learned_parameters = LEARNED_PARAMETERS
    sparsity_fn = staticmethod(multiplier_sparsity)  # the LSTM's multipliers, as ColumnModel.run reports them

    def learns_time_step(self, options: HybridLSTMOptions) -> bool:
        return True

    def build(self, options: HybridLSTMOptions) -> ColumnModel:
        dtype = jnp.zeros(0).dtype
        head = multiplier_head(dtype)
        aleatoric, targets = _aleatoric(options)
        net = LSTM(N_FORCING_FEATURES + n_static_features(options.static_inputs), len(MULTIPLIED) + len(targets),
                   hidden_size=options.hidden_size, dropout=options.dropout, key=jax.random.key(options.seed))
        net = eqx.tree_at(lambda n: n.head, net, _start_near(net.head, _start_bias(head, aleatoric, targets)))
        return ColumnModel(land=options.lad(), deltas=_deltas(options, dtype, MULTIPLIED),
                           dynamic_net=net, dynamic_head=head, dynamic_names=MULTIPLIED,
                           law=self._law(options, dtype), delta_gain=DELTA_GAIN, mc_samples=options.mc_samples,
                           static_inputs=tuple(options.static_inputs), dynamic_aleatoric=aleatoric,
                           aleatoric_targets=targets, **parameter_network(options, dtype))  # fmt: skip


@register_model("pretrain_then_finetune")
class PretrainThenFinetune(HybridFlux):
    """hybrid_flux trained first on the physics' own simulated Qh / Qle over the whole training
    record (every step, no QC; the calibrated LaD it starts from), then on the observations.

    No ``likelihood`` option: on the noise-free simulator the aleatoric SD would be driven to its
    floor, where the softplus leaves it almost no gradient to recover on the observations."""

    Options = HybridOptions

    def build(self, options: HybridOptions) -> ColumnModel:
        return flux_column_model(options)

    vmapped_members = False  # two trainings in turn: an ensemble's members train one after the other

    def train(self, model, options: HybridOptions, train, val, ctx: TrainingContext):
        targets = options.targets
        model, filter_spec, physics = start_from_physics(model, train, val, ctx, options)

        def simulator_targets(rec: SiteRecord) -> SiteRecord:
            _, out = run_jit(physics, rec.forcing, rec.base, rec.state0)
            sim = np.stack([np.asarray(out[t])[:, 0] for t in targets], -1)
            usable = np.repeat(rec.split_mask[:, None], len(targets), axis=1)
            return replace(rec, obs=sim, mask=usable)

        tc = training_config(ctx, options)
        pre_cfg = tc.model_copy(update={"epochs": options.pretrain_epochs,
                                        "two_phase": tc.two_phase.model_copy(update={"enabled": False})})  # fmt: skip
        prior = self.loss_prior(options)  # static_parameters' prior, in both stages
        model = train_column_model(model, train, val, ctx.sub("pretrain"), targets=targets, train_cfg=pre_cfg,
                                   target_override=simulator_targets, filter_spec=filter_spec, prior=prior)  # fmt: skip
        return train_column_model(model, train, val, ctx.sub("finetune"), targets=targets, train_cfg=tc,
                                  filter_spec=filter_spec, prior=prior)  # fmt: skip


# --------------------------------------------------------------------------- post_correction




class PostCorrection(eqx.Module):
    """Calibrated (or default) LaD followed by an MLP that corrects its Qh / Qle from the physics
    outputs, states and forcing (residual form: corrected = physics + scale * MLP).

    A statistical correction of two outputs, not of the physics: Evap moves with the corrected Qle
    (the correction over the latent heat of vaporisation at the air temperature), so that the
    written water and energy fluxes agree; Rnet, Qg, the surface temperature and the states stay
    the physics', so Rnet - Qh - Qle - Qg no longer closes by the correction (``predict``).

    With ``likelihood: gaussian`` the MLP's 2K outputs go through a :class:`GaussianHead`: the
    correction's mean and an aleatoric SD (``scale`` units, in ````neural.TARGET_STD_RANGE````), trained with the masked Gaussian negative log-likelihood."""

    physics: ColumnModel
    mlp: MLP
    targets: tuple[str, ...] = eqx.field(static=True)
    scale: tuple[float, ...] = eqx.field(static=True)
    mc_samples: int = eqx.field(static=True, default=MC_SAMPLES)
    head: GaussianHead | None = None

    def corrected(self, out: dict, domain: Domain) -> dict[str, np.ndarray]:
        """The corrected targets (the deterministic network's mean) of a physics run ``out`` of ``domain``."""
        corr, _ = _correct(self, jnp.asarray(_post_features(out, domain)))
        return {t: out[t] + self.scale[k] * np.asarray(corr[..., k]) for k, t in enumerate(self.targets)}


def _post_features(out: dict, domain: Domain) -> np.ndarray:
    """(T, N, F) inputs of the correction network from a physics rollout of ``domain``."""
    from ..physics import forcing_from_datasets

    f = forcing_from_datasets([domain.data])
    state = LaDState(soil_temp=jnp.asarray(out["SoilTemp"]), soil_water=jnp.asarray(out["SoilMoist"]),
                     snow=jnp.asarray(out["SWE"]), groundwater=jnp.asarray(out["GWS"]))  # fmt: skip
    base, _, _ = domain_base_params(domain)
    phys = np.stack([out["Qh"] / 300.0, out["Qle"] / 300.0, out["Rnet"] / 500.0, out["Qg"] / 100.0], -1)
    return np.concatenate([np.asarray(forcing_features(f)), phys, np.asarray(state_features(state, f, base))], axis=-1)


def _moments(model: PostCorrection, x, key=None):
    """Correction and its variance (``scale`` units; variance 0 without a Gaussian head)."""
    raw = model.mlp(x, key=key)
    if model.head is None:
        return raw, jnp.zeros_like(raw)
    mean, std = model.head(raw)
    return mean, std * std


@eqx.filter_jit
def _correct(model: PostCorrection, x):
    return _moments(model, x)


@eqx.filter_jit
def _sample_corrections(model: PostCorrection, x, keys):
    return jax.vmap(lambda key: _moments(model, x, key))(keys)


@register_model("post_correction")
class PostCorrectionSpec(EquinoxSpec):
    Options = PostCorrectionOptions
    targets = COLUMN_TARGETS

    def unused_options(self, options: PostCorrectionOptions) -> dict[str, str]:
        return unused_hybrid_options(self.name, options)

    def build(self, options: PostCorrectionOptions) -> PostCorrection:
        k = len(options.targets)
        head = (GaussianHead(k, *TARGET_STD_RANGE)
                if options.likelihood == "gaussian" else None)  # fmt: skip
        mlp = MLP(N_FORCING_FEATURES + 4 + N_STATE_FEATURES, k if head is None else head.raw_size,
                  width_size=options.width, depth=options.depth, dropout=options.dropout,
                  key=jax.random.key(options.seed))  # fmt: skip
        # start at no correction (and an SD of one scale: the RMS of the physics' errors)
        bias = jnp.zeros(k) if head is None else jnp.r_[jnp.zeros(k), jnp.full(k, head.raw_for_std(1.0))]
        mlp = _small_output_layer(mlp, bias)
        physics = ColumnModel(land=options.lad(), deltas={})
        return PostCorrection(physics, mlp, tuple(options.targets), (1.0,) * k, options.mc_samples, head)

    def structure(self, model: PostCorrection) -> dict:
        return {**column_structure(model.physics), "scale": list(model.scale)}

    def skeleton(self, options: PostCorrectionOptions, structure: dict) -> PostCorrection:
        model = self.build(options)
        return replace(model, physics=column_skeleton(model.physics, structure), scale=tuple(structure["scale"]))

    def _rows(self, model: PostCorrection, domains: Sequence[Domain], max_qc: int):
        """(rows, F) inputs, (rows, K) residual targets and masks of every column of ``domains``."""
        xs, ys, ms = [], [], []
        for d in domains:
            out = predict_column_model(model.physics, d)
            x = _post_features(out, d)
            for j in range(d.n_columns):
                obs, mask = usable_targets(d.column(j), model.targets, max_qc)
                sim = np.stack([out[t][:, j] for t in model.targets], -1)
                xs.append(x[:, j])
                ys.append(np.where(mask, obs - sim, 0.0))
                ms.append(mask)
        return np.concatenate(xs), np.concatenate(ys), np.concatenate(ms)

    def train(self, model: PostCorrection, options: PostCorrectionOptions, train, val, ctx: TrainingContext):
        physics, _, _ = start_from_physics(model.physics, train, val, ctx, options)
        model = eqx.tree_at(lambda m: m.physics, model, physics)
        x, y, m = self._rows(model, train, ctx.max_qc)
        keep = m.any(axis=1)
        if not keep.any():
            raise ValueError("post_correction: no usable training target (check QC and split)")
        x, y, m = x[keep], y[keep], m[keep]
        scale = np.maximum(np.sqrt(np.mean(np.where(m, y, 0.0) ** 2, axis=0)), 1.0)
        model = replace(model, scale=tuple(float(s) for s in scale))
        xv, yv, mv = self._rows(model, val, ctx.max_qc)
        xv, yv, mv = (jnp.asarray(a) for a in (xv, yv / scale, mv))
        xj, yj, mj = jnp.asarray(x), jnp.asarray(y / scale), jnp.asarray(m)
        size = min(4096, x.shape[0])

        def batches(key):
            order = np.asarray(jax.random.permutation(key, x.shape[0]))
            return [{"x": xj[order[i:i + size]], "y": yj[order[i:i + size]], "m": mj[order[i:i + size]]}
                    for i in range(0, x.shape[0] - size + 1, size)]  # fmt: skip

        def loss_fn(mdl, batch, key, weights):
            if mdl.head is not None:
                nll = gaussian_nll(*mdl.head(mdl.mlp(batch["x"], key=key)), batch["y"], batch["m"])
                return nll, {"nll": nll}
            err = jnp.where(batch["m"], mdl.mlp(batch["x"], key=key) - batch["y"], 0.0)
            mse = jnp.sum(err**2) / jnp.maximum(jnp.sum(batch["m"]), 1)
            return mse, {"mse": mse}

        def val_fn(mdl):
            mean, var = _correct(mdl, xv)
            if mdl.head is not None:
                return float(gaussian_nll(mean, jnp.sqrt(var), yv, mv))
            err = jnp.where(mv, mean - yv, 0.0)
            return float(jnp.sum(err**2) / jnp.maximum(jnp.sum(mv), 1))

        tc = training_config(ctx, options)
        # one phase, on one device (its row batches are not split over a mesh)
        tc = tc.model_copy(update={"two_phase": tc.two_phase.model_copy(update={"enabled": False}), "devices": 1})
        # only the MLP trains: the physics it corrects stays as calibrated
        return fit(model, loss_fn, batches, val_fn, tc, checkpoint_dir=ctx.checkpoint_dir,
                   filter_spec=_mlp_only(model), progress=ctx.progress,
                   resume=ctx.checkpoint_dir is not None).model  # fmt: skip

    def predict(self, model: PostCorrection, domain: Domain, *, key=None):
        """The physics with the corrected targets; with dropout the mean of ``mc_samples`` MC-dropout
        corrections and the targets' ``_sd`` (``neural.mc_dropout``); with a Gaussian head also
        ``_sd_aleatoric`` (the total ``_sd`` is the aleatoric one without dropout)."""
        out = predict_column_model(model.physics, domain)
        x = jnp.asarray(_post_features(out, domain))
        gaussian = model.head is not None

        def corrected(moments):
            corr, var = moments
            res = {t: out[t] + model.scale[k] * np.asarray(corr[..., k]) for k, t in enumerate(model.targets)}
            if gaussian:
                res |= {f"{t}_var": model.scale[k] ** 2 * np.asarray(var[..., k], np.float64)
                        for k, t in enumerate(model.targets)}  # fmt: skip
            return res

        if dropout_rate(model) == 0:
            res = corrected(_correct(model, x))
            for t in model.targets if gaussian else ():
                res[f"{t}_sd"] = res[f"{t}_sd_aleatoric"] = np.sqrt(res.pop(f"{t}_var"))
        else:
            batch = mc_batch_size(model.mc_samples,
                                  (16 if gaussian else 8) * x.shape[0] * x.shape[1] * len(model.targets))
            res = mc_dropout(lambda keys: corrected(_sample_corrections(model, x, keys)),
                             jax.random.key(MC_KEY) if key is None else key, model.mc_samples, model.targets, batch)
        if "Qle" in res:  # the evaporation that the corrected latent heat flux means
            lv = latent_heat_vaporisation(np.asarray(domain.data["Tair"].values, np.float64))
            res["Evap"] = out["Evap"] + (res["Qle"] - out["Qle"]) / lv
        return out | res

    def provenance(self, model, domain):
        return [f"correction network shared by every column; physics: {p}"
                for p in column_provenance(model.physics, domain)]  # fmt: skip


def _mlp_only(model: PostCorrection):
    """Filter spec: the correction network's weights train, the calibrated physics does not."""
    spec = trainable_filter(model)
    return eqx.tree_at(lambda m: m.physics, spec, jax.tree_util.tree_map(lambda _: False, spec.physics))
