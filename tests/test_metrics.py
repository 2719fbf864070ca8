"""Metrics against hand computations (docs/physics-reference §6)."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats

from hybridlsm.evaluation import metrics as M

SIM = np.array([1.0, 2.0, 4.0])
OBS = np.array([1.0, 2.0, 3.0])
# by hand: s − o = [0, 0, 1]; ō = 2; Σ(o − ō)² = 2; μ_s = 7/3
# s − s̄ = [−4/3, −1/3, 5/3] → Σ = 14/3; cov sum = 4/3 + 0 + 5/3 = 3
R_HAND = math.sqrt(27 / 28)  # 3 / √(14/3 · 2)
ALPHA_HAND = math.sqrt(7 / 3)  # √((14/9)/(2/3))
BETA_HAND = 7 / 6


def test_basic_scores_by_hand():
    assert M.mse(SIM, OBS) == pytest.approx(1 / 3)
    assert M.rmse(SIM, OBS) == pytest.approx(math.sqrt(1 / 3))
    assert M.mae(SIM, OBS) == pytest.approx(1 / 3)
    assert M.bias(SIM, OBS) == pytest.approx(1 / 3)
    assert M.mbe is M.bias
    assert M.percent_bias(SIM, OBS) == pytest.approx(100 / 6)
    assert M.nse(SIM, OBS) == pytest.approx(0.5)
    assert M.nme(SIM, OBS) == pytest.approx(0.5)  # Σ|s−o| = 1, Σ|o−ō| = 2
    assert M.pearson_r(SIM, OBS) == pytest.approx(R_HAND)
    assert M.r_squared(SIM, OBS) == pytest.approx(27 / 28)
    assert M.count_valid(SIM, OBS) == 3


def test_kge_components_by_hand():
    c = M.kge_components(SIM, OBS)
    assert c.r == pytest.approx(R_HAND)
    assert c.alpha == pytest.approx(ALPHA_HAND)
    assert c.beta == pytest.approx(BETA_HAND)
    assert c.n == 3
    expected = 1 - math.sqrt((R_HAND - 1) ** 2 + (ALPHA_HAND - 1) ** 2 + (BETA_HAND - 1) ** 2)
    assert c.kge == pytest.approx(expected)
    assert M.kge(SIM, OBS) == pytest.approx(expected)  # ≈ 0.4409

    c12 = M.kge_2012_components(SIM, OBS)
    gamma = ALPHA_HAND / BETA_HAND  # (σs/μs)/(σo/μo) = α/β
    assert c12.gamma == pytest.approx(gamma)
    assert c12.beta == pytest.approx(BETA_HAND)
    assert c12.r == pytest.approx(R_HAND)
    assert c12.kge == pytest.approx(1 - math.sqrt((R_HAND - 1) ** 2 + (gamma - 1) ** 2 + (1 / 6) ** 2))
    assert M.kge_2012(SIM, OBS) == pytest.approx(c12.kge)


def test_perfect_simulation():
    o = np.array([3.0, 1.0, 4.0, 1.0, 5.0])
    assert M.nse(o, o) == 1.0
    assert M.kge(o, o) == pytest.approx(1.0)
    assert M.kge_2012(o, o) == pytest.approx(1.0)
    assert M.rmse(o, o) == 0.0
    # mean-flow benchmark: KGE(ō, o) has r undefined -> NaN by contract, NSE = 0
    assert M.nse(np.full(5, o.mean()), o) == pytest.approx(0.0)


def test_nse_decomposition_gupta_2009():
    rng = np.random.default_rng(0)
    o = rng.gamma(2.0, 50.0, 200)
    s = 0.7 * o + rng.normal(10, 20, 200)
    c = M.kge_components(s, o)
    beta_n = (s.mean() - o.mean()) / o.std()
    assert M.nse(s, o) == pytest.approx(2 * c.alpha * c.r - c.alpha**2 - beta_n**2, rel=1e-12)


def test_nan_pairs_and_mask_are_dropped():
    sim = np.array([1.0, np.nan, 2.0, 4.0, 100.0, 7.0])
    obs = np.array([1.0, 5.0, 2.0, 3.0, 0.0, np.inf])
    mask = np.array([True, True, True, True, False, True])
    # valid pairs: indices 0, 2, 3 -> the hand example
    assert M.count_valid(sim, obs, mask) == 3
    assert M.nse(sim, obs, mask) == pytest.approx(0.5)
    assert M.rmse(sim, obs, mask) == pytest.approx(math.sqrt(1 / 3))
    assert M.kge(sim, obs, mask) == pytest.approx(M.kge(SIM, OBS))
    assert M.percent_bias(sim, obs, mask) == pytest.approx(100 / 6)
    # without the mask the pair (100, 0) counts
    assert M.count_valid(sim, obs) == 4
    assert M.mse(sim, obs) == pytest.approx((0 + 0 + 1 + 100**2) / 4)
    with pytest.raises(TypeError, match="boolean"):
        M.rmse(sim, obs, mask.astype(int))


def test_correlation_of_huge_and_tiny_values_is_that_of_their_shape():
    """sqrt(Σds² Σdo²) overflowed from |values| ~ 1e76 (r = 0 for a diverging model) and underflowed
    at 1e-170 (NaN, as if the series were constant)."""
    rng = np.random.default_rng(0)
    o = rng.normal(100, 50, 500)
    s = o + rng.normal(5, 20, 500)
    r = np.corrcoef(s, o)[0, 1]
    for k in (1.0, 1e76, 1e150, 1e-170):
        assert M.pearson_r(s * k, o * k) == pytest.approx(r, rel=1e-12), k
        assert M.pearson_r(s * k, o) == pytest.approx(r, rel=1e-12), k
    assert M.kge(s * 1e76, o * 1e76) == pytest.approx(M.kge(s, o), rel=1e-12)


def test_degenerate_inputs():
    const = np.array([2.0, 2.0, 2.0])
    s = np.array([1.0, 2.0, 3.0])
    # constant observations: NSE, NME, r, KGE undefined -> NaN (documented), RMSE fine
    assert math.isnan(M.nse(s, const))
    assert math.isnan(M.nme(s, const))
    assert math.isnan(M.pearson_r(s, const))
    assert math.isnan(M.kge(s, const))
    assert M.rmse(s, const) == pytest.approx(math.sqrt(2 / 3))
    # constant simulation: r undefined
    assert math.isnan(M.pearson_r(const, s))
    assert M.nse(const, s) == pytest.approx(0.0)
    # zero-mean obs: β and PBIAS undefined
    zm = np.array([-1.0, 0.0, 1.0])
    assert math.isnan(M.percent_bias(s, zm))
    assert math.isnan(M.kge(s, zm))
    assert not math.isnan(M.nse(s, zm))
    # zero valid pairs
    nan3 = np.full(3, np.nan)
    for f in (M.mse, M.rmse, M.mae, M.bias, M.percent_bias, M.nse, M.kge, M.kge_2012, M.pearson_r, M.nme):
        assert math.isnan(f(nan3, s)), f.__name__
    assert M.count_valid(nan3, s) == 0
    assert M.kge_components(s, s, np.zeros(3, bool)).n == 0


def test_crps_gaussian_reference_values():
    assert M.crps_gaussian(0.0, 0.0, 1.0) == pytest.approx(0.233695, abs=5e-7)
    # closed form at z = 1: 2Φ(1)−1 + 2φ(1) − 1/√π
    z1 = (2 * stats.norm.cdf(1) - 1) + 2 * stats.norm.pdf(1) - 1 / math.sqrt(math.pi)
    assert M.crps_gaussian(1.0, 0.0, 1.0) == pytest.approx(z1)
    # σ scaling: CRPS(N(μ,σ²), y) = σ·CRPS(N(0,1), (y−μ)/σ)
    assert M.crps_gaussian(7.0, 3.0, 4.0) == pytest.approx(4.0 * z1)
    # against the definition ∫(F(x) − 1[x ≥ y])² dx
    mu, sd, y = 1.5, 0.7, 0.4
    lo = integrate.quad(lambda x: stats.norm.cdf(x, mu, sd) ** 2, -np.inf, y)[0]
    hi = integrate.quad(lambda x: (1 - stats.norm.cdf(x, mu, sd)) ** 2, y, np.inf)[0]
    assert M.crps_gaussian(y, mu, sd) == pytest.approx(lo + hi, rel=1e-7)
    # σ = 0 -> absolute error; vectorised with NaN propagation
    out = M.crps_gaussian(np.array([2.0, np.nan, 0.0]), np.array([5.0, 0.0, 0.0]), np.array([0.0, 1.0, 1.0]))
    np.testing.assert_allclose(out, [3.0, np.nan, 0.233695], atol=5e-7)
    with pytest.raises(ValueError, match="sigma"):
        M.crps_gaussian(0.0, 0.0, -1.0)


def _crps_brute(y, x, fair):
    m = len(x)
    t1 = sum(abs(xi - y) for xi in x) / m
    dbl = sum(abs(xi - xj) for xi in x for xj in x)
    return t1 - dbl / (2 * m * (m - 1) if fair else 2 * m * m)


def test_crps_ensemble_hand_and_brute_force():
    # members {0, 1}, y = 0: (1/2)(0 + 1) − ΣΣ|xi−xj| (= 2) / 8 = 0.25; fair: 0.5 − 2/4 = 0
    assert M.crps_ensemble(0.0, [0.0, 1.0]) == pytest.approx(0.25)
    assert M.crps_ensemble(0.0, [0.0, 1.0], fair=True) == pytest.approx(0.0)
    # one member: CRPS = |x − y|
    assert M.crps_ensemble(3.0, [1.0]) == pytest.approx(2.0)
    rng = np.random.default_rng(1)
    ens = rng.normal(size=(6, 11))  # 6 points, 11 members
    y = rng.normal(size=6)
    for fair in (False, True):
        fast = M.crps_ensemble(y, ens, fair=fair)
        brute = [_crps_brute(y[i], ens[i], fair) for i in range(6)]
        np.testing.assert_allclose(fast, brute, rtol=1e-12)
    # member axis first
    np.testing.assert_allclose(M.crps_ensemble(y, ens.T, axis=0), M.crps_ensemble(y, ens), rtol=1e-14)
    # NaN obs or NaN member -> NaN
    ens[2, 3] = np.nan
    y[4] = np.nan
    out = M.crps_ensemble(y, ens)
    assert np.isnan(out[2]) and np.isnan(out[4]) and np.isfinite(out[[0, 1, 3, 5]]).all()
    with pytest.raises(ValueError, match="2 members"):
        M.crps_ensemble(0.0, [1.0], fair=True)


def test_prediction_interval_scores_by_hand():
    obs = np.array([1.0, 2.0, 3.0, 7.0, np.nan])
    lo = np.array([0.0, 2.5, 2.0, 5.0, 0.0])
    up = np.array([2.0, 3.0, 4.0, 6.0, 1.0])
    # inside: yes, no (0.5 below L), yes, no (1 above U); widths 2, 0.5, 2, 1
    # IS_0.1: 2, 0.5 + 20·0.5, 2, 1 + 20·1 -> mean 35.5/4
    sc = M.interval_scores(obs, lo, up, alpha=0.1)
    assert sc.n == 4
    assert sc.picp == pytest.approx(0.5)
    assert sc.mean_width == pytest.approx(1.375)
    assert sc.interval_score == pytest.approx(8.875)
    assert M.picp(obs, lo, up) == pytest.approx(0.5)
    assert M.mean_interval_width(obs, lo, up) == pytest.approx(1.375)
    assert M.interval_score(obs, lo, up, 0.1) == pytest.approx(8.875)
    l90, u90 = M.gaussian_interval(0.0, 2.0, 0.9)
    assert u90 == pytest.approx(2.0 * 1.644854, rel=1e-6) and l90 == pytest.approx(-u90)
    with pytest.raises(ValueError, match="lower bound"):
        M.interval_scores([1.0], [2.0], [0.0], 0.1)


def test_energy_balance_residual_and_closure_by_hand():
    rn = np.array([100.0, 200.0, np.nan])
    g = np.array([10.0, 20.0, 5.0])
    h = np.array([30.0, 50.0, 1.0])
    le = np.array([40.0, 160.0, 1.0])
    res = M.energy_balance_residual(rn, g, h, le)  # residuals 20, −30
    assert res == (pytest.approx(-5.0), pytest.approx(25.0), 2)
    assert M.closure_ratio(rn, g, h, le) == pytest.approx(280 / 270)
    assert M.energy_balance_residual(rn, g, h, le, mask=np.array([True, False, True])).mean == pytest.approx(20.0)
    assert M.energy_balance_residual(rn[2:], g[2:], h[2:], le[2:]).n == 0


def test_aggregate_daily_valid_fraction():
    time = pd.date_range("2024-01-01", periods=12, freq="6h")  # 4 steps a day, 3 days
    x = np.array([1, 2, 3, 4, np.nan, np.nan, np.nan, 8, np.nan, 2, 4, np.nan], dtype=float)
    a = M.aggregate(x, time, "daily")
    # day 1: mean 2.5; day 2: 1/4 valid < 0.5 -> NaN; day 3: 2/4 valid -> mean 3
    np.testing.assert_allclose(a.values, [2.5, np.nan, 3.0])
    assert a.n_valid == 2
    assert list(pd.DatetimeIndex(a.period).day) == [1, 2, 3]
    assert M.aggregate(x, time, "daily", min_valid_fraction=0.75).n_valid == 1
    # a short record: one day with 2 of its 4 steps -> valid at 0.5 only
    assert M.aggregate([1.0, 3.0], time[:2], "daily").values[0] == 2.0
    assert M.aggregate([1.0, 3.0], time[:2], "daily", min_valid_fraction=0.6).n_valid == 0
    # trailing dims are aggregated element-wise (e.g. an ensemble or several sites)
    two = M.aggregate(np.column_stack([x, 2 * x]), time, "daily")
    np.testing.assert_allclose(two.values, [[2.5, 5.0], [np.nan, np.nan], [3.0, 6.0]])
    assert two.n_valid == 4
    native = M.aggregate(x, time, "halfhourly")
    assert native.n_valid == 7
    with pytest.raises(ValueError, match="monthly"):
        M.aggregate(x, time, "monthly")


def test_aggregate_weekly_iso_weeks():
    time = pd.date_range("2024-01-05", "2024-01-14", freq="D")  # Fri..Sun of the next week
    x = np.arange(10, dtype=float)
    a = M.aggregate(x, time, "weekly")
    # week from Mon 1 Jan: 3/7 days present -> not valid at 0.5; week from Mon 8 Jan: 7/7 -> mean of 3..9
    assert list(pd.DatetimeIndex(a.period)) == [pd.Timestamp("2024-01-01"), pd.Timestamp("2024-01-08")]
    np.testing.assert_allclose(a.values, [np.nan, 6.0])
    assert a.n_valid == 1
    b = M.aggregate(x, time, "weekly", min_valid_fraction=0.4)
    np.testing.assert_allclose(b.values, [1.0, 6.0])


def test_skill_table_by_hand():
    time = pd.date_range("2024-03-04", periods=8, freq="12h")  # 2 steps a day, Mon..Thu
    obs = np.array([1.0, 3.0, 2.0, 2.0, 3.0, 5.0, np.nan, 4.0])
    good = np.array([1.0, 3.0, 2.0, 2.0, 4.0, 4.0, 9.0, 6.0])
    bad = np.array([2.0, 2.0, np.nan, np.nan, 5.0, 5.0, 0.0, 0.0])
    mask = np.array([True] * 7 + [False])
    with pytest.warns(Warning, match="bad has no prediction at 2 of the 6 observed steps"):
        df = M.skill_table(obs, {"good": good, "bad": bad}, time, site="XX-Syn", flux="Qle", split="test", mask=mask)
    assert list(df.columns) == list(M.SKILL_COLUMNS)
    assert len(df) == 6
    row = df[(df.model == "good") & (df.scale == "halfhourly")].iloc[0]
    # pairs: the steps both models predict, 0, 1, 4, 5 (6 is NaN obs, 7 masked, "bad" lacks 2 and 3)
    assert row.n == 4
    assert row.rmse == pytest.approx(math.sqrt(2 / 4))
    assert row.site == "XX-Syn" and row.flux == "Qle" and row.split == "test"
    # daily means over the jointly valid steps: days 1 and 3, obs [2, 4], good [2, 4] -> perfect
    d = df[(df.model == "good") & (df.scale == "daily")].iloc[0]
    assert d.n == 2 and d.rmse == pytest.approx(0.0) and d.nse == pytest.approx(1.0)
    # model "bad" on the same days: obs [2, 4] vs bad [2, 5]
    db = df[(df.model == "bad") & (df.scale == "daily")].iloc[0]
    assert db.n == 2
    assert db.rmse == pytest.approx(math.sqrt(0.5))
    assert db.bias_pct == pytest.approx(100 * 1 / 6)
    # weekly: one ISO week of 14 steps; 4 jointly valid (0.29 < 0.5) -> n = 0, NaN
    w = df[(df.model == "good") & (df.scale == "weekly")].iloc[0]
    assert w.n == 0 and math.isnan(w.rmse)
    # "good" alone: its pairs 0..5
    alone = M.skill_table(obs, {"good": good}, time, scales=("halfhourly",), mask=mask).iloc[0]
    assert alone.n == 6 and alone.rmse == pytest.approx(math.sqrt(2 / 6))
    w2 = M.skill_table(obs, {"good": good}, time, scales=("weekly",), mask=mask, min_valid_fraction=0.4)
    assert w2.n.iloc[0] == 1


def test_kge_2021_by_hand():
    # KGE″ (Tang et al. 2021): β″ = (μs − μo)/σo replaces β = μs/μo; with the hand example
    # μs − μo = 1/3, σo = √(2/3)
    c = M.kge_2021_components(SIM, OBS)
    b = (1 / 3) / math.sqrt(2 / 3)
    assert c.beta == pytest.approx(b) and c.alpha == pytest.approx(ALPHA_HAND) and c.r == pytest.approx(R_HAND)
    assert c.kge == pytest.approx(1 - math.sqrt((R_HAND - 1) ** 2 + (ALPHA_HAND - 1) ** 2 + b**2))
    assert M.kge_2021(SIM, OBS) == pytest.approx(c.kge)
    assert math.isnan(M.kge_2021(SIM, np.full(3, 2.0)))  # σo = 0


def test_mean_near_zero_rule():
    # μo ≤ 0.1·σo: LE-like positive mean -> no; night-time or winter H (μo ≤ 0) -> yes
    assert not M.mean_near_zero(np.array([50.0, 150.0, 300.0]))
    assert M.mean_near_zero(np.array([-30.0, -10.0, 10.0, 31.0]))  # μo = 0.25, σo = 22.7
    assert M.mean_near_zero(np.array([-20.0, -15.0, -10.0]))
    # boundary: o = [0, 2a], μo = a, σo = a -> near zero iff a ≤ 0.1·a, never for a > 0
    assert not M.mean_near_zero(np.array([0.0, 2.0]))
    # μo = 1, σo = 11 -> 1 ≤ 1.1
    assert M.mean_near_zero(np.array([-10.0, 12.0]))
    assert M.mean_near_zero(np.array([-10.0, 12.0, 99.0]), mask=np.array([True, True, False]))


def test_skill_table_near_zero_observed_mean():
    """Night-time H: obs nearly symmetric around 0. Percent bias would be 100·Σ(s − o)/Σo = 100·19.5/1
    = 1950 %; it is withheld, the absolute bias is reported and KGE takes the 2021 form."""
    time = pd.date_range("2024-01-01 22:00", periods=4, freq="30min")
    obs = np.array([-30.0, -10.0, 10.0, 31.0])  # μo = 0.25
    sim = 0.5 * obs + 5.0  # r = 1, α = 0.5, μs = 5.125
    df = M.skill_table(obs, {"m": sim}, time, scales=("halfhourly",), site="XX-Nit", flux="Qh")
    row = df.iloc[0]
    assert math.isnan(row.bias_pct)
    assert row.bias == pytest.approx(4.875)
    sd_o = math.sqrt((30.25**2 + 10.25**2 + 9.75**2 + 30.75**2) / 4)  # 22.698
    assert row.bias_pct_note == f"observed mean near zero: μo = 0.25 ≤ 0.1·σo = {0.1 * sd_o:.3g} W m-2"
    assert row.kge_form == "2021"
    assert row.kge == pytest.approx(1 - math.sqrt(0.5**2 + (4.875 / sd_o) ** 2))  # ≈ 0.4807
    assert not row.suspect and row.suspect_reason == ""
    # a positive mean well away from zero keeps percent bias and KGE 2009
    pos = M.skill_table(obs + 100, {"m": sim + 100}, time, scales=("halfhourly",)).iloc[0]
    assert pos.bias_pct == pytest.approx(100 * 4.875 / 100.25)
    assert pos.bias_pct_note == "" and pos.kge_form == "2009"
    assert pos.kge == pytest.approx(M.kge(sim + 100, obs + 100))


def test_every_model_is_scored_on_the_same_steps():
    """A copy of a model that is missing wherever it errs most scored better on its own steps (and
    was highlighted as best); now both are scored on the steps every model predicts."""
    from hybridlsm.data.schema import DataWarning

    rng = np.random.default_rng(0)
    time = pd.date_range("2024-06-01", periods=96, freq="30min")
    obs = rng.normal(100.0, 50.0, 96)
    a = obs + rng.normal(0.0, 30.0, 96)
    b = np.where(np.abs(a - obs) > 40.0, np.nan, a)
    gaps = int(np.isnan(b).sum())
    assert 0 < gaps < 96
    with pytest.warns(DataWarning, match=rf"XX-Syn Qle: b has no prediction at {gaps} of the 96 observed steps; "
                                         rf"every model is scored on the {96 - gaps} steps all of them predict"):
        df = M.skill_table(obs, {"a": a, "b": b, "none": np.full(96, np.nan)}, time, scales=("halfhourly",),
                           site="XX-Syn", flux="Qle").set_index("model")
    ok = ~np.isnan(b)
    assert df.at["a", "n"] == df.at["b", "n"] == 96 - gaps and df.at["none", "n"] == 0
    assert df.at["a", "rmse"] == df.at["b", "rmse"] == pytest.approx(np.sqrt(np.mean((a[ok] - obs[ok]) ** 2)), rel=1e-12)


def test_skill_table_flags_absurd_models():
    """|bias| above the observed range, or a non-finite RMSE (with pairs), marks a row suspect."""
    time = pd.date_range("2024-06-01 10:00", periods=4, freq="30min")
    obs = np.array([100.0, 300.0, 50.0, 450.0])  # range 400 W m-2
    sims = {
        "ok": obs + 20.0,
        "offset": obs + 1e5,  # e.g. a forcing in the wrong units
        "overflow": np.array([1e200, 2e200, 1e200, 3e200]),  # (s − o)² overflows: RMSE = inf
        "empty": np.full(4, np.nan),  # no pairs: not scored, not suspect
    }
    df = M.skill_table(obs, sims, time, scales=("halfhourly",), site="XX-Uni", flux="Qle").set_index("model")
    assert df.bias.to_dict() == pytest.approx({"ok": 20.0, "offset": 1e5, "overflow": 1.75e200, "empty": np.nan},
                                              nan_ok=True)
    assert df.suspect.to_dict() == {"ok": False, "offset": True, "overflow": True, "empty": False}
    assert df.at["offset", "suspect_reason"] == (
        "|bias| 1e+05 W m-2 exceeds the observed range 400 W m-2 — check the forcing units")
    assert df.at["overflow", "suspect_reason"].startswith("RMSE inf; |bias| 1.75e+200 W m-2 exceeds")
    assert df.at["ok", "suspect_reason"] == "" and df.at["empty", "n"] == 0
    # the range is the one of the scored observations (native step), the same for every scale
    t2 = pd.date_range("2024-06-03", periods=96, freq="30min")
    o2 = np.tile(np.r_[np.zeros(24), np.full(24, 200.0)], 2)
    o2[0] = np.nan
    daily = M.skill_table(o2, {"x": o2 + 250.0}, t2, scales=("daily",)).iloc[0]
    assert daily.suspect and "observed range 200 W m-2" in daily.suspect_reason
