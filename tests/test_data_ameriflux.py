"""AmeriFlux BASE reader (format "ameriflux-base") on the real US-CRT file against its canonical
conversion (shared/data README §3 US-CRT, §4 AmeriFlux BASE)."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

from hybridlsm.data import (
    DataError,
    DataWarning,
    add_derived,
    detect_format,
    qc_mask,
    read_ameriflux_base,
    read_site,
)

BASE = "AMF_US-CRT_BASE_HH_2-5.csv"
CANONICAL = "US-CRT_201101-201112_HH.csv"


@pytest.fixture(scope="module")
def base_path(shared_data):
    return shared_data / "fluxnet" / "original" / BASE


@pytest.fixture(scope="module")
def crt(base_path, shared_data):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = read_site(base_path, sites=shared_data / "fluxnet" / "sites.csv")
    return ds, [str(w.message) for w in caught if issubclass(w.category, DataWarning)]


@pytest.fixture(scope="module")
def canonical(shared_data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)  # no measurement height in sites.csv
        return read_site(shared_data / "fluxnet" / CANONICAL)


def test_detected_and_read(crt, base_path):
    assert detect_format(base_path) == "ameriflux-base"
    ds, _ = crt
    assert ds.sizes["time"] == 17520
    assert ds["time"].values[0] == np.datetime64("2011-01-01T00:00")  # TIMESTAMP_START, LST
    assert ds["time"].values[-1] == np.datetime64("2011-12-31T23:30")
    a = ds.attrs
    assert (a["source_format"], a["source_version"], a["time_step_s"], a["time_resolution"]) == (
        "ameriflux-base", "2-5", 1800.0, "HH")
    # site metadata from sites.csv by site id (the BASE file name is not in its FILE column)
    assert (a["site_id"], a["site_name"], a["igbp"]) == ("US-CRT", "Curtice Walter-Berger cropland", "CRO")
    assert (a["latitude"], a["longitude"], a["elevation"], a["canopy_height"], a["utc_offset_h"]) == (
        41.628495, -83.347086, 180.0, 1.125, -5.0)
    assert np.isnan(a["measurement_height"]) and a["missing_metadata"] == "measurement_height"
    assert a["unmapped_columns"].split(", ") == [
        "H2O", "FC", "NEE_PI", "CH4", "FCH4", "WD", "ZL", "MO_LENGTH", "W_SIGMA", "V_SIGMA", "U_SIGMA",
        "T_SONIC", "T_SONIC_SIGMA", "WTD", "PPFD_IN"]
    assert set(ds.data_vars) == {"Tair", "RH", "Psurf", "Wind", "SWdown", "LWdown", "Precip", "Ustar",
                                 "CO2air", "Rnet", "SWup", "LWup", "Qg", "Qh", "Qle", "SoilTemp", "SoilMoistVol"}


def test_warnings_name_every_repair(crt, base_path):
    _, msgs = crt
    assert len(msgs) == 3
    assert msgs[0] == (f"{base_path}: Qg from replicate columns G_1_1_1, G_2_1_1: 395 step(s) with only some "
                       "replicates present set to missing (first at line 4154 (2011-03-28 11:00); steps with "
                       "each column present among them: G_1_1_1 395, G_2_1_1 0)")
    assert msgs[1].startswith(f"{base_path}: SoilTemp from replicate columns TS_1_1_1, TS_2_1_1: 1982 step(s)")
    assert msgs[2].startswith(f"{base_path}: site US-CRT: no measurement_height in the file or the site table")


def test_valid_counts_and_no_qc(crt):
    ds, _ = crt
    # README §5.1: QC = 0 counts H 11 403, LE 9 221 (BASE is measured only; no QC flags here)
    assert int(ds["Qh"].notnull().sum()) == 11403 and int(ds["Qle"].notnull().sum()) == 9221
    assert not [v for v in ds.data_vars if v.endswith("_qc")]
    assert int(qc_mask(ds, "Qh", 0).sum()) == 11403


def test_values_at_rows(crt):
    ds, _ = crt
    rows = [0, 4153, 9000, 9010, 17519]
    # BASE file values (TA degC -> K, G: mean of G_1_1_1 and G_2_1_1)
    np.testing.assert_allclose(ds["Tair"].values[rows] - 273.15, [11.17954, 1.132117, 25.9674, 25.74896, 4.515653], atol=1e-9)
    np.testing.assert_allclose(ds["SWdown"].values[rows], [0.0, 842.645, 783.7076, 309.7284, 0.0], atol=1e-9)
    np.testing.assert_allclose(ds["Qh"].values[rows[1:]], [264.587, 253.895, 78.955, -10.8067], atol=1e-9)
    np.testing.assert_allclose(ds["Qle"].values[rows[1:]], [67.077261, 226.30487, 95.934675, 10.958531], atol=1e-6)
    np.testing.assert_allclose(ds["Rnet"].values[rows], [7.06351, 621.4706, 574.9448, 201.7643, -3.366957], atol=1e-9)
    np.testing.assert_allclose(ds["Qg"].values[rows], [(27.4496 + 37.31582) / 2, (203.499 + 263.6772) / 2,
                                                      (33.49264 + 87.96897) / 2, (10.36888 + 26.39734) / 2,
                                                      (-2.774614 - 2.106855) / 2], atol=1e-9)
    assert np.isnan(ds["Qh"].values[0]) and np.isnan(ds["Qle"].values[0])
    assert ds["Psurf"].values[-1] == pytest.approx(99546.7)  # PA kPa -> Pa
    assert ds["Precip"].values[1] == pytest.approx(0.254 / 1800.0)  # P mm per half-hour -> kg m-2 s-1
    assert ds["SoilMoistVol"].values[0] == pytest.approx(0.4513234)  # SWC % -> m3 m-3


def test_same_as_canonical_file(crt, canonical):
    ds, _ = crt
    can = canonical
    assert can.sizes["time"] == ds.sizes["time"] == 17520
    assert np.array_equal(ds["time"].values, can["time"].values)
    rows = [0, 4153, 9000, 9010, 17519]
    # canonical numbers (6 significant digits)
    np.testing.assert_allclose(can["Tair"].values[rows] - 273.15, [11.1795, 1.13212, 25.9674, 25.749, 4.51565], atol=1e-9)
    np.testing.assert_allclose(can["Qg"].values[rows], [32.3827, 233.588, 60.7308, 18.3831, -2.44073], atol=1e-9)
    for v in ("Tair", "SWdown", "LWdown", "RH", "Psurf", "Precip", "Wind", "Ustar", "CO2air", "Rnet", "SWup",
              "LWup", "Qg", "Qh", "Qle", "SoilMoistVol"):
        a, b = ds[v].values, can[v].values
        assert np.array_equal(np.isnan(a), np.isnan(b)), v  # same gaps, incl. the 403 missing Qg
        np.testing.assert_allclose(a, b, rtol=5e-6, atol=1e-4, err_msg=v)
    assert int(ds["Qg"].isnull().sum()) == 403
    assert ds["Qg"].attrs["replicate_columns"] == "G_1_1_1, G_2_1_1" and ds["Qg"].attrs["n_partial_replicates"] == 395
    assert "all are present" in ds["Qg"].attrs["replicate_rule"]


def test_known_differences_from_canonical(crt, canonical):
    ds, _ = crt
    can = canonical
    # SoilTemp: the canonical file used TS_1_1_1 alone (README §4); this reader applies its replicate
    # rule to TS_1_1_1 and TS_2_1_1 as to G: mean where both are present, missing at 1 982 more steps
    assert int(can["SoilTemp"].isnull().sum()) == 9 and int(ds["SoilTemp"].isnull().sum()) == 1989
    assert ds["SoilTemp"].attrs["n_partial_replicates"] == 1982
    assert ds["SoilTemp"].values[0] - 273.15 == pytest.approx((3.468005 + 3.130502) / 2)
    assert can["SoilTemp"].values[0] - 273.15 == pytest.approx(3.468)
    # VPD: the canonical file computed VPD_F from TA and RH; the reader, like the FLUXNET reader,
    # derives nothing: add_derived gives it, equal within the canonical rounding
    assert "VPD" not in ds and "VPD" in can
    vpd = add_derived(ds, variables=("VPD",))["VPD"].values
    assert np.array_equal(np.isnan(vpd), np.isnan(can["VPD"].values)) and int(np.isnan(vpd).sum()) == 487
    np.testing.assert_allclose(vpd, can["VPD"].values, atol=1e-4)
    # QC: the canonical file writes QC 0 wherever H or LE is present; the reader writes no QC
    assert "Qh_qc" in can and "Qh_qc" not in ds


def test_without_site_table(base_path):
    with pytest.warns(DataWarning, match=re.escape(
            f"{base_path}: site US-CRT: no latitude, longitude, elevation, igbp, canopy_height, "
            "measurement_height, utc_offset_h in the file or the site table")):
        ds = read_ameriflux_base(base_path, metadata=None)
    assert ds.attrs["igbp"] == "" and np.isnan(ds.attrs["latitude"]) and ds.attrs["site_id"] == "US-CRT"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        ds = read_site(base_path, metadata={"latitude": 41.6, "longitude": -83.3, "elevation": 180.0, "igbp": "CRO",
                                            "canopy_height": 1.0, "measurement_height": 2.5, "utc_offset_h": -5})
    assert ds.attrs["missing_metadata"] == "" and ds.attrs["measurement_height"] == 2.5


def _head(base_path, n):
    """The two comment lines, the header and ``n`` data lines, CRLF, no final newline (as distributed)."""
    return base_path.read_bytes().split(b"\r\n")[: n + 3]


def test_small_files_detected_by_content_and_line_numbers(base_path, tmp_path):
    lines = _head(base_path, 48)
    path = tmp_path / "crt_head.csv"  # not a BASE file name: detected by the '# Site:' line
    path.write_bytes(b"\r\n".join(lines))
    assert detect_format(path) == "ameriflux-base"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        ds = read_site(path)
    assert ds.sizes["time"] == 48 and ds.attrs["site_id"] == "US-CRT"
    # line numbers count the comment lines: data row 3 is line 7
    fields = lines[6].split(b",")
    fields[lines[2].split(b",").index(b"TA")] = b"warm"
    bad = lines[:6] + [b",".join(fields)] + lines[7:]
    path.write_bytes(b"\r\n".join(bad))
    with pytest.raises(DataError, match=r"crt_head.csv: column TA: non-numeric value 'warm' at line 7"):
        read_site(path)
    # the comment line and the file name must name the same site
    other = tmp_path / "AMF_US-Xyz_BASE_HH_2-5.csv"
    other.write_bytes(b"\r\n".join(lines))
    with pytest.raises(DataError, match=r"AMF_US-Xyz_BASE_HH_2-5.csv: the comment line says Site: US-CRT but the file name says US-Xyz"):
        read_site(other)


def test_unknown_option_names_reader(base_path):
    with pytest.raises(TypeError, match=re.escape("reader 'ameriflux-base': unknown option(s) ['chunks']; allowed: depths, metadata, site_id, sites")):
        read_site(base_path, chunks={"time": 10})
