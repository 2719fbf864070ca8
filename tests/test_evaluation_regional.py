"""The regional benchmark's tables (evaluation.regional) on hand-computed numbers, and the
class-constant parameteriser of the no_parameteriser ablation."""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

from hybridlsm.evaluation.regional import (ablation_row, aggregate, daily_extreme_scores, degradation_daily,
                                           degradation_rate, energy_residual, energy_residual_field, extreme_rows,
                                           scale_rows, uq_scores)
from hybridlsm.models.regional_baselines import ClassConstants


def test_aggregate_daily_means_of_masked_steps():
    values = np.arange(8.0)[:, None] * np.array([[1.0, 10.0]])  # T = 8, N = 2
    mask = np.ones((8, 2), bool)
    mask[5, 1] = False  # cell 1 misses one step of the second period
    out = aggregate(values, mask, period=4, min_steps=3)
    np.testing.assert_allclose(out[:, 0], [1.5, 5.5])  # (0+1+2+3)/4, (4+5+6+7)/4
    np.testing.assert_allclose(out[:, 1], [15.0, 170.0 / 3.0])  # (40+60+70)/3
    # fewer masked steps than min_steps: NaN; a short last period counts its own steps
    assert np.isnan(aggregate(values, mask, period=4, min_steps=4)[1, 1])
    np.testing.assert_allclose(aggregate(values[:6], mask[:6], period=4, min_steps=2)[:, 0], [1.5, 4.5])


def test_degradation_rate_percent():
    assert degradation_rate(150.0, 100.0) == pytest.approx(50.0)
    assert degradation_rate(80.0, 100.0) == pytest.approx(-20.0)
    assert degradation_rate(None, 100.0) is None and degradation_rate(10.0, 0.0) is None


def _records():
    base = {"mae_h": 1.0, "mae_le": 2.0, "r_h": 0.9, "r_le": 0.8}
    return [
        {"model": "m", "surface": "all", "mse_h": 100.0, "mse_le": 200.0, "n": 50, **base},
        {"model": "m", "surface": "extreme_hot", "mse_h": 130.0, "mse_le": 150.0, "n": 5, **base},
        {"model": "m", "surface": "extreme_wind", "mse_h": None, "mse_le": None, "n": 0,
         "mae_h": None, "mae_le": None, "r_h": None, "r_le": None},
        {"model": "other", "surface": "all", "mse_h": 1.0, "mse_le": 1.0, "n": 50, **base},
    ]


def test_extreme_rows_rates_and_empty_subsets():
    hot, wind = extreme_rows(_records(), "m")
    assert hot["surface"] == "extreme_hot" and not hot["empty"] and hot["n"] == 5
    assert hot["degradation_h_pct"] == pytest.approx(30.0)
    assert hot["degradation_le_pct"] == pytest.approx(-25.0)
    assert wind["empty"] and wind["degradation_h_pct"] is None and wind["mse_h"] is None


def test_daily_degradation_rate_as_the_seed_defines_it():
    # 2 days x 3 cells, truth 100 (H) and 150 (LE); cells 0 and 1 are homogeneous farmland, cell 2 is
    # not; day 2 is hot in every cell at one hour each (a hot day: any hour above 35 degC); no windy hour
    t, n = 48, 3
    ds = _tiny_region(t, n)
    err_h, err_le = np.zeros((t, n)), np.zeros((t, n))
    err_h[:24, 0] = 2.0
    err_h[24:, 0] = np.tile([-2.0, -6.0], 12)  # daily mean -4: the daily error, not the hourly ones
    err_h[24:, 1] = 6.0
    err_le[:24, 0], err_le[24:, 0], err_le[:24, 1], err_le[24:, 1] = 3.0, 1.0, 1.0, 3.0
    err_h[24:, 2] = err_le[24:, 2] = 50.0  # not farmland: in neither the reference nor the extreme
    out = {"Qh": 100.0 + err_h, "Qle": 150.0 + err_le}
    every = np.ones((t, n), bool)
    hot = np.zeros((t, n), bool)
    hot[30, 0] = hot[40, 1] = hot[30, 2] = True
    masks = {"all": every, "homogeneous": every & np.array([True, True, False]), "extreme_hot": hot,
             "extreme_wind": np.zeros((t, n), bool)}
    daily = daily_extreme_scores(out, ds, masks)
    # reference: the farmland's four cell-days, errors 2, -4, 0, 6 (H) and 3, 1, 1, 3 (LE)
    assert daily["homogeneous"] == {"mse_h": pytest.approx(14.0), "mse_le": pytest.approx(5.0), "n": 4}
    # its hot cell-days: day 2 of cells 0 and 1, errors -4 and 6 (H), 1 and 3 (LE)
    assert daily["extreme_hot"] == {"mse_h": pytest.approx(26.0), "mse_le": pytest.approx(5.0), "n": 2}
    assert daily["extreme_wind"]["n"] == 0 and daily["extreme_wind"]["mse_h"] is None
    hot_row, wind_row = extreme_rows(_records(), "m", daily=daily)
    assert hot_row["degradation_daily_h_pct"] == pytest.approx(100.0 * 12.0 / 14.0)  # (26 - 14) / 14
    assert hot_row["degradation_daily_le_pct"] == pytest.approx(0.0)
    assert (hot_row["daily_mse_h"], hot_row["daily_n"]) == (pytest.approx(26.0), 2)
    assert hot_row["degradation_h_pct"] == pytest.approx(30.0)  # the hourly rate is kept beside it
    assert wind_row["degradation_daily_h_pct"] is None
    assert degradation_daily([hot_row, wind_row]) == {"extreme_hot": pytest.approx(6.0 / 14.0), "extreme_wind": None}
    assert "daily_mse_h" not in extreme_rows(_records(), "m")[0]  # without daily scores: the hourly rows only


def test_uq_scores_coverage_and_crps():
    truth = np.array([0.0, 1.0, 2.0, -1.7])
    mean, sd = np.zeros(4), np.ones(4)
    s = uq_scores(mean, sd, truth, np.ones(4, bool), level=0.9)  # z = 1.645: 0 and 1 inside
    assert s["coverage"] == pytest.approx(0.5)
    assert s["mean_sd"] == pytest.approx(1.0)
    # CRPS of N(0, 1) at its mean: 2 phi(0) - 1/sqrt(pi) = 0.2336949
    at_mean = uq_scores(np.zeros(1), np.ones(1), np.zeros(1), np.ones(1, bool))
    assert at_mean["crps"] == pytest.approx(2 / np.sqrt(2 * np.pi) - 1 / np.sqrt(np.pi))
    # sd 0: CRPS is the absolute error, coverage only where exact
    point = uq_scores(np.zeros(2), np.zeros(2), np.array([0.0, 3.0]), np.ones(2, bool))
    assert point["crps"] == pytest.approx(1.5) and point["coverage"] == pytest.approx(0.5)
    assert uq_scores(mean, sd, truth, np.zeros(4, bool))["coverage"] is None


def _budget(t=48, n=2):
    rnet = np.full((t, n), 300.0)
    out = {"Rnet": rnet, "Qh": np.full((t, n), 100.0), "Qle": np.full((t, n), 150.0), "Qg": np.full((t, n), 40.0),
           "Qf": np.zeros((t, n))}
    out["Qh"][:24] += 20.0  # residual -10 in the first day, +10 in the second
    return out


def test_energy_residual_hourly_and_daily():
    out = _budget()
    res = energy_residual_field(out)
    assert res[0, 0] == pytest.approx(-10.0) and res[30, 0] == pytest.approx(10.0)
    mask = np.ones((48, 2), bool)
    assert energy_residual(out, mask) == pytest.approx(10.0)
    assert energy_residual({**out, "air_energy_residual": np.array([0.5, 12.0])}, mask) == pytest.approx(12.0)
    assert energy_residual_field({"Qh": out["Qh"], "Qle": out["Qle"]}) is None


def _tiny_region(t=48, n=2):
    ds = xr.Dataset({"Qh_true": (("time", "y", "x"), np.full((t, 1, n), 100.0)),
                     "Qle_true": (("time", "y", "x"), np.full((t, 1, n), 150.0))},
                    coords={"time": np.arange(t)})
    return ds


def test_scale_rows_daily_and_weekly():
    ds = _tiny_region()
    out = _budget()
    out["Qle"] = out["Qle"] + np.r_[np.full(24, 6.0), np.full(24, -2.0)][:, None]  # daily errors 6 and -2
    mask = np.ones((48, 2), bool)
    masks = {"all": mask, "homogeneous": mask & np.array([True, False]), "heterogeneous": mask & np.array([False, True])}
    rows = {(r["scale"], r["surface"]): r for r in scale_rows("m", out, ds, masks)}
    daily = rows[("daily", "all")]
    assert daily["n"] == 4  # 2 days x 2 cells
    assert daily["mse_h"] == pytest.approx(200.0)  # errors 20 and 0
    assert daily["mae_le"] == pytest.approx(4.0) and daily["mse_le"] == pytest.approx(20.0)
    # the daily residuals (Rnet - H - LE - G): -16 and +12 -> mean |.| 14
    assert daily["energy_residual_wm2"] == pytest.approx(14.0)
    weekly = rows[("weekly", "all")]
    assert weekly["n"] == 2 and weekly["mse_h"] == pytest.approx(100.0) and weekly["mae_le"] == pytest.approx(2.0)
    assert weekly["energy_residual_wm2"] == pytest.approx(2.0)
    assert rows[("weekly", "homogeneous")]["n"] == 1 and rows[("weekly", "homogeneous")]["mse_h"] is None  # one value: no score
    assert rows[("daily", "heterogeneous")]["r_h"] is None  # constant truth: no correlation


def test_ablation_row_with_and_without_uq():
    out = {**_budget(), "Kh": np.exp(np.arange(96.0).reshape(48, 2) / 50.0)}
    mask = np.ones((48, 2), bool)
    row = ablation_row("m", _records(), out, mask, kh_true=out["Kh"] ** 2,
                       uq={"Qh": {"coverage": 0.9, "crps": 3.0}, "Qle": {"coverage": 0.8, "crps": 4.0}})
    assert row["mse_h"] == 100.0 and row["kh_field_corr"] == pytest.approx(1.0)
    assert row["energy_residual_wm2"] == pytest.approx(10.0)
    assert (row["coverage90_h"], row["crps_le"]) == (0.9, 4.0)
    bare = ablation_row("m", _records(), {"Qh": out["Qh"], "Qle": out["Qle"]}, mask, kh_true=None)
    assert bare["kh_field_corr"] is None and bare["energy_residual_wm2"] is None and bare["coverage90_h"] is None


def test_class_constants_fields_per_class():
    static = jnp.stack([jnp.array([[1.0, 0.0, 0.5]]), jnp.array([[0.0, 1.0, 0.5]]), jnp.zeros((1, 3))])  # + elevation
    base = ClassConstants(2, dtype=jnp.float32)
    start = base(jnp.zeros((4, 2, 1, 3)), static)
    np.testing.assert_allclose(start[0], 0.5, rtol=1e-4)  # the network's priors
    np.testing.assert_allclose(start[1], 200.0, rtol=1e-4)
    # class 0 at (K_h 0.1, r_s 200), class 1 at (10, 1000)
    raw = base.head.inverse(jnp.array([[0.1, 200.0], [10.0, 1000.0]], jnp.float32))
    net = eqx.tree_at(lambda m: m.raw, base, raw)
    out = net(jnp.zeros((4, 5, 1, 3)), static)
    assert out.shape == (2, 5, 1, 3)
    np.testing.assert_allclose(out[0, 0, 0], [0.1, 10.0, 1.0], rtol=1e-4)  # the half-half cell: geometric mean
    np.testing.assert_allclose(out[1, 3, 0], [200.0, 1000.0, np.sqrt(2e5)], rtol=1e-4)
    np.testing.assert_allclose(net.values()["Kh"], [0.1, 10.0], rtol=1e-4)


def test_class_constants_of_a_hybrid_with_a_kh_multiplier():
    """no_parameteriser of hybrid_scale_vpd: constants of the fields that hybrid's network gives (a K_h
    multiplier, prior 1, bounds [1e-2, 1e2]; r_s), inside a hybrid with the same exchange and VPD response."""
    from types import SimpleNamespace

    from hybridlsm.models.regional_baselines import build_class_constants

    data = SimpleNamespace(classes=("forest", "farmland"), variables=jnp.zeros((1,), jnp.float32))
    model = build_class_constants(data, exchange="scale", rs_vpd_d0=3.0)
    assert (model.exchange, model.rs_vpd_d0, model.net.names) == ("scale", 3.0, ("Kh_scale", "rs"))
    static = jnp.stack([jnp.ones((1, 2)), jnp.zeros((1, 2)), jnp.zeros((1, 2))])
    np.testing.assert_allclose(model.net(jnp.zeros((4, 3, 1, 2)), static)[0], 1.0, rtol=1e-4)
    top = eqx.tree_at(lambda m: m.raw, model.net, jnp.full((2, 2), 50.0))  # far beyond the heads' range
    assert set(top.values()) == {"Kh_scale", "rs"}
    np.testing.assert_allclose(top.values()["Kh_scale"], 1e2, rtol=1e-4)
    np.testing.assert_allclose(top.values()["rs"], 1e4, rtol=1e-4)
    plain = build_class_constants(data)
    assert (plain.exchange, plain.rs_vpd_d0, plain.net.names) == ("field", None, ("Kh", "rs"))


def test_mc_dropout_mean_and_sd(monkeypatch):
    from hybridlsm.models import regional

    draws = iter([1.0, 2.0, 3.0, 4.0])
    keys = []

    def fake_predict(model, data, key=None, **kwargs):
        keys.append(key)
        v = next(draws)
        return {"Qh": np.full((2, 3), v), "Kh": np.full((2, 3), 10.0 * v), "Rnet": np.zeros((2, 3))}

    monkeypatch.setattr(regional, "predict_regional", fake_predict)
    out = regional.mc_dropout_regional(None, None, samples=4)
    assert set(out) == {"Qh", "Kh"} and all(k is not None for k in keys)
    np.testing.assert_allclose(out["Qh"]["mean"], 2.5)
    np.testing.assert_allclose(out["Qh"]["sd"], np.std([1, 2, 3, 4], ddof=1))
    np.testing.assert_allclose(out["Kh"]["sd"], 10.0 * np.std([1, 2, 3, 4], ddof=1))
    with pytest.raises(ValueError):
        regional.mc_dropout_regional(None, None, samples=1)


def test_class_correlation_none_for_a_constant_in_float32():
    """A K_h fixed per class but computed in float32 varies by rounding only: its r with the wind is
    None (it was nan or noise), where a K_h that follows the wind gives r = 1."""
    from hybridlsm.evaluation.regional import _corr

    wind = np.linspace(1.0, 9.0, 200)
    rounding = (np.float32(0.876) * (1.0 + np.float32(1e-7) * np.sign(np.sin(np.arange(200))))).astype(np.float32)
    assert np.std(rounding) > 0
    assert _corr(rounding, wind) is None
    assert _corr(np.full(200, 0.876, np.float32), wind) is None
    assert _corr(0.1 * wind, wind) == pytest.approx(1.0)
