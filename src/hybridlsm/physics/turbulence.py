"""Surface-layer turbulence: bulk Richardson number, stability corrections, aerodynamic resistance.

Physics-reference §2. Two stability schemes, both closed form in the bulk Richardson number Ri_b
(no Monin-Obukhov iteration):

- ``"louis"``: Louis (1979) with b = d = 5, C*_h = 5 (ED2/BRAMS constants, §2.4):
  stable F_h = 1 / (1 + 3 b Ri sqrt(1 + d Ri)); unstable F_h = 1 - 3 b Ri / (1 + 3 C*_h b a_m^2
  sqrt(|Ri| (z-d)/z0m)), with a_m^2 = k^2 / ln((z-d)/z0m)^2; r_a = 1 / (a_h^2 U F_h) where
  a_h^2 = k^2 / (ln((z-d)/z0m) ln((z-d)/z0h)) so that F_h = 1 gives the neutral r_a.
- ``"businger_dyer"``: Ri -> zeta with the Dyer relations (unstable zeta = Ri, stable
  zeta = Ri / (1 - 5 Ri)), then the integrated Dyer/Paulson profiles (§2.2):
  r_a = [ln((z-d)/z0m) - psi_m(zeta) + psi_m(zeta z0m/(z-d))]
        [ln((z-d)/z0h) - psi_h(zeta) + psi_h(zeta z0h/(z-d))] / (k^2 U).
  Beyond the critical Ri_c = 0.2 the stable relation has no solution; Ri is capped smoothly at
  ``RI_CAP_BD`` = 0.18 (zeta <= 1.8) so the surface never decouples completely.

The stable and unstable branches meet at Ri = 0 with equal values but different slopes; they are
joined by a sigmoid blend of width ``RI_BLEND`` = 1e-3, each branch evaluated on a smoothly clipped
Ri that keeps it inside its domain. The result is C-infinity and equals the textbook branch for
|Ri| > ~0.02 to better than 1e-8 relative.
"""

from __future__ import annotations

import jax.numpy as jnp

from ..constants import GRAVITY, VON_KARMAN
from .smooth import sigmoid_blend, smooth_max, smooth_min

STABILITY_SCHEMES = ("louis", "businger_dyer")

LOUIS_B = 5.0
LOUIS_D = 5.0
LOUIS_CH = 5.0
RI_BLEND = 1e-3  # width of the sigmoid joining the stable and unstable branches
RI_BRANCH_LIMIT = 0.02  # each branch is evaluated on Ri clipped smoothly to +-this beyond 0
RI_CAP_BD = 0.18  # smooth cap of Ri in the stable Businger-Dyer branch (critical Ri = 0.2)


def bulk_richardson(theta_v_air, theta_v_surface, wind, height_above_displacement):
    """Ri_b = g (z - d) (theta_v,a - theta_v,s) / (mean theta_v U^2) [-] (positive = stable)."""
    mean_theta = 0.5 * (theta_v_air + theta_v_surface)
    return (
        GRAVITY * height_above_displacement * (theta_v_air - theta_v_surface)
        / (mean_theta * wind**2)
    )


def neutral_aerodynamic_resistance(wind, height_above_displacement, z0m, z0h):
    """r_a = ln((z-d)/z0m) ln((z-d)/z0h) / (k^2 U) [s m-1]."""
    return (
        jnp.log(height_above_displacement / z0m)
        * jnp.log(height_above_displacement / z0h)
        / (VON_KARMAN**2 * wind)
    )


# --------------------------------------------------------------------------------------------
# Louis (1979)
# --------------------------------------------------------------------------------------------


def louis_stable(ri):
    """Louis stable heat factor F_h = 1 / (1 + 3 b Ri sqrt(1 + d Ri)) (Ri >= 0)."""
    return 1.0 / (1.0 + 3.0 * LOUIS_B * ri * jnp.sqrt(1.0 + LOUIS_D * ri))


def louis_unstable(ri, height_above_displacement, z0m):
    """Louis unstable heat factor F_h = 1 - 3 b Ri / (1 + 3 C*_h b a_m^2 sqrt(|Ri| (z-d)/z0m))."""
    a2m = (VON_KARMAN / jnp.log(height_above_displacement / z0m)) ** 2
    abs_ri = jnp.sqrt(ri**2 + 1e-12)  # |Ri|, smooth at 0 so the gradient stays finite
    c = LOUIS_B * a2m * jnp.sqrt(abs_ri * height_above_displacement / z0m)
    return 1.0 - 3.0 * LOUIS_B * ri / (1.0 + 3.0 * LOUIS_CH * c)


def louis_heat_factor(ri, height_above_displacement, z0m):
    """Louis F_h(Ri) for both signs of Ri, smoothly joined at Ri = 0."""
    w = sigmoid_blend(ri, RI_BLEND)
    ri_s = smooth_max(ri, -RI_BRANCH_LIMIT, 0.1 * RI_BRANCH_LIMIT)
    ri_u = smooth_min(ri, RI_BRANCH_LIMIT, 0.1 * RI_BRANCH_LIMIT)
    return w * louis_stable(ri_s) + (1.0 - w) * louis_unstable(ri_u, height_above_displacement, z0m)


# --------------------------------------------------------------------------------------------
# Businger-Dyer
# --------------------------------------------------------------------------------------------


def dyer_zeta_stable(ri):
    """zeta = Ri / (1 - 5 Ri) (Dyer stable, Ri < 0.2)."""
    return ri / (1.0 - 5.0 * ri)


def psi_m_unstable(zeta):
    """Paulson psi_m with x = (1 - 16 zeta)^(1/4) (zeta <= 0)."""
    x = (1.0 - 16.0 * zeta) ** 0.25
    return (
        2.0 * jnp.log((1.0 + x) / 2.0)
        + jnp.log((1.0 + x**2) / 2.0)
        - 2.0 * jnp.arctan(x)
        + jnp.pi / 2.0
    )


def psi_h_unstable(zeta):
    """Paulson psi_h with y = (1 - 16 zeta)^(1/2) (zeta <= 0)."""
    y = jnp.sqrt(1.0 - 16.0 * zeta)
    return 2.0 * jnp.log((1.0 + y) / 2.0)


def psi_stable(zeta):
    """Dyer stable psi_m = psi_h = -5 zeta."""
    return -5.0 * zeta


def businger_dyer_zeta(ri):
    """Stability parameter zeta from Ri: unstable zeta = Ri, stable zeta = Ri_c/(1 - 5 Ri_c).

    Ri_c is Ri capped smoothly at RI_CAP_BD. Returns (zeta_stable, zeta_unstable, weight_stable)
    so callers can evaluate the matching psi functions on each branch.
    """
    w = sigmoid_blend(ri, RI_BLEND)
    ri_s = smooth_max(ri, -RI_BRANCH_LIMIT, 0.1 * RI_BRANCH_LIMIT)
    ri_s = smooth_min(ri_s, RI_CAP_BD, 0.005)
    ri_u = smooth_min(ri, RI_BRANCH_LIMIT, 0.1 * RI_BRANCH_LIMIT)
    return dyer_zeta_stable(ri_s), ri_u, w


def businger_dyer_resistance(ri, wind, height_above_displacement, z0m, z0h):
    """r_a [s m-1] from Businger-Dyer profiles with zeta(Ri) (module docstring)."""
    zeta_s, zeta_u, w = businger_dyer_zeta(ri)
    zd = height_above_displacement
    ln_m = jnp.log(zd / z0m)
    ln_h = jnp.log(zd / z0h)
    # stable branch
    fm_s = ln_m - psi_stable(zeta_s) + psi_stable(zeta_s * z0m / zd)
    fh_s = ln_h - psi_stable(zeta_s) + psi_stable(zeta_s * z0h / zd)
    # unstable branch
    fm_u = ln_m - psi_m_unstable(zeta_u) + psi_m_unstable(zeta_u * z0m / zd)
    fh_u = ln_h - psi_h_unstable(zeta_u) + psi_h_unstable(zeta_u * z0h / zd)
    denom = VON_KARMAN**2 * wind
    return w * fm_s * fh_s / denom + (1.0 - w) * fm_u * fh_u / denom


# --------------------------------------------------------------------------------------------
# dispatch
# --------------------------------------------------------------------------------------------


def aerodynamic_resistance(ri, wind, height_above_displacement, z0m, z0h, scheme: str = "louis"):
    """Aerodynamic resistance for heat and vapour r_a [s m-1] with stability correction.

    Args:
        ri: bulk Richardson number [-]
        wind: wind speed (including gustiness) [m s-1]
        height_above_displacement: z - d [m]
        z0m, z0h: roughness lengths for momentum and heat [m]
        scheme: "louis" or "businger_dyer"
    """
    if scheme == "louis":
        a2h = VON_KARMAN**2 / (
            jnp.log(height_above_displacement / z0m) * jnp.log(height_above_displacement / z0h)
        )
        return 1.0 / (a2h * wind * louis_heat_factor(ri, height_above_displacement, z0m))
    if scheme == "businger_dyer":
        return businger_dyer_resistance(ri, wind, height_above_displacement, z0m, z0h)
    raise ValueError(f"unknown stability scheme {scheme!r}; allowed: {', '.join(STABILITY_SCHEMES)}")
