"""One entry point for every supported file: :func:`read_site` dispatches on the file format.

- ``*.csv``: FLUXNET2015 / AmeriFlux-ONEFlux CSV (HH, HR, DD, WW, MM, YY) and the canonical
  half-hourly CSVs (:func:`hybridlsm.data.fluxnet.read_fluxnet_csv`);
- ``*.nc`` with a single site (``y = x = 1``, or a ``_Met.nc`` / ``_Flux.nc`` name): PLUMBER2
  (:func:`hybridlsm.data.plumber2.read_plumber2`);
- other ``*.nc`` with time and y/lat, x/lon dims: gridded forcing
  (:func:`hybridlsm.data.gridded.read_gridded`).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import xarray as xr

from .fluxnet import read_fluxnet_csv
from .gridded import read_gridded
from .plumber2 import IO_ERRORS, open_netcdf, plumber2_partner, read_plumber2
from .schema import DataError

__all__ = ["read_site", "read_sites", "detect_format"]

_NC_SUFFIXES = (".nc", ".nc4", ".netcdf", ".cdf")


def detect_format(path: str | Path) -> str:
    """``'fluxnet-csv'``, ``'plumber2'`` or ``'gridded'`` for a file; DataError if none fits."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "fluxnet-csv"
    if suffix in _NC_SUFFIXES:
        if plumber2_partner(path) is not None:
            return "plumber2"
        try:
            with open_netcdf(path, decode_times=False) as ds:
                sizes = dict(ds.sizes)
        except IO_ERRORS as exc:
            raise DataError(f"{path}: cannot open as netCDF: {type(exc).__name__}: {exc}") from exc
        spatial = {d: n for d, n in sizes.items() if d != "time"}
        if "time" in sizes and spatial and all(n == 1 for n in spatial.values()):
            return "plumber2"
        return "gridded"
    raise DataError(
        f"{path}: unknown file format {suffix!r}; expected a FLUXNET-style .csv or a netCDF "
        f"(.nc) file (PLUMBER2 Met/Flux or gridded forcing)"
    )


def read_site(path: str | Path, **kwargs) -> xr.Dataset:
    """Read one file (any supported format) into the canonical dataset of docs/architecture.md §1.

    Keyword arguments go to the format's reader: ``site_id``, ``sites``, ``metadata`` (CSV);
    ``other``, ``find_partner``, ``metadata`` (PLUMBER2); ``chunks``, ``variables`` (gridded).
    """
    fmt = detect_format(path)
    if fmt == "fluxnet-csv":
        return read_fluxnet_csv(path, **kwargs)
    if fmt == "plumber2":
        return read_plumber2(path, **kwargs)
    return read_gridded(path, **kwargs)


_READERS = {"fluxnet-csv": read_fluxnet_csv, "plumber2": read_plumber2, "gridded": read_gridded}


def read_sites(paths, **kwargs) -> list[xr.Dataset]:
    """Read several files; a PLUMBER2 Met/Flux pair given as two paths is read once (merged).

    Each keyword argument goes to the readers that accept it (e.g. ``sites=`` to the CSV files
    only); one that no reader accepts is a TypeError.
    """
    accepted = {k: set(inspect.signature(f).parameters) for k, f in _READERS.items()}
    unknown = set(kwargs) - set().union(*accepted.values())
    if unknown:
        raise TypeError(f"read_sites: unknown keyword argument(s) {sorted(unknown)}")
    out = []
    seen: set[Path] = set()
    for p in paths:
        p = Path(p)
        if p.resolve() in seen:
            continue
        seen.add(p.resolve())
        if detect_format(p) == "plumber2":
            partner = plumber2_partner(p)
            if partner is not None:
                seen.add(partner.resolve())
        fmt = detect_format(p)
        out.append(_READERS[fmt](p, **{k: v for k, v in kwargs.items() if k in accepted[fmt]}))
    return out
