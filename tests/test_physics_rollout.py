"""Time integration: chunk layout, the streaming ``rollout_reduce`` and the large-grid ``simulate``.

Float64 (conftest). The chunking only regroups the same steps, so every chunk layout gives
bit-identical results; the reduction is a different summation order, so it agrees to rounding.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybridlsm.physics import (
    AbstractLandModel,
    LaDModel,
    chunk_length,
    default_params,
    rollout,
    rollout_reduce,
    run_time_jit,
    simulate,
    synthetic_forcing,
)

from conftest import FAST_COMPILE, SHIPPED_OPTIMISATION

N_STEPS = 193  # prime: no divisor near any chunk, so chunk 7 runs 27 chunks and a 4-step remainder


@pytest.fixture(scope="module")
def case():
    forcing = synthetic_forcing(5, n_sites=2, start_day=150.0).at(slice(0, N_STEPS))
    params = default_params(["GRA", "ENF"])
    targets = {"le": jnp.full((N_STEPS, 2), 40.0), "h": jnp.full((N_STEPS, 2), 15.0),
               "mask": (jnp.arange(N_STEPS)[:, None] % 5 != 0) * jnp.ones((1, 2))}
    return LaDModel(), params, forcing, targets


def test_chunk_length_prefers_a_divisor_near_the_request():
    assert chunk_length(17520, 96) == 80  # a year of half-hourly steps: 219 chunks of 80
    assert chunk_length(192, 7) == 8
    assert chunk_length(N_STEPS, 7) == 7  # prime: remainder chunk
    assert chunk_length(50, 96) == 50 and chunk_length(50, None) == 50
    assert chunk_length(17520, 120) == 120


def test_chunk_layouts_are_bit_identical(case):
    model, params, forcing, _ = case
    # bitwise as `hybridlsm` compiles them (the suite's lower optimisation differs by rounding: conftest)
    run = jax.jit(rollout, static_argnames=("chunk",), compiler_options={**(FAST_COMPILE or {}), **SHIPPED_OPTIMISATION})
    chunked = run(model, params, forcing, chunk=7)  # 27 chunks + a remainder of 4 steps
    plain = run(model, params, forcing, chunk=None)  # one scan, no checkpointing
    for a, b in zip(jax.tree_util.tree_leaves(chunked), jax.tree_util.tree_leaves(plain)):
        assert a.shape == b.shape and np.array_equal(np.asarray(a), np.asarray(b))


def _per_step(out, x):
    """A masked squared error per step and site, and the mask count."""
    err = ((out["Qle"] - x["le"]) ** 2 + 0.5 * (out["Qh"] - x["h"]) ** 2
           + jnp.mean(out["SoilTemp"], -1))
    return jnp.sum(x["mask"] * err), jnp.sum(x["mask"])


@pytest.mark.slow  # two year-long gradients (~10 s)
def test_rollout_reduce_equals_the_stacked_loss_and_gradient(case):
    model, params, forcing, targets = case
    free = {k: params[k] for k in ("rs_scale", "albedo", "soil_thermal_conductivity")}
    dynamic = {"ra_scale": jnp.ones((N_STEPS, 2)) * jnp.linspace(0.8, 1.2, N_STEPS)[:, None]}

    def stacked(free):  # (chunk None: the cheapest to compile; chunking is bit-identical)
        _, out = rollout(model, {**params, **free}, forcing, dynamic=dynamic, chunk=None)
        sq, n = jax.vmap(_per_step)(out, targets)
        return jnp.sum(sq) / jnp.sum(n)

    def streamed(free):
        _, (sq, n) = rollout_reduce(model, {**params, **free}, forcing, _per_step, targets,
                                    dynamic=dynamic, chunk=7)
        return sq / n

    v1, g1 = jax.jit(jax.value_and_grad(stacked), compiler_options=FAST_COMPILE)(free)
    v2, g2 = jax.jit(jax.value_and_grad(streamed), compiler_options=FAST_COMPILE)(free)
    np.testing.assert_allclose(v2, v1, rtol=1e-12)
    for k in free:
        assert np.all(np.abs(np.asarray(g1[k])) > 0), k
        np.testing.assert_allclose(g2[k], g1[k], rtol=1e-10, err_msg=k)
    with pytest.raises(ValueError, match="leading axis T"):
        rollout_reduce(model, params, forcing, _per_step, {"le": targets["le"][:-1]})


class Relax(AbstractLandModel):
    """A cheap land model (state relaxes towards Tair) for the memory structure of the gradient."""

    checkpoint_each_step = False  # a step of three operations: its residuals are no larger than its carry

    def init_state(self, params, forcing):
        return forcing.t_air[0]

    def step(self, state, forcing, params, key=None):
        new = state + params["k"] * (forcing.t_air - state)
        return new, None

    def observe(self, state, fluxes):
        return {"T": state}


def _grad_temp_bytes(n_steps, streamed):
    forcing = synthetic_forcing(n_steps / 48 + 1, n_sites=64).at(slice(0, n_steps))
    target = forcing.t_air + 1.0

    def loss(k):
        params = {"k": k}
        if streamed:
            return rollout_reduce(Relax(), params, forcing, lambda o, t: jnp.sum((o["T"] - t) ** 2),
                                  target, chunk=48)[1]
        return jnp.sum((rollout(Relax(), params, forcing, chunk=48)[1]["T"] - target) ** 2)

    compiled = jax.jit(jax.grad(loss)).lower(jnp.full(64, 0.1)).compile()
    analysis = compiled.memory_analysis()
    if analysis is None:
        pytest.skip("no memory analysis on this backend")
    return analysis.temp_size_in_bytes


def test_streamed_gradient_memory_is_sublinear_in_steps():
    small, large = (_grad_temp_bytes(n, True) for n in (48 * 48, 4 * 48 * 48))
    assert large < 1.6 * small  # one state per chunk is all that grows (4x the steps)
    stacked_small, stacked_large = (_grad_temp_bytes(n, False) for n in (48 * 48, 4 * 48 * 48))
    assert stacked_large > 3 * stacked_small  # the stacked outputs grow with T


@pytest.mark.slow  # a few seconds; in make test, not test-fast
def test_simulate_matches_rollout_and_selects_outputs(case):
    model, params, forcing, _ = case
    _, ref = jax.jit(rollout, compiler_options=FAST_COMPILE)(model, params, forcing)
    final, out = simulate(model, params, forcing, outputs=("Qle", "SoilTemp"), large=True)
    assert set(out) == {"Qle", "SoilTemp"} and final.soil_temp.shape == (2, 5)
    for name in out:  # fusion emitters: same model, different code generation
        np.testing.assert_allclose(out[name], ref[name], rtol=1e-10, atol=1e-9)
    _, out = simulate(model, params, forcing)  # 2 cells: jax.jit(rollout), no emitters
    for name in ref:
        assert np.array_equal(np.asarray(out[name]), np.asarray(ref[name])), name


@pytest.mark.slow  # two compilations; in make test, not test-fast
def test_run_time_jit_compiles_both_ways_with_the_same_results(case):
    model, params, forcing, _ = case
    _, ref = jax.jit(rollout, compiler_options=FAST_COMPILE)(model, params, forcing)
    run = run_time_jit(lambda m, p, f: rollout(m, p, f))
    _, plain = run(model, params, forcing, run_time=False)  # the process-wide options: the same program
    _, fast = run(model, params, forcing)  # the fusion emitters on the CPU
    for name in ref:
        assert np.array_equal(np.asarray(plain[name]), np.asarray(ref[name])), name
        np.testing.assert_allclose(fast[name], ref[name], rtol=1e-10, atol=1e-9)


def test_run_time_jit_traces_each_mode_once_and_only_its_fast_one_for_run_time():
    """The executable compiled with the fusion emitters is traced inside ``run_time_code`` (the
    forms the emitters run fastest), the other outside it, whichever is called first; each mode is
    a function of its own, so JAX's trace cache never hands one mode the other's trace."""
    from hybridlsm.physics.smooth import _RUN_TIME_CODE

    if jax.default_backend() != "cpu":
        pytest.skip("run_time_jit compiles for run time on the CPU only")
    for order in ((False, True), (True, False)):
        seen = []

        def f(x):
            seen.append(_RUN_TIME_CODE.get())
            return x + 1.0

        run = run_time_jit(f)
        for mode in order + order:
            assert float(run(jnp.asarray(1.0), run_time=mode)) == 2.0
        assert seen == list(order)  # traced once per mode, in its own mode
    assert _RUN_TIME_CODE.get() is False  # nothing leaks out of the traces


def test_cap_derivatives_are_those_of_their_closed_forms():
    """``soft_cap`` and ``limit_positive_slope`` carry written-out derivatives (``_cap_terms``):
    values and both partial derivatives equal those of autodiff through the closed forms
    r / (1 + r^p)^(1/p) and (1 + r^p)^(-1 - 1/p) to rounding, over amount << cap, ~ cap and >> cap
    (1e-30 to 1e30), and are exactly 0 (soft_cap, the slope's derivative) where amount <= 0 or
    cap <= 0, with the slope 1 for amount <= 0 and 0 for cap <= 0 < amount."""
    from hybridlsm.physics.smooth import limit_positive_slope, soft_cap

    def closed_cap(a, c, p=8.0):
        ok = (a > 0) & (c > 0)
        r = jnp.where(ok, a, 1.0) / jnp.where(ok, c, 1.0)
        return jnp.where(ok, jnp.where(ok, c, 1.0) * r / (1.0 + r**p) ** (1.0 / p), 0.0)

    def closed_slope(a, c, p=8.0):
        ok = (a > 0) & (c > 0)
        r = jnp.where(ok, a, 1.0) / jnp.where(ok, c, 1.0)
        return jnp.where(a > 0, jnp.where(c > 0, (1.0 + r**p) ** (-1.0 - 1.0 / p), 0.0), 1.0)

    rng = np.random.default_rng(7)
    cap = rng.uniform(0.1, 5.0, 400)
    a = np.concatenate([cap * 10.0 ** rng.uniform(-3, 3, 400), [1e-30, 1e30, 2.0, -1.0, 0.0, 1.0, 1.0]])
    c = np.concatenate([cap, [1.0, 1.0, 2.0, 1.0, 1.0, 0.0, -1.0]])
    a, c = jnp.asarray(a, jnp.float64), jnp.asarray(c, jnp.float64)
    moderate = jnp.abs(jnp.log(a / jnp.abs(c))) < 10.0  # r^p finite in the closed forms
    for fn, closed in ((soft_cap, closed_cap), (limit_positive_slope, closed_slope)):
        value = jax.jit(fn)(a, c)
        grads = [jax.jit(jax.vmap(jax.grad(fn, i)))(a, c) for i in (0, 1)]
        ref_grads = [jax.vmap(jax.grad(closed, i))(a, c) for i in (0, 1)]
        np.testing.assert_allclose(value[moderate], closed(a, c)[moderate], rtol=1e-13, atol=1e-300)
        in_rule = jax.jvp(fn, (a, c), (jnp.ones_like(a), jnp.ones_like(c)))[0]  # the value the rule returns
        np.testing.assert_allclose(in_rule, value, rtol=1e-12, atol=0)  # exp(-(1 + 1/p) s) against w q
        for g, ref in zip(grads, ref_grads):
            assert bool(jnp.all(jnp.isfinite(g)))
            np.testing.assert_allclose(g[moderate], ref[moderate], rtol=1e-11, atol=1e-14)
            np.testing.assert_array_equal(g[-4:], 0.0)  # amount <= 0 or cap <= 0
    np.testing.assert_allclose(soft_cap(a, c)[-7:-5], [1e-30, 1.0], rtol=1e-14)  # identity / cap in the tails
    np.testing.assert_array_equal(limit_positive_slope(a, c)[-4:], [1.0, 1.0, 0.0, 0.0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softplus_is_accurate_to_rounding_in_both_modes(dtype):
    """``smooth.softplus`` traced for run time (Goldberg's log1p, no ``log1p`` in its jaxpr) and not
    (``jnp.log1p``): within a few ulps of the exact value over the whole range, positive in the far
    tail, both modes within a few ulps of each other, with the same derivative. Each mode traces a
    function of its own (JAX caches traces by function)."""
    from hybridlsm.physics import run_time_code
    from hybridlsm.physics.smooth import log1p_unit, softplus

    x = np.concatenate([np.linspace(-60.0, 60.0, 24001), -np.logspace(-9, 1.7, 2000), np.logspace(-9, 1.7, 2000),
                        [0.0, -700.0 if dtype == np.float64 else -87.0]]).astype(dtype)
    xl = x.astype(np.longdouble)
    exact = np.maximum(xl, 0) + np.log1p(np.exp(-np.abs(xl)))
    ulp = np.finfo(dtype).eps
    values, slopes = {}, {}
    for mode in (False, True):
        with run_time_code(mode):
            primitives = {e.primitive.name for e in jax.make_jaxpr(lambda v: softplus(v))(x[:3]).eqns[0].params["call_jaxpr"].eqns}
            assert ("log1p" in primitives) != mode, (mode, primitives)
            values[mode] = np.asarray(jax.jit(lambda v: softplus(v))(x))
            slopes[mode] = np.asarray(jax.jit(jax.vmap(jax.grad(lambda v: softplus(v))))(x))
        rel = np.abs(values[mode].astype(np.longdouble) - exact) / exact
        assert values[mode].dtype == dtype and float(rel.max()) < 4 * ulp, (mode, float(rel.max()), x[rel.argmax()])
        assert (values[mode] > 0).all()
    np.testing.assert_allclose(values[True], values[False], rtol=4 * ulp, atol=0)
    assert not np.array_equal(values[True], values[False])  # the two forms really ran
    np.testing.assert_array_equal(slopes[True], slopes[False])  # the derivative does not use log1p
    with run_time_code():  # e where 1 + e rounds to 1, and log 2 at e = 1
        e = np.array([0.0, ulp / 4, ulp / 2, 1.0], dtype)
        np.testing.assert_allclose(np.asarray(jax.jit(lambda v: log1p_unit(v))(e)), np.log1p(e.astype(np.float64)),
                                   rtol=2 * ulp)
