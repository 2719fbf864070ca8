"""Surface radiation and the implicit surface-temperature solve with energy-limited snowmelt.

Net radiation (physics-reference §3.6): Rn = (1 - alpha) SW_down + eps LW_down - eps sigma T_s^4
(emitted eps sigma T_s^4 plus reflected (1 - eps) LW_down leave the surface), dRn/dT_s = -4 eps
sigma T_s^3.

Snowmelt (§1.4, §1.5 differentiability note): the top-layer equation a T_1' = r - Q_melt is first
solved without melt, T_1* = r / a. The energy excess over freezing, a (T_1* - T_f) [W m-2], is the
melt energy available; melt is that excess converted to mass and capped by the snow available,
both smoothly, then T_1' = (r - Q_melt) / a. The melt heat is therefore taken out of the same
equation that sets T_1, so energy is conserved exactly, and T_1 stays at ~T_f while snow melts.
"""

from __future__ import annotations

from ..constants import LATENT_HEAT_FUSION, STEFAN_BOLTZMANN, T_FREEZE
from .smooth import smooth_clip01, smooth_relu, soft_cap


def surface_albedo(snow, t_surface, params, scale=0.02):
    """Albedo blending snow-free and snow albedo by S / (S + S_crit) [I, LaD description].

    Snow albedo goes from ``albedo_snow_warm`` at T_f to ``albedo_snow_cold`` at
    ``snow_albedo_t_range`` below T_f (LaD), linear in between, smoothed.
    """
    cold = smooth_clip01((T_FREEZE - t_surface) / params["snow_albedo_t_range"], scale)
    albedo_snow = params["albedo_snow_warm"] + (
        params["albedo_snow_cold"] - params["albedo_snow_warm"]
    ) * cold
    cover = snow / (snow + params["snow_crit_mass"])
    return params["albedo"] + (albedo_snow - params["albedo"]) * cover


def net_radiation(sw_down, lw_down, t_surface, albedo, emissivity):
    """(Rn, dRn/dT_s) [W m-2, W m-2 K-1] at surface temperature T_s."""
    emitted = emissivity * STEFAN_BOLTZMANN * t_surface**4
    rn = (1.0 - albedo) * sw_down + emissivity * lw_down - emitted
    return rn, -4.0 * emissivity * STEFAN_BOLTZMANN * t_surface**3


def melt_flux(a, r, snow_available, dt, temp_scale=0.02, power=8.0):
    """Energy-limited snowmelt from the top-layer equation a T_1' = r - Q_melt.

    Args:
        a: effective stiffness of the top-layer equation [W m-2 K-1] (> 0)
        r: right-hand side [W m-2]
        snow_available: snow mass that may melt this step [kg m-2] (>= 0)
        dt: step [s]
        temp_scale: smoothing of max(T_1* - T_f, 0) [K]
        power: sharpness of the cap at the available snow

    Returns:
        melt [kg m-2 s-1], 0 <= melt * dt < snow_available.
    """
    t_star = r / a
    excess_energy = a * smooth_relu(t_star - T_FREEZE, temp_scale)  # W m-2
    potential = excess_energy * dt / LATENT_HEAT_FUSION  # kg m-2
    return soft_cap(potential, snow_available, power) / dt
