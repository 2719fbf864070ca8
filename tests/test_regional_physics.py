"""The gridded physics: finite-volume air layer (conservation, QUICK, boundaries) and the LaD
columns coupled through it (domain energy budget with and without sub-steps, refinement)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybridlsm.constants import CP_AIR
from hybridlsm.physics import default_params, rollout, synthetic_forcing
from hybridlsm.physics.air_layer import AirLayer, quick_face_values, repeat_step, transport, transport_substeps
from hybridlsm.physics.lad import LaDModel
from hybridlsm.physics.regional import GridForcing, RegionalModel
from hybridlsm.thermo import air_density


def _advect(phi0, u, v, *, boundary="periodic", dt=20.0, n_substeps=100, kh=0.0, above=None):
    """Lateral transport alone (no surface flux, no top exchange) over one call of ``advance``."""
    ny, nx = phi0.shape
    n = ny * nx
    zero = jnp.zeros(n)
    above = zero if above is None else jnp.asarray(above).reshape(-1)
    air = AirLayer((ny, nx), dx=1.0, dy=1.0, depth=1.0, top_resistance=1e30, boundary=boundary,
                   n_substeps=n_substeps)
    return air.advance(jnp.asarray(phi0).reshape(-1), zero, sensible=zero, evaporation=zero, rho=1.0 / CP_AIR,
                       temp_above=above, humidity_above=zero, wind_u=jnp.full(n, u), wind_v=jnp.full(n, v),
                       kh=jnp.full(n, kh), dt=dt)


def test_quick_face_value_is_the_quadratic_upwind_interpolation():
    # phi = x^2 at cell centres 0..5; QUICK is exact for a parabola: face 3 (between cells 2 and 3,
    # x = 2.5) from the left is 6.25
    phi = jnp.arange(-2.0, 8.0) ** 2  # cells -2..7 = two ghosts each side of cells 0..5
    faces = quick_face_values(phi[None, :], jnp.ones((1, 7)), axis=1)
    np.testing.assert_allclose(np.asarray(faces[0]), (np.arange(7) - 0.5) ** 2, atol=1e-12)
    faces = quick_face_values(phi[None, :], -jnp.ones((1, 7)), axis=1)
    np.testing.assert_allclose(np.asarray(faces[0]), (np.arange(7) - 0.5) ** 2, atol=1e-12)


def test_quick_advects_a_gaussian_like_the_analytic_solution():
    # u = 1 cell per second for 20 s on a periodic 1 x 50 grid: the bump moves 20 cells
    x = np.arange(50.0)
    phi0 = np.exp(-0.5 * ((x - 10) / 3.0) ** 2)[None, :]
    out = np.asarray(_advect(phi0, 1.0, 0.0).temp)
    exact = np.exp(-0.5 * ((x - 30) / 3.0) ** 2)
    assert np.abs(out - exact).max() < 0.06  # QUICK: 0.055 at 3-cell width (first-order upwind: 0.3)
    assert int(out.argmax()) == 30
    assert abs(out.sum() - phi0.sum()) < 1e-12
    # along y, and backwards: the same displacement
    out_y = np.asarray(_advect(phi0.T, 0.0, -1.0).temp)
    assert int(out_y.argmax()) == (10 - 20) % 50


def test_diffusion_conserves_and_matches_the_discrete_heat_equation():
    # 1 x 40 periodic, K = 0.1 cell^2 s-1: the variance of a spike grows by 2 K t
    phi0 = np.zeros((1, 40))
    phi0[0, 20] = 1.0
    out = np.asarray(_advect(phi0, 0.0, 0.0, kh=0.1, dt=50.0, n_substeps=100).temp)
    x = np.arange(40.0)
    assert abs(out.sum() - 1.0) < 1e-12
    variance = np.sum(out * (x - 20) ** 2)
    assert variance == pytest.approx(2 * 0.1 * 50.0, rel=1e-6)


def test_uniform_air_stays_uniform_under_a_divergent_wind():
    ny, nx = 5, 6
    n = ny * nx
    rng = np.random.default_rng(1)
    air = AirLayer((ny, nx), boundary="open", n_substeps=8)
    t = jnp.full(n, 290.0)
    zero = jnp.zeros(n)
    new = air.advance(t, zero + 0.008, sensible=zero, evaporation=zero, rho=1.2, temp_above=t,
                      humidity_above=zero + 0.008, wind_u=jnp.asarray(rng.normal(2, 2, n)),
                      wind_v=jnp.asarray(rng.normal(0, 2, n)), kh=jnp.full(n, 5.0), dt=3600.0)
    np.testing.assert_allclose(np.asarray(new.temp), 290.0, atol=1e-10)
    np.testing.assert_allclose(np.asarray(new.humidity), 0.008, atol=1e-15)


@pytest.mark.parametrize("boundary", ["periodic", "open"])
def test_transport_moves_heat_only_through_the_boundary_and_the_top(boundary):
    rng = np.random.default_rng(2)
    ny, nx = 7, 9
    phi = jnp.asarray(rng.normal(290, 3, (ny, nx)))
    above = jnp.asarray(rng.normal(290, 1, (ny, nx)))
    u, v = jnp.asarray(rng.normal(3, 2, (ny, nx))), jnp.asarray(rng.normal(-1, 2, (ny, nx)))
    kh = jnp.asarray(rng.uniform(0.01, 50, (ny, nx)))
    r = transport(phi, above, u, v, kh, 1000.0, 800.0, 100.0, boundary)
    total = float(jnp.sum(r.tendency) + ny * nx * r.outflow + jnp.sum(r.vertical))
    assert abs(total) < 1e-12 * float(jnp.sum(jnp.abs(r.tendency)))
    if boundary == "periodic":
        assert float(r.outflow) == 0.0


def test_float32_transport_of_absolute_temperatures_keeps_the_heat_budget():
    # 27 SSP-RK3 sub-steps of 290 K air in float32, as at 1 km: the convex form (phi / 3 + 2/3 ...)
    # gained 1e-5 K per sub-step (0.02 W m-2 of budget here); increments of anomalies only round
    rng = np.random.default_rng(3)
    ny, nx, dt, depth, rho = 16, 16, 3600.0, 300.0, 1.2
    field = lambda mean, sd: jnp.asarray(rng.normal(mean, sd, ny * nx), jnp.float32)  # noqa: E731
    t0, sensible, q = field(290, 2), field(100, 50), jnp.full(ny * nx, 0.01, jnp.float32)
    air = AirLayer((ny, nx), dx=1000.0, dy=1000.0, depth=depth, boundary="open", n_substeps=27)
    new = air.advance(t0, q, sensible=sensible, evaporation=jnp.zeros_like(q), rho=jnp.float32(rho),
                      temp_above=field(289, 1), humidity_above=q, wind_u=field(5, 1), wind_v=field(-3, 1),
                      kh=jnp.asarray(rng.uniform(1, 50, ny * nx), jnp.float32), dt=dt)
    assert new.temp.dtype == jnp.float32
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    storage = rho * CP_AIR * depth * np.mean(f64(new.temp) - f64(t0)) / dt
    budget = storage - np.mean(f64(sensible) - f64(new.top_heat)) + float(new.boundary_heat)
    assert abs(budget) < 5e-4  # W m-2 (0.02 before; 1e-4 with anomalies)


def test_heat_through_the_top_and_boundary_is_that_of_the_absolute_temperature():
    # the layer steps anomalies from a reference; Qh_top and boundary_heat must still carry the
    # enthalpy of the absolute air: warming all the air by 10 K adds rho c_p h 10 K times the
    # steady exchange of a uniform field (divergent wind: air leaves through the top and the edges)
    rng = np.random.default_rng(4)
    ny, nx, n = 5, 6, 30
    air = AirLayer((ny, nx), dx=1000.0, dy=1000.0, depth=300.0, boundary="open", n_substeps=8)
    x = np.tile(np.arange(nx, dtype=float), ny)
    wind = dict(wind_u=jnp.asarray(1.0 + 0.5 * x), wind_v=jnp.asarray(rng.normal(0, 1, n)))
    kh = jnp.asarray(rng.uniform(1, 20, n))

    def step(shift):
        return air.advance(290.0 + shift + jnp.linspace(0, 1, n),
                           jnp.full(n, 0.01), sensible=jnp.linspace(50, 150, n), evaporation=jnp.zeros(n), rho=1.2,
                           temp_above=289.0 + shift + jnp.linspace(1, 0, n), humidity_above=jnp.full(n, 0.01),
                           kh=kh, dt=3600.0, **wind)

    base, warm = step(0.0), step(10.0)
    steady = transport(jnp.ones((ny, nx)), jnp.ones((ny, nx)), wind["wind_u"].reshape(ny, nx),
                       wind["wind_v"].reshape(ny, nx), kh.reshape(ny, nx), 1000.0, 1000.0, 300.0, "open")
    c = 1.2 * CP_AIR * 300.0 * 10.0  # J m-2 of the 10 K
    assert float(jnp.abs(steady.vertical).max()) > 1e-4  # the wind does diverge
    np.testing.assert_allclose(np.asarray(warm.top_heat - base.top_heat), c * np.asarray(steady.vertical).ravel(),
                               atol=1e-6)
    np.testing.assert_allclose(float(warm.boundary_heat - base.boundary_heat), c * float(steady.outflow), atol=1e-6)
    np.testing.assert_allclose(np.asarray(warm.temp - base.temp), 10.0, atol=1e-9)


def test_repeat_step_gradient_equals_the_unrolled_loop_for_each_count():
    def step(c, args):
        x, total = c
        a, b = args
        x = jnp.sin(a * x) + b * jnp.roll(x, 1)
        return x, total + jnp.sum(x**2)

    x0, args = jnp.linspace(0.1, 1.0, 5), (jnp.asarray(1.3), jnp.linspace(-0.5, 0.5, 5))

    def unrolled(x0, args, n):
        c = (x0, 0.0)
        for _ in range(n):
            c = step(c, args)
        return c[1] + jnp.sum(c[0])

    for n in (1, 3, 7):
        looped = lambda x0, args: (lambda c: c[1] + jnp.sum(c[0]))(  # noqa: E731
            repeat_step(step, 7, (x0, 0.0), args, jnp.asarray(n)))
        assert float(looped(x0, args)) == pytest.approx(float(unrolled(x0, args, n)), rel=1e-12)
        got = jax.jit(jax.grad(looped, argnums=(0, 1)))(x0, args)
        want = jax.grad(unrolled, argnums=(0, 1))(x0, args, n)
        for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
            np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-10, atol=1e-12)


def test_a_calm_step_takes_fewer_transport_substeps_than_the_record_needs():
    air = AirLayer((4, 5), dx=1000.0, dy=1000.0, n_substeps=40)
    n = lambda u: int(air.substeps_needed(jnp.full(20, u), jnp.zeros(20), jnp.full(20, 1.0), 3600.0))  # noqa: E731
    assert (n(2.0), n(8.0), n(100.0)) == (9, 36, 40)  # ceil(u 3.6 / 0.8), at most n_substeps


def test_quick_ssp_rk3_stays_bounded_at_the_largest_courant_number_used():
    # white noise advected diagonally at Courant number 1.2 (> MAX_COURANT) for 500 sub-steps
    n = 16 * 16
    phi0 = np.random.default_rng(0).normal(0, 1, n)
    zero = jnp.zeros(n)
    air = AirLayer((16, 16), dx=1.0, dy=1.0, depth=1.0, top_resistance=1e30, boundary="periodic", n_substeps=500)
    out = air.advance(jnp.asarray(phi0), zero, sensible=zero, evaporation=zero, rho=1.0 / CP_AIR,
                      temp_above=zero, humidity_above=zero, wind_u=jnp.full(n, 0.6), wind_v=jnp.full(n, 0.6),
                      kh=zero, dt=500.0)
    assert float(jnp.abs(out.temp).max()) < np.abs(phi0).max()
    assert abs(float(jnp.sum(out.temp)) - phi0.sum()) < 1e-10


def test_transport_substeps_follow_the_courant_number():
    assert transport_substeps(np.array([5.0, -10.0]), np.array([0.0]), 3600.0, 1000.0, 1000.0, 0.0) == 45  # 10 m s-1 x 3600 s / 1 km / 0.8
    assert transport_substeps(np.zeros(1), np.zeros(1), 3600.0, 1000.0, 1000.0, 100.0) == 2  # 2 K dt (2/dx^2) = 1.44
    with pytest.raises(ValueError, match="boundary 'wall'"):
        AirLayer((2, 2), boundary="wall")


def _grid_case(ny=4, nx=5, days=1, seed=0):
    n = ny * nx
    f = synthetic_forcing(n_days=days, time_step_s=3600.0, n_sites=1)
    rng = np.random.default_rng(seed)
    bump = rng.normal(0, 1.0, n)  # smooth enough: 1 K between cells
    f = jax.tree_util.tree_map(lambda a: jnp.repeat(a, n, axis=1), f)
    f = type(f)(**{**{k: getattr(f, k) for k in ("sw_down", "lw_down", "q_air", "p_surf", "wind", "precip")},
                   "t_air": f.t_air + bump, "time_step_s": 3600.0})
    u = jnp.full((f.n_steps, n), 3.0)
    v = jnp.full((f.n_steps, n), -1.5)
    params = default_params(["GRA", "CRO", "ENF", "GRA", "BSV"] * (n // 5) + ["GRA"] * (n % 5))
    return GridForcing(f, u, v), params


@pytest.mark.parametrize("boundary,refinements", [("periodic", 0), pytest.param("open", 2, marks=pytest.mark.slow)])
def test_domain_energy_budget_of_the_coupled_grid_closes_to_rounding(boundary, refinements):
    gf, params = _grid_case()
    ny, nx = 4, 5
    air = AirLayer((ny, nx), boundary=boundary, n_substeps=transport_substeps(gf.wind_u, gf.wind_v, 3600.0,
                                                                               1000.0, 1000.0, 1.0))
    tolerance = 0.02  # W m-2: with one coupling pass, small enough that some steps are refined
    model = RegionalModel(air, residual_tolerance=tolerance, max_refinements=refinements, coupling_iterations=1)
    state, out = jax.jit(lambda p: rollout(model, p, gf))(params)
    t_layer = np.asarray(out["Tair_layer"])
    q_layer = np.asarray(out["Qair_layer"])
    t_prev = np.concatenate([np.asarray(gf.column.t_air[:1]), t_layer[:-1]])
    q_prev = np.concatenate([np.asarray(gf.column.q_air[:1]), q_layer[:-1]])
    rho = np.mean(np.asarray(air_density(t_prev, gf.column.p_surf, q_prev)), axis=1)
    storage = rho * CP_AIR * air.depth * np.sum(t_layer - t_prev, axis=1) / 3600.0
    sources = np.sum(np.asarray(out["Qh"]) - np.asarray(out["Qh_top"]), axis=1) \
        - ny * nx * np.asarray(out["boundary_heat"])[:, 0]
    misfit = np.abs(storage - sources) / (ny * nx)
    assert misfit.max() < 1e-8  # W m-2 of domain; float64 rounding of ~1e5 W m-2 terms
    assert np.asarray(out["air_energy_residual"]).max() < 1e-8
    # the columns close their own balance: Rn - H - LE - Qf = G = Delta storage / dt
    sr = np.asarray(out["SR"])
    g = np.asarray(out["Rnet"] - out["Qh"] - out["Qle"] - out["Qf"])
    np.testing.assert_allclose(g[1:], (sr[1:] - sr[:-1]) / 3600.0, atol=1e-6)
    n_sub = np.asarray(out["n_substeps"])[:, 0]
    if refinements:
        assert n_sub.max() > 1  # some steps were refined
        refined = n_sub < 2**refinements
        # a step that was not refined to the limit ends within the tolerance
        assert np.asarray(out["coupling_residual"]).max(axis=1)[refined].max() <= tolerance
    else:
        assert set(n_sub) == {1.0}
    assert np.all(np.isfinite(t_layer)) and np.abs(t_layer - np.asarray(gf.column.t_air)).max() < 15.0


def test_prescribed_kh_and_rs_set_the_columns_resistances():
    f = synthetic_forcing(n_days=1, time_step_s=3600.0, n_sites=2)
    params = default_params(["GRA", "ENF"])
    kh = jnp.full((f.n_steps, 2), 0.3)
    rs = jnp.full((f.n_steps, 2), 250.0)
    _, out = rollout(LaDModel(), params, f, dynamic={"Kh": kh, "rs": rs})
    np.testing.assert_allclose(np.asarray(out["Kh"]), 0.3, rtol=1e-12)
    # the reported r_s is (r_a + r_s) / beta - r_a: the prescribed 250 s m-1 where unstressed
    rs_out = np.asarray(out["rs"])[np.asarray(out["SWE"]) == 0]
    assert rs_out.size > 0 and rs_out.min() >= 250.0 - 1e-9 and np.median(rs_out) < 260.0
    _, base = rollout(LaDModel(), params, f)
    assert np.abs(np.asarray(out["Qle"] - base["Qle"])).max() > 1.0


@pytest.mark.slow
def test_gradient_through_the_coupled_grid_matches_finite_differences():
    gf, params = _grid_case(ny=2, nx=3, days=4 / 24)
    model = RegionalModel(AirLayer((2, 3), boundary="open"), max_refinements=0).for_forcing(gf)
    kh0 = jnp.full((gf.n_steps, 6), 0.2)

    def loss(scale):
        _, out = rollout(model, params, gf, dynamic={"Kh": kh0 * scale})
        return jnp.mean(out["Qh"] ** 2) / 1e4 + jnp.mean(out["Tair_layer"])

    g = jax.jit(jax.grad(loss))(1.0)
    eps = 1e-5
    value = jax.jit(loss)
    fd = (value(1.0 + eps) - value(1.0 - eps)) / (2 * eps)
    assert float(g) == pytest.approx(float(fd), rel=1e-4)
