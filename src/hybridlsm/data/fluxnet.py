"""Reader for FLUXNET2015 / AmeriFlux-ONEFlux CSV files and the canonical half-hourly CSVs.

Handles

- half-hourly and hourly files (``HH``, ``HR``): ``TIMESTAMP_START``/``TIMESTAMP_END``
  (``YYYYMMDDHHMM``, local standard time), ``-9999`` missing, ``_F`` / ``_F_MDS`` / ``_ERA``
  columns, ``_QC`` flags (0 measured, 1-3 gap-filled), ``_CORR`` closure-corrected fluxes; this
  includes the canonical files of ``shared/data/fluxnet`` (README §1) and the ERA-Interim
  ``ERAI`` meteorology files (``TA_ERA``, ...);
- aggregated files for evaluation at coarse scale: ``DD`` (``TIMESTAMP`` = ``YYYYMMDD``), ``WW``
  (``TIMESTAMP_START``/``TIMESTAMP_END`` = first and last day, ``YYYYMMDD``), ``MM``
  (``TIMESTAMP`` = ``YYYYMM``) and ``YY`` (``YYYY``); their ``_QC`` columns are fractions of
  measured or good-quality gap-filled records and become ``<var>_qc_fraction``.

Columns are mapped and converted with :data:`hybridlsm.data.schema.VARIABLES`. Site metadata come
from a ``sites.csv`` table (shared/data README §2) looked up by ``FILE`` and then ``SITE_ID``.
"""

from __future__ import annotations

import csv
import io
import math
import numbers
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from .checks import (
    SITE_METADATA_RANGES,
    check_plausible,
    check_site_metadata,
    check_vpd_consistency,
    fmt_time,
    regularise_ordinal,
    regularise_time,
    where,
)
from .readers import Reader, register_reader
from .schema import (
    QC_FLAG_MEANINGS,
    QC_MISSING,
    SOIL_VARIABLES,
    TARGET_VARIABLES,
    VARIABLES,
    DataError,
    DataWarning,
)

__all__ = ["read_fluxnet_csv", "read_sites_table", "site_metadata", "parse_fluxnet_filename"]

MISSING = -9999.0
YEARS = (1850, 2140)
"""Plausible years of a timestamp: a typo (year 3000, 0001) is a DataError rather than a date that
datetime64[ns] cannot hold (it would wrap around silently) or a span beyond its 292 years."""
SECONDS = {"HH": 1800, "HR": 3600, "DD": 86400, "WW": 7 * 86400, "MM": 2629746, "YY": 31556952}
"""Nominal step of each FLUXNET resolution [s] (MM and YY: mean Gregorian month and year)."""

_FILENAME_PATTERNS = [
    re.compile(
        r"^FLX_(?P<site>[A-Za-z]{2}-[A-Za-z0-9]{3})_FLUXNET2015_(?P<product>[A-Z0-9]+)_"
        r"(?P<res>HH|HR|DD|WW|MM|YY)_"
    ),
    re.compile(
        r"^AMF_(?P<site>[A-Za-z]{2}-[A-Za-z0-9]{3})_FLUXNET_(?P<product>[A-Z0-9]+)_"
        r"(?P<res>HH|HR|DD|WW|MM|YY)_"
    ),
    re.compile(r"^(?P<site>[A-Za-z]{2}-[A-Za-z0-9]{3})_\d{6}-\d{6}_(?P<res>HH|HR)\.csv$"),
]

SITES_COLUMNS = (
    "SITE_ID", "SITE_NAME", "LAT", "LON", "ELEV_M", "IGBP", "CANOPY_HEIGHT_M",
    "MEASUREMENT_HEIGHT_M", "UTC_OFFSET_H", "FILE", "START", "END",
)

_NAN_TOKENS = ("", "nan", "na", "n/a", "null", "none")


def parse_fluxnet_filename(name: str) -> dict:
    """``{'site': 'US-Wi7', 'product': 'FULLSET', 'res': 'DD'}`` from a FLUXNET or canonical file name.

    Keys are absent when the name does not follow a known pattern (canonical files have
    ``product='canonical'``).
    """
    for i, pat in enumerate(_FILENAME_PATTERNS):
        m = pat.match(name)
        if m:
            out = m.groupdict()
            if i == 2:
                out["product"] = "canonical"
            return out
    return {}


# --------------------------------------------------------------------------------------------
# sites.csv


def read_sites_table(path: str | Path) -> pd.DataFrame:
    """Read a ``sites.csv`` metadata table (shared/data README §2), checking its columns."""
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the site table: {exc}") from exc
    missing = [c for c in SITES_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: site table lacks column(s) {missing}; expected {list(SITES_COLUMNS)}")
    return df


def _float(text: str, *, file, column, row) -> float:
    text = text.strip()
    if text == "":
        return float("nan")
    try:
        return float(text)
    except ValueError:
        raise DataError(f"{file}: column {column}, row {row}: {text!r} is not a number") from None


#: site metadata field -> its sites.csv column
_TABLE_COLUMNS = (("latitude", "LAT"), ("longitude", "LON"), ("elevation", "ELEV_M"), ("canopy_height", "CANOPY_HEIGHT_M"),
                  ("measurement_height", "MEASUREMENT_HEIGHT_M"), ("utc_offset_h", "UTC_OFFSET_H"))


def site_metadata(
    sites: str | Path | pd.DataFrame, *, file: str | None = None, site_id: str | None = None
) -> dict:
    """Metadata attrs of one site from a ``sites.csv`` table, by ``FILE`` first, then ``SITE_ID``.

    Returns ``site_id, site_name, latitude, longitude, elevation, igbp, canopy_height,
    measurement_height, utc_offset_h`` (NaN where the table cell is empty) and, when matched by
    file name, ``expected_start``/``expected_end``. An unknown site id raises DataError naming it
    and the known ids.
    """
    table_name = str(sites) if not isinstance(sites, pd.DataFrame) else "site table"
    df = sites if isinstance(sites, pd.DataFrame) else read_sites_table(sites)
    row = None
    by_file = False
    if file is not None:
        hit = df[df["FILE"] == file]
        if len(hit) > 1:
            raise DataError(f"{table_name}: file {file} is listed on rows {[int(i) + 2 for i in hit.index]}; "
                            "expected one row per file")
        if len(hit):
            row, by_file = hit.iloc[0], True
            if site_id is not None and row["SITE_ID"] != site_id:
                raise DataError(
                    f"{table_name}: file {file} belongs to site {row['SITE_ID']!r}, not to the "
                    f"requested site id {site_id!r}"
                )
    if row is None:
        if site_id is None:
            raise DataError(
                f"{table_name}: file {file!r} is not listed in column FILE and no site id was given; "
                f"known files: {sorted(df['FILE'])}"
            )
        hit = df[df["SITE_ID"] == site_id]
        if not len(hit):
            raise DataError(
                f"{table_name}: unknown site id {site_id!r}"
                + (f" (for file {file})" if file else "")
                + f"; known site ids: {sorted(set(df['SITE_ID']))}"
            )
        # one site, several files (DE-Tha 2010 and 2014): its rows must agree on what they say of the site
        numbers = {c: [_float(v, file=table_name, column=c, row=int(i) + 2) for i, v in hit[c].items()]
                   for _, c in _TABLE_COLUMNS}  # as numbers: 26.5 and 26.50 agree
        differ = [c for c, v in numbers.items() if not np.allclose(v, v[0], rtol=0.0, atol=1e-9, equal_nan=True)]
        differ += ["IGBP"] if hit["IGBP"].str.strip().nunique() > 1 else []
        if differ:
            raise DataError(f"{table_name}: site {site_id} is on rows {[int(i) + 2 for i in hit.index]}, which differ in "
                            f"{', '.join(differ)}; expected one description of the site (or list the file in FILE)")
        row = hit.iloc[0]
    r = int(row.name) + 2  # line in the table
    num = {key: _float(row[col], file=table_name, column=col, row=r) for key, col in _TABLE_COLUMNS}
    for key, col in _TABLE_COLUMNS:
        low, high, unit = SITE_METADATA_RANGES[key]
        if np.isfinite(num[key]) and not low <= num[key] <= high:
            raise DataError(f"{table_name}: column {col}, row {r}: {num[key]:g} is outside {low:g}..{high:g} {unit}")
    meta = {"site_id": row["SITE_ID"], "site_name": row["SITE_NAME"], "igbp": row["IGBP"], **num}
    if by_file:
        meta["expected_start"] = row["START"].strip()
        meta["expected_end"] = row["END"].strip()
    return meta


# --------------------------------------------------------------------------------------------
# CSV parsing


def _read_lines(
    path: Path, *, comment_prefix: str | None = None, final_newline_expected: bool = True
) -> tuple[list[str], list[str], np.ndarray, list[str]]:
    """Header fields, data lines, their 1-based line numbers and the leading comment lines, after
    structural checks.

    ``comment_prefix``: lines before the header that start with it are comments (AmeriFlux BASE
    ``# Site: ...``); they are returned without the prefix. ``final_newline_expected=False`` for
    formats distributed without a final newline (a cut inside the last line is still caught by
    the field count).
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read file: {exc}") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: byte {exc.start} is not UTF-8 text; expected a comma-separated FLUXNET file"
        ) from None
    if not text.strip():
        raise DataError(f"{path}: empty file; expected a header line and data rows")
    text = text.replace("\r\n", "\n")
    if "\r" in text and "\n" not in text.strip():
        raise DataError(f"{path}: lines end in a bare carriage return (old Mac line endings), so the whole file "
                        "reads as one header line; convert it to LF or CRLF line endings (e.g. tr '\\r' '\\n')")
    lines = text.split("\n")
    final_newline = lines[-1] == ""
    if final_newline:
        lines = lines[:-1]
    comments = []
    if comment_prefix:
        while lines and lines[0].startswith(comment_prefix):
            comments.append(lines.pop(0)[len(comment_prefix):].strip())
        if not lines:
            raise DataError(f"{path}: only comment lines ({comment_prefix!r}); expected a header line")
    k = len(comments)  # the header is line k + 1
    header = [h.strip() for h in lines[0].split(",")]
    if any(h == "" for h in header):
        raise DataError(f"{path}: line {k + 1} (header) has an empty column name: {lines[0][:200]!r}")
    dups = sorted({h for h in header if header.count(h) > 1})
    if dups:
        raise DataError(f"{path}: line {k + 1} (header): duplicated column name(s) {dups}")
    body = lines[1:]
    numbers = np.arange(k + 2, len(body) + k + 2)
    blank = np.array([not ln.strip() for ln in body], dtype=bool)
    if blank.any():
        warnings.warn(
            f"{path}: {int(blank.sum())} blank line(s) ignored (first: line {int(numbers[blank][0])})",
            DataWarning,
            stacklevel=3,
        )
        body = [ln for ln, b in zip(body, blank) if not b]
        numbers = numbers[~blank]
    if not body:
        raise DataError(f"{path}: no data rows after the header")
    n_fields = np.fromiter((ln.count(",") + 1 for ln in body), dtype=np.int64, count=len(body))
    bad = np.nonzero(n_fields != len(header))[0]
    if bad.size:
        i = int(bad[0])
        trunc = " (the file looks truncated)" if i == len(body) - 1 and not final_newline else ""
        raise DataError(
            f"{path}: line {int(numbers[i])} has {int(n_fields[i])} fields, expected {len(header)} "
            f"as in the header{trunc}; {bad.size} malformed line(s) in all"
        )
    if not final_newline and final_newline_expected:
        warnings.warn(
            f"{path}: the file does not end with a newline; its last line ({int(numbers[-1])}) may be "
            f"truncated",
            DataWarning,
            stacklevel=3,
        )
    return header, body, numbers, comments


def _parse_table(header: list[str], body: list[str], *, file: str, text_columns) -> pd.DataFrame:
    """The data lines as a DataFrame (all cells read as given; ``text_columns`` kept as strings)."""
    text = ",".join(header) + "\n" + "\n".join(body) + "\n"
    try:
        df = pd.read_csv(
            io.StringIO(text),
            dtype={c: str for c in text_columns},
            na_filter=False,
            quoting=csv.QUOTE_NONE,
            engine="c",
            low_memory=False,
        )
    except (pd.errors.ParserError, ValueError) as exc:
        raise DataError(f"{file}: cannot parse as CSV: {exc}") from exc
    if len(df) != len(body):  # pragma: no cover - guarded by the field-count check
        raise DataError(f"{file}: parsed {len(df)} rows from {len(body)} data lines")
    return df


def _numeric_column(df: pd.DataFrame, col: str, *, file: str, lines: np.ndarray) -> np.ndarray:
    """Float values of ``col`` with -9999 -> NaN; text cells raise DataError, NaN/empty cells warn."""
    s = df[col]
    # not bool: pandas parses a column of only TRUE/FALSE as bool, which would read as 1/0
    if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        a = s.to_numpy(dtype=float, copy=True)
        nan_cells = np.isnan(a)
    else:
        st = s.map({True: "TRUE", False: "FALSE"}) if pd.api.types.is_bool_dtype(s.dtype) else s.astype(str).str.strip()
        a = pd.to_numeric(st, errors="coerce").to_numpy(dtype=float, copy=True)
        tokens = st.str.lower().isin(_NAN_TOKENS).to_numpy()
        bad = np.isnan(a) & ~tokens
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(
                f"{file}: column {col}: non-numeric value {st.iloc[i]!r} at line {int(lines[i])}; "
                f"expected a number, -9999 for missing ({int(bad.sum())} such cell(s))"
            )
        nan_cells = np.isnan(a)
    if nan_cells.any():
        i = int(np.argmax(nan_cells))
        warnings.warn(
            f"{file}: column {col}: {int(nan_cells.sum())} empty or NaN cell(s) read as missing "
            f"(first at line {int(lines[i])}); the FLUXNET missing code is -9999",
            DataWarning,
            stacklevel=3,
        )
    inf = np.isinf(a)
    if inf.any():
        i = int(np.argmax(inf))
        raise DataError(
            f"{file}: column {col}: infinite value at line {int(lines[i])}; expected a finite number "
            f"or -9999"
        )
    a[a == MISSING] = np.nan
    return a


def _check_converted(values: np.ndarray, raw: np.ndarray, *, file: str, column: str, units: str, lines) -> None:
    """DataError naming the line where a finite ``raw`` value is not finite after the unit
    conversion (an overflow, e.g. 1.8e308 kPa -> Pa)."""
    bad = np.isfinite(raw) & ~np.isfinite(values)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(
            f"{file}: column {column}: value {raw[i]:g} at line {int(lines[i])} overflows when converted "
            f"to {units}; expected a plausible finite number or -9999"
        )


def _timestamp_strings(df, col, *, file, lines, lengths: tuple[int, ...]) -> np.ndarray:
    """The stripped timestamp strings of ``col`` (numpy unicode), all digits of one allowed length."""
    st = np.char.strip(df[col].to_numpy(dtype=str))
    n = len(st[0])
    if n not in lengths:
        raise DataError(
            f"{file}: column {col}: {str(st[0])!r} at line {int(lines[0])} has {n} digits; expected "
            f"one of {sorted(lengths)} (YYYYMMDDHHMM, YYYYMMDD, YYYYMM or YYYY)"
        )
    ok = np.char.isdigit(st) & (np.char.str_len(st) == n)
    if not ok.all():
        i = int(np.argmin(ok))
        raise DataError(
            f"{file}: column {col}: {str(st[i])!r} at line {int(lines[i])} is not a {n}-digit "
            f"timestamp like {str(st[0])!r}"
        )
    return st


def _parse_dt(st: np.ndarray, fmt: str, *, file, col, lines) -> pd.DatetimeIndex:
    """Digit timestamps (already checked to be all digits of one length) -> datetime64[ns].

    Integer arithmetic instead of strptime (about 30x faster); impossible dates (month 13,
    31 April, hour 24, ...) and years outside :data:`YEARS` raise DataError naming the line.
    """
    a = st.astype(np.int64)
    n = {"%Y%m%d%H%M": 12, "%Y%m%d": 8, "%Y%m": 6, "%Y": 4}[fmt]
    a = a * 10 ** (12 - n)  # pad to YYYYMMDDHHMM
    year, month, day = a // 10**8, a // 10**6 % 100, a // 10**4 % 100
    hour, minute = a // 100 % 100, a % 100
    if n <= 6:
        day = np.ones_like(day)
    if n == 4:
        month = np.ones_like(month)
    odd = (year < YEARS[0]) | (year > YEARS[1])
    if odd.any():
        i = int(np.argmax(odd))
        raise DataError(
            f"{file}: column {col}: {str(st[i])!r} at line {int(lines[i])}: year {int(year[i])} is outside "
            f"{YEARS[0]}..{YEARS[1]}; expected a timestamp of flux data (format {fmt})"
        )
    bad = (month < 1) | (month > 12) | (day < 1) | (day > 31) | (hour > 23) | (minute > 59)
    months = (year - 1970) * 12 + np.clip(month, 1, 12) - 1
    first = months.astype("datetime64[M]").astype("datetime64[D]")
    date = first + (np.clip(day, 1, 31) - 1).astype("timedelta64[D]")
    bad |= date.astype("datetime64[M]") != first.astype("datetime64[M]")  # e.g. 31 April
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(
            f"{file}: column {col}: {str(st[i])!r} at line {int(lines[i])} is not a valid date "
            f"(format {fmt})"
        )
    t = (date.astype("datetime64[ns]") + (hour * 60 + minute).astype("timedelta64[m]")).astype("datetime64[ns]")
    return pd.DatetimeIndex(t)


def _time_axis(df, header, res_hint, *, file, lines):
    """Return (time [full axis], time_end or None, positions, resolution, step_s)."""
    if "TIMESTAMP_START" in header:
        if "TIMESTAMP_END" not in header:
            raise DataError(
                f"{file}: missing required column TIMESTAMP_END (found TIMESTAMP_START); expected "
                f"both, as in FLUXNET2015"
            )
        s0 = _timestamp_strings(df, "TIMESTAMP_START", file=file, lines=lines, lengths=(12, 8))
        s1 = _timestamp_strings(df, "TIMESTAMP_END", file=file, lines=lines, lengths=(12, 8))
        if len(s0[0]) != len(s1[0]):
            raise DataError(
                f"{file}: TIMESTAMP_START {str(s0[0])!r} and TIMESTAMP_END {str(s1[0])!r} at line "
                f"{int(lines[0])} have different formats"
            )
        if len(s0[0]) == 12:
            start = _parse_dt(s0, "%Y%m%d%H%M", file=file, col="TIMESTAMP_START", lines=lines)
            end = _parse_dt(s1, "%Y%m%d%H%M", file=file, col="TIMESTAMP_END", lines=lines)
            dt = (end - start).to_numpy()
            step = pd.Timedelta(dt[0])
            if step <= pd.Timedelta(0) or pd.Timedelta(days=1) % step != pd.Timedelta(0):
                raise DataError(
                    f"{file}: TIMESTAMP_END - TIMESTAMP_START = {step} at line {int(lines[0])}; "
                    f"expected a positive step that divides a day (30 min for HH, 60 min for HR)"
                )
            bad = np.nonzero(dt != dt[0])[0]
            if bad.size:
                i = int(bad[0])
                raise DataError(
                    f"{file}: TIMESTAMP_END - TIMESTAMP_START = {pd.Timedelta(dt[i])} at "
                    f"{where(i, start, lines)}; expected {step} as in the first row"
                )
            res = {1800: "HH", 3600: "HR"}.get(int(step.total_seconds()))
            if res_hint in ("HH", "HR") and res != res_hint:
                raise DataError(
                    f"{file}: the file name says {res_hint} but the time step is {step}; expected "
                    f"{'30 min' if res_hint == 'HH' else '60 min'}"
                )
            if res_hint in ("DD", "WW", "MM", "YY"):
                raise DataError(
                    f"{file}: the file name says {res_hint} but the timestamps are sub-daily "
                    f"(YYYYMMDDHHMM)"
                )
            full, pos = regularise_time(start, step, file=file, column="TIMESTAMP_START", lines=lines)
            return full, None, pos, res or f"{int(step.total_seconds() // 60)}min", step.total_seconds()
        # 8 digits with START/END: weekly (or daily written with START/END)
        start = _parse_dt(s0, "%Y%m%d", file=file, col="TIMESTAMP_START", lines=lines)
        last = _parse_dt(s1, "%Y%m%d", file=file, col="TIMESTAMP_END", lines=lines)
        end = last + pd.Timedelta(days=1)
        if (end <= start).any():
            i = int(np.argmax((end <= start).to_numpy()))
            raise DataError(f"{file}: TIMESTAMP_END before TIMESTAMP_START at line {int(lines[i])}")
        length = (end - start).days.to_numpy()
        res = "DD" if np.all(length == 1) else "WW"
        if res_hint and res_hint != res:
            raise DataError(
                f"{file}: the file name says {res_hint} but the periods are {int(length[0])} day(s) long"
            )
        if res == "DD":
            full, pos = regularise_time(start, pd.Timedelta(days=1), file=file,
                                        column="TIMESTAMP_START", lines=lines)
            return full, full + pd.Timedelta(days=1), pos, res, float(SECONDS[res])
        t = start.to_numpy()
        if len(t) > 1:
            nxt = t[1:] != end.to_numpy()[:-1]
            if nxt.any():
                i = int(np.argmax(nxt)) + 1
                raise DataError(
                    f"{file}: TIMESTAMP_START {fmt_time(t[i])[:10]} at line {int(lines[i])} does not "
                    f"follow the previous week, which ends {fmt_time(last[i - 1])[:10]}; expected "
                    f"consecutive weeks without gaps or repeats"
                )
        return pd.DatetimeIndex(t), pd.DatetimeIndex(end), np.arange(len(t)), res, float(SECONDS[res])
    if "TIMESTAMP" in header:
        st = _timestamp_strings(df, "TIMESTAMP", file=file, lines=lines, lengths=(8, 6, 4))
        n = len(st[0])
        res = {8: "DD", 6: "MM", 4: "YY"}[n]
        if res_hint and res_hint != res:
            raise DataError(
                f"{file}: the file name says {res_hint} but TIMESTAMP {str(st[0])!r} at line "
                f"{int(lines[0])} is {res} ({n} digits)"
            )
        if res == "DD":
            t = _parse_dt(st, "%Y%m%d", file=file, col="TIMESTAMP", lines=lines)
            full, pos = regularise_time(t, pd.Timedelta(days=1), file=file, column="TIMESTAMP", lines=lines)
            return full, full + pd.Timedelta(days=1), pos, res, float(SECONDS[res])
        fmt = "%Y%m" if res == "MM" else "%Y"
        t = _parse_dt(st, fmt, file=file, col="TIMESTAMP", lines=lines)
        freq = "M" if res == "MM" else "Y"
        per = t.to_period(freq)
        ordinals = per.asi8
        p0 = per[0]
        pos = regularise_ordinal(ordinals, lambda k: str(p0 + int(k)), file=file, column="TIMESTAMP",
                                 lines=lines, step="1 month" if res == "MM" else "1 year")
        full_per = pd.period_range(p0, periods=int(pos[-1]) + 1, freq=freq)
        full = full_per.to_timestamp(how="start").astype("datetime64[ns]")
        end = (full_per + 1).to_timestamp(how="start").astype("datetime64[ns]")
        return full, end, pos, res, float(SECONDS[res])
    raise DataError(
        f"{file}: missing required column TIMESTAMP_START (with TIMESTAMP_END), or TIMESTAMP for "
        f"DD/MM/YY files; header starts {header[:5]}"
    )


def read_fluxnet_csv(
    path: str | Path,
    *,
    site_id: str | None = None,
    sites: str | Path | pd.DataFrame | None = None,
    metadata: dict | None = None,
    depths: dict | None = None,
) -> xr.Dataset:
    """Read a FLUXNET2015-style CSV (HH/HR/DD/WW/MM/YY, official or canonical) into the canonical form.

    Parameters
    ----------
    path: the CSV file.
    site_id: the site; default from the file name (``FLX_<site>_...``, ``AMF_<site>_...``,
        ``<site>_<YYYYMM>-<YYYYMM>_HH.csv``).
    sites: a ``sites.csv`` table (path or DataFrame); default ``sites.csv`` beside the file when
        it exists. The row is found by ``FILE`` (the file name), then by ``SITE_ID``; an unknown
        site id is a DataError.
    metadata: attrs that override or complete the table (e.g. ``{"latitude": 46.65}``).
    depths: measurement depth [m] of the file's soil variables, e.g. ``{"SoilTemp": 0.05}``
        (:func:`set_soil_depths`); not stated in the files, so NaN when not given.

    Returns the canonical dataset (docs/architecture.md §1). Aggregated files also carry
    ``time_end`` (exclusive end of each period) and ``<var>_qc_fraction``.
    """
    path = Path(path)
    file = str(path)
    info = parse_fluxnet_filename(path.name)
    header, body, lines, _ = _read_lines(path)
    ts_cols = [c for c in ("TIMESTAMP_START", "TIMESTAMP_END", "TIMESTAMP") if c in header]
    df = _parse_table(header, body, file=file, text_columns=ts_cols)

    time, time_end, pos, res, step_s = _time_axis(df, header, info.get("res"), file=file, lines=lines)
    n = len(time)
    aggregated = res in ("DD", "WW", "MM", "YY")

    used: set[str] = set(ts_cols)
    data_vars: dict[str, xr.DataArray] = {}
    raw_cols: dict[str, np.ndarray] = {}
    unflagged: list[tuple[str, str]] = []  # (variable, column) read without a QC column
    for var, spec in VARIABLES.items():
        col = next((c for c in spec.fluxnet_columns if c in header), None)
        if col is None:
            continue
        alternatives = [c for c in spec.fluxnet_columns if c in header and c != col]
        used.add(col)
        raw = _numeric_column(df, col, file=file, lines=lines)
        raw_cols[col] = raw
        if var == "Precip":
            values = raw / (86400.0 if aggregated else step_s)
            declared = "mm d-1" if aggregated else f"mm per {int(step_s // 60)} min"
        else:
            with np.errstate(over="ignore"):  # an overflow is reported by _check_converted
                values = spec.to_canonical(raw)
            declared = spec.fluxnet_units
        _check_converted(values, raw, file=file, column=col, units=spec.units, lines=lines)
        check_plausible(values, var, file=file, column=col, declared_units=declared, raw=raw,
                        times=time[pos], lines=lines, stacklevel=3)
        full = np.full(n, np.nan)
        full[pos] = values
        attrs = {
            "units": spec.units,
            "long_name": spec.long_name,
            "source_column": col,
            "source_units": declared,
            "conversion": spec.conversion,
        }
        if col.endswith("_ERA"):
            attrs["note"] = "ERA-Interim reanalysis downscaled to the site (FLUXNET2015), not tower data"
        if alternatives:
            attrs["alternative_columns"] = ", ".join(alternatives)
        data_vars[var] = xr.DataArray(full, dims="time", attrs=attrs)

        qc_col = f"{col}_QC"
        if qc_col in header:
            used.add(qc_col)
            q = _numeric_column(df, qc_col, file=file, lines=lines)
            data_vars.update(_qc_variable(var, q, raw, pos, n, aggregated, file=file, column=qc_col,
                                          times=time[pos], lines=lines))
        else:
            unflagged.append((var, col))

    # a QC column of no column in the file, e.g. H_QC for H_F_MDS_QC: a misnamed flag, so the
    # gap-filled values of its variable would count as measured
    orphans = [c for c in header if c not in used and c.upper().endswith("_QC") and c[:-3] not in header]
    if orphans:
        stems = {c.split("_")[0] for c in orphans}
        hit = [f"{v} (from {c})" for v, c in unflagged if c.split("_")[0] in stems]
        warnings.warn(f"{file}: column(s) {', '.join(orphans)} look like QC flags of no column in the file and are "
                      "not read (the flag of a column C is read from C_QC)"
                      + (f"; {', '.join(hit)} therefore have no QC flag, so every value counts as measured" if hit
                         else ""), DataWarning, stacklevel=2)
    if not data_vars:
        raise DataError(
            f"{file}: no recognised variable column; expected FLUXNET2015 columns such as "
            f"{', '.join(v.fluxnet_columns[0] for v in VARIABLES.values() if v.fluxnet_columns)}"
        )
    _check_empty_columns(data_vars, file=file)
    set_soil_depths(data_vars, depths, file=file)
    if not aggregated and {"TA_F", "RH", "VPD_F"} <= raw_cols.keys():
        check_vpd_consistency(raw_cols["TA_F"], raw_cols["RH"], raw_cols["VPD_F"], file=file,
                              column="VPD_F")

    attrs = _site_attrs(path, info, site_id=site_id, sites=sites, metadata=metadata)
    if "expected_start" in attrs:
        _check_expected_period(attrs, time, time_end, step_s, file)
    attrs.update(
        time_step_s=float(step_s),
        time_resolution=res,
        source_file=file,
        source_format=f"fluxnet-csv-{res}",
        source_product=info.get("product", "unknown"),
        unmapped_columns=", ".join(c for c in header if c not in used),
        time_convention="start of the averaging interval, local standard time",
    )
    if res in ("WW", "MM", "YY"):
        attrs["time_step_note"] = (
            f"{res} periods differ in length; time_step_s is nominal, time_end gives each period's end"
        )
    coords = {"time": ("time", np.asarray(time, dtype="datetime64[ns]"))}
    if time_end is not None:
        coords["time_end"] = ("time", np.asarray(time_end, dtype="datetime64[ns]"))
    ds = xr.Dataset(data_vars, coords=coords, attrs=attrs)
    ds.time.attrs["long_name"] = "start of the averaging interval (local standard time)"
    return ds


def _qc_variable(var, q, raw, pos, n, aggregated, *, file, column, times, lines) -> dict:
    present = np.isfinite(raw)
    if aggregated:
        bad = np.isfinite(q) & ((q < 0) | (q > 1))
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(
                f"{file}: column {column}: value {q[i]:g} at {where(i, times, lines)}; expected a "
                f"fraction 0..1 (DD/WW/MM/YY quality flags are fractions of good records)"
            )
        full = np.full(n, np.nan)
        full[pos] = np.where(present, q, np.nan)
        return {
            f"{var}_qc_fraction": xr.DataArray(
                full, dims="time",
                attrs={"units": "1", "long_name": f"fraction of measured or good-quality gap-filled "
                       f"records in the period ({var})", "source_column": column},
            )
        }
    fin = np.isfinite(q)
    bad = fin & ~np.isin(q, (0.0, 1.0, 2.0, 3.0))
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(
            f"{file}: column {column}: value {q[i]:g} at {where(i, times, lines)}; expected a "
            f"FLUXNET quality flag 0, 1, 2 or 3 (or -9999)"
        )
    lost = present & ~fin
    if lost.any():
        i = int(np.argmax(lost))
        warnings.warn(
            f"{file}: column {column}: {int(lost.sum())} value(s) of {var} have no quality flag "
            f"(first at {where(i, times, lines)}); flagged -1 (unusable for QC-filtered use)",
            DataWarning,
            stacklevel=3,
        )
    flag = np.where(present & fin, q, QC_MISSING)
    full = np.full(n, QC_MISSING, dtype=np.int8)
    full[pos] = flag.astype(np.int8)
    return {
        f"{var}_qc": xr.DataArray(
            full, dims="time",
            attrs={"long_name": f"{var} quality flag", "flag_meanings": QC_FLAG_MEANINGS,
                   "source_column": column},
        )
    }


def _check_empty_columns(data_vars: dict, *, file: str) -> None:
    empty = [v for v, da in data_vars.items() if not _is_flag(v) and not np.isfinite(da.values).any()]
    targets = [v for v in TARGET_VARIABLES if v in data_vars]
    if targets and all(v in empty for v in targets):
        cols = ", ".join(data_vars[v].attrs["source_column"] for v in targets)
        raise DataError(
            f"{file}: no valid target values: column(s) {cols} ({', '.join(targets)}) hold only "
            f"missing values (-9999) in all {data_vars[targets[0]].size} rows; expected at least one "
            f"valid value"
        )
    for v in empty:
        warnings.warn(
            f"{file}: column {data_vars[v].attrs['source_column']} ({v}) holds only missing values "
            f"(-9999); kept as an all-NaN variable",
            DataWarning,
            stacklevel=3,
        )


def set_soil_depths(data_vars: dict, depths: dict | None, *, file: str) -> None:
    """Set ``attrs["depth_m"]`` of each soil variable in ``data_vars`` from the reader option
    ``depths`` (``{variable: metres}``; NaN for a variable not given). DataError naming the file and
    the option for a name that is not a soil variable of the file or a depth that is not a positive
    number of metres up to 2 m (the readers take the shallowest layer; a depth in cm is caught)."""
    present = [v for v in SOIL_VARIABLES if v in data_vars]
    depths = {} if depths is None else depths
    if not isinstance(depths, dict):
        raise DataError(
            f"{file}: option depths: expected a mapping {{variable: depth in m}} of the file's soil "
            f"variables ({', '.join(present) or 'none'}), got {depths!r}"
        )
    for var, depth in depths.items():
        if var not in present:
            raise DataError(
                f"{file}: option depths: {var!r} is not a soil variable of this file; its soil "
                f"variables: {', '.join(present) or 'none'}"
            )
        ok = isinstance(depth, numbers.Real) and not isinstance(depth, bool) and math.isfinite(depth)
        if not (ok and 0.0 < depth <= 2.0):
            raise DataError(
                f"{file}: option depths: {var} depth {depth!r} is not a positive number of metres "
                f"(0 < depth <= 2, e.g. 0.05 for 5 cm)"
            )
    for var in present:
        data_vars[var].attrs["depth_m"] = float(depths.get(var, np.nan))


def _is_flag(name: str) -> bool:
    return name.endswith(("_qc", "_qc_fraction"))


def sites_table_for(path: Path, sites=None):
    """The site table to use for ``path``: ``sites`` if given, else ``sites.csv`` beside the file,
    else None."""
    if sites is None and (path.parent / "sites.csv").is_file():
        return path.parent / "sites.csv"
    return sites


def _site_attrs(path: Path, info: dict, *, site_id, sites, metadata) -> dict:
    """Site attrs from the site table (``sites`` or ``sites.csv`` beside the file) and ``metadata``;
    missing fields are reported (:func:`~hybridlsm.data.checks.check_site_metadata`)."""
    attrs = {
        "site_id": site_id or info.get("site") or "",
        "site_name": "",
        "latitude": np.nan,
        "longitude": np.nan,
        "elevation": np.nan,
        "igbp": "",
        "canopy_height": np.nan,
        "measurement_height": np.nan,
        "utc_offset_h": np.nan,
    }
    table = sites_table_for(path, sites)
    if table is not None:
        attrs.update(site_metadata(table, file=path.name, site_id=site_id or info.get("site")))
    apply_metadata(attrs, metadata, str(path))
    if not attrs["site_id"]:
        attrs["site_id"] = path.stem
        warnings.warn(
            f"{path}: site id not given, not in a sites.csv and not in the file name; using "
            f"{path.stem!r}",
            DataWarning,
            stacklevel=3,
        )
    check_site_metadata(attrs, file=str(path), stacklevel=4)
    return attrs


def apply_metadata(attrs: dict, metadata: dict | None, file: str) -> None:
    """Site attrs ``metadata`` overrides or completes (in place), each checked the same way for
    every reader: ``irrigated`` becomes a fraction (:func:`irrigated_fraction`)."""
    attrs.update(metadata or {})
    if "irrigated" in attrs:
        attrs["irrigated"] = irrigated_fraction(attrs["irrigated"], f"{file}: metadata irrigated")


def irrigated_fraction(value, where: str) -> float:
    """The irrigated fraction of a site from metadata: true/false/yes/no or a number in [0, 1]."""
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "false", "no"):
        return float(value.strip().lower() in ("true", "yes"))
    try:
        out = float(value)
    except (TypeError, ValueError):
        out = np.nan
    if not 0.0 <= out <= 1.0:
        raise DataError(f"{where}: {value!r}; expected true/false or a fraction from 0 (rain-fed) to 1 (irrigated)")
    return out


def _check_expected_period(attrs, time, time_end, step_s, file) -> None:
    start = attrs.pop("expected_start")
    end = attrs.pop("expected_end")
    first = pd.Timestamp(time[0]).strftime("%Y%m%d%H%M")
    last_end = pd.Timestamp(time[-1] + pd.Timedelta(seconds=step_s)).strftime("%Y%m%d%H%M")
    if (start and start != first) or (end and end != last_end):
        warnings.warn(
            f"{file}: the site table gives START {start}, END {end} for this file, but the file "
            f"runs from {first} to {last_end}",
            DataWarning,
            stacklevel=3,
        )


@register_reader
class FluxnetCsvReader(Reader):
    """FLUXNET2015 / AmeriFlux-ONEFlux CSV files and the canonical half-hourly CSVs (any ``.csv``)."""

    name = "fluxnet-csv"
    description = "FLUXNET2015/ONEFlux or canonical CSV, .csv"
    priority = 20
    options = {
        "site_id": "the site (default from the file name)",
        "sites": "sites.csv table, path or DataFrame (default: sites.csv beside the file)",
        "metadata": "attrs that override or complete the site table",
        "depths": "measurement depth [m] of the soil variables, e.g. {SoilTemp: 0.05} (default NaN)",
    }

    def detect(self, path: Path) -> bool:
        return path.suffix.lower() == ".csv"

    def read(self, path: Path, **options) -> xr.Dataset:
        return read_fluxnet_csv(path, **options)
