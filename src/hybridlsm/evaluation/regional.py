"""Scores of the regional models against a virtual region's truth (seed 000 §4 Tables 1, 2, 4).

Every score is taken at the **held-out cells** (all cells without a tower: nothing was observed
there) and the **test steps** of the blocked split, per surface type: ``all``, ``homogeneous``
(interior farmland), ``heterogeneous`` (the fringe), and the extremes ``extreme_hot`` (Tair > 35 °C)
and ``extreme_wind`` (wind > 8 m s-1). The accuracy degradation under an extreme is its MSE over
the ``all`` MSE, minus one (H and LE averaged).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

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
    p, o = pred[mask], truth[mask]
    if p.size < 2:
        return {"mse": None, "mae": None, "r": None, "n": int(p.size)}
    r = float(np.corrcoef(p, o)[0, 1]) if np.std(p) > 0 and np.std(o) > 0 else None
    return {"mse": float(np.mean((p - o) ** 2)), "mae": float(np.mean(np.abs(p - o))), "r": r, "n": int(p.size)}


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
            "r_kh_wind": float(np.corrcoef(kh, wind[m])[0, 1]), "r_kh_dT": float(np.corrcoef(kh, grad[m])[0, 1]),
        })
    return rows
