"""The regional models on grids with cells that are not columns (issue 15): the air layer's
inactive cells are outside its open boundary; the active cells' heat and water close to rounding,
uniform air stays uniform, an all-active mask changes nothing, and incomplete grids (a masked
cell, the WRF cutout's water cell) run through ``region_data`` and the registered models."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

from hybridlsm.constants import CP_AIR
from hybridlsm.data import DataError
from hybridlsm.physics import default_params, rollout, synthetic_forcing
from hybridlsm.physics.air_layer import AirLayer, transport, transport_substeps
from hybridlsm.physics.regional import GridForcing, RegionalModel
from hybridlsm.thermo import air_density

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
WRF = SHARED / "gridded" / "wrf_d01_allvars_cropped.nc"

NY, NX = 5, 6


def _mask():
    """A 5 x 6 grid with an interior hole of two cells and notches at two edges."""
    active = np.ones((NY, NX), bool)
    active[2, 2:4] = False  # the hole: the wind blows across it
    active[0, 5] = active[4, 0] = active[1, 0] = False  # edge notches
    return active


def _case(active, fill=0.0, hours=(10, 16), seed=0):
    """A coupled grid forcing (the synthetic day's ``hours``) with a 1 K bump, wind across the hole;
    inactive cells' forcing air and wind offset by ``fill`` (finite values the model must not use)."""
    n = NY * NX
    f = synthetic_forcing(n_days=1, time_step_s=3600.0, n_sites=1)
    f = jax.tree_util.tree_map(lambda a: jnp.repeat(a[slice(*hours)], n, axis=1), f)
    bump = np.random.default_rng(seed).normal(0, 1.0, n) + np.where(active.reshape(-1), 0.0, fill)
    f = type(f)(**{**{k: getattr(f, k) for k in ("sw_down", "lw_down", "q_air", "p_surf", "wind", "precip")},
                   "t_air": f.t_air + bump, "time_step_s": 3600.0})
    u = jnp.full((f.n_steps, n), 4.0) + jnp.where(jnp.asarray(active.reshape(-1)), 0.0, fill)
    v = jnp.full((f.n_steps, n), -2.0)
    params = default_params(["GRA", "CRO", "ENF", "GRA", "BSV", "DBF"] * (n // 6))
    return GridForcing(f, u, v), params


@pytest.mark.slow  # a few seconds; in make test, not test-fast
def test_transport_with_inactive_cells_conserves_and_keeps_uniform_air_uniform():
    rng = np.random.default_rng(2)
    active = jnp.asarray(_mask())
    phi = jnp.asarray(rng.normal(290, 3, (NY, NX)))
    above = jnp.asarray(rng.normal(290, 1, (NY, NX)))
    u, v = jnp.asarray(rng.normal(3, 2, (NY, NX))), jnp.asarray(rng.normal(-1, 2, (NY, NX)))
    kh = jnp.asarray(rng.uniform(0.01, 50, (NY, NX)))
    for boundary in ("open", "periodic"):
        r = transport(phi, above, u, v, kh, 1000.0, 800.0, 100.0, boundary, active)
        total = float(jnp.sum(r.tendency) + int(active.sum()) * r.outflow + jnp.sum(r.vertical))
        assert abs(total) < 1e-13 * float(jnp.sum(jnp.abs(r.tendency)))
        assert float(jnp.abs(jnp.where(active, 0.0, r.tendency)).max()) == 0.0
        # what inactive cells hold never enters
        r2 = transport(jnp.where(active, phi, 1e3), jnp.where(active, above, -1e3), u, v, kh, 1000.0, 800.0, 100.0,
                       boundary, active)
        np.testing.assert_array_equal(np.asarray(r2.tendency), np.asarray(r.tendency))
        # an all-active mask is today's numerics (to rounding: the masked path computes the faces anew)
        full = transport(phi, above, u, v, kh, 1000.0, 800.0, 100.0, boundary)
        every = transport(phi, above, u, v, kh, 1000.0, 800.0, 100.0, boundary, jnp.ones((NY, NX), bool))
        for a, b in zip(full, every):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-12, atol=1e-15)
    # uniform air stays uniform under a divergent wind across the hole, with sub-steps
    n = NY * NX
    air = AirLayer((NY, NX), boundary="open", n_substeps=8, active=_mask())
    t, zero = jnp.full(n, 290.0), jnp.zeros(n)
    new = air.advance(t, zero + 0.008, sensible=zero, evaporation=zero, rho=1.2, temp_above=t,
                      humidity_above=zero + 0.008, wind_u=jnp.asarray(rng.normal(2, 2, n)),
                      wind_v=jnp.asarray(rng.normal(0, 2, n)), kh=jnp.full(n, 5.0), dt=3600.0)
    np.testing.assert_allclose(np.asarray(new.temp), 290.0, atol=1e-10)
    np.testing.assert_allclose(np.asarray(new.humidity), 0.008, atol=1e-15)


def test_air_layer_mask_is_static_hashable_and_all_active_is_none():
    a = AirLayer((NY, NX), active=_mask())
    assert a.n_active == NY * NX - 5 and hash(a.active) == hash(AirLayer((NY, NX), active=_mask()).active)
    assert AirLayer((NY, NX), active=np.ones(NY * NX, bool)).active is None
    assert jax.tree_util.tree_leaves(a) == []
    with pytest.raises(ValueError, match="active mask"):
        AirLayer((NY, NX), active=np.arange(7) > 0)


def _budget(model, gf, out):
    """The air layer's heat budget misfit over the active cells, by hand [W m-2]."""
    air, active = model.air, model.air.active.values
    t_layer, q_layer = np.asarray(out["Tair_layer"]), np.asarray(out["Qair_layer"])
    t_prev = np.concatenate([np.asarray(gf.column.t_air[:1]), t_layer[:-1]])
    q_prev = np.concatenate([np.asarray(gf.column.q_air[:1]), q_layer[:-1]])
    rho = np.mean(np.asarray(air_density(t_prev, gf.column.p_surf, q_prev))[:, active], axis=1)
    storage = rho * CP_AIR * air.depth * np.sum((t_layer - t_prev)[:, active], axis=1) / 3600.0
    sources = np.sum((np.asarray(out["Qh"]) - np.asarray(out["Qh_top"]))[:, active], axis=1) \
        - active.sum() * np.asarray(out["boundary_heat"])[:, 0]
    return np.abs(storage - sources) / active.sum()


@pytest.mark.parametrize("dx,refinements", [(30e3, 0), pytest.param(1e3, 2, marks=pytest.mark.slow)])
def test_coupled_grid_with_inactive_cells_closes_the_active_cells_budget(dx, refinements):
    # 30 km cells: one transport sub-step and one coupled step per hour (Courant 0.72); 1 km cells:
    # 27 transport sub-steps, and coupled steps refined up to 4 sub-steps
    active = _mask()
    gf, params = _case(active)
    n_sub = transport_substeps(gf.wind_u, gf.wind_v, 3600.0, dx, dx, 1.0)
    assert (n_sub == 1) == (dx == 30e3)
    air = AirLayer((NY, NX), dx=dx, dy=dx, boundary="open", n_substeps=n_sub, active=active)
    model = RegionalModel(air, residual_tolerance=1e-3, max_refinements=refinements, coupling_iterations=1)
    run = jax.jit(lambda p, f: rollout(model, p, f)[1])
    out = run(params, gf)
    assert _budget(model, gf, out).max() < 1e-8  # W m-2 of the active cells
    assert np.asarray(out["air_energy_residual"]).max() < 1e-8
    t_layer = np.asarray(out["Tair_layer"])
    assert np.all(np.isfinite(t_layer)) and np.abs(t_layer - np.asarray(gf.column.t_air)).max() < 15.0
    if refinements:
        assert np.asarray(out["n_substeps"]).max() > 1
    # inactive cells: no exchange, air held at the air above; what they hold does not reach the active cells
    inactive = ~active.reshape(-1)
    assert float(np.abs(np.asarray(out["Qh_top"])[:, inactive]).max()) == 0.0
    other = run(params, _case(active, fill=25.0)[0])
    for name in ("Qh", "Qle", "Tair_layer", "boundary_heat"):
        np.testing.assert_array_equal(np.asarray(other[name])[:, ~inactive], np.asarray(out[name])[:, ~inactive])


def test_an_all_active_mask_gives_todays_results():
    # an all-active mask is held as None: the same module, the same compiled program, today's numerics
    # (the masked numerics with every cell active agree with them to rounding: the transport test above)
    every = np.ones((NY, NX), bool)
    assert AirLayer((NY, NX), active=every) == AirLayer((NY, NX))
    model = RegionalModel(AirLayer((NY, NX), n_substeps=3, active=every))
    assert model == RegionalModel(AirLayer((NY, NX), n_substeps=3))
    gf, params = _case(every, hours=(11, 13))
    assert model.for_forcing(gf) == RegionalModel(AirLayer((NY, NX))).for_forcing(gf)


def _grid(ny=3, nx=4, t=6, seed=0) -> xr.Dataset:
    """A small gridded record (2 km cells) with one cell outside the mask: no forcing at any step."""
    rng = np.random.default_rng(seed)
    time = np.datetime64("2020-06-01T09:00") + np.arange(t) * np.timedelta64(1, "h")
    dims, shape = ("time", "y", "x"), (t, ny, nx)
    ds = xr.Dataset({
        "Tair": (dims, 295.0 + rng.normal(0, 1, shape)), "Qair": (dims, np.full(shape, 0.01)),
        "Psurf": (dims, np.full(shape, 1e5)), "Wind": (dims, np.full(shape, 3.0)),
        "Wind_E": (dims, np.full(shape, 2.0)), "Wind_N": (dims, np.full(shape, -2.0)),
        "SWdown": (dims, np.full(shape, 600.0)), "LWdown": (dims, np.full(shape, 350.0)),
        "Precip": (dims, np.zeros(shape)), "Qh": (dims, rng.normal(50, 10, shape)),
    }, coords={"time": time, "y": ("y", np.arange(ny) * 2.0, {"units": "km"}),
               "x": ("x", np.arange(nx) * 2.0, {"units": "km"})},
        attrs={"time_step_s": 3600.0, "site_id": "toy"})
    ds["land_cover"] = (("y", "x"), np.where(np.arange(ny * nx).reshape(ny, nx) % 2 == 0, 10, 12))
    for name in ("Tair", "Qair", "Psurf", "Wind", "Wind_E", "Wind_N", "SWdown", "LWdown", "Precip", "Qh"):
        ds[name][:, 1, 2] = np.nan  # not a column
    ds["land_cover"][1, 2] = 17  # water
    return ds


@pytest.mark.slow  # regional data preparation of a masked grid; in make test, not test-fast
def test_region_data_leaves_a_cell_without_forcing_out_and_refuses_partial_gaps():
    from hybridlsm.models.regional import fixed_kh_model, predict_regional, region_data
    from hybridlsm.models.regional_loop import roughness, smooth_field

    data = region_data(_grid(), np.float64)
    hole = 1 * 4 + 2
    assert data.active.sum() == 11 and not data.active[hole]
    assert data.classes == ("GRA", "CRO")  # the water cell is not a column: no class of its own
    for name in ("t_air", "q_air", "sw_down", "wind"):
        assert np.isfinite(np.asarray(getattr(data.forcing.column, name))).all()
    np.testing.assert_allclose(np.asarray(data.forcing.column.t_air)[:, hole],
                               np.nanmean(_grid()["Tair"].values.reshape(6, -1), axis=1))  # the active cells' mean
    assert np.all(data.variables.reshape(data.variables.shape[:2] + (-1,))[:, :, hole] == 0.0)
    assert np.all(data.static.reshape(data.static.shape[0], -1)[:, hole] == 0.0)
    assert np.isnan(data.observed["Qh"][:, hole]).all()
    model = fixed_kh_model(data)
    assert model.air.n_active == 11
    out = predict_regional(model, data)
    assert np.isnan(out["Qh"][:, hole]).all() and np.isfinite(np.delete(out["Qh"], hole, axis=1)).all()
    assert float(np.max(np.delete(out["air_energy_residual"], hole, axis=1))) < 1e-8

    gappy = _grid()
    gappy["SWdown"][3, 0, 1] = np.nan
    with pytest.raises(DataError, match=r"SWdown is missing at time 2020-06-01T12:00, cell \(y=0, x=1\)"):
        region_data(gappy)
    masked = _grid().assign_coords(mask=(("y", "x"), np.ones((3, 4), np.int8)))
    masked["mask"][0, 0] = 0  # the domain says (0, 0) is no column, though it has forcing
    assert region_data(masked, np.float64).active.sum() == 10

    # the closed loop's smoothing and roughness ignore the cell
    field = jnp.asarray(np.arange(12.0))
    field = field.at[hole].set(1e6)
    active = jnp.asarray(data.active)
    smooth = smooth_field(field, (3, 4), active=active)
    assert float(smooth[hole]) == 1e6 and float(jnp.abs(jnp.delete(smooth, hole)).max()) < 12.0
    np.testing.assert_allclose(np.asarray(smooth_field(jnp.full(12, 3.0), (3, 4), active=active)), 3.0)
    r = float(roughness(jnp.asarray(np.arange(12.0)).at[hole].set(1e6), (3, 4), data.active))
    assert r == pytest.approx(float(roughness(jnp.asarray(np.arange(12.0)), (3, 4), data.active)))
    assert r < 5.0


@pytest.mark.slow  # ~30 s on 2 cores (compiling the physics for the 8 x 10 grid)
@pytest.mark.skipif(not WRF.is_file(), reason=f"{WRF} is absent")
def test_the_wrf_cutout_runs_without_its_water_cell_and_is_scored_against_wrf():
    from hybridlsm.data.wrf import read_wrf
    from hybridlsm.domain import domain_from_grid
    from hybridlsm.models.regional_spec import RegionalFixedKhSpec, RegionalOptions

    domain = domain_from_grid(read_wrf(WRF))
    assert (domain.n_columns, domain.layout.shape) == (79, (8, 10))
    spec = RegionalFixedKhSpec()
    out = spec.predict(spec.build(RegionalOptions()), domain)
    assert out["Qh"].shape == (4, 79) and np.isfinite(out["Qh"]).all() and np.isfinite(out["Qle"]).all()
    assert float(np.max(out["air_energy_residual"])) < 1e-2  # W m-2, float32
    # WRF/Noah's own H and LE (model output, README §8.3): the same sign of the morning's rise
    for name, min_r in (("Qh", 0.5), ("Qle", 0.5)):
        pred, wrf = out[name].ravel(), domain.data[name].values.ravel()
        assert np.corrcoef(pred, wrf)[0, 1] > min_r


@pytest.mark.slow  # ~2 min on 2 cores (compiling the network, the closed loop and the gradient)
def test_the_hybrid_predicts_and_trains_through_a_grid_with_a_cell_that_is_not_a_column():
    import equinox as eqx

    from hybridlsm.models.regional import (build_hybrid, hybrid_loss, make_batches, predict_regional, region_data,
                                           regional_physics, window_states)
    from hybridlsm.neural import SpatiotemporalOptions

    ds = _grid(t=8)
    ds["Qle"], ds["AvgSurfT"] = 2.0 * ds["Qh"], ds["Tair"]
    data = region_data(ds, np.float32)
    hole = 1 * 4 + 2
    opts = SpatiotemporalOptions(embed_size=4, encoder_channels=(4, 4, 4), decoder_channels=(4, 4, 4), gru_hidden=4,
                                 attention_size=8)
    model = build_hybrid(data, opts)
    out = predict_regional(model, data, window=4, warmup=1)
    for name in ("Qh", "Kh_field", "recomputed"):
        assert np.isnan(out[name][:, hole]).all() and np.isfinite(np.delete(out[name], hole, axis=1)).all()
    physics = regional_physics(data)
    batch = make_batches(data, np.ones(8, bool), 8, 1, window_states(physics, data, [0]))[0]
    weights = {"energy": 1.0, "sparsity": 0.1, "discovery": 0.1}
    (loss, _), grad = eqx.filter_value_and_grad(lambda m: hybrid_loss(m, batch, None, weights, physics=physics),
                                                has_aux=True)(model)
    assert np.isfinite(float(loss))
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree_util.tree_leaves(eqx.filter(grad, eqx.is_inexact_array)))


@pytest.mark.slow  # two physics compilations on the 3 x 4 grid
def test_the_boundary_option_reaches_the_air_layer():
    """``boundary: periodic`` was accepted and never read (the air layer was always open): the
    option now sets the boundaries of the physics the regional models train and predict with."""
    from hybridlsm.models.regional import fixed_kh_model, predict_regional
    from hybridlsm.models.registry import get_model, validate_options

    spec = get_model("regional_fixed_kh")
    grid = _grid()
    for name in ("Tair", "Qair", "Psurf", "Wind", "Wind_E", "Wind_N", "SWdown", "LWdown", "Precip", "Qh"):
        grid[name][:, 1, 2] = grid[name][:, 1, 1]  # every cell a column: the only boundaries are the edges
    grid["land_cover"][1, 2] = 10
    out = {}
    for boundary in ("open", "periodic"):
        run = spec.build(validate_options("regional_fixed_kh", {"boundary": boundary}))
        data = spec._data(run, grid)
        model = fixed_kh_model(data)
        assert data.boundary == boundary and model.air.boundary == boundary
        out[boundary] = predict_regional(model, data)
    # the wind blows air across the edges: the open boundary brings in the edge cells' own air, the
    # periodic one the opposite edge's, so the near-surface air differs
    assert np.nanmax(np.abs(out["open"]["Tair_layer"] - out["periodic"]["Tair_layer"])) > 1e-4
    assert np.max(np.abs(out["open"]["boundary_heat"])) > 1.0
    assert np.max(np.abs(out["periodic"]["boundary_heat"])) < 1e-9  # nothing crosses a periodic edge


def test_a_model_that_records_no_boundary_says_what_it_may_have_trained_with():
    """A model saved now records the boundary its air layer ran with. One saved without the record
    and ``boundary: periodic`` predicts periodic, as its options say, but warns: before e0ae46f the
    air layer always ran open (and nothing saved tells such a model from a later one)."""
    import warnings

    from hybridlsm.data import DataWarning
    from hybridlsm.models.registry import get_model, validate_options

    spec = get_model("regional_fixed_kh")
    options = validate_options("regional_fixed_kh", {"boundary": "periodic"})
    structure = spec.structure(spec.build(options))
    assert structure["boundary"] == "periodic"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dict(spec.skeleton(options, structure).settings)["boundary"] == "periodic"
    old = {k: v for k, v in structure.items() if k != "boundary"}
    with pytest.warns(DataWarning, match=r"records no air-layer boundary.*before 2026-12-07 \(commit e0ae46f\) was "
                                         "trained with open boundaries"):
        assert dict(spec.skeleton(options, old).settings)["boundary"] == "periodic"
    opened = validate_options("regional_fixed_kh", {})
    assert dict(spec.skeleton(opened, {k: v for k, v in spec.structure(spec.build(opened)).items()
                                       if k != "boundary"}).settings)["boundary"] == "open"


def test_a_grid_without_land_cover_is_refused_saying_how_to_give_one():
    """The message named only a run's data.grid.igbp, which `hybridlsm predict` has no way to set."""
    from hybridlsm.domain import domain_from_grid
    from hybridlsm.models.registry import get_model, validate_options

    spec = get_model("regional_fixed_kh")
    run = spec.build(validate_options("regional_fixed_kh", {}))
    grid = domain_from_grid(_grid().drop_vars("land_cover"))
    with pytest.raises(DataError, match=r"toy: cells of land cover \[''\] \(''.*data.grid.igbp in a run's config.*"
                                        r"for `hybridlsm predict`, a land_cover field \(y, x\) of IGBP codes"):
        spec.check_domain(run, grid)


def test_a_grid_whose_coordinates_give_no_cell_size_is_named():
    """A latitude that repeats, or beyond the poles, gave the air layer a spacing of 0 or NaN (a
    ValueError traceback after the run directory was written); one row gave a misleading message."""
    from hybridlsm.models.regional import cell_spacing

    grid = _grid()
    assert cell_spacing(grid) == (2000.0, 2000.0)
    flat = grid.assign_coords(y=("y", np.zeros(3), {"units": "km"}))
    with pytest.raises(DataError, match=r"toy: the cell size from its x/y coordinates is dx = 2000 m, dy = 0 m"):
        cell_spacing(flat)
    geo = grid.drop_vars(["x", "y"]).assign_coords(lat=("y", [34.7, 34.7, 34.7]),
                                                    lon=("x", [-98.0, -97.9, -97.8, -97.7]))
    geo = geo.assign_coords(lat=geo["lat"].broadcast_like(geo["Tair"].isel(time=0)),
                            lon=geo["lon"].broadcast_like(geo["Tair"].isel(time=0)))
    with pytest.raises(DataError, match=r"the cell size from its lat/lon coordinates is dx = .* m, dy = 0 m"):
        cell_spacing(geo)
    with pytest.raises(DataError, match=r"lat holds values outside -90..90 degrees .* e.g. 114.7"):
        cell_spacing(geo.assign_coords(lat=geo["lat"] + 80.0))
    with pytest.raises(DataError, match=r"a grid of 1 x 4 cells has no spacing .* give it a cell_size_m attribute"):
        cell_spacing(grid.isel(y=[0]))
    assert cell_spacing(grid.isel(y=[0]).assign_attrs(cell_size_m=500.0)) == (500.0, 500.0)
