"""Evaluation: metrics and skill tables (`metrics`), figures (`plots`), the run report (`report`).

``build_report`` is imported lazily so that ``import hybridlsm.evaluation`` does not load matplotlib.
"""

from hybridlsm.evaluation.metrics import (
    SCALES,
    SKILL_COLUMNS,
    aggregate,
    bias,
    closure_ratio,
    crps_ensemble,
    crps_gaussian,
    energy_balance_residual,
    interval_scores,
    kge,
    kge_2012,
    kge_2012_components,
    kge_components,
    mae,
    mse,
    nme,
    nse,
    pearson_r,
    percent_bias,
    r_squared,
    rmse,
    skill_table,
)

__all__ = [
    "SCALES",
    "SKILL_COLUMNS",
    "aggregate",
    "bias",
    "build_report",
    "closure_ratio",
    "crps_ensemble",
    "crps_gaussian",
    "energy_balance_residual",
    "interval_scores",
    "kge",
    "kge_2012",
    "kge_2012_components",
    "kge_components",
    "mae",
    "mse",
    "nme",
    "nse",
    "pearson_r",
    "percent_bias",
    "r_squared",
    "rmse",
    "skill_table",
]


def __getattr__(name: str):
    if name == "build_report":
        from hybridlsm.evaluation.report import build_report

        return build_report
    raise AttributeError(f"module 'hybridlsm.evaluation' has no attribute {name!r}")
