"""The LaD column: energy and water conservation, stability over a year, snow, runoff, the closure
interface, dynamic parameters, chunking, spin-up and dtype.

Energy residual per step (all terms in W m-2):
    Rnet - Qh - Qle - Qf - (SR_t - SR_{t-1}) / dt
with Qf = L_f * snowmelt (the melt heat) and SR = sum_k c_k dz_k (T_k - T_f) the soil heat storage.
Water residual per step (kg m-2 = mm):
    (W + SWE + GWS)_t - (W + SWE + GWS)_{t-1} - (Precip - Evap - Qs - Qsb) dt
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybridlsm.constants import T_FREEZE
from hybridlsm.physics import (
    OUTPUT_NAMES,
    BulkClosure,
    Closure,
    Forcing,
    LaDModel,
    TurbulentFluxes,
    default_params,
    rollout,
    spin_up,
    synthetic_forcing,
)
from hybridlsm.physics.soil import layer_heat_capacity, soil_heat_storage

from conftest import FAST_COMPILE, SHIPPED_OPTIMISATION

SITES = ["GRA", "ENF", "DBF"]
run_jit = jax.jit(rollout, static_argnames=("chunk",), compiler_options=FAST_COMPILE)
#: for results compared to rounding (1e-12) across layouts: compiled as `hybridlsm` compiles (conftest)
shipped_jit = jax.jit(rollout, static_argnames=("chunk",), compiler_options={**(FAST_COMPILE or {}), **SHIPPED_OPTIMISATION})


def _as_numpy(tree):
    return jax.tree_util.tree_map(np.asarray, tree)


def _year(scheme, dt):
    forcing = synthetic_forcing(365, time_step_s=dt, n_sites=len(SITES))
    params = default_params(SITES)
    model = LaDModel(stability=scheme)
    state0 = model.init_state(params, forcing)
    final, out = run_jit(model, params, forcing, state0)
    return dict(forcing=forcing, params=params, state0=state0, final=final, out=_as_numpy(out),
                dt=dt, model=model)


@pytest.fixture(scope="module")
def year_louis_30min():
    return _year("louis", 1800.0)


@pytest.fixture(scope="module")
def year_bd_60min():
    return _year("businger_dyer", 3600.0)


@pytest.fixture(params=["year_louis_30min", "year_bd_60min"])
def year(request):
    return request.getfixturevalue(request.param)


def energy_residual(run):
    out, params = run["out"], run["params"]
    sr0 = soil_heat_storage(run["state0"].soil_temp, layer_heat_capacity(params["soil_heat_capacity"]))
    sr = np.concatenate([np.asarray(sr0)[None], out["SR"]])
    storage_change = np.diff(sr, axis=0) / run["dt"]
    return out["Rnet"] - out["Qh"] - out["Qle"] - out["Qf"] - storage_change, storage_change


def water_residual(run):
    out, s0 = run["out"], run["state0"]
    store = out["SoilMoist"] + out["SWE"] + out["GWS"]
    store0 = np.asarray(s0.soil_water + s0.snow + s0.groundwater)
    change = np.diff(np.concatenate([store0[None], store]), axis=0)
    precip = np.asarray(run["forcing"].precip)
    return change - (precip + out["Qirrig"] - out["Evap"] - out["Qs"] - out["Qsb"]) * run["dt"]


# --------------------------------------------------------------------------------------------
# year-long rollouts
# --------------------------------------------------------------------------------------------


def test_energy_closes_every_step_and_over_the_year(year):
    residual, storage_change = energy_residual(year)
    assert np.max(np.abs(residual)) <= 1e-3
    assert np.max(np.abs(residual.mean(axis=0))) <= 0.01
    np.testing.assert_allclose(year["out"]["Qg"], storage_change, rtol=0, atol=1e-3)
    assert np.max(np.abs(year["out"]["Rnet"])) > 300.0  # the residual is small next to real fluxes


def test_water_closes_every_step(year):
    assert np.max(np.abs(water_residual(year))) <= 1e-6


def test_stable_and_physical_over_a_year(year):
    out = year["out"]
    for name in OUTPUT_NAMES:
        assert np.all(np.isfinite(out[name])), name
    ts = out["AvgSurfT"]
    assert ts.min() > 240.0 and ts.max() < 320.0
    assert out["SoilTemp"].min() > 240.0 and out["SoilTemp"].max() < 320.0
    assert np.all(out["SWE"] >= 0.0)
    assert np.all(out["SoilMoist"] > 0.0)
    assert np.all(out["SoilMoist"] <= np.asarray(year["params"]["root_zone_capacity"]) + 1e-9)
    assert np.all(out["ra"] > 0.0) and np.all(out["Kh"] > 0.0)
    # the annual mean fluxes are of realistic size (W m-2)
    assert np.all((out["Qle"].mean(0) > 20.0) & (out["Qle"].mean(0) < 80.0))
    assert np.all((out["Qh"].mean(0) > 0.0) & (out["Qh"].mean(0) < 60.0))


def test_outputs_follow_the_contract(year_louis_30min):
    run = year_louis_30min
    out, params = run["out"], run["params"]
    n_steps = run["forcing"].n_steps
    assert set(OUTPUT_NAMES) <= set(out)
    for name in OUTPUT_NAMES:
        expected = (n_steps, 3, 5) if name == "SoilTemp" else (n_steps, 3)
        assert out[name].shape == expected, name
    np.testing.assert_allclose(out["AvgSurfT"], out["SoilTemp"][..., 0])
    z_minus_d = np.asarray(params["reference_height"] - params["displacement_fraction"] * params["canopy_height"])
    np.testing.assert_allclose(out["Kh"] * out["ra"], np.broadcast_to(z_minus_d, out["Kh"].shape), rtol=1e-10)
    np.testing.assert_allclose(out["Snowf"] + out["Rainf"], np.asarray(run["forcing"].precip), atol=1e-18)
    # final state equals the last observed state
    np.testing.assert_allclose(np.asarray(run["final"].soil_temp), out["SoilTemp"][-1])


def test_snow_accumulates_in_the_cold_spell_and_melts_at_freezing(year_louis_30min):
    run = year_louis_30min
    out, dt = run["out"], run["dt"]
    day = (np.arange(run["forcing"].n_steps) + 0.5) * dt / 86400.0
    cold = (day > 30) & (day < 45)
    assert np.all(out["SWE"][cold].max(axis=0) > 10.0)
    assert np.all(out["SWE"][(day > 90) & (day < 300)] < 1e-6)  # melted by spring
    melt_mass = out["Qsm"].sum(axis=0) * dt
    assert np.all(melt_mass > 10.0)
    # melt energy equals L_f times the melted mass
    np.testing.assert_allclose(out["Qf"].sum(0) * dt, 3.34e5 * melt_mass, rtol=1e-12)
    # while snow is melting, the surface stays at the freezing point
    melting = (out["Qsm"] * dt > 0.05) & (out["SWE"] > 2.0)  # snow left after the step
    assert melting.sum() > 20
    assert np.all(np.abs(out["AvgSurfT"][melting] - T_FREEZE) < 0.3)
    # sublimation occurs from snow and the snow albedo is used
    assert np.abs(out["SubSnow"][cold]).sum() > 0
    assert out["Albedo"][cold].max() > 0.6


def test_storm_drains_to_groundwater(year_louis_30min):
    out, dt = year_louis_30min["out"], year_louis_30min["dt"]
    day = (np.arange(out["GWS"].shape[0]) + 0.5) * dt / 86400.0
    before = out["GWS"][(day > 89.0) & (day < 90.0)].mean(0)  # storm on day 90
    after = out["GWS"][(day > 91.0) & (day < 92.0)].mean(0)
    assert np.all(after > before + 1.0)
    assert np.all(out["Qsb"] >= 0.0) and np.all(out["Qsb"].max(0) > 0.0)
    # linear reservoir between recharge events: Qsb = GWS / tau (to the discretisation)
    tau = np.asarray(year_louis_30min["params"]["tau_groundwater"]) * 86400.0
    quiet = (day > 340) & (day < 341)
    np.testing.assert_allclose(out["Qsb"][quiet], out["GWS"][quiet] / tau, rtol=0.02)
    assert np.all(out["Qs"] == 0.0)  # no snow above max_snow


# --------------------------------------------------------------------------------------------
# short rollouts: chunking, dynamic parameters, custom closures, spin-up, dtype
# (one compiled rollout serves several checks: sites 0-1 carry an identity dynamic override,
# sites 2-3 the same sites with rs_scale switched from 1 to 3 at step SWITCH)
# --------------------------------------------------------------------------------------------

SWITCH = 96


@pytest.fixture(scope="module")
def short():
    forcing = synthetic_forcing(4, n_sites=2, start_day=150.0)
    params = default_params(["GRA", "ENF"])
    return LaDModel(), params, forcing


@pytest.fixture(scope="module")
def short_dynamic(short):
    model, params, forcing = short
    n = forcing.n_steps
    forcing4 = jax.tree_util.tree_map(lambda a: jnp.concatenate([a, a], axis=1), forcing)
    params4 = {k: jnp.concatenate([v, v]) for k, v in params.items()}
    switched = jnp.where(jnp.arange(n)[:, None] < SWITCH, 1.0, 3.0) * jnp.ones((n, 2))
    dynamic = {"rs_scale": jnp.concatenate([jnp.broadcast_to(params["rs_scale"], (n, 2)), switched], 1)}
    _, out = shipped_jit(model, params4, forcing4, dynamic=dynamic)
    return _as_numpy(out)


def test_chunking_and_identity_dynamic_do_not_change_results(short, short_dynamic):
    model, params, forcing = short
    _, plain = shipped_jit(model, params, forcing, chunk=7)  # 24 chunks of 8 (chunk_length)
    for name in ("Qle", "Qh", "SoilTemp", "GWS"):
        np.testing.assert_allclose(short_dynamic[name][:, :2], plain[name], rtol=1e-12, atol=1e-12)


def test_dynamic_parameters_act_from_their_time_step(short, short_dynamic):
    _, params, forcing = short
    base, switched = short_dynamic["Qle"][:, :2], short_dynamic["Qle"][:, 2:]
    np.testing.assert_allclose(switched[:SWITCH], base[:SWITCH], rtol=1e-12)
    day_after = slice(SWITCH + 16, SWITCH + 40)  # daytime of the next day
    assert np.all(switched[day_after].sum(0) < 0.9 * base[day_after].sum(0))
    with pytest.raises(ValueError, match="dynamic parameter 'rs_scale'"):
        rollout(LaDModel(), params, forcing, dynamic={"rs_scale": params["rs_scale"]})


class FractionClosure(Closure):
    """A network-like closure: no derivatives, uses states and forcing, returns H and E."""

    bowen: float = 0.4

    def __call__(self, c):
        available = jnp.maximum(c.net_radiation, 0.0)
        wetness = c.state.soil_water / c.params["root_zone_capacity"]
        le = available * wetness / (1.0 + self.bowen)
        return TurbulentFluxes(
            sensible_heat=self.bowen * le - 10.0 + 0.0 * c.forcing.wind,
            evaporation=le / c.latent_heat,
            dsensible_dt=jnp.zeros_like(le),
            devaporation_dt=jnp.zeros_like(le),
        )


def test_custom_closure_conserves_energy_and_water(short, short_dynamic):
    _, params, forcing = short
    model = LaDModel(closure=FractionClosure())
    state0 = model.init_state(params, forcing)
    _, out = run_jit(model, params, forcing, state0)
    run = dict(out=_as_numpy(out), params=params, state0=state0, forcing=forcing, dt=forcing.time_step_s)
    assert np.max(np.abs(energy_residual(run)[0])) <= 1e-3
    assert np.max(np.abs(water_residual(run))) <= 1e-6
    assert np.all(np.isfinite(run["out"]["AvgSurfT"]))
    # it was used: H differs from the bulk closure's by tens of W m-2
    assert np.max(np.abs(run["out"]["Qh"] - short_dynamic["Qh"][:, :2])) > 10.0
    assert isinstance(LaDModel().closure, BulkClosure)


def test_spin_up_repeats_the_period(short):
    from hybridlsm.physics.rollout import _final_state

    model, params, forcing = short
    state, info = spin_up(model, params, forcing, period=48, max_cycles=3, tol_temp=0.0)
    assert info["cycles"] == 3 and not info["converged"]
    _, info1 = spin_up(model, params, forcing, period=48, max_cycles=3, tol_temp=1e9, tol_water=1e9)
    assert info1["cycles"] == 1 and info1["converged"]
    # three cycles = three consecutive rollouts over day 1 from the initial state
    day1 = forcing.at(slice(0, 48))
    manual = model.init_state(params, day1)
    for _ in range(3):
        manual = _final_state(model, params, day1, manual, None, 96)
    np.testing.assert_allclose(np.asarray(state.soil_temp), np.asarray(manual.soil_temp), rtol=1e-12)
    assert np.max(np.abs(np.asarray(state.soil_temp) - np.asarray(model.init_state(params, day1).soil_temp))) > 0.1
    # a repeated daily cycle converges: the cycle-to-cycle change falls below the tolerance
    _, info2 = spin_up(model, params, forcing, period=48, max_cycles=300, tol_temp=0.05, tol_water=0.5)
    assert info2["converged"] and info2["max_temp_change"] < 0.05 and info2["cycles"] > 3


def test_float32_inputs_give_float32_outputs(short, short_dynamic):
    model, params, forcing = short
    f32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), forcing)
    p32 = {k: v.astype(jnp.float32) for k, v in params.items()}
    final, out = run_jit(model, p32, f32)
    assert out["Qle"].dtype == jnp.float32 and final.soil_temp.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(out["Qh"])))
    np.testing.assert_allclose(out["Qh"], short_dynamic["Qh"][:, :2], atol=0.1)
    np.testing.assert_allclose(out["AvgSurfT"], short_dynamic["AvgSurfT"][:, :2], atol=2e-3)
    # one time slice (N,) works for init_state as for step
    state = model.init_state(p32, f32.at(0))
    assert state.soil_temp.shape == (2, 5) and state.soil_temp.dtype == jnp.float32
    assert isinstance(f32.at(0), Forcing) and f32.at(0).time_step_s == 1800.0


def test_unknown_stability_scheme():
    with pytest.raises(ValueError, match="louis, businger_dyer"):
        LaDModel(stability="monin")


def _context(t_surface):
    """A hand-built closure context for two sites (start-of-step values)."""
    from hybridlsm.physics import SurfaceContext
    from hybridlsm.thermo import saturation_specific_humidity, saturation_specific_humidity_slope

    forcing = synthetic_forcing(1, n_sites=2, start_day=180.0).at(24)
    params = default_params(["GRA", "ENF"])
    ts = jnp.asarray(t_surface)
    state = LaDModel().init_state(params, forcing)
    return SurfaceContext(
        state=state, forcing=forcing, params=params, t_surface=ts, theta_air=forcing.t_air + 0.1,
        q_air=forcing.q_air, q_sat=saturation_specific_humidity(ts, forcing.p_surf),
        dq_sat_dt=saturation_specific_humidity_slope(ts, forcing.p_surf), rho_air=jnp.array([1.1, 1.15]),
        latent_heat=jnp.array([2.45e6, 2.45e6]), aerodynamic_resistance=jnp.array([40.0, 12.0]),
        surface_resistance=jnp.array([56.6, 69.7]), beta=jnp.array([0.8, 1.0]),
        snow_cover=jnp.zeros(2), richardson=jnp.array([-0.1, -0.02]), wind=jnp.array([3.0, 3.5]),
        net_radiation=jnp.array([500.0, 550.0]), dnet_radiation_dt=jnp.array([-5.5, -5.6]),
    )


def test_autodiff_closure_reproduces_the_analytic_bulk_derivatives():
    from hybridlsm.physics import AutodiffClosure

    context = _context([305.0, 300.0])
    analytic = BulkClosure()(context)
    auto = AutodiffClosure(BulkClosure())(context)
    for field in ("sensible_heat", "evaporation", "dsensible_dt", "devaporation_dt"):
        np.testing.assert_allclose(getattr(auto, field), getattr(analytic, field), rtol=1e-12)
    # and the bulk derivatives are the derivatives of the bulk fluxes in T_s (r_a held fixed)
    h = 1e-4
    plus, minus = BulkClosure()(_context([305.0 + h, 300.0 + h])), BulkClosure()(_context([305.0 - h, 300.0 - h]))
    np.testing.assert_allclose((plus.evaporation - minus.evaporation) / (2 * h), analytic.devaporation_dt, rtol=1e-7)
    np.testing.assert_allclose((plus.sensible_heat - minus.sensible_heat) / (2 * h), analytic.dsensible_dt, rtol=1e-7)
    # a closure reading T_1 from the state sees the perturbation too
    class StateClosure(Closure):
        def __call__(self, c):
            h = 20.0 * (c.state.soil_temp[..., 0] - c.theta_air)
            return TurbulentFluxes(h, 0.0 * h, 0.0 * h, 0.0 * h)

    np.testing.assert_allclose(AutodiffClosure(StateClosure())(context).dsensible_dt, 20.0, rtol=1e-12)


def test_vpd_response_by_hand_and_in_the_column(short):
    """Leuning's r_s (1 + D / D0): by hand at 30 °C and 40 % relative humidity; in the column it
    multiplies r_s by that factor at every step, lowers evaporation, and the energy still closes."""
    from hybridlsm.physics.lad import RS_VPD_D0, vpd_response
    from hybridlsm.thermo import saturation_vapour_pressure, specific_humidity_from_vapour_pressure

    t, p = 303.15, 101325.0
    e_sat = 611.2 * np.exp(17.62 * 30.0 / (243.12 + 30.0))  # Magnus (Sonntag 1990) [Pa]
    q = specific_humidity_from_vapour_pressure(0.4 * e_sat, p)
    assert vpd_response(t, q, p, 2.0) == pytest.approx(1.0 + 0.6 * e_sat / 2000.0, rel=1e-9)
    assert vpd_response(t, specific_humidity_from_vapour_pressure(1.1 * saturation_vapour_pressure(t), p), p, 2.0) == 1.0
    with pytest.raises(ValueError, match="rs_vpd_d0"):
        LaDModel(rs_vpd_d0=0.0)

    model, params, forcing = short
    _, plain = run_jit(model, params, forcing)
    _, dry = run_jit(LaDModel(rs_vpd_d0=RS_VPD_D0), params, forcing)
    plain, dry = _as_numpy(plain), _as_numpy(dry)
    factor = np.asarray(vpd_response(forcing.t_air, forcing.q_air, forcing.p_surf, RS_VPD_D0))
    assert factor.max() > 1.2  # the synthetic days are dry enough to matter
    # the same as LaD's r_s times the factor, prescribed step by step ...
    rs = jnp.asarray(factor) * (params["rs_min"] * params["rs_scale"])[None]
    _, prescribed = run_jit(model, params, forcing, dynamic={"rs": rs})
    for name in ("Qle", "Qh", "rs", "SoilMoist"):
        np.testing.assert_allclose(dry[name], np.asarray(prescribed[name]), rtol=1e-10, atol=1e-10)
    # ... and over the days it evaporates less
    assert dry["Qle"].sum() < 0.95 * plain["Qle"].sum()
    residual = dry["Rnet"] - dry["Qh"] - dry["Qle"] - dry["Qg"] - dry["Qf"]
    assert np.abs(residual).max() < 1e-8
