"""Thermodynamic helpers (physics-reference §3, bigleaf conventions).

Every function accepts NumPy or JAX arrays and returns the same kind, so the data
preprocessing (NumPy) and the differentiable model (JAX) share one implementation.
Temperatures are in kelvin unless the name says ``_c``; pressures in pascal.
"""

from __future__ import annotations

import numpy as np

from .constants import CP_AIR, EPSILON, R_DRY, T_FREEZE

# Magnus coefficients (a [Pa], b [-], c [degC]); Sonntag (1990) is the default (WMO, bigleaf).
MAGNUS = {
    "Sonntag_1990": (611.2, 17.62, 243.12),
    "Alduchov_1996": (610.94, 17.625, 243.04),
    "Allen_1998": (610.8, 17.27, 237.3),
}


def _xp(*arrays):
    """NumPy for NumPy/scalar input, jax.numpy as soon as one input is a JAX array or tracer."""
    for a in arrays:
        if type(a).__module__.startswith(("jax", "jaxlib")):
            import jax.numpy as jnp

            return jnp
    return np


def saturation_vapour_pressure(t_air, formula: str = "Sonntag_1990"):
    """Saturation vapour pressure over water e_s [Pa] at temperature ``t_air`` [K] (Magnus form)."""
    xp = _xp(t_air)
    a, b, c = MAGNUS[formula]
    t_c = t_air - T_FREEZE
    return a * xp.exp(b * t_c / (c + t_c))


def saturation_vapour_pressure_slope(t_air, formula: str = "Sonntag_1990"):
    """d e_s / dT [Pa K-1] at ``t_air`` [K]."""
    a, b, c = MAGNUS[formula]
    t_c = t_air - T_FREEZE
    return saturation_vapour_pressure(t_air, formula) * b * c / (c + t_c) ** 2


def specific_humidity_from_vapour_pressure(e, p):
    """q [kg kg-1] from vapour pressure ``e`` and pressure ``p`` (same units)."""
    return EPSILON * e / (p - (1.0 - EPSILON) * e)


def vapour_pressure_from_specific_humidity(q, p):
    """e (unit of ``p``) from specific humidity ``q`` [kg kg-1]."""
    return q * p / ((1.0 - EPSILON) * q + EPSILON)


def saturation_specific_humidity(t, p):
    """q_sat(T) [kg kg-1] at temperature ``t`` [K] and pressure ``p`` [Pa]."""
    return specific_humidity_from_vapour_pressure(saturation_vapour_pressure(t), p)


def saturation_specific_humidity_slope(t, p):
    """d q_sat / dT [kg kg-1 K-1]."""
    e_s = saturation_vapour_pressure(t)
    de = saturation_vapour_pressure_slope(t)
    denom = p - (1.0 - EPSILON) * e_s
    return EPSILON * p * de / denom**2


def vpd_from_rh(t_air, rh_percent):
    """Vapour-pressure deficit [Pa] from temperature [K] and relative humidity [%]."""
    return saturation_vapour_pressure(t_air) * (1.0 - rh_percent / 100.0)


def rh_from_vpd(t_air, vpd_pa):
    """Relative humidity [%] from temperature [K] and VPD [Pa]."""
    return 100.0 * (1.0 - vpd_pa / saturation_vapour_pressure(t_air))


def specific_humidity_from_vpd(t_air, vpd_pa, p):
    """q [kg kg-1] from temperature [K], VPD [Pa] and pressure [Pa]."""
    e = saturation_vapour_pressure(t_air) - vpd_pa
    return specific_humidity_from_vapour_pressure(e, p)


def air_density(t_air, p, q=0.0):
    """Moist-air density [kg m-3] rho = p / (R_d T_v), T_v = T (1 + 0.608 q)."""
    return p / (R_DRY * t_air * (1.0 + 0.608 * q))


def latent_heat_vaporisation(t_air):
    """lambda [J kg-1] = (2.501 - 0.00237 T[degC]) 1e6 (Stull 1988, bigleaf)."""
    return (2.501 - 0.00237 * (t_air - T_FREEZE)) * 1.0e6


def psychrometric_constant(t_air, p):
    """gamma [Pa K-1] = c_p p / (epsilon lambda)."""
    return CP_AIR * p / (EPSILON * latent_heat_vaporisation(t_air))
