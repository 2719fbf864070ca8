"""Splits by time blocks and by site without leakage; training windows with a spin-up prefix."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from hybridlsm.data import (
    TEST,
    TRAIN,
    UNUSED,
    VALIDATION,
    DataError,
    check_no_leakage,
    leave_one_site_out,
    site_split_labels,
    split_by_time,
    training_windows,
)

T = pd.date_range("2004-05-06 11:00", periods=11497, freq="30min")  # the US-Wkg time axis


def test_split_by_fractions():
    lab = split_by_time(T, (0.6, 0.2, 0.2))
    counts = {int(k): int(v) for k, v in zip(*np.unique(lab.values, return_counts=True))}
    # round(0.6 x 11497) = 6898, round(0.8 x 11497) = 9198
    assert counts == {TRAIN: 6898, VALIDATION: 9198 - 6898, TEST: 11497 - 9198}
    assert lab.values[0] == TRAIN and lab.values[-1] == TEST
    assert lab.name == "split" and lab.dtype == np.int8
    assert (np.diff(lab.values) >= 0).all()  # train | validation | test, in this order


def test_split_with_spinup_and_buffer():
    lab = split_by_time(T, (0.5, 0.25, 0.25), spinup_steps=48, buffer_steps=10).values
    usable = 11497 - 48
    v0 = 48 + round(0.5 * usable)
    t0 = 48 + round(0.75 * usable)
    assert (lab[:48] == UNUSED).all() and lab[48] == TRAIN
    assert (lab[v0 - 10:v0] == UNUSED).all() and lab[v0 - 11] == TRAIN and lab[v0] == VALIDATION
    assert (lab[t0 - 10:t0] == UNUSED).all() and lab[t0] == TEST
    assert int((lab == UNUSED).sum()) == 48 + 20


def test_split_by_dates():
    ds = xr.Dataset(coords={"time": T})
    lab = split_by_time(ds, validation_start="2004-10-01", test_start="2004-11-15")
    s = lab.to_series()
    assert (s[:"2004-09-30 23:30"] == TRAIN).all()
    assert (s["2004-10-01":"2004-11-14 23:30"] == VALIDATION).all()
    assert (s["2004-11-15":] == TEST).all()
    assert int((lab == TEST).sum()) == 47 * 48 - 1  # 15 Nov 00:00 .. 31 Dec 23:00 (the last start)
    with pytest.raises(DataError, match="must lie in order inside the record"):
        split_by_time(ds, validation_start="2004-11-15", test_start="2004-10-01")
    with pytest.raises(ValueError, match="summing to 1"):
        split_by_time(ds, (0.5, 0.5, 0.5))


def test_check_no_leakage():
    check_no_leakage(np.array([0, 1, 1, 0, 2, 2, 3]))
    with pytest.raises(DataError, match="leakage: train step 5 is not before validation step 2"):
        check_no_leakage(np.array([1, 1, 2, 2, 0, 1, 3]))
    with pytest.raises(DataError, match=r"leakage: site 'US-Wkg' is in both 'train' and 'test'"):
        check_no_leakage({"train": ["US-Wkg", "US-Me2"], "validation": [], "test": ["US-Wkg"]})
    with pytest.raises(DataError, match=r"split labels must be 0..3; found \[7\]"):
        check_no_leakage(np.array([0, 7]))


def test_leave_one_site_out_no_overlap():
    sites = ["US-Wkg", "US-Me2", "US-Bi1", "DE-Tha", "FR-Pue", "AT-Neu"]
    folds = leave_one_site_out(sites, n_validation=1, seed=0)
    assert [f["test"] for f in folds] == [[s] for s in sites]
    for f in folds:
        roles = f["train"] + f["validation"] + f["test"]
        assert sorted(roles) == sorted(sites)  # every site exactly once
        assert len(f["train"]) == 4 and len(f["validation"]) == 1
        assert not set(f["train"]) & set(f["validation"]) and f["test"][0] not in f["train"] + f["validation"]
    assert folds == leave_one_site_out(sites, n_validation=1, seed=0)  # reproducible
    with pytest.raises(DataError, match=r"duplicated site id\(s\) \['DE-Tha'\]"):
        leave_one_site_out(sites + ["DE-Tha"])
    with pytest.raises(DataError, match="2 site"):
        leave_one_site_out(sites[:2])


def test_site_split_labels():
    def site(sid, n):
        return xr.Dataset(coords={"time": pd.date_range("2010-01-01", periods=n, freq="30min")}, attrs={"site_id": sid})

    dss = [site("A", 100), site("B", 50), site("C", 70), site("D", 10)]
    labels = site_split_labels(dss, {"train": ["A"], "validation": ["B"], "test": ["C"]}, spinup_steps=5)
    assert set(np.unique(labels["A"].values[5:])) == {TRAIN} and (labels["A"].values[:5] == UNUSED).all()
    assert set(np.unique(labels["B"].values[5:])) == {VALIDATION}
    assert set(np.unique(labels["C"].values[5:])) == {TEST}
    assert (labels["D"].values == UNUSED).all()
    check_no_leakage(labels)


def test_training_windows_cover_train_once_and_skip_spinup():
    lab = split_by_time(np.arange(1000).astype("datetime64[h]"), (0.6, 0.2, 0.2), spinup_steps=48).values
    w = training_windows(lab, length=100, spinup=48)
    assert w.index.shape[1] == 148 and len(w) == w.index.shape[0]
    assert not w.loss_mask[:, :48].any()  # the loss never sees the spin-up prefix
    loss_steps = w.index[w.loss_mask]
    assert (lab[loss_steps] == TRAIN).all()  # no validation or test step in the loss
    assert len(loss_steps) == len(np.unique(loss_steps))  # each counted once
    assert np.array_equal(np.sort(loss_steps), np.nonzero(lab == TRAIN)[0])  # all train steps covered
    assert (w.index[:, 48] == w.start + 48).all() and np.array_equal(w.index[:, 0], w.start)


def test_training_windows_reach_the_end():
    lab = np.full(1075, TRAIN, dtype=np.int8)
    w = training_windows(lab, length=100, spinup=50)
    covered = np.sort(w.index[w.loss_mask])
    assert np.array_equal(covered, np.arange(50, 1075))  # the first 50 steps serve only as spin-up
    assert w.start[-1] == 1075 - 150
    ov = training_windows(lab, length=100, spinup=50, stride=50)
    assert ov.loss_mask.sum() > len(np.unique(ov.index[ov.loss_mask]))  # overlapping windows


def test_training_windows_validation_and_empty():
    lab = split_by_time(np.arange(500).astype("datetime64[h]"), (0.6, 0.2, 0.2)).values
    w = training_windows(lab, length=50, spinup=20, split=VALIDATION)
    assert np.array_equal(np.sort(w.index[w.loss_mask]), np.nonzero(lab == VALIDATION)[0])
    # the spin-up of the first validation window reads the end of the training block (forcing only)
    assert (lab[w.index[0, :20]] == TRAIN).all()
    none = training_windows(np.zeros(30, dtype=np.int8), length=10, spinup=5)
    assert len(none) == 0 and none.index.shape == (0, 15)
