"""Preprocessing of canonical site datasets: QC masking, unit helpers, derived variables,
incoming-longwave estimation, precipitation phase, gap detection and gap-free model forcing.

Every value that this module estimates or fills is flagged (``<var>_estimated``, ``<var>_filled``)
and counted in the report that :func:`prepare_forcing` attaches; nothing is changed silently.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import xarray as xr

from .. import thermo
from ..constants import T_FREEZE
from . import radiation
from .checks import FORCING_CHECKED, check_forcing_ranges, mask_impossible_observations, runs_of_true
from .schema import FORCING_VARIABLES, VARIABLES, DataError, DataWarning, _is_flag, qc_mask
from .units import conversion

__all__ = [
    "apply_qc",
    "celsius_to_kelvin",
    "kelvin_to_celsius",
    "kpa_to_pa",
    "hpa_to_pa",
    "mm_per_step_to_rate",
    "rate_to_mm_per_step",
    "to_canonical",
    "add_derived",
    "toa_shortwave",
    "estimate_lwdown",
    "fill_lwdown",
    "liquid_fraction",
    "partition_precip",
    "find_gaps",
    "gap_report",
    "mean_diurnal_cycle",
    "prepare_forcing",
    "fill_report",
    "forcing_filled",
    "repair_summary",
]


# --------------------------------------------------------------------------------------------
# QC and units


def apply_qc(ds: xr.Dataset, max_qc: int, variables=None, *, min_good_fraction=None) -> xr.Dataset:
    """Copy of ``ds`` with values set to NaN where :func:`qc_mask` fails (QC flag > ``max_qc``).

    Only variables that have a ``_qc`` (or ``_qc_fraction``) companion are touched (all of them
    when ``variables`` is None). The number of values removed per variable is recorded in the
    variable's attrs ``qc_removed`` and ``qc_max``.
    """
    out = ds.copy()
    names = variables or [v for v in ds.data_vars if not _is_flag(v)]
    for v in names:
        if f"{v}_qc" not in ds and f"{v}_qc_fraction" not in ds:
            continue
        keep = qc_mask(ds, v, max_qc, min_good_fraction=min_good_fraction, include_filled=True)
        removed = int((ds[v].notnull() & ~keep).sum())
        out[v] = ds[v].where(keep)
        out[v].attrs = {**ds[v].attrs, "qc_max": int(max_qc), "qc_removed": removed}
    return out


def celsius_to_kelvin(t_c):
    """degC -> K."""
    return t_c + T_FREEZE


def kelvin_to_celsius(t_k):
    """K -> degC."""
    return t_k - T_FREEZE


def kpa_to_pa(p_kpa):
    """kPa -> Pa."""
    return p_kpa * 1000.0


def hpa_to_pa(p_hpa):
    """hPa -> Pa."""
    return p_hpa * 100.0


def mm_per_step_to_rate(p_mm, time_step_s: float):
    """Precipitation amount per time step [mm] -> rate [kg m-2 s-1] (1 mm of water = 1 kg m-2)."""
    return p_mm / float(time_step_s)


def rate_to_mm_per_step(rate, time_step_s: float):
    """Rate [kg m-2 s-1] -> amount per time step [mm]."""
    return rate * float(time_step_s)


def to_canonical(values, var: str, unit: str, time_step_s: float | None = None):
    """Convert ``values`` in ``unit`` to the canonical unit of ``var`` (see :mod:`.units`)."""
    scale, offset = conversion(var, unit, time_step_s, where="to_canonical")
    return values * scale + offset


# --------------------------------------------------------------------------------------------
# derived variables


def _vapour_pressure(ds: xr.Dataset):
    """Vapour pressure e [Pa] from VPD, RH or Qair (in that order), or None."""
    if "VPD" in ds and "Tair" in ds:
        return thermo.saturation_vapour_pressure(ds["Tair"]) - ds["VPD"] * 100.0, "VPD, Tair"
    if "RH" in ds and "Tair" in ds:
        return thermo.saturation_vapour_pressure(ds["Tair"]) * ds["RH"] / 100.0, "RH, Tair"
    if "Qair" in ds and "Psurf" in ds:
        return thermo.vapour_pressure_from_specific_humidity(ds["Qair"], ds["Psurf"]), "Qair, Psurf"
    return None, ""


def add_derived(ds: xr.Dataset, variables=("VPD", "RH", "Qair", "rho_air", "lambda_v")) -> xr.Dataset:
    """Add derived variables that are absent and computable (thermo.py; physics-reference §3).

    VPD [hPa] and RH [%] from each other (or from Qair), Qair [kg kg-1] from VPD/RH, Tair and
    Psurf, ``rho_air`` [kg m-3] = Psurf / (R_d Tair (1 + 0.608 Qair)), ``lambda_v`` [J kg-1]
    from Tair. Existing variables are never overwritten; each new one has ``derived_from``.
    """
    out = ds.copy()
    e, src = _vapour_pressure(out)
    if "VPD" in variables and "VPD" not in out and e is not None and "Tair" in out:
        out["VPD"] = (thermo.saturation_vapour_pressure(out["Tair"]) - e) / 100.0
        out["VPD"].attrs = _attrs("VPD", src)
    if "RH" in variables and "RH" not in out and e is not None and "Tair" in out:
        out["RH"] = 100.0 * e / thermo.saturation_vapour_pressure(out["Tair"])
        out["RH"].attrs = _attrs("RH", src)
    if "Qair" in variables and "Qair" not in out and e is not None and "Psurf" in out:
        out["Qair"] = thermo.specific_humidity_from_vapour_pressure(e, out["Psurf"])
        out["Qair"].attrs = _attrs("Qair", src + ", Psurf")
    if "rho_air" in variables and "rho_air" not in out and {"Tair", "Psurf"} <= set(out.data_vars):
        q = out["Qair"] if "Qair" in out else 0.0
        out["rho_air"] = thermo.air_density(out["Tair"], out["Psurf"], q)
        out["rho_air"].attrs = _attrs("rho_air", "Tair, Psurf" + (", Qair" if "Qair" in out else ""))
    if "lambda_v" in variables and "lambda_v" not in out and "Tair" in out:
        out["lambda_v"] = thermo.latent_heat_vaporisation(out["Tair"])
        out["lambda_v"].attrs = _attrs("lambda_v", "Tair")
    return out


def _attrs(var: str, derived_from: str) -> dict:
    spec = VARIABLES[var]
    return {"units": spec.units, "long_name": spec.long_name, "derived_from": derived_from,
            "conversion": spec.conversion}


# --------------------------------------------------------------------------------------------
# longwave


def _site_geometry(ds: xr.Dataset, what: str):
    a = ds.attrs
    lat, lon = float(a.get("latitude", np.nan)), float(a.get("longitude", np.nan))
    if not (np.isfinite(lat) and np.isfinite(lon)):
        raise DataError(
            f"{a.get('source_file', '<dataset>')}: {what} needs the site latitude and longitude "
            f"(attrs latitude={lat}, longitude={lon}); give them with metadata={{...}} when reading"
        )
    off = float(a.get("utc_offset_h", np.nan))
    if not np.isfinite(off):
        off = float(np.round(lon / 15.0))
    return lat, lon, off


def toa_shortwave(ds: xr.Dataset) -> xr.DataArray:
    """Top-of-atmosphere shortwave [W m-2] for each interval of a site dataset (see radiation.py).

    Uses attrs latitude, longitude and utc_offset_h (when unknown: round(longitude / 15)).
    """
    lat, lon, off = _site_geometry(ds, "top-of-atmosphere radiation")
    toa = radiation.toa_shortwave(ds["time"].values, lat, lon, off, float(ds.attrs["time_step_s"]))
    return xr.DataArray(toa, dims="time", coords={"time": ds["time"]}, name="SWdown_toa",
                        attrs={"units": "W m-2", "long_name": "top-of-atmosphere shortwave (interval mean)"})


def estimate_lwdown(
    ds: xr.Dataset,
    method: str = "brutsaert1975",
    cloud_correction: bool = True,
    cloud_window_h: float = 3.0,
    min_clear: float = 200.0,
) -> xr.DataArray:
    """Incoming longwave [W m-2] from Tair, humidity and (for the cloud correction) SWdown.

    Clear-sky emissivity by ``method`` (``brutsaert1975`` default, ``prata1996``,
    ``crawford1999``), corrected for cloud with the Crawford & Duchon (1999) cloud fraction from
    SWdown relative to clear-sky radiation (FAO-56 clear-sky fraction of the top-of-atmosphere
    radiation); see :mod:`.radiation`. Without SWdown (or with ``cloud_correction=False``) the
    clear-sky value is returned. Half-hourly RMSE against the measured LW_IN at US-Wkg
    (May-Dec 2004, 11 496 values): 19.9 W m-2 with the defaults, 29.5 W m-2 clear-sky only.
    """
    for v in ("Tair",):
        if v not in ds:
            raise DataError(f"{ds.attrs.get('source_file', '<dataset>')}: LWdown estimate needs {v}")
    e, _ = _vapour_pressure(ds)
    if e is None:
        raise DataError(
            f"{ds.attrs.get('source_file', '<dataset>')}: LWdown estimate needs humidity (VPD, RH or "
            f"Qair with Psurf); found {sorted(v for v in ds.data_vars if not _is_flag(v))}"
        )
    t = ds["Tair"].values
    month = pd.DatetimeIndex(ds["time"].values).month.values
    cloud = None
    if cloud_correction and "SWdown" in ds:
        step = float(ds.attrs["time_step_s"])
        toa = toa_shortwave(ds).values
        clear = radiation.clear_sky_shortwave(toa, float(ds.attrs.get("elevation", np.nan)))
        window = max(1, int(round(cloud_window_h * 3600.0 / step)))
        cloud = radiation.cloud_fraction(ds["SWdown"].values, clear, min_clear, window)
        if np.isnan(cloud).all():
            cloud = None
    lw = radiation.longwave_down(t, np.asarray(e), cloud, method, month)
    how = f"{method} clear-sky emissivity" + (
        ", Crawford & Duchon (1999) cloud correction from SWdown" if cloud is not None else
        ", no cloud correction")
    return xr.DataArray(lw, dims="time", coords={"time": ds["time"]}, name="LWdown",
                        attrs={"units": "W m-2", "long_name": VARIABLES["LWdown"].long_name,
                               "estimate": how})


def fill_lwdown(ds: xr.Dataset, **kwargs) -> xr.Dataset:
    """Copy of ``ds`` in which missing (or absent) LWdown is estimated; ``LWdown_estimated`` flags them."""
    out = ds.copy()
    if "LWdown" in ds and not ds["LWdown"].isnull().any():
        out["LWdown_estimated"] = xr.zeros_like(ds["LWdown"], dtype=bool)
        out["LWdown_estimated"].attrs = {"long_name": "LWdown estimated from Tair, humidity and SWdown",
                                         "n_estimated": 0}
        return out
    est = estimate_lwdown(ds, **kwargs)
    if "LWdown" in ds:
        missing = ds["LWdown"].isnull()
        attrs = dict(ds["LWdown"].attrs)
        out["LWdown"] = ds["LWdown"].where(~missing, est)
    else:
        missing = xr.ones_like(est, dtype=bool)
        attrs = {"units": "W m-2", "long_name": VARIABLES["LWdown"].long_name,
                 "source": "estimated (absent from the source)"}
        out["LWdown"] = est
    attrs["estimate"] = est.attrs["estimate"]
    out["LWdown"].attrs = attrs
    flag = missing & est.notnull()
    out["LWdown_estimated"] = flag.astype(bool)
    out["LWdown_estimated"].attrs = {"long_name": "LWdown estimated from Tair, humidity and SWdown",
                                     "n_estimated": int(flag.sum())}
    return out


# --------------------------------------------------------------------------------------------
# precipitation phase


def liquid_fraction(t_air, t_all_snow: float = T_FREEZE, t_all_rain: float = T_FREEZE + 2.0):
    """Liquid fraction of precipitation: 0 below ``t_all_snow``, 1 above ``t_all_rain`` [K],
    linear in between (the 0..2 degC ramp of CLM4.5, Oleson et al. 2013)."""
    if t_all_rain <= t_all_snow:
        raise ValueError(f"t_all_rain ({t_all_rain}) must exceed t_all_snow ({t_all_snow})")
    return np.clip((t_air - t_all_snow) / (t_all_rain - t_all_snow), 0.0, 1.0)


def partition_precip(ds: xr.Dataset, t_all_snow: float = T_FREEZE, t_all_rain: float = T_FREEZE + 2.0) -> xr.Dataset:
    """Copy of ``ds`` with ``Rainf`` and ``Snowf`` [kg m-2 s-1] (Rainf + Snowf = Precip)."""
    if "Precip" not in ds or "Tair" not in ds:
        raise DataError(f"{ds.attrs.get('source_file', '<dataset>')}: precipitation phase needs Precip and Tair")
    out = ds.copy()
    f = liquid_fraction(ds["Tair"], t_all_snow, t_all_rain)
    out["Rainf"] = ds["Precip"] * f
    out["Snowf"] = ds["Precip"] - out["Rainf"]
    ramp = f"linear ramp from all snow at {t_all_snow:g} K to all rain at {t_all_rain:g} K"
    out["Rainf"].attrs = {**_attrs("Rainf", "Precip, Tair"), "phase": ramp}
    out["Snowf"].attrs = {**_attrs("Snowf", "Precip, Tair"), "phase": ramp}
    return out


# --------------------------------------------------------------------------------------------
# gaps


def _missing_1d(da: xr.DataArray) -> np.ndarray:
    """Missing mask along time; for gridded data a step is missing where no cell has a value."""
    m = da.isnull()
    other = [d for d in da.dims if d != "time"]
    if other:
        m = m.all(other)
    return np.asarray(m.values, dtype=bool)


def find_gaps(ds: xr.Dataset, var: str) -> pd.DataFrame:
    """Gaps (runs of missing values) of ``ds[var]``: ``variable, start, end, n_steps, hours``.

    ``start`` is the start of the first missing interval and ``end`` the end of the last one
    (= start of the next present value); ``hours`` = n_steps x time step.
    """
    if var not in ds:
        raise DataError(f"{ds.attrs.get('source_file', '<dataset>')}: variable {var!r} not in the dataset")
    step = float(ds.attrs["time_step_s"])
    starts, lengths = runs_of_true(_missing_1d(ds[var]))
    t = pd.DatetimeIndex(ds["time"].values)
    if "time_end" in ds.coords:
        ends = pd.DatetimeIndex(ds["time_end"].values)[starts + lengths - 1]
    else:
        ends = t[starts + lengths - 1] + pd.Timedelta(seconds=step)
    return pd.DataFrame({
        "variable": var,
        "start": t[starts],
        "end": ends,
        "n_steps": lengths.astype(int),
        "hours": lengths * step / 3600.0,
    })


def gap_report(ds: xr.Dataset, variables=None, min_hours: float | None = None) -> pd.DataFrame:
    """:func:`find_gaps` for several variables (default: all but flags), optionally only gaps of at
    least ``min_hours`` (e.g. 24 for gaps longer than a day: use ``min_hours=24`` and ``> 24``)."""
    names = variables or [v for v in ds.data_vars if not _is_flag(v)]
    frames = [find_gaps(ds, v) for v in names]
    out = pd.concat(frames, ignore_index=True) if frames else find_gaps(ds, names[0])
    if min_hours is not None:
        out = out[out["hours"] >= min_hours].reset_index(drop=True)
    return out


def mean_diurnal_cycle(values: np.ndarray, time, time_step_s: float, window_days: int | None = 15):
    """Mean diurnal cycle at every time step: the mean of the same time of day over
    ``time +- window_days`` days (whole record when None; the whole-record mean of that time of
    day where the window has no value). ``values`` has shape (T,) or (T, N).
    """
    v = np.asarray(values, dtype=float)
    squeeze = v.ndim == 1
    if squeeze:
        v = v[:, None]
    t = pd.DatetimeIndex(time)
    slots_per_day = int(round(86400.0 / time_step_s))
    if slots_per_day < 1 or abs(slots_per_day * time_step_s - 86400.0) > 1e-6:
        raise DataError(f"mean diurnal cycle needs a time step that divides a day; got {time_step_s} s")
    day0 = t[0].normalize()
    day = ((t.normalize() - day0).days).to_numpy()
    # the slot within the day counted from the record's phase: hourly stamps at :30, or half-hourly
    # at :15 / :45, are each their own slot (rounding put two of them in one, or one past the day)
    seconds = (t - t.normalize()).total_seconds().to_numpy()
    phase = seconds[0] % time_step_s
    slot = np.round((seconds - phase) / time_step_s).astype(int)
    n_days = int(day[-1]) + 1
    grid = np.full((n_days, slots_per_day, v.shape[1]), np.nan)
    grid[day, slot] = v
    ok = np.isfinite(grid)
    vals = np.where(ok, grid, 0.0)
    whole = np.nansum(vals, axis=0) / np.maximum(ok.sum(axis=0), 1)
    whole = np.where(ok.sum(axis=0) > 0, whole, np.nan)
    if window_days is None:
        clim = np.broadcast_to(whole, grid.shape)
    else:
        cs = np.concatenate([np.zeros((1,) + grid.shape[1:]), np.cumsum(vals, axis=0)])
        cn = np.concatenate([np.zeros((1,) + grid.shape[1:]), np.cumsum(ok, axis=0)])
        lo = np.clip(np.arange(n_days) - window_days, 0, n_days)
        hi = np.clip(np.arange(n_days) + window_days + 1, 0, n_days)
        s = cs[hi] - cs[lo]
        c = cn[hi] - cn[lo]
        clim = np.where(c > 0, s / np.maximum(c, 1), whole[None])
    out = clim[day, slot]
    return out[:, 0] if squeeze else out


def _fill_series(values: np.ndarray, time, step_s: float, max_interp_steps: int, window_days):
    """Fill a (T,) or (T, N) array: interior gaps <= max_interp_steps linearly, the rest with the
    mean diurnal cycle. Returns (filled, method) with method 0 none, 1 interpolated, 2 diurnal."""
    v = np.asarray(values, dtype=float)
    squeeze = v.ndim == 1
    if squeeze:
        v = v[:, None]
    out = v.copy()
    method = np.zeros(v.shape, dtype=np.int8)
    idx = np.arange(v.shape[0])
    clim = None
    for j in range(v.shape[1]):
        col = v[:, j]
        miss = ~np.isfinite(col)
        if not miss.any():
            continue
        if miss.all():
            continue  # handled by the caller (no value at all)
        starts, lengths = runs_of_true(miss)
        short = np.zeros_like(miss)
        for s, n in zip(starts, lengths):
            if n <= max_interp_steps and s > 0 and s + n < len(col):
                short[s:s + n] = True
        if short.any():
            out[short, j] = np.interp(idx[short], idx[~miss], col[~miss])
            method[short, j] = 1
        rest = miss & ~short
        if rest.any():
            if clim is None:
                clim = mean_diurnal_cycle(v, time, step_s, window_days)
            out[rest, j] = clim[rest, j]
            method[rest, j] = 2
    if squeeze:
        return out[:, 0], method[:, 0]
    return out, method


_HUMIDITY = ("VPD", "RH", "Qair")
#: ``forcing_filled`` levels: a step's forcing is observed (0), has a gap of at most
#: ``max_interp_hours`` interpolated (1), or was filled from the mean diurnal cycle or estimated (2).
#: Level-2 steps are not scored: the model was driven by made-up forcing there.
FILLED_SHORT, FILLED_LONG = 1, 2
FORCING_FILLED_ATTRS = {"long_name": "worst repair of the model forcing at this step", "flag_values": "0 1 2",
                        "flag_meanings": "observed short_gap_interpolated long_gap_filled_or_estimated"}


def prepare_forcing(
    ds: xr.Dataset,
    *,
    max_interp_hours: float = 2.0,
    diurnal_window_days: int | None = 15,
    max_qc: int | None = None,
    lw_method: str = "brutsaert1975",
    keep_other: bool = True,
    out_of_range: str = "error",
) -> xr.Dataset:
    """A gap-free model forcing dataset (docs/architecture.md §2) from a canonical site dataset.

    - Forcing values outside their physically possible range (a unit mix-up, a spike) are a
      DataError naming the rows, or with ``out_of_range="missing"`` are set missing and filled as
      gaps, each run listed in ``attrs["repairs"]`` (:func:`~hybridlsm.data.checks.check_forcing_ranges`).
    - Observations (Qh, Qle, Qg, Rnet, AvgSurfT, LWup, Ustar) outside their physically possible
      range (an undeclared missing-value code such as -6999) are set missing, never scored, each
      listed in ``attrs["repairs"]`` (:func:`~hybridlsm.data.checks.mask_impossible_observations`).
    - Required: SWdown, Tair, Psurf, Wind, Precip and humidity (VPD, RH or Qair); an absent or
      all-missing one raises DataError naming it (e.g. the bigleaf month files, which have no
      SWdown).
    - ``max_qc``: forcing values whose QC flag exceeds it are first set missing (default: use the
      values as given; FLUXNET ``_F`` meteorology is already gap-filled).
    - Gaps of at most ``max_interp_hours`` inside the record are filled by linear interpolation,
      longer ones (and gaps at the ends) with the mean diurnal cycle of the surrounding
      ``+- diurnal_window_days`` days; each filled value is flagged in ``<var>_filled``.
    - Qair is derived from VPD (or RH) with Tair and Psurf where absent; its ``Qair_filled`` marks
      values computed from filled inputs. The other humidity variables the file gives (RH, VPD) get
      their gaps derived from the filled one with Tair and Psurf, flagged in ``<var>_filled``.
    - LWdown is estimated where missing or absent (:func:`estimate_lwdown`), flagged in
      ``LWdown_estimated`` (and ``LWdown_filled``).
    - The report (per variable: missing, interpolated, diurnal-cycle, estimated, gaps longer than
      a day) is in ``attrs['fill_report']`` (JSON); :func:`fill_report` returns it as a table.

    Other variables (fluxes, ...) are kept unchanged when ``keep_other``.
    """
    file = ds.attrs.get("source_file", "<dataset>")
    step = float(ds.attrs.get("time_step_s", np.nan))
    if not np.isfinite(step) or step > 3 * 3600 or ds.attrs.get("time_resolution") in ("DD", "WW", "MM", "YY"):
        raise DataError(f"{file}: prepare_forcing needs sub-daily data; time step is {step} s")
    if any(d != "time" for d in ds.dims):
        raise DataError(
            f"{file}: prepare_forcing works on site datasets (dimension time only); this one has "
            f"dims {dict(ds.sizes)} (select a cell first, e.g. ds.isel(y=0, x=0))"
        )
    checked = check_forcing_ranges(ds, out_of_range)
    # steps whose out-of-range values were set missing (out_of_range="missing"): not scored, however short the gap
    repaired = np.zeros(ds.sizes["time"], bool)
    for v in (v for v in FORCING_CHECKED if v in ds and ds[v].dims == ("time",)):
        repaired |= np.isnan(np.asarray(checked[v].values, float)) & ~np.isnan(np.asarray(ds[v].values, float))
    ds = mask_impossible_observations(checked)
    required = ["SWdown", "Tair", "Psurf", "Wind", "Precip"]
    missing = [v for v in required if v not in ds]
    hum = "Qair" if "Qair" in ds else next((h for h in _HUMIDITY if h in ds), None)
    if hum is None:
        missing.append("humidity (VPD, RH or Qair)")
    if missing:
        hint = ""
        if "SWdown" in missing:
            hint = (" (SWdown, incoming shortwave, cannot be estimated; files such as the bigleaf "
                    "month files carry only PPFD)")
        raise DataError(
            f"{file}: cannot build the model forcing: missing variable(s) {', '.join(missing)}{hint}; "
            f"present: {sorted(v for v in ds.data_vars if not _is_flag(v))}"
        )
    empty = [v for v in required + [hum] if not np.isfinite(ds[v].values).any()]
    if empty:
        raise DataError(f"{file}: cannot build the model forcing: variable(s) {', '.join(empty)} have no valid value")

    work = ds.copy()
    if max_qc is not None:
        work = apply_qc(work, max_qc, [v for v in required + [hum, "LWdown"] if v in work])
    max_steps = int(np.floor(max_interp_hours * 3600.0 / step + 1e-9))
    time = work["time"].values
    report: dict[str, dict] = {}
    level = np.zeros(len(time), dtype=np.int8)  # forcing_filled: the worst repair of any variable per step
    for v in required + [hum]:
        da = work[v]
        gaps = find_gaps(work, v)
        filled, method = _fill_series(da.values, time, step, max_steps, diurnal_window_days)
        if np.isnan(filled).any():
            i = int(np.argmax(np.isnan(filled)))
            raise DataError(f"{file}: variable {v}: cannot fill the value at {pd.Timestamp(time[i])} "
                            f"(no value at that time of day in the whole record)")
        work[v] = (da.dims, filled, da.attrs)
        work[f"{v}_filled"] = (da.dims, method > 0, {"long_name": f"{v} filled by prepare_forcing"})
        level = np.maximum(level, method.astype(np.int8))
        report[v] = _report_entry(method, gaps)
    if hum != "Qair":
        work = add_derived(work, variables=("Qair",))
        srcs = (hum, "Tair", "Psurf")
        flag = np.zeros(len(time), dtype=bool)
        for s_ in srcs:
            flag |= work[f"{s_}_filled"].values
        work["Qair_filled"] = ("time", flag, {"long_name": f"Qair derived from {', '.join(srcs)}, "
                                                           f"True where an input was filled"})
        report["Qair"] = {"n_missing": 0, "n_interpolated": 0, "n_diurnal_cycle": 0, "n_estimated": 0,
                          "derived_from": ", ".join(srcs), "n_from_filled_inputs": int(flag.sum()),
                          "gaps_over_1d": []}
    for v in (h for h in _HUMIDITY if h not in (hum, "Qair") and h in work):
        report[v] = _derive_gaps(work, v, hum)
    lw_gaps = find_gaps(work, "LWdown") if "LWdown" in work else None
    lw_in = work[[v for v in ("Tair", "Qair", "Psurf", "SWdown", "LWdown") if v in work]]
    lw_out = fill_lwdown(lw_in, method=lw_method)
    work["LWdown"] = lw_out["LWdown"]
    work["LWdown_estimated"] = lw_out["LWdown_estimated"]
    if work["LWdown"].isnull().any():
        i = int(np.argmax(work["LWdown"].isnull().values))
        raise DataError(f"{file}: LWdown could not be estimated at {pd.Timestamp(time[i])}")
    est = work["LWdown_estimated"].values
    if est.any():
        warnings.warn(f"{file}: LWdown estimated ({work['LWdown'].attrs.get('estimate', lw_method)}) at "
                      f"{int(est.sum())} of {est.size} steps"
                      + (" (the file has no incoming longwave)" if "LWdown" not in ds else
                         " (no usable measured value)" if est.all() else " (gaps in the measured record)"),
                      DataWarning, stacklevel=2)
    work["LWdown_filled"] = ("time", est.copy(), {"long_name": "LWdown not measured (estimated)"})
    if not est.all():  # an estimate for a whole record is listed as a repair, not masked (repair_summary)
        level[est] = FILLED_LONG
    level[repaired] = FILLED_LONG
    work["forcing_filled"] = ("time", level, FORCING_FILLED_ATTRS)
    report["LWdown"] = {
        "n_missing": int(est.sum()), "n_interpolated": 0, "n_diurnal_cycle": 0,
        "n_estimated": int(est.sum()),
        "absent_from_source": "LWdown" not in ds,
        "method": work["LWdown"].attrs.get("estimate", ""),
        "gaps_over_1d": [] if lw_gaps is None else _long_gaps(lw_gaps),
    }
    forcing = list(FORCING_VARIABLES)
    for v in forcing:
        if work[v].isnull().any():  # pragma: no cover - guarded above
            raise DataError(f"{file}: forcing variable {v} still has missing values")
    flags = [f"{v}_filled" for v in forcing] + ["LWdown_estimated", "forcing_filled"]
    extra = [hum, f"{hum}_filled"] if hum != "Qair" else []
    if keep_other:
        out = work
    else:
        out = work[[v for v in forcing + flags + extra if v in work]]
    out.attrs = {**ds.attrs, "fill_report": json.dumps(report, default=str),
                 "forcing_max_interp_hours": max_interp_hours,
                 "forcing_diurnal_window_days": -1 if diurnal_window_days is None else diurnal_window_days}
    return out


def _derive_gaps(work: xr.Dataset, v: str, hum: str) -> dict:
    """Fill the gaps of the humidity variable ``v`` (RH or VPD) that the forcing does not use with its
    value derived from the gap-free ``hum``, Tair and Psurf (exact: the same vapour pressure), flagged
    in ``<v>_filled``; its fill-report entry. FLUXNET's RH is not gap-filled, and the models that take
    it (3km27, gbm, an lstm with RH) would otherwise predict nothing at steps every other model has."""
    gaps = find_gaps(work, v)
    gap = ~np.isfinite(work[v].values)
    derived = add_derived(work[[hum, "Tair", "Psurf"]], variables=(v,))[v].values
    attrs = {**work[v].attrs, "gaps_derived_from": f"{hum}, Tair, Psurf"}
    work[v] = (work[v].dims, np.where(gap, derived, work[v].values), attrs)
    work[f"{v}_filled"] = (work[v].dims, gap, {"long_name": f"{v} derived from {hum}, Tair and Psurf where the "
                                                            "source has none"})
    return {"n_missing": int(gap.sum()), "n_interpolated": 0, "n_diurnal_cycle": 0, "n_estimated": 0,
            "n_derived": int(gap.sum()), "derived_from": f"{hum}, Tair, Psurf", "n_gaps": int(len(gaps)),
            "gaps_over_1d": _long_gaps(gaps)}


def _long_gaps(gaps: pd.DataFrame) -> list[dict]:
    g = gaps[gaps["hours"] > 24.0]
    return [{"start": str(r.start), "end": str(r.end), "n_steps": int(r.n_steps), "hours": float(r.hours)}
            for r in g.itertuples()]


def _report_entry(method: np.ndarray, gaps: pd.DataFrame) -> dict:
    m = np.asarray(method)
    return {
        "n_missing": int((m > 0).sum()),
        "n_interpolated": int((m == 1).sum()),
        "n_diurnal_cycle": int((m == 2).sum()),
        "n_estimated": 0,
        "n_gaps": int(len(gaps)),
        "gaps_over_1d": _long_gaps(gaps),
    }


def fill_report(ds: xr.Dataset) -> pd.DataFrame:
    """The fill report of a :func:`prepare_forcing` result as a table (one row per variable)."""
    if "fill_report" not in ds.attrs:
        raise DataError(f"{ds.attrs.get('source_file', '<dataset>')}: no fill report; run prepare_forcing first")
    rep = json.loads(ds.attrs["fill_report"])
    rows = []
    for var, r in rep.items():
        rows.append({"variable": var, "n_missing": r.get("n_missing", 0),
                     "n_interpolated": r.get("n_interpolated", 0),
                     "n_diurnal_cycle": r.get("n_diurnal_cycle", 0),
                     "n_estimated": r.get("n_estimated", 0),
                     "n_gaps_over_1d": len(r.get("gaps_over_1d", []))})
    return pd.DataFrame(rows)


def forcing_filled(ds: xr.Dataset) -> np.ndarray:
    """The ``forcing_filled`` level per step of a :func:`prepare_forcing` result (0 observed, 1 short
    gap interpolated, 2 filled from the mean diurnal cycle or estimated; see ``FILLED_LONG``).

    Gaps of a measured LWdown record count as 2; LWdown estimated at every step (a file without
    incoming longwave) does not, since it would exclude the whole record: that estimate is listed
    as a repair instead (:func:`repair_summary`). Zeros for a dataset that was not prepared."""
    if "forcing_filled" not in ds:
        return np.zeros(ds.sizes["time"], dtype=np.int8)
    return np.asarray(ds["forcing_filled"].values, dtype=np.int8)


def repair_summary(ds: xr.Dataset, targets=()) -> list[str]:
    """One line per repair or gap in what a prepared site dataset knows: the reader's repairs, filled
    and estimated forcing, observed ``targets`` without QC flags, and site metadata no source gave."""
    lines = [r for r in str(ds.attrs.get("repairs", "")).splitlines() if r]
    report = json.loads(ds.attrs.get("fill_report", "{}"))
    n = ds.sizes["time"]
    for var, r in report.items():
        if r.get("n_interpolated") or r.get("n_diurnal_cycle"):
            long = len(r.get("gaps_over_1d", []))
            lines.append(f"{var}: {r['n_interpolated']} steps interpolated, {r['n_diurnal_cycle']} filled from the "
                         f"mean diurnal cycle" + (f" ({long} gap(s) longer than a day)" if long else ""))
        if r.get("n_derived"):
            lines.append(f"{var}: {r['n_derived']} missing steps derived from {r['derived_from']}")
        if r.get("n_estimated"):
            why = "the file has none" if r.get("absent_from_source") else "gaps in the measured record"
            lines.append(f"{var}: estimated ({r.get('method') or 'model'}) at {r['n_estimated']} of {n} steps ({why})")
    level = forcing_filled(ds)
    if level.any():
        lines.append(f"forcing_filled: {int((level == FILLED_SHORT).sum())} of {n} steps with a short gap "
                     f"interpolated (scored), {int((level == FILLED_LONG).sum())} filled from the diurnal cycle or "
                     "estimated (not scored)")
    no_qc = [t for t in targets if t in ds and f"{t}_qc" not in ds and f"{t}_qc_fraction" not in ds]
    if no_qc:
        lines.append(f"no QC flags for {', '.join(no_qc)}: every finite value counts as measured")
    missing = str(ds.attrs.get("missing_metadata", "")).split()
    if missing:
        lines.append(f"site metadata not given: {', '.join(missing)} (defaults used where a model needs them)")
    return lines
