"""The canonical variable table: ALMA/PLUMBER2 names and units, and how FLUXNET columns map to them.

``VARIABLES`` is the authority for every name and unit in a canonical site dataset
(docs/architecture.md §1). Each entry states

- ``name`` (ALMA/PLUMBER2), ``units`` (canonical), ``long_name``;
- ``valid_range``: the *plausible* range in canonical units. Values outside it give a
  :class:`DataWarning`; when most values of a column lie outside it the column almost certainly
  has the wrong unit and the reader raises :class:`DataError` (with a hint such as "values look
  like K" where an alternative reading of the unit would put them in range);
- ``fluxnet_columns``: the FLUXNET2015 / ONEFlux source columns in order of preference (the first
  one present in a file is used; ``_F`` consolidated before ``_F_MDS`` before the raw column before
  the ERA-Interim column), their unit, and the conversion ``canonical = raw * scale + offset``.
  Precipitation is a per-step amount in FLUXNET HH/HR files (mm per half-hour or hour), so its
  scale is ``1 / time_step_s``; in DD/WW/MM files P_F is a daily amount (mm d-1: daily sum for DD,
  mean daily sum for WW/MM) and its scale is ``1 / 86400``;
- ``alt_units``: other units a column is sometimes (wrongly) written in, used only to phrase the
  error message of the plausibility check.

Summary (kept in step with ``VARIABLES`` by tests/test_data_schema.py; :func:`variables_table` gives
the full table as data):

==============  ===========  ==============================  ========================  =================
name            units        FLUXNET columns (preferred 1st) FLUXNET unit              conversion
==============  ===========  ==============================  ========================  =================
Tair            K            TA_F, TA_F_MDS, TA, TA_ERA      degC                      + 273.15
Qair            kg kg-1      (derived: VPD/RH, Tair, Psurf)  -                         thermo.py
VPD             hPa          VPD_F, VPD_F_MDS, VPD, VPD_ERA  hPa                       x 1
RH              %            RH                              %                         x 1
Psurf           Pa           PA_F, PA, PA_ERA                kPa                       x 1000
Wind            m s-1        WS_F, WS, WS_ERA                m s-1                     x 1
SWdown          W m-2        SW_IN_F, SW_IN_F_MDS, SW_IN,    W m-2                     x 1
                             SW_IN_ERA
LWdown          W m-2        LW_IN_F, LW_IN_F_MDS, LW_IN,    W m-2                     x 1
                             LW_IN_ERA
Precip          kg m-2 s-1   P_F, P, P_ERA                   mm step-1 (HH/HR),        / step_s,
                                                             mm d-1 (DD/WW/MM)         / 86400
Ustar           m s-1        USTAR                           m s-1                     x 1
CO2air          ppm          CO2_F_MDS, CO2                  umol mol-1                x 1
Rnet            W m-2        NETRAD                          W m-2                     x 1
SWup            W m-2        SW_OUT                          W m-2                     x 1
LWup            W m-2        LW_OUT                          W m-2                     x 1
Qg              W m-2        G_F_MDS, G                      W m-2                     x 1
Qh              W m-2        H_F_MDS, H                      W m-2                     x 1
Qle             W m-2        LE_F_MDS, LE                    W m-2                     x 1
Qh_cor          W m-2        H_CORR                          W m-2                     x 1
Qle_cor         W m-2        LE_CORR                         W m-2                     x 1
SoilTemp        K            TS_F_MDS_1, TS_1                degC                      + 273.15
SoilMoistVol    m3 m-3       SWC_F_MDS_1, SWC_1              %                         / 100
LAI             m2 m-2       LAI                             m2 m-2                    x 1
Wind_E          m s-1        (gridded sources: NLDAS UGRD,   -                         x 1
                             WRF U10 earth-relative)
Wind_N          m s-1        (gridded sources: NLDAS VGRD,   -                         x 1
                             WRF V10 earth-relative)
AvgSurfT        K            (gridded sources: WRF TSK)      -                         x 1
==============  ===========  ==============================  ========================  =================

``Wind_E`` / ``Wind_N`` (eastward / northward wind components) are optional forcing: no column model
needs them (``Wind`` is the speed), a regional model does (advection). ``AvgSurfT`` is the ALMA
average surface (skin) temperature, the name the models also write.

Derived variables (added by :mod:`hybridlsm.data.preprocess`, never by a reader): ``rho_air``
[kg m-3], ``lambda_v`` [J kg-1], ``Rainf`` and ``Snowf`` [kg m-2 s-1].

QC variables: ``<var>_qc`` (int8) holds FLUXNET half-hourly semantics: 0 measured, 1/2/3
gap-filled of good/medium/poor quality, and -1 where the value itself is missing. PLUMBER2 files
add 4 (ERA-Interim gap-filling), 5 (statistical gap-filling) and 101 (post-processed); these are
kept as they are. Aggregated FLUXNET files (DD/WW/MM/YY) carry a fraction of measured or
good-quality gap-filled records instead; it is stored as ``<var>_qc_fraction`` (float, 0..1) so
that it is never mistaken for a flag. ``<var>_estimated`` and ``<var>_filled`` (bool) mark values
that this package estimated or filled.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import xarray as xr

__all__ = [
    "IGBP_BY_INDEX",
    "DataError",
    "DataWarning",
    "Variable",
    "VARIABLES",
    "FORCING_VARIABLES",
    "TARGET_VARIABLES",
    "DERIVED_VARIABLES",
    "QC_MISSING",
    "QC_FLAG_MEANINGS",
    "qc_mask",
    "variables_table",
    "SOIL_VARIABLES",
    "SITE_METADATA",
]


class DataError(ValueError):
    """Unusable input data. The message names the file, column, row or time, and what was expected."""


class DataWarning(UserWarning):
    """Usable but suspicious input data (values outside the plausible range, inserted missing rows, ...)."""


@dataclass(frozen=True)
class Variable:
    """One canonical variable (ALMA/PLUMBER2 name, canonical unit) and its FLUXNET source columns.

    ``canonical = raw * scale + offset`` converts the FLUXNET unit; ``alt_units`` maps a unit
    label to the (scale, offset) that would apply if the column were written in that unit instead.
    """

    name: str
    units: str
    long_name: str
    valid_range: tuple[float, float]
    fluxnet_columns: tuple[str, ...] = ()
    fluxnet_units: str = ""
    scale: float = 1.0
    offset: float = 0.0
    conversion: str = "x 1"
    kind: str = "forcing"  # forcing | flux | state | derived
    alt_units: dict[str, tuple[float, float]] = field(default_factory=dict)

    def to_canonical(self, raw: np.ndarray, time_step_s: float | None = None) -> np.ndarray:
        """Convert FLUXNET-unit values ``raw`` to canonical units (``time_step_s`` for per-step amounts)."""
        if self.name == "Precip":
            if time_step_s is None:
                raise ValueError("Precip conversion needs the time step in seconds")
            return raw / time_step_s
        return raw * self.scale + self.offset


_W = "W m-2"

VARIABLES: dict[str, Variable] = {
    v.name: v
    for v in [
        Variable("Tair", "K", "near-surface air temperature", (223.15, 333.15),
                 ("TA_F", "TA_F_MDS", "TA", "TA_ERA"), "degC", 1.0, 273.15, "+ 273.15",
                 alt_units={"K": (1.0, 0.0), "degC": (1.0, 273.15), "degF": (5.0 / 9.0, 273.15 - 32.0 * 5.0 / 9.0)}),
        Variable("Qair", "kg kg-1", "near-surface specific humidity", (0.0, 0.05),
                 (), "", conversion="derived from VPD or RH with Tair and Psurf (thermo.py)"),
        Variable("VPD", "hPa", "vapour-pressure deficit", (0.0, 100.0),
                 ("VPD_F", "VPD_F_MDS", "VPD", "VPD_ERA"), "hPa",
                 alt_units={"Pa": (0.01, 0.0)}),
        Variable("RH", "%", "relative humidity", (0.0, 100.0), ("RH",), "%",
                 alt_units={"fraction (0-1)": (100.0, 0.0)}),
        Variable("Psurf", "Pa", "surface air pressure", (50000.0, 110000.0),
                 ("PA_F", "PA", "PA_ERA"), "kPa", 1000.0, 0.0, "x 1000",
                 alt_units={"hPa": (100.0, 0.0), "Pa": (1.0, 0.0)}),
        Variable("Wind", "m s-1", "scalar wind speed", (0.0, 40.0),
                 ("WS_F", "WS", "WS_ERA"), "m s-1", alt_units={"mm s-1": (0.001, 0.0)}),
        Variable("SWdown", _W, "incoming shortwave radiation", (0.0, 1400.0),
                 ("SW_IN_F", "SW_IN_F_MDS", "SW_IN", "SW_IN_ERA"), _W),
        Variable("LWdown", _W, "incoming longwave radiation", (50.0, 600.0),
                 ("LW_IN_F", "LW_IN_F_MDS", "LW_IN", "LW_IN_ERA"), _W),
        Variable("Precip", "kg m-2 s-1", "precipitation rate (rain + snow)", (0.0, 0.05),
                 ("P_F", "P", "P_ERA"), "mm per time step (HH/HR); mm d-1 (DD/WW/MM)",
                 conversion="/ time_step_s (HH/HR); / 86400 (DD/WW/MM)"),
        Variable("Ustar", "m s-1", "friction velocity", (0.0, 3.0), ("USTAR",), "m s-1",
                 kind="flux"),
        Variable("CO2air", "ppm", "near-surface CO2 mole fraction", (150.0, 1500.0),
                 ("CO2_F_MDS", "CO2"), "umol mol-1"),
        Variable("Rnet", _W, "net radiation (positive downward)", (-500.0, 1200.0),
                 ("NETRAD",), _W, kind="flux"),
        Variable("SWup", _W, "outgoing (reflected) shortwave radiation", (-50.0, 1000.0),
                 ("SW_OUT",), _W, kind="flux"),
        Variable("LWup", _W, "outgoing longwave radiation", (100.0, 900.0), ("LW_OUT",), _W,
                 kind="flux"),
        Variable("Qg", _W, "ground heat flux (positive into the soil)", (-500.0, 600.0),
                 ("G_F_MDS", "G"), _W, kind="flux"),
        Variable("Qh", _W, "sensible heat flux (positive upward)", (-300.0, 800.0),
                 ("H_F_MDS", "H"), _W, kind="flux"),
        Variable("Qle", _W, "latent heat flux (positive upward)", (-200.0, 900.0),
                 ("LE_F_MDS", "LE"), _W, kind="flux"),
        Variable("Qh_cor", _W, "energy-balance-corrected sensible heat flux", (-300.0, 800.0),
                 ("H_CORR",), _W, kind="flux"),
        Variable("Qle_cor", _W, "energy-balance-corrected latent heat flux", (-200.0, 900.0),
                 ("LE_CORR",), _W, kind="flux"),
        Variable("SoilTemp", "K", "soil temperature, shallowest tower layer", (223.15, 343.15),
                 ("TS_F_MDS_1", "TS_1"), "degC", 1.0, 273.15, "+ 273.15", kind="state",
                 alt_units={"K": (1.0, 0.0)}),
        Variable("SoilMoistVol", "m3 m-3", "volumetric soil water content, shallowest tower layer",
                 (0.0, 1.0), ("SWC_F_MDS_1", "SWC_1"), "%", 0.01, 0.0, "/ 100", kind="state"),
        Variable("LAI", "m2 m-2", "leaf area index", (0.0, 15.0), ("LAI",), "m2 m-2",
                 kind="state"),
        Variable("Wind_E", "m s-1", "eastward wind component", (-40.0, 40.0),
                 conversion="x 1 (gridded sources only)"),
        Variable("Wind_N", "m s-1", "northward wind component", (-40.0, 40.0),
                 conversion="x 1 (gridded sources only)"),
        Variable("AvgSurfT", "K", "average surface (skin) temperature", (213.15, 353.15),
                 conversion="x 1 (gridded sources only)", kind="state",
                 alt_units={"degC": (1.0, 273.15)}),
        # derived (preprocess only)
        Variable("rho_air", "kg m-3", "moist-air density", (0.5, 1.6),
                 conversion="thermo.air_density(Tair, Psurf, Qair)", kind="derived"),
        Variable("lambda_v", "J kg-1", "latent heat of vaporisation", (2.3e6, 2.7e6),
                 conversion="thermo.latent_heat_vaporisation(Tair)", kind="derived"),
        Variable("Rainf", "kg m-2 s-1", "rainfall rate", (0.0, 0.05),
                 conversion="Precip x liquid fraction (linear ramp in Tair)", kind="derived"),
        Variable("Snowf", "kg m-2 s-1", "snowfall rate", (0.0, 0.05),
                 conversion="Precip x (1 - liquid fraction)", kind="derived"),
    ]
}

FORCING_VARIABLES = ("SWdown", "LWdown", "Tair", "Qair", "Psurf", "Wind", "Precip")
"""The model forcing (docs/architecture.md §2), in the order of ``Forcing``'s fields."""

TARGET_VARIABLES = ("Qh", "Qle")
"""Training and evaluation targets; a file whose target columns hold no valid value is an error."""

DERIVED_VARIABLES = tuple(n for n, v in VARIABLES.items() if v.kind == "derived")

QC_MISSING = -1
QC_FLAG_MEANINGS = (
    "-1 value missing; 0 measured; 1 good-quality gap-fill; 2 medium-quality gap-fill; "
    "3 poor-quality gap-fill; 4 ERA-Interim gap-fill (PLUMBER2); 5 statistical gap-fill "
    "(PLUMBER2); 101 post-processed (PLUMBER2)"
)

SITE_METADATA = (
    "latitude", "longitude", "elevation", "igbp", "canopy_height", "measurement_height", "utc_offset_h",
)
"""Site attrs that the model may need; one that no source states is NaN (or "" for ``igbp``), is
listed in ``attrs["missing_metadata"]`` and gives a DataWarning (``checks.check_site_metadata``)."""

SOIL_VARIABLES = ("SoilTemp", "SoilMoistVol")
"""Soil variables (one tower layer each). Their measurement depth is not in the files: it is the
site's metadata, given to the CSV readers as the ``depths`` option (``attrs["depth_m"]``, NaN when
not given)."""


def variables_table() -> list[dict]:
    """``VARIABLES`` as a list of plain dicts (for documentation, ``--json`` output and tests)."""
    return [
        {
            "name": v.name,
            "units": v.units,
            "long_name": v.long_name,
            "valid_range": list(v.valid_range),
            "fluxnet_columns": list(v.fluxnet_columns),
            "fluxnet_units": v.fluxnet_units,
            "conversion": v.conversion,
            "kind": v.kind,
        }
        for v in VARIABLES.values()
    ]


def qc_mask(
    ds: xr.Dataset,
    var: str,
    max_qc: int | None,
    *,
    min_good_fraction: float | None = None,
    include_filled: bool = False,
) -> xr.DataArray:
    """Boolean mask of the usable values of ``ds[var]``.

    A value is usable when it is present (not NaN) and

    - ``max_qc`` is None, or ``<var>_qc`` is absent, or ``0 <= <var>_qc <= max_qc``
      (``max_qc=0``: measured only; ``1``: also good-quality gap-fill, the PLUMBER2 convention);
    - for aggregated data with ``<var>_qc_fraction``: the fraction of measured or good-quality
      records is at least ``min_good_fraction`` (ignored when None);
    - unless ``include_filled``: it was not estimated or filled by this package
      (``<var>_estimated``, ``<var>_filled``).

    Sources without QC (e.g. the JAX-CanVeg processed files) cannot distinguish measured from
    gap-filled values; there every present value passes the QC test.
    """
    if var not in ds.data_vars:
        raise DataError(
            f"{ds.attrs.get('source_file', '<dataset>')}: variable {var!r} not in the dataset; "
            f"available: {sorted(v for v in ds.data_vars if not _is_flag(v))}"
        )
    mask = ds[var].notnull()
    qc_name = f"{var}_qc"
    if max_qc is not None and qc_name in ds:
        qc = ds[qc_name]
        mask = mask & (qc >= 0) & (qc <= max_qc)
    frac_name = f"{var}_qc_fraction"
    if min_good_fraction is not None and frac_name in ds:
        mask = mask & (ds[frac_name] >= min_good_fraction)
    if not include_filled:
        for suffix in ("_estimated", "_filled"):
            flag = f"{var}{suffix}"
            if flag in ds:
                mask = mask & ~ds[flag].astype(bool)
    return mask.rename(f"{var}_usable")


def _is_flag(name: str) -> bool:
    return name.endswith(("_qc", "_qc_fraction", "_estimated", "_filled"))


def site_label(ds) -> str:
    """How messages name a dataset: its ``site_id``, else its source file."""
    return str(ds.attrs.get("site_id", ds.attrs.get("source_file", "<dataset>")))


#: IGBP classes in the order of the 17-class IGBP legend (index 1 = ENF ... 17 = WAT), as CLM /
#: MODIS land-cover files number them.
IGBP_BY_INDEX = ("ENF", "EBF", "DNF", "DBF", "MF", "CSH", "OSH", "WSA", "SAV", "GRA", "WET", "CRO", "URB",
                 "CVM", "SNO", "BSV", "WAT")  # fmt: skip
