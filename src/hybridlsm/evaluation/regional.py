"""Scores of the regional models against a virtual region's truth (seed 000 §4 Tables 1-5).

Every score is taken at the **held-out cells** (all cells without a tower: nothing was observed
there) and the **test steps** of the blocked split, per surface type: ``all``, ``homogeneous``
(interior farmland), ``heterogeneous`` (the fringe), and the extremes ``extreme_hot`` (Tair > 35 °C)
and ``extreme_wind`` (wind > 8 m s-1). The accuracy degradation under an extreme is given two ways:
hourly, its MSE over the ``all`` MSE, minus one (H and LE averaged: :func:`degradation`); and as seed
000 Table 2 defines it, at the daily scale: the MSE of the daily means over the cell-days on which the
extreme occurs against the daily MSE of all days, both over the homogeneous farmland, the seed's
reference surface, so that the rate measures the extreme and not a change of surface type
(:func:`daily_extreme_scores`, :func:`degradation_daily`). Hourly, the extremes (hot middays) are
compared with a mix of day and night, whose night errors are small for any model that gets the
night right, so the hourly rate favours a model that is poor everywhere; the daily rate compares
days with days.

The seed's tables: :func:`scale_rows` (Table 1: daily and weekly means, per surface type, with the
energy residual), :func:`extreme_rows` (Table 2: the extremes with the degradation rate of H and LE,
hourly and, with :func:`daily_extreme_scores`, daily as the seed defines it), :func:`ablation_row`
with :func:`uq_scores` (Table 3), :func:`class_parameters` (Table 4) and
:func:`kh_law_rows` (Table 5: the learned K_h field fitted by the branched law and the other forms
of ``evaluation.discovery``).
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from scipy import stats

from .discovery import DiscoveryError, compare_forms
from .metrics import crps_gaussian, point_scores

SURFACES = ("all", "homogeneous", "heterogeneous", "extreme_hot", "extreme_wind")
HOT_K = 308.15  # 35 °C
WINDY = 8.0  # m s-1


def surface_masks(ds: xr.Dataset, test_steps: np.ndarray) -> dict[str, np.ndarray]:
    """(T, N) masks of the scored values of each surface type (held-out cells, test steps)."""
    t = ds.sizes["time"]
    held_out = ~np.asarray(ds["tower"].values).reshape(-1)
    base = np.asarray(test_steps)[:, None] & held_out[None, :]
    cells = lambda name: np.asarray(ds[name].values).reshape(-1)[None, :]  # noqa: E731
    tair = np.asarray(ds["Tair"].values).reshape(t, -1)
    wind = np.asarray(ds["Wind"].values).reshape(t, -1)
    return {
        "all": base,
        "homogeneous": base & cells("homogeneous"),
        "heterogeneous": base & cells("fringe"),
        "extreme_hot": base & (tair > HOT_K),
        "extreme_wind": base & (wind > WINDY),
    }


def _scores(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> dict[str, float | None]:
    """``metrics.point_scores`` with None for a score that cannot be computed (JSON)."""
    return {k: None if isinstance(v, float) and not np.isfinite(v) else v
            for k, v in point_scores(pred, truth, mask).items()}


def score_records(model: str, out: dict, ds: xr.Dataset, masks: dict[str, np.ndarray]) -> list[dict]:
    """One record per surface type: model, surface, mse_h, mse_le, mae_h, mae_le, r_h, r_le, n."""
    t = ds.sizes["time"]
    records = []
    for surface in SURFACES:
        rec = {"model": model, "surface": surface}
        for name, short in (("Qh", "h"), ("Qle", "le")):
            s = _scores(np.asarray(out[name]), np.asarray(ds[f"{name}_true"].values).reshape(t, -1), masks[surface])
            rec.update({f"mse_{short}": s["mse"], f"mae_{short}": s["mae"], f"r_{short}": s["r"]})
            rec["n"] = s["n"]
        records.append(rec)
    return records


def degradation(records: list[dict], model: str) -> dict[str, float | None]:
    """MSE under each extreme over the MSE of all held-out values, minus one (H and LE averaged)."""
    by = {r["surface"]: r for r in records if r["model"] == model}
    result = {}
    for extreme in ("extreme_hot", "extreme_wind"):
        ratios = [by[extreme][k] / by["all"][k] - 1.0 for k in ("mse_h", "mse_le")
                  if by[extreme][k] is not None and by["all"][k]]
        result[extreme] = float(np.mean(ratios)) if ratios else None
    return result


def field_correlation(learned: np.ndarray, true: np.ndarray, mask: np.ndarray) -> float:
    """Pearson r of log K_h (learned vs true) over ``mask`` (K_h spans decades: log space)."""
    a, b = np.log(learned[mask]), np.log(true[mask])
    return float(np.corrcoef(a, b)[0, 1])


def _corr(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson r; None where either is constant (a K_h fixed per class), also where it varies only
    by float32 rounding (a relative spread below 1e-6), which gives nan or noise instead of r."""
    varies = [np.std(x) > 1e-6 * np.abs(np.mean(x)) for x in (np.asarray(a, np.float64), np.asarray(b, np.float64))]
    return float(np.corrcoef(a, b)[0, 1]) if all(varies) else None


def class_parameters(out: dict, ds: xr.Dataset, mask: np.ndarray, class_names) -> list[dict]:
    """Seed Table 4: per land-cover class, learned and true K_h and r_s (mean, sd) and the
    correlation of the learned K_h with the wind and with the temperature gradient (surface minus
    air), over ``mask``."""
    t = ds.sizes["time"]
    cls = np.asarray(ds["surface_class"].values).reshape(-1)
    wind = np.asarray(ds["Wind"].values).reshape(t, -1)
    grad = np.asarray(out["AvgSurfT"]) - np.asarray(ds["Tair"].values).reshape(t, -1)
    rows = []
    for i, name in enumerate(class_names):
        m = mask & (cls == i)[None, :]
        if m.sum() < 3:
            continue
        kh, rs = np.asarray(out["Kh"])[m], np.asarray(out["rs_field"])[m]
        kh_t = np.asarray(ds["Kh_true"].values).reshape(t, -1)[m]
        rs_t = np.asarray(ds["rs_true"].values).reshape(t, -1)[m]
        rows.append({
            "class": name, "n": int(m.sum()),
            "kh_mean": float(kh.mean()), "kh_sd": float(kh.std()), "kh_true_mean": float(kh_t.mean()),
            "rs_mean": float(rs.mean()), "rs_sd": float(rs.std()), "rs_true_mean": float(rs_t.mean()),
            "r_kh_wind": _corr(kh, wind[m]), "r_kh_dT": _corr(kh, grad[m]),
        })
    return rows


#: model output -> variable of the ParFlow-CLM reference snapshot (``data.gridded.read_reference_snapshot``)
#: compared with it: sensible heat Qh (CLM eflx_sh_tot), latent heat Qle (eflx_lh_tot), both positive
#: away from the surface as the package's; the surface temperature AvgSurfT against Tsurf, CLM's
#: ground temperature t_grnd (under the canopy on vegetated cells: not the canopy's or a radiative
#: temperature, so its pattern is the closest, not an equal, quantity)
REFERENCE_FIELDS = {"Qh": "Qh", "Qle": "Qle", "AvgSurfT": "Tsurf"}


def compare_reference_snapshot(out: dict, time, snapshot: xr.Dataset, fields: dict | None = None) -> dict:
    """A model's simulated maps against a reference model's snapshot (the Little Washita file's
    one step of ParFlow-CLM output): for each pair of ``fields`` (model output -> snapshot variable,
    default REFERENCE_FIELDS), at the model step whose start equals the snapshot's ``time``, over
    the cells where both are finite: the spatial Pearson correlation ``corr`` (None with fewer than
    two cells or a uniform map), the mean bias ``bias`` (model - reference), the patterns' standard
    deviations ``sd_model``, ``sd_reference``, the means and ``n``.

    The snapshot is **another model's output, not observations** (a regression reference of a
    ParFlow test, 12 h from uninitialised soil temperatures): agreement is consistency between two
    models, not skill. Times: ``time`` (T,) are the starts of the model's steps in local standard
    time (``read_gridded``'s axis) and the snapshot's ``time`` is the start of its model hour in the
    same convention (``read_reference_snapshot``: Little Washita's ref_time 1998-10-01 17:00 UTC is
    the end of the hour from 10:00 local standard time, driven by forcing step 12, index 11).

    ``out``: name -> (T, N) or (T, ny, nx) arrays on the snapshot's (y, x) grid (N = ny nx, C order;
    ``models.regional.predict_regional``'s outputs). Returns ``{"snapshot_time", "step",
    "reference", <model name>: {"reference_variable", "corr", "bias", "sd_model", "sd_reference",
    "mean_model", "mean_reference", "n"}}``. A snapshot time not among ``time``, a missing variable
    or another grid shape is a DataError naming the file and the variable."""
    from ..data.schema import DataError

    file = snapshot.attrs.get("source_file", snapshot.attrs.get("site_id", "<reference snapshot>"))
    fields = REFERENCE_FIELDS if fields is None else fields
    if "time" not in snapshot.coords or snapshot["time"].ndim != 0:
        raise DataError(f"{file}: the reference snapshot has no scalar time coordinate; expected the dataset of "
                        "data.gridded.read_reference_snapshot")
    when = np.datetime64(snapshot["time"].values, "ns")
    times = np.asarray(time, "datetime64[ns]")
    hits = np.flatnonzero(times == when)
    if hits.size != 1:
        span = f"{str(times[0])[:16]} to {str(times[-1])[:16]}" if times.size else "no steps"
        raise DataError(f"{file}: variable time of the snapshot is {str(when)[:16]} (start of its model step, local "
                        f"standard time); expected it once among the model's step starts ({span}), found {hits.size}")
    step = int(hits[0])
    ny, nx = snapshot.sizes["y"], snapshot.sizes["x"]
    result = {"snapshot_time": str(when)[:16], "step": step,
              "reference": str(snapshot.attrs.get("data_kind", "model output, not observations"))}
    for name, ref_name in fields.items():
        if ref_name not in snapshot:
            raise DataError(f"{file}: no variable {ref_name} in the reference snapshot; found {sorted(snapshot.data_vars)}")
        if name not in out:
            raise DataError(f"{file}: the model output has no {name} to compare with {ref_name}; it has {sorted(out)}")
        sim = np.asarray(out[name], float)
        if sim.ndim < 2 or sim.shape[0] != times.size or int(np.prod(sim.shape[1:])) != ny * nx:
            raise DataError(f"{file}: variable {ref_name} is on a {ny} x {nx} grid; the model's {name} has shape "
                            f"{sim.shape}, expected ({times.size}, {ny * nx}) or ({times.size}, {ny}, {nx})")
        model = sim[step].reshape(ny, nx)
        ref = np.asarray(snapshot[ref_name].transpose("y", "x").values, float)
        both = np.isfinite(model) & np.isfinite(ref)
        m, r = model[both], ref[both]
        corr = float(np.corrcoef(m, r)[0, 1]) if m.size >= 2 and m.std() > 0 and r.std() > 0 else None
        result[name] = {
            "reference_variable": ref_name, "corr": corr,
            "bias": float(np.mean(m - r)) if m.size else None,
            "sd_model": float(m.std()) if m.size else None, "sd_reference": float(r.std()) if m.size else None,
            "mean_model": float(m.mean()) if m.size else None, "mean_reference": float(r.mean()) if m.size else None,
            "n": int(m.size),
        }
    return result


# ------------------------------------------------------------------------------------------
# Table 1: daily and weekly scales
# ------------------------------------------------------------------------------------------

#: Table 1's scales: name -> days per period
SCALES = {"daily": 1, "weekly": 7}
#: Table 1's surface types
SCALE_SURFACES = ("all", "homogeneous", "heterogeneous")


def aggregate(values: np.ndarray, mask: np.ndarray, period: int, min_steps: int) -> np.ndarray:
    """(P, N) means of (T, N) ``values`` over the ``mask``ed steps of each period of ``period``
    steps counted from the record's start (the last period may be shorter); NaN where a period has
    fewer than ``min_steps`` masked steps of that cell."""
    values, mask = np.asarray(values, np.float64), np.asarray(mask, bool)
    t, n = values.shape
    p = -(-t // period)
    pad = p * period - t
    v = np.pad(np.where(mask, values, 0.0), ((0, pad), (0, 0))).reshape(p, period, n)
    m = np.pad(mask, ((0, pad), (0, 0))).reshape(p, period, n)
    count = m.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = v.sum(axis=1) / count
    return np.where(count >= max(min_steps, 1), means, np.nan)


def _period_scores(out: dict, ds: xr.Dataset, name: str, mask: np.ndarray, period: int, min_steps: int) -> dict:
    """``_scores`` of the period means (``aggregate``) of output ``name`` against those of the truth
    ``<name>_true`` over ``mask``, where both have a mean."""
    pred = aggregate(np.asarray(out[name]), mask, period, min_steps)
    truth = aggregate(np.asarray(ds[f"{name}_true"].values).reshape(ds.sizes["time"], -1), mask, period, min_steps)
    return _scores(pred, truth, np.isfinite(pred) & np.isfinite(truth))


def energy_residual_field(out: dict) -> np.ndarray | None:
    """(T, N) signed column energy residual Rnet - Qh - Qle - Qg - Qf [W m-2]; None for a model
    without an energy budget (the CNN-LSTM)."""
    if not all(k in out for k in ("Rnet", "Qh", "Qle", "Qg")):
        return None
    qf = np.asarray(out["Qf"]) if "Qf" in out else 0.0
    return np.asarray(out["Rnet"]) - np.asarray(out["Qh"]) - np.asarray(out["Qle"]) - np.asarray(out["Qg"]) - qf


def energy_residual(out: dict, mask: np.ndarray) -> float | None:
    """The energy residual [W m-2] of a model over ``mask``: the mean |column residual|, or the
    air layer's largest residual where that is larger (the figure issue 15 reports)."""
    res = energy_residual_field(out)
    if res is None:
        return None
    value = float(np.abs(res[mask]).mean())
    if "air_energy_residual" in out:
        value = max(value, float(np.max(out["air_energy_residual"])))
    return value


def scale_rows(model: str, out: dict, ds: xr.Dataset, masks: dict[str, np.ndarray],
               steps_per_day: int = 24) -> list[dict]:
    """Seed Table 1: per scale (daily, weekly) and surface type (all, homogeneous farmland,
    heterogeneous fringe), MSE, MAE and r of H and LE between the period means of the prediction
    and the truth over the scored steps of each cell (a period counts with at least one whole day of
    scored steps), and the mean |energy residual| of the period means (None without a budget)."""
    res = energy_residual_field(out)
    rows = []
    for scale, days in SCALES.items():
        period = days * steps_per_day
        for surface in SCALE_SURFACES:
            mask = masks[surface]
            row = {"model": model, "scale": scale, "surface": surface}
            for name, short in (("Qh", "h"), ("Qle", "le")):
                s = _period_scores(out, ds, name, mask, period, steps_per_day)
                row.update({f"mse_{short}": s["mse"], f"mae_{short}": s["mae"], f"r_{short}": s["r"], "n": s["n"]})
            if res is None:
                row["energy_residual_wm2"] = None
            else:
                agg = aggregate(res, mask, period, steps_per_day)
                row["energy_residual_wm2"] = float(np.nanmean(np.abs(agg))) if np.isfinite(agg).any() else None
            rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------
# Table 2: extremes
# ------------------------------------------------------------------------------------------

EXTREMES = ("extreme_hot", "extreme_wind")


def degradation_rate(mse_extreme: float | None, mse_reference: float | None) -> float | None:
    """(MSE_extreme - MSE_reference) / MSE_reference in %, seed Table 2's accuracy degradation rate
    (negative: better under the extreme); None when either is missing."""
    if mse_extreme is None or not mse_reference:
        return None
    return 100.0 * (mse_extreme - mse_reference) / mse_reference


#: the daily reference of seed Table 2's degradation rate: "the homogeneous farmland daily scale"
DAILY_REFERENCE = "homogeneous"


def daily_extreme_scores(out: dict, ds: xr.Dataset, masks: dict[str, np.ndarray],
                         steps_per_day: int = 24) -> dict[str, dict]:
    """Seed Table 2 at its scale: the MSE of H and LE between the daily means of the prediction and
    the truth (whole days of scored steps, as in :func:`scale_rows`) over the scored cell-days of
    ``DAILY_REFERENCE`` (homogeneous farmland) and, for each extreme, over those of them on which it
    occurs at a scored step (a hot day is a day with an hour above 35 °C). Returns
    ``{subset: {"mse_h", "mse_le", "n"}}`` (n: cell-days; an MSE is None with fewer than two)."""
    t = ds.sizes["time"]
    n_days = -(-t // steps_per_day)
    pad = n_days * steps_per_day - t

    def on_days_with(mask):  # every step of the cell-days on which ``mask`` holds at some step
        days = np.pad(mask, ((0, pad), (0, 0))).reshape(n_days, steps_per_day, -1).any(axis=1)
        return np.repeat(days, steps_per_day, axis=0)[:t]

    subsets = {DAILY_REFERENCE: masks[DAILY_REFERENCE],
               **{e: masks[DAILY_REFERENCE] & on_days_with(masks[e]) for e in EXTREMES}}
    result = {}
    for subset, mask in subsets.items():
        rec = {}
        for name, short in (("Qh", "h"), ("Qle", "le")):
            s = _period_scores(out, ds, name, mask, steps_per_day, steps_per_day)
            rec[f"mse_{short}"], rec["n"] = s["mse"], s["n"]
        result[subset] = rec
    return result


def extreme_rows(records: list[dict], model: str, daily: dict | None = None) -> list[dict]:
    """Seed Table 2: per extreme subset the model's scores of H and LE, the number of scored
    values, ``empty`` when the test blocks have none, and the degradation rate of H and LE [%]
    against the model's MSE over all held-out values at the same (hourly) scale; with ``daily``
    (:func:`daily_extreme_scores`) also the daily-mean MSE of the extreme's days (``daily_mse_h``,
    ``daily_mse_le``, ``daily_n``) and the seed's rate against the homogeneous farmland's daily MSE
    (``degradation_daily_h_pct``, ``degradation_daily_le_pct``)."""
    by = {r["surface"]: r for r in records if r["model"] == model}
    rows = []
    for extreme in EXTREMES:
        rec = by[extreme]
        row = {
            "model": model, "surface": extreme, "n": rec["n"], "empty": rec["n"] == 0,
            **{k: rec[k] for k in ("mse_h", "mse_le", "mae_h", "mae_le", "r_h", "r_le")},
            "degradation_h_pct": degradation_rate(rec["mse_h"], by["all"]["mse_h"]),
            "degradation_le_pct": degradation_rate(rec["mse_le"], by["all"]["mse_le"]),
        }
        if daily is not None:
            day, ref = daily[extreme], daily[DAILY_REFERENCE]
            row.update(daily_mse_h=day["mse_h"], daily_mse_le=day["mse_le"], daily_n=day["n"],
                       degradation_daily_h_pct=degradation_rate(day["mse_h"], ref["mse_h"]),
                       degradation_daily_le_pct=degradation_rate(day["mse_le"], ref["mse_le"]))
        rows.append(row)
    return rows


def degradation_daily(rows: list[dict]) -> dict[str, float | None]:
    """Seed Table 2's degradation rate of each extreme from :func:`extreme_rows` with ``daily``, as a
    fraction (H and LE averaged; None where neither can be computed), the form of :func:`degradation`."""
    result = {}
    for row in rows:
        rates = [row.get(f"degradation_daily_{k}_pct") for k in ("h", "le")]
        rates = [r / 100.0 for r in rates if r is not None]
        result[row["surface"]] = float(np.mean(rates)) if rates else None
    return result


# ------------------------------------------------------------------------------------------
# Table 3: ablations, MC-dropout uncertainty
# ------------------------------------------------------------------------------------------


def uq_scores(mean: np.ndarray, sd: np.ndarray, truth: np.ndarray, mask: np.ndarray,
              level: float = 0.9) -> dict[str, float | None]:
    """Coverage of the central ``level`` interval of N(mean, sd^2) (the fraction of the truth inside
    mean +- z sd) and the mean Gaussian CRPS, over ``mask``; None where nothing is scored."""
    m, s, y = (np.asarray(a, np.float64)[mask] for a in (mean, sd, truth))
    if y.size == 0:
        return {"coverage": None, "crps": None, "mean_sd": None}
    z = float(stats.norm.ppf(0.5 + level / 2.0))
    inside = np.abs(y - m) <= z * s
    return {"coverage": float(inside.mean()), "crps": float(np.mean(crps_gaussian(y, m, s))), "mean_sd": float(s.mean())}


def ablation_row(model: str, records: list[dict], out: dict, mask: np.ndarray, kh_true: np.ndarray | None,
                 uq: dict | None = None) -> dict:
    """Seed Table 3 for one model: the scores over all held-out values (``records``' ``all``), the
    energy residual, the K_h field correlation (the parameter reasonability coefficient: learned vs
    true log K_h) and, with ``uq`` ({"Qh": uq_scores, "Qle": uq_scores} of MC dropout), the
    coverage and CRPS of H and LE."""
    rec = next(r for r in records if r["model"] == model and r["surface"] == "all")
    row = {"model": model, **{k: rec[k] for k in ("mse_h", "mse_le", "mae_h", "mae_le", "r_h", "r_le")},
           "energy_residual_wm2": energy_residual(out, mask),
           "kh_field_corr": field_correlation(np.asarray(out["Kh"]), kh_true, mask)
           if "Kh" in out and kh_true is not None else None}
    for name, short in (("Qh", "h"), ("Qle", "le")):
        scores = (uq or {}).get(name) or {}
        row[f"coverage90_{short}"] = scores.get("coverage")
        row[f"crps_{short}"] = scores.get("crps")
    return row


# ------------------------------------------------------------------------------------------
# Table 5: closed forms of the learned K_h field
# ------------------------------------------------------------------------------------------


def kh_law_rows(model: str, out: dict, ds: xr.Dataset, mask: np.ndarray, class_names,
                geometry: dict[str, np.ndarray]) -> list[dict]:
    """Seed Table 5: the learned K_h over ``mask`` fitted by each form of
    ``evaluation.discovery.compare_forms`` (branched power law, Zhang-type law in |Ri|,
    Businger-Dyer and Louis with a fitted scale): R², RMSE, AIC, ΔAIC and n, per land-cover class
    (``class`` name) and pooled over all classes (``all``). ``geometry``: the (N,) ``igbp`` (LaD
    class), ``canopy_height`` and ``measurement_height`` of each cell, for the schemes. A group
    whose fit fails gives one row with ``error``."""
    t = ds.sizes["time"]
    cls = np.asarray(ds["surface_class"].values).reshape(-1)
    wind = np.asarray(ds["Wind"].values).reshape(t, -1)
    kh, ri = np.asarray(out["Kh"]), np.asarray(out["RiB"])
    groups = [("all", np.ones_like(cls, bool))] + [(c, cls == i) for i, c in enumerate(class_names)]
    rows = []
    for group, cells in groups:
        m = mask & cells[None, :]
        if not m.any():
            continue
        site = {k: np.broadcast_to(np.asarray(v)[None, :], m.shape)[m] for k, v in geometry.items()}
        try:
            table, _ = compare_forms(kh[m], wind[m], ri[m], site)
        except DiscoveryError as err:
            rows.append({"model": model, "class": group, "error": str(err)})
            continue
        for r in table.to_dict("records"):
            rows.append({"model": model, "class": group, "form": r["form"], "expression": r["expression"],
                         "n": int(r["n"]), "k": int(r["k"]), "r2": float(r["r2"]), "rmse": float(r["rmse"]),
                         "aic": float(r["aic"]), "delta_aic": float(r["delta_aic"])})
    return rows
