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

Time axis (the canonical one: the start of each interval in local standard time):

- where ``time`` has CF ``bounds`` (e.g. ``time_bnds``), the start of each interval is the lower
  bound, whatever the ``time`` value itself marks (the Little Washita file's ``time`` is the end);
- where the time units declare a UTC offset (``hours since 2008-01-01 00:00:00 -07:00``), which
  xarray decodes to UTC, the times are the file's own clock again: UTC + that offset (or + the
  ``utc_offset_h`` of ``metadata``), the rule "declared in the time units";
- where the file says its times are UTC (a ``time_zone`` attribute of UTC in any spelling:
  ``UTC``, ``GMT``, ``Etc/UTC``, ``UTC0`` ...; or ``UTC`` in the units), they are shifted to local standard time by ``utc_offset_h``: the one given in
  ``metadata``, else the civil standard time of :data:`SOURCE_TIME_ZONES` when the file's
  attributes match one, else ``round(longitude / 15)`` of the grid's mean longitude (the rule
  ``preprocess`` uses when a site's offset is unknown). The rule used is ``attrs['utc_offset_rule']``.
- where ``time_zone`` names another zone (IANA), the times are that zone's: its standard offset
  is ``utc_offset_h`` (a given one that differs is a DataError; a zone with daylight-saving time
  warns that the times are taken as standard time); a name that is no zone is a DataError;
- otherwise times are read as local standard time, as before (the VIC/Livneh files say "local time").

Site attrs: ``latitude``/``longitude`` are the global attributes ``latitude_approx`` /
``longitude_approx`` where the file has no per-cell latitude/longitude (said in
``attrs['location_note']``), else NaN (the cells have their own, as coordinates). Static fields on
``(y, x)`` named in :data:`STATIC_FIELDS` (``land_cover``, ``elevation``) become coordinates of
the same name, so ``domain_from_grid`` finds them.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from .. import thermo
from .checks import check_metadata_values, check_plausible
from .plumber2 import (IO_ERRORS, cannot_open, check_times, declared_utc_offset, open_netcdf, reject_infinite,
                       undecoded_time, zone_offsets)
from .readers import NETCDF_SUFFIXES, Reader, register_reader
from .schema import VARIABLES, DataError, DataWarning
from .units import conversion, normalise_unit

__all__ = ["read_gridded", "read_reference_snapshot", "grid_axis_signs", "GRIDDED_VARIABLES", "KNOWN_WRONG_UNITS",
           "SOURCE_TIME_ZONES", "STATIC_FIELDS", "utc_offset_from_longitude", "to_local_standard_time"]

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
    **{name.lower(): name for name in ("Tair", "Qair", "VPD", "RH", "Psurf", "Wind", "Wind_E",
                                        "Wind_N", "SWdown", "LWdown", "Precip", "CO2air", "LAI")},
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

SOURCE_TIME_ZONES: tuple[tuple[str, str, float, str], ...] = (
    ("title", "Little Washita", -6.0,
     "US Central standard time (Oklahoma), UTC-6: the test case's ParFlow short course says the run "
     "starts at midnight central time (05 UTC = 00 CDT); round(longitude / 15) would give -7 at -98.14"),
)
"""(global attribute, text it contains, UTC offset of local standard time in hours, reason): the
civil standard time of UTC files whose sources name their region's time zone. Other UTC files get
``round(longitude / 15)``."""

STATIC_FIELDS: dict[str, str] = {
    "land_cover": "land-cover class index (IGBP numbering or CF flag_values / flag_meanings)",
    "elevation": "surface elevation [m]",
}
"""Static ``(y, x)`` variables kept as coordinates of the same name (for ``domain_from_grid``)."""

#: the (y, x) fields kept as coordinates, matched whatever their case: the grid's mask, and STATIC_FIELDS
_KEPT_FIELDS = ("mask", *STATIC_FIELDS)

_UTC_NAMES = ("utc", "gmt", "z", "utc+0", "utc+00:00")


def utc_offset_from_longitude(longitude: float) -> float:
    """The UTC offset [h] of local standard time when nothing better is known: ``round(lon / 15)``
    (the nautical time zone of the longitude), as ``preprocess`` assumes for sites."""
    return float(np.round(float(longitude) / 15.0))


def to_local_standard_time(times, utc_offset_h: float) -> np.ndarray:
    """UTC times as local standard time (``UTC + utc_offset_h``), datetime64[ns]."""
    shift = np.timedelta64(int(round(float(utc_offset_h) * 3600.0)), "s")
    return (np.asarray(times, "datetime64[ns]") + shift).astype("datetime64[ns]")


def _declared_zone(time: xr.DataArray, file: str) -> tuple[str, float, bool] | None:
    """(name, standard-time offset from UTC [h], whether it has daylight-saving time) of the zone
    that the time variable's ``time_zone`` (or ``timezone``) attribute names, or None without one;
    UTC in any spelling (``Etc/UTC``, ``GMT+0``, ``UTC0``) is offset 0; another zone's offsets are
    those of the year of the file's first time (``zone_offsets``). A name that is no time zone
    is a DataError: times read in a guessed zone would be shifted silently."""
    name = str(time.attrs.get("time_zone", time.attrs.get("timezone", ""))).strip()
    if not name:
        return None
    if name.lower() in _UTC_NAMES or name.upper() in ("UTC0", "GMT0"):  # POSIX TZ spellings of UTC
        return name, 0.0, False
    values = np.asarray(time.values).ravel()
    standard, dst = zone_offsets(name, values[0] if values.size and np.issubdtype(values.dtype, np.datetime64)
                                 else "2000-01-01")  # fmt: skip
    if not np.isfinite(standard):
        raise DataError(f"{file}: variable time: attribute time_zone {name!r} is not a time zone name; expected UTC or "
                        "an IANA zone (e.g. 'Etc/UTC', 'America/Phoenix')")
    return name, standard, dst


def _is_utc(time: xr.DataArray, file: str) -> bool:
    zone = _declared_zone(time, file)
    units = str(time.encoding.get("units", time.attrs.get("units", ""))).strip().lower()
    return (zone is not None and zone[1] == 0.0 and not zone[2]) or units.endswith((" utc", " gmt", "z")) \
        or " utc" in units


def _utc_offset(src: xr.Dataset, metadata: dict | None, longitude: float, file: str) -> tuple[float, str]:
    """(offset, rule): ``metadata['utc_offset_h']``, else :data:`SOURCE_TIME_ZONES`, else
    ``round(longitude / 15)``; DataError when none applies."""
    given = (metadata or {}).get("utc_offset_h")
    if given is not None and np.isfinite(float(given)):
        return float(given), "given (metadata utc_offset_h)"
    for attr, text, offset, reason in SOURCE_TIME_ZONES:
        if text.lower() in str(src.attrs.get(attr, "")).lower():
            return offset, reason
    if np.isfinite(longitude):
        off = utc_offset_from_longitude(longitude)
        return off, f"round(longitude / 15) = round({longitude:.2f} / 15) = {off:+g} h (nautical time zone)"
    raise DataError(
        f"{file}: variable time is UTC and the file gives no longitude to place the grid's local standard "
        f"time; give it with metadata={{'utc_offset_h': ...}}"
    )


def _interval_starts(src: xr.Dataset, file: str, tname: str = "time") -> tuple[np.ndarray, str]:
    """The start of each interval: the lower CF bound of the time coordinate ``tname`` where it has
    ``bounds``, else its values; with a note saying which ('' for the values)."""
    time = src[tname]
    bname = time.attrs.get("bounds", time.encoding.get("bounds"))
    if not bname or bname not in src.variables:
        return np.asarray(time.values), ""
    b = src[bname]
    if b.ndim != 2 or b.dims[0] != tname or b.shape[1] != 2 or not np.issubdtype(b.dtype, np.datetime64):
        raise DataError(f"{file}: variable {bname} (the bounds of {tname}) has dims {dict(b.sizes)} and type "
                        f"{b.dtype}; expected ({tname}, 2) dates")  # fmt: skip
    lo = np.asarray(b.values).min(axis=1)
    hi = np.asarray(b.values).max(axis=1)
    t = np.asarray(time.values)
    bad = (t < lo) | (t > hi)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{file}: variable {tname}: {pd.Timestamp(t[i])} at index {i} lies outside its bounds "
                        f"{bname} [{pd.Timestamp(lo[i])}, {pd.Timestamp(hi[i])}]; expected bounds around each time")  # fmt: skip
    where = "end" if (t == hi).all() else "start" if (t == lo).all() else "inside"
    return lo, f"interval start = lower bound of {bname} (the file's time is the {where} of each interval)"


def _file_longitude(src: xr.Dataset) -> float:
    for name in ("lon", "longitude", "XLONG"):
        if name in src.variables:
            return float(np.nanmean(np.asarray(src[name].values, float)))
    return float(src.attrs.get("longitude_approx", np.nan))

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
    DataError) and for infinite values; the rest is read lazily and checked where it is used
    (``domain_from_grid``, streaming: an infinite value, a gap, a value out of range). Variables with no mapping are listed in ``attrs['unmapped_variables']``.
    ``metadata`` overrides attrs (e.g. ``{"utc_offset_h": -7}``; for a file whose times are UTC
    this offset also places them in local standard time). The time axis is the start of each
    interval in local standard time (module docstring).
    """
    path = Path(path)
    file = str(path)
    metadata = dict(metadata or {})
    check_metadata_values(metadata, file=f"{file}: metadata")
    mapping = {**GRIDDED_VARIABLES, **{k.lower(): v for k, v in (variables or {}).items()}}
    try:
        src = open_netcdf(path, chunks=chunks or {"time": 512}, decode_times=True,
                          mask_and_scale=True)
    except IO_ERRORS as exc:
        raise cannot_open(file, exc) from exc
    if "time" not in src.dims:
        raise DataError(f"{file}: no 'time' dimension; expected dims (time, y/lat, x/lon)")
    if not np.issubdtype(src["time"].dtype, np.datetime64):
        raise DataError(undecoded_time(src["time"], file))
    ydim = _dim(src, _Y_NAMES, file, "y/lat")
    xdim = _dim(src, _X_NAMES, file, "x/lon")
    starts, interval_note = _interval_starts(src, file)
    bounds_name = src["time"].attrs.get("bounds", src["time"].encoding.get("bounds"))
    utc_offset, offset_rule = float((metadata or {}).get("utc_offset_h", np.nan)), ""
    zone_note = "times as in the file (local time)"
    declared = declared_utc_offset(src["time"])
    if declared is not None:  # xarray decoded the times to UTC; the file's clock is UTC + declared
        given = (metadata or {}).get("utc_offset_h")
        utc_offset, offset_rule = ((float(given), "given (metadata utc_offset_h)")
                                   if given is not None and np.isfinite(float(given)) else
                                   (declared, f"declared in the time units ({declared:+g} h)"))
        starts = to_local_standard_time(starts, utc_offset)
        zone_note = f"the file's times (units with a UTC offset) as local standard time UTC{utc_offset:+g} h"
    elif _is_utc(src["time"], file):
        utc_offset, offset_rule = _utc_offset(src, metadata, _file_longitude(src), file)
        starts = to_local_standard_time(starts, utc_offset)
        zone_note = f"the file's UTC times shifted to local standard time UTC{utc_offset:+g} h"
    elif (zone := _declared_zone(src["time"], file)) is not None:  # the times are that zone's own
        name, standard, dst = zone
        if np.isfinite(utc_offset) and utc_offset != standard:
            raise DataError(f"{file}: variable time: attribute time_zone {name!r} (standard time UTC{standard:+g} h) "
                            f"disagrees with the given utc_offset_h {utc_offset:+g}; correct one of them")
        utc_offset, offset_rule = standard, f"the time's time_zone {name!r} (standard time UTC{standard:+g} h)"
        zone_note = f"the file's times, of time zone {name}, as local standard time UTC{standard:+g} h"
        if dst:
            warnings.warn(f"{file}: variable time: time_zone {name!r} has daylight-saving time; its times are taken "
                          "as standard time (a file in civil time would be an hour off in summer)", DataWarning,
                          stacklevel=2)  # fmt: skip
    t = pd.DatetimeIndex(starts)
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
            if name.lower() not in _KEPT_FIELDS and name != bounds_name:
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
    for name in _KEPT_FIELDS:
        given = [v for v in src.data_vars if str(v).lower() == name]  # 'Mask', 'MASK' as 'mask'
        if len(given) > 1:
            raise DataError(f"{file}: variables {given} all name the field {name!r}; keep one")
        if not given:
            continue
        m = src[given[0]]
        if set(m.dims) == {ydim, xdim}:
            m = m.transpose(ydim, xdim)
            ds = ds.assign_coords({name: (("y", "x"), np.asarray(m.values), {**m.attrs, "source_variable": given[0]})})
        else:  # never dropped without a word
            warnings.warn(f"{file}: variable {given[0]} has dims {m.dims}, not the grid's ({ydim}, {xdim}); it "
                          "is not used (a field of one value per cell is)", DataWarning, stacklevel=2)
            unmapped.append(given[0])
    ds = ds.transpose("time", "y", "x", ...)
    time_attrs = dict(src["time"].attrs) if not (interval_note or offset_rule) else {
        "standard_name": "time", "long_name": "start of each interval, local standard time"}
    ds = ds.assign_coords(time=("time", t.values.astype("datetime64[ns]"), time_attrs))

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
    per_cell = any(n in src.variables for n in ("lat", "latitude", "lon", "longitude"))
    location = {} if per_cell else _approximate_location(src)
    file_convention = _text_attr(src["time"].attrs.get("long_name", "")) or "as in the file"
    ds.attrs = {
        "site_id": path.stem,
        "site_name": "",
        "latitude": location.get("latitude", np.nan),
        "longitude": location.get("longitude", np.nan),
        "elevation": np.nan,
        "igbp": "",
        "canopy_height": np.nan,
        "measurement_height": np.nan,
        "utc_offset_h": utc_offset,
        "time_step_s": float(step_s),
        "time_resolution": f"{int(step_s // 60)}min",
        "source_file": file,
        "source_format": "gridded-netcdf",
        "unmapped_variables": ", ".join(unmapped),
        "time_convention": file_convention if not (interval_note or offset_rule) else (
            f"start of each interval in local standard time: {interval_note or 'the file time'}; "
            f"{zone_note} (file: {file_convention})"),
        **({"utc_offset_rule": offset_rule} if offset_rule else {}),
        **({"location_note": location["note"]} if location else {}),
        **(metadata or {}),
    }
    return ds


def read_reference_snapshot(path: str | Path, *, metadata: dict | None = None) -> xr.Dataset:
    """The model output stored beside a gridded forcing file on a one-step ``ref_time`` dimension
    (the Little Washita file's ParFlow-CLM reference run: Qle, Qh, Qg, LWup, Tsurf, Evap, TVeg,
    ESoil), as its own dataset on ``(y, x)``: never mixed with the forcing or taken for
    observations (``attrs['data_kind']`` says model output).

    ``time`` is a scalar coordinate in the convention of :func:`read_gridded`: the start of the
    model step (the lower bound of ``ref_time_bnds``) in local standard time, with the UTC offset
    :func:`read_gridded` would use (``metadata['utc_offset_h']`` overrides it). Names and units are
    the file's (ALMA names; ``Tsurf`` is CLM's ground temperature ``t_grnd``, not a canonical
    variable). Coordinates ``y``, ``x`` and the static ``land_cover`` are kept.
    """
    path = Path(path)
    file = str(path)
    metadata = dict(metadata or {})
    check_metadata_values(metadata, file=f"{file}: metadata")
    try:
        src = open_netcdf(path, decode_times=True, mask_and_scale=True)
    except IO_ERRORS as exc:
        raise cannot_open(file, exc) from exc
    with src:
        if "ref_time" not in src.dims or src.sizes["ref_time"] != 1:
            raise DataError(f"{file}: no ref_time dimension of length 1; expected the reference model output "
                            f"on (ref_time, y, x), found dims {dict(src.sizes)}")  # fmt: skip
        ref = src["ref_time"]
        if not np.issubdtype(ref.dtype, np.datetime64):
            raise DataError(f"{file}: variable ref_time could not be decoded to a date (attrs {dict(ref.attrs)})")
        ydim = _dim(src, _Y_NAMES, file, "y/lat")
        xdim = _dim(src, _X_NAMES, file, "x/lon")
        bounds = ref.attrs.get("bounds", ref.encoding.get("bounds"))
        names = [n for n, v in src.data_vars.items() if "ref_time" in v.dims and n != bounds]
        if not names:
            raise DataError(f"{file}: no variable on (ref_time, {ydim}, {xdim}); found {sorted(src.data_vars)}")
        out = {}
        for name in names:
            da = src[name]
            if set(da.dims) != {"ref_time", ydim, xdim} or not np.issubdtype(da.dtype, np.number):
                raise DataError(f"{file}: variable {name} has dims {dict(da.sizes)} and type {da.dtype}; "
                                f"expected numbers on (ref_time, {ydim}, {xdim})")  # fmt: skip
            out[name] = da.isel(ref_time=0, drop=True).transpose(ydim, xdim).load()
        start, note = _interval_starts(src, file, "ref_time")
        offset, rule = float((metadata or {}).get("utc_offset_h", np.nan)), ""
        if _is_utc(ref, file):
            offset, rule = _utc_offset(src, metadata, _file_longitude(src), file)
            start = to_local_standard_time(start, offset)
        ds = xr.Dataset(out).rename({ydim: "y", xdim: "x"} if (ydim, xdim) != ("y", "x") else {})
        for dim in ("y", "x"):
            old = {"y": ydim, "x": xdim}[dim]
            if old in src.coords:
                ds = ds.assign_coords({dim: (dim, np.asarray(src[old].values), dict(src[old].attrs))})
        if "land_cover" in src.data_vars and set(src["land_cover"].dims) == {ydim, xdim}:
            lc = src["land_cover"].transpose(ydim, xdim)
            ds = ds.assign_coords(land_cover=(("y", "x"), np.asarray(lc.values), dict(lc.attrs)))
        ds = ds.assign_coords(time=((), np.asarray(start, "datetime64[ns]")[0],
                                    {"long_name": "start of the model step, local standard time"}))
        bname = ref.attrs.get("bounds", ref.encoding.get("bounds"))
        step = np.asarray(src[bname].values) if bname in src.variables else None
        location = _approximate_location(src)
        ds.attrs = {
            "site_id": path.stem,
            "source_file": file,
            "source_format": "gridded-reference-output",
            "data_kind": _text_attr(src[names[0]].attrs.get("data_kind", "")) or "model output, not observations",
            "latitude": location.get("latitude", np.nan),
            "longitude": location.get("longitude", np.nan),
            "utc_offset_h": offset,
            "time_step_s": float((step[0, 1] - step[0, 0]) / np.timedelta64(1, "s")) if step is not None else np.nan,
            "time_convention": f"start of the model step in local standard time: {note or 'ref_time'}"
                               + (f"; the file's UTC time shifted by {offset:+g} h" if rule else ""),
            **({"utc_offset_rule": rule} if rule else {}),
            **({"location_note": location["note"]} if location else {}),
        }
    return ds


def grid_axis_signs(ds: xr.Dataset) -> tuple[float, float]:
    """(east, north): +1 where the grid's x index runs west to east (its y index south to north),
    -1 where it runs the other way, as the lat/lon coordinates along it say, else projected x/y
    ones; +1 where neither says (many reanalyses store rows north to south). The regional air layer
    advects along increasing index, so it takes ``east * Wind_E`` and ``north * Wind_N``
    (``models.regional.region_data``); the grid itself is kept in the file's layout."""
    signs = []
    for dim, geographic in (("x", "lon"), ("y", "lat")):
        sign = 1.0
        for coord in (geographic, dim):
            if coord not in ds.coords or dim not in ds[coord].dims or ds.sizes[dim] < 2 \
                    or not np.issubdtype(ds[coord].dtype, np.number):
                continue
            steps = np.diff(np.asarray(ds[coord].transpose(dim, ...).values, float), axis=0)
            if coord == "lon":  # eastward across the antimeridian (179.5 -> -179.5) is a step of +1 degree
                steps = (steps + 180.0) % 360.0 - 180.0
            steps = steps[np.isfinite(steps)]
            if steps.size:  # the median: robust to a wrap or an odd row
                sign = -1.0 if np.median(steps) < 0 else 1.0
                break
        signs.append(sign)
    return signs[0], signs[1]


def _approximate_location(src: xr.Dataset) -> dict:
    """``latitude``/``longitude`` from the global ``latitude_approx``/``longitude_approx`` (a grid
    in local coordinates placed by one point), with a note; {} when the file has neither."""
    lat, lon = src.attrs.get("latitude_approx"), src.attrs.get("longitude_approx")
    if lat is None or lon is None:
        return {}
    note = (f"approximate, one point for the whole grid: the file's latitude_approx {float(lat):g} and "
            f"longitude_approx {float(lon):g} (no per-cell latitude/longitude)")
    if src.attrs.get("location_note"):
        note += f"; file: {_text_attr(src.attrs['location_note'])}"
    return {"latitude": float(lat), "longitude": float(lon), "note": note}


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
