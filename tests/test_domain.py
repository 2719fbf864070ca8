"""Domains (docs/architecture.md §2): climate summaries against a hand computation, Domains from
sites and from grids, the grid writer restoring the layout, the real Little Washita grid, and the
time / loss-mask checks of ``Domain``."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from hybridlsm.data import DataError, DataWarning, read_gridded
from hybridlsm.data.virtual import synthetic_forcing
from hybridlsm.domain import (
    IGBP_BY_INDEX,
    GridLayout,
    SiteLayout,
    climate_summaries,
    domain_from_grid,
    domain_from_site,
    domain_from_sites,
    write_grid_outputs,
)

# ------------------------------------------------------------------ climate summaries by hand

# Constants written out here so that the check does not reuse the package's formulas.
SIGMA = 5.670367e-8  # Stefan-Boltzmann [W m-2 K-4]
CP = 1004.834  # [J kg-1 K-1]
EPS = 0.622
MAGNUS_A, MAGNUS_B, MAGNUS_C = 611.2, 17.62, 243.12  # Sonntag (1990)
DAYS = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], float)  # a non-leap year

# Two columns, one value per calendar month (year 2 is 2 K warmer and, for column 0, 1.5x wetter).
T_MONTH = 273.15 + np.array([[-2, 0, 4, 9, 14, 18, 21, 20, 16, 10, 4, 0],
                             [8, 9, 11, 13, 16, 19, 22, 22, 19, 15, 10, 7]], float)  # fmt: skip
P_MM_DAY = np.array([[1, 1, 2, 3, 4, 5, 3, 2, 2, 1, 1, 1],
                     [0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0]], float)  # column 1: all rain in July  # fmt: skip
P_YEAR2_FACTOR = np.array([1.5, 1.0])
SW_MONTH = np.array([[80, 120, 170, 220, 260, 290, 300, 270, 220, 160, 100, 70],
                     [60, 100, 160, 230, 280, 310, 320, 290, 230, 150, 80, 5]], float)  # fmt: skip
LW = np.array([300.0, 270.0])
PSURF = np.array([101325.0, 85000.0])


def _forcing(start: str, end: str):
    """Hourly (T, 2) forcing, constant within each calendar month."""
    time = pd.date_range(start, end, freq="h")
    m = time.month.to_numpy() - 1
    year2 = (time.year.to_numpy() - 2001)[:, None]
    tair = T_MONTH[:, m].T + 2.0 * year2
    precip = P_MM_DAY[:, m].T / 86400.0 * np.where(year2 == 1, P_YEAR2_FACTOR, 1.0)
    swdown = SW_MONTH[:, m].T
    lwdown = np.broadcast_to(LW, tair.shape).copy()
    psurf = np.broadcast_to(PSURF, tair.shape).copy()
    return time.values, tair, precip, swdown, lwdown, psurf


def _daily_pet_mm(t_k: np.ndarray, sw: np.ndarray, lw: float, p: float) -> np.ndarray:
    """Priestley-Taylor PET [mm day-1] of days with constant forcing, clipped at 0."""
    tc = t_k - 273.15
    rn = 0.77 * sw + 0.97 * (lw - SIGMA * t_k**4)
    es = MAGNUS_A * np.exp(MAGNUS_B * tc / (MAGNUS_C + tc))
    delta = es * MAGNUS_B * MAGNUS_C / (MAGNUS_C + tc) ** 2
    lam = (2.501 - 0.00237 * tc) * 1e6
    gamma = CP * p / (EPS * lam)
    return np.maximum(0.0, 1.26 * delta / (delta + gamma) * rn / lam * 86400.0)


def _by_hand(j: int, months: np.ndarray, years: int) -> dict[str, float]:
    """Summaries of column j from the months ``months`` (0-based) present in ``years`` years."""
    t_clim = np.mean([T_MONTH[j, months] + 2.0 * y for y in range(years)], axis=0)
    p_daily = np.mean([P_MM_DAY[j, months] * (P_YEAR2_FACTOR[j] if y == 1 else 1.0) for y in range(years)], axis=0)
    pet_daily = np.mean([_daily_pet_mm(T_MONTH[j, months] + 2.0 * y, SW_MONTH[j, months], LW[j], PSURF[j])
                         for y in range(years)], axis=0)  # fmt: skip
    p_month = p_daily * DAYS[months]
    scale = 12.0 / len(months)
    p_year = p_month.sum() * scale
    return {
        "mean_annual_temperature": float(np.mean(t_clim - 273.15)),
        "mean_annual_precipitation": float(p_year),
        "aridity_index": float((pet_daily * DAYS[months]).sum() * scale / p_year) if p_year > 0 else np.inf,
        "precipitation_seasonality": float(np.abs(p_month - p_year / 12.0).sum() / p_year)
        if len(months) == 12 else np.nan,
        "temperature_seasonality": float(np.std(t_clim)),
        "climate_months": float(len(months)),
    }


def test_climate_summaries_match_a_hand_computation_over_two_years():
    time, tair, precip, sw, lw, ps = _forcing("2001-01-01 00:00", "2002-12-31 23:00")
    assert tair.shape == (17520, 2)
    # the design exercises the clipping of negative daily net radiation (column 1 in December)
    rn_dec = 0.77 * SW_MONTH[1, 11] + 0.97 * (LW[1] - SIGMA * T_MONTH[1, 11] ** 4)
    assert rn_dec < 0
    got = climate_summaries(time, tair, precip, sw, lw, ps)
    for j in range(2):
        want = _by_hand(j, np.arange(12), years=2)
        for name, value in want.items():
            np.testing.assert_allclose(got[name][j], value, rtol=1e-9, err_msg=f"column {j}: {name}")
    # the figures themselves, for a reader: column 0 mean 10.5 degC (9.5 + 1 K of year 2),
    # column 1 the maximum Walsh-Lawler index 2 x 11/12 = 1.8333 (all rain in one month)
    np.testing.assert_allclose(got["mean_annual_temperature"], [10.5, 15.25], rtol=1e-12)
    np.testing.assert_allclose(got["mean_annual_precipitation"][1], 5.0 * 31, rtol=1e-12)
    p0 = (P_MM_DAY[0] * 1.25 * DAYS).sum()
    np.testing.assert_allclose(got["mean_annual_precipitation"][0], p0, rtol=1e-12)
    np.testing.assert_allclose(got["precipitation_seasonality"][1], 22.0 / 12.0, rtol=1e-12)
    np.testing.assert_allclose(got["temperature_seasonality"], np.std(T_MONTH, axis=1), rtol=1e-12)
    np.testing.assert_array_equal(got["climate_months"], [12.0, 12.0])
    assert 0.0 < got["aridity_index"][0] < got["aridity_index"][1]


def test_climate_summaries_of_a_partial_year_use_the_months_present():
    time, tair, precip, sw, lw, ps = _forcing("2001-01-01 00:00", "2001-03-31 23:00")
    got = climate_summaries(time, tair, precip, sw, lw, ps)
    np.testing.assert_array_equal(got["climate_months"], [3.0, 3.0])
    assert np.isnan(got["precipitation_seasonality"]).all()
    for j in range(2):
        want = _by_hand(j, np.arange(3), years=1)
        for name in ("mean_annual_temperature", "mean_annual_precipitation", "aridity_index",
                     "temperature_seasonality"):  # fmt: skip
            np.testing.assert_allclose(got[name][j], want[name], rtol=1e-9, err_msg=f"column {j}: {name}")
    # column 0: Jan-Mar 31 + 28 + 62 = 121 mm stand for the year (x 12 / 3)
    np.testing.assert_allclose(got["mean_annual_precipitation"][0], 121.0 * 4, rtol=1e-12)
    # column 1 has no rain in Jan-Mar: no aridity index (inf), not a division error
    assert got["mean_annual_precipitation"][1] == 0.0 and np.isinf(got["aridity_index"][1])


def test_climate_summaries_of_one_month_have_no_seasonality():
    time, tair, precip, sw, lw, ps = _forcing("2001-07-01 00:00", "2001-07-10 23:00")
    got = climate_summaries(time, tair, precip, sw, lw, ps)
    np.testing.assert_array_equal(got["climate_months"], [1.0, 1.0])
    assert np.isnan(got["temperature_seasonality"]).all() and np.isnan(got["precipitation_seasonality"]).all()
    np.testing.assert_allclose(got["mean_annual_temperature"], T_MONTH[:, 6] - 273.15, rtol=1e-12)
    np.testing.assert_allclose(got["mean_annual_precipitation"], P_MM_DAY[:, 6] * 31 * 12, rtol=1e-12)


# ------------------------------------------------------------------------ domains from sites


def _site(site_id: str, start: str = "2020-01-01", days: int = 3, seed: int = 0, **attrs) -> xr.Dataset:
    ds = synthetic_forcing(days=days, start=start, step_s=1800, latitude=32.0, longitude=-110.0,
                           utc_offset_h=-7, seed=seed, site_id=site_id)  # fmt: skip
    ds.attrs.update(attrs)
    return ds


def test_two_sites_on_one_time_axis_make_a_two_column_domain():
    a = _site("A", seed=0, igbp="GRA", canopy_height=0.5, measurement_height=3.0)
    b = _site("B", seed=1, igbp="ENF", canopy_height=18.0, measurement_height=30.0)
    b["Qle"] = ("time", np.linspace(0.0, 100.0, b.sizes["time"]), {"units": "W m-2"})
    b["Qle_qc"] = ("time", np.zeros(b.sizes["time"], np.int8))
    d = domain_from_sites([a, b])
    assert isinstance(d.layout, SiteLayout) and d.layout.site_ids == ("A", "B")
    assert (d.n_columns, d.n_steps) == (2, 144) and d.column_ids == ["A", "B"] and d.name == "A+B"
    assert d.data["Tair"].dims == ("time", "column")
    # a variable only one site has: NaN (float) or -1 (QC flags) in the other column, dtype kept
    assert np.isnan(d.data["Qle"].values[:, 0]).all()
    assert d.data["Qle_qc"].dtype == np.int8 and (d.data["Qle_qc"].values[:, 0] == -1).all()
    for i, src in enumerate((a, b)):
        col = d.column(i)
        np.testing.assert_array_equal(col["time"].values, src["time"].values)
        for v in src.data_vars:
            assert col[v].dims == ("time",)
            np.testing.assert_array_equal(col[v].values, src[v].values, err_msg=f"{src.attrs['site_id']}: {v}")
        for k in ("site_id", "igbp", "canopy_height", "measurement_height", "latitude", "longitude", "elevation",
                  "utc_offset_h", "time_step_s"):  # fmt: skip
            assert col.attrs[k] == src.attrs[k], k
        assert col.attrs["missing_metadata"] == ""  # the soil texture is not site metadata
        assert col.attrs["climate_months"] == 1.0 and np.isfinite(col.attrs["mean_annual_temperature"])
    np.testing.assert_array_equal(d.static_value("canopy_height"), [0.5, 18.0])
    np.testing.assert_array_equal(d.static_value("igbp"), ["GRA", "ENF"])


def test_site_outputs_say_their_time_zone_and_sign_conventions(tmp_path):
    """The time units carry no offset, which CF reads as UTC: each site's file says its offset from
    UTC and the readers' convention (local standard time, interval start); each flux its sign."""
    from hybridlsm.domain import write_site_outputs

    a = _site("A", seed=0, igbp="GRA", canopy_height=0.5, measurement_height=3.0, time_convention="start of the "
              "averaging interval, local standard time")
    b = _site("B", seed=1, igbp="ENF", canopy_height=18.0, measurement_height=30.0)
    b.attrs["utc_offset_h"] = 1.0
    d = domain_from_sites([a, b])
    n = d.n_steps
    outputs = {"Qh": np.zeros((n, 2)), "Qle_sd": np.ones((n, 2)), "SoilTemp": np.full((n, 2, 5), 290.0)}
    paths = write_site_outputs(d, outputs, tmp_path, "m.nc", {"model": "m"})
    for path, offset in zip(paths, (-7.0, 1.0)):
        with xr.open_dataset(path) as out:
            assert out.attrs["utc_offset_h"] == offset and out.attrs["model"] == "m"
            assert out.attrs["time_convention"] == "start of the averaging interval, local standard time"
            assert out["Qh"].attrs["long_name"] == "sensible heat flux (positive upward)"
            assert out["Qle_sd"].attrs["long_name"].startswith("total predictive standard deviation of Qle")
            assert "long_name" not in out["SoilTemp"].attrs  # the observed variable's ("tower layer") is not the model's


def test_sites_with_different_time_axes_are_an_error_naming_the_site():
    a, b = _site("A"), _site("US-Late", start="2020-01-02")
    with pytest.raises(DataError, match="site US-Late: its time axis"):
        domain_from_sites([a, b])
    with pytest.raises(DataError, match="site US-Short"):
        domain_from_sites([a, _site("US-Short", days=2)])
    with pytest.raises(DataError, match=r"\['A'\] given more than once"):
        domain_from_sites([a, _site("A")])


def test_missing_site_metadata_is_listed_and_stays_missing():
    d = domain_from_site(_site("X", igbp="", canopy_height=float("nan")))
    missing = str(d.static_value("missing_metadata")[0]).split()
    assert "igbp" in missing and "canopy_height" in missing
    assert "latitude" not in missing and "measurement_height" not in missing
    assert d.static_value("igbp")[0] == "" and np.isnan(d.static_value("canopy_height")[0])
    assert d.column(0).attrs["igbp"] == ""


# ------------------------------------------------------------------------ domains from grids

NY, NX, NT = 3, 4, 48
NAN_CELL = (1, 2)  # (iy, ix) of the cell without forcing (outside a basin; a gap is refused: test_pipeline_regional)


def _grid(coords_first: bool = False) -> xr.Dataset:
    rng = np.random.default_rng(0)
    base = {"Tair": 290.0, "Qair": 0.008, "Psurf": 97000.0, "Wind": 3.0, "SWdown": 200.0, "LWdown": 350.0,
            "Precip": 1e-5}  # fmt: skip
    time = pd.date_range("2001-06-01", periods=NT, freq="h")
    y = np.array([500.0, 1500.0, 2500.0])
    x = np.array([-10.0, -20.0, -30.0, -40.0])
    data = {}
    for name, value in base.items():
        values = value * (1.0 + 0.01 * rng.standard_normal((NT, NY, NX)))
        values[:, NAN_CELL[0], NAN_CELL[1]] = np.nan
        data[name] = (("time", "y", "x"), values, {"units": "x"})
    coords = {"time": time, "y": ("y", y, {"units": "m"}), "x": ("x", x, {"units": "m"})}
    if coords_first:  # x declared before y: Dataset.dims lists x first
        ds = xr.Dataset(coords={"x": coords["x"], "time": time, "y": coords["y"]})
        for name, value in data.items():
            ds[name] = value
    else:
        ds = xr.Dataset(data, coords=coords)
    ds.attrs.update(site_id="tiny grid", time_step_s=3600.0, latitude_approx=35.0, longitude_approx=-98.0)
    return ds


@pytest.mark.parametrize("coords_first", [False, True])
def test_grid_cells_with_complete_forcing_are_the_columns_and_are_written_back(tmp_path, coords_first):
    ds = _grid(coords_first)
    d = domain_from_grid(ds)
    layout = d.layout
    assert isinstance(layout, GridLayout) and layout.shape == (NY, NX)
    nan_flat = NAN_CELL[0] * NX + NAN_CELL[1]  # = 6
    np.testing.assert_array_equal(layout.cell_index, [k for k in range(NY * NX) if k != nan_flat])
    assert d.n_columns == NY * NX - 1 == 11
    assert f"y{NAN_CELL[0]}_x{NAN_CELL[1]}" not in d.column_ids and d.column_ids[0] == "y0_x0"
    assert d.column_ids[nan_flat] == "y1_x3"  # the flat index after the gap moves down by one
    np.testing.assert_array_equal(layout.y, [500.0, 1500.0, 2500.0])
    np.testing.assert_array_equal(layout.x, [-10.0, -20.0, -30.0, -40.0])
    # columns carry the cell's forcing
    np.testing.assert_array_equal(d.data["Tair"].values[:, 4], ds["Tair"].values[:, 1, 0])
    np.testing.assert_array_equal(d.data["Tair"].values[:, 7], ds["Tair"].values[:, 2, 0])
    # no per-cell lat/lon: the approximate point of the file stands for every cell
    np.testing.assert_array_equal(d.static_value("latitude"), np.full(11, 35.0))
    np.testing.assert_array_equal(d.static_value("igbp"), np.full(11, ""))

    qle = np.arange(NT * 11, dtype=float).reshape(NT, 11)
    soil = np.random.default_rng(1).random((NT, 11, 5))  # the 5 LaD soil layers
    path = write_grid_outputs(d, {"Qle": qle, "SoilTemp": soil}, tmp_path / "out.nc", {"model": "m"})
    with xr.open_dataset(path) as out:
        out = out.load()
    assert out["Qle"].dims == ("time", "y", "x") and out["Qle"].shape == (NT, NY, NX)
    assert out["SoilTemp"].dims == ("time", "soil_layer", "y", "x") and out.sizes["soil_layer"] == 5
    np.testing.assert_array_equal(out["y"].values, layout.y)
    np.testing.assert_array_equal(out["x"].values, layout.x)
    np.testing.assert_array_equal(out["time"].values, ds["time"].values)
    assert np.isnan(out["Qle"].values[:, NAN_CELL[0], NAN_CELL[1]]).all()
    assert np.isnan(out["SoilTemp"].values[:, :, NAN_CELL[0], NAN_CELL[1]]).all()
    for j, k in enumerate(layout.cell_index):
        iy, ix = divmod(int(k), NX)
        np.testing.assert_array_equal(out["Qle"].values[:, iy, ix], qle[:, j])
        np.testing.assert_array_equal(out["SoilTemp"].values[:, :, iy, ix], soil[:, j, :])
    assert np.isfinite(out["Qle"].values).sum() == NT * 11
    assert out["igbp"].values[NAN_CELL] == "" and out.attrs["model"] == "m" and out.attrs["grid"] == "tiny_grid"
    np.testing.assert_array_equal(out["lat"].values, np.full((NY, NX), 35.0))


def test_a_grid_wind_component_out_of_range_late_in_the_record_is_refused():
    """Wind_E and Wind_N drive the regional air layer: they were range-checked on the first 24
    steps only, so a 300 m s-1 component later on was advected silently."""
    ds = _grid()
    wind_e = np.full((NT, NY, NX), 2.0)
    wind_e[:, NAN_CELL[0], NAN_CELL[1]] = np.nan
    wind_e[30:, 0, 1] = 300.0
    ds["Wind_E"] = (("time", "y", "x"), wind_e, {"units": "m s-1"})
    with pytest.raises(DataError, match=r"Wind_E.*outside the physically possible range -40..40.*cell \(y=0, x=1\)"):
        domain_from_grid(ds)


def test_grid_land_cover_follows_the_igbp_numbering():
    ds = _grid()
    index = np.array([[1, 10, 12, 2], [9, 3, 5, 17], [0, 18, 10, 12]])
    with pytest.warns(DataWarning, match=r"2 of 11 cell\(s\) have a land_cover value that is no IGBP class \(0, 18\), "
                                         r"first at cell \(y=2, x=0\)"):  # never silently a default class
        d = domain_from_grid(ds, land_cover=xr.DataArray(index, dims=("y", "x")))
    assert IGBP_BY_INDEX[0] == "ENF" and IGBP_BY_INDEX[9] == "GRA" and IGBP_BY_INDEX[11] == "CRO"
    assert len(IGBP_BY_INDEX) == 17 and IGBP_BY_INDEX[16] == "WAT"
    # cell (1, 2) is not a column; index 0 and 18 are not IGBP classes
    want = ["ENF", "GRA", "CRO", "EBF", "SAV", "DNF", "WAT", "", "", "GRA", "CRO"]
    np.testing.assert_array_equal(d.static_value("igbp"), want)
    missing = d.static_value("missing_metadata")
    assert "igbp" in missing[7].split() and "igbp" not in missing[0].split()
    # CF flag_meanings with an 18th class (CLM's bare soil): no IGBP code for it
    lc = xr.DataArray(np.full((NY, NX), 18), dims=("y", "x"),
                      attrs={"flag_values": np.arange(1, 19), "flag_meanings": " ".join(["c"] * 18)})  # fmt: skip
    assert set(domain_from_grid(ds, land_cover=lc).static_value("igbp")) == {""}
    # classes named in flag_meanings are read by name, whatever their numbering
    named = xr.DataArray(np.where(index % 2 == 0, 7, 3), dims=("y", "x"),
                         attrs={"flag_values": [3, 7], "flag_meanings": "Water_Bodies grasslands"})  # fmt: skip
    codes = domain_from_grid(ds, land_cover=named).static_value("igbp")
    expected = np.where(np.delete(index.ravel(), 6) % 2 == 0, "GRA", "WAT")
    np.testing.assert_array_equal(codes, expected)
    # classes written as text (codes or names); a fractional code is refused, not truncated
    text = xr.DataArray(np.where(index % 2 == 0, "GRA", "water bodies"), dims=("y", "x"))
    np.testing.assert_array_equal(domain_from_grid(ds, land_cover=text).static_value("igbp"), expected)
    raw = xr.DataArray(np.where(index % 2 == 0, b"GRA", b"WAT"), dims=("y", "x"))  # netCDF characters
    np.testing.assert_array_equal(domain_from_grid(ds, land_cover=raw).static_value("igbp"), expected)
    numbers = xr.DataArray(np.where(index % 2 == 0, 10, 17).astype(object), dims=("y", "x"))
    np.testing.assert_array_equal(domain_from_grid(ds, land_cover=numbers).static_value("igbp"), expected)
    unpacked = xr.DataArray(np.where(index % 2 == 0, 10.0, 17.0) * (1 + 1e-15) - 1e-12, dims=("y", "x"))  # scale_factor
    np.testing.assert_array_equal(domain_from_grid(ds, land_cover=unpacked).static_value("igbp"), expected)
    with pytest.raises(DataError, match=r"land_cover: 2 value\(s\) are not class indices \(e.g. 10.4 at index \(0, 1\)"):
        domain_from_grid(ds, land_cover=xr.DataArray(np.where(index == 10, 10.4, index), dims=("y", "x")))
    # a land-cover field given as (x, y) is read by its dims, not its axis order
    d_t = domain_from_grid(ds, land_cover=xr.DataArray(index.T, dims=("x", "y")))
    np.testing.assert_array_equal(d_t.static_value("igbp"), want)
    with pytest.raises(DataError, match="land_cover"):
        domain_from_grid(ds, land_cover=xr.DataArray(index[:2], dims=("y", "x")))


@pytest.mark.slow  # kept out of make test-fast (a few seconds)
def test_little_washita_grid(shared_data):
    path = shared_data / "gridded" / "LittleWashita_NLDAS_41x41_120h.nc"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    ds = read_gridded(path)
    with xr.open_dataset(path) as raw:
        land_cover = raw["land_cover"].load()
        y_file = raw["y"].values
        x_file = raw["x"].values
    d = domain_from_grid(ds, land_cover=land_cover)
    assert d.n_columns == 41 * 41 == 1681 and d.n_steps == 120
    # data README §8.2: every cell one class
    assert Counter(d.static_value("igbp").tolist()) == {"GRA": 1098, "SAV": 399, "CRO": 166, "DNF": 18}
    np.testing.assert_array_equal(d.layout.y, y_file)
    np.testing.assert_array_equal(d.layout.x, x_file)
    np.testing.assert_array_equal(d.layout.y[[0, 1, -1]], [500.0, 1500.0, 40500.0])
    np.testing.assert_array_equal(d.layout.cell_index, np.arange(1681))
    assert d.layout.y_attrs.get("units") == "m"
    # column y3_x7 is the file's cell (y=3, x=7) and carries its class
    j = d.column_ids.index("y3_x7")
    code = int(land_cover.values[3, 7])
    assert d.static_value("igbp")[j] == IGBP_BY_INDEX[code - 1]
    np.testing.assert_allclose(d.data["Tair"].values[:, j], np.asarray(ds["Tair"].values)[:, 3, 7])
    # local standard time (UTC-6, interval starts): 1998-09-30 23:00 .. 10-05 22:00, so one hour of September
    assert (d.static_value("climate_months") == 2.0).all()


# ------------------------------------------------------------------------- time and masks


def test_select_time_outside_the_record_names_the_record():
    d = domain_from_site(_site("A"))  # 2020-01-01 00:00 .. 2020-01-03 23:30, half-hourly
    with pytest.raises(DataError, match=r"outside its record 2020-01-01T00:00.* \.\. 2020-01-03T23:30"):
        d.select_time("2021-01-01", "2021-02-01")
    with pytest.raises(DataError, match="2020-01-01T00:00"):
        d.select_time(end="2019-12-31")
    with pytest.raises(DataError, match="start 2020-01-03 is after end 2020-01-02"):  # said so, not "outside"
        d.select_time("2020-01-03", "2020-01-02")
    # inside the record but between two steps: no step, also an error
    with pytest.raises(DataError, match="no step"):
        d.select_time("2020-01-01T00:10", "2020-01-01T00:20")
    part = d.select_time("2020-01-02", "2020-01-02T23:30")
    assert part.n_steps == 48 and str(part.time[0])[:16] == "2020-01-02T00:00"
    assert d.select_time().n_steps == 144
    # an end given as a date alone includes that whole day, as the dates of a split do
    assert d.select_time("2020-01-02", "2020-01-02").n_steps == 48
    assert d.select_time(end="2020-01-02").n_steps == 96
    with pytest.raises(DataError, match="end 'tomorrow' is not a date"):
        d.select_time(end="tomorrow")


def test_loss_mask_shapes():
    d = domain_from_sites([_site("A"), _site("B", seed=1)])
    m1 = np.arange(144) < 100
    masked = d.with_loss_mask(m1)
    assert masked.data["loss_mask"].dims == ("time", "column") and masked.data["loss_mask"].shape == (144, 2)
    assert masked.data["loss_mask"].values.sum() == 200 and "loss_mask" not in d.data
    m2 = np.zeros((144, 2), bool)
    m2[:10, 1] = True
    assert d.with_loss_mask(m2).data["loss_mask"].values.sum() == 10
    with pytest.raises(ValueError, match=r"shape \(143, 2\); expected \(144, 2\)"):
        d.with_loss_mask(np.ones(143, bool))
    with pytest.raises(ValueError, match=r"expected \(144, 2\)"):
        d.with_loss_mask(np.ones((144, 3), bool))
    with pytest.raises(ValueError, match=r"expected \(144, 2\)"):
        d.with_loss_mask(np.ones((2, 144), bool))
