"""Train / validation / test splits without leakage, and training windows with a spin-up prefix.

Labels per time step (``split`` in ``predictions/<site>/obs.nc``, docs/architecture.md §3):
``0`` unused or spin-up, ``1`` train, ``2`` validation, ``3`` test.

- :func:`split_by_time`: contiguous blocks in time, train first, validation in the middle, test
  last, by fractions or explicit dates, optionally with a model spin-up at the start and a buffer
  (label 0) between blocks;
- :func:`blocked_labels`: interleaved calendar blocks (every ``test_every``-th block test, every
  ``val_every``-th validation), so that test and validation cover every season, with a gap of
  unused training steps next to each held-out block;
- :func:`leave_one_site_out`: folds over sites (each site is the test site once; validation
  sites are taken from the rest), and :func:`site_split_labels` for the per-step labels;
- :func:`held_out_fold` and :func:`held_out_labels`: named test sites scored whole, the model
  trained on the other sites (the PLUMBER protocol);
- :func:`training_windows`: windows of ``spinup + length`` steps whose loss mask excludes the
  spin-up prefix and every step not labelled as the wanted split.

:func:`check_no_leakage` asserts that the roles do not overlap; every split function calls it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr

from .preprocess import FILLED_LONG, forcing_filled
from .schema import DataError, qc_mask

__all__ = [
    "UNUSED",
    "TRAIN",
    "VALIDATION",
    "TEST",
    "SPLIT_NAMES",
    "split_by_time",
    "blocked_labels",
    "leave_one_site_out",
    "site_split_labels",
    "held_out_fold",
    "held_out_labels",
    "check_no_leakage",
    "Windows",
    "training_windows",
    "loss_steps",
    "usable_targets",
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


def _near(mask: np.ndarray, steps: int) -> np.ndarray:
    """True within ``steps`` steps (either side) of a True of ``mask``."""
    if steps <= 0:
        return mask.copy()
    cs = np.concatenate([[0], np.cumsum(mask)])
    k = np.arange(mask.size)
    return cs[np.minimum(k + steps + 1, mask.size)] - cs[np.maximum(k - steps, 0)] > 0


def blocked_labels(
    time,
    time_step_s: float,
    *,
    block_days: float = 7.0,
    test_every: int = 5,
    val_every: int = 5,
    offset: int = 0,
    gap_days: float = 1.0,
    spinup_steps: int = 0,
) -> xr.DataArray:
    """Labels for interleaved blocks, so that test and validation data cover every season.

    The steps after the first ``spinup_steps`` (label 0) are cut into blocks of ``block_days``
    by time stamp, block 0 starting at step ``spinup_steps``: block ``i`` holds the steps with
    ``i * block <= t - t[spinup_steps] < (i + 1) * block``. Block ``i`` is test if
    ``(i - offset) % test_every == 0``, validation if ``(i - offset) % val_every == val_every // 2``,
    train otherwise. Training steps within ``round(gap_days * 86400 / time_step_s)`` steps of a
    test or validation step are labelled 0, so that the model state does not carry information
    across; held-out blocks keep every step.
    """
    t = _times(time)
    n = len(t)
    if n == 0:
        raise DataError("blocked_labels: empty time axis")
    if spinup_steps < 0 or gap_days < 0 or time_step_s <= 0 or offset < 0:
        raise ValueError("spinup_steps, gap_days and offset must be >= 0 and time_step_s > 0")
    if test_every < 2 or val_every < 2:
        raise ValueError(f"test_every and val_every must be >= 2; got {test_every} and {val_every}")
    if block_days * 86400.0 < time_step_s:
        raise ValueError(f"block_days {block_days:g} is shorter than the time step ({time_step_s:g} s)")
    if spinup_steps >= n:
        raise DataError(f"blocked_labels: spin-up of {spinup_steps} steps leaves nothing of {n} steps")
    elapsed = (t.values[spinup_steps:] - t.values[spinup_steps]).astype("timedelta64[ns]").astype(np.int64)
    pos = elapsed // int(round(block_days * 86400e9)) - offset
    is_test = pos % test_every == 0
    is_val = pos % val_every == val_every // 2
    if (is_test & is_val).any():
        raise ValueError(
            f"test_every {test_every} and val_every {val_every} make block "
            f"{int(pos[is_test & is_val][0]) + offset} both test and validation"
        )
    labels = np.zeros(n, dtype=np.int8)
    labels[spinup_steps:] = np.where(is_test, TEST, np.where(is_val, VALIDATION, TRAIN))
    gap = int(round(gap_days * 86400.0 / time_step_s))
    labels[(labels == TRAIN) & _near(labels >= VALIDATION, gap)] = UNUSED
    out = _labels(t, labels)
    check_no_leakage(out, gap=gap)
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


def held_out_fold(site_ids, held_out) -> dict[str, list[str]]:
    """The fold ``{"train": other sites, "validation": [], "test": held_out}`` (PLUMBER protocol).

    ``site_ids`` are the ids of the sites read (``data.sites``), ``held_out`` the configured
    ``split.test_sites``. Raises DataError for ids that are not among the sites (naming them
    and the available ones), for duplicates, and when no training site remains.
    """
    ids = [str(s) for s in site_ids]
    held = [str(s) for s in held_out]
    for what, values in (("site id(s)", ids), ("test_sites", held)):
        dup = sorted({s for s in values if values.count(s) > 1})
        if dup:
            raise DataError(f"held_out_fold: {what} {dup} given more than once")
    if not held:
        raise DataError("held_out_fold: no held-out site given")
    unknown = [s for s in held if s not in ids]
    if unknown:
        raise DataError(f"split.test_sites: unknown site id(s) {unknown}; the sites read are {sorted(ids)}")
    train = [s for s in ids if s not in held]
    if not train:
        raise DataError(f"split.test_sites names every site {sorted(ids)}; at least one training site must remain")
    fold = {"train": train, "validation": [], "test": held}
    check_no_leakage(fold)
    return fold


def held_out_labels(datasets, held_out, val: float = 0.2, spinup_steps: int = 0) -> dict[str, xr.DataArray]:
    """Per-step labels of the held-out-sites split, by site id (``attrs['site_id']``).

    Every step of a held-out site is 3 (test; its record is scored whole). Each other site is
    split in time by :func:`split_by_time` with fractions ``(1 - val, val, 0)`` and
    ``spinup_steps``: train, then the last ``val`` fraction validation. The ids are checked by
    :func:`held_out_fold`.
    """
    datasets = list(datasets)
    fold = held_out_fold([ds.attrs.get("site_id") for ds in datasets], held_out)
    out = {}
    for ds in datasets:
        sid = str(ds.attrs["site_id"])
        if sid in fold["test"]:
            t = _times(ds)
            out[sid] = _labels(t, np.full(len(t), TEST, dtype=np.int8))
        else:
            out[sid] = split_by_time(ds, (1.0 - val, val, 0.0), spinup_steps=spinup_steps)
    return out


def check_no_leakage(split, gap: int | None = None) -> None:
    """Raise DataError if roles overlap.

    ``split`` is a fold dict (a site in two roles), or a label array, or a dict ``site -> labels``
    (a site labelled with two different non-zero roles). A label array must hold only 0..3 and,
    with ``gap=None`` (contiguous time blocks), have every train step before every validation
    step before every test step; with ``gap`` an int (interleaved blocks, :func:`blocked_labels`)
    no train step may lie within ``gap`` steps of a validation or test step.
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
    if gap is not None:
        close = (lab == TRAIN) & _near(lab >= VALIDATION, gap)
        if close.any():
            raise DataError(
                f"leakage: train step {int(np.argmax(close))} lies within {gap} step(s) of a validation or test step"
            )
        return
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


def loss_steps(ds: xr.Dataset) -> np.ndarray:
    """(T,) the steps a loss may use: the dataset's boolean ``loss_mask`` (its split), all without one."""
    if "loss_mask" in ds:
        return np.asarray(ds["loss_mask"].values, dtype=bool)
    return np.ones(ds.sizes["time"], dtype=bool)


def usable_targets(ds: xr.Dataset, targets, max_qc: int) -> tuple[np.ndarray, np.ndarray]:
    """``(values (T, K), usable (T, K))`` of one site's observed ``targets``.

    Usable: :func:`hybridlsm.data.qc_mask` (present, QC <= ``max_qc``, not estimated), finite, in
    :func:`loss_steps`, and not at a step whose forcing was filled from the diurnal cycle or
    estimated (``forcing_filled`` 2: the model ran on made-up forcing there, so these steps are
    neither trained on nor scored). A target absent from the dataset is NaN and never usable; a
    target that is not 1-D on ``time`` is an error.
    """
    n = ds.sizes["time"]
    extra = loss_steps(ds) & (forcing_filled(ds) < FILLED_LONG)
    values, masks = [], []
    for var in targets:
        if var not in ds:
            values.append(np.full(n, np.nan))
            masks.append(np.zeros(n, dtype=bool))
            continue
        if ds[var].dims != ("time",):
            raise DataError(f"{ds.attrs.get('site_id', '<dataset>')}: target {var} has dims {ds[var].dims}; "
                            "expected ('time',)")  # fmt: skip
        v = np.asarray(ds[var].values, dtype=np.float64)
        values.append(v)
        masks.append(np.asarray(qc_mask(ds, var, max_qc), dtype=bool) & np.isfinite(v) & extra)
    return np.stack(values, axis=-1), np.stack(masks, axis=-1)

