"""Summaries of data files for ``hybridlsm data inspect``: period, time step, variables with units
and valid fractions, gaps longer than a day, the observed energy-balance closure, the site metadata
that no source states (``missing_metadata``) and the repairs the reader made (``repairs``).

Closure (shared/data README §5.4): ``EBR = sum(Qh + Qle) / sum(Rnet - Qg)`` over the steps where
all four are present (with ``max_qc``: and the Qh and Qle QC flags are at most ``max_qc``). A file
without ground heat flux gets ``sum(Qh + Qle) / sum(Rnet)`` and says so (``with_ground_heat``
False and a note). No storage terms.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from .preprocess import find_gaps
from .readers import read_site
from .schema import DataError, DataWarning, _is_flag, qc_mask

__all__ = ["energy_balance_closure", "inspect_dataset", "inspect_file"]


def energy_balance_closure(ds: xr.Dataset, max_qc: int | None = None) -> dict:
    """``{"ratio", "n", "with_ground_heat", "max_qc", "qc_applied", "note"}`` for a site dataset
    (see the module docstring)."""
    need = [v for v in ("Qh", "Qle", "Rnet") if v not in ds or not np.isfinite(ds[v].values).any()]
    if need or any(d != "time" for d in ds.dims):
        return {"ratio": None, "n": 0, "with_ground_heat": False, "max_qc": max_qc, "qc_applied": False,
                "note": f"no closure: {', '.join(need) or 'gridded data'} missing"}
    has_g = "Qg" in ds and bool(np.isfinite(ds["Qg"].values).any())
    ok = qc_mask(ds, "Qh", max_qc).values & qc_mask(ds, "Qle", max_qc).values & ds["Rnet"].notnull().values
    avail = ds["Rnet"].values
    if has_g:
        ok &= ds["Qg"].notnull().values
        avail = ds["Rnet"].values - ds["Qg"].values
    n = int(ok.sum())
    if n == 0:
        return {"ratio": None, "n": 0, "with_ground_heat": has_g, "max_qc": max_qc, "qc_applied": False,
                "note": "no step with all of Qh, Qle, Rnet" + (", Qg" if has_g else "") + " present"}
    turb = ds["Qh"].values[ok] + ds["Qle"].values[ok]
    ratio = float(turb.sum() / avail[ok].sum())
    note = "sum(Qh+Qle)/sum(Rnet-Qg)" if has_g else (
        "no ground heat flux (Qg) in the file: closure without G, sum(Qh+Qle)/sum(Rnet)")
    qc_applied = max_qc is not None and ("Qh_qc" in ds or "Qle_qc" in ds)
    if max_qc is not None:
        note += f"; Qh, Qle QC <= {max_qc}" if qc_applied else "; no QC flags in the file: all steps used"
    return {"ratio": ratio, "n": n, "with_ground_heat": has_g, "max_qc": max_qc,
            "qc_applied": qc_applied, "note": note}


def inspect_dataset(ds: xr.Dataset, max_qc: int | None = None) -> dict:
    """The summary of a canonical dataset (JSON-serialisable)."""
    t = pd.DatetimeIndex(ds["time"].values)
    step = float(ds.attrs.get("time_step_s", np.nan))
    end = pd.Timestamp(ds["time_end"].values[-1]) if "time_end" in ds.coords else t[-1] + pd.Timedelta(seconds=step)
    variables = []
    gaps = {}
    for v in ds.data_vars:
        if _is_flag(v):
            continue
        da = ds[v]
        valid = float(da.notnull().mean().values)
        entry = {"name": v, "units": da.attrs.get("units", ""), "valid_fraction": round(valid, 4),
                 "source": da.attrs.get("source_column", da.attrs.get("source_variable", "")),
                 "qc": "flags" if f"{v}_qc" in ds else ("fractions" if f"{v}_qc_fraction" in ds else "none")}
        variables.append(entry)
        g = find_gaps(ds, v)
        long = g[g["hours"] > 24.0]
        if len(long):
            gaps[v] = [{"start": str(r.start), "end": str(r.end), "hours": float(r.hours)} for r in long.itertuples()]
    return {
        "file": ds.attrs.get("source_file", ""),
        "format": ds.attrs.get("source_format", ""),
        "site_id": ds.attrs.get("site_id", ""),
        "site_name": ds.attrs.get("site_name", ""),
        "start": str(t[0]),
        "end": str(end),
        "n_steps": int(len(t)),
        "time_step_s": step,
        "time_resolution": ds.attrs.get("time_resolution", ""),
        "dims": {k: int(v) for k, v in ds.sizes.items()},
        "igbp": ds.attrs.get("igbp", ""),
        "missing_metadata": str(ds.attrs.get("missing_metadata", "")).split(),
        "repairs": str(ds.attrs.get("repairs", "")).splitlines(),
        "variables": variables,
        "gaps_over_1d": gaps,
        "closure": energy_balance_closure(ds, max_qc),
    }


def inspect_file(path: str | Path, max_qc: int | None = None, **read_kwargs) -> dict:
    """Read ``path`` with :func:`read_site` and summarise it; DataWarnings are listed in ``warnings``.

    A file that cannot be read gives ``{"file": ..., "error": message}`` instead of raising.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        try:
            ds = read_site(path, **read_kwargs)
            out = inspect_dataset(ds, max_qc)
        except DataError as exc:
            return {"file": str(path), "error": str(exc),
                    "warnings": [str(w.message) for w in caught if issubclass(w.category, DataWarning)]}
    out["warnings"] = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    return out
