"""Flux-tower and gridded data in one canonical xarray form (docs/architecture.md §1).

Readers (a registry of formats, :func:`available_formats`; :func:`read_site` detects the format
or takes ``format=``), the variable table (:data:`VARIABLES`),
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
from .ameriflux import read_ameriflux_base
from .readers import (
    Reader,
    available_formats,
    detect_format,
    get_reader,
    read_site,
    read_sites,
    register_reader,
)
from .schema import (
    DERIVED_VARIABLES,
    FORCING_VARIABLES,
    SITE_METADATA,
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
    "SITE_METADATA",
    "TARGET_VARIABLES",
    "TEST",
    "TRAIN",
    "UNUSED",
    "VALIDATION",
    "VARIABLES",
    "DataError",
    "DataWarning",
    "Reader",
    "Variable",
    "Windows",
    "add_derived",
    "apply_qc",
    "available_formats",
    "check_no_leakage",
    "detect_format",
    "energy_balance_closure",
    "estimate_lwdown",
    "fill_lwdown",
    "fill_report",
    "find_gaps",
    "gap_report",
    "get_reader",
    "inspect_dataset",
    "inspect_file",
    "leave_one_site_out",
    "liquid_fraction",
    "mean_diurnal_cycle",
    "partition_precip",
    "prepare_forcing",
    "qc_mask",
    "read_ameriflux_base",
    "read_fluxnet_csv",
    "read_gridded",
    "read_plumber2",
    "read_site",
    "read_sites",
    "read_sites_table",
    "register_reader",
    "site_metadata",
    "site_split_labels",
    "split_by_time",
    "toa_shortwave",
    "training_windows",
    "variables_table",
]
