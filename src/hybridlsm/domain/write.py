"""ALMA netCDF writers that restore a Domain's layout.

Model outputs are ``{name: (T, N)}`` (``SoilTemp``: ``(T, N, L)``). A site layout is written as
one file per site (dims ``time`` [, ``soil_layer``], the PLUMBER2 convention); a grid layout as one
file with dims ``(time, y, x)`` (cells that are not columns are NaN), with ``lat``/``lon`` where
known. Files are written atomically with a SHA-256 sidecar ``<file>.sha256`` (``hybridlsm.rundir``):
a finished file is never half-written, and a damaged one is found.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from ..data.schema import VARIABLES
from ..rundir import write_checked
from .domain import Domain

__all__ = ["MODEL_OUTPUT_UNITS", "write_netcdf", "alma_dataset", "site_file_name", "time_attrs", "time_axis_attrs", "variable_attrs",
           "write_site_outputs", "write_grid_outputs"]  # fmt: skip

#: Units of model outputs that are not observed variables (ALMA conventions).
MODEL_OUTPUT_UNITS = {
    "Qh": "W m-2", "Qle": "W m-2", "Qg": "W m-2", "Rnet": "W m-2", "Qf": "W m-2", "Evap": "kg m-2 s-1",
    "Qs": "kg m-2 s-1", "Qsb": "kg m-2 s-1", "SoilTemp": "K", "SoilMoist": "kg m-2", "SWE": "kg m-2",
    "GWS": "kg m-2", "AvgSurfT": "K", "SR": "J m-2", "Kh": "m2 s-1", "ra": "s m-1", "rs": "s m-1", "RiB": "1",
    "Qirrig": "kg m-2 s-1",
}  # fmt: skip


def write_netcdf(ds: xr.Dataset, path: Path) -> None:
    """Write atomically with a checksum sidecar (resume trusts only what verifies)."""
    write_checked(path, ds.to_netcdf)


#: What the predictive standard deviations of a flux (``<flux>_sd...``, neural.mc_dropout) are.
SD_PARTS = {
    "_sd": "total predictive standard deviation of {} (law of total variance: epistemic and aleatoric parts; "
           "equal to {}_sd_epistemic where no {}_sd_aleatoric is written)",
    "_sd_epistemic": "epistemic standard deviation of {} (a model with dropout: spread of its MC-dropout sample "
                     "means, ddof 1; an ensemble: the members' weighted variance about their mean, ddof 0, plus "
                     "the weighted mean of their own epistemic variances)",
    "_sd_aleatoric": "aleatoric standard deviation of {} (root of the mean variance of a heteroscedastic head)",
}


def variable_attrs(name: str) -> dict:
    """The netCDF/zarr attributes of the output ``name``: its units and, for a flux or a predictive
    SD, its long_name."""
    for part, text in SD_PARTS.items():
        if name.endswith(part) and len(name) > len(part):
            flux = name[: -len(part)]
            return variable_attrs(flux) | {"long_name": text.format(flux, flux, flux)}
    unit = MODEL_OUTPUT_UNITS.get(name, VARIABLES[name].units if name in VARIABLES else None)
    # a flux's sign convention (a state's observed long_name, e.g. SoilTemp's "shallowest tower layer",
    # is not the model's)
    described = {"long_name": VARIABLES[name].long_name} if name in VARIABLES and VARIABLES[name].kind == "flux" else {}
    return described if unit is None else {"units": unit, **described}


def time_axis_attrs(convention: object, utc_offsets_h: np.ndarray | Sequence[float]) -> dict[str, object]:
    """What an output's time axis is, for its global attributes: the readers' ``convention``
    (interval start, local standard time) and the offset from UTC that the given (finite) offsets
    of its columns or cells share (none where they differ or none is known). The time units carry
    no offset, which CF reads as UTC: these say otherwise."""
    out: dict[str, object] = {}
    if isinstance(convention, str) and convention:
        out["time_convention"] = convention
    offsets = np.asarray(utc_offsets_h, np.float64).ravel()
    offsets = offsets[np.isfinite(offsets)]
    if offsets.size and np.all(offsets == offsets[0]):
        out["utc_offset_h"] = float(offsets[0])
    return out


def time_attrs(domain: Domain, column: int | None = None) -> dict[str, object]:
    """``time_axis_attrs`` of ``domain``'s outputs: of ``column`` (a site), or None: the grid's (its
    columns share one time axis)."""
    offsets = np.asarray(domain.static_value("utc_offset_h"), np.float64) if "utc_offset_h" in domain.static else []
    if column is not None and len(offsets):
        offsets = offsets[[column]]
    return time_axis_attrs(domain.data.attrs.get("time_convention"), offsets)


def site_file_name(site_id: str) -> str:
    """A file or folder name for a site id: the id itself when it is a safe path component."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in site_id).lstrip(".")
    return safe or "site"


def alma_dataset(outputs: Mapping[str, np.ndarray], time: np.ndarray, attrs: Mapping[str, object]) -> xr.Dataset:
    """One column's outputs ``{name: (T,) or (T, L)}`` as an ALMA dataset on ``time``."""
    from ..physics import LAYER_THICKNESS, layer_centres

    data = {}
    for name, values in outputs.items():
        values = np.asarray(values, dtype=np.float64)
        dims = ("time", "soil_layer")[: values.ndim]
        data[name] = (dims, values, variable_attrs(name))
    ds = xr.Dataset(data, coords={"time": time})
    if "soil_layer" in ds.dims:
        ds = ds.assign_coords(soil_layer=np.asarray(layer_centres(LAYER_THICKNESS)))
        ds["soil_layer_thickness"] = ("soil_layer", np.asarray(LAYER_THICKNESS), {"units": "m"})
    ds.attrs.update({k: v for k, v in attrs.items() if isinstance(v, (str, int, float))})
    return ds


def write_site_outputs(domain: Domain, outputs: Mapping[str, np.ndarray], folder: Path, file_name: str,
                       attrs: Mapping[str, object]) -> list[Path]:
    """One file ``folder/<site>/<file_name>`` per site of a site-layout domain."""
    paths = []
    for j, sid in enumerate(domain.column_ids):
        column = {k: np.asarray(v)[:, j] for k, v in outputs.items()}
        ds = alma_dataset(column, domain.time, {**time_attrs(domain, j), **attrs, "site": sid})
        if "forcing_filled" in domain.data:  # which outputs were driven by filled or estimated forcing
            ds["forcing_filled"] = ("time", domain.data["forcing_filled"].values[:, j].astype(np.int8),
                                    dict(domain.data["forcing_filled"].attrs))
        path = Path(folder) / site_file_name(sid) / file_name
        write_netcdf(ds, path)
        paths.append(path)
    return paths


def write_grid_outputs(domain: Domain, outputs: Mapping[str, np.ndarray], path: Path,
                       attrs: Mapping[str, object]) -> Path:
    """Outputs of a grid-layout domain on ``(time, y, x)`` (``soil_layer`` after ``time``)."""
    layout = domain.layout
    (ny, nx), iy, ix = domain.grid_cells()
    data = {}
    for name, values in outputs.items():
        values = np.asarray(values, dtype=np.float64)
        full = np.full((values.shape[0], ny, nx) + values.shape[2:], np.nan)
        full[:, iy, ix] = values
        if values.ndim == 3:  # (T, N, L) -> (time, soil_layer, y, x)
            data[name] = (("time", "soil_layer", "y", "x"), np.moveaxis(full, -1, 1), variable_attrs(name))
        else:
            data[name] = (("time", "y", "x"), full, variable_attrs(name))
    coords = {"time": domain.time, "y": ("y", layout.y, layout.y_attrs), "x": ("x", layout.x, layout.x_attrs)}
    ds = xr.Dataset(data, coords=coords)
    if np.isfinite(layout.lat).any():
        ds = ds.assign_coords(lat=(("y", "x"), layout.lat, {"units": "degrees_north"}),
                              lon=(("y", "x"), layout.lon, {"units": "degrees_east"}))  # fmt: skip
    if "soil_layer" in ds.dims:
        from ..physics import LAYER_THICKNESS, layer_centres

        ds = ds.assign_coords(soil_layer=np.asarray(layer_centres(LAYER_THICKNESS)))
    igbp = np.full((ny, nx), "", object)
    igbp[iy, ix] = domain.static_value("igbp")
    ds["igbp"] = (("y", "x"), igbp.astype(str), {"long_name": "IGBP class of the cell ('' unknown or not a column; provenance.json says what was used)"})
    ds.attrs.update({k: v for k, v in {**time_attrs(domain), **attrs}.items() if isinstance(v, (str, int, float))})
    ds.attrs["grid"] = layout.name
    write_netcdf(ds, path)
    return Path(path)
