"""Reader for PLUMBER2 Met/Flux netCDF pairs (ALMA/CF; Ukkola et al. 2022) and FluxnetLSM output.

``<SITE>_<Y1>-<Y2>_FLUXNET2015_Met.nc`` holds the meteorological forcing, ``..._Flux.nc`` the
fluxes; dims ``(time, y, x)`` with ``y = x = 1`` (squeezed here). Variable names are matched
case-insensitively (``PSurf`` and ``Psurf`` both occur) and units are converted with
:mod:`hybridlsm.data.units`. ``<var>_qc`` flags become int8 (-1 where the value is missing; values
0-3 FLUXNET, 4 ERA-Interim, 5 statistical gap-fill, 101 post-processed). The static variables
``latitude``, ``longitude``, ``elevation``, ``reference_height``, ``canopy_height`` and
``IGBP_veg_short`` become dataset attrs. Times are interval starts in local standard time
(PLUMBER2 convention; the FluxDataKit files say so in the ``info`` attribute of ``time``).
"""

from __future__ import annotations

import re
import warnings
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from .checks import check_plausible, regularise_time
from .schema import QC_FLAG_MEANINGS, QC_MISSING, VARIABLES, DataError, DataWarning
from .units import conversion

__all__ = ["read_plumber2", "plumber2_partner"]

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


# what the netCDF libraries raise for unreadable or corrupted files (turned into DataError)
IO_ERRORS = (OSError, EOFError, ValueError, RuntimeError, KeyError, IndexError, OverflowError, TypeError)


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


def _open(path: Path) -> xr.Dataset:
    try:
        return open_netcdf(path, decode_times=True, mask_and_scale=True)
    except IO_ERRORS as exc:
        raise DataError(f"{path}: cannot open as netCDF: {type(exc).__name__}: {exc}") from exc


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
    return ds.squeeze(drop=True)


def _text(value) -> str:
    if isinstance(value, np.ndarray):
        value = value.item() if value.size == 1 else value.tobytes()
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value).strip().strip("\x00").strip()


def _standard_utc_offset(tz_name: str, when) -> float:
    """Standard-time (no DST) UTC offset [h] of an IANA zone at ``when``; NaN if unknown."""
    try:
        from zoneinfo import ZoneInfo

        tz = ZoneInfo(tz_name)
    except Exception:  # unknown zone or no tz database
        return float("nan")
    dt = pd.Timestamp(when).to_pydatetime().replace(tzinfo=tz)
    off = dt.utcoffset() - (dt.dst() or timedelta(0))
    return off.total_seconds() / 3600.0


def read_plumber2(
    path: str | Path,
    other: str | Path | None = None,
    *,
    find_partner: bool = True,
    metadata: dict | None = None,
) -> xr.Dataset:
    """Read a PLUMBER2 Met and/or Flux file into the canonical site dataset.

    ``path`` may be the Met or the Flux file; the partner is found by name (``_Met.nc`` <->
    ``_Flux.nc``) unless ``other`` is given or ``find_partner`` is False. A missing partner gives a
    DataWarning and only the one file is read. ``metadata`` overrides attrs.
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

    data_vars: dict[str, xr.DataArray] = {}
    attrs: dict = {}
    time = None
    unmapped: list[str] = []
    for p in paths:
        file = str(p)
        raw = _open(p)
        try:
            ds = _squeeze(raw, file)
            try:
                ds = ds.load()
            except IO_ERRORS as exc:
                raise DataError(f"{file}: cannot read the data: {type(exc).__name__}: {exc}") from exc
        finally:
            raw.close()
        if not np.issubdtype(ds["time"].dtype, np.datetime64):
            raise DataError(f"{file}: time could not be decoded to dates (units {ds['time'].attrs!r})")
        t = pd.DatetimeIndex(ds["time"].values).astype("datetime64[ns]")
        if len(t) < 2:
            raise DataError(f"{file}: {len(t)} time step(s); expected a time series")
        step = pd.Timedelta(t[1] - t[0])
        full, pos = regularise_time(t, step, file=file, column="time")
        if time is None:
            time, step0, first_file = full, step, file
        elif not (len(full) == len(time) and (full == time).all()):
            raise DataError(
                f"{file}: time axis ({len(full)} steps, {full[0]} .. {full[-1]}) differs from "
                f"{first_file} ({len(time)} steps, {time[0]} .. {time[-1]}); expected the same times"
            )
        site = _text(ds.attrs.get("site_code", ""))
        if attrs.get("site_id") and site and site != attrs["site_id"]:
            raise DataError(f"{file}: site_code {site!r} differs from {attrs['site_id']!r} of {paths[0]}")
        _collect_attrs(ds, attrs, file, t[0])
        lower = {name.lower(): name for name in ds.data_vars}
        mapped = set()
        for var in _PLUMBER_NAMES:
            name = lower.get(var.lower())
            if name is None or var in data_vars:
                if name is not None:
                    mapped.add(name)
                continue
            da = ds[name]
            mapped.add(name)
            if da.dims != ("time",):
                raise DataError(f"{file}: variable {name} has dims {da.dims}; expected (time, y, x)")
            unit = da.attrs.get("units")
            scale, offset = conversion(var, unit, step.total_seconds(), where=f"{file}: variable {name}")
            vals = da.values.astype(np.float64) * scale + offset
            check_plausible(vals, var, file=file, column=name, declared_units=str(unit),
                            raw=da.values, times=t, stacklevel=3)
            full_vals = np.full(len(full), np.nan)
            full_vals[pos] = vals
            va = {"units": VARIABLES[var].units, "long_name": VARIABLES[var].long_name,
                  "source_variable": name, "source_units": str(unit)}
            for key in ("Fluxnet_name", "Gapfilling_method", "source"):
                if key in da.attrs:
                    va[key.lower()] = _text(da.attrs[key])
            data_vars[var] = xr.DataArray(full_vals, dims="time", attrs=va)
            qname = lower.get(f"{var.lower()}_qc")
            if qname is not None:
                mapped.add(qname)
                data_vars[f"{var}_qc"] = _qc(ds[qname].values, vals, pos, len(full), file, qname, t)
        for name in ds.data_vars:
            if name in mapped or name.lower() in _STATIC or name.lower().startswith("igbp_veg"):
                continue
            unmapped.append(name)

    if not data_vars:
        raise DataError(f"{paths[0]}: no PLUMBER2 variable found; expected e.g. Tair, SWdown, Qle")
    attrs.update(
        time_step_s=float(step0.total_seconds()),
        time_resolution={1800: "HH", 3600: "HR"}.get(int(step0.total_seconds()), "other"),
        source_file="; ".join(str(p) for p in paths),
        source_format="plumber2-netcdf",
        unmapped_variables=", ".join(unmapped),
        time_convention="start of the averaging interval, local standard time",
    )
    if metadata:
        attrs.update(metadata)
    ds = xr.Dataset(data_vars, coords={"time": ("time", np.asarray(time, dtype="datetime64[ns]"))},
                    attrs=attrs)
    return ds


def _collect_attrs(ds: xr.Dataset, attrs: dict, file: str, t0) -> None:
    attrs.setdefault("site_id", _text(ds.attrs.get("site_code", "")) or Path(file).name.split("_")[0])
    attrs.setdefault("site_name", _text(ds.attrs.get("site_name", "")))
    lower = {name.lower(): name for name in ds.variables}
    for src, key in _STATIC.items():
        if src in lower:
            v = np.asarray(ds[lower[src]].values, dtype=float).reshape(-1)
            if v.size and np.isfinite(v[0]) and not np.isfinite(attrs.get(key, np.nan)):
                # float32 statics: keep the digits that the file stores (56.4842, not 56.48419952)
                attrs[key] = float(np.format_float_positional(np.float32(v[0]))) \
                    if ds[lower[src]].dtype == np.float32 else float(v[0])
        attrs.setdefault(key, float("nan"))
    if "igbp_veg_short" in lower and not attrs.get("igbp"):
        attrs["igbp"] = _text(ds[lower["igbp_veg_short"]].values)
    attrs.setdefault("igbp", "")
    if not np.isfinite(attrs.get("utc_offset_h", np.nan)):
        tz = _text(ds["time"].attrs.get("time_zone", "")) if "time" in ds else ""
        attrs["utc_offset_h"] = _standard_utc_offset(tz, t0) if tz else float("nan")
        if tz:
            attrs["time_zone"] = tz


def _qc(q: np.ndarray, vals: np.ndarray, pos, n: int, file: str, name: str, times) -> xr.DataArray:
    q = np.asarray(q, dtype=float)
    fin = np.isfinite(q)
    bad = fin & ~np.isin(q, _ALLOWED_QC)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(
            f"{file}: variable {name}: flag {q[i]:g} at time {pd.Timestamp(times[i])}; expected one "
            f"of {list(_ALLOWED_QC)}"
        )
    flag = np.where(fin & np.isfinite(vals), q, QC_MISSING).astype(np.int8)
    full = np.full(n, QC_MISSING, dtype=np.int8)
    full[pos] = flag
    return xr.DataArray(full, dims="time", attrs={"long_name": f"{name} quality flag",
                                                  "flag_meanings": QC_FLAG_MEANINGS,
                                                  "source_variable": name})
