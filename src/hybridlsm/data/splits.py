"""Train / validation / test splits without leakage, and training windows with a spin-up prefix.

Labels per time step (``split`` in ``predictions/<site>/obs.nc``, docs/architecture.md §3):
``0`` unused or spin-up, ``1`` train, ``2`` validation, ``3`` test.

- :func:`split_by_time`: contiguous blocks in time, train first, validation in the middle, test
  last, by fractions or explicit dates, optionally with a model spin-up at the start and a buffer
  (label 0) between blocks;
- :func:`leave_one_site_out`: folds over sites (each site is the test site once; validation
  sites are taken from the rest), and :func:`site_split_labels` for the per-step labels;
- :func:`training_windows`: windows of ``spinup + length`` steps whose loss mask excludes the
  spin-up prefix and every step not labelled as the wanted split.

:func:`check_no_leakage` asserts that the roles do not overlap; every split function calls it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr

from .schema import DataError

__all__ = [
    "UNUSED",
    "TRAIN",
    "VALIDATION",
    "TEST",
    "SPLIT_NAMES",
    "split_by_time",
    "leave_one_site_out",
    "site_split_labels",
    "check_no_leakage",
    "Windows",
    "training_windows",
]

UNUSED, TRAIN, VALIDATION, TEST = 0, 1, 2, 3
SPLIT_NAMES = {UNUSED: "unused", TRAIN: "train", VALIDATION: "validation", TEST: "test"}


def _times(obj) -> pd.DatetimeIndex:
    if isinstance(obj, (xr.Dataset, xr.DataArray)):
        return pd.DatetimeIndex(obj["time"].values)
    return pd.DatetimeIndex(obj)


def _labels(time: pd.DatetimeIndex, values: np.ndarray) -> xr.DataArray:
    return xr.DataArray(
        values.astype(np.int8), dims="time", coords={"time": time.values}, name="split",
        attrs={"flag_values": "0 1 2 3", "flag_meanings": "unused_or_spinup train validation test"},
    )


def split_by_time(
    time,
    fractions: tuple[float, float, float] | None = (0.6, 0.2, 0.2),
    *,
    validation_start=None,
    test_start=None,
    spinup_steps: int = 0,
    buffer_steps: int = 0,
) -> xr.DataArray:
    """Labels for contiguous time blocks: train | validation | test.

    ``time``: a dataset (its ``time``) or times. Either ``fractions`` (train, validation, test;
    summing to 1, of the steps after the spin-up) or explicit ``validation_start`` and
    ``test_start`` dates (validation = [validation_start, test_start), test = [test_start, end]).
    The first ``spinup_steps`` steps and ``buffer_steps`` steps before the validation and the
    test block are labelled 0 (unused), so that autocorrelation does not carry information
    across a boundary.
    """
    t = _times(time)
    n = len(t)
    if n == 0:
        raise DataError("split_by_time: empty time axis")
    if spinup_steps < 0 or buffer_steps < 0:
        raise ValueError("spinup_steps and buffer_steps must be >= 0")
    labels = np.zeros(n, dtype=np.int8)
    if validation_start is not None or test_start is not None:
        if validation_start is None or test_start is None:
            raise ValueError("give both validation_start and test_start, or fractions")
        v0 = int(np.searchsorted(t.values, np.datetime64(pd.Timestamp(validation_start))))
        t0 = int(np.searchsorted(t.values, np.datetime64(pd.Timestamp(test_start))))
        if not 0 < v0 < t0 < n:
            raise DataError(
                f"split_by_time: validation_start {validation_start} and test_start {test_start} must "
                f"lie in order inside the record {t[0]} .. {t[-1]}"
            )
        b = [spinup_steps, v0, t0, n]
    else:
        f = np.asarray(fractions, dtype=float)
        if f.shape != (3,) or (f < 0).any() or abs(f.sum() - 1.0) > 1e-9:
            raise ValueError(f"fractions must be three non-negative numbers summing to 1; got {fractions}")
        usable = n - spinup_steps
        if usable <= 0:
            raise DataError(f"split_by_time: spin-up of {spinup_steps} steps leaves nothing of {n} steps")
        cuts = spinup_steps + np.round(np.cumsum(f) * usable).astype(int)
        b = [spinup_steps, int(cuts[0]), int(cuts[1]), n]
    labels[b[0]:b[1]] = TRAIN
    labels[b[1]:b[2]] = VALIDATION
    labels[b[2]:b[3]] = TEST
    labels[:spinup_steps] = UNUSED
    for edge in (b[1], b[2]):
        labels[max(edge - buffer_steps, 0):edge] = UNUSED
    out = _labels(t, labels)
    check_no_leakage(out)
    return out


def leave_one_site_out(site_ids, n_validation: int = 1, seed: int | None = 0) -> list[dict[str, list[str]]]:
    """Folds ``{"train": [...], "validation": [...], "test": [site]}``, one per site.

    The validation sites of each fold are ``n_validation`` sites drawn (with ``seed``) from the
    sites that are not the test site. Duplicate site ids are an error (the same site in two roles
    would leak).
    """
    ids = [str(s) for s in site_ids]
    dup = sorted({s for s in ids if ids.count(s) > 1})
    if dup:
        raise DataError(f"leave_one_site_out: duplicated site id(s) {dup}; merge their records first")
    if len(ids) < 2 + n_validation:
        raise DataError(
            f"leave_one_site_out: {len(ids)} site(s) cannot give a test site, {n_validation} validation "
            f"site(s) and at least one training site"
        )
    rng = np.random.default_rng(seed)
    folds = []
    for test in ids:
        rest = [s for s in ids if s != test]
        val = sorted(rng.choice(rest, size=n_validation, replace=False).tolist()) if n_validation else []
        train = [s for s in rest if s not in val]
        fold = {"train": train, "validation": val, "test": [test]}
        check_no_leakage(fold)
        folds.append(fold)
    return folds


def site_split_labels(datasets, fold: dict[str, list[str]], spinup_steps: int = 0) -> dict[str, xr.DataArray]:
    """Per-step labels for each site dataset of a fold (site id from ``attrs['site_id']``).

    Every step of a training site is 1, of a validation site 2, of the test site 3 (the first
    ``spinup_steps`` steps 0); sites in no role are 0 throughout.
    """
    check_no_leakage(fold)
    role = {s: TRAIN for s in fold.get("train", [])}
    role.update({s: VALIDATION for s in fold.get("validation", [])})
    role.update({s: TEST for s in fold.get("test", [])})
    out = {}
    for ds in datasets:
        sid = ds.attrs.get("site_id")
        if sid in out:
            raise DataError(f"site_split_labels: site {sid!r} appears twice in the datasets")
        t = _times(ds)
        lab = np.full(len(t), role.get(sid, UNUSED), dtype=np.int8)
        lab[:spinup_steps] = UNUSED
        out[sid] = _labels(t, lab)
    return out


def check_no_leakage(split) -> None:
    """Raise DataError if roles overlap.

    ``split`` is a fold dict (a site in two roles), or a label array (a role that is not one
    contiguous block for time splits is allowed, but a label outside 0..3 is not), or a dict
    ``site -> labels`` (a site labelled with two different non-zero roles).
    """
    if isinstance(split, dict) and all(isinstance(v, (list, tuple)) for v in split.values()):
        seen: dict[str, str] = {}
        for r, sites in split.items():
            for s in sites:
                if s in seen and seen[s] != r:
                    raise DataError(f"leakage: site {s!r} is in both {seen[s]!r} and {r!r}")
                seen[s] = r
        return
    if isinstance(split, dict):
        for sid, lab in split.items():
            roles = set(np.unique(np.asarray(lab))) - {UNUSED}
            if len(roles) > 1:
                raise DataError(f"leakage: site {sid!r} has steps in several roles {sorted(int(r) for r in roles)}")
        return
    lab = np.asarray(split)
    bad = ~np.isin(lab, (UNUSED, TRAIN, VALIDATION, TEST))
    if bad.any():
        raise DataError(f"split labels must be 0..3; found {np.unique(lab[bad]).tolist()}")
    # time blocks: every train step precedes every validation step precedes every test step
    pos = {r: np.nonzero(lab == r)[0] for r in (TRAIN, VALIDATION, TEST)}
    order = [r for r in (TRAIN, VALIDATION, TEST) if pos[r].size]
    for a, b in zip(order, order[1:]):
        if pos[a].max() >= pos[b].min():
            raise DataError(
                f"leakage: {SPLIT_NAMES[a]} step {int(pos[a].max())} is not before {SPLIT_NAMES[b]} "
                f"step {int(pos[b].min())}"
            )


@dataclass(frozen=True)
class Windows:
    """Training windows over one time series.

    ``start[k]`` is the first step (spin-up included) of window k, ``index[k]`` its
    ``spinup + length`` step indices, ``loss_mask[k]`` True where the loss counts (not in the
    spin-up prefix and labelled as the wanted split).
    """

    start: np.ndarray
    index: np.ndarray
    loss_mask: np.ndarray
    length: int
    spinup: int

    def __len__(self) -> int:
        return int(self.start.size)


def training_windows(
    labels,
    length: int,
    spinup: int,
    *,
    stride: int | None = None,
    split: int = TRAIN,
    min_loss_steps: int = 1,
) -> Windows:
    """Windows of ``spinup + length`` steps whose loss part (the last ``length`` steps) covers the
    steps labelled ``split``.

    Loss parts start at the first ``split`` step that has ``spinup`` steps before it and advance by
    ``stride`` (default ``length``: consecutive, non-overlapping loss parts); the spin-up prefix
    may read forcing of any label but never enters the loss. Windows with fewer than
    ``min_loss_steps`` loss steps are dropped.
    """
    lab = np.asarray(labels.values if isinstance(labels, xr.DataArray) else labels)
    if length <= 0 or spinup < 0:
        raise ValueError("length must be > 0 and spinup >= 0")
    stride = stride or length
    n = lab.size
    wanted = np.nonzero(lab == split)[0]
    total = spinup + length
    if wanted.size == 0 or n < total:
        empty = np.zeros((0, total), dtype=np.int64)
        return Windows(np.zeros(0, dtype=np.int64), empty, empty.astype(bool), length, spinup)
    first_loss = max(int(wanted[0]), spinup)
    last = int(wanted[-1])
    loss_starts = np.arange(first_loss, last + 1, stride)
    starts = loss_starts - spinup
    starts = starts[starts + total <= n]
    # a last window that reaches the end of the record for the remaining steps
    if starts.size and starts[-1] + spinup + length <= last and n - total > starts[-1]:
        starts = np.r_[starts, n - total]
    index = starts[:, None] + np.arange(total)[None, :]
    mask = lab[index] == split
    mask[:, :spinup] = False
    if stride >= length:
        # steps already counted by the previous window are not counted twice
        seen = np.zeros(n, dtype=bool)
        for k in range(index.shape[0]):
            m = mask[k] & ~seen[index[k]]
            seen[index[k][m]] = True
            mask[k] = m
    keep = mask.sum(axis=1) >= min_loss_steps
    return Windows(starts[keep], index[keep], mask[keep], length, spinup)
