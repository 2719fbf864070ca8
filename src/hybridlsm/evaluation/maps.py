"""The report's regional part: maps of a grid run (``maps/<grid>/<model>.nc`` and ``obs.nc``, written
by ``hybridlsm run`` with ``data.grid``; docs/architecture.md §3).

- ``grid_skill``: every model against what the grid observes over the test steps, pooled over the
  cells and steps where both exist: the targets (tower fluxes, a surface-temperature product) and,
  for a twin such as the virtual region, the truth (``<name>_true``) at every cell; MSE, MAE, r,
  bias, n; and how many cells and steps the closed loop recomputed (``recomputed``);
- ``plot_grid_maps``: test-period means of H, LE, surface temperature, K_h and r_s, one row per
  variable, one column per model (the truth or the observations first), shared colour scales per
  row (K_h and r_s on log scales); and the MC-dropout SDs where a model has them;
- ``uncertainty_hotspots``: where the MC-dropout spread of K_h is largest (the top decile of cells by
  the test-period mean of SD(K_h) / K_h): per land-cover class, its share of the hotspots against its
  share of the grid, and how far hotspots lie from the nearest observed (tower) cell;
- ``maps_html``: the section, "" for a run without maps.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib import colors as mcolors

from hybridlsm.data.preprocess import FILLED_LONG, forcing_filled
from hybridlsm.data.schema import qc_mask
from hybridlsm.evaluation.html_parts import img_html, table_html
from hybridlsm.evaluation.metrics import point_scores
from hybridlsm.evaluation.plots import new_figure, save_figure
from hybridlsm.rundir import load_checked_dataset

__all__ = ["load_maps", "grid_skill", "plot_grid_maps", "uncertainty_hotspots", "maps_html", "MAP_VARIABLES"]

TEST_SPLIT = 3
#: what the maps show: name -> (label, colour map, log scale); the fields a model used for K_h and
#: r_s are ``Kh`` and ``rs_field``
MAP_VARIABLES = {
    "Qh": ("H [W m$^{-2}$]", "inferno", False),
    "Qle": ("LE [W m$^{-2}$]", "viridis", False),
    "AvgSurfT": ("T$_s$ [K]", "coolwarm", False),
    "Kh": ("K$_h$ [m$^2$ s$^{-1}$]", "magma", True),
    "rs_field": ("r$_s$ [s m$^{-1}$]", "cividis", True),
}
#: the truth of a twin for each mapped variable
TRUTH = {"Qh": "Qh_true", "Qle": "Qle_true", "AvgSurfT": "AvgSurfT_true", "Kh": "Kh_true", "rs_field": "rs_true"}
SCORED = ("Qh", "Qle", "AvgSurfT")


def load_maps(run_dir: Path) -> dict[str, dict]:
    """``{grid: {"obs": Dataset, "models": {label: Dataset}}}`` from ``run_dir/maps`` ({} without),
    each file checked against its recorded SHA-256 (``rundir.load_checked_dataset``)."""
    root = Path(run_dir) / "maps"
    out = {}
    for folder in sorted(p for p in root.glob("*") if p.is_dir()):
        obs_path = folder / "obs.nc"
        if not obs_path.is_file():
            raise FileNotFoundError(f"{obs_path}: the observations of grid {folder.name!r} are missing")
        models = {f.stem: load_checked_dataset(f) for f in sorted(folder.glob("*.nc")) if f.name != "obs.nc"}
        out[folder.name] = {"obs": load_checked_dataset(obs_path), "models": models}
    return out


def _test(obs: xr.Dataset) -> np.ndarray:
    return np.asarray(obs["split"].values) == TEST_SPLIT


def _usable(obs: xr.Dataset, var: str) -> np.ndarray:
    """The observed ``var`` (time, y, x) where it counts: NaN where its QC flag exceeds the run's
    ``max_qc`` or the step's forcing was filled from the diurnal cycle (as a site's ``flux_mask``)."""
    values = np.asarray(obs[var].values, float)
    ok = np.asarray(qc_mask(obs, var, int(obs.attrs.get("max_qc", 1)), include_filled=True).values)
    filled = forcing_filled(obs) >= FILLED_LONG  # (time,) or (time, y, x)
    ok &= ~filled.reshape(filled.shape + (1,) * (values.ndim - filled.ndim))
    return np.where(ok, values, np.nan)


def grid_skill(grid: str, maps: dict) -> pd.DataFrame:
    """One row per model, variable and reference (``observed``: the grid's usable observations,
    where they exist (``_usable``); ``truth``: a twin's true field at every cell) over the test steps."""
    obs, rows = maps["obs"], []
    test = _test(obs)
    for label, ds in maps["models"].items():
        recomputed = ds["recomputed"].values[test] if "recomputed" in ds else None
        for var in SCORED:
            if var not in ds:
                continue
            pred = ds[var].values[test]
            for reference, name in (("observed", var), ("truth", TRUTH[var])):
                if name in obs:
                    ref = _usable(obs, name) if reference == "observed" else np.asarray(obs[name].values, float)
                    rows.append({"grid": grid, "model": label, "variable": var, "reference": reference,
                                 **point_scores(pred, ref[test])})
        if recomputed is not None:
            rows.append({"grid": grid, "model": label, "variable": "closed loop", "reference": "recomputed cell-steps",
                         "mse": np.nan, "mae": np.nan, "r": np.nan, "bias": np.nan,
                         "n": int(np.nansum(recomputed > 0))})
    return pd.DataFrame(rows, columns=["grid", "model", "variable", "reference", "mse", "mae", "r", "bias", "n"])


HOTSPOT_QUANTILE = 0.9


def uncertainty_hotspots(grid: str, maps: dict, quantile: float = HOTSPOT_QUANTILE) -> pd.DataFrame:
    """Per model with ``Kh_sd`` and per land-cover class: the cells, the hotspot cells (relative
    spread SD(K_h)/K_h, mean over the test steps, at or above its ``quantile`` over the grid), the
    class's share of the hotspots and of the grid, and the mean distance [cells] of its hotspots and
    of all its cells to the nearest tower (a cell where Qh or Qle is observed)."""
    obs, test = maps["obs"], _test(maps["obs"])
    igbp = np.asarray(obs["igbp"].values).astype(str)
    seen = np.zeros(igbp.shape, bool)
    for flux in ("Qh", "Qle"):
        if flux in obs:
            seen |= np.isfinite(obs[flux].values).any(axis=0)
    towers = np.argwhere(seen)
    iy, ix = np.indices(igbp.shape)
    distance = (np.min(np.hypot(iy[..., None] - towers[:, 0], ix[..., None] - towers[:, 1]), axis=-1)
                if len(towers) else np.full(igbp.shape, np.nan))
    rows = []
    for label, ds in maps["models"].items():
        sd, kh = _mean_map(ds, "Kh_sd", test), _mean_map(ds, "Kh", test)
        if sd is None or kh is None:
            continue
        relative = np.where(kh > 0, sd / kh, np.nan)
        ok = np.isfinite(relative)
        hot = ok & (relative >= np.nanquantile(relative, quantile))
        for cls in sorted(set(igbp[ok].tolist())):
            cells = ok & (igbp == cls)
            rows.append({"grid": grid, "model": label, "class": cls or "?", "cells": int(cells.sum()),
                         "hotspots": int((hot & cells).sum()),
                         "share_of_hotspots": float((hot & cells).sum() / max(hot.sum(), 1)),
                         "share_of_grid": float(cells.sum() / ok.sum()),
                         "tower_distance_hotspots": float(distance[hot & cells].mean()) if (hot & cells).any() else np.nan,
                         "tower_distance_all": float(distance[cells].mean())})
    return pd.DataFrame(rows)


def _mean_map(ds: xr.Dataset, name: str, test: np.ndarray, usable: bool = False) -> np.ndarray | None:
    """The mean over the ``test`` steps of ``ds[name]`` (of its ``_usable`` values: the observed map,
    drawn from the values ``grid_skill`` scores), or None where it has no value."""
    if name not in ds:
        return None
    values = (_usable(ds, name) if usable else np.asarray(ds[name].values, float))[test]
    if not np.isfinite(values).any():
        return None
    with np.errstate(invalid="ignore"):
        return np.nanmean(np.where(np.isfinite(values), values, np.nan), axis=0)


def plot_grid_maps(grid: str, maps: dict, plot_dir: Path, sd: bool = False) -> Path | None:
    """Test-period mean maps (or, ``sd``, mean MC-dropout SDs) of :data:`MAP_VARIABLES`; the
    first column is the truth (a twin) or the observations (where they cover the grid)."""
    obs, test = maps["obs"], _test(maps["obs"])
    columns = {} if sd else {"truth": {v: _mean_map(obs, TRUTH[v], test) for v in MAP_VARIABLES}}
    if not sd and all(m is None for m in columns["truth"].values()):
        columns = {"observed": {v: _mean_map(obs, v, test, usable=True) for v in MAP_VARIABLES}}
    for label, ds in maps["models"].items():
        columns[label] = {v: _mean_map(ds, f"{'rs' if v == 'rs_field' else v}_sd" if sd else v, test)
                          for v in MAP_VARIABLES}
    columns = {c: fields for c, fields in columns.items() if any(f is not None for f in fields.values())}
    rows = [v for v in MAP_VARIABLES if any(columns[c][v] is not None for c in columns)]
    if not rows or (sd and not columns):
        return None
    fig, axes = new_figure(len(rows), len(columns), width=max(2.4, 5.0 / len(columns)), height=2.2)
    fig.subplots_adjust(left=0.04, right=0.80 if len(columns) < 3 else 0.88, wspace=0.08, hspace=0.25)
    for i, var in enumerate(rows):
        label, cmap, log = MAP_VARIABLES[var]
        fields = [columns[c][var] for c in columns]
        finite = np.concatenate([f[np.isfinite(f)].ravel() for f in fields if f is not None] or [np.zeros(0)])
        if log and not sd:
            finite = finite[finite > 0]
        lo, hi = (np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0))
        norm = mcolors.LogNorm(max(lo, 1e-6), max(hi, lo * 1.01, 1e-5)) if (log and not sd) else \
            mcolors.Normalize(lo, hi if hi > lo else lo + 1.0)
        for j, (col, field) in enumerate(zip(columns, fields)):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(col, fontsize=9)
            if field is None:
                ax.set_axis_off()
                continue
            image = ax.imshow(field, origin="lower", cmap=cmap, norm=norm, interpolation="nearest")
        fig.colorbar(image, ax=axes[i, :].tolist(), shrink=0.85, label=("SD of " if sd else "") + label)
    fig.suptitle(f"{'MC-dropout SD' if sd else 'Mean'} over the test steps", fontsize=10)
    return save_figure(fig, Path(plot_dir) / f"map_{grid}{'_sd' if sd else ''}.png")


def maps_html(run_dir: Path, plot_dir: Path) -> str:
    """The report section of a grid run (also ``grid_metrics.csv``); "" without maps."""
    all_maps = load_maps(run_dir)
    if not all_maps:
        return ""
    skill = pd.concat([grid_skill(g, m) for g, m in all_maps.items()], ignore_index=True)
    skill.to_csv(Path(run_dir) / "grid_metrics.csv", index=False)
    h = ["<h2>Maps</h2>",
         "<p class='note'>Every model over the whole grid, test steps (split = 3). Skill pooled over the cells and "
         "steps where both exist: <i>observed</i> is what the grid observes (tower fluxes, a surface-temperature "
         "product with gaps); <i>truth</i> is a twin's known field at every cell (the virtual region). MSE in "
         "W² m⁻⁴ (K² for T<sub>s</sub>). <i>closed loop</i>: cell-steps the regional hybrid recomputed with "
         "adjusted K_h because the energy residual exceeded 10 W m⁻². Written to <code>grid_metrics.csv</code>; "
         "the maps are <code>maps/&lt;grid&gt;/&lt;model&gt;.nc</code>.</p>",
         table_html(skill) if not skill.empty else
         "<p class='note'>The grid observes none of the run's targets and has no known truth: nothing to score; the "
         "maps below show what the models simulate.</p>"]
    hotspots = pd.concat([uncertainty_hotspots(g, m) for g, m in all_maps.items()], ignore_index=True)
    if not hotspots.empty:
        hotspots.to_csv(Path(run_dir) / "grid_hotspots.csv", index=False)
        h += ["<h3>Uncertainty hotspots</h3>",
              f"<p class='note'>Cells in the top {100 * (1 - HOTSPOT_QUANTILE):.0f} % of the relative MC-dropout spread "
              "of K_h (SD / mean, test steps), per land-cover class: a class whose share of the hotspots exceeds its "
              "share of the grid is where the parameteriser is least sure; distances [cells] to the nearest tower "
              "show whether that is where nothing is observed. Written to <code>grid_hotspots.csv</code>.</p>",
              table_html(hotspots)]
    for grid, maps in all_maps.items():
        h.append(f"<h3>{html.escape(grid)}</h3>")
        for sd in (False, True):
            path = plot_grid_maps(grid, maps, plot_dir, sd=sd)
            if path is not None:
                h.append(img_html(path, f"{grid} {'SD ' if sd else ''}maps"))
    return "\n".join(h)
