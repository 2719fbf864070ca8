"""Uncertainty of the learned parameters over time and where it is highest (issue 13).

A hybrid run with MC dropout writes, besides each learned parameter ``Kh`` [m2 s-1], ``rs``, ``ra``
[s m-1], its spread over the MC samples (``Kh_sd``, ``rs_sd``, ``ra_sd``), and the epistemic SD of
the fluxes (``Qh_sd_epistemic``, ``Qle_sd_epistemic``). This module asks where those spreads are
large and under which conditions.

Input (docs/architecture.md §5)::

    run_dir/predictions/<site>/<model>.nc   Kh, rs (ra), Kh_sd, rs_sd (ra_sd), RiB, Qh, Qle,
                                            Qh_sd_epistemic, Qle_sd_epistemic (what a model writes)
    run_dir/predictions/<site>/obs.nc       Wind, SWdown, split; attrs site_id, igbp

Definitions
-----------
- **Relative spread** of a learned parameter p: ``p_sd / p`` per step (``p_sd_epistemic`` where no
  ``p_sd`` is written), where both are finite and p > 0. For a flux F (``include_fluxes``):
  ``F_sd_epistemic / |F|`` where |F| ≥ `FLUX_MIN_ABS` (W m-2; near zero, at night, the ratio means
  nothing). Rows are named ``Kh``, ``rs`` (``ra``) and ``Qh_epistemic``, ``Qle_epistemic``. Every
  step of the record counts (day and night; all splits unless ``splits`` narrows them): the spread
  is a property of the model, not a score against the observations.
- **Hotspots** of a (site, model, quantity): the steps whose relative spread is above its
  ``quantile`` (default 0.9) over the steps where it is defined. The conditions there are set
  beside the same conditions over all those steps ("all"):
  wind (obs ``Wind``, median); the bulk Richardson number (``RiB``: median and the fraction
  stable, RiB > 0; the model's own RiB, else the site's ``physics`` model's, else another model's
  at the site, named in ``ri_source``); the fraction per season (DJF/MAM/JJA/SON, local standard
  time) and of the calendar month where most hotspots fall (``top_month``); the fraction of
  daytime (obs SWdown > `DAYTIME_SWDOWN` W m-2); the site's land cover (obs attr ``igbp``); and
  ``spread_ratio`` = median relative spread of the hotspots / median relative spread of all steps.
  Fractions are over the steps where the condition is known (finite).
- **Binned spread**: the mean relative spread per stability class of `RI_BINS` (unstable RiB <
  −0.1, near-neutral −0.1 ≤ RiB ≤ 0.01, stable RiB > 0.01) and per wind-speed bin of `WIND_EDGES`
  (lo ≤ Wind < hi m s-1), columns ``spread_ri_<class>`` and ``spread_wind_<lo>_<hi>`` of
  `hotspots`; `binned_spread` gives the same with n, median and quartiles.

Outputs (`write_hotspot_outputs`): ``hotspots.csv`` (`hotspots`), ``parameter_uncertainty.csv``
(`parameter_uncertainty`), ``hotspots_binned.csv`` (`binned_spread`), each written atomically with a
``<file>.sha256`` sidecar (`hybridlsm.rundir.write_checked`), and per site and model with parameter
SDs ``plots/<site>_<model>_hotspots.png``: relative spread of K_h and r_s against RiB (binned
medians with the interquartile range) and per month. `hotspots_html` is the report's section.

Models without any ``_sd`` variable of the quantities asked for are left out of the tables (the
section names the models without parameter SDs). This module imports nothing of
``hybridlsm.evaluation.report`` (the report imports it).
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from hybridlsm.domain import site_file_name
from hybridlsm.evaluation.html_parts import fmt, img_html, table_html
from hybridlsm.rundir import atomic_write, checksum_path, write_checked

__all__ = [
    "PARAMETERS",
    "FLUXES",
    "FLUX_MIN_ABS",
    "DAYTIME_SWDOWN",
    "RI_BINS",
    "RI_PLOT_EDGES",
    "WIND_EDGES",
    "HOTSPOT_COLUMNS",
    "UNCERTAINTY_COLUMNS",
    "BINNED_COLUMNS",
    "HotspotOutputs",
    "relative_spread",
    "parameter_uncertainty",
    "hotspots",
    "binned_spread",
    "write_hotspot_outputs",
    "hotspots_html",
]

#: Learned parameters whose MC-dropout spread is analysed by default (``ra`` may be added).
PARAMETERS = ("Kh", "rs")
#: Fluxes whose epistemic spread is analysed beside them (``include_fluxes``).
FLUXES = ("Qh", "Qle")
#: |flux| [W m-2] below which a flux's relative spread is not defined.
FLUX_MIN_ABS = 10.0
#: Daytime: obs SWdown above this [W m-2].
DAYTIME_SWDOWN = 10.0
#: Stability classes of the bulk Richardson number: (name, lo, hi, lo inclusive, hi inclusive).
RI_BINS = (
    ("unstable", -math.inf, -0.1, False, False),
    ("near_neutral", -0.1, 0.01, True, True),
    ("stable", 0.01, math.inf, False, False),
)
#: Finer RiB bins of the figures.
RI_PLOT_EDGES = (-math.inf, -1.0, -0.3, -0.1, -0.03, -0.01, 0.0, 0.01, 0.03, 0.1, 0.3, 1.0, math.inf)
#: Wind-speed bins [m s-1], lo ≤ Wind < hi.
WIND_EDGES = (0.0, 1.0, 2.0, 4.0, 6.0, math.inf)
#: Fewest steps a bin of a figure needs to be drawn.
MIN_BIN_STEPS = 5

_SEASONS = {"DJF": (12, 1, 2), "MAM": (3, 4, 5), "JJA": (6, 7, 8), "SON": (9, 10, 11)}
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _edge(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:g}".replace(".", "p")


def _wind_bins() -> list[tuple[str, float, float]]:
    return [(f"{_edge(lo)}_{_edge(hi)}", lo, hi) for lo, hi in zip(WIND_EDGES[:-1], WIND_EDGES[1:])]


HOTSPOT_COLUMNS = (
    "site", "model", "parameter", "igbp", "ri_source", "quantile", "threshold", "n", "n_hotspot",
    "median_spread", "hotspot_median_spread", "spread_ratio",
    "wind_median_hotspot", "wind_median_all", "ri_median_hotspot", "ri_median_all",
    "frac_stable_hotspot", "frac_stable_all", "frac_day_hotspot", "frac_day_all",
    *(f"frac_{s}_hotspot" for s in _SEASONS), *(f"frac_{s}_all" for s in _SEASONS),
    "top_season", "top_month", "frac_top_month_hotspot", "frac_top_month_all",
    *(f"spread_ri_{name}" for name, *_ in RI_BINS), *(f"spread_wind_{lab}" for lab, _, _ in _wind_bins()),
)  # fmt: skip
UNCERTAINTY_COLUMNS = ("site", "model", "parameter", "by", "period", "n", "median", "p90", "mean")
BINNED_COLUMNS = ("site", "model", "parameter", "variable", "bin", "lo", "hi", "n", "mean", "median", "q25", "q75")


# --------------------------------------------------------------------------------------------
# loading


@dataclass
class _Series:
    """One quantity of one model at one site: relative spread and the conditions, on obs time."""

    site: str
    model: str
    parameter: str
    igbp: str
    time: np.ndarray
    spread: np.ndarray  # relative spread, NaN where not defined (or outside ``splits``)
    wind: np.ndarray
    ri: np.ndarray
    ri_source: str
    swdown: np.ndarray


@dataclass
class _Site:
    site: str
    igbp: str
    obs: xr.Dataset
    models: dict[str, xr.Dataset]


def _vector(ds: xr.Dataset, var: str) -> np.ndarray | None:
    """``var`` as a 1-D float array on time (singleton extra dims dropped), or None."""
    if var not in ds.variables or "time" not in ds[var].dims:
        return None
    da = ds[var]
    extra = [d for d in da.dims if d != "time"]
    big = [d for d in extra if da.sizes[d] != 1]
    if big:
        raise ValueError(f"{ds.encoding.get('source', '<dataset>')}: variable {var!r} has extra dims {big}; "
                         "expected one site on time")  # fmt: skip
    return np.asarray(da.isel({d: 0 for d in extra}).values, dtype=float)


def _wanted(parameters: Sequence[str]) -> list[str]:
    names = ["RiB", *FLUXES]
    for p in parameters:
        names += [p, f"{p}_sd", f"{p}_sd_epistemic"]
    names += [f"{f}_sd_epistemic" for f in FLUXES]
    return names


def _load(run_dir: Path, parameters: Sequence[str]) -> list[_Site]:
    pred = Path(run_dir) / "predictions"
    if not pred.is_dir():
        raise FileNotFoundError(f"{pred}: no predictions directory (run directory layout: architecture §5)")
    wanted = _wanted(parameters)
    sites = []
    for d in sorted(p for p in pred.iterdir() if p.is_dir()):
        obs_path = d / "obs.nc"
        if not obs_path.is_file():
            raise FileNotFoundError(f"{obs_path}: observations of site {d.name!r} are missing")
        with xr.open_dataset(obs_path) as o:
            if "time" not in o.coords:
                raise ValueError(f"{obs_path}: no 'time' coordinate")
            obs = o[[v for v in ("Wind", "SWdown", "split") if v in o.variables]].load()
            obs.attrs = dict(o.attrs)
        models = {}
        for f in sorted(d.glob("*.nc")):
            if f.name == "obs.nc":
                continue
            with xr.open_dataset(f) as ds:
                if "time" not in ds.coords:
                    raise ValueError(f"{f}: no 'time' coordinate")
                keep = [v for v in wanted if v in ds.variables]
                models[f.stem] = ds[keep].reindex(time=obs["time"]).load()
        site = str(obs.attrs.get("site_id") or d.name)
        igbp = str(obs.attrs.get("igbp", "") or "unknown")
        sites.append(_Site(site, igbp, obs, models))
    if not sites:
        raise FileNotFoundError(f"{pred}: no site directories")
    return sites


def relative_spread(mean: np.ndarray, sd: np.ndarray, *, flux: bool = False) -> np.ndarray:
    """sd / mean where both are finite, sd ≥ 0 and mean > 0; for a flux sd / |mean| where
    |mean| ≥ `FLUX_MIN_ABS`. NaN elsewhere."""
    mean = np.asarray(mean, dtype=float)
    sd = np.asarray(sd, dtype=float)
    ok = np.isfinite(mean) & np.isfinite(sd) & (sd >= 0)
    denom = np.abs(mean) if flux else mean
    ok &= (denom >= FLUX_MIN_ABS) if flux else (denom > 0)
    out = np.full(mean.shape, np.nan)
    out[ok] = sd[ok] / denom[ok]
    return out


def _parameter_sd(ds: xr.Dataset, p: str) -> np.ndarray | None:
    sd = _vector(ds, f"{p}_sd")
    return sd if sd is not None else _vector(ds, f"{p}_sd_epistemic")


def _ri_for(site: _Site, model: str) -> tuple[np.ndarray, str]:
    own = _vector(site.models[model], "RiB")
    if own is not None:
        return own, model
    order = (["physics"] if "physics" in site.models else []) + sorted(site.models)
    for other in order:
        ri = _vector(site.models[other], "RiB")
        if ri is not None:
            return ri, other
    return np.full(site.obs.sizes["time"], np.nan), "none"


def _collect(
    run_dir: Path, parameters: Sequence[str], include_fluxes: bool, splits: Sequence[int] | None
) -> tuple[list[_Series], dict[str, list[str]]]:
    """Every (site, model, quantity) with an SD, and per site the models without parameter SDs."""
    out, without = [], {}
    for site in _load(run_dir, parameters):
        n = site.obs.sizes["time"]
        time = np.asarray(site.obs["time"].values, dtype="datetime64[ns]")
        nan = np.full(n, np.nan)
        wind = w if (w := _vector(site.obs, "Wind")) is not None else nan
        swdown = s if (s := _vector(site.obs, "SWdown")) is not None else nan
        keep = np.ones(n, bool)
        if splits is not None:
            split = _vector(site.obs, "split")
            keep = np.isin(split, list(splits)) if split is not None else np.zeros(n, bool)
        without[site.site] = []
        for model, ds in site.models.items():
            quantities = {}
            for p in parameters:
                m, sd = _vector(ds, p), _parameter_sd(ds, p)
                if m is not None and sd is not None:
                    quantities[p] = relative_spread(m, sd)
            if not quantities:
                without[site.site].append(model)
            if include_fluxes:
                for f in FLUXES:
                    m, sd = _vector(ds, f), _vector(ds, f"{f}_sd_epistemic")
                    if m is not None and sd is not None:
                        quantities[f"{f}_epistemic"] = relative_spread(m, sd, flux=True)
            if not quantities:
                continue
            ri, ri_source = _ri_for(site, model)
            for name, rel in quantities.items():
                rel = np.where(keep, rel, np.nan)
                if not np.isfinite(rel).any():
                    continue
                out.append(_Series(site.site, model, name, site.igbp, time, rel, wind, ri, ri_source, swdown))
    return out, without


# --------------------------------------------------------------------------------------------
# tables


def _months(time: np.ndarray) -> np.ndarray:
    return (np.asarray(time, dtype="datetime64[M]").astype(np.int64) % 12) + 1


def _hours(time: np.ndarray) -> np.ndarray:
    t = np.asarray(time, dtype="datetime64[ns]")
    return ((t - t.astype("datetime64[D]")).astype(np.int64) // 3_600_000_000_000).astype(int)


def _summary(x: np.ndarray) -> dict:
    x = x[np.isfinite(x)]
    if not x.size:
        return dict(n=0, median=math.nan, p90=math.nan, mean=math.nan)
    return dict(n=int(x.size), median=float(np.median(x)), p90=float(np.quantile(x, 0.9)), mean=float(x.mean()))


def _uncertainty_from(series: Sequence[_Series]) -> pd.DataFrame:
    rows = []
    for s in series:
        key = dict(site=s.site, model=s.model, parameter=s.parameter)
        rows.append(key | dict(by="all", period="all") | _summary(s.spread))
        ok = np.isfinite(s.spread)
        ym = np.asarray(s.time, dtype="datetime64[M]")
        for m in np.unique(ym[ok]):
            rows.append(key | dict(by="month", period=str(m)) | _summary(s.spread[ym == m]))
        hours = _hours(s.time)
        for h in np.unique(hours[ok]):
            rows.append(key | dict(by="hour", period=f"{h:02d}") | _summary(s.spread[hours == h]))
    return pd.DataFrame(rows, columns=list(UNCERTAINTY_COLUMNS))


def parameter_uncertainty(
    run_dir: Path,
    *,
    parameters: Sequence[str] = PARAMETERS,
    include_fluxes: bool = True,
    splits: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Relative spread (sd/mean, see the module docs) per site, model and quantity, long format
    (`UNCERTAINTY_COLUMNS`): ``by == "all"`` (period ``"all"``) the whole record, ``by == "month"``
    per calendar month of the record (period ``"YYYY-MM"``, the spread over time), ``by == "hour"``
    per hour of day (period ``"00"``–``"23"``, local standard time); n, median, 90th percentile and
    mean of the relative spread over the steps where it is defined (and in ``splits``, default all)."""
    series, _ = _collect(Path(run_dir), parameters, include_fluxes, splits)
    return _uncertainty_from(series)


def _in_ri_bin(ri: np.ndarray, lo: float, hi: float, lo_incl: bool, hi_incl: bool) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        a = ri >= lo if lo_incl else ri > lo
        b = ri <= hi if hi_incl else ri < hi
    return a & b & np.isfinite(ri)


def _bins(s: _Series) -> list[tuple[str, str, float, float, np.ndarray]]:
    """(variable, bin, lo, hi, member mask) of the RiB classes and wind bins."""
    out = [("RiB", name, lo, hi, _in_ri_bin(s.ri, lo, hi, li, hi_)) for name, lo, hi, li, hi_ in RI_BINS]
    with np.errstate(invalid="ignore"):
        out += [("Wind", lab, lo, hi, (s.wind >= lo) & (s.wind < hi)) for lab, lo, hi in _wind_bins()]
    return out


def _binned_rows(s: _Series) -> list[dict]:
    ok = np.isfinite(s.spread)
    rows = []
    for var, lab, lo, hi, member in _bins(s):
        x = s.spread[ok & member]
        stats = dict(n=int(x.size), mean=math.nan, median=math.nan, q25=math.nan, q75=math.nan)
        if x.size:
            q25, med, q75 = np.quantile(x, [0.25, 0.5, 0.75])
            stats |= dict(mean=float(x.mean()), median=float(med), q25=float(q25), q75=float(q75))
        rows.append(dict(site=s.site, model=s.model, parameter=s.parameter, variable=var, bin=lab, lo=lo, hi=hi)
                    | stats)  # fmt: skip
    return rows


def binned_spread(
    run_dir: Path,
    *,
    parameters: Sequence[str] = PARAMETERS,
    include_fluxes: bool = True,
    splits: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Relative spread per RiB stability class (`RI_BINS`) and wind-speed bin (`WIND_EDGES`) per
    site, model and quantity (`BINNED_COLUMNS`: n, mean, median, quartiles over the bin's steps)."""
    series, _ = _collect(Path(run_dir), parameters, include_fluxes, splits)
    rows = [r for s in series for r in _binned_rows(s)]
    return pd.DataFrame(rows, columns=list(BINNED_COLUMNS))


def _median(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size else math.nan


def _fraction(flag: np.ndarray, known: np.ndarray) -> float:
    return float(flag[known].mean()) if known.any() else math.nan


def _hotspot_row(s: _Series, quantile: float) -> dict | None:
    ok = np.isfinite(s.spread)
    if not ok.any():
        return None
    rel = s.spread
    threshold = float(np.quantile(rel[ok], quantile))
    hot = ok & (rel > threshold)
    med_all, med_hot = _median(rel[ok]), _median(rel[hot])
    row = dict(site=s.site, model=s.model, parameter=s.parameter, igbp=s.igbp, ri_source=s.ri_source,
               quantile=quantile, threshold=threshold, n=int(ok.sum()), n_hotspot=int(hot.sum()),
               median_spread=med_all, hotspot_median_spread=med_hot,
               spread_ratio=med_hot / med_all if med_all > 0 else math.nan)  # fmt: skip
    ri_known, day_known = np.isfinite(s.ri), np.isfinite(s.swdown)
    with np.errstate(invalid="ignore"):
        stable, day = s.ri > 0, s.swdown > DAYTIME_SWDOWN
    month = _months(s.time)
    for tag, sel in (("hotspot", hot), ("all", ok)):
        row[f"wind_median_{tag}"] = _median(s.wind[sel])
        row[f"ri_median_{tag}"] = _median(s.ri[sel])
        row[f"frac_stable_{tag}"] = _fraction(stable, sel & ri_known)
        row[f"frac_day_{tag}"] = _fraction(day, sel & day_known)
        for name, months in _SEASONS.items():
            row[f"frac_{name}_{tag}"] = _fraction(np.isin(month, months), sel)
    if hot.any():
        counts = np.bincount(month[hot], minlength=13)[1:]
        top = int(np.argmax(counts)) + 1
        row["top_season"] = max(_SEASONS, key=lambda k: row[f"frac_{k}_hotspot"])
        row["top_month"] = _MONTHS[top - 1]
        row["frac_top_month_hotspot"] = _fraction(month == top, hot)
        row["frac_top_month_all"] = _fraction(month == top, ok)
    else:
        row |= dict(top_season="", top_month="", frac_top_month_hotspot=math.nan, frac_top_month_all=math.nan)
    for var, lab, _, _, member in _bins(s):
        x = rel[ok & member]
        row[f"spread_{'ri' if var == 'RiB' else 'wind'}_{lab}"] = float(x.mean()) if x.size else math.nan
    return row


def _check_quantile(quantile: float) -> float:
    q = float(quantile)
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile {quantile!r}: expected a number between 0 and 1 (exclusive), e.g. 0.9")
    return q


def hotspots(
    run_dir: Path,
    quantile: float = 0.9,
    *,
    parameters: Sequence[str] = PARAMETERS,
    include_fluxes: bool = True,
    splits: Sequence[int] | None = None,
) -> pd.DataFrame:
    """One row per site, model and quantity with an SD (`HOTSPOT_COLUMNS`): the hotspot steps (the
    relative spread above its ``quantile``) and the conditions there beside all steps, plus the mean
    relative spread per RiB class and wind bin (module docs)."""
    q = _check_quantile(quantile)
    series, _ = _collect(Path(run_dir), parameters, include_fluxes, splits)
    rows = [r for s in series if (r := _hotspot_row(s, q)) is not None]
    return pd.DataFrame(rows, columns=list(HOTSPOT_COLUMNS))


# --------------------------------------------------------------------------------------------
# figures and files


def _binned_quartiles(x: np.ndarray, y: np.ndarray, edges: Sequence[float]) -> tuple[np.ndarray, ...]:
    """Per bin of ``x`` with ≥ `MIN_BIN_STEPS` finite pairs: median x, and quartiles of y."""
    ok = np.isfinite(x) & np.isfinite(y)
    xc, q25, q50, q75 = [], [], [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = ok & (x >= lo) & (x < hi)
        if sel.sum() < MIN_BIN_STEPS:
            continue
        a, b, c = np.quantile(y[sel], [0.25, 0.5, 0.75])
        xc.append(np.median(x[sel]))
        q25.append(a)
        q50.append(b)
        q75.append(c)
    return tuple(np.asarray(v, dtype=float) for v in (xc, q25, q50, q75))


def _plot_model(path: Path, site: str, model: str, series: Sequence[_Series], colour: str) -> Path:
    from hybridlsm.evaluation import plots

    fig, axes = plots.new_figure(len(series), 2, width=5.5, height=2.8)
    for i, s in enumerate(series):
        label = f"{s.parameter}_sd / {s.parameter}"
        ax = axes[i, 0]
        xc, q25, q50, q75 = _binned_quartiles(s.ri, s.spread, RI_PLOT_EDGES)
        if xc.size:
            ax.fill_between(xc, q25, q75, color=colour, alpha=0.25, lw=0, label="IQR")
            ax.plot(xc, q50, color=colour, marker="o", ms=3, lw=1.2, label="median")
            ax.set_xscale("symlog", linthresh=0.01)
            for _, lo, _, _, _ in RI_BINS[1:]:
                ax.axvline(lo, color="0.6", lw=0.8, ls="--")
            ax.legend(fontsize=7, loc="upper left")
        else:
            ax.text(0.5, 0.5, "no RiB", ha="center", va="center", transform=ax.transAxes, color="0.5")
        ax.set_xlabel(f"bulk Richardson number RiB ({s.ri_source})")
        ax.set_ylabel(label)
        ax.set_title(f"{s.parameter}: relative spread vs RiB (binned median and IQR)", fontsize=9)

        ax = axes[i, 1]
        ym = np.asarray(s.time, dtype="datetime64[M]")
        ok = np.isfinite(s.spread)
        months = np.unique(ym[ok])
        stats = [np.quantile(s.spread[ok & (ym == m)], [0.25, 0.5, 0.75]) for m in months]
        if months.size:
            mid = months.astype("datetime64[ns]") + np.timedelta64(15, "D")
            st = np.asarray(stats)
            ax.fill_between(mid, st[:, 0], st[:, 2], color=colour, alpha=0.25, lw=0)
            ax.plot(mid, st[:, 1], color=colour, marker="o", ms=3, lw=1.2)
            plots._date_axis(ax)
        ax.set_ylabel(label)
        ax.set_title(f"{s.parameter}: monthly median and IQR", fontsize=9)
    fig.suptitle(f"{site}, {model}: relative MC-dropout spread of the learned parameters")
    path = Path(path)
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=90))
    return path


@dataclass
class HotspotOutputs:
    """What `write_hotspot_outputs` computed and wrote."""

    table: pd.DataFrame
    uncertainty: pd.DataFrame
    binned: pd.DataFrame
    without_parameter_sd: dict[str, list[str]] = field(default_factory=dict)  # site -> models
    plots: dict[tuple[str, str], Path] = field(default_factory=dict)  # (site, model) -> png
    files: list[Path] = field(default_factory=list)

    @property
    def has_parameter_sd(self) -> bool:
        """Whether a model wrote the SD of a learned parameter (not only of a flux)."""
        return any(not str(p).endswith("_epistemic") for p in self.table["parameter"])


_CSV = {"table": "hotspots.csv", "uncertainty": "parameter_uncertainty.csv", "binned": "hotspots_binned.csv"}


def write_hotspot_outputs(
    run_dir: Path,
    quantile: float = 0.9,
    *,
    parameters: Sequence[str] = PARAMETERS,
    include_fluxes: bool = True,
    splits: Sequence[int] | None = None,
    colours: Mapping[str, str] | None = None,
) -> HotspotOutputs:
    """Write ``hotspots.csv``, ``parameter_uncertainty.csv`` and ``hotspots_binned.csv`` (atomic,
    with ``.sha256`` sidecars) and ``plots/<site>_<model>_hotspots.png`` per site and model with
    parameter SDs into ``run_dir``. When no model has an SD, nothing is written and the tables of a
    previous report are removed (they no longer hold)."""
    run_dir = Path(run_dir)
    q = _check_quantile(quantile)
    series, without = _collect(run_dir, parameters, include_fluxes, splits)
    table = pd.DataFrame([r for s in series if (r := _hotspot_row(s, q)) is not None], columns=list(HOTSPOT_COLUMNS))
    uncertainty = _uncertainty_from(series)
    binned = pd.DataFrame([r for s in series for r in _binned_rows(s)], columns=list(BINNED_COLUMNS))
    out = HotspotOutputs(table, uncertainty, binned, {k: v for k, v in without.items() if v})
    frames = {"table": table, "uncertainty": uncertainty, "binned": binned}
    for key, name in _CSV.items():
        path = run_dir / name
        if table.empty:
            path.unlink(missing_ok=True)
            checksum_path(path).unlink(missing_ok=True)
            continue
        write_checked(path, lambda p, df=frames[key]: df.to_csv(p, index=False))
        out.files.append(path)
    if colours is None:
        from hybridlsm.evaluation.plots import model_colours

        colours = model_colours(sorted({s.model for s in series}))
    groups: dict[tuple[str, str], list[_Series]] = {}
    for s in series:
        if s.parameter in parameters:
            groups.setdefault((s.site, s.model), []).append(s)
    for (site, model), ss in groups.items():
        png = run_dir / "plots" / f"{site_file_name(site)}_{site_file_name(model)}_hotspots.png"
        out.plots[(site, model)] = _plot_model(png, site, model, ss, colours.get(model, "C0"))
        out.files.append(png)
    return out


# --------------------------------------------------------------------------------------------
# report section


def _pair(a: float, b: float, pct: bool = False) -> str:
    if pct:
        return f"{fmt(100 * a, 0)} / {fmt(100 * b, 0)}" if math.isfinite(a) else f"– / {fmt(100 * b, 0)}"
    return f"{fmt(a)} / {fmt(b)}"


def _conditions_table(table: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, r in table.iterrows():
        season = r.top_season
        rows.append({
            "site": r.site, "model": r.model, "quantity": r.parameter, "land cover": r.igbp,
            "n hotspot / n": f"{r.n_hotspot} / {r.n}",
            "spread hotspot / median": _pair(r.hotspot_median_spread, r.median_spread),
            "ratio": r.spread_ratio,
            "wind [m s-1] hotspot / all": _pair(r.wind_median_hotspot, r.wind_median_all),
            "RiB hotspot / all": _pair(r.ri_median_hotspot, r.ri_median_all),
            "stable % hotspot / all": _pair(r.frac_stable_hotspot, r.frac_stable_all, pct=True),
            "day % hotspot / all": _pair(r.frac_day_hotspot, r.frac_day_all, pct=True),
            "top season: % hotspot / all": (
                f"{season}: " + _pair(r[f"frac_{season}_hotspot"], r[f"frac_{season}_all"], pct=True)
                if season else "–"),
            "top month: % hotspot / all": (
                f"{r.top_month}: " + _pair(r.frac_top_month_hotspot, r.frac_top_month_all, pct=True)
                if r.top_month else "–"),
        })  # fmt: skip
    return pd.DataFrame(rows)


def _bins_table(table: pd.DataFrame) -> pd.DataFrame:
    ri = {f"spread_ri_{name}": lab for (name, *_), lab in
          zip(RI_BINS, ("RiB < −0.1", "−0.1 ≤ RiB ≤ 0.01", "RiB > 0.01"))}  # fmt: skip
    wind = {f"spread_wind_{lab}": (f"wind ≥ {lo:g}" if math.isinf(hi) else f"wind {lo:g}–{hi:g}")
            for lab, lo, hi in _wind_bins()}  # fmt: skip
    cols = {"site": "site", "model": "model", "parameter": "quantity", "median_spread": "all steps (median)"}
    return table[[*cols, *ri, *wind]].rename(columns=cols | ri | wind)


def hotspots_html(run_dir: Path, quantile: float = 0.9, *, colours: Mapping[str, str] | None = None) -> str:
    """The report's "Parameter uncertainty hotspots" section (tables and embedded figures); writes
    the outputs of `write_hotspot_outputs`. Empty string when no model wrote a parameter SD."""
    res = write_hotspot_outputs(run_dir, quantile, colours=colours)
    if not res.has_parameter_sd:
        return ""
    q = _check_quantile(quantile)
    h = ["<h2>Parameter uncertainty hotspots</h2>"]
    h.append(
        "<p class='note'>Relative spread of each learned parameter over the MC-dropout samples, "
        "<code>Kh_sd/Kh</code> and <code>rs_sd/rs</code>, per step over the whole record (day and night; "
        "flux rows: <code>&lt;flux&gt;_sd_epistemic/|flux|</code> where |flux| ≥ "
        f"{FLUX_MIN_ABS:g} W m-2). Hotspots: the steps above the {q:.0%} quantile of a model's relative "
        "spread. Beside them the same conditions over all steps (hotspot / all): median wind (obs), median "
        "bulk Richardson number RiB (the model's own, else the physics model's) and the share stable (RiB "
        f"&gt; 0), the share of daytime (SWdown &gt; {DAYTIME_SWDOWN:g} W m-2), the season and calendar month "
        "holding most hotspots and their share; ratio = median spread of the hotspots / median spread. "
        "Written to <code>hotspots.csv</code>, <code>parameter_uncertainty.csv</code> (median and 90th "
        "percentile per month and hour of day) and <code>hotspots_binned.csv</code> "
        "(<code>hybridlsm.evaluation.hotspots</code>).</p>")
    if res.without_parameter_sd:
        items = "; ".join(f"{html.escape(s)}: {', '.join(html.escape(m) for m in ms)}"
                          for s, ms in res.without_parameter_sd.items())  # fmt: skip
        h.append(f"<p class='note'>Models without parameter SDs (no <code>Kh_sd</code>/<code>rs_sd</code>; "
                 f"not dropout hybrids or not run with MC dropout), left out of the figures: {items}.</p>")
    t = res.table
    shown = t[t.set_index(["site", "model"]).index.isin(list(res.plots))]  # models with parameter SDs
    if len(shown) < len(t):
        h.append("<p class='note'>The flux rows of the other models are in <code>hotspots.csv</code>.</p>")
    h.append("<h3>Conditions at the hotspots</h3>")
    h.append(table_html(_conditions_table(shown)))
    h.append("<h3>Mean relative spread by stability and wind speed [m s-1]</h3>")
    h.append(table_html(_bins_table(shown)))
    for (site, model), png in res.plots.items():
        h.append(f"<h3>Site {html.escape(site)}, {html.escape(model)}</h3>"
                 f"{img_html(png, f'{site} {model}: parameter uncertainty hotspots')}")
    return "\n".join(h)
