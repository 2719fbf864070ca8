"""The differentiable LaD column (Milly & Shmakin 2002, GFDL LaD code; physics-reference §1).

State per site/cell: soil temperatures T_1..T_5 (T_1 is the surface/skin temperature), root-zone
water W, snow S and groundwater W_g. One step (backward Euler, step length from the forcing):

1. diagnostics at the start of the step: air density, potential temperature, bulk Richardson
   number, r_a (Louis or Businger-Dyer, times ``ra_scale``), water stress beta, snow cover,
   albedo, net radiation and its T-derivative;
2. the closure (``BulkClosure`` by default) returns H, E and dH/dT, dE/dT; E is split into
   sublimation (snow-covered fraction, latent heat L_v + L_f) and soil evaporation (L_v), each
   limited smoothly by the water available ("bone-dry" limiter);
3. the surface energy balance, linearised in T_1, is solved implicitly together with the soil
   column (tridiagonal solve), with energy-limited snowmelt taken from the energy excess;
4. H, E and the outgoing longwave are corrected to the new T_1 (x + dx/dT dT_1), so
   Rn - H - LE - Q_f = sum_k c_k dT_k / dt exactly (Q_f = L_f melt);
5. water: snow and root zone updated with precipitation (phase from a T_f +- 1 K ramp), melt and
   the corrected evaporation; saturation excess drains (smoothly) to the groundwater reservoir,
   which is integrated exactly over the step and yields Qsb; snow above ``max_snow`` runs off as Qs.
   Delta W + Delta S + Delta W_g = (P + I - E - Qs - Qsb) dt exactly, I the irrigation (below).

Irrigation (not in LaD; site metadata ``irrigated``, 0 by default): on the irrigated fraction the
root zone is topped up to the onset of stress, beta_threshold W_max, at the end of each step while
the air is above 5 degC and the ground snow-free (``water.demand_irrigation``), reported as
``Qirrig`` [kg m-2 s-1].

Deep roots (``deep_water``, not in LaD; off by default): the fraction f_d of the roots below LaD's
root zone (``deep_root_fraction``, Jackson et al. 1996) makes up part of the demand the root zone
cannot meet, beta = beta_W + f_d (1 - beta_W) beta_d (compensatory uptake), and that share of the
snow-free evaporation is taken from deeper water: ``"groundwater"`` from W_g (beta_d = W_g /
(beta_threshold W_max), clipped; the limiter keeps W_g >= 0), ``"table"`` from below the column, a
store larger than the record's uptake (beta_d = 1; deep-rooted forests drawing on water carried
over from wetter years or on a water table: Fan et al. 2017, PNAS 114:10572; Miguez-Macho & Fan
2012, JGR 117:D15114). ``"table"`` reports that supply as negative subsurface runoff (Qsb =
groundwater runoff - deep supply), so the water identity above holds as written.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..constants import CP_AIR, GRAVITY, LATENT_HEAT_FUSION
from ..thermo import (
    air_density,
    latent_heat_vaporisation,
    saturation_specific_humidity,
    saturation_specific_humidity_slope,
    saturation_vapour_pressure,
    vapour_pressure_from_specific_humidity,
)
from .closure import BulkClosure, Closure, SurfaceContext
from .interface import AbstractLandModel
from .forcing import Forcing
from .smooth import smooth_max, smooth_relu
from .soil import (
    LAYER_THICKNESS,
    assemble_column,
    interface_conductance,
    layer_heat_capacity,
    lower_column_response,
    soil_heat_storage,
    surface_coefficients,
)
from .surface import melt_flux, net_radiation, surface_albedo
from .exchange import ExchangeLaw
from .turbulence import STABILITY_SCHEMES, aerodynamic_resistance, bulk_richardson
from .water import (
    DEEP_WATER_OPTIONS,
    deep_uptake_fraction,
    deep_water_stress,
    demand_irrigation,
    drainage,
    groundwater_update,
    limit_evaporation,
    snow_cover_fraction,
    snowfall_fraction,
    water_stress,
)

#: ALMA names returned by ``LaDModel.observe`` (architecture §2 plus Qf, Qsm, SubSnow, Snowf, Rainf,
#: Albedo, and Qirrig, the irrigation water applied, which ALMA does not name).
OUTPUT_NAMES = (
    "Qh", "Qle", "Qg", "Rnet", "Evap", "Qs", "Qsb", "SoilTemp", "SoilMoist", "SWE", "GWS",
    "AvgSurfT", "SR", "Kh", "ra", "rs", "RiB", "Qf", "Qsm", "SubSnow", "Snowf", "Rainf", "Qirrig", "Albedo",
)


#: Optional entries of ``params`` (usually ``dynamic``, (T, N)) that prescribe the exchange
#: coefficient K_h [m2 s-1] (r_a = (z - d) / K_h, in place of the stability scheme and ``ra_scale``)
#: and the surface resistance r_s [s m-1] (in place of rs_min * rs_scale): the fields a regional
#: parameteriser predicts (``models/regional.py``), and a virtual region's truth.
PRESCRIBED_KH, PRESCRIBED_RS = "Kh", "rs"
#: ... or a multiplier of the stability scheme's K_h (its wind and stability dependence kept), the
#: result bounded to PRESCRIBED_KH_BOUNDS [m2 s-1] (seed 000's range of K_h)
PRESCRIBED_KH_SCALE = "Kh_scale"
PRESCRIBED_KH_BOUNDS = (1e-3, 1e2)
#: D0 [kPa] of the surface resistance's optional response to the vapour-pressure deficit D of the
#: air, r_s (1 + D / D0) (Leuning 1995: g_s proportional to 1 / (1 + D / D0)); 3 kPa is a common
#: default for D0 (e.g. FETCH3's Leuning conductance)
RS_VPD_D0 = 3.0


def vpd_response(t_air, q_air, p_surf, d0: float):
    """1 + D / D0: the factor by which the vapour-pressure deficit D [kPa] of air at ``t_air`` [K],
    ``q_air`` [kg kg-1], ``p_surf`` [Pa] raises the surface resistance (Leuning 1995); D below 0
    (supersaturated air) counts as 0. NumPy or JAX arrays."""
    deficit = saturation_vapour_pressure(t_air) - vapour_pressure_from_specific_humidity(q_air, p_surf)
    return 1.0 + (deficit + abs(deficit)) / 2.0 / (1000.0 * d0)


@dataclass(frozen=True)
class Numerics:
    """Widths of the smooth surrogates for LaD's hard switches (numerical, not physical).

    Attributes:
        snow_presence_mass: S at which the snow-covered fraction S/(S + m) is 1/2 [kg m-2]
        beta_scale: smoothing of the beta clip [-]
        phase_scale: smoothing of the rain/snow ramp ends [-]
        drainage_scale: smoothing of max(W - W_max, 0) [kg m-2]
        melt_temp_scale: smoothing of max(T_1* - T_f, 0) [K]
        calving_scale: smoothing of max(S - max_snow, 0) [kg m-2]
        cap_power: sharpness p of the soft caps (melt <= snow, E dt <= water available)
        min_beta: floor of beta when reporting the effective surface resistance [-]
    """

    snow_presence_mass: float = 0.5
    beta_scale: float = 0.01
    phase_scale: float = 0.05
    drainage_scale: float = 0.1
    melt_temp_scale: float = 0.02
    calving_scale: float = 1.0
    cap_power: float = 8.0
    min_beta: float = 1e-6


class LaDState(eqx.Module):
    """Prognostic state, leading dims (N,).

    Attributes:
        soil_temp: layer temperatures (N, 5) [K]; soil_temp[:, 0] is the surface temperature
        soil_water: root-zone water W [kg m-2]
        snow: snow water equivalent S [kg m-2]
        groundwater: groundwater storage W_g [kg m-2]
    """

    soil_temp: Float[Array, "N L"]
    soil_water: Float[Array, " N"]
    snow: Float[Array, " N"]
    groundwater: Float[Array, " N"]


class LaDFluxes(eqx.Module):
    """Fluxes and diagnostics of one step, (N,) arrays (energy W m-2, water kg m-2 s-1).

    Energy identity: net_radiation - sensible_heat - latent_heat - fusion_heat = ground_heat
    = Delta soil_heat_storage / dt.
    """

    net_radiation: Array
    sensible_heat: Array
    latent_heat: Array
    ground_heat: Array
    fusion_heat: Array
    evaporation: Array
    sublimation: Array
    snowmelt: Array
    snowfall: Array
    rainfall: Array
    irrigation: Array
    surface_runoff: Array
    subsurface_runoff: Array
    soil_heat_storage: Array
    aerodynamic_resistance: Array
    surface_resistance: Array
    exchange_coefficient: Array
    richardson: Array
    albedo: Array
    diagnostics: dict = eqx.field(default_factory=dict)  # extra outputs of wrappers, reported by name


class SurfaceLayer(NamedTuple):
    """Start-of-step surface-layer quantities (arrays (N,)): z - d [m], potential air temperature [K],
    wind with gustiness [m s-1], snow cover and moisture availability beta [-], q_sat(T_s)
    [kg kg-1], bulk Richardson number [-] and aerodynamic resistance r_a [s m-1]."""

    height_above_displacement: Array
    theta_air: Array
    wind: Array
    snow_cover: Array
    beta: Array
    q_sat: Array
    richardson: Array
    aerodynamic_resistance: Array


class LaDModel(AbstractLandModel):
    """The LaD column with a pluggable H/E closure.

    Attributes:
        closure: H/E closure (``BulkClosure`` by default; hybrids substitute a network)
        stability: "louis" or "businger_dyer" (static)
        exchange_law: optional closed-form K_h(u, Ri) (``physics.exchange.ExchangeLaw``, e.g. a law
            found by ``hybridlsm discover``) that replaces the stability scheme: r_a = (z - d) / K_h
        layer_thickness: soil layer thicknesses [m] (static; LaD default 0.005 ... 1.0)
        numerics: smoothing widths (static)
        deep_water: "none" (LaD), "groundwater" or "table": where roots below the root zone draw
            water (module docstring; static)
        rs_vpd_d0: None (LaD: r_s does not depend on the air's humidity), or D0 [kPa] of the
            response r_s (1 + D / D0) to the vapour-pressure deficit D (``vpd_response``; static),
            applied to r_s from the parameters or prescribed
    """

    closure: Closure = eqx.field(default_factory=BulkClosure)
    stability: str = eqx.field(static=True, default="louis")
    exchange_law: ExchangeLaw | None = None
    layer_thickness: tuple = eqx.field(static=True, default=LAYER_THICKNESS)
    numerics: Numerics = eqx.field(static=True, default_factory=Numerics)
    deep_water: str = eqx.field(static=True, default="none")
    rs_vpd_d0: float | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if self.rs_vpd_d0 is not None and not (self.rs_vpd_d0 > 0.0 and self.rs_vpd_d0 < float("inf")):
            raise ValueError(f"rs_vpd_d0 {self.rs_vpd_d0!r}: expected D0 > 0 [kPa], or None (no VPD response)")
        if self.deep_water not in DEEP_WATER_OPTIONS:
            raise ValueError(
                f"unknown deep_water {self.deep_water!r}; allowed: {', '.join(DEEP_WATER_OPTIONS)}"
            )
        if self.stability not in STABILITY_SCHEMES:
            raise ValueError(
                f"unknown stability scheme {self.stability!r}; allowed: {', '.join(STABILITY_SCHEMES)}"
            )

    # ------------------------------------------------------------------------------------
    def init_state(self, params: dict, forcing: Forcing) -> LaDState:
        """Initial state: all layers at the mean air temperature of ``forcing`` (or its only step),
        W = beta_threshold * W_max (just unstressed), no snow, empty groundwater."""
        t_air = forcing.t_air
        t0 = jnp.mean(t_air, axis=0) if t_air.ndim == 2 else t_air
        n_layers = len(self.layer_thickness)
        w0 = (params["beta_threshold"] * params["root_zone_capacity"]).astype(t0.dtype)
        zero = jnp.zeros_like(t0)
        return LaDState(
            soil_temp=jnp.broadcast_to(t0[:, None], t0.shape + (n_layers,)),
            soil_water=w0 * jnp.ones_like(t0),
            snow=zero,
            groundwater=zero,
        )

    def with_exchange_law(self, law: ExchangeLaw) -> LaDModel:
        return replace(self, exchange_law=law)

    # ------------------------------------------------------------------------------------
    def surface_layer(self, state: LaDState, forcing: Forcing, params: dict) -> SurfaceLayer:
        """Geometry, moisture availability and stability at the start of a step (explicit: at the
        start-of-step T_s), as ``step`` uses them; also the inputs a parameter network may see."""
        p, f, num = params, forcing, self.numerics
        ts = state.soil_temp[..., 0]
        z0m = p["z0m"]
        z0h = z0m * jnp.exp(-p["kB_inv"])
        d = p["displacement_fraction"] * p["canopy_height"]
        zd = smooth_max(p["reference_height"] - d, 2.0 * z0m, 0.1 * z0m)
        theta_air = f.t_air + GRAVITY / CP_AIR * zd
        wind = jnp.sqrt(f.wind**2 + p["gustiness"] ** 2)
        snow_cover = snow_cover_fraction(state.snow, num.snow_presence_mass)
        beta_soil = self.soil_moisture_availability(state, p)[1]
        beta = snow_cover + (1.0 - snow_cover) * beta_soil
        q_sat = saturation_specific_humidity(ts, f.p_surf)
        q_surf = f.q_air + beta * (q_sat - f.q_air)
        ri = bulk_richardson(theta_air * (1.0 + 0.608 * f.q_air), ts * (1.0 + 0.608 * q_surf), wind, zd)
        if PRESCRIBED_KH in p:  # a field from a spatiotemporal parameteriser (regional mode)
            ra = zd / p[PRESCRIBED_KH]
        elif self.exchange_law is None:
            ra = aerodynamic_resistance(ri, wind, zd, z0m, z0h, self.stability) * p["ra_scale"]
        else:
            ra = zd / self.exchange_law(f.wind, ri) * p["ra_scale"]
        if PRESCRIBED_KH_SCALE in p and PRESCRIBED_KH not in p:
            ra = zd / jnp.clip(zd / ra * p[PRESCRIBED_KH_SCALE], *PRESCRIBED_KH_BOUNDS)
        return SurfaceLayer(zd, theta_air, wind, snow_cover, beta, q_sat, ri, ra)

    def soil_moisture_availability(self, state: LaDState, params: dict):
        """(beta_W, beta) of the snow-free surface: LaD's root-zone stress and, with deep roots,
        beta_W + f_d (1 - beta_W) beta_d (module docstring); equal without them."""
        p, num = params, self.numerics
        beta_root = water_stress(state.soil_water, p["root_zone_capacity"], p["beta_threshold"], num.beta_scale)
        if self.deep_water == "none":
            return beta_root, beta_root
        if self.deep_water == "groundwater":
            beta_deep = water_stress(state.groundwater, p["root_zone_capacity"], p["beta_threshold"], num.beta_scale)
        else:
            beta_deep = jnp.ones_like(beta_root)
        return beta_root, deep_water_stress(beta_root, p["deep_root_fraction"], beta_deep)

    # ------------------------------------------------------------------------------------
    def step(self, state: LaDState, forcing: Forcing, params: dict, key=None) -> tuple[LaDState, LaDFluxes]:
        """Advance one step of ``forcing.time_step_s`` seconds; pure, jit-able, (N,) arrays.
        ``key``: the step's PRNG key, passed to the closure (dropout of a network closure)."""
        p = params
        f = forcing
        num = self.numerics
        dt = f.time_step_s
        dz = self.layer_thickness
        lf = LATENT_HEAT_FUSION

        temp = state.soil_temp
        ts = temp[..., 0]
        capacity = layer_heat_capacity(p["soil_heat_capacity"], dz)
        conductance = interface_conductance(p["soil_thermal_conductivity"], dz)

        # precipitation phase
        snow_fraction = snowfall_fraction(f.t_air, scale=num.phase_scale)
        p_snow = f.precip * snow_fraction
        p_rain = f.precip * (1.0 - snow_fraction)

        # air properties, geometry, moisture availability, stability and aerodynamic resistance
        sl = self.surface_layer(state, f, p)
        zd, theta_air, wind, snow_cover, beta, q_sat, ri, ra = (
            sl.height_above_displacement, sl.theta_air, sl.wind, sl.snow_cover, sl.beta, sl.q_sat, sl.richardson,
            sl.aerodynamic_resistance)  # fmt: skip
        rho = air_density(f.t_air, f.p_surf, f.q_air)
        lv = latent_heat_vaporisation(f.t_air)
        ls = lv + lf
        rs = p.get(PRESCRIBED_RS, p["rs_min"] * p["rs_scale"]) * (1.0 - snow_cover)
        if self.rs_vpd_d0 is not None:
            rs = rs * vpd_response(f.t_air, f.q_air, f.p_surf, self.rs_vpd_d0)
        dq_sat = saturation_specific_humidity_slope(ts, f.p_surf)

        # radiation
        albedo = surface_albedo(state.snow, ts, p)
        rn0, drn = net_radiation(f.sw_down, f.lw_down, ts, albedo, p["emissivity"])

        # closure
        context = SurfaceContext(
            state=state,
            forcing=f,
            params=p,
            t_surface=ts,
            theta_air=theta_air,
            q_air=f.q_air,
            q_sat=q_sat,
            dq_sat_dt=dq_sat,
            rho_air=rho,
            latent_heat=lv + lf * snow_cover,
            aerodynamic_resistance=ra,
            surface_resistance=rs,
            beta=beta,
            snow_cover=snow_cover,
            richardson=ri,
            wind=wind,
            net_radiation=rn0,
            dnet_radiation_dt=drn,
            key=key,
        )
        turb = self.closure(context)
        h0, dh = turb.sensible_heat, turb.dsensible_dt

        # split E into sublimation and soil evaporation; smooth bone-dry limiter on each
        e_snow0, de_snow = limit_evaporation(
            snow_cover * turb.evaporation, snow_cover * turb.devaporation_dt,
            state.snow + p_snow * dt, dt, num.cap_power,
        )
        e_free, de_free = (1.0 - snow_cover) * turb.evaporation, (1.0 - snow_cover) * turb.devaporation_dt
        e_deep0, de_deep = 0.0, 0.0
        if self.deep_water != "none":  # deep roots supply their share of evaporation (dew: root zone)
            deep = deep_uptake_fraction(*self.soil_moisture_availability(state, p))
            deep = jnp.where(e_free > 0.0, deep, 0.0)
            e_deep0, de_deep = deep * e_free, deep * de_free
            e_free, de_free = e_free - e_deep0, de_free - de_deep
            if self.deep_water == "groundwater":
                e_deep0, de_deep = limit_evaporation(e_deep0, de_deep, state.groundwater, dt, num.cap_power)
        e_root0, de_root = limit_evaporation(e_free, de_free, state.soil_water + p_rain * dt, dt, num.cap_power)
        e_soil0, de_soil = e_root0 + e_deep0, de_root + de_deep
        le0 = lv * e_soil0 + ls * e_snow0
        dle = lv * de_soil + ls * de_snow

        # implicit surface energy balance + soil column, with melt from the energy excess
        flux0 = rn0 - h0 - le0
        dflux = drn - dh - dle
        u, v = lower_column_response(temp, capacity, conductance, dt)
        a, r = surface_coefficients(temp, capacity, conductance, dt, flux0, dflux, u, v)
        snow_available = jnp.maximum(state.snow + (p_snow - e_snow0) * dt, 0.0)
        melt = melt_flux(a, r, snow_available, dt, num.melt_temp_scale, num.cap_power)
        fusion_heat = lf * melt
        ts_new = (r - fusion_heat) / a
        temp_new = assemble_column(ts_new, u, v)

        # fluxes corrected to the new surface temperature
        dts = ts_new - ts
        sensible = h0 + dh * dts
        e_root = e_root0 + de_root * dts
        e_deep = e_deep0 + de_deep * dts
        e_soil = e_root + e_deep
        e_snow = e_snow0 + de_snow * dts
        latent = lv * e_soil + ls * e_snow
        rnet = rn0 + drn * dts
        ground = rnet - sensible - latent - fusion_heat

        # water
        snow_new = state.snow + (p_snow - e_snow - melt) * dt
        deficit = jnp.maximum(-snow_new, 0.0)  # LaD: a snow deficit is taken from W
        snow_new = snow_new + deficit
        calving = smooth_relu(snow_new - p["max_snow"], num.calving_scale)
        snow_new = snow_new - calving
        water = state.soil_water + (p_rain - e_root + melt) * dt - deficit
        drained = drainage(water, p["root_zone_capacity"], num.drainage_scale)
        water = water - drained
        irrigation = demand_irrigation(water, p["beta_threshold"] * p["root_zone_capacity"], p["irrigated"],
                                       f.t_air, snow_cover, dt, num.drainage_scale)  # fmt: skip
        water = water + irrigation * dt
        groundwater = state.groundwater
        if self.deep_water == "groundwater":  # root uptake from W_g, then LaD's linear reservoir
            groundwater = groundwater - e_deep * dt
        groundwater, qsb = groundwater_update(groundwater, drained, dt, p["tau_groundwater"])
        if self.deep_water == "table":  # supply from below the column: negative subsurface runoff
            qsb = qsb - e_deep

        new_state = LaDState(
            soil_temp=temp_new, soil_water=water, snow=snow_new, groundwater=groundwater
        )
        beta_floor = jnp.maximum(beta, num.min_beta)
        fluxes = LaDFluxes(
            net_radiation=rnet,
            sensible_heat=sensible,
            latent_heat=latent,
            ground_heat=ground,
            fusion_heat=fusion_heat,
            evaporation=e_soil + e_snow,
            sublimation=e_snow,
            snowmelt=melt,
            snowfall=p_snow,
            rainfall=p_rain,
            irrigation=irrigation,
            surface_runoff=calving / dt,
            subsurface_runoff=qsb,
            soil_heat_storage=soil_heat_storage(temp_new, capacity),
            aerodynamic_resistance=ra,
            surface_resistance=(ra + rs) / beta_floor - ra,
            exchange_coefficient=zd / ra,
            richardson=ri,
            albedo=albedo,
            diagnostics=turb.diagnostics,
        )
        return new_state, fluxes

    # ------------------------------------------------------------------------------------
    def state_change(self, old: LaDState, new: LaDState) -> tuple[float, float]:
        """Largest |Delta T| over layers and columns [K]; largest |Delta| of W, S, W_g [kg m-2]."""
        d_temp = float(jnp.max(jnp.abs(new.soil_temp - old.soil_temp)))
        d_water = max(float(jnp.max(jnp.abs(getattr(new, f) - getattr(old, f))))
                      for f in ("soil_water", "snow", "groundwater"))  # fmt: skip
        return d_temp, d_water

    # ------------------------------------------------------------------------------------
    def observe(self, state: LaDState, fluxes: LaDFluxes) -> dict:
        """ALMA-named outputs after a step (units: W m-2, kg m-2 s-1, kg m-2, K, s m-1, m2 s-1),
        and any ``fluxes.diagnostics`` of a wrapping model under their names."""
        return fluxes.diagnostics | {
            "Qh": fluxes.sensible_heat,
            "Qle": fluxes.latent_heat,
            "Qg": fluxes.ground_heat,
            "Rnet": fluxes.net_radiation,
            "Evap": fluxes.evaporation,
            "Qs": fluxes.surface_runoff,
            "Qsb": fluxes.subsurface_runoff,
            "SoilTemp": state.soil_temp,
            "SoilMoist": state.soil_water,
            "SWE": state.snow,
            "GWS": state.groundwater,
            "AvgSurfT": state.soil_temp[..., 0],
            "SR": fluxes.soil_heat_storage,
            "Kh": fluxes.exchange_coefficient,
            "ra": fluxes.aerodynamic_resistance,
            "rs": fluxes.surface_resistance,
            "RiB": fluxes.richardson,
            "Qf": fluxes.fusion_heat,
            "Qsm": fluxes.snowmelt,
            "SubSnow": fluxes.sublimation,
            "Snowf": fluxes.snowfall,
            "Rainf": fluxes.rainfall,
            "Qirrig": fluxes.irrigation,
            "Albedo": fluxes.albedo,
        }
