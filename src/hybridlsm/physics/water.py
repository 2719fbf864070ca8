"""Water balance pieces of the LaD column (physics-reference §1.4), in smooth form.

Units: water stores W (root zone), S (snow, SWE) and W_g (groundwater) in kg m-2 (= mm);
fluxes in kg m-2 s-1.
"""

from __future__ import annotations

import jax.numpy as jnp

from ..constants import SECONDS_PER_DAY, T_FREEZE
from .smooth import limit_positive, limit_positive_slope, smooth_clip01, smooth_relu


def snowfall_fraction(t_air, ramp_half_width=1.0, scale=0.05):
    """Fraction of precipitation falling as snow: 1 below T_f - 1 K, 0 above T_f + 1 K, linear
    in between (smoothed over ``scale`` of the fraction)."""
    x = (T_FREEZE + ramp_half_width - t_air) / (2.0 * ramp_half_width)
    return jnp.clip(smooth_clip01(x, scale), 0.0, 1.0)  # clip only removes rounding excess


def water_stress(soil_water, capacity, threshold, scale=0.01):
    """beta(W) = clip(W / (threshold W_max), 0, 1), smoothed over ``scale`` [-]."""
    return smooth_clip01(soil_water / (threshold * capacity), scale)


#: ``LaDModel.deep_water`` options: where the roots below LaD's root zone draw water from.
DEEP_WATER_OPTIONS = ("none", "groundwater", "table")


def deep_water_stress(beta_root, deep_root_fraction, beta_deep):
    """Moisture availability with deep roots [-]: beta = beta_W + f_d (1 - beta_W) beta_d.

    Compensatory uptake (Jarvis 1989, J. Hydrol.; Feddes et al. 2001, BAMS): the fraction f_d of
    the roots below the root zone makes up, from deeper water of availability beta_d, the part of the
    demand the root zone cannot meet. f_d = 0 or beta_d = 0 gives LaD's beta_W unchanged.
    """
    return beta_root + deep_root_fraction * (1.0 - beta_root) * beta_deep


def deep_uptake_fraction(beta_root, beta_total, floor=1e-6):
    """Share of the snow-free evaporation the deep roots supply, (beta - beta_W) / beta [-]."""
    return (beta_total - beta_root) / jnp.maximum(beta_total, floor)


def snow_cover_fraction(snow, half_mass):
    """Smooth snow presence S / (S + half_mass) [-] (LaD switches on S > 0)."""
    s = jnp.maximum(snow, 0.0)
    return s / (s + half_mass)


def limit_evaporation(evaporation, devaporation_dt, available, dt, power=8.0):
    """Smooth "bone-dry" limiter: E dt may not exceed the water available (LaD: E = avail/dt).

    The limited flux is E_lim = limit_positive(E dt, avail) / dt (dew passes unchanged) and its
    T-derivative is the chain rule g'(E dt / avail) dE/dT, so the limiter composes with the
    linearisation exactly.
    """
    amount = evaporation * dt
    limited = limit_positive(amount, available, power) / dt
    slope = limit_positive_slope(amount, available, power)
    return limited, slope * devaporation_dt


#: Base temperature of crop growth [K] (5 degC; alfalfa and temperate field crops): demand irrigation
#: runs only while the air is warmer, so it stops over winter and never wets frozen ground.
IRRIGATION_BASE_TEMPERATURE = T_FREEZE + 5.0


def demand_irrigation(soil_water, target, irrigated, t_air, snow_cover, dt, scale=0.1, temp_scale=1.0):
    """Irrigation [kg m-2 s-1] that tops the root zone up to ``target`` by the end of the step.

    Demand irrigation as land models apply it to irrigated cropland (CLM: Ozdogan et al. 2010,
    J. Hydrometeor. 11:171): water is added where the root zone has fallen below a target, here the
    onset of water stress (beta_threshold W_max), on the ``irrigated`` fraction of the column while
    the air is above :data:`IRRIGATION_BASE_TEMPERATURE` (a smooth ramp over ``temp_scale`` K) and
    the ground is snow-free. The amount is a smooth max(target - W, 0) over ``scale`` [kg m-2].
    """
    growing = 0.5 * (1.0 + jnp.tanh((t_air - IRRIGATION_BASE_TEMPERATURE) / temp_scale))
    return irrigated * growing * (1.0 - snow_cover) * smooth_relu(target - soil_water, scale) / dt


def drainage(soil_water, capacity, scale=0.1):
    """Saturation excess [kg m-2] drained this step: smooth max(W - W_max, 0); W - drain < W_max."""
    return smooth_relu(soil_water - capacity, scale)


def groundwater_update(groundwater, drained, dt, tau_days):
    """Exact integration of dW_g/dt = D - W_g / tau over one step with constant D = drained / dt.

    c0 = dt/tau, c1 = exp(-c0), c2 = (1 - c1)/c0:
    W_g' = c1 W_g + c2 D_acc,  R dt = (1 - c1) W_g + (1 - c2) D_acc  (so W_g' + R dt = W_g + D_acc).
    (Root uptake from W_g, ``deep_water="groundwater"``, is taken from W_g before the call.)

    Returns (W_g', runoff R [kg m-2 s-1]).
    """
    c0 = dt / (tau_days * SECONDS_PER_DAY)
    c1 = jnp.exp(-c0)
    c2 = -jnp.expm1(-c0) / c0
    new = c1 * groundwater + c2 * drained
    runoff_amount = -jnp.expm1(-c0) * groundwater + (1.0 - c2) * drained
    return new, runoff_amount / dt
