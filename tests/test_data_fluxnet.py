"""FLUXNET-style CSV reader on the real files of shared/data (README §1-§5, §7)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from hybridlsm.data import DataError, DataWarning, qc_mask, read_fluxnet_csv, site_metadata

# file: rows, first TIMESTAMP_START, last TIMESTAMP_START, first-row TA_F [degC], PA_F [kPa],
# VPD_F [hPa], first row with P_F > 0 (TIMESTAMP_START, mm per half-hour), sum of P_F [mm],
# first-row H_F_MDS, LE_F_MDS [W m-2] -- looked up in the files
CANONICAL = {
    "US-Wkg_200405-200412_HH.csv": (11497, "200405061100", "200412312300", 25.149, 85.348, 27.45, ("200405091430", 0.25), 191.17, 244.57, 93.478),
    "US-Me2_201907-202006_HH.csv": (17568, "201906302330", "202006302300", 13.71, 86.039, 5.98325, ("201907010730", 0.254), 354.035, -35.973, 5.5553),
    "US-Bi1_201807-202006_HH.csv": (35088, "201806302330", "202006302300", 18.4, 100.88, 13.0153, ("201808250530", 0.1), 702.5, -71.6978, 22.858),
    "DE-Tha_201001-201012_HH.csv": (17520, "201001010000", "201012312330", -0.551, 94.978, 0.1, ("201001010600", 0.6), 1078.901, 10.4406, 1.59889),
    "FR-Pue_200501-200512_HH.csv": (17520, "200501010000", "200512312330", 9.28, 98.8, 4.125, ("200501021230", 0.2), 705.2, -69.9346, 6.40882),
    "AT-Neu_201007-201007_HH.csv": (1488, "201007010000", "201007312330", 12.04, 91.13, 1.483, ("201007042000", 1.0), 68.2, -12.3769, 0.395235),
    "DE-Tha_201406-201406_HH.csv": (1440, "201406010000", "201406302330", 11.88, 97.64, 5.746, ("201406050300", 0.1), 46.4, -68.18, 9.94),
    "FR-Pue_201205-201205_HH.csv": (1488, "201205010000", "201205312330", 10.63, 98.1, 0.0, ("201205010230", 0.2), 91.6, -6.94037, -0.854056),
}

# README §5.1 valid fractions that are below 1 (4 decimals)
VALID = {
    "US-Wkg_200405-200412_HH.csv": {"SWdown": 0.9936, "CO2air": 0.9535, "SWup": 0.9868, "Qh": 0.9497, "Qle": 0.9075, "SoilTemp": 0.9959},
    "DE-Tha_201001-201012_HH.csv": {"RH": 0.9965, "Ustar": 0.9613, "Rnet": 0.9984},
    "FR-Pue_200501-200512_HH.csv": {"Ustar": 0.7786, "Rnet": 0.9985, "Qg": 0.9973},
    "AT-Neu_201007-201007_HH.csv": {"Ustar": 0.8918},
    "FR-Pue_201205-201205_HH.csv": {"Ustar": 0.8414, "Rnet": 0.9973, "LWup": 0.9993},
}

# variables per file (README §3)
HAS = {
    "US-Wkg_200405-200412_HH.csv": {"SWdown", "LWdown", "RH", "SWup", "LWup", "Qg", "SoilTemp", "SoilMoistVol", "Qh_qc"},
    "US-Me2_201907-202006_HH.csv": {"SWdown", "RH", "LAI", "SoilTemp", "SoilMoistVol"},
    "US-Bi1_201807-202006_HH.csv": {"SWdown", "RH", "LAI", "SoilTemp", "SoilMoistVol"},
    "DE-Tha_201001-201012_HH.csv": {"SWdown", "RH", "Qg", "Qh_qc"},
    "FR-Pue_200501-200512_HH.csv": {"SWdown", "RH", "Qg", "Qh_qc"},
    "AT-Neu_201007-201007_HH.csv": {"LWup", "Qg", "Qh_qc"},
    "DE-Tha_201406-201406_HH.csv": {"LWdown", "LWup", "Qg", "Qh_qc"},
    "FR-Pue_201205-201205_HH.csv": {"LWup", "Qh_qc"},
}
LACKS = {
    "US-Me2_201907-202006_HH.csv": {"LWdown", "SWup", "LWup", "Qh_qc", "Qle_qc"},
    "US-Bi1_201807-202006_HH.csv": {"LWdown", "SWup", "LWup", "Qh_qc"},
    "DE-Tha_201001-201012_HH.csv": {"LWdown", "SWup", "LWup", "Qh_cor", "SoilTemp"},
    "AT-Neu_201007-201007_HH.csv": {"SWdown", "RH", "LWdown"},
    "DE-Tha_201406-201406_HH.csv": {"SWdown", "RH"},
    "FR-Pue_201205-201205_HH.csv": {"SWdown", "RH", "Qg", "LWdown"},
}

# soil sensor depths [m], reader option ``depths`` as in the shipped configs (README §4)
DEPTHS = {
    "US-Wkg_200405-200412_HH.csv": {"SoilTemp": 0.05},
    "US-Me2_201907-202006_HH.csv": {"SoilTemp": 0.16, "SoilMoistVol": 0.10},
}


@pytest.fixture(scope="module")
def canonical(shared_data):
    out = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name in CANONICAL:
            out[name] = read_fluxnet_csv(shared_data / "fluxnet" / name, depths=DEPTHS.get(name))
    out["_warnings"] = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    return out


def _ts(s: str) -> np.datetime64:
    return np.datetime64(pd.Timestamp(s))


@pytest.mark.parametrize("name", list(CANONICAL))
def test_canonical_rows_period_and_values(canonical, name):
    ds = canonical[name]
    rows, first, last, ta, pa, vpd, (p_time, p_mm), p_sum, h0, le0 = CANONICAL[name]
    assert ds.sizes["time"] == rows
    assert ds["time"].values[0] == _ts(first)
    assert ds["time"].values[-1] == _ts(last)
    assert ds["time"].dtype == np.dtype("datetime64[ns]")
    assert ds.attrs["time_step_s"] == 1800.0
    assert np.all(np.diff(ds["time"].values) == np.timedelta64(30, "m"))
    assert ds["Tair"].values[0] == pytest.approx(ta + 273.15, abs=1e-9)
    assert ds["Psurf"].values[0] == pytest.approx(pa * 1000.0, rel=1e-12)
    assert ds["VPD"].values[0] == pytest.approx(vpd, abs=1e-12)
    assert ds["Precip"].sel(time=_ts(p_time)).item() == pytest.approx(p_mm / 1800.0, rel=1e-12)
    # the first rainy step is the first non-zero precipitation
    assert (ds["Precip"].sel(time=slice(None, _ts(p_time))).values[:-1] == 0).all()
    assert float(ds["Precip"].sum()) * 1800.0 == pytest.approx(p_sum, abs=1e-6)
    assert ds["Qh"].values[0] == pytest.approx(h0)
    assert ds["Qle"].values[0] == pytest.approx(le0)
    assert ds["Tair"].attrs["units"] == "K" and ds["Psurf"].attrs["units"] == "Pa"
    assert ds["Precip"].attrs["units"] == "kg m-2 s-1" and ds["VPD"].attrs["units"] == "hPa"
    assert HAS[name] <= set(ds.data_vars)
    assert not (LACKS.get(name, set()) & set(ds.data_vars))
    for var, frac in VALID.get(name, {}).items():
        assert float(ds[var].notnull().mean()) == pytest.approx(frac, abs=5e-5), var


@pytest.mark.parametrize("name", list(CANONICAL))
def test_canonical_metadata_from_sites_csv(shared_data, canonical, name):
    ds = canonical[name]
    table = pd.read_csv(shared_data / "fluxnet" / "sites.csv")
    row = table[table["FILE"] == name].iloc[0]
    assert ds.attrs["site_id"] == row["SITE_ID"] == name[:6]
    assert ds.attrs["latitude"] == pytest.approx(row["LAT"])
    assert ds.attrs["longitude"] == pytest.approx(row["LON"])
    assert ds.attrs["utc_offset_h"] == row["UTC_OFFSET_H"]
    assert ds.attrs["igbp"] == row["IGBP"]
    assert ds.attrs["source_format"] == "fluxnet-csv-HH"


def test_metadata_values_and_empty_cells(canonical):
    wkg = canonical["US-Wkg_200405-200412_HH.csv"]
    assert (wkg.attrs["latitude"], wkg.attrs["longitude"], wkg.attrs["elevation"]) == (31.7365, -109.9419, 1531.0)
    assert wkg.attrs["utc_offset_h"] == -7.0 and wkg.attrs["canopy_height"] == 0.5
    assert np.isnan(wkg.attrs["measurement_height"])  # empty cell in sites.csv
    me2 = canonical["US-Me2_201907-202006_HH.csv"]
    assert me2.attrs["measurement_height"] == 34.0 and me2.attrs["canopy_height"] == 18.0
    assert me2["SoilTemp"].attrs["depth_m"] == 0.16 and me2["SoilMoistVol"].attrs["depth_m"] == 0.10
    assert wkg["SoilTemp"].attrs["depth_m"] == 0.05 and np.isnan(wkg["SoilMoistVol"].attrs["depth_m"])
    bi1 = canonical["US-Bi1_201807-202006_HH.csv"]  # no depths given: NaN
    assert np.isnan(bi1["SoilTemp"].attrs["depth_m"]) and np.isnan(bi1["SoilMoistVol"].attrs["depth_m"])


@pytest.mark.parametrize(
    ("depths", "message"),
    [
        ({"Tair": 0.05}, "option depths: 'Tair' is not a soil variable of this file; its soil variables: SoilMoistVol"),
        ({"SoilTemp": 0.05}, "option depths: 'SoilTemp' is not a soil variable of this file; its soil variables: SoilMoistVol"),
        ({"SoilMoistVol": 0.0}, "option depths: SoilMoistVol depth 0.0 is not a positive number of metres (0 < depth <= 2, e.g. 0.05 for 5 cm)"),
        ({"SoilMoistVol": -0.1}, "option depths: SoilMoistVol depth -0.1 is not a positive number of metres"),
        ({"SoilMoistVol": 5}, "option depths: SoilMoistVol depth 5 is not a positive number of metres"),  # cm, not m
        ({"SoilMoistVol": "10 cm"}, "option depths: SoilMoistVol depth '10 cm' is not a positive number of metres"),
        ({"SoilMoistVol": True}, "option depths: SoilMoistVol depth True is not a positive number of metres"),
        ({"SoilMoistVol": float("nan")}, "option depths: SoilMoistVol depth nan is not a positive number of metres"),
        ([0.1], "option depths: expected a mapping {variable: depth in m} of the file's soil variables (SoilMoistVol), got [0.1]"),
    ],
)  # fmt: skip
def test_depths_option_is_validated(shared_data, tmp_path, depths, message):
    """A file without a soil-temperature column (TS_F_MDS_1 dropped from the head of US-Wkg)."""
    lines = (shared_data / "fluxnet" / "US-Wkg_200405-200412_HH.csv").read_text().splitlines()[:49]
    drop = lines[0].split(",").index("TS_F_MDS_1")
    path = tmp_path / "US-Wkg_200405-200412_HH.csv"
    path.write_text("\n".join(",".join(f for j, f in enumerate(ln.split(",")) if j != drop) for ln in lines) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        assert read_fluxnet_csv(path, depths={"SoilMoistVol": 0.1})["SoilMoistVol"].attrs["depth_m"] == 0.1
        with pytest.raises(DataError) as err:
            read_fluxnet_csv(path, depths=depths)
    assert str(err.value).startswith(f"{path}: {message}")


def test_soil_and_radiation_conversions(canonical):
    wkg = canonical["US-Wkg_200405-200412_HH.csv"]
    # first row: LW_IN_F 331.402, SW_OUT 169.996, SWC 1 %, TS 30.789 degC
    assert wkg["LWdown"].values[0] == 331.402
    assert wkg["SWup"].values[0] == 169.996
    assert wkg["SoilMoistVol"].values[0] == pytest.approx(0.01)
    assert wkg["SoilTemp"].values[0] == pytest.approx(30.789 + 273.15)
    assert wkg["Precip"].attrs["source_units"] == "mm per 30 min"
    # night-time SW_IN set to 0 in the canonical file (README §4): no negative SWdown
    assert float(wkg["SWdown"].min()) == 0.0
    me2 = canonical["US-Me2_201907-202006_HH.csv"]
    assert me2["SoilMoistVol"].values[0] == pytest.approx(0.243)
    assert me2["LAI"].values[0] == 1.25


def test_qc_flags_counts_readme(canonical):
    # README §5.1 QC flag counts (H / LE)
    expect = {
        "US-Wkg_200405-200412_HH.csv": ({0: 10919}, {0: 10433}),
        "DE-Tha_201001-201012_HH.csv": ({0: 16603, 1: 907, 2: 10}, {0: 16179, 1: 1313, 2: 28}),
        "FR-Pue_200501-200512_HH.csv": ({0: 13119, 1: 4360, 2: 41}, {0: 14371, 1: 3074, 2: 75}),
        "AT-Neu_201007-201007_HH.csv": ({0: 962, 1: 515, 2: 11}, {0: 942, 1: 535, 2: 11}),
        "DE-Tha_201406-201406_HH.csv": ({0: 1424, 1: 14, 2: 2}, {0: 1388, 1: 52}),
        "FR-Pue_201205-201205_HH.csv": ({0: 1176, 1: 310, 2: 2}, {0: 1337, 1: 150, 2: 1}),
    }
    for name, (h, le) in expect.items():
        ds = canonical[name]
        for var, counts in (("Qh", h), ("Qle", le)):
            qc = ds[f"{var}_qc"].values
            assert qc.dtype == np.int8
            got = {int(k): int(v) for k, v in zip(*np.unique(qc[qc >= 0], return_counts=True))}
            assert got == counts, (name, var)
            # -1 exactly where the value is missing
            assert np.array_equal(qc == -1, ds[var].isnull().values)
    wkg = canonical["US-Wkg_200405-200412_HH.csv"]
    assert int(qc_mask(wkg, "Qle", 0).sum()) == 10433
    tha = canonical["DE-Tha_201001-201012_HH.csv"]
    assert int(qc_mask(tha, "Qh", 1).sum()) == 16603 + 907


def test_out_of_range_values_warn_with_location(canonical):
    msgs = canonical["_warnings"]
    me2 = [m for m in msgs if "US-Me2" in m and "USTAR" in m]
    assert len(me2) == 1 and "67 of 17568 values outside the plausible range 0..3" in me2[0]
    assert "max 9.0512" in me2[0] and "line 6542 (2019-11-14 05:30)" in me2[0]
    bi1 = [m for m in msgs if "US-Bi1" in m and "H_F_MDS" in m]
    assert len(bi1) == 1 and "2 of 35088 values outside" in bi1[0] and "min -362.824" in bi1[0]
    # nothing else in the canonical files is out of range (README §5.2)
    assert len([m for m in msgs if "outside the plausible range" in m]) == 2
    # the only other warning: sites.csv states no measurement height for US-Wkg (README §2)
    other = [m for m in msgs if "outside the plausible range" not in m]
    assert len(other) == 1 and "US-Wkg_200405-200412_HH.csv: site US-Wkg: no measurement_height in the file or the site table" in other[0]
    assert canonical["US-Wkg_200405-200412_HH.csv"].attrs["missing_metadata"] == "measurement_height"
    assert canonical["US-Me2_201907-202006_HH.csv"].attrs["missing_metadata"] == ""


def test_unknown_site_id_names_known_ids(shared_data):
    with pytest.raises(DataError) as err:
        site_metadata(shared_data / "fluxnet" / "sites.csv", site_id="XX-Foo")
    msg = str(err.value)
    assert "XX-Foo" in msg and "sites.csv" in msg
    known = sorted(set(pd.read_csv(shared_data / "fluxnet" / "sites.csv", dtype=str)["SITE_ID"]))
    assert len(known) >= 8  # read from the table: adding a site never breaks this test
    assert f"known site ids: {known}" in msg


def test_a_misnamed_qc_column_is_said_not_silently_ignored(shared_data, tmp_path):
    """H_QC for H_F_MDS_QC: the flag is not read, so Qh's gap-filled values would count as measured."""
    lines = (shared_data / "fluxnet" / "DE-Tha_201001-201012_HH.csv").read_text().splitlines()[:481]
    header = lines[0].split(",")
    assert "H_F_MDS_QC" in header
    lines[0] = ",".join("H_QC" if c == "H_F_MDS_QC" else c for c in header)
    path = tmp_path / "DE-Tha_201001-201012_HH.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.warns(DataWarning, match=r"column\(s\) H_QC look like QC flags of no column in the file and are not "
                                         r"read .*; Qh \(from H_F_MDS\) therefore have no QC flag"):
        ds = read_fluxnet_csv(path, sites=shared_data / "fluxnet" / "sites.csv")
    assert "Qh_qc" not in ds and "Qle_qc" in ds


def test_old_mac_line_endings_are_named(shared_data, tmp_path):
    lines = (shared_data / "fluxnet" / "US-Wkg_200405-200412_HH.csv").read_text().splitlines()[:49]
    path = tmp_path / "US-Wkg_200405-200412_HH.csv"
    path.write_text("\r".join(lines) + "\r")
    with pytest.raises(DataError, match=r"lines end in a bare carriage return \(old Mac line endings\)"):
        read_fluxnet_csv(path)


def test_site_lookup_by_file_then_id(shared_data, tmp_path):
    src = shared_data / "fluxnet" / "AT-Neu_201007-201007_HH.csv"
    head = "\n".join(src.read_text().splitlines()[:49]) + "\n"
    sites = shared_data / "fluxnet" / "sites.csv"
    # listed FILE name, but a shorter file: read, and the period mismatch is reported
    same = tmp_path / "AT-Neu_201007-201007_HH.csv"
    same.write_text(head)
    with pytest.warns(DataWarning, match="gives START 201007010000, END 201008010000 .* runs from 201007010000 to 201007020000"):
        ds = read_fluxnet_csv(same, sites=sites)
    assert ds.sizes["time"] == 48 and ds.attrs["site_name"] == "Neustift"
    # a file name the table does not list: found by SITE_ID
    other = tmp_path / "neustift_head.csv"
    other.write_text(head)
    ds = read_fluxnet_csv(other, sites=sites, site_id="AT-Neu")
    assert ds.attrs["utc_offset_h"] == 1.0 and ds.attrs["elevation"] == 970.0
    unknown = tmp_path / "XX-Foo_201007-201007_HH.csv"
    unknown.write_text(head)
    with pytest.raises(DataError, match=r"unknown site id 'XX-Foo' \(for file XX-Foo_201007-201007_HH.csv\).*US-Wkg"):
        read_fluxnet_csv(unknown, sites=sites)
    with pytest.raises(DataError, match="not listed in column FILE and no site id was given"):
        read_fluxnet_csv(other, sites=sites)
    with pytest.raises(DataError, match="belongs to site 'AT-Neu', not to the requested site id 'DE-Tha'"):
        read_fluxnet_csv(src, site_id="DE-Tha")


# ---- original FLUXNET2015 / AmeriFlux files (README §7)


@pytest.fixture(scope="module")
def originals(shared_data):
    d = shared_data / "fluxnet" / "original"
    names = {
        "wi7_dd": "FLX_US-Wi7_FLUXNET2015_FULLSET_DD_2005-2005_1-4.csv",
        "wi7_erai": "FLX_US-Wi7_FLUXNET2015_ERAI_HH_1989-2014_1-4.csv",
        "ar1_dd": "FLX_US-AR1_FLUXNET2015_SUBSET_DD_2009-2012_1-3.csv",
        "wkg_mm": "AMF_US-Wkg_FLUXNET_FULLSET_MM_2004-2021_3-5.csv",
        "wkg_ww": "AMF_US-Wkg_FLUXNET_FULLSET_WW_2004-2021_3-5.csv",
    }
    out = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for key, name in names.items():
            out[key] = read_fluxnet_csv(d / name)
    out["_warnings"] = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    return out


def test_wi7_daily(originals):
    ds = originals["wi7_dd"]
    assert ds.sizes["time"] == 365 and ds.attrs["time_resolution"] == "DD"
    assert ds["time"].values[0] == _ts("2005-01-01") and ds["time"].values[-1] == _ts("2005-12-31")
    assert ds["time_end"].values[-1] == _ts("2006-01-01")
    assert ds.attrs["site_id"] == "US-Wi7" and ds.attrs["source_product"] == "FULLSET"
    assert ds.attrs["time_step_s"] == 86400.0
    assert ds["Tair"].values[0] == pytest.approx(-13.113 + 273.15)
    assert ds["LWdown"].values[0] == 264.134 and ds["Psurf"].values[0] == pytest.approx(99480.0)
    assert ds["Qh"].values[0] == 104.24 and ds["Qle"].values[200] == 68.4675
    assert ds["Qle_qc_fraction"].values[200] == 1.0 and ds["Tair_qc_fraction"].values[200] == 1.0
    assert ds["Rnet"].values[200] == pytest.approx(198.694104167)
    # P_F in DD files is mm per day: 874.878 mm in 2005; 31 Dec 1.056 mm
    assert float(ds["Precip"].sum()) * 86400.0 == pytest.approx(874.878, abs=1e-6)
    assert ds["Precip"].values[-1] * 86400.0 == pytest.approx(1.056)
    assert ds["Qg"].isnull().all() and ds["Qh_cor"].isnull().all()
    msgs = [m for m in originals["_warnings"] if "FULLSET_DD" in m and ": column " in m]
    assert sorted(m.split(": column ")[1].split(" ")[0] for m in msgs) == ["G_F_MDS", "H_CORR", "LE_CORR"]
    assert "TA_F_MDS" in ds["Tair"].attrs["alternative_columns"]  # TA_F preferred over TA_F_MDS and TA_ERA


def test_wi7_erai_halfhourly(originals):
    ds = originals["wi7_erai"]
    assert ds.sizes["time"] == 41780 and ds.attrs["time_resolution"] == "HH"
    assert ds["time"].values[0] == _ts("2004-06-26 20:00")
    assert ds["time"].values[-1] == _ts("2006-11-14 05:30")
    assert set(ds.data_vars) == {"Tair", "SWdown", "LWdown", "VPD", "Psurf", "Precip", "Wind"}
    assert ds["Tair"].values[0] == pytest.approx(10.672 + 273.15)
    assert ds["LWdown"].values[0] == 306.995 and ds["Psurf"].values[0] == pytest.approx(98257.0)
    assert ds["Tair"].sel(time=_ts("2005-01-21 04:00")).item() == pytest.approx(-16.299 + 273.15)
    assert ds["Precip"].sel(time=_ts("2005-01-21 04:00")).item() == pytest.approx(0.012 / 1800.0)
    assert ds["Tair"].values[-1] == pytest.approx(-3.102 + 273.15)
    assert ds["Tair"].attrs["source_column"] == "TA_ERA" and "reanalysis" in ds["Tair"].attrs["note"]


def test_ar1_daily_subset(originals):
    ds = originals["ar1_dd"]
    assert ds.sizes["time"] == 1461
    assert ds["time"].values[0] == _ts("2009-01-01") and ds["time"].values[-1] == _ts("2012-12-31")
    assert ds.attrs["site_id"] == "US-AR1" and ds.attrs["source_product"] == "SUBSET"
    assert ds["Tair"].values[0] == pytest.approx(2.803 + 273.15)
    assert ds["SWdown"].values[0] == 123.108 and ds["Qle"].values[0] == 67.1459
    assert ds["Qle_cor"].values[0] == 43.8414 and ds["Qh_cor"].values[0] == 13.3116
    assert ds["Qle_qc_fraction"].values[-1] == 0.25  # QC columns written as floats (0.25)
    assert ds["SoilMoistVol"].values[200] == pytest.approx(0.15592)
    assert ds["SoilTemp"].values[-1] == pytest.approx(2.448 + 273.15)
    yearly = (ds["Precip"] * 86400.0).groupby("time.year").sum()
    np.testing.assert_allclose(yearly.values, [491.867, 665.5, 330.277, 546.596], atol=1e-6)


def test_wkg_monthly_and_weekly(originals):
    mm, ww = originals["wkg_mm"], originals["wkg_ww"]
    assert mm.sizes["time"] == 216 and mm.attrs["time_resolution"] == "MM"
    assert mm["time"].values[0] == _ts("2004-01-01") and mm["time"].values[-1] == _ts("2021-12-01")
    assert mm["time_end"].values[-1] == _ts("2022-01-01")
    assert mm["Tair"].values[0] == pytest.approx(8.956 + 273.15)
    assert mm["Tair_qc_fraction"].values[0] == 0.0  # ERA-only months before the tower start
    assert mm["LWdown"].values[200] == 342.786 and mm["Qle_qc_fraction"].values[200] == 0.999306
    assert mm["Precip"].values[0] * 86400.0 == pytest.approx(0.755)
    assert np.isnan(mm["Rnet"].values[0])
    assert ww.sizes["time"] == 936 and ww.attrs["time_resolution"] == "WW"
    assert ww["time"].values[0] == _ts("2004-01-01") and ww["time_end"].values[0] == _ts("2004-01-08")
    assert ww["time"].values[-1] == _ts("2021-12-24") and ww["time_end"].values[-1] == _ts("2022-01-01")
    lengths = (ww["time_end"] - ww["time"]).values / np.timedelta64(1, "D")
    assert set(lengths.tolist()) == {7.0, 8.0, 9.0}  # the last week of a year absorbs 1-2 days
    assert ww["Tair"].values[0] == pytest.approx(8.671 + 273.15) and ww["Qle"].values[-1] == 9.35979
    # WW and MM P_F are both mean daily amounts: the 2005 means agree (0.4454 vs 0.4458 mm/d)
    p_mm = float(mm["Precip"].sel(time="2005").mean()) * 86400
    p_ww = float(ww["Precip"].sel(time="2005").mean()) * 86400
    assert p_mm == pytest.approx(0.445417, abs=1e-5) and p_ww == pytest.approx(p_mm, rel=0.01)
    # no sites.csv in original/: the only warnings name the missing site metadata
    wkg = [m for m in originals["_warnings"] if "AMF_US-Wkg" in m]
    assert len(wkg) == 2 and all("site US-Wkg: no latitude, longitude, elevation, igbp" in m for m in wkg)
