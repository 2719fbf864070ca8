"""The parameter table of the LaD column: every physical parameter declared once.

Each entry of :data:`PARAMETERS` has a name, unit, description, bounds, whether calibration and the
networks' bounded heads may change it, whether its bounded transform works in log space, and a
default that is either one number or a value per land-cover class.

Defaults per class come from the GFDL LaD tables (``land_properties.F90`` in MOM4p1; see
docs physics-reference §1.2-1.3). IGBP classes are mapped to LaD cover types by
:data:`IGBP_TO_LAD`; that mapping is this package's choice [I] and is listed there.

``Params`` is a ``dict[str, Array]`` with one ``(N,)`` array per entry, N sites or cells.

Reference height (``reference_height``, the forcing / flux measurement height z): the measurement
height when it is known (finite and > 0). Otherwise ``max(h + 2 m, 1.5 h)`` with h the canopy height:
2 m above short vegetation, half a canopy height above tall canopies (towers above forests stand
at roughly 1.3-2 h). The displacement height is ``d = displacement_fraction * canopy_height``. The
canopy height is the site's value when known, otherwise a typical height per IGBP class
(:data:`CANOPY_HEIGHT_BY_IGBP`, [I]).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

# --------------------------------------------------------------------------------------------
# LaD tables (land_properties.F90, cover types BE BD BN NE ND G D T A) [V]
# --------------------------------------------------------------------------------------------

LAD_COVER_TYPES = ("BE", "BD", "BN", "NE", "ND", "G", "D", "T", "A")

_LAD = {
    #       rs_min  z0m    zeta  root_mass crit_snow  albedo
    "BE": (43.6, 2.65, 0.26, 4.9, 60.0, 0.149),
    "BD": (131.0, 0.90, 0.29, 4.2, 10.0, 0.130),
    "BN": (87.1, 1.2, 0.35, 4.3, 25.0, 0.132),
    "NE": (69.7, 0.90, 0.17, 2.9, 40.0, 0.126),
    "ND": (218.0, 0.80, 0.17, 2.9, 40.0, 0.143),
    "G": (56.6, 0.07, 0.26, 1.4, 5.0, 0.182),
    "D": (0.01, 0.01, 0.35, 0.762, 5.0, 0.333),
    "T": (170.0, 0.07, 0.11, 1.2, 5.0, 0.139),
    "A": (56.6, 0.40, 0.25, 0.15, 5.0, 0.160),
}

#: Critical root density (kg m-3) and the medium-soil available water capacity (kg m-3) of LaD [V].
CRITICAL_ROOT_DENSITY = 0.125
AWC_MEDIUM_SOIL = 132.0
ROOT_DEPTH_MIN = 0.01


def lad_root_zone_capacity(cover: str, awc: float = AWC_MEDIUM_SOIL) -> float:
    """W_max = z_r * AWC with z_r = zeta ln(M_r / (zeta rho_crit)) >= 0.01 m (LaD, [V])."""
    return lad_root_depth(cover) * awc


#: Jackson et al. (1996, Oecologia 108:389, Table 1) root-distribution coefficient beta_J per LaD
#: cover (cumulative root fraction above depth d [cm] is 1 - beta_J^d) [V values; I mapping]:
#: BE tropical evergreen forest, BD temperate deciduous, BN mean of temperate deciduous and
#: coniferous, NE temperate coniferous, ND boreal forest, G temperate grassland, D desert,
#: T tundra, A crops.
JACKSON_ROOT_BETA = {"BE": 0.962, "BD": 0.966, "BN": 0.971, "NE": 0.976, "ND": 0.943, "G": 0.943,
                     "D": 0.975, "T": 0.914, "A": 0.961}


def lad_root_depth(cover: str) -> float:
    """LaD rooting depth z_r = zeta ln(M_r / (zeta rho_crit)) >= 0.01 m [V]."""
    _, _, zeta, root_mass, _, _ = _LAD[cover]
    return max(zeta * math.log(root_mass / (zeta * CRITICAL_ROOT_DENSITY)), ROOT_DEPTH_MIN)


def deep_root_fraction(cover: str) -> float:
    """Fraction of the roots below LaD's rooting depth z_r: beta_J^(100 z_r) (Jackson et al. 1996);
    NE (z_r 0.84 m): 0.13, G (0.98 m): 0.003."""
    return JACKSON_ROOT_BETA[cover] ** (100.0 * lad_root_depth(cover))


#: IGBP class -> LaD cover type [I: this package's mapping; LaD has no shrub or savanna class].
IGBP_TO_LAD = {
    "ENF": "NE",  # evergreen needleleaf forest
    "EBF": "BE",  # evergreen broadleaf forest
    "DNF": "ND",  # deciduous needleleaf forest
    "DBF": "BD",  # deciduous broadleaf forest
    "MF": "BN",  # mixed forest
    "CSH": "G",  # closed shrubland (short, grass-like roughness)
    "OSH": "G",  # open shrubland
    "WSA": "BD",  # woody savanna (deciduous trees, 30-60 % cover)
    "SAV": "G",  # savanna (10-30 % trees)
    "GRA": "G",  # grassland
    "WET": "G",  # permanent wetland (herbaceous)
    "CRO": "A",  # cropland
    "CVM": "A",  # cropland / natural vegetation mosaic
    "BSV": "D",  # barren / sparsely vegetated
    "URB": "D",  # urban (treated as bare)
    "WAT": "G",  # open water: LaD has no lake; wetland's cover with OPEN_WATER_PARAMETERS (default_params)
}

#: Typical canopy height (m) when the site does not give one [I].
CANOPY_HEIGHT_BY_IGBP = {
    "ENF": 15.0,
    "EBF": 25.0,
    "DNF": 15.0,
    "DBF": 20.0,
    "MF": 18.0,
    "CSH": 2.0,
    "OSH": 0.5,
    "WSA": 8.0,
    "SAV": 4.0,
    "GRA": 0.5,
    "WET": 0.5,
    "CRO": 1.0,
    "CVM": 2.0,
    "BSV": 0.1,
    "URB": 10.0,
    "WAT": 0.5,  # as WET (its cover's roughness)
}

ALLOWED_IGBP = tuple(IGBP_TO_LAD)


def _by_cover(column: int) -> dict[str, float]:
    return {cover: row[column] for cover, row in _LAD.items()}


# --------------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParameterSpec:
    """One physical parameter: metadata, default and bounded transform.

    ``default`` is a float, or a mapping from LaD cover type (``per="cover"``) or IGBP class
    (``per="igbp"``) to a float. ``log_scale`` selects the bounded transform in log space
    (positive parameters spanning decades); otherwise a sigmoid between the bounds in linear space.
    """

    name: str
    unit: str
    description: str
    lower: float
    upper: float
    calibratable: bool
    default: float | Mapping[str, float]
    per: str | None = None
    log_scale: bool = False
    source: str = ""

    def __post_init__(self):
        if not self.lower < self.upper:
            raise ValueError(f"parameter {self.name!r}: lower {self.lower} >= upper {self.upper}")
        if self.log_scale and self.lower <= 0:
            raise ValueError(f"parameter {self.name!r}: log-scale bounds must be positive")
        values = self.default.values() if isinstance(self.default, Mapping) else [self.default]
        for v in values:  # inside the open bounds where the sigmoid transform must reach it
            if not (self.lower < v < self.upper if self.calibratable else self.lower <= v <= self.upper):
                raise ValueError(
                    f"parameter {self.name!r}: default {v} outside ({self.lower}, {self.upper})"
                )

    def default_for(self, igbp: str) -> float:
        """Default value for one IGBP class (already validated)."""
        if self.per is None:
            return float(self.default)
        key = IGBP_TO_LAD[igbp] if self.per == "cover" else igbp
        return float(self.default[key])


_LAD_SRC = "GFDL LaD land_properties.F90 (MOM4p1) [V]"

_SPECS = [
    ParameterSpec("albedo", "-", "snow-free surface albedo", 0.03, 0.6, True,
                  _by_cover(5), per="cover", source=_LAD_SRC),
    ParameterSpec("emissivity", "-", "surface longwave emissivity", 0.85, 1.0, True, 0.98,
                  source="physics-reference §3.6 [G] (LaD/FMS use 1)"),
    ParameterSpec("albedo_snow_warm", "-", "snow albedo at the freezing point", 0.3, 0.95, True,
                  0.65, source=_LAD_SRC),
    ParameterSpec("albedo_snow_cold", "-", "snow albedo at snow_albedo_t_range below freezing",
                  0.3, 0.98, True, 0.80, source=_LAD_SRC),
    ParameterSpec("snow_albedo_t_range", "K", "temperature range of the snow-albedo ramp",
                  1.0, 30.0, False, 10.0, source=_LAD_SRC),
    ParameterSpec("snow_crit_mass", "kg m-2", "snow mass that half hides the surface (albedo)",
                  0.5, 500.0, True, _by_cover(4), per="cover", log_scale=True, source=_LAD_SRC),
    ParameterSpec("rs_min", "s m-1", "non-water-stressed bulk stomatal resistance", 1e-3, 5000.0,
                  True, _by_cover(0), per="cover", log_scale=True, source=_LAD_SRC),
    ParameterSpec("rs_scale", "-", "global factor on rs_min (LaD factor_stomata)", 0.05, 20.0,
                  True, 1.0, log_scale=True, source=_LAD_SRC),
    ParameterSpec("z0m", "m", "roughness length for momentum", 1e-4, 5.0, True, _by_cover(1),
                  per="cover", log_scale=True, source=_LAD_SRC),
    ParameterSpec("kB_inv", "-", "kB^-1 = ln(z0m / z0h)", 0.0, 12.0, True, 2.0,
                  source=_LAD_SRC),
    ParameterSpec("displacement_fraction", "-", "zero-plane displacement d / canopy height",
                  0.0, 0.95, True, 0.7, source="bigleaf d = 0.7 h (physics-reference §2.5) [V]"),
    ParameterSpec("ra_scale", "-", "factor on the aerodynamic resistance r_a (1/factor on K_h)",
                  0.05, 20.0, True, 1.0, log_scale=True, source="[I] hybrid / calibration knob"),
    ParameterSpec("gustiness", "m s-1", "gust speed added in quadrature to the wind", 0.05, 5.0,
                  False, 1.0, source="FMS surface_flux gust = 1 m s-1 [G]"),
    ParameterSpec("soil_heat_capacity", "J m-3 K-1", "volumetric soil heat capacity", 0.8e6,
                  4.5e6, True, 2.0e6, source=_LAD_SRC + " (medium soil)"),
    ParameterSpec("soil_thermal_conductivity", "W m-1 K-1", "soil thermal conductivity", 0.05,
                  5.0, True, 0.8, log_scale=True, source=_LAD_SRC + " (medium soil: C x D)"),
    ParameterSpec("root_zone_capacity", "kg m-2", "root-zone water capacity W_max", 2.0,
                  2000.0, True, {c: lad_root_zone_capacity(c) for c in LAD_COVER_TYPES},
                  per="cover", log_scale=True,
                  source=_LAD_SRC + " (z_r x AWC, medium soil AWC 132 kg m-3)"),
    ParameterSpec("beta_threshold", "-", "fraction of W_max below which evaporation is stressed",
                  0.05, 1.0, True, 0.75, source=_LAD_SRC),
    ParameterSpec("deep_root_fraction", "-", "fraction of roots below the root zone (used only "
                  "with LaDModel.deep_water; calibrated only then: OPTION_CALIBRATABLE)", 1e-4, 1.0, False,
                  {c: deep_root_fraction(c) for c in LAD_COVER_TYPES}, per="cover", log_scale=True,
                  source="Jackson et al. (1996) Oecologia 108:389, beta_J^(100 z_r) [V values, I use]"),
    ParameterSpec("irrigated", "-", "irrigated fraction of the column (site metadata ``irrigated``; 0: "
                  "rain-fed, as LaD): irrigation keeps its root zone at beta_threshold W_max while the air is "
                  "above the base temperature of growth", 0.0, 1.0, False, 0.0,
                  source="[I] site metadata; demand irrigation as CLM's (Ozdogan et al. 2010, J. Hydrometeor. 11:171)"),
    ParameterSpec("tau_groundwater", "d", "groundwater (saturated zone) residence time", 0.5,
                  3000.0, True, 60.0, log_scale=True, source=_LAD_SRC + " geo_res_time"),
    ParameterSpec("max_snow", "kg m-2", "snow mass above which snow runs off (calving)", 10.0,
                  1e5, False, 1000.0, log_scale=True, source=_LAD_SRC),
    ParameterSpec("canopy_height", "m", "canopy height h", 0.01, 150.0, False,
                  CANOPY_HEIGHT_BY_IGBP, per="igbp", log_scale=True,
                  source="site metadata, else typical per IGBP [I]"),
    ParameterSpec("reference_height", "m", "forcing / flux measurement height z", 0.1, 500.0,
                  False, {k: max(h + 2.0, 1.5 * h) for k, h in CANOPY_HEIGHT_BY_IGBP.items()},
                  per="igbp", log_scale=True,
                  source="site measurement height, else max(h + 2, 1.5 h) [I]"),
]

#: Every physical parameter of the LaD column, by name.
PARAMETERS: dict[str, ParameterSpec] = {spec.name: spec for spec in _SPECS}

#: Names of the parameters calibration and networks may change.
CALIBRATABLE: tuple[str, ...] = tuple(s.name for s in _SPECS if s.calibratable)

#: Parameters that act only under a model option, calibratable when it is on: name -> (option of
#: ``LaDModel``, the values that use the parameter).
OPTION_CALIBRATABLE: dict[str, tuple[str, tuple[str, ...]]] = {
    "deep_root_fraction": ("deep_water", ("groundwater", "table")),
}

Params = dict  # dict[str, Array], each (N,)


def _spec(name: str) -> ParameterSpec:
    try:
        return PARAMETERS[name]
    except KeyError:
        raise ValueError(
            f"unknown parameter {name!r}; known parameters: {', '.join(PARAMETERS)}"
        ) from None


def check_igbp(igbp: str) -> str:
    """Normalise an IGBP code (strip, upper case) or raise ValueError naming the allowed classes."""
    code = str(igbp).strip().upper()
    if code not in IGBP_TO_LAD:
        raise ValueError(
            f"unknown IGBP class {igbp!r}; allowed classes: {', '.join(ALLOWED_IGBP)}"
        )
    return code


def reference_height(canopy_height, measurement_height=None):
    """Reference height z [m]: the measurement height when finite and > 0, else max(h + 2, 1.5 h)."""
    h = np.asarray(canopy_height, dtype=float)
    default = np.maximum(h + 2.0, 1.5 * h)
    if measurement_height is None:
        return default
    z = np.asarray(measurement_height, dtype=float)
    known = np.isfinite(z) & (z > 0)
    return np.where(known, z, default)


def _per_site(values, n: int, what: str) -> np.ndarray:
    if values is None:
        return np.full(n, np.nan)
    arr = np.asarray(values, dtype=float)
    if arr.ndim == 0:
        arr = np.full(n, float(arr))
    if arr.shape != (n,):
        raise ValueError(f"{what}: expected a scalar or {n} values (one per site), got {arr.shape}")
    return arr


#: open water (IGBP class WAT): LaD has no lake, so a water column is wetland's cover (G) that never dries,
#: with water's heat capacity and a well-mixed (highly conducting) upper layer; ``default_params`` gives
#: these to every WAT column (the virtual regions' truth and the regional models alike)
OPEN_WATER_PARAMETERS = {"soil_heat_capacity": 4.18e6, "soil_thermal_conductivity": 4.9, "root_zone_capacity": 1999.0}


def default_params(
    igbp_list: Sequence[str],
    canopy_height=None,
    measurement_height=None,
    overrides: Mapping[str, object] | None = None,
    dtype=None,
    irrigated=None,
    albedo=None,
) -> Params:
    """Default parameters for N sites from their IGBP classes.

    Args:
        igbp_list: N IGBP codes (e.g. ``["ENF", "GRA"]``); WAT columns are open water
            (:data:`OPEN_WATER_PARAMETERS`).
        canopy_height: None, a scalar or N values [m]; NaN entries fall back to the class default.
        measurement_height: None, a scalar or N values [m]; NaN/<=0 entries fall back to
            ``max(h + 2, 1.5 h)``.
        irrigated: None, a scalar or N irrigated fractions in [0, 1]; NaN (not stated) is 0.
        albedo: None, a scalar or N snow-free albedos of a product (e.g. MODIS), inside the albedo
            parameter's bounds; NaN entries fall back to the class default.
        overrides: name -> scalar or (N,) values replacing the defaults (checked against bounds).
        dtype: array dtype; default: JAX's default float (float64 when x64 is enabled).

    Returns:
        ``Params``: dict name -> (N,) array, every entry of :data:`PARAMETERS`.

    Raises:
        ValueError: unknown IGBP class (naming the allowed classes), unknown parameter name,
            override outside bounds, or a reference height not above d + z0m.
    """
    if isinstance(igbp_list, str):
        igbp_list = [igbp_list]
    codes = [check_igbp(c) for c in igbp_list]
    n = len(codes)
    table = {
        name: np.array([spec.default_for(c) for c in codes], dtype=float)
        for name, spec in PARAMETERS.items()
    }
    water = np.array([c == "WAT" for c in codes], bool)
    for name, value in OPEN_WATER_PARAMETERS.items():
        table[name] = np.where(water, value, table[name])
    irr = _per_site(irrigated, n, "irrigated")
    if np.any(np.isfinite(irr) & ((irr < 0.0) | (irr > 1.0))):
        i = int(np.argmax(np.isfinite(irr) & ((irr < 0.0) | (irr > 1.0))))
        raise ValueError(f"site {i} ({codes[i]}): irrigated = {irr[i]}; expected 0 (rain-fed) .. 1 (irrigated)")
    table["irrigated"] = np.where(np.isfinite(irr), irr, 0.0)  # not stated: rain-fed, as LaD
    h_site = _per_site(canopy_height, n, "canopy_height")
    table["canopy_height"] = np.where(np.isfinite(h_site) & (h_site > 0), h_site,
                                      table["canopy_height"])
    product = _per_site(albedo, n, "albedo")
    inside = ~np.isfinite(product) | ((product > PARAMETERS["albedo"].lower) & (product < PARAMETERS["albedo"].upper))
    if not np.all(inside):
        i = int(np.argmin(inside))
        raise ValueError(f"site {i} ({codes[i]}): albedo = {product[i]}; expected a snow-free surface albedo in "
                         f"({PARAMETERS['albedo'].lower}, {PARAMETERS['albedo'].upper})")
    table["albedo"] = np.where(np.isfinite(product), product, table["albedo"])
    table["reference_height"] = reference_height(
        table["canopy_height"], _per_site(measurement_height, n, "measurement_height")
    )
    for name, value in (overrides or {}).items():
        spec = _spec(name)
        arr = _per_site(value, n, f"override {name!r}")
        inside = (arr > spec.lower) & (arr < spec.upper) if spec.calibratable else (arr >= spec.lower) & (arr <= spec.upper)
        if not np.all(inside):
            raise ValueError(
                f"override {name!r} = {arr.tolist()} outside its bounds ({spec.lower}, {spec.upper})"
            )
        table[name] = arr
    d = table["displacement_fraction"] * table["canopy_height"]
    bad = table["reference_height"] <= d + table["z0m"]
    if np.any(bad):
        i = int(np.argmax(bad))
        raise ValueError(
            f"site {i} ({codes[i]}): reference height {table['reference_height'][i]} m is not above "
            f"displacement + z0m = {d[i] + table['z0m'][i]:.3f} m; give a measurement_height above "
            "the canopy or a smaller canopy_height"
        )
    return {name: jnp.asarray(v, dtype=dtype) for name, v in table.items()}


def to_unconstrained(name: str, value):
    """Map a value inside the bounds of ``name`` to the real line (inverse of from_unconstrained)."""
    spec = _spec(name)
    if spec.log_scale:
        lo, hi = math.log(spec.lower), math.log(spec.upper)
        x = (jnp.log(value) - lo) / (hi - lo)
    else:
        x = (value - spec.lower) / (spec.upper - spec.lower)
    return jnp.log(x) - jnp.log1p(-x)


def from_unconstrained(name: str, raw):
    """Map a real number into the open bounds of ``name``: sigmoid between them (log space if set)."""
    spec = _spec(name)
    s = jax.nn.sigmoid(raw)
    if spec.log_scale:
        lo, hi = math.log(spec.lower), math.log(spec.upper)
        return jnp.exp(lo + (hi - lo) * s)
    return spec.lower + (spec.upper - spec.lower) * s


def parameter_table() -> list[dict]:
    """The table as records (name, unit, description, lower, upper, calibratable, log_scale, source)."""
    return [
        {
            "name": s.name,
            "unit": s.unit,
            "description": s.description,
            "lower": s.lower,
            "upper": s.upper,
            "calibratable": s.calibratable,
            "log_scale": s.log_scale,
            "source": s.source,
        }
        for s in _SPECS
    ]
