"""Observation-derived parameters from tower data, and the parameter reasonability coefficient.

The "observed" counterparts of what the hybrid models learn (``Kh`` [m2 s-1], ``rs`` [s m-1]),
computed from a canonical site dataset (:func:`hybridlsm.data.read_site`; ALMA names and units:
Tair [K], Psurf [Pa], VPD [hPa], Wind and Ustar [m s-1], fluxes [W m-2], Precip [kg m-2 s-1]).
The approach is bigleaf's (Knauer et al. 2018, Environ. Model. Softw. 115, 1; docs
physics-reference §4); the symbols are those of physics-reference §2-§4.

Aerodynamic conductance (physics-reference §4.1; bigleaf ``aerodynamic.conductance`` with its
defaults ``wind_profile = FALSE``, ``Rb_model = "Thom_1972"``)::

    Ga_m = u*^2 / U                       [m s-1]  (Ra_m = U / u*^2; includes stability implicitly)
    Rb_h = 6.2 u*^-0.667                  [s m-1]  canopy boundary-layer (excess) resistance for
                                                   heat, Thom (1972); kB_h = Rb_h k u* [-]
    Ga_h = 1 / (1/Ga_m + Rb_h)            [m s-1]  (Ra_h = 1 / Ga_h)

The exponent is 0.667 as in the bigleaf code (physics-reference §4.1 [V]); its documentation
writes 0.67 (a 0.3 % difference in Rb_h at u* = 0.5 m s-1).

Exchange coefficient K_h (physics-reference §4.4; bigleaf has no K_h function):

- ``Kh``: Monin-Obukhov eddy diffusivity for heat at the measurement height z (§4.4 a, §2.6)::

      L    = -rho c_p u*^3 T / (k g H)    [m]   Obukhov length from the observed u* and H (§2.1)
      zeta = (z - d) / L                  [-]
      phi_h(zeta) = (1 - 16 zeta)^-1/2  (zeta < 0),   1 + 5 zeta  (zeta >= 0)   (Dyer, §2.2)
      Kh   = k u* (z - d) / phi_h(zeta)   [m2 s-1]

  H = 0 gives L = +-inf, zeta = 0 and phi_h = 1 (neutral), which is the limit, not a fallback.
  Where H is missing Kh is NaN (no neutral value is assumed silently); with
  ``stability_correction=False`` phi_h = 1 everywhere and H is not needed.
- ``Kh_bulk``: the bulk (layer) equivalent K_h = (z - d) Ga_h = (z - d) / Ra_h (§4.4 b). This is
  the definition of the LaD column's own ``Kh`` output (``exchange_coefficient = (z - d) / r_a``,
  physics/lad.py), so it is the like-for-like target for the reasonability coefficient.

Heights: z is the site's ``measurement_height``; d = 0.7 h (bigleaf default, the package's
``displacement_fraction``) with h the site's ``canopy_height``. A missing canopy height falls back
to the typical height of the site's IGBP class and a missing measurement height to
``max(h + 2 m, 1.5 h)`` (:func:`hybridlsm.physics.parameters.reference_height`); the heights used
and where they came from are written to the output attrs. With neither a canopy height nor an
IGBP class, z - d is unknown: Kh and Kh_bulk are NaN, the attrs say why and a DataWarning is
issued (Ga and Gs do not need heights).

Surface conductance from the inverted Penman-Monteith equation (physics-reference §4.2; bigleaf
``surface.conductance``, formulation "Penman-Monteith")::

    Gs = LE gamma Ga_h / (Delta A + rho c_p VPD Ga_h - LE (Delta + gamma))   [m s-1]
    rs = 1 / Gs                                                              [s m-1]
    A  = Rn - G                                                              [W m-2]

with Delta = de_s/dT (Sonntag 1990 Magnus form) and gamma = c_p p / (epsilon lambda) in Pa K-1,
VPD in Pa, rho = p / (R_d T) (dry air, as bigleaf) and c_p = 1004.834 J kg-1 K-1 (package
``thermo`` and ``constants``). The storage term S of §4.2 is not observed in the canonical data and
is taken as 0 (bigleaf's default for a missing S). A missing ground heat flux G is set to 0 as in
bigleaf (``missing.G.as.NA = FALSE``) unless ``ground_heat_flux="require"``; the output attrs
``G_source`` and ``G_assumed_zero_steps`` state it.

Inversion filter (:func:`inversion_filter`): the inversion gives a canopy conductance only where a
dry, transpiring canopy with measured, energy-driven LE is observed. Criteria (defaults; [V] from
bigleaf's documented example of filtering before ``surface.conductance`` / ``filter.data``, [I]
this module's choice):

=================  ==========================================================================
missing            any input of the inversion or of the filter is NaN
quality            ``Qle_qc`` > 1 where the dataset has it (bigleaf ``good.quality = c(0, 1)``),
                   or a value this package filled or estimated; skipped without QC columns
daytime            SWdown > 100 W m-2 (about PPFD > 200 umol m-2 s-1, the bigleaf example) [V/I]
temperature        Tair > 5 degC (bigleaf example) [V]
latent_heat        LE > 0 [V]
available_energy   A = Rn - G > 50 W m-2 (inversion ill-conditioned at small A) [I]
wet_canopy         precipitation > 0.01 mm in the step or the previous 24 h (bigleaf ``tprecip``
                   = 0.01 mm per record, ``precip.hours`` = 24) [V]; a missing precipitation value
                   in that window also removes the step (a dry canopy cannot be certified); the
                   first 24 h of a record are judged on the steps available
friction_velocity  0.2 < u* <= 3 m s-1 (bigleaf example; 3 m s-1 is the upper end of the
                   package's plausible range for Ustar, data/schema.py) [V/I]
conductance        Gs finite and > 0 [V]
=================  ==========================================================================

Counts are sequential: a step is counted under the first criterion it fails, in the order above,
so the counts and ``kept`` add up to the number of steps. ``turbulence_filter`` does the same for
K_h (missing, friction_velocity, exchange_coefficient finite and > 0); it does not require
daytime or a dry canopy, because K_h does not rest on the Penman-Monteith inversion.

Reasonability coefficient (seed 000, Table 3: "the correlation coefficient between the neural
parameterizer output and the observed derived turbulence exchange coefficient"; reported here
for K_h and r_s): see :func:`reasonability`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import numpy as np
import xarray as xr

from ..constants import CP_AIR, GRAVITY, T_FREEZE, VON_KARMAN
from ..data.schema import VARIABLES, DataError, DataWarning, qc_mask
from ..physics.parameters import CANOPY_HEIGHT_BY_IGBP, PARAMETERS, reference_height
from ..thermo import (
    air_density,
    psychrometric_constant,
    saturation_vapour_pressure_slope,
)
from .metrics import valid_pairs

__all__ = [
    "THOM_RB_COEFFICIENT",
    "THOM_RB_EXPONENT",
    "INVERSION_CRITERIA",
    "TURBULENCE_CRITERIA",
    "REASONABILITY_PAIRS",
    "momentum_conductance",
    "thom_boundary_layer_resistance",
    "heat_conductance",
    "obukhov_length",
    "dyer_phi_h",
    "penman_monteith_latent_heat",
    "invert_penman_monteith",
    "site_heights",
    "aerodynamic_conductance",
    "exchange_coefficient",
    "surface_conductance",
    "inversion_filter",
    "turbulence_filter",
    "derived_parameters",
    "reasonability",
    "reasonability_table",
]

THOM_RB_COEFFICIENT = 6.2  # Rb_h = 6.2 u*^-0.667 [s m-1] (Thom 1972, bigleaf Gb.Thom)
THOM_RB_EXPONENT = 0.667
DYER_UNSTABLE = 16.0  # phi_h = (1 - 16 zeta)^-1/2
DYER_STABLE = 5.0  # phi_h = 1 + 5 zeta

#: Inversion-filter criteria in the order in which removed steps are counted.
INVERSION_CRITERIA = (
    "missing",
    "quality",
    "daytime",
    "temperature",
    "latent_heat",
    "available_energy",
    "wet_canopy",
    "friction_velocity",
    "conductance",
)
#: K_h filter criteria in counting order.
TURBULENCE_CRITERIA = ("missing", "friction_velocity", "exchange_coefficient")

#: Default pairs for the reasonability coefficient: label -> (learned variable, derived variable).
REASONABILITY_PAIRS = {"Kh": ("Kh", "Kh_bulk"), "rs": ("rs", "rs")}

_USTAR_MAX = VARIABLES["Ustar"].valid_range[1]
_DISPLACEMENT_FRACTION = float(PARAMETERS["displacement_fraction"].default)


# --------------------------------------------------------------------------------------------
# array formulas (NumPy; any shape)
# --------------------------------------------------------------------------------------------


def momentum_conductance(ustar, wind):
    """Aerodynamic conductance for momentum Ga_m = u*^2 / U [m s-1] (u*, U in m s-1)."""
    ustar, wind = np.asarray(ustar, dtype=float), np.asarray(wind, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return ustar**2 / wind


def thom_boundary_layer_resistance(ustar):
    """Canopy boundary-layer (excess) resistance for heat Rb_h = 6.2 u*^-0.667 [s m-1] (Thom 1972)."""
    ustar = np.asarray(ustar, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return THOM_RB_COEFFICIENT * ustar ** (-THOM_RB_EXPONENT)


def heat_conductance(ga_m, rb_h):
    """Aerodynamic conductance for heat Ga_h = 1 / (1/Ga_m + Rb_h) [m s-1] (resistances in series)."""
    ga_m, rb_h = np.asarray(ga_m, dtype=float), np.asarray(rb_h, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1.0 / (1.0 / ga_m + rb_h)


def obukhov_length(ustar, sensible_heat, t_air, pressure):
    """Obukhov length L = -rho c_p u*^3 T / (k g H) [m] (bigleaf form, physics-reference §2.1).

    Args: u* [m s-1], H [W m-2] (positive upward), T_air [K], pressure [Pa];
    rho = p / (R_d T) [kg m-3]. H = 0 gives L = -inf or +inf (neutral).
    """
    u, h = np.asarray(ustar, dtype=float), np.asarray(sensible_heat, dtype=float)
    t, p = np.asarray(t_air, dtype=float), np.asarray(pressure, dtype=float)
    rho = air_density(t, p)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -rho * CP_AIR * u**3 * t / (VON_KARMAN * GRAVITY * h)


def dyer_phi_h(zeta):
    """Dyer stability function for heat phi_h(zeta) [-] (physics-reference §2.2).

    phi_h = (1 - 16 zeta)^-1/2 for zeta < 0; phi_h = 1 + 5 zeta for zeta >= 0.
    """
    z = np.asarray(zeta, dtype=float)
    with np.errstate(invalid="ignore"):
        unstable = 1.0 / np.sqrt(1.0 - DYER_UNSTABLE * np.minimum(z, 0.0))
        return np.where(z < 0.0, unstable, 1.0 + DYER_STABLE * z)


def _pm_terms(t_air, pressure):
    """(Delta [Pa K-1], gamma [Pa K-1], rho [kg m-3]) at T_air [K] and pressure [Pa]."""
    t, p = np.asarray(t_air, dtype=float), np.asarray(pressure, dtype=float)
    return saturation_vapour_pressure_slope(t), psychrometric_constant(t, p), air_density(t, p)


def penman_monteith_latent_heat(available_energy, vpd, ga, gs, t_air, pressure):
    """Forward Penman-Monteith latent heat flux [W m-2] (physics-reference §3.9).

    LE = (Delta A + rho c_p VPD Ga) / (Delta + gamma (1 + Ga/Gs)).

    Args: A = Rn - G [W m-2], VPD [Pa], Ga and Gs [m s-1], T_air [K], pressure [Pa].
    """
    delta, gamma, rho = _pm_terms(t_air, pressure)
    a, d = np.asarray(available_energy, dtype=float), np.asarray(vpd, dtype=float)
    ga, gs = np.asarray(ga, dtype=float), np.asarray(gs, dtype=float)
    return (delta * a + rho * CP_AIR * d * ga) / (delta + gamma * (1.0 + ga / gs))


def invert_penman_monteith(latent_heat, available_energy, vpd, ga, t_air, pressure):
    """Surface conductance Gs [m s-1] from the inverted Penman-Monteith equation (§4.2, bigleaf).

    Gs = LE gamma Ga / (Delta A + rho c_p VPD Ga - LE (Delta + gamma)).

    Args: LE [W m-2], A = Rn - G [W m-2], VPD [Pa], Ga [m s-1], T_air [K], pressure [Pa].
    Exact inverse of :func:`penman_monteith_latent_heat`. Non-physical results (negative or
    infinite, where the denominator is <= 0) are returned as computed; filter them.
    """
    delta, gamma, rho = _pm_terms(t_air, pressure)
    le, a = np.asarray(latent_heat, dtype=float), np.asarray(available_energy, dtype=float)
    d, ga = np.asarray(vpd, dtype=float), np.asarray(ga, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return le * gamma * ga / (delta * a + rho * CP_AIR * d * ga - le * (delta + gamma))


# --------------------------------------------------------------------------------------------
# dataset helpers
# --------------------------------------------------------------------------------------------


def _source(ds: xr.Dataset) -> str:
    return str(ds.attrs.get("source_file") or ds.attrs.get("site_id") or "<dataset>")


def _require(ds: xr.Dataset, name: str, why: str, hint: str = "") -> xr.DataArray:
    if name not in ds.data_vars:
        have = sorted(v for v in ds.data_vars if "_qc" not in v)
        raise DataError(
            f"{_source(ds)}: variable {name!r} ({VARIABLES[name].long_name}) is needed for {why} "
            f"but is not in the dataset; available: {have}" + (f". {hint}" if hint else "")
        )
    return ds[name].astype(float)


def _time_step_s(ds: xr.Dataset) -> float:
    step = float(ds.attrs.get("time_step_s", np.nan))
    if np.isfinite(step) and step > 0:
        return step
    if "time" in ds.coords and ds.sizes.get("time", 0) > 1:
        dt = np.diff(ds["time"].values).astype("timedelta64[ns]").astype(float) / 1e9
        step = float(np.median(dt))
        if step > 0:
            return step
    raise DataError(f"{_source(ds)}: cannot tell the time step (no attrs['time_step_s'], no time axis)")


def _attr_float(ds: xr.Dataset, name: str) -> float:
    try:
        v = float(ds.attrs.get(name, np.nan))
    except (TypeError, ValueError):
        return math.nan
    return v if np.isfinite(v) and v > 0 else math.nan


def site_heights(
    ds: xr.Dataset,
    canopy_height: float | None = None,
    measurement_height: float | None = None,
    displacement_fraction: float = _DISPLACEMENT_FRACTION,
) -> dict:
    """Measurement height z, canopy height h, displacement d = fraction h and z - d [m].

    Arguments override the dataset attrs (``canopy_height``, ``measurement_height``, ``igbp``).
    h: argument, else attrs, else the typical height of the IGBP class; z: argument, else attrs,
    else ``max(h + 2, 1.5 h)``. Returns a dict with ``z``, ``h``, ``d``, ``z_minus_d`` (NaN when
    h cannot be determined) and ``source`` (a sentence for the output attrs).

    Raises:
        DataError: z <= d (the measurement height is not above the displacement height).
    """
    notes = []
    h = float(canopy_height) if canopy_height is not None else _attr_float(ds, "canopy_height")
    if np.isfinite(h):
        notes.append(f"h = {h:g} m ({'argument' if canopy_height is not None else 'site'})")
    else:
        igbp = str(ds.attrs.get("igbp", "")).strip().upper()
        if igbp in CANOPY_HEIGHT_BY_IGBP:
            h = CANOPY_HEIGHT_BY_IGBP[igbp]
            notes.append(f"h = {h:g} m (typical for IGBP {igbp}; the site gives none)")
        else:
            return {"z": math.nan, "h": math.nan, "d": math.nan, "z_minus_d": math.nan,
                    "source": "z - d unknown: no canopy_height and no known IGBP class"}
    z = float(measurement_height) if measurement_height is not None else _attr_float(ds, "measurement_height")
    if np.isfinite(z):
        notes.append(f"z = {z:g} m ({'argument' if measurement_height is not None else 'site'})")
    else:
        z = float(reference_height(h))
        notes.append(f"z = {z:g} m (max(h + 2, 1.5 h); the site gives no measurement height)")
    d = displacement_fraction * h
    notes.append(f"d = {displacement_fraction:g} h = {d:g} m")
    if not z > d:
        raise DataError(
            f"{_source(ds)}: measurement height z = {z:g} m is not above the displacement height "
            f"d = {d:g} m ({'; '.join(notes)}); give measurement_height= or canopy_height="
        )
    return {"z": z, "h": h, "d": d, "z_minus_d": z - d, "source": "; ".join(notes)}


def _described(da: xr.DataArray, units: str, long_name: str) -> xr.DataArray:
    return da.assign_attrs(units=units, long_name=long_name)


def _ground_heat_flux(ds: xr.Dataset, ground_heat_flux: str) -> tuple[xr.DataArray, dict]:
    """G [W m-2] and attrs describing it; ``ground_heat_flux`` is "zero" (bigleaf) or "require"."""
    if ground_heat_flux not in ("zero", "require"):
        raise ValueError(f"ground_heat_flux must be 'zero' or 'require', got {ground_heat_flux!r}")
    if "Qg" not in ds.data_vars:
        if ground_heat_flux == "require":
            _require(ds, "Qg", "the available energy A = Rn - G",
                     "Pass ground_heat_flux='zero' to assume G = 0 (bigleaf's default)")
        g = xr.zeros_like(_require(ds, "Rnet", "the available energy A = Rn - G"))
        return g, {"G_source": "Qg absent: G = 0 assumed (bigleaf missing.G.as.NA = FALSE)",
                   "G_assumed_zero_steps": int(g.size)}
    g = ds["Qg"].astype(float)
    if ground_heat_flux == "require":
        return g, {"G_source": "Qg (missing values left missing)", "G_assumed_zero_steps": 0}
    n = int(g.isnull().sum())
    return g.fillna(0.0), {"G_source": "Qg; missing values set to 0 (bigleaf missing.G.as.NA = FALSE)",
                           "G_assumed_zero_steps": n}


# --------------------------------------------------------------------------------------------
# dataset functions
# --------------------------------------------------------------------------------------------


def aerodynamic_conductance(ds: xr.Dataset) -> xr.Dataset:
    """Ga_m, Ra_m, Rb_h, kB_h, Ga_h, Ra_h from Ustar and Wind (module docstring, §4.1).

    Raises:
        DataError: ``Ustar`` or ``Wind`` is absent (named in the message).
    """
    why = "the aerodynamic conductance Ga_m = u*^2 / U"
    ustar = _require(ds, "Ustar", why)
    wind = _require(ds, "Wind", why)
    ga_m = xr.apply_ufunc(momentum_conductance, ustar, wind)
    rb_h = xr.apply_ufunc(thom_boundary_layer_resistance, ustar)
    ga_h = xr.apply_ufunc(heat_conductance, ga_m, rb_h)
    with np.errstate(divide="ignore", invalid="ignore"):
        ra_m, ra_h = 1.0 / ga_m, 1.0 / ga_h
    out = xr.Dataset({
        "Ga_m": _described(ga_m, "m s-1", "aerodynamic conductance for momentum u*^2/U"),
        "Ra_m": _described(ra_m, "s m-1", "aerodynamic resistance for momentum U/u*^2"),
        "Rb_h": _described(rb_h, "s m-1", "canopy boundary-layer resistance for heat (Thom 1972)"),
        "kB_h": _described(rb_h * VON_KARMAN * ustar, "1", "kB^-1 for heat, Rb_h k u*"),
        "Ga_h": _described(ga_h, "m s-1", "aerodynamic conductance for heat 1/(1/Ga_m + Rb_h)"),
        "Ra_h": _described(ra_h, "s m-1", "aerodynamic resistance for heat Ra_m + Rb_h"),
    })
    return out


def exchange_coefficient(
    ds: xr.Dataset,
    ga_h: xr.DataArray | None = None,
    *,
    stability_correction: bool = True,
    canopy_height: float | None = None,
    measurement_height: float | None = None,
    displacement_fraction: float = _DISPLACEMENT_FRACTION,
) -> xr.Dataset:
    """K_h at the measurement height (``Kh``) and its bulk equivalent (``Kh_bulk``), with L and zeta.

    Kh = k u* (z - d) / phi_h((z - d)/L) [m2 s-1] (Dyer phi_h, L from the observed u* and H);
    Kh_bulk = (z - d) Ga_h [m2 s-1]. See the module docstring for the heights and what happens
    when they, or H, are unknown. ``ga_h`` defaults to :func:`aerodynamic_conductance`'s Ga_h.

    Raises:
        DataError: Ustar, Wind absent; Qh, Tair or Psurf absent with ``stability_correction``.
    """
    ustar = _require(ds, "Ustar", "the exchange coefficient K_h = k u* (z - d) / phi_h")
    if ga_h is None:
        ga_h = aerodynamic_conductance(ds)["Ga_h"]
    heights = site_heights(ds, canopy_height, measurement_height, displacement_fraction)
    zd = heights["z_minus_d"]
    attrs = {"heights": heights["source"], "z_minus_d": zd}
    if not np.isfinite(zd):
        warnings.warn(f"{_source(ds)}: {heights['source']}; Kh and Kh_bulk are NaN "
                      "(give canopy_height= and measurement_height=)", DataWarning, stacklevel=2)
    if stability_correction:
        hint = "Pass stability_correction=False for the neutral K_h = k u* (z - d)"
        why = "the Obukhov length L = -rho c_p u*^3 T / (k g H)"
        h = _require(ds, "Qh", why, hint)
        t = _require(ds, "Tair", why, hint)
        p = _require(ds, "Psurf", why, hint)
        length = xr.apply_ufunc(obukhov_length, ustar, h, t, p)
        with np.errstate(divide="ignore", invalid="ignore"):
            zeta = zd / length
        phi = xr.apply_ufunc(dyer_phi_h, zeta)
        attrs["stability"] = ("Dyer phi_h(zeta), zeta = (z - d)/L from observed u* and H; "
                              "NaN where H is missing")
    else:
        length = xr.full_like(ustar, np.inf)
        zeta = xr.zeros_like(ustar)
        phi = xr.ones_like(ustar)
        attrs["stability"] = "none: phi_h = 1 (neutral) by request"
    kh = VON_KARMAN * ustar * zd / phi
    out = xr.Dataset({
        "obukhov_length": _described(length, "m", "Obukhov length -rho c_p u*^3 T/(k g H)"),
        "zeta": _described(zeta, "1", "stability parameter (z - d)/L"),
        "phi_h": _described(phi, "1", "Dyer stability function for heat"),
        "Kh": _described(kh, "m2 s-1", "eddy diffusivity for heat at z, k u* (z - d)/phi_h"),
        "Kh_bulk": _described(zd * ga_h, "m2 s-1", "bulk exchange coefficient (z - d) Ga_h"),
    }, attrs=attrs)
    return out


def surface_conductance(
    ds: xr.Dataset,
    ga_h: xr.DataArray | None = None,
    *,
    ground_heat_flux: str = "zero",
) -> tuple[xr.DataArray, xr.DataArray]:
    """(Gs [m s-1], rs [s m-1]) from the inverted Penman-Monteith equation with Ga = Ga_h (§4.2).

    Unfiltered: apply :func:`inversion_filter` before using the values. Both outputs carry the
    ``G_source`` and ``G_assumed_zero_steps`` attrs (see the module docstring).

    Raises:
        DataError: Qle, Rnet, VPD, Tair or Psurf absent; Qg absent with ``ground_heat_flux="require"``.
    """
    why = "the inverted Penman-Monteith equation"
    le = _require(ds, "Qle", why)
    rn = _require(ds, "Rnet", why)
    vpd_pa = _require(ds, "VPD", why) * 100.0  # hPa -> Pa
    t = _require(ds, "Tair", why)
    p = _require(ds, "Psurf", why)
    g, g_attrs = _ground_heat_flux(ds, ground_heat_flux)
    if ga_h is None:
        ga_h = aerodynamic_conductance(ds)["Ga_h"]
    gs = xr.apply_ufunc(invert_penman_monteith, le, rn - g, vpd_pa, ga_h, t, p)
    with np.errstate(divide="ignore", invalid="ignore"):
        rs = 1.0 / gs
    gs = gs.assign_attrs(units="m s-1", long_name="surface conductance, inverted Penman-Monteith", **g_attrs)
    rs = rs.assign_attrs(units="s m-1", long_name="surface resistance 1/Gs", **g_attrs)
    return gs, rs


def _wet_canopy(ds: xr.Dataset, precip_hours: float, precip_min_mm: float) -> xr.DataArray:
    """True where precipitation > ``precip_min_mm`` (or missing) in this step or the previous hours."""
    precip = _require(ds, "Precip", "the dry-canopy criterion (no rain in the previous hours)",
                      "Pass precip_hours=0 to skip this criterion (the output attrs then say so)")
    step = _time_step_s(ds)
    amount = precip * step  # kg m-2 s-1 * s = mm per step
    event = (amount > precip_min_mm) | amount.isnull()
    window = int(round(precip_hours * 3600.0 / step)) + 1  # this step and the previous hours
    return event.astype(float).rolling(time=window, min_periods=1).max() > 0


def _sequential_counts(criteria: dict[str, xr.DataArray], total: int) -> tuple[xr.DataArray, dict]:
    """Apply pass-masks in order; count each removed step under the first criterion it fails."""
    keep = None
    counts = {"total": total}
    for name, ok in criteria.items():
        ok = ok.fillna(False).astype(bool)
        new = ok if keep is None else keep & ok
        counts[name] = int((keep.sum() if keep is not None else total) - new.sum())
        keep = new
    counts["kept"] = int(keep.sum())
    return keep, counts


def inversion_filter(
    ds: xr.Dataset,
    gs: xr.DataArray | None = None,
    *,
    sw_min: float = 100.0,
    tair_min_c: float = 5.0,
    le_min: float = 0.0,
    available_energy_min: float = 50.0,
    precip_hours: float = 24.0,
    precip_min_mm: float = 0.01,
    ustar_min: float = 0.2,
    ustar_max: float = _USTAR_MAX,
    max_qc: int | None = 1,
    ground_heat_flux: str = "zero",
) -> tuple[xr.DataArray, dict]:
    """Steps where the Penman-Monteith inversion gives a canopy conductance (module docstring).

    Args:
        ds: canonical site dataset.
        gs: surface conductance [m s-1]; default :func:`surface_conductance` of ``ds``.
        sw_min: daytime is SWdown > sw_min [W m-2].
        tair_min_c: Tair > tair_min_c [degC].
        le_min: LE > le_min [W m-2].
        available_energy_min: A = Rn - G > available_energy_min [W m-2].
        precip_hours: no precipitation above ``precip_min_mm`` [mm per step] in this step and the
            previous ``precip_hours`` hours; 0 checks only the step itself; None skips the
            criterion (and the need for Precip).
        ustar_min, ustar_max: ustar_min < u* <= ustar_max [m s-1].
        max_qc: largest accepted ``Qle_qc`` (None: no QC criterion); skipped without ``Qle_qc``.
        ground_heat_flux: "zero" or "require" (see :func:`surface_conductance`).

    Returns:
        (mask, counts): boolean DataArray (True = keep) and a dict ``total``, one entry per
        criterion of :data:`INVERSION_CRITERIA` (steps removed, sequentially; 0 for a skipped
        criterion), ``kept``; ``counts["skipped"]`` lists the criteria not applied and why.
    """
    if gs is None:
        gs = surface_conductance(ds, ground_heat_flux=ground_heat_flux)[0]
    g, _ = _ground_heat_flux(ds, ground_heat_flux)
    names = ("Qle", "Rnet", "VPD", "Tair", "Psurf", "Ustar", "Wind", "SWdown")
    inputs = {n: _require(ds, n, "the inversion filter" if n == "SWdown" else "the inversion") for n in names}
    present = xr.ones_like(gs, dtype=bool)
    for v in (*inputs.values(), g):
        present = present & v.notnull()
    skipped = {}
    if precip_hours is not None:
        present = present & _require(ds, "Precip", "the dry-canopy criterion",
                                     "Pass precip_hours=None to skip it").notnull()
    if max_qc is not None and "Qle_qc" in ds:
        quality = qc_mask(ds, "Qle", max_qc)
    else:
        quality = xr.ones_like(present)
        skipped["quality"] = "no Qle_qc in the dataset" if max_qc is not None else "max_qc=None"
    if precip_hours is not None:
        dry = ~_wet_canopy(ds, precip_hours, precip_min_mm)
    else:
        dry = xr.ones_like(present)
        skipped["wet_canopy"] = "precip_hours=None"
    a = inputs["Rnet"] - g
    u = inputs["Ustar"]
    criteria = {
        "missing": present,
        "quality": quality,
        "daytime": inputs["SWdown"] > sw_min,
        "temperature": inputs["Tair"] - T_FREEZE > tair_min_c,
        "latent_heat": inputs["Qle"] > le_min,
        "available_energy": a > available_energy_min,
        "wet_canopy": dry,
        "friction_velocity": (u > ustar_min) & (u <= ustar_max),
        "conductance": np.isfinite(gs) & (gs > 0),
    }
    mask, counts = _sequential_counts(criteria, int(gs.size))
    counts["skipped"] = skipped
    thresholds = (f"SWdown > {sw_min:g} W m-2; Tair > {tair_min_c:g} degC; LE > {le_min:g} W m-2; "
                  f"Rn - G > {available_energy_min:g} W m-2; "
                  + (f"no precipitation > {precip_min_mm:g} mm per step in the step and previous "
                     f"{precip_hours:g} h; " if precip_hours is not None else "")
                  + f"{ustar_min:g} < u* <= {ustar_max:g} m s-1; "
                  + (f"Qle_qc <= {max_qc}; " if "quality" not in skipped else "")
                  + "Gs finite and > 0")
    mask = mask.rename("mask").assign_attrs(long_name="Penman-Monteith inversion valid", criteria=thresholds)
    return mask, counts


def turbulence_filter(
    ds: xr.Dataset,
    kh: xr.DataArray,
    *,
    ustar_min: float = 0.2,
    ustar_max: float = _USTAR_MAX,
) -> tuple[xr.DataArray, dict]:
    """Steps with a usable observation-derived K_h: inputs present, ustar_min < u* <= ustar_max,
    K_h finite and > 0. Returns (mask, counts) like :func:`inversion_filter` (TURBULENCE_CRITERIA).
    """
    u = _require(ds, "Ustar", "the exchange coefficient")
    present = u.notnull() & _require(ds, "Wind", "the exchange coefficient").notnull()
    criteria = {
        "missing": present,
        "friction_velocity": (u > ustar_min) & (u <= ustar_max),
        "exchange_coefficient": np.isfinite(kh) & (kh > 0),
    }
    mask, counts = _sequential_counts(criteria, int(kh.size))
    mask = mask.rename("mask_Kh").assign_attrs(
        long_name="observation-derived K_h valid",
        criteria=f"{ustar_min:g} < u* <= {ustar_max:g} m s-1; K_h finite and > 0")
    return mask, counts


def derived_parameters(
    ds: xr.Dataset,
    *,
    stability_correction: bool = True,
    ground_heat_flux: str = "zero",
    canopy_height: float | None = None,
    measurement_height: float | None = None,
    displacement_fraction: float = _DISPLACEMENT_FRACTION,
    **filter_options,
) -> xr.Dataset:
    """Every observation-derived parameter of a site, with the two validity masks.

    Variables: Ga_m, Ra_m, Rb_h, kB_h, Ga_h, Ra_h, obukhov_length, zeta, phi_h, Kh, Kh_bulk,
    available_energy, Gs, rs; ``mask`` (Penman-Monteith inversion valid, :func:`inversion_filter`
    with ``filter_options``) and ``mask_Kh`` (:func:`turbulence_filter`, with the same u* bounds).

    Attrs: the site id, the heights used, how G was obtained, the filter thresholds, and the
    sequential counts of removed steps as flat ``removed_<criterion>`` / ``removed_Kh_<criterion>``
    integers with ``kept`` and ``kept_Kh`` (flat so the dataset can be written to netCDF).
    """
    aero = aerodynamic_conductance(ds)
    exch = exchange_coefficient(
        ds, aero["Ga_h"], stability_correction=stability_correction, canopy_height=canopy_height,
        measurement_height=measurement_height, displacement_fraction=displacement_fraction)
    gs, rs = surface_conductance(ds, aero["Ga_h"], ground_heat_flux=ground_heat_flux)
    g, _ = _ground_heat_flux(ds, ground_heat_flux)
    mask, counts = inversion_filter(ds, gs, ground_heat_flux=ground_heat_flux, **filter_options)
    u_opts = {k: filter_options[k] for k in ("ustar_min", "ustar_max") if k in filter_options}
    mask_kh, counts_kh = turbulence_filter(ds, exch["Kh"], **u_opts)
    out = xr.merge([aero, exch], combine_attrs="drop")
    out["available_energy"] = (_require(ds, "Rnet", "A = Rn - G") - g).assign_attrs(
        units="W m-2", long_name="available energy Rn - G")
    out["Gs"], out["rs"] = gs, rs
    out["mask"], out["mask_Kh"] = mask, mask_kh
    attrs = {
        "site_id": str(ds.attrs.get("site_id", "")),
        "source_file": str(ds.attrs.get("source_file", "")),
        "method": "bigleaf (Knauer et al. 2018): Ga_h = 1/(U/u*^2 + 6.2 u*^-0.667); "
                  "Gs from the inverted Penman-Monteith equation; hybridlsm.evaluation.derived",
        "heights": exch.attrs["heights"],
        "z_minus_d": float(exch.attrs["z_minus_d"]),
        "stability": exch.attrs["stability"],
        "G_source": gs.attrs["G_source"],
        "G_assumed_zero_steps": int(gs.attrs["G_assumed_zero_steps"]),
        "storage_flux": "S = 0 (not observed)",
        "filter_criteria": mask.attrs["criteria"],
        "filter_skipped": "; ".join(f"{k}: {v}" for k, v in counts["skipped"].items()),
        "filter_criteria_Kh": mask_kh.attrs["criteria"],
    }
    attrs.update({f"removed_{k}": counts[k] for k in INVERSION_CRITERIA})
    attrs["kept"] = counts["kept"]
    attrs.update({f"removed_Kh_{k}": counts_kh[k] for k in TURBULENCE_CRITERIA})
    attrs["kept_Kh"] = counts_kh["kept"]
    out.attrs = attrs
    return out


# --------------------------------------------------------------------------------------------
# reasonability coefficient
# --------------------------------------------------------------------------------------------


def _as_aligned(learned, derived, mask):
    arrays = [a for a in (learned, derived, mask) if a is not None]
    if all(isinstance(a, xr.DataArray) for a in arrays) and all("time" in a.dims for a in arrays):
        arrays = list(xr.align(*arrays, join="inner"))
        learned, derived = arrays[0], arrays[1]
        mask = arrays[2] if mask is not None else None
    learned = np.asarray(learned, dtype=float)
    derived = np.asarray(derived, dtype=float)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
    return learned, derived, mask


def reasonability(learned, derived, mask=None, *, transform: str = "log", min_n: int = 10) -> dict:
    """Parameter reasonability coefficient: correlation of learned and observation-derived values.

    r = Pearson correlation of (log learned, log derived) over the steps where both are finite and
    ``mask`` is True (seed 000 Table 3 reports "the correlation coefficient"; the transform is
    this module's choice). Why the logarithm: K_h and r_s are positive and span decades (K_h
    1e-3..1e2 m2 s-1, r_s 1e1..1e4 s m-1) with skewed, roughly log-normal distributions, so a
    Pearson r on raw values is dominated by a few extreme steps (r_s near dawn and dusk when LE
    is small, K_h at high u*). In log space r is also invariant to a constant factor on either
    side (the choice of Delta z_eff in K_h_bulk = Delta z_eff Ga_h, a global ra_scale), and
    r(log r_s) = r(log G_s), so it does not matter whether resistances or conductances are
    compared. ``transform="none"`` gives the plain Pearson r; ``"rank"`` Spearman's rho.

    DataArrays with a ``time`` dimension are aligned (inner join) first; otherwise the arrays
    must broadcast. Returns ``{"r", "n", "transform"}``; r is NaN when n < ``min_n``.

    Raises:
        ValueError: unknown transform, or a non-positive learned or derived value among the
            compared steps with ``transform="log"`` (a conductance or resistance must be > 0).
    """
    if transform not in ("log", "none", "rank"):
        raise ValueError(f"transform must be 'log', 'none' or 'rank', got {transform!r}")
    s, o, m = _as_aligned(learned, derived, mask)
    s, o = valid_pairs(s, o, m)
    if transform == "log" and s.size:
        bad = (s <= 0) | (o <= 0)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"log-transformed reasonability needs positive values; {int(bad.sum())} compared "
                f"steps are <= 0 (first: learned {s[i]:g}, derived {o[i]:g})")
        s, o = np.log(s), np.log(o)
    elif transform == "rank" and s.size:
        from scipy import stats

        s, o = stats.rankdata(s), stats.rankdata(o)
    n = int(s.size)
    if n < max(min_n, 2):
        return {"r": math.nan, "n": n, "transform": transform}
    ds_, do_ = s - s.mean(), o - o.mean()
    den = math.sqrt(float(np.sum(ds_ * ds_)) * float(np.sum(do_ * do_)))
    r = float(np.clip(np.sum(ds_ * do_) / den, -1.0, 1.0)) if den > 0 else math.nan
    return {"r": r, "n": n, "transform": transform}


def reasonability_table(
    models: Mapping[str, xr.Dataset],
    derived: xr.Dataset,
    *,
    pairs: Mapping[str, tuple[str, str]] = REASONABILITY_PAIRS,
    where: xr.DataArray | np.ndarray | None = None,
    transform: str = "log",
    min_n: int = 10,
) -> dict[str, dict[str, dict]]:
    """Reasonability coefficient per model and parameter: ``{model: {label: {"r", "n", ...}}}``.

    ``pairs`` maps a label to (learned variable in the model output, derived variable); by default
    ``Kh`` -> ``Kh_bulk`` (the model's Kh is (z - d)/r_a, a bulk value) and ``rs`` -> ``rs``. The
    derived ``rs`` uses ``derived["mask"]``, the K_h variables ``derived["mask_Kh"]``; ``where``
    (e.g. the test split) is combined with them. A model without the learned variable gets
    ``{"r": nan, "n": 0, "note": "..."}``.
    """
    out: dict[str, dict[str, dict]] = {}
    for name, ds in models.items():
        row = {}
        for label, (learned_var, derived_var) in pairs.items():
            if learned_var not in ds.variables:
                row[label] = {"r": math.nan, "n": 0, "transform": transform,
                              "note": f"model output has no {learned_var!r}"}
                continue
            mask = derived["mask_Kh"] if derived_var.startswith("Kh") else derived["mask"]
            if where is not None:
                w = where if isinstance(where, xr.DataArray) else xr.DataArray(
                    np.asarray(where, dtype=bool), dims=mask.dims, coords=mask.coords)
                mask = mask & w
            row[label] = reasonability(ds[learned_var], derived[derived_var], mask,
                                       transform=transform, min_n=min_n)
            row[label]["derived"] = derived_var
        out[name] = row
    return out
