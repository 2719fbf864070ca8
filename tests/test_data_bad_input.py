"""Bad input: every corruption gives a DataError (or, where usable, a DataWarning) that names the
file, the column, the line or time and what was expected; nothing is dropped silently.

The files are small CSVs derived from the head of the real US-Wkg file (written to temporary
directories) plus synthetic aggregated files.
"""

from __future__ import annotations

import csv
import io
import re
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hybridlsm.data import DataError, DataWarning, read_fluxnet_csv

NAME = "US-Wkg_200405-200412_HH.csv"
N_ROWS = 48


@pytest.fixture(scope="module")
def head_lines(shared_data) -> list[str]:
    """Header and the first 48 data lines of the US-Wkg canonical file."""
    return (shared_data / "fluxnet" / NAME).read_text().splitlines()[: N_ROWS + 1]


def write(tmp_path: Path, lines: list[str], name: str = NAME, newline: bool = True) -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + ("\n" if newline else ""))
    return path


def set_cell(lines: list[str], row: int, column: str, value: str) -> list[str]:
    """Copy of ``lines`` with data row ``row`` (0-based, line row + 2) of ``column`` set to ``value``."""
    header = lines[0].split(",")
    out = list(lines)
    fields = out[row + 1].split(",")
    fields[header.index(column)] = value
    out[row + 1] = ",".join(fields)
    return out


def map_column(lines: list[str], column: str, fn) -> list[str]:
    header = lines[0].split(",")
    j = header.index(column)
    out = [lines[0]]
    for ln in lines[1:]:
        f = ln.split(",")
        if f[j] != "-9999":
            f[j] = fn(f[j])
        out.append(",".join(f))
    return out


def test_head_reads_cleanly(head_lines, tmp_path):
    # no sites.csv beside the file: the only warning names the site metadata it lacks
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = read_fluxnet_csv(write(tmp_path, head_lines))
    assert [str(w.message) for w in caught] == [
        f"{tmp_path / NAME}: site US-Wkg: no latitude, longitude, elevation, igbp, canopy_height, "
        "measurement_height, utc_offset_h in the file or the site table; kept missing (NaN, or '' for "
        "igbp); give them with metadata= or a sites.csv"
    ]
    assert ds.attrs["missing_metadata"].split() == ["latitude", "longitude", "elevation", "igbp", "canopy_height",
                                                    "measurement_height", "utc_offset_h"]
    assert ds.attrs["igbp"] == "" and np.isnan(ds.attrs["latitude"])
    assert ds.sizes["time"] == N_ROWS
    assert ds["time"].values[-1] == np.datetime64("2004-05-07T10:30")


def test_truncated_file(head_lines, tmp_path):
    text = "\n".join(head_lines)
    path = tmp_path / NAME
    path.write_text(text[: len(text) - 40])  # cut inside the last line
    with pytest.raises(DataError, match=rf"{NAME}: line 49 has \d+ fields, expected 22 as in the header \(the file looks truncated\)"):
        read_fluxnet_csv(path)


def test_cut_inside_last_value_warns(head_lines, tmp_path):
    text = "\n".join(head_lines)
    path = tmp_path / NAME
    path.write_text(text[:-2])  # last line keeps all its fields, the last value loses digits
    with pytest.warns(DataWarning, match=rf"{NAME}: the file does not end with a newline; its last line \(49\) may be truncated"):
        ds = read_fluxnet_csv(path)
    assert ds.sizes["time"] == N_ROWS


def test_extra_field(head_lines, tmp_path):
    lines = list(head_lines)
    lines[9] += ",1.0"
    with pytest.raises(DataError, match=rf"{NAME}: line 10 has 23 fields, expected 22 as in the header; 1 malformed line"):
        read_fluxnet_csv(write(tmp_path, lines))


def test_empty_and_header_only(head_lines, tmp_path):
    with pytest.raises(DataError, match=rf"{NAME}: empty file; expected a header line and data rows"):
        read_fluxnet_csv(write(tmp_path, [""], newline=False))
    with pytest.raises(DataError, match=rf"{NAME}: no data rows after the header"):
        read_fluxnet_csv(write(tmp_path, head_lines[:1]))


def test_not_utf8(tmp_path):
    path = tmp_path / NAME
    path.write_bytes(b"TIMESTAMP_START,TIMESTAMP_END,TA_F\n200405061100,200405061130,\xff\xfe\n")
    with pytest.raises(DataError, match=rf"{NAME}: byte \d+ is not UTF-8 text"):
        read_fluxnet_csv(path)


@pytest.mark.parametrize("drop", ["TIMESTAMP_END", "TIMESTAMP_START"])
def test_missing_required_column(head_lines, tmp_path, drop):
    header = head_lines[0].split(",")
    j = header.index(drop)
    lines = [",".join(f for i, f in enumerate(ln.split(",")) if i != j) for ln in head_lines]
    expect = ("missing required column TIMESTAMP_END" if drop == "TIMESTAMP_END"
              else "missing required column TIMESTAMP_START")
    with pytest.raises(DataError, match=rf"{NAME}: {expect}"):
        read_fluxnet_csv(write(tmp_path, lines))


def test_no_recognised_variable(tmp_path):
    lines = ["TIMESTAMP_START,TIMESTAMP_END,FOO", "200405061100,200405061130,1", "200405061130,200405061200,2"]
    with pytest.raises(DataError, match=rf"{NAME}: no recognised variable column; expected FLUXNET2015 columns such as TA_F"):
        read_fluxnet_csv(write(tmp_path, lines))


def test_temperature_in_kelvin(head_lines, tmp_path):
    lines = map_column(head_lines, "TA_F", lambda v: f"{float(v) + 273.15:.3f}")
    with pytest.raises(DataError, match=rf"{NAME}: column TA_F \(Tair\): 48 of 48 values outside the plausible range 223.15..333.15 K .*first at line 2 \(2004-05-06 11:00\).*expected degC .* the values look like K, not degC"):
        read_fluxnet_csv(write(tmp_path, lines))


def test_pressure_in_hpa(head_lines, tmp_path):
    lines = map_column(head_lines, "PA_F", lambda v: f"{float(v) * 10:.2f}")
    with pytest.raises(DataError, match=rf"{NAME}: column PA_F \(Psurf\): 48 of 48 values outside the plausible range 50000..110000 Pa.*the values look like hPa, not kPa"):
        read_fluxnet_csv(write(tmp_path, lines))


def test_vpd_in_kpa(head_lines, tmp_path):
    lines = map_column(head_lines, "VPD_F", lambda v: f"{float(v) / 10:.4f}")
    with pytest.raises(DataError, match=rf"{NAME}: column VPD_F: median ratio of VPD to e_s\(TA\)\(1 - RH/100\) is 0.1 over 48 rows; expected about 1 with VPD in hPa \(the values look like kPa\)"):
        read_fluxnet_csv(write(tmp_path, lines))


def test_single_implausible_value_warns(head_lines, tmp_path):
    lines = set_cell(head_lines, 4, "WS_F", "55")
    with pytest.warns(DataWarning, match=rf"{NAME}: column WS_F \(Wind\): 1 of 48 values outside the plausible range 0..40 m s-1 .*first at line 6 \(2004-05-06 13:00\) \(value 55 m s-1\)"):
        ds = read_fluxnet_csv(write(tmp_path, lines))
    assert ds["Wind"].values[4] == 55.0  # kept, not dropped


def test_duplicated_timestamp(head_lines, tmp_path):
    lines = head_lines[:5] + [head_lines[4]] + head_lines[5:]
    with pytest.raises(DataError, match=rf"{NAME}: column TIMESTAMP_START: duplicated timestamp 2004-05-06 12:30 at line 6 \(also at line 5\); 1 duplicate\(s\) in all; expected strictly increasing times"):
        read_fluxnet_csv(write(tmp_path, lines))


def test_non_monotonic(head_lines, tmp_path):
    lines = list(head_lines)
    lines[10], lines[11] = lines[11], lines[10]
    with pytest.raises(DataError, match=rf"{NAME}: column TIMESTAMP_START: timestamps not increasing: 2004-05-06 15:30 at line 12 follows 2004-05-06 16:00; expected strictly increasing times"):
        read_fluxnet_csv(write(tmp_path, lines))


def test_irregular_step(head_lines, tmp_path):
    lines = set_cell(set_cell(head_lines, 7, "TIMESTAMP_START", "200405061440"), 7, "TIMESTAMP_END", "200405061510")
    with pytest.raises(DataError, match=rf"{NAME}: column TIMESTAMP_START: irregular time step of 0 days 00:40:00 between 2004-05-06 14:00 and 2004-05-06 14:40 at line 9; expected a multiple of 0 days 00:30:00"):
        read_fluxnet_csv(write(tmp_path, lines))


def test_end_minus_start_mismatch(head_lines, tmp_path):
    lines = set_cell(head_lines, 3, "TIMESTAMP_END", "200405061330")
    with pytest.raises(DataError, match=rf"{NAME}: TIMESTAMP_END - TIMESTAMP_START = 0 days 01:00:00 at line 5 \(2004-05-06 12:30\); expected 0 days 00:30:00"):
        read_fluxnet_csv(write(tmp_path, lines))


def test_hourly_step_in_a_hh_file(tmp_path):
    lines = ["TIMESTAMP_START,TIMESTAMP_END,TA_F", "200405061100,200405061200,20", "200405061200,200405061300,21"]
    with pytest.raises(DataError, match=rf"{NAME}: the file name says HH but the time step is 0 days 01:00:00; expected 30 min"):
        read_fluxnet_csv(write(tmp_path, lines))
    ds = read_fluxnet_csv(write(tmp_path, lines, name="FLX_US-Wkg_FLUXNET2015_FULLSET_HR_2004-2004_1-4.csv"))
    assert ds.attrs["time_step_s"] == 3600.0 and ds.attrs["time_resolution"] == "HR"


def test_bad_timestamp_text(head_lines, tmp_path):
    lines = set_cell(head_lines, 2, "TIMESTAMP_START", "2004O5061200")
    with pytest.raises(DataError, match=rf"{NAME}: column TIMESTAMP_START: '2004O5061200' at line 4 is not a 12-digit timestamp"):
        read_fluxnet_csv(write(tmp_path, lines))
    lines = set_cell(head_lines, 2, "TIMESTAMP_START", "200413061200")
    with pytest.raises(DataError, match=rf"{NAME}: column TIMESTAMP_START: '200413061200' at line 4 is not a valid date"):
        read_fluxnet_csv(write(tmp_path, lines))


def test_missing_rows_inserted_with_warning(head_lines, tmp_path):
    lines = head_lines[:10] + head_lines[13:]  # remove lines 11-13 (3 half-hours)
    with pytest.warns(DataWarning, match=rf"{NAME}: column TIMESTAMP_START: 3 missing rows in the time axis \(step 0 days 00:30:00\) inserted as missing values: 2004-05-06 15:30..2004-05-06 16:30 \(3 rows\)"):
        ds = read_fluxnet_csv(write(tmp_path, lines))
    assert ds.sizes["time"] == N_ROWS
    assert ds["Tair"].isnull().values[9:12].all() and ds["Tair"].notnull().values[[8, 12]].all()
    assert (ds["Qh_qc"].values[9:12] == -1).all()


def test_no_valid_target_values(head_lines, tmp_path):
    lines = map_column(map_column(head_lines, "H_F_MDS", lambda v: "-9999"), "LE_F_MDS", lambda v: "-9999")
    with pytest.raises(DataError, match=rf"{NAME}: no valid target values: column\(s\) H_F_MDS, LE_F_MDS \(Qh, Qle\) hold only missing values \(-9999\) in all 48 rows; expected at least one valid value"):
        read_fluxnet_csv(write(tmp_path, lines))
    only_le = map_column(head_lines, "LE_F_MDS", lambda v: "-9999")
    with pytest.warns(DataWarning, match=rf"{NAME}: column LE_F_MDS \(Qle\) holds only missing values"):
        ds = read_fluxnet_csv(write(tmp_path, only_le))
    assert ds["Qle"].isnull().all() and ds["Qh"].notnull().all()



def test_impossible_or_conflicting_site_metadata_is_refused(head_lines, tmp_path, shared_data):
    """Site metadata were never checked: a latitude of 200 or a swapped LAT/LON moved the sun (the
    estimated LWdown) silently, a text latitude became a traceback in `hybridlsm run`, and of two
    sites.csv rows that disagree the first won without a word."""
    path = write(tmp_path, head_lines)
    for metadata, text in (({"latitude": 200.0}, "site metadata key latitude is 200, outside -90..90 degrees north"),
                           ({"utc_offset_h": 100}, "site metadata key utc_offset_h is 100, outside -12..14 h from UTC"),
                           ({"latitude": "31.7N"}, "site metadata key latitude is '31.7N'; expected a number in degrees "
                                                   "north"),
                           ({"canopy_height": True}, "site metadata key canopy_height is True; expected a number in m")):
        with pytest.raises(DataError, match=rf"{NAME}: " + re.escape(text)):
            read_fluxnet_csv(path, metadata=metadata)
    lat = read_fluxnet_csv(path, metadata={"latitude": np.array(31.7), "elevation": np.int64(1531)}).attrs
    assert lat["latitude"] == 31.7 and lat["elevation"] == 1531  # numpy numbers are numbers
    table = (shared_data / "fluxnet" / "sites.csv").read_text().splitlines()
    wkg = next(i for i, ln in enumerate(table) if ln.startswith("US-Wkg,"))
    fields = next(csv.reader([table[wkg]]))
    swapped = [*fields[:2], fields[3], fields[2], *fields[4:]]  # LAT and LON swapped
    sites = tmp_path / "sites.csv"
    sites.write_text("\n".join([table[0], _csv_line(swapped)]) + "\n")
    with pytest.raises(DataError, match=r"sites.csv: column LAT, row 2: -109.942 is outside -90..90 degrees north"):
        read_fluxnet_csv(path, sites=sites)
    other = [*fields[:8], "-6", *fields[9:]]  # the same file, another UTC offset
    sites.write_text("\n".join([table[0], table[wkg], _csv_line(other)]) + "\n")
    with pytest.raises(DataError, match=rf"sites.csv: file {NAME} is listed on rows \[2, 3\]; expected one row"):
        read_fluxnet_csv(path, sites=sites)
    renamed = write(tmp_path, head_lines, name="wkg.csv")  # not listed: looked up by site id
    sites.write_text("\n".join([table[0], table[wkg], _csv_line([*other[:9], "US-Wkg_2005.csv", *other[10:]])]) + "\n")
    with pytest.raises(DataError, match=r"sites.csv: site US-Wkg is on rows \[2, 3\], which differ in UTC_OFFSET_H"):
        read_fluxnet_csv(renamed, sites=sites, site_id="US-Wkg")
    same = [*fields[:2], fields[2] + "0", *fields[3:9], "US-Wkg_2005.csv", *fields[10:]]  # 31.73650: the same number
    sites.write_text("\n".join([table[0], table[wkg], _csv_line(same)]) + "\n")
    assert read_fluxnet_csv(renamed, sites=sites, site_id="US-Wkg").attrs["latitude"] == float(fields[2])


def _csv_line(fields: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(fields)
    return out.getvalue()

def test_unknown_site_id(head_lines, tmp_path, shared_data):
    path = write(tmp_path, head_lines, name="ZZ-Top_200405-200412_HH.csv")
    sites = shared_data / "fluxnet" / "sites.csv"
    known = sorted(set(pd.read_csv(sites, dtype=str)["SITE_ID"]))  # from the table: adding a site never breaks this
    assert len(known) >= 8 and "ZZ-Top" not in known
    with pytest.raises(DataError, match=re.escape(
            f"sites.csv: unknown site id 'ZZ-Top' (for file ZZ-Top_200405-200412_HH.csv); known site ids: {known}")):
        read_fluxnet_csv(path, sites=sites)


def test_non_numeric_and_empty_cells(head_lines, tmp_path):
    with pytest.raises(DataError, match=rf"{NAME}: column WS_F: non-numeric value 'calm' at line 5; expected a number, -9999 for missing \(1 such cell\(s\)\)"):
        read_fluxnet_csv(write(tmp_path, set_cell(head_lines, 3, "WS_F", "calm")))
    with pytest.warns(DataWarning, match=rf"{NAME}: column WS_F: 1 empty or NaN cell\(s\) read as missing \(first at line 5\); the FLUXNET missing code is -9999"):
        ds = read_fluxnet_csv(write(tmp_path, set_cell(head_lines, 3, "WS_F", "")))
    assert np.isnan(ds["Wind"].values[3]) and ds.sizes["time"] == N_ROWS
    with pytest.raises(DataError, match=rf"{NAME}: column WS_F: infinite value at line 5"):
        read_fluxnet_csv(write(tmp_path, set_cell(head_lines, 3, "WS_F", "inf")))
    # a column of only TRUE/FALSE, which pandas parses as bool: was read as 1/0 without a word
    for column in ("WS_F", "H_F_MDS_QC"):
        truth = [ln if i == 0 else ",".join("FALSE" if c == column else f for c, f in zip(head_lines[0].split(","),
                                                                                          ln.split(",")))
                 for i, ln in enumerate(head_lines)]
        with pytest.raises(DataError, match=rf"{NAME}: column {column}: non-numeric value 'FALSE' at line 2"):
            read_fluxnet_csv(write(tmp_path, truth))


def test_bad_qc_flags(head_lines, tmp_path):
    with pytest.raises(DataError, match=rf"{NAME}: column H_F_MDS_QC: value 7 at line 5 \(2004-05-06 12:30\); expected a FLUXNET quality flag 0, 1, 2 or 3 \(or -9999\)"):
        read_fluxnet_csv(write(tmp_path, set_cell(head_lines, 3, "H_F_MDS_QC", "7")))
    with pytest.warns(DataWarning, match=rf"{NAME}: column H_F_MDS_QC: 1 value\(s\) of Qh have no quality flag \(first at line 5 \(2004-05-06 12:30\)\); flagged -1"):
        ds = read_fluxnet_csv(write(tmp_path, set_cell(head_lines, 3, "H_F_MDS_QC", "-9999")))
    assert ds["Qh_qc"].values[3] == -1 and ds["Qh"].values[3] == pytest.approx(float(head_lines[4].split(",")[16]))


def test_blank_lines_ignored_with_warning(head_lines, tmp_path):
    lines = head_lines[:20] + [""] + head_lines[20:]
    with pytest.warns(DataWarning, match=rf"{NAME}: 1 blank line\(s\) ignored \(first: line 21\)"):
        ds = read_fluxnet_csv(write(tmp_path, lines))
    assert ds.sizes["time"] == N_ROWS


# ---- aggregated files (synthetic)

MM_HEADER = "TIMESTAMP,TA_F,TA_F_QC,H_F_MDS,H_F_MDS_QC,LE_F_MDS,LE_F_MDS_QC"


def test_aggregated_errors(tmp_path):
    name = "FLX_XX-Agg_FLUXNET2015_FULLSET_MM_2004-2004_1-4.csv"
    good = [MM_HEADER, "200401,8.9,0.5,72.7,1.0,33.8,0.9", "200402,8.3,1.0,70.1,1.0,30.2,1.0"]
    ds = read_fluxnet_csv(write(tmp_path, good, name=name))
    assert ds["Qh_qc_fraction"].values.tolist() == [1.0, 1.0] and ds["Tair_qc_fraction"].values[0] == 0.5
    bad = good[:2] + ["200402,8.3,1.5,70.1,1.0,30.2,1.0"]
    with pytest.raises(DataError, match=rf"{name}: column TA_F_QC: value 1.5 at line 3 \(2004-02-01 00:00\); expected a fraction 0..1"):
        read_fluxnet_csv(write(tmp_path, bad, name=name))
    dup = good + ["200402,8.3,1.0,70.1,1.0,30.2,1.0"]
    with pytest.raises(DataError, match=rf"{name}: column TIMESTAMP: duplicated timestamp 2004-02 at line 4"):
        read_fluxnet_csv(write(tmp_path, dup, name=name))
    gap = good + ["200405,20.3,1.0,70.1,1.0,30.2,1.0"]
    with pytest.warns(DataWarning, match=rf"{name}: column TIMESTAMP: 2 missing rows in the time axis \(step 1 month\) inserted as missing values: 2004-03..2004-04 \(2 rows\)"):
        ds = read_fluxnet_csv(write(tmp_path, gap, name=name))
    assert ds.sizes["time"] == 5 and ds["Tair"].isnull().values.tolist() == [False, False, True, True, False]
    assert ds["time_end"].values[-1] == np.datetime64("2004-06-01")
    wrong = ["TIMESTAMP,TA_F,H_F_MDS,LE_F_MDS", "20040101,8.9,72.7,33.8"]
    with pytest.raises(DataError, match=rf"{name}: the file name says MM but TIMESTAMP '20040101' at line 2 is DD \(8 digits\)"):
        read_fluxnet_csv(write(tmp_path, wrong, name=name))


def test_weekly_gap_is_an_error(tmp_path):
    name = "AMF_XX-Agg_FLUXNET_FULLSET_WW_2004-2004_3-5.csv"
    lines = ["TIMESTAMP_START,TIMESTAMP_END,TA_F,H_F_MDS,LE_F_MDS", "20040101,20040107,8.6,73.4,34.0",
             "20040115,20040121,9.1,60.0,20.0"]
    with pytest.raises(DataError, match=rf"{name}: TIMESTAMP_START 2004-01-15 at line 3 does not follow the previous week, which ends 2004-01-07; expected consecutive weeks"):
        read_fluxnet_csv(write(tmp_path, lines, name=name))


# ---- property-based: random corruptions


def _corrupt(lines: list[str], ops) -> str:
    """Apply corruption operations to the lines; return the file text."""
    lines = list(lines)
    header = lines[0].split(",")
    truncate_at = None
    for op in ops:
        kind = op[0]
        n = len(lines) - 1
        if n < 1:
            break
        if kind == "delete":
            del lines[1 + op[1] % n]
        elif kind == "duplicate":
            i = 1 + op[1] % n
            lines.insert(i, lines[i])
        elif kind == "swap":
            i, j = 1 + op[1] % n, 1 + op[2] % n
            lines[i], lines[j] = lines[j], lines[i]
        elif kind == "cell":
            i = 1 + op[1] % n
            f = lines[i].split(",")
            f[op[2] % len(f)] = op[3]
            lines[i] = ",".join(f)
        elif kind == "missing":
            i = 1 + op[1] % n
            f = lines[i].split(",")
            j = 2 + op[2] % max(len(f) - 2, 1)
            if j < len(f):
                f[j] = "-9999"
            lines[i] = ",".join(f)
        elif kind == "drop_column":
            j = op[1] % len(header)
            lines = [",".join(x for k, x in enumerate(ln.split(",")) if k != j) for ln in lines]
            header = lines[0].split(",")
        elif kind == "extra_field":
            i = 1 + op[1] % n
            lines[i] += ",0"
        elif kind == "blank":
            lines.insert(1 + op[1] % n, "")
        elif kind == "truncate":
            truncate_at = op[1]
    text = "\n".join(lines) + "\n"
    if truncate_at is not None:
        text = text[: truncate_at % (len(text) + 1)]
    return text


_cell_text = st.one_of(
    st.text(alphabet="0123456789.-+eE", min_size=0, max_size=8),
    st.sampled_from(["NaN", "abc", "-9999", "1e400", "", " ", "0x1F", "3", "200405061100"]),
)
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("delete"), st.integers(0, 200)),
        st.tuples(st.just("duplicate"), st.integers(0, 200)),
        st.tuples(st.just("swap"), st.integers(0, 200), st.integers(0, 200)),
        st.tuples(st.just("cell"), st.integers(0, 200), st.integers(0, 30), _cell_text),
        st.tuples(st.just("missing"), st.integers(0, 200), st.integers(0, 30)),
        st.tuples(st.just("drop_column"), st.integers(0, 30)),
        st.tuples(st.just("extra_field"), st.integers(0, 200)),
        st.tuples(st.just("blank"), st.integers(0, 200)),
        st.tuples(st.just("truncate"), st.integers(0, 20000)),
    ),
    min_size=1,
    max_size=3,
)


def _expected_rows(text: str):
    """Timestamps (TIMESTAMP_START) of the data lines that a reader must keep, and intact lines."""
    lines = [ln for ln in text.split("\n")[1:] if ln.strip()]
    header = text.split("\n")[0].split(",")
    if "TIMESTAMP_START" not in header:
        return None, header, lines
    j = header.index("TIMESTAMP_START")
    times = []
    for ln in lines:
        f = ln.split(",")
        times.append(pd.Timestamp(f[j].strip()) if len(f) > j and len(f[j].strip()) == 12 else None)
    return times, header, lines


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_ops)
def test_random_corruptions_read_or_raise(head_lines, ops):
    text = _corrupt(head_lines, ops)
    original = {ln.split(",")[0]: ln for ln in head_lines[1:]}
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / NAME
        path.write_text(text)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DataWarning)
                ds = read_fluxnet_csv(path)
        except DataError as exc:
            assert NAME in str(exc)
            event(f"DataError: {str(exc).split(NAME)[1][:40]}")
            return
    event("read")
    # read: every data line of the file is a row, at its time (no row dropped)
    times, header, lines = _expected_rows(text)
    assert times is not None and all(t is not None for t in times)
    out_times = pd.DatetimeIndex(ds["time"].values)
    assert len(out_times) == (times[-1] - times[0]) / pd.Timedelta("30min") + 1
    assert set(times) <= set(out_times)
    assert len(out_times) >= len(lines)
    # intact original lines keep their values
    if "TA_F" in header and "Tair" in ds:
        j = header.index("TA_F")
        for ln in lines:
            if original.get(ln.split(",")[0]) == ln and ln.count(",") == head_lines[0].count(","):
                t = pd.Timestamp(ln.split(",")[0])
                raw = float(ln.split(",")[j])
                got = ds["Tair"].sel(time=t).item()
                if raw == -9999:
                    assert np.isnan(got)
                else:
                    assert got == pytest.approx(raw + 273.15)


def test_empty_igbp_in_site_table(head_lines, tmp_path, shared_data):
    table = pd.read_csv(shared_data / "fluxnet" / "sites.csv", dtype=str, keep_default_na=False)
    table.loc[table["SITE_ID"] == "US-Wkg", "IGBP"] = ""
    sites = tmp_path / "sites.csv"  # beside the file: used without sites=
    table.to_csv(sites, index=False)
    path = write(tmp_path, head_lines)
    with pytest.warns(DataWarning, match=re.escape(
            f"{path}: site US-Wkg: no igbp, measurement_height in the file or the site table; kept missing")):
        ds = read_fluxnet_csv(path)
    assert ds.attrs["igbp"] == "" and ds.attrs["missing_metadata"] == "igbp measurement_height"
    assert ds.attrs["canopy_height"] == 0.5 and ds.attrs["utc_offset_h"] == -7.0  # the rest of the row is read
