"""Implicit soil heat diffusion against the analytic periodic solution of 1-D diffusion.

The top node is tied to a prescribed T_s(t) = T_m + A sin(w t) by a very stiff coupling
(1e7 W m-2 K-1, implicit). For a semi-infinite medium the temperature at depth z below the forced
node has amplitude A exp(-z/D) and lags by z/D / w, with D = sqrt(2 kappa / w).
Tolerances come from the discretisation: backward Euler at 30 min (w dt = 0.13) and the LaD
layers (0.045 m and 0.10 m thick at D = 0.105 m) give errors of ~3 % in amplitude and ~0.35 h in
phase down to 0.10 m; we assert 10 % and 1 h. A fine grid (2.5 mm, 5 min) converges to 1.5 % and
10 min.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybridlsm.physics import LAYER_THICKNESS, implicit_heat_step, layer_centres, soil_heat_storage
from hybridlsm.physics.soil import (
    UNROLL_MAX_ROWS,
    interface_conductance,
    layer_heat_capacity,
    solve_tridiagonal,
)

C_VOL, LAMBDA = 2.0e6, 0.8  # LaD medium soil: kappa = 4e-7 m2 s-1
OMEGA = 2 * np.pi / 86400.0
DAMPING_DEPTH = np.sqrt(2 * LAMBDA / C_VOL / OMEGA)  # 0.1049 m
AMP, T_MEAN, G_STIFF = 10.0, 290.0, 1e7


@eqx.filter_jit
def _periodic_run(dz, dt, n_steps):
    cap = layer_heat_capacity(jnp.array([C_VOL]), dz)
    cond = interface_conductance(jnp.array([LAMBDA]), dz)

    def body(temp, i):
        t = (i + 1) * dt
        t_prescribed = T_MEAN + AMP * jnp.sin(OMEGA * t)
        new = implicit_heat_step(temp, cap, cond, dt, G_STIFF * (t_prescribed - temp[:, 0]),
                                 -G_STIFF * jnp.ones(1))
        return new, new[0]

    temp0 = jnp.full((1, len(dz)), T_MEAN)
    return jax.lax.scan(body, temp0, jnp.arange(n_steps))[1]


def _amplitude_and_lag(dz, dt, days=8):
    n_steps = int(days * 86400 / dt)
    series = np.asarray(_periodic_run(tuple(dz), float(dt), n_steps))
    t = (np.arange(n_steps) + 1) * dt
    last = t > (days - 2) * 86400  # after spin-up: the last two days
    design = np.stack([np.ones(last.sum()), np.sin(OMEGA * t[last]), np.cos(OMEGA * t[last])], 1)
    coef = np.linalg.lstsq(design, series[last], rcond=None)[0]
    amplitude = np.hypot(coef[1], coef[2]) / AMP
    lag_h = -np.arctan2(coef[2], coef[1]) / OMEGA / 3600.0
    depth = np.asarray(layer_centres(dz)) - np.asarray(layer_centres(dz))[0]
    return depth, amplitude, lag_h


def _analytic(depth):
    return np.exp(-depth / DAMPING_DEPTH), depth / DAMPING_DEPTH / OMEGA / 3600.0


def test_lad_layers_match_analytic_wave():
    depth, amp, lag = _amplitude_and_lag(LAYER_THICKNESS, 1800.0)
    amp_a, lag_a = _analytic(depth)
    assert amp[0] == pytest.approx(1.0, abs=1e-5)  # the stiff coupling prescribes T_1
    for k in (1, 2):  # layer centres at 0.0275 m and 0.10 m
        assert amp[k] == pytest.approx(amp_a[k], rel=0.10)
        assert abs(lag[k] - lag_a[k]) < 1.0


def test_fine_grid_converges_to_analytic_wave():
    dz = (0.0025,) * 400  # 1 m column
    depth, amp, lag = _amplitude_and_lag(dz, 300.0)
    amp_a, lag_a = _analytic(depth)
    for z in (0.05, 0.10, 0.20):
        k = int(np.argmin(np.abs(depth - z)))
        assert amp[k] == pytest.approx(amp_a[k], rel=0.015), z
        assert abs(lag[k] - lag_a[k]) < 10.0 / 60.0, z


def test_zero_flux_bottom_conserves_heat():
    """With no surface flux the column only redistributes heat: S_R is constant to rounding."""
    cap = layer_heat_capacity(jnp.array([C_VOL, 2.6e6]), LAYER_THICKNESS)
    cond = interface_conductance(jnp.array([LAMBDA, 1.35]), LAYER_THICKNESS)
    temp = jnp.array([[300.0, 290.0, 285.0, 280.0, 275.0], [260.0, 270.0, 275.0, 280.0, 281.0]])
    storage0 = soil_heat_storage(temp, cap)
    spread0 = np.ptp(np.asarray(temp), axis=1)
    temp = jax.jit(lambda t: jax.lax.fori_loop(
        0, 50, lambda _, x: implicit_heat_step(x, cap, cond, 3600.0, jnp.zeros(2), jnp.zeros(2)), t
    ))(temp)
    np.testing.assert_allclose(soil_heat_storage(temp, cap), storage0, rtol=0, atol=1e-4)  # J m-2
    assert np.all(np.ptp(np.asarray(temp), axis=1) < 0.5 * spread0)  # relaxes towards uniform


@pytest.mark.parametrize("n", [1, 4, UNROLL_MAX_ROWS + 1])
def test_thomas_solve_matches_lapack_on_diagonally_dominant_systems(n):
    """The unrolled Thomas solve (and, above UNROLL_MAX_ROWS, its LAPACK fallback) against
    ``jax.lax.linalg.tridiagonal_solve``, values and gradients."""
    rng = np.random.default_rng(n)
    lower = -rng.uniform(0.0, 2.0, (50, n))
    upper = -rng.uniform(0.0, 2.0, (50, n))
    lower[:, 0] = upper[:, -1] = 0.0
    diag = rng.uniform(0.01, 1.0, (50, n)) + np.abs(lower) + np.abs(upper)
    rhs = rng.normal(size=(50, n, 2))
    expected = jax.lax.linalg.tridiagonal_solve(lower, diag, upper, rhs)
    np.testing.assert_allclose(solve_tridiagonal(lower, diag, upper, rhs), expected, rtol=1e-12)

    def grads(solve):
        return jax.grad(lambda d, b: jnp.sum(jnp.sin(solve(lower, d, upper, b))), (0, 1))(diag, rhs)

    for a, b in zip(grads(solve_tridiagonal), grads(jax.lax.linalg.tridiagonal_solve)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
