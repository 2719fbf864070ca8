"""Network inputs of the hybrids: scaled forcing and the LaD column's internal states.

Fixed physical scales (no data statistics), so the same network applies at any site or cell.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .. import thermo
from ..constants import T_FREEZE
from ..physics import Forcing, LaDState
from ..physics.exchange import law_features

__all__ = ["N_FORCING_FEATURES", "N_STABILITY_FEATURES", "N_STATE_FEATURES", "forcing_features", "stability_features",
           "state_features"]


def forcing_features(f: Forcing) -> jax.Array:
    """(…, 7) scaled forcing features: SW, LW, Tair, specific-humidity deficit, wind, precipitation,
    pressure."""
    q_deficit = thermo.saturation_specific_humidity(f.t_air, f.p_surf) - f.q_air
    return jnp.stack(
        [
            f.sw_down / 500.0,
            (f.lw_down - 300.0) / 50.0,
            (f.t_air - T_FREEZE - 15.0) / 10.0,
            q_deficit / 0.01,
            f.wind / 4.0 - 1.0,
            jnp.log1p(f.precip * 3600.0),
            (f.p_surf - 90000.0) / 10000.0,
        ],
        axis=-1,
    )


def state_features(state: LaDState, forcing: Forcing, params: dict) -> jax.Array:
    """(N, 8) scaled state features: soil temperatures relative to the air, relative soil water,
    snow and groundwater (the model's internal states)."""
    dtemp = (state.soil_temp - forcing.t_air[..., None]) / 10.0
    rel_water = state.soil_water / params["root_zone_capacity"]
    return jnp.concatenate(
        [
            dtemp,
            (rel_water - 0.5)[..., None] * 2.0,
            jnp.log1p(state.snow)[..., None],
            jnp.log1p(state.groundwater)[..., None] / 3.0,
        ],
        axis=-1,
    )


def stability_features(wind, richardson) -> jax.Array:
    """(…, 4) the derived surface-layer inputs of a parameter network (seed 000: wind shear, Richardson
    number): log u, the stable weight s of Ri and log |Ri| on each branch, s log|Ri| and (1 - s)
    log|Ri| (the regressors of an exchange law, ``physics.exchange.law_features``, scaled)."""
    log_u, log_ri, _ = law_features(wind, richardson)
    stable = jax.nn.sigmoid(richardson / 0.01)
    scaled = (log_ri + 4.6) / 3.0  # log 0.01 = -4.6 (near neutral) -> 0; |Ri| = 8 -> 2.2
    return jnp.stack([log_u - 1.0, stable, stable * scaled, (1.0 - stable) * scaled], axis=-1)


N_FORCING_FEATURES = 7
N_STATE_FEATURES = 8
N_STABILITY_FEATURES = 4
