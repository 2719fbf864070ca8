"""Closed-loop prediction of the regional model (seed 000 §2.5; issue 15 item 5).

``closed_loop`` runs the gridded physics (``physics.regional.RegionalModel``) step by step
through a parameteriser's K_h and r_s fields, (T, N) each, as one ``lax.scan`` (jit-able, float32
or float64; forward only: the recomputation loop is a ``lax.while_loop``). Each step's end state
is the next step's start: the columns' soil temperatures (the surface temperature among them), the
air layer's temperature and humidity, and the last surface H and E (the coupling's predictor), so
every step's fluxes and surface temperature are the next step's boundary conditions.

After every step the step's **residual** [W m-2] is checked, the largest over the cells of

- the coupling residual the model diagnoses (``coupling_residual``: how far the columns' H + LE
  are from what the mid-step air they should have seen gives), and
- the column energy residual |Rn - H - LE - Q_f - Delta S_R / dt| (S_R the soil heat storage; LaD's
  identity, rounding unless something is broken).

Above ``tolerance`` (10 W m-2, seed §2.5) the step is recomputed from the same start state with
**adjusted fields**, up to ``max_adjustments`` times. Adjustment k of K, in every cell whose
residual has exceeded the tolerance in any attempt of the step (cells within it keep the
parameteriser's fields)::

    log K_h = (1 - k/K) G(log K_h,net) + k/K log K_h,phys

with G a 3x3 Gaussian smoothing over the (ny, nx) grid (weights 1-2-1 in each direction) and
K_h,phys the physics' own exchange coefficient of that step: (z - d) / r_a from the column's
stability scheme (Louis or Businger-Dyer, or its exchange law) at the step's start state and
layer air, what ``fixed_kh`` runs on. The last attempt is the physics' own K_h in the flagged
cells. r_s is smoothed the same way (G(log r_s)) but not pulled: it barely enters the residual.
Then both are clipped to their bounds. A parameteriser that gives K_h as a multiplier of the
physics' own (``exchange=PRESCRIBED_KH_SCALE``) is adjusted the same way in log space, pulled toward
a multiplier of 1.

Why: the residual grows with the coupling conductance rho c_p / r_a = rho c_p K_h / (z - d). A
K_h far above what the stability scheme gives (10 m2 s-1 at 3 m s-1 wind, where the scheme gives
~0.02-1) couples the columns to the layer more stiffly than the step resolves, over the whole
field at once (one such cell alone is relieved by the air blown through it). More sub-steps do not
cure it (``physics.max_refinements``; the residual even grew), while the scheme's K_h gives a
fraction of a W m-2 (tests/test_regional_loop.py checks both). Smoothing alone cannot help a
uniformly stiff field; on rough fields it lets the pull succeed with fewer recomputations. Pulling
in steps changes the parameteriser's field no more than the residual requires. Sub-step
refinement is kept as the model has it inside every attempt (``models.regional.run_fields`` allows
``PREDICT_REFINEMENTS``): for a K_h near or below the scheme's at high wind, it is what cures the
residual, and pulling K_h up toward the scheme's raises it (on the virtual region, 5 steps of 504
above 10 W m-2 without refinement, 16 -> 60 W m-2 after four adjustments; none with one
refinement). Of the attempts, the one with the lowest residual is kept, so an adjustment never
leaves a step worse than the fields as given.

**Epistemic fallback** (``fallback``: a :class:`Fallback`, two (T, N) bool masks, for K_h and r_s,
and optionally the (N,) values to fall back to): where a mask is set, the step's field is replaced
before anything else, as the column hybrids fall back where their dropout passes disagree
(``models.hybrid``). Without values it is the physics' own (K_h as above, or a multiplier of 1;
r_s = rs_min * rs_scale); with them, those values: ``models.regional.class_reference`` gives each
cell its class's geometric mean of the network's own fields over the training steps (a
calibrated physics: the physics' K_h law times a constant per class, one r_s per class).
``models.regional.epistemic_fallback`` makes the masks.

Checks per step, on the parameteriser's fields as given: values outside ``PARAMETER_BOUNDS``
(K_h in [1e-3, 1e2] m2 s-1, r_s in [1e2, 1e4] s m-1) are clipped and counted (a non-finite value
is replaced by the physics' own value and counted); smoothness as the roughness, the mean
|Delta log K_h| between neighbouring cells (x and y faces inside the grid), flagged above
``roughness_limit`` (1: a factor e between neighbours on average). ``LoopReport`` holds the per-step
figures; ``LoopReport.summary()`` the totals as JSON-ready ints and floats.

Cells that are not columns (the air layer's ``active`` mask) are not modelled: their residuals,
clipped values and faces are not counted, and the smoothing's weights cover the active cells only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from ..neural import PARAMETER_BOUNDS
from ..physics.lad import PRESCRIBED_KH, PRESCRIBED_KH_SCALE, PRESCRIBED_RS
from ..physics.regional import GridForcing, RegionalModel, RegionalState
from ..physics.soil import layer_heat_capacity, soil_heat_storage

__all__ = ["closed_loop", "Fallback", "LoopReport", "reference_fields", "roughness", "smooth_field", "LOOP_OUTPUTS",
           "MAX_ADJUSTMENTS", "ROUGHNESS_LIMIT"]

#: recomputations of a step at most (attempt k of K blends k/K of the way to the physics' K_h)
MAX_ADJUSTMENTS = 4
#: mean |Delta log K_h| between neighbouring cells above which a step's field is flagged rough
ROUGHNESS_LIMIT = 1.0
#: what ``closed_loop`` adds to the model's outputs: the fields used (after the fallback, clipping and
#: adjustment: ``exchange_field`` as given, K_h or its multiplier; ``Kh_field`` the K_h it gave),
#: each cell's column energy residual [W m-2] and ``recomputed``, 1 where the cell's fields were
#: adjusted in a recomputation of the step
LOOP_OUTPUTS = ("exchange_field", "Kh_field", "rs_field", "energy_residual", "recomputed")


class Fallback(NamedTuple):
    """Where and to what the closed loop falls back (module docstring): ``kh_mask``, ``rs_mask``
    (T, N) bool, the cell-steps whose K_h (or multiplier) and r_s are replaced; ``kh_value``,
    ``rs_value`` (N,) the values they take there, in the units the loop is given (a multiplier
    when the exchange is ``PRESCRIBED_KH_SCALE``), or None for the physics' own everywhere (a NaN
    value: the physics' own in that cell)."""

    kh_mask: Array
    rs_mask: Array
    kh_value: Array | None = None
    rs_value: Array | None = None


class LoopReport(eqx.Module):
    """Per-step figures of a closed loop, (T,) arrays.

    Attributes:
        recomputations: how often the step was recomputed with adjusted fields
        residual_before: the step's residual with the parameteriser's (clipped) fields [W m-2]
        residual_after: the residual of the attempt kept [W m-2]
        cells_clipped: K_h and r_s values outside their bounds (or non-finite) in the step's fields
        roughness: mean |Delta log K_h| between neighbouring cells of the step's (clipped) field
        rough: roughness above the loop's ``roughness_limit``
        tolerance: the residual threshold [W m-2]
    """

    recomputations: Array
    residual_before: Array
    residual_after: Array
    cells_clipped: Array
    roughness: Array
    rough: Array
    tolerance: float = eqx.field(static=True, default=10.0)

    def summary(self) -> dict:
        """Totals as plain ints and floats (``json.dumps``-able)."""
        recomputations = np.asarray(self.recomputations)
        after = np.asarray(self.residual_after)
        return {
            "steps": int(recomputations.size),
            "tolerance_wm2": float(self.tolerance),
            "recomputed_steps": int(np.sum(recomputations > 0)),
            "recomputations": int(np.sum(recomputations)),
            "max_recomputations": int(np.max(recomputations, initial=0)),
            "max_residual_before_wm2": float(np.max(np.asarray(self.residual_before), initial=0.0)),
            "max_residual_after_wm2": float(np.max(after, initial=0.0)),
            "steps_above_tolerance": int(np.sum(after > self.tolerance)),
            "cells_clipped": int(np.sum(np.asarray(self.cells_clipped))),
            "rough_steps": int(np.sum(np.asarray(self.rough))),
            "max_roughness": float(np.max(np.asarray(self.roughness), initial=0.0)),
        }


def _kernel(grid: Array, periodic: bool) -> Array:
    grid = jnp.pad(grid, 1, mode="wrap" if periodic else "edge")
    rows = 0.25 * grid[:-2] + 0.5 * grid[1:-1] + 0.25 * grid[2:]
    return 0.25 * rows[:, :-2] + 0.5 * rows[:, 1:-1] + 0.25 * rows[:, 2:]


def smooth_field(field: Array, shape: tuple[int, int], periodic: bool = False, active=None) -> Array:
    """(N,) ``field`` on the (ny, nx) grid smoothed by the 3x3 Gaussian kernel (1 2 1) x (1 2 1) / 16;
    beyond the edges the edge cells repeat (or the grid wraps: ``periodic``). ``active``: an (N,)
    bool array (None: all): the kernel's weights over the active cells only, renormalised; inactive
    cells keep their values."""
    if active is None:
        return jnp.reshape(_kernel(jnp.reshape(field, shape), periodic), (-1,))
    inside = jnp.reshape(jnp.asarray(active), shape)
    grid = jnp.where(inside, jnp.reshape(field, shape), 0.0)
    weight = _kernel(inside.astype(grid.dtype), periodic)
    smooth = _kernel(grid, periodic) / jnp.where(inside, weight, 1.0)
    return jnp.reshape(jnp.where(inside, smooth, jnp.reshape(field, shape)), (-1,))


def roughness(log_field: Array, shape: tuple[int, int], active=None) -> Array:
    """Mean |difference| of ``log_field`` (N,) between neighbouring cells (x and y faces inside
    the grid, between two active cells where ``active``, an (N,) bool array, is given; 0 without
    any such face)."""
    grid = jnp.reshape(log_field, shape)
    dx, dy = jnp.abs(jnp.diff(grid, axis=1)), jnp.abs(jnp.diff(grid, axis=0))
    if active is None:
        count = dx.size + dy.size
        return (jnp.sum(dx) + jnp.sum(dy)) / max(count, 1)
    inside = np.reshape(np.asarray(active, bool), shape)
    fx, fy = inside[:, 1:] & inside[:, :-1], inside[1:] & inside[:-1]
    count = int(fx.sum() + fy.sum())
    return (jnp.sum(jnp.where(fx, dx, 0.0)) + jnp.sum(jnp.where(fy, dy, 0.0))) / max(count, 1)


def reference_fields(physics: RegionalModel, state: RegionalState, forcing_t: GridForcing, params: dict):
    """The physics' own K_h [m2 s-1] and r_s [s m-1] for a step, (N,): (z - d) / r_a from the
    column's stability scheme at the start state with the air layer's air, and rs_min * rs_scale."""
    land = physics.land
    if not hasattr(land, "surface_layer"):
        raise TypeError(f"closed_loop: the column model {type(land).__name__} has no surface_layer; "
                        "expected LaD's (the physics' own K_h is its z - d over r_a)")
    own = {k: v for k, v in params.items() if k not in (PRESCRIBED_KH, PRESCRIBED_KH_SCALE, PRESCRIBED_RS)}
    air = replace(forcing_t.column, t_air=state.air_temp, q_air=state.air_humidity)
    layer = land.surface_layer(state.land, air, own)
    return layer.height_above_displacement / layer.aerodynamic_resistance, own["rs_min"] * own["rs_scale"]


def _soil_storage(physics: RegionalModel, state: RegionalState, params: dict) -> Array:
    """S_R of the columns [J m-2], as LaD reports it (``SR``)."""
    capacity = layer_heat_capacity(params["soil_heat_capacity"], physics.land.layer_thickness)
    return soil_heat_storage(state.land.soil_temp, capacity.astype(state.land.soil_temp.dtype))


def _clip(field, reference, bounds, active=None):
    """``field`` clipped to ``bounds``, non-finite values replaced by ``reference`` (clipped too),
    and the number of values changed (in the ``active`` cells, where given)."""
    lo, hi = bounds
    bad = ~jnp.isfinite(field)
    outside = bad | (field < lo) | (field > hi)
    if active is not None:
        outside = outside & active
    clipped = jnp.clip(jnp.where(bad, reference, field), lo, hi)
    return clipped, jnp.sum(outside.astype(jnp.int32))


def closed_loop(physics: RegionalModel, params: dict, forcing: GridForcing, kh, rs, state0=None, *,
                tolerance: float = 10.0, max_adjustments: int = MAX_ADJUSTMENTS,
                roughness_limit: float = ROUGHNESS_LIMIT, outputs: Sequence[str] | None = None,
                exchange: str = PRESCRIBED_KH, fallback=None):
    """Autoregressive prediction through the fields ``kh``, ``rs`` (T, N), recomputing every step
    whose residual exceeds ``tolerance`` with adjusted fields (module docstring).

    Args:
        physics: the gridded physics (its ``max_refinements`` refine the sub-steps in every attempt)
        params: LaD parameters, (N,) arrays
        forcing: (T, N) ``GridForcing``
        kh, rs: the parameteriser's K_h [m2 s-1] and r_s [s m-1] fields, (T, N)
        state0: start state; default ``physics.init_state(params, forcing)``
        tolerance: residual [W m-2] above which a step is recomputed
        max_adjustments: recomputations per step at most (0: check and report only)
        roughness_limit: roughness above which a step's K_h field is flagged
        outputs: names of the outputs to keep (default all: the model's and ``LOOP_OUTPUTS``)
        exchange: what ``kh`` is: ``PRESCRIBED_KH`` (K_h itself) or ``PRESCRIBED_KH_SCALE`` (a
            multiplier of the physics' own K_h: it is then pulled toward 1, its bounds are
            ``PARAMETER_BOUNDS["Kh_scale"]``)
        fallback: None, or a :class:`Fallback`: the cell-steps whose field is replaced by the
            physics' own or by given values (module docstring)

    Returns:
        (final state, outputs dict of (T, N) arrays, ``LoopReport``).
    """
    n_steps, n_cells = forcing.n_steps, forcing.n_sites
    fields_in = [("kh", kh), ("rs", rs)]
    masks, values = None, (None, None)
    if fallback is not None:
        if not isinstance(fallback, Fallback):
            raise TypeError(f"closed_loop: fallback is a {type(fallback).__name__}; expected a Fallback")
        masks = (jnp.asarray(fallback.kh_mask, bool), jnp.asarray(fallback.rs_mask, bool))
        fields_in += [("fallback K_h mask", masks[0]), ("fallback r_s mask", masks[1])]
        values = tuple(None if v is None else jnp.asarray(v, jnp.result_type(kh))
                       for v in (fallback.kh_value, fallback.rs_value))
    for name, field in fields_in:
        if jnp.shape(field) != (n_steps, n_cells):
            raise ValueError(f"closed_loop: {name} has shape {jnp.shape(field)}; expected (T, N) = "
                             f"({n_steps}, {n_cells}) like the forcing")
    for name, value in zip(("K_h", "r_s"), values):
        if value is not None and jnp.shape(value) != (n_cells,):
            raise ValueError(f"closed_loop: the fallback {name} values have shape {jnp.shape(value)}; expected "
                             f"(N,) = ({n_cells},), one per cell")
    if physics.air.shape[0] * physics.air.shape[1] != n_cells:
        raise ValueError(f"closed_loop: the air layer's grid {physics.air.shape} does not hold the forcing's "
                         f"{n_cells} cells")
    if not (tolerance > 0 and int(max_adjustments) == max_adjustments and max_adjustments >= 0):
        raise ValueError(f"closed_loop: expected tolerance > 0 and an integer max_adjustments >= 0, got "
                         f"{tolerance}, {max_adjustments}")
    max_adjustments = int(max_adjustments)
    if exchange not in (PRESCRIBED_KH, PRESCRIBED_KH_SCALE):
        raise ValueError(f"closed_loop: exchange {exchange!r}; expected {PRESCRIBED_KH!r} or {PRESCRIBED_KH_SCALE!r}")
    scale = None if exchange == PRESCRIBED_KH else exchange
    bounds = PARAMETER_BOUNDS[exchange]
    state0 = physics.init_state(params, forcing) if state0 is None else state0
    shape = physics.air.shape
    periodic = physics.air.boundary == "periodic"
    # cells that are not columns (physics.air.active) are not modelled: not checked, counted,
    # smoothed over or flagged
    active = None if physics.air.active is None else physics.air.active.values
    inside = (lambda a: a) if active is None else (lambda a: jnp.where(active, a, 0))  # noqa: E731
    dt = forcing.time_step_s
    dtype = jnp.result_type(kh)

    def attempt(state, forcing_t, fields, storage0):
        kh_t, rs_t = fields
        new, fluxes = physics.step(state, forcing_t, {**params, exchange: kh_t, PRESCRIBED_RS: rs_t})
        out = physics.observe(new, fluxes)
        storage = _soil_storage(physics, new, params)
        column = jnp.abs(out["Rnet"] - out["Qh"] - out["Qle"] - out["Qf"] - (storage - storage0) / dt)
        out = {**out, "exchange_field": kh_t, "Kh_field": kh_t if scale is None else out["Kh"], "rs_field": rs_t,
               "energy_residual": column}
        return new, out, storage, inside(jnp.maximum(out["coupling_residual"], column))

    def one_step(carry, xs):
        state, storage0 = carry
        forcing_t, kh_t, rs_t, masks_t = xs
        kh_phys, rs_phys = reference_fields(physics, state, forcing_t, params)
        if scale is not None:  # the physics' own K_h is a multiplier of 1
            kh_phys = jnp.ones_like(kh_phys)
        if masks_t is not None:
            kh_fb = kh_phys if values[0] is None else jnp.where(jnp.isnan(values[0]), kh_phys, values[0])
            rs_fb = rs_phys if values[1] is None else jnp.where(jnp.isnan(values[1]), rs_phys, values[1])
            kh_t, rs_t = jnp.where(masks_t[0], kh_fb, kh_t), jnp.where(masks_t[1], rs_fb, rs_t)
        kh_t, clipped_kh = _clip(kh_t, kh_phys, bounds, active)
        rs_t, clipped_rs = _clip(rs_t, rs_phys, PARAMETER_BOUNDS["rs"], active)
        log_kh, log_rs = jnp.log(kh_t), jnp.log(rs_t)
        log_kh_phys = jnp.log(jnp.clip(kh_phys, *bounds))
        smooth_kh = smooth_field(log_kh, shape, periodic, active)
        smooth_rs = smooth_field(log_rs, shape, periodic, active)

        def fields(k, flagged):
            w = k.astype(log_kh.dtype) / max(max_adjustments, 1)
            kh_k = jnp.where(flagged, (1.0 - w) * smooth_kh + w * log_kh_phys, log_kh)
            rs_k = jnp.where(flagged, smooth_rs, log_rs)
            # unflagged cells keep the given values exactly (not exp(log(.)))
            return (jnp.where(flagged, jnp.clip(jnp.exp(kh_k), *bounds), kh_t),
                    jnp.where(flagged, jnp.clip(jnp.exp(rs_k), *PARAMETER_BOUNDS["rs"]), rs_t))

        # the loop runs the step once (k = 0, the fields as given), then again while the residual
        # is too large; one compiled copy of the step
        shapes = jax.eval_shape(attempt, state, forcing_t, (kh_t, rs_t), storage0)
        blank = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        inf = jnp.asarray(jnp.inf, dtype)
        init = (jnp.asarray(-1, jnp.int32), jnp.zeros(n_cells, bool), blank, inf, jnp.zeros((), dtype),
                (blank, inf, jnp.zeros(n_cells, bool)))

        def cond(c):
            k, _, _, residual, _, _ = c
            return (k < 0) | ((residual > tolerance) & (k < max_adjustments))

        def body(c):
            k, flagged, last, _, before, best = c
            flagged = flagged | ~(last[3] <= tolerance)  # a non-finite residual is above it too
            k = k + 1
            result = attempt(state, forcing_t, fields(k, flagged), storage0)
            residual = jnp.max(result[3]).astype(dtype)
            residual = jnp.where(jnp.isnan(residual), jnp.inf, residual)
            # the attempt kept is the one with the lowest residual (the first at a tie): an adjustment
            # can raise it (a network K_h below the physics' own, pulled up toward it, couples more stiffly)
            better = (residual < best[1]) | (k == 0)  # the first attempt is kept even when non-finite
            best = (jax.tree_util.tree_map(lambda a, b: jnp.where(better, a, b), result, best[0]),
                    jnp.where(better, residual, best[1]), jnp.where(better, flagged, best[2]))
            return k, flagged, result, residual, jnp.where(k == 0, residual, before), best

        k, _, _, _, before, ((new, out, storage, _), residual, flagged) = jax.lax.while_loop(cond, body, init)
        out = {**out, "recomputed": flagged.astype(dtype)}  # the kept attempt's adjusted cells (none for k = 0)
        check = {"recomputations": k, "residual_before": before, "residual_after": residual,
                 "cells_clipped": clipped_kh + clipped_rs, "roughness": roughness(log_kh, shape, active).astype(dtype)}
        if outputs is not None:
            unknown = [name for name in outputs if name not in out]
            if unknown:
                raise ValueError(f"closed_loop: unknown outputs {unknown}; expected names among {sorted(out)}")
            out = {name: out[name] for name in outputs}
        return (new, storage), (out, check)

    storage0 = _soil_storage(physics, state0, params)
    (state, _), (out, check) = jax.lax.scan(one_step, (state0, storage0), (forcing, kh, rs, masks))
    report = LoopReport(check["recomputations"], check["residual_before"], check["residual_after"],
                        check["cells_clipped"], check["roughness"], check["roughness"] > roughness_limit,
                        tolerance=float(tolerance))
    return state, out, report
