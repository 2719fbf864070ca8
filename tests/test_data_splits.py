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
from hybridlsm.data.splits import blocked_labels, held_out_fold, held_out_labels

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


# ------------------------------------------------------------------ interleaved calendar blocks

# hourly, 2010-01-01 06:00 .. 2010-01-10 23:00; after a 6-step spin-up, daily blocks start at 12:00:
# blocks 0..8 have 24 steps, block 9 the last 12
HOURLY = pd.date_range("2010-01-01 06:00", periods=234, freq="h")


def _counts(lab) -> dict[int, int]:
    return {int(k): int(v) for k, v in zip(*np.unique(np.asarray(lab), return_counts=True))}


def test_blocked_labels_by_hand():
    lab = blocked_labels(HOURLY, 3600, block_days=1, test_every=5, val_every=5, gap_days=2 / 24, spinup_steps=6)
    assert lab.name == "split" and lab.dtype == np.int8
    v = lab.values
    # test blocks 0, 5; validation blocks 2, 7; train blocks 1, 3, 4, 6, 8, 9, less 2 steps next to a
    # held-out block: 1 and 6 lose 4, 3, 4 and 8 lose 2, 9 (after train block 8, at the end) none
    assert _counts(v) == {UNUSED: 6 + 14, TRAIN: 5 * 24 + 12 - 14, VALIDATION: 48, TEST: 48}
    assert (v[:6] == UNUSED).all() and (v[6:30] == TEST).all()  # spin-up, then block 0
    assert (v[30:32] == UNUSED).all() and (v[32:52] == TRAIN).all() and (v[52:54] == UNUSED).all()
    assert (v[54:78] == VALIDATION).all() and (v[78:80] == UNUSED).all()
    assert (v[222:] == TRAIN).all()  # block 9
    assert HOURLY[30] == pd.Timestamp("2010-01-02 12:00")  # block 1 starts 24 h after step 6


def test_blocked_labels_offset_and_no_gap():
    lab = blocked_labels(HOURLY, 3600, block_days=1, offset=1, gap_days=2 / 24, spinup_steps=6).values
    # test blocks 1, 6; validation blocks 3, 8; gaps: block 0: 2, 2: 4, 4: 2, 5: 2, 7: 4, 9: 2
    assert _counts(lab) == {UNUSED: 6 + 16, TRAIN: 5 * 24 + 12 - 16, VALIDATION: 48, TEST: 48}
    assert (lab[30:54] == TEST).all() and (lab[78:102] == VALIDATION).all()  # blocks 1 and 3
    plain = blocked_labels(HOURLY, 3600, block_days=1, gap_days=0, spinup_steps=6).values
    assert _counts(plain) == {UNUSED: 6, TRAIN: 132, VALIDATION: 48, TEST: 48}


def test_blocked_labels_follow_the_calendar_over_missing_steps():
    full = blocked_labels(HOURLY, 3600, block_days=1, gap_days=2 / 24, spinup_steps=6).to_series()
    holed = HOURLY.delete(range(60, 66))  # 2010-01-03 18:00 .. 23:00, inside validation block 2
    lab = blocked_labels(holed, 3600, block_days=1, gap_days=2 / 24, spinup_steps=6).to_series()
    assert lab.equals(full.drop(HOURLY[60:66]))  # later blocks do not shift


def test_blocked_labels_weekly_over_a_year():
    year = pd.date_range("2010-01-01", "2010-12-31 23:30", freq="30min")
    assert len(year) == 17520
    lab = blocked_labels(year, 1800, block_days=7, test_every=5, val_every=5, gap_days=1, spinup_steps=480)
    v = lab.values
    # 17040 steps after the 10-day spin-up: blocks 0..49 of 336 steps, block 50 (test) of 240.
    # Test: blocks 0, 5, ..., 50; validation: 2, 7, ..., 47; train: 30 blocks, each cycle of five
    # blocks losing 4 x 48 steps to the 1-day gaps (block 1 after test block 0 and before
    # validation block 2, block 3 after block 2, block 4 before the next test block)
    assert _counts(v) == {UNUSED: 480 + 10 * 4 * 48, TRAIN: 30 * 336 - 10 * 4 * 48, VALIDATION: 10 * 336,
                          TEST: 10 * 336 + 240}  # fmt: skip
    assert (v[:480] == UNUSED).all() and (v[480:816] == TEST).all()
    # every calendar month has test steps (test blocks start on days 10 + 35 k of the year)
    per_month = (lab.to_series() == TEST).groupby(year.month).sum().tolist()
    assert per_month == [336, 336, 336, 240, 144, 288, 336, 336, 336, 336, 336, 240]
    check_no_leakage(v, gap=48)
    with pytest.raises(DataError, match=r"leakage: train step 864 lies within 49 step\(s\) of a validation or test"):
        check_no_leakage(v, gap=49)  # the first train step, 49 steps after test block 0 (480..815)
    with pytest.raises(DataError, match="not before"):
        check_no_leakage(v)  # interleaved blocks are not contiguous in time


def test_blocked_labels_errors():
    with pytest.raises(ValueError, match="test_every 5 and val_every 10 make block 5 both test and validation"):
        blocked_labels(HOURLY, 3600, block_days=1, val_every=10)
    with pytest.raises(ValueError, match="must be >= 2"):
        blocked_labels(HOURLY, 3600, test_every=1)
    with pytest.raises(ValueError, match="shorter than the time step"):
        blocked_labels(HOURLY, 3600, block_days=0.01)
    with pytest.raises(DataError, match="spin-up of 234 steps leaves nothing"):
        blocked_labels(HOURLY, 3600, spinup_steps=234)


# ---------------------------------------------------------------------------- held-out test sites


def _site(sid: str, n: int) -> xr.Dataset:
    return xr.Dataset(coords={"time": pd.date_range("2010-01-01", periods=n, freq="30min")}, attrs={"site_id": sid})


def test_held_out_fold_checks_the_ids():
    assert held_out_fold(["US-Wkg", "US-CRT", "US-Me2"], ["US-CRT"]) == {
        "train": ["US-Wkg", "US-Me2"], "validation": [], "test": ["US-CRT"]}  # fmt: skip
    with pytest.raises(DataError, match=r"unknown site id\(s\) \['US-XXX'\]; the sites read are \['US-CRT', 'US-Wkg'\]"):
        held_out_fold(["US-Wkg", "US-CRT"], ["US-CRT", "US-XXX"])
    with pytest.raises(DataError, match="names every site"):
        held_out_fold(["US-Wkg", "US-CRT"], ["US-CRT", "US-Wkg"])
    with pytest.raises(DataError, match=r"test_sites \['US-CRT'\] given more than once"):
        held_out_fold(["US-Wkg", "US-CRT"], ["US-CRT", "US-CRT"])
    with pytest.raises(DataError, match=r"site id\(s\) \['US-Wkg'\] given more than once"):
        held_out_fold(["US-Wkg", "US-Wkg", "US-CRT"], ["US-CRT"])


def test_held_out_labels():
    labels = held_out_labels([_site("A", 100), _site("B", 50), _site("C", 70)], ["B"], val=0.2, spinup_steps=10)
    assert list(labels) == ["A", "B", "C"]
    assert _counts(labels["B"]) == {TEST: 50}  # scored whole, spin-up included
    # A: 90 steps after the spin-up, round(0.8 x 90) = 72 train, 18 validation
    assert _counts(labels["A"]) == {UNUSED: 10, TRAIN: 72, VALIDATION: 18}
    assert (labels["A"].values[82:] == VALIDATION).all()
    # C: 60 steps after the spin-up, 48 train, 12 validation
    assert _counts(labels["C"]) == {UNUSED: 10, TRAIN: 48, VALIDATION: 12}
    with pytest.raises(DataError, match=r"unknown site id\(s\) \['D'\]; the sites read are \['A', 'B', 'C'\]"):
        held_out_labels([_site("A", 100), _site("B", 50), _site("C", 70)], ["D"])


def test_usable_targets_leave_out_qc_gaps_split_and_steps_of_made_up_forcing():
    from hybridlsm.data.splits import usable_targets

    t = pd.date_range("2020-06-01", periods=8, freq="30min")
    ds = xr.Dataset({"Qle": ("time", np.array([1.0, 2.0, np.nan, 4.0, 5.0, 6.0, 7.0, 8.0])),
                     "Qle_qc": ("time", np.array([0, 0, 0, 3, 0, 0, 0, 0], np.int8)),
                     "forcing_filled": ("time", np.array([0, 1, 0, 0, 2, 0, 0, 0], np.int8)),
                     "loss_mask": ("time", np.array([True] * 7 + [False]))}, coords={"time": t})
    values, usable = usable_targets(ds, ["Qle", "Qh"], max_qc=1)
    # 2 missing, 3 QC 3, 4 driven by forcing from the diurnal cycle, 7 outside the split; Qh absent
    assert usable[:, 0].tolist() == [True, True, False, False, False, True, True, False]
    assert not usable[:, 1].any() and np.isnan(values[:, 1]).all()
