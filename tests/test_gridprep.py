"""Gridded preprocessing for the regional mode (hybridlsm.data.gridprep): bilinear regridding
(exact for fields linear in lat/lon, a hand value, NaN kept in the stencil, no extrapolation), time
alignment (totals conserved, linear states, flags counted), thermodynamic gap filling against an
exact hydrostatic / linear-lapse-rate synthetic truth, physical normalisation round trip, land-cover
fractions, and regrid + align on the real Walnut Gulch file against a hand computation."""

from __future__ import annotations

import warnings

import dask.array
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from hybridlsm import thermo
from hybridlsm.data import DataError, DataWarning, read_gridded
from hybridlsm.data.gridprep import (
    align_time,
    fill_thermodynamic,
    land_cover_fractions,
    physical_denormalise,
    physical_normalise,
    regrid_bilinear,
)

# Constants written out so that the checks do not reuse the module's own
G, RD = 9.81, 287.0586
MAGNUS_A, MAGNUS_B, MAGNUS_C = 611.2, 17.62, 243.12  # Sonntag (1990)


def _grid(lat, lon, fields: dict, nt: int = 2, step="3h", lat2d=False) -> xr.Dataset:
    """A canonical gridded dataset (time, y, x) with ``fields[name](lat2, lon2, it)``."""
    lat, lon = np.asarray(lat, float), np.asarray(lon, float)
    if lat2d:
        lat2, lon2 = lat, lon
        coords = {"lat": (("y", "x"), lat2), "lon": (("y", "x"), lon2)}
    else:
        lat2, lon2 = np.meshgrid(lat, lon, indexing="ij")
        coords = {"lat": ("y", lat), "lon": ("x", lon)}
    time = pd.date_range("2008-01-01", periods=nt, freq=step)
    data = {name: (("time", "y", "x"), np.stack([f(lat2, lon2, it) for it in range(nt)]), {"units": "K"})
            for name, f in fields.items()}  # fmt: skip
    return xr.Dataset(data, coords={"time": time, **coords}, attrs={"source_file": "synthetic.nc"})


# ------------------------------------------------------------------ 1. bilinear regridding


def linear(lat, lon, it):
    return 3.0 * lat - 2.0 * lon + 5.0 + 10.0 * it


def test_bilinear_reproduces_a_linear_field():
    src = _grid(np.linspace(31.0, 30.0, 5), np.linspace(-100.0, -98.5, 7), {"Tair": linear})  # lat decreasing
    src["Tair"].attrs = {"units": "K", "long_name": "air temperature"}
    tlat, tlon = np.linspace(30.0, 31.0, 13), np.linspace(-100.0, -98.5, 17)
    out = regrid_bilinear(src, tlat, tlon)
    assert dict(out.sizes) == {"time": 2, "y": 13, "x": 17}
    lat2, lon2 = np.meshgrid(tlat, tlon, indexing="ij")
    for it in range(2):
        np.testing.assert_allclose(out["Tair"].values[it], linear(lat2, lon2, it), rtol=0, atol=1e-10)
    assert out["Tair"].attrs == {"units": "K", "long_name": "air temperature"}
    assert out.attrs["source_file"] == "synthetic.nc" and "bilinear" in out.attrs["regridding"]
    np.testing.assert_array_equal(out["lat"].values, tlat)
    # a curvilinear target (2-D lat/lon): a rotated set of points inside
    jj, ii = np.meshgrid(np.linspace(0.1, 0.9, 4), np.linspace(0.1, 0.9, 6), indexing="ij")
    clat, clon = 30.0 + 0.8 * jj + 0.1 * ii, -99.9 + 1.2 * ii + 0.1 * jj
    out2 = regrid_bilinear(src, clat, clon)
    assert out2["lat"].dims == ("y", "x")
    np.testing.assert_allclose(out2["Tair"].values[1], linear(clat, clon, 1), rtol=0, atol=1e-10)


def test_bilinear_hand_value_and_nan_stencil():
    values = np.array([[1.0, 2.0, 4.0], [3.0, 5.0, np.nan], [0.0, 1.0, 2.0]])
    src = _grid([0.0, 1.0, 2.0], [10.0, 11.0, 12.0], {"Tair": lambda la, lo, it: values})
    out = regrid_bilinear(src, [0.25, 1.0, 1.5], [10.5, 11.0, 11.5])
    v = out["Tair"].values[0]
    # (lat 0.25, lon 10.5): 0.75 * (0.5*1 + 0.5*2) + 0.25 * (0.5*3 + 0.5*5) = 2.125
    assert v[0, 0] == pytest.approx(2.125, abs=1e-14)
    # (lat 1, lon 11) is the source cell (1, 1): the NaN neighbour (1, 2) has weight 0
    assert v[1, 1] == 5.0
    # stencils that include the NaN cell (lat 1, lon 12) are NaN, the others are not
    assert np.isnan(v[0, 2]) and np.isnan(v[1, 2]) and np.isnan(v[2, 2])
    assert v[2, 0] == pytest.approx(0.25 * 3 + 0.25 * 5 + 0.25 * 0 + 0.25 * 1, abs=1e-14)
    assert int(np.isnan(v).sum()) == 3
    # flags: True where a contributing source cell (weight > 0) is flagged; integers cannot be interpolated
    src["Tair_estimated"] = xr.zeros_like(src["Tair"], dtype=bool)
    src["Tair_estimated"][:, 0, 0] = True
    src["Tair_qc"] = xr.zeros_like(src["Tair"], dtype=np.int8)
    with pytest.warns(DataWarning, match=r"variables \['Tair_qc'\] are not float"):
        out = regrid_bilinear(src, [0.25, 1.0, 1.5], [10.5, 11.0, 11.5])
    np.testing.assert_array_equal(out["Tair_estimated"].values[0], [[True, False, False], [False, False, False],
                                                                    [False, False, False]])
    assert "Tair_qc" not in out and out.attrs["not_regridded"] == "Tair_qc"


def test_bilinear_curvilinear_source(monkeypatch):
    j, i = np.meshgrid(np.arange(6.0), np.arange(8.0), indexing="ij")
    lat2 = 40.0 + 0.1 * j + 0.02 * i + 0.002 * i * j  # skewed, not affine
    lon2 = -100.0 + 0.12 * i - 0.03 * j + 0.001 * j**2
    src = _grid(lat2, lon2, {"Tair": linear}, lat2d=True)
    # targets: the images of fractional indices well inside the grid
    fj, fi = np.meshgrid(np.linspace(0.6, 4.4, 7), np.linspace(0.6, 6.4, 9), indexing="ij")
    tlat = 40.0 + 0.1 * fj + 0.02 * fi + 0.002 * fi * fj
    tlon = -100.0 + 0.12 * fi - 0.03 * fj + 0.001 * fj**2
    out = regrid_bilinear(src, tlat, tlon)
    np.testing.assert_allclose(out["Tair"].values[1], linear(tlat, tlon, 1), rtol=0, atol=1e-10)
    # 0.1667 deg south of the bottom row (lat 40.0667 at lon -99.6); that row rises 0.02 deg per 0.12 deg of
    # longitude, so the distance across it (longitude scaled by cos of the grid's mean latitude) is less
    coslat = np.cos(np.radians(lat2.mean()))
    dist = (40.0 + 0.02 * 0.4 / 0.12 - 39.9) * 0.12 * coslat / np.hypot(0.12 * coslat, 0.02)
    assert dist == pytest.approx(0.16282, abs=1e-5)
    with pytest.raises(DataError, match=r"1 of 2 target cells lie outside the curvilinear source grid synthetic.nc .*"
                                        rf"target cell \(y=0, x=1\) at lat 39.9, lon -99.6, is {dist:.6g} deg"):
        regrid_bilinear(src, [[40.2, 39.9]], [[-99.6, -99.6]])
    # the search of every quadrilateral when the nearest centres' quadrilaterals miss a target
    import scipy.spatial

    class NearestIsAlwaysTheFirst:
        def __init__(self, points):
            pass

        def query(self, points, k):
            return None, np.zeros((len(points), k), int)

    monkeypatch.setattr(scipy.spatial, "cKDTree", NearestIsAlwaysTheFirst)
    out = regrid_bilinear(src, tlat, tlon)
    np.testing.assert_allclose(out["Tair"].values[0], linear(tlat, tlon, 0), rtol=0, atol=1e-10)


def test_bilinear_outside_the_extent_is_an_error():
    src = _grid([30.0, 30.5, 31.0], [0.0, 0.5, 1.0], {"Tair": linear})
    with pytest.raises(DataError) as err:
        regrid_bilinear(src, [29.9, 30.5], [0.5, 1.05])
    msg = str(err.value)
    assert "3 of 4 target cells lie outside the source grid synthetic.nc" in msg
    assert "cell centres lat 30..31, lon 0..1" in msg
    assert "target cell (y=0, x=1) at lat 29.9, lon 1.05, is 0.1 deg (0.2 source cells) south and 0.05 deg " \
           "(0.1 source cells) east of them" in msg
    assert "does not extrapolate" in msg


# ------------------------------------------------------------------ 2. time alignment


def _three_hourly(nt=16):
    rng = np.random.default_rng(0)
    ds = _grid([30.0, 31.0], [0.0, 1.0], {"Tair": lambda la, lo, it: 280.0 + 0.5 * it + la - lo}, nt=nt)
    sw = np.clip(rng.normal(200, 150, (nt, 2, 2)), 0, None)
    pr = rng.exponential(1e-4, (nt, 2, 2)) * (rng.random((nt, 2, 2)) < 0.4)
    ds["SWdown"] = (("time", "y", "x"), sw, {"units": "W m-2"})
    ds["Precip"] = (("time", "y", "x"), pr, {"units": "kg m-2 s-1"})
    ds.attrs.update(time_step_s=10800.0, repairs="an earlier repair", n_repairs=1)
    return ds


def test_align_time_three_hourly_to_hourly():
    ds = _three_hourly()
    out = align_time(ds, 3600)
    assert out.sizes["time"] == 48 and out.attrs["time_step_s"] == 3600.0
    assert out["time"].values[-1] == np.datetime64("2008-01-02T23:00")
    # daily totals conserved exactly (2 days)
    for v in ("SWdown", "Precip"):
        hourly = (out[v] * 3600.0).resample(time="1D").sum().values
        coarse = (ds[v] * 10800.0).resample(time="1D").sum().values
        np.testing.assert_allclose(hourly, coarse, rtol=1e-13, atol=0)
        np.testing.assert_array_equal(out[v].values[1::3], ds[v].values)  # block: repeated
    # Tair linear between samples: 01:00 = 2/3 T(00) + 1/3 T(03); samples kept exactly
    t = ds["Tair"].values
    np.testing.assert_array_equal(out["Tair"].values[::3], t)
    np.testing.assert_allclose(out["Tair"].values[1], 2 / 3 * t[0] + 1 / 3 * t[1], atol=1e-12)
    np.testing.assert_allclose(out["Tair"].values[5], 1 / 3 * t[1] + 2 / 3 * t[2], atol=1e-12)
    np.testing.assert_array_equal(out["Tair"].values[46], t[15])  # after the last sample: held
    # flags: 2 of every 3 hourly steps per cell are not original samples: 32 x 4 cells
    for v in ("Tair", "SWdown", "Precip"):
        flag = out[f"{v}_estimated"]
        assert flag.dtype == bool and int(flag.sum()) == 128 and flag.attrs["n_estimated"] == 128
        assert not flag.values[::3].any()
    lines = out.attrs["repairs"].splitlines()
    assert out.attrs["n_repairs"] == 4 and len(lines) == 4 and lines[0] == "an earlier repair"
    assert lines[1] == ("Tair: time step 10800 s -> 3600 s by linear interpolation between the source samples: 128 "
                        "values are not original samples, 8 of them after the last sample 2008-01-02 21:00 held at "
                        "its value (flagged Tair_estimated)")
    assert "SWdown: time step 10800 s -> 3600 s by repeating each interval's value (block; totals conserved): 128" \
        in lines[2]
    # back to 3-hourly by averaging: the block-repeated fluxes come back exactly
    back = align_time(out, 10800)
    np.testing.assert_allclose(back["Precip"].values, ds["Precip"].values, rtol=1e-14)
    assert back["Precip_estimated"].values.all()  # ORed over each block
    assert back.attrs["n_repairs"] == 5


def test_align_time_nan_and_errors():
    ds = _three_hourly(4)
    ds["Tair"][1, 0, 0] = np.nan
    out = align_time(ds, 3600)
    assert np.isnan(out["Tair"].values[1:6, 0, 0]).all()  # next to the gap: NaN, not filled
    assert not out["Tair_estimated"].values[1:6, 0, 0].any()
    with pytest.raises(DataError, match=r"not sorted: 2008-01-01 03:00 \(index 2\) does not follow 2008-01-01 06:00"):
        align_time(ds.isel(time=[0, 2, 1, 3]), 3600)
    with pytest.raises(DataError, match=r"irregular time step 0 days 06:00:00 before 2008-01-01 09:00 \(index 2\)"):
        align_time(ds.isel(time=[0, 1, 3]), 3600)
    with pytest.raises(DataError, match="10800 s is not a whole multiple of 2400 s"):
        align_time(ds, 2400)
    with pytest.raises(DataError, match=r"no time-alignment rule for \['Mystery'\]"):
        align_time(ds.assign(Mystery=ds["Tair"]), 3600)


# ------------------------------------------------------------------ 3. thermodynamic gap filling

NT = 5


def _truth(seed=1):
    """5 steps on a 4 x 5 grid: T = a(t) + gamma(t) z exactly, gamma linear in t; p hydrostatic from a
    sea-level p_ref(t) with T_v = T (1 + 0.608 q); q from RH with that p."""
    rng = np.random.default_rng(seed)
    z = rng.uniform(100.0, 2500.0, (4, 5))
    gamma = -0.0065 + 0.0004 * np.arange(NT)
    a = 295.0 + np.array([0.0, 1.5, 3.0, 2.0, -1.0])
    p_ref = 101325.0 + np.array([0.0, 250.0, -400.0, 120.0, 600.0])
    t = a[:, None, None] + gamma[:, None, None] * z
    rh = rng.uniform(20.0, 90.0, (NT, 4, 5))
    # hydrostatic p and q(RH, p) by fixed point (independent of the module's code)
    p = p_ref[:, None, None] * np.exp(-G * z / (RD * t))
    for _ in range(50):
        e = rh / 100.0 * MAGNUS_A * np.exp(MAGNUS_B * (t - 273.15) / (MAGNUS_C + t - 273.15))
        q = 0.622 * e / (p - 0.378 * e)
        p = p_ref[:, None, None] * np.exp(-G * z / (RD * t * (1.0 + 0.608 * q)))
    e = rh / 100.0 * MAGNUS_A * np.exp(MAGNUS_B * (t - 273.15) / (MAGNUS_C + t - 273.15))
    q = 0.622 * e / (p - 0.378 * e)
    es = MAGNUS_A * np.exp(MAGNUS_B * (t - 273.15) / (MAGNUS_C + t - 273.15))
    vpd = (es - e) / 100.0
    time = pd.date_range("2010-07-01", periods=NT, freq="h")
    ds = xr.Dataset({k: (("time", "y", "x"), v.copy()) for k, v in
                     dict(Tair=t, Psurf=p, Qair=q, RH=rh, VPD=vpd).items()},  # fmt: skip
                    coords={"time": time}, attrs={"source_file": "truth.nc"})
    return ds, z, gamma, p_ref


def test_fill_reproduces_hydrostatic_pressure_and_lapse_rate():
    truth, z, gamma, p_ref = _truth()
    ds = truth.copy(deep=True)
    t, p = ds["Tair"].values, ds["Psurf"].values
    t[0, 0, 0] = t[0, 2, 3] = t[1, 3, 4] = np.nan
    t[2, :, :] = np.nan
    t[2, 1, 1] = truth["Tair"].values[2, 1, 1]  # step 2: one observed cell (lapse rate from steps 1 and 3)
    p[0, 0, 0] = p[0, 1, 2] = p[3, 2, 2] = p[4, 0, 4] = np.nan  # (0, 0, 0): T missing as well
    ds["Qair"].values[3, 2, 2] = np.nan  # p and q missing, RH known: iterated
    ds["Qair"].values[4, 0, 4] = ds["RH"].values[4, 0, 4] = ds["VPD"].values[4, 0, 4] = np.nan  # no humidity
    out, summary = fill_thermodynamic(ds, elevation=z)
    np.testing.assert_allclose(out["Tair"].values, truth["Tair"].values, rtol=0, atol=1e-6)
    assert np.abs(out["Tair"].values - truth["Tair"].values).max() < 1e-9
    np.testing.assert_allclose(summary.lapse_rate, gamma, rtol=0, atol=1e-12)
    np.testing.assert_allclose(summary.p_ref, p_ref, rtol=1e-12)
    err = np.abs(out["Psurf"].values - truth["Psurf"].values)
    held = np.ones(err.shape, bool)
    held[4, 0, 4] = False  # no humidity known there: dry T_v (a few Pa: 0.608 q of T_v at 2 km)
    assert err[held].max() < 1.0 and err[held].max() < 1e-6
    assert 0.0 < err[4, 0, 4] < 100.0
    assert summary.filled == {"Tair": 3 + 19, "Psurf": 4, "Qair": 1, "RH": 0, "VPD": 0}
    assert summary.still_missing == {"Tair": 0, "Psurf": 0, "Qair": 1, "RH": 1, "VPD": 1}
    assert summary.missing_before["Tair"] == 22
    assert int(out["Psurf_estimated"].sum()) == 4 and bool(out["Psurf_estimated"].values[3, 2, 2])
    assert int(out["Tair_estimated"].sum()) == 22 and out["Tair_estimated"].attrs["n_estimated"] == 22
    # the iterated cell: p and q(RH) both right
    assert out["Qair"].values[3, 2, 2] == pytest.approx(truth["Qair"].values[3, 2, 2], rel=1e-9)
    assert out.attrs["n_repairs"] == 3
    assert out.attrs["repairs"].splitlines()[1].startswith(
        "Psurf: 4 missing values filled by hypsometric relation with a per-step least-squares sea-level reference "
        "pressure (flagged Psurf_estimated); 0 still missing")
    assert "1 fills with no humidity known used the dry T_v = T" in str(summary)


def test_fill_humidity_consistent_with_thermo():
    truth, z, _, _ = _truth(2)
    ds = truth.copy(deep=True)
    ds["Qair"].values[:, 0, :] = np.nan  # q from RH
    ds["RH"].values[:, 1, :] = np.nan  # RH from q
    ds["VPD"].values[:, 2, :] = np.nan  # VPD from q
    ds["Qair"].values[1, 3, 3] = ds["RH"].values[1, 3, 3] = np.nan  # q and RH from VPD
    out, summary = fill_thermodynamic(ds, elevation=z)
    t, p = out["Tair"].values, out["Psurf"].values
    q_expected = thermo.specific_humidity_from_vapour_pressure(
        ds["RH"].values[:, 0, :] / 100 * thermo.saturation_vapour_pressure(t[:, 0, :]), p[:, 0, :])
    np.testing.assert_allclose(out["Qair"].values[:, 0, :], q_expected, rtol=1e-13)
    # round trip: RH of the filled q is the RH it came from; everything equals the truth
    e = thermo.vapour_pressure_from_specific_humidity(out["Qair"].values, p)
    np.testing.assert_allclose(100 * e / thermo.saturation_vapour_pressure(t), truth["RH"].values, rtol=1e-10)
    for v in ("Qair", "RH", "VPD"):
        np.testing.assert_allclose(out[v].values, truth[v].values, rtol=1e-10, atol=1e-12)
    assert summary.filled == {"Tair": 0, "Psurf": 0, "Qair": 26, "RH": 26, "VPD": 25}
    assert summary.still_missing == {"Tair": 0, "Psurf": 0, "Qair": 0, "RH": 0, "VPD": 0}


def test_fill_without_elevation_uses_effective_elevations():
    truth, z, _, _ = _truth(3)
    ds = truth.copy(deep=True)
    ds["Psurf"].values[2, 1, 3] = np.nan
    ds["Tair"].values[3, 2, 0] = np.nan
    ds["Psurf"].values[:, 0, 0] = np.nan  # never observed: no effective elevation
    ds["Tair"].values[1, 0, 0] = np.nan
    out, summary = fill_thermodynamic(ds)
    assert np.isnan(summary.elevation[0, 0]) and np.isfinite(summary.elevation).sum() == 19
    # effective elevations are the true ones up to a common offset (from p_ref != p0) and a small spread
    off = summary.elevation - z
    assert np.nanstd(off) < 0.2 and 5.0 < abs(np.nanmean(off)) < 20.0
    assert abs(out["Psurf"].values[2, 1, 3] - truth["Psurf"].values[2, 1, 3]) < 1.0
    assert abs(out["Tair"].values[3, 2, 0] - truth["Tair"].values[3, 2, 0]) < 1e-3
    assert summary.filled["Psurf"] == 1 and summary.still_missing["Psurf"] == NT
    assert summary.filled["Tair"] == 1 and summary.still_missing["Tair"] == 1
    assert "effective elevations from each cell's own p and T series" in str(summary)


# ------------------------------------------------------------------ 4. physical normalisation


def test_physical_normalise_round_trip():
    truth, _, _, _ = _truth()
    ds = truth.copy()
    rng = np.random.default_rng(4)
    shape = ds["Tair"].shape
    ds["SWdown"] = (("time", "y", "x"), rng.uniform(0, 1100, shape), {"units": "W m-2"})
    ds["LWdown"] = (("time", "y", "x"), rng.uniform(200, 450, shape), {"units": "W m-2"})
    ds["Wind"] = (("time", "y", "x"), rng.uniform(0, 15, shape), {"units": "m s-1"})
    ds["Precip"] = (("time", "y", "x"), rng.exponential(2e-4, shape), {"units": "kg m-2 s-1"})
    ds["Tair"].attrs = {"units": "K"}
    ds["Tair"].values[0, 0, 0] = 288.15
    norm, c = physical_normalise(ds)
    t_max = float(ds["Tair"].max())
    assert c["Tmax"] == t_max and c["T0"] == 288.15 and c["p0"] == 101325.0
    assert norm["Tair"].values[0, 0, 0] == 0.0
    assert float(norm["Tair"].max()) == 1.0
    assert norm["Tair"].attrs["units"] == "1" and norm["Tair"].attrs["normalised_from_units"] == "K"
    # hand values
    assert float(norm["Psurf"][0, 0, 0]) == pytest.approx(ds["Psurf"].values[0, 0, 0] / 101325.0 - 1.0, rel=1e-14)
    assert float(norm["SWdown"][1, 1, 1]) == pytest.approx(ds["SWdown"].values[1, 1, 1] / 1361.0, rel=1e-14)
    assert float(norm["Wind"][1, 1, 1]) == pytest.approx(ds["Wind"].values[1, 1, 1] / 10.0, rel=1e-14)
    assert float(norm["RH"][1, 1, 1]) == pytest.approx(ds["RH"].values[1, 1, 1] / 100.0, rel=1e-14)
    es0 = MAGNUS_A * np.exp(MAGNUS_B * 15.0 / (MAGNUS_C + 15.0))  # e_s(15 degC) = 1701.67 Pa
    assert es0 == pytest.approx(1701.67, abs=0.01) and c["e_s_T0_hPa"] == pytest.approx(es0 / 100.0, rel=1e-14)
    assert c["q_sat_T0_p0"] == pytest.approx(0.622 * es0 / (101325.0 - 0.378 * es0), rel=1e-14)
    one_mm_h = xr.Dataset({"Precip": (("time",), [1.0 / 3600.0, 0.0])}, coords={"time": [0, 1]})
    pn, _ = physical_normalise(one_mm_h)
    np.testing.assert_allclose(pn["Precip"].values, [np.log(2.0), 0.0], rtol=1e-15)
    back = physical_denormalise(norm, c)
    for v in ("Tair", "Psurf", "Qair", "RH", "VPD", "SWdown", "LWdown", "Wind", "Precip"):
        np.testing.assert_allclose(back[v].values, ds[v].values, rtol=1e-12, atol=0)
    assert back["Tair"].attrs == {"units": "K"}
    # the same constants on another period: same mapping (not the other period's maximum)
    other = ds.isel(time=[0])
    other["Tair"] = other["Tair"] - 5.0
    norm2, c2 = physical_normalise(other, constants=c)
    assert c2["Tmax"] == t_max
    np.testing.assert_allclose(norm2["Tair"].values, (other["Tair"].values - 288.15) / (t_max - 288.15), rtol=1e-14)
    with pytest.raises(DataError, match="within 1 K of T0"):
        physical_normalise(ds, t_max=288.5)
    with pytest.warns(DataWarning, match="below T0"):
        physical_normalise(ds[["Tair"]] - 30.0)
    with pytest.raises(DataError, match="Precip has 1 negative values"):
        physical_normalise(one_mm_h.assign(Precip=("time", [1e-4, -1e-6])))


# ------------------------------------------------------------------ 5. land-cover fractions


def test_land_cover_fractions_by_hand():
    idx = xr.DataArray([[10, 10, 12, 12], [10, 7, 12, 12], [16, 16, 10, 7], [16, 16, 7, 7]], dims=("y", "x"),
                       coords={"lat": ("y", [30.0, 30.1, 30.2, 30.3]), "lon": ("x", [0.0, 0.1, 0.2, 0.3])},
                       name="igbp")  # fmt: skip
    frac = land_cover_fractions(idx, ["GRA", "osh", 12, "BSV"], factor=2)
    assert frac.dims == ("class", "y", "x") and list(frac["class"].values) == ["GRA", "OSH", "CRO", "BSV"]
    assert list(frac["code"].values) == [10, 7, 12, 16]
    np.testing.assert_allclose(frac.sum("class").values, 1.0, rtol=0, atol=1e-15)
    np.testing.assert_allclose(frac.sel({"class": "GRA"}).values, [[0.75, 0.0], [0.0, 0.25]])
    np.testing.assert_allclose(frac.sel({"class": "OSH"}).values, [[0.25, 0.0], [0.0, 0.75]])
    np.testing.assert_allclose(frac.sel({"class": "CRO"}).values, [[0.0, 1.0], [0.0, 0.0]])
    np.testing.assert_allclose(frac["lat"].values, [30.05, 30.25])
    one_hot = land_cover_fractions(idx, [10, 7, 12, 16])
    assert one_hot.shape == (4, 4, 4) and int(one_hot.sum()) == 16 and set(np.unique(one_hot.values)) == {0.0, 1.0}
    with pytest.raises(DataError, match=r"igbp: code 12 \(CRO\) at 4 cell\(s\) \(y, x\) = \(0, 2\), \(0, 3\), "
                                        r"\(1, 2\) ...; expected only the classes \['GRA', 'OSH', 'BSV'\]"):
        land_cover_fractions(idx, ["GRA", "OSH", "BSV"])
    with pytest.raises(DataError, match=r"code 0 \(not a class of the legend\) at 1 cell\(s\) \(y, x\) = \(3, 3\)"):
        land_cover_fractions(idx.copy(data=np.where(np.arange(16).reshape(4, 4) == 15, 0, idx.values)),
                             [10, 7, 12, 16])
    with pytest.raises(DataError, match="cannot be aggregated by factor 3"):
        land_cover_fractions(idx, [10, 7, 12, 16], factor=3)
    # a "missing" value is left out: fractions over the known fine cells, with their share
    miss = idx.copy(data=np.where(np.arange(16).reshape(4, 4) == 0, 255, idx.values))
    f = land_cover_fractions(miss, [10, 7, 12, 16], factor=2, missing=255)
    assert f.values[0, 0, 0] == pytest.approx(2 / 3) and f["known_fraction"].values[0, 0] == 0.75
    # class names from CF flag_meanings (the Little Washita convention)
    named = idx.assign_attrs(flag_values=np.arange(1, 18), flag_meanings=" ".join(
        ["x"] * 6 + ["open_shrublands", "x", "x", "grasslands", "x", "croplands", "x", "x", "x",
                     "barren_or_sparsely_vegetated", "water_bodies"]))  # fmt: skip
    fn = land_cover_fractions(named, ["Grasslands", "open shrublands", "croplands", "barren-or-sparsely-vegetated"], 2)
    np.testing.assert_array_equal(fn.values, frac.values)
    assert list(fn["class"].values)[:2] == ["grasslands", "open_shrublands"]


# ------------------------------------------------------------------ real file


def test_regrid_and_align_the_walnut_gulch_file(shared_data):
    path = shared_data / "gridded" / "livneh_NAmerExt_15Oct2014.WalnutGulch.2008.nc"
    if not path.exists():
        pytest.skip(f"{path} not found (the Livneh Walnut Gulch sample of shared/data/gridded)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)  # the known-wrong wind unit (test_data_netcdf checks it)
        ds = read_gridded(path)
    # a 1/32 deg grid inside the file's cell centres (31.65625..31.78125, -110.15625..-109.90625)
    tlat = 31.65625 + 0.03125 * np.arange(5)
    tlon = -110.15625 + 0.03125 * np.arange(9)
    regridded = regrid_bilinear(ds, tlat, tlon)
    assert isinstance(regridded["Tair"].data, dask.array.Array)  # lazy until align_time
    fine = align_time(regridded, 3600)
    assert dict(fine.sizes) == {"time": 8784, "y": 5, "x": 9}
    raw = xr.open_dataset(path)
    temp = raw["temp"].values  # degC, (time, lat, lon)
    # target (y=3, x=5): lat 31.75, lon -110.0 -> rows 1, 2 at v = 0.5; columns 2, 3 at u = 0.5
    hand0 = 273.15 + 0.25 * (temp[0, 1, 2] + temp[0, 1, 3] + temp[0, 2, 2] + temp[0, 2, 3])
    hand1 = 273.15 + 0.25 * (temp[1, 1, 2] + temp[1, 1, 3] + temp[1, 2, 2] + temp[1, 2, 3])
    assert float(fine["Tair"][0, 3, 5]) == pytest.approx(hand0, abs=1e-9)
    assert float(fine["Tair"][1, 3, 5]) == pytest.approx(2 / 3 * hand0 + 1 / 3 * hand1, abs=1e-9)  # 01:00
    # target (y=1, x=1) sits between source rows 0, 1 and columns 0, 1 (both at one half): the
    # wettest day's total there is the mean of the four cells' daily totals (mm = kg m-2)
    prec = raw["prec"].values  # mm per 3 h
    day = int(np.argmax(prec[:, 0:2, 0:2].sum(axis=(1, 2)).reshape(366, 8).sum(1)))
    hand_mm = prec[day * 8:(day + 1) * 8, 0:2, 0:2].sum() / 4.0
    total = float((fine["Precip"][day * 24:(day + 1) * 24, 1, 1] * 3600.0).sum())
    assert hand_mm > 5.0 and total == pytest.approx(hand_mm, rel=1e-10)
    assert int(fine["Precip_estimated"].sum()) == 2 * 2928 * 45
    assert fine.attrs["n_repairs"] == 9
