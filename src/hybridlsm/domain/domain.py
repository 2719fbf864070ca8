"""The Domain: what a model runs on (docs/architecture.md §2).

N columns on one time axis, each a flux-tower site or a grid cell:

- ``data``: canonical variables (forcing, observations, their QC flags, an optional ``loss_mask``)
  on dims ``(time, column)``, ALMA names and SI units as the readers give them;
- ``static``: per-column attributes on dim ``column`` (:data:`STATIC_ATTRIBUTES`): location,
  land cover, heights, soil texture where known, and climate summaries computed from the forcing;
- ``layout``: how the N columns map back to what the user gave, a list of sites
  (:class:`SiteLayout`) or the land cells of a ``(y, x)`` grid (:class:`GridLayout`); the ALMA
  writers (``domain.write``) restore it.

Models take Domains and predict ``(T, N)`` arrays. ``Domain.column(i)`` gives column ``i`` as the
1-D canonical site dataset of docs/architecture.md §1 (static attributes as ``attrs``), for code
that works one record at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import xarray as xr

from ..data.schema import DataError

__all__ = ["Domain", "GridLayout", "SiteLayout", "STATIC_ATTRIBUTES", "Layout"]

#: Per-column static attributes: name -> (unit, description). ``igbp`` is a string ('' unknown).
STATIC_ATTRIBUTES: dict[str, tuple[str, str]] = {
    "latitude": ("degrees_north", "latitude"),
    "longitude": ("degrees_east", "longitude"),
    "elevation": ("m", "elevation above sea level"),
    "igbp": ("1", "IGBP land-cover class ('' when unknown)"),
    "canopy_height": ("m", "canopy height"),
    "measurement_height": ("m", "height of the flux / meteorological measurements"),
    "sand_fraction": ("1", "soil sand fraction"),
    "clay_fraction": ("1", "soil clay fraction"),
    "utc_offset_h": ("h", "offset of the time axis from UTC"),
    "irrigated": ("1", "irrigated fraction (site metadata or a grid's field; not stated: 0, rain-fed)"),
    "albedo": ("1", "snow-free surface albedo of a product (a site's attrs or a grid's Albedo field, e.g. MODIS); "
                    "not stated: the land-cover class default"),
    "mean_annual_temperature": ("degC", "mean air temperature over the record (monthly climatology)"),
    "mean_annual_precipitation": ("mm yr-1", "annual precipitation from the monthly climatology"),
    "aridity_index": ("1", "Priestley-Taylor potential evaporation / precipitation"),
    "precipitation_seasonality": ("1", "Walsh-Lawler seasonality index of monthly precipitation (0 even .. 1.83)"),
    "temperature_seasonality": ("K", "standard deviation of the monthly mean air temperatures"),
    "climate_months": ("1", "calendar months the climate summaries are computed from (12 = whole year)"),
}

#: Static attributes a site's canonical dataset carries as ``attrs`` (the rest are computed).
SITE_ATTRS = ("latitude", "longitude", "elevation", "igbp", "canopy_height", "measurement_height", "utc_offset_h",
              "irrigated", "albedo")
#: site attributes that are not metadata a site lacks when it does not give them (``missing_metadata``)
OPTIONAL_SITE_ATTRS = ("utc_offset_h", "irrigated", "albedo")


@dataclass(frozen=True)
class SiteLayout:
    """The columns are sites: ``site_ids[i]`` is column i."""

    site_ids: tuple[str, ...]
    kind: Literal["sites"] = "sites"


@dataclass(frozen=True)
class GridLayout:
    """The columns are the land cells of a ``(y, x)`` grid, in C order.

    Attributes:
        y, x: the grid's coordinate values (as in the source file)
        cell_index: (N,) flat index ``iy * nx + ix`` of each column
        y_name, x_name: the source's dimension names (written back as ``y``/``x`` coords' attrs)
        lat, lon: latitude and longitude per grid point, (ny, nx), NaN where unknown
        name: the grid's name (file stem)
    """

    y: np.ndarray
    x: np.ndarray
    cell_index: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    name: str = "grid"
    y_attrs: dict = field(default_factory=dict)
    x_attrs: dict = field(default_factory=dict)
    kind: Literal["grid"] = "grid"

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.y), len(self.x))


Layout = SiteLayout | GridLayout


@dataclass(frozen=True)
class Domain:
    """N columns (sites or grid cells) on one time axis; see the module docstring."""

    data: xr.Dataset
    static: xr.Dataset
    layout: Layout
    name: str

    def __post_init__(self):
        if self.data.sizes.get("column") != self.static.sizes.get("column"):
            raise DataError(f"domain {self.name}: data has {self.data.sizes.get('column')} columns, "
                            f"static attributes {self.static.sizes.get('column')}")  # fmt: skip
        n_layout = len(self.layout.site_ids) if isinstance(self.layout, SiteLayout) else len(self.layout.cell_index)
        if n_layout != self.n_columns:
            raise DataError(f"domain {self.name}: layout maps {n_layout} columns, data has {self.n_columns}")

    # ----------------------------------------------------------------------------- sizes
    @property
    def n_columns(self) -> int:
        return int(self.data.sizes["column"])

    @property
    def n_steps(self) -> int:
        return int(self.data.sizes["time"])

    @property
    def time(self) -> np.ndarray:
        return self.data["time"].values

    @property
    def time_step_s(self) -> float:
        return float(self.data.attrs["time_step_s"])

    @property
    def column_ids(self) -> list[str]:
        return [str(c) for c in self.data["column"].values]

    @property
    def kind(self) -> str:
        return self.layout.kind

    # -------------------------------------------------------------------------- columns
    def column(self, i: int) -> xr.Dataset:
        """Column ``i`` as a canonical 1-D site dataset (static attributes as attrs)."""
        ds = self.data.isel(column=i, drop=True)
        attrs = dict(self.data.attrs)
        for name in self.static.data_vars:
            value = self.static[name].values[i]
            attrs[name] = str(value) if self.static[name].dtype.kind in "OUS" else float(value)
        attrs["site_id"] = self.column_ids[i]
        ds.attrs = attrs
        return ds

    def columns(self) -> list[xr.Dataset]:
        return [self.column(i) for i in range(self.n_columns)]

    def grid_cells(self) -> tuple[tuple[int, int], np.ndarray, np.ndarray]:
        """((ny, nx), iy, ix) of a grid-layout domain's columns; a DataError for sites."""
        if not isinstance(self.layout, GridLayout):
            raise DataError(f"domain {self.name}: a {self.kind} domain has no grid")
        iy, ix = np.unravel_index(self.layout.cell_index, self.layout.shape)
        return self.layout.shape, iy, ix

    def grid_dataset(self) -> xr.Dataset:
        """A grid-layout domain back on its grid: every ``(time, column)`` variable on ``(time, y,
        x)`` and every static attribute on ``(y, x)``, NaN ('' for ``igbp``) where a cell is not a
        column (``mask`` = 1 where it is); coordinates as the layout's."""
        layout = self.layout
        (ny, nx), iy, ix = self.grid_cells()
        out = {}
        for name, da in self.data.data_vars.items():
            if da.dims != ("time", "column"):
                continue
            values = np.asarray(da.values)
            fill = False if values.dtype == bool else np.nan
            full = np.full((self.n_steps, ny, nx), fill, values.dtype if values.dtype == bool else float)
            full[:, iy, ix] = values
            out[name] = (("time", "y", "x"), full, dict(da.attrs))
        for name, da in self.static.data_vars.items():
            text = da.dtype.kind in "OUS"
            full = np.full((ny, nx), "" if text else np.nan, object if text else float)
            full[iy, ix] = np.asarray(da.values)
            out[name] = (("y", "x"), full.astype(str) if text else full, dict(da.attrs))
        mask = np.zeros((ny, nx), np.int8)
        mask[iy, ix] = 1
        coords = {"time": self.time, "y": ("y", layout.y, layout.y_attrs), "x": ("x", layout.x, layout.x_attrs),
                  "mask": (("y", "x"), mask, {"long_name": "1 where the cell is a column of the domain"})}
        if np.isfinite(layout.lat).all() and np.isfinite(layout.lon).all():
            coords.update(lat=(("y", "x"), layout.lat, {"units": "degrees_north"}),
                          lon=(("y", "x"), layout.lon, {"units": "degrees_east"}))
        return xr.Dataset(out, coords=coords, attrs={**self.data.attrs, "site_id": layout.name})

    def select_columns(self, index) -> Domain:
        """Columns ``index`` (positions) as a site-layout domain (e.g. the tower cells of a grid,
        written and scored as sites; their ids then start with the grid's name: ``<grid>_y3_x5``)."""
        index = np.asarray(index, int)
        ids = tuple(str(c) for c in self.data["column"].values[index])
        if isinstance(self.layout, GridLayout):
            ids = tuple(f"{self.layout.name}_{c}" for c in ids)
        data = self.data.isel(column=index).assign_coords(column=list(ids))
        static = self.static.isel(column=index).assign_coords(column=list(ids))
        return Domain(data, static, SiteLayout(ids), self.name)

    def static_value(self, name: str) -> np.ndarray:
        """(N,) values of one static attribute (``igbp`` as strings)."""
        if name not in self.static:
            raise KeyError(f"domain {self.name}: no static attribute {name!r}; has {sorted(self.static.data_vars)}")
        return np.asarray(self.static[name].values)

    # ----------------------------------------------------------------------------- masks
    def with_loss_mask(self, mask: np.ndarray) -> Domain:
        """A copy whose ``loss_mask`` (T, N) marks the steps a training loss may use (the split)."""
        mask = np.asarray(mask, bool)
        if mask.ndim == 1:
            mask = np.repeat(mask[:, None], self.n_columns, axis=1)
        if mask.shape != (self.n_steps, self.n_columns):
            raise ValueError(f"loss mask of shape {mask.shape}; expected ({self.n_steps}, {self.n_columns})")
        data = self.data.copy()
        data["loss_mask"] = (("time", "column"), mask)
        return replace(self, data=data)

    def select_time(self, start=None, end=None) -> Domain:
        """The steps with ``start <= time <= end``; an ``end`` given as a date alone includes that
        whole day (as the dates of a split do). An error if none, or if a bound is not a time."""
        t = self.time

        def parse(value, which):
            try:
                return np.datetime64(value)
            except ValueError:
                raise DataError(f"domain {self.name}: {which} {value!r} is not a date or time "
                                "(e.g. 2011-06-01 or 2011-06-01T12:00)") from None

        lo = t[0] if start is None else parse(start, "start")
        hi = t[-1] if end is None else parse(end, "end")
        if end is not None and np.datetime_data(hi.dtype)[0] in ("D", "M", "Y"):
            hi = (hi + 1).astype("datetime64[ns]") - np.timedelta64(1, "ns")  # the whole day (month, year)
        if start is not None and end is not None and lo > hi:
            raise DataError(f"domain {self.name}: start {start} is after end {end}")
        if lo > t[-1] or hi < t[0]:
            raise DataError(f"domain {self.name}: period {start} .. {end} lies outside its record "
                            f"{t[0]} .. {t[-1]}")  # fmt: skip
        keep = (t >= lo) & (t <= hi)
        if not keep.any():
            raise DataError(f"domain {self.name}: no step in {start} .. {end} (record {t[0]} .. {t[-1]}, "
                            f"steps of {self.data.attrs.get('time_step_s', '?')} s)")  # fmt: skip
        return replace(self, data=self.data.isel(time=np.flatnonzero(keep)))

    def describe(self) -> str:
        what = "site" if self.kind == "sites" else "grid cell"
        return (f"{self.name}: {self.n_columns} {what}{'s' if self.n_columns != 1 else ''}, {self.n_steps} steps of "
                f"{self.time_step_s / 60:g} min, {str(self.time[0])[:16]} .. {str(self.time[-1])[:16]}")
