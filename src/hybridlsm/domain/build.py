"""Domains from canonical site datasets and gridded forcing (docs/architecture.md §2).

- :func:`domain_from_sites`: one or several site datasets that share a time axis (a site list);
- :func:`domain_from_grid`: the land cells of a gridded dataset ``(time, y, x)``;
- :func:`static_attributes`: the per-column table, with climate summaries from the forcing.

Missing metadata stay missing (NaN, ``igbp`` '') and are listed per column in the static
variable ``missing_metadata``; the model layer decides what a missing class means and says so.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence

import numpy as np
import xarray as xr

from ..data.checks import FORCING_CHECKED, modelled_cells, refuse_out_of_range
from ..data.schema import IGBP_BY_INDEX, DataError, DataWarning
from .climate import climate_summaries
from .domain import OPTIONAL_SITE_ATTRS, SITE_ATTRS, STATIC_ATTRIBUTES, Domain, GridLayout, SiteLayout

__all__ = ["domain_from_site", "domain_from_sites", "domain_from_grid", "grid_mask", "grid_static_fields",
           "land_cover_codes", "static_attributes", "IGBP_BY_INDEX", "CLIMATE_INPUTS"]

#: the forcing the climate summaries come from, in ``climate_summaries``' argument order
CLIMATE_INPUTS = ("Tair", "Precip", "SWdown", "LWdown", "Psurf")


def _site_id(ds: xr.Dataset, i: int) -> str:
    return str(ds.attrs.get("site_id") or f"site{i}")


def static_attributes(columns: dict[str, np.ndarray], time: np.ndarray, forcing: dict[str, np.ndarray] | None,
                      ids: Sequence[str]) -> xr.Dataset:
    """The static table on dim ``column``: given ``columns`` (name -> (N,)) completed with NaN /
    '' for what is unknown and the climate summaries of ``forcing`` (name -> (T, N)) when every
    input is present."""
    n = len(ids)
    out = {}
    for name, (unit, desc) in STATIC_ATTRIBUTES.items():
        if name in columns:
            values = np.asarray(columns[name])
        elif name == "igbp":
            values = np.full(n, "", object)
        else:
            values = np.full(n, np.nan)
        if name == "igbp":
            values = np.asarray(["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).strip()
                                 for v in values], dtype=object)  # fmt: skip
        else:
            try:
                values = np.asarray(values, float)
            except (TypeError, ValueError):
                raise DataError(f"static attribute {name!r} of columns {list(ids)[:5]}: {list(values)[:5]} is not a number "
                                f"({unit}: {desc})") from None  # fmt: skip
        if name == "irrigated" and np.any(bad := np.isfinite(values) & ((values < 0.0) | (values > 1.0))):
            j = int(np.argmax(bad))
            raise DataError(f"{ids[j]}: irrigated = {values[j]}; expected a fraction from 0 (rain-fed) to 1 "
                            "(irrigated), or true/false")  # fmt: skip
        out[name] = ("column", values, {"units": unit, "long_name": desc})
    if forcing is not None and all(v in forcing for v in CLIMATE_INPUTS):
        summaries = climate_summaries(time, *(np.asarray(forcing[v], float) for v in CLIMATE_INPUTS))
        for name, values in summaries.items():
            out[name] = ("column", values, out[name][2])
    missing = []
    for j in range(n):
        gaps = [k for k in SITE_ATTRS if k not in OPTIONAL_SITE_ATTRS and (
            out[k][1][j] == "" if k == "igbp" else not np.isfinite(out[k][1][j]))]  # fmt: skip
        missing.append(" ".join(gaps))
    out["missing_metadata"] = ("column", np.asarray(missing, dtype=object),
                               {"long_name": "site metadata the source did not give (space-separated)"})
    return xr.Dataset(out, coords={"column": list(ids)})


def domain_from_site(ds: xr.Dataset) -> Domain:
    """A one-column Domain from one canonical site dataset."""
    return domain_from_sites([ds])


def domain_from_sites(datasets: Sequence[xr.Dataset], name: str | None = None) -> Domain:
    """Sites that share one time axis (same times, same step) as one Domain."""
    if not datasets:
        raise DataError("domain_from_sites: no datasets given")
    ids = [_site_id(ds, i) for i, ds in enumerate(datasets)]
    dup = sorted({s for s in ids if ids.count(s) > 1})
    if dup:
        raise DataError(f"site(s) {dup} given more than once")
    first = datasets[0]
    for ds, sid in zip(datasets[1:], ids[1:]):
        if ds.sizes["time"] != first.sizes["time"] or not np.array_equal(ds["time"].values, first["time"].values):
            raise DataError(f"site {sid}: its time axis ({str(ds['time'].values[0])[:16]} .., {ds.sizes['time']} "
                            f"steps) differs from {ids[0]}'s; sites in one Domain share a time axis "
                            "(give them as separate domains)")  # fmt: skip
    names = sorted({str(v) for ds in datasets for v in ds.data_vars if ds[v].dims == ("time",)})
    n, nt = len(datasets), first.sizes["time"]
    data = {}
    for v in names:
        ref = next(ds[v] for ds in datasets if v in ds)
        if ref.dtype == bool:
            fill = False
        elif np.issubdtype(ref.dtype, np.integer):
            fill = -1
        else:
            fill = np.nan
        arr = np.full((nt, n), fill, dtype=ref.dtype)
        for j, ds in enumerate(datasets):
            if v in ds:
                arr[:, j] = np.asarray(ds[v].values)
        data[v] = (("time", "column"), arr, dict(ref.attrs))
    attrs = {k: v for k, v in first.attrs.items() if k not in SITE_ATTRS + ("site_id", "site_name")}
    attrs["source_files"] = "; ".join(str(ds.attrs.get("source_file", "")) for ds in datasets)
    dset = xr.Dataset(data, coords={"time": first["time"].values, "column": ids}, attrs=attrs)
    columns = {k: np.asarray([ds.attrs.get(k, np.nan if k != "igbp" else "") for ds in datasets], dtype=object)
               for k in SITE_ATTRS}  # fmt: skip
    columns["site_name"] = np.asarray([str(ds.attrs.get("site_name", "")) for ds in datasets], object)
    forcing = {v: dset[v].values for v in CLIMATE_INPUTS if v in dset}
    static = static_attributes(columns, dset["time"].values, forcing if len(forcing) == len(CLIMATE_INPUTS) else None, ids)
    static["site_name"] = ("column", columns["site_name"])
    return Domain(dset, static, SiteLayout(tuple(ids)), name or (ids[0] if n == 1 else "+".join(ids)))


#: IGBP class names (as CF ``flag_meanings`` write them) -> codes; compared after ``_class_key``.
IGBP_NAMES = {
    "evergreen_needleleaf_forests": "ENF", "evergreen_broadleaf_forests": "EBF",
    "deciduous_needleleaf_forests": "DNF", "deciduous_broadleaf_forests": "DBF", "mixed_forests": "MF",
    "closed_shrublands": "CSH", "open_shrublands": "OSH", "woody_savannas": "WSA", "savannas": "SAV",
    "grasslands": "GRA", "permanent_wetlands": "WET", "croplands": "CRO", "urban_and_built_up_lands": "URB",
    "cropland_natural_vegetation_mosaics": "CVM", "snow_and_ice": "SNO", "barren_or_sparsely_vegetated": "BSV",
    "water_bodies": "WAT",
}  # fmt: skip


def _class_key(name: str) -> str:
    """A class name without case, separators or plural endings ('Water bodies' = 'water_body')."""
    words = name.lower().replace("-", "_").replace("/", "_").replace(" ", "_").split("_")
    return "_".join(w[:-3] + "y" if w.endswith("ies") else w.rstrip("s") for w in words if w)


_IGBP_BY_KEY = {_class_key(k): v for k, v in IGBP_NAMES.items()}


def land_cover_codes(values: np.ndarray, attrs: dict) -> np.ndarray:
    """IGBP codes of a land-cover index field: by the CF ``flag_values`` / ``flag_meanings`` where
    the file names its classes (IGBP codes or names; a class that is not an IGBP class gets ''), else by the 17-class
    IGBP numbering (1 = ENF ... 17 = WAT); '' for any other value."""
    meanings = str(attrs.get("flag_meanings", "")).split()
    if meanings:
        flags = [int(f) for f in np.atleast_1d(attrs.get("flag_values", np.arange(1, len(meanings) + 1)))]
        table = {f: m.upper() if m.upper() in IGBP_BY_INDEX else _IGBP_BY_KEY.get(_class_key(m), "")
                 for f, m in zip(flags, meanings)}  # meanings that are IGBP codes, or class names
    else:
        table = {i + 1: code for i, code in enumerate(IGBP_BY_INDEX)}
    values = np.asarray(values)
    textual = values.dtype.kind in "US" or (values.dtype.kind == "O" and all(isinstance(v, (str, bytes))
                                                                             for v in values.ravel()))
    if textual:  # the classes written as text: IGBP codes ("GRA") or names (netCDF characters: bytes)
        text = [(v.decode() if isinstance(v, bytes) else str(v)).strip() for v in values.ravel()]
        out = [v.upper() if v.upper() in IGBP_BY_INDEX else _IGBP_BY_KEY.get(_class_key(v), "") if v else ""
               for v in text]
        return np.asarray(out, dtype=object).reshape(values.shape)
    flat = values.astype(float).ravel()
    fractional = np.isfinite(flat) & (np.abs(flat - np.round(flat)) > 1e-6)  # (packing's rounding aside)
    if fractional.any():
        where = np.unravel_index(int(np.argmax(fractional)), values.shape)
        raise DataError(f"land_cover: {int(fractional.sum())} value(s) are not class indices (e.g. "
                        f"{flat[fractional][0]:g} at index {tuple(int(i) for i in where)}); expected integer class "
                        "codes (IGBP numbering, or the flag_values of its flag_meanings)")
    out = np.asarray([table.get(int(round(v)), "") if np.isfinite(v) else "" for v in flat], dtype=object)
    return out.reshape(values.shape)


def grid_mask(ds: xr.Dataset, ydim: str = "y", xdim: str = "x", where: str | None = None) -> np.ndarray | None:
    """(ny, nx) bool, True where the grid's ``mask`` marks a cell as modelled, or None without one.

    The one reading of a grid's mask for the in-memory domain, the regional data and streaming: a
    coordinate or variable named ``mask`` on the grid's two dims, 1 where a cell is modelled and 0
    where it is not (``Domain.grid_dataset`` writes it so; the gridded readers keep a file's
    ``mask``, the WRF reader its ``LANDMASK``). Other dims, or any other value (a land fraction, a
    class code, a missing value), are a DataError naming the file (``where``, else the dataset's
    source) and a cell: a mask read by a guessed threshold would model or drop cells silently; so
    is a mask of 0 everywhere (nothing to model)."""
    if "mask" not in ds.variables:
        return None
    where = where or ds.attrs.get("source_file") or ds.encoding.get("source") or "the grid"
    m = ds["mask"]
    if set(m.dims) != {ydim, xdim}:
        raise DataError(f"{where}: mask has dims {m.dims}; expected the grid's ({ydim}, {xdim}) (1 where a cell is "
                        "modelled, 0 where it is not)")
    inside = modelled_cells(m.transpose(ydim, xdim).values, where=where, dims=(ydim, xdim))
    if not inside.any():
        raise DataError(f"{where}: mask is 0 at every cell: no cell is modelled")
    return inside


def domain_from_grid(ds: xr.Dataset, *, land_cover: xr.DataArray | None = None, name: str | None = None) -> Domain:
    """The cells of a gridded canonical dataset ``(time, y, x)`` (``read_gridded``) as a Domain.

    Cells where the forcing is missing at every step (sea, outside a basin) or masked (``grid_mask``:
    a ``mask`` of 0) are not columns; the layout keeps their place so the writers restore the full
    grid. A cell that lacks some forcing variables at every step but has the others is not modelled
    either, with a DataWarning (a DataError where the grid's mask marks it as modelled). A cell with
    a gap in its forcing, or a forcing value outside its physically possible range (the schema's
    ``valid_range``, over every step), is a DataError naming the variable, cell and time (never a
    cell silently left out, or a value silently used). ``land_cover``: an index field (y, x)
    in the IGBP numbering or with CF ``flag_meanings`` (e.g. the Little Washita file's
    ``land_cover``); by default the dataset's own ``land_cover`` field (y, x) where it has one (the
    gridded and WRF readers keep it as a coordinate), otherwise the class is unknown ('').
    Elevation, canopy and measurement height, sand and clay fraction per column come from a (y, x)
    field of that name where the dataset has one, else from its attrs; latitude/longitude from the
    grid's coordinates, else from ``attrs['latitude']``/``['longitude']`` (one approximate point for
    the grid, e.g. Little Washita), which the layout does not write as per-cell coordinates
    (``grid_static_fields``)."""
    where = ds.attrs.get("source_file", "<grid>")
    dims = [d for d in ds.dims if d != "time"]
    if len(dims) != 2:
        raise DataError(f"{where}: expected dims (time, y, x), got {tuple(ds.dims)}")
    # the (y, x) order of the variables, not of ``ds.dims`` (which follows the order the dims were
    # first declared, e.g. x before y when the x coordinate was assigned first)
    gridded = [ds[v].dims for v in ds.data_vars if ds[v].ndim == 3 and "time" in ds[v].dims]
    ydim, xdim = ("y", "x") if set(dims) == {"y", "x"} else (
        tuple(d for d in gridded[0] if d != "time") if gridded else tuple(dims))  # fmt: skip
    ds = ds.transpose("time", ydim, xdim)
    ny, nx = ds.sizes[ydim], ds.sizes[xdim]
    forcing_vars = [v for v in ("Tair", "Qair", "Psurf", "Wind", "SWdown", "LWdown", "Precip") if v in ds]
    partial = np.zeros((ny, nx), bool)
    none = {}  # per variable: the cells where it is missing at every step
    for v in forcing_vars:
        values = np.asarray(ds[v].values)
        if np.isinf(values).any():  # the readers check the first steps only (they read lazily): not a gap
            step, y0, x0 = (int(i[0]) for i in np.nonzero(np.isinf(values)))
            raise DataError(f"{where}: {v} is infinite at cell ({ydim}={y0}, "
                            f"{xdim}={x0}), time {ds['time'].values[step]} (step {step}; "
                            f"{int(np.isinf(values).sum())} such value(s)); expected finite numbers")
        finite = np.isfinite(values)
        none[v] = ~finite.any(axis=0)
        partial |= finite.any(axis=0) & ~finite.all(axis=0)
    absent = np.any(list(none.values()), axis=0) if none else np.zeros((ny, nx), bool)
    inside = grid_mask(ds, ydim, xdim, where)
    masked = np.zeros((ny, nx), bool) if inside is None else ~inside
    # a cell where a forcing variable is missing at every step (sea, outside a basin) or masked is
    # not a column; one with a gap (missing at some steps only) is an error, never a cell silently
    # left out
    valid = ~absent & ~partial
    gappy = partial & ~absent & ~masked
    if gappy.any():
        y0, x0 = (int(i[0]) for i in np.nonzero(gappy))
        var = next(v for v in forcing_vars if not np.isfinite(np.asarray(ds[v].values[:, y0, x0])).all())
        step = int(np.flatnonzero(~np.isfinite(np.asarray(ds[var].values[:, y0, x0])))[0])
        raise DataError(f"{where}: {int(gappy.sum())} cell(s) have gaps in their "
                        f"forcing, e.g. {var} at cell ({ydim}={y0}, {xdim}={x0}), time {ds['time'].values[step]} "
                        f"(step {step}); every modelled cell needs gap-free forcing (fill the gaps, or mask the "
                        "cells out with a 'mask' of 0)")
    lacking = absent & ~masked & ~np.all(list(none.values()), axis=0)
    if lacking.any():  # other forcing there: not the sea or outside a basin, which lack every variable
        names = sorted(v for v in forcing_vars if (none[v] & lacking).any())
        y0, x0 = (int(i[0]) for i in np.nonzero(lacking))
        text = (f"{where}: {int(lacking.sum())} cell(s) lack {', '.join(names)} at every step while they have other "
                f"forcing, e.g. cell ({ydim}={y0}, {xdim}={x0})")
        if inside is not None:  # the grid says they are land
            raise DataError(f"{text}, and the grid's mask marks them as modelled cells; give the variable or mask "
                            "the cells out (mask 0)")
        warnings.warn(f"{text}: they are not modelled (no output there)", DataWarning, stacklevel=2)
    valid &= ~masked
    if not valid.any():
        raise DataError(f"{where}: no cell has complete forcing")
    # not VPD and RH: the gridded readers mostly compute them from the file's vapour pressure or
    # humidity (checked as Qair), and they leave 0..100 where the air is supersaturated to the file's
    # rounding (slightly negative VPD in the Livneh grid, RH above 100 % in the WRF cutout)
    cells_yx = np.argwhere(valid)
    for v in (v for v in FORCING_CHECKED if v not in ("VPD", "RH") and v in ds and ds[v].dims == ("time", ydim, xdim)):
        values = np.asarray(ds[v].values)[:, valid]
        refuse_out_of_range(v, values, where, lambda i: (f"cell ({ydim}={cells_yx[i[1]][0]}, {xdim}="
                                                         f"{cells_yx[i[1]][1]}), time {ds['time'].values[i[0]]}"))
    cells = np.flatnonzero(valid.ravel())
    iy, ix = np.unravel_index(cells, (ny, nx))
    ycoord = ds[ydim].values if ydim in ds.coords else np.arange(ny)
    xcoord = ds[xdim].values if xdim in ds.coords else np.arange(nx)
    lat = _grid_coord(ds, LATITUDE_NAMES, ny, nx, axis=0)
    lon = _grid_coord(ds, LONGITUDE_NAMES, ny, nx, axis=1)
    ids = [f"y{a}_x{b}" for a, b in zip(iy, ix)]
    data = {}
    for v in ds.data_vars:
        if ds[v].dims != ("time", ydim, xdim):
            continue
        values = np.asarray(ds[v].values).reshape(ds.sizes["time"], ny * nx)[:, cells]
        data[v] = (("time", "column"), values, dict(ds[v].attrs))
    attrs = {k: v for k, v in ds.attrs.items() if k not in SITE_ATTRS + ("site_id", "site_name")}
    dset = xr.Dataset(data, coords={"time": ds["time"].values, "column": ids}, attrs=attrs)
    columns = {k: v[iy, ix] for k, v in grid_static_fields(ds, ydim, xdim).items()}
    if land_cover is None and "land_cover" in ds.variables and set(ds["land_cover"].dims) == {ydim, xdim}:
        land_cover = ds["land_cover"]
    if land_cover is not None:
        if set(land_cover.dims) == {ydim, xdim}:
            land_cover = land_cover.transpose(ydim, xdim)
        if land_cover.shape != (ny, nx):
            raise DataError(f"{where}: land_cover has dims {land_cover.dims} "
                            f"shape {land_cover.shape}; expected ({ydim}, {xdim}) = ({ny}, {nx})")  # fmt: skip
        try:
            codes = land_cover_codes(np.asarray(land_cover.values), dict(land_cover.attrs))
        except DataError as err:
            raise DataError(f"{where}: {err}") from None
        columns["igbp"] = codes[iy, ix]
        unknown = columns["igbp"] == ""
        if unknown.any():  # never silent: the column models then run on their default class's parameters
            raw = np.asarray(land_cover.values)[iy[unknown], ix[unknown]]
            shown = ", ".join(sorted({str(v) for v in raw})[:5])
            warnings.warn(f"{where}: {int(unknown.sum())} of {len(cells)} cell(s) have "
                          f"a land_cover value that is no IGBP class ({shown}), first at cell ({ydim}="
                          f"{iy[unknown][0]}, {xdim}={ix[unknown][0]}); their class is unknown ('')",
                          DataWarning, stacklevel=2)
    else:
        columns["igbp"] = np.full(len(cells), str(ds.attrs.get("igbp", "") or ""), object)
    forcing = {v: dset[v].values for v in CLIMATE_INPUTS if v in dset}
    static = static_attributes(columns, dset["time"].values, forcing if len(forcing) == len(CLIMATE_INPUTS) else None, ids)
    grid_name = name or re.sub(r"[^A-Za-z0-9._-]", "_", str(ds.attrs.get("site_id", "grid")))
    layout = GridLayout(y=np.asarray(ycoord), x=np.asarray(xcoord), cell_index=cells, lat=lat, lon=lon,
                        name=grid_name, y_attrs=dict(ds[ydim].attrs) if ydim in ds.coords else {},
                        x_attrs=dict(ds[xdim].attrs) if xdim in ds.coords else {})  # fmt: skip
    return Domain(dset, static, layout, grid_name)


#: names of a grid's latitude and longitude coordinates (1-D or 2-D)
LATITUDE_NAMES = ("lat", "latitude", "XLAT")
LONGITUDE_NAMES = ("lon", "longitude", "XLONG")
#: static attribute -> the (y, x) field a grid may give it in per cell (else one value in its attrs,
#: under the attribute's name); albedo: the ALMA name of a surface albedo product
GRID_FIELDS = {**{k: k for k in ("elevation", "canopy_height", "measurement_height", "sand_fraction", "clay_fraction",
                                 "utc_offset_h", "irrigated")}, "albedo": "Albedo"}


def grid_static_fields(ds: xr.Dataset, ydim: str, xdim: str) -> dict[str, np.ndarray]:
    """(ny, nx) static attributes of a grid's cells, NaN where unknown: latitude and longitude
    from its coordinates (``LATITUDE_NAMES``, ``LONGITUDE_NAMES``), else the one point of
    ``attrs['latitude']`` / ``['longitude']`` for every cell; each of ``GRID_FIELDS`` from its (y, x)
    field, else ``attrs[name]`` for every cell. Reads only (y, x) fields, never the
    forcing, so it serves a lazily read grid too."""
    ny, nx = ds.sizes[ydim], ds.sizes[xdim]
    out = {}
    for key, names, axis in (("latitude", LATITUDE_NAMES, 0), ("longitude", LONGITUDE_NAMES, 1)):
        values = _grid_coord(ds, names, ny, nx, axis)
        if not np.isfinite(values).any():  # one point for the whole grid, not per-cell coordinates
            values[...] = float(ds.attrs.get(key, np.nan))
        out[key] = values
    for k, field in GRID_FIELDS.items():
        if field in ds.variables and set(ds[field].dims) == {ydim, xdim}:
            out[k] = np.asarray(ds[field].transpose(ydim, xdim).values, float)
        else:
            out[k] = np.full((ny, nx), float(ds.attrs.get(k, np.nan)))
    return out


def _grid_coord(ds: xr.Dataset, names: tuple[str, ...], ny: int, nx: int, axis: int) -> np.ndarray:
    """A (ny, nx) latitude or longitude field from 1-D or 2-D coordinates; NaN when absent."""
    for name in names:
        if name in ds.coords or name in ds.data_vars:
            values = np.asarray(ds[name].values, float)
            if values.ndim == 2 and values.shape == (ny, nx):
                return values
            if values.ndim == 1 and values.size == (ny if axis == 0 else nx):
                return np.repeat(values[:, None], nx, 1) if axis == 0 else np.repeat(values[None, :], ny, 0)
    key = "latitude_approx" if axis == 0 else "longitude_approx"
    return np.full((ny, nx), float(ds.attrs.get(key, np.nan)))  # a raw file's one approximate point
