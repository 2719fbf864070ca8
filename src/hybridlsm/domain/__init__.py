"""Domains: N columns (sites or grid cells) on one time axis, their static attributes and layout.

The in-memory form every model runs on (docs/architecture.md §2): ``Domain``; built from
canonical site datasets (``domain_from_sites``) or gridded forcing (``domain_from_grid``);
written back in its layout (``write_site_outputs``, ``write_grid_outputs``).
"""

from .build import IGBP_BY_INDEX, domain_from_grid, domain_from_site, domain_from_sites, static_attributes
from .climate import CLIMATE_ATTRIBUTES, climate_summaries
from .domain import STATIC_ATTRIBUTES, Domain, GridLayout, Layout, SiteLayout
from .write import (
    MODEL_OUTPUT_UNITS,
    alma_dataset,
    site_file_name,
    write_grid_outputs,
    write_netcdf,
    write_site_outputs,
)

__all__ = [
    "CLIMATE_ATTRIBUTES",
    "Domain",
    "GridLayout",
    "IGBP_BY_INDEX",
    "Layout",
    "MODEL_OUTPUT_UNITS",
    "STATIC_ATTRIBUTES",
    "SiteLayout",
    "alma_dataset",
    "climate_summaries",
    "domain_from_grid",
    "domain_from_site",
    "domain_from_sites",
    "site_file_name",
    "static_attributes",
    "write_grid_outputs",
    "write_netcdf",
    "write_site_outputs",
]
