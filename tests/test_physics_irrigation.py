"""Demand irrigation (site metadata ``irrigated``): water and energy still close every step, a
rain-fed column is LaD exactly, an irrigated root zone is kept at the onset of stress while the air
is warm and not in the cold, and the metadata are read and checked with clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybridlsm.data import DataError
from hybridlsm.data.fluxnet import irrigated_fraction
from hybridlsm.domain.build import static_attributes
from hybridlsm.physics import LaDModel, default_params, rollout, synthetic_forcing
from hybridlsm.physics.water import IRRIGATION_BASE_TEMPERATURE, demand_irrigation

from test_physics_lad import FAST_COMPILE, _as_numpy, energy_residual, water_residual

run_jit = jax.jit(rollout, static_argnames=("chunk",), compiler_options=FAST_COMPILE)


@pytest.fixture(scope="module")
def dry_summer():
    """Two grass columns, 120 warm days without rain: the first rain-fed, the second irrigated."""
    forcing = synthetic_forcing(120, n_sites=2)
    forcing = type(forcing)(**{**{k: getattr(forcing, k) for k in ("sw_down", "lw_down", "q_air", "p_surf", "wind")},
                               "t_air": forcing.t_air - jnp.mean(forcing.t_air) + 295.0,
                               "precip": jnp.zeros_like(forcing.precip)}, time_step_s=forcing.time_step_s)
    params = default_params(["GRA", "GRA"], irrigated=[0.0, 1.0])
    model = LaDModel()
    state0 = model.init_state(params, forcing)
    final, out = run_jit(model, params, forcing, state0)
    return dict(forcing=forcing, params=params, state0=state0, final=final, out=_as_numpy(out),
                dt=forcing.time_step_s, model=model)


def test_water_and_energy_close_with_irrigation(dry_summer):
    assert np.max(np.abs(water_residual(dry_summer))) <= 1e-6
    residual, _ = energy_residual(dry_summer)
    assert np.max(np.abs(residual)) <= 1e-3


def test_irrigated_root_zone_stays_at_the_stress_onset(dry_summer):
    out, p = dry_summer["out"], dry_summer["params"]
    target = float(p["beta_threshold"][1] * p["root_zone_capacity"][1])
    assert np.all(out["Qirrig"][:, 0] == 0.0)  # rain-fed: never irrigated
    irrigation_mm = out["Qirrig"][:, 1].sum() * dry_summer["dt"]
    et_mm = out["Evap"][:, 1].sum() * dry_summer["dt"]
    # no rain: what keeps the root zone up is the irrigation, and it replaces what evaporated
    assert out["SoilMoist"][:, 1].min() >= target - 0.5
    assert irrigation_mm == pytest.approx(et_mm, rel=0.02)
    assert irrigation_mm > 100.0
    # the rain-fed column dries out and evaporates far less over the last month
    assert out["SoilMoist"][-1, 0] < 0.2 * target
    assert out["Qle"][-1440:, 1].mean() > 3.0 * out["Qle"][-1440:, 0].mean()


def test_rainfed_column_is_lad_beside_an_irrigated_one(dry_summer):
    forcing, p = dry_summer["forcing"], dry_summer["params"]
    plain = {k: v[:1] for k, v in default_params(["GRA"]).items()}
    short = forcing.at((slice(0, 480), slice(0, 1)))
    model = LaDModel()
    state0 = jax.tree_util.tree_map(lambda a: a[:1], dry_summer["state0"])
    _, out = run_jit(model, plain, short, state0)
    for name in ("Qle", "Qh", "SoilMoist"):
        np.testing.assert_allclose(np.asarray(out[name])[:, 0], dry_summer["out"][name][:480, 0], rtol=1e-12, atol=1e-9)


def test_no_irrigation_in_the_cold_or_under_snow():
    w, target, dt = jnp.asarray([10.0, 10.0, 10.0, 10.0]), 50.0, 1800.0
    t = jnp.asarray([IRRIGATION_BASE_TEMPERATURE - 5.0, IRRIGATION_BASE_TEMPERATURE + 5.0] * 2)
    snow = jnp.asarray([0.0, 0.0, 1.0, 0.0])
    irrigated = jnp.asarray([1.0, 1.0, 1.0, 0.5])
    got = np.asarray(demand_irrigation(w, target, irrigated, t, snow, dt)) * dt
    assert got[0] < 0.01 and got[2] == 0.0
    assert got[1] == pytest.approx(40.0, abs=0.01)  # tops up to the target within the step
    assert got[3] == pytest.approx(20.0, abs=0.01)  # half the column irrigated


@pytest.mark.slow  # a few seconds; in make test, not test-fast
def test_irrigation_gradient_is_finite_and_matches_finite_differences(dry_summer):
    forcing = dry_summer["forcing"].at((slice(0, 96), slice(1, 2)))
    base = {k: v[1:] for k, v in dry_summer["params"].items()}
    model = LaDModel()
    s0 = model.init_state(base, forcing)
    s0 = type(s0)(soil_temp=s0.soil_temp, soil_water=s0.soil_water * 0.5, snow=s0.snow, groundwater=s0.groundwater)

    def loss(frac):
        _, out = rollout(model, {**base, "irrigated": frac}, forcing, s0)
        return jnp.mean(out["Qle"])

    x = jnp.asarray([0.6])
    g = float(jax.grad(lambda v: loss(v))(x)[0])
    h = 1e-3
    fd = float((loss(x + h) - loss(x - h)) / (2 * h))
    assert g > 0.0 and g == pytest.approx(fd, rel=0.02)


def test_metadata_values_and_errors():
    assert irrigated_fraction(True, "f") == 1.0 and irrigated_fraction("no", "f") == 0.0
    assert irrigated_fraction(0.4, "f") == 0.4
    with pytest.raises(DataError, match=r"f: 'sometimes'; expected true/false"):
        irrigated_fraction("sometimes", "f")
    with pytest.raises(DataError, match="irrigated = 2.0"):
        static_attributes({"irrigated": np.asarray([0.0, 2.0])}, np.arange(3), None, ["a", "b"])
    with pytest.raises(ValueError, match=r"irrigated = -1.0; expected 0"):
        default_params(["CRO"], irrigated=-1.0)
    p = default_params(["CRO", "GRA"], irrigated=[np.nan, 1.0])  # not stated: rain-fed
    np.testing.assert_array_equal(p["irrigated"], [0.0, 1.0])
