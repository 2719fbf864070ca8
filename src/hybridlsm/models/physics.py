"""Physics-only models: ``physics`` (calibrated LaD) and ``fixed_kh`` (LaD with a fixed empirical
exchange coefficient, the "traditional PGML" baseline of the regional study)."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Literal

import jax
import jax.numpy as jnp
from pydantic import BaseModel, Field, model_validator

from ..config import OPTIONS_CONFIG

from ..constants import CP_AIR
from ..physics import CALIBRATABLE, LaDModel
from ..physics.parameters import OPTION_CALIBRATABLE
from ..physics.closure import BulkClosure, Closure, SurfaceContext, TurbulentFluxes
from ..physics.turbulence import neutral_aerodynamic_resistance
from .column import COLUMN_TARGETS, DEFAULT_COLUMN_TARGETS, ColumnModel, column_igbp
from .column_spec import ColumnSpec
from .column_fit import FitOptions, delta_sparsity, train_column_model, training_config
from .registry import TrainingContext, data_key, get_model, register_model

#: Parameters calibrated by default: the exchange and stomatal knobs, water capacity, albedo,
#: roughness ratio and soil conductivity (those the fluxes are most sensitive to).
DEFAULT_CALIBRATED = ("rs_scale", "ra_scale", "root_zone_capacity", "beta_threshold", "kB_inv",
                      "albedo", "soil_thermal_conductivity")  # fmt: skip


RECORD_EPOCHS = 60  # one Adam step per epoch over whole records


class LandOptions(BaseModel):
    """The options of the LaD column that the physics and the hybrids share (``lad`` builds it)."""

    stability: Literal["louis", "businger_dyer"] = "louis"
    deep_water: Literal["none", "groundwater", "table"] = Field("none", description=(
        "roots below LaD's root zone (fraction deep_root_fraction, Jackson et al. 1996; add it to "
        "calibrate to fit it) draw on the groundwater store W_g or on a water table below the column "
        "(physics.lad); none: LaD"))

    calibrate: list[str] = Field(default_factory=lambda: list(DEFAULT_CALIBRATED), description=(
        "parameters fitted per site; [] runs LaD with its IGBP-table defaults (no training)"))

    @model_validator(mode="after")
    def _known(self) -> LandOptions:
        allowed = self.calibratable()
        unknown = sorted(set(self.calibrate) - set(allowed))
        if unknown:
            raise ValueError(f"calibrate: not calibratable: {unknown}; allowed: {allowed}"
                             + (" (deep_root_fraction needs deep_water: groundwater or table)"
                                if "deep_root_fraction" in unknown else ""))  # fmt: skip
        if len(set(self.calibrate)) < len(self.calibrate):
            raise ValueError(f"calibrate: a name repeats in {self.calibrate}")
        return self

    def calibratable(self) -> list[str]:
        """The parameters that can be fitted (or learned) with these options."""
        return list(CALIBRATABLE) + [name for name, (option, values) in OPTION_CALIBRATABLE.items()
                                     if getattr(self, option) in values]  # fmt: skip

    def lad(self, closure: Closure | None = None) -> LaDModel:
        """The LaD column with these options and ``closure`` (the bulk closure by default)."""
        return LaDModel(closure=BulkClosure() if closure is None else closure, stability=self.stability,
                        deep_water=self.deep_water)  # fmt: skip


class PhysicsOptions(FitOptions, LandOptions):
    """``options`` of ``{name: physics}`` / ``{name: fixed_kh}``."""

    model_config = OPTIONS_CONFIG

    targets: list[Literal[COLUMN_TARGETS]] = Field(default_factory=lambda: list(DEFAULT_COLUMN_TARGETS), min_length=1)  # type: ignore[valid-type]
    lr: float | None = Field(0.05, gt=0.0, le=1.0, description="Adam step on the unconstrained offsets")
    fit: Literal["record", "windows"] = Field(
        "record", description="record: whole records through a differentiated spin-up cycle, one step "
        "per epoch (captures seasonal water storage); windows: truncated BPTT as the hybrids")
    epochs: int | None = Field(None, ge=1, description="default: 60 (record), the run's epochs (windows)")
    rounds: int = Field(3, ge=1, description="state-refresh rounds: each restarts the fit from the "
                        "state the current parameters spin up to (epochs are split between them)")
    per_site: bool = Field(True, description="one parameter set per site when several sites train with a "
                           "time split (leave-one-site-out always shares one set: the test site has none)")
    patience: int | None = Field(None, ge=1)


class NeutralExchangeClosure(Closure):
    """Bulk H and E with the neutral log-law exchange coefficient (no stability correction, no
    calibration of r_a): K_h depends on wind and roughness only."""

    def __call__(self, c: SurfaceContext) -> TurbulentFluxes:
        p = c.params
        d = p["displacement_fraction"] * p["canopy_height"]
        zd = jnp.maximum(p["reference_height"] - d, 2.0 * p["z0m"])
        ra = neutral_aerodynamic_resistance(c.wind, zd, p["z0m"], p["z0m"] * jnp.exp(-p["kB_inv"]))
        gh = c.rho_air * CP_AIR / ra
        gq = c.beta * c.rho_air / (ra + c.surface_resistance)
        return TurbulentFluxes(gh * (c.t_surface - c.theta_air), gq * (c.q_sat - c.q_air), gh, gq * c.dq_sat_dt)


class PhysicsSpec(ColumnSpec):
    """Calibrated LaD: gradient-based fit of a subset of parameters through the full rollout."""

    Options = PhysicsOptions
    closure_cls: type[Closure] | None = None

    def build(self, options: PhysicsOptions) -> ColumnModel:
        dtype = jnp.zeros(0).dtype
        land = options.lad(None if self.closure_cls is None else self.closure_cls())
        deltas = {name: jnp.zeros((), dtype) for name in options.calibrate if not (
            self.closure_cls is not None and name == "ra_scale")}  # fmt: skip
        return ColumnModel(land=land, deltas=deltas)

    def needs_observations(self, options: PhysicsOptions) -> bool:
        return bool(options.calibrate)  # ``calibrate: []``: LaD with its table's defaults

    def train(self, model, options: PhysicsOptions, train, val, ctx: TrainingContext) -> ColumnModel:
        if self.closure_cls is None:  # shared with the hybrids that start from calibrated physics
            return calibrate_physics(train, val, ctx, options)
        return _calibrate(model, train, val, ctx, options)


@register_model("physics")
class CalibratedPhysics(PhysicsSpec):
    def reuse(self, model, options, train, val, ctx) -> None:
        """A resumed run's saved calibration serves the hybrids that start from it."""
        ctx.cache.setdefault(_calibration_key(train, val, ctx, options), model)


@register_model("fixed_kh")
class FixedKhPhysics(PhysicsSpec):
    closure_cls = NeutralExchangeClosure


# ------------------------------------------------------------------ calibration, shared


def _calibrate(model: ColumnModel, train, val, ctx: TrainingContext, options: PhysicsOptions) -> ColumnModel:
    if not model.deltas:  # ``calibrate: []``: LaD with its IGBP-table defaults, the uncalibrated reference
        return model
    if options.fit == "record" and options.epochs is None:
        options = options.model_copy(update={"epochs": RECORD_EPOCHS})
    columns = {cid: column_igbp(str(d.static_value("igbp")[i]), cid)[0] for d in train
               for i, cid in enumerate(d.column_ids)}  # fmt: skip
    sites = sorted(columns)
    if options.per_site and len(columns) > 1 and not ctx.shared_parameters:
        model = model.per_site(sites, [columns[s] for s in sites])
    else:
        model = replace(model, calibrated_on=tuple(sites))
    return train_column_model(
        model, train, val, ctx,
        targets=options.targets, train_cfg=training_config(ctx, options), sparsity_fn=delta_sparsity,
        fit_mode=options.fit, state_rounds=options.rounds,
    )  # fmt: skip


def _calibration_key(train, val, ctx: TrainingContext, options: PhysicsOptions) -> str:
    """What a calibration depends on, as the key of ``ctx.cache`` (not the training seed: the
    calibration is a deterministic whole-record fit, shared by an ensemble's members)."""
    return "calibrated:" + hashlib.sha256(repr((data_key(train), data_key(val), options.model_dump(),
                                                ctx.max_qc, ctx.spinup_days, ctx.window_days, ctx.shared_parameters,
                                                ctx.training.model_dump(mode="json", exclude={"seed"}),
                                                str(jnp.zeros(0).dtype))).encode()).hexdigest()  # fmt: skip


def calibrate_physics(train, val, ctx: TrainingContext, options: PhysicsOptions) -> ColumnModel:
    """Calibrated LaD for these data and options: trained once per run (``ctx.cache``) and reused
    (the ``physics`` model and every hybrid that starts from calibrated physics share it)."""
    key = _calibration_key(train, val, ctx, options)
    if key not in ctx.cache:
        model = get_model("physics").build(options)
        ctx.cache[key] = _calibrate(model, train, val, ctx, options)
    return ctx.cache[key]


def calibrated_offsets(physics: ColumnModel) -> dict[str, jax.Array]:
    """The calibrated unconstrained offsets of a ``physics`` model (delta_gain applied)."""
    return {name: physics.delta_gain * d for name, d in physics.deltas.items()}
