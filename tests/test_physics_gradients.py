"""Reverse-mode gradients through the LaD rollout against central finite differences (float64).

Three sites exercise every calibratable parameter: a wet site in spring with a 50 mm storm
(drainage to groundwater), a dry summer site (water stress active) and a snow-covered site during
a thaw (melt, snow albedo). Each site runs one year of half-hourly forcing from its start day.

One compiled ``jax.grad`` of a step-weighted loss serves both checks (compiling a gradient of the
rollout is the expensive part):
- weights on the first 96 steps (2 days): the directional derivative along theta (relative
  perturbation of all three sites) is compared with a central difference; the perturbed copies
  run as extra sites of one batched 96-step forward rollout;
- weights on every step: the gradient through the full year is finite.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybridlsm.physics import CALIBRATABLE, LaDModel, LaDState, default_params, rollout, synthetic_forcing

from conftest import FAST_COMPILE

REL_STEP = 1e-5
N_WINDOW = 96  # 2 days of half-hourly steps
MODEL = LaDModel()
START_DAYS = (89.5, 180.0, 50.0)


def _stack(forcings):
    return jax.tree_util.tree_map(lambda *a: jnp.concatenate(a, axis=1), *forcings)


def _per_step_loss(out):
    """(T, N) loss contributions; a site's loss is their weighted time mean."""
    return (
        (out["Qle"] - 50.0) ** 2 / 1e3
        + (out["Qh"] - 20.0) ** 2 / 1e3
        + 0.1 * jnp.mean(out["SoilTemp"], -1)
        + 1e5 * out["Qsb"]
        + 0.1 * out["SWE"]
        + 0.01 * out["SoilMoist"]
    )


def _weighted_loss(free, params, forcing, state0, weights):
    _, out = rollout(MODEL, {**params, **free}, forcing, state0)
    per_step = _per_step_loss(out)
    return jnp.sum(weights[:, None] * per_step) / jnp.sum(weights)


@jax.jit(compiler_options=FAST_COMPILE)
def _window_losses(params, forcing, state0):
    _, out = rollout(MODEL, params, forcing, state0, chunk=24)
    return jnp.mean(_per_step_loss(out), 0), out


@pytest.fixture(scope="module")
def case():
    forcing = _stack([synthetic_forcing(365, start_day=d) for d in START_DAYS])
    params = default_params(["ENF", "GRA", "DBF"])
    t0 = jnp.mean(forcing.t_air[:N_WINDOW], 0)
    state0 = LaDState(
        soil_temp=t0[:, None] + jnp.array([0.0, 0.5, 1.0, 1.5, 2.0]),
        soil_water=params["root_zone_capacity"] * jnp.array([0.97, 0.3, 0.8]),
        snow=jnp.array([0.0, 0.0, 20.0]),
        groundwater=jnp.array([5.0, 10.0, 20.0]),
    )
    grad_fn = jax.jit(jax.grad(_weighted_loss), compiler_options=FAST_COMPILE)
    return params, forcing, state0, grad_fn


@pytest.fixture(scope="module")
def window(case):
    params, forcing, state0, grad_fn = case
    free = {k: params[k] for k in CALIBRATABLE}
    weights = (jnp.arange(forcing.n_steps) < N_WINDOW).astype(jnp.float64)
    grad = grad_fn(free, params, forcing, state0, weights)
    # finite differences: copies of the three sites with one parameter perturbed by +-REL_STEP
    copies = [params]
    for name in CALIBRATABLE:
        for sign in (1.0, -1.0):
            copies.append({**params, name: params[name] * (1.0 + sign * REL_STEP)})
    n_copies = len(copies)
    batched = {k: jnp.concatenate([c[k] for c in copies]) for k in params}
    forcing_b = _stack([forcing.at(slice(0, N_WINDOW))] * n_copies)
    state_b = jax.tree_util.tree_map(lambda a: jnp.concatenate([a] * n_copies, 0), state0)
    losses, out = _window_losses(batched, forcing_b, state_b)
    losses = np.asarray(losses).reshape(n_copies, 3).sum(1)
    base = jax.tree_util.tree_map(lambda a: np.asarray(a[:, :3]), out)
    return grad, losses, base


@pytest.mark.parametrize("name", CALIBRATABLE)
def test_gradient_matches_central_difference(case, window, name):
    params = case[0]
    grad, losses, _ = window
    i = CALIBRATABLE.index(name)
    fd = (losses[1 + 2 * i] - losses[2 + 2 * i]) / (2.0 * REL_STEP)
    ad = float(jnp.sum(grad[name] * params[name]))  # directional derivative along theta
    assert abs(fd) > 1e-3, f"{name} has no influence on the loss in this test"
    assert abs(ad - fd) <= 1e-3 * abs(fd)


def test_the_window_exercises_drainage_water_stress_and_melt(case, window):
    params, _, state0, _ = case
    out = window[2]
    dt = 1800.0
    gws_gain = out["GWS"][-1] - np.asarray(state0.groundwater) + out["Qsb"].sum(0) * dt
    assert gws_gain[0] > 1.0  # the wet site drained into groundwater
    assert out["SoilMoist"][:, 1].max() < 0.75 * float(params["root_zone_capacity"][1])  # stressed
    assert out["Qsm"][:, 2].sum() * dt > 1.0  # snow melted at the thaw site


def test_gradient_through_a_full_year_is_finite(case):
    params, forcing, state0, grad_fn = case
    free = {k: params[k] for k in CALIBRATABLE}
    grad = grad_fn(free, params, forcing, state0, jnp.ones(forcing.n_steps))
    for name, g in grad.items():
        assert np.all(np.isfinite(np.asarray(g))), name
    assert np.all(np.abs(np.asarray(grad["rs_min"])) > 0.0)
    assert np.all(np.abs(np.asarray(grad["tau_groundwater"])) > 0.0)
