"""PLUMBER2 Met/Flux pairs, gridded forcing files and the read_site dispatch (README §7, §8)."""

from __future__ import annotations

import warnings

import dask.array
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from hybridlsm.data import (
    DataError,
    DataWarning,
    detect_format,
    energy_balance_closure,
    read_gridded,
    read_plumber2,
    read_site,
    read_sites,
)
from hybridlsm.domain import domain_from_grid


@pytest.fixture(scope="module")
def orig(shared_data):
    return shared_data / "fluxnet" / "original"


@pytest.fixture(scope="module")
def dk_fou(orig):
    with pytest.warns(DataWarning, match=r"_Flux.nc: site DK-Fou: no utc_offset_h in the file or the site table"):
        return read_plumber2(orig / "DK-Fou_2005-2005_FLUXNET2015_Met.nc")


@pytest.fixture(scope="module")
def wi7(orig):
    with pytest.warns(DataWarning, match=r"site US-Wi7: no canopy_height, measurement_height in the file"):
        return read_plumber2(orig / "US-Wi7_2005-2005_FLUXNET2015_Flux.nc")  # finds the Met partner


def test_plumber2_dk_fou(dk_fou):
    ds = dk_fou
    assert dict(ds.sizes) == {"time": 17520}  # y, x squeezed
    assert ds["time"].values[0] == np.datetime64("2005-01-01T00:00")
    assert ds["time"].values[-1] == np.datetime64("2005-12-31T23:30")
    assert ds.attrs["time_step_s"] == 1800.0 and ds.attrs["source_format"] == "plumber2-netcdf"
    a = ds.attrs
    assert (a["site_id"], a["site_name"], a["igbp"]) == ("DK-Fou", "Foulum", "CRO")
    assert (a["latitude"], a["longitude"], a["elevation"]) == (56.4842, 9.58722, 51.0)
    assert (a["measurement_height"], a["canopy_height"]) == (3.5, 1.0)
    assert np.isnan(a["utc_offset_h"])  # no time-zone information in the file
    assert a["missing_metadata"] == "utc_offset_h"
    # Met and Flux merged; sample values of the first step (units already canonical)
    assert ds["Tair"].values[0] == pytest.approx(273.512, abs=1e-3)
    assert ds["Psurf"].values[0] == pytest.approx(100116.0, abs=1.0)
    assert ds["Qair"].values[0] == pytest.approx(0.00352668, rel=1e-5)
    assert ds["LWdown"].values[0] == pytest.approx(253.457, abs=1e-3)
    assert ds["Rnet"].values[0] == pytest.approx(-41.9439, abs=1e-4)
    assert ds["Qh_cor"].values[0] == pytest.approx(-9.96353, abs=1e-5)
    assert ds["Tair"].attrs["units"] == "K" and ds["Precip"].attrs["source_units"] == "kg/m2/s"
    # QC as int8; PLUMBER2 flags kept (LWdown is ERA-Interim filled everywhere: 4)
    assert ds["Tair_qc"].dtype == np.int8 and set(np.unique(ds["Tair_qc"])) == {0, 1, 2, 3}
    assert set(np.unique(ds["LWdown_qc"])) == {4}
    assert set(np.unique(ds["CO2air_qc"])) == {0, 1, 2, 3, 101}
    # Ustar is missing in 32 % of steps; its flag is -1 exactly there
    assert float(ds["Ustar"].isnull().mean()) == pytest.approx(0.320, abs=5e-4)
    assert np.array_equal(ds["Ustar_qc"].values == -1, ds["Ustar"].isnull().values)
    assert "NEE" in ds.attrs["unmapped_variables"] and "LAI_alternative" in ds.attrs["unmapped_variables"]
    # README §7: low energy-balance ratio 0.31 over the year
    c = energy_balance_closure(ds)
    assert c["ratio"] == pytest.approx(0.3078, abs=5e-4) and c["n"] == 17520 and c["with_ground_heat"]


def test_plumber2_us_wi7(wi7):
    ds = wi7
    assert ds.sizes["time"] == 17520 and ds.attrs["site_id"] == "US-Wi7"
    assert ds.attrs["igbp"] == "OSH" and ds.attrs["elevation"] == 335.0
    assert (ds.attrs["latitude"], ds.attrs["longitude"]) == (46.6491, -91.0693)
    # time_zone America/Chicago: standard-time offset -6 h
    assert ds.attrs["utc_offset_h"] == -6.0 and ds.attrs["time_zone"] == "America/Chicago"
    assert np.isnan(ds.attrs["measurement_height"]) and np.isnan(ds.attrs["canopy_height"])
    assert "Qg" not in ds and "Qg_qc" not in ds and "Qg_qc" in ds.attrs["unmapped_variables"]
    assert float(ds["Rnet"].notnull().mean()) == pytest.approx(0.43, abs=0.005)
    assert ds["Tair"].values[0] == pytest.approx(256.95, abs=1e-3)
    assert ds["Psurf"].values[0] == pytest.approx(99308.0, abs=1.0)
    assert ds["Qle"].values[0] == pytest.approx(3.72033, abs=1e-5)
    assert ds["Qh"].values[0] == pytest.approx(2.76867, abs=1e-5)
    assert ds["Tair_qc"].values[0] == 4
    assert len(ds.attrs["source_file"].split("; ")) == 2


def test_plumber2_variable_name_case_and_missing_partner(orig, tmp_path):
    src = xr.open_dataset(orig / "DK-Fou_2005-2005_FLUXNET2015_Met.nc").isel(time=slice(0, 96))
    renamed = src.rename({"Psurf": "PSurf", "Psurf_qc": "PSurf_qc", "Tair": "TAIR"})
    path = tmp_path / "DK-Fou_2005-2005_FLUXNET2015_Met.nc"
    renamed.to_netcdf(path)
    src.close()
    with pytest.warns(DataWarning, match="partner file DK-Fou_2005-2005_FLUXNET2015_Flux.nc was not found"):
        ds = read_plumber2(path)
    assert ds.sizes["time"] == 96
    assert ds["Psurf"].attrs["source_variable"] == "PSurf" and ds["Tair"].attrs["source_variable"] == "TAIR"
    assert ds["Psurf"].values[0] == pytest.approx(100116.0, abs=1.0) and "Psurf_qc" in ds
    assert "Qle" not in ds



def test_plumber2_time_zone_must_agree_with_the_site_offset(orig, tmp_path):
    """A file's time_zone only filled a missing utc_offset_h: declared UTC and given +1 h, every
    step was an hour off without a word."""
    src = xr.open_dataset(orig / "DK-Fou_2005-2005_FLUXNET2015_Met.nc").isel(time=slice(0, 48)).load()
    src.close()
    for i, (zone, text) in enumerate((("Europe/Copenhagen", None),
                                      ("UTC", r"time_zone 'UTC' \(standard time UTC\+0 h\) disagrees with the site's "
                                              r"utc_offset_h \+1 \(metadata= or sites.csv\)"),
                                      ("Mars/Olympus", r"time_zone 'Mars/Olympus' is not a time zone name"))):
        src["time"].attrs["time_zone"] = zone
        path = tmp_path / f"XX-Tz{i}_2005-2005_FLUXNET2015_Met.nc"
        src.to_netcdf(path)
        if text is None:
            assert read_plumber2(path, find_partner=False, metadata={"utc_offset_h": 1.0}).attrs["utc_offset_h"] == 1.0
            assert read_plumber2(path, find_partner=False).attrs["utc_offset_h"] == 1.0  # from the zone
            with pytest.raises(DataError, match=r"site metadata key utc_offset_h is 'one'; expected a number"):
                read_plumber2(path, find_partner=False, metadata={"utc_offset_h": "one"})  # not a TypeError
            flux = xr.open_dataset(orig / "DK-Fou_2005-2005_FLUXNET2015_Flux.nc").isel(time=slice(0, 48)).load()
            flux["time"].attrs["time_zone"] = "UTC"
            flux.to_netcdf(tmp_path / f"XX-Tz{i}_2005-2005_FLUXNET2015_Flux.nc")
            with pytest.raises(DataError, match=r"Flux.nc: variable time: attribute time_zone 'UTC' differs from "
                                                r"'Europe/Copenhagen' of the other file of the pair"):
                read_plumber2(path)
        else:
            with pytest.raises(DataError, match=rf"XX-Tz{i}_2005-2005_FLUXNET2015_Met.nc: variable time: attribute " + text):
                read_plumber2(path, find_partner=False, metadata={"utc_offset_h": 1.0})


def test_plumber2_a_variable_in_both_files_must_be_one_copy(orig, tmp_path):
    """The Met file's copy of a variable both files hold was used and the Flux file's dropped
    without a word (nor listed as unused)."""
    met = xr.open_dataset(orig / "DK-Fou_2005-2005_FLUXNET2015_Met.nc").isel(time=slice(0, 96)).load()
    flux = xr.open_dataset(orig / "DK-Fou_2005-2005_FLUXNET2015_Flux.nc").isel(time=slice(0, 96)).load()
    flux.to_netcdf(tmp_path / "XX-Dup_2005-2005_FLUXNET2015_Flux.nc")
    met["Qle"] = flux["Qle"]  # the same values: nothing lost
    met.to_netcdf(tmp_path / "XX-Dup_2005-2005_FLUXNET2015_Met.nc")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        ds = read_plumber2(tmp_path / "XX-Dup_2005-2005_FLUXNET2015_Met.nc")
    np.testing.assert_array_equal(ds["Qle"].values, flux["Qle"].values.reshape(-1))
    # the Met copy's gaps filled from the Flux copy, counted; the Flux file's flags with its values
    met["Qle"] = flux["Qle"].where(xr.DataArray(np.arange(96) % 10 != 3, dims="time"))
    met.to_netcdf(tmp_path / "XX-Dup_2005-2005_FLUXNET2015_Met.nc")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        ds = read_plumber2(tmp_path / "XX-Dup_2005-2005_FLUXNET2015_Met.nc")
    np.testing.assert_array_equal(ds["Qle"].values, flux["Qle"].values.reshape(-1))
    assert "Qle: 10 step(s) missing in" in ds.attrs["repairs"] and "Qle_qc" in ds
    met["Qle"] = flux["Qle"] + 10.0
    met.to_netcdf(tmp_path / "XX-Dup_2005-2005_FLUXNET2015_Met.nc")
    with pytest.raises(DataError, match=r"XX-Dup_2005-2005_FLUXNET2015_Flux.nc: variable Qle is also in .*XX-Dup_2005-"
                                        r"2005_FLUXNET2015_Met.nc, and the two differ at time 2005-01-01.*96 step"):
        read_plumber2(tmp_path / "XX-Dup_2005-2005_FLUXNET2015_Met.nc")

def test_plumber2_wrong_units_named(orig, tmp_path):
    src = xr.open_dataset(orig / "DK-Fou_2005-2005_FLUXNET2015_Met.nc").isel(time=slice(0, 48))
    bad = src.copy()
    bad["Psurf"].attrs["units"] = "furlongs"
    path = tmp_path / "XX-Bad_2005-2005_FLUXNET2015_Met.nc"
    bad.to_netcdf(path)
    with pytest.raises(DataError, match=r"XX-Bad_2005-2005_FLUXNET2015_Met.nc: variable Psurf \(Psurf\): units 'furlongs'; expected 'Pa'"):
        read_plumber2(path, find_partner=False)
    bad = src.copy()
    bad["Tair"] = bad["Tair"] - 273.15  # values in degC, attribute still says K
    path2 = tmp_path / "XX-Bad2_2005-2005_FLUXNET2015_Met.nc"
    bad.to_netcdf(path2)
    with pytest.raises(DataError, match=r"XX-Bad2_2005-2005_FLUXNET2015_Met.nc: column Tair \(Tair\): 48 of 48 values outside the plausible range 223.15..333.15 K"):
        read_plumber2(path2, find_partner=False)
    src.close()


def test_plumber2_irrigated_metadata_is_a_fraction_or_refused(orig):
    path = orig / "DK-Fou_2005-2005_FLUXNET2015_Met.nc"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        assert read_plumber2(path, find_partner=False, metadata={"irrigated": "yes"}).attrs["irrigated"] == 1.0
        assert read_plumber2(path, find_partner=False, metadata={"irrigated": 0.25}).attrs["irrigated"] == 0.25
        with pytest.raises(DataError, match=r"DK-Fou_2005-2005_FLUXNET2015_Met.nc: metadata irrigated: 'sometimes'; "
                                            r"expected true/false or a fraction"):
            read_plumber2(path, find_partner=False, metadata={"irrigated": "sometimes"})


@pytest.fixture(scope="module")
def livneh(shared_data):
    with pytest.warns(DataWarning, match="variable wind: units attribute 'mm s-1' is known to be wrong; read as 'm s-1'"):
        return read_gridded(shared_data / "gridded" / "livneh_NAmerExt_15Oct2014.WalnutGulch.2008.nc")



@pytest.mark.parametrize("name", ["mask", "Mask", "MASK"])
def test_a_grid_mask_in_any_case_masks_its_cells(shared_data, tmp_path, name):
    """A 'Mask' or 'MASK' variable was neither the grid's mask nor listed as unused: the masked-out
    cell became a column without a word."""
    with xr.open_dataset(shared_data / "gridded" / "livneh_NAmerExt_15Oct2014.WalnutGulch.2008.nc",
                         decode_times=False, mask_and_scale=False) as src:
        grid = src.isel(time=slice(0, 48)).load()
    grid["mask"].values[0, 0] = 0
    grid.rename_vars({"mask": name}).to_netcdf(tmp_path / "grid.nc")
    ds = read_gridded(tmp_path / "grid.nc")
    assert ds["mask"].attrs["source_variable"] == name and int(ds["mask"].values.sum()) == 14
    assert "y0_x0" not in domain_from_grid(ds.load()).column_ids
    grid.assign(**{"MASK": grid["mask"]}).to_netcdf(tmp_path / "two.nc")
    if name == "mask":
        with pytest.raises(DataError, match=r"two.nc: variables \['mask', 'MASK'\] all name the field 'mask'"):
            read_gridded(tmp_path / "two.nc")


def test_a_grids_declared_time_zone_is_read_in_any_spelling(shared_data, tmp_path):
    """Only 'utc', 'gmt', 'z' counted as UTC: 'Etc/UTC' or 'UTC0' times were read as local time
    (7 h off at Walnut Gulch), and any other zone name was ignored."""
    with xr.open_dataset(shared_data / "gridded" / "livneh_NAmerExt_15Oct2014.WalnutGulch.2008.nc",
                         decode_times=False, mask_and_scale=False) as src:
        grid = src.isel(time=slice(0, 8)).load()

    def read(zone, **kw):
        grid["time"].attrs["time_zone"] = zone
        path = tmp_path / f"grid{len(list(tmp_path.iterdir()))}.nc"
        grid.to_netcdf(path)
        return read_gridded(path, **kw)

    for zone in ("UTC", "Etc/UTC", "GMT+0", "Universal", "UTC0"):  # shifted to local standard time
        ds = read(zone)
        assert str(ds["time"].values[0])[:16] == "2007-12-31T17:00" and ds.attrs["utc_offset_h"] == -7.0, zone
    ds = read("America/Phoenix")  # the zone's own times: its standard offset, no shift
    assert str(ds["time"].values[0])[:16] == "2008-01-01T00:00" and ds.attrs["utc_offset_h"] == -7.0
    assert "time_zone 'America/Phoenix'" in ds.attrs["utc_offset_rule"]
    with pytest.warns(DataWarning, match=r"time_zone 'America/Denver' has daylight-saving time; its times are taken as "
                                         r"standard time"):
        assert read("America/Denver").attrs["utc_offset_h"] == -7.0
    with pytest.raises(DataError, match=r"attribute time_zone 'Mars/Olympus' is not a time zone name"):
        read("Mars/Olympus")
    # Irish winter time is zoneinfo's negative DST: utcoffset - dst put Dublin at UTC+1
    with pytest.warns(DataWarning, match="daylight-saving"):
        assert read("Europe/Dublin", metadata={"utc_offset_h": 0.0}).attrs["utc_offset_h"] == 0.0
    with pytest.raises(DataError, match=r"grid\d+.nc: metadata: site metadata key utc_offset_h is 99, outside -12..14"):
        read("UTC", metadata={"utc_offset_h": 99.0})  # was a 99 h shift
    with pytest.raises(DataError, match=r"time_zone 'America/Phoenix' \(standard time UTC-7 h\) disagrees with the "
                                        r"given utc_offset_h -6"):
        read("America/Phoenix", metadata={"utc_offset_h": -6.0})

@pytest.fixture(scope="module")
def stehekin(shared_data):
    return read_gridded(shared_data / "gridded" / "Stehekin_image_test.forcings_10days.0.0625_deg.1949.nc")


def test_gridded_livneh(livneh):
    ds = livneh
    assert dict(ds.sizes) == {"time": 2928, "y": 3, "x": 5}
    assert ds["Tair"].dims == ("time", "y", "x")
    assert ds["time"].values[0] == np.datetime64("2008-01-01T00:00")
    assert ds["time"].values[-1] == np.datetime64("2008-12-31T21:00")
    assert ds.attrs["time_step_s"] == 10800.0
    np.testing.assert_allclose(ds["lat"].values, [31.65625, 31.71875, 31.78125])
    assert ds["lon"].values[0] == -110.15625 and ds["lon"].values[-1] == -109.90625
    assert (ds["mask"].values == 1).all()
    for v in ("Tair", "SWdown", "LWdown", "Psurf", "RH", "Precip", "Wind", "Qair", "VPD"):
        assert isinstance(ds[v].data, dask.array.Array), v  # lazy
    # first time step, cells (y=0, x=0..2) of the file: temp 2.4023113 C, air_pressure 86.65674848 kPa
    t0 = ds.isel(time=0, y=0)
    np.testing.assert_allclose(t0["Tair"].values[:3], np.array([2.4023113, 2.20899399, 1.73851008]) + 273.15, atol=1e-6)
    np.testing.assert_allclose(t0["Psurf"].values[0], 86656.74848, atol=1e-3)
    np.testing.assert_allclose(t0["Wind"].values[0], 6.79475594, atol=1e-6)
    np.testing.assert_allclose(t0["LWdown"].values[0], 241.1355357, atol=1e-6)
    # Qair from vapour pressure 0.41036022 kPa and the cell's pressure
    e, p = 410.36022, 86656.74848
    assert float(t0["Qair"].values[0]) == pytest.approx(0.622 * e / (p - 0.378 * e), rel=1e-6)
    assert "wrong" in ds["Wind"].attrs["note"]
    wind = ds["Wind"].values
    assert wind.min() == pytest.approx(0.29281, abs=1e-4) and wind.max() == pytest.approx(8.70447, abs=1e-4)
    # prec in mm per 3-hour step -> kg m-2 s-1; maximum 6.0176706 mm
    assert float(ds["Precip"].max()) == pytest.approx(6.017670631408691 / 10800.0, rel=1e-9)


def test_gridded_stehekin(stehekin):
    ds = stehekin
    assert dict(ds.sizes) == {"time": 240, "y": 8, "x": 10}
    assert ds.attrs["time_step_s"] == 3600.0
    assert ds["time"].values[-1] == np.datetime64("1949-01-10T23:00")
    assert isinstance(ds["Tair"].data, dask.array.Array)
    assert ds["Tair"].dtype == np.float32  # follows the file
    all_missing = ds["Tair"].isnull().all("time").values
    assert int(all_missing.sum()) == 16
    assert np.array_equal(ds["Psurf"].isnull().all("time").values, all_missing)
    assert not ds["Tair"].isnull().values[:, ~all_missing].any()
    v = ds.isel(time=0, y=0, x=2)
    assert float(v["Psurf"]) == pytest.approx(79897.8, abs=0.1)
    assert float(v["Precip"]) == pytest.approx(0.4312 / 3600.0, rel=1e-5)
    assert float(v["Tair"]) == pytest.approx(-11.749487 + 273.15, abs=1e-4)
    assert float(ds["Tair"].max()) == pytest.approx(1.7199951 + 273.15, abs=1e-4)


def test_gridded_wrong_unit_detected(tmp_path):
    t = pd.date_range("2000-01-01", periods=8, freq="h")
    ds = xr.Dataset(
        {"tas": (("time", "lat", "lon"), np.full((8, 2, 2), 285.0), {"units": "C"}),
         "pres": (("time", "lat", "lon"), np.full((8, 2, 2), 1000.0), {"units": "kPa"})},
        coords={"time": t, "lat": [1.0, 2.0], "lon": [3.0, 4.0]},
    )
    path = tmp_path / "grid.nc"
    ds.to_netcdf(path)
    with pytest.raises(DataError, match=r"grid.nc: column tas \(Tair\): 32 of 32 values outside .* the values look like K, not C"):
        read_gridded(path)


def test_the_wind_of_a_grid_stored_north_to_south_turns_with_its_rows(tmp_path):
    """The regional air layer advects along increasing index: a grid stored with latitude
    descending (as many reanalyses are) advected its air against the wind. The grid keeps the
    file's layout; ``grid_axis_signs`` says which way each index runs (lat/lon, else projected y/x;
    eastward across the antimeridian too), and the regional data turns the wind components."""
    from hybridlsm.data.gridded import grid_axis_signs
    from hybridlsm.domain import domain_from_grid
    from hybridlsm.models.regional import region_data

    t = pd.date_range("2000-06-01", periods=8, freq="h")
    rng = np.random.default_rng(0)
    tair = 290.0 + rng.standard_normal((8, 3, 2))
    north = xr.Dataset({"Tair": (("time", "lat", "lon"), tair[:, ::-1], {"units": "K"}),
                        "Wind_N": (("time", "lat", "lon"), np.full((8, 3, 2), 2.0), {"units": "m s-1"})},
                       coords={"time": t, "lat": [36.0, 35.0, 34.0], "lon": [179.5, -179.5]})
    north.to_netcdf(tmp_path / "north.nc")
    ds = read_gridded(tmp_path / "north.nc")
    np.testing.assert_array_equal(ds["lat"].values, [36.0, 35.0, 34.0])  # the file's layout
    np.testing.assert_allclose(ds["Tair"].values, tair[:, ::-1])
    assert grid_axis_signs(ds) == (1.0, -1.0)
    west = read_gridded(_write(north.isel(lon=slice(None, None, -1)), tmp_path / "west.nc"))
    assert grid_axis_signs(west) == (-1.0, -1.0)
    assert grid_axis_signs(read_gridded(_write(north.isel(lat=slice(None, None, -1)), tmp_path / "up.nc"))) == (1.0, 1.0)
    # projected: a northing that decreases along y; no coordinate at all: as stored
    projected = xr.Dataset(coords={"y": ("y", [3000.0, 2000.0, 1000.0]), "x": ("x", [0.0, 1000.0])})
    assert grid_axis_signs(projected) == (1.0, -1.0) and grid_axis_signs(xr.Dataset()) == (1.0, 1.0)
    # the regional models' forcing: the northward wind runs toward lower row index in this grid
    grid = _regional_grid(lat=[36.0, 35.0, 34.0])
    data = region_data(domain_from_grid(grid).grid_dataset(), np.float64)
    np.testing.assert_allclose(np.asarray(data.forcing.wind_v), -2.0)
    np.testing.assert_allclose(np.asarray(data.forcing.wind_u), 1.0)
    flipped = region_data(domain_from_grid(_regional_grid(lat=[34.0, 35.0, 36.0])).grid_dataset(), np.float64)
    np.testing.assert_allclose(np.asarray(flipped.forcing.wind_v), 2.0)


def _write(ds: xr.Dataset, path) -> object:
    ds.to_netcdf(path)
    return path


def _regional_grid(lat) -> xr.Dataset:
    """A canonical 3 x 2 grid with a northward and an eastward wind on the given latitudes."""
    t = pd.date_range("2000-06-01", periods=6, freq="h")
    full = lambda v: (("time", "y", "x"), np.full((6, 3, 2), v))  # noqa: E731
    ds = xr.Dataset({"Tair": full(290.0), "Qair": full(0.008), "Psurf": full(1e5), "Wind": full(2.2),
                     "Wind_E": full(1.0), "Wind_N": full(2.0), "SWdown": full(300.0), "LWdown": full(350.0),
                     "Precip": full(0.0)},
                    coords={"time": t, "lat": ("y", lat), "lon": ("x", [-98.0, -97.9])},
                    attrs={"time_step_s": 3600.0, "site_id": "g"})
    return ds.assign_coords(land_cover=(("y", "x"), np.full((3, 2), 10)))


def test_a_static_field_off_the_grid_is_named_not_dropped(tmp_path):
    t = pd.date_range("2000-06-01", periods=8, freq="h")
    north = xr.Dataset({"Tair": (("time", "lat", "lon"), np.full((8, 3, 2), 290.0), {"units": "K"})},
                       coords={"time": t, "lat": [36.0, 35.0, 34.0], "lon": [179.5, -179.5]})
    # a land-cover field not on the grid's dims was dropped without a word
    north.assign(land_cover=(("time", "lat", "lon"), np.full((8, 3, 2), 10))).to_netcdf(tmp_path / "lc.nc")
    with pytest.warns(DataWarning, match=r"lc.nc: variable land_cover has dims \('time', 'lat', 'lon'\), not the "
                                         r"grid's \(lat, lon\); it is not used"):
        assert "land_cover" in read_gridded(tmp_path / "lc.nc").attrs["unmapped_variables"]


def test_celsius_labelled_kelvin_and_a_model_calendar_are_named(tmp_path):
    t = np.arange(8.0)
    ds = xr.Dataset({"tas": (("time", "lat", "lon"), np.full((8, 2, 2), 12.0), {"units": "K"})},
                    coords={"time": ("time", t, {"units": "hours since 2000-01-01 00:00:00"}), "lat": [1.0, 2.0],
                            "lon": [3.0, 4.0]})
    ds.to_netcdf(tmp_path / "celsius.nc")
    with pytest.raises(DataError, match=r"celsius.nc: column tas \(Tair\).* the values look like degC, not K"):
        read_gridded(tmp_path / "celsius.nc")
    ds["time"].attrs["calendar"] = "noleap"
    ds["tas"] = ds["tas"] + 273.15
    ds.to_netcdf(tmp_path / "noleap.nc")
    with pytest.raises(DataError, match=r"noleap.nc: time could not be decoded to dates \(units 'hours since "
                                        r"2000-01-01 00:00:00', calendar 'noleap'\); calendar 'noleap' is not the real one"):
        read_gridded(tmp_path / "noleap.nc")


def test_time_units_with_a_utc_offset_keep_the_files_clock(orig, tmp_path):
    """xarray decodes "... since 2005-01-01 00:00:00 +01:00" to UTC; the readers take the file's own
    clock (PLUMBER2: local standard time) and its declared offset, not UTC labelled local."""
    src = xr.open_dataset(orig / "DK-Fou_2005-2005_FLUXNET2015_Met.nc", decode_times=False).isel(time=slice(0, 96))
    src["time"].attrs["units"] = src["time"].attrs["units"] + " +01:00"
    path = tmp_path / "DK-Fou_2005-2005_FLUXNET2015_Met.nc"
    src.to_netcdf(path)
    src.close()
    ds = read_plumber2(path, find_partner=False)
    assert str(ds["time"].values[0])[:16] == "2005-01-01T00:00" and ds.attrs["utc_offset_h"] == 1.0
    grid = xr.Dataset({"tas": (("time", "lat", "lon"), np.full((8, 2, 2), 285.0), {"units": "K"})},
                      coords={"time": ("time", np.arange(8.0), {"units": "hours since 2008-01-01 00:00:00 -07:00"}),
                              "lat": [1.0, 2.0], "lon": [3.0, 4.0]})
    grid.to_netcdf(tmp_path / "grid.nc")
    ds = read_gridded(tmp_path / "grid.nc")
    assert str(ds["time"].values[0])[:16] == "2008-01-01T00:00" and ds.attrs["utc_offset_h"] == -7.0
    assert ds.attrs["utc_offset_rule"] == "declared in the time units (-7 h)"
    grid["time"].attrs["units"] = "hours since 2008-1-1 0:0:0 -7"  # the udunits form, which xarray decodes alike
    grid.to_netcdf(tmp_path / "grid2.nc")
    ds = read_gridded(tmp_path / "grid2.nc")
    assert str(ds["time"].values[0])[:16] == "2008-01-01T00:00" and ds.attrs["utc_offset_h"] == -7.0


def test_read_site_dispatch(shared_data, orig):
    assert detect_format(shared_data / "fluxnet" / "US-Wkg_200405-200412_HH.csv") == "fluxnet-csv"
    assert detect_format(orig / "DK-Fou_2005-2005_FLUXNET2015_Flux.nc") == "plumber2"
    gridded = shared_data / "gridded" / "Stehekin_image_test.forcings_10days.0.0625_deg.1949.nc"
    assert detect_format(gridded) == "gridded"
    assert detect_format(orig / "AMF_US-CRT_BASE_HH_2-5.csv") == "ameriflux-base"
    assert detect_format(orig / "CN-Cng_2008-2009_FLUXNET2015_Met.nc") == "plumber2"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        many = read_sites([
            orig / "DK-Fou_2005-2005_FLUXNET2015_Met.nc",
            orig / "DK-Fou_2005-2005_FLUXNET2015_Flux.nc",  # the same pair: read once
            orig / "AMF_US-Wkg_FLUXNET_FULLSET_MM_2004-2021_3-5.csv",
            gridded,
        ], metadata={"igbp": "test"}, chunks={"time": 24})
    assert [d.attrs["source_format"] for d in many] == ["plumber2-netcdf", "fluxnet-csv-MM", "gridded-netcdf"]
    assert "Qle" in many[0] and "Tair" in many[0]
    assert [d.attrs["igbp"] for d in many] == ["test"] * 3
    assert many[2]["Tair"].data.chunks[0][0] == 24  # chunks: gridded reader only
    with pytest.raises(TypeError, match=r"unknown keyword argument\(s\) \['colour'\]"):
        read_sites([gridded], colour="red")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dd = read_site(orig / "FLX_US-Wi7_FLUXNET2015_FULLSET_DD_2005-2005_1-4.csv", metadata={"latitude": 46.6491})
    # all-missing G_F_MDS, H_CORR, LE_CORR, and the site metadata that no source states
    assert [w.category for w in caught] == [DataWarning] * 4
    assert "no longitude, elevation, igbp, canopy_height, measurement_height, utc_offset_h" in str(caught[3].message)
    assert dd.attrs["missing_metadata"] == "longitude elevation igbp canopy_height measurement_height utc_offset_h"
    assert dd.attrs["latitude"] == 46.6491 and dd.attrs["source_format"] == "fluxnet-csv-DD"


def test_read_site_bad_paths(tmp_path):
    with pytest.raises(DataError, match="nothere.csv: no such file"):
        read_site(tmp_path / "nothere.csv")
    p = tmp_path / "data.xlsx"
    p.write_bytes(b"PK\x03\x04")
    with pytest.raises(DataError, match=r"data.xlsx: unknown file format '.xlsx'"):
        read_site(p)
    q = tmp_path / "broken.nc"
    q.write_bytes(b"this is not a netCDF file")
    with pytest.raises(DataError, match="broken.nc: cannot open as netCDF"):
        read_site(q)


# ---- property-based: corrupted netCDF files


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@pytest.fixture(scope="module")
def small_netcdf(orig, tmp_path_factory):
    """Bytes of a 96-step PLUMBER2 Met file and of a small grid, both NETCDF3 (64-bit offset)."""
    d = tmp_path_factory.mktemp("nc")
    with xr.open_dataset(orig / "DK-Fou_2005-2005_FLUXNET2015_Met.nc") as src:
        src[["Tair", "Tair_qc", "Psurf", "Qair", "SWdown", "latitude", "longitude"]].isel(time=slice(0, 96)).to_netcdf(
            d / "m.nc", format="NETCDF3_64BIT")
    t = pd.date_range("2000-01-01", periods=24, freq="h")
    grid = xr.Dataset(
        {"tas": (("time", "lat", "lon"), np.random.default_rng(0).uniform(-5, 5, (24, 3, 4)).astype("float32"), {"units": "C"}),
         "pres": (("time", "lat", "lon"), np.full((24, 3, 4), 85.0, dtype="float32"), {"units": "kPa"})},
        coords={"time": t, "lat": [1.0, 2.0, 3.0], "lon": [4.0, 5.0, 6.0, 7.0]},
    )
    grid.to_netcdf(d / "g.nc", format="NETCDF3_64BIT")
    return (d / "m.nc").read_bytes(), (d / "g.nc").read_bytes()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["plumber2", "gridded"]), cut=st.floats(0.0, 1.0),
       flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=4))
def test_corrupted_netcdf_read_or_raise(small_netcdf, kind, cut, flips):
    import tempfile
    from pathlib import Path

    data = bytearray(small_netcdf[0] if kind == "plumber2" else small_netcdf[1])
    for pos, byte in flips:
        data[int(pos * (len(data) - 1))] = byte
    data = bytes(data[: max(1, int(cut * len(data)))]) if cut < 1.0 else bytes(data)
    name = "XX-Cor_2005-2005_FLUXNET2015_Met.nc" if kind == "plumber2" else "grid_corrupt.nc"
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        path.write_bytes(data)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if kind == "plumber2":
                    ds = read_plumber2(path, find_partner=False)
                else:
                    ds = read_gridded(path).load()
        except DataError as exc:
            assert name in str(exc)
            return
    assert ds.sizes["time"] == (96 if kind == "plumber2" else 24)


# ---- PLUMBER2 pairs whose time axes differ at the edges (CN-Cng, README §3, §4)


@pytest.fixture(scope="module")
def cn_cng(orig, shared_data):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = read_site(orig / "CN-Cng_2008-2009_FLUXNET2015_Met.nc", sites=shared_data / "fluxnet" / "sites.csv")
    return ds, [str(w.message) for w in caught if issubclass(w.category, DataWarning)]


def test_cn_cng_pair_aligned(cn_cng, orig):
    ds, msgs = cn_cng
    assert ds.sizes["time"] == 35088
    assert ds["time"].values[0] == np.datetime64("2008-01-01T00:00")
    assert ds["time"].values[-1] == np.datetime64("2009-12-31T23:30")
    # the Met file's extra step 2010-01-01 00:00 repeats 2009-12-31 23:30: dropped, warned, recorded
    met = str(orig / "CN-Cng_2008-2009_FLUXNET2015_Met.nc")
    expected = (f"{met}: dropped time 2010-01-01 00:00 (not in CN-Cng_2008-2009_FLUXNET2015_Flux.nc; "
                "an exact repeat of 2009-12-31 23:30 in all 8 variables)")
    assert msgs == [expected]  # the site table gives the UTC offset: no other warning
    assert ds.attrs["n_repairs"] == 1 and ds.attrs["repairs"] == expected
    a = ds.attrs
    assert (a["site_id"], a["site_name"], a["igbp"], a["utc_offset_h"]) == ("CN-Cng", "Changling", "GRA", 8.0)
    assert (a["latitude"], a["longitude"], a["measurement_height"], a["canopy_height"]) == (44.5934, 123.5092, 2.0, 0.75)
    assert a["missing_metadata"] == ""


def test_cn_cng_against_canonical(cn_cng, shared_data):
    ds, _ = cn_cng
    can = read_site(shared_data / "fluxnet" / "CN-Cng_200801-200912_HH.csv")
    assert np.array_equal(ds["time"].values, can["time"].values)
    rows = [0, 1, 1000, 20000, 35087]
    # canonical values have 6 significant digits
    np.testing.assert_allclose(ds["Qh"].values[rows], [-13.3303, -13.0739, 2.98394, 53.4955, 4.88952], rtol=5e-6)
    np.testing.assert_allclose(ds["Qle"].values[rows], [-1.17417, -1.2286, 0.47415, 7.7419, 0.989418], rtol=5e-6)
    for v in ("Qh", "Qle", "Qg", "Qh_cor", "Qle_cor", "Tair", "SWdown", "LWdown", "Psurf", "Wind"):
        np.testing.assert_allclose(ds[v].values, can[v].values, rtol=1e-5, atol=1e-5, err_msg=v)
    assert np.array_equal(ds["Qh_qc"].values, can["Qh_qc"].values)
    assert {int(k): int(n) for k, n in zip(*np.unique(ds["Qh_qc"].values, return_counts=True))} == {0: 31858, 1: 2795, 2: 434, 3: 1}
    # Known difference (README §4): the canonical file keeps Ustar, Rnet, SWup only where their
    # PLUMBER2 qc is 0; this reader keeps the qc-5 values (PLUMBER2's statistical gap-fill) and
    # flags them 5, so qc_mask(ds, var, 0) gives exactly the canonical values.
    for v, n5 in (("Ustar", 3885), ("Rnet", 3036), ("SWup", 3240)):
        qc = ds[f"{v}_qc"].values
        assert int((qc == 5).sum()) == n5 and set(np.unique(qc)) == {0, 5}, v
        assert ds[v].notnull().all() and np.array_equal(can[v].isnull().values, qc == 5), v
        np.testing.assert_allclose(ds[v].values[qc == 0], can[v].values[qc == 0], rtol=1e-5, atol=1e-5, err_msg=v)


def test_plumber2_file_without_igbp(orig):
    with pytest.warns(DataWarning, match=r"CN-Cng_2008-2009_FLUXNET2015_Met.nc: site CN-Cng: no elevation, igbp, canopy_height, measurement_height, utc_offset_h in the file or the site table"):
        ds = read_plumber2(orig / "CN-Cng_2008-2009_FLUXNET2015_Met.nc", find_partner=False)
    assert ds.attrs["igbp"] == "" and ds.sizes["time"] == 35089  # alone: nothing to align
    assert ds.attrs["missing_metadata"] == "elevation igbp canopy_height measurement_height utc_offset_h"
    assert ds.attrs["n_repairs"] == 0 and ds.attrs["repairs"] == ""


@pytest.fixture(scope="module")
def dk_fou_pieces(orig):
    with xr.open_dataset(orig / "DK-Fou_2005-2005_FLUXNET2015_Met.nc") as m, \
            xr.open_dataset(orig / "DK-Fou_2005-2005_FLUXNET2015_Flux.nc") as f:
        return m.isel(time=slice(0, 48)).load(), f.isel(time=slice(0, 48)).load()


def _write_pair(tmp_path, met, flux, name="XX-Pair_2005-2005_FLUXNET2015"):
    met.to_netcdf(tmp_path / f"{name}_Met.nc")
    flux.to_netcdf(tmp_path / f"{name}_Flux.nc")
    return tmp_path / f"{name}_Met.nc"


def test_plumber2_pair_edge_repairs(dk_fou_pieces, tmp_path):
    met, flux = dk_fou_pieces
    # Met's last step (index 47) repeats index 46; Flux lacks it
    rep = met.copy(deep=True)
    for v in rep.data_vars:
        if "time" in rep[v].dims:
            rep[v][dict(time=47)] = rep[v].isel(time=46).values
    # Flux's first step (index 0) entirely missing; Met lacks it (Met starts one step later)
    fl = flux.isel(time=slice(0, 47)).copy(deep=True)
    for v in fl.data_vars:
        if "time" in fl[v].dims and np.issubdtype(fl[v].dtype, np.floating):
            fl[v][dict(time=0)] = np.nan
    path = _write_pair(tmp_path, rep.isel(time=slice(1, 48)), fl)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = read_plumber2(path)
    repairs = [str(w.message) for w in caught if "dropped time" in str(w.message)]
    assert len(repairs) == 2 and ds.attrs["n_repairs"] == 2
    assert "_Met.nc: dropped time 2005-01-01 23:30 (not in XX-Pair_2005-2005_FLUXNET2015_Flux.nc; an exact repeat of 2005-01-01 23:00" in repairs[0]
    assert "_Flux.nc: dropped time 2005-01-01 00:00 (not in XX-Pair_2005-2005_FLUXNET2015_Met.nc; every variable missing)" in repairs[1]
    assert ds.attrs["repairs"].splitlines() == repairs
    assert ds.sizes["time"] == 46
    assert ds["time"].values[0] == np.datetime64("2005-01-01T00:30") and ds["time"].values[-1] == np.datetime64("2005-01-01T23:00")
    assert ds["Qh"].values[0] == pytest.approx(float(flux["Qh"].values.ravel()[1]))


def test_plumber2_pair_other_mismatch_is_an_error(dk_fou_pieces, tmp_path):
    met, flux = dk_fou_pieces
    # an extra last step with real (different) values
    path = _write_pair(tmp_path, met, flux.isel(time=slice(0, 47)))
    with pytest.raises(DataError, match=r"XX-Pair_2005-2005_FLUXNET2015_Met.nc: time 2005-01-01 23:30 is not in .*_Flux.nc and is neither entirely missing nor an exact repeat of 2005-01-01 23:00"):
        read_plumber2(path)
    # axes shifted by 15 minutes
    shifted = flux.assign_coords(time=flux["time"].values + np.timedelta64(15, "m"))
    path = _write_pair(tmp_path, met, shifted, name="XX-Shift_2005-2005_FLUXNET2015")
    with pytest.raises(DataError, match=r"XX-Shift_2005-2005_FLUXNET2015_Flux.nc: time axis .* does not match .*_Met.nc"):
        read_plumber2(path)
