"""Network inputs of the hybrids: scaled forcing and the LaD column's internal states.

Fixed physical scales (no data statistics), so the same network applies at any site or cell.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .. import thermo
from ..constants import T_FREEZE
from ..physics import Forcing, LaDState
from ..physics.exchange import law_features

__all__ = ["N_FORCING_FEATURES", "N_STABILITY_FEATURES", "N_STATE_FEATURES", "STATIC_INPUTS", "STATIC_KEY",
           "forcing_features", "n_static_features", "stability_features", "state_features", "static_features"]


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


# ------------------------------------------------------------------------- static attributes

#: key of the (N, S) scaled static attributes in a column model's parameters
STATIC_KEY = "static_features"

#: the static attributes (``domain.STATIC_ATTRIBUTES``) a network may take, each scaled by a fixed
#: physical rule (no data statistics: a new site is scaled as the training sites were); ``igbp``
#: becomes a one-hot of the LaD cover type (``STATIC_COVERS``)
STATIC_SCALINGS = {
    "latitude": lambda v: v / 90.0,
    "elevation": lambda v: v / 1000.0,
    "canopy_height": lambda v: np.log1p(v) / 2.0,
    "measurement_height": lambda v: np.log1p(v) / 2.0,
    "sand_fraction": lambda v: 2.0 * v - 1.0,
    "clay_fraction": lambda v: 2.0 * v - 1.0,
    "mean_annual_temperature": lambda v: (v - 10.0) / 10.0,
    "mean_annual_precipitation": lambda v: np.log(np.maximum(v, 1.0) / 500.0),
    "aridity_index": lambda v: np.log(np.maximum(v, 0.01)),
    "precipitation_seasonality": lambda v: v,
    "temperature_seasonality": lambda v: v / 10.0,
}
CLIMATE_SUMMARIES = ("mean_annual_temperature", "mean_annual_precipitation", "aridity_index",
                     "precipitation_seasonality", "temperature_seasonality")  # domain/climate.py
STATIC_COVERS = ("NE", "BE", "ND", "BD", "BN", "G", "A", "D")
#: every name ``static_inputs`` may list
STATIC_INPUTS = (*STATIC_SCALINGS, "igbp")


def n_static_features(names) -> int:
    return sum(len(STATIC_COVERS) if n == "igbp" else 1 for n in names)


def static_features(values: dict, names, where) -> np.ndarray:
    """(N, S) scaled static attributes ``names`` of N columns from ``values`` (name -> (N,) values,
    ``igbp`` as class codes); ``where`` names each column. A column without a value the network
    needs (NaN, or an unknown IGBP class) is a DataError naming it: never a silent default."""
    from ..data import DataError
    from ..physics.parameters import IGBP_TO_LAD

    n = len(where)
    out = []
    for name in names:
        if name not in values:
            raise DataError(f"{where[0] if n == 1 else 'the columns'}: no static attribute {name!r}, which the "
                            f"model's networks take as an input (static_inputs); give it in the site metadata")
        raw = np.asarray(values[name]).reshape(n)
        if name == "igbp":
            codes = [str(c).strip() for c in raw]
            bad = [i for i, c in enumerate(codes) if c not in IGBP_TO_LAD]
            if bad:
                raise DataError(f"{where[bad[0]]}: IGBP class {codes[bad[0]]!r} is not one the network knows "
                                f"(static_inputs: igbp; allowed {', '.join(IGBP_TO_LAD)}); give the site's class")
            out.append(np.asarray([[IGBP_TO_LAD[c] == k for k in STATIC_COVERS] for c in codes], float))
            continue
        v = np.asarray(raw, float)
        bad = np.flatnonzero(~np.isfinite(v))
        if bad.size:
            how = ("it is computed from the forcing's monthly climatology, and this record is too short for it"
                   if name in CLIMATE_SUMMARIES else "give it in the site metadata")
            raise DataError(f"{where[bad[0]]}: static attribute {name!r} is unknown (NaN), and the model's networks "
                            f"take it as an input (static_inputs): {how}, or leave it out of static_inputs")
        out.append(STATIC_SCALINGS[name](v)[:, None])
    return np.concatenate(out, axis=1) if out else np.zeros((n, 0))
