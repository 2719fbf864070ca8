"""Forcing: stacking canonical datasets into a (T, N) Forcing; gap and consistency errors."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from hybridlsm.physics import Forcing, forcing_from_datasets

N_STEPS = 6


def _site(site_id, offset=0.0, n=N_STEPS, step_s=1800):
    time = pd.date_range("2010-01-01", periods=n, freq=f"{step_s}s")
    values = {
        "Tair": 280.0 + offset + np.arange(n),
        "Qair": np.full(n, 0.005),
        "Psurf": np.full(n, 95000.0),
        "Wind": np.full(n, 2.5),
        "SWdown": np.linspace(0.0, 500.0, n),
        "LWdown": np.full(n, 300.0),
        "Precip": np.zeros(n),
        "Qle": np.full(n, np.nan),  # target with gaps: not forcing, ignored
    }
    ds = xr.Dataset({k: ("time", v) for k, v in values.items()}, coords={"time": time})
    ds.attrs.update(site_id=site_id, time_step_s=float(step_s))
    return ds


def test_stacks_sites_time_major():
    f = forcing_from_datasets([_site("AA-One"), _site("BB-Two", offset=10.0)])
    assert isinstance(f, Forcing)
    assert f.t_air.shape == (N_STEPS, 2)
    assert f.n_steps == N_STEPS and f.n_sites == 2
    assert f.time_step_s == 1800.0
    np.testing.assert_allclose(f.t_air[:, 1] - f.t_air[:, 0], 10.0)
    np.testing.assert_allclose(f.sw_down[-1], [500.0, 500.0])
    one = f.at(2)
    assert one.t_air.shape == (2,) and one.time_step_s == 1800.0


def test_grid_dataset_contributes_one_column_per_cell():
    ds = _site("grid")
    grid = ds[["Tair", "Qair", "Psurf", "Wind", "SWdown", "LWdown", "Precip"]].expand_dims(
        y=[0, 1], x=[0, 1, 2]
    )
    grid.attrs.update(ds.attrs)
    f = forcing_from_datasets([grid])
    assert f.t_air.shape == (N_STEPS, 6)


def test_nan_forcing_names_site_and_variable():
    bad = _site("US-Bad")
    bad["Wind"][3] = np.nan
    with pytest.raises(ValueError, match=r"site 'US-Bad'.*'Wind'.*1 missing.*2010-01-01T01:30"):
        forcing_from_datasets([_site("AA-One"), bad])


def test_missing_variable_and_mismatch_errors():
    ds = _site("US-NoLW").drop_vars("LWdown")
    with pytest.raises(ValueError, match=r"site 'US-NoLW'.*'LWdown'.*missing"):
        forcing_from_datasets([ds])
    with pytest.raises(ValueError, match="time steps"):
        forcing_from_datasets([_site("A"), _site("B", n=N_STEPS + 1)])
    with pytest.raises(ValueError, match="time_step_s"):
        forcing_from_datasets([_site("A"), _site("B", step_s=3600)])
