"""Regional runs through the model contract: ``data.grid`` configs, the registered regional models,
maps in the run directory and the report, and ``hybridlsm predict`` onto other grids (issue 15)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from hybridlsm.config import ConfigError
from hybridlsm.data import DataError
from hybridlsm.data.schema import DataWarning
from hybridlsm.domain import domain_from_grid
from hybridlsm.evaluation.maps import grid_skill
from hybridlsm.evaluation.training_curves import training_runs
from hybridlsm.models.regional import EARTH_RADIUS, active_cells, cell_spacing, region_data
from hybridlsm.models.registry import validate_run_config

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
LITTLE_WASHITA = SHARED / "gridded" / "LittleWashita_NLDAS_41x41_120h.nc"
WRF = SHARED / "gridded" / "wrf_d01_allvars_cropped.nc"
US_CRT = SHARED / "fluxnet" / "US-CRT_201101-201112_HH.csv"


def _grid(ny=3, nx=4, t=5, seed=0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    time = np.datetime64("2020-06-01T00:00") + np.arange(t) * np.timedelta64(1, "h")
    dims = ("time", "y", "x")
    shape = (t, ny, nx)
    ds = xr.Dataset({
        "Tair": (dims, 295.0 + rng.normal(0, 1, shape)), "Qair": (dims, np.full(shape, 0.01)),
        "Psurf": (dims, np.full(shape, 1e5)), "Wind": (dims, np.full(shape, 3.0)),
        "SWdown": (dims, np.full(shape, 400.0)), "LWdown": (dims, np.full(shape, 350.0)),
        "Precip": (dims, np.zeros(shape)), "Qh": (dims, rng.normal(50, 10, shape)),
    }, coords={"time": time, "y": ("y", np.arange(ny) * 2.0, {"units": "km"}),
               "x": ("x", np.arange(nx) * 2.0, {"units": "km"})},
        attrs={"time_step_s": 3600.0, "site_id": "toy"})
    ds["land_cover"] = (("y", "x"), np.where(np.arange(ny * nx).reshape(ny, nx) % 2 == 0, 10, 12),
                        {"flag_values": np.arange(1, 18), "flag_meanings": "ENF EBF DNF DBF MF CSH OSH WSA SAV GRA WET "
                         "CRO URB CVM SNO BSV WAT"})
    return ds


def _config(**data) -> dict:
    return {"name": "r", "data": data, "models": [{"name": "regional_fixed_kh"}]}


def test_a_config_has_sites_or_one_grid_split_in_time(tmp_path):
    f = tmp_path / "g.nc"
    f.write_text("")
    cfg = validate_run_config(_config(grid=str(f)), base_dir=tmp_path)
    assert cfg.data.grid.path == f and cfg.data.sites is None
    assert cfg.models[0].options["targets"] == ["Qle", "Qh"]  # data.targets' default fills the model's
    with pytest.raises(ConfigError, match="exactly one of 'sites'"):
        validate_run_config(_config(grid=str(f), sites=[str(f)]), base_dir=tmp_path)
    with pytest.raises(ConfigError, match="exactly one of 'sites'"):
        validate_run_config(_config(), base_dir=tmp_path)
    with pytest.raises(ConfigError, match="split leave_one_site_out needs sites"):
        validate_run_config(_config(grid=str(f), split={"leave_one_site_out": True}), base_dir=tmp_path)
    with pytest.raises(ConfigError, match="exactly one of: a file path, a virtual region"):
        validate_run_config(_config(grid={"path": str(f), "virtual_region": {"ny": 8}}), base_dir=tmp_path)
    cfg = validate_run_config(_config(grid={"virtual_region": {"ny": 8, "nx": 6, "days": 4}, "igbp": "CRO"}))
    assert (cfg.data.grid.virtual_region.ny, cfg.data.grid.virtual_region.nx, cfg.data.grid.igbp) == (8, 6, "CRO")
    dumped = cfg.model_dump(mode="json")["data"]
    assert "sites" not in dumped and dumped["grid"] == {"virtual_region": dumped["grid"]["virtual_region"],
                                                        "igbp": "CRO"}


def test_a_cell_without_forcing_is_not_a_column_and_a_gap_is_refused_naming_its_cell():
    ds = _grid()
    for v in ("Tair", "Qair", "Psurf", "Wind", "SWdown", "LWdown", "Precip"):
        ds[v][:, 0, 1] = np.nan  # outside a basin: no forcing at all
    assert domain_from_grid(ds).n_columns == 11
    ds["SWdown"][3, 2, 2] = np.nan  # one missing value: a gap, which used to drop the cell silently
    with pytest.raises(DataError, match=r"1 cell\(s\) have gaps in their forcing, e.g. SWdown at cell \(y=2, x=2\), "
                       r"time 2020-06-01T03:00.* \(step 3\)"):
        domain_from_grid(ds)
    ds.coords["mask"] = (("y", "x"), np.where(np.arange(12).reshape(3, 4) == 10, 0, 1))  # the gappy cell masked
    assert domain_from_grid(ds).n_columns == 10
    ds["Psurf"][4, 1, 3] = np.inf  # was called a gap (the readers check their first steps only)
    with pytest.raises(DataError, match=r"Psurf is infinite at cell \(y=1, x=3\), time 2020-06-01T04:00.* \(step 4; 1 "
                                        r"such value\(s\)\); expected finite numbers"):
        domain_from_grid(ds)



def test_one_mask_rule_for_the_domain_the_region_and_streaming(tmp_path):
    """The grid's mask was read three ways: ``domain_from_grid`` took a coordinate only (a mask
    variable was ignored) with <= 0 outside, the region kept cells whose mask is 1, streaming took
    either with <= 0 outside; a mask of 2, 0.5 or NaN was a column in memory and no cell of the
    region. Now one rule (``grid_mask``): 1 modelled, 0 not, anything else a DataError naming the cell."""
    from hybridlsm.models.registry import get_model, validate_options
    from hybridlsm.models.streaming import stream_column_model

    ds = _grid()
    as_variable = ds.assign(mask=(("y", "x"), np.where(np.arange(12).reshape(3, 4) == 5, 0, 1)))
    assert domain_from_grid(as_variable).n_columns == 11
    assert int(active_cells(as_variable).sum()) == 11 and not active_cells(as_variable)[1, 1]
    flipped = ds.assign_coords(mask=(("x", "y"), np.where(np.arange(12).reshape(4, 3) == 5, 0, 1)))  # (x=1, y=2)
    assert domain_from_grid(flipped).n_columns == 11 and not active_cells(flipped)[2, 1]
    physics = get_model("physics").build(validate_options("physics", {}))
    for bad in (2.0, 0.5, np.nan, -1.0):
        m = np.ones((3, 4))
        m[1, 2] = bad
        grid = ds.assign_coords(mask=(("y", "x"), m)).assign_attrs(source_file="toy.nc")
        text = rf"toy.nc: mask is .*{bad}.* at cell \(y=1, x=2\) \(1 cell\(s\) not 0 or 1\); expected 1 where"
        for read in (domain_from_grid, active_cells,
                     lambda g: stream_column_model(physics, g, tmp_path / "s.zarr", progress=False)):
            with pytest.raises(DataError, match=text):
                read(grid)
    with pytest.raises(DataError, match=r"mask has dims \('y',\); expected the grid's \(y, x\)"):
        domain_from_grid(ds.assign_coords(mask=("y", np.ones(3))))
    for read in (domain_from_grid, active_cells):  # was "no cell has complete forcing", and an all-NaN store streamed
        with pytest.raises(DataError, match=r"toy.nc: mask is 0 at every cell: no cell is modelled"):
            read(ds.assign_coords(mask=(("y", "x"), np.zeros((3, 4)))).assign_attrs(source_file="toy.nc"))
    assert not (tmp_path / "s.zarr").exists()

def test_a_grid_value_out_of_range_at_any_step_or_a_cell_lacking_one_variable_is_not_used_silently():
    ds = _grid(t=30)
    ds["Tair"][25, 1, 2] = -9999.0  # a missing-value code the file does not declare, after the reader's first day
    with pytest.raises(DataError, match=r"<grid>: Tair: 1 of 360 values outside the physically possible range "
                                        r"223.15..333.15 K \(min -9999, max -9999\), the first at cell \(y=1, x=2\), "
                                        r"time 2020-06-02T01:00"):
        domain_from_grid(ds)
    ds = _grid(t=30).assign_attrs(source_file="toy.nc")
    ds["LWdown"][:, 2, 3] = np.nan  # a land cell lacking one variable: not modelled, and said
    with pytest.warns(DataWarning, match=r"toy.nc: 1 cell\(s\) lack LWdown at every step while they have other "
                                         r"forcing, e.g. cell \(y=2, x=3\): they are not modelled"):
        assert domain_from_grid(ds).n_columns == 11
    ds.coords["mask"] = (("y", "x"), np.ones((3, 4), int))  # the grid says it is a modelled cell
    with pytest.raises(DataError, match=r"lack LWdown at every step .* the grid's mask marks them as modelled"):
        domain_from_grid(ds)


def test_grid_dataset_restores_the_grid_and_tower_columns_become_sites():
    ds = _grid()
    ds["Tair"][:, 1, 2] = np.nan  # not a column: its forcing is missing
    d = domain_from_grid(ds)
    assert d.n_columns == 11
    back = d.grid_dataset()
    assert back["Qh"].shape == (5, 3, 4) and int(back["mask"].sum()) == 11 and back["mask"][1, 2] == 0
    np.testing.assert_array_equal(np.isnan(back["Qh"].values[:, 1, 2]), True)
    ok = back["mask"].values == 1
    np.testing.assert_allclose(back["Qh"].values[:, ok], ds["Qh"].values[:, ok])
    assert back["igbp"].values[0, 0] == "GRA" and back["igbp"].values[0, 1] == "CRO" and back["igbp"].values[1, 2] == ""
    towers = d.select_columns([0, 5])
    assert towers.kind == "sites" and towers.column_ids == ["toy_y0_x0", "toy_y1_x1"]
    np.testing.assert_allclose(towers.data["Qh"].values[:, 1], ds["Qh"].values[:, 1, 1])


def test_cell_spacing_from_attrs_projected_coordinates_or_lat_lon():
    ds = _grid()
    assert cell_spacing(ds) == (2000.0, 2000.0)
    assert cell_spacing(ds.assign_attrs(cell_size_m=500.0)) == (500.0, 500.0)
    lat, lon = np.meshgrid(45.0 + 0.0625 * np.arange(3), -120.0 + 0.0625 * np.arange(4), indexing="ij")
    geo = ds.drop_vars(["x", "y"]).assign_coords(lat=(("y", "x"), lat), lon=(("y", "x"), lon))
    dx, dy = cell_spacing(geo)
    assert dy == pytest.approx(EARTH_RADIUS * np.radians(0.0625))
    assert dx == pytest.approx(EARTH_RADIUS * np.radians(0.0625) * np.cos(np.radians(lat[:, :-1])).mean())
    with pytest.raises(DataError, match="the cell size is unknown"):
        cell_spacing(ds.drop_vars(["x", "y"]))


def test_region_data_without_wind_direction_runs_without_advection_and_names_unknown_classes():
    data = region_data(_grid(), np.float64, classes=("GRA", "CRO", "WAT"))
    assert not data.advection and float(np.abs(data.forcing.wind_u).max()) == 0.0
    assert data.static.shape == (4, 3, 4)  # three classes and the elevation
    np.testing.assert_array_equal(data.static[2], 0.0)  # no water cell
    assert data.spacing == (2000.0, 2000.0)
    with pytest.raises(DataError, match=r"class \['CRO'\], which the model does not know"):
        region_data(_grid(), np.float64, classes=("GRA",))
    with pytest.raises(DataError, match="Wind_N"):
        region_data(_grid().assign(Wind_E=_grid()["Wind"]))


def test_water_cells_are_open_water_columns_and_the_other_cells_keep_their_class_defaults():
    from hybridlsm.physics import OPEN_WATER_PARAMETERS, default_params

    ds = _grid()
    ds["land_cover"] = ds["land_cover"].where(np.arange(12).reshape(3, 4) % 3 != 0, 17)  # every third cell WAT
    data = region_data(ds, np.float64, classes=("GRA", "CRO", "WAT"))
    water = np.arange(12) % 3 == 0
    np.testing.assert_array_equal(data.static[2].reshape(-1), water)
    land = np.where(np.arange(12) % 2 == 0, "GRA", "CRO")
    table = default_params(list(np.where(water, "WET", land)), dtype=np.float64)
    for name, value in OPEN_WATER_PARAMETERS.items():
        np.testing.assert_array_equal(np.asarray(data.params[name]), np.where(water, value, np.asarray(table[name])))
    np.testing.assert_array_equal(np.asarray(data.params["albedo"]), np.asarray(table["albedo"]))  # the rest: WET's
    # the same parameters as a site's or any domain's WAT column (physics.default_params)
    same = default_params(list(np.where(water, "WAT", land)), dtype=np.float64)
    for name in table:
        np.testing.assert_array_equal(np.asarray(data.params[name]), np.asarray(same[name]), err_msg=name)


def test_a_grids_albedo_product_replaces_the_class_albedo_and_a_bad_value_names_its_cell():
    from hybridlsm.physics import default_params

    ds = _grid()
    plain = region_data(ds, np.float64)
    table = default_params(list(np.where(np.arange(12) % 2 == 0, "GRA", "CRO")), dtype=np.float64)
    np.testing.assert_array_equal(np.asarray(plain.params["albedo"]), np.asarray(table["albedo"]))
    product = np.linspace(0.1, 0.4, 12).reshape(3, 4)
    data = region_data(ds.assign(Albedo=(("y", "x"), product)), np.float64)
    np.testing.assert_allclose(np.asarray(data.params["albedo"]), product.reshape(-1))
    for name in table:  # nothing else moves
        if name != "albedo":
            np.testing.assert_array_equal(np.asarray(data.params[name]), np.asarray(plain.params[name]), err_msg=name)
    bad = product.copy()
    bad[1, 2] = 0.9
    with pytest.raises(DataError, match=r"albedo is 0.9 at cell \(y=1, x=2\)"):
        region_data(ds.assign(Albedo=(("y", "x"), bad)), np.float64)
    with pytest.raises(DataError, match="one albedo per cell"):
        region_data(ds.assign(Albedo=(("time", "y", "x"), np.broadcast_to(product, (5, 3, 4)))), np.float64)


def test_grid_skill_pools_test_cells_and_steps():
    time = np.arange(4)
    obs = xr.Dataset({"Qh": (("time", "y", "x"), np.array([[[1.0, np.nan]], [[2.0, 4.0]], [[0.0, 0.0]], [[9, 9]]])),
                      "Qh_true": (("time", "y", "x"), np.full((4, 1, 2), 1.0)),
                      "split": ("time", np.array([3, 3, 1, 0]))}, coords={"time": time})
    pred = xr.Dataset({"Qh": (("time", "y", "x"), np.array([[[2.0, 5.0]], [[2.0, 1.0]], [[7.0, 7.0]], [[0, 0]]])),
                       "recomputed": (("time", "y", "x"), np.array([[[1.0, 0.0]], [[0.0, 0.0]], [[1.0, 1.0]], [[0, 0]]]))},
                      coords={"time": time})
    table = grid_skill("g", {"obs": obs, "models": {"m": pred}}).set_index(["variable", "reference"])
    observed = table.loc[("Qh", "observed")]  # pairs (2, 1), (2, 2), (1, 4): errors 1, 0, -3
    assert observed["n"] == 3 and observed["mse"] == pytest.approx(10.0 / 3) and observed["bias"] == pytest.approx(-2.0 / 3)
    truth = table.loc[("Qh", "truth")]  # errors 1, 4, 1, 0
    assert truth["n"] == 4 and truth["mae"] == pytest.approx(1.5) and np.isnan(truth["r"])
    assert table.loc[("closed loop", "recomputed cell-steps")]["n"] == 1
    # observed values with a QC flag above the run's max_qc, or at a step of filled forcing, are not scored
    obs["Qh_qc"] = (("time", "y", "x"), np.array([[[0, 0]], [[3, 0]], [[0, 0]], [[0, 0]]]))
    obs.attrs["max_qc"] = 1
    observed = grid_skill("g", {"obs": obs, "models": {"m": pred}}).set_index(["variable", "reference"]).loc[
        ("Qh", "observed")]  # pairs (2, 1), (1, 4)
    assert observed["n"] == 2 and observed["bias"] == pytest.approx(-1.0)
    obs["forcing_filled"] = ("time", np.array([2, 0, 0, 0], np.int8))
    observed = grid_skill("g", {"obs": obs, "models": {"m": pred}}).set_index(["variable", "reference"]).loc[
        ("Qh", "observed")]  # pair (1, 4)
    assert observed["n"] == 1 and np.isnan(observed["bias"])  # one pair: too few to score (point_scores)
    # the observed map is drawn from the same values: cell 0 has none left (step 0 filled forcing, step 1
    # QC 3), cell 1 only its step-1 value, 4
    from hybridlsm.evaluation.maps import _mean_map

    mean = _mean_map(obs, "Qh", obs["split"].values == 3, usable=True)
    assert np.isnan(mean[0, 0]) and mean[0, 1] == 4.0


#: the virtual region of tests/test_regional_models.py's fixture (12 x 12 cells, 6 days, 1 spin-up day): the
#: test that builds it second reads its truth's compiled programs from the test run's compilation cache
NY = 12


@pytest.mark.slow  # trains a tiny hybrid and predicts two real grids (~3 min on 2 cores)
@pytest.mark.skipif(not US_CRT.is_file(), reason=f"{US_CRT} (the virtual region's forcing) is absent")
def test_a_regional_run_writes_maps_towers_and_a_report_and_applies_to_other_grids(tmp_path):
    from hybridlsm.pipeline import run
    from hybridlsm.predict import predict

    net = {"embed_size": 4, "encoder_channels": [4, 4, 4], "decoder_channels": [4, 4, 4], "gru_hidden": 4,
           "attention_size": 8}
    cfg = validate_run_config({
        "name": "regional", "output": {"run_dir": str(tmp_path)},
        "data": {"grid": {"virtual_region": {"ny": NY, "nx": NY, "days": 6, "spin_up_days": 1}},
                 "targets": ["Qh", "Qle", "AvgSurfT"], "spinup_days": 0,
                 "split": {"blocked": {"block": "2 d", "test_every": 3, "val_every": 3, "gap": 0}}},
        "models": [{"name": "regional_fixed_kh"},
                   {"name": "regional_hybrid", "options": {**net, "epochs": 4, "patience": 4, "lr": 1e-2, "mc_samples": 2,
                                                           "fallback_threshold": 0.3}}],
    })
    run_dir = run(cfg, "regional.yaml")
    # a tiny region trains and its loss falls (issue 15's test; here, where the programs are compiled anyway)
    history = next(r["history"] for r in training_runs(run_dir) if r["model"] == "regional_hybrid")
    losses = [h["train_loss"] for h in history if "train_loss" in h]
    assert len(losses) == 4 and losses[-1] < 0.8 * losses[0], losses
    maps = run_dir / "maps" / "virtual_region"
    hybrid = xr.load_dataset(maps / "regional_hybrid.nc")
    obs = xr.load_dataset(maps / "obs.nc")
    assert hybrid["Qh"].shape == (144, NY, NY) and {"Qh_sd", "Kh_sd", "rs_sd", "recomputed", "fallback"} <= set(hybrid.data_vars)
    # the epistemic fallback's class reference (fallback_to: class_mean) is kept with the model: one
    # (K_h multiplier, r_s) per class of the grid, inside the fields' bounds
    structure = json.loads((run_dir / "models" / "regional_hybrid" / "all" / "model.json").read_text())["structure"]
    reference = structure["fallback_reference"]
    assert len(reference) >= 3  # the virtual region's classes (it has five; a small one may lack some)
    assert all(1e-3 <= kh <= 1e2 and 1e2 <= rs <= 1e4 for kh, rs in reference.values())
    assert 0.0 <= float(hybrid["fallback"].min()) and float(hybrid["fallback"].max()) <= 1.0
    assert float(hybrid["Qh_sd"].min()) >= 0.0 and float(hybrid["Qh_sd"].max()) > 0.0
    # the predictive SD: MC dropout's and the validation steps' residual SD in quadrature
    parts = {p: hybrid[f"Qle_sd_{p}"].values for p in ("epistemic", "aleatoric")}
    np.testing.assert_allclose(hybrid["Qle_sd"].values, np.hypot(parts["epistemic"], parts["aleatoric"]), rtol=1e-5)
    assert np.nanmin(parts["aleatoric"]) > 0.0
    fixed = xr.load_dataset(maps / "regional_fixed_kh.nc")  # no dropout: the residual SD is the whole SD
    np.testing.assert_allclose(fixed["Qh_sd"].values, fixed["Qh_sd_aleatoric"].values)
    assert np.nanmin(fixed["Qh_sd"].values) > 0.0
    assert 1e-3 <= float(hybrid["Kh"].min()) and float(hybrid["Kh"].max()) <= 1e2  # the bounded heads
    assert 1e2 <= float(hybrid["rs_field"].min()) and float(hybrid["rs_field"].max()) <= 1e4
    assert set(np.unique(obs["split"].values)) == {1, 2, 3}
    towers = sorted(p.name for p in (run_dir / "predictions").iterdir())
    assert towers and all(t.startswith("virtual_region_y") for t in towers)
    iy, ix = (int(v) for v in towers[0].removeprefix("virtual_region_y").split("_x"))
    site = xr.load_dataset(run_dir / "predictions" / towers[0] / "regional_hybrid.nc")
    np.testing.assert_allclose(site["Qh"].values, hybrid["Qh"].values[:, iy, ix])
    skill = pd.read_csv(run_dir / "grid_metrics.csv")
    truth = skill[(skill.model == "regional_fixed_kh") & (skill.variable == "Qh") & (skill.reference == "truth")]
    assert int(truth["n"].iloc[0]) == int((obs["split"].values == 3).sum()) * NY * NY
    assert "<h2>Maps</h2>" in (run_dir / "report.html").read_text()

    if LITTLE_WASHITA.is_file():  # the trained hybrid applied to a real grid it never saw
        # of its classes, the virtual region has cropland only: the network sets the fields there, the
        # physics' own run elsewhere
        with pytest.warns(DataWarning, match=r"1515 cells of land cover \['DNF', 'GRA', 'SAV'\], which the network "
                                             r"never saw in training \(its grid had .*CRO"):
            out = predict(run_dir, "regional_hybrid", [LITTLE_WASHITA], start="1998-10-01", end="1998-10-01",
                          out=tmp_path / "lw")
        lw = xr.load_dataset(out / f"{LITTLE_WASHITA.stem}_regional_hybrid.nc")
        assert lw["Qh"].shape == (24, 41, 41) and np.isfinite(lw["Qh"].values).all()
        cro = lw["igbp"].values == "CRO"
        assert int(cro.sum()) == 166
        np.testing.assert_array_equal(lw["fallback"].values[:, ~cro], 1.0)
        prov = json.loads((out / "provenance.json").read_text())["columns"][LITTLE_WASHITA.stem]
        assert sum(w == "class GRA not in the training grid: the physics' own K_h and r_s" for w in prov.values()) == 1098
        # one day is shorter than the 48-hour window: one window of the day, not zero fields clipped
        # to the multiplier's lower bound (1e-2), as before
        assert float(lw["exchange_field"].values[:, cro].min()) > 0.05
        assert float(lw["rs_field"].values[:, cro].min()) > 100.0
    if WRF.is_file():  # one water cell is not a column: it is not modelled, the 79 land cells are
        out = predict(run_dir, "regional_fixed_kh", [WRF], out=tmp_path / "wrf")
        wrf = xr.load_dataset(next(out.glob("*regional_fixed_kh.nc")))
        land = wrf["mask"].values == 1 if "mask" in wrf.coords else np.isfinite(wrf["Qh"].values[0])
        assert wrf["Qh"].shape == (4, 8, 10) and int(land.sum()) == 79
        assert np.isfinite(wrf["Qh"].values[:, land]).all() and np.isnan(wrf["Qh"].values[:, ~land]).all()


def test_uncertainty_hotspots_by_class_and_distance_to_towers():
    from hybridlsm.evaluation.maps import uncertainty_hotspots

    time = np.arange(2)
    igbp = np.array([["CRO", "CRO", "URB", "URB", "URB"]])
    qh = np.full((2, 1, 5), np.nan)
    qh[0, 0, 0] = 10.0  # the tower is cell 0
    obs = xr.Dataset({"Qh": (("time", "y", "x"), qh), "igbp": (("y", "x"), igbp),
                      "split": ("time", np.array([3, 3]))}, coords={"time": time})
    kh = np.ones((2, 1, 5))
    sd = np.broadcast_to(np.array([0.1, 0.1, 0.2, 0.3, 0.9]), (2, 1, 5))  # cell 4 is the most uncertain
    model = xr.Dataset({"Kh": (("time", "y", "x"), kh), "Kh_sd": (("time", "y", "x"), sd)}, coords={"time": time})
    table = uncertainty_hotspots("g", {"obs": obs, "models": {"m": model}}, quantile=0.8).set_index("class")
    assert table.loc["URB", "hotspots"] == 1 and table.loc["CRO", "hotspots"] == 0
    assert table.loc["URB", "share_of_hotspots"] == 1.0 and table.loc["URB", "share_of_grid"] == pytest.approx(0.6)
    assert table.loc["URB", "tower_distance_hotspots"] == 4.0 and table.loc["URB", "tower_distance_all"] == 3.0


@pytest.mark.slow  # three regional trainings and predictions; in make test, not test-fast
@pytest.mark.parametrize("name", ["regional_hybrid", "regional_cnn_lstm", "regional_fixed_kh"])
def test_regional_models_save_load_and_predict_the_same(name, tmp_path):
    from hybridlsm.models.registry import get_model, load_saved_model, validate_options

    domain = domain_from_grid(_grid(t=8).assign(Wind_E=_grid(t=8)["Wind"] * 0.6, Wind_N=_grid(t=8)["Wind"] * 0.8))
    spec = get_model(name)
    small = {"embed_size": 4, "encoder_channels": [4, 4, 4], "decoder_channels": [4, 4, 4], "gru_hidden": 4,
             "attention_size": 8, "window_hours": 6, "warmup_hours": 1}
    opts = validate_options(name, small if name != "regional_fixed_kh" else {"window_hours": 6, "warmup_hours": 1})
    model = spec.build(opts)
    spec.save(model, opts, tmp_path / name)
    _, _, again = load_saved_model(tmp_path / name)
    before, after = spec.predict(model, domain), spec.predict(again, domain)
    assert after["Qh"].shape == (8, 12) and np.isfinite(after["Qh"]).all()
    np.testing.assert_allclose(after["Qh"], before["Qh"], rtol=1e-6, atol=1e-6)


@pytest.mark.slow  # two tiny regional predictions
def test_a_regional_network_refuses_another_time_step_and_the_hybrid_runs_the_physics_for_unseen_classes(tmp_path):
    """What the training grid had is kept with the model: at another time step the networks are
    refused; cells of a class the network never saw run the physics' own fields (the hybrid, with a
    warning and their provenance), or are refused (the pure network, which has no physics)."""
    from dataclasses import replace

    from hybridlsm.models.registry import get_model, load_saved_model, validate_options

    domain = domain_from_grid(_grid(t=8))  # GRA and CRO cells, hourly
    small = {"embed_size": 4, "encoder_channels": [4, 4, 4], "decoder_channels": [4, 4, 4], "gru_hidden": 4,
             "attention_size": 8, "window_hours": 6, "warmup_hours": 1, "dropout": 0.0}
    spec = get_model("regional_hybrid")
    opts = validate_options("regional_hybrid", small)
    model = replace(spec.build(opts), trained_classes=("CRO",), time_steps=(3600.0,))
    spec.save(model, opts, tmp_path / "hybrid")
    _, _, again = load_saved_model(tmp_path / "hybrid")
    assert (again.trained_classes, again.time_steps) == (("CRO",), (3600.0,))
    gra = domain.static_value("igbp").astype(str) == "GRA"
    assert int(gra.sum()) == 6
    with pytest.warns(DataWarning, match=r"toy: 6 cells of land cover \['GRA'\], which the network never saw in "
                                         r"training \(its grid had CRO\), run the physics' own K_h and r_s"):
        out = spec.predict(again, domain)
    np.testing.assert_array_equal(out["fallback"][:, gra], 1.0)
    np.testing.assert_array_equal(out["fallback"][:, ~gra], 0.0)
    physics = get_model("regional_fixed_kh")
    fixed = physics.predict(physics.build(validate_options("regional_fixed_kh", {"window_hours": 6,
                                                                                 "warmup_hours": 1})), domain)
    # the physics' own fields there (its K_h law, LaD's r_s of the class, inside the hybrid's r_s bounds);
    # the untrained network's r_s elsewhere
    np.testing.assert_allclose(out["exchange_field"][:, gra], 1.0)
    np.testing.assert_allclose(out["rs_field"][:, gra], np.clip(fixed["rs_field"][:, gra], 1e2, 1e4), rtol=1e-5)
    assert np.abs(out["rs_field"][:, ~gra] - np.clip(fixed["rs_field"][:, ~gra], 1e2, 1e4)).min() > 50.0
    where = spec.provenance(again, domain)
    assert where.count("class GRA not in the training grid: the physics' own K_h and r_s") == 6
    with pytest.raises(DataError, match=r"toy: regional_hybrid was trained on 1800 s time steps and this forcing "
                                        r"has 3600 s steps"):
        spec.predict(replace(again, time_steps=(1800.0,)), domain)
    cnn = get_model("regional_cnn_lstm")
    net = replace(cnn.build(validate_options("regional_cnn_lstm", small)), trained_classes=("CRO",))
    with pytest.raises(DataError, match=r"toy: 6 cells of land cover \['GRA'\], which regional_cnn_lstm never saw "
                                        r"in training .* no physics to fall back to"):
        cnn.predict(net, domain)


@pytest.mark.slow  # two regional hybrids' predictions and a save/load; in make test, not test-fast
def test_a_deep_ensemble_of_regional_hybrids_is_its_members_mean_with_their_spread_on_a_grid(tmp_path):
    """``{name: ensemble, options: {model: regional_hybrid}}``: member k from seed + k, the prediction
    the members' mean, the epistemic SD their spread (law of total variance), saved and loaded whole."""
    from hybridlsm.models.registry import get_model, load_saved_model, validate_options

    domain = domain_from_grid(_grid(t=8).assign(Wind_E=_grid(t=8)["Wind"] * 0.6, Wind_N=_grid(t=8)["Wind"] * 0.8))
    small = {"embed_size": 4, "encoder_channels": [4, 4, 4], "decoder_channels": [4, 4, 4], "gru_hidden": 4,
             "attention_size": 8, "window_hours": 6, "warmup_hours": 1}
    opts = validate_options("ensemble", {"model": "regional_hybrid", "size": 2, "options": small})
    spec, member = get_model("ensemble"), get_model("regional_hybrid")
    model = spec.build(opts)
    assert [opts.member(k).seed for k in range(2)] == [0, 1]
    pred = spec.predict(model, domain)
    alone = [member.predict(m, domain) for m in model.members]
    assert not np.allclose(alone[0]["Kh"], alone[1]["Kh"])  # different initialisations
    for name in ("Qh", "Qle", "Kh"):
        np.testing.assert_allclose(pred[name], (alone[0][name] + alone[1][name]) / 2.0, rtol=1e-5, atol=1e-6)
    # no MC dropout (mc_samples 0): the epistemic SD is the members' spread, |a - b| / 2 for two
    np.testing.assert_allclose(pred["Qh_sd_epistemic"], np.abs(alone[0]["Qh"] - alone[1]["Qh"]) / 2.0,
                               rtol=1e-4, atol=1e-4)
    assert float(np.max(pred["Qh_sd_epistemic"])) > 0.0
    spec.save(model, opts, tmp_path / "ens")
    _, _, again = load_saved_model(tmp_path / "ens")
    np.testing.assert_allclose(spec.predict(again, domain)["Qh"], pred["Qh"], rtol=1e-6, atol=1e-6)


def test_an_albedo_product_reaches_every_column_model_through_the_domain_and_a_bad_one_names_its_column():
    from hybridlsm.models.column import domain_base_params, site_base_params
    from hybridlsm.physics import default_params

    ds = _grid()
    product = np.linspace(0.1, 0.4, 12).reshape(3, 4)
    product[0, 1] = np.nan  # a partial product: that column keeps its class default, and its note says so
    domain = domain_from_grid(ds.assign(Albedo=(("y", "x"), product)))
    np.testing.assert_array_equal(domain.static_value("albedo"), product.reshape(-1))
    base, classes, notes = domain_base_params(domain, np.float64)
    table = default_params(classes, dtype=np.float64)
    expected = np.where(np.isfinite(product.reshape(-1)), product.reshape(-1), np.asarray(table["albedo"]))
    np.testing.assert_allclose(np.asarray(base["albedo"]), expected)
    assert notes[0] == "albedo 0.100 of the product" and notes[1] == "albedo: the class default (the product has none here)"
    for name in table:  # nothing else moves
        if name != "albedo":
            np.testing.assert_array_equal(np.asarray(base[name]), np.asarray(table[name]), err_msg=name)
    # back on its grid, the regional models read the same product from the static attribute
    full = domain_from_grid(ds.assign(Albedo=(("y", "x"), np.linspace(0.1, 0.4, 12).reshape(3, 4))))
    np.testing.assert_allclose(np.asarray(region_data(full.grid_dataset(), np.float64).params["albedo"]),
                               np.linspace(0.1, 0.4, 12))
    assert "albedo" not in domain_base_params(domain_from_grid(ds))[2][0]  # no product: no note, class defaults
    bad = product.copy()
    bad[2, 3] = 0.7
    with pytest.raises(DataError, match=r"albedo is 0.7 at column y2_x3 \(1 such columns\)"):
        domain_base_params(domain_from_grid(ds.assign(Albedo=(("y", "x"), bad))))
    # a site's attrs
    site = ds.isel(y=0, x=0).assign_attrs(igbp="GRA", albedo=0.21, site_id="S1")
    assert float(site_base_params(site)["albedo"][0]) == pytest.approx(0.21)
    with pytest.raises(DataError, match=r"albedo is 1.2 at S1"):
        site_base_params(site.assign_attrs(albedo=1.2))


def test_default_params_take_an_albedo_per_site_with_nan_as_the_class_default():
    from hybridlsm.physics import default_params

    table = default_params(["GRA", "ENF"])
    given = default_params(["GRA", "ENF"], albedo=[np.nan, 0.12])
    assert float(given["albedo"][0]) == float(table["albedo"][0]) and float(given["albedo"][1]) == pytest.approx(0.12)
    with pytest.raises(ValueError, match=r"site 1 \(ENF\): albedo = 0.01"):
        default_params(["GRA", "ENF"], albedo=[0.2, 0.01])


def test_the_regional_hybrids_vpd_option_builds_its_physics_with_the_response():
    from hybridlsm.models.regional import hybrid_physics, region_data
    from hybridlsm.models.registry import get_model, validate_options

    spec = get_model("regional_hybrid")
    small = {"embed_size": 4, "encoder_channels": [4, 4, 4], "decoder_channels": [4, 4, 4], "gru_hidden": 4,
             "attention_size": 8}
    net = spec.build(validate_options("regional_hybrid", {**small, "rs_vpd_d0": 2.5})).model
    plain = spec.build(validate_options("regional_hybrid", small)).model
    assert net.rs_vpd_d0 == 2.5 and plain.rs_vpd_d0 is None  # LaD's r_s by default
    grid = _grid()
    data = region_data(grid.assign(Wind_E=grid["Wind"] * 0.6, Wind_N=grid["Wind"] * 0.8))
    assert hybrid_physics(data, net).land.rs_vpd_d0 == 2.5 and hybrid_physics(data, plain).land.rs_vpd_d0 is None
    with pytest.raises(ValueError, match="rs_vpd_d0"):
        validate_options("regional_hybrid", {"rs_vpd_d0": 0.0})


def test_a_grid_the_regional_data_preparation_refuses_is_refused_before_a_run_writes():
    """A run checks each model against each domain before it writes anything
    (``pipeline.check_inputs``); the regional data preparation's own refusals (a gap, a class the
    model lacks, no cell size) came only in training, after the run's folder was written."""
    from hybridlsm.domain import domain_from_grid
    from hybridlsm.models.registry import get_model, validate_options

    spec = get_model("regional_fixed_kh")
    ds = _grid()
    domain = domain_from_grid(ds)
    spec.check_required_inputs(validate_options("regional_fixed_kh", {}), domain, "fixed")
    with pytest.raises(DataError, match=r"fixed \(regional_fixed_kh\): toy: cells of class \['CRO'\], which the model "
                                        r"does not know"):
        spec.check_required_inputs(validate_options("regional_fixed_kh", {"classes": ["GRA"]}), domain, "fixed")
    flat = domain_from_grid(ds.assign_coords(y=("y", np.zeros(3), {"units": "km"})))
    with pytest.raises(DataError, match=r"fixed \(regional_fixed_kh\): .*the cell size from its x/y coordinates"):
        spec.check_required_inputs(validate_options("regional_fixed_kh", {}), flat, "fixed")


def test_a_one_cell_grid_read_as_a_plumber2_site_says_how_to_read_it_as_a_grid(tmp_path):
    from hybridlsm.pipeline import read_grid_file

    t = pd.date_range("2000-06-01", periods=48, freq="h")
    units = {"Tair": (290.0, "K"), "Qair": (0.008, "kg/kg"), "PSurf": (1e5, "Pa"), "Wind": (3.0, "m/s"),
             "SWdown": (300.0, "W/m2"), "LWdown": (350.0, "W/m2"), "Rainf": (0.0, "kg/m2/s")}
    ds = xr.Dataset({k: (("time", "lat", "lon"), np.full((48, 1, 1), v), {"units": u}) for k, (v, u) in units.items()},
                    coords={"time": t, "lat": [35.0], "lon": [-98.0]})
    ds.to_netcdf(tmp_path / "one.nc")
    with pytest.raises(ConfigError, match=r"format 'plumber2' is not a gridded format.*give data.grid: \{path: ..., "
                                          r"format: gridded\}"):
        read_grid_file(tmp_path / "one.nc")
    assert read_grid_file(tmp_path / "one.nc", "gridded").n_columns == 1
