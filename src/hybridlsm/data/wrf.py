"""Reader for WRF history output (``wrfout``): near-surface forcing, surface fluxes and static
fields of each cell as a canonical gridded dataset (docs/architecture.md §1), dims ``(time, y, x)``.

Everything in a WRF file is model output: the fluxes read here (``Qh``, ``Qle``, ``Qg``,
``AvgSurfT``) are WRF/Noah's own, usable as targets for a regional emulator but not measurements
(``attrs['data_kind']`` and each variable's ``data_kind`` say so).

Conventions (shared/data README §8.3):

- grid: ``south_north`` -> ``y``, ``west_east`` -> ``x`` (no coordinate values; row 0 is the
  southern edge); 2-D ``XLAT``/``XLONG`` -> coordinates ``lat(y, x)``/``lon(y, x)``;
- time: ``Times`` (characters ``YYYY-MM-DD_hh:mm:ss``, UTC) decoded and shifted to local standard
  time by ``utc_offset_h`` = ``metadata['utc_offset_h']`` if given, else
  ``round(mean XLONG / 15)`` (the nautical time zone, the rule ``preprocess`` uses for sites;
  ``attrs['utc_offset_rule']`` states it). History values are **instantaneous** at each time; the
  canonical axis labels each with the interval that starts there (``attrs['values']``);
- variables: :data:`WRF_VARIABLES` (``Q2`` is a water-vapour mixing ratio ``w``, converted to
  specific humidity ``q = w / (1 + w)``; ``U10``/``V10`` are grid-relative and rotated to
  east/north with ``COSALPHA``/``SINALPHA``; ``GRDFLX`` is positive upward in WRF/Noah and its sign
  is flipped to ALMA's ``Qg``, positive into the soil); ``Wind = hypot(U10, V10)``;
- precipitation: ``RAINC + RAINNC`` are accumulated [mm] since the simulation start (plus
  ``I_RAINC``/``I_RAINNC`` x ``BUCKET_MM`` where the run used buckets). The rate of the interval
  that starts at step k is ``(A[k+1] - A[k]) / step`` (a forward difference: the amount that fell
  in the interval the canonical axis gives step k). The last step has no later accumulation: it
  repeats the rate of the step before and is flagged ``Precip_estimated``. The accumulation at
  the first time (e.g. 12 h since a 12:00 UTC start) is only the baseline of the first difference.
  A decreasing accumulation is a DataError naming the time and cell;
- static: ``HGT`` -> ``elevation(y, x)`` [m]; ``LU_INDEX`` (USGS 24/28 categories) -> ``land_cover(y,
  x)`` in the IGBP numbering through :data:`USGS_TO_IGBP` (the source index stays as
  ``land_cover_usgs``); ``LANDMASK`` -> ``mask(y, x)``: water cells (0) have NaN in every
  time-varying variable and are no column of ``domain_from_grid``.

A variable of :data:`WRF_VARIABLES`, ``RAINC``/``RAINNC`` or a static field that is missing, has
other dims or unexpected units is a DataError naming the file and the variable.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from .checks import check_metadata_values, check_plausible, modelled_cells
from .gridded import _file_longitude, _utc_offset, to_local_standard_time
from .plumber2 import IO_ERRORS, cannot_open, check_times, open_netcdf, reject_infinite
from .readers import NETCDF_SUFFIXES, Reader, register_reader
from .schema import VARIABLES, DataError, DataWarning
from .units import conversion, normalise_unit

__all__ = ["read_wrf", "WRF_VARIABLES", "USGS_TO_IGBP", "IGBP_FLAG_MEANINGS"]

WRF_VARIABLES: dict[str, tuple[str, str]] = {
    "T2": ("Tair", "2 m air temperature"),
    "Q2": ("Qair", "2 m water-vapour mixing ratio w [kg kg-1] converted to specific humidity q = w / (1 + w)"),
    "PSFC": ("Psurf", "surface pressure"),
    "SWDOWN": ("SWdown", "downward shortwave at the surface"),
    "GLW": ("LWdown", "downward longwave at the surface"),
    "U10": ("Wind_E", "10 m wind, grid-relative x component rotated to eastward: U10 cos(alpha) - V10 sin(alpha) "
                      "with WRF's COSALPHA/SINALPHA"),
    "V10": ("Wind_N", "10 m wind, grid-relative y component rotated to northward: V10 cos(alpha) + U10 sin(alpha) "
                      "with WRF's COSALPHA/SINALPHA"),
    "HFX": ("Qh", "upward sensible heat flux at the surface (positive upward, as ALMA)"),
    "LH": ("Qle", "latent heat flux at the surface (positive upward, as ALMA)"),
    "GRDFLX": ("Qg", "ground heat flux; positive upward in WRF/Noah (shared/data README §8.3: the surface energy "
                     "balance closes with that sign), so Qg = -GRDFLX (ALMA: positive into the soil)"),
    "TSK": ("AvgSurfT", "surface skin temperature"),
}  # fmt: skip
"""WRF variable -> (canonical name, what it is and how it is converted). Each is required, on
``(Time, south_north, west_east)``."""

OBSERVATION_VARIABLES = ("Qh", "Qle", "Qg", "AvgSurfT")
"""The canonical variables of :data:`WRF_VARIABLES` that are WRF/Noah model output used as targets."""

ACCUMULATED_PRECIP = ("RAINC", "RAINNC")
"""Accumulated precipitation [mm] since the simulation start, summed: convective + grid-scale
(RAINNC already holds all grid-scale precipitation: rain, snow, graupel)."""

_STATIC = {"XLAT": "lat", "XLONG": "lon", "HGT": "elevation", "LU_INDEX": "land_cover", "LANDMASK": "mask"}

USGS_TO_IGBP: dict[int, tuple[str, int]] = {
    1: ("Urban and Built-Up Land", 13),
    2: ("Dryland Cropland and Pasture", 12),
    3: ("Irrigated Cropland and Pasture", 12),
    4: ("Mixed Dryland/Irrigated Cropland and Pasture", 12),
    5: ("Cropland/Grassland Mosaic", 14),
    6: ("Cropland/Woodland Mosaic", 14),
    7: ("Grassland", 10),
    8: ("Shrubland", 6),
    9: ("Mixed Shrubland/Grassland", 7),
    10: ("Savanna", 9),
    11: ("Deciduous Broadleaf Forest", 4),
    12: ("Deciduous Needleleaf Forest", 3),
    13: ("Evergreen Broadleaf Forest", 2),
    14: ("Evergreen Needleleaf Forest", 1),
    15: ("Mixed Forest", 5),
    16: ("Water Bodies", 17),
    17: ("Herbaceous Wetland", 11),
    18: ("Wooded Wetland", 11),
    19: ("Barren or Sparsely Vegetated", 16),
    20: ("Herbaceous Tundra", 10),
    21: ("Wooded Tundra", 7),
    22: ("Mixed Tundra", 7),
    23: ("Bare Ground Tundra", 16),
    24: ("Snow or Ice", 15),
    25: ("Playa", 16),
    26: ("Lava", 16),
    27: ("White Sand", 16),
    28: ("Lake", 17),
}
"""USGS land-use category of WRF's ``LU_INDEX`` (``MMINLU`` 'USGS', 24 classes plus 25-27 and the
lake class 28 of the 28-category table) -> (USGS name, IGBP class index 1 ENF ... 17 WAT). One-to-one
where the classes agree (forests, savanna, grassland, water, snow, barren, urban). Judgement where
they do not: the crop/pasture classes 2-4 -> CRO; the crop mosaics 5-6 -> CVM (cropland/natural
vegetation mosaic); shrubland 8 -> CSH (closed shrublands); **mixed shrubland/grassland 9 -> OSH
(open shrublands)**, a shrub-grass mix being what IGBP calls open shrubland (10-60 % shrub cover),
rather than GRA; both wetlands 17-18 -> WET; herbaceous tundra 20 -> GRA; wooded and mixed tundra
21-22 -> OSH; bare-ground tundra, playa, lava, white sand 23, 25-27 -> BSV; lake 28 -> WAT."""

IGBP_FLAG_MEANINGS = (
    "evergreen_needleleaf_forests evergreen_broadleaf_forests deciduous_needleleaf_forests "
    "deciduous_broadleaf_forests mixed_forests closed_shrublands open_shrublands woody_savannas savannas "
    "grasslands permanent_wetlands croplands urban_and_built_up_lands cropland_natural_vegetation_mosaics "
    "snow_and_ice barren_or_sparsely_vegetated water_bodies"
)
"""CF ``flag_meanings`` of the 17 IGBP classes, in the order of ``IGBP_BY_INDEX``."""

_Y, _X, _T = "south_north", "west_east", "Time"


def _variable(src: xr.Dataset, name: str, dims: tuple[str, ...], file: str, *, first_time: bool = False) -> xr.DataArray:
    """``src[name]`` on ``dims``: DataError naming the file and variable when it is missing, not
    numeric or on other dims. ``first_time``: a static field stored per time (``XLAT`` in a plain
    wrfout) is taken at the first time."""
    if name not in src.variables:
        raise DataError(f"{file}: variable {name} missing; a WRF file read as {WRF_READER} needs "
                        f"{', '.join([*WRF_VARIABLES, *ACCUMULATED_PRECIP, *_STATIC])}")  # fmt: skip
    da = src[name]
    if first_time and da.dims == (_T, *dims):
        da = da.isel({_T: 0}, drop=True)
    if da.dims != dims:
        raise DataError(f"{file}: variable {name} has dims {da.dims}; expected {dims}")
    if not (np.issubdtype(da.dtype, np.number) or np.issubdtype(da.dtype, np.bool_)):
        raise DataError(f"{file}: variable {name} has type {da.dtype}; expected numbers")
    return da


def _checked_units(da: xr.DataArray, name: str, target: str, file: str) -> float:
    """The scale to the canonical unit of ``target`` (offset 0 for every WRF variable read here)."""
    scale, offset = conversion(target, da.attrs.get("units"), where=f"{file}: variable {name}")
    if offset != 0.0:
        raise DataError(f"{file}: variable {name} ({target}): units {da.attrs.get('units')!r}; expected "
                        f"{VARIABLES[target].units!r} as WRF writes it")  # fmt: skip
    return scale


def _times(src: xr.Dataset, file: str) -> pd.DatetimeIndex:
    """``Times`` (characters, UTC) as dates; DataError naming the variable and the index of a value
    that is not ``YYYY-MM-DD_hh:mm:ss``."""
    if "Times" not in src.variables:
        raise DataError(f"{file}: variable Times missing; expected WRF's character times on (Time)")
    raw = np.asarray(src["Times"].values)
    if raw.ndim == 2:  # not joined by the netCDF backend: (Time, DateStrLen) single characters
        raw = np.asarray([b"".join(np.asarray(r, "S1").tolist()) for r in raw])
    if raw.ndim != 1 or raw.shape[0] != src.sizes.get(_T, -1):
        raise DataError(f"{file}: variable Times has dims {src['Times'].dims}; expected (Time) strings")
    text = [v.decode("ascii", "replace") if isinstance(v, bytes) else str(v) for v in raw]
    out = []
    for i, s in enumerate(text):
        try:
            out.append(pd.Timestamp(pd.to_datetime(s.strip(), format="%Y-%m-%d_%H:%M:%S")))
        except (ValueError, TypeError):
            raise DataError(f"{file}: variable Times: {s!r} at index {i} is not a time; expected "
                            f"YYYY-MM-DD_hh:mm:ss (UTC)") from None  # fmt: skip
    return pd.DatetimeIndex(out)


def _step_seconds(t: pd.DatetimeIndex, file: str) -> float:
    if len(t) < 2:
        raise DataError(f"{file}: variable Times: {len(t)} time step(s); expected a time series (precipitation "
                        f"rates need two accumulations)")  # fmt: skip
    d = np.diff(t.values)
    if (d <= np.timedelta64(0, "ns")).any():
        i = int(np.argmax(d <= np.timedelta64(0, "ns"))) + 1
        raise DataError(f"{file}: variable Times: {t[i]} at index {i} does not follow {t[i - 1]}; expected "
                        f"increasing times")  # fmt: skip
    if not (d == d[0]).all():
        i = int(np.argmax(d != d[0])) + 1
        raise DataError(f"{file}: variable Times: irregular step {pd.Timedelta(d[i - 1])} before {t[i]} "
                        f"(index {i}); expected {pd.Timedelta(d[0])} throughout")  # fmt: skip
    return pd.Timedelta(d[0]).total_seconds()


def _accumulated_precip(src: xr.Dataset, t: pd.DatetimeIndex, file: str) -> np.ndarray:
    """RAINC + RAINNC [mm] (with bucket counts where the run used buckets), (Time, y, x) float64;
    DataError naming the time and cell where it decreases."""
    dims = (_T, _Y, _X)
    total = 0.0
    bucket = float(src.attrs.get("BUCKET_MM", -1.0))
    for name in ACCUMULATED_PRECIP:
        da = _variable(src, name, dims, file)
        if normalise_unit(da.attrs.get("units")) not in ("mm", "kg m-2"):
            raise DataError(f"{file}: variable {name}: units {da.attrs.get('units')!r}; expected 'mm' "
                            f"(accumulated since the simulation start)")  # fmt: skip
        total = total + np.asarray(da.values, float)
        count = f"I_{name}"
        if bucket > 0 and count in src.variables:
            total = total + bucket * np.asarray(_variable(src, count, dims, file).values, float)
    inc = np.diff(total, axis=0)
    bad = inc < 0
    if bad.any():
        k, j, i = np.unravel_index(int(np.argmax(bad)), inc.shape)
        raise DataError(f"{file}: variables {' + '.join(ACCUMULATED_PRECIP)}: the accumulation decreases by "
                        f"{-inc[k, j, i]:.4g} mm from {t[k]} to {t[k + 1]} UTC at cell ({_Y}={j}, {_X}={i}); "
                        f"expected totals since the simulation start (a bucket reset needs I_RAINC/I_RAINNC "
                        f"and BUCKET_MM)")  # fmt: skip
    return total


def read_wrf(path: str | Path, *, chunks: dict | None = None, metadata: dict | None = None,
             check_steps: int = 24) -> xr.Dataset:
    """A WRF history file as the canonical gridded dataset (module docstring for the conventions).

    ``chunks``: dask chunks of the time-varying WRF variables (default one chunk of 512 steps);
    ``metadata`` overrides attrs (``utc_offset_h`` also sets the shift from UTC); the first
    ``check_steps`` steps are checked against the plausible ranges (wrong units raise DataError).
    """
    path = Path(path)
    file = str(path)
    metadata = dict(metadata or {})
    check_metadata_values(metadata, file=f"{file}: metadata")
    try:
        src = open_netcdf(path, chunks=chunks or {_T: 512}, decode_times=False, mask_and_scale=True)
    except IO_ERRORS as exc:
        raise cannot_open(file, exc) from exc
    for dim in (_T, _Y, _X):
        if dim not in src.dims:
            raise DataError(f"{file}: no {dim!r} dimension; expected WRF's (Time, south_north, west_east)")
    utc = _times(src, file)
    check_times(utc, file)
    step_s = _step_seconds(utc, file)

    static = {name: _variable(src, name, (_Y, _X), file, first_time=True) for name in _STATIC}
    land = modelled_cells(static["LANDMASK"].values, where=file, name="LANDMASK", dims=(_Y, _X))
    out: dict[str, xr.DataArray] = {}
    for name, (target, how) in WRF_VARIABLES.items():
        da = _variable(src, name, (_T, _Y, _X), file)
        scale = _checked_units(da, name, target, file)
        out[target] = (da * scale if scale != 1.0 else da, name, how)

    # derived and converted fields
    w = out["Qair"][0]
    out["Qair"] = (w / (1.0 + w), "Q2", out["Qair"][2])
    out["Qg"] = (-out["Qg"][0], "GRDFLX", out["Qg"][2])
    u, v = out["Wind_E"][0], out["Wind_N"][0]
    if "COSALPHA" in src.variables and "SINALPHA" in src.variables:
        cos_a = _variable(src, "COSALPHA", (_Y, _X), file, first_time=True)
        sin_a = _variable(src, "SINALPHA", (_Y, _X), file, first_time=True)
        out["Wind_E"] = (u * cos_a - v * sin_a, "U10", out["Wind_E"][2])
        out["Wind_N"] = (v * cos_a + u * sin_a, "V10", out["Wind_N"][2])
    elif int(src.attrs.get("MAP_PROJ", -1)) not in (0, 3, 6):  # lat-lon and Mercator grids need no rotation
        raise DataError(f"{file}: variables COSALPHA, SINALPHA missing; needed to turn the grid-relative U10/V10 "
                        f"of this projection (MAP_PROJ {src.attrs.get('MAP_PROJ')}) into east/north components")  # fmt: skip
    else:
        out["Wind_E"] = (u, "U10", "10 m wind; eastward already on this grid (MAP_PROJ "
                                    f"{src.attrs.get('MAP_PROJ')})")
        out["Wind_N"] = (v, "V10", "10 m wind; northward already on this grid (MAP_PROJ "
                                    f"{src.attrs.get('MAP_PROJ')})")
    out["Wind"] = (np.hypot(u, v), "U10, V10", "hypot(U10, V10)")

    acc = _accumulated_precip(src, utc, file)
    rate = np.empty_like(acc)
    rate[:-1] = np.diff(acc, axis=0) / step_s
    rate[-1] = rate[-2]
    estimated = np.zeros(acc.shape, bool)
    estimated[-1] = True
    precip_how = (f"forward difference of the accumulated RAINC + RAINNC [mm] over the {step_s:g} s step: the rate "
                  f"of the interval starting at each time; the last step repeats the one before (Precip_estimated)")  # fmt: skip

    utc_offset, rule = _utc_offset(src, metadata, _file_longitude(src), file)
    local = to_local_standard_time(utc.values, utc_offset)
    dims = ("time", "y", "x")
    data: dict[str, xr.DataArray] = {}
    for target, (da, name, how) in out.items():
        da = da.rename({_T: "time", _Y: "y", _X: "x"}).transpose(*dims)
        da = da.where(xr.DataArray(land, dims=("y", "x")))
        attrs = {"units": VARIABLES[target].units, "long_name": VARIABLES[target].long_name,
                 "source_variable": name, "source_units": str(src[name.split(",")[0]].attrs.get("units", "")),
                 "conversion": how}
        if target in OBSERVATION_VARIABLES:
            attrs["data_kind"] = "WRF/Noah model output, not a measurement"
        data[target] = da.drop_vars([c for c in da.coords]).assign_attrs(attrs)
    data["Precip"] = xr.DataArray(np.where(land, rate, np.nan), dims=dims, attrs={
        "units": VARIABLES["Precip"].units, "long_name": VARIABLES["Precip"].long_name,
        "source_variable": " + ".join(ACCUMULATED_PRECIP), "source_units": "mm (accumulated)",
        "conversion": precip_how})
    data["Precip_estimated"] = xr.DataArray(estimated, dims=dims, attrs={
        "long_name": "Precip estimated (no accumulation after the last time: the rate of the step before)"})
    ds = xr.Dataset(data)

    mminlu = str(src.attrs.get("MMINLU", "USGS")).strip()
    if mminlu and not mminlu.upper().startswith("USGS"):
        raise DataError(f"{file}: variable LU_INDEX: land-use table MMINLU {mminlu!r}; expected 'USGS' "
                        f"(only USGS categories are mapped to IGBP)")  # fmt: skip
    lu = np.asarray(static["LU_INDEX"].values, float)
    known = np.isin(lu, list(USGS_TO_IGBP))
    if not known.all():
        j, i = (int(a[0]) for a in np.nonzero(~known))
        raise DataError(f"{file}: variable LU_INDEX: {lu[j, i]:g} at cell ({_Y}={j}, {_X}={i}) is not a USGS "
                        f"land-use category; expected 1..{max(USGS_TO_IGBP)}")  # fmt: skip
    igbp = np.vectorize(lambda c: USGS_TO_IGBP[int(c)][1], otypes=[np.int16])(lu)
    coords = {
        "time": ("time", local, {"standard_name": "time",
                                 "long_name": "start of each interval, local standard time (WRF values at that instant)"}),
        "lat": (("y", "x"), np.asarray(static["XLAT"].values, float), {"units": "degrees_north", "source_variable": "XLAT"}),
        "lon": (("y", "x"), np.asarray(static["XLONG"].values, float), {"units": "degrees_east", "source_variable": "XLONG"}),
        "elevation": (("y", "x"), np.asarray(static["HGT"].values, float),
                      {"units": "m", "long_name": "surface elevation", "source_variable": "HGT"}),
        "land_cover": (("y", "x"), igbp, {
            "long_name": "IGBP land cover class index", "flag_values": np.arange(1, 18, dtype=np.int16),
            "flag_meanings": IGBP_FLAG_MEANINGS, "source_variable": "LU_INDEX",
            "conversion": "USGS category -> IGBP class through hybridlsm.data.wrf.USGS_TO_IGBP "
                          "(e.g. 7 grassland -> 10 GRA, 9 mixed shrubland/grassland -> 7 OSH, 16 water -> 17 WAT)"}),
        "land_cover_usgs": (("y", "x"), lu.astype(np.int16), {
            "long_name": "WRF LU_INDEX (USGS land-use category)", "source_variable": "LU_INDEX"}),
        "mask": (("y", "x"), land.astype(np.int8), {
            "long_name": "land mask (1 land, 0 water: NaN in every time-varying variable)", "source_variable": "LANDMASK"}),
    }  # fmt: skip
    ds = ds.assign_coords(coords)

    head = ds.isel(time=slice(0, check_steps))
    for var in head.data_vars:
        if var == "Precip_estimated":
            continue
        try:
            values = np.asarray(head[var].values, float)
        except IO_ERRORS as exc:
            name = head[var].attrs.get("source_variable", var)
            raise DataError(f"{file}: cannot read the data of variable {name}: {type(exc).__name__}: {exc}") from exc
        name = head[var].attrs["source_variable"]
        reject_infinite(values, None, file=file, name=name, units=VARIABLES[var].units)
        check_plausible(values, var, file=file, column=name,
                        declared_units=str(head[var].attrs.get("source_units")), stacklevel=3)
    if not land.any():
        warnings.warn(f"{file}: variable LANDMASK is 0 everywhere: no land cell", DataWarning, stacklevel=2)
    ds.attrs = {
        "site_id": path.stem,
        "site_name": str(src.attrs.get("TITLE", "")).strip(),
        "latitude": np.nan,
        "longitude": np.nan,
        "elevation": np.nan,
        "igbp": "",
        "canopy_height": np.nan,
        "measurement_height": np.nan,
        "measurement_height_note": "WRF diagnostics: Tair, Qair at 2 m; Wind, Wind_E, Wind_N at 10 m",
        "utc_offset_h": utc_offset,
        "utc_offset_rule": rule,
        "time_step_s": float(step_s),
        "time_resolution": f"{int(step_s // 60)}min",
        "values": "instantaneous at each time (WRF history output), labelled as the interval starting there; "
                  "Precip is the mean rate over that interval",
        "time_convention": f"start of each interval in local standard time: WRF Times (UTC) {utc_offset:+g} h",
        "simulation_start_utc": str(src.attrs.get("SIMULATION_START_DATE", "")).replace("_", " "),
        "precipitation": precip_how,
        "data_kind": "WRF model output (" + str(src.attrs.get("TITLE", "")).strip() + "): forcing and fluxes alike; "
                     "Qh, Qle, Qg, AvgSurfT are the model's, not measurements",
        "source_file": file,
        "source_format": "wrf-netcdf",
    }  # fmt: skip
    ds.attrs.update(metadata or {})
    return ds


WRF_READER = "wrf"


@register_reader
class WRFReader(Reader):
    """WRF history output (:func:`hybridlsm.data.wrf.read_wrf`): a netCDF file with WRF's
    ``Times`` variable and ``Time``, ``south_north``, ``west_east`` dimensions."""

    name = WRF_READER
    description = "WRF history output (wrfout netCDF: Times, XLAT/XLONG, south_north/west_east)"
    priority = 35
    options = {
        "chunks": "dask chunks of the WRF variables (default Time 512)",
        "metadata": "attrs that override the file's (utc_offset_h also sets the shift from UTC)",
        "check_steps": "number of leading steps checked against the plausible ranges",
    }

    def detect(self, path: Path) -> bool:
        if path.suffix.lower() not in NETCDF_SUFFIXES and not path.name.startswith("wrfout"):
            return False  # WRF names its history files wrfout_d01_<date> (no suffix)
        try:
            with open_netcdf(path, decode_times=False) as ds:
                return "Times" in ds.variables and {_T, _Y, _X} <= set(ds.dims)
        except IO_ERRORS:
            return False  # the gridded reader reports the file as unreadable

    def read(self, path: Path, **options) -> xr.Dataset:
        return read_wrf(path, **options)
