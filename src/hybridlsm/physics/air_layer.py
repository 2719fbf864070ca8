"""A finite-volume near-surface air layer over a regular grid (regional mode; seed 000 §2.2).

Each grid cell carries a well-mixed air layer of depth h above its land column: air temperature
T [K] and specific humidity q [kg kg-1] at the columns' reference height. Per unit area::

    rho c_p h dT/dt = H - rho c_p (T - T_f) / r_top - rho c_p h div(u T - K_h grad T)
    rho h dq/dt     = E - rho (q - q_f) / r_top     - rho h div(u q - K_h grad q)

H [W m-2] and E [kg m-2 s-1] come from the columns below; T_f, q_f are the forcing's air, the
large-scale air above the layer, reached through the top resistance r_top; the lateral terms are
advection by the near-surface wind (u, v) and diffusion with the cells' exchange coefficient K_h
(on 1 km cells a small term beside advection; it matters on fine grids). The layer keeps its
depth: where the wind converges, air leaves through the top at w = -h div u with the cell's T and q;
where it diverges, air from above enters with T_f, q_f (``transport``).

Discretisation (finite volumes: cell means, fluxes through faces):

- every face flux is computed once and enters its two cells with opposite signs, so the lateral
  terms only move heat and water between cells: with periodic boundaries the domain totals change
  by the surface and top terms alone, to rounding; with open boundaries by those and the fluxes
  through the boundary faces, which ``transport`` returns so that the budget closes;
- face values by QUICK (Leonard 1979): phi_f = 6/8 phi_C + 3/8 phi_D - 1/8 phi_U, C the upwind
  cell, D the downwind one, U the cell upstream of C; face velocity the mean of the two cells, face
  K_h their harmonic mean;
- lateral transport explicit, in equal sub-steps of the three-stage strong-stability-preserving
  Runge-Kutta scheme (QUICK with forward Euler alone is unstable): each call of ``advance`` takes as
  many as its own wind and K_h need (Courant and diffusion numbers <= ``MAX_COURANT``), at most
  ``n_substeps``, which ``transport_substeps`` sets from the record's strongest wind (a compiled
  loop has a fixed length; the sub-steps a calm hour does not need are skipped, forward and in the
  gradient: on the virtual region's 1 km cells an hour needs 18 of the record's 69 at the median);
- the top exchange implicit (backward Euler: stable for any step and any r_top).

Boundaries (``boundary``): "periodic" (the grid wraps in both directions), or "open": two ghost
cells beyond each edge hold the air above (T_f, q_f of the edge cell), so inflow brings the large-
scale air in; at boundary faces the value is upwind (inflow: the ghost; outflow: the edge cell).

Cells that are not columns (``active``: a mask over the grid's cells, e.g. outside a basin or a
water cell of a land mask) are outside the layer, like the ghosts of an open boundary: the layer
is not modelled there (nothing is estimated for them) and a face between an active and an
inactive cell is a boundary face. Beyond it lies the air above the active cell (its T_f, q_f: the
nearest active cell's, exactly as the open boundary's ghosts), its value is upwind (inflow brings
that air in, outflow carries the active cell's air out), its wind and K_h are the active cell's,
and what crosses it counts as boundary outflow. A QUICK stencil that reaches into an inactive cell
takes the air above the cell upwind of the face instead. So the active cells' heat and water close
to rounding, a uniform field stays uniform, and the values held in inactive cells never enter.
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..constants import CP_AIR

BOUNDARIES = ("periodic", "open")

#: sub-steps keep |u| dt/dx + |v| dt/dy and 2 K_h dt (1/dx^2 + 1/dy^2) at or below this (SSP-RK3
#: QUICK stayed bounded over 2000 sub-steps of white noise up to 1.2, tests/test_regional_physics.py)
MAX_COURANT = 0.8


def transport_substeps(wind_u, wind_v, dt: float, dx: float, dy: float, kh_max: float) -> int:
    """Sub-steps for a step of ``dt`` seconds so that the Courant number of the largest wind in
    ``wind_u``, ``wind_v`` (any shape; concrete values, e.g. the whole forcing) and the diffusion
    number of ``kh_max`` stay at or below ``MAX_COURANT``."""
    u = float(np.max(np.abs(np.asarray(wind_u)))) if np.size(wind_u) else 0.0
    v = float(np.max(np.abs(np.asarray(wind_v)))) if np.size(wind_v) else 0.0
    return max(1, math.ceil(max(*_stability_numbers(u, v, kh_max, dt, dx, dy)) / MAX_COURANT))


def _stability_numbers(u_max, v_max, kh_max, dt: float, dx: float, dy: float):
    """(Courant number, diffusion number) of a sub-step of ``dt`` with these largest |u|, |v|, K_h
    (numbers or traced scalars); transport needs both at or below ``MAX_COURANT``."""
    return u_max * dt / dx + v_max * dt / dy, 2.0 * kh_max * dt * (1.0 / dx**2 + 1.0 / dy**2)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def repeat_step(step, n_max: int, carry, args, n):
    """``carry`` after ``n`` (a traced integer, clipped to 0 to ``n_max``) applications of
    ``step(carry, args) -> carry``. Reverse mode costs ``n`` steps too: the carries are kept (``n_max``
    slots) and the loop runs back through the ``n`` taken; a scan over ``n_max`` slots that skips
    the rest with ``lax.cond`` still paid for most of the skipped slots in the gradient. Reverse
    mode only: forward-mode differentiation (``jax.jvp``, ``jacfwd``) is not defined through it."""
    return jax.lax.fori_loop(0, jnp.clip(n, 0, n_max), lambda i, c: step(c, args), carry)


def _repeat_step_fwd(step, n_max, carry, args, n):
    n = jnp.clip(n, 0, n_max)
    slots = jax.tree_util.tree_map(lambda a: jnp.zeros((n_max,) + jnp.shape(a), jnp.asarray(a).dtype), carry)

    def body(i, state):
        c, kept = state
        kept = jax.tree_util.tree_map(lambda k, a: k.at[i].set(a), kept, c)
        return step(c, args), kept

    out, slots = jax.lax.fori_loop(0, n, body, (carry, slots))
    return out, (slots, args, n)


def _repeat_step_bwd(step, n_max, residuals, cotangent):
    slots, args, n = residuals

    def body(j, state):
        g, acc = state
        c = jax.tree_util.tree_map(lambda k: k[n - 1 - j], slots)
        d_carry, d_args = jax.vjp(step, c, args)[1](g)
        return d_carry, jax.tree_util.tree_map(jnp.add, acc, d_args)

    g, d_args = jax.lax.fori_loop(0, n, body, (cotangent, jax.tree_util.tree_map(jnp.zeros_like, args)))
    return g, d_args, None


repeat_step.defvjp(_repeat_step_fwd, _repeat_step_bwd)


class CellMask:
    """A static (hashable) boolean mask over a grid's N cells (C order), True where the cell is in
    the air layer: equal masks compare and hash equal, so jit caches one program per mask."""

    __slots__ = ("values", "_key")

    def __init__(self, values):
        values = np.asarray(values.values if isinstance(values, CellMask) else values, bool).reshape(-1)
        values.setflags(write=False)
        self.values = values
        self._key = (values.size, np.packbits(values).tobytes())

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, CellMask) and self._key == other._key

    def __repr__(self):
        return f"CellMask({int(self.values.sum())} of {self.values.size} cells active)"

    @property
    def n_active(self) -> int:
        return int(self.values.sum())


def cell_mask(active) -> CellMask | None:
    """``active`` (None, an (N,) or (ny, nx) bool array, or a ``CellMask``) as the air layer holds
    it: None where every cell is active (today's numerics, unchanged)."""
    if active is None:
        return None
    mask = CellMask(active)
    return None if mask.values.all() else mask


def _pad(field: Array, axis: int, width: int, boundary: str, outside: Array | None) -> Array:
    """``field`` (ny, nx) with ``width`` ghost cells on both ends of ``axis``: wrapped (periodic)
    or ``outside`` (open; the air above, same shape as ``field``)."""
    pad = [(0, 0), (0, 0)]
    pad[axis] = (width, width)
    if boundary == "periodic":
        return jnp.pad(field, pad, mode="wrap")
    n = field.shape[axis]
    first = jnp.repeat(_slice(outside, axis, 0, 1), width, axis=axis)
    last = jnp.repeat(_slice(outside, axis, n - 1, n), width, axis=axis)
    return jnp.concatenate([first, field, last], axis=axis)


def _slice(a: Array, axis: int, start: int, stop: int) -> Array:
    index = [slice(None), slice(None)]
    index[axis] = slice(start, stop)
    return a[tuple(index)]


def quick_face_values(padded: Array, velocity: Array, axis: int) -> Array:
    """QUICK values on the n + 1 faces along ``axis`` of a field padded with two ghost cells per
    end (length n + 4); ``velocity``: the face velocities (n + 1 along ``axis``). Face k lies
    between cells k - 1 and k (face 0 and face n are the boundary faces)."""
    n = padded.shape[axis] - 4
    far_left = _slice(padded, axis, 0, n + 1)
    left = _slice(padded, axis, 1, n + 2)
    right = _slice(padded, axis, 2, n + 3)
    far_right = _slice(padded, axis, 3, n + 4)
    from_left = 0.75 * left + 0.375 * right - 0.125 * far_left
    from_right = 0.75 * right + 0.375 * left - 0.125 * far_right
    return jnp.where(velocity >= 0.0, from_left, from_right)


def _face_fluxes(phi, velocity, kh, axis, spacing, boundary, outside):
    """The face velocities along ``axis`` and the advective-diffusive flux through those faces
    [phi m s-1], positive toward increasing index."""
    padded = _pad(phi, axis, 2, boundary, outside)
    vel = _pad(velocity, axis, 1, boundary, velocity)  # open: the edge cell's wind beyond the edge
    k = _pad(kh, axis, 1, boundary, kh)
    n = phi.shape[axis]
    vel_face = 0.5 * (_slice(vel, axis, 0, n + 1) + _slice(vel, axis, 1, n + 2))
    k_left, k_right = _slice(k, axis, 0, n + 1), _slice(k, axis, 1, n + 2)
    k_sum = k_left + k_right
    k_face = 2.0 * k_left * k_right / jnp.where(k_sum > 0.0, k_sum, 1.0)  # harmonic mean; 0 if either is
    value = quick_face_values(padded, vel_face, axis)
    left, right = _slice(padded, axis, 1, n + 2), _slice(padded, axis, 2, n + 3)
    if boundary == "open":  # upwind at the boundary faces
        upwind = jnp.where(vel_face >= 0.0, left, right)
        edge = jnp.zeros(n + 1, bool).at[0].set(True).at[n].set(True)
        edge = edge[:, None] if axis == 0 else edge[None, :]
        value = jnp.where(edge, upwind, value)
    return vel_face, vel_face * value - k_face * (right - left) / spacing


def _masked_face_fluxes(phi, above, velocity, kh, active, axis, spacing, boundary):
    """``_face_fluxes`` with inactive cells outside the layer (module docstring): faces between an
    active and an inactive cell (the open boundary's edge faces among them: its ghosts are inactive)
    are boundary faces; faces between two inactive cells carry nothing."""
    n = phi.shape[axis]
    p = _pad(phi, axis, 2, boundary, above)
    a = _pad(above, axis, 2, boundary, above)
    m = _pad(active, axis, 2, boundary, jnp.zeros_like(active))
    vel = _pad(velocity, axis, 2, boundary, velocity)
    k = _pad(kh, axis, 2, boundary, kh)
    at = lambda x, i: _slice(x, axis, i, n + 1 + i)  # noqa: E731  i = 0..3: far left, left, right, far right
    m_left, m_right = at(m, 1), at(m, 2)
    # an inactive cell holds the air above the active cell next to it (the QUICK stencil's far cell:
    # the air above the cell upwind of the face)
    left = jnp.where(m_left, at(p, 1), at(a, 2))
    right = jnp.where(m_right, at(p, 2), at(a, 1))
    far_left = jnp.where(at(m, 0), at(p, 0), at(a, 1))
    far_right = jnp.where(at(m, 3), at(p, 3), at(a, 2))
    both, either = m_left & m_right, m_left | m_right
    u_left, u_right, k_left, k_right = at(vel, 1), at(vel, 2), at(k, 1), at(k, 2)
    k_sum = k_left + k_right
    vel_face = jnp.where(both, 0.5 * (u_left + u_right), jnp.where(m_left, u_left, u_right))
    vel_face = jnp.where(either, vel_face, 0.0)
    k_face = jnp.where(both, 2.0 * k_left * k_right / jnp.where(k_sum > 0.0, k_sum, 1.0),
                       jnp.where(m_left, k_left, k_right))
    from_left = 0.75 * left + 0.375 * right - 0.125 * far_left  # QUICK, as quick_face_values
    from_right = 0.75 * right + 0.375 * left - 0.125 * far_right
    value = jnp.where(vel_face >= 0.0, from_left, from_right)
    value = jnp.where(both, value, jnp.where(vel_face >= 0.0, left, right))  # boundary faces: upwind
    flux = vel_face * value - k_face * (right - left) / spacing
    return vel_face, jnp.where(either, flux, 0.0)


class Transport(NamedTuple):
    """Lateral transport: the tendency of each cell [phi s-1], the net outflow through the
    boundary faces as a domain-mean rate [phi s-1], and each cell's exchange with the air above
    carried by the vertical motion that balances the wind's divergence [phi s-1, positive up]."""

    tendency: Array
    outflow: Array
    vertical: Array


def transport(phi, above, wind_u, wind_v, kh, dx: float, dy: float, depth: float, boundary: str,
              active=None) -> Transport:
    """d phi / dt of a (ny, nx) field (x along axis 1, y along axis 0) from advection and
    diffusion, with ``above`` the air above each cell.

    The layer keeps its depth, so where the near-surface wind converges (div u < 0) air leaves
    through the top at w = -h div u, carrying the cell's value, and where it diverges air from
    above enters with ``above``'s: a uniform field stays uniform under any wind. Sums, exactly to
    rounding: sum(tendency) = -n_cells * outflow - sum(vertical).

    ``active``: None (every cell in the layer) or a (ny, nx) bool array of the cells in it (module
    docstring); tendency and vertical are 0 in the others, and the sums run over the active cells
    (n_cells of them: ``outflow`` is per unit area of the active cells).
    """
    if active is not None:
        return _masked_transport(phi, above, wind_u, wind_v, kh, dx, dy, depth, boundary, active)
    ux, fx = _face_fluxes(phi, wind_u, kh, 1, dx, boundary, above)  # (ny, nx + 1)
    vy, fy = _face_fluxes(phi, wind_v, kh, 0, dy, boundary, above)  # (ny + 1, nx)
    w = -depth * ((ux[:, 1:] - ux[:, :-1]) / dx + (vy[1:, :] - vy[:-1, :]) / dy)
    vertical = (jnp.maximum(w, 0.0) * phi - jnp.maximum(-w, 0.0) * above) / depth
    tendency = -(fx[:, 1:] - fx[:, :-1]) / dx - (fy[1:, :] - fy[:-1, :]) / dy - vertical
    ny, nx = phi.shape
    if boundary == "periodic":
        outflow = jnp.zeros((), phi.dtype)
    else:
        outflow = (jnp.sum(fx[:, -1] - fx[:, 0]) / dx + jnp.sum(fy[-1, :] - fy[0, :]) / dy) / (ny * nx)
    return Transport(tendency, outflow, vertical)


def _masked_transport(phi, above, wind_u, wind_v, kh, dx, dy, depth, boundary, active) -> Transport:
    ux, fx = _masked_face_fluxes(phi, above, wind_u, kh, active, 1, dx, boundary)
    vy, fy = _masked_face_fluxes(phi, above, wind_v, kh, active, 0, dy, boundary)
    w = -depth * ((ux[:, 1:] - ux[:, :-1]) / dx + (vy[1:, :] - vy[:-1, :]) / dy)
    vertical = jnp.where(active, (jnp.maximum(w, 0.0) * phi - jnp.maximum(-w, 0.0) * above) / depth, 0.0)
    divergence = jnp.where(active, (fx[:, 1:] - fx[:, :-1]) / dx + (fy[1:, :] - fy[:-1, :]) / dy, 0.0)
    # what leaves the active cells laterally leaves through boundary faces (interior faces cancel)
    outflow = jnp.sum(divergence) / jnp.maximum(jnp.sum(active), 1)
    return Transport(-divergence - vertical, outflow, vertical)


class AirLayer(eqx.Module):
    """The near-surface air layer's numerics and constants (module docstring).

    Attributes:
        shape: (ny, nx) of the grid; cells in C order on the column axis (N = ny * nx)
        dx, dy: cell sizes [m]
        depth: layer depth h [m] (300 m: the lower part of a daytime mixed layer; shallower layers
            make the coupling to the surface stiffer, ``physics/regional.py``)
        top_resistance: r_top between the layer and the air above [s m-1]
        boundary: "periodic" or "open"
        n_substeps: the most lateral transport sub-steps of a call of ``advance``
            (``transport_substeps``); a call takes those its wind and K_h need
        active: the cells in the layer (module docstring): an (N,) or (ny, nx) bool array, held as a
            ``CellMask``; None (default) or all True: every cell
    """

    shape: tuple[int, int] = eqx.field(static=True)
    dx: float = eqx.field(static=True, default=1000.0)
    dy: float = eqx.field(static=True, default=1000.0)
    depth: float = eqx.field(static=True, default=300.0)
    top_resistance: float = eqx.field(static=True, default=20.0)
    boundary: str = eqx.field(static=True, default="open")
    n_substeps: int = eqx.field(static=True, default=1)
    active: CellMask | None = eqx.field(static=True, default=None, converter=cell_mask)

    def __check_init__(self):
        if self.boundary not in BOUNDARIES:
            raise ValueError(f"air layer boundary {self.boundary!r}: expected one of {BOUNDARIES}")
        if len(self.shape) != 2 or min(self.shape) < 1:
            raise ValueError(f"air layer shape {self.shape}: expected (ny, nx) with ny, nx >= 1")
        if not (self.depth > 0 and self.top_resistance > 0 and self.dx > 0 and self.dy > 0):
            raise ValueError("air layer depth, top_resistance, dx and dy must be positive")
        if self.active is not None and (self.active.values.size != self.shape[0] * self.shape[1]
                                        or self.active.n_active == 0):
            raise ValueError(f"air layer active mask: {self.active.n_active} of {self.active.values.size} cells; "
                             f"expected {self.shape[0] * self.shape[1]} cells (the grid {self.shape}), some active")

    @property
    def n_active(self) -> int:
        """The cells in the layer."""
        return self.shape[0] * self.shape[1] if self.active is None else self.active.n_active

    def domain_sum(self, a: Array) -> Array:
        """Sum of an (N,) array over the active cells."""
        return jnp.sum(a) if self.active is None else jnp.sum(jnp.where(self.active.values, a, 0.0))

    def domain_mean(self, a: Array) -> Array:
        """Mean of an (N,) array over the active cells."""
        return jnp.mean(a) if self.active is None else self.domain_sum(a) / self.n_active

    def substeps_needed(self, wind_u, wind_v, kh, dt: float) -> Array:
        """The transport sub-steps a step of ``dt`` with these (N,) winds and K_h needs (as
        ``transport_substeps``, from the cells' values: a traced integer), 1 to ``n_substeps``."""
        largest = lambda a: jnp.max(a if self.active is None else jnp.where(self.active.values, a, 0.0))  # noqa: E731
        courant, diffusion = _stability_numbers(largest(jnp.abs(wind_u)), largest(jnp.abs(wind_v)), largest(kh), dt,
                                                self.dx, self.dy)
        n = jnp.ceil(jnp.maximum(courant, diffusion) / MAX_COURANT)
        return jax.lax.stop_gradient(jnp.clip(n, 1, self.n_substeps).astype(jnp.int32))

    def advance(self, temp: Float[Array, " N"], humidity: Float[Array, " N"], *, sensible, evaporation,
                rho, temp_above, humidity_above, wind_u, wind_v, kh, dt: float, substeps=None) -> AirStep:
        """One step of ``dt`` seconds; every argument is an (N,) array over the grid's cells.

        ``rho``: one air density for the whole layer [kg m-3] (the Boussinesq approximation: the
        layer's heat content is rho c_p h T in every cell, so moving T between cells moves heat
        exactly). Order (operator splitting; each part conserves on its own): the surface fluxes
        enter, then the sub-steps of lateral transport, then the implicit exchange with the air
        above. ``substeps``: the transport sub-steps to take (a traced integer, at most
        ``n_substeps``); None: those this call's wind and K_h need (``substeps_needed``). Calls that
        a solver compares (a predictor and its corrections) should take the same number.

        Inactive cells (``active``) hold the air above (``temp_above``, ``humidity_above``, which must
        be finite there) and exchange nothing: their surface fluxes do not enter, their top
        exchange is 0 and the boundary terms are per unit area of the active cells.
        """
        grid = lambda a: jnp.reshape(a, self.shape)  # noqa: E731
        heat_capacity = rho * CP_AIR * self.depth  # [J m-2 K-1]
        # temperatures as anomalies from one reference for the step (transport is linear and keeps
        # a uniform field): float32 holds a few-K anomaly to 1e-7 K, an absolute 290 K to 3e-5 K,
        # which the many transport sub-steps would round into the domain budget
        ref = jax.lax.stop_gradient(self.domain_mean(temp_above))
        t_above = temp_above - ref
        t = (temp - ref) + dt * sensible / heat_capacity
        q = humidity + dt * evaporation / (rho * self.depth)
        if self.active is not None:
            t = jnp.where(self.active.values, t, t_above)
            q = jnp.where(self.active.values, q, humidity_above)
        t, q = grid(t), grid(q)
        u, v, k = grid(wind_u), grid(wind_v), grid(kh)
        t_out, q_out = grid(t_above), grid(humidity_above)
        # the count taken and the sub-step length agree (repeat_step takes at most n_substeps)
        n = self.substeps_needed(wind_u, wind_v, kh, dt) if substeps is None else jnp.clip(substeps, 1, self.n_substeps)
        h = dt / n

        # T and q go through the transport together (one stacked (2, ny, nx) field): half the
        # kernels of two separate passes
        phi0, above = jnp.stack([t, q]), jnp.stack([t_out, q_out])
        # numpy, not a jax array: the sub-step function must not close over a traced value
        active = None if self.active is None else np.reshape(self.active.values, self.shape)

        def rk3(carry, args):  # SSP-RK3 (Shu & Osher 1988): stage weights 1/6, 1/6, 2/3
            phi, out, up = carry
            above, u, v, k, h = args
            rate = jax.vmap(lambda x, a: transport(x, a, u, v, k, self.dx, self.dy, self.depth, self.boundary,
                                                   active))
            mean = lambda a, b, c: h * (a + b + 4.0 * c) / 6.0  # noqa: E731
            # written as increments of phi: the textbook convex form (phi / 3 + 2/3 (...)) multiplies
            # absolute temperatures by 1/3 and 2/3, whose float32 roundings sum to 1 + 3e-8, a bias of
            # 1e-5 K per sub-step that broke the domain budget by 0.04 W m-2 at 1 km
            r0 = rate(phi, above)
            r1 = rate(phi + h * r0.tendency, above)
            r2 = rate(phi + 0.25 * h * (r0.tendency + r1.tendency), above)
            new = phi + mean(r0.tendency, r1.tendency, r2.tendency)
            return (new, out + mean(r0.outflow, r1.outflow, r2.outflow),
                    up + mean(r0.vertical, r1.vertical, r2.vertical))

        init = (phi0, jnp.zeros(2, t.dtype), jnp.zeros_like(phi0))
        phi, (out_t, out_q), (up_t, up_q) = repeat_step(rk3, self.n_substeps, init, (above, u, v, k, h), n)
        # the reference's own share of the heat carried through the top and the boundary (a uniform
        # field keeps its value, so its exchanges are steady): Qh_top and boundary_heat stay the
        # heat of the absolute temperature, whichever cells set the reference
        steady = transport(jnp.ones_like(t), jnp.ones_like(t), u, v, k, self.dx, self.dy, self.depth, self.boundary,
                           active)
        up_t, out_t = up_t + dt * ref * steady.vertical, out_t + dt * ref * steady.outflow
        t, q = phi[0], phi[1]
        up_t, up_q = jnp.reshape(up_t, (-1,)), jnp.reshape(up_q, (-1,))
        t, q = jnp.reshape(t, (-1,)), jnp.reshape(q, (-1,))
        a = dt / (self.depth * self.top_resistance)
        t_new = (t + a * t_above) / (1.0 + a)
        q_new = (q + a * humidity_above) / (1.0 + a)
        top_heat = heat_capacity * ((t - t_new) + up_t) / dt
        top_moisture = rho * self.depth * ((q - q_new) + up_q) / dt
        t_new = t_new + ref
        if self.active is not None:  # held at the air above, exactly; no exchange
            inside = self.active.values
            t_new, q_new = jnp.where(inside, t_new, temp_above), jnp.where(inside, q_new, humidity_above)
            top_heat, top_moisture = jnp.where(inside, top_heat, 0.0), jnp.where(inside, top_moisture, 0.0)
        return AirStep(
            temp=t_new,
            humidity=q_new,
            top_heat=top_heat,
            top_moisture=top_moisture,
            boundary_heat=heat_capacity * out_t / dt,
            boundary_moisture=rho * self.depth * out_q / dt,
        )


class AirStep(NamedTuple):
    """The layer after a step, (N,) arrays, and the step's exchanges: ``top_heat`` [W m-2] and
    ``top_moisture`` [kg m-2 s-1] into the air above, per cell (turbulent exchange and the vertical
    motion that balances the wind's divergence); ``boundary_heat`` and
    ``boundary_moisture`` out through the open boundary, as scalars per unit domain area."""

    temp: Array
    humidity: Array
    top_heat: Array
    top_moisture: Array
    boundary_heat: Array
    boundary_moisture: Array
