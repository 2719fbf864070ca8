"""The pluggable H / E closure of the LaD column.

The LaD model calls its ``closure`` once per step with a :class:`SurfaceContext` (state, forcing,
parameters and the physics diagnostics at the start of the step) and receives
:class:`TurbulentFluxes`: the sensible heat flux H [W m-2], the evaporation E [kg m-2 s-1] and
their derivatives with respect to the surface temperature T_s (= T_1). The model linearises them
in T_s, solves the surface energy balance implicitly together with the soil column, and corrects
H and E to the new T_s (H + dH/dT dT_s). Because the corrected H and L E enter the same surface
flux that drives the soil column, energy and water are conserved for *any* closure; a closure
without derivatives (a network) just returns zeros for them (the solve remains stable through
the radiative and soil-conduction terms).

A closure that predicts LE rather than E divides by ``context.latent_heat`` (the effective latent
heat of the step: L_v plus L_f times the snow-covered fraction).

A closure with dropout draws its masks from ``context.key``: the step's PRNG key when the rollout is
given one (training, MC-dropout prediction), None for the deterministic network.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ..constants import CP_AIR
from ..thermo import saturation_specific_humidity, saturation_specific_humidity_slope


class SurfaceContext(eqx.Module):
    """Everything a closure may use, at the start of the step (arrays (N,)).

    Attributes:
        state: the model state at the start of the step (``LaDState``)
        forcing: forcing at this step (``Forcing`` with (N,) arrays)
        params: parameters at this step (dict of (N,) arrays; dynamic overrides applied)
        t_surface: surface (skin) temperature T_s = T_1 [K]
        theta_air: potential temperature of the air referred to the surface [K]
        q_air: specific humidity of the air [kg kg-1]
        q_sat: saturation specific humidity at T_s [kg kg-1]
        dq_sat_dt: d q_sat / d T_s [kg kg-1 K-1]
        rho_air: moist-air density [kg m-3]
        latent_heat: effective latent heat of the step [J kg-1]
        aerodynamic_resistance: r_a with stability correction and ra_scale [s m-1]
        surface_resistance: stomatal resistance rs_min * rs_scale on the snow-free part [s m-1]
        beta: moisture availability (water stress on soil, 1 on snow) [-]
        snow_cover: snow-covered fraction used to partition E [-]
        richardson: bulk Richardson number [-]
        wind: wind speed including gustiness [m s-1]
        net_radiation: net radiation at T_s [W m-2]
        dnet_radiation_dt: d Rn / d T_s [W m-2 K-1]
        key: PRNG key of this step for the dropout of a network closure (None: no dropout)
    """

    state: eqx.Module
    forcing: eqx.Module
    params: dict
    t_surface: Float[Array, " N"]
    theta_air: Float[Array, " N"]
    q_air: Float[Array, " N"]
    q_sat: Float[Array, " N"]
    dq_sat_dt: Float[Array, " N"]
    rho_air: Float[Array, " N"]
    latent_heat: Float[Array, " N"]
    aerodynamic_resistance: Float[Array, " N"]
    surface_resistance: Float[Array, " N"]
    beta: Float[Array, " N"]
    snow_cover: Float[Array, " N"]
    richardson: Float[Array, " N"]
    wind: Float[Array, " N"]
    net_radiation: Float[Array, " N"]
    dnet_radiation_dt: Float[Array, " N"]
    key: PRNGKeyArray | None = None

    def at_surface_temperature(self, t_surface) -> "SurfaceContext":
        """The context with T_s replaced by ``t_surface`` and the T_s-dependent fields updated:
        ``t_surface``, the state's T_1, q_sat, dq_sat/dT and (linearly) the net radiation.
        r_a, beta and Ri stay at their start-of-step values (explicit stability)."""
        p_surf = self.forcing.p_surf
        soil_temp = self.state.soil_temp.at[..., 0].set(t_surface)
        return eqx.tree_at(
            lambda c: (c.t_surface, c.state.soil_temp, c.q_sat, c.dq_sat_dt, c.net_radiation),
            self,
            (
                t_surface,
                soil_temp,
                saturation_specific_humidity(t_surface, p_surf),
                saturation_specific_humidity_slope(t_surface, p_surf),
                self.net_radiation + self.dnet_radiation_dt * (t_surface - self.t_surface),
            ),
        )


class TurbulentFluxes(eqx.Module):
    """Closure output at the start-of-step surface temperature (arrays (N,)).

    Attributes:
        sensible_heat: H [W m-2], positive upward
        evaporation: E [kg m-2 s-1], positive upward (negative = dew/frost)
        dsensible_dt: dH/dT_s [W m-2 K-1]
        devaporation_dt: dE/dT_s [kg m-2 s-1 K-1]
        diagnostics: extra outputs of a network closure (e.g. an aleatoric SD ``Qh_sigma``), which the
            LaD step passes on in its fluxes' ``diagnostics`` and ``observe`` reports by name
    """

    sensible_heat: Float[Array, " N"]
    evaporation: Float[Array, " N"]
    dsensible_dt: Float[Array, " N"]
    devaporation_dt: Float[Array, " N"]
    diagnostics: dict = eqx.field(default_factory=dict)


class Closure(eqx.Module):
    """Abstract H / E closure: ``closure(context) -> TurbulentFluxes``."""

    @abc.abstractmethod
    def __call__(self, context: SurfaceContext) -> TurbulentFluxes:
        raise NotImplementedError


class BulkClosure(Closure):
    """LaD bulk formulas (physics-reference §1.3):

    H = rho c_p (T_s - theta_a) / r_a,  E = beta rho (q_sat(T_s) - q_a) / (r_a + r_s).

    Derivatives are analytic with r_a held at its start-of-step value (explicit stability, as in
    FMS): dH/dT = rho c_p / r_a, dE/dT = beta rho dq_sat/dT / (r_a + r_s).
    """

    def __call__(self, context: SurfaceContext) -> TurbulentFluxes:
        c = context
        ra = c.aerodynamic_resistance
        conductance_h = c.rho_air * CP_AIR / ra
        conductance_q = c.beta * c.rho_air / (ra + c.surface_resistance)
        return TurbulentFluxes(
            sensible_heat=conductance_h * (c.t_surface - c.theta_air),
            evaporation=conductance_q * (c.q_sat - c.q_air),
            dsensible_dt=conductance_h,
            devaporation_dt=conductance_q * c.dq_sat_dt,
        )


class AutodiffClosure(Closure):
    """Wraps a closure (e.g. a network) and supplies exact dH/dT_s and dE/dT_s by forward-mode
    autodiff through :meth:`SurfaceContext.at_surface_temperature`, so the surface energy balance
    is solved implicitly in the closure's own T_s dependence (stable at long steps even when the
    closure reacts strongly to T_s). The inner closure's own derivatives are ignored.
    """

    inner: Closure

    def __call__(self, context: SurfaceContext) -> TurbulentFluxes:
        def fluxes(t_surface):
            out = self.inner(context.at_surface_temperature(t_surface))
            return (out.sensible_heat, out.evaporation), out.diagnostics

        ts = context.t_surface
        (h, e), (dh, de), diagnostics = jax.jvp(fluxes, (ts,), (jnp.ones_like(ts),), has_aux=True)
        return TurbulentFluxes(sensible_heat=h, evaporation=e, dsensible_dt=dh, devaporation_dt=de,
                               diagnostics=diagnostics)
