"""The differentiable LaD column (physics-reference §1-§3; architecture §2).

Public API:

- ``Forcing``, ``forcing_from_datasets``: (T, N) meteorological forcing.
- ``PARAMETERS``, ``CALIBRATABLE``, ``default_params``, ``to_unconstrained``,
  ``from_unconstrained``: the parameter table and its bounded transforms.
- ``AbstractLandModel``: the declared land-model interface (``init_state / step / observe``,
  ``state_change``); ``LaDModel`` implements it, ``LaDState``, ``LaDFluxes``, ``Numerics``.
- ``Closure``, ``BulkClosure``, ``AutodiffClosure``, ``SurfaceContext``, ``TurbulentFluxes``: the
  pluggable H/E closure.
- ``rollout``, ``rollout_reduce``, ``simulate``, ``spin_up``: time integration (stacked outputs; a
  streaming sum of a per-step function such as a loss; the compiled large-grid forward).
- ``synthetic_forcing``: deterministic test forcing.
"""

from .closure import AutodiffClosure, BulkClosure, Closure, SurfaceContext, TurbulentFluxes
from .forcing import FORCING_VARIABLES, Forcing, forcing_from_datasets
from .interface import AbstractLandModel
from .lad import OUTPUT_NAMES, LaDFluxes, LaDModel, LaDState, Numerics
from .parameters import (
    ALLOWED_IGBP,
    CALIBRATABLE,
    IGBP_TO_LAD,
    OPEN_WATER_PARAMETERS,
    PARAMETERS,
    ParameterSpec,
    Params,
    default_params,
    from_unconstrained,
    parameter_table,
    reference_height,
    to_unconstrained,
)
from .rollout import (
    DEFAULT_CHUNK,
    GRADIENT_CHUNK,
    LARGE_BATCH_CELLS,
    RUN_TIME_CELLS,
    RUN_TIME_OPTIONS,
    chunk_length,
    rollout,
    rollout_reduce,
    run_time_jit,
    simulate,
    spin_up,
)
from .smooth import run_time_code
from .soil import LAYER_THICKNESS, implicit_heat_step, layer_centres, soil_heat_storage
from .synthetic import synthetic_forcing
from .turbulence import (
    STABILITY_SCHEMES,
    aerodynamic_resistance,
    bulk_richardson,
    neutral_aerodynamic_resistance,
)

__all__ = [
    "ALLOWED_IGBP",
    "AbstractLandModel",
    "AutodiffClosure",
    "BulkClosure",
    "CALIBRATABLE",
    "Closure",
    "DEFAULT_CHUNK",
    "GRADIENT_CHUNK",
    "FORCING_VARIABLES",
    "Forcing",
    "IGBP_TO_LAD",
    "LARGE_BATCH_CELLS",
    "LAYER_THICKNESS",
    "LaDFluxes",
    "LaDModel",
    "LaDState",
    "Numerics",
    "OUTPUT_NAMES",
    "OPEN_WATER_PARAMETERS",
    "PARAMETERS",
    "RUN_TIME_CELLS",
    "RUN_TIME_OPTIONS",
    "ParameterSpec",
    "Params",
    "STABILITY_SCHEMES",
    "SurfaceContext",
    "TurbulentFluxes",
    "aerodynamic_resistance",
    "bulk_richardson",
    "chunk_length",
    "default_params",
    "forcing_from_datasets",
    "from_unconstrained",
    "implicit_heat_step",
    "layer_centres",
    "neutral_aerodynamic_resistance",
    "parameter_table",
    "reference_height",
    "rollout",
    "rollout_reduce",
    "run_time_code",
    "run_time_jit",
    "simulate",
    "soil_heat_storage",
    "spin_up",
    "synthetic_forcing",
    "to_unconstrained",
]
