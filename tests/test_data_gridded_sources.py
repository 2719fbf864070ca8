"""The real gridded samples besides the VIC/Livneh forcing (shared/data README §8.2, §8.3): the
Little Washita NLDAS grid with its ParFlow-CLM reference snapshot, and the WRF cutout, each read as
the canonical gridded dataset (local standard time, interval starts) and built into a Domain."""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from hybridlsm.data import DataError, detect_format, read_site
from hybridlsm.data.gridded import read_reference_snapshot
from hybridlsm.data.schema import IGBP_BY_INDEX, VARIABLES
from hybridlsm.data.wrf import IGBP_FLAG_MEANINGS, USGS_TO_IGBP, WRF_VARIABLES
from hybridlsm.domain import domain_from_grid
from hybridlsm.domain.build import land_cover_codes

LW_FILE = "LittleWashita_NLDAS_41x41_120h.nc"
WRF_FILE = "wrf_d01_allvars_cropped.nc"


def _sample(shared_data: Path, name: str, section: str) -> Path:
    path = shared_data / "gridded" / name
    if not path.is_file():
        pytest.skip(f"gridded sample {path} not found (shared/data/gridded, data README {section})")
    return path


@pytest.fixture(scope="module")
def lw_path(shared_data):
    return _sample(shared_data, LW_FILE, "§8.2")


@pytest.fixture(scope="module")
def wrf_path(shared_data):
    return _sample(shared_data, WRF_FILE, "§8.3")


@pytest.fixture(scope="module")
def lw(lw_path):
    return read_site(lw_path)


@pytest.fixture(scope="module")
def wrf(wrf_path):
    return read_site(wrf_path)


@pytest.fixture(scope="module")
def wrf_raw(wrf_path):
    with xr.open_dataset(wrf_path, decode_times=False) as raw:
        return raw[["T2", "Q2", "U10", "V10", "RAINC", "RAINNC", "GRDFLX", "HGT", "LU_INDEX", "LANDMASK",
                    "COSALPHA", "SINALPHA", "XLAT", "XLONG"]].load()  # fmt: skip


# ------------------------------------------------------------------------------ Little Washita


def test_little_washita_canonical_forcing(lw, lw_path):
    assert detect_format(lw_path) == "gridded"
    assert dict(lw.sizes) == {"time": 120, "y": 41, "x": 41}
    # the file's time is the END of each hourly step in UTC (1998-10-01 06:00 .. 10-06 05:00); the
    # canonical axis is the START in local standard time, US Central UTC-6
    assert str(lw["time"].values[0])[:16] == "1998-09-30T23:00"
    assert str(lw["time"].values[-1])[:16] == "1998-10-05T22:00"
    assert lw.attrs["utc_offset_h"] == -6.0 and "Central" in lw.attrs["utc_offset_rule"]
    assert lw.attrs["time_step_s"] == 3600.0 and "time_bnds" in lw.attrs["time_convention"]
    # values are unchanged, only relabelled: local start + 6 h + 1 h = the file's UTC end
    with xr.open_dataset(lw_path) as raw:
        np.testing.assert_array_equal(lw["time"].values + np.timedelta64(7, "h"), raw["time"].values)
        np.testing.assert_array_equal(lw["Tair"].values[37], raw["Tair"].values[37])
        np.testing.assert_array_equal(lw["x"].values, raw["x"].values)
    np.testing.assert_array_equal(lw["y"].values[[0, 1, -1]], [500.0, 1500.0, 40500.0])
    # README §8.2 table
    assert float(lw["Psurf"].mean()) == pytest.approx(96986, abs=1)
    assert float(lw["Tair"].min()) == pytest.approx(283.78, abs=0.01)
    assert float(lw["Wind_E"].mean()) == pytest.approx(-1.81, abs=0.01)
    assert float(lw["Wind_N"].mean()) == pytest.approx(1.39, abs=0.01)
    assert {v: lw[v].attrs["units"] for v in ("Tair", "Qair", "Psurf", "Precip", "Wind_E", "Wind_N")} == {
        "Tair": "K", "Qair": "kg kg-1", "Psurf": "Pa", "Precip": "kg m-2 s-1", "Wind_E": "m s-1", "Wind_N": "m s-1"}
    # no per-cell latitude/longitude: one approximate point, said so
    assert (lw.attrs["latitude"], lw.attrs["longitude"]) == (34.75, -98.14)
    assert "approximate" in lw.attrs["location_note"] and "lat" not in lw.coords
    # the reference model output is not mixed into the forcing
    assert set(lw.data_vars) == {"Tair", "Qair", "Psurf", "SWdown", "LWdown", "Precip", "Wind", "Wind_E", "Wind_N"}
    assert {"Qle", "Qh", "Qg"} <= set(lw.attrs["unmapped_variables"].split(", "))
    assert lw["land_cover"].dims == ("y", "x") and "flag_meanings" in lw["land_cover"].attrs


def test_little_washita_domain(lw):
    d = domain_from_grid(lw, land_cover=lw["land_cover"])
    assert d.n_columns == 1681 and d.n_steps == 120
    assert Counter(d.static_value("igbp").tolist()) == {"GRA": 1098, "SAV": 399, "CRO": 166, "DNF": 18}
    # the dataset's own land_cover is also the default land-cover field
    corner = lw.isel(y=slice(0, 4), x=slice(6, 10))
    np.testing.assert_array_equal(domain_from_grid(corner).static_value("igbp"),
                                  d.static_value("igbp").reshape(41, 41)[:4, 6:10].ravel())
    assert set(domain_from_grid(corner).static_value("igbp")) == {"GRA", "SAV"}
    assert set(d.static_value("latitude")) == {34.75} and set(d.static_value("utc_offset_h")) == {-6.0}
    assert np.isnan(d.layout.lat).all()  # the writers get no invented per-cell latitude
    assert {"Wind_E", "Wind_N"} <= set(d.data.data_vars)


def test_little_washita_reference_snapshot(lw_path):
    ref = read_reference_snapshot(lw_path)
    assert {v: ref[v].dims for v in ref.data_vars} == {
        v: ("y", "x") for v in ("Qle", "Qh", "Qg", "LWup", "Tsurf", "Evap", "TVeg", "ESoil")}
    # ref_time 1998-10-01 17:00 UTC is the end of the model hour: start 16:00 UTC = 10:00 UTC-6
    assert ref["time"].ndim == 0 and str(ref["time"].values)[:16] == "1998-10-01T10:00"
    assert ref.attrs["utc_offset_h"] == -6.0 and ref.attrs["time_step_s"] == 3600.0
    assert "model output" in ref.attrs["data_kind"].lower() and "not observations" in ref.attrs["data_kind"]
    assert float(ref["Qle"].mean()) == pytest.approx(135.9, abs=0.05)
    assert float(ref["Qh"].mean()) == pytest.approx(173.4, abs=0.05)
    assert float(ref["Qg"].mean()) == pytest.approx(42.4, abs=0.05)
    assert ref["land_cover"].shape == (41, 41)


def test_reference_snapshot_of_a_file_without_one(wrf_path):
    with pytest.raises(DataError, match=r"wrf_d01_allvars_cropped\.nc: no ref_time dimension"):
        read_reference_snapshot(wrf_path)


# ------------------------------------------------------------------------------------------ WRF


def test_wrf_canonical_dataset(wrf, wrf_path, wrf_raw):
    assert detect_format(wrf_path) == "wrf" and wrf.attrs["source_format"] == "wrf-netcdf"
    assert dict(wrf.sizes) == {"time": 4, "y": 8, "x": 10}
    # Times 2005-09-21 00, 03, 06, 09 UTC; round(mean XLONG 87.0 / 15) = +6 h
    assert [str(t)[:16] for t in wrf["time"].values] == [
        "2005-09-21T06:00", "2005-09-21T09:00", "2005-09-21T12:00", "2005-09-21T15:00"]
    assert wrf.attrs["utc_offset_h"] == 6.0 and "round(longitude / 15)" in wrf.attrs["utc_offset_rule"]
    assert wrf.attrs["time_step_s"] == 10800.0 and "instantaneous" in wrf.attrs["values"]
    np.testing.assert_array_equal(wrf["lat"].values, wrf_raw["XLAT"].values)
    np.testing.assert_array_equal(wrf["lon"].values, wrf_raw["XLONG"].values)
    assert set(wrf.data_vars) == {*(t for t, _ in WRF_VARIABLES.values()), "Wind", "Precip", "Precip_estimated"}
    for var in wrf.data_vars:
        if var != "Precip_estimated":
            assert wrf[var].attrs["units"] == VARIABLES[var].units, var
    assert "not a measurement" in wrf["Qle"].attrs["data_kind"]
    # the water cell (south_north 7, west_east 0; LANDMASK 0) is NaN throughout, the land is complete
    water = wrf_raw["LANDMASK"].values == 0
    assert water.sum() == 1 and water[7, 0]
    tair = wrf["Tair"].values
    assert np.isnan(tair[:, water]).all() and np.isfinite(tair[:, ~water]).all()
    assert float(np.nanmin(tair)) == pytest.approx(266.5188, abs=1e-3)
    assert float(wrf["elevation"].values[7, 0]) == pytest.approx(4700.119, abs=1e-3)


def test_wrf_ground_heat_flux_sign(wrf, wrf_raw):
    # GRDFLX is positive upward in WRF/Noah (README §8.3: about -200 W m-2 near local noon);
    # ALMA's Qg is positive into the soil: +202.8 at 06 UTC = 12:00 local standard time
    land = wrf_raw["LANDMASK"].values == 1
    qg = wrf["Qg"].values
    means = [float(qg[k][land].mean()) for k in range(4)]
    np.testing.assert_allclose(means, [-60.127, 109.937, 202.824, 89.864], atol=1e-3)
    np.testing.assert_array_equal(qg[:, land], -wrf_raw["GRDFLX"].values[:, land])
    assert str(wrf["time"].values[2])[11:16] == "12:00"


def test_wrf_precipitation_from_accumulations(wrf, wrf_raw):
    # cell (0, 2): RAINC + RAINNC = 0.02594535, 0.03006665, 0.03006916, 0.2284974 mm at 00..09 UTC;
    # the rate of the interval starting at step k is the increment to step k + 1 over 3 h
    rainc, rainnc = wrf_raw["RAINC"].values[:, 0, 2], wrf_raw["RAINNC"].values[:, 0, 2]
    np.testing.assert_allclose(rainc + rainnc, [0.02594535, 0.03006665, 0.03006916, 0.2284974], rtol=1e-6)
    by_hand = [0.0041213 / 10800, 2.5127e-6 / 10800, 0.19842824 / 10800]
    p = wrf["Precip"].values[:, 0, 2]
    np.testing.assert_allclose(p[:3], by_hand, rtol=1e-4)
    assert p[3] == p[2]  # nothing after the last time: the previous rate, flagged
    flags = wrf["Precip_estimated"].values
    assert flags[3].all() and not flags[:3].any()
    assert float(np.nanmin(wrf["Precip"].values)) >= 0.0
    assert "forward difference" in wrf.attrs["precipitation"]


def test_wrf_humidity_and_wind(wrf, wrf_raw):
    w = float(wrf_raw["Q2"].values[0, 2, 5])  # mixing ratio 0.004712898 kg kg-1
    assert w == pytest.approx(0.004712898, rel=1e-6)
    assert float(wrf["Qair"].values[0, 2, 5]) == pytest.approx(0.0046907905, rel=1e-6)  # w / (1 + w)
    # U10/V10 rotated from the grid's axes to east/north (alpha < 0.75 degrees here); speed unchanged
    u, v = wrf_raw["U10"].values[1, 2, 5], wrf_raw["V10"].values[1, 2, 5]
    c, s = wrf_raw["COSALPHA"].values[2, 5], wrf_raw["SINALPHA"].values[2, 5]
    assert float(wrf["Wind_E"].values[1, 2, 5]) == pytest.approx(u * c - v * s, rel=1e-6)
    assert float(wrf["Wind_N"].values[1, 2, 5]) == pytest.approx(v * c + u * s, rel=1e-6)
    np.testing.assert_allclose(wrf["Wind"].values, np.hypot(wrf["Wind_E"].values, wrf["Wind_N"].values), rtol=1e-5)
    assert float(wrf["Wind"].values[1, 2, 5]) == pytest.approx(np.hypot(u, v), rel=1e-6)


def test_wrf_land_cover_and_domain(wrf, wrf_raw):
    # USGS 7 grassland (65 cells) -> IGBP 10 GRA, 9 mixed shrubland/grassland (14) -> 7 OSH, 16 water -> 17 WAT
    assert Counter(wrf["land_cover_usgs"].values.ravel().tolist()) == {7: 65, 9: 14, 16: 1}
    assert Counter(wrf["land_cover"].values.ravel().tolist()) == {10: 65, 7: 14, 17: 1}
    d = domain_from_grid(wrf)
    assert d.n_columns == 79 and d.n_steps == 4 and "y7_x0" not in d.column_ids
    assert Counter(d.static_value("igbp").tolist()) == {"GRA": 65, "OSH": 14}
    j = d.column_ids.index("y3_x4")
    assert d.static_value("elevation")[j] == pytest.approx(float(wrf_raw["HGT"].values[3, 4]))
    assert d.static_value("latitude")[j] == pytest.approx(float(wrf_raw["XLAT"].values[3, 4]))
    assert set(d.static_value("utc_offset_h")) == {6.0}
    assert {"Qh", "Qle", "Qg", "AvgSurfT", "Precip_estimated"} <= set(d.data.data_vars)
    assert d.data["Precip_estimated"].dtype == bool


def test_usgs_to_igbp_table():
    assert sorted(USGS_TO_IGBP) == list(range(1, 29))
    assert {igbp for _, igbp in USGS_TO_IGBP.values()} <= set(range(1, 18))
    assert [USGS_TO_IGBP[k][1] for k in (7, 9, 16, 28)] == [10, 7, 17, 17]
    # the flag meanings written with the field and the IGBP numbering give the same classes
    codes = np.arange(1, 18)
    by_name = land_cover_codes(codes, {"flag_values": codes, "flag_meanings": IGBP_FLAG_MEANINGS})
    assert by_name.tolist() == list(IGBP_BY_INDEX) == land_cover_codes(codes, {}).tolist()


def test_wrf_utc_offset_can_be_given(wrf_path):
    ds = read_site(wrf_path, metadata={"utc_offset_h": 8.0})  # China Standard Time instead
    assert str(ds["time"].values[0])[:16] == "2005-09-21T08:00" and ds.attrs["utc_offset_h"] == 8.0


@pytest.fixture(scope="module")
def small_wrf(wrf_path, tmp_path_factory):
    """The WRF variables the reader needs, as a dataset to damage and write back."""
    names = [*WRF_VARIABLES, "RAINC", "RAINNC", "XLAT", "XLONG", "HGT", "LU_INDEX", "LANDMASK", "COSALPHA",
             "SINALPHA", "Times"]  # fmt: skip
    with xr.open_dataset(wrf_path, decode_times=False) as raw:
        return raw[names].load()


def _write(ds: xr.Dataset, path: Path) -> Path:
    ds.to_netcdf(path)
    return path


@pytest.mark.parametrize("damage, message", [
    (lambda ds: ds.drop_vars("T2"), r"variable T2 missing"),
    (lambda ds: ds.drop_vars("LU_INDEX"), r"variable LU_INDEX missing"),
    (lambda ds: ds.assign(PSFC=ds["PSFC"].isel(Time=0)), r"variable PSFC has dims \('south_north', 'west_east'\); expected \('Time', 'south_north', 'west_east'\)"),
    (lambda ds: ds.assign(PSFC=ds["PSFC"].assign_attrs(units="kPa")), r"PSFC.*Psurf"),  # Pa values labelled kPa
    (lambda ds: ds.assign(RAINNC=ds["RAINNC"] * xr.DataArray([1.0, 1.0, 0.0, 1.0], dims="Time")),
     r"RAINC \+ RAINNC: the accumulation decreases .* from 2005-09-21 03:00:00 to 2005-09-21 06:00:00 UTC at cell"),
    (lambda ds: ds.assign(LU_INDEX=ds["LU_INDEX"].where(ds["LU_INDEX"] != 16, 0.0)),
     r"variable LU_INDEX: 0 at cell \(south_north=7, west_east=0\) is not a USGS land-use category"),
    (lambda ds: ds.assign(Times=ds["Times"].copy(data=np.array([b"2005-09-21_00:00:00", b"junk", b"x", b"y"], "S19"))),
     r"variable Times: 'junk' at index 1 is not a time"),
    # read as > 0.5 before: a land cell of 0.3 or NaN became water, its forcing all NaN, without a word
    (lambda ds: ds.assign(LANDMASK=ds["LANDMASK"].where(~((ds.south_north == 3) & (ds.west_east == 3)), 0.3)),
     r"LANDMASK is 0.3.* at cell \(south_north=3, west_east=3\) \(1 cell\(s\) not 0 or 1\); expected 1 where"),
    (lambda ds: ds.assign(LANDMASK=ds["LANDMASK"].where(~((ds.south_north == 3) & (ds.west_east == 3)))),
     r"LANDMASK is nan at cell \(south_north=3, west_east=3\)"),
])  # fmt: skip
def test_wrf_bad_input_names_file_and_variable(small_wrf, tmp_path, damage, message):
    path = _write(damage(small_wrf.copy()), tmp_path / "wrf_bad.nc")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match=r"wrf_bad\.nc: .*" + message):
            read_site(path)
