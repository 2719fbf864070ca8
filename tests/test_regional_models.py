"""The virtual region, the regional models' data path, training and scores (issue 15)."""

import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

from hybridlsm.config import TrainConfig
from hybridlsm.data.schema import DataError
from hybridlsm.data.virtual_region import CLASS_NAMES, RS_BOUNDS, OVERPASS_HOURS, class_map, virtual_region
from hybridlsm.evaluation.regional import degradation, field_correlation, score_records, surface_masks
from hybridlsm.models.regional import (
    REGIONAL_FORCING, blocked_split, build_hybrid, fixed_kh_model, predict_regional, region_data, train_regional,
    window_starts,
)


@pytest.fixture(scope="module")
def region(shared_data):
    return virtual_region(12, 12, days=6, spin_up_days=1, site=shared_data / "fluxnet" / "US-CRT_201101-201112_HH.csv")


def test_class_map_has_a_fringe_between_farmland_and_the_urban_core():
    cls, fringe, homogeneous = class_map(32, 32, seed=0)
    counts = {name: int((cls == i).sum()) for i, name in enumerate(CLASS_NAMES)}
    assert all(counts[c] > 0 for c in CLASS_NAMES) and counts["farmland"] > 400
    assert not (fringe & homogeneous).any()
    # the fringe mixes classes; homogeneous cells are farmland with farmland all around
    assert len(np.unique(cls[fringe])) >= 3
    assert set(np.unique(cls[homogeneous])) == {CLASS_NAMES.index("farmland")}


def test_virtual_region_observes_towers_and_overpasses_only(region):
    ds = region
    assert dict(ds.sizes)["time"] == 6 * 24 and ds.sizes["y"] == 12
    tower = ds["tower"].values
    assert 1 <= tower.sum() <= 4
    observed = np.isfinite(ds["Qh"].values).any(axis=0)
    assert (observed <= tower).all() and observed[tower].all()
    hours = ds.time.dt.hour.values
    lst_any = np.isfinite(ds["AvgSurfT"].values).any(axis=(1, 2))
    assert set(hours[lst_any]) <= set(OVERPASS_HOURS)
    rs = ds["rs_true"].values
    assert rs.min() >= RS_BOUNDS[0] and rs.max() <= RS_BOUNDS[1]
    assert np.isfinite(ds["Qh_true"].values).all() and np.isfinite(ds["Tair_layer_true"].values).all()
    # the true K_h follows the class laws: the forest exchanges more than the farmland on average
    cls = ds["surface_class"].values
    kh = ds["Kh_true"].values
    forest, farm = CLASS_NAMES.index("forest"), CLASS_NAMES.index("farmland")
    if (cls == forest).any():
        assert kh[:, cls == forest].mean() > 2 * kh[:, cls == farm].mean()


def test_region_data_shapes_and_missing_forcing(region):
    data = region_data(region, jnp.float64)
    t = region.sizes["time"]
    assert data.variables.shape == (len(REGIONAL_FORCING) + 3, t, 12, 12)
    assert data.static.shape == (len(data.classes) + 1, 12, 12)
    assert np.allclose(data.static[:-1].sum(axis=0), 1.0)
    with pytest.raises(DataError, match="Wind_E"):
        region_data(region.drop_vars("Wind_E"))
    gappy = region.copy()
    gappy["Tair"] = gappy["Tair"].where(~((gappy.time == gappy.time[5]) & (gappy.y == gappy.y[2]) & (gappy.x == gappy.x[3])))
    with pytest.raises(DataError, match=r"Tair is missing at time .* cell \(y=2, x=3\)"):
        region_data(gappy)


def test_windows_and_blocked_split_cover_the_record():
    assert window_starts(100, 48, 12) == [0, 36, 52]
    split = blocked_split(30 * 24)
    total = split["train"].astype(int) + split["val"] + split["test"]
    assert (total == 1).all()
    assert split["train"].mean() == pytest.approx(0.6) and split["test"].mean() == pytest.approx(0.2)
    assert split["test"][6 * 24] and split["val"][3 * 24] and split["train"][0]


def test_fixed_kh_closes_the_energy_balance_on_the_region(region):
    data = region_data(region, jnp.float64)
    out = predict_regional(fixed_kh_model(data), data)
    residual = np.abs(out["Rnet"] - out["Qh"] - out["Qle"] - out["Qg"] - out["Qf"])
    assert residual.max() < 1e-8
    assert out["air_energy_residual"].max() < 1e-8
    assert out["coupling_residual"].max() < 10.0  # the closed loop's threshold


def test_scores_against_hand_computed_values():
    ds = xr.Dataset({
        "tower": (("y", "x"), np.array([[True, False]])),
        "homogeneous": (("y", "x"), np.array([[False, True]])),
        "fringe": (("y", "x"), np.array([[False, False]])),
        "Tair": (("time", "y", "x"), np.array([[[300.0, 310.0]], [[300.0, 300.0]]])),
        "Wind": (("time", "y", "x"), np.full((2, 1, 2), 3.0)),
        "Qh_true": (("time", "y", "x"), np.array([[[0.0, 10.0]], [[0.0, 20.0]]])),
        "Qle_true": (("time", "y", "x"), np.array([[[0.0, 5.0]], [[0.0, 7.0]]])),
    })
    masks = surface_masks(ds, np.array([True, True]))
    assert masks["all"].tolist() == [[False, True], [False, True]]
    assert masks["extreme_hot"].tolist() == [[False, True], [False, False]]
    out = {"Qh": np.array([[99.0, 12.0], [99.0, 17.0]]), "Qle": np.array([[0.0, 5.0], [0.0, 9.0]])}
    recs = {r["surface"]: r for r in score_records("m", out, ds, masks)}
    assert recs["all"]["mse_h"] == pytest.approx((4 + 9) / 2) and recs["all"]["mae_le"] == pytest.approx(1.0)
    assert recs["extreme_hot"]["n"] == 1 and recs["extreme_hot"]["mse_h"] is None  # one value: no score
    assert degradation(list(recs.values()), "m") == {"extreme_hot": None, "extreme_wind": None}
    kh = np.array([[1.0, 2.0], [4.0, 8.0]])
    assert field_correlation(kh, kh**2, np.ones((2, 2), bool)) == pytest.approx(1.0)


@pytest.mark.slow
def test_a_tiny_region_trains_and_its_loss_falls(region):
    data = region_data(region, jnp.float32)
    split = blocked_split(data.n_steps)
    cfg = TrainConfig(lr=3e-3, epochs=4, patience=4)
    model = build_hybrid(data)
    result = train_regional(model, data, cfg, split=split, window=24, warmup=6, progress=False)
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < 0.8 * losses[0]
    out = predict_regional(result.model, data, window=24, warmup=6)
    assert 1e-3 <= out["Kh"].min() and out["Kh"].max() <= 1e2  # the bounded head
    assert 1e2 <= out["rs_field"].min() and out["rs_field"].max() <= 1e4
