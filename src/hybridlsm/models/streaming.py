"""Grids larger than memory: a column model streamed through a lazily read gridded forcing.

``stream_column_model`` runs a ``ColumnModel`` (the physics or a hybrid without a sequence network)
over a gridded canonical dataset on ``(time, y, x)`` whose variables are read lazily (xarray with
dask: ``xr.open_zarr``, or ``xr.open_dataset(..., chunks={})`` for netCDF). The grid is cut into
bands of whole rows (``cells_per_block`` cells at most) and time into chunks of ``time_chunk`` steps:

- for each band, only the band's forcing of one time chunk is in memory at a time; the state is
  carried from one chunk to the next, so the result equals one rollout over the whole period;
- each chunk's outputs are written to the zarr store as soon as they are computed (a region write
  of the chunk's time steps and the band's rows; the store's chunks are aligned with these writes);
- peak memory is set by ``cells_per_block x time_chunk`` (and the spin-up period), not by the grid
  size or the record length (``benchmarks/scaling.py`` measures it).

A cell is a column when its forcing is complete over the spin-up period (sea and masked cells, with
no forcing there, are NaN in the outputs, as ``hybridlsm predict`` writes grids); a gap, in the
spin-up or later, in a cell that has forcing is a DataError naming the variable, cell and time:
forcing must be gap-free (``_band_columns``). Every band starts from the state the
model reaches by cycling the band's first ``spinup_days`` of forcing (``ColumnModel.spun_up_state``;
``predict`` cycles up to a year, which a grid beyond memory cannot hold at once).

A model whose networks take static attributes (``ColumnModel.static_inputs``) gets each cell's
from the grid as ``domain_from_grid`` gives them in memory: latitude from the grid's coordinates,
elevation (and canopy / measurement height, sand / clay fraction) from a (y, x) field or the
grid's attrs (``domain.build.grid_static_fields``), the IGBP class from ``land_cover``, and the
climate summaries from the cell's own forcing over the whole record, gathered band by band in time
chunks before the band runs (``domain.climate.ClimateAccumulator``: one more read of the band's
Tair, Precip, SWdown, LWdown and Psurf). An attribute the grid does not give for any cell is a
DataError naming it and where it was looked for, raised before anything is written.

Bands are independent, so the store is written band by band; the output store is created (its
metadata, no data) before the first band runs, and a store that already exists is never replaced:
choose a new path. A run that fails part-way (a gap found in a later chunk, an interrupt) removes
the store it created, so no half-written output is left.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import xarray as xr

from ..data import DataError, DataWarning
from ..data.checks import refuse_out_of_range
from ..data.gridprep import check_regular_time
from ..domain.build import CLIMATE_INPUTS, grid_mask, grid_static_fields, land_cover_codes
from ..domain.climate import ClimateAccumulator
from ..domain.write import time_axis_attrs, variable_attrs
from ..physics import FORCING_VARIABLES, Forcing, default_params, run_time_jit
from .column import ColumnModel, column_igbp
from .features import CLIMATE_SUMMARIES
from .registry import StreamingUnsupported

__all__ = ["STREAM_OUTPUTS", "open_grid", "stream_column_model"]

#: outputs written by default (ALMA names; every (T, N) output of ``PREDICTION_OUTPUTS`` may be asked for)
STREAM_OUTPUTS = ("Qh", "Qle", "Qg", "Rnet", "AvgSurfT")


def _chunk_runner(model: ColumnModel):
    """The compiled forward over one chunk, tuned for throughput as ``physics.simulate``: one plain
    scan (``chunk=None``: nothing is differentiated, so nothing needs checkpointing) compiled with
    XLA's CPU fusion emitters (``physics.run_time_jit``), once per band shape."""

    def run(m, forcing, base, state0, outputs):
        state, out = m.run(forcing, base, state0)
        return state, {k: out[k] for k in outputs}  # XLA skips the outputs not asked for

    jitted = run_time_jit(run)
    plain = replace(model, chunk=None)
    return lambda forcing, base, state0, outputs: jitted(plain, forcing, base, state0, outputs)


def open_grid(source: xr.Dataset | str | Path) -> xr.Dataset:
    """A gridded forcing read lazily: ``source`` itself when it is a Dataset, else the zarr store
    (a folder, ``xr.open_zarr``) or netCDF file (``xr.open_dataset(..., chunks={})``) at that path."""
    if isinstance(source, xr.Dataset):
        return source
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such gridded forcing (a zarr store or a netCDF file)")
    return xr.open_zarr(path) if path.is_dir() else xr.open_dataset(path, chunks={})


def _grid_dims(source: xr.Dataset) -> tuple[str, str]:
    dims = [d for d in source[FORCING_VARIABLES["t_air"][0]].dims if d != "time"]
    if len(dims) != 2:
        raise DataError(f"{source.encoding.get('source', '<grid>')}: Tair has dims "
                        f"{source['Tair'].dims}; expected (time, y, x)")  # fmt: skip
    return dims[0], dims[1]


def _grid_setup(source: xr.Dataset, variables: Sequence[str]) -> tuple[str, str, str, float]:
    """(where, ydim, xdim, step_s) of a lazily read grid that must hold ``variables``: where names
    the source in messages, step_s that of its ``time`` coordinate, which must be regular and
    increasing (and agree with ``attrs["time_step_s"]`` where that is given)."""
    where = str(source.encoding.get("source") or source.attrs.get("source_file") or "<grid>")
    missing = [v for v in variables if v not in source]
    if missing:
        raise DataError(f"{where}: forcing variable(s) {missing} missing; the grid has {sorted(source.data_vars)}")
    ydim, xdim = _grid_dims(source)
    step_s = check_regular_time(source)  # a DataError naming the index for a time axis that is not regular
    declared = source.attrs.get("time_step_s")
    if declared is not None and abs(float(declared) - step_s) > 1e-6 * step_s:
        raise DataError(f"{where}: attrs['time_step_s'] = {float(declared):g} s, but the time coordinate steps by "
                        f"{step_s:g} s; correct or remove the attribute")
    return where, ydim, xdim, step_s


def _cell_codes(source: xr.Dataset, ydim: str, xdim: str, land_cover: xr.DataArray | None) -> np.ndarray:
    """(ny, nx) land-cover codes: ``land_cover``'s (IGBP numbering or CF flag_meanings), else the
    class in ``source.attrs["igbp"]`` for every cell, or "" (unknown: the LaD default class)."""
    if land_cover is not None:
        if set(land_cover.dims) != {ydim, xdim}:
            raise DataError(f"{source.encoding.get('source', '<grid>')}: land_cover has dims {land_cover.dims}; "
                            f"expected the grid's ({ydim}, {xdim}), one class per cell")
        return land_cover_codes(np.asarray(land_cover.transpose(ydim, xdim).values), dict(land_cover.attrs))
    return np.full((source.sizes[ydim], source.sizes[xdim]), str(source.attrs.get("igbp", "") or ""), object)


#: where a streamed grid's static attributes are looked for (the refusal says so)
STATIC_SOURCES = {
    "latitude": "a latitude coordinate (lat, latitude or XLAT; 1-D or (y, x)) or attrs['latitude']",
    "igbp": "a (y, x) land-cover index field (land_cover=...; `hybridlsm predict` takes the grid's own "
            "land_cover variable) or attrs['igbp']",
}  # fmt: skip


def _static_fields(source: xr.Dataset, ydim: str, xdim: str, where: str, names: Sequence[str],
                   codes: np.ndarray) -> dict[str, np.ndarray]:
    """(ny, nx) fields of the static attributes ``names`` the model's networks take (climate
    summaries excepted: they come from the forcing); a DataError names an attribute the grid gives
    for no cell. Canopy and measurement heights always have one: the class defaults."""
    fields = grid_static_fields(source, ydim, xdim)
    for name in names:
        if name in CLIMATE_SUMMARIES or name in ("canopy_height", "measurement_height"):
            continue
        given = codes != "" if name == "igbp" else np.isfinite(fields[name])
        if not given.any():
            expected = STATIC_SOURCES.get(name, f"a (y, x) variable {name!r} or attrs[{name!r}]")
            raise DataError(f"{where}: the model's networks take the static attribute {name!r} (static_inputs), "
                            f"which the grid does not give: expected {expected}; the grid has variables "
                            f"{sorted(map(str, source.variables))}")  # fmt: skip
    return fields


def _band_climate(source: xr.Dataset, ydim: str, xdim: str, band: slice, used: np.ndarray,
                  chunks: Sequence[slice], times: np.ndarray, step_s: float, where: str) -> dict[str, np.ndarray]:
    """(columns,) climate summaries of the band's columns ``used`` over the whole record, read a
    time chunk at a time."""
    units = dict(FORCING_VARIABLES.values())
    acc = ClimateAccumulator(used.size, step_s)
    for steps in chunks:
        arrays = _read_band(source, ydim, xdim, band, steps, CLIMATE_INPUTS)
        for var in CLIMATE_INPUTS:
            _refuse_gap(arrays[var][:, used], var, units[var], times[steps], where,
                        lambda c: f"cell {int(used[c])} of rows {band.start}-{band.stop - 1} (flat within the band)",
                        "the climate summaries (static_inputs) need gap-free forcing")  # fmt: skip
        acc.add(times[steps], *(arrays[var][:, used] for var in CLIMATE_INPUTS))
    return acc.summaries()


def _per_cell(value, band: slice, cells: np.ndarray):
    """A height for the band's columns: a (ny, nx) field's values at ``cells``, or the scalar as it is."""
    return np.asarray(value)[band].ravel()[cells] if np.ndim(value) == 2 else value


def _new_store(store: str | Path) -> Path:
    store = Path(store)
    if store.exists():
        raise FileExistsError(f"{store} exists; streamed outputs go to a new store (nothing is replaced)")
    return store


@contextmanager
def _removed_on_failure(store: Path) -> Iterator[None]:
    """Remove ``store`` when the block fails (a gap found part-way, an interrupt): no
    half-written store is left."""
    try:
        yield
    except BaseException:
        shutil.rmtree(store, ignore_errors=True)
        raise


def _write_region(store: Path, blocks: dict[str, np.ndarray], ydim: str, xdim: str, steps: slice, rows: slice,
                  nx: int) -> None:
    """Write ``blocks`` (name: (steps, rows, nx) array) into the store's region."""
    data = {k: (("time", ydim, xdim), v) for k, v in blocks.items()}
    xr.Dataset(data).to_zarr(store, region={"time": steps, ydim: rows, xdim: slice(0, nx)})


def _read_band(source: xr.Dataset, ydim: str, xdim: str, rows: slice, steps: slice,
               variables: Sequence[str] = tuple(v for v, _ in FORCING_VARIABLES.values()),
               dtype=float) -> dict[str, np.ndarray]:
    """The band's ``variables`` over ``steps``, each (T, cells of the band in C order) of ``dtype``."""
    out = {}
    for var in variables:
        values = np.asarray(source[var].isel({"time": steps, ydim: rows}).transpose("time", ydim, xdim).values, dtype)
        out[var] = values.reshape(values.shape[0], -1)
    return out


def _refuse_gap(values: np.ndarray, var: str, unit: str, times: np.ndarray, where: str, cell, why: str) -> None:
    """A DataError naming ``var``, the cell (``cell(column index)``: its description) and the time
    of the first non-finite value of ``values`` (T, columns), if any; ``why`` ends the message."""
    bad = ~np.isfinite(values)
    if bad.any():
        t, c = np.argwhere(bad)[0]
        raise DataError(f"{where}: forcing {var!r} [{unit}] is missing at {cell(int(c))}, time {times[t]}; {why}")


def _band_columns(spin: dict[str, np.ndarray], times: np.ndarray, rows: slice, nx: int, where: str,
                  masked: np.ndarray | None = None) -> tuple[np.ndarray, int, str | None]:
    """The band's columns (flat indices in C order) by ``domain_from_grid``'s rules over the
    spin-up steps ``spin`` (``_read_band``): a cell outside the grid's ``mask`` (``masked``, flat) or
    without any forcing (sea) is not one; a cell that lacks a variable at every step but has others
    is not one either: their number and the first of them with what it lacks are returned beside the
    columns, for one DataWarning over all bands (``_warn_lacking``), or where the grid has a mask
    (which says they are modelled) a DataError; in every other cell a gap, or an
    infinite value, is a DataError naming the variable, cell and time (never a cell silently left out)."""

    def cell(c: int) -> str:
        return f"cell (y={rows.start + c // nx}, x={c % nx})"

    n = next(iter(spin.values())).shape[1]
    has_mask = masked is not None
    masked = np.zeros(n, bool) if masked is None else np.asarray(masked, bool)
    given = {var: ~np.isnan(a) for var, a in spin.items()}
    lacks = np.any([~g.any(axis=0) for g in given.values()], axis=0) | masked  # not a column: no gap to refuse
    for var, a in spin.items():
        infinite = np.isinf(a) & ~masked
        if infinite.any():
            t, c = np.argwhere(infinite)[0]
            raise DataError(f"{where}: forcing {var!r} is infinite at {cell(int(c))}, time {times[t]} (an overflow, "
                            "e.g. of a float16 variable?)")
        partial = given[var].any(axis=0) & ~given[var].all(axis=0) & ~lacks
        if partial.any():
            c = int(np.argmax(partial))
            t = int(np.argmax(~given[var][:, c]))
            raise DataError(f"{where}: forcing {var!r} is missing at {cell(c)}, time {times[t]} (the first "
                            f"{len(times)} steps, the spin-up, decide which cells are columns: a cell is one where its "
                            "forcing is complete, not one where it is absent); the model needs gap-free forcing")
    some = np.any([g.any(axis=0) for g in given.values()], axis=0)
    lacking = some & lacks & ~masked
    first = None
    if lacking.any():
        c = int(np.argmax(lacking))
        first = f"{cell(c)}: {', '.join(var for var, g in given.items() if not g[:, c].any())}"
        if has_mask:  # as domain_from_grid: the grid says they are land
            raise DataError(f"{where}: {int(lacking.sum())} cell(s) of the band lack some forcing at every step of the "
                            f"spin-up while they have other forcing, e.g. {first}, and the grid's mask marks them as "
                            "modelled cells; give the variable or mask the cells out (mask 0)")
    return np.flatnonzero(~lacks), int(lacking.sum()), first


def _warn_lacking(where: str, counts: Sequence[tuple[int, str | None]]) -> None:
    """One DataWarning for the cells of all bands that lack a forcing variable throughout the
    spin-up (``_band_columns``'s counts and first cells, in band order), not one per band."""
    n = sum(k for k, _ in counts)
    if n:
        first = next(f for k, f in counts if k)
        warnings.warn(f"{where}: {n} cell(s) lack some forcing at every step of the spin-up (first {first}); they are "
                      "not modelled (no output there)", DataWarning, stacklevel=3)


def _band_forcing(arrays: dict[str, np.ndarray], cells: np.ndarray, times: np.ndarray, rows: slice, step_s: float,
                  dtype, where: str) -> Forcing:
    """The ``Forcing`` of the band's columns ``cells`` (flat indices within the band) from
    ``_read_band``'s arrays; a gap or a value outside the variable's physically possible range is a
    DataError naming the variable, cell and time."""
    def cell(c: int) -> str:
        return f"cell {int(cells[c])} of rows {rows.start}-{rows.stop - 1} (flat within the band, C order)"

    fields = {}
    for field, (var, unit) in FORCING_VARIABLES.items():
        values = arrays[var][:, cells]
        _refuse_gap(values, var, unit, times, where, cell, "the model needs gap-free forcing")
        refuse_out_of_range(var, values, where, lambda i: f"{cell(i[1])}, time {times[i[0]]}")
        fields[field] = jnp.asarray(values, dtype=dtype)
    return Forcing(**fields, time_step_s=step_s)


def _template(source: xr.Dataset, ydim: str, xdim: str, outputs: Sequence[str], time_chunk: int, rows: int,
              columns: np.ndarray | None) -> xr.Dataset:
    """The output store's metadata over ``source``'s steps (those written). ``columns``: (ny, nx)
    bool of the cells that are columns, whose offset from UTC the time axis takes (None: not known
    yet; ``_record_utc_offset`` adds it)."""
    import dask.array as da

    shape = (source.sizes["time"], source.sizes[ydim], source.sizes[xdim])
    chunks = (time_chunk, rows, shape[2])
    coords = {k: source[k] for k in ("time", ydim, xdim) if k in source.coords}
    # units and sign conventions as the netCDF outputs have them, and what the time axis is: the
    # offset from UTC its columns share, from a (y, x) field or the attrs, as in memory
    offsets = grid_static_fields(source, ydim, xdim)["utc_offset_h"][columns] if columns is not None else []
    time = time_axis_attrs(source.attrs.get("time_convention"), offsets)
    return xr.Dataset({k: (("time", ydim, xdim), da.full(shape, np.nan, dtype=np.float32, chunks=chunks),
                           variable_attrs(k)) for k in outputs}, coords=coords, attrs=time)  # fmt: skip


def check_streamable(model: ColumnModel) -> None:
    """Refuse (``StreamingUnsupported``) a column model that cannot run in time chunks."""
    if model.dynamic_net is not None:
        raise StreamingUnsupported("a model with a sequence network (hybrid_lstm) sees the whole record at once and "
                                   "cannot be streamed in time chunks; use `hybridlsm predict` on files that fit "
                                   "in memory")  # fmt: skip


def stream_column_model(model: ColumnModel, source: xr.Dataset | str | Path, store: str | Path, *,
                        outputs: Sequence[str] = STREAM_OUTPUTS, time_chunk: int = 720,
                        cells_per_block: int = 4096, spinup_days: float = 30.0,
                        land_cover: xr.DataArray | None = None, canopy_height: float | None = None,
                        measurement_height: float | None = None, progress: bool = True, attrs: dict | None = None,
                        write_from: int = 0) -> Path:
    """Run ``model`` over the lazily read grid ``source`` into the zarr store ``store`` (module
    docstring); returns the store's path.

    Args:
        source: canonical variables Tair, Qair, Psurf, Wind, SWdown, LWdown, Precip on
            (time, y, x); ``attrs["time_step_s"]`` or a regular ``time`` coordinate (a Dataset
            read lazily, or the path of a zarr store or netCDF file: ``open_grid``)
        outputs: the (T, N) outputs to write (float32)
        time_chunk: steps per chunk (also the store's time chunk)
        cells_per_block: at most this many cells per band (whole rows; at least one row)
        spinup_days: length of the forcing each band's spin-up cycles
        land_cover: (y, x) index field (IGBP numbering or CF flag_meanings); None: the class in
            ``source.attrs["igbp"]`` for every cell, or unknown (the LaD default class)
        canopy_height, measurement_height: for every cell (None: the grid's (y, x) field or attrs of that
            name, else the class defaults)
        write_from: the first step whose outputs are written (the store holds the steps from it on);
            the steps before it are a lead-in, run to carry the state (``hybridlsm predict --start``
            runs the record before the period, as for a file in memory)
    """
    from rich.progress import Progress

    check_streamable(model)
    store = _new_store(store)
    source = open_grid(source)
    where, ydim, xdim, step_s = _grid_setup(source, [v for v, _ in FORCING_VARIABLES.values()])
    ny, nx, nt = source.sizes[ydim], source.sizes[xdim], source.sizes["time"]
    if not 0 <= write_from < nt:
        raise ValueError(f"stream_column_model: write_from {write_from} outside the source's {nt} steps")
    rows = max(1, min(ny, cells_per_block // nx))
    spin_steps = max(1, min(nt, int(round(spinup_days * 86400.0 / step_s))))
    codes = _cell_codes(source, ydim, xdim, land_cover)
    inside = grid_mask(source, ydim, xdim, where)  # as domain_from_grid reads it
    outside = None if inside is None else ~inside
    fields = _static_fields(source, ydim, xdim, where, model.static_inputs, codes)  # before the store is created
    if canopy_height is None:  # the grid's own, as in memory (``domain_from_grid``); NaN: the class default
        canopy_height = fields["canopy_height"]
    if measurement_height is None:
        measurement_height = fields["measurement_height"]
    dtype = jnp.zeros(0).dtype
    outputs = tuple(outputs)
    template = _template(source.isel(time=slice(write_from, None)), ydim, xdim, outputs, time_chunk, rows, None)
    template.attrs.update(attrs or {}, time_chunk=time_chunk, rows_per_band=rows, spinup_days=spinup_days)
    # zarr format 2: consolidated metadata, read by every zarr and xarray version
    template.to_zarr(store, compute=False, mode="w-", zarr_format=2)  # metadata only; each band fills its region
    bands = [slice(r, min(r + rows, ny)) for r in range(0, ny, rows)]
    # the lead-in's chunks, then the written steps' (aligned with the store's time chunks)
    chunks = ([slice(t, min(t + time_chunk, write_from)) for t in range(0, write_from, time_chunk)]
              + [slice(t, min(t + time_chunk, nt)) for t in range(write_from, nt, time_chunk)])
    run_chunk = _chunk_runner(model)
    times = source["time"].values
    lacking: list[tuple[int, str | None]] = []  # per band: cells lacking a variable, the first of them
    columns = np.zeros((ny, nx), bool)  # the cells found to be columns, band by band

    def run_band(band: slice, advance) -> None:
        n_rows = band.stop - band.start
        spin = _read_band(source, ydim, xdim, band, slice(0, spin_steps))  # read once: columns and spin-up
        used, n_lacking, first = _band_columns(spin, times[:spin_steps], band, nx, where,
                                               None if outside is None else outside[band].ravel())
        lacking.append((n_lacking, first))
        columns[band] = np.isin(np.arange(n_rows * nx), used).reshape(n_rows, nx)
        if used.size == 0:  # nothing but sea or masked cells: the template's NaN stay
            advance(len(chunks))
            return
        cells = np.resize(used, rows * nx)  # every band the same columns (repeats, not written): one compilation
        classes = [column_igbp(str(c), f"{where} cell {i}")[0] for i, c in enumerate(codes[band].ravel()[cells])]
        params = default_params(classes, canopy_height=_per_cell(canopy_height, band, cells),
                                measurement_height=_per_cell(measurement_height, band, cells))  # fmt: skip
        base = {k: jnp.asarray(v, dtype=dtype) for k, v in params.items()}
        ids = [f"y{band.start + int(c) // nx}_x{int(c) % nx}" for c in cells]
        base, _ = model.with_site_weights(base, ids, classes)
        if model.static_inputs:
            static = {k: v[band].ravel()[cells] for k, v in fields.items()}
            static["igbp"] = codes[band].ravel()[cells]
            if any(k in CLIMATE_SUMMARIES for k in model.static_inputs):
                climate = _band_climate(source, ydim, xdim, band, used, chunks, times, step_s, where)
                static.update({k: np.resize(v, cells.size) for k, v in climate.items()})  # as cells repeats used
            base = model.with_static(base, static, [f"{where} cell {i}" for i in ids])
        state = model.spun_up_state(_band_forcing(spin, cells, times, band, step_s, dtype, where), base)
        for steps in chunks:
            forcing = _band_forcing(_read_band(source, ydim, xdim, band, steps), cells, times[steps], band, step_s,
                                    dtype, where)
            state, out = run_chunk(forcing, base, state, outputs)
            if steps.start < write_from:  # the lead-in: its state carries on, its outputs are not wanted
                advance(1)
                continue
            n = steps.stop - steps.start
            block = {}
            for k in outputs:
                full = np.full((n, n_rows * nx), np.nan, np.float32)
                full[:, used] = np.asarray(out[k][:, : used.size], np.float32)
                block[k] = full.reshape(n, n_rows, nx)
            _write_region(store, block, ydim, xdim, slice(steps.start - write_from, steps.stop - write_from), band, nx)
            advance(1)

    with _removed_on_failure(store), Progress(disable=not progress) as bar:
        job = bar.add_task(f"streaming {ny}x{nx} cells, {nt} steps", total=len(bands) * len(chunks))
        for band in bands:
            run_band(band, lambda k: bar.advance(job, k))
        _record_utc_offset(store, fields["utc_offset_h"][columns])
    _warn_lacking(where, lacking)
    return store


def _record_utc_offset(store: Path, offsets: np.ndarray) -> None:
    """Add the offset from UTC that the columns share (``offsets``) to a written store's attributes,
    as the in-memory outputs have it (``time_axis_attrs``; none where they differ or none is known)."""
    import zarr

    value = time_axis_attrs(None, offsets).get("utc_offset_h")
    if value is None:
        return
    zarr.open_group(store, mode="r+", zarr_format=2).attrs["utc_offset_h"] = value
    zarr.consolidate_metadata(store, zarr_format=2)
