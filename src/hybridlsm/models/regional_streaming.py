"""Regional grids beyond memory: a ``RegionalModel`` streamed through a lazily read gridded forcing.

``stream_regional`` runs the gridded regional model (``physics.regional``: LaD columns coupled
through a finite-volume air layer) over a canonical dataset on ``(time, y, x)`` read lazily
(``models.streaming.open_grid``: xarray with dask). Unlike ``stream_column_model``, the air layer
couples neighbouring cells, so the grid cannot be cut into bands of rows: the run streams chunks of
``time_chunk`` steps of the *whole* grid,

- reading only that chunk's forcing (the seven column variables and the wind components
  ``Wind_E``, ``Wind_N``), carrying the ``RegionalState`` from one chunk to the next, so the result
  equals one rollout over the whole record (to rounding);
- writing each chunk's outputs (default ``REGIONAL_STREAM_OUTPUTS``) to the zarr store as soon as
  they are computed (a region write of the chunk's steps; store chunks aligned with these writes).

Peak memory is set by ``ny x nx x time_chunk`` (forcing and outputs of one chunk), not by the
record length. Before the first chunk, one lazy dask pass over ``Tair``, ``Wind_E`` and ``Wind_N``
finds what an in-memory run takes from the whole record:

- the strongest wind, which sets the air layer's transport sub-steps for the whole record (explicit
  advection is unstable above its Courant limit), as ``RegionalModel.for_forcing`` does;
- each cell's mean air temperature, where ``LaDModel.init_state`` puts every soil layer; the
  initial state is ``model.init_state`` of a one-step forcing holding that mean, with the air layer
  then set to the first step's air, as ``RegionalModel.init_state`` of the whole record gives it
  (exactly so for LaD columns, whose initial state depends on the forcing only through that mean).

Every cell is a column under the air layer, so the regional grid must be complete: a non-finite
value of any forcing variable in any cell (sea, a gap) is a DataError naming the variable, the cell
and the time, and a cell the grid's ``mask`` marks 0 (``grid_mask``) one naming the cell. A cell whose Tair is missing anywhere (sea) is refused by that first pass,
before the store is created; a gap in another variable when its chunk is read, and a run that
fails part-way removes the store it created (as ``stream_column_model`` does; an existing store is
never replaced). Spin-up is the caller's (``state0``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import xarray as xr

from ..data.gridded import grid_axis_signs
from ..data.schema import DataError
from ..domain.build import grid_mask
from ..physics import FORCING_VARIABLES, Forcing, default_params, simulate
from ..physics.air_layer import transport_substeps
from ..physics.exchange import KH_MAX
from ..physics.regional import GridForcing, RegionalModel
from .column import column_igbp
from .streaming import (
    _cell_codes,
    _grid_setup,
    _new_store,
    _read_band,
    _refuse_gap,
    _removed_on_failure,
    _template,
    _write_region,
    open_grid,
)

__all__ = ["REGIONAL_STREAM_OUTPUTS", "WIND_VARIABLES", "grid_params", "stream_regional"]

#: outputs written by default (every (T, N) output of the regional model may be asked for)
REGIONAL_STREAM_OUTPUTS = ("Qh", "Qle", "AvgSurfT", "Tair_layer", "Kh")

#: GridForcing's wind fields and the canonical variables they are read from
WIND_VARIABLES = {"wind_u": ("Wind_E", "m s-1"), "wind_v": ("Wind_N", "m s-1")}

#: a store chunk holds at most this many values (float32: 64 MiB); a chunk's write covers whole
#: store chunks of rows
STORE_CHUNK_VALUES = 1 << 24


def grid_params(source: xr.Dataset | str | Path, land_cover: xr.DataArray | None = None, *,
                canopy_height: float | None = None, measurement_height: float | None = None) -> dict:
    """Default LaD parameters of every cell of the grid, (ny * nx,) arrays in C order, by each
    cell's land-cover class: ``land_cover`` (a (y, x) index field, IGBP numbering or CF
    flag_meanings), by default the source's own ``land_cover`` field where it has one, else the class
    in ``source.attrs["igbp"]``, else unknown (the LaD default class). A class without LaD
    parameters (water) is a DataError naming the cell."""
    source = open_grid(source)
    where, ydim, xdim, _ = _grid_setup(source, [FORCING_VARIABLES["t_air"][0]])
    if land_cover is None and "land_cover" in source.variables:
        land_cover = source["land_cover"]
    codes = _cell_codes(source, ydim, xdim, land_cover)
    nx = codes.shape[1]
    classes = [column_igbp(str(c), f"{where} cell {i} (y index {i // nx}, x index {i % nx})")[0]
               for i, c in enumerate(codes.ravel())]  # fmt: skip
    return default_params(classes, canopy_height=canopy_height, measurement_height=measurement_height)


def _record_summary(source: xr.Dataset, ydim: str, xdim: str) -> tuple[float, float, np.ndarray]:
    """The largest |Wind_E| and |Wind_N| over the whole record [m s-1] (missing values skipped:
    they are refused chunk by chunk) and each cell's mean Tair [K], (ny * nx,) in C order, NaN
    where Tair is missing at any step; one lazy dask pass, chunk by chunk."""
    import dask

    u, v = (abs(source[var]).max(skipna=True) for var, _ in WIND_VARIABLES.values())
    t_air = source[FORCING_VARIABLES["t_air"][0]].astype(np.float64).mean("time", skipna=False)
    u, v, t_mean = dask.compute(u, v, t_air.transpose(ydim, xdim))
    u, v = (float(w) if np.isfinite(w) else 0.0 for w in (u, v))  # all missing: refused when read
    return u, v, np.asarray(t_mean.values, np.float64).ravel()


def _initial_state(model: RegionalModel, params: dict, first: GridForcing, t_mean):
    """``model.init_state`` of the whole record, from its first chunk and each cell's mean Tair
    (module docstring)."""
    col = first.column
    one = replace(col, **{f: getattr(col, f)[0] for f in FORCING_VARIABLES if f != "t_air"}, t_air=t_mean)
    state = model.init_state(params, GridForcing(one, first.wind_u[0], first.wind_v[0]))
    return replace(state, air_temp=col.t_air[0], air_humidity=col.q_air[0])


def _grid_forcing(arrays: dict[str, np.ndarray], step_s: float, dtype,
                  signs: tuple[float, float] = (1.0, 1.0)) -> GridForcing:
    """``signs``: (east, north) of ``data.gridded.grid_axis_signs``, the wind along increasing index."""
    column = Forcing(**{f: jnp.asarray(arrays[var], dtype) for f, (var, _) in FORCING_VARIABLES.items()},
                     time_step_s=step_s)  # fmt: skip
    winds = {f: jnp.asarray(sign * arrays[var], dtype) for sign, (f, (var, _)) in zip(signs, WIND_VARIABLES.items())}
    return GridForcing(column, **winds)


def stream_regional(model: RegionalModel, params: dict | None, source: xr.Dataset | str | Path,
                    store: str | Path, *, time_chunk: int = 240, outputs: Sequence[str] = REGIONAL_STREAM_OUTPUTS,
                    progress: bool = True, state0=None, kh_max: float = KH_MAX, attrs: dict | None = None) -> Path:
    """Run the regional ``model`` over the lazily read grid ``source`` into the zarr store
    ``store`` (module docstring); returns the store's path.

    Args:
        model: a ``RegionalModel`` whose air layer has the grid's shape (ny, nx) (its cell size,
            depth, boundary are the model's); its transport sub-steps are raised to what the
            source's strongest wind and diffusion up to ``kh_max`` need (never lowered)
        params: (ny * nx,) arrays in C order (``grid_params``); None: ``grid_params(source)``
        source: canonical Tair, Qair, Psurf, Wind, SWdown, LWdown, Precip and the wind components
            Wind_E, Wind_N on (time, y, x), every value finite (a Dataset read lazily, or the
            path of a zarr store or netCDF file); ``attrs["time_step_s"]`` or a regular ``time``
        store: a new zarr store (format 2) for the outputs on (time, y, x), float32
        time_chunk: steps per chunk (also the store's time chunk): memory ~ ny nx time_chunk
        outputs: the (T, N) outputs to write
        state0: the state to start from (a ``RegionalState``; default: as ``model.init_state`` of
            the whole record, module docstring)
    """
    from rich.progress import Progress

    if not isinstance(model, RegionalModel):
        raise TypeError(f"stream_regional runs a RegionalModel, not {type(model).__name__}; column models stream "
                        "with models.streaming.stream_column_model")  # fmt: skip
    store = _new_store(store)
    source = open_grid(source)
    variables = [v for v, _ in FORCING_VARIABLES.values()] + [v for v, _ in WIND_VARIABLES.values()]
    where, ydim, xdim, step_s = _grid_setup(source, variables)
    ny, nx, nt = source.sizes[ydim], source.sizes[xdim], source.sizes["time"]
    if tuple(model.air.shape) != (ny, nx):
        raise ValueError(f"{where}: the grid is {ny} x {nx} ({ydim}, {xdim}) but the model's air layer is "
                         f"{model.air.shape[0]} x {model.air.shape[1]}")  # fmt: skip
    if time_chunk < 1:
        raise ValueError(f"time_chunk {time_chunk}: expected at least one step")
    if params is None:
        params = grid_params(source)
    dtype = jnp.zeros(0).dtype
    params = {k: jnp.asarray(v, dtype) if jnp.issubdtype(jnp.asarray(v).dtype, jnp.floating) else v
              for k, v in params.items()}  # fmt: skip
    for k, v in params.items():
        if jnp.shape(v)[:1] != (ny * nx,):
            raise ValueError(f"parameter {k!r} has shape {jnp.shape(v)}; expected ({ny * nx},): one value per cell")
    located = ydim in source.coords and xdim in source.coords
    ys, xs = (source[ydim].values, source[xdim].values) if located else (None, None)

    def cell(c: int) -> str:
        iy, ix = divmod(c, nx)
        at = f": {ydim}={ys[iy]}, {xdim}={xs[ix]}" if located else ""
        return f"cell {c} (y index {iy}, x index {ix}{at}; flat in C order)"

    complete = ("the regional grid must be complete: the air layer couples every cell, so a regional run takes no "
                "sea, masked or missing cells")  # fmt: skip
    inside = grid_mask(source, ydim, xdim, where)
    if inside is not None and not inside.all():
        c = int(np.flatnonzero(~inside.ravel())[0])
        raise DataError(f"{where}: {int((~inside).sum())} cell(s) are masked out (mask 0), e.g. {cell(c)}; {complete}")
    u_max, v_max, t_mean = _record_summary(source, ydim, xdim)
    if not np.isfinite(t_mean).all():  # the first gap of the first such cell, read from that cell alone
        c = int(np.flatnonzero(~np.isfinite(t_mean))[0])
        var, unit = FORCING_VARIABLES["t_air"]
        series = np.asarray(source[var].isel({ydim: c // nx, xdim: c % nx}).values, float)
        _refuse_gap(series[:, None], var, unit, source["time"].values, where, lambda _: cell(c), complete)
    a = model.air
    n_sub = transport_substeps(np.array([u_max]), np.array([v_max]), step_s, a.dx, a.dy, kh_max)
    model = replace(model, air=replace(a, n_substeps=max(a.n_substeps, n_sub)))
    outputs = tuple(outputs)
    times = source["time"].values
    chunks = [slice(t, min(t + time_chunk, nt)) for t in range(0, nt, time_chunk)]
    signs = grid_axis_signs(source.rename({ydim: "y", xdim: "x"}) if (ydim, xdim) != ("y", "x") else source)

    def read(steps: slice) -> GridForcing:
        arrays = _read_band(source, ydim, xdim, slice(0, ny), steps, variables, np.dtype(dtype))
        for var, unit in [*FORCING_VARIABLES.values(), *WIND_VARIABLES.values()]:
            _refuse_gap(arrays[var], var, unit, times[steps], where, cell, complete)
        return _grid_forcing(arrays, step_s, dtype, signs)

    rows = max(1, min(ny, STORE_CHUNK_VALUES // (time_chunk * nx)))
    template = _template(source, ydim, xdim, outputs, time_chunk, rows, np.ones((ny, nx), bool))  # every cell a column
    template.attrs.update(attrs or {}, time_chunk=time_chunk, transport_substeps=model.air.n_substeps,
                          max_wind_e=u_max, max_wind_n=v_max, air_layer_boundary=a.boundary, dx=a.dx, dy=a.dy,
                          air_layer_depth=a.depth, top_resistance=a.top_resistance,
                          residual_tolerance=model.residual_tolerance, max_refinements=model.max_refinements)  # fmt: skip
    template.to_zarr(store, compute=False, mode="w-", zarr_format=2)  # metadata only; each chunk fills its region
    with _removed_on_failure(store), Progress(disable=not progress) as bar:
        job = bar.add_task(f"streaming the regional model over {ny}x{nx} cells, {nt} steps", total=len(chunks))
        state = state0
        for steps in chunks:
            forcing = read(steps)
            if state is None:
                state = _initial_state(model, params, forcing, jnp.asarray(t_mean, dtype))
            state, out = simulate(model, params, forcing, state, outputs=outputs, large=True)
            del forcing
            n = steps.stop - steps.start
            _write_region(store, {k: np.asarray(out[k], np.float32).reshape(n, ny, nx) for k in outputs},
                          ydim, xdim, steps, slice(0, ny), nx)  # fmt: skip
            del out
            bar.advance(job)
    return store
