"""Reader for PLUMBER2 Met/Flux netCDF pairs (ALMA/CF; Ukkola et al. 2022) and FluxnetLSM output.

``<SITE>_<Y1>-<Y2>_FLUXNET2015_Met.nc`` holds the meteorological forcing, ``..._Flux.nc`` the
fluxes; dims ``(time, y, x)`` with ``y = x = 1`` (squeezed here). Variable names are matched
case-insensitively (``PSurf`` and ``Psurf`` both occur) and units are converted with
:mod:`hybridlsm.data.units`. ``<var>_qc`` flags become int8 (-1 where the value is missing; values
0-3 FLUXNET, 4 ERA-Interim, 5 statistical gap-fill, 101 post-processed); a present value without a
flag (NaN or the fill value) is flagged -1 with a DataWarning. Values must be numbers and finite
(an infinite value is a DataError naming the variable and the time). The static variables
``latitude``, ``longitude``, ``elevation``, ``reference_height``, ``canopy_height`` and
``IGBP_veg_short`` become dataset attrs. Times are interval starts in local standard time
(PLUMBER2 convention; the FluxDataKit files say so in the ``info`` attribute of ``time``); time
units that declare a UTC offset (``... 00:00:00 +01:00``), which xarray decodes to UTC, are read on
the file's own clock again, and the offset becomes ``utc_offset_h`` where nothing else gives it.

The Met and Flux files of a pair are aligned on time (:func:`align_pair`): a leading or trailing
step that only one file has is dropped if it is entirely missing or an exact repeat of its
neighbour (e.g. the CoLM copy of CN-Cng, whose Met file repeats 2009-12-31 23:30 as
2010-01-01 00:00); each drop gives a DataWarning and one line of ``attrs["repairs"]``
(``attrs["n_repairs"]`` counts them). Any other difference is a DataError. Site attrs that the
files do not state can come from a ``sites.csv`` table; those still missing are listed in
``attrs["missing_metadata"]`` with a DataWarning.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from .checks import check_metadata_values, check_plausible, check_site_metadata, fmt_time, regularise_time
from .fluxnet import YEARS, apply_metadata, site_metadata, sites_table_for
from .readers import NETCDF_SUFFIXES, Reader, register_reader
from .schema import QC_FLAG_MEANINGS, QC_MISSING, SITE_METADATA, VARIABLES, DataError, DataWarning
from .units import conversion

__all__ = ["read_plumber2", "plumber2_partner", "align_pair"]

_PLUMBER_NAMES = [v for v, s in VARIABLES.items() if s.kind != "derived"]
_ALLOWED_QC = (0, 1, 2, 3, 4, 5, 101)
_STATIC = {
    "latitude": "latitude",
    "longitude": "longitude",
    "elevation": "elevation",
    "reference_height": "measurement_height",
    "canopy_height": "canopy_height",
}
_PAIR = re.compile(r"_(Met|Flux)\.nc$", re.IGNORECASE)


def plumber2_partner(path: str | Path) -> Path | None:
    """The other file of a PLUMBER2 pair (``_Met.nc`` <-> ``_Flux.nc``), or None if the name has neither."""
    path = Path(path)
    m = _PAIR.search(path.name)
    if not m:
        return None
    other = "Flux" if m.group(1).lower() == "met" else "Met"
    return path.with_name(path.name[: m.start()] + f"_{other}.nc")


# what the netCDF libraries raise for unreadable or corrupted files (turned into DataError); netCDF4
# raises AttributeError ("NetCDF: Can't open HDF5 attribute") for a corrupted attribute
IO_ERRORS = (OSError, EOFError, ValueError, RuntimeError, KeyError, IndexError, OverflowError, TypeError,
             AttributeError)


#: magic numbers of the classic netCDF formats that scipy's pure-Python reader parses (CDF-1, CDF-2)
_CLASSIC_MAGIC = (b"CDF\x01", b"CDF\x02")


def open_netcdf(path: str | Path, **kwargs) -> xr.Dataset:
    """``xr.open_dataset`` with the engine chosen from the file's magic number: classic netCDF
    (CDF-1/2, e.g. PLUMBER2 and Livneh files) through scipy's pure-Python reader, anything else
    (netCDF-4/HDF5, CDF-5) through xarray's default. The netCDF-C library can crash the process
    on a corrupted classic header (a segmentation fault, not an exception); the Python reader
    raises instead, which the readers turn into ``DataError``."""
    with open(path, "rb") as f:
        magic = f.read(4)
    engine = "scipy" if magic in _CLASSIC_MAGIC else None
    return xr.open_dataset(path, engine=engine, **kwargs)


def cannot_open(path, exc: Exception) -> DataError:
    """The DataError of a file that does not open as netCDF (its size: a cut-off download shows)."""
    try:
        size = f"{Path(path).stat().st_size} bytes; "
    except OSError:
        size = ""
    return DataError(f"{path}: cannot open as netCDF ({size}a truncated or damaged file?): {type(exc).__name__}: {exc}")


def _open(path: Path) -> xr.Dataset:
    try:
        return open_netcdf(path, decode_times=True, mask_and_scale=True)
    except IO_ERRORS as exc:
        raise cannot_open(path, exc) from exc


def _squeeze(ds: xr.Dataset, file: str) -> xr.Dataset:
    if "time" not in ds.dims:
        raise DataError(f"{file}: no 'time' dimension; expected dims (time, y, x) as in PLUMBER2")
    for d in list(ds.dims):
        if d == "time":
            continue
        if ds.sizes[d] != 1:
            raise DataError(
                f"{file}: dimension {d} has size {ds.sizes[d]}; a PLUMBER2 site file has y = x = 1 "
                f"(use read_gridded for grids)"
            )
    return ds.squeeze([d for d in ds.dims if d != "time"], drop=True)


def _text(value) -> str:
    if isinstance(value, np.ndarray):
        value = value.item() if value.size == 1 else value.tobytes()
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value).strip().strip("\x00").strip()


def zone_offsets(tz_name: str, when) -> tuple[float, bool]:
    """(standard-time UTC offset [h], whether it has daylight-saving time) of an IANA zone in the
    year of ``when``; (NaN, False) if the zone is unknown. The standard offset is the smaller of
    mid-January's and mid-July's: zoneinfo's ``dst()`` is negative for Irish winter time, so
    "utcoffset - dst" would put Dublin at UTC+1; and the year matters (Pacific/Apia moved from
    UTC-11 to +13 in 2011)."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        tz = ZoneInfo(str(tz_name))
    except (ZoneInfoNotFoundError, ValueError):  # unknown zone, or not a zone name
        return float("nan"), False
    year = pd.Timestamp(when).year
    offsets = [datetime(year, m, 15, 12, tzinfo=tz).utcoffset().total_seconds() / 3600.0 for m in (1, 7)]
    return min(offsets), offsets[0] != offsets[1]


def read_plumber2(
    path: str | Path,
    other: str | Path | None = None,
    *,
    find_partner: bool = True,
    sites: str | Path | pd.DataFrame | None = None,
    metadata: dict | None = None,
) -> xr.Dataset:
    """Read a PLUMBER2 Met and/or Flux file into the canonical site dataset.

    ``path`` may be the Met or the Flux file; the partner is found by name (``_Met.nc`` <->
    ``_Flux.nc``) unless ``other`` is given or ``find_partner`` is False. A missing partner gives a
    DataWarning and only the one file is read. The two time axes are aligned by
    :func:`align_pair` (an edge step in only one file is dropped when it repeats its neighbour or
    is entirely missing; each drop is warned and listed in ``attrs["repairs"]``). ``sites``: a
    ``sites.csv`` table (default: ``sites.csv`` beside the file) that fills the site attrs the
    files leave missing (looked up by file name, then site id). ``metadata`` overrides attrs.
    """
    path = Path(path)
    paths = [path]
    if other is not None:
        paths.append(Path(other))
    elif find_partner:
        partner = plumber2_partner(path)
        if partner is not None and partner.is_file():
            paths.append(partner)
        elif partner is not None:
            warnings.warn(
                f"{path}: the partner file {partner.name} was not found; reading {path.name} alone",
                DataWarning,
                stacklevel=2,
            )
    # Met first so that its attrs win
    paths.sort(key=lambda p: 0 if "_met" in p.name.lower() else 1)
    files = [_load(p) for p in paths]
    repairs = align_pair(*files) if len(files) == 2 else []

    data_vars: dict[str, xr.DataArray] = {}
    attrs: dict = {}
    time, step0 = files[0].full, files[0].step
    unmapped: list[str] = []
    for f in files:
        file, ds, t, pos, step = f.file, f.ds, f.t, f.pos, f.step
        site = _text(ds.attrs.get("site_code", ""))
        if attrs.get("site_id") and site and site != attrs["site_id"]:
            raise DataError(f"{file}: attribute site_code {site!r} differs from {attrs['site_id']!r} of {paths[0]}; "
                            f"expected the files of a pair to be of one site")
        _collect_attrs(ds, attrs, file, t[0])
        lower = {name.lower(): name for name in ds.data_vars}
        mapped = set()
        for var in _PLUMBER_NAMES:
            name = lower.get(var.lower())
            if name is None:
                continue
            da = ds[name]
            mapped.add(name)
            if da.dims != ("time",):
                raise DataError(f"{file}: variable {name} has dims {da.dims}; expected (time, y, x)")
            unit = da.attrs.get("units")
            scale, offset = conversion(var, unit, step.total_seconds(), where=f"{file}: variable {name}")
            vals = _numbers(da, file, name) * scale + offset
            reject_infinite(vals, da.values, file=file, name=name, units=VARIABLES[var].units, times=t)
            check_plausible(vals, var, file=file, column=name, declared_units=str(unit),
                            raw=da.values, times=t, stacklevel=3)
            full_vals = np.full(len(time), np.nan)
            full_vals[pos] = vals
            qname = lower.get(f"{var.lower()}_qc")
            if var in data_vars:  # in both files: one series, the second copy filling the first's gaps
                filled = _merge_copy(data_vars[var].values, full_vals, time, var, str(paths[0]), file)
                if filled.any():
                    repairs.append(f"{var}: {int(filled.sum())} step(s) missing in {paths[0]} taken from {file}")
                if qname is not None and f"{var}_qc" not in data_vars:  # the flags of the values now used
                    mapped.add(qname)
                    data_vars[f"{var}_qc"] = _qc(ds[qname], vals, pos, len(time), file, qname, t)
                elif qname is not None and filled.any():
                    mapped.add(qname)
                    data_vars[f"{var}_qc"].values[filled] = _qc(ds[qname], vals, pos, len(time), file, qname,
                                                                t).values[filled]
                continue
            va = {"units": VARIABLES[var].units, "long_name": VARIABLES[var].long_name,
                  "source_variable": name, "source_units": str(unit)}
            for key in ("Fluxnet_name", "Gapfilling_method", "source"):
                if key in da.attrs:
                    va[key.lower()] = _text(da.attrs[key])
            data_vars[var] = xr.DataArray(full_vals, dims="time", attrs=va)
            if qname is not None:
                mapped.add(qname)
                data_vars[f"{var}_qc"] = _qc(ds[qname], vals, pos, len(time), file, qname, t)
        for name in ds.data_vars:
            if name in mapped or name.lower() in _STATIC or name.lower().startswith("igbp_veg"):
                continue
            unmapped.append(name)

    if not data_vars:
        raise DataError(f"{paths[0]}: no PLUMBER2 variable found; expected e.g. Tair, SWdown, Qle")
    _fill_from_table(attrs, path, sites)
    attrs.update(
        time_step_s=float(step0.total_seconds()),
        time_resolution={1800: "HH", 3600: "HR"}.get(int(step0.total_seconds()), "other"),
        source_file="; ".join(str(p) for p in paths),
        source_format="plumber2-netcdf",
        unmapped_variables=", ".join(unmapped),
        time_convention="start of the averaging interval, local standard time",
        repairs="\n".join(repairs),
        n_repairs=len(repairs),
    )
    apply_metadata(attrs, metadata, attrs["source_file"])
    check_metadata_values(attrs, file=attrs["source_file"])  # numbers, before the zone compares them
    _apply_time_zone(attrs, time[0])
    check_site_metadata(attrs, file=attrs["source_file"], stacklevel=3)
    ds = xr.Dataset(data_vars, coords={"time": ("time", np.asarray(time, dtype="datetime64[ns]"))},
                    attrs=attrs)
    return ds


@dataclass
class _File:
    """One loaded PLUMBER2 file: squeezed data, raw times ``t``, the regular axis ``full`` and
    the position of each raw time in it."""

    file: str
    ds: xr.Dataset
    t: pd.DatetimeIndex
    full: pd.DatetimeIndex
    pos: np.ndarray
    step: pd.Timedelta


def _load(p: Path) -> _File:
    file = str(p)
    raw = _open(p)
    try:
        ds = _squeeze(raw, file)
        for name in list(ds.variables):
            try:
                ds[name].load()
            except IO_ERRORS as exc:
                raise DataError(
                    f"{file}: cannot read the data of variable {name}: {type(exc).__name__}: {exc}"
                ) from exc
    finally:
        raw.close()
    if not np.issubdtype(ds["time"].dtype, np.datetime64):
        raise DataError(undecoded_time(ds["time"], file))
    t = pd.DatetimeIndex(ds["time"].values).astype("datetime64[ns]")
    offset = declared_utc_offset(ds["time"])
    if offset is not None:  # decoded to UTC: back to the file's own clock, the site's (PLUMBER2: local standard time)
        t = t + pd.Timedelta(hours=offset)
        ds = ds.assign_coords(time=t.values)
        ds.attrs["declared_utc_offset_h"] = offset
    check_times(t, file)
    if len(t) < 2:
        raise DataError(f"{file}: {len(t)} time step(s); expected a time series")
    step = pd.Timedelta(t[1] - t[0])
    full, pos = regularise_time(t, step, file=file, column="time")
    return _File(file, ds, t, full, pos, step)


def align_pair(a: _File, b: _File) -> list[str]:
    """Bring the time axes of a Met/Flux pair to their common period, in place.

    A step at the start or end that only one file has is dropped only if it is entirely missing
    or an exact repeat (every time-varying variable, NaN = NaN) of its neighbour towards the common
    period; each drop gives a DataWarning naming the file, the time and why, and one entry of the
    returned list. Different steps, misaligned axes, no overlap or an edge step with other values
    are a DataError.
    """
    def describe(f: _File) -> str:
        return f"{f.file} ({len(f.full)} steps, {f.full[0]} .. {f.full[-1]})"

    if a.step != b.step or (a.full[0] - b.full[0]) % a.step != pd.Timedelta(0):
        raise DataError(
            f"{b.file}: time axis {describe(b)} (step {b.step}) does not match {describe(a)} (step "
            f"{a.step}); expected the same regular half-hourly times"
        )
    first, last = max(a.full[0], b.full[0]), min(a.full[-1], b.full[-1])
    if first > last:
        raise DataError(f"{b.file}: time axis {describe(b)} does not overlap {describe(a)}")
    repairs = []
    for f in (a, b):
        other = b if f is a else a
        i0 = int((first - f.full[0]) // f.step)
        i1 = int((last - f.full[0]) // f.step)  # inclusive
        extra = [(j, j + 1) for j in range(i0 - 1, -1, -1)]  # leading: compare with the next step
        extra += [(j, j - 1) for j in range(i1 + 1, len(f.full))]  # trailing: with the previous
        for j, nb in extra:
            why = _droppable(f, j, nb)
            if why is None:
                raise DataError(
                    f"{f.file}: time {fmt_time(f.full[j])} is not in {other.file} and is neither "
                    f"entirely missing nor an exact repeat of {fmt_time(f.full[nb])}; expected both "
                    f"files of the pair to cover the same times ({describe(f)}; {describe(other)})"
                )
            msg = f"{f.file}: dropped time {fmt_time(f.full[j])} (not in {Path(other.file).name}; {why})"
            warnings.warn(msg, DataWarning, stacklevel=3)
            repairs.append(msg)
        keep = (f.pos >= i0) & (f.pos <= i1)
        f.ds = f.ds.isel(time=np.nonzero(keep)[0])
        f.t = f.t[keep]
        f.pos = f.pos[keep] - i0
        f.full = f.full[i0 : i1 + 1]
    return repairs


def _droppable(f: _File, j: int, nb: int) -> str | None:
    """Why step ``j`` of the regular axis of ``f`` may be dropped (entirely missing, or an exact
    repeat of step ``nb``), or None."""
    raw = {int(k): i for i, k in enumerate(f.pos)}
    if j not in raw:
        return "a missing row of the time axis"
    arrays = [f.ds[v].values for v in f.ds.data_vars if f.ds[v].dims[:1] == ("time",)]
    row = [x[raw[j]] for x in arrays]
    floats = [np.asarray(r, dtype=float) for r, x in zip(row, arrays) if np.issubdtype(x.dtype, np.floating)]
    if floats and all(np.isnan(r).all() for r in floats):
        return "every variable missing"
    if nb in raw and all(np.array_equal(r, x[raw[nb]], equal_nan=np.issubdtype(x.dtype, np.floating))
                         for r, x in zip(row, arrays)):
        return f"an exact repeat of {fmt_time(f.full[nb])} in all {len(arrays)} variables"
    return None


def _fill_from_table(attrs: dict, path: Path, sites) -> None:
    """Fill the site attrs that the files leave missing from the site table, if there is one."""
    table = sites_table_for(path, sites)
    if table is None:
        return
    meta = site_metadata(table, file=path.name, site_id=attrs.get("site_id") or None)
    for key in ("site_name", *SITE_METADATA):
        have = attrs.get(key)
        if have is None or (isinstance(have, str) and not have) or (
            not isinstance(have, str) and not np.isfinite(have)
        ):
            attrs[key] = meta[key]
    attrs["site_table"] = str(table) if not isinstance(table, pd.DataFrame) else "DataFrame"


def _collect_attrs(ds: xr.Dataset, attrs: dict, file: str, t0) -> None:
    attrs.setdefault("site_id", _text(ds.attrs.get("site_code", "")) or Path(file).name.split("_")[0])
    if not attrs.get("site_name"):  # the Met file of some copies has none; the Flux file's counts
        attrs["site_name"] = _text(ds.attrs.get("site_name", ""))
    lower = {name.lower(): name for name in ds.variables}
    for src, key in _STATIC.items():
        if src in lower:
            v = _numbers(ds[lower[src]], file, lower[src]).reshape(-1)
            if v.size and np.isfinite(v[0]) and not np.isfinite(attrs.get(key, np.nan)):
                # float32 statics: keep the digits that the file stores (56.4842, not 56.48419952)
                attrs[key] = float(np.format_float_positional(np.float32(v[0]))) \
                    if ds[lower[src]].dtype == np.float32 else float(v[0])
        attrs.setdefault(key, float("nan"))
    if "igbp_veg_short" in lower and not attrs.get("igbp"):
        attrs["igbp"] = _text(ds[lower["igbp_veg_short"]].values)
    attrs.setdefault("igbp", "")
    if not np.isfinite(attrs.get("utc_offset_h", np.nan)) and "declared_utc_offset_h" in ds.attrs:
        attrs["utc_offset_h"] = float(ds.attrs["declared_utc_offset_h"])  # the time units' own offset
    tz = _text(ds["time"].attrs.get("time_zone", "")) if "time" in ds else ""
    if tz and attrs.get("time_zone") and tz != attrs["time_zone"]:
        raise DataError(f"{file}: variable time: attribute time_zone {tz!r} differs from {attrs['time_zone']!r} of the "
                        "other file of the pair; expected one site's zone")
    if tz:
        attrs["time_zone"] = tz  # the site's zone: its offset unless one is given (``_apply_time_zone``)
    attrs.setdefault("utc_offset_h", float("nan"))


def _merge_copy(first: np.ndarray, second: np.ndarray, time: np.ndarray, var: str, first_file: str,
                second_file: str) -> np.ndarray:
    """Merge the second file's copy of a variable that both files of a pair hold into the first's
    (in place): the second fills the steps the first lacks, whose (T,) mask is returned for the
    caller to count as repairs; a value that differs from the first's is a DataError (one of them
    is wrong, and which is unknown)."""
    differ = np.isfinite(first) & np.isfinite(second) & ~np.isclose(first, second, rtol=1e-6, atol=1e-9)
    if differ.any():
        i = int(np.argmax(differ))
        raise DataError(f"{second_file}: variable {var} is also in {first_file}, and the two differ at time {time[i]} "
                        f"({second[i]:g} against {first[i]:g}; {int(differ.sum())} step(s)); expected one copy, or "
                        "copies that agree")
    filled = ~np.isfinite(first) & np.isfinite(second)
    first[filled] = second[filled]
    return filled


def _apply_time_zone(attrs: dict, t0) -> None:
    """The ``time_zone`` a PLUMBER2 file declares gives the site's ``utc_offset_h`` (its standard
    offset in the year of ``t0``) where nothing else does; where the time units, a sites.csv or
    ``metadata`` give one, it must be that offset: PLUMBER2 times are the zone's standard time, so
    another offset would misplace every step silently. A name that is no zone is a DataError too."""
    tz = attrs.get("time_zone")
    if not tz:
        return
    standard = zone_offsets(tz, t0)[0]
    if not np.isfinite(standard):
        raise DataError(f"{attrs['source_file']}: variable time: attribute time_zone {tz!r} is not a time zone name; "
                        "expected an IANA zone (e.g. 'America/Chicago', 'Etc/UTC')")
    offset = attrs.get("utc_offset_h", np.nan)
    if not np.isfinite(offset):
        attrs["utc_offset_h"] = standard
    elif offset != standard:
        raise DataError(f"{attrs['source_file']}: variable time: attribute time_zone {tz!r} (standard time "
                        f"UTC{standard:+g} h) disagrees with the site's utc_offset_h {offset:+g} (metadata= or "
                        "sites.csv); correct one of them")


def undecoded_time(time: xr.DataArray, file: str) -> str:
    """The message for a time axis xarray did not decode to dates: its units and calendar."""
    units = time.encoding.get("units", time.attrs.get("units"))
    calendar = time.encoding.get("calendar", time.attrs.get("calendar", "standard"))
    why = (f"; calendar {calendar!r} is not the real one (the readers need the standard/gregorian calendar)"
           if str(calendar).lower() not in ("standard", "gregorian", "proleptic_gregorian") else "")
    return f"{file}: time could not be decoded to dates (units {units!r}, calendar {calendar!r}){why}"


def declared_utc_offset(time: xr.DataArray) -> float | None:
    """The UTC offset [h] that CF ``units`` such as ``"hours since 2008-01-01 00:00:00 -07:00"``
    declare, or None (no offset, or +00:00). xarray decodes such times to UTC, so a reader that
    takes its file's times as local must shift them back by this offset."""
    units = str(time.encoding.get("units", time.attrs.get("units", ""))).strip()
    if " since " not in units:
        return None
    try:  # the reference date as xarray reads it (pandas), so every form it decodes is seen: "0:0:0 -7" too
        offset = pd.Timestamp(units.split(" since ", 1)[1].strip()).utcoffset()
    except (ValueError, TypeError, OverflowError):
        return None
    return None if offset is None or not offset.total_seconds() else offset.total_seconds() / 3600.0


def check_times(t: pd.DatetimeIndex, file: str) -> None:
    """DataError naming the index of the first missing time (NaN, fill value) or time outside the
    plausible years :data:`hybridlsm.data.fluxnet.YEARS` (a wrong value or encoding; also keeps
    every difference of times within what datetime64[ns] holds)."""
    if t.isna().any():
        i = int(np.argmax(t.isna()))
        raise DataError(f"{file}: variable time: value at index {i} is missing (NaN or fill value); expected a "
                        f"time for every step")
    odd = (t.year < YEARS[0]) | (t.year > YEARS[1])
    if odd.any():
        i = int(np.argmax(odd))
        raise DataError(f"{file}: variable time: {t[i]} at index {i} is outside the years {YEARS[0]}..{YEARS[1]}; "
                        f"expected the times of the data (check the values and the units attribute)")


def _numbers(da: xr.DataArray, file: str, name: str) -> np.ndarray:
    """The values of ``da`` as float64; DataError naming the variable if they are not numbers."""
    if not (np.issubdtype(da.dtype, np.number) or np.issubdtype(da.dtype, np.bool_)):
        raise DataError(f"{file}: variable {name} has type {da.dtype}; expected numbers")
    return np.asarray(da.values, dtype=np.float64)


def reject_infinite(values, raw, *, file: str, name: str, units: str, times=None) -> None:
    """DataError naming the variable and the first time (or flat index) of an infinite value, in
    the file or after the conversion to ``units`` (an overflow; said when ``raw``, the values before
    the conversion, is given)."""
    v = np.asarray(values, dtype=float).reshape(-1)
    bad = np.isinf(v)
    if bad.any():
        i = int(np.argmax(bad))
        r = None if raw is None else np.asarray(raw, dtype=float).reshape(-1)
        at = f"time {pd.Timestamp(times[i])}" if times is not None and v.size == len(times) else f"flat index {i}"
        how = "" if r is None or r.size != v.size or np.isinf(r[i]) else (
            f" after the conversion to {units} (value {r[i]:g} in the file)")
        raise DataError(
            f"{file}: variable {name}: infinite value at {at}{how}; expected finite numbers (missing "
            f"values as the _FillValue)"
        )


def _qc(q: xr.DataArray, vals: np.ndarray, pos, n: int, file: str, name: str, times) -> xr.DataArray:
    q = _numbers(q, file, name)
    fin = np.isfinite(q)
    bad = fin & ~np.isin(q, _ALLOWED_QC)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(
            f"{file}: variable {name}: flag {q[i]:g} at time {pd.Timestamp(times[i])}; expected one "
            f"of {list(_ALLOWED_QC)}"
        )
    lost = np.isfinite(vals) & ~fin
    if lost.any():
        i = int(np.argmax(lost))
        warnings.warn(
            f"{file}: variable {name}: {int(lost.sum())} present value(s) have no quality flag (first at time "
            f"{pd.Timestamp(times[i])}); flagged -1 (unusable for QC-filtered use)",
            DataWarning,
            stacklevel=4,
        )
    flag = np.where(fin & np.isfinite(vals), q, QC_MISSING).astype(np.int8)
    full = np.full(n, QC_MISSING, dtype=np.int8)
    full[pos] = flag
    return xr.DataArray(full, dims="time", attrs={"long_name": f"{name} quality flag",
                                                  "flag_meanings": QC_FLAG_MEANINGS,
                                                  "source_variable": name})


@register_reader
class Plumber2Reader(Reader):
    """A PLUMBER2 Met/Flux pair (by name) or any single-site netCDF (``time`` plus dims of size 1)."""

    name = "plumber2"
    description = "PLUMBER2 Met/Flux netCDF pair or single-site netCDF (y = x = 1), .nc"
    priority = 30
    options = {
        "other": "the partner file (default: found by name)",
        "find_partner": "look for the _Met.nc/_Flux.nc partner (default True)",
        "sites": "sites.csv table that fills missing site attrs (default: sites.csv beside the file)",
        "metadata": "attrs that override the file's",
    }

    def detect(self, path: Path) -> bool:
        if path.suffix.lower() not in NETCDF_SUFFIXES:
            return False
        if plumber2_partner(path) is not None:
            return True
        try:
            with open_netcdf(path, decode_times=False) as ds:
                sizes = dict(ds.sizes)
        except IO_ERRORS:
            return False  # the gridded reader reports the file as unreadable
        spatial = [n for d, n in sizes.items() if d != "time"]
        return "time" in sizes and bool(spatial) and all(n == 1 for n in spatial)

    def companions(self, path: Path) -> list[Path]:
        partner = plumber2_partner(path)
        return [partner] if partner is not None and partner.is_file() else []

    def read(self, path: Path, **options) -> xr.Dataset:
        return read_plumber2(path, **options)
