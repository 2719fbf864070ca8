"""Regional grids beyond memory (issue 15): the regional model streamed through a lazily read zarr
forcing in time chunks of the whole grid equals one in-memory rollout of the same model over the
same forcing; the store has the grid's dims and coordinates; a grid with a sea cell is refused
before a store exists and a run that fails part-way leaves no store."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

from hybridlsm.data import DataError
from hybridlsm.data.schema import IGBP_BY_INDEX
from hybridlsm.data.virtual import virtual_grid
from hybridlsm.models.regional_streaming import REGIONAL_STREAM_OUTPUTS, stream_regional
from hybridlsm.physics import FORCING_VARIABLES, Forcing, default_params, rollout
from hybridlsm.physics.air_layer import AirLayer
from hybridlsm.physics.regional import GridForcing, RegionalModel

NY, NX, DAYS = 6, 5, 3
T = DAYS * 24


@pytest.fixture(scope="module")
def grid_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("regional") / "forcing.zarr"
    virtual_grid(NY, NX, DAYS, step_s=3600, chunks=(24, 3, NX), seed=2).to_zarr(path, zarr_format=2)
    return path


def _model():
    return RegionalModel(AirLayer((NY, NX), boundary="open"))


def _in_memory(src: xr.Dataset):
    """The whole record as one GridForcing, and each cell's LaD defaults from its land cover."""
    ds = src.load()
    flat = lambda var: jnp.asarray(ds[var].values.reshape(T, NY * NX), float)  # noqa: E731
    column = Forcing(**{f: flat(var) for f, (var, _) in FORCING_VARIABLES.items()}, time_step_s=3600.0)
    classes = [IGBP_BY_INDEX[int(i) - 1] for i in ds["land_cover"].values.ravel()]
    return GridForcing(column, flat("Wind_E"), flat("Wind_N")), default_params(classes)


@pytest.mark.slow  # compilations of the coupled grid (~20 s on 2 cores)
def test_streamed_regional_grid_equals_the_in_memory_rollout(grid_store, tmp_path):
    src = xr.open_zarr(grid_store)
    assert src["Wind_E"].chunks is not None  # read lazily
    forcing, params = _in_memory(src)
    model = _model().for_forcing(forcing)
    assert model.air.n_substeps > 10  # the advection needs sub-steps: the run exercises them
    _, ref = jax.jit(lambda p: rollout(model, p, forcing))(params)
    for time_chunk in (30,):  # 30 does not divide 72: chunks of 30, 30 and 12 (a full and a short one)
        out = stream_regional(_model(), None, src, tmp_path / f"out{time_chunk}.zarr", time_chunk=time_chunk,
                              progress=False)  # params from the grid's land cover
        streamed = xr.open_zarr(out)
        assert set(streamed.data_vars) == set(REGIONAL_STREAM_OUTPUTS)
        assert streamed.attrs["transport_substeps"] == model.air.n_substeps
        assert streamed["Qh"].chunks[0][0] == time_chunk
        for k in REGIONAL_STREAM_OUTPUTS:
            values = streamed[k]
            assert values.dims == ("time", "y", "x") and values.dtype == np.float32
            expected = np.asarray(ref[k]).reshape(T, NY, NX)
            # float32 storage: ~1e-5 of 290 K, of 300 W m-2
            np.testing.assert_allclose(values.values, expected, rtol=1e-6, atol=1e-4, err_msg=f"{k} ({time_chunk})")
        np.testing.assert_array_equal(streamed["time"].values, src["time"].values)
        np.testing.assert_array_equal(streamed["y"].values, src["y"].values)
        np.testing.assert_array_equal(streamed["x"].values, src["x"].values)
    # the coupled run is not trivially uniform: the cells differ (refinement: test_regional_physics)
    assert np.std(np.asarray(ref["Qle"]).mean(axis=0)) > 1.0


@pytest.mark.slow  # a chunk of the coupled grid is compiled before the gap is met (~6 s)
def test_a_sea_cell_and_a_gap_mid_record_are_refused_without_leaving_a_store(grid_store, tmp_path):
    src = xr.open_zarr(grid_store)
    sea = src.copy()
    sea["Tair"] = src["Tair"].where(~((src.y == 2000.0) & (src.x == 3000.0)))
    with pytest.raises(DataError, match=r"'Tair'.*cell 13 \(y index 2, x index 3: y=2000.0, x=3000.0.*"
                                        r"2021-01-01T00:00.*must be complete"):
        stream_regional(_model(), None, sea, tmp_path / "sea.zarr", time_chunk=24, progress=False)
    assert not (tmp_path / "sea.zarr").exists()  # refused before the store was created
    gap = src.copy()  # wind missing in one cell at step 40: the second chunk, after the first was written
    gap["Wind_N"] = src["Wind_N"].where(~((src.time == src.time[40]) & (src.y == 0.0) & (src.x == 1000.0)))
    with pytest.raises(DataError, match=r"'Wind_N'.*cell 1 \(y index 0, x index 1.*2021-01-02T16:00"):
        stream_regional(_model(), None, gap, tmp_path / "gap.zarr", time_chunk=24, progress=False)
    assert not (tmp_path / "gap.zarr").exists()
    (tmp_path / "taken.zarr").mkdir()
    with pytest.raises(FileExistsError, match="taken.zarr"):
        stream_regional(_model(), None, src, tmp_path / "taken.zarr", progress=False)
    with pytest.raises(ValueError, match="the grid is 6 x 5.*air layer is 5 x 6"):
        stream_regional(RegionalModel(AirLayer((NX, NY))), None, src, tmp_path / "shape.zarr", progress=False)
    masked = src.assign_coords(mask=(("y", "x"), np.where((src.y == 2000.0) & (src.x == 3000.0), 0, 1)))
    with pytest.raises(DataError, match=r"1 cell\(s\) are masked out \(mask 0\), e.g. cell 13 .*must be complete"):
        stream_regional(_model(), None, masked, tmp_path / "masked.zarr", progress=False)  # was modelled silently
    assert sorted(p.name for p in tmp_path.glob("*.zarr")) == ["taken.zarr"]
