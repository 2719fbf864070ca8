"""Reader for AmeriFlux BASE half-hourly/hourly CSV files (``AMF_<SITE>_BASE_HH_<version>.csv``).

The format as AmeriFlux distributes it: ``#`` comment lines before the header (``# Site: US-CRT``,
``# Version: 2-5``), CRLF line ends, often no final newline, missing ``-9999``,
``TIMESTAMP_START``/``TIMESTAMP_END`` (``YYYYMMDDHHMM``, local standard time), measured values only
(not gap-filled, no QC columns: the dataset has no ``<var>_qc``, so every present value counts as
measured). Columns carry AmeriFlux BASE names in the BASE standard units, which are the FLUXNET
units of :data:`hybridlsm.data.schema.VARIABLES` (TA degC, PA kPa, P mm per step, SWC %, ...); the
conversion to canonical units is the FLUXNET one.

Which column gives a variable (:data:`BASE_NAMES` maps canonical name -> BASE base name):

1. the plain base name (``TA``, ``H``, ``SWC``) if present;
2. else the layer-aggregated ``<name>_<n>`` with the smallest ``n`` (``SWC_1``);
3. else the position-qualified ``<name>_<H>_<V>_<R>`` columns of the smallest vertical index
   ``V`` (AmeriFlux numbers V from the top above ground and downward from the surface in the soil,
   so this is the topmost / shallowest level). Several such columns (horizontal positions H or
   replicates R, e.g. ``G_1_1_1`` and ``G_2_1_1``) are replicate sensors: the value is their mean
   where **all** of them are present and missing where only some are. Those steps are counted,
   warned about (DataWarning) and recorded in the variable's attrs (``replicate_columns``,
   ``replicate_rule``, ``n_partial_replicates``) and in ``attrs["repairs"]``.

Not derived here (as in the FLUXNET reader): VPD when the file has none — the canonical US-CRT file
computed ``VPD_F`` from TA and RH; here VPD stays absent and :func:`hybridlsm.data.add_derived`
derives it. Site metadata are not in BASE files: they come from a ``sites.csv`` table (``sites=``,
or ``sites.csv`` beside the file), looked up by file name then site id, and ``metadata=``;
anything still missing is NaN/"" and reported (``attrs["missing_metadata"]`` and a DataWarning).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from .checks import check_plausible, check_vpd_consistency, where
from .fluxnet import (
    _check_converted,
    _check_empty_columns,
    _check_expected_period,
    _numeric_column,
    _parse_table,
    _read_lines,
    _site_attrs,
    _time_axis,
    set_soil_depths,
)
from .readers import Reader, register_reader
from .schema import VARIABLES, DataError, DataWarning

__all__ = ["read_ameriflux_base", "BASE_NAMES", "parse_base_filename", "base_columns"]

BASE_NAMES: dict[str, str] = {
    "Tair": "TA",
    "VPD": "VPD",
    "RH": "RH",
    "Psurf": "PA",
    "Wind": "WS",
    "SWdown": "SW_IN",
    "LWdown": "LW_IN",
    "Precip": "P",
    "Ustar": "USTAR",
    "CO2air": "CO2",
    "Rnet": "NETRAD",
    "SWup": "SW_OUT",
    "LWup": "LW_OUT",
    "Qg": "G",
    "Qh": "H",
    "Qle": "LE",
    "SoilTemp": "TS",
    "SoilMoistVol": "SWC",
}
"""Canonical name -> AmeriFlux BASE base name (units: those of ``VARIABLES[name].fluxnet_units``)."""

_FILENAME = re.compile(r"^AMF_(?P<site>[A-Za-z]{2}-[A-Za-z0-9]{3})_BASE_(?P<res>HH|HR)_(?P<version>[\w-]+)\.csv$")


def parse_base_filename(name: str) -> dict:
    """``{'site': 'US-CRT', 'res': 'HH', 'version': '2-5'}`` from a BASE file name, or ``{}``."""
    m = _FILENAME.match(name)
    return m.groupdict() if m else {}


def base_columns(header: list[str], base: str) -> tuple[list[str], str]:
    """The column(s) of ``header`` that give base name ``base`` and how they were chosen
    (``'plain'``, ``'layer'``, ``'replicates'``); ``([], '')`` if none (module docstring, rules 1-3)."""
    if base in header:
        return [base], "plain"
    layer = re.compile(rf"^{re.escape(base)}_(\d+)$")
    layers = sorted((int(m.group(1)), c) for c in header if (m := layer.match(c)))
    if layers:
        return [layers[0][1]], "layer"
    pos = re.compile(rf"^{re.escape(base)}_(\d+)_(\d+)_(\d+)$")
    qualified = [(int(m.group(2)), int(m.group(1)), int(m.group(3)), c) for c in header if (m := pos.match(c))]
    if qualified:
        top = min(q[0] for q in qualified)
        return [c for v, h, r, c in sorted(qualified) if v == top], "replicates"
    return [], ""


def _header_comments(comments: list[str]) -> dict[str, str]:
    """``{'Site': 'US-CRT', 'Version': '2-5'}`` from ``Key: value`` comment lines."""
    out = {}
    for c in comments:
        key, sep, value = c.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def read_ameriflux_base(
    path: str | Path,
    *,
    site_id: str | None = None,
    sites: str | Path | pd.DataFrame | None = None,
    metadata: dict | None = None,
    depths: dict | None = None,
) -> xr.Dataset:
    """Read an AmeriFlux BASE CSV into the canonical dataset (docs/architecture.md §1).

    ``site_id``: default from the ``# Site:`` comment, else the file name (the two must agree).
    ``sites``: a ``sites.csv`` table (default ``sites.csv`` beside the file), looked up by file
    name then site id. ``metadata``: attrs that override or complete the table. ``depths``:
    measurement depth [m] of the soil variables read (the shallowest level, rules 1-3), e.g.
    ``{"SoilTemp": 0.05}``; BASE files do not state it (it is in the site's BADM), so NaN when not
    given (:func:`hybridlsm.data.fluxnet.set_soil_depths`).
    """
    path = Path(path)
    file = str(path)
    header, body, lines, comments = _read_lines(path, comment_prefix="#", final_newline_expected=False)
    head = _header_comments(comments)
    info = parse_base_filename(path.name)
    site_in_file = head.get("Site", "")
    if site_in_file and info.get("site") and site_in_file != info["site"]:
        raise DataError(
            f"{file}: the comment line says Site: {site_in_file} but the file name says "
            f"{info['site']}; expected the same site"
        )
    site = site_id or site_in_file or info.get("site")
    df = _parse_table(header, body, file=file, text_columns=("TIMESTAMP_START", "TIMESTAMP_END"))
    if "TIMESTAMP_START" not in header:
        raise DataError(
            f"{file}: missing required column TIMESTAMP_START (with TIMESTAMP_END); header starts "
            f"{header[:5]}"
        )
    time, _, pos, res, step_s = _time_axis(df, header, info.get("res"), file=file, lines=lines)
    if res not in ("HH", "HR"):
        raise DataError(f"{file}: time step {step_s:g} s; expected half-hourly or hourly BASE data")
    n = len(time)

    used = {"TIMESTAMP_START", "TIMESTAMP_END"}
    data_vars: dict[str, xr.DataArray] = {}
    raw_cols: dict[str, np.ndarray] = {}
    repairs: list[str] = []
    for var, base in BASE_NAMES.items():
        cols, how = base_columns(header, base)
        if not cols:
            continue
        spec = VARIABLES[var]
        declared = f"mm per {int(step_s // 60)} min" if var == "Precip" else spec.fluxnet_units
        values = []
        for col in cols:
            used.add(col)
            raw = _numeric_column(df, col, file=file, lines=lines)
            with np.errstate(over="ignore"):  # an overflow is reported by _check_converted
                v = spec.to_canonical(raw, step_s)
            _check_converted(v, raw, file=file, column=col, units=spec.units, lines=lines)
            check_plausible(v, var, file=file, column=col, declared_units=declared, raw=raw,
                            times=time[pos], lines=lines, stacklevel=3)
            values.append(v)
        raw_cols[base] = raw if len(cols) == 1 else None
        attrs = {"units": spec.units, "long_name": spec.long_name, "source_column": ", ".join(cols),
                 "source_units": declared, "conversion": spec.conversion}
        if how == "replicates" and len(cols) > 1:
            v, rule_attrs, repair = _mean_of_replicates(values, cols, var, file=file, times=time[pos],
                                                        lines=lines)
            attrs.update(rule_attrs)
            if repair:
                repairs.append(repair)
        else:
            v = values[0]
        full = np.full(n, np.nan)
        full[pos] = v
        data_vars[var] = xr.DataArray(full, dims="time", attrs=attrs)

    if not data_vars:
        raise DataError(
            f"{file}: no recognised AmeriFlux BASE column; expected e.g. "
            f"{', '.join(BASE_NAMES.values())}"
        )
    _check_empty_columns(data_vars, file=file)
    set_soil_depths(data_vars, depths, file=file)
    if all(raw_cols.get(c) is not None for c in ("TA", "RH", "VPD")):
        check_vpd_consistency(raw_cols["TA"], raw_cols["RH"], raw_cols["VPD"], file=file, column="VPD")

    attrs = _site_attrs(path, {"site": site}, site_id=site_id or site, sites=sites, metadata=metadata)
    if "expected_start" in attrs:
        _check_expected_period(attrs, time, None, step_s, file)
    attrs.update(
        time_step_s=float(step_s),
        time_resolution=res,
        source_file=file,
        source_format="ameriflux-base",
        source_product="BASE",
        source_version=head.get("Version", info.get("version", "")),
        unmapped_columns=", ".join(c for c in header if c not in used),
        time_convention="start of the averaging interval, local standard time",
        qc="none: AmeriFlux BASE values are measured, not gap-filled, and carry no QC flags",
        repairs="\n".join(repairs),
        n_repairs=len(repairs),
    )
    ds = xr.Dataset(data_vars, coords={"time": ("time", np.asarray(time, dtype="datetime64[ns]"))},
                    attrs=attrs)
    ds.time.attrs["long_name"] = "start of the averaging interval (local standard time)"
    return ds


def _mean_of_replicates(values, cols, var, *, file, times, lines):
    """Mean of replicate sensors where all are present, NaN where only some are (counted, warned)."""
    stack = np.vstack(values)
    present = np.isfinite(stack)
    all_present = present.all(axis=0)
    partial = present.any(axis=0) & ~all_present
    mean = stack.mean(axis=0)
    mean[~all_present] = np.nan
    k = int(partial.sum())
    rule = "mean of the replicates where all are present; missing where only some are"
    attrs = {"replicate_columns": ", ".join(cols), "replicate_rule": rule, "n_partial_replicates": k}
    if not k:
        return mean, attrs, ""
    i = int(np.argmax(partial))
    only = ", ".join(f"{c} {int((present[j] & partial).sum())}" for j, c in enumerate(cols))
    msg = (
        f"{file}: {var} from replicate columns {', '.join(cols)}: {k} step(s) with only some "
        f"replicates present set to missing (first at {where(i, times, lines)}; steps with each "
        f"column present among them: {only})"
    )
    warnings.warn(msg, DataWarning, stacklevel=3)
    return mean, attrs, msg


@register_reader
class AmerifluxBaseReader(Reader):
    """AmeriFlux BASE CSV: ``AMF_<SITE>_BASE_HH|HR_<version>.csv`` or a ``.csv`` whose first line is
    ``# Site: ...``; asked before the FLUXNET CSV reader."""

    name = "ameriflux-base"
    description = "AmeriFlux BASE CSV (# Site:/# Version: comment lines), .csv"
    priority = 10
    options = {
        "site_id": "the site (default from the '# Site:' line or the file name)",
        "sites": "sites.csv table, path or DataFrame (default: sites.csv beside the file)",
        "metadata": "attrs that override or complete the site table",
        "depths": "measurement depth [m] of the soil variables, e.g. {SoilTemp: 0.05} (default NaN)",
    }

    def detect(self, path: Path) -> bool:
        if path.suffix.lower() != ".csv":
            return False
        if parse_base_filename(path.name):
            return True
        try:
            with open(path, "rb") as f:
                first = f.read(64)
        except OSError:
            return False
        return first.lstrip(b"\xef\xbb\xbf").startswith(b"# Site:")

    def read(self, path: Path, **options) -> xr.Dataset:
        return read_ameriflux_base(path, **options)
