"""File readers as a registry: one :class:`Reader` per format, :func:`read_site` as the entry point.

A format is one module that defines a :class:`Reader` subclass and registers it with
:func:`register_reader`; the built-in modules are listed in :data:`BUILTIN_READER_MODULES` and
imported on first use of the registry. Registered formats (in detection order):

- ``ameriflux-base``: AmeriFlux BASE half-hourly/hourly CSV (:mod:`hybridlsm.data.ameriflux`);
- ``fluxnet-csv``: FLUXNET2015 / AmeriFlux-ONEFlux CSV (HH, HR, DD, WW, MM, YY) and the canonical
  half-hourly CSVs (:mod:`hybridlsm.data.fluxnet`);
- ``plumber2``: a PLUMBER2 Met/Flux netCDF pair or one single-site netCDF (``y = x = 1``)
  (:mod:`hybridlsm.data.plumber2`);
- ``wrf``: WRF history output (``Times``, ``south_north``/``west_east``) (:mod:`hybridlsm.data.wrf`);
- ``gridded``: any other netCDF, with time and y/lat, x/lon dims (:mod:`hybridlsm.data.gridded`).

:func:`detect_format` asks each reader's ``detect`` in ascending ``priority`` (then name); the
first that claims the file wins. Each reader declares its keyword options in ``options``; an
option it does not declare is a TypeError naming the reader and its allowed options.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import xarray as xr

from .schema import DataError

__all__ = [
    "Reader",
    "register_reader",
    "get_reader",
    "available_formats",
    "detect_format",
    "read_site",
    "read_sites",
    "BUILTIN_READER_MODULES",
]

BUILTIN_READER_MODULES = ("ameriflux", "fluxnet", "plumber2", "wrf", "gridded")
"""Modules of :mod:`hybridlsm.data` that register the built-in readers when imported."""

NETCDF_SUFFIXES = (".nc", ".nc4", ".netcdf", ".cdf")


class Reader(ABC):
    """One file format.

    Class attributes: ``name`` (the format name given to ``read_site(format=...)``),
    ``description`` (one line, for messages), ``priority`` (lower is asked first by
    :func:`detect_format`) and ``options`` (allowed keyword options -> one-line description).
    """

    name: ClassVar[str]
    description: ClassVar[str]
    priority: ClassVar[int]
    options: ClassVar[dict[str, str]] = {}

    @abstractmethod
    def detect(self, path: Path) -> bool:
        """Whether ``path`` (an existing file) is in this format; cheap, never raises."""

    @abstractmethod
    def read(self, path: Path, **options) -> xr.Dataset:
        """The canonical dataset (docs/architecture.md §1) of ``path``."""

    def companions(self, path: Path) -> list[Path]:
        """Other files that :meth:`read` reads together with ``path`` (e.g. a PLUMBER2 partner)."""
        return []

    def check_options(self, options: dict) -> None:
        """TypeError naming the reader and its allowed options when ``options`` has others."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise TypeError(
                f"reader {self.name!r}: unknown option(s) {unknown}; allowed: "
                f"{', '.join(sorted(self.options)) or '(none)'}"
            )

    def __call__(self, path, **options) -> xr.Dataset:
        self.check_options(options)
        return self.read(Path(path), **options)


_REGISTRY: dict[str, Reader] = {}
_builtin_loaded = False


def register_reader(reader: Reader | type[Reader]):
    """Register a reader (an instance or a class, which is instantiated); usable as a class
    decorator. Returns its argument. A second reader with the same name is a ValueError."""
    inst = reader() if isinstance(reader, type) else reader
    if not isinstance(inst, Reader):
        raise TypeError(f"register_reader: {reader!r} is not a Reader")
    for attr in ("name", "description", "priority"):
        if not hasattr(inst, attr):
            raise TypeError(f"register_reader: {type(inst).__name__} does not define {attr!r}")
    old = _REGISTRY.get(inst.name)
    def origin(r):
        return type(r).__module__, type(r).__qualname__

    if old is not None and origin(old) != origin(inst):
        raise ValueError(
            f"register_reader: format {inst.name!r} is already registered ({type(old).__name__})"
        )
    _REGISTRY[inst.name] = inst
    return reader


def _load_builtin() -> None:
    global _builtin_loaded
    if not _builtin_loaded:
        _builtin_loaded = True
        for module in BUILTIN_READER_MODULES:
            importlib.import_module(f"{__package__}.{module}")


def _ordered() -> list[Reader]:
    _load_builtin()
    return sorted(_REGISTRY.values(), key=lambda r: (r.priority, r.name))


def available_formats() -> list[str]:
    """Names of the registered formats, in detection order."""
    return [r.name for r in _ordered()]


def get_reader(name: str) -> Reader:
    """The registered reader of format ``name``; DataError listing the formats if unknown."""
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise DataError(
            f"unknown data format {name!r}; available formats: {', '.join(available_formats())}"
        ) from None


def _existing(path) -> Path:
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a directory; expected a data file (one of the formats "
                        f"{', '.join(available_formats())})")
    if not path.is_file():
        raise DataError(f"{path}: no such file" if not path.exists() else
                        f"{path}: not a regular file; expected a data file")
    return path


def detect_format(path: str | Path) -> str:
    """The name of the first registered format (in priority order) whose reader claims ``path``;
    DataError naming the file and the known formats if none does."""
    path = _existing(path)
    for reader in _ordered():
        if reader.detect(path):
            return reader.name
    known = "; ".join(f"{r.name} ({r.description})" for r in _ordered())
    raise DataError(f"{path}: unknown file format {path.suffix.lower()!r}; expected one of: {known}")


def read_site(path: str | Path, format: str | None = None, **options) -> xr.Dataset:
    """Read one file into the canonical dataset of docs/architecture.md §1.

    ``format`` names the reader (:func:`available_formats`); by default it is detected. Options
    go to the reader, which declares the ones it accepts (``get_reader(name).options``).
    """
    path = _existing(path)
    reader = get_reader(format if format is not None else detect_format(path))
    return reader(path, **options)


def read_sites(paths, format: str | None = None, **options) -> list[xr.Dataset]:
    """Read several files; files that a reader reads together (a PLUMBER2 Met/Flux pair given as
    two paths) are read once.

    Each option goes to the readers that declare it (e.g. ``sites=`` to the CSV readers, ``chunks=``
    to the gridded reader); one that no registered reader declares is a TypeError.
    """
    readers = _ordered()
    unknown = sorted(set(options) - set().union(*(r.options for r in readers)))
    if unknown:
        allowed = "; ".join(f"{r.name}: {', '.join(sorted(r.options))}" for r in readers)
        raise TypeError(f"read_sites: unknown keyword argument(s) {unknown}; options per format: {allowed}")
    out = []
    seen: set[Path] = set()
    for p in paths:
        p = _existing(p)
        if p.resolve() in seen:
            continue
        reader = get_reader(format if format is not None else detect_format(p))
        seen.add(p.resolve())
        seen.update(c.resolve() for c in reader.companions(p))
        out.append(reader(p, **{k: v for k, v in options.items() if k in reader.options}))
    return out
