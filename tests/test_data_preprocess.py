"""Preprocessing: QC masking, units, derived variables, LWdown estimate, precipitation phase,
gaps and the gap-free model forcing."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from hybridlsm.data import (
    FORCING_VARIABLES,
    DataError,
    DataWarning,
    add_derived,
    apply_qc,
    estimate_lwdown,
    fill_report,
    find_gaps,
    gap_report,
    liquid_fraction,
    mean_diurnal_cycle,
    partition_precip,
    prepare_forcing,
    qc_mask,
    read_site,
    toa_shortwave,
)
from hybridlsm.data import preprocess as pp
from hybridlsm.data import radiation


def _read(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        return read_site(path)


@pytest.fixture(scope="module")
def wkg(shared_data):
    return _read(shared_data / "fluxnet" / "US-Wkg_200405-200412_HH.csv")


@pytest.fixture(scope="module")
def tha(shared_data):
    return _read(shared_data / "fluxnet" / "DE-Tha_201001-201012_HH.csv")


# ---- units, QC, derived


def test_unit_helpers():
    assert pp.celsius_to_kelvin(25.0) == 298.15 and pp.kelvin_to_celsius(273.15) == 0.0
    assert pp.kpa_to_pa(85.348) == pytest.approx(85348.0) and pp.hpa_to_pa(1013.25) == pytest.approx(101325.0)
    assert pp.mm_per_step_to_rate(0.25, 1800.0) == pytest.approx(1.388888889e-4)
    assert pp.rate_to_mm_per_step(1.388888889e-4, 1800.0) == pytest.approx(0.25)
    assert pp.to_canonical(1000.0, "Psurf", "hPa") == 100000.0
    assert pp.to_canonical(6.0, "Precip", "mm timestep-1", 10800.0) == pytest.approx(6.0 / 10800.0)
    assert pp.to_canonical(2.0, "Precip", "mm/day") == pytest.approx(2.0 / 86400.0)
    assert pp.to_canonical(20.0, "Tair", "degC") == pytest.approx(293.15)
    assert pp.to_canonical(40.0, "VPD", "Pa") == pytest.approx(0.4)
    with pytest.raises(DataError, match=r"to_canonical \(Wind\): units 'knots'; expected 'm s-1'"):
        pp.to_canonical(3.0, "Wind", "knots")


def test_apply_qc_counts(tha):
    out = apply_qc(tha, max_qc=0)
    assert int(out["Qh"].notnull().sum()) == 16603 and int(out["Qle"].notnull().sum()) == 16179
    assert out["Qh"].attrs["qc_removed"] == 17520 - 16603 and out["Qh"].attrs["qc_max"] == 0
    out1 = apply_qc(tha, max_qc=1)
    assert int(out1["Qle"].notnull().sum()) == 16179 + 1313
    assert int(out["Tair"].notnull().sum()) == 17520  # no QC column: untouched
    assert int(tha["Qh"].notnull().sum()) == 17520  # input unchanged


def test_qc_mask_rules():
    t = pd.date_range("2000-01-01", periods=5, freq="30min")
    ds = xr.Dataset({
        "Qle": ("time", [1.0, 2.0, np.nan, 4.0, 5.0]),
        "Qle_qc": ("time", np.array([0, 2, -1, 1, 3], dtype=np.int8)),
        "LWdown": ("time", [300.0, 310, 320, 330, 340]),
        "LWdown_estimated": ("time", [False, True, True, False, False]),
    }, coords={"time": t})
    assert qc_mask(ds, "Qle", 1).values.tolist() == [True, False, False, True, False]
    assert qc_mask(ds, "Qle", None).values.tolist() == [True, True, False, True, True]
    assert qc_mask(ds, "LWdown", 0).values.tolist() == [True, False, False, True, True]
    assert qc_mask(ds, "LWdown", 0, include_filled=True).values.all()
    with pytest.raises(DataError, match=r"variable 'Qh' not in the dataset; available: \['LWdown', 'Qle'\]"):
        qc_mask(ds, "Qh", 0)


def test_derived_hand_computed(wkg):
    # first row: TA 25.149 degC, VPD 27.45 hPa, PA 85.348 kPa (Magnus-Sonntag e_s = 3188.2236 Pa)
    ds = add_derived(wkg.drop_vars("RH").isel(time=slice(0, 3)))
    assert ds["Qair"].values[0] == pytest.approx(0.0032364829, rel=1e-7)
    assert ds["RH"].values[0] == pytest.approx(13.9018995, rel=1e-7)  # measured RH was 14.1 %
    assert ds["rho_air"].values[0] == pytest.approx(0.99475752, rel=1e-7)
    assert ds["lambda_v"].values[0] == pytest.approx(2441396.87, rel=1e-9)
    assert ds["Qair"].attrs["derived_from"] == "VPD, Tair, Psurf" and ds["Qair"].attrs["units"] == "kg kg-1"
    # never overwrites: VPD from the file is kept
    assert add_derived(wkg)["VPD"].values[0] == 27.45


def test_precipitation_phase():
    t = np.array([270.0, 273.15, 274.15, 275.15, 280.0])
    assert liquid_fraction(t).tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]
    assert liquid_fraction(274.15, 273.15 - 1.0, 273.15 + 3.0) == pytest.approx(0.5)
    ds = xr.Dataset({"Tair": ("time", t), "Precip": ("time", np.full(5, 1e-4))},
                    coords={"time": pd.date_range("2000-01-01", periods=5, freq="h")})
    out = partition_precip(ds)
    np.testing.assert_allclose(out["Rainf"].values, [0, 0, 5e-5, 1e-4, 1e-4])
    np.testing.assert_allclose(out["Rainf"].values + out["Snowf"].values, ds["Precip"].values, rtol=0, atol=0)
    with pytest.raises(ValueError, match="must exceed"):
        liquid_fraction(t, 275.0, 274.0)


# ---- radiation and longwave


def test_toa_daily_total():
    t = pd.date_range("2003-09-03", periods=48, freq="30min")
    ra = radiation.toa_shortwave(t, -20.0, 0.0, 0.0, 1800.0).mean() * 86400 / 1e6  # MJ m-2 d-1
    # closed-form daily total (FAO-56 eq. 21) with the same (Spencer 1971) declination 7.846 deg
    # and eccentricity factor: the interval means integrate to it
    decl, phi = np.deg2rad(7.845917), np.deg2rad(-20.0)
    g = 2 * np.pi * 245 / 365
    e0 = 1.000110 + 0.034221 * np.cos(g) + 0.001280 * np.sin(g)
    ws = np.arccos(-np.tan(phi) * np.tan(decl))
    closed = 1440 / np.pi * 1361 * 60 / 1e6 * e0 * (ws * np.sin(phi) * np.sin(decl) + np.cos(phi) * np.cos(decl) * np.sin(ws))
    assert ra == pytest.approx(closed, rel=1e-4)
    # FAO-56 example 8: 32.2 MJ m-2 d-1 (its approximate declination is 6.9 deg; Gsc 1367 W m-2)
    assert ra == pytest.approx(32.2, rel=0.025)
    # equator at the March equinox: S0 E0 / pi
    t = pd.date_range("2003-03-21", periods=48, freq="30min")
    assert radiation.toa_shortwave(t, 0.0, 0.0, 0.0, 1800.0).mean() == pytest.approx(1361 / np.pi, rel=0.01)


def test_toa_timing_at_us_wkg(wkg):
    toa = toa_shortwave(wkg.sel(time="2004-06-21"))
    # solar noon at -109.94 E, UTC-7 is 12:20 LST (+EoT): the 12:00-12:30 interval is the brightest
    assert pd.Timestamp(toa["time"].values[int(np.argmax(toa.values))]) == pd.Timestamp("2004-06-21 12:00")
    assert float(toa.max()) == pytest.approx(1361 * 0.9675 * np.cos(np.deg2rad(31.7365 - 23.44)), rel=0.01)
    # clear-sky transmissivity of this dry, 1531 m high site: 99th percentile of SWdown / TOA
    full = toa_shortwave(wkg)
    ratio = (wkg["SWdown"] / full).where(full > 300).to_series().dropna()
    assert 0.8 < ratio.quantile(0.99) < 0.9


def test_clear_sky_emissivity_hand_values():
    # T 288.15 K, e 1200 Pa: Brutsaert 1.24 (12/288.15)^(1/7); Prata w = 46.5 x 12 / 288.15
    assert radiation.clear_sky_emissivity(288.15, 1200.0) == pytest.approx(0.787437957, rel=1e-8)
    assert radiation.clear_sky_emissivity(288.15, 1200.0, "prata1996") == pytest.approx(0.792022566, rel=1e-8)
    lw = radiation.longwave_down(288.15, 1200.0, cloud=0.5)
    assert lw == pytest.approx((0.5 + 0.5 * 0.787437957) * 5.670367e-8 * 288.15**4, rel=1e-8)
    assert radiation.cloud_fraction([0.0, 300.0, 600.0, 900.0, 0.0], [0.0, 600.0, 600.0, 600.0, 0.0]).tolist() == [0.5, 0.5, 0.0, 0.0, 0.0]


def test_lwdown_estimate_against_us_wkg(wkg):
    """US-Wkg has measured LW_IN (README §3). Measured: RMSE 19.9 W m-2, bias +0.8 (11 496
    half-hours) with the cloud correction; 29.5 W m-2 clear-sky only."""
    lw = wkg["LWdown"].values
    est = estimate_lwdown(wkg)
    ok = np.isfinite(est.values) & np.isfinite(lw)
    assert ok.sum() == 11496
    d = est.values[ok] - lw[ok]
    rmse, bias = float(np.sqrt(np.mean(d**2))), float(d.mean())
    assert rmse < 22.0 and abs(bias) < 3.0
    clear = estimate_lwdown(wkg, cloud_correction=False).values[ok] - lw[ok]
    assert np.sqrt(np.mean(clear**2)) > rmse + 7.0
    assert np.corrcoef(est.values[ok], lw[ok])[0, 1] > 0.9
    assert "Crawford & Duchon" in est.attrs["estimate"]


# ---- gaps


def test_find_gaps_us_wkg(wkg):
    g = find_gaps(wkg, "Wind")
    assert g["n_steps"].tolist() == [1, 14]
    assert g["start"].iloc[1] == pd.Timestamp("2004-09-19 23:30") and g["end"].iloc[1] == pd.Timestamp("2004-09-20 06:30")
    assert g["hours"].iloc[1] == 7.0
    rep = gap_report(wkg)
    per = rep.groupby("variable")["n_steps"].agg(["size", "sum"])
    assert per.loc["SWdown"].tolist() == [53, 74] and per.loc["Qle"].tolist() == [345, 1064]
    assert (rep.groupby("variable")["n_steps"].sum() == wkg[list(per.index)].isnull().sum().to_pandas()[per.index]).all()


def test_gaps_longer_than_a_day(tha, shared_data):
    g = gap_report(tha, min_hours=24)
    assert g["variable"].unique().tolist() == ["Ustar"]
    assert g["n_steps"].tolist() == [211, 62, 87, 155]
    assert g["start"].iloc[0] == pd.Timestamp("2010-01-01 00:30") and g["end"].iloc[0] == pd.Timestamp("2010-01-05 10:00")
    fr = _read(shared_data / "fluxnet" / "FR-Pue_200501-200512_HH.csv")
    long = gap_report(fr, ["Ustar"], min_hours=24)
    assert len(long) == 14 and long["hours"].max() == 173.5


def test_mean_diurnal_cycle_synthetic():
    t = pd.date_range("2001-01-01", periods=48 * 40, freq="30min")
    day = np.arange(len(t)) // 48
    slot = np.arange(len(t)) % 48
    v = slot.astype(float) + 100.0 * day
    clim = mean_diurnal_cycle(v, t, 1800.0, window_days=2)
    # day 10, slot 5: mean over days 8..12 of (5 + 100 d) = 5 + 1000
    assert clim[10 * 48 + 5] == pytest.approx(1005.0)
    assert clim[0 * 48 + 7] == pytest.approx(7 + 100.0)  # days 0..2 at the start
    whole = mean_diurnal_cycle(v, t, 1800.0, window_days=None)
    assert whole[3] == pytest.approx(3 + 100 * 19.5)


def test_mean_diurnal_cycle_of_stamps_off_the_hour():
    """Hourly stamps at :30 (and half-hourly at :15/:45) are each their own slot of the day; rounding
    their time of day put 23:30 in a 25th slot (an IndexError) and two stamps in one slot."""
    for freq, start in (("1h", "2001-01-01 00:30"), ("30min", "2001-01-01 00:15")):
        t = pd.date_range(start, periods=int(86400 / pd.Timedelta(freq).total_seconds()) * 10, freq=freq)
        v = (t.hour * 60 + t.minute).to_numpy(float)  # the time of day: its own mean in every slot
        np.testing.assert_array_equal(mean_diurnal_cycle(v, t, pd.Timedelta(freq).total_seconds(), window_days=2), v)


# ---- prepare_forcing


def test_prepare_forcing_us_wkg(wkg):
    out = prepare_forcing(wkg)
    for v in FORCING_VARIABLES:
        assert out[v].notnull().all(), v
        assert f"{v}_filled" in out
    rep = fill_report(out).set_index("variable")
    assert rep.loc["SWdown", ["n_missing", "n_interpolated", "n_diurnal_cycle"]].tolist() == [74, 74, 0]
    assert rep.loc["Wind", ["n_missing", "n_interpolated", "n_diurnal_cycle"]].tolist() == [15, 1, 14]
    assert rep.loc["Tair", "n_interpolated"] == 1 and rep.loc["LWdown", "n_estimated"] == 0
    assert int(out["SWdown_filled"].sum()) == 74 and int(out["Wind_filled"].sum()) == 15
    assert not out["LWdown_estimated"].any()
    # the interpolated value of a one-step gap is the mean of its neighbours
    t = pd.Timestamp("2004-08-18 12:30")
    i = int(np.nonzero(out["time"].values == np.datetime64(t))[0][0])
    assert out["Wind"].values[i] == pytest.approx(0.5 * (wkg["Wind"].values[i - 1] + wkg["Wind"].values[i + 1]))
    # the 7-hour Wind gap gets the mean of the same half-hour over +-15 days
    t = pd.Timestamp("2004-09-20 02:00")
    i = int(np.nonzero(out["time"].values == np.datetime64(t))[0][0])
    s = wkg["Wind"].to_series()
    same = s[(s.index.time == t.time()) & (abs((s.index.normalize() - t.normalize()).days) <= 15)]
    assert out["Wind"].values[i] == pytest.approx(same.mean())
    # Qair derived from VPD, Tair, Psurf; its flag follows the filled inputs
    assert out["Qair"].values[0] == pytest.approx(0.0032364829, rel=1e-7)
    assert int(out["Qair_filled"].sum()) == int((out["VPD_filled"] | out["Tair_filled"] | out["Psurf_filled"]).sum())
    report = json.loads(out.attrs["fill_report"])
    assert report["Wind"]["gaps_over_1d"] == []
    # targets untouched
    assert int(out["Qle"].isnull().sum()) == int(wkg["Qle"].isnull().sum())


def test_prepare_forcing_interpolation_limit(wkg):
    ds = wkg.isel(time=slice(0, 48 * 40)).copy(deep=True)
    tair = ds["Tair"].values.copy()
    tair[500:504] = np.nan  # 2 h: interpolated
    tair[900:905] = np.nan  # 2.5 h: mean diurnal cycle
    tair[1500:1500 + 96] = np.nan  # 2 days: mean diurnal cycle, listed as a gap over a day
    ds["Tair"] = ("time", tair, ds["Tair"].attrs)
    out = prepare_forcing(ds, max_interp_hours=2.0)
    method = np.zeros(ds.sizes["time"], dtype=int)
    method[500:504] = 1
    np.testing.assert_allclose(out["Tair"].values[500:504], np.interp(np.arange(500, 504), [499, 504], [tair[499], tair[504]]))
    assert out["Tair_filled"].values[[499, 500, 503, 504]].tolist() == [False, True, True, False]
    rep = json.loads(out.attrs["fill_report"])["Tair"]
    assert rep["n_interpolated"] == 4
    assert rep["n_diurnal_cycle"] == 5 + 96
    assert len(rep["gaps_over_1d"]) == 1 and rep["gaps_over_1d"][0]["n_steps"] == 96


def test_prepare_forcing_estimates_missing_lwdown(tha):
    out = prepare_forcing(tha, keep_other=False)
    assert set(out.data_vars) == set(FORCING_VARIABLES) | {f"{v}_filled" for v in FORCING_VARIABLES} | {"LWdown_estimated", "VPD", "VPD_filled", "forcing_filled"}
    assert bool(out["LWdown_estimated"].all()) and int(out["LWdown_estimated"].sum()) == 17520
    assert not out["forcing_filled"].values.any()  # a whole-record LWdown estimate is listed, not masked
    assert 150.0 < float(out["LWdown"].min()) and float(out["LWdown"].max()) < 450.0
    assert fill_report(out).set_index("variable").loc["LWdown", "n_estimated"] == 17520
    assert json.loads(out.attrs["fill_report"])["LWdown"]["absent_from_source"] is True


def test_prepare_forcing_derives_the_gaps_of_the_other_humidity_variable(tha):
    """FLUXNET's RH is not gap-filled: its 61 missing steps at DE-Tha 2010 are derived from the
    filled VPD and Tair (RH = 100 (1 - VPD / e_s(T))), flagged, reported; observed RH is kept."""
    gap = tha["RH"].isnull().values
    assert int(gap.sum()) == 61
    out = prepare_forcing(tha)
    assert out["RH"].notnull().all() and int(out["RH_filled"].sum()) == 61 and out["RH_filled"].values[gap].all()
    np.testing.assert_array_equal(out["RH"].values[~gap], tha["RH"].values[~gap])
    i = int(np.argmax(gap))
    e_s = 611.2 * np.exp(17.62 * (out["Tair"].values[i] - 273.15) / (out["Tair"].values[i] - 273.15 + 243.12))
    assert out["RH"].values[i] == pytest.approx(100.0 * (1.0 - 100.0 * out["VPD"].values[i] / e_s), rel=1e-6)
    report = json.loads(out.attrs["fill_report"])["RH"]
    assert (report["n_derived"], report["derived_from"]) == (61, "VPD, Tair, Psurf")
    assert "RH: 61 missing steps derived from VPD, Tair, Psurf" in pp.repair_summary(out)


@pytest.mark.parametrize("name", ["AT-Neu_201007-201007_HH.csv", "DE-Tha_201406-201406_HH.csv", "FR-Pue_201205-201205_HH.csv"])
def test_prepare_forcing_without_swdown_is_an_error(shared_data, name):
    ds = _read(shared_data / "fluxnet" / name)
    with pytest.raises(DataError, match=rf"{name}: cannot build the model forcing: missing variable\(s\) SWdown .*PPFD"):
        prepare_forcing(ds)


def test_prepare_forcing_rejects_daily_and_unlocated(shared_data, wkg):
    dd = _read(shared_data / "fluxnet" / "original" / "FLX_US-Wi7_FLUXNET2015_FULLSET_DD_2005-2005_1-4.csv")
    with pytest.raises(DataError, match="FULLSET_DD_2005-2005_1-4.csv: prepare_forcing needs sub-daily data"):
        prepare_forcing(dd)
    nolw = wkg.drop_vars("LWdown").isel(time=slice(0, 96))
    nolw.attrs = {**nolw.attrs, "latitude": float("nan")}
    with pytest.raises(DataError, match="US-Wkg_200405-200412_HH.csv: top-of-atmosphere radiation needs the site latitude and longitude"):
        prepare_forcing(nolw)


def test_prepare_forcing_with_max_qc_on_plumber2(shared_data):
    dk = _read(shared_data / "fluxnet" / "original" / "DK-Fou_2005-2005_FLUXNET2015_Met.nc")
    as_given = prepare_forcing(dk)
    assert not any(bool(as_given[f"{v}_filled"].any()) for v in FORCING_VARIABLES)
    np.testing.assert_array_equal(as_given["LWdown"].values, dk["LWdown"].values)
    # with max_qc=3 the ERA-Interim values (flag 4) count as missing and are filled again:
    # LWdown is ERA everywhere -> estimated everywhere; Wind has 7137 ERA steps
    out = prepare_forcing(dk, max_qc=3)
    rep = fill_report(out).set_index("variable")
    assert rep.loc["Wind", "n_missing"] == int((dk["Wind_qc"] == 4).sum()) == 7137
    assert rep.loc["Precip", "n_missing"] == 725 and rep.loc["Psurf", "n_missing"] == 721
    assert rep.loc["LWdown", "n_estimated"] == 17520 and bool(out["LWdown_estimated"].all())
    assert int(out["Wind_filled"].sum()) == 7137 and rep.loc["Tair", "n_missing"] == 0
    keep = (dk["Wind_qc"] <= 3).values
    np.testing.assert_array_equal(out["Wind"].values[keep], dk["Wind"].values[keep])
