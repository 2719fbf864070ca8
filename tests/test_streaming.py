"""Grids beyond memory (issue 14): a column model streamed through a lazily read zarr forcing in
row bands and time chunks equals the in-memory prediction of the same grid, writes NaN where a cell
has no forcing, and refuses gaps, an existing store and a model that cannot be streamed."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from hybridlsm.data import DataError
from hybridlsm.data.virtual import virtual_grid
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
    with pytest.raises(ValueError, match="static attributes"):
        stream_column_model(static, src, tmp_path / "static.zarr", progress=False)
    assert not any(tmp_path.glob("*.zarr")) or sorted(p.name for p in tmp_path.glob("*.zarr")) == ["taken.zarr"]
