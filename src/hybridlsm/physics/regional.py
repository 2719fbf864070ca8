"""Gridded physics: LaD columns on a regular grid coupled through a finite-volume air layer.

The regional model of seed 000 §2.2 as an :class:`AbstractLandModel`, so ``rollout``,
``rollout_reduce``, ``simulate`` and ``spin_up`` run it unchanged. The N = ny * nx cells (C order)
are the column axis, as for every model; the grid shape lives in the air layer.

One step of ``dt`` (the forcing's step), split into ``n`` coupled sub-steps of ``dt / n``:

1. every column takes one LaD step (implicit in its surface temperature, exactly conserving
   energy and water) with the air layer's mid-step temperature and humidity as its air;
2. its H and E enter the air layer, which is transported laterally (QUICK advection, K_h
   diffusion: ``physics/air_layer.py``) and exchanges implicitly with the forcing's air above.

The coupling is implicit in the mid-step air, solved approximately: the air is first advanced
under the previous sub-step's surface fluxes (predictor), and the column sees the mean of the start
and that prediction (the mid-step air); the air is then advanced under the column's actual fluxes.
With ``coupling_iterations`` = 2 (default) a Newton step on the mid-step air follows, with the
Jacobian of the local coupling (the column's conductances rho c_p / r_a and rho / (r_a + r_s), the
layer's heat capacity and top exchange), and the column and the air are run again. (The air layer
is stiff against the surface: h r_a ~ 10^3 s is shorter than an hourly step, so one explicit pass
can miss by tens of W m-2; tests/test_regional_models.py checks that the default stays under the
closed loop's 10 W m-2 on a virtual region.) What the last pass missed is the
**coupling residual**: the first-order change of the column's H + LE had it seen the actual
mid-step air, rho c_p |dT| / r_a + rho L_v |dq| / (r_a + r_s) [W m-2], dT and dq the misses. The
step is first taken whole (n = 1); where the largest coupling residual of the domain exceeds
``residual_tolerance``, it is taken again with twice the sub-steps, up to ``2**max_refinements``
(``lax.cond``: differentiable; the branch not taken is not computed). Every flux is the mean over
the sub-steps and every state the end of the step's; ``n_substeps`` reports the number used and
``coupling_residual`` the largest residual of the sub-steps taken.

Energy: the columns' identity Rn - H - LE - Q_f = G holds per sub-step (LaD); the air layer's
heat changes by exactly sum(H - Q_top) dt minus the open boundary's outflow (finite volumes), so
``air_energy_residual`` (the domain budget's misfit, W m-2) is rounding.

Cells that are not columns (the air layer's ``active`` mask: outside a basin, a masked water cell)
are not modelled: the air layer treats them as outside its open boundary (``physics/air_layer.py``)
and the budget's sums run over the active cells. Their columns still need finite forcing (NaN would
poison gradients through ``jnp.where``): the caller fills it (``models.regional.region_data``: the
active cells' mean at each step); they run on it uncoupled, and whatever they output is not an
estimate of anything (``predict_regional`` sets it to NaN).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..constants import CP_AIR
from ..thermo import air_density, latent_heat_vaporisation
from .air_layer import AirLayer, transport_substeps
from .exchange import KH_MAX
from .forcing import Forcing
from .interface import AbstractLandModel
from .lad import LaDModel

__all__ = ["GridForcing", "RegionalState", "RegionalModel", "REGIONAL_OUTPUTS"]

#: K_h of the coupling's predictor before the first step [m2 s-1] (only lateral diffusion uses it)
NEUTRAL_KH = 0.1

#: what ``RegionalModel.observe`` adds to the land model's outputs
REGIONAL_OUTPUTS = (
    "Tair_layer", "Qair_layer", "Qh_top", "Evap_top", "boundary_heat", "n_substeps", "coupling_residual",
    "air_energy_residual",
)


class GridForcing(eqx.Module):
    """A column ``Forcing`` plus the near-surface wind components that advect the air layer,
    (T, N) or (N,) arrays like the column forcing's [m s-1]; ``wind_u`` eastward (along x, the
    grid's last axis), ``wind_v`` northward (along y)."""

    column: Forcing
    wind_u: Float[Array, "*TN"]
    wind_v: Float[Array, "*TN"]

    @property
    def time_step_s(self) -> float:
        return self.column.time_step_s

    @property
    def n_steps(self) -> int:
        return self.column.n_steps

    @property
    def n_sites(self) -> int:
        return self.column.n_sites

    def at(self, index) -> GridForcing:
        return jax.tree_util.tree_map(lambda a: a[index], self)


class RegionalState(eqx.Module):
    """The land model's state, the air layer's temperature [K] and humidity [kg kg-1], and the
    surface fluxes of the last (sub-)step, H [W m-2], E [kg m-2 s-1] and K_h [m2 s-1] (the coupling's
    predictor), all (N,)."""

    land: Any
    air_temp: Float[Array, " N"]
    air_humidity: Float[Array, " N"]
    sensible: Float[Array, " N"]
    evaporation: Float[Array, " N"]
    exchange_coefficient: Float[Array, " N"]


class RegionalModel(AbstractLandModel):
    """LaD columns (or any land model with LaD's fluxes) under a finite-volume air layer.

    Attributes:
        air: the air layer (grid shape, cell size, depth, top resistance, boundary, the most
            transport sub-steps of a step; each step takes those its wind and the K_h bound need)
        land: the column model; its K_h and r_s may be prescribed per step (``Kh``, ``rs`` in the
            dynamic parameters: a parameteriser's fields)
        residual_tolerance: coupling residual [W m-2] above which a step is redone with twice the
            sub-steps (seed 000 §2.5: 10 W m-2)
        max_refinements: at most 2**max_refinements sub-steps per step
        coupling_iterations: column passes per sub-step: the first with the predicted mid-step
            air, each further one after a Newton step on that air (module docstring)
    """

    air: AirLayer
    land: AbstractLandModel = eqx.field(default_factory=LaDModel)
    residual_tolerance: float = eqx.field(static=True, default=10.0)
    max_refinements: int = eqx.field(static=True, default=2)
    coupling_iterations: int = eqx.field(static=True, default=2)

    def for_forcing(self, forcing: GridForcing, kh_max: float = KH_MAX) -> RegionalModel:
        """This model with enough transport sub-steps for ``forcing``'s strongest wind and for
        diffusion with K_h up to ``kh_max`` (``air_layer.transport_substeps``; explicit transport
        with too few is unstable). ``forcing`` must hold concrete values."""
        a = self.air
        n = transport_substeps(forcing.wind_u, forcing.wind_v, forcing.time_step_s, a.dx, a.dy, kh_max)
        return replace(self, air=replace(a, n_substeps=n))

    def init_state(self, params: dict, forcing: GridForcing) -> RegionalState:
        """The land model's initial state; the air layer starts as the forcing's air (of the first
        step of a (T, N) forcing)."""
        col = forcing.column
        first = (lambda a: a[0]) if col.t_air.ndim == 2 else (lambda a: a)
        t_air = first(col.t_air)
        zero = jnp.zeros_like(t_air)
        return RegionalState(self.land.init_state(params, col), t_air, first(col.q_air), zero, zero,
                             zero + NEUTRAL_KH)

    def with_exchange_law(self, law) -> RegionalModel:
        return replace(self, land=self.land.with_exchange_law(law))

    def state_change(self, old: RegionalState, new: RegionalState) -> tuple[float, float]:
        d_temp, d_water = self.land.state_change(old.land, new.land)
        return max(d_temp, float(jnp.max(jnp.abs(new.air_temp - old.air_temp)))), d_water

    def _run(self, state: RegionalState, forcing: GridForcing, params: dict, key, n: int):
        """The step as ``n`` coupled sub-steps: (state, mean fluxes, air diagnostics)."""
        col = forcing.column
        dt = col.time_step_s / n
        air = replace(self.air, n_substeps=max(1, math.ceil(self.air.n_substeps / n)))
        # one density for the layer through the step (Boussinesq: air_layer.AirLayer.advance)
        rho = air.domain_mean(air_density(state.air_temp, col.p_surf, state.air_humidity))
        heat_capacity = rho * CP_AIR * air.depth  # of the layer, per unit area [J m-2 K-1]
        # one transport sub-step count for the step's predictor and its corrections (from the step's
        # wind and the K_h bound), so that the Newton pass compares air transported alike (a count
        # from each call's own K_h could differ between them where diffusion sets it)
        n_transport = air.substeps_needed(forcing.wind_u, forcing.wind_v, KH_MAX, dt)

        def advance(t_a, q_a, sensible, evaporation, kh):
            return air.advance(t_a, q_a, sensible=sensible, evaporation=evaporation, rho=rho,
                               temp_above=col.t_air, humidity_above=col.q_air, wind_u=forcing.wind_u,
                               wind_v=forcing.wind_v, kh=kh, dt=dt, substeps=n_transport)

        a_top = dt / (air.depth * air.top_resistance)  # the implicit top exchange's factor

        def substep(carry, key_k):
            land0, t_a, q_a, h_prev, e_prev, kh_prev = carry
            # predictor: the air at the end of the sub-step under the previous sub-step's surface
            # fluxes; the column sees the mean of the start and this prediction (mid-step air)
            guess = advance(t_a, q_a, h_prev, e_prev, kh_prev)

            def coupling_pass(mid, _):
                t_mid, q_mid = mid
                land, fluxes = self.land.step(land0, replace(col, t_air=t_mid, q_air=q_mid, time_step_s=dt),
                                              params, key_k)
                new = advance(t_a, q_a, fluxes.sensible_heat, fluxes.evaporation, fluxes.exchange_coefficient)
                miss_t = 0.5 * (t_a + new.temp) - t_mid
                miss_q = 0.5 * (q_a + new.humidity) - q_mid
                rho_cell = air_density(t_mid, col.p_surf, q_mid)
                g_heat = rho_cell * CP_AIR / fluxes.aerodynamic_resistance  # dH/dT_a [W m-2 K-1], T_s held
                g_water = rho_cell / (fluxes.aerodynamic_resistance + fluxes.surface_resistance)  # -dE/dq_a
                # Newton step on the mid-step air with the local coupling's Jacobian, for the next
                # pass (the last pass's is unused): the air's response to a change of the column's
                # flux is dt / (C (1 + a_top)) per unit flux
                t_next = t_mid + miss_t / (1.0 + 0.5 * dt * g_heat / (heat_capacity * (1.0 + a_top)))
                q_next = q_mid + miss_q / (1.0 + 0.5 * dt * g_water / (rho * air.depth * (1.0 + a_top)))
                # (the air's dtype: a field of another, e.g. float64 K_h under float32 air, must not
                # change the loop's carry)
                return (t_next.astype(t_mid.dtype), q_next.astype(q_mid.dtype)), (land, fluxes, new, miss_t, miss_q,
                                                                                   g_heat, g_water, t_mid)

            # the passes as a loop, not unrolled: one compiled copy of the column step, however many
            # passes (unrolled, each pass was one more copy: compile time grew with them)
            mid = (0.5 * (t_a + guess.temp), 0.5 * (q_a + guess.humidity))
            _, passes = jax.lax.scan(coupling_pass, mid, None, length=self.coupling_iterations)
            land, fluxes, new, miss_t, miss_q, g_heat, g_water, t_mid = jax.tree_util.tree_map(
                lambda a: a[-1], passes)
            # coupling residual: how far the column's H + LE are from what the mid-step air it
            # should have seen gives, to first order [W m-2]
            residual = g_heat * jnp.abs(miss_t) + latent_heat_vaporisation(t_mid) * g_water * jnp.abs(miss_q)
            if air.active is not None:  # inactive cells are not coupled
                residual = jnp.where(air.active.values, residual, 0.0)
            # the layer's domain heat budget (over its active cells): storage change = surface in -
            # top out - boundary out
            budget = (heat_capacity * air.domain_sum(new.temp - t_a) / dt
                      - air.domain_sum(fluxes.sensible_heat - new.top_heat) + new.boundary_heat * air.n_active)
            carry = (land, new.temp, new.humidity, fluxes.sensible_heat, fluxes.evaporation,
                     fluxes.exchange_coefficient)
            return carry, (fluxes, new, residual, jnp.abs(budget) / air.n_active)

        keys = None if key is None else jax.random.split(key, n)
        init = (state.land, state.air_temp, state.air_humidity, state.sensible, state.evaporation,
                state.exchange_coefficient)
        (land, t_a, q_a, *last), (fluxes, airs, residual, budget) = jax.lax.scan(substep, init, keys, length=n)
        # rates are means over the sub-steps; the storage (a state) is the end of the step's
        fluxes = replace(jax.tree_util.tree_map(lambda a: jnp.mean(a, axis=0), fluxes),
                         soil_heat_storage=fluxes.soil_heat_storage[-1])
        airs = jax.tree_util.tree_map(lambda a: jnp.mean(a, axis=0), airs)
        residual, budget = jnp.max(residual, axis=0), jnp.max(budget)
        diagnostics = {
            "Tair_layer": t_a,
            "Qair_layer": q_a,
            "Qh_top": airs.top_heat,
            "Evap_top": airs.top_moisture,
            "boundary_heat": jnp.broadcast_to(airs.boundary_heat, t_a.shape),
            "n_substeps": jnp.full(t_a.shape, n, t_a.dtype),
            "coupling_residual": residual,
            "air_energy_residual": jnp.broadcast_to(budget, t_a.shape),
        }
        fluxes = replace(fluxes, diagnostics={**fluxes.diagnostics, **diagnostics})
        return RegionalState(land, t_a, q_a, *last), fluxes

    def step(self, state: RegionalState, forcing: GridForcing, params: dict, key=None):
        """One step of ``forcing.time_step_s``, refined while the coupling residual is too large."""

        def attempt(level: int):
            result = self._run(state, forcing, params, key, 2**level)
            if level == self.max_refinements:
                return result
            too_large = jnp.max(result[1].diagnostics["coupling_residual"]) > self.residual_tolerance
            return jax.lax.cond(too_large, lambda: attempt(level + 1), lambda: result)

        return attempt(0)

    def observe(self, state: RegionalState, fluxes) -> dict:
        return self.land.observe(state.land, fluxes)
