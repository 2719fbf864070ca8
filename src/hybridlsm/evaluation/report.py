"""Skill tables and the HTML report of a run directory (docs/architecture.md §3).

Input::

    run_dir/predictions/<site>/<model>.nc   ALMA outputs on `time` (Qh, Qle, Qg, Rnet, SoilTemp, SoilMoist,
                                            Kh, rs, ...); models without a variable simply lack it
    run_dir/predictions/<site>/obs.nc       observed Qh, Qle (Rnet, Qg, SoilTemp, SoilMoistVol, Precip
                                            optional), `split` (0 spin-up, 1 train, 2 validation, 3 test),
                                            QC flags `Qle_qc`, `Qh_qc` optional

Output: ``metrics.csv`` (`SKILL_COLUMNS`), ``skill.json`` (the same records plus ``config``),
``plots/*.png`` and a self-contained ``report.html`` (figures embedded as base64 PNG).

Evaluation rules
----------------
- Everything is scored on the **test split** (``split == 3``). Model outputs are aligned to the obs
  time axis (``reindex``; a missing time is a gap).
- An observed flux counts where it is finite and, if ``<flux>_qc`` exists, 0 ≤ QC ≤ ``max_qc``
  (the run's ``data.max_qc``, default 1: measured or good gap-filled, physics reference §5.3), and
  where the forcing was observed: steps whose forcing was filled from the mean diurnal cycle or
  estimated (``forcing_filled == 2`` in obs.nc) are not scored, since the models ran on made-up
  forcing there.
- Scored variables: the run's ``data.targets`` (obs.nc attribute ``targets``; Qle and Qh by default).
- Data repairs: each site's ``repairs_summary`` (obs.nc attribute) is listed in the report.
- Skill (LE = ``Qle``, H = ``Qh``): RMSE, NSE, KGE (2009; KGE″ where the observed mean is near
  zero), bias, percent bias (withheld near a zero mean) and r at the native ("halfhourly"), daily
  and weekly scale via `metrics.skill_table`; rows whose |bias| exceeds the observed range are
  flagged ``suspect``.
- Energy balance: observed residual Rn − G − H − LE and closure ratio Σ(H + LE)/Σ(Rn − G) (G = 0
  when the tower has no Qg, said in the table); per model its internal residual (needs Rnet, Qg, Qh,
  Qle in its output) and the model-vs-obs ratio Σ(H_m + LE_m)/Σ(Rn_o − G_o).
- Learned parameters: daily medians of ``Kh`` and ``rs`` over the whole record.
- Untrained variables (test split, native step): the model layer of ``SoilTemp`` [K] nearest the sensor depth against the
  tower's ``SoilTemp``; the top layer of ``SoilMoist`` against ``SoilMoistVol`` [m3 m-3]. Model
  ``SoilMoist`` is used as volumetric when its units say so (m3 m-3), or converted from kg m-2 with
  the top-layer thickness (``layer_thickness`` [m] as a variable attribute or a dataset
  variable/coordinate); otherwise its bias is NaN, while r and the dry-down time (both unaffected by
  units) are still reported.
- **Dry-down time** (see `dry_down_episodes`, `drying_efolding_time`): from daily precipitation
  (``Precip`` in obs.nc, else in a model file), an episode starts on the first day with P < 1 mm
  after a day with P ≥ 5 mm and lasts while P < 1 mm (at most 30 days; kept if ≥ 5 days, all in
  the test split). Within an episode, the e-folding time τ [days] of the *drying rate* is
  τ = −1/slope of the OLS fit of ln(−Δθ_d) on day d, where Δθ_d = θ_{d+1} − θ_d of daily-mean
  soil moisture (days with Δθ ≥ 0 are left out; at least 3 drying days). For θ = θ∞ + A·e^{−t/τ}
  this is exactly the e-folding time of θ − θ∞, without estimating the asymptote θ∞, and it does
  not depend on the units or an offset of θ — so obs and a model with different layer depths or
  units can be compared. The report gives the median τ over the episodes where both obs and model
  give a τ, and the number of such episodes.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from hybridlsm.constants import RHO_WATER
from hybridlsm.data.preprocess import FILLED_LONG, forcing_filled
from hybridlsm.data.schema import DataError
from hybridlsm.domain import site_file_name
from hybridlsm.evaluation import plots
from hybridlsm.evaluation.html_parts import fmt, img_html, table_html
from hybridlsm.evaluation.hotspots import hotspots_html
from hybridlsm.evaluation.maps import maps_html
from hybridlsm.evaluation.training_curves import training_html
from hybridlsm.evaluation.metrics import (
    NEAR_ZERO_MEAN,
    SCALES,
    SKILL_COLUMNS,
    aggregate,
    bias,
    closure_ratio,
    count_valid,
    energy_balance_residual,
    joint_mask,
    pearson_r,
    skill_table,
)
from hybridlsm.rundir import DamagedRunFile, json_safe, load_checked_dataset, read_json_object, verified

__all__ = [
    "FLUXES",
    "TEST_SPLIT",
    "SiteData",
    "load_run",
    "flux_mask",
    "site_skill",
    "run_skill",
    "energy_balance_table",
    "dry_down_episodes",
    "drying_efolding_time",
    "untrained_variables",
    "build_report",
]

FLUXES = ("Qle", "Qh")
TEST_SPLIT = 3
PARAMETER_VARS = {"Kh": "[m2 s-1]", "rs": "[s m-1]"}
_VOLUMETRIC_UNITS = {"m3m-3", "m3/m3", "m^3m^-3", "m3.m-3", "1", "-", "fraction"}
_MASS_UNITS = {"kgm-2", "kg/m2", "kgm^-2", "mm"}

#: what the scored steps (split == 3) of a site are, by its obs' ``split_kind`` (the run's split):
#: (a table heading's words, the report's sentence)
SPLIT_WORDS = {
    "test": ("test split", "the test split"),
    "blocked": ("test weeks of the blocked split",
                "the test weeks of the blocked split (every n-th block of the record)"),
    "test_sites": ("never-seen site, whole record",
                   "the whole record of each never-seen site (test_sites), from models trained on the others"),
    "loso": ("left-out site, whole record",
             "the whole record of each site, from the leave-one-site-out fold trained without it"),
}


def split_words(kinds, sentence: bool = False) -> str:
    """How the report names the scored steps of ``kinds`` (split_kind values): in a table heading, or
    (``sentence``) in its note on what was scored."""
    return "; ".join(SPLIT_WORDS.get(k, (f"{k} split", f"the {k} split"))[int(sentence)]
                     for k in dict.fromkeys(str(k) for k in kinds))


# --------------------------------------------------------------------------------------------
# loading


@dataclass
class SiteData:
    """One site of a run: observations and every model's outputs aligned to the obs time axis."""

    site: str
    obs: xr.Dataset
    models: dict[str, xr.Dataset] = field(default_factory=dict)
    obs_path: Path | None = None

    @property
    def time(self) -> np.ndarray:
        return np.asarray(self.obs["time"].values, dtype="datetime64[ns]")

    @property
    def split(self) -> np.ndarray:
        return np.asarray(self.obs["split"].values)

    @property
    def test(self) -> np.ndarray:
        return self.split == TEST_SPLIT


def scored_variables(sd: SiteData) -> tuple[str, ...]:
    """The run's targets the site observes (obs.nc attribute ``targets``; Qle and Qh without one)."""
    targets = str(sd.obs.attrs.get("targets", "")).split() or list(FLUXES)
    return tuple(t for t in targets if t in sd.obs.variables)


def load_run(run_dir: Path) -> dict[str, SiteData]:
    """Read ``predictions/<site>/{obs,<model>}.nc`` of a run directory (sites in name order), each
    checked against its recorded SHA-256 (``rundir.load_checked_dataset``)."""
    pred = Path(run_dir) / "predictions"
    if not pred.is_dir():
        raise FileNotFoundError(f"{pred}: no predictions directory (run directory layout: architecture §3)")
    out: dict[str, SiteData] = {}
    for d in sorted(p for p in pred.iterdir() if p.is_dir()):
        obs_path = d / "obs.nc"
        if not obs_path.is_file():
            raise FileNotFoundError(f"{obs_path}: observations of site {d.name!r} are missing")
        obs = load_checked_dataset(obs_path)  # a damaged file is refused, never scored
        if "time" not in obs.coords:
            raise DataError(f"{obs_path}: no 'time' coordinate")
        if "split" not in obs.variables:
            raise DataError(f"{obs_path}: no 'split' variable (0 spin-up, 1 train, 2 validation, 3 test)")
        missing = [f for f in FLUXES if f not in obs.variables]
        if missing:
            raise DataError(f"{obs_path}: observed flux(es) {missing} missing; expected {list(FLUXES)}")
        lost = sorted(p.with_suffix("").name for p in d.glob("*.nc.sha256") if not p.with_suffix("").exists())
        if lost:  # a model's predictions deleted: the report would drop the model from every table
            raise DamagedRunFile(f"{d}: {', '.join(lost)} missing (their checksums are there: the run wrote them); "
                                 "restore them, or rerun the run with --resume")
        models = {}
        for f in sorted(d.glob("*.nc")):
            if f.name == "obs.nc":
                continue
            ds = load_checked_dataset(f)
            if "time" not in ds.coords:
                raise DataError(f"{f}: no 'time' coordinate")
            models[f.stem] = ds.reindex(time=obs["time"])
        sid = str(obs.attrs.get("site_id") or d.name)  # the folder name is the id made path-safe
        out[sid] = SiteData(sid, obs, models, obs_path)
    if not out:
        raise FileNotFoundError(f"{pred}: no site directories")
    return out


def _series(ds: xr.Dataset, var: str, *, layered: bool = False, depth: float | None = None) -> np.ndarray | None:
    """1-D float array of ``var`` on time; for ``layered`` variables the layer whose centre (the
    ``soil_layer`` coordinate, m) is nearest ``depth``, else the first (top) layer."""
    if var not in ds.variables:
        return None
    da = ds[var]
    extra = [d for d in da.dims if d != "time"]
    if "time" not in da.dims:
        return None
    if layered:
        if depth is not None and np.isfinite(depth) and "soil_layer" in da.dims:
            centres = np.asarray(ds["soil_layer"].values, dtype=float)
            da = da.isel(soil_layer=int(np.argmin(np.abs(centres - depth))))
            extra = [d for d in da.dims if d != "time"]
        da = da.isel({d: 0 for d in extra})
    else:
        big = [d for d in extra if da.sizes[d] != 1]
        if big:
            src = ds.encoding.get("source", "<dataset>")
            raise ValueError(f"{src}: variable {var!r} has extra non-singleton dims {big}; expected one site on time")
        da = da.isel({d: 0 for d in extra})
    return np.asarray(da.values, dtype=float)


def _sensor_depth(obs: xr.Dataset, var: str) -> float | None:
    """Depth [m] of the tower sensor (``depth_m`` attribute), if known."""
    if var not in obs:
        return None
    depth = obs[var].attrs.get("depth_m")
    return None if depth is None else float(depth)


def flux_mask(obs: xr.Dataset, flux: str, max_qc: int = 1) -> np.ndarray:
    """Usable observed ``flux``: finite, where ``<flux>_qc`` exists 0 ≤ QC ≤ ``max_qc``, and not at
    a step driven by forcing filled from the diurnal cycle or estimated (``forcing_filled == 2``)."""
    x = _series(obs, flux)
    ok = np.isfinite(x) & (forcing_filled(obs) < FILLED_LONG)
    qc_name = f"{flux}_qc"
    if qc_name in obs.variables:
        qc = np.asarray(obs[qc_name].values, dtype=float)
        ok &= (qc >= 0) & (qc <= max_qc)
    return ok


def _has_sites(run_dir: Path) -> bool:
    pred = Path(run_dir) / "predictions"
    return pred.is_dir() and any(p.is_dir() for p in pred.iterdir())


def _write_report(run_dir: Path, config: str, parts: list[str]) -> Path:
    """``report.html`` of a run without sites: the title and ``parts``."""
    h = ["<!DOCTYPE html><html><head><meta charset='utf-8'>",
         f"<title>hybridlsm report: {html.escape(config)}</title><style>{_CSS}</style></head><body>",
         f"<h1>hybridlsm report: {html.escape(config)}</h1>", *parts, "</body></html>"]
    out = run_dir / "report.html"
    out.write_text("\n".join(h), encoding="utf-8")
    return out


def _config_name(run_dir: Path, sites: dict[str, SiteData]) -> str:
    for sd in sites.values():
        for ds in sd.models.values():
            if "config" in ds.attrs:
                return str(ds.attrs["config"])
    cfg = run_dir / "config.yaml"
    if cfg.is_file():
        import yaml

        try:
            data = yaml.safe_load(cfg.read_text())
        except yaml.YAMLError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("name"), str):
            return data["name"]
    return run_dir.name


# --------------------------------------------------------------------------------------------
# tables


def site_skill(
    sd: SiteData,
    *,
    max_qc: int = 1,
    scales=SCALES,
    min_valid_fraction: float = 0.5,
) -> pd.DataFrame:
    """Skill table of every model at one site, test split, the site's `scored_variables`."""
    frames = []
    for flux in scored_variables(sd):
        obs = _series(sd.obs, flux)
        mask = flux_mask(sd.obs, flux, max_qc) & sd.test
        sims = {}
        for model, ds in sd.models.items():
            s = _series(ds, flux)
            sims[model] = s if s is not None else np.full(obs.shape, np.nan)
        frames.append(
            skill_table(
                obs, sims, sd.time, scales, site=sd.site, flux=flux,
                split=str(sd.obs.attrs.get("split_kind", "test")), mask=mask,
                min_valid_fraction=min_valid_fraction,
                time_step_s=sd.obs.attrs.get("time_step_s"),
            )
        )
    return pd.concat(frames, ignore_index=True)


def run_skill(sites: dict[str, SiteData], **kw) -> pd.DataFrame:
    """`site_skill` of every site, concatenated (columns `SKILL_COLUMNS`)."""
    return pd.concat([site_skill(sd, **kw) for sd in sites.values()], ignore_index=True)


def energy_balance_table(sd: SiteData, *, max_qc: int = 1) -> pd.DataFrame:
    """Energy-balance diagnostics on the test split: one row for the obs and one per model with
    columns site, source, residual_mean, residual_mean_abs, closure_ratio, n, note. Steps driven by
    forcing filled from the diurnal cycle (``forcing_filled == 2``) are left out, as from every
    score; a model's closure ratio uses the observations' steps (``flux_mask``)."""
    obs = sd.obs
    test = sd.test & (forcing_filled(obs) < FILLED_LONG)
    rn_o = _series(obs, "Rnet")
    g_o = _series(obs, "Qg")
    note_g = ""
    if g_o is None and rn_o is not None:
        g_o = np.zeros_like(rn_o)
        note_g = "G not observed: G = 0 assumed"
    h_o, le_o = _series(obs, "Qh"), _series(obs, "Qle")
    qc_ok = flux_mask(obs, "Qh", max_qc) & flux_mask(obs, "Qle", max_qc)
    rows = []
    if rn_o is not None:
        res = energy_balance_residual(rn_o, g_o, h_o, le_o, mask=test & qc_ok)
        ebr = closure_ratio(rn_o, g_o, h_o, le_o, mask=test & qc_ok)
        rows.append(dict(site=sd.site, source="obs", residual_mean=res.mean, residual_mean_abs=res.mean_abs,
                         closure_ratio=ebr, n=res.n, note=note_g))
    for model, ds in sd.models.items():
        rn, g, h, le = (_series(ds, v) for v in ("Rnet", "Qg", "Qh", "Qle"))
        if h is None or le is None:
            continue
        if rn is not None and g is not None:
            qf = _series(ds, "Qf")  # snowmelt heat, where the model reports it
            res = energy_balance_residual(rn if qf is None else rn - qf, g, h, le, mask=test)
            res_mean, res_abs = res.mean, res.mean_abs
            n = res.n
            note = "internal: model Rn − G − H − LE" + (" − Qf" if qf is not None else "")
        else:
            res_mean = res_abs = math.nan
            n = 0
            note = "no Rnet/Qg output"
        ebr = closure_ratio(rn_o, g_o, h, le, mask=test & qc_ok) if rn_o is not None else math.nan
        if rn_o is not None:
            note += "; closure ratio Σ(H_m + LE_m)/Σ(Rn_o − G_o)" + (f" ({note_g})" if note_g else "")
        rows.append(dict(site=sd.site, source=model, residual_mean=res_mean, residual_mean_abs=res_abs,
                         closure_ratio=ebr, n=n, note=note))
    cols = ["site", "source", "residual_mean", "residual_mean_abs", "closure_ratio", "n", "note"]
    return pd.DataFrame(rows, columns=cols)


def _layer_thickness(ds: xr.Dataset, var: str) -> float | None:
    da = ds[var]
    if "layer_thickness" in da.attrs:
        v = np.atleast_1d(np.asarray(da.attrs["layer_thickness"], dtype=float))
        return float(v[0])
    for name in ("layer_thickness", "dz"):
        if name in ds.variables:
            return float(np.atleast_1d(np.asarray(ds[name].values, dtype=float)).ravel()[0])
    return None


def _soil_moisture_volumetric(ds: xr.Dataset) -> tuple[np.ndarray | None, bool]:
    """(top-layer soil moisture, True if it is in m3 m-3)."""
    top = _series(ds, "SoilMoist", layered=True)
    if top is None:
        return None, False
    units = str(ds["SoilMoist"].attrs.get("units", "")).replace(" ", "")
    if units in _VOLUMETRIC_UNITS:
        return top, True
    if units in _MASS_UNITS:
        dz = _layer_thickness(ds, "SoilMoist")
        if dz is not None and dz > 0:
            return top / (RHO_WATER * dz), True
    return top, False


def _daily_precip_mm(sd: SiteData) -> np.ndarray | None:
    """Daily precipitation [mm day-1] on the obs days (NaN for incomplete days), from obs.nc or else
    the first model file that has ``Precip`` [kg m-2 s-1]."""
    for ds in (sd.obs, *sd.models.values()):
        p = _series(ds, "Precip")
        if p is not None:
            a = aggregate(p, sd.time, "daily", min_valid_fraction=1.0, time_step_s=sd.obs.attrs.get("time_step_s"))
            return a.values * 86400.0  # mean rate [kg m-2 s-1] × 1 day
    return None


def dry_down_episodes(
    precip_daily_mm: np.ndarray,
    *,
    rain_threshold: float = 5.0,
    dry_threshold: float = 1.0,
    min_days: int = 5,
    max_days: int = 30,
) -> list[tuple[int, int]]:
    """Rain-free spells after rain, as ``(first_day, n_days)`` indices into the daily series.

    An episode starts on the first day with P < ``dry_threshold`` after a day with P ≥
    ``rain_threshold`` [mm day-1], continues while P < ``dry_threshold`` (a NaN day ends it), is cut
    at ``max_days`` and is kept if at least ``min_days`` long.
    """
    p = np.asarray(precip_daily_mm, dtype=float)
    out = []
    d = 1
    while d < p.size:
        if p[d - 1] >= rain_threshold and p[d] < dry_threshold:
            end = d
            while end < p.size and end - d < max_days and p[end] < dry_threshold:
                end += 1
            if end - d >= min_days:
                out.append((d, end - d))
            d = end
        else:
            d += 1
    return out


def drying_efolding_time(theta_daily: np.ndarray, min_drying_days: int = 3) -> float:
    """e-folding time [days] of the drying rate of a daily soil-moisture series over one episode.

    τ = −1/slope of the OLS fit of ln(−Δθ_d) on d over the days with Δθ_d = θ_{d+1} − θ_d < 0 (and
    both days finite); NaN with fewer than ``min_drying_days`` such days or a non-negative slope.
    Exact for θ = θ∞ + A·e^{−t/τ}; invariant to the units and an offset of θ.
    """
    th = np.asarray(theta_daily, dtype=float)
    dth = np.diff(th)
    day = np.arange(dth.size, dtype=float)
    ok = np.isfinite(dth) & (dth < 0)
    if ok.sum() < min_drying_days:
        return math.nan
    slope = np.polyfit(day[ok], np.log(-dth[ok]), 1)[0]
    return float(-1.0 / slope) if slope < 0 else math.nan


def untrained_variables(sd: SiteData) -> pd.DataFrame:
    """Simulated vs tower soil temperature and soil moisture on the test split (see module docs).

    Columns: site, model, variable, r, bias, bias_units, n, tau_obs_days, tau_sim_days, n_episodes.
    Steps driven by forcing filled from the diurnal cycle (``forcing_filled == 2``) are not scored.
    """
    test = sd.test & (forcing_filled(sd.obs) < FILLED_LONG)
    rows = []
    t_obs = _series(sd.obs, "SoilTemp", layered=True)
    m_obs = _series(sd.obs, "SoilMoistVol", layered=True)
    p_daily = _daily_precip_mm(sd)
    episodes = dry_down_episodes(p_daily) if p_daily is not None else []
    days_test = None
    if m_obs is not None:
        a_test = aggregate(test.astype(float), sd.time, "daily", min_valid_fraction=0.0)
        days_test = np.nan_to_num(a_test.values) == 1.0  # day entirely in the test split
        episodes = [(d0, n) for d0, n in episodes if days_test[d0 : d0 + n].all()]
    for model, ds in sd.models.items():
        t_sim = _series(ds, "SoilTemp", layered=True, depth=_sensor_depth(sd.obs, "SoilTemp"))
        if t_obs is not None and t_sim is not None:
            rows.append(dict(site=sd.site, model=model, variable="SoilTemp",
                             r=pearson_r(t_sim, t_obs, test), bias=bias(t_sim, t_obs, test), bias_units="K",
                             n=count_valid(t_sim, t_obs, test), tau_obs_days=math.nan, tau_sim_days=math.nan,
                             n_episodes=0))
        m_sim, volumetric = _soil_moisture_volumetric(ds)
        if m_obs is not None and m_sim is not None:
            ok = joint_mask(m_sim, m_obs, mask=test)
            d_obs = aggregate(np.where(ok, m_obs, np.nan), sd.time, "daily").values
            d_sim = aggregate(np.where(ok, m_sim, np.nan), sd.time, "daily").values
            taus = []
            for d0, n in episodes:
                to = drying_efolding_time(d_obs[d0 : d0 + n])
                ts = drying_efolding_time(d_sim[d0 : d0 + n])
                if math.isfinite(to) and math.isfinite(ts):
                    taus.append((to, ts))
            tau = np.array(taus).reshape(-1, 2)
            rows.append(dict(site=sd.site, model=model, variable="SoilMoist",
                             r=pearson_r(m_sim, m_obs, test),
                             bias=bias(m_sim, m_obs, test) if volumetric else math.nan,
                             bias_units="m3 m-3" if volumetric else "units differ",
                             n=count_valid(m_sim, m_obs, test),
                             tau_obs_days=float(np.median(tau[:, 0])) if len(tau) else math.nan,
                             tau_sim_days=float(np.median(tau[:, 1])) if len(tau) else math.nan,
                             n_episodes=len(tau)))
    cols = ["site", "model", "variable", "r", "bias", "bias_units", "n", "tau_obs_days", "tau_sim_days",
            "n_episodes"]
    return pd.DataFrame(rows, columns=cols)


# --------------------------------------------------------------------------------------------
# figures


def _site_plots(
    sd: SiteData, plot_dir: Path, max_qc: int, min_valid_fraction: float, colours: dict[str, str]
) -> dict[str, Path]:
    time = sd.time
    test = sd.test
    obs = {f: _series(sd.obs, f) for f in FLUXES}
    masks = {f: flux_mask(sd.obs, f, max_qc) & test for f in FLUXES}
    sims = {m: {f: s for f in FLUXES if (s := _series(ds, f)) is not None} for m, ds in sd.models.items()}
    sds = {m: {f: s for f in FLUXES if (s := _series(ds, f"{f}_sd")) is not None} for m, ds in sd.models.items()}
    site = sd.site
    stem = site_file_name(site)  # a site id is not a safe file name (``../../X``)
    out = {}
    out["diurnal"] = plots.plot_diurnal_cycles(
        plot_dir / f"{stem}_diurnal.png", time, obs, sims, masks,
        f"{site}: mean diurnal cycle per season (test split)", colours)
    out["timeseries"] = plots.plot_daily_series(
        plot_dir / f"{stem}_timeseries.png", time, obs, sims, masks,
        f"{site}: daily means, test period (bands: 90 % predictive intervals)" if any(sds.values())
        else f"{site}: daily means, test period", min_valid_fraction, colours, sds)
    out["scatter"] = plots.plot_scatter(
        plot_dir / f"{stem}_scatter.png", obs, sims, masks, f"{site}: observed vs predicted (test split)")

    residuals = {}
    rn_o, g_o = _series(sd.obs, "Rnet"), _series(sd.obs, "Qg")
    if rn_o is not None:
        label = "obs" if g_o is not None else "obs (G = 0 assumed)"
        g = g_o if g_o is not None else np.zeros_like(rn_o)
        ok = test & masks["Qh"] & masks["Qle"] & np.isfinite(rn_o) & np.isfinite(g)
        residuals[label] = np.where(ok, rn_o - g - obs["Qh"] - obs["Qle"], np.nan)
    for m, ds in sd.models.items():
        rn, g, h, le = (_series(ds, v) for v in ("Rnet", "Qg", "Qh", "Qle"))
        if rn is not None and g is not None and h is not None and le is not None:
            residuals[m] = np.where(test, rn - g - h - le, np.nan)
    if any(np.isfinite(v).any() for v in residuals.values()):
        out["energy"] = plots.plot_energy_residual(
            plot_dir / f"{stem}_energy_balance.png", time, residuals,
            f"{site}: energy-balance residual, mean diurnal cycle (test split)", colours)

    params = {}
    for var in PARAMETER_VARS:
        per_model = {m: s for m, ds in sd.models.items() if (s := _series(ds, var, layered=True)) is not None}
        if per_model:
            params[var] = per_model
    if params:
        out["parameters"] = plots.plot_parameters(
            plot_dir / f"{stem}_parameters.png", time, params, test,
            f"{site}: learned parameters (daily median; grey: test period)", PARAMETER_VARS, colours)

    panels = {}
    t_obs = _series(sd.obs, "SoilTemp", layered=True)
    if t_obs is not None:
        depth = _sensor_depth(sd.obs, "SoilTemp")
        t_sims = {m: s for m, ds in sd.models.items()
                  if (s := _series(ds, "SoilTemp", layered=True, depth=depth)) is not None}  # fmt: skip
        if t_sims:
            panels["soil temperature (model layer at the sensor depth vs tower)"] = (t_obs, t_sims, "SoilTemp [K]")
    m_obs = _series(sd.obs, "SoilMoistVol", layered=True)
    if m_obs is not None:
        conv = {m: _soil_moisture_volumetric(ds) for m, ds in sd.models.items()}
        conv = {m: v for m, v in conv.items() if v[0] is not None}
        if conv:
            if all(vol for _, vol in conv.values()):
                panels["soil moisture (root-zone water vs tower)"] = (
                    m_obs, {m: v for m, (v, _) in conv.items()}, "θ [m3 m-3]")
            else:
                def z(x):
                    xt = np.where(test, x, np.nan)
                    return (x - np.nanmean(xt)) / np.nanstd(xt)

                panels["soil moisture, standardised over the test period (units differ)"] = (
                    z(m_obs), {m: z(v) for m, (v, _) in conv.items()}, "θ z-score")
    if panels:
        out["untrained"] = plots.plot_untrained(
            plot_dir / f"{stem}_untrained.png", time, panels, test, f"{site}: untrained variables (test period)",
            colours)
    return out


# --------------------------------------------------------------------------------------------
# HTML

_BEST = {"rmse": "min", "nse": "max", "kge": "max", "bias": "absmin", "bias_pct": "absmin", "r": "max"}

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1300px;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:0.9em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f0f0f0} td.txt{text-align:left}
td.best{background:#c8f0c8;font-weight:bold}
tr.suspect td{background:#f8d0c8} .warn{color:#a00000}
img{max-width:100%;border:1px solid #eee;margin:0.3em 0}
.note{color:#555;font-size:0.9em}
"""


def _best_flags(df: pd.DataFrame) -> pd.DataFrame:
    """Best value per (site, flux, scale) and column of `_BEST`; suspect rows never count."""
    flags = pd.DataFrame(False, index=df.index, columns=list(_BEST))
    for _, g in df[~df.suspect.astype(bool)].groupby(["site", "flux", "scale"], sort=False):
        for col, how in _BEST.items():
            v = g[col].astype(float)
            if how == "absmin":
                v = v.abs()
            if v.notna().sum() == 0:
                continue
            best = v.min() if how in ("min", "absmin") else v.max()
            flags.loc[g.index[v == best], col] = True
    return flags


def _skill_html(df: pd.DataFrame) -> str:
    flags = _best_flags(df)
    parts = []
    bad = df[df.suspect.astype(bool)].groupby(["site", "model", "flux"], sort=False).suspect_reason.first()
    if len(bad):
        items = [f"model {m} at site {s} ({f}): {why}" for (s, m, f), why in bad.items()]
        parts.append("<p class='warn'><b>Suspect scores</b> (rows in red, never highlighted as best): "
                     + "; ".join(html.escape(i) for i in items) + ".</p>")
    for flux in df.flux.unique():  # Qle, Qh, then the run's other targets
        for scale in SCALES:
            sub = df[(df.flux == flux) & (df.scale == scale)]
            if sub.empty:
                continue
            name = {"Qle": "LE", "Qh": "H", "Qg": "G"}.get(flux, flux)
            parts.append(f"<h3>{flux} ({name}), {scale}, {html.escape(split_words(sub.split))}</h3>")
            parts.append("<table><tr><th>site</th><th>model</th><th>RMSE [W m-2]</th><th>NSE</th>"
                         "<th>KGE</th><th>bias [W m-2]</th><th>bias %</th><th>r</th><th>n</th></tr>")
            for idx, row in sub.iterrows():
                cells = [f"<td class='txt'>{html.escape(str(row[c]))}</td>" for c in ("site", "model")]
                for col in ("rmse", "nse", "kge", "bias", "bias_pct", "r"):
                    cls = " class='best'" if flags.at[idx, col] else ""
                    mark = "″" if col == "kge" and row.kge_form == "2021" and math.isfinite(row.kge) else ""
                    cells.append(f"<td{cls}>{fmt(row[col])}{mark}</td>")
                cells.append(f"<td>{int(row.n)}</td>")
                parts.append(("<tr class='suspect'>" if row.suspect else "<tr>") + "".join(cells) + "</tr>")
            parts.append("</table>")
            near0 = sub[sub.kge_form == "2021"].groupby("site", sort=False).bias_pct_note.first()
            if len(near0):
                parts.append("<p class='note'>KGE″ (marked ″) and no bias %: "
                             + "; ".join(f"{html.escape(s)}: {html.escape(why)}" for s, why in near0.items())
                             + ".</p>")
    return "\n".join(parts)


def _provenance(sites: dict[str, SiteData]) -> pd.DataFrame:
    """site, model, parameters_from (the prediction files' attribute) where a model records it."""
    rows = [{"site": sid, "model": m, "parameters from": str(ds.attrs["parameters_from"])}
            for sid, sd in sites.items() for m, ds in sd.models.items() if "parameters_from" in ds.attrs]  # fmt: skip
    return pd.DataFrame(rows)


def parameter_reasonability(sites: dict[str, SiteData]) -> pd.DataFrame:
    """Per site and model with learned Kh or rs: the reasonability coefficient (seed 000 Table 3,
    :mod:`hybridlsm.evaluation.derived`: r of log values against the observation-derived bulk K_h and
    the inverted Penman-Monteith r_s) on the test split, and its n. A site whose observations cannot
    give the derived parameters (no u*, ...) has one row saying why."""
    from hybridlsm.evaluation.derived import derived_parameters, reasonability_table

    rows = []
    for sid, sd in sites.items():
        models = {m: ds for m, ds in sd.models.items() if "Kh" in ds.variables or "rs" in ds.variables}
        if not models:
            continue
        try:
            derived = derived_parameters(sd.obs)
        except DataError as err:
            rows.append({"site": sid, "model": "-", "note": f"no observation-derived parameters: {err}"})
            continue
        where = sd.test & (forcing_filled(sd.obs) < FILLED_LONG)
        for m, par in reasonability_table(models, derived, where=where).items():
            rows.append({"site": sid, "model": m, "r Kh": par["Kh"]["r"], "n Kh": par["Kh"]["n"],
                         "r rs": par["rs"]["r"], "n rs": par["rs"]["n"]})
    return pd.DataFrame(rows)


def _repairs_html(sites: dict[str, SiteData]) -> str:
    rows = []
    for site, sd in sites.items():
        lines = [ln for ln in str(sd.obs.attrs.get("repairs_summary", "")).splitlines() if ln]
        items = "".join(f"<li>{html.escape(ln)}</li>" for ln in lines) or "<li>none</li>"
        rows.append(f"<h3>{html.escape(site)}</h3><ul class='note'>{items}</ul>")
    return "\n".join(rows)


# --------------------------------------------------------------------------------------------
# predictive uncertainty (issue 13; scores in `hybridlsm.evaluation.probabilistic`)

REFERENCE_SPLITS = (1, 2)  # train and validation: where the climatological reference comes from


def site_probabilistic(
    sd: SiteData, *, max_qc: int = 1, min_valid_fraction: float = 0.5
) -> tuple[pd.DataFrame, dict, list[str]]:
    """Probabilistic scores of the models that wrote ``<flux>_sd`` at one site (test split, the
    usable observations of `flux_mask`), beside the climatological ensemble built from the usable
    observations of the train and validation splits (`REFERENCE_SPLITS`).

    Returns ``(table, curves, notes)``: the rows of `probabilistic.probabilistic_table` (parts
    ``<flux>_sd_epistemic``/``<flux>_sd_aleatoric`` used where written), ``curves[(flux, scale)] =
    {model or "climatology": Reliability}``, and notes on model files left out (a negative σ)."""
    from hybridlsm.evaluation import probabilistic as P

    frames, curves, notes = [], {}, []
    kw = dict(min_valid_fraction=min_valid_fraction, time_step_s=sd.obs.attrs.get("time_step_s"))
    for flux in scored_variables(sd):
        mus, sds, epi, ale = {}, {}, {}, {}
        for model, ds in sd.models.items():
            s, m = _series(ds, f"{flux}_sd"), _series(ds, flux)
            if s is None or m is None:
                continue
            if np.any(s < 0):
                notes.append(f"model {model} at site {sd.site}: {flux}_sd is negative at {int(np.sum(s < 0))} "
                             "steps; not scored")
                continue
            mus[model], sds[model] = m, s
            for part, store in (("epistemic", epi), ("aleatoric", ale)):
                if (x := _series(ds, f"{flux}_sd_{part}")) is not None:
                    store[model] = x
        if not mus:
            continue
        obs = _series(sd.obs, flux)
        usable = flux_mask(sd.obs, flux, max_qc)
        mask, reference = usable & sd.test, usable & np.isin(sd.split, REFERENCE_SPLITS)
        frames.append(P.probabilistic_table(
            obs, mus, sds, sd.time, mask, reference=reference, epistemic=epi, aleatoric=ale, site=sd.site,
            flux=flux, split=str(sd.obs.attrs.get("split_kind", "test")), **kw))
        for scale in P.PROB_SCALES:
            curves[(flux, scale)] = P.reliability_curves(obs, mus, sds, sd.time, mask, reference, scale=scale, **kw)
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=P.probabilistic_columns())
    return table, curves, notes


def _predictive_uncertainty_html(
    run_dir: Path, sites: dict[str, SiteData], plot_dir: Path, max_qc: int, min_valid_fraction: float,
    colours: dict[str, str],
) -> list[str]:
    """The "Predictive uncertainty" section; writes ``metrics_probabilistic.csv`` and
    ``plots/<site>_reliability.png`` where a model wrote ``<flux>_sd``, else one sentence."""
    from hybridlsm.evaluation import probabilistic as P

    h = ["<h2>Predictive uncertainty</h2>"]
    results = {s: site_probabilistic(sd, max_qc=max_qc, min_valid_fraction=min_valid_fraction)
               for s, sd in sites.items()}  # fmt: skip
    notes = [n for _, _, ns in results.values() for n in ns]
    if notes:
        h.append("<p class='warn'>" + "; ".join(html.escape(n) for n in notes) + ".</p>")
    frames = [t for t, _, _ in results.values() if not t.empty]
    csv = run_dir / "metrics_probabilistic.csv"
    if not frames:
        csv.unlink(missing_ok=True)  # a previous report's scores no longer hold
        h.append("<p class='note'>No model wrote a predictive standard deviation (<code>&lt;flux&gt;_sd</code>, "
                 "such as <code>Qle_sd</code>), so there are no probabilistic scores.</p>")
        return h
    table = pd.concat(frames, ignore_index=True)
    table.to_csv(csv, index=False)
    h.append(
        "<p class='note'>Gaussian predictions N(μ, σ²) from each model's <code>&lt;flux&gt;</code> and "
        "<code>&lt;flux&gt;_sd</code>, test split, usable observations. CRPS [W m-2]: closed form (lower is "
        "better). Reference: a climatological ensemble, per step the observations of the same site, calendar "
        "month and half-hour from the train and validation splits (daily: daily means of the same month), "
        f"used where it has ≥ {P.MIN_MEMBERS} members; its intervals are member quantiles. CRPSS = 1 − "
        "CRPS/CRPS<sub>clim</sub> on the steps both cover (&gt; 0: better than climatology), CRPS<sub>clim</sub> "
        "that of the ensemble of its members; CRPSS fair: against the fair CRPS (Ferro 2014), the climatological "
        "distribution's own, which its finite ensemble scores worse than (on its row: that penalty). Coverage: fraction "
        "of observations inside the central interval μ ± z·σ (calibrated: the nominal level); width: its "
        "mean [W m-2]. r(σ, |e|): correlation of σ with the absolute error; spread/RMSE = √(mean σ²)/RMSE "
        "(calibrated ≈ 1, overconfident &lt; 1). Daily: means over the scored half-hours, σ<sub>day</sub> = "
        "√(Σσ²)/n (independent errors; too small when errors within a day are correlated). Epistemic share: "
        "mean σ<sub>epistemic</sub>²/mean σ² where a model writes it. Written to "
        "<code>metrics_probabilistic.csv</code>.</p>")
    lv = [c.split("_", 1)[1] for c in table.columns if c.startswith("coverage_")]
    names = {"crps": "CRPS [W m-2]", "crpss": "CRPSS", "crpss_fair": "CRPSS fair"}
    for k in lv:
        names |= {f"coverage_{k}": f"coverage {k} %", f"width_{k}": f"width {k} % [W m-2]"}
    names |= {"spread_skill_r": "r(σ, |e|)", "spread_skill_ratio": "spread/RMSE", "epistemic_share": "epistemic share"}
    for flux in table.flux.unique():
        for scale in P.PROB_SCALES:
            sub = table[(table.flux == flux) & (table.scale == scale)]
            if sub.empty:
                continue
            h.append(f"<h3>{html.escape(flux)}, {scale}, {html.escape(split_words(sub.split))}</h3>")
            h.append(table_html(sub[["site", "model", *names, "n"]].rename(columns=names)))
    for site, (_, curves, _) in results.items():
        if not curves:
            continue
        panels = {f"{flux}, {scale}": c for (flux, scale), c in curves.items()}
        png = plots.plot_reliability(
            plot_dir / f"{site_file_name(site)}_reliability.png", panels,
            f"{site}: reliability of the central prediction intervals (test split)", colours,
            ncols=len(P.PROB_SCALES))
        h.append(f"<h3>Reliability, site {html.escape(site)}</h3>{img_html(png, f'{site}: reliability diagram')}")
    return h


# --------------------------------------------------------------------------------------------
# entry point


def _discovery_html(run_dir: Path) -> str:
    """The "Discovered exchange law" section from ``RUN/discovery/`` (``hybridlsm discover``); "" without it."""
    folder = run_dir / "discovery"
    if not (folder / "forms.csv").is_file() or (folder / "forms.csv").stat().st_size <= 1:
        return ""
    forms = pd.read_csv(verified(folder / "forms.csv"))
    meta = read_json_object(verified(folder / "discovery.json")) if (folder / "discovery.json").is_file() else {}
    h = ["<h2>Discovered exchange law</h2>",
         "<p class='note'>Closed forms fitted to each hybrid's learned K_h on the training and validation steps "
         "(<code>hybridlsm discover</code>): the branched power law K_h = a·u^b·|Ri|^c with separate stable and "
         "unstable branches, one power law in |Ri| for both signs, and the Businger–Dyer and Louis schemes with a "
         "fitted scale; R² and RMSE of K_h [m² s⁻¹], AIC on the log residuals (lower is better; k "
         "coefficients). The power-law form with the lower AIC (offline) has its coefficients refitted through "
         "the physics to the training steps' fluxes (online; early stopping on validation), is re-run as the "
         "physics' exchange closure and scored on the test steps.</p>"]
    cols = [c for c in ("model", "fold", "class", "form", "expression", "n", "k", "r2", "rmse", "aic", "delta_aic")
            if c in forms]  # fmt: skip
    h.append(table_html(forms[cols]))
    if (folder / "folds.csv").is_file():  # a leave-one-site-out run: one law per fold
        h.append("<h3>Leave-one-site-out folds</h3><p class='note'>Each fold's model fitted on the K_h it "
                 "learned at its own training sites; its law re-run at the held-out site (half-hourly test NSE of "
                 "the law, the hybrid and the physics); below, the spread of the coefficients across folds.</p>")
        h.append(table_html(pd.read_csv(folder / "folds.csv")))
        h.append(table_html(pd.read_csv(folder / "fold_summary.csv")))
    rows = []
    for label, entry in meta.get("models", {}).items():
        for key, what in (("offline_law", "offline fit to the learned K_h"), ("online_law", "online refit, re-run")):
            for branch, c in (entry.get(key) or {}).items():
                rows.append({"model": label, "law": what, "branch": branch, **c})
        if "co_trained_law" in entry:
            for branch, c in entry["co_trained_law"].items():
                rows.append({"model": label, "law": "co-trained in phase 2", "branch": branch, **c})
        for cls, fit in entry.get("classes", {}).items():
            for branch, sp in fit.get("sparse", {}).items():
                if isinstance(sp, dict) and "terms" in sp:
                    terms = ", ".join(f"{t}: {v:.3g}" for t, v in sp["terms"].items()) or "none"
                    rows.append({"model": label, "law": f"Lasso terms kept ({cls})", "branch": branch, "terms": terms,
                                 "cv R² (log)": sp["cv_r2_log"]})
            if fit.get("r2_kh_true_test_steps") is not None:
                rows.append({"model": label, "law": f"learned vs true K_h ({cls}), test steps",
                             "R²": fit["r2_kh_true_test_steps"]})
    if rows:
        h.append(table_html(pd.DataFrame(rows)))
    skill_path = folder / "skill.csv"
    if skill_path.is_file() and skill_path.stat().st_size > 1:
        skill = pd.read_csv(skill_path)
        skill = skill[skill["scale"] == "halfhourly"] if "scale" in skill else skill
        h.append("<h3>The law re-run as physics, test split, half-hourly</h3>")
        h.append(table_html(skill[[c for c in ("site", "model", "flux", "rmse", "nse", "kge", "bias", "n") if c in skill]]))
    for png in sorted((folder / "plots").glob("*.png")):
        h.append(f"<h3>{html.escape(png.stem)}</h3>{img_html(png, f'discovery fit {png.stem}')}")
    return "\n".join(h)


def build_report(
    run_dir: Path,
    config_name: str | None = None,
    *,
    max_qc: int | None = None,
    min_valid_fraction: float = 0.5,
    shown_as: Path | None = None,
) -> Path:
    """Write ``metrics.csv``, ``skill.json``, ``plots/*.png`` and ``report.html`` into ``run_dir``;
    return the path of ``report.html``. ``config_name`` defaults to the ``config`` attribute of the
    prediction files, else ``name`` in ``config.yaml``, else the directory name. ``max_qc`` defaults
    to the run's ``data.max_qc`` (obs.nc attribute ``max_qc``), else 1. ``shown_as``: the run
    directory the report names (a run builds its report before its folder is moved into place)."""
    run_dir = Path(run_dir)
    shown = html.escape(str(shown_as or run_dir))
    for section in ("validation/validation.json", "discovery/discovery.json", "discovery/forms.csv"):
        if (run_dir / section).is_file():  # checked before anything is rewritten
            verified(run_dir / section)
    sites = load_run(run_dir) if _has_sites(run_dir) or not (run_dir / "maps").is_dir() else {}
    config = config_name if config_name is not None else _config_name(run_dir, sites)
    plot_dir = run_dir / "plots"
    if not sites:  # a grid without tower cells: the maps alone
        return _write_report(run_dir, config, [
            f"<p>Run directory <code>{shown}</code>; no cell of the grid observes a flux, so "
            "nothing is scored as a site.</p>", maps_html(run_dir, plot_dir), training_html(run_dir, plot_dir)])
    if not any(sd.models for sd in sites.values()):
        raise DataError(f"{run_dir}: the run holds observations but no model's predictions "
                        f"({', '.join(sites)}); nothing to score")
    if max_qc is None:
        max_qc = int(next(iter(sites.values())).obs.attrs.get("max_qc", 1))

    skill = run_skill(sites, max_qc=max_qc, min_valid_fraction=min_valid_fraction)[list(SKILL_COLUMNS)]
    skill.to_csv(run_dir / "metrics.csv", index=False)
    records = [
        {k: json_safe(v) for k, v in rec.items()} | {"config": config}
        for rec in skill.to_dict(orient="records")
    ]
    (run_dir / "skill.json").write_text(json.dumps(records, indent=1, allow_nan=False))

    energy = pd.concat([energy_balance_table(sd, max_qc=max_qc) for sd in sites.values()], ignore_index=True)
    untrained = pd.concat([untrained_variables(sd) for sd in sites.values()], ignore_index=True)
    models = sorted({m for sd in sites.values() for m in sd.models})
    colours = plots.model_colours(models)
    figures = {s: _site_plots(sd, plot_dir, max_qc, min_valid_fraction, colours) for s, sd in sites.items()}

    now = _dt.datetime.now().isoformat(timespec="seconds")
    h = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>hybridlsm report: {html.escape(config)}</title><style>{_CSS}</style></head><body>",
        f"<h1>hybridlsm report: {html.escape(config)}</h1>",
        f"<p>Run directory <code>{shown}</code>; generated {now}.<br>"
        f"Sites: {', '.join(html.escape(s) for s in sites)}.<br>"
        f"Models: {', '.join(html.escape(m) for m in models)}.</p>",
        f"<p class='note'>All scores on the steps of split = 3: "
        f"{html.escape(split_words(skill.split, sentence=True))}. Observed fluxes count where finite and "
        f"0 ≤ QC ≤ {max_qc}. Daily and weekly (ISO week) means use the same half-hours for obs and model; a "
        f"period counts when ≥ {min_valid_fraction:.0%} of its steps are valid. Bias = mean(s − o) [W m-2]; "
        "bias % = 100·Σ(s − o)/Σo; KGE is the 2009 form (Gupta et al. 2009). Where the observed mean is near zero, "
        f"μo ≤ {NEAR_ZERO_MEAN:g}·σo (H at night or in winter, G), bias % is withheld and KGE is KGE″ = "
        "1 − √[(r − 1)² + (α − 1)² + ((μs − μo)/σo)²] (Tang et al. 2021), marked ″. A row is suspect "
        "(red, never best) when its |bias| exceeds the range of the scored observations or its RMSE is not "
        "finite: a unit or sign error rather than skill. Best value per site, flux and scale highlighted. Written to "
        "<code>metrics.csv</code> and <code>skill.json</code>.</p>",
        "<h2>Skill</h2>",
        _skill_html(skill),
        maps_html(run_dir, plot_dir),  # "Maps" of a grid run; "" otherwise
        "<h2>Energy balance</h2>",
        "<p class='note'>Residual = Rn − G − H − LE [W m-2] over the test split (obs: steps with usable H and "
        "LE). For a model it is the internal residual (zero for a conserving model apart from storage and "
        "melt); for the tower it is the non-closure. Closure ratio: obs Σ(H+LE)/Σ(Rn−G); model "
        "Σ(H_m+LE_m)/Σ(Rn_o−G_o).</p>",
        table_html(energy),
        "<h2>Untrained variables</h2>",
        "<p class='note'>Top model layer vs the tower's shallowest sensor, test split, native step. "
        "τ: median e-folding time [days] of the drying rate −Δθ/day over rain-free spells (P &lt; 1 mm/day, "
        "≥ 5 days) after a day with P ≥ 5 mm; for θ = θ∞ + A·exp(−t/τ) it is the e-folding time of "
        "θ − θ∞, independent of units and offsets (see <code>hybridlsm.evaluation.report</code>).</p>",
        table_html(untrained),
        "<h2>Where the parameters came from</h2>",
        "<p class='note'>Per site and model: the physical parameters the prediction used (a site's own "
        "calibration, or what transfers to a site the model was not trained on).</p>",
        table_html(_provenance(sites)),
        "<h2>Parameter reasonability</h2>",
        "<p class='note'>Correlation (of log values, test split) between each model's learned K_h and r_s and "
        "the ones derived from the tower: bulk K_h = (z − d)·g_a,h from u* and wind with Thom's excess "
        "resistance, r_s from the inverted Penman–Monteith equation on daytime, dry-canopy steps with enough "
        "available energy (seed 000 Table 3; <code>hybridlsm.evaluation.derived</code>).</p>",
        table_html(parameter_reasonability(sites)),
        "<h2>Data repairs and gaps</h2>",
        "<p class='note'>Per site: what the readers repaired, what was filled or estimated in the forcing "
        "(flagged in <code>forcing_filled</code> of every output file; steps filled from the diurnal cycle or "
        "estimated are not scored), observed targets without QC flags and site metadata no source gave.</p>",
        _repairs_html(sites),
    ]
    captions = {
        "diurnal": "Mean diurnal cycle per season",
        "timeseries": "Daily means, test period",
        "scatter": "Observed vs predicted",
        "energy": "Energy-balance residual",
        "parameters": "Learned parameters over time",
        "untrained": "Untrained variables",
    }
    for site, figs in figures.items():
        h.append(f"<h2>Site {html.escape(site)}</h2>")
        for key, caption in captions.items():
            if key in figs:
                h.append(f"<h3>{caption}</h3>{img_html(figs[key], f'{site} {caption}')}")
        if "parameters" not in figs:
            h.append("<p class='note'>No model output Kh or rs at this site.</p>")
        if "untrained" not in figs:
            h.append("<p class='note'>No simulated/observed SoilTemp or soil moisture pair at this site.</p>")
    h.append(training_html(run_dir, plot_dir))  # "Training": stopping epochs and curves; "" without checkpoints
    h.extend(_predictive_uncertainty_html(run_dir, sites, plot_dir, max_qc, min_valid_fraction, colours))
    h.append(hotspots_html(run_dir, colours=colours))  # "Parameter uncertainty hotspots"; "" without parameter SDs
    h.append(_discovery_html(run_dir))
    if (run_dir / "validation" / "validation.json").is_file():  # written by `hybridlsm validate`
        from hybridlsm.evaluation.validation import validation_html  # lazily: it loads JAX

        h.append(validation_html(run_dir))
    h.append("</body></html>")
    out = run_dir / "report.html"
    out.write_text("\n".join(h), encoding="utf-8")
    return out
