"""Physics-only models: ``physics`` (calibrated LaD) and ``fixed_kh`` (LaD with a fixed empirical
exchange coefficient, the "traditional PGML" baseline of the regional study)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..constants import CP_AIR
from ..data.schema import site_label
from ..physics import CALIBRATABLE, LaDModel
from ..physics.closure import Closure, SurfaceContext, TurbulentFluxes
from ..physics.turbulence import neutral_aerodynamic_resistance
from .column import ColumnModel, delta_sparsity, predict_column_model, train_column_model, training_config
from .registry import register_model

#: Parameters calibrated by default: the exchange and stomatal knobs, water capacity, albedo,
#: roughness ratio and soil conductivity (those the fluxes are most sensitive to).
DEFAULT_CALIBRATED = ("rs_scale", "ra_scale", "root_zone_capacity", "beta_threshold", "kB_inv",
                      "albedo", "soil_thermal_conductivity")  # fmt: skip


RECORD_EPOCHS = 60  # one Adam step per epoch over whole records


class PhysicsOptions(BaseModel):
    """``options`` of ``{name: physics}`` / ``{name: fixed_kh}``."""

    model_config = ConfigDict(extra="forbid")

    calibrate: list[str] = Field(default_factory=lambda: list(DEFAULT_CALIBRATED), description=(
        "parameters fitted per site; [] runs LaD with its IGBP-table defaults (no training)"))
    stability: Literal["louis", "businger_dyer"] = "louis"
    targets: list[Literal["Qle", "Qh"]] = Field(default_factory=lambda: ["Qle", "Qh"], min_length=1)
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

    @field_validator("calibrate")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(CALIBRATABLE))
        if unknown:
            raise ValueError(f"not calibratable: {unknown}; allowed: {list(CALIBRATABLE)}")
        return value


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


class PhysicsSpec:
    """Calibrated LaD: gradient-based fit of a subset of parameters through the full rollout."""

    Options = PhysicsOptions
    closure_cls = None

    def build(self, options: PhysicsOptions, datasets_train):
        dtype = jnp.zeros(0).dtype
        land = LaDModel(stability=options.stability)
        if self.closure_cls is not None:
            land = LaDModel(closure=self.closure_cls(), stability=options.stability)
        deltas = {name: jnp.zeros((), dtype) for name in options.calibrate if not (
            self.closure_cls is not None and name == "ra_scale")}  # fmt: skip
        return ColumnModel(land=land, deltas=deltas)

    def train(self, model, train_data, val_data, cfg, ckpt_dir, options: PhysicsOptions | None = None):
        options = options or PhysicsOptions()
        if self.closure_cls is None:  # shared with the hybrids that start from calibrated physics
            return calibrate_physics(train_data, val_data, cfg, options, ckpt_dir)
        return _calibrate(model, train_data, val_data, cfg, options, ckpt_dir)

    def predict(self, model, ds):
        return predict_column_model(model, ds)


@register_model("physics")
class CalibratedPhysics(PhysicsSpec):
    pass


@register_model("fixed_kh")
class FixedKhPhysics(PhysicsSpec):
    closure_cls = NeutralExchangeClosure


# ------------------------------------------------------------------ calibration, shared


def _calibrate(model, train_data, val_data, cfg, options: PhysicsOptions, ckpt_dir):
    if not model.deltas:  # ``calibrate: []``: LaD with its IGBP-table defaults, the uncalibrated reference
        return model
    if options.fit == "record" and options.epochs is None:
        options = options.model_copy(update={"epochs": RECORD_EPOCHS})
    sites = sorted({site_label(ds) for ds in train_data})
    if options.per_site and len(sites) > 1 and cfg.data.split.mode != "leave_one_site_out":
        model = model.per_site(sites)
    return train_column_model(
        model, train_data, val_data, cfg, ckpt_dir,
        targets=options.targets, train_cfg=training_config(cfg, options), sparsity_fn=delta_sparsity,
        fit_mode=options.fit, state_rounds=options.rounds,
    )  # fmt: skip


_CALIBRATED: dict[str, ColumnModel] = {}


def _data_key(datasets: Sequence[xr.Dataset]) -> list:
    """Sites, periods and loss masks (the split) of ``datasets``, hashable."""
    out = []
    for ds in datasets:
        mask = np.asarray(ds["loss_mask"].values if "loss_mask" in ds else [], bool)
        out.append((ds.attrs.get("site_id"), str(ds["time"].values[0]), ds.sizes["time"],
                    hashlib.sha256(np.packbits(mask).tobytes()).hexdigest()))  # fmt: skip
    return out


def calibrate_physics(train_data, val_data, cfg, options: PhysicsOptions, ckpt_dir) -> ColumnModel:
    """Calibrated LaD for these data and options: trained once per process and reused (the
    ``physics`` model and every hybrid that starts from calibrated physics share it)."""
    key = hashlib.sha256(repr((_data_key(train_data), _data_key(val_data), options.model_dump(),
                               cfg.data.model_dump(mode="json"), cfg.training.model_dump(mode="json"),
                               str(jnp.zeros(0).dtype))).encode()).hexdigest()  # fmt: skip
    if key not in _CALIBRATED:
        model = CalibratedPhysics().build(options, train_data)
        _CALIBRATED[key] = _calibrate(model, train_data, val_data, cfg, options, ckpt_dir)
    return _CALIBRATED[key]


def calibrated_offsets(physics: ColumnModel) -> dict[str, jax.Array]:
    """The calibrated unconstrained offsets of a ``physics`` model (delta_gain applied)."""
    return {name: physics.delta_gain * d for name, d in physics.deltas.items()}
