"""Report figures (matplotlib, Agg canvas; no pyplot, so no global backend state is touched).

Every function takes plain arrays on a common time axis, writes one PNG and returns its path.
Observations are drawn in black, models in the tab10 colours in the order given.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib import dates as mdates
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from hybridlsm.evaluation.metrics import aggregate, joint_mask, pearson_r, rmse

__all__ = [
    "SEASONS",
    "model_colours",
    "season_of",
    "new_figure",
    "save_figure",
    "plot_diurnal_cycles",
    "plot_daily_series",
    "plot_scatter",
    "plot_energy_residual",
    "plot_parameters",
    "plot_untrained",
    "plot_reliability",
]

SEASONS = {"DJF": (12, 1, 2), "MAM": (3, 4, 5), "JJA": (6, 7, 8), "SON": (9, 10, 11)}
FLUX_LABEL = {"Qle": "LE [W m$^{-2}$]", "Qh": "H [W m$^{-2}$]"}
OBS_STYLE = dict(color="black", lw=1.6, label="obs")


def model_colours(models) -> dict[str, str]:
    """One tab10 colour per model name, in the order given; pass it to every plot of a report so a
    model has the same colour everywhere."""
    return {m: f"C{i % 10}" for i, m in enumerate(models)}


def _colours(colours: Mapping[str, str] | None, models) -> dict[str, str]:
    base = dict(colours or {})
    extra = [m for m in models if m not in base]
    for i, m in enumerate(extra, start=len(base)):
        base[m] = f"C{i % 10}"
    return base


def _date_axis(ax) -> None:
    loc = mdates.AutoDateLocator(minticks=4, maxticks=10)
    ax.xaxis.set_major_locator(loc)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(loc))


def _hour_axis(ax) -> None:
    ax.set_xlim(0, 24)
    ax.set_xticks([0, 6, 12, 18, 24])


def season_of(time: np.ndarray) -> np.ndarray:
    """Season label (DJF/MAM/JJA/SON) of each time (calendar months, local time)."""
    month = (np.asarray(time, dtype="datetime64[M]").astype(np.int64) % 12) + 1
    out = np.empty(month.shape, dtype=object)
    for name, months in SEASONS.items():
        out[np.isin(month, months)] = name
    return out


def _time_of_day_hours(time: np.ndarray) -> np.ndarray:
    t = np.asarray(time, dtype="datetime64[ns]")
    return (t - t.astype("datetime64[D]")).astype(np.int64) / 3.6e12


def new_figure(nrows: int, ncols: int, width: float = 4.0, height: float = 3.0, **kw):
    """A Figure on an Agg canvas with an (nrows, ncols) array of axes."""
    # fixed margins instead of a layout engine: constrained layout doubles the drawing time
    fig = Figure(figsize=(width * ncols, height * nrows + 0.9))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    h = height * nrows + 0.9
    fig.subplots_adjust(left=1.0 / (width * ncols), right=1 - 0.25 / (width * ncols), bottom=0.75 / h,
                        top=1 - 0.55 / h, wspace=0.3, hspace=0.45)
    return fig, axes


def room_below(fig: Figure, inches: float) -> None:
    """Make ``fig`` taller by ``inches`` below its axes (for a figure legend under the x labels),
    keeping the axes' size and the other margins."""
    w, h = fig.get_size_inches()
    p = fig.subplotpars
    fig.set_size_inches(w, h + inches)
    fig.subplots_adjust(bottom=(p.bottom * h + inches) / (h + inches), top=1 - (1 - p.top) * h / (h + inches))


def save_figure(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=90)
    return path


def _diurnal_mean(hours: np.ndarray, x: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h = hours[ok]
    if h.size == 0:
        return np.empty(0), np.empty(0)
    bins, inv = np.unique(h, return_inverse=True)
    s = np.bincount(inv, weights=x[ok], minlength=bins.size)
    c = np.bincount(inv, minlength=bins.size)
    return bins, s / c


def plot_diurnal_cycles(
    path: Path,
    time: np.ndarray,
    obs: Mapping[str, np.ndarray],
    sims: Mapping[str, Mapping[str, np.ndarray]],
    masks: Mapping[str, np.ndarray],
    title: str,
    colours: Mapping[str, str] | None = None,
) -> Path:
    """Mean diurnal cycle per season (columns) and flux (rows): obs over its usable steps (``masks``),
    each model over the steps where it and the obs are usable (the pairs that are scored)."""
    fluxes = list(obs)
    col = _colours(colours, sims)
    hours = _time_of_day_hours(time)
    season = season_of(time)
    fig, axes = new_figure(len(fluxes), len(SEASONS), width=3.4, height=2.6, sharex=True)
    for i, flux in enumerate(fluxes):
        o = obs[flux]
        for j, sname in enumerate(SEASONS):
            ax = axes[i, j]
            in_season = season == sname
            ok_o = joint_mask(o, mask=masks[flux] & in_season)
            if not ok_o.any():
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="0.5")
                ax.set_yticks([])
            else:
                ax.plot(*_diurnal_mean(hours, o, ok_o), **OBS_STYLE)
                for model, fl in sims.items():
                    if flux not in fl:
                        continue
                    ok = joint_mask(o, fl[flux], mask=masks[flux] & in_season)
                    ax.plot(*_diurnal_mean(hours, fl[flux], ok), color=col[model], lw=1.1, label=model)
            if i == 0:
                ax.set_title(sname)
            if j == 0:
                ax.set_ylabel(FLUX_LABEL.get(flux, flux))
            if i == len(fluxes) - 1:
                ax.set_xlabel("hour (local standard time)")
            _hour_axis(ax)
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        ncol = min(len(labels), 6)
        room_below(fig, 0.2 * -(-len(labels) // ncol))  # one line of legend per 6 labels
        fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_daily_series(
    path: Path,
    time: np.ndarray,
    obs: Mapping[str, np.ndarray],
    sims: Mapping[str, Mapping[str, np.ndarray]],
    masks: Mapping[str, np.ndarray],
    title: str,
    min_valid_fraction: float = 0.5,
    colours: Mapping[str, str] | None = None,
    sds: Mapping[str, Mapping[str, np.ndarray]] | None = None,
) -> Path:
    """Daily means of obs and models over the masked (e.g. test-split, QC-passed) steps; where a
    model gives a predictive SD (``sds[model][flux]``), its 90 % interval of the daily mean as a band
    (σ of the daily mean with errors independent within the day, as the uncertainty scores)."""
    from hybridlsm.evaluation.probabilistic import aggregate_gaussian

    fluxes = list(obs)
    col = _colours(colours, sims)
    fig, axes = new_figure(len(fluxes), 1, width=11.0, height=2.8)
    for i, flux in enumerate(fluxes):
        ax = axes[i, 0]
        o = obs[flux]
        ok_o = joint_mask(o, mask=masks[flux])
        a = aggregate(np.where(ok_o, o, np.nan), time, "daily", min_valid_fraction=min_valid_fraction)
        ax.plot(a.period, a.values, marker=".", ms=3, **OBS_STYLE)
        for model, fl in sims.items():
            if flux not in fl:
                continue
            ok = joint_mask(o, fl[flux], mask=masks[flux])
            b = aggregate(np.where(ok, fl[flux], np.nan), time, "daily", min_valid_fraction=min_valid_fraction)
            ax.plot(b.period, b.values, color=col[model], lw=1.0, label=model)
            sd = (sds or {}).get(model, {}).get(flux)
            if sd is not None:
                g = aggregate_gaussian(o, fl[flux], sd, time, "daily", mask=masks[flux],
                                       min_valid_fraction=min_valid_fraction)
                ax.fill_between(g.period, g.mu - 1.645 * g.sd, g.mu + 1.645 * g.sd, color=col[model], alpha=0.2,
                                lw=0)
        ax.set_ylabel(FLUX_LABEL.get(flux, flux) + "\n(daily mean)")
        _date_axis(ax)
        if i == 0:
            ax.legend(fontsize=8, ncol=6, loc="upper left")
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_scatter(
    path: Path,
    obs: Mapping[str, np.ndarray],
    sims: Mapping[str, Mapping[str, np.ndarray]],
    masks: Mapping[str, np.ndarray],
    title: str,
) -> Path:
    """Observed vs predicted (hexbin, log counts) per flux (rows) and model (columns), 1:1 line."""
    fluxes = list(obs)
    models = list(sims)
    fig, axes = new_figure(len(fluxes), max(len(models), 1), width=3.2, height=3.0)
    for i, flux in enumerate(fluxes):
        o = obs[flux]
        for j, model in enumerate(models):
            ax = axes[i, j]
            s = sims[model].get(flux)
            ok = joint_mask(o, s, mask=masks[flux]) if s is not None else np.zeros(o.shape, bool)
            if ok.sum() < 2:
                ax.text(0.5, 0.5, "no pairs", ha="center", va="center", transform=ax.transAxes, color="0.5")
            else:
                lo = float(min(o[ok].min(), s[ok].min()))
                hi = float(max(o[ok].max(), s[ok].max()))
                if hi <= lo:
                    hi = lo + 1.0
                ax.hexbin(o[ok], s[ok], gridsize=35, mincnt=1, bins="log", cmap="viridis",
                          extent=(lo, hi, lo, hi))
                ax.plot([lo, hi], [lo, hi], color="red", lw=1.0)
                ax.set_xlim(lo, hi)
                ax.set_ylim(lo, hi)
                ax.text(0.03, 0.97, f"RMSE {rmse(s, o, ok):.1f}\nr {pearson_r(s, o, ok):.2f}\nn {int(ok.sum())}",
                        transform=ax.transAxes, va="top", fontsize=8)
            if i == 0:
                ax.set_title(model)
            ax.set_xlabel(f"observed {flux}")
            ax.set_ylabel(f"predicted {flux}")
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_energy_residual(
    path: Path,
    time: np.ndarray,
    residuals: Mapping[str, np.ndarray],
    title: str,
    colours: Mapping[str, str] | None = None,
) -> Path:
    """Mean diurnal cycle of the energy-balance residual Rn − G − H − LE per source; a source whose
    label starts with "obs" is drawn as the observations."""
    hours = _time_of_day_hours(time)
    col = _colours(colours, [k for k in residuals if not k.startswith("obs")])
    fig, axes = new_figure(1, 1, width=7.0, height=3.4)
    ax = axes[0, 0]
    for label, res in residuals.items():
        ok = np.isfinite(res)
        if not ok.any():
            continue
        style = OBS_STYLE | {"label": label} if label.startswith("obs") else dict(color=col[label], lw=1.1, label=label)
        ax.plot(*_diurnal_mean(hours, res, ok), **style)
    ax.axhline(0.0, color="0.6", lw=0.8)
    _hour_axis(ax)
    ax.set_xlabel("hour (local standard time)")
    ax.set_ylabel("Rn − G − H − LE [W m$^{-2}$]")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.set_title(title)
    return save_figure(fig, path)


def plot_parameters(
    path: Path,
    time: np.ndarray,
    params: Mapping[str, Mapping[str, np.ndarray]],
    shade: np.ndarray | None,
    title: str,
    units: Mapping[str, str] | None = None,
    colours: Mapping[str, str] | None = None,
) -> Path:
    """Daily medians of learned parameters (rows: variable; lines: model) over the whole record;
    ``shade`` (bool on time) marks the test period. Log axis for a positive variable spanning more
    than a factor 20."""
    names = list(params)
    col = _colours(colours, [m for v in params.values() for m in v])
    fig, axes = new_figure(len(names), 1, width=11.0, height=2.6)
    t = np.asarray(time, dtype="datetime64[ns]")
    day = t.astype("datetime64[D]")
    udays, inv = np.unique(day, return_inverse=True)
    for i, var in enumerate(names):
        ax = axes[i, 0]
        lo, hi = np.inf, -np.inf
        for model, x in params[var].items():
            med = np.full(udays.size, np.nan)
            for d in range(udays.size):
                v = x[inv == d]
                v = v[np.isfinite(v)]
                if v.size:
                    med[d] = np.median(v)
            if np.isfinite(med).any():
                lo, hi = min(lo, np.nanmin(med)), max(hi, np.nanmax(med))
            ax.plot(udays.astype("datetime64[ns]"), med, color=col[model], lw=1.0, label=model)
        if lo > 0 and hi > 20 * lo:
            ax.set_yscale("log")
        if shade is not None and np.any(shade):
            ts = t[np.asarray(shade, bool)]
            ax.axvspan(ts.min(), ts.max(), color="0.9", zorder=0, label="test period")
        u = (units or {}).get(var, "")
        ax.set_ylabel(f"{var} {u}".strip() + "\n(daily median)")
        ax.legend(fontsize=8, loc="upper left", ncol=5)
        _date_axis(ax)
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_untrained(
    path: Path,
    time: np.ndarray,
    panels: Mapping[str, tuple[np.ndarray, Mapping[str, np.ndarray], str]],
    mask: np.ndarray,
    title: str,
    colours: Mapping[str, str] | None = None,
) -> Path:
    """Daily means of untrained variables: ``panels[label] = (obs, {model: sim}, y_label)`` on the
    masked steps. (Series the caller standardised say so in ``y_label``.)"""
    labels = list(panels)
    col = _colours(colours, [m for p in panels.values() for m in p[1]])
    fig, axes = new_figure(len(labels), 1, width=11.0, height=2.6)
    for i, lab in enumerate(labels):
        ax = axes[i, 0]
        o, sims, ylabel = panels[lab]
        a = aggregate(np.where(mask, o, np.nan), time, "daily")
        ax.plot(a.period, a.values, **OBS_STYLE)
        for model, s in sims.items():
            b = aggregate(np.where(mask, s, np.nan), time, "daily")
            ax.plot(b.period, b.values, color=col[model], lw=1.0, label=model)
        ax.set_ylabel(ylabel)
        _date_axis(ax)
        ax.set_title(lab, fontsize=9)
        ax.legend(fontsize=8, loc="upper left", ncol=5)
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_reliability(
    path: Path,
    panels: Mapping[str, Mapping[str, tuple]],
    title: str,
    colours: Mapping[str, str] | None = None,
    ncols: int | None = None,
) -> Path:
    """Reliability diagrams: observed against nominal coverage of central prediction intervals.

    ``panels[label] = {source: (nominal, observed, n)}`` (e.g. `probabilistic.Reliability`), one
    panel per label (e.g. "Qle, daily"), ``ncols`` per row (default: all in one row, at most 4).
    The 1:1 line is perfect calibration; below it the intervals are too narrow (overconfident).
    A source named "climatology" is drawn as the grey dashed reference."""
    labels = list(panels)
    n_panels = max(len(labels), 1)
    ncols = min(ncols, n_panels) if ncols else min(n_panels, 4)
    nrows = -(-n_panels // ncols)
    col = _colours(colours, [m for p in panels.values() for m in p if m != "climatology"])
    fig, axes = new_figure(nrows, ncols, width=3.6, height=3.4)
    for ax in axes.flat[len(labels):]:
        ax.set_visible(False)
    for ax, lab in zip(axes.flat, labels):
        ax.plot([0, 1], [0, 1], color="0.6", lw=0.8)
        for source, curve in panels[lab].items():
            nominal, observed, n = curve[0], curve[1], curve[2]
            if not np.isfinite(np.asarray(observed, dtype=float)).any():
                continue
            style = (dict(color="0.45", ls="--", lw=1.4) if source == "climatology"
                     else dict(color=col[source], lw=1.3, marker=".", ms=4))
            ax.plot(nominal, observed, label=f"{source} (n {int(n)})", **style)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal", adjustable="box")
        ax.set_xlabel("nominal coverage")
        ax.set_ylabel("observed coverage")
        ax.set_title(lab, fontsize=9)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="0.5")
    fig.suptitle(title)
    return save_figure(fig, path)
