"""Uncertainty scoring (issue 13): CRPS, interval coverage and width, spread–skill, reliability, the
climatological reference ensemble, and the "Predictive uncertainty" section of the report."""

import math

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from matplotlib import image as mpimg
from scipy.stats import norm

from hybridlsm.evaluation import metrics as M
from hybridlsm.evaluation import probabilistic as P
from hybridlsm.evaluation.report import build_report
from test_report import _write_site  # the synthetic run directory of the report tests

LEVELS = (0.5, 0.8, 0.9, 0.95)


# --------------------------------------------------------------------------------------------
# Gaussian CRPS, coverage, spread–skill


def test_gaussian_crps_at_a_point_by_hand():
    # y = 3, μ = 1, σ = 2: z = 1, Φ(1) = 0.8413447461, φ(1) = 0.2419707245, 1/√π = 0.5641895835
    # CRPS = 2·[1·(2·0.8413447461 − 1) + 2·0.2419707245 − 0.5641895835] = 2·0.6024413576
    by_hand = 2 * (1 * (2 * 0.8413447461 - 1) + 2 * 0.2419707245 - 0.5641895835)
    assert by_hand == pytest.approx(1.2048827153, abs=1e-9)
    assert float(M.crps_gaussian(3.0, 1.0, 2.0)) == pytest.approx(by_hand, abs=1e-9)
    # the table's CRPS column is the mean of the pointwise closed form over the scored steps
    time = pd.date_range("2021-06-01", periods=3, freq="30min")
    tab = P.probabilistic_table(np.array([3.0, 1.0, np.nan]), {"m": np.array([1.0, 1.0, 0.0])},
                                {"m": np.array([2.0, 2.0, 1.0])}, time, scales=("halfhourly",))
    row = tab.iloc[0]
    at_mean = 2 * (2 * 0.3989422804 - 0.5641895835)  # y = μ: z = 0, φ(0) = 1/√(2π)
    assert row.crps == pytest.approx((by_hand + at_mean) / 2, abs=1e-9)
    assert row.n == 2 and row.model == "m" and math.isnan(row.crpss)  # no reference given


def _gaussian_forecasts(n=10_000, seed=13):
    rng = np.random.default_rng(seed)
    mu = rng.uniform(0.0, 300.0, n)
    sd = rng.uniform(5.0, 50.0, n)  # heteroscedastic
    y = mu + sd * rng.standard_normal(n)
    time = pd.date_range("2021-01-01", periods=n, freq="30min")
    return y, mu, sd, time


def test_coverage_calibrated_and_overconfident():
    y, mu, sd, time = _gaussian_forecasts()
    tab = P.probabilistic_table(y, {"calibrated": mu, "overconfident": mu}, {"calibrated": sd, "overconfident": sd / 2},
                                time, scales=("halfhourly",), levels=LEVELS).set_index("model")
    for level in LEVELS:
        key = f"{100 * level:g}"
        assert abs(tab.loc["calibrated", f"coverage_{key}"] - level) <= 0.015, level
        # σ halved: P(|Z| ≤ z_l/2) = 0.264, 0.478, 0.589, 0.673 for 50, 80, 90, 95 %
        assert tab.loc["overconfident", f"coverage_{key}"] < level - 0.2, level
        z = norm.ppf(0.5 + level / 2)
        assert tab.loc["calibrated", f"width_{key}"] == pytest.approx(2 * z * sd.mean(), rel=1e-12)
        assert tab.loc["overconfident", f"width_{key}"] == pytest.approx(z * sd.mean(), rel=1e-12)
    # the calibrated forecast has the better CRPS
    assert tab.loc["calibrated", "crps"] < tab.loc["overconfident", "crps"]
    assert (tab.n == y.size).all()


def test_spread_skill_calibrated():
    y, mu, sd, time = _gaussian_forecasts()
    row = P.probabilistic_table(y, {"m": mu}, {"m": sd}, time, scales=("halfhourly",)).iloc[0]
    assert row.spread == pytest.approx(math.sqrt(np.mean(sd**2)), rel=1e-12)  # RMS σ
    assert row.rmse == pytest.approx(math.sqrt(np.mean((mu - y) ** 2)), rel=1e-12)
    assert row.spread_skill_ratio == pytest.approx(1.0, abs=0.02)
    # larger σ goes with larger errors: E|e| = σ·√(2/π)
    assert row.spread_skill_r == pytest.approx(np.corrcoef(sd, np.abs(mu - y))[0, 1], rel=1e-12)
    assert row.spread_skill_r > 0.3
    # (the plain mean σ / RMSE would read 0.90 for this calibrated forecast: why the RMS spread is used)
    assert np.mean(sd) / row.rmse < 0.93
    over = P.probabilistic_table(y, {"m": mu}, {"m": sd / 2}, time, scales=("halfhourly",)).iloc[0]
    assert over.spread_skill_ratio == pytest.approx(0.5, abs=0.02)


def test_reliability_curve():
    y, mu, sd, _ = _gaussian_forecasts()
    rel = P.reliability_curve(y, mu, sd)
    assert rel.nominal == pytest.approx(np.linspace(0.05, 0.95, 19))
    assert np.max(np.abs(rel.observed - rel.nominal)) <= 0.015 and rel.n == y.size
    over = P.reliability_curve(y, mu, sd / 2, mask=np.arange(y.size) < 5000)
    assert over.n == 5000 and np.all(over.observed < over.nominal)
    # observed coverage by hand at 90 %
    z = norm.ppf(0.95)
    assert rel.nominal[17] == pytest.approx(0.9)
    assert rel.observed[17] == pytest.approx(np.mean(np.abs(y - mu) <= z * sd), abs=1e-12)


def test_negative_sd_is_an_error():
    time = pd.date_range("2021-06-01", periods=2, freq="30min")
    with pytest.raises(ValueError, match=r"model 'bad'.*negative"):
        P.probabilistic_table(np.ones(2), {"bad": np.ones(2)}, {"bad": np.array([1.0, -1.0])}, time)


# --------------------------------------------------------------------------------------------
# daily sd rule


def test_daily_sd_rule_tiny_example():
    # two days of 6-hourly steps (4 per day); the third step of day 2 is not scored (mask)
    time = pd.date_range("2021-06-01", periods=8, freq="6h")
    obs = np.arange(8.0)
    mu = obs + 1.0
    sd = np.array([1.0, 2.0, 2.0, 4.0, 3.0, 4.0, 99.0, 12.0])
    mask = np.array([True] * 6 + [False, True])
    a = P.aggregate_gaussian(obs, mu, sd, time, "daily", mask, time_step_s=6 * 3600.0)
    assert a.obs == pytest.approx([1.5, 16 / 3])  # (0+1+2+3)/4, (4+5+7)/3
    assert a.mu == pytest.approx([2.5, 19 / 3])
    # independent errors: σ_day = √(Σσ²)/n = √(1+4+4+16)/4 = 5/4 and √(9+16+144)/3 = 13/3
    assert a.sd == pytest.approx([5 / 4, 13 / 3])
    c = P.aggregate_gaussian(obs, mu, sd, time, "daily", mask, time_step_s=6 * 3600.0, daily_sd="correlated")
    assert c.sd == pytest.approx([9 / 4, 19 / 3])  # perfectly correlated: mean σ (an upper bound)
    # fewer valid steps than min_valid_fraction × 4 -> no day
    few = P.aggregate_gaussian(obs, mu, sd, time, "daily", np.arange(8) != 0, time_step_s=6 * 3600.0,
                               min_valid_fraction=1.0)
    assert math.isnan(few.sd[0]) and math.isnan(few.obs[0]) and math.isnan(few.mu[0])
    assert few.sd[1] == pytest.approx(math.sqrt(9 + 16 + 99**2 + 144) / 4)
    # the daily row of the table scores these daily Gaussians
    tab = P.probabilistic_table(obs, {"m": mu}, {"m": sd}, time, mask, scales=("daily",),
                                time_step_s=6 * 3600.0).iloc[0]
    expect = np.mean(M.crps_gaussian(np.array([1.5, 16 / 3]), np.array([2.5, 19 / 3]), np.array([5 / 4, 13 / 3])))
    assert tab.scale == "daily" and tab.n == 2 and tab.crps == pytest.approx(expect, rel=1e-12)


# --------------------------------------------------------------------------------------------
# climatological ensemble


def _six_days():
    time = pd.date_range("2021-01-29", periods=6 * 48, freq="30min")  # Jan 29 .. Feb 3
    obs = np.arange(6 * 48, dtype=float)  # the value is the index: members identify their steps
    day = np.arange(obs.size) // 48
    reference = np.isin(day, [0, 1, 3, 4])  # Jan 29, 30, Feb 1, 2; Jan 31 and Feb 3 are scored
    return time, obs, reference


def test_climatological_ensemble_members_by_hand():
    time, obs, reference = _six_days()
    # 12:30 is half-hour slot 25: Jan 29 12:30 = step 25, Jan 30 = 73, Jan 31 = 121 (scored),
    # Feb 1 = 169, Feb 2 = 217, Feb 3 = 265 (scored)
    targets = time[[121, 265, 120]]
    ens = P.climatological_ensemble(obs, time, reference, targets, min_members=2)
    assert ens.shape == (3, 2)
    assert list(ens[0]) == [25.0, 73.0]  # January, 12:30: the reference days Jan 29 and 30 only
    assert list(ens[1]) == [169.0, 217.0]  # February, 12:30: Feb 1 and 2, never Jan or Feb 3 itself
    assert list(ens[2]) == [24.0, 72.0]  # January, 12:00
    # CRPS of {25, 73} at y = 121: (96 + 48)/2 − (2·48)/(2·2²) = 72 − 12 = 60
    assert P.crps_ragged(obs[[121]], ens[:1]) == pytest.approx([60.0])
    # a missing observation is no member; fewer than min_members -> no forecast (all NaN)
    obs2 = obs.copy()
    obs2[217] = np.nan
    ens2 = P.climatological_ensemble(obs2, time, reference, targets, min_members=2)
    assert list(ens2[0]) == [25.0, 73.0] and np.isnan(ens2[1]).all()
    ens1 = P.climatological_ensemble(obs2, time, reference, targets, min_members=1)
    assert list(ens1[1][np.isfinite(ens1[1])]) == [169.0]
    # the scored steps are never members: a target inside the reference is refused
    with pytest.raises(ValueError, match="reference"):
        P.climatological_ensemble(obs, time, reference, time[[25]])


def test_crps_ragged_equals_crps_ensemble_of_the_finite_members():
    members = np.array([[1.0, 4.0, np.nan, 2.0], [3.0, np.nan, np.nan, np.nan], [np.nan] * 4, [0.0, 1.0, 2.0, 3.0]])
    y = np.array([2.5, 1.0, 0.0, np.nan])
    out = P.crps_ragged(y, members)
    assert out[0] == pytest.approx(M.crps_ensemble(2.5, [1.0, 4.0, 2.0]))
    assert out[1] == pytest.approx(2.0)  # one member: |x − y|
    assert np.isnan(out[2]) and np.isnan(out[3])
    assert np.isnan(P.crps_ragged(y, members, min_members=2)[1])


def test_table_with_climatology_skill_and_overlap_check():
    time, obs, reference = _six_days()
    scored = ~reference
    rng = np.random.default_rng(0)
    mu = obs + rng.normal(0, 1, obs.size)
    tab = P.probabilistic_table(obs, {"m": mu}, {"m": np.ones(obs.size)}, time, scored, scales=("halfhourly",),
                                reference=reference, min_members=2).set_index("model")
    clim = tab.loc["climatology"]
    # each scored step has 2 members (the two reference days of its month at that half-hour)
    ens = P.climatological_ensemble(obs, time, reference, time[scored], min_members=2)
    c_by_hand = np.mean(np.abs(ens - obs[scored][:, None]).mean(1) - np.abs(ens[:, 0] - ens[:, 1]) / 4)
    assert clim.crps == pytest.approx(c_by_hand, rel=1e-12) and clim.n == 96
    m = tab.loc["m"]
    assert m.crpss == pytest.approx(1 - m.crps / clim.crps, rel=1e-12) and m.n_skill == 96
    assert clim.crpss == 0.0
    # against the fair CRPS (Ferro 2014): 1/(2M(M - 1)) = 1/4 for two members, against 1/(2M²) = 1/8
    fair_by_hand = np.mean(np.abs(ens - obs[scored][:, None]).mean(1) - np.abs(ens[:, 0] - ens[:, 1]) / 2)
    assert fair_by_hand < c_by_hand
    assert m.crpss_fair == pytest.approx(1 - m.crps / fair_by_hand, rel=1e-12) and m.crpss_fair < m.crpss
    assert clim.crpss_fair == pytest.approx(1 - c_by_hand / fair_by_hand, rel=1e-12) and clim.crpss_fair < 0
    with pytest.raises(ValueError, match="overlap"):
        P.probabilistic_table(obs, {"m": mu}, {"m": np.ones(obs.size)}, time, scored | (np.arange(obs.size) == 0),
                              reference=reference)


# --------------------------------------------------------------------------------------------
# the report section


def _add_uncertain_model(root, site):
    """A model with the hybrid's Qle/Qh and a predictive σ for Qle only (epistemic 0.6σ, aleatoric 0.8σ)."""
    d = root / "predictions" / site
    hyb = xr.load_dataset(d / "hybrid.nc")
    sd = 6.0 + 0.03 * np.abs(hyb.Qle.values)
    ds = xr.Dataset(
        {"Qle": hyb.Qle, "Qh": hyb.Qh, "Qle_sd": ("time", sd), "Qle_sd_epistemic": ("time", 0.6 * sd),
         "Qle_sd_aleatoric": ("time", 0.8 * sd)}, attrs=hyb.attrs | {"model": "unc"})
    ds.to_netcdf(d / "unc.nc")


@pytest.fixture(scope="module")
def unc_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("prob") / "syn"
    _write_site(root, "XX-Aaa", 0)
    _add_uncertain_model(root, "XX-Aaa")
    build_report(root)
    return root


def _crps_by_hand(y, mu, sd):
    z = (y - mu) / sd
    return sd * (z * (2 * norm.cdf(z) - 1) + 2 * norm.pdf(z) - 1 / math.sqrt(math.pi))


def test_report_section_csv_and_plot(unc_run):
    text = (unc_run / "report.html").read_text()
    assert "<h2>Predictive uncertainty</h2>" in text
    assert "XX-Aaa: reliability" in text  # the embedded diagram
    png = unc_run / "plots" / "XX-Aaa_reliability.png"
    raw = png.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and mpimg.imread(png)[..., :3].std() > 0.01
    df = pd.read_csv(unc_run / "metrics_probabilistic.csv")
    assert set(df.flux) == {"Qle"}  # no model wrote Qh_sd
    assert set(df.model) == {"unc", "climatology"} and set(df.scale) == {"halfhourly", "daily"}
    assert {"coverage_50", "coverage_95", "width_90", "spread_skill_r", "spread_skill_ratio", "crpss"} <= set(df)

    obs = xr.load_dataset(unc_run / "predictions/XX-Aaa/obs.nc")
    unc = xr.load_dataset(unc_run / "predictions/XX-Aaa/unc.nc")
    y, mu, sd = obs.Qle.values, unc.Qle.values, unc.Qle_sd.values
    qc = obs.Qle_qc.values
    ok = np.isfinite(y) & (obs.split.values == 3) & (qc >= 0) & (qc <= 1)
    row = df[(df.model == "unc") & (df.scale == "halfhourly")].iloc[0]
    assert row.n == ok.sum()
    assert row.crps == pytest.approx(np.mean(_crps_by_hand(y[ok], mu[ok], sd[ok])), rel=1e-9)
    assert row.epistemic_share == pytest.approx(0.36, rel=1e-9)
    z90 = norm.ppf(0.95)
    assert row.coverage_90 == pytest.approx(np.mean(np.abs(y[ok] - mu[ok]) <= z90 * sd[ok]), abs=1e-12)

    # daily: means over the scored half-hours (≥ 24 of 48), σ_day = √(Σσ²)/n
    t = pd.DatetimeIndex(obs.time.values)
    frame = pd.DataFrame({"y": y, "mu": mu, "v": sd**2}, index=t)[ok]
    g = frame.groupby(frame.index.normalize())
    days = g.count().y >= 24
    yd, md = g.mean().y[days].values, g.mean().mu[days].values
    sdd = np.sqrt(g.sum().v[days].values) / g.count().y[days].values
    drow = df[(df.model == "unc") & (df.scale == "daily")].iloc[0]
    assert drow.n == days.sum() and drow.crps == pytest.approx(np.mean(_crps_by_hand(yd, md, sdd)), rel=1e-9)

    # the climatology: usable train/validation Qle at the same month and half-hour, ≥ 10 members
    ref = np.isfinite(y) & np.isin(obs.split.values, [1, 2]) & (qc >= 0) & (qc <= 1)
    key = t.month * 100 + t.hour * 2 + t.minute // 30
    crps_c, fair_c, covered = [], [], []
    for i in np.flatnonzero(ok):
        x = y[ref & (key == key[i])]
        if x.size >= 10:
            crps_c.append(np.mean(np.abs(x - y[i])) - np.abs(x[:, None] - x[None, :]).sum() / (2 * x.size**2))
            fair_c.append(np.mean(np.abs(x - y[i])) - np.abs(x[:, None] - x[None, :]).sum() / (2 * x.size * (x.size - 1)))
            covered.append(i)
    clim = df[(df.model == "climatology") & (df.scale == "halfhourly")].iloc[0]
    assert 0 < clim.n == len(crps_c) < ok.sum()  # May (no reference month) and thin April slots left out
    assert clim.crps == pytest.approx(np.mean(crps_c), rel=1e-9)
    # CRPSS on the steps both cover; the hybrid-quality model beats the climatology
    assert row.n_skill == len(covered)
    crpss = 1 - np.mean(_crps_by_hand(y[covered], mu[covered], sd[covered])) / np.mean(crps_c)
    assert row.crpss == pytest.approx(crpss, rel=1e-9) and row.crpss > 0.3
    fair = 1 - np.mean(_crps_by_hand(y[covered], mu[covered], sd[covered])) / np.mean(fair_c)
    assert row.crpss_fair == pytest.approx(fair, rel=1e-9) and row.crpss_fair < row.crpss


def test_report_without_sd_says_so(tmp_path):
    root = tmp_path / "nosd"
    _write_site(root, "XX-Bbb", 1)
    text = build_report(root).read_text()
    i = text.index("<h2>Predictive uncertainty</h2>")
    section = text[i:text.index("</body>")]
    assert section.count("<p") == 1 and section.count(".") <= 2  # one sentence
    assert "_sd" in section
    assert not (root / "metrics_probabilistic.csv").exists()
    assert not list((root / "plots").glob("*reliability*"))

