"""PLUMBER empirical benchmarks and the gbm baseline on synthetic sites with a known truth."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from hybridlsm.data.schema import DataWarning
from hybridlsm.evaluation.metrics import rmse
from hybridlsm.models.empirical import (
    EMPIRICAL_MODELS,
    EmpiricalInputError,
    EmpiricalModel,
    GradientBoosting,
    KMeansRegression,
    OneLin,
    TwoLin,
    antecedent_precip,
    time_features,
)

DT = 1800.0


def synthetic_site(site: str, seed: int, days: int = 60, start: str = "2021-05-01") -> xr.Dataset:
    """Half-hourly forcing with a diurnal cycle, weather noise and rain events (canonical names)."""
    rng = np.random.default_rng(seed)
    n = days * 48
    time = pd.date_range(start, periods=n, freq="30min")
    hour = (np.arange(n) % 48) / 2.0 + 0.25
    cloud = np.repeat(rng.uniform(0.3, 1.0, days), 48)
    sw = np.maximum(0.0, 900.0 * np.sin(np.pi * (hour - 6.0) / 12.0)) * cloud
    tair = 288.0 + 6.0 * np.sin(np.pi * (hour - 9.0) / 12.0) + np.repeat(rng.normal(0, 3, days), 48)
    tair += rng.normal(0, 0.5, n)
    rh = np.clip(70.0 - 2.5 * (tair - 288.0) + np.repeat(rng.normal(0, 10, days), 48), 10, 100)
    rain_day = rng.uniform(size=days) < 0.2
    precip = np.zeros(n)
    for d in np.flatnonzero(rain_day):
        precip[d * 48 + 30 : d * 48 + 36] = rng.uniform(1, 4) / DT  # 1-4 mm per half-hour, 3 h
    ds = xr.Dataset(
        {
            "SWdown": ("time", sw),
            "Tair": ("time", tair),
            "RH": ("time", rh),
            "VPD": ("time", 10.0 * (1 - rh / 100.0) * 17.0),
            "Wind": ("time", rng.uniform(0.5, 5.0, n)),
            "Qair": ("time", 0.008 * rh / 70.0),
            "Precip": ("time", precip),
        },
        coords={"time": time},
        attrs={"site_id": site, "time_step_s": DT},
    )
    return ds


@pytest.fixture(scope="module")
def sites():
    return [synthetic_site(f"XX-S{i}", seed=i) for i in range(3)]


def test_registry():
    assert set(EMPIRICAL_MODELS) == {"1lin", "2lin", "3km27", "gbm"}
    for name, cls in EMPIRICAL_MODELS.items():
        assert issubclass(cls, EmpiricalModel) and cls.name == name


def test_1lin_2lin_recover_exact_coefficients_and_respect_mask(sites):
    train = [ds.copy() for ds in sites[:2]]
    masks = []
    for k, ds in enumerate(train):
        q = 12.0 + 0.35 * ds.SWdown.values
        bad = np.zeros(q.size, bool)
        bad[k::7] = True  # QC-flagged rows: the value is wrong and must be ignored
        q = np.where(bad, q + 500.0, q)
        q[5] = np.nan  # a gap
        ds["Qh"] = ("time", q)
        ds["Qle"] = ("time", -300.0 + 0.4 * ds.SWdown.values + 1.1 * ds.Tair.values)
        masks.append(~bad)
    m1 = OneLin().fit(train, "Qh", masks)
    assert m1.intercept_ == pytest.approx(12.0, abs=1e-9)
    np.testing.assert_allclose(m1.coef_, [0.35], rtol=1e-11)
    assert m1.n_train == sum(int(m.sum()) for m in masks) - 2
    np.testing.assert_allclose(m1.predict(sites[2]), 12.0 + 0.35 * sites[2].SWdown.values, rtol=1e-11)
    # without the mask the flagged rows bias the fit
    assert OneLin().fit(train, "Qh").intercept_ > 50.0

    m2 = TwoLin().fit(train, "Qle")
    assert m2.intercept_ == pytest.approx(-300.0, abs=1e-7)
    np.testing.assert_allclose(m2.coef_, [0.4, 1.1], rtol=1e-10)
    # a missing input value gives a NaN prediction at that step only, and says so
    test = sites[2].copy()
    test["Tair"] = test.Tair.where(np.arange(test.sizes["time"]) != 10)
    with pytest.warns(DataWarning, match=rf"2lin \(Qle\): site XX-S2: 1 of {test.sizes['time']} steps lack an input "
                      r"\(Tair\); no prediction there"):
        p = m2.predict(test)
    assert np.isnan(p[10]) and np.isfinite(np.delete(p, 10)).all()


def _piecewise_truth(ds):
    """A sum of hinges in SWdown, Tair and RH: piecewise linear, not linear."""
    sw, ta, rh = ds.SWdown.values, ds.Tair.values, ds.RH.values
    return 0.1 * sw + 0.5 * np.maximum(sw - 300.0, 0) + 6.0 * np.maximum(ta - 290.0, 0) - 2.0 * np.maximum(60.0 - rh, 0)


def test_3km27_piecewise_linear_beats_2lin(sites):
    train = [ds.assign(Qle=("time", _piecewise_truth(ds))) for ds in sites[:2]]
    test = sites[2]
    truth = _piecewise_truth(test)
    km = KMeansRegression().fit(train, "Qle")
    assert km.coefs_.shape == (27, 3) and km.kmeans_.cluster_centers_.shape == (27, 3)
    # z-scoring used the pooled training mean and SD
    pooled = np.concatenate([ds.SWdown.values for ds in train])
    assert km.mean_[0] == pytest.approx(pooled.mean()) and km.scale_[0] == pytest.approx(pooled.std())
    e_km = rmse(km.predict(test), truth)
    e_2 = rmse(TwoLin().fit(train, "Qle").predict(test), truth)
    assert e_km < 0.3 * e_2, (e_km, e_2)
    # fixed seed: refitting gives the same model
    np.testing.assert_array_equal(KMeansRegression().fit(train, "Qle").predict(test), km.predict(test))


def _rain_memory_truth(ds):
    p7 = antecedent_precip(ds, (7,))[:, 0]
    wet = 1.0 - np.exp(-np.nan_to_num(p7, nan=0.0) / 8.0)
    return ds.SWdown.values * (0.1 + 0.6 * wet)


def test_gbm_learns_rain_memory_better_than_2lin(sites):
    train = [ds.assign(Qle=("time", _rain_memory_truth(ds))) for ds in sites[:2]]
    test = sites[2]
    truth = _rain_memory_truth(test)
    ok = np.arange(truth.size) >= 7 * 48  # score where the 7-day window is complete
    gbm = GradientBoosting(max_iter=150).fit(train, "Qle")
    assert gbm.feature_names[-3:] == ["precip_1d", "precip_7d", "precip_30d"]
    e_gbm = rmse(gbm.predict(test), truth, ok)
    e_2 = rmse(TwoLin().fit(train, "Qle").predict(test), truth, ok)
    assert e_gbm < 0.5 * e_2, (e_gbm, e_2)


def test_antecedent_precip_and_time_features_by_hand():
    time = pd.date_range("2022-01-01", periods=72, freq="1h")
    p = np.zeros(72)
    p[5] = 2.0 / 3600.0  # 2 mm in the hour starting 05:00
    ds = xr.Dataset({"Precip": ("time", p)}, coords={"time": time}, attrs={"site_id": "XX-T", "time_step_s": 3600})
    a = antecedent_precip(ds, (1,))[:, 0]
    assert np.isnan(a[:23]).all()  # window of 24 steps incomplete
    assert a[23] == pytest.approx(2.0) and a[28] == pytest.approx(2.0)  # steps 5..28 include step 5
    assert a[29] == 0.0
    tf = time_features(ds)
    # first interval midpoint 00:30 on 1 January: hour 0.5, day of year 0 + 0.5/24
    d0 = 2 * np.pi * (0.5 / 24) / 365.25
    np.testing.assert_allclose(tf[0], [np.sin(np.pi / 24), np.cos(np.pi / 24), np.sin(d0), np.cos(d0)])
    np.testing.assert_allclose(tf[12, :2], [np.sin(2 * np.pi * 12.5 / 24), np.cos(2 * np.pi * 12.5 / 24)])


def test_missing_input_names_variable_and_site(sites):
    from hybridlsm.data import DataError

    assert issubclass(EmpiricalInputError, DataError)
    ds = sites[0].assign(Qle=("time", _piecewise_truth(sites[0]))).drop_vars("RH")
    with pytest.raises(EmpiricalInputError, match=r"site XX-S0.*'RH'"):
        KMeansRegression().fit([ds], "Qle")
    with pytest.raises(EmpiricalInputError, match=r"site XX-S1.*'Qh'"):
        OneLin().fit([sites[1]], "Qh")
    m = OneLin().fit([ds], "Qle")
    with pytest.raises(EmpiricalInputError, match=r"site XX-S2.*'SWdown'"):
        m.predict(sites[2].drop_vars("SWdown"))
    with pytest.raises(EmpiricalInputError, match=r"site XX-S2.*'Precip'"):
        GradientBoosting().fit([sites[2].assign(Qh=sites[2].SWdown).drop_vars("Precip")], "Qh")
    with pytest.raises(EmpiricalInputError, match="usable training rows"):
        OneLin().fit([ds], "Qle", [np.zeros(ds.sizes["time"], bool)])
    with pytest.raises(RuntimeError, match="before fit"):
        TwoLin().predict(ds)
