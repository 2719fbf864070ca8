"""Checks shared by the readers: plausible ranges (wrong-unit detection), time axes, VPD consistency.

Every failure names the file, the column (or variable), the first offending row or time and what
was expected. Usable-but-suspicious data gives a :class:`~hybridlsm.data.schema.DataWarning`.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from .. import thermo
from ..constants import T_FREEZE
from .schema import SITE_METADATA, VARIABLES, DataError, DataWarning

#: more than this fraction of a column outside the plausible range -> wrong unit -> DataError
WRONG_UNIT_FRACTION = 0.5
#: a longer jump in a time axis is an error, not a gap filled with missing rows
MAX_TIME_GAP = np.timedelta64(366, "D")


def fmt_time(t) -> str:
    """A timestamp as ``YYYY-MM-DD HH:MM``."""
    return pd.Timestamp(t).strftime("%Y-%m-%d %H:%M")


def where(i: int, times=None, lines=None) -> str:
    """'line 12 (2004-05-06 11:00)' / 'time 2004-05-06 11:00' / 'index 12' for row ``i``."""
    parts = []
    if lines is not None:
        parts.append(f"line {int(lines[i])}")
    if times is not None:
        t = fmt_time(times[i])
        parts.append(f"({t})" if parts else f"time {t}")
    return " ".join(parts) if parts else f"index {i}"


def check_plausible(
    values: np.ndarray,
    var: str,
    *,
    file: str,
    column: str,
    declared_units: str,
    raw: np.ndarray | None = None,
    times=None,
    lines=None,
    stacklevel: int = 3,
) -> None:
    """Check converted ``values`` of canonical variable ``var`` against its plausible range.

    Raises DataError when more than half of the present values lie outside the range (a unit
    error: the message says which alternative unit would fit, from ``Variable.alt_units``); warns
    (DataWarning) when some do. ``raw`` are the values before conversion (for the hint), ``times``
    and ``lines`` locate the first offending value.
    """
    spec = VARIABLES[var]
    lo, hi = spec.valid_range
    v = np.asarray(values, dtype=float)
    flat = v.reshape(-1)
    present = np.isfinite(flat)
    n = int(present.sum())
    if n == 0:
        return
    outside = present & ((flat < lo) | (flat > hi))
    k = int(outside.sum())
    if k == 0:
        return
    first = int(np.argmax(outside))
    loc = where(first, times, lines) if v.ndim == 1 else f"flat index {first}"
    med = float(np.nanmedian(flat[present]))
    msg = (
        f"{file}: column {column} ({var}): {k} of {n} values outside the plausible range "
        f"{lo:g}..{hi:g} {spec.units} (after conversion from {declared_units}); "
        f"min {np.nanmin(flat):.6g}, max {np.nanmax(flat):.6g}, median {med:.6g}; first at {loc} "
        f"(value {flat[first]:.6g} {spec.units})"
    )
    if k > WRONG_UNIT_FRACTION * n:
        hint = ""
        if raw is not None:
            rmed = float(np.median(np.asarray(raw, dtype=float).reshape(-1)[present]))
            label = fitting_alt_unit(np.array([rmed]), spec, 1.0)
            hint = "" if label is None else f"; the values look like {label}, not {declared_units}"
        raise DataError(msg + f"; expected {declared_units} giving {lo:g}..{hi:g} {spec.units}{hint}")
    warnings.warn(msg, DataWarning, stacklevel=stacklevel)


def check_vpd_consistency(ta_c, rh, vpd_hpa, *, file: str, column: str = "VPD") -> float | None:
    """Median ratio VPD / (e_s(T) (1 - RH/100)) where the expected VPD exceeds 1 hPa.

    A unit error (kPa or Pa written where hPa is declared) gives a ratio near 0.1 or 0.01 and
    raises DataError; a ratio outside 0.7..1.4 warns. Returns the ratio (None when < 24 rows).
    """
    ta_c, rh, vpd_hpa = (np.asarray(a, dtype=float) for a in (ta_c, rh, vpd_hpa))
    expected = thermo.saturation_vapour_pressure(ta_c + T_FREEZE) * (1.0 - rh / 100.0) / 100.0
    ok = np.isfinite(expected) & np.isfinite(vpd_hpa) & (expected > 1.0)
    if ok.sum() < 24:
        return None
    ratio = float(np.median(vpd_hpa[ok] / expected[ok]))
    msg = (
        f"{file}: column {column}: median ratio of VPD to e_s(TA)(1 - RH/100) is {ratio:.3g} "
        f"over {int(ok.sum())} rows; expected about 1 with VPD in hPa"
    )
    if ratio < 0.3 or ratio > 3.0:
        guess = "kPa" if 0.03 < ratio < 0.3 else ("Pa" if ratio > 30 else "another unit")
        raise DataError(msg + f" (the values look like {guess})")
    if not 0.7 <= ratio <= 1.4:
        warnings.warn(msg, DataWarning, stacklevel=3)
    return ratio


def regularise_time(
    times: pd.DatetimeIndex,
    step: pd.Timedelta,
    *,
    file: str,
    column: str,
    lines=None,
) -> tuple[pd.DatetimeIndex, np.ndarray]:
    """Check a time axis and return the complete regular axis and the positions of ``times`` in it.

    Duplicates, decreasing times and steps that are not whole multiples of ``step`` raise
    DataError naming the line. Steps that are multiples (missing rows) are allowed: the missing
    times are inserted (the caller fills them with NaN) and a DataWarning lists them.
    """
    t = np.asarray(times).astype("datetime64[ns]")
    if len(t) == 0:
        raise DataError(f"{file}: no data rows")
    step_ns = np.timedelta64(int(pd.Timedelta(step).value), "ns")
    rel = t - t[0]
    _check_order(rel.astype(np.int64), lambda i: fmt_time(t[i]), file=file, column=column, lines=lines)
    rem = rel % step_ns
    bad = np.nonzero(rem != np.timedelta64(0, "ns"))[0]
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"{file}: column {column}: irregular time step of {pd.Timedelta(t[i] - t[i - 1])} between "
            f"{fmt_time(t[i - 1])} and {fmt_time(t[i])} at {where(i, None, lines)}; expected a "
            f"multiple of {pd.Timedelta(step)}"
        )
    pos = (rel // step_ns).astype(np.int64)
    jump = np.diff(pos) * step_ns > MAX_TIME_GAP
    if jump.any():  # a typo in a year, or two records in one file: not a gap to fill with missing rows
        i = int(np.argmax(jump)) + 1
        raise DataError(
            f"{file}: column {column}: the time jumps from {fmt_time(t[i - 1])} to {fmt_time(t[i])} at "
            f"{where(i, None, lines)} (a gap of {pd.Timedelta(t[i] - t[i - 1]).days} days); expected a continuous "
            f"record with gaps shorter than {MAX_TIME_GAP.astype('timedelta64[D]').astype(int)} days (a mistyped year?)"
        )
    full = pd.DatetimeIndex(t[0] + np.arange(int(pos[-1]) + 1) * step_ns)
    _warn_inserted(pos, lambda k: fmt_time(full[k]), file=file, column=column, step=str(pd.Timedelta(step)))
    return full, pos


def regularise_ordinal(
    ordinals: np.ndarray, label, *, file: str, column: str, lines=None, step: str
) -> np.ndarray:
    """As :func:`regularise_time` for calendar periods given as consecutive integers (months, years).

    ``label(k)`` formats the period with ordinal ``ordinals[0] + k``. Returns the positions.
    """
    o = np.asarray(ordinals, dtype=np.int64)
    if o.size == 0:
        raise DataError(f"{file}: no data rows")
    _check_order(o, lambda i: label(int(o[i] - o[0])), file=file, column=column, lines=lines)
    pos = o - o[0]
    _warn_inserted(pos, label, file=file, column=column, step=step)
    return pos


def _check_order(o: np.ndarray, label, *, file, column, lines) -> None:
    if o.size < 2:
        return
    d = np.diff(o)
    dup = np.nonzero(d == 0)[0]
    if dup.size:
        i = int(dup[0]) + 1
        raise DataError(
            f"{file}: column {column}: duplicated timestamp {label(i)} at {where(i, None, lines)} "
            f"(also at {where(i - 1, None, lines)}); {dup.size} duplicate(s) in all; expected "
            f"strictly increasing times"
        )
    neg = np.nonzero(d < 0)[0]
    if neg.size:
        i = int(neg[0]) + 1
        raise DataError(
            f"{file}: column {column}: timestamps not increasing: {label(i)} at "
            f"{where(i, None, lines)} follows {label(i - 1)}; expected strictly increasing times"
        )


def _warn_inserted(pos: np.ndarray, label, *, file, column, step) -> None:
    n_full = int(pos[-1]) + 1
    if n_full == len(pos):
        return
    missing = np.setdiff1d(np.arange(n_full), pos)
    gaps = _runs(missing)
    shown = "; ".join(f"{label(a)}..{label(b)} ({b - a + 1} rows)" for a, b in gaps[:5])
    more = f"; and {len(gaps) - 5} more" if len(gaps) > 5 else ""
    warnings.warn(
        f"{file}: column {column}: {missing.size} missing rows in the time axis (step {step}) "
        f"inserted as missing values: {shown}{more}",
        DataWarning,
        stacklevel=4,
    )


def _runs(idx: np.ndarray) -> list[tuple[int, int]]:
    """Consecutive runs [(first, last), ...] of a sorted integer array."""
    if idx.size == 0:
        return []
    breaks = np.nonzero(np.diff(idx) != 1)[0]
    starts = np.r_[idx[0], idx[breaks + 1]]
    ends = np.r_[idx[breaks], idx[-1]]
    return list(zip(starts.tolist(), ends.tolist()))


def runs_of_true(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start indices and lengths of the runs of True in a 1-D boolean array."""
    m = np.asarray(mask, dtype=bool)
    if m.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    padded = np.r_[False, m, False].astype(np.int8)
    d = np.diff(padded)
    starts = np.nonzero(d == 1)[0]
    ends = np.nonzero(d == -1)[0]
    return starts, ends - starts


def modelled_cells(values, *, where: str, name: str = "mask", dims: tuple[str, str] = ("y", "x")) -> np.ndarray:
    """(ny, nx) bool of a grid's land / modelled-cell mask ``values`` (y, x): True where 1, False
    where 0. Any other value (a land fraction, a class code, a missing value) is a DataError naming
    ``where``, ``name`` and the first such cell: a mask read by a guessed threshold would model or
    drop cells silently."""
    values = np.asarray(values)
    if values.dtype == bool:
        return values.copy()
    bad = ~np.isin(values, (0, 1)) if values.dtype.kind in "iuf" else np.ones(values.shape, bool)
    if bad.any():
        y0, x0 = (int(i[0]) for i in np.nonzero(bad))
        value = values[y0, x0].item() if hasattr(values[y0, x0], "item") else values[y0, x0]
        raise DataError(f"{where}: {name} is {value!r} at cell ({dims[0]}={y0}, {dims[1]}={x0}) "
                        f"({int(bad.sum())} cell(s) not 0 or 1); expected 1 where a cell is modelled and 0 where it "
                        "is not (turn a land fraction or a class field into such a mask first)")
    return values == 1


def check_albedo_product(values, names, *, file: str, bounds: tuple[float, float], required=None) -> np.ndarray:
    """(N,) surface albedo of a product (a site's attrs, a grid's ``Albedo`` field) as floats, NaN
    where it gives none; ``names`` names the N columns (a site, a cell). A value outside the open
    ``bounds`` (LaD's albedo parameter's), or a NaN where ``required`` (N,) is true, is a DataError
    naming the first such column and the count."""
    values = np.asarray(values, float).reshape(-1)
    lower, upper = bounds
    bad = np.isfinite(values) & ~((values > lower) & (values < upper))
    if required is not None:
        bad |= ~np.isfinite(values) & np.asarray(required, bool).reshape(-1)
    if bad.any():
        i = np.flatnonzero(bad)
        raise DataError(f"{file}: albedo is {values[i[0]]} at {names[i[0]]} ({i.size} such columns); expected a "
                        f"snow-free surface albedo in ({lower:g}, {upper:g})")
    return values


#: the physically possible range of each numeric site metadata field (a value outside, e.g. a
#: latitude and longitude swapped, would silently move the sun and the estimated radiation)
SITE_METADATA_RANGES = {"latitude": (-90.0, 90.0, "degrees north"), "longitude": (-180.0, 360.0, "degrees east"),
                        "elevation": (-500.0, 9000.0, "m"), "canopy_height": (0.0, 150.0, "m"),
                        "measurement_height": (0.0, 500.0, "m above ground"),
                        "utc_offset_h": (-12.0, 14.0, "h from UTC")}  # fmt: skip


def check_metadata_values(attrs: dict, *, file: str) -> None:
    """The numeric site metadata of ``attrs`` that are given (a site's, or a grid's ``metadata``):
    each a number (a 0-d array becomes one) within :data:`SITE_METADATA_RANGES`, else a DataError
    naming the file, the key and the range."""
    for key, (low, high, unit) in SITE_METADATA_RANGES.items():
        value = attrs.get(key)
        if value is None:
            continue
        if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf":
            value = attrs[key] = value.item()  # e.g. ds["lat"].mean().values
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise DataError(f"{file}: site metadata key {key} is {value!r}; expected a number in {unit} (NaN or leave "
                            "it out when unknown)")
        if np.isfinite(value) and not low <= float(value) <= high:
            raise DataError(f"{file}: site metadata key {key} is {float(value):g}, outside {low:g}..{high:g} {unit}")


def check_site_metadata(attrs: dict, *, file: str, stacklevel: int = 3) -> list[str]:
    """Check a site's :data:`~hybridlsm.data.schema.SITE_METADATA` (from the file, a sites.csv or
    ``metadata=``) and record the missing ones. A numeric field that is not a number (text, a
    bool) or lies outside :data:`SITE_METADATA_RANGES` is a DataError naming the file, the field and
    the range. Missing fields (NaN, empty or absent) go to ``attrs["missing_metadata"]``
    (space-separated, "" when none), with one warning naming the file, the site and the fields;
    they stay missing. Returns the missing fields."""
    check_metadata_values(attrs, file=file)
    missing = []
    for key in SITE_METADATA:
        value = attrs.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            missing.append(key)
        elif not isinstance(value, str) and not np.isfinite(float(value)):
            missing.append(key)
    attrs["missing_metadata"] = " ".join(missing)
    if missing:
        warnings.warn(
            f"{file}: site {attrs.get('site_id', '') or '?'}: no {', '.join(missing)} in the file or "
            f"the site table; kept missing (NaN, or '' for igbp); give them with metadata= or a "
            f"sites.csv",
            DataWarning,
            stacklevel=stacklevel,
        )
    return missing


#: Variables the model forcing is built from (Wind_E, Wind_N: a grid's air layer); a value outside
#: their range cannot drive the model.
FORCING_CHECKED = ("SWdown", "LWdown", "Tair", "Qair", "VPD", "RH", "Psurf", "Wind", "Precip", "Wind_E", "Wind_N")
OUT_OF_RANGE_POLICIES = ("error", "missing")


#: observations a model is trained on or scored against; a value outside the variable's physically possible range
#: (an undeclared missing-value code such as -6999) is set missing by ``mask_impossible_observations``
OBSERVATIONS_CHECKED = ("Qh", "Qle", "Qg", "Rnet", "AvgSurfT", "LWup", "Ustar")


def outside_valid_range(var: str, values) -> np.ndarray:
    """Where the finite ``values`` of ``var`` (canonical units) leave its physically possible range
    (the schema's ``valid_range``)."""
    lo, hi = VARIABLES[var].valid_range
    v = np.asarray(values, dtype=float)
    return np.isfinite(v) & ((v < lo) | (v > hi))


def mask_impossible_observations(ds):
    """The observations (``OBSERVATIONS_CHECKED``) of a site dataset with every value outside its
    physically possible range set missing, so that it is never trained on or scored; each variable
    repaired gives a DataWarning and a line of ``attrs["repairs"]`` naming the column, how many, the
    extremes and where. Returns the (possibly new) dataset."""
    file = ds.attrs.get("source_file", "<dataset>")
    times = ds["time"].values
    out, repairs = ds, []
    for var in (v for v in OBSERVATIONS_CHECKED if v in ds and ds[v].dims == ("time",)):
        lo, hi = VARIABLES[var].valid_range
        v = np.asarray(ds[var].values, dtype=float)
        bad = outside_valid_range(var, v)
        if not bad.any():
            continue
        first = int(np.argmax(bad))
        repair = (f"{file}: column {ds[var].attrs.get('source_column', var)} ({var}): {int(bad.sum())} of "
                  f"{int(np.isfinite(v).sum())} observed values outside the physically possible range {lo:g}..{hi:g} "
                  f"{VARIABLES[var].units} (min {v[bad].min():.6g}, max {v[bad].max():.6g}), the first at "
                  f"{fmt_time(times[first])} (time step {first}): set missing, never scored")
        repairs.append(repair)
        warnings.warn(repair, DataWarning, stacklevel=3)
        out = ds.copy() if out is ds else out
        out[var] = out[var].where(~bad)
    return with_repairs(out, repairs)


def with_repairs(ds, repairs: list[str]):
    """``ds`` with ``repairs`` appended to ``attrs["repairs"]`` (one per line) and counted in
    ``attrs["n_repairs"]``."""
    if repairs:
        old = str(ds.attrs.get("repairs", ""))
        ds.attrs["repairs"] = "\n".join([r for r in old.splitlines() if r] + repairs)
        ds.attrs["n_repairs"] = int(ds.attrs.get("n_repairs", 0)) + len(repairs)
    return ds


def refuse_out_of_range(var: str, values: np.ndarray, where: str, locate) -> None:
    """A DataError when ``values`` of the forcing ``var`` (canonical units; time first, then cells)
    leave its physically possible range: how many, min and max, and where the first one is
    (``locate(index tuple)`` describes it). The gridded inputs' check: a grid's forcing has no gap
    filling, so there is no repair to offer (a site's: ``check_forcing_ranges``)."""
    spec = VARIABLES[var]
    lo, hi = spec.valid_range
    values = np.asarray(values, dtype=float)
    bad = outside_valid_range(var, values)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DataError(f"{where}: {var}: {int(bad.sum())} of {int(np.isfinite(values).sum())} values outside the "
                        f"physically possible range {lo:g}..{hi:g} {spec.units} (min {np.nanmin(values[bad]):.6g}, "
                        f"max {np.nanmax(values[bad]):.6g}), the first at {locate(first)} (a unit mix-up, or a "
                        "missing-value code the file does not declare as _FillValue?)")


def fitting_alt_unit(raw: np.ndarray, spec, min_fraction: float) -> str | None:
    """The first of ``spec.alt_units`` in which at least ``min_fraction`` of the ``raw`` values (as
    written in the file) convert into the valid range, or None."""
    lo, hi = spec.valid_range
    for label, (s, o) in spec.alt_units.items():
        if float(np.mean((raw * s + o >= lo) & (raw * s + o <= hi))) >= min_fraction:
            return label
    return None


def _unit_hint(values: np.ndarray, spec, source_units: str) -> str:
    """'; they look like K (mixed units?)' when the out-of-range ``values`` (canonical units) fall in
    the valid range read as one of ``spec.alt_units`` (only for columns in the FLUXNET unit)."""
    if source_units != spec.fluxnet_units or spec.scale == 0.0 or spec.name == "Precip":
        return ""
    label = fitting_alt_unit((values - spec.offset) / spec.scale, spec, 0.9)
    return "" if label is None else f"; they look like {label}, not {source_units} (units mixed within the column?)"


def check_forcing_ranges(ds, policy: str = "error"):
    """The forcing variables of a site dataset checked against their physically possible ranges.

    Any value outside is reported before training, naming the file, variable, source column, how
    many, the first rows and times, and (from the distribution) a likely unit mix-up. ``policy``
    ``"error"`` raises DataError; ``"missing"`` sets those values missing (gap-filled later, flagged,
    not scored), warns and lists the repair in ``attrs["repairs"]``. Returns the (possibly new)
    dataset.
    """
    if policy not in OUT_OF_RANGE_POLICIES:
        raise DataError(f"out-of-range policy {policy!r}; expected one of {list(OUT_OF_RANGE_POLICIES)}")
    file = ds.attrs.get("source_file", "<dataset>")
    times = ds["time"].values
    repairs = []
    out = ds
    for var in FORCING_CHECKED:
        if var not in ds or ds[var].dims != ("time",):
            continue
        spec = VARIABLES[var]
        lo, hi = spec.valid_range
        v = np.asarray(ds[var].values, dtype=float)
        bad = outside_valid_range(var, v)
        k = int(bad.sum())
        if k == 0:
            continue
        attrs = ds[var].attrs
        starts, lengths = runs_of_true(bad)
        shown = "; ".join(f"{fmt_time(times[s])}..{fmt_time(times[s + n - 1])} (time steps {s}..{s + n - 1})"
                          if n > 1 else f"{fmt_time(times[s])} (time step {s})" for s, n in zip(starts[:3], lengths[:3]))
        more = f"; and {len(starts) - 3} more run(s)" if len(starts) > 3 else ""
        column = attrs.get("source_column", var)
        msg = (f"{file}: column {column} ({var}): {k} of {int(np.isfinite(v).sum())} values outside the physically "
               f"possible range {lo:g}..{hi:g} {spec.units} (min {np.nanmin(v):.6g}, max {np.nanmax(v):.6g}) at "
               f"{shown}{more}{_unit_hint(v[bad], spec, str(attrs.get('source_units', '')))}")
        if policy == "error":
            raise DataError(msg + "; fix the file, or set data.forcing_out_of_range: missing to treat them as "
                            "missing (gap-filled, flagged and not scored)")
        repair = f"{msg}: set missing"
        repairs.append(repair)
        warnings.warn(repair, DataWarning, stacklevel=2)
        if out is ds:
            out = ds.copy()
        out[var] = out[var].where(~bad)
    return with_repairs(out, repairs)
