"""Deep roots (``LaDModel.deep_water``): water and energy still close every step, beta equals its
hand computation, "none" is LaD exactly, and a dry-down lasts longer with deep access."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybridlsm.physics import LaDModel, default_params, rollout, synthetic_forcing
from hybridlsm.physics.parameters import deep_root_fraction

from test_physics_lad import FAST_COMPILE, _as_numpy, energy_residual, water_residual

SITES = ["ENF", "GRA"]
run_jit = jax.jit(rollout, static_argnames=("chunk",), compiler_options=FAST_COMPILE)


def _run(deep_water, forcing, params, state0=None):
    model = LaDModel(deep_water=deep_water)
    state0 = model.init_state(params, forcing) if state0 is None else state0
    final, out = run_jit(model, params, forcing, state0)
    return dict(forcing=forcing, params=params, state0=state0, final=final, out=_as_numpy(out),
                dt=forcing.time_step_s, model=model)


@pytest.fixture(scope="module")
def year_forcing():
    return synthetic_forcing(365, n_sites=len(SITES)), default_params(SITES)


@pytest.fixture(scope="module", params=["groundwater", "table"])
def year_deep(request, year_forcing):
    forcing, params = year_forcing
    # a wetter groundwater store than LaD's empty start, so the groundwater option has water to take
    model = LaDModel(deep_water=request.param)
    s0 = model.init_state(params, forcing)
    s0 = type(s0)(soil_temp=s0.soil_temp, soil_water=s0.soil_water, snow=s0.snow,
                  groundwater=jnp.full_like(s0.groundwater, 80.0))
    return _run(request.param, forcing, params, s0)


def test_jackson_deep_root_fractions():
    # beta_J^(100 z_r): NE 0.976^83.6, G 0.943^98.0 (Jackson et al. 1996 Table 1; LaD z_r)
    assert deep_root_fraction("NE") == pytest.approx(0.976 ** 83.63, rel=2e-3)
    assert deep_root_fraction("NE") == pytest.approx(0.1313, abs=5e-4)
    assert deep_root_fraction("G") == pytest.approx(0.0032, abs=1e-4)
    p = default_params(["ENF", "GRA"])
    np.testing.assert_allclose(p["deep_root_fraction"], [deep_root_fraction("NE"), deep_root_fraction("G")])


def test_water_and_energy_close_with_deep_roots(year_deep):
    assert np.max(np.abs(water_residual(year_deep))) <= 1e-6
    residual, _ = energy_residual(year_deep)
    assert np.max(np.abs(residual)) <= 1e-3
    out = year_deep["out"]
    assert np.all(np.isfinite(out["Qle"])) and np.all(out["SoilMoist"] > -1e-6)
    if year_deep["model"].deep_water == "groundwater":
        assert np.all(out["GWS"] > -1e-6)  # the limiter keeps W_g from going negative


def test_none_is_lad_and_deep_fraction_is_ignored(year_forcing):
    forcing, params = year_forcing
    short = forcing.at(slice(0, 480))
    plain = _run("none", short, params)["out"]
    other = _run("none", short, {**params, "deep_root_fraction": params["deep_root_fraction"] * 5.0})["out"]
    lad = run_jit(LaDModel(), params, short, LaDModel().init_state(params, short))[1]
    for name in ("Qle", "Qh", "SoilMoist", "GWS", "Qsb"):
        np.testing.assert_array_equal(plain[name], np.asarray(lad[name]))
        np.testing.assert_array_equal(plain[name], other[name])


def test_beta_equals_the_hand_computation(year_forcing):
    forcing, params = year_forcing
    f = forcing.at(0)
    wmax = np.asarray(params["root_zone_capacity"])
    thr = np.asarray(params["beta_threshold"])  # 0.75
    fd = np.asarray(params["deep_root_fraction"])
    model = LaDModel(deep_water="groundwater")
    s0 = model.init_state(params, forcing)
    state = type(s0)(soil_temp=s0.soil_temp, soil_water=jnp.asarray(0.3 * wmax),
                     snow=jnp.zeros(2), groundwater=jnp.asarray(0.5 * thr * wmax))
    # beta_W = 0.3 / 0.75 = 0.4, beta_d = 0.5: beta = 0.4 + f_d * 0.6 * 0.5
    beta = np.asarray(model.surface_layer(state, f, params).beta)
    np.testing.assert_allclose(beta, 0.4 + fd * 0.6 * 0.5, rtol=1e-4)
    assert beta[0] == pytest.approx(0.4 + 0.1313 * 0.3, abs=2e-4)  # ENF
    table = np.asarray(LaDModel(deep_water="table").surface_layer(state, f, params).beta)
    np.testing.assert_allclose(table, 0.4 + fd * 0.6, rtol=1e-4)
    none = np.asarray(LaDModel().surface_layer(state, f, params).beta)
    np.testing.assert_allclose(none, 0.4, rtol=1e-4)


def test_unknown_deep_water_option():
    with pytest.raises(ValueError, match="deep_water"):
        LaDModel(deep_water="aquifer")


def _dry_down(deep_water):
    """60 summer days without rain from an unstressed root zone (W = 0.75 W_max), W_g 100 mm."""
    forcing = synthetic_forcing(60, n_sites=1, start_day=170.0)
    forcing = eqx.tree_at(lambda f: f.precip, forcing, jnp.zeros_like(forcing.precip))
    params = default_params(["ENF"])
    model = LaDModel(deep_water=deep_water)
    s0 = model.init_state(params, forcing)
    s0 = type(s0)(soil_temp=s0.soil_temp, soil_water=s0.soil_water, snow=s0.snow,
                  groundwater=jnp.full_like(s0.groundwater, 100.0))
    run = _run(deep_water, forcing, params, s0)
    daily = run["out"]["Qle"][:, 0].reshape(60, 48).mean(axis=1)
    below = np.flatnonzero(daily < 0.5 * daily[:3].mean())
    return run, daily, int(below[0]) if below.size else 60


def test_dry_down_lasts_longer_with_deep_roots():
    lad, lad_daily, lad_days = _dry_down("none")
    gw, gw_daily, gw_days = _dry_down("groundwater")
    table, table_daily, table_days = _dry_down("table")
    for run in (lad, gw, table):
        assert np.max(np.abs(water_residual(run))) <= 1e-6
    # LaD halves its LE within the 60 days; deep roots keep it up longer
    assert lad_days < 60
    assert gw_days > lad_days and table_days >= gw_days
    assert table_daily[-10:].mean() > lad_daily[-10:].mean() * 1.1
    # groundwater: the extra evaporation is W_g's loss (nothing drains in a dry-down); table: the
    # supply is negative Qsb
    extra_gw = 100.0 - gw["out"]["GWS"][-1, 0] - (100.0 - lad["out"]["GWS"][-1, 0])
    assert extra_gw > 1.0
    # (at a few night steps the T-correction of a tiny evaporation flips its sign: < 1e-7)
    assert np.all(table["out"]["Qsb"][:, 0] <= lad["out"]["Qsb"][:, 0] + 1e-7)
    assert table["out"]["Qsb"][-480:, 0].min() < 0.0


@pytest.mark.slow  # a few seconds; in make test, not test-fast
def test_gradient_reaches_the_deep_root_fraction(year_forcing):
    forcing, params = year_forcing
    short = forcing.at(slice(0, 192))
    model = LaDModel(deep_water="table")
    state0 = model.init_state(params, short)
    state0 = type(state0)(soil_temp=state0.soil_temp, soil_water=state0.soil_water * 0.3,
                          snow=state0.snow, groundwater=state0.groundwater)

    def mean_le(fd):
        return jnp.mean(rollout(model, {**params, "deep_root_fraction": fd}, short, state0)[1]["Qle"])

    g = jax.grad(mean_le)(params["deep_root_fraction"])
    assert np.all(np.isfinite(np.asarray(g))) and np.all(np.asarray(g) > 0.0)


def test_physics_option_builds_deep_roots_and_calibrates_their_fraction_only_with_them():
    from pydantic import ValidationError

    from hybridlsm.models.registry import get_model

    spec = get_model("physics")
    with pytest.raises(ValidationError, match="deep_water"):
        spec.Options.model_validate({"calibrate": ["rs_scale", "deep_root_fraction"]})
    options = spec.Options.model_validate({"calibrate": ["rs_scale", "deep_root_fraction"], "deep_water": "table"})
    model = spec.build(options)
    assert model.land.deep_water == "table" and set(model.deltas) == {"rs_scale", "deep_root_fraction"}
    assert spec.build(spec.Options.model_validate({})).land.deep_water == "none"  # default: LaD
