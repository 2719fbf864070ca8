"""Time integration: ``rollout`` (scan over checkpointed chunks) and ``spin_up``.

``rollout`` runs ``lax.scan`` over chunks of ``chunk`` steps; each chunk is itself a ``lax.scan``
wrapped in ``jax.checkpoint``. Reverse mode then stores one state per chunk plus the residuals of
one chunk at a time: memory ~ (T / chunk + chunk) steps instead of T (choose chunk ~ sqrt(T)).
When T is not a multiple of ``chunk`` the forcing is padded with copies of its last step whose
state updates are masked out (one compiled chunk body instead of two).

Works for any land model with ``init_state / step / observe`` (architecture §2).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .forcing import Forcing

DEFAULT_CHUNK = 96  # two days of half-hourly steps; sqrt(17520) ~ 132


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


def rollout(model, params: dict, forcing: Forcing, state0=None, dynamic: dict | None = None,
            chunk: int = DEFAULT_CHUNK):
    """Integrate ``model`` over a (T, N) forcing.

    Args:
        model: land model (``LaDModel`` or a hybrid) with init_state / step / observe
        params: dict of (N,) arrays
        forcing: (T, N) ``Forcing``
        state0: initial state; default ``model.init_state(params, forcing)``
        dynamic: optional dict of (T, N) arrays overriding ``params`` entries step by step
        chunk: steps per checkpointed chunk (static)

    Returns:
        (final_state, outputs): outputs is ``model.observe``'s dict with a leading time axis,
        (T, N) (SoilTemp (T, N, 5)).
    """
    n_steps = forcing.n_steps
    chunk = int(max(1, min(chunk, n_steps)))
    _check_dynamic(dynamic, n_steps)
    if state0 is None:
        state0 = model.init_state(params, forcing)
    dynamic = dict(dynamic or {})
    n_chunks = -(-n_steps // chunk)
    padded = n_chunks * chunk
    pad = padded - n_steps

    def one_step(state, xs):
        forcing_t, dynamic_t, valid = xs
        new_state, fluxes = model.step(state, forcing_t, _merge(params, dynamic_t))
        if pad:  # padded steps (repeats of the last forcing step) leave the state unchanged
            new_state = jax.tree_util.tree_map(
                lambda new, old: jnp.where(valid, new, old), new_state, state
            )
        return new_state, model.observe(new_state, fluxes)

    @jax.checkpoint
    def run_chunk(state, xs_chunk):
        return jax.lax.scan(one_step, state, xs_chunk)

    # One chunk body for every chunk: the forcing is padded to a whole number of chunks by
    # repeating its last step (finite values, so no NaN reaches the discarded branch), instead
    # of a separate remainder scan that would double the compiled code.
    valid = jnp.arange(padded) < n_steps
    xs = jax.tree_util.tree_map(
        lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]) if pad else a,
        (forcing, dynamic),
    )
    xs = jax.tree_util.tree_map(
        lambda a: a.reshape((n_chunks, chunk) + a.shape[1:]), (*xs, valid)
    )
    state, outputs = jax.lax.scan(run_chunk, state0, xs)
    outputs = jax.tree_util.tree_map(
        lambda a: a.reshape((padded,) + a.shape[2:])[:n_steps], outputs
    )
    return state, outputs


@eqx.filter_jit
def _final_state(model, params, forcing, state0, dynamic, chunk):
    state, _ = rollout(model, params, forcing, state0, dynamic, chunk)
    return state


def spin_up(model, params: dict, forcing: Forcing, state0=None, dynamic: dict | None = None, *,
            period: int | None = None, max_cycles: int = 10, tol_temp: float = 0.01,
            tol_water: float = 0.1, chunk: int = DEFAULT_CHUNK):
    """Repeat the first ``period`` steps of the forcing until the state at the end of a cycle
    stops changing.

    Convergence: max |Delta T| over all layers and sites < ``tol_temp`` [K] and max |Delta W|,
    |Delta W_g|, |Delta S| < ``tol_water`` [kg m-2] between successive cycle ends (checked for a
    state with those fields; other states check their array leaves against ``tol_temp``).

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
        d_temp, d_water = _state_change(state, new)
        state = new
        info.update(cycles=cycle, max_temp_change=d_temp, max_water_change=d_water)
        if d_temp < tol_temp and d_water < tol_water:
            info["converged"] = True
            break
    return state, info


def _state_change(old, new) -> tuple[float, float]:
    water_fields = ("soil_water", "snow", "groundwater")
    if hasattr(old, "soil_temp"):
        d_temp = float(jnp.max(jnp.abs(new.soil_temp - old.soil_temp)))
        d_water = max(
            float(jnp.max(jnp.abs(getattr(new, f) - getattr(old, f))))
            for f in water_fields
            if hasattr(old, f)
        )
        return d_temp, d_water
    leaves_old = jax.tree_util.tree_leaves(eqx.filter(old, eqx.is_array))
    leaves_new = jax.tree_util.tree_leaves(eqx.filter(new, eqx.is_array))
    d = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(leaves_old, leaves_new))
    return d, 0.0
