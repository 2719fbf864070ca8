"""Flux-tower and gridded data in one canonical xarray form (docs/architecture.md §1).

Readers (:func:`read_site` dispatches on the format), the variable table (:data:`VARIABLES`),
preprocessing (QC, derived variables, LWdown estimate, precipitation phase, gaps,
:func:`prepare_forcing`), splits and training windows, and file summaries (:func:`inspect_file`).
"""

from .fluxnet import read_fluxnet_csv, read_sites_table, site_metadata
from .gridded import GRIDDED_VARIABLES, KNOWN_WRONG_UNITS, read_gridded
from .inspect import energy_balance_closure, inspect_dataset, inspect_file
from .plumber2 import read_plumber2
from .preprocess import (
    add_derived,
    apply_qc,
    estimate_lwdown,
    fill_lwdown,
    fill_report,
    find_gaps,
    gap_report,
    liquid_fraction,
    mean_diurnal_cycle,
    partition_precip,
    prepare_forcing,
    toa_shortwave,
)
from .readers import detect_format, read_site, read_sites
from .schema import (
    DERIVED_VARIABLES,
    FORCING_VARIABLES,
    TARGET_VARIABLES,
    VARIABLES,
    DataError,
    DataWarning,
    Variable,
    qc_mask,
    variables_table,
)
from .splits import (
    TEST,
    TRAIN,
    UNUSED,
    VALIDATION,
    Windows,
    check_no_leakage,
    leave_one_site_out,
    site_split_labels,
    split_by_time,
    training_windows,
)

__all__ = [
    "DERIVED_VARIABLES",
    "FORCING_VARIABLES",
    "GRIDDED_VARIABLES",
    "KNOWN_WRONG_UNITS",
    "TARGET_VARIABLES",
    "TEST",
    "TRAIN",
    "UNUSED",
    "VALIDATION",
    "VARIABLES",
    "DataError",
    "DataWarning",
    "Variable",
    "Windows",
    "add_derived",
    "apply_qc",
    "check_no_leakage",
    "detect_format",
    "energy_balance_closure",
    "estimate_lwdown",
    "fill_lwdown",
    "fill_report",
    "find_gaps",
    "gap_report",
    "inspect_dataset",
    "inspect_file",
    "leave_one_site_out",
    "liquid_fraction",
    "mean_diurnal_cycle",
    "partition_precip",
    "prepare_forcing",
    "qc_mask",
    "read_fluxnet_csv",
    "read_gridded",
    "read_plumber2",
    "read_site",
    "read_sites",
    "read_sites_table",
    "site_metadata",
    "site_split_labels",
    "split_by_time",
    "toa_shortwave",
    "training_windows",
    "variables_table",
]
