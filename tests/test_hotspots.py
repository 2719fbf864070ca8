"""Uncertainty hotspots of the learned parameters (hybridlsm.evaluation.hotspots, issue 13).

A synthetic run directory in which the relative MC-dropout spread of K_h and r_s is by
construction 3x larger at stable steps (RiB > 0.01) in July, so the hotspots, their conditions and
the binned spreads are known by hand."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from hybridlsm.domain import site_file_name
from hybridlsm.evaluation import hotspots as H
from hybridlsm.rundir import problem

SITE = "US Syn"  # not a safe file name: the folder and the plot use site_file_name
START, END = "2021-05-01", "2021-10-01"  # May to September, half-hourly
BASE, FACTOR = 0.1, 3.0
REAL_RUN = Path(__file__).resolve().parents[1] / "runs" / "us-wkg-uq"


def _time() -> np.ndarray:
    return pd.date_range(START, END, freq="30min", inclusive="left").values


def _ri(time: np.ndarray) -> np.ndarray:
    """Stable (0.05) at night 18-06 h, unstable (-0.5) 09-15 h, near-neutral (-0.02) in between."""
    hour = pd.DatetimeIndex(time).hour
    ri = np.full(time.size, -0.02)
    ri[(hour < 6) | (hour >= 18)] = 0.05
    ri[(hour >= 9) & (hour < 15)] = -0.5
    return ri


def _relative(time: np.ndarray, seed: int) -> np.ndarray:
    """BASE·(1 + 4 % noise), times FACTOR where RiB > 0.01 in July."""
    rng = np.random.default_rng(seed)
    rel = BASE * (1.0 + 0.04 * rng.uniform(size=time.size))
    july_stable = (pd.DatetimeIndex(time).month == 7) & (_ri(time) > 0.01)
    return np.where(july_stable, FACTOR * rel, rel)


def _obs(time: np.ndarray) -> xr.Dataset:
    rng = np.random.default_rng(1)
    hour = pd.DatetimeIndex(time).hour + pd.DatetimeIndex(time).minute / 60
    sw = np.clip(800 * np.sin(np.pi * (hour - 6) / 12), 0, None)
    n = time.size
    ds = xr.Dataset(
        {
            "Wind": ("time", 0.2 + 7.5 * rng.uniform(size=n), {"units": "m s-1"}),
            "SWdown": ("time", sw, {"units": "W m-2"}),
            "Tair": ("time", np.full(n, 295.0), {"units": "K"}),
            "VPD": ("time", np.full(n, 10.0), {"units": "hPa"}),
            "Precip": ("time", np.zeros(n), {"units": "kg m-2 s-1"}),
            "Qh": ("time", np.full(n, 50.0), {"units": "W m-2"}),
            "Qle": ("time", np.full(n, 80.0), {"units": "W m-2"}),
            "split": ("time", np.repeat(np.array([1, 2, 3], np.int8), -(-n // 3))[:n],
                      {"flag_values": "0 1 2 3", "flag_meanings": "unused_or_spinup train validation test"}),
        },
        coords={"time": time},
    )  # fmt: skip
    ds.attrs.update(site_id=SITE, igbp="GRA", time_step_s="1800.0", targets="Qle Qh", max_qc="1")
    return ds


def _model(time: np.ndarray, label: str, *, sd: bool, ri: bool = True, params: bool = True) -> xr.Dataset:
    n = time.size
    hour = pd.DatetimeIndex(time).hour
    qh = np.where((hour >= 8) & (hour < 17), 150.0, 5.0)  # |Qh| < 10 W m-2 at night: no relative spread
    data = {"Qh": ("time", qh, {"units": "W m-2"}), "Qle": ("time", np.full(n, 60.0), {"units": "W m-2"})}
    if params:
        kh = 0.01 + 0.02 * np.random.default_rng(2).uniform(size=n)
        rs = 100.0 + 900.0 * np.random.default_rng(3).uniform(size=n)
        data |= {"Kh": ("time", kh, {"units": "m2 s-1"}), "rs": ("time", rs, {"units": "s m-1"}),
                 "ra": ("time", np.full(n, 50.0), {"units": "s m-1"})}  # fmt: skip
        if sd:
            data |= {"Kh_sd": ("time", kh * _relative(time, 10), {"units": "m2 s-1"}),
                     "rs_sd": ("time", rs * _relative(time, 11), {"units": "s m-1"})}  # fmt: skip
    if ri:
        data["RiB"] = ("time", _ri(time), {"units": "1"})
    if sd:
        from hybridlsm.domain.write import SD_PARTS

        long = SD_PARTS["_sd_epistemic"]
        data |= {"Qh_sd_epistemic": ("time", 0.2 * qh, {"units": "W m-2", "long_name": long.format("Qh")}),
                 "Qh_sd": ("time", 0.2 * qh, {"units": "W m-2"})}  # fmt: skip
    ds = xr.Dataset(data, coords={"time": time})
    ds.attrs.update(model=label, config="synthetic.yaml", experiment="all", site=SITE)
    return ds


@pytest.fixture
def run_dir(tmp_path) -> Path:
    time = _time()
    d = tmp_path / "run" / "predictions" / site_file_name(SITE)
    d.mkdir(parents=True)
    _obs(time).to_netcdf(d / "obs.nc")
    _model(time, "hybrid_param", sd=True).to_netcdf(d / "hybrid_param.nc")
    _model(time, "physics", sd=False).to_netcdf(d / "physics.nc")  # no _sd: skipped
    _model(time, "lstm", sd=True, ri=False, params=False).to_netcdf(d / "lstm.nc")  # flux SD only, no RiB
    return tmp_path / "run"


def _row(table: pd.DataFrame, model: str, parameter: str) -> pd.Series:
    sub = table[(table.model == model) & (table.parameter == parameter)]
    assert len(sub) == 1, (model, parameter, table[["model", "parameter"]])
    return sub.iloc[0]


def test_hotspots_are_the_stable_july_steps(run_dir):
    t = H.hotspots(run_dir)  # quantile 0.9
    time = _time()
    n = time.size  # 153 days: July's stable half is 744 steps = 10.1 % > 10 % of the record
    month = pd.DatetimeIndex(time).month
    assert n == 153 * 48
    for p in ("Kh", "rs"):
        r = _row(t, "hybrid_param", p)
        assert r.site == SITE and r.igbp == "GRA" and r.ri_source == "hybrid_param"
        assert r.n == n
        assert abs(r.n_hotspot - 0.1 * n) <= 1
        assert r.frac_stable_hotspot == pytest.approx(1.0, abs=1e-12)
        assert r.frac_stable_all == pytest.approx(0.5)  # 12 of 24 hours
        assert r.ri_median_hotspot == pytest.approx(0.05)
        # every hotspot in July: JJA share 1, against the share of JJA in May-September
        assert r.top_month == "Jul" and r.top_season == "JJA"
        assert r.frac_top_month_hotspot == pytest.approx(1.0)
        assert r.frac_top_month_all == pytest.approx(31 / 153)
        assert r.frac_JJA_hotspot == pytest.approx(1.0)
        assert (r.frac_MAM_hotspot, r.frac_SON_hotspot, r.frac_DJF_hotspot) == (0.0, 0.0, 0.0)
        assert (r.frac_MAM_all, r.frac_JJA_all, r.frac_SON_all, r.frac_DJF_all) == pytest.approx(
            (31 / 153, 92 / 153, 30 / 153, 0.0))
        # stable steps are night steps (SWdown = 0), the hotspots none of them daytime
        assert r.frac_day_hotspot == 0.0
        day = np.clip(800 * np.sin(np.pi * (pd.DatetimeIndex(time).hour + pd.DatetimeIndex(time).minute / 60 - 6)
                                   / 12), 0, None) > H.DAYTIME_SWDOWN  # fmt: skip
        assert r.frac_day_all == pytest.approx(day.mean())
        assert r.spread_ratio == pytest.approx(FACTOR, rel=0.05)
        assert r.threshold > BASE * 1.04 and r.hotspot_median_spread > FACTOR * BASE
        obs = _obs(time)
        wind = obs.Wind.values
        m = _model(time, "x", sd=True)
        rel = m[f"{p}_sd"].values / m[p].values
        hot = rel > r.threshold
        assert hot.sum() == r.n_hotspot and np.all(month[hot] == 7)
        assert r.wind_median_hotspot == pytest.approx(np.median(wind[hot]))
        assert r.wind_median_all == pytest.approx(np.median(wind))


def test_binned_spread_matches_hand_computed_means(run_dir):
    t = H.hotspots(run_dir)
    b = H.binned_spread(run_dir)
    time = _time()
    m = _model(time, "x", sd=True)
    ri, wind = _ri(time), _obs(time).Wind.values
    rel = m.Kh_sd.values / m.Kh.values
    r = _row(t, "hybrid_param", "Kh")
    by_hand = {
        "unstable": rel[ri < -0.1].mean(),
        "near_neutral": rel[(ri >= -0.1) & (ri <= 0.01)].mean(),
        "stable": rel[ri > 0.01].mean(),
    }
    # stable: July steps 3x -> mean = BASE-ish·(1 + 2·share of July among stable steps)
    assert by_hand["stable"] / by_hand["unstable"] == pytest.approx(1 + 2 * 31 / 153, rel=0.01)
    for name, value in by_hand.items():
        assert r[f"spread_ri_{name}"] == pytest.approx(value, rel=1e-12)
        row = b[(b.model == "hybrid_param") & (b.parameter == "Kh") & (b.variable == "RiB") & (b.bin == name)].iloc[0]
        assert row["mean"] == pytest.approx(value, rel=1e-12)
    assert b[(b.model == "hybrid_param") & (b.parameter == "Kh") & (b.variable == "RiB")].n.tolist() == [
        int((ri < -0.1).sum()), int(((ri >= -0.1) & (ri <= 0.01)).sum()), int((ri > 0.01).sum())]
    for lo, hi, col in ((0, 1, "spread_wind_0_1"), (2, 4, "spread_wind_2_4"), (6, np.inf, "spread_wind_6_inf")):
        assert r[col] == pytest.approx(rel[(wind >= lo) & (wind < hi)].mean(), rel=1e-12)


def test_models_without_sd_are_skipped_and_flux_rows_use_another_models_ri(run_dir):
    t = H.hotspots(run_dir)
    assert "physics" not in set(t.model)
    assert set(t.parameter[t.model == "hybrid_param"]) == {"Kh", "rs", "Qh_epistemic"}
    lstm = _row(t, "lstm", "Qh_epistemic")
    assert lstm.ri_source == "physics"  # lstm writes no RiB
    # |Qh| ≥ 10 W m-2 only 08-17 h: 18 of 48 half-hours; sd/|Qh| = 0.2 everywhere -> no hotspot above it
    assert lstm.n == 153 * 18 and lstm.n_hotspot == 0 and lstm.median_spread == pytest.approx(0.2)
    assert "Qle_epistemic" not in set(t.parameter)  # no Qle_sd_epistemic written
    only_params = H.hotspots(run_dir, include_fluxes=False)
    assert set(only_params.parameter) == {"Kh", "rs"} and set(only_params.model) == {"hybrid_param"}
    test_only = H.hotspots(run_dir, splits=[3], include_fluxes=False)
    assert _row(test_only, "hybrid_param", "Kh").n == int((_obs(_time()).split.values == 3).sum())
    with pytest.raises(ValueError, match="quantile"):
        H.hotspots(run_dir, quantile=90)


def test_parameter_uncertainty_summaries(run_dir):
    u = H.parameter_uncertainty(run_dir)
    time = _time()
    m = _model(time, "x", sd=True)
    rel = m.rs_sd.values / m.rs.values
    sub = u[(u.model == "hybrid_param") & (u.parameter == "rs")]
    allrow = sub[sub.by == "all"].iloc[0]
    assert allrow.period == "all" and allrow.n == time.size
    assert allrow["median"] == pytest.approx(np.median(rel))
    assert allrow.p90 == pytest.approx(np.quantile(rel, 0.9))
    months = sub[sub.by == "month"]
    assert months.period.tolist() == ["2021-05", "2021-06", "2021-07", "2021-08", "2021-09"]
    july = pd.DatetimeIndex(time).month == 7
    jul = months[months.period == "2021-07"].iloc[0]
    assert jul["mean"] == pytest.approx(rel[july].mean()) and jul.n == july.sum()
    assert jul["mean"] == pytest.approx(BASE * 1.02 * (1 + FACTOR) / 2, rel=0.02)  # half the steps 3x
    hours = sub[sub.by == "hour"]
    assert hours.period.tolist() == [f"{h:02d}" for h in range(24)]
    h3 = hours[hours.period == "03"].iloc[0]  # a stable hour: 3x in July only
    assert h3["mean"] == pytest.approx(rel[pd.DatetimeIndex(time).hour == 3].mean())
    assert list(u.columns) == list(H.UNCERTAINTY_COLUMNS)


def test_relative_spread_definition():
    mean = np.array([2.0, 0.0, -1.0, np.nan, 4.0])
    sd = np.array([1.0, 1.0, 1.0, 1.0, -1.0])
    np.testing.assert_array_equal(H.relative_spread(mean, sd), [0.5, np.nan, np.nan, np.nan, np.nan])
    flux = np.array([-20.0, 5.0, 10.0])
    np.testing.assert_allclose(H.relative_spread(flux, np.array([2.0, 2.0, 1.0]), flux=True), [0.1, np.nan, 0.1])


def test_write_hotspot_outputs_and_html(run_dir):
    out = H.write_hotspot_outputs(run_dir)
    stem = site_file_name(SITE)
    assert stem == "US_Syn"
    png = run_dir / "plots" / f"{stem}_hybrid_param_hotspots.png"
    assert list(out.plots.values()) == [png] and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (run_dir / "plots" / f"{stem}_physics_hotspots.png").exists()
    assert not (run_dir / "plots" / f"{stem}_lstm_hotspots.png").exists()
    for name in ("hotspots.csv", "parameter_uncertainty.csv", "hotspots_binned.csv"):
        assert problem(run_dir / name) is None  # written with a matching .sha256 sidecar
    csv = pd.read_csv(run_dir / "hotspots.csv", keep_default_na=False, na_values=[""])
    assert list(csv.columns) == list(H.HOTSPOT_COLUMNS)
    assert _row(csv, "hybrid_param", "Kh").frac_stable_hotspot == pytest.approx(1.0)
    assert out.without_parameter_sd == {SITE: ["lstm", "physics"]}
    assert not list(run_dir.rglob("*.tmp"))

    html = H.hotspots_html(run_dir)
    assert html.startswith("<h2>Parameter uncertainty hotspots</h2>")
    assert html.count("<img") == 1 and "data:image/png;base64," in html
    assert "lstm, physics" in html  # the models without parameter SDs are named
    assert "<table>" in html and "Jul: 100 / 20" in html  # top month: hotspot share / share of all steps


def test_no_parameter_sd_gives_no_section_and_removes_stale_tables(run_dir):
    H.write_hotspot_outputs(run_dir)
    d = run_dir / "predictions" / site_file_name(SITE)
    (d / "hybrid_param.nc").unlink()
    assert H.hotspots_html(run_dir) == ""  # only a flux SD (lstm) is left
    assert problem(run_dir / "hotspots.csv") is None  # its flux rows are still tabulated
    (d / "lstm.nc").unlink()
    out = H.write_hotspot_outputs(run_dir)
    assert out.table.empty and not out.files
    assert not (run_dir / "hotspots.csv").exists() and not (run_dir / "hotspots.csv.sha256").exists()


def test_real_example_run(tmp_path):
    """The example run written by ``hybridlsm run configs/us-wkg-uq.yaml`` (read, and its predictions
    copied for the files)."""
    if not (REAL_RUN / "predictions").is_dir():
        pytest.skip(f"example run not found at {REAL_RUN} (hybridlsm run configs/us-wkg-uq.yaml writes it)")
    t = H.hotspots(REAL_RUN)
    assert not t.empty and set(t.site) == {"US-Wkg"} and set(t.igbp) == {"GRA"}
    assert (abs(t.n_hotspot - 0.1 * t.n) <= 1).all()  # the steps above the 90th percentile
    assert (t.spread_ratio > 1).all()
    seasons = t[[f"frac_{s}_hotspot" for s in ("DJF", "MAM", "JJA", "SON")]].sum(axis=1)
    np.testing.assert_allclose(seasons, 1.0)
    assert t[["frac_stable_hotspot", "frac_day_hotspot"]].apply(lambda c: c.between(0, 1)).all().all()
    has_param_sd = t.parameter.isin(["Kh", "rs"]).any()
    run = tmp_path / "run"
    shutil.copytree(REAL_RUN / "predictions", run / "predictions")
    html = H.hotspots_html(run)
    assert (html != "") == has_param_sd
    assert (run / "hotspots.csv").is_file()
