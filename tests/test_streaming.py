"""Grids beyond memory (issue 14): a column model streamed through a lazily read zarr forcing in
row bands and time chunks equals the in-memory prediction of the same grid, writes NaN where a cell
has no forcing, and refuses gaps, an existing store and a model that cannot be streamed. A hybrid
whose networks take static attributes gets each cell's from the grid (coordinates, fields, land
cover, climate summaries of its own forcing) and streams to its in-memory prediction too."""

from __future__ import annotations

import re
import shutil
import warnings

import numpy as np
import pytest
import xarray as xr

from hybridlsm.data import DataError, DataWarning
from hybridlsm.data.virtual import virtual_grid
from hybridlsm.domain import Domain
from hybridlsm.domain import domain_from_grid
from hybridlsm.models.column import predict_column_model
from hybridlsm.models.registry import get_model, validate_options
from hybridlsm.models.streaming import STREAM_OUTPUTS, stream_column_model

NY, NX, DAYS = 6, 5, 8


@pytest.fixture(scope="module")
def grid_store(tmp_path_factory):
    ds = virtual_grid(NY, NX, DAYS, step_s=1800, chunks=(96, 2, NX), seed=4)
    ds["Tair"] = ds["Tair"].where(~((ds.y == 0.0) & (ds.x == 4000.0)))  # one sea cell: no forcing at all
    path = tmp_path_factory.mktemp("grid") / "forcing.zarr"
    ds.to_zarr(path, zarr_format=2)
    return path


def _physics():
    return get_model("physics").build(validate_options("physics", {}))


@pytest.mark.slow  # two compiled rollouts of the grid (~7 s)
def test_streamed_grid_equals_the_in_memory_prediction(grid_store, tmp_path):
    src = xr.open_zarr(grid_store)
    assert src["Tair"].chunks is not None  # read lazily
    model = _physics()
    out = stream_column_model(model, src, tmp_path / "out.zarr", time_chunk=100, cells_per_block=20,
                              spinup_days=DAYS, land_cover=src["land_cover"], progress=False)  # fmt: skip
    streamed = xr.open_zarr(out)
    assert streamed.attrs["rows_per_band"] == 4 and streamed["Qle"].chunks[0][0] == 100
    domain = domain_from_grid(src.drop_vars(["land_cover", "elevation"]).load(), land_cover=src["land_cover"])
    assert domain.n_columns == NY * NX - 1
    ref = predict_column_model(model, domain, STREAM_OUTPUTS)
    iy, ix = np.unravel_index(domain.layout.cell_index, (NY, NX))
    for k in STREAM_OUTPUTS:
        values = streamed[k].values
        assert values.shape == (DAYS * 48, NY, NX)
        np.testing.assert_allclose(values[:, iy, ix], ref[k], rtol=2e-4, atol=2e-3, err_msg=k)
        assert np.isnan(values[:, 0, 4]).all()  # the sea cell
    assert np.std(streamed["Qle"].values[:, iy, ix].mean(axis=0)) > 0.5  # the cells differ


@pytest.mark.slow  # a few seconds; in make test, not test-fast
def test_a_gap_an_existing_store_and_a_sequence_model_are_refused(grid_store, tmp_path):
    src = xr.open_zarr(grid_store)
    gappy = src.copy()
    gappy["Wind"] = src["Wind"].where(src["time"] != src["time"][300])
    with pytest.raises(DataError, match=r"'Wind'.*2021-01-07T06:00"):
        stream_column_model(_physics(), gappy, tmp_path / "gap.zarr", time_chunk=96, cells_per_block=10,
                            spinup_days=2, progress=False)  # fmt: skip
    (tmp_path / "taken.zarr").mkdir()
    with pytest.raises(FileExistsError, match="taken.zarr"):
        stream_column_model(_physics(), src, tmp_path / "taken.zarr", progress=False)
    lstm = get_model("hybrid_lstm").build(validate_options("hybrid_lstm", {"hidden_size": 4}))
    with pytest.raises(ValueError, match="sequence network"):
        stream_column_model(lstm, src, tmp_path / "lstm.zarr", progress=False)
    static = get_model("hybrid_param").build(validate_options("hybrid_param", {"static_inputs": ["latitude"]}))
    with pytest.raises(DataError, match=r"static attribute 'latitude'.*expected a latitude coordinate"):
        stream_column_model(static, src, tmp_path / "static.zarr", progress=False)  # the grid has y, x in metres
    assert not any(tmp_path.glob("*.zarr")) or sorted(p.name for p in tmp_path.glob("*.zarr")) == ["taken.zarr"]


def test_a_gap_or_an_overflow_in_the_spin_up_and_a_bad_time_axis_are_refused(grid_store, tmp_path):
    """A cell with a gap in the spin-up steps was silently left out (NaN outputs, exit 0), a float16
    overflow (inf) left out every cell, and the time axis was never checked (a duplicate time was
    a ZeroDivisionError, a wrong time_step_s attribute was trusted)."""
    src = xr.open_zarr(grid_store)
    gappy = src.copy()
    gappy["Tair"] = src["Tair"].where(~((src.y == 2000.0) & (src.x == 1000.0) & (src["time"] == src["time"][10])))
    with pytest.raises(DataError, match=r"forcing 'Tair' is missing at cell \(y=2, x=1\), time 2021-01-01T05:00.* "
                                        r"spin-up, decide which cells are columns"):
        stream_column_model(_physics(), gappy, tmp_path / "a.zarr", spinup_days=2, progress=False)
    overflow = src.copy()
    overflow["Psurf"] = src["Psurf"].where(src["time"] != src["time"][3], np.inf)
    with pytest.raises(DataError, match=r"forcing 'Psurf' is infinite at cell \(y=0, x=0\)"):
        stream_column_model(_physics(), overflow, tmp_path / "b.zarr", spinup_days=2, progress=False)
    times = src["time"].values.copy()
    times[1] = times[0]
    with pytest.raises(DataError, match=r"time is not sorted: .* \(index 1\)"):
        stream_column_model(_physics(), src.assign_coords(time=times), tmp_path / "c.zarr", progress=False)
    with pytest.raises(DataError, match=r"attrs\['time_step_s'\] = 3600 s, but the time coordinate steps by 1800 s"):
        stream_column_model(_physics(), src.assign_attrs(time_step_s=3600.0), tmp_path / "d.zarr", progress=False)
    # as in memory: a cell outside the mask, or one without some variable throughout (sea), is no
    # column, whatever its other variables hold; only a column's gap is refused
    # (the fixture's cell without Tair, (y=0, x=4), masked out too: the grid's mask says a cell
    # lacking a variable is modelled, a DataError as in memory)
    mask = np.where(((src.y == 2000.0) & (src.x == 1000.0)) | ((src.y == 0.0) & (src.x == 4000.0)), 0, 1)
    with pytest.raises(DataError, match=r"1 cell\(s\) of the band lack some forcing .* cell \(y=0, x=4\): Tair, and the "
                                        r"grid's mask marks them as modelled cells"):
        only_the_gap = np.where((src.y == 2000.0) & (src.x == 1000.0), 0, 1)
        stream_column_model(_physics(), gappy.assign_coords(mask=(("y", "x"), only_the_gap)), tmp_path / "f.zarr",
                            spinup_days=1, progress=False)
    masked = gappy.assign_coords(mask=(("y", "x"), mask))
    sea = gappy.copy()
    sea["Wind"] = src["Wind"].where(~((src.y == 2000.0) & (src.x == 1000.0)) & ~((src.y == 5000.0) & (src.x == 3000.0)))
    # the time axis's offset from UTC from a (y, x) field, as in memory: the columns', not the masked
    # or sea cells'
    for grid, not_columns in ((masked, [4, 11]), (sea, [4, 11, 28])):
        grid["utc_offset_h"] = (("y", "x"), np.where(np.isin(np.arange(NY * NX).reshape(NY, NX), not_columns), 5.0, -6.0))
    for name, grid in (("masked", masked), ("sea", sea)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = stream_column_model(_physics(), grid.isel(time=slice(0, 96)).assign_attrs(time_convention="start"),
                                      tmp_path / f"{name}.zarr", spinup_days=1, cells_per_block=10,
                                      progress=False)  # three bands of two rows
        # units, sign conventions and the time axis as the netCDF outputs say them
        assert xr.open_zarr(out)["Qle"].attrs == {"units": "W m-2", "long_name": "latent heat flux (positive upward)"}
        assert xr.open_zarr(out).attrs["time_convention"] == "start"
        assert xr.open_zarr(out).attrs["utc_offset_h"] == -6.0
        lacking = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
        # one warning for the cells that lack a variable in all bands (the fixture's cell without Tair,
        # and two without Wind, in three bands), not one per band
        assert len(lacking) == (name == "sea"), lacking
        assert name == "masked" or re.search(r"3 cell\(s\) lack some forcing at every step of the spin-up \(first cell "
                                             r"\(y=0, x=4\): Tair\)", lacking[0]), lacking
        assert np.isnan(xr.open_zarr(out)["Qle"].values[:, 0, 4]).all()
        assert np.isnan(xr.open_zarr(out)["Qle"].values[:, 5, 3]).all() == (name == "sea")
        assert np.isnan(xr.open_zarr(out)["Qle"].values[:, 2, 1]).all(), name
        assert np.isfinite(xr.open_zarr(out)["Qle"].values[:, 2, 2]).all(), name
        shutil.rmtree(out)
    odd = src["land_cover"].rename({"y": "a", "x": "b"})
    with pytest.raises(DataError, match=r"land_cover has dims \('a', 'b'\); expected the grid's \(y, x\)"):
        stream_column_model(_physics(), src, tmp_path / "e.zarr", land_cover=odd, progress=False)
    assert not any(tmp_path.glob("*.zarr"))  # nothing left behind


# ------------------------------------------------------------------------ static attributes

#: every kind of source: a coordinate, a (y, x) field, the land cover, the climate summaries
#: (two calendar months: temperature seasonality is defined), a height (the class default)
STATIC = ["latitude", "elevation", "igbp", "canopy_height", "mean_annual_temperature", "aridity_index",
          "temperature_seasonality"]
SNY, SNX, SDAYS = 7, 4, 6


@pytest.fixture(scope="module")
def static_store(tmp_path_factory):
    ds = virtual_grid(SNY, SNX, SDAYS, step_s=1800, chunks=(96, 3, SNX), seed=11, start="2021-01-28")
    lat = 35.0 + 0.5 * np.arange(SNY)[:, None] + 0.1 * np.arange(SNX)[None, :]
    ds = ds.assign_coords(lat=(("y", "x"), lat))
    ds["Tair"] = ds["Tair"].where(~((ds.y == 3000.0) & (ds.x == 1000.0)))  # a sea cell
    path = tmp_path_factory.mktemp("static") / "forcing.zarr"
    ds.to_zarr(path, zarr_format=2)
    return path


def _static_hybrid():
    import equinox as eqx
    import jax

    model = get_model("hybrid_param").build(validate_options("hybrid_param", {"static_inputs": STATIC, "width": 8}))
    # larger random weights than the initialisation's (the matrices only: the (29,) input scalings
    # stay), so that every static input moves the fluxes
    leaves, tree = jax.tree_util.tree_flatten(model.land)
    keys = iter(jax.random.split(jax.random.key(3), len(leaves)))
    land = jax.tree_util.tree_unflatten(tree, [x + 0.3 * jax.random.normal(next(keys), x.shape, x.dtype)
                                               if eqx.is_inexact_array(x) and x.ndim == 2 else x for x in leaves])
    return eqx.tree_at(lambda m: m.land, model, land)


@pytest.mark.slow  # two compiled hybrid rollouts of the grid (~20 s)
def test_a_hybrid_with_static_inputs_streams_to_its_in_memory_prediction(static_store, tmp_path):
    src = xr.open_zarr(static_store)
    model = _static_hybrid()
    out = stream_column_model(model, src, tmp_path / "out.zarr", time_chunk=100, cells_per_block=12,
                              spinup_days=SDAYS, land_cover=src["land_cover"], progress=False)  # fmt: skip
    streamed = xr.open_zarr(out)
    assert streamed.attrs["rows_per_band"] == 3  # bands of 3, 3 and 1 rows: a short last band
    domain = domain_from_grid(src.load())
    assert domain.n_columns == SNY * SNX - 1
    assert np.all(domain.static["climate_months"].values == 2)
    ref = predict_column_model(model, domain, STREAM_OUTPUTS)
    iy, ix = np.unravel_index(domain.layout.cell_index, (SNY, SNX))
    for k in STREAM_OUTPUTS:
        assert np.isfinite(ref[k]).all(), k
        np.testing.assert_allclose(streamed[k].values[:, iy, ix], ref[k], rtol=1e-5, atol=1e-4, err_msg=k)
    assert np.isnan(streamed["Qle"].values[:, 3, 1]).all()  # the sea cell
    # the static inputs matter: the climate summary alone moved by 1 K moves Qle by far more than the tolerance
    static = domain.static.assign(mean_annual_temperature=domain.static["mean_annual_temperature"] + 1.0)
    moved = predict_column_model(model, Domain(domain.data, static, domain.layout, domain.name), ("Qle",))
    assert np.max(np.abs(moved["Qle"] - ref["Qle"])) > 1.0


def test_a_static_input_the_grid_does_not_give_is_refused_before_writing(static_store, tmp_path):
    src = xr.open_zarr(static_store).drop_vars("elevation")
    model = get_model("hybrid_param").build(validate_options("hybrid_param", {"static_inputs": ["elevation"]}))
    with pytest.raises(DataError, match=r"forcing.zarr: .*static attribute 'elevation'.*a \(y, x\) variable "
                                        r"'elevation' or attrs\['elevation'\]"):
        stream_column_model(model, src, tmp_path / "out.zarr", progress=False)
    igbp = get_model("hybrid_param").build(validate_options("hybrid_param", {"static_inputs": ["igbp"]}))
    with pytest.raises(DataError, match=r"static attribute 'igbp'.*land-cover index field"):
        stream_column_model(igbp, src, tmp_path / "out.zarr", progress=False)  # land_cover not given
    assert not (tmp_path / "out.zarr").exists()


def test_a_spec_with_its_own_stream_passes_the_default_check():
    """``ModelSpec.check_stream`` refuses a spec that keeps the default ``stream`` (the empirical
    models) and accepts one that implements its own (a model registered outside the package)."""
    from hybridlsm.models.registry import StreamingUnsupported, get_model

    class OwnStream(type(get_model("1lin"))):
        def stream(self, model, source, store, **options):
            return store

    OwnStream().check_stream(None)
    with pytest.raises(StreamingUnsupported, match="model type '1lin' cannot run streamed"):
        get_model("1lin").check_stream(None)
