"""Time integration: ``rollout``, ``rollout_reduce``, ``simulate`` and ``spin_up``.

``rollout`` runs ``lax.scan`` over chunks of ``chunk`` steps; each chunk is itself a ``lax.scan``
wrapped in ``jax.checkpoint``. Reverse mode then stores one state per chunk plus the residuals of
one chunk at a time: memory ~ (T / chunk + chunk) steps instead of T (choose chunk ~ sqrt(T)).
The chunks run on a reshaped view of the forcing (no copy): ``chunk_length`` picks a divisor of T
near the requested ``chunk``; only when T has none do the last T % chunk steps run as one shorter
chunk (a second compiled copy of the step, and a copy of the outputs to join them).

The stacked (T, N) outputs of ``rollout`` and their cotangents are still O(T) memory under
differentiation. ``rollout_reduce`` sums a per-step function of the outputs (a loss) in the scan
carry instead, so the gradient of a loss over a long record needs memory ~ T / chunk + chunk.

``simulate`` is the compiled forward-only path; from ``LARGE_BATCH_CELLS`` cells up it runs one
plain scan (no checkpointing) compiled with XLA's CPU fusion emitters (which ``hybridlsm`` switches
off process-wide for fast compilation).

Works for any ``AbstractLandModel`` (``physics/interface.py``; architecture §2).

Dropout inside the step (a network closure, a parameter network): given ``key``, the rollout splits
it into one key per step, carried through the scan beside the forcing, and calls
``model.step(state, forcing_t, params, key=key_t)`` (fresh masks every step); without a key every
step gets ``key=None``: the deterministic network, exactly as before.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .forcing import Forcing
from .smooth import run_time_code

DEFAULT_CHUNK = 96  # two days of half-hourly steps; sqrt(17520) ~ 132
#: ``chunk`` for a rollout differentiated through its stacked outputs (a training loss): every
#: step's carry is stored and each (checkpointed) step recomputed once in reverse mode. The (T, N)
#: outputs and their cotangents are O(T) anyway, so storing O(T) carries does not change the order
#: of the memory, and it saves the recomputation of every chunk (one forward pass): the gradient is
#: 10-30 % faster than with DEFAULT_CHUNK (docs/performance.md). A forward-only run keeps
#: DEFAULT_CHUNK (faster for a few cells) and ``rollout_reduce`` its chunks (memory ~ sqrt(T)).
GRADIENT_CHUNK = 1

#: XLA compiler options for run-time-optimised executables (``jax.jit(f, compiler_options=...)``):
#: XLA's CPU fusion emitters, off process-wide (``hybridlsm/__init__.py``) because they compile the
#: rollout 1.3-4x more slowly, make large batches 40-50 % faster (docs/performance.md).
RUN_TIME_OPTIONS = {"xla_cpu_use_fusion_emitters": True}

#: batches of this many cells (columns of a grid, windows of a training batch) and more compile
#: their training step and runs with ``RUN_TIME_OPTIONS`` (``run_time_jit``): a faster step for a
#: slower compilation, which pays only for large batches (a 12 x 12 test grid, or a batch of 16
#: windows, compiles more slowly than it gains)
RUN_TIME_CELLS = 256


def _merge(params: dict, dynamic_t: dict | None) -> dict:
    if not dynamic_t:
        return params
    return {**params, **dynamic_t}


def _check_dynamic(dynamic: dict | None, n_steps: int) -> None:
    for name, value in (dynamic or {}).items():
        shape = jnp.shape(value)
        if len(shape) < 1 or shape[0] != n_steps:
            raise ValueError(
                f"dynamic parameter {name!r} has shape {shape}; expected (T, N) with T = {n_steps}"
            )


def chunk_length(n_steps: int, chunk: int | None) -> int:
    """Steps per checkpointed chunk that ``rollout`` uses for ``n_steps`` steps.

    The divisor of ``n_steps`` closest to ``chunk`` (by ratio; the larger on a tie) between
    chunk / 2 and 2 chunk, so that the steps split into whole chunks; ``chunk`` itself when there
    is no such divisor (the remaining n_steps % chunk steps then form one shorter chunk);
    ``n_steps`` (one chunk) when ``chunk`` is None or >= n_steps. E.g. 17520 steps (a year,
    half-hourly) and chunk 96 give 80.
    """
    if chunk is None or chunk >= n_steps:
        return n_steps
    chunk = max(1, int(chunk))
    divisors = [d for d in range(-(-chunk // 2), 2 * chunk + 1) if n_steps % d == 0]
    if not divisors:
        return chunk
    return min(divisors, key=lambda d: (abs(math.log(d / chunk)), -d))


def _chunked_scan(body, carry, xs, n_steps: int, chunk: int | None, checkpoint_each_step: bool):
    """``lax.scan(body, carry, xs)`` over ``n_steps`` steps as checkpointed chunks (see module
    docstring); ``chunk`` None: one plain scan, no rematerialisation. Returns (carry, ys)."""
    if chunk is None:
        return jax.lax.scan(body, carry, xs, length=n_steps)
    chunk = chunk_length(n_steps, chunk)
    if checkpoint_each_step:  # the land model's choice (AbstractLandModel.checkpoint_each_step)
        # reverse mode then stores only the carry of every step of the chunk being differentiated
        # and recomputes the step inside the backward loop
        body = jax.checkpoint(body, prevent_cse=False,
                              policy=jax.checkpoint_policies.nothing_saveable)

    def checkpointed(length):
        # prevent_cse=False: inside a scan the loop already keeps XLA from merging the
        # recomputation with the forward pass (jax.checkpoint docs)
        return jax.checkpoint(lambda c, x: jax.lax.scan(body, c, x, length=length),
                              prevent_cse=False)

    tree_map = jax.tree_util.tree_map
    n_main = n_steps - n_steps % chunk
    main = tree_map(lambda a: a[:n_main].reshape((n_main // chunk, chunk) + a.shape[1:]), xs)
    carry, ys = jax.lax.scan(checkpointed(chunk), carry, main)
    ys = tree_map(lambda a: a.reshape((n_main,) + a.shape[2:]), ys)
    if n_main < n_steps:  # no divisor of n_steps near chunk: the remainder as one shorter chunk
        carry, tail = checkpointed(n_steps - n_main)(carry, tree_map(lambda a: a[n_main:], xs))
        ys = tree_map(lambda a, b: jnp.concatenate([a, b]), ys, tail)
    return carry, ys


def _prepare(model, params, forcing, state0, dynamic, key):
    _check_dynamic(dynamic, forcing.n_steps)
    if state0 is None:
        state0 = model.init_state(params, forcing)
    keys = None if key is None else jax.random.split(key, forcing.n_steps)  # one key per step
    return state0, dict(dynamic or {}), keys


def _observe_step(model, params, state, forcing_t, dynamic_t, key_t):
    new_state, fluxes = model.step(state, forcing_t, _merge(params, dynamic_t), key=key_t)
    return new_state, model.observe(new_state, fluxes)


def rollout(model, params: dict, forcing: Forcing, state0=None, dynamic: dict | None = None,
            chunk: int | None = DEFAULT_CHUNK, *, key=None):
    """Integrate ``model`` over a (T, N) forcing.

    Args:
        model: land model (``LaDModel`` or a hybrid) with init_state / step / observe
        params: dict of (N,) arrays
        forcing: (T, N) ``Forcing``
        state0: initial state; default ``model.init_state(params, forcing)``
        dynamic: optional dict of (T, N) arrays overriding ``params`` entries step by step
        chunk: steps per checkpointed chunk (static; adjusted by ``chunk_length``); None: one
            plain scan without checkpointing, the fastest forward, but reverse mode then stores
            the residuals of every step (~700 bytes per cell-step)
        key: optional PRNG key for the networks' dropout, split into one key per step (module
            docstring); None: deterministic

    Returns:
        (final_state, outputs): outputs is ``model.observe``'s dict with a leading time axis,
        (T, N) (SoilTemp (T, N, 5)).
    """
    state0, dynamic, keys = _prepare(model, params, forcing, state0, dynamic, key)

    def one_step(state, xs):
        return _observe_step(model, params, state, *xs)

    return _chunked_scan(one_step, state0, (forcing, dynamic, keys), forcing.n_steps, chunk,
                         model.checkpoint_each_step)


def rollout_reduce(model, params: dict, forcing: Forcing, fn: Callable, extra=None, *,
                   state0=None, dynamic: dict | None = None, chunk: int | None = DEFAULT_CHUNK, key=None):
    """Integrate ``model`` and sum ``fn(outputs_t, extra_t)`` over the steps, without storing the
    (T, N) outputs: the streaming form of a loss over a whole record.

    ``rollout_reduce(model, params, forcing, fn, extra)[1]`` equals
    ``jax.tree.map(lambda y: y.sum(0), jax.vmap(fn)(outputs, extra))`` with ``outputs`` from
    ``rollout`` (to rounding: the sum is accumulated step by step in ``fn``'s dtype). The
    accumulator is carried through the scan, so reverse mode stores one state and one accumulator
    per chunk and one chunk's residuals: memory ~ T / chunk + chunk steps instead of the O(T)
    outputs and cotangents of ``rollout`` (docs/performance.md).

    Args:
        model, params, forcing, state0, dynamic, chunk, key: as for ``rollout``
        fn: ``fn(outputs_t, extra_t)`` -> pytree of arrays, where ``outputs_t`` is
            ``model.observe``'s dict for one step ((N,) arrays; SoilTemp (N, 5)) and ``extra_t``
            the step-t slice of ``extra``
        extra: optional pytree of arrays with leading axis T (targets, masks, weights), passed to
            ``fn`` step by step (None: ``fn`` gets None)

    Returns:
        (final_state, total): total has the structure of ``fn``'s result.

    Example, the MSE of Qle against a (T, N) target with a (T, N) 0/1 mask::

        def fn(out, x):
            return jnp.sum(x["mask"] * (out["Qle"] - x["le"]) ** 2), jnp.sum(x["mask"])

        _, (sq, count) = rollout_reduce(model, params, forcing, fn, {"le": le, "mask": mask})
        loss = sq / count
    """
    state0, dynamic, keys = _prepare(model, params, forcing, state0, dynamic, key)
    n_steps = forcing.n_steps
    if extra is not None:
        for leaf in jax.tree_util.tree_leaves(extra):
            if jnp.shape(leaf)[:1] != (n_steps,):
                raise ValueError(f"extra has a leaf of shape {jnp.shape(leaf)}; expected leading "
                                 f"axis T = {n_steps}")

    def term(state, xs):
        forcing_t, dynamic_t, key_t, extra_t = xs
        new_state, out = _observe_step(model, params, state, forcing_t, dynamic_t, key_t)
        return new_state, fn(out, extra_t)

    first = jax.tree_util.tree_map(lambda a: a[0], (forcing, dynamic, keys, extra))
    total0 = jax.tree_util.tree_map(
        lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(term, state0, first)[1]
    )

    def one_step(carry, xs):
        state, total = carry
        new_state, value = term(state, xs)
        return (new_state, jax.tree_util.tree_map(jnp.add, total, value)), None

    (state, total), _ = _chunked_scan(
        one_step, (state0, total0), (forcing, dynamic, keys, extra), n_steps, chunk, model.checkpoint_each_step
    )
    return state, total


def run_time_jit(fun: Callable) -> Callable:
    """``eqx.filter_jit(fun)``, called with an extra keyword ``run_time`` (default True): compiled
    with ``RUN_TIME_OPTIONS`` (XLA's CPU fusion emitters) on the CPU and traced inside
    ``run_time_code`` (``smooth.log1p_unit``), or with ``run_time=False``
    with the process-wide options (faster to compile: for small problems). The backend is asked at
    the first call, so that defining it does not start JAX. For functions of many cells (a grid),
    where the emitters pay for their slower compilation."""
    compiled: dict = {}

    @functools.wraps(fun)
    def call(*args, run_time: bool = True, **kwargs):
        fast = bool(run_time) and jax.default_backend() == "cpu"
        if fast not in compiled:
            # run_time_code as a decorator: a function object of its own for each mode, so that
            # JAX's trace caches (keyed by the function) never hand one mode the other's trace
            traced = run_time_code(fast)(fun)
            compiled[fast] = eqx.filter_jit(traced, compiler_options=RUN_TIME_OPTIONS if fast else None)
        return compiled[fast](*args, **kwargs)

    return call


#: ``simulate`` compiles for throughput from this many cells up (measured: the fusion emitters
#: and the plain scan gain from ~16 cells, and lose at one cell; docs/performance.md)
LARGE_BATCH_CELLS = 16


def _simulate_body(model, params, forcing, state0, dynamic, outputs, key, chunk):
    state, out = rollout(model, params, forcing, state0, dynamic, chunk=chunk, key=key)
    return state, out if outputs is None else {k: out[k] for k in outputs}


#: ``simulate``'s executables: large batches with the fusion emitters (``run_time=True``), small
#: ones with the process-wide options
_simulate_run = run_time_jit(_simulate_body)


def simulate(model, params: dict, forcing: Forcing, state0=None, dynamic: dict | None = None,
             outputs: Sequence[str] | None = None, *, large: bool | None = None, key=None):
    """Compiled forward run (no differentiation), tuned for many cells.

    Same results as ``rollout`` (to float rounding). With ``large`` (default: the forcing has at
    least ``LARGE_BATCH_CELLS`` cells) it differs from ``jax.jit(rollout)`` in two ways:

    - one plain scan, no chunked checkpointing (``chunk=None``): a forward-only run does not need
      it, and the nested chunk loop cost ~20 % at 1024 cells with every output; do not
      differentiate ``simulate`` (reverse mode would store every step's residuals);
    - compiled with ``RUN_TIME_OPTIONS`` (XLA's CPU fusion emitters) on the CPU and traced for
      run time (``run_time_code``): with the plain scan 1.9x (every output) to 2.7x (Qle and Qh)
      the throughput of ``jax.jit(rollout)`` at 1024 cells (docs/performance.md), for a
      compilation 1.3-4x slower.

    For fewer cells both lose (a long plain scan was 4x slower at one cell), so it is
    ``jax.jit(rollout)`` with the default chunk and the process-wide options.

    Args:
        outputs: names of the outputs to return (default all); XLA then skips writing the others
        large: compile for throughput (see above); None: ``forcing.n_sites >= LARGE_BATCH_CELLS``
        key: PRNG key for the networks' dropout, as for ``rollout`` (one MC-dropout sample)

    Returns:
        (final_state, outputs dict), as ``rollout``.
    """
    if large is None:
        large = forcing.n_sites >= LARGE_BATCH_CELLS
    outputs = None if outputs is None else tuple(outputs)
    chunk = None if large else DEFAULT_CHUNK
    return _simulate_run(model, params, forcing, state0, dynamic, outputs, key, chunk, run_time=bool(large))


@eqx.filter_jit
def _final_state(model, params, forcing, state0, dynamic, chunk):
    state, _ = rollout(model, params, forcing, state0, dynamic, chunk)
    return state


def spin_up(model, params: dict, forcing: Forcing, state0=None, dynamic: dict | None = None, *,
            period: int | None = None, max_cycles: int = 10, tol_temp: float = 0.01,
            tol_water: float = 0.1, chunk: int = DEFAULT_CHUNK):
    """Repeat the first ``period`` steps of the forcing until the state at the end of a cycle
    stops changing.

    Convergence: between successive cycle ends, ``model.state_change`` (for LaD: max |Delta T|
    over all layers and sites, and max |Delta W|, |Delta W_g|, |Delta S|) is below ``tol_temp`` [K]
    and ``tol_water`` [kg m-2].

    Args:
        period: steps per cycle; default the whole forcing (pass 365 * 48 for one year of
            half-hourly forcing)
        max_cycles: at most this many cycles

    Returns:
        (state, info) with info = {"cycles", "converged", "max_temp_change", "max_water_change"}.
    """
    n = forcing.n_steps if period is None else int(min(period, forcing.n_steps))
    cycle_forcing = forcing.at(slice(0, n))
    cycle_dynamic = None
    if dynamic:
        _check_dynamic(dynamic, forcing.n_steps)
        cycle_dynamic = {k: v[:n] for k, v in dynamic.items()}
    state = model.init_state(params, cycle_forcing) if state0 is None else state0
    info = {"cycles": 0, "converged": False, "max_temp_change": np.inf, "max_water_change": np.inf}
    for cycle in range(1, max_cycles + 1):
        new = _final_state(model, params, cycle_forcing, state, cycle_dynamic, chunk)
        d_temp, d_water = model.state_change(state, new)
        state = new
        info.update(cycles=cycle, max_temp_change=d_temp, max_water_change=d_water)
        if d_temp < tol_temp and d_water < tol_water:
            info["converged"] = True
            break
    return state, info
