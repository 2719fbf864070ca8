"""Reader for gridded forcing netCDF files (dims time, y/lat, x/lon), lazily with dask.

Source variables are mapped to canonical names and units through :data:`GRIDDED_VARIABLES`, a
documented per-variable table (source name -> canonical name). Units come from each variable's
``units`` attribute and are converted with :mod:`hybridlsm.data.units`; :data:`KNOWN_WRONG_UNITS`
lists attributes that are known to be wrong and how they are read instead (each use gives a
DataWarning). Vapour pressure (``vapor_pressure``, ``vp``) is converted to ``Qair`` and ``VPD``
with the file's own pressure and temperature (thermo.py), since vapour pressure is not a
canonical variable.

A mapped variable must be numeric with dims ``(time, y/lat, x/lon)`` in any order; another
dimension of size 1 (e.g. ``height``) is dropped with a DataWarning, anything else is a DataError.

The result has dims ``(time, y, x)`` with 1-D coordinates ``lat(y)``, ``lon(x)`` (or 2-D
``lat(y, x)``, ``lon(y, x)`` on curvilinear grids) and dask-backed variables; nothing is computed
except a plausibility check on the first time steps.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from .. import thermo
from .checks import check_plausible
from .plumber2 import IO_ERRORS, check_times, open_netcdf, reject_infinite
from .readers import NETCDF_SUFFIXES, Reader, register_reader
from .schema import VARIABLES, DataError, DataWarning
from .units import conversion, normalise_unit

__all__ = ["read_gridded", "GRIDDED_VARIABLES", "KNOWN_WRONG_UNITS"]

GRIDDED_VARIABLES: dict[str, str] = {
    # Livneh et al. (2015) / MetSim output (VIC_sample_data image/WalnutGulch)
    "temp": "Tair",
    "shortwave": "SWdown",
    "longwave": "LWdown",
    "air_pressure": "Psurf",
    "rel_humid": "RH",
    "prec": "Precip",
    "wind": "Wind",
    "vapor_pressure": "_vapour_pressure",
    # VIC image-driver forcing (VIC_sample_data image/Stehekin)
    "tas": "Tair",
    "dswrf": "SWdown",
    "dlwrf": "LWdown",
    "pres": "Psurf",
    "prcp": "Precip",
    "vp": "_vapour_pressure",
    # ALMA / CF names
    **{name.lower(): name for name in ("Tair", "Qair", "VPD", "RH", "Psurf", "Wind", "SWdown",
                                        "LWdown", "Precip", "CO2air", "LAI")},
    "tair": "Tair",
    "psurf": "Psurf",
    "rainf": "Precip",
}
"""Source variable name (lower case) -> canonical name; ``_vapour_pressure`` is converted to Qair/VPD."""

KNOWN_WRONG_UNITS: dict[tuple[str, str], tuple[str, str]] = {
    ("wind", "mm s-1"): (
        "m s-1",
        "Livneh/MetSim files label wind 'mm s-1', but the values (0.3-8.7 at Walnut Gulch) are m s-1 "
        "(shared/data README §8)",
    ),
}
"""(source name, normalised units attribute) -> (unit actually used, reason)."""

_Y_NAMES = ("y", "lat", "latitude", "rlat", "nj")
_X_NAMES = ("x", "lon", "longitude", "rlon", "ni")


def _dim(ds, names, file, what):
    for n in names:
        if n in ds.dims:
            return n
    raise DataError(f"{file}: no {what} dimension; expected one of {list(names)} besides 'time'")


def _grid_dims(da: xr.DataArray, name: str, ydim: str, xdim: str, file: str) -> xr.DataArray:
    """``da`` as a numeric variable on (time, ydim, xdim): another dimension of size 1 is dropped
    with a DataWarning; a missing grid dimension, a longer other dimension or a non-numeric type
    is a DataError naming the variable."""
    if not (np.issubdtype(da.dtype, np.number) or np.issubdtype(da.dtype, np.bool_)):
        raise DataError(f"{file}: variable {name} has type {da.dtype}; expected numbers")
    expected = ("time", ydim, xdim)
    extra = [d for d in da.dims if d not in expected]
    if any(d not in da.dims for d in expected) or any(da.sizes[d] != 1 for d in extra):
        raise DataError(
            f"{file}: variable {name} has dims {dict(da.sizes)}; expected ({', '.join(expected)}), "
            f"other dimensions of size 1 only"
        )
    if extra:
        warnings.warn(
            f"{file}: variable {name}: dimension(s) {extra} of size 1 dropped; expected "
            f"({', '.join(expected)})",
            DataWarning,
            stacklevel=3,
        )
        da = da.squeeze(extra, drop=True)
    return da


def read_gridded(
    path: str | Path,
    *,
    chunks: dict | None = None,
    variables: dict[str, str] | None = None,
    check_steps: int = 24,
    metadata: dict | None = None,
) -> xr.Dataset:
    """Open a gridded forcing file lazily and map it to canonical names and units.

    ``chunks`` are dask chunks (default ``{"time": 512}`` plus whole y/x); ``variables`` extends
    or overrides :data:`GRIDDED_VARIABLES` (source name -> canonical name). The first
    ``check_steps`` time steps are checked against the plausible ranges (wrong units raise
    DataError). Variables with no mapping are listed in ``attrs['unmapped_variables']``.
    ``metadata`` overrides attrs (e.g. ``{"utc_offset_h": -7}``).
    """
    path = Path(path)
    file = str(path)
    mapping = {**GRIDDED_VARIABLES, **{k.lower(): v for k, v in (variables or {}).items()}}
    try:
        src = open_netcdf(path, chunks=chunks or {"time": 512}, decode_times=True,
                          mask_and_scale=True)
    except IO_ERRORS as exc:
        raise DataError(f"{file}: cannot open as netCDF: {type(exc).__name__}: {exc}") from exc
    if "time" not in src.dims:
        raise DataError(f"{file}: no 'time' dimension; expected dims (time, y/lat, x/lon)")
    if not np.issubdtype(src["time"].dtype, np.datetime64):
        raise DataError(f"{file}: time could not be decoded to dates (attrs {dict(src['time'].attrs)})")
    ydim = _dim(src, _Y_NAMES, file, "y/lat")
    xdim = _dim(src, _X_NAMES, file, "x/lon")
    t = pd.DatetimeIndex(src["time"].values)
    check_times(t, file)
    if len(t) < 2:
        raise DataError(f"{file}: {len(t)} time step(s); expected a time series")
    d = np.diff(t.values)
    if not (d == d[0]).all():
        i = int(np.argmax(d != d[0])) + 1
        raise DataError(
            f"{file}: irregular time step {pd.Timedelta(d[i - 1])} before {t[i]} (index {i}); "
            f"expected {pd.Timedelta(d[0])} throughout"
        )
    if d[0] <= np.timedelta64(0, "ns"):
        raise DataError(f"{file}: time decreases or repeats at index 1; expected increasing times")
    step_s = pd.Timedelta(d[0]).total_seconds()

    out: dict[str, xr.DataArray] = {}
    unmapped = []
    vapour = None
    for name, da in src.data_vars.items():
        target = mapping.get(name.lower())
        if target is None or "time" not in da.dims:
            if name.lower() != "mask":
                unmapped.append(name)
            continue
        da = _grid_dims(da, name, ydim, xdim, file)
        unit = da.attrs.get("units")
        nunit = normalise_unit(unit)
        note = None
        fix = KNOWN_WRONG_UNITS.get((name.lower(), nunit))
        if fix is not None:
            used, reason = fix
            warnings.warn(
                f"{file}: variable {name}: units attribute {unit!r} is known to be wrong; read as "
                f"{used!r} ({reason})",
                DataWarning,
                stacklevel=2,
            )
            note = f"units attribute {unit!r} is wrong; read as {used!r}: {reason}"
            unit = used
        if target == "_vapour_pressure":
            scale, _ = conversion("Psurf", unit, where=f"{file}: variable {name}")
            vapour = (da * scale, name, unit)
            continue
        if target in out:
            raise DataError(f"{file}: variables {out[target].attrs['source_variable']} and {name} both map to {target}")
        scale, offset = conversion(target, unit, step_s, where=f"{file}: variable {name}")
        conv = da * scale + offset if (scale, offset) != (1.0, 0.0) else da
        conv.attrs = {"units": VARIABLES[target].units, "long_name": VARIABLES[target].long_name,
                      "source_variable": name, "source_units": str(da.attrs.get("units"))}
        if note:
            conv.attrs["note"] = note
        out[target] = conv
    if vapour is not None:
        e_pa, name, unit = vapour
        if "Psurf" not in out or "Tair" not in out:
            raise DataError(
                f"{file}: variable {name} (vapour pressure) needs air pressure and temperature in "
                f"the same file to give Qair and VPD; found {sorted(out)}"
            )
        if "Qair" not in out:
            q = thermo.specific_humidity_from_vapour_pressure(e_pa, out["Psurf"])
            q.attrs = {"units": "kg kg-1", "long_name": VARIABLES["Qair"].long_name,
                       "source_variable": name, "source_units": str(unit),
                       "conversion": "q = 0.622 e / (p - 0.378 e) with the file's pressure"}
            out["Qair"] = q
        if "VPD" not in out:
            vpd = (thermo.saturation_vapour_pressure(out["Tair"]) - e_pa) / 100.0
            vpd.attrs = {"units": "hPa", "long_name": VARIABLES["VPD"].long_name,
                         "source_variable": name, "source_units": str(unit),
                         "conversion": "VPD = e_s(Tair) - e (Magnus, Sonntag 1990); negative where e > e_s"}
            out["VPD"] = vpd
    if not out:
        raise DataError(
            f"{file}: no variable could be mapped; found {sorted(src.data_vars)}, known names "
            f"{sorted(mapping)}"
        )
    ds = xr.Dataset(out)
    ds = ds.drop_vars([c for c in (ydim, xdim) if c in ds.coords])
    ds = ds.rename_dims({ydim: "y", xdim: "x"}) if (ydim, xdim) != ("y", "x") else ds
    ds = ds.drop_vars([c for c in ds.coords if c != "time"])
    # latitude/longitude as coordinates along y/x (1-D) or on the grid (2-D)
    for names, new in ((("lat", "latitude"), "lat"), (("lon", "longitude"), "lon")):
        cname = next((n for n in names if n in src.variables), None)
        if cname is None:
            continue
        c = src[cname]
        dims = tuple({ydim: "y", xdim: "x"}.get(dd, dd) for dd in c.dims)
        if set(dims) <= {"y", "x"}:
            ds = ds.assign_coords({new: (dims, np.asarray(c.values), dict(c.attrs))})
    # projected grids: the y/x coordinate values (metres, ...) are kept; lat/lon dims became lat/lon above
    for dim, new in ((ydim, "y"), (xdim, "x")):
        if dim in src.coords and src[dim].ndim == 1 and dim.lower() not in ("lat", "latitude", "lon", "longitude"):
            ds = ds.assign_coords({new: (new, np.asarray(src[dim].values), dict(src[dim].attrs))})
    if "mask" in src.data_vars and set(src["mask"].dims) == {ydim, xdim}:
        m = src["mask"].transpose(ydim, xdim)
        ds = ds.assign_coords(mask=(("y", "x"), np.asarray(m.values), dict(m.attrs)))
    ds = ds.transpose("time", "y", "x", ...)
    ds["time"] = ds["time"].astype("datetime64[ns]")

    head = ds.isel(time=slice(0, check_steps))
    for var in head.data_vars:
        try:
            head[var] = head[var].compute()
        except IO_ERRORS as exc:
            name = head[var].attrs.get("source_variable", var)
            raise DataError(f"{file}: cannot read the data of variable {name}: {type(exc).__name__}: {exc}") from exc
    for var in head.data_vars:
        src_name = head[var].attrs.get("source_variable", var)
        reject_infinite(head[var].values, None, file=file, name=src_name, units=VARIABLES[var].units)
        if var == "VPD":
            continue  # derived; slightly negative at saturation by construction
        raw = src[src_name].isel(time=slice(0, check_steps)).values if src_name in src else None
        check_plausible(head[var].values, var, file=file, column=src_name, raw=raw,
                        declared_units=str(head[var].attrs.get("source_units")), stacklevel=3)
    ds.attrs = {
        "site_id": path.stem,
        "site_name": "",
        "latitude": np.nan,
        "longitude": np.nan,
        "elevation": np.nan,
        "igbp": "",
        "canopy_height": np.nan,
        "measurement_height": np.nan,
        "utc_offset_h": np.nan,
        "time_step_s": float(step_s),
        "time_resolution": f"{int(step_s // 60)}min",
        "source_file": file,
        "source_format": "gridded-netcdf",
        "unmapped_variables": ", ".join(unmapped),
        "time_convention": _text_attr(src["time"].attrs.get("long_name", "")) or "as in the file",
        **(metadata or {}),
    }
    return ds


def _text_attr(v) -> str:
    return str(v).strip()


@register_reader
class GriddedReader(Reader):
    """Gridded forcing netCDF (:func:`hybridlsm.data.gridded.read_gridded`): any netCDF file
    that no higher-priority reader (PLUMBER2) claims."""

    name = "gridded"
    description = "gridded forcing netCDF (time, y/lat, x/lon), .nc"
    priority = 40
    options = {
        "chunks": "dask chunks (default time 512, whole y/x)",
        "variables": "extra source name -> canonical name mapping",
        "check_steps": "number of leading steps checked against the plausible ranges",
        "metadata": "attrs that override the file's",
    }

    def detect(self, path: Path) -> bool:
        return path.suffix.lower() in NETCDF_SUFFIXES

    def read(self, path: Path, **options) -> xr.Dataset:
        return read_gridded(path, **options)
