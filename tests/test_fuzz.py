"""Fuzzing (issue 11, "trust"): every reader and the config loader, fed mutated inputs.

Property of the readers (through :func:`hybridlsm.data.read_site`): for any mutation of a valid
file, the read either

- returns a dataset in which every data row of the file is a time step (a step count that differs
  from the file's is warned about with a DataWarning), every value present in a mapped column is
  present in the output and equal to the converted input (or a DataWarning names the column),
  every column or variable of the file is accounted for (used, an alternative, a QC flag, or listed
  in ``unmapped_columns`` / ``unmapped_variables``), no value is infinite and every value outside
  the plausible range is warned about naming its column; or
- raises :class:`DataError` naming the file and the column, line, variable, dimension or key at
  fault.

Any other exception (KeyError, IndexError, a pandas ParserError, TypeError, UnicodeDecodeError,
OverflowError, an xarray or netCDF error, ...) fails the test. Mutations: truncation at a random
byte, deleted / shuffled / renamed columns, text and extreme values (1e30, -1e30, inf, nan) in
cells, unit mistakes (x 1000, + 273.15), shifted, duplicated and deleted rows, empty files, header
only, binary garbage; for netCDF files also swapped, renamed, dropped and extra dimensions, wrong or
absent ``units`` attributes, text variables and wrong time encodings. The config loader either
returns a RunConfig or raises :class:`ConfigError` naming the file and the key or line.

Inputs are small slices of the real files of ../shared/data read at test time (the tests skip with
a reason when it is absent) and written to temporary directories. Each defect the fuzzing found
has a deterministic regression test at the end of the file. ``HYBRIDLSM_FUZZ_SCALE=20`` multiplies
the number of examples (for a longer search than the test suite's).
"""

from __future__ import annotations

import copy
import os
import re
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hybridlsm.config import ConfigError, RunConfig, load_config
from hybridlsm.data import VARIABLES, DataError, DataWarning, read_site
from hybridlsm.data.gridded import GRIDDED_VARIABLES
from hybridlsm.data.plumber2 import open_netcdf
from hybridlsm.models.registry import load_run_config

_SCALE = float(os.environ.get("HYBRIDLSM_FUZZ_SCALE", "1"))


def fuzz_settings(n: int):
    return settings(max_examples=max(1, int(n * _SCALE)), deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


_LOCATES = re.compile(
    r"\b(lines?|columns?|rows?|variables?|dimensions?|dims|time|byte|header|keys?|option|attributes?|"
    r"attrs|units|flag|index)\b|empty file|cannot open as netCDF|is a directory",
    re.IGNORECASE,
)


def assert_clear(msg: str, names) -> None:
    """A DataError message names one of the files ``names`` and a column/line/variable/key."""
    assert any(n in msg for n in names), f"the DataError does not name the file {names}: {msg}"
    assert _LOCATES.search(msg), f"the DataError names no column, line, variable or key: {msg}"


def read_outcome(path: Path, names=None, **options):
    """``(dataset, DataWarning messages)`` or ``(None, DataError message)`` of ``read_site``; any
    other exception propagates and fails the test."""
    names = names or (path.name,)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = read_site(path, **options)
            ds = ds.load()
        except DataError as exc:
            msg = str(exc)
            assert_clear(msg, names)
            event(f"DataError: {re.sub(r'[0-9]+', 'N', msg.split(': ', 1)[-1])[:50]}")
            return None, msg
    event("read")
    return ds, [str(w.message) for w in caught if issubclass(w.category, DataWarning)]


def warned(messages, *names) -> bool:
    return any(n and n in m for m in messages for n in names)


def check_flagged(ds, messages, column_of) -> None:
    """No infinite value; every value outside the plausible range is warned about naming its column;
    every present value whose QC flag is missing (-1) is warned about naming the flag's column."""
    for var in ds.data_vars:
        if var.endswith("_qc") and var[:-3] in ds:
            lost = np.isfinite(ds[var[:-3]].values) & (ds[var].values == -1)
            qc_col = ds[var].attrs.get("source_column", ds[var].attrs.get("source_variable"))
            assert not lost.any() or warned(messages, qc_col), (
                f"{var}: {int(lost.sum())} present value(s) flagged -1 (missing flag), not warned about")
    for var in ds.data_vars:
        if var not in VARIABLES or VARIABLES[var].kind == "derived" or (var == "VPD" and "conversion" in ds[var].attrs):
            continue
        v = np.asarray(ds[var].values, dtype=float)
        assert not np.isinf(v).any(), f"{var}: infinite value in the output"
        lo, hi = VARIABLES[var].valid_range
        outside = np.isfinite(v) & ((v < lo) | (v > hi))
        if outside.any():
            cols = column_of(var)
            assert any("outside the plausible range" in m and warned([m], *cols) for m in messages), (
                f"{var} ({cols}): {int(outside.sum())} value(s) outside {lo}..{hi} not warned about; "
                f"warnings: {messages}")


# ============================================================================================
# CSV readers: fluxnet-csv (half-hourly canonical file, daily FLUXNET2015 file), ameriflux-base

_TS = ("TIMESTAMP_START", "TIMESTAMP_END", "TIMESTAMP")
_NAN_TOKENS = ("", "nan", "na", "n/a", "null", "none")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


class CsvSource:
    """A small slice of a real CSV: comment lines, header + rows (fields), line end, file name."""

    def __init__(self, name, comments, table, newline="\n", final_newline=True, comment_prefix=None):
        self.name, self.comments, self.table = name, comments, table
        self.newline, self.final_newline, self.comment_prefix = newline, final_newline, comment_prefix

    def text(self, table) -> str:
        lines = [f"{self.comment_prefix} {c}" for c in self.comments] + [",".join(r) for r in table]
        return self.newline.join(lines) + (self.newline if self.final_newline else "")


def _slice(path: Path, n: int, start_when=None, comment_prefix=None) -> CsvSource:
    """Comment lines, header and ``n`` data rows of ``path`` from the first row where
    ``start_when(fields, header)`` holds (default: the first row)."""
    raw = path.read_bytes().decode("utf-8-sig")
    newline = "\r\n" if "\r\n" in raw[:10000] else "\n"
    lines = raw.replace("\r\n", "\n").split("\n")
    comments = []
    while comment_prefix and lines[0].startswith(comment_prefix):
        comments.append(lines.pop(0)[len(comment_prefix):].strip())
    header = lines[0].split(",")
    body = [ln.split(",") for ln in lines[1:] if ln.strip()]
    i0 = next((i for i, f in enumerate(body) if start_when(f, header)), 0) if start_when else 0
    return CsvSource(path.name, comments, [header] + body[i0 : i0 + n], newline,
                     final_newline=comment_prefix is None, comment_prefix=comment_prefix)


def _has(*cols):
    return lambda f, header: all(f[header.index(c)] != "-9999" for c in cols if c in header)


@pytest.fixture(scope="module")
def csv_sources(shared_data) -> dict[str, CsvSource]:
    fx, orig = shared_data / "fluxnet", shared_data / "fluxnet" / "original"
    return {
        "fluxnet-HH": _slice(fx / "US-Wkg_200405-200412_HH.csv", 48),
        "fluxnet-DD": _slice(orig / "FLX_US-Wi7_FLUXNET2015_FULLSET_DD_2005-2005_1-4.csv", 20,
                             start_when=_has("H_F_MDS", "LE_F_MDS")),
        "ameriflux-base": _slice(orig / "AMF_US-CRT_BASE_HH_2-5.csv", 48, start_when=_has("H", "LE", "TA"),
                                 comment_prefix="#"),
    }


_CELL_TEXT = st.sampled_from([
    "abc", "NaN", "nan", "inf", "-inf", "Infinity", "1e30", "-1e30", "1e400", "-1e400", "1e-400", "",
    " ", "-9999", "-9999.0", "0x1F", "1.2.3", "\uff19", "1_0", "NA", "null", "None", "TRUE", '"3"',
    "3;5", "\t5", "5 ", "0", "-0", "200405061100", "999912312330", "000001010000", "20050101",
    "\x00", "\u00e9t\u00e9",
])
_EXTREME = st.sampled_from([1e30, -1e30, 1e300, -1e300, 1.7976931348623157e308, 5e-324, 1e15])
_UNIT = st.sampled_from(["x1000", "/1000", "+273.15", "-273.15", "x100", "x0.01", "x-1"])
_NEW_NAME = st.one_of(
    st.sampled_from(["TA_F", "TA", "PA_F", "PA", "H", "LE", "P", "SW_IN_F", "SW_IN", "TIMESTAMP",
                     "TIMESTAMP_END", "TIMESTAMP_START", "ta_f", " TA_F ", "", "TA_F_QC", "H_F_MDS_QC",
                     "G_1_1_1", "TS_1", "SWC_1", "X"]),
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ_0123456789", min_size=1, max_size=8),
)
_ROW_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("cell"), st.integers(0, 99), st.integers(0, 999), _CELL_TEXT),
        st.tuples(st.just("extreme"), st.integers(0, 99), st.integers(0, 999), _EXTREME),
        st.tuples(st.just("unit"), st.integers(0, 999), _UNIT),
        st.tuples(st.just("delete_col"), st.integers(0, 999)),
        st.tuples(st.just("shuffle_cols"), st.randoms(use_true_random=False)),
        st.tuples(st.just("rename_col"), st.integers(0, 999), _NEW_NAME),
        st.tuples(st.just("delete_row"), st.integers(0, 99)),
        st.tuples(st.just("dup_row"), st.integers(0, 99)),
        st.tuples(st.just("swap_rows"), st.integers(0, 99), st.integers(0, 99)),
        st.tuples(st.just("shift_time"), st.integers(0, 99), st.sampled_from([30, 60, -30, 7, 1440, 30 * 500, -10**6])),
        st.tuples(st.just("time_text"), st.integers(0, 99), st.sampled_from(_TS),
                  st.text(alphabet="0123456789", min_size=4, max_size=12)),
        st.tuples(st.just("blank"), st.integers(0, 99)),
        st.tuples(st.just("extra_field"), st.integers(0, 99)),
        st.tuples(st.just("missing_field"), st.integers(0, 99)),
    ),
    max_size=4,
)
_FILE_OPS = st.one_of(
    *[st.none()] * 6,  # most examples keep the file's structure, so that the read-successfully half is tested
    st.tuples(st.just("truncate"), st.floats(0.0, 1.0)),
    st.tuples(st.just("empty")),
    st.tuples(st.just("header_only")),
    st.tuples(st.just("garbage"), st.binary(max_size=300)),
    st.tuples(st.just("insert_bytes"), st.floats(0.0, 1.0), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("crlf")),
    st.tuples(st.just("bom")),
    st.tuples(st.just("no_final_newline")),
)


def _fmt(x: float) -> str:
    return f"{x:.10g}"


def mutate_table(table: list[list[str]], ops) -> list[list[str]]:
    """Apply the row/column mutations ``ops`` to a copy of ``table`` (header first)."""
    rows = [list(r) for r in table]
    for op in ops:
        kind, ncol, nrow = op[0], len(rows[0]), len(rows) - 1
        if ncol == 0 or nrow < 1:
            break
        header = rows[0]
        data_cols = [j for j, h in enumerate(header) if h not in _TS]
        if kind == "cell":
            r = rows[1 + op[1] % nrow]
            if r:
                r[op[2] % len(r)] = op[3]
        elif kind == "extreme" and data_cols:
            r = rows[1 + op[1] % nrow]
            j = data_cols[op[2] % len(data_cols)]
            if j < len(r):
                r[j] = repr(op[3])
        elif kind == "unit" and data_cols:
            j = data_cols[op[1] % len(data_cols)]
            for r in rows[1:]:
                if j < len(r) and _NUMBER.match(r[j].strip()) and float(r[j]) != -9999:
                    v = float(r[j])
                    r[j] = _fmt({"x1000": v * 1000, "/1000": v / 1000, "+273.15": v + 273.15,
                                 "-273.15": v - 273.15, "x100": v * 100, "x0.01": v * 0.01,
                                 "x-1": -v}[op[2]])
        elif kind == "delete_col":
            j = op[1] % ncol
            rows = [[x for k, x in enumerate(r) if k != j] for r in rows]
        elif kind == "shuffle_cols":
            perm = list(range(ncol))
            op[1].shuffle(perm)
            rows = [[r[k] for k in perm if k < len(r)] + r[ncol:] for r in rows]
        elif kind == "rename_col":
            header[op[1] % ncol] = op[2]
        elif kind == "delete_row":
            del rows[1 + op[1] % nrow]
        elif kind == "dup_row":
            i = 1 + op[1] % nrow
            rows.insert(i, list(rows[i]))
        elif kind == "swap_rows":
            i, j = 1 + op[1] % nrow, 1 + op[2] % nrow
            rows[i], rows[j] = rows[j], rows[i]
        elif kind == "shift_time":
            r = rows[1 + op[1] % nrow]
            for col in ("TIMESTAMP_START", "TIMESTAMP_END"):
                if col in header and header.index(col) < len(r):
                    j = header.index(col)
                    try:
                        t = pd.Timestamp(pd.to_datetime(r[j], format="%Y%m%d%H%M")) + pd.Timedelta(minutes=op[2])
                        r[j] = t.strftime("%Y%m%d%H%M")
                    except (ValueError, OverflowError):
                        pass
        elif kind == "time_text":
            r = rows[1 + op[1] % nrow]
            if op[2] in header and header.index(op[2]) < len(r):
                r[header.index(op[2])] = op[3]
        elif kind == "blank":
            rows.insert(1 + op[1] % nrow, [""])
        elif kind == "extra_field":
            rows[1 + op[1] % nrow].append("0")
        elif kind == "missing_field":
            r = rows[1 + op[1] % nrow]
            if r:
                r.pop()
    return rows


def mutate_bytes(src: CsvSource, table, file_op) -> bytes:
    text = src.text(table)
    if file_op is None:
        return text.encode()
    kind = file_op[0]
    if kind == "truncate":
        data = text.encode()
        return data[: int(file_op[1] * len(data))]
    if kind == "empty":
        return b""
    if kind == "header_only":
        return src.text(table[:1]).encode()
    if kind == "garbage":
        return file_op[1]
    if kind == "insert_bytes":
        data = text.encode()
        i = int(file_op[1] * len(data))
        return data[:i] + file_op[2] + data[i:]
    if kind == "crlf":
        return text.replace("\r\n", "\n").replace("\n", "\r\n").encode()
    if kind == "bom":
        return b"\xef\xbb\xbf" + text.encode()
    if kind == "no_final_newline":
        return text.rstrip("\r\n").encode()
    raise AssertionError(kind)


def _num(cell: str) -> float | None:
    """The number in a cell as the FLUXNET readers must read it (NaN for missing), None for text."""
    c = cell.strip()
    if c.lower() in _NAN_TOKENS:
        return float("nan")
    if _NUMBER.match(c):
        v = float(c)
        return float("nan") if v == -9999 else v
    return None


def _parse_time(cell: str) -> pd.Timestamp:
    c = cell.strip()
    fmt = {12: "%Y%m%d%H%M", 8: "%Y%m%d", 6: "%Y%m", 4: "%Y"}[len(c)]
    return pd.Timestamp(pd.to_datetime(c, format=fmt))


def check_csv_dataset(ds: xr.Dataset, data: bytes, messages: list[str], src: CsvSource) -> None:
    """The read-successfully half of the property (module docstring) for a CSV file."""
    lines = data.decode("utf-8-sig").replace("\r\n", "\n").split("\n")
    while src.comment_prefix and lines and lines[0].startswith(src.comment_prefix):
        lines.pop(0)
    header = [h.strip() for h in lines[0].split(",")]
    rows = [ln.split(",") for ln in lines[1:] if ln.strip()]
    assert all(len(r) == len(header) for r in rows), "a malformed line was read"
    tcol = "TIMESTAMP_START" if "TIMESTAMP_START" in header else "TIMESTAMP"
    times = [_parse_time(r[header.index(tcol)]) for r in rows]
    out_t = pd.DatetimeIndex(ds["time"].values)
    # rows: every data line is a step at its time; more steps only with the insertion warning
    assert set(times) <= set(out_t), "a data row is missing from the output"
    assert len(out_t) >= len(rows)
    if len(out_t) != len(rows):
        assert any("missing rows in the time axis" in m for m in messages), (
            f"{len(rows)} data rows but {len(out_t)} time steps, not warned about")
    # columns: each one used, an alternative, a QC flag or listed as unmapped
    accounted = set(_TS) | set(filter(None, ds.attrs.get("unmapped_columns", "").split(", ")))
    for var in ds.data_vars:
        for key in ("source_column", "alternative_columns", "replicate_columns"):
            accounted |= set(filter(None, str(ds[var].attrs.get(key, "")).split(", ")))
    assert set(header) <= accounted, f"column(s) {sorted(set(header) - accounted)} silently ignored"
    # values: present in the input -> present in the output (converted), unless warned
    at = {t: i for i, t in enumerate(out_t)}
    idx = np.array([at[t] for t in times])
    aggregated = ds.attrs.get("time_resolution") in ("DD", "WW", "MM", "YY")
    for var in ds.data_vars:
        if var not in VARIABLES:
            continue
        cols = ds[var].attrs["source_column"].split(", ")
        raw = np.array([[_num(r[header.index(c)]) for r in rows] for c in cols], dtype=object)
        assert not any(x is None for x in raw.ravel()), f"{var}: a text cell of {cols} was read as a value"
        raw = raw.astype(float)
        out = np.asarray(ds[var].values, dtype=float)[idx]
        lost = np.isfinite(raw).any(axis=0) & ~np.isfinite(out)
        assert not lost.any() or warned(messages, *cols), (
            f"{var} ({cols}): {int(lost.sum())} present value(s) missing from the output, not warned about")
        if len(cols) == 1:
            ok = np.isfinite(raw[0])
            if var == "Precip":
                expected = raw[0] / (86400.0 if aggregated else ds.attrs["time_step_s"])
            else:
                expected = VARIABLES[var].to_canonical(raw[0])
            np.testing.assert_allclose(out[ok], expected[ok], rtol=1e-9, err_msg=f"{var} ({cols[0]})")
    check_flagged(ds, messages, lambda v: ds[v].attrs["source_column"].split(", "))


@pytest.mark.parametrize("fmt", ["fluxnet-HH", "fluxnet-DD", "ameriflux-base"])
@fuzz_settings(150)
@given(ops=_ROW_OPS, file_op=_FILE_OPS)
def test_csv_readers_fuzz(csv_sources, fmt, ops, file_op):
    src = csv_sources[fmt]
    data = mutate_bytes(src, mutate_table(src.table, ops), file_op)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / src.name
        path.write_bytes(data)
        ds, messages = read_outcome(path)
    if ds is not None:
        check_csv_dataset(ds, data, messages, src)


# ============================================================================================
# netCDF readers: plumber2 (a Met/Flux pair), gridded

_MET_VARS = ["Tair", "Tair_qc", "SWdown", "SWdown_qc", "LWdown", "Qair", "VPD", "Psurf", "Precip", "Wind", "RH",
             "latitude", "longitude", "elevation", "reference_height", "IGBP_veg_short"]
_FLUX_VARS = ["Qle", "Qle_qc", "Qh", "Qh_qc", "Rnet", "Ustar", "NEE", "latitude", "longitude", "IGBP_veg_short"]
PAIR = "XX-Fuz_2005-2005_FLUXNET2015"


@pytest.fixture(scope="module")
def nc_dirs(tmp_path_factory):
    """A fresh directory per example, none deleted before the end of the module: the netCDF/HDF5
    libraries may keep a handle of a file that failed to open, and a later file at a reused path
    was seen to be read inconsistently with it."""
    root = tmp_path_factory.mktemp("nc_fuzz")
    count = iter(range(10**9))

    def new() -> Path:
        d = root / f"{next(count):06d}"
        d.mkdir()
        return d

    return new


@pytest.fixture(scope="module")
def plumber_pair(shared_data):
    """96 steps of the DK-Fou Met and Flux files, times and missing values not decoded."""
    orig = shared_data / "fluxnet" / "original"
    out = {}
    for kind, names in (("Met", _MET_VARS), ("Flux", _FLUX_VARS)):
        with xr.open_dataset(orig / f"DK-Fou_2005-2005_FLUXNET2015_{kind}.nc", decode_times=False,
                             mask_and_scale=False) as src:
            out[kind] = src[names].isel(time=slice(0, 96)).load()
    return out


@pytest.fixture(scope="module")
def grid(shared_data):
    """24 three-hourly steps of the Livneh Walnut Gulch grid (3 x 5 cells), times and missing values
    not decoded."""
    path = shared_data / "gridded" / "livneh_NAmerExt_15Oct2014.WalnutGulch.2008.nc"
    with xr.open_dataset(path, decode_times=False, mask_and_scale=False) as src:
        return src.isel(time=slice(0, 24)).load()


_UNITS = st.sampled_from([None, "degF", "kW m-2", "", "furlongs per fortnight", 5, "W/m2", "K", "C", "mm/day",
                          "kg/m2/s", "%", "hPa", "Pa", "kPa", "1", "m s-1", "mm s-1", "mm timestep-1", "degC"])
_TIME_UNITS = st.sampled_from([None, "days since 2005-01-01", "hours since 2005-01-01 00:00:00",
                               "seconds since garbage", "", "seconds", "months since 2005-01-01",
                               "seconds since 1677-01-01", "seconds since 2262-04-11", "minutes since 2008-01-01",
                               "hours since 2008-01-01"])
_CALENDAR = st.sampled_from([None, "360_day", "noleap", "julian", "bogus", "gregorian"])
_BAD_VALUES = st.sampled_from([1e30, -1e30, float("inf"), float("-inf"), float("nan"), -9999.0, 0.0, 1e300, 7.0,
                               -1.0, 0.5, 101.0])


def _nc_ops(dims):
    name = st.integers(0, 999)
    return st.lists(
        st.one_of(
            st.tuples(st.just("rename_dim"), st.sampled_from(dims), st.sampled_from(["t", "TIME", "z", *dims])),
            st.tuples(st.just("swap_dims"), st.sampled_from(dims), st.sampled_from(dims)),
            st.tuples(st.just("transpose"), st.permutations(dims)),
            st.tuples(st.just("extra_dim"), name, st.integers(1, 3)),
            st.tuples(st.just("grow_dim"), st.sampled_from(dims[1:])),
            st.tuples(st.just("drop_var"), name),
            st.tuples(st.just("rename_var"), name,
                      st.sampled_from(["Tair", "Qle", "temp", "tas", "wind", "XYZ", "tair"])),
            st.tuples(st.just("drop_time_coord")),
            st.tuples(st.just("units"), name, _UNITS),
            st.tuples(st.just("scale"), name, st.sampled_from([1000.0, 0.001, 100.0, -1.0]),
                      st.sampled_from([0.0, 273.15, -273.15])),
            st.tuples(st.just("cells"), name, st.integers(0, 95), st.integers(1, 96), _BAD_VALUES),
            st.tuples(st.just("time_units"), _TIME_UNITS),
            st.tuples(st.just("calendar"), _CALENDAR),
            st.tuples(st.just("time_values"), st.sampled_from(["reverse", "dup", "nan", "jitter", "huge", "negative",
                                                               "far", "shift", "drop", "one_step", "int"]),
                      st.integers(1, 95)),
            st.tuples(st.just("site_code"), st.sampled_from(["XX-Oth", "", 5, "DK-Fou"])),
            st.tuples(st.just("text_var"), name, st.sampled_from(["1.5", "abc", ""])),
            st.tuples(st.just("int_var"), name),
            st.tuples(st.just("time_zone"), st.sampled_from(["Europe/Copenhagen", "Mars/Olympus", 5, ""])),
        ),
        max_size=3,
    )


def mutate_nc(ds: xr.Dataset, ops) -> xr.Dataset:
    """Apply netCDF mutations to a copy of a raw (undecoded) dataset; inapplicable ones are skipped."""
    ds = ds.copy(deep=True)
    for op in ops:
        kind = op[0]
        names = sorted(ds.data_vars)
        takes_var = kind in ("extra_dim", "drop_var", "rename_var", "units", "scale", "cells", "text_var", "int_var")
        var = names[op[1] % len(names)] if names and takes_var else None
        try:
            if kind == "rename_dim" and op[1] in ds.dims and op[2] not in ds.dims:
                ds = ds.rename_dims({op[1]: op[2]})
            elif kind == "swap_dims" and op[1] in ds.dims and op[2] in ds.dims and op[1] != op[2]:
                ds = ds.rename_dims({op[1]: "__tmp"}).rename_dims({op[2]: op[1]}).rename_dims({"__tmp": op[2]})
            elif kind == "transpose":
                ds = ds.transpose(*[d for d in op[1] if d in ds.dims], ...)
            elif kind == "extra_dim" and var is not None:
                ds[var] = ds[var].expand_dims({"z": op[2]}, axis=-1)
            elif kind == "grow_dim" and op[1] in ds.dims:
                ds = xr.concat([ds, ds], dim=op[1], data_vars="minimal", coords="minimal", compat="override")
            elif kind == "drop_var" and var is not None:
                ds = ds.drop_vars(var)
            elif kind == "rename_var" and var is not None and op[2] not in ds.variables:
                ds = ds.rename_vars({var: op[2]})
            elif kind == "drop_time_coord" and "time" in ds.variables:
                ds = ds.drop_vars("time")
            elif kind == "units" and var is not None:
                ds[var].attrs.pop("units", None)
                if op[2] is not None:
                    ds[var].attrs["units"] = op[2]
            elif kind == "scale" and var is not None and np.issubdtype(ds[var].dtype, np.floating):
                v = ds[var].values.astype(float)
                fill = ds[var].attrs.get("_FillValue", np.nan)
                keep = v == fill
                v = v * op[2] + op[3]
                v[keep] = fill
                ds[var].values = v.astype(ds[var].dtype)
            elif kind == "cells" and var is not None and np.issubdtype(ds[var].dtype, np.floating) and ds[var].ndim:
                flat = ds[var].values.reshape(-1).copy()
                with np.errstate(over="ignore"):
                    flat[op[2] % flat.size : op[2] % flat.size + op[3]] = op[4]
                ds[var].values = flat.reshape(ds[var].shape)
            elif kind == "time_units" and "time" in ds.variables:
                ds["time"].attrs.pop("units", None)
                if op[1] is not None:
                    ds["time"].attrs["units"] = op[1]
            elif kind == "calendar" and "time" in ds.variables:
                ds["time"].attrs.pop("calendar", None)
                if op[1] is not None:
                    ds["time"].attrs["calendar"] = op[1]
            elif kind == "time_values" and "time" in ds.variables and ds["time"].ndim == 1:
                ds = _mutate_time(ds, op[1], op[2])
            elif kind == "site_code":
                ds.attrs["site_code"] = op[1]
            elif kind == "text_var" and var is not None:
                ds[var] = xr.DataArray(np.full(ds[var].shape, op[2], dtype=object), dims=ds[var].dims)
            elif kind == "int_var" and var is not None and np.issubdtype(ds[var].dtype, np.floating):
                v = np.nan_to_num(ds[var].values, nan=-9999, posinf=-9999, neginf=-9999)
                ds[var] = xr.DataArray(np.clip(v, -32000, 32000).astype("int16"), dims=ds[var].dims,
                                       attrs={k: x for k, x in ds[var].attrs.items() if k != "_FillValue"})
            elif kind == "time_zone" and "time" in ds.variables:
                ds["time"].attrs["time_zone"] = op[1]
        except (ValueError, KeyError) as exc:  # the mutation does not apply to this dataset
            event(f"mutation {kind} skipped: {type(exc).__name__}")
    return ds


def _mutate_time(ds, how, k):
    t = ds["time"].values.astype(float)
    n = len(t)
    k = k % n if n else 0
    if how == "reverse":
        t = t[::-1].copy()
    elif how == "dup" and n > 1:
        t[k] = t[k - 1]
    elif how == "nan":
        t[k] = np.nan
    elif how == "jitter":
        t[k] += 7.0
    elif how == "huge":
        t[k] = 1e20
    elif how == "negative":
        t[k] = -1e15
    elif how == "far":  # about 300 years before 2005, within what datetime64[ns] holds
        unit = (str(ds["time"].attrs.get("units", "seconds")).split() or ["seconds"])[0]  # '' after a time_units op
        t[k] = -9.5e9 / {"minutes": 60.0, "hours": 3600.0, "days": 86400.0}.get(unit, 1.0)
    elif how == "shift":
        t = t + 900.0
    elif how == "drop":
        return ds.isel(time=[i for i in range(n) if i != k]) if "time" in ds.dims else ds
    elif how == "one_step":
        return ds.isel(time=slice(0, 1)) if "time" in ds.dims else ds
    elif how == "int":
        return ds.assign_coords(time=ds["time"].astype("int32")) if "time" in ds.dims else ds
    attrs = dict(ds["time"].attrs)
    ds = ds.assign_coords(time=(ds["time"].dims, t, attrs)) if "time" in ds.dims else ds
    return ds


_NC_FILE_OPS = st.one_of(
    *[st.none()] * 6,
    st.tuples(st.just("truncate"), st.floats(0.0, 1.0)),
    st.tuples(st.just("empty")),
    st.tuples(st.just("garbage"), st.binary(max_size=300)),
    st.tuples(st.just("flip"), st.floats(0.0, 1.0), st.integers(0, 255)),
)


def write_nc(ds: xr.Dataset, path: Path, nc_format: str, file_op) -> bool:
    """Write ``ds`` and apply the byte-level mutation; False if the dataset cannot be written."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.to_netcdf(path, format=nc_format)
    except (ValueError, TypeError, OverflowError, RuntimeError) as exc:
        event(f"unwritable: {type(exc).__name__}")
        return False
    if file_op is not None:
        data = bytearray(path.read_bytes())
        if file_op[0] == "truncate":
            data = data[: int(file_op[1] * len(data))]
        elif file_op[0] == "empty":
            data = bytearray()
        elif file_op[0] == "garbage":
            data = bytearray(file_op[1])
        elif file_op[0] == "flip" and data:
            data[int(file_op[1] * (len(data) - 1))] = file_op[2]
        path.write_bytes(bytes(data))
    return True


def _finite_counts(path: Path) -> dict[str, int]:
    """Finite values of each numeric data variable of a netCDF file (CF-decoded, times not)."""
    with open_netcdf(path, decode_times=False) as src:  # the engine the readers use
        out = {}
        for name, da in src.data_vars.items():
            try:
                out[name] = int(np.isfinite(np.asarray(da.values, dtype=float)).sum())
            except (TypeError, ValueError):
                pass
        sizes = dict(src.sizes)
    return out, sizes


def check_netcdf_dataset(ds, messages, paths: list[Path], *, gridded: bool) -> None:
    """The read-successfully half of the property (module docstring) for netCDF files."""
    counts, sizes = {}, []
    for p in paths:  # the Met file first: its variables win
        c, s = _finite_counts(p)
        counts = {**c, **counts}
        sizes.append(s)
    n = ds.sizes["time"]
    if any(s.get("time") != n for s in sizes):
        assert any("missing rows in the time axis" in m or "dropped time" in m for m in messages), (
            f"time steps in the files {[s.get('time') for s in sizes]} but {n} in the output, not warned about")
    if gridded:
        for var in ds.data_vars:
            assert ds[var].dims == ("time", "y", "x"), f"{var}: dims {ds[var].dims}, expected (time, y, x)"
    else:
        for var in ds.data_vars:
            assert ds[var].dims == ("time",), f"{var}: dims {ds[var].dims}, expected (time,)"
    lower = {k.lower(): k for k in counts}
    for var in ds.data_vars:
        if var not in VARIABLES:
            continue
        name = ds[var].attrs.get("source_variable")
        if name not in counts or (gridded and GRIDDED_VARIABLES.get(name.lower()) != var):
            continue  # derived (Qair, VPD from vapour pressure)
        got = int(np.isfinite(np.asarray(ds[var].values, dtype=float)).sum())
        assert got >= counts[name] or warned(messages, name), (
            f"{var} ({name}): {counts[name]} finite values in the file, {got} in the output, not warned about")
    # every time-varying variable of the files used, a QC flag, static, or listed as unmapped
    unmapped = set(filter(None, ds.attrs.get("unmapped_variables", "").split(", ")))
    used = {str(ds[v].attrs.get("source_variable")) for v in ds.data_vars}
    statics = {"latitude", "longitude", "elevation", "reference_height", "canopy_height", "mask"}
    for name in lower.values():
        if name in used or name in unmapped or name.lower() in statics or name.lower().startswith("igbp_veg"):
            continue
        raise AssertionError(f"variable {name} of the file(s) neither used nor listed as unmapped")
    check_flagged(ds, messages, lambda v: [str(ds[v].attrs.get("source_variable"))])


@fuzz_settings(200)
@given(which=st.sampled_from(["Met", "Flux"]), ops=_nc_ops(["time", "y", "x"]), file_op=_NC_FILE_OPS,
       nc_format=st.sampled_from(["NETCDF3_64BIT", "NETCDF4"]))
@pytest.mark.slow  # kept out of make test-fast (several seconds)
def test_plumber2_fuzz(nc_dirs, plumber_pair, which, ops, file_op, nc_format):
    d = nc_dirs()
    paths = {k: d / f"{PAIR}_{k}.nc" for k in ("Met", "Flux")}
    for kind, ds in plumber_pair.items():
        if kind == which:
            if not write_nc(mutate_nc(ds, ops), paths[kind], nc_format, file_op):
                return
        else:
            ds.to_netcdf(paths[kind], format="NETCDF3_64BIT")
    out, messages = read_outcome(paths["Met"], names=(PAIR,))
    if out is not None:
        check_netcdf_dataset(out, messages, [paths["Met"], paths["Flux"]], gridded=False)


@fuzz_settings(200)
@given(ops=_nc_ops(["time", "lat", "lon"]), file_op=_NC_FILE_OPS,
       nc_format=st.sampled_from(["NETCDF3_64BIT", "NETCDF4"]))
@pytest.mark.slow  # kept out of make test-fast (several seconds)
def test_gridded_fuzz(nc_dirs, grid, ops, file_op, nc_format):
    path = nc_dirs() / "grid_fuzz.nc"
    if not write_nc(mutate_nc(grid, ops), path, nc_format, file_op):
        return
    ds, messages = read_outcome(path)
    if ds is not None:
        check_netcdf_dataset(ds, messages, [path], gridded=True)


# ============================================================================================
# config loader

VALID = """\
name: demo-1
data:
  sites:
    - sites/A_HH.csv
    - {met: plumber/B_Met.nc, flux: plumber/B_Flux.nc}
    - {virtual: {igbp: ENF, days: 30, seed: 2}}
  max_qc: 1
  targets: [Qle, Qh]
  split: {train: 0.6, val: 0.2, test: 0.2}
  spinup_days: 5
  window_days: 48 h
models:
  - {name: lstm, options: {hidden_size: 16}}
training:
  seed: 7
  lr: 1.0e-4
  batch_windows: 8
  two_phase: {enabled: true, phase1_epochs: 3, phase2_epochs: 4, lambda_sparsity: 0.02}
output: {run_dir: runs, overwrite: false}
"""

_GARBAGE = st.one_of(
    st.sampled_from([None, "", "text", -1, 0, 1e308, float("inf"), float("nan"), True, [], {}, [1, "a", None],
                     {"x": {"y": [1]}}, "~nosuchuser_hybridlsm/x.csv", "a\x00b", "2010-13-45", 10**30, "48 parsecs",
                     "-5 d", "1e999 d", ["2010-01-01", "2009-01-01"], "\u00e9\u00e8", "../../../../etc/passwd"]),
    st.text(max_size=12),
    st.integers(),
    st.floats(),
    st.recursive(st.none() | st.booleans() | st.integers(-3, 3) | st.text(max_size=4),
                 lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
                 max_leaves=6),
)


def _paths(node, prefix=()):
    """Every key path of a nested YAML value (dict keys and list indices)."""
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, prefix + (i,))
    return out


def _apply(data, op):
    """Apply one mutation to ``data`` in place; returns the key path it touched. Values are copied:
    sampled_from gives the same object each time, which must not become part of (or cycle in) data."""
    op = copy.deepcopy(op)
    kind, pick = op[0], op[1]
    if kind == "site":
        sites = data.get("data", {}).get("sites") if isinstance(data.get("data"), dict) else None
        if not isinstance(sites, list) or not sites:
            return ("data",)
        sites[pick % len(sites)] = op[2]
        return ("data", "sites", pick % len(sites))
    paths = _paths(data)
    if not paths:
        return ()
    path = paths[pick % len(paths)]
    *parents, last = path
    node = data
    for p in parents:
        node = node[p]
    if kind == "delete":
        del node[last]
    elif kind == "set":
        node[last] = op[2]
    elif kind == "unknown_key":
        if isinstance(node[last], dict):
            node[last][op[2]] = op[3]
            path = path + (op[2],)
        elif isinstance(node, dict):
            node[op[2]] = op[3]
            path = tuple(parents) + (op[2],)
        else:
            data[op[2]] = op[3]
            path = (op[2],)
    return path


_SITE = st.sampled_from([
    "~nosuchuser_hybridlsm/x.csv", "sites", "", "a\x00b", "nothere.csv", "/", ".", {"path": "sites"},
    {"path": "sites/A_HH.csv", "format": ""}, {"path": None}, {"met": "sites", "flux": "plumber/B_Flux.nc"},
    {"met": "plumber/B_Met.nc"}, {"virtual": {"days": 0}}, {"virtual": None}, {"path": "sites/A_HH.csv", "options": []},
    ["sites/A_HH.csv"], 5, None,
])
_CONFIG_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("site"), st.integers(0, 9), _SITE),
        st.tuples(st.just("delete"), st.integers(0, 999)),
        st.tuples(st.just("set"), st.integers(0, 999), _GARBAGE),
        st.tuples(st.just("unknown_key"), st.integers(0, 999), st.sampled_from(["colour", "lr ", "Name", "x"]), _GARBAGE),
    ),
    min_size=1,
    max_size=3,
)
_TEXT_OPS = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0.0, 1.0)),
    st.tuples(st.just("insert"), st.floats(0.0, 1.0),
              st.sampled_from([b":", b"{", b"}", b"[", b"]", b"- ", b"&a", b"*a", b"!!python/object:os.system ",
                               b"|", b">", b"'", b'"', b"%", b"@", b"`", b"\t", b"\n", b"#", b"\xff", b"\xc3",
                               b"\x00", b"\x07", b"  ", b"\xef\xbb\xbf", b"? ", b"!!binary ", b"!!float "])),
    st.tuples(st.just("duplicate_line"), st.integers(0, 99)),
    st.tuples(st.just("garbage"), st.binary(max_size=100)),
)


def _config_dir(root: Path) -> Path:
    for rel in ("sites/A_HH.csv", "plumber/B_Met.nc", "plumber/B_Flux.nc"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")
    return root


def load_outcome(path: Path, loader=load_config):
    """The RunConfig, or the ConfigError message (naming the file); other exceptions fail the test."""
    try:
        cfg = loader(path)
    except ConfigError as exc:
        msg = str(exc)
        assert str(path) in msg, f"the ConfigError does not name the file: {msg}"
        detail = " ".join(msg.replace(str(path), "<file>").split())
        event(f"ConfigError: {re.sub(r'[0-9]+', 'N', detail)[:70]}")
        return msg
    assert isinstance(cfg, RunConfig)
    event("loaded")
    return cfg


@fuzz_settings(300)
@given(ops=_CONFIG_OPS)
def test_config_structure_fuzz(ops):
    data = yaml.safe_load(VALID)
    touched = [_apply(data, op) for op in ops]
    with tempfile.TemporaryDirectory() as d:
        path = _config_dir(Path(d)) / "run.yaml"
        path.write_text(yaml.safe_dump(data, allow_unicode=True))
        out = load_outcome(path, load_run_config)  # models and their options checked against the registry
    if isinstance(out, str):
        # the message names a key the mutations touched (or the section that holds it)
        keys = {str(p[0]) for p in touched if p} | {str(k) for p in touched for k in p if isinstance(k, str)}
        assert any(k in out for k in keys) or "(top level)" in out, f"names none of {keys}: {out}"


@fuzz_settings(300)
@given(op=_TEXT_OPS)
def test_config_text_fuzz(op):
    data = VALID.encode()
    kind = op[0]
    if kind == "truncate":
        data = data[: int(op[1] * len(data))]
    elif kind == "insert":
        i = int(op[1] * len(data))
        data = data[:i] + op[2] + data[i:]
    elif kind == "duplicate_line":
        lines = data.split(b"\n")
        i = op[1] % len(lines)
        lines.insert(i, lines[i])
        data = b"\n".join(lines)
    elif kind == "garbage":
        data = op[1]
    with tempfile.TemporaryDirectory() as d:
        path = _config_dir(Path(d)) / "run.yaml"
        path.write_bytes(data)
        out = load_outcome(path)
    if isinstance(out, str) and out.startswith(("invalid YAML", "cannot read")):
        assert re.search(r"\bline \d+", out), f"a YAML or encoding error without its line: {out}"
    if kind == "duplicate_line" and re.match(r"\s*[A-Za-z_]\w*\s*:", lines[i].decode()):
        # a key given twice: PyYAML would keep the second value and drop the first silently
        assert isinstance(out, str) and "duplicate key" in out and "line" in out, out


# ============================================================================================
# regressions: one deterministic test per defect the fuzzing found (input -> old failure)


def _hh_csv(tmp_path: Path, pa_row2: str = "85.3", name="US-Xxx_200401-200401_HH.csv") -> Path:
    """A minimal FLUXNET half-hourly file: 4 rows of TA_F, PA_F, H_F_MDS, LE_F_MDS."""
    rows = ["TIMESTAMP_START,TIMESTAMP_END,TA_F,PA_F,H_F_MDS,LE_F_MDS"]
    for i, t in enumerate(pd.date_range("2004-01-01", periods=4, freq="30min")):
        pa = pa_row2 if i == 1 else "85.3"
        rows.append(f"{t:%Y%m%d%H%M},{t + pd.Timedelta('30min'):%Y%m%d%H%M},10.5,{pa},50.0,80.0")
    path = tmp_path / name
    path.write_text("\n".join(rows) + "\n")
    return path


def test_directory_given_for_a_file_says_so(tmp_path):
    # was: "<dir>: no such file"
    d = tmp_path / "US-Xxx_200401-200401_HH.csv"
    d.mkdir()
    for call in (read_site, lambda p: __import__("hybridlsm.data", fromlist=["detect_format"]).detect_format(p)):
        with pytest.raises(DataError, match=re.escape(f"{d}: is a directory; expected a data file (one of the formats "
                                                      "ameriflux-base, fluxnet-csv, plumber2, wrf, gridded)")):
            call(d)
    with pytest.raises(DataError, match="nothere.csv: no such file"):
        read_site(tmp_path / "nothere.csv")


def test_csv_conversion_overflow_is_an_error(tmp_path):
    # was: PA_F = 1.8e308 kPa became +inf Pa in the dataset, silently
    with pytest.raises(DataError, match=re.escape(
            "US-Xxx_200401-200401_HH.csv: column PA_F: value 1.79769e+308 at line 3 overflows when converted to Pa")):
        read_site(_hh_csv(tmp_path, "1.7976931348623157e308"))
    base = tmp_path / "AMF_US-Xxx_BASE_HH_1-1.csv"
    base.write_text("# Site: US-Xxx\n" + _hh_csv(tmp_path).read_text().replace("_F_MDS", "").replace("_F", "")
                    .replace("85.3,50.0,80.0\n", "1.7976931348623157e308,50.0,80.0\n", 1))
    with pytest.raises(DataError, match=r"AMF_US-Xxx_BASE_HH_1-1.csv: column PA: value 1.79769e\+308 at line 3 overflows"):
        read_site(base)


def test_csv_timestamp_year_out_of_range(tmp_path):
    # was: year 3000 wrapped around datetime64[ns] silently, and the error named times and steps that
    # are not in the file ("TIMESTAMP_END - TIMESTAMP_START = 63225 days 23:39:07.419103232 at line 5
    # (1830-11-23 02:20)"); year 1700 raised OverflowError "Overflow in int64 addition"
    for year in ("3000", "1700"):
        path = _hh_csv(tmp_path)
        lines = path.read_text().splitlines()
        lines[4] = year + lines[4][4:]
        path.write_text("\n".join(lines) + "\n")
        with pytest.raises(DataError, match=re.escape(
                f"HH.csv: column TIMESTAMP_START: '{year}01010130' at line 5: year {year} is outside 1850..2140")):
            read_site(path)


def _grid(tmp_path: Path, name: str, **variables) -> Path:
    t = pd.date_range("2000-01-01", periods=8, freq="h")
    coords = {"time": t, "lat": [1.0, 2.0], "lon": [3.0, 4.0]}
    ds = xr.Dataset({"tas": (("time", "lat", "lon"), np.full((8, 2, 2), 285.0), {"units": "K"}), **variables},
                    coords=coords)
    path = tmp_path / name
    ds.to_netcdf(path)
    return path


def test_gridded_variable_dims_and_type(tmp_path):
    # was: "irregular time step -103504 days +02:25:26.290448384 before 2000-01-01 02:00:00 (index 2);
    # expected 103503 days 23:34:33.709551616 throughout": steps that overflowed (a time 300 years off)
    path = _grid(tmp_path, "grid0.nc")
    with xr.open_dataset(path, decode_times=False) as src:
        far = src.load()
    far["time"] = far["time"].copy(data=np.r_[0.0, -2.64e6, far["time"].values[2:]])  # hours since 2000-01-01
    far.to_netcdf(tmp_path / "grid_far.nc")
    with pytest.raises(DataError, match=r"grid_far.nc: variable time: 1698-\S+ \S+ at index 1 is outside the years"):
        read_site(tmp_path / "grid_far.nc")
    # was: a variable with an extra dimension, or without one of the grid's, read as it was into the
    # "(time, y, x)" dataset
    path = _grid(tmp_path, "grid1.nc", pres=(("time", "lat", "lon", "z"), np.full((8, 2, 2, 1), 90.0), {"units": "kPa"}))
    with pytest.warns(DataWarning, match=re.escape("grid1.nc: variable pres: dimension(s) ['z'] of size 1 dropped")):
        ds = read_site(path)
    assert ds["Psurf"].dims == ("time", "y", "x") and float(ds["Psurf"][0, 0, 0]) == 90000.0
    path = _grid(tmp_path, "grid2.nc", pres=(("time", "lat", "lon", "z"), np.full((8, 2, 2, 2), 90.0), {"units": "kPa"}))
    with pytest.raises(DataError, match=re.escape("grid2.nc: variable pres has dims {'time': 8, 'lat': 2, 'lon': 2, "
                                                  "'z': 2}; expected (time, lat, lon)")):
        read_site(path)
    path = _grid(tmp_path, "grid3.nc", pres=(("time", "lat"), np.full((8, 2), 90.0), {"units": "kPa"}))
    with pytest.raises(DataError, match=r"grid3.nc: variable pres has dims \{'time': 8, 'lat': 2\}; expected"):
        read_site(path)
    # was: +inf read into the dataset silently
    inf = np.where(np.arange(32).reshape(8, 2, 2) == 5, np.inf, 90.0)
    with pytest.raises(DataError, match=re.escape("grid5.nc: variable pres: infinite value at flat index 5; expected "
                                                  "finite numbers")):
        read_site(_grid(tmp_path, "grid5.nc", pres=(("time", "lat", "lon"), inf, {"units": "kPa"})))
    # was: TypeError "unsupported operand type(s) for *: 'Array' and 'float'" (a text variable)
    path = _grid(tmp_path, "grid4.nc", pres=(("time", "lat", "lon"), np.full((8, 2, 2), "abc", dtype=object),
                                             {"units": "kPa"}))
    with pytest.raises(DataError, match=r"grid4.nc: variable pres has type \S+; expected numbers"):
        read_site(path)


def _site_nc(tmp_path: Path, *, time=None, tair=None, tair_qc=None, fmt="NETCDF4") -> Path:
    """A minimal single-site PLUMBER2-style Met file (time, y = 1, x = 1)."""
    n = 6
    time = np.arange(n) * 1800.0 if time is None else np.asarray(time, dtype=float)
    n = len(time)
    tair = np.full(n, 280.0) if tair is None else np.asarray(tair)
    tair_qc = np.zeros(n) if tair_qc is None else np.asarray(tair_qc, dtype=float)
    ds = xr.Dataset(
        {"Tair": (("time", "y", "x"), tair.reshape(n, 1, 1), {"units": "K"}),
         "Tair_qc": (("time", "y", "x"), tair_qc.reshape(n, 1, 1)),
         "Qle": (("time", "y", "x"), np.full((n, 1, 1), 50.0), {"units": "W/m2"}),
         "latitude": (("y", "x"), [[45.0]])},
        coords={"time": ("time", time, {"units": "seconds since 2005-01-01 00:00:00"})},
        attrs={"site_code": "XX-Reg"},
    )
    path = tmp_path / "XX-Reg_2005-2005_FLUXNET2015_Met.nc"
    ds.to_netcdf(path, format=fmt)
    return path


def _quiet_read(path, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        return read_site(path, find_partner=False, **options)


def test_plumber2_time_defects(tmp_path):
    assert _quiet_read(_site_nc(tmp_path)).sizes["time"] == 6
    # was: ValueError "NaTType does not support strftime" (a missing time value)
    with pytest.raises(DataError, match=r"_Met.nc: variable time: value at index 1 is missing \(NaN or fill value\)"):
        _quiet_read(_site_nc(tmp_path, time=[0.0, np.nan, 3600.0, 5400.0]))
    # was: pandas OutOfBoundsDatetime "Result is too large for pandas.Timedelta" (a time 300 years off)
    with pytest.raises(DataError, match=re.escape("_Met.nc: variable time: 1703-12-17 07:06:40 at index 1 is outside "
                                                  "the years 1850..2140")):
        _quiet_read(_site_nc(tmp_path, time=[0.0, -9.5e9, 3600.0, 5400.0]))
    # was: KeyError 'time' (one time step: squeezed away with y and x)
    with pytest.raises(DataError, match=r"_Met.nc: 1 time step\(s\); expected a time series"):
        _quiet_read(_site_nc(tmp_path, time=[0.0]))


def test_plumber2_value_defects(tmp_path):
    # was: ValueError "could not convert string to float" (a text variable, netCDF-4 strings)
    with pytest.raises(DataError, match=r"_Met.nc: variable Tair has type \S+; expected numbers"):
        _quiet_read(_site_nc(tmp_path, tair=np.array(["abc"] * 6, dtype=object)))
    # was: +inf read into the dataset silently
    with pytest.raises(DataError, match=re.escape("_Met.nc: variable Tair: infinite value at time 2005-01-01 01:00:00; "
                                                  "expected finite numbers")):
        _quiet_read(_site_nc(tmp_path, tair=[280.0, 281.0, np.inf, 280.0, 280.0, 280.0]))
    # was: a present value with a NaN flag became flag -1 (unusable) silently
    with pytest.warns(DataWarning, match=re.escape("_Met.nc: variable Tair_qc: 1 present value(s) have no quality flag "
                                                   "(first at time 2005-01-01 00:30:00); flagged -1")):
        ds = read_site(_site_nc(tmp_path, tair_qc=[0, np.nan, 0, 0, 0, 0]), find_partner=False, metadata=dict(
            longitude=5.0, elevation=10.0, igbp="GRA", canopy_height=0.5, measurement_height=2.0, utc_offset_h=1.0))
    assert ds["Tair_qc"].values.tolist() == [0, -1, 0, 0, 0, 0] and np.isfinite(ds["Tair"]).all()


def test_plumber2_netcdf4_attribute_error_is_a_data_error(tmp_path, monkeypatch):
    # was: AttributeError "NetCDF: Can't open HDF5 attribute" from netCDF4 (a corrupted attribute)
    path = _site_nc(tmp_path)

    def corrupted(*args, **kwargs):
        raise AttributeError("NetCDF: Can't open HDF5 attribute")

    monkeypatch.setattr(xr, "open_dataset", corrupted)
    with pytest.raises(DataError, match=r"_Met.nc: cannot open as netCDF \(\d+ bytes; a truncated or damaged file\?\): AttributeError: NetCDF: Can.t open HDF5 attribute"):
        read_site(path, find_partner=False)


def _config(tmp_path: Path, text: str | bytes) -> Path:
    path = _config_dir(tmp_path) / "run.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_config_not_utf8_names_the_line(tmp_path):
    # was: UnicodeDecodeError
    path = _config(tmp_path, VALID.encode().replace(b"max_qc", b"max_\xffqc"))
    with pytest.raises(ConfigError, match=re.escape(f"cannot read config {path}: line 7: byte 158 (b'\\xff') is not UTF-8 "
                                                    "text; expected a UTF-8 YAML file")):
        load_config(path)


def test_config_forbidden_character_names_the_line(tmp_path):
    # was: "... in "<unicode string>", position 91" (no line)
    path = _config(tmp_path, VALID.replace("max_qc: 1", "max_qc: \x001"))
    with pytest.raises(ConfigError, match=re.escape(f"invalid YAML in {path}: line 7: character '\\x00' (#x0000) is not "
                                                    "allowed in YAML")):
        load_config(path)


def test_config_duplicate_key_is_an_error(tmp_path):
    # was: loaded, with max_qc 3: the first value dropped silently
    path = _config(tmp_path, VALID.replace("  max_qc: 1\n", "  max_qc: 1\n  max_qc: 3\n"))
    with pytest.raises(ConfigError, match=r"found duplicate key 'max_qc' \(first given on line 7\)\n.*line 8, column 3"):
        load_config(path)
    # a key merged in with << may still be overridden
    merged = VALID.replace("output: {run_dir: runs, overwrite: false}",
                           "defaults: &out {run_dir: runs, overwrite: true}\noutput: {<<: *out, overwrite: false}")
    with pytest.raises(ConfigError, match="unknown key 'defaults'"):  # the anchor key itself is not a config key
        load_config(_config(tmp_path, merged))


def test_config_tag_that_cannot_convert_names_the_line(tmp_path):
    # was: ValueError "could not convert string to float: 'name'"
    path = _config(tmp_path, "!!float " + VALID)
    with pytest.raises(ConfigError, match=r"cannot read 'name' as !!float: could not convert string to float: 'name'\n"
                                          r'  in "<unicode string>", line 1, column 1'):
        load_config(path)


def test_config_site_paths(tmp_path):
    # was: RuntimeError "Could not determine home directory." ('~user' with an unknown user)
    path = _config(tmp_path, VALID.replace("- sites/A_HH.csv", "- ~nosuchuser_hybridlsm/A_HH.csv"))
    with pytest.raises(ConfigError, match=r"data.sites\[0\].path: cannot expand '~' in '~nosuchuser_hybridlsm/A_HH.csv'"):
        load_config(path)
    # was: "file not found: <dir>"
    path = _config(tmp_path, VALID.replace("- sites/A_HH.csv", "- sites"))
    with pytest.raises(ConfigError, match=re.escape(f"data.sites[0].path: is a directory, not a file: {tmp_path / 'sites'}")):
        load_config(path)
    with pytest.raises(ConfigError, match=re.escape(f"cannot read config {tmp_path}: Is a directory")):
        load_config(tmp_path)
