"""hybrid_flux's network closure: its gradient stays finite when the available energy is far below
zero (a strong wind over a much colder surface), where the bulk evaporative fraction's smoothed
denominator underflows (it made half the batches of a seven-site training NaN, issue 12)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from hybridlsm.models.hybrid import HybridOptions, build_flux_closure
from hybridlsm.physics import BulkClosure, LaDModel, SurfaceContext, default_params, synthetic_forcing
from hybridlsm.thermo import saturation_specific_humidity, saturation_specific_humidity_slope


def _context(dt_surface: float, ra: float) -> SurfaceContext:
    forcing = synthetic_forcing(1, n_sites=2, start_day=10.0).at(2)
    params = default_params(["CRO", "CRO"])
    ts = forcing.t_air + dt_surface
    return SurfaceContext(
        state=LaDModel().init_state(params, forcing), forcing=forcing, params=params, t_surface=ts,
        theta_air=forcing.t_air, q_air=forcing.q_air, q_sat=saturation_specific_humidity(ts, forcing.p_surf),
        dq_sat_dt=saturation_specific_humidity_slope(ts, forcing.p_surf), rho_air=jnp.full(2, 1.2),
        latent_heat=jnp.full(2, 2.45e6), aerodynamic_resistance=jnp.full(2, ra), surface_resistance=jnp.full(2, 56.6),
        beta=jnp.ones(2), snow_cover=jnp.zeros(2), richardson=jnp.full(2, 0.5), wind=jnp.full(2, 10.0),
        net_radiation=jnp.full(2, -80.0), dnet_radiation_dt=jnp.full(2, -5.0),
    )


def _grads(closure, context):
    """Gradients of LE with respect to the network's weights and to the surface temperature (the
    path through which a training step's loss reaches the earlier steps' states)."""
    params, static = eqx.partition(closure, eqx.is_inexact_array)

    def latent(p, ts):
        return jnp.sum(2.45e6 * eqx.combine(p, static)(context.at_surface_temperature(ts)).evaporation)

    return jax.grad(latent, argnums=(0, 1))(params, context.t_surface)


def test_flux_closure_gradient_is_finite_far_below_zero_available_energy():
    closure = build_flux_closure(HybridOptions())
    cold = _context(-40.0, 2.0)  # H ~ -2.4e4 W m-2: the smoothed positive part is exactly 0
    bulk = BulkClosure()(cold)
    assert float(jnp.max(bulk.sensible_heat + 2.45e6 * bulk.evaporation)) < -1e4
    leaves = jax.tree_util.tree_leaves(_grads(closure, cold))
    assert leaves and all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    # an ordinary daytime step: the untrained network reproduces the bulk fluxes (start at the physics)
    warm = _context(3.0, 40.0)
    warm = eqx.tree_at(lambda c: c.net_radiation, warm, jnp.full(2, 500.0))
    out, ref = closure(warm), BulkClosure()(warm)
    np.testing.assert_allclose(out.sensible_heat + 2.45e6 * out.evaporation,
                               ref.sensible_heat + 2.45e6 * ref.evaporation, rtol=0.02)
