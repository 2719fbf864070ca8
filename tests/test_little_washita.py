"""The ParFlow-CLM reference snapshot comparison (issue 15 item 6b: Little Washita)."""

import numpy as np
import pytest
import xarray as xr

from hybridlsm.data.schema import DataError
from hybridlsm.evaluation.regional import compare_reference_snapshot

LW = "LittleWashita_NLDAS_41x41_120h.nc"


def _snapshot(when="2000-01-01T11:00"):
    nan = np.nan
    ds = xr.Dataset({
        "Qh": (("y", "x"), [[1.0, 2.0], [3.0, 4.0]]),
        "Qle": (("y", "x"), [[1.0, 2.0], [3.0, 4.0]]),
        "Tsurf": (("y", "x"), [[300.0, nan], [302.0, 301.0]]),
    }, coords={"y": [0.5, 1.5], "x": [0.5, 1.5]})
    ds = ds.assign_coords(time=((), np.datetime64(when, "ns")))
    ds.attrs = {"source_file": "tiny.nc", "data_kind": "model output, not observations"}
    return ds


def test_comparison_by_hand():
    times = np.array(["2000-01-01T10:00", "2000-01-01T11:00", "2000-01-01T12:00"], "datetime64[ns]")
    junk = np.full((2, 4), 1e3)
    out = {  # (T, N), the snapshot's step is the second
        "Qh": np.concatenate([junk[:1], [[2.0, 4.0, 6.0, 8.0]], junk[1:]]),
        "Qle": np.concatenate([junk[:1], [[4.0, 3.0, 2.0, 1.0]], junk[1:]]),
        "AvgSurfT": np.concatenate([junk[:1], [[301.0, 999.0, 302.0, 300.0]], junk[1:]]).reshape(3, 2, 2),
    }
    r = compare_reference_snapshot(out, times, _snapshot())
    assert r["step"] == 1 and r["snapshot_time"] == "2000-01-01T11:00"
    qh = r["Qh"]
    # model = 2 x reference: r = 1; bias = mean(1, 2, 3, 4) = 2.5; sd = sqrt(5) and sqrt(1.25)
    assert qh["corr"] == pytest.approx(1.0) and qh["bias"] == pytest.approx(2.5) and qh["n"] == 4
    assert qh["sd_model"] == pytest.approx(np.sqrt(5.0)) and qh["sd_reference"] == pytest.approx(np.sqrt(1.25))
    # reversed pattern, same mean
    assert r["Qle"]["corr"] == pytest.approx(-1.0) and r["Qle"]["bias"] == pytest.approx(0.0)
    # Tsurf is missing at one cell: pairs (301, 300), (302, 302), (300, 301): deviations (0, 1, -1) and
    # (-1, 1, 0), covariance 1 over variances 2: r = 0.5; bias (1 + 0 - 1) / 3 = 0
    ts = r["AvgSurfT"]
    assert ts["reference_variable"] == "Tsurf" and ts["n"] == 3
    assert ts["corr"] == pytest.approx(0.5) and ts["bias"] == pytest.approx(0.0)
    assert ts["mean_reference"] == pytest.approx(301.0)


def test_comparison_rejects_another_time_or_grid():
    times = np.array(["2000-01-01T10:00", "2000-01-01T11:00"], "datetime64[ns]")
    out = {k: np.zeros((2, 4)) for k in ("Qh", "Qle", "AvgSurfT")}
    with pytest.raises(DataError, match=r"tiny.nc: variable time of the snapshot is 2000-01-01T12:00"):
        compare_reference_snapshot(out, times, _snapshot("2000-01-01T12:00"))
    with pytest.raises(DataError, match=r"tiny.nc: variable Qh is on a 2 x 2 grid.*\(2, 9\)"):
        compare_reference_snapshot({**out, "Qh": np.zeros((2, 9))}, times, _snapshot("2000-01-01T11:00"))
    with pytest.raises(DataError, match="no variable Tsurf"):
        compare_reference_snapshot(out, times, _snapshot("2000-01-01T11:00").drop_vars("Tsurf"))
    r = compare_reference_snapshot({**out, "Qh": np.ones((2, 4))}, times, _snapshot("2000-01-01T11:00"))
    assert r["Qh"]["corr"] is None  # a uniform map has no pattern


@pytest.mark.slow  # the fixed-K_h physics over 41 x 41 cells and its first 24 h
def test_fixed_kh_over_little_washita_against_parflow_clm(shared_data):
    import jax.numpy as jnp

    from hybridlsm.data.gridded import read_gridded, read_reference_snapshot
    from hybridlsm.data.virtual_region import with_igbp_land_cover
    from hybridlsm.models.regional import fixed_kh_model, predict_regional, region_data

    path = shared_data / "gridded" / LW
    if not path.exists():
        pytest.skip(f"{path} not found (the Little Washita sample of ../shared/data/gridded)")
    # the first day holds the snapshot's hour (step 11); the other four days only cost time here
    # (benchmarks/little_washita.py runs all 120 h)
    grid = with_igbp_land_cover(read_gridded(path).isel(time=slice(0, 24)).load())
    snapshot = read_reference_snapshot(path)
    data = region_data(grid, jnp.float32)
    out = predict_regional(fixed_kh_model(data), data)
    r = compare_reference_snapshot(out, data.time, snapshot)
    # 1998-10-01 17:00 UTC ends the hour from 10:00 local standard time (UTC-6): forcing step 12
    assert r["snapshot_time"] == "1998-10-01T10:00" and r["step"] == 11
    for name in ("Qh", "Qle", "AvgSurfT"):
        assert out[name][r["step"]].reshape(snapshot["Qh"].shape).shape == snapshot[r[name]["reference_variable"]].shape
        assert r[name]["n"] == 41 * 41
        assert r[name]["corr"] is not None and -1.0 <= r[name]["corr"] <= 1.0
        assert np.isfinite(r[name]["bias"]) and r[name]["sd_model"] > 0
