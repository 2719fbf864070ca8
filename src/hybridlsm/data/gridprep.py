"""Preprocessing of gridded forcing for the regional mode (docs/architecture.md §1, "Gridded
preprocessing"): spatiotemporal matching, thermodynamically constrained gap filling, physical
normalisation and land-cover fractions.

- :func:`regrid_bilinear`: every gridded variable of a source onto target cell centres, bilinear
  (in the source's index space on curvilinear sources); no extrapolation.
- :func:`align_time`: a source onto the model's regular time step; the per-variable rule (state:
  interpolated, flux/rate: repeated so totals are conserved) is :data:`TIME_RULES`.
- :func:`fill_thermodynamic`: missing Tair by a per-step least-squares lapse-rate fit on elevation,
  missing Psurf by the hypsometric relation with a per-step least-squares reference pressure, missing
  humidity from the other humidity variables through e_s(T) (:mod:`hybridlsm.thermo`).
- :func:`physical_normalise` / :func:`physical_denormalise`: the per-variable physical scaling of
  :data:`NORMALISATION`, with the constants returned so that it applies unchanged to another period
  or region and inverts exactly.
- :func:`land_cover_fractions`: one-hot / fractional cover per class from a land-cover index map.

Every value that is not an original sample (interpolated in time, filled) is flagged in
``<var>_estimated`` (bool) and counted in ``attrs["repairs"]`` (one line per repair, as the readers
write it) and ``attrs["n_repairs"]``; nothing is filled silently. Bad input is a
:class:`~hybridlsm.data.schema.DataError` naming the variable, time and cell.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import xarray as xr

from .. import thermo
from ..constants import GRAVITY, R_DRY
from ..solar import SOLAR_CONSTANT
from .checks import fmt_time
from .schema import IGBP_BY_INDEX, VARIABLES, DataError, DataWarning, _is_flag

__all__ = [
    "regrid_bilinear",
    "align_time",
    "check_regular_time",
    "TIME_RULES",
    "fill_thermodynamic",
    "FillSummary",
    "physical_normalise",
    "physical_denormalise",
    "NORMALISATION",
    "T_STANDARD",
    "P_STANDARD",
    "land_cover_fractions",
]

T_STANDARD = 288.15
"""Standard-atmosphere sea-level temperature T0 [K] (ICAO)."""
P_STANDARD = 101325.0
"""Standard-atmosphere sea-level pressure p0 [Pa]."""


def _label(ds) -> str:
    # the file it was opened from first: a store written from a read netCDF keeps that file's attrs
    return str(ds.encoding.get("source") or ds.attrs.get("source_file") or ds.attrs.get("site_id") or "<dataset>")


def _add_repairs(ds: xr.Dataset, lines: list[str]) -> None:
    """Append ``lines`` to ``attrs["repairs"]`` (one per line) and count them in ``n_repairs``."""
    if not lines:
        return
    old = [r for r in str(ds.attrs.get("repairs", "")).splitlines() if r]
    ds.attrs["repairs"] = "\n".join(old + lines)
    ds.attrs["n_repairs"] = int(ds.attrs.get("n_repairs", 0)) + len(lines)


def _grid_dims(ds: xr.Dataset) -> tuple[str, str]:
    """The (y, x) dimension names: ``y``/``x`` (the canonical gridded form), else ``lat``/``lon``."""
    for y, x in (("y", "x"), ("lat", "lon"), ("latitude", "longitude")):
        if y in ds.dims and x in ds.dims:
            return y, x
    raise DataError(f"{_label(ds)}: no grid dimensions; expected (time, y, x) as read_gridded gives, "
                    f"got {dict(ds.sizes)}")


# ----------------------------------------------------------------------------------------------------
# 1. bilinear regridding


def _coord(ds: xr.Dataset, names: tuple[str, ...], what: str) -> xr.DataArray:
    for n in names:
        if n in ds.coords or n in ds.data_vars:
            return ds[n]
    raise DataError(f"{_label(ds)}: no {what} coordinate; expected one of {list(names)}")


def _bilinear_apply(arr: np.ndarray, j0, i0, u, v, *, flags: bool = False) -> np.ndarray:
    """``arr[..., ny, nx]`` at the points (j0 + v, i0 + u) of index space -> ``[..., n]``.

    Only corners with a positive weight contribute: a NaN corner makes the point NaN, a NaN corner
    of weight 0 (target on a source row or column) does not. ``flags``: a boolean array, the point
    is True when any contributing corner is True."""
    corners = ((j0, i0, (1 - u) * (1 - v)), (j0, i0 + 1, u * (1 - v)),
               (j0 + 1, i0, (1 - u) * v), (j0 + 1, i0 + 1, u * v))  # fmt: skip
    if flags:
        out = np.zeros(arr.shape[:-2] + (len(u),), bool)
        for j, i, w in corners:
            out |= np.where(w > 0, arr[..., j, i], False)
        return out
    out = np.zeros(arr.shape[:-2] + (len(u),), float)
    for j, i, w in corners:
        out = out + np.where(w > 0, arr[..., j, i] * w, 0.0)
    return out


def _axis_position(c: np.ndarray, t: np.ndarray, tol: float):
    """Lower index and fraction of each ``t`` along increasing centres ``c``; ``t`` within ``tol``
    outside are clipped to the ends. Returns (index, fraction, distance outside or 0)."""
    outside = np.maximum(c[0] - t, 0.0) - np.maximum(t - c[-1], 0.0)  # >0 below, <0 above
    tc = np.clip(t, c[0], c[-1])
    i = np.clip(np.searchsorted(c, tc, side="right") - 1, 0, len(c) - 2)
    w = (tc - c[i]) / (c[i + 1] - c[i])
    outside = np.where(np.abs(outside) <= tol, 0.0, outside)
    return i, np.clip(w, 0.0, 1.0), outside


def _wrap_lon(tlon: np.ndarray, slon: np.ndarray) -> np.ndarray:
    """Target longitudes shifted by multiples of 360 deg towards the middle of the source's range."""
    mid = 0.5 * (np.nanmin(slon) + np.nanmax(slon))
    return tlon - 360.0 * np.round((tlon - mid) / 360.0)


def _rectilinear_positions(slat, slon, tlat, tlon, file: str, tshape):
    """(j0, i0, u, v) of the targets on a rectilinear source (increasing 1-D lat, lon)."""
    dlat, dlon = float(np.median(np.diff(slat))), float(np.median(np.diff(slon)))
    j0, v, out_y = _axis_position(slat, tlat, 1e-9 * dlat)
    i0, u, out_x = _axis_position(slon, tlon, 1e-9 * dlon)
    bad = (out_y != 0) | (out_x != 0)
    if bad.any():
        k = int(np.argmax(np.abs(out_y) / dlat + np.abs(out_x) / dlon))
        y, x = np.unravel_index(k, tshape)
        parts = []
        if out_y[k]:
            parts.append(f"{abs(out_y[k]):.6g} deg ({abs(out_y[k]) / dlat:.3g} source cells) "
                         f"{'south' if out_y[k] > 0 else 'north'}")
        if out_x[k]:
            parts.append(f"{abs(out_x[k]):.6g} deg ({abs(out_x[k]) / dlon:.3g} source cells) "
                         f"{'west' if out_x[k] > 0 else 'east'}")
        raise DataError(
            f"regrid_bilinear: {int(bad.sum())} of {bad.size} target cells lie outside the source grid {file} "
            f"(cell centres lat {slat[0]:.8g}..{slat[-1]:.8g}, lon {slon[0]:.8g}..{slon[-1]:.8g}); the farthest, "
            f"target cell (y={y}, x={x}) at lat {tlat[k]:.8g}, lon {tlon[k]:.8g}, is {' and '.join(parts)} of "
            f"them; expected targets inside the source cell centres (bilinear interpolation does not extrapolate)"
        )
    return j0, i0, u, v


def _boundary_distance(slat2, slon2, plat, plon, coslat):
    """Distance [deg, longitude scaled by cos(lat)] of points to the ring of the outer cell centres."""
    ring = np.concatenate([
        np.c_[slon2[0, :], slat2[0, :]], np.c_[slon2[1:, -1], slat2[1:, -1]],
        np.c_[slon2[-1, -2::-1], slat2[-1, -2::-1]], np.c_[slon2[-2:0:-1, 0], slat2[-2:0:-1, 0]],
        np.c_[slon2[:1, 0], slat2[:1, 0]],
    ])  # fmt: skip
    ring[:, 0] *= coslat
    a, b = ring[:-1], ring[1:]
    p = np.c_[plon * coslat, plat][:, None, :]
    ab = b - a
    s = np.clip(((p - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-300), 0.0, 1.0)
    d = np.sqrt((((a + s[..., None] * ab) - p) ** 2).sum(-1))
    return d.min(axis=1)


def _invert_quads(slat2, slon2, cj, ci, tlat, tlon):
    """Fractional (u, v) of each target in the quadrilaterals with lower corners ``(cj, ci)``
    (``[n, k]``) by Newton's method on their bilinear maps; ``ok`` where (u, v) lies in the unit
    square and the map reproduces the target."""
    p00 = np.stack([slon2[cj, ci], slat2[cj, ci]], -1)
    p10 = np.stack([slon2[cj, ci + 1], slat2[cj, ci + 1]], -1)
    p01 = np.stack([slon2[cj + 1, ci], slat2[cj + 1, ci]], -1)
    p11 = np.stack([slon2[cj + 1, ci + 1], slat2[cj + 1, ci + 1]], -1)
    b, c, d = p10 - p00, p01 - p00, p11 - p10 - p01 + p00
    target = np.stack([tlon, tlat], -1)[:, None, :]
    u = np.full(cj.shape, 0.5)
    v = np.full(cj.shape, 0.5)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for _ in range(30):
            f = p00 + b * u[..., None] + c * v[..., None] + d * (u * v)[..., None] - target
            ju, jv = b + d * v[..., None], c + d * u[..., None]
            det = ju[..., 0] * jv[..., 1] - ju[..., 1] * jv[..., 0]
            du = (f[..., 0] * jv[..., 1] - f[..., 1] * jv[..., 0]) / det
            dv = (ju[..., 0] * f[..., 1] - ju[..., 1] * f[..., 0]) / det
            u, v = u - du, v - dv
        f = p00 + b * u[..., None] + c * v[..., None] + d * (u * v)[..., None] - target
        scale = np.sqrt((b**2).sum(-1) + (c**2).sum(-1))
        eps = 1e-9
        ok = (np.isfinite(u) & np.isfinite(v) & (u >= -eps) & (u <= 1 + eps) & (v >= -eps) & (v <= 1 + eps)
              & (np.sqrt((f**2).sum(-1)) <= 1e-9 * scale))  # fmt: skip
    return u, v, ok


def _curvilinear_positions(slat2, slon2, tlat, tlon, file: str, tshape):
    """(j0, i0, u, v) of the targets on a curvilinear source (2-D lat, lon on (y, x)).

    For each target, the quadrilaterals of source cell centres around its 8 nearest centres are
    tried first (KD-tree), then, for a target none of them holds, every quadrilateral; the bilinear
    map of a quadrilateral, (u, v) in [0, 1]^2 -> (lon, lat), is inverted by Newton's method, and the
    first quadrilateral with (u, v) inside the unit square holds the target."""
    from scipy.spatial import cKDTree

    ny, nx = slat2.shape
    n = len(tlat)
    coslat = math.cos(math.radians(float(np.mean(slat2))))
    tree = cKDTree(np.c_[slon2.ravel() * coslat, slat2.ravel()])
    k = min(8, ny * nx)
    _, idx = tree.query(np.c_[tlon * coslat, tlat], k=k)
    idx = np.asarray(idx).reshape(n, k)
    nj, ni = np.unravel_index(idx, (ny, nx))
    cj = np.clip(np.stack([nj - 1, nj - 1, nj, nj], -1), 0, ny - 2).reshape(n, -1)
    ci = np.clip(np.stack([ni - 1, ni, ni - 1, ni], -1), 0, nx - 2).reshape(n, -1)
    u, v, ok = _invert_quads(slat2, slon2, cj, ci, tlat, tlon)
    first = np.argmax(ok, axis=1)
    r = np.arange(n)
    j0, i0, uu, vv = cj[r, first], ci[r, first], u[r, first], v[r, first]
    found = ok.any(axis=1)
    if not found.all():  # every quadrilateral, a block of targets at a time
        qj, qi = (a.ravel() for a in np.meshgrid(np.arange(ny - 1), np.arange(nx - 1), indexing="ij"))
        rest = np.flatnonzero(~found)
        block = max(1, 2_000_000 // len(qj))
        for s in range(0, len(rest), block):
            sel = rest[s:s + block]
            aj = np.broadcast_to(qj, (len(sel), len(qj)))
            ai = np.broadcast_to(qi, (len(sel), len(qi)))
            u2, v2, ok2 = _invert_quads(slat2, slon2, aj, ai, tlat[sel], tlon[sel])
            hit = ok2.any(axis=1)
            f2 = np.argmax(ok2, axis=1)
            rr = np.arange(len(sel))
            j0[sel[hit]], i0[sel[hit]] = qj[f2[hit]], qi[f2[hit]]
            uu[sel[hit]], vv[sel[hit]] = u2[rr, f2][hit], v2[rr, f2][hit]
            found[sel[hit]] = True
    if not found.all():
        bad = np.flatnonzero(~found)
        dist = _boundary_distance(slat2, slon2, tlat[bad], tlon[bad], coslat)
        spacing = float(np.median(np.hypot(np.diff(slon2, axis=1) * coslat, np.diff(slat2, axis=1))))
        m = int(np.argmax(dist))
        kk = bad[m]
        y, x = np.unravel_index(kk, tshape)
        raise DataError(
            f"regrid_bilinear: {len(bad)} of {n} target cells lie outside the curvilinear source grid {file} "
            f"(the ring of its outer cell centres); the farthest, target cell (y={y}, x={x}) at lat {tlat[kk]:.8g}, "
            f"lon {tlon[kk]:.8g}, is {dist[m]:.6g} deg ({dist[m] / spacing:.3g} source cells) outside it "
            f"(longitude scaled by cos(latitude)); expected targets inside the source cell centres (bilinear "
            f"interpolation does not extrapolate)"
        )
    return j0, i0, np.clip(uu, 0, 1), np.clip(vv, 0, 1)


def regrid_bilinear(source: xr.Dataset, lat, lon) -> xr.Dataset:
    """Every gridded variable of ``source`` (dims ``(..., y, x)``, e.g. ``(time, y, x)`` from
    :func:`~hybridlsm.data.read_gridded`) bilinearly interpolated onto target cell centres.

    ``lat``, ``lon``: 1-D (a rectilinear target: the result has ``lat(y)``, ``lon(x)``) or 2-D of one
    shape (a curvilinear target: ``lat(y, x)``, ``lon(y, x)``), in degrees.

    - Rectilinear sources (1-D ``lat(y)``, ``lon(x)``, either order): bilinear in latitude and
      longitude between the four surrounding cell centres; a field linear in lat and lon is
      reproduced exactly.
    - Curvilinear sources (2-D ``lat(y, x)``, ``lon(y, x)``, e.g. WRF): bilinear in the source's
      *index space*. The four cell centres around a target are found (KD-tree on the centres), the
      bilinear map of that quadrilateral is inverted locally by Newton's method to the fractional
      index (u, v) of the target, and the four values are weighted (1-u)(1-v), u(1-v), (1-u)v, uv.
      This is true bilinear interpolation on the source's quadrilaterals (not a piecewise-linear
      triangulation) and is also exact for fields linear in lat and lon.

    Targets must lie inside the source's cell centres (within 1e-9 of a cell): any other is a
    DataError naming the farthest target cell and how far outside it lies (degrees and source
    cells); nothing is extrapolated. Target longitudes are shifted by multiples of 360 deg to the
    source's range; a global source is not wrapped across its edge.

    NaN (sea, outside a basin) stays within the stencil: a target is NaN when one of its four source
    cells with a positive weight is NaN, and is not otherwise affected. Boolean ``<var>_estimated`` /
    ``<var>_filled`` flags become True where any contributing source cell is flagged. Variables without
    the grid dims are copied; other non-float variables on the grid (e.g. ``_qc`` integers, class
    indices) cannot be interpolated and are dropped with a DataWarning (listed in
    ``attrs["not_regridded"]``), as are the source's coordinates on the grid (``mask``, projected
    ``y``/``x``). Results are float64; variable and dataset attrs are kept (``units`` unchanged);
    dask-backed sources stay lazy.
    """
    file = _label(source)
    ydim, xdim = _grid_dims(source)
    slat = np.asarray(_coord(source, ("lat", "latitude", "XLAT"), "latitude").values, float)
    slon = np.asarray(_coord(source, ("lon", "longitude", "XLONG"), "longitude").values, float)
    tlat_in, tlon_in = np.asarray(lat, float), np.asarray(lon, float)
    if tlat_in.ndim == 1 and tlon_in.ndim == 1:
        tshape = (len(tlat_in), len(tlon_in))
        tlat, tlon = (a.ravel() for a in np.meshgrid(tlat_in, tlon_in, indexing="ij"))
    elif tlat_in.ndim == 2 and tlat_in.shape == tlon_in.shape:
        tshape = tlat_in.shape
        tlat, tlon = tlat_in.ravel(), tlon_in.ravel()
    else:
        raise ValueError(f"regrid_bilinear: target lat {tlat_in.shape} and lon {tlon_in.shape}; expected both 1-D "
                         f"(a rectilinear grid) or both 2-D of one shape (a curvilinear grid)")
    if not (np.isfinite(tlat).all() and np.isfinite(tlon).all()):
        raise ValueError("regrid_bilinear: target lat/lon contain NaN or infinite values")
    ny, nx = source.sizes[ydim], source.sizes[xdim]
    if ny < 2 or nx < 2:
        raise DataError(f"{file}: a {ny} x {nx} grid; bilinear interpolation needs at least 2 cells along y and x")
    src = source
    if slat.ndim == 2 and slon.ndim == 2 and (slat == slat[:, :1]).all() and (slon == slon[:1, :]).all():
        slat, slon = slat[:, 0], slon[0, :]  # 2-D coordinates of a rectilinear grid
    if slat.ndim == 1 and slon.ndim == 1:
        if len(slat) != ny or len(slon) != nx:
            raise DataError(f"{file}: lat ({len(slat)}) / lon ({len(slon)}) do not match the grid {ny} x {nx}")
        for name, c in (("lat", slat), ("lon", slon)):
            dc = np.diff(c)
            if not (np.isfinite(c).all() and ((dc > 0).all() or (dc < 0).all())):
                raise DataError(f"{file}: source {name} is not strictly monotonic ({c[:5]} ...); expected cell "
                                f"centres in increasing or decreasing order")
        if slat[0] > slat[-1]:
            src, slat = src.isel({ydim: slice(None, None, -1)}), slat[::-1]
        if slon[0] > slon[-1]:
            src, slon = src.isel({xdim: slice(None, None, -1)}), slon[::-1]
        tlon = _wrap_lon(tlon, slon)
        j0, i0, u, v = _rectilinear_positions(slat, slon, tlat, tlon, file, tshape)
        method = "bilinear in lat/lon between the four surrounding source cell centres"
    elif slat.ndim == 2 and slon.ndim == 2:
        if slat.shape != (ny, nx) or slon.shape != (ny, nx):
            raise DataError(f"{file}: 2-D lat {slat.shape} / lon {slon.shape} do not match the grid {(ny, nx)}")
        if not (np.isfinite(slat).all() and np.isfinite(slon).all()):
            raise DataError(f"{file}: 2-D lat/lon contain missing values; expected a coordinate at every cell")
        tlon = _wrap_lon(tlon, slon)
        j0, i0, u, v = _curvilinear_positions(slat, slon, tlat, tlon, file, tshape)
        method = ("bilinear in the source's index space (the quadrilateral's bilinear map inverted locally by "
                  "Newton's method)")
    else:
        raise DataError(f"{file}: lat has {slat.ndim} and lon {slon.ndim} dimensions; expected both 1-D or both 2-D")

    npts = len(tlat)
    out: dict[str, xr.DataArray] = {}
    skipped = []
    for name, da in src.data_vars.items():
        if ydim not in da.dims or xdim not in da.dims:
            out[name] = da
            continue
        is_flag = da.dtype == bool and name.endswith(("_estimated", "_filled"))
        if not (np.issubdtype(da.dtype, np.floating) or is_flag):
            skipped.append(name)
            continue
        lead = [d for d in da.dims if d not in (ydim, xdim)]
        da = da.transpose(*lead, ydim, xdim)
        res = xr.apply_ufunc(
            _bilinear_apply, da, input_core_dims=[[ydim, xdim]], output_core_dims=[["_point"]],
            kwargs={"j0": j0, "i0": i0, "u": u, "v": v, "flags": is_flag}, dask="parallelized",
            output_dtypes=[bool if is_flag else float],
            dask_gufunc_kwargs={"output_sizes": {"_point": npts}, "allow_rechunk": True},
        )
        data = res.data.reshape(res.shape[:-1] + tshape)
        out[name] = xr.DataArray(data, dims=tuple(lead) + ("y", "x"), attrs=dict(da.attrs))
    if skipped:
        warnings.warn(f"{file}: variables {skipped} are not float (integer flags, class indices) and cannot be "
                      f"interpolated bilinearly; dropped from the regridded dataset", DataWarning, stacklevel=2)
    coords = {c: source[c] for c in source.coords if ydim not in source[c].dims and xdim not in source[c].dims
              and c not in (ydim, xdim)}  # fmt: skip
    lat_attrs = {"units": "degrees_north", "long_name": "latitude of the cell centre"}
    lon_attrs = {"units": "degrees_east", "long_name": "longitude of the cell centre"}
    if tlat_in.ndim == 1:
        coords["lat"] = ("y", tlat_in, lat_attrs)
        coords["lon"] = ("x", tlon_in, lon_attrs)
    else:
        coords["lat"] = (("y", "x"), tlat_in, lat_attrs)
        coords["lon"] = (("y", "x"), tlon_in, lon_attrs)
    ds = xr.Dataset(out, coords=coords, attrs=dict(source.attrs))
    kind = "rectilinear" if slat.ndim == 1 else "curvilinear"
    ds.attrs["regridding"] = (f"regrid_bilinear from a {ny} x {nx} {kind} grid onto {tshape[0]} x {tshape[1]} "
                              f"target cell centres: {method}")
    if skipped:
        ds.attrs["not_regridded"] = ", ".join(skipped)
    return ds


# ----------------------------------------------------------------------------------------------------
# 2. time alignment

TIME_RULES: dict[str, str] = {
    # states: interpolated in time (``method``) onto a finer step
    **{v: "state" for v in ("Tair", "Qair", "VPD", "RH", "Psurf", "Wind", "CO2air", "Ustar", "SoilTemp",
                            "SoilMoistVol", "LAI", "rho_air", "lambda_v")},
    # interval-mean fluxes and rates: each coarse value repeated on its sub-steps (block), which
    # conserves every total (sum of rate x step) exactly
    **{v: "flux" for v in ("SWdown", "LWdown", "Precip", "Rainf", "Snowf", "Rnet", "SWup", "LWup", "Qg", "Qh",
                           "Qle", "Qh_cor", "Qle_cor")},
}
"""Canonical variable -> ``"state"`` (interpolated: ``align_time(method=...)``) or ``"flux"``
(interval means and rates, always repeated so totals are conserved). Onto a coarser step every
variable is averaged. ``align_time(rules=...)`` extends it."""


def check_regular_time(ds: xr.Dataset) -> float:
    """The step [s] of a regular, strictly increasing time axis; anything else is a DataError naming
    the index and time."""
    file = _label(ds)
    if "time" not in ds.coords or not np.issubdtype(ds["time"].dtype, np.datetime64):
        raise DataError(f"{file}: no datetime 'time' coordinate; expected a regular time axis")
    t = ds["time"].values.astype("datetime64[ns]")
    if len(t) < 2:
        raise DataError(f"{file}: {len(t)} time step(s); expected a time series")
    d = np.diff(t)
    nonpos = np.flatnonzero(d <= np.timedelta64(0, "ns"))
    if nonpos.size:
        i = int(nonpos[0]) + 1
        raise DataError(f"{file}: time is not sorted: {fmt_time(t[i])} (index {i}) does not follow "
                        f"{fmt_time(t[i - 1])} (index {i - 1}); expected strictly increasing times")
    irregular = np.flatnonzero(d != d[0])
    if irregular.size:
        i = int(irregular[0]) + 1
        raise DataError(f"{file}: irregular time step {pd.Timedelta(d[i - 1])} before {fmt_time(t[i])} (index {i}); "
                        f"expected {pd.Timedelta(d[0])} throughout")
    return pd.Timedelta(d[0]).total_seconds()


def _ratio(a: float, b: float, file: str, what: str) -> int:
    k = a / b
    if abs(k - round(k)) > 1e-9 * k:
        raise DataError(f"{file}: {what}: {a:g} s is not a whole multiple of {b:g} s; expected the coarser step "
                        f"to be an integer multiple of the finer")
    return int(round(k))


def align_time(ds: xr.Dataset, step_s: float, *, method: str = "linear", rules: dict[str, str] | None = None,
               ) -> xr.Dataset:
    """``ds`` on a regular time axis of ``step_s`` seconds starting at its first time.

    Onto a finer step (e.g. 3-hourly -> hourly; the source step must be a whole multiple of
    ``step_s``), by the per-variable rule of :data:`TIME_RULES` (extended by ``rules``):

    - ``"state"`` variables (Tair, Qair, Psurf, Wind, ...) with ``method="linear"``: linearly
      interpolated between consecutive source samples at their time stamps; after the last
      sample, where no later sample exists, the last value is held. ``method="block"`` repeats them.
    - ``"flux"`` variables (SWdown, LWdown, Precip and other interval means / rates): each source value
      is repeated on the sub-steps of its interval (block), so every total (sum of rate x step, e.g.
      daily precipitation or daily shortwave energy) is conserved exactly.

    Output steps at the source's time stamps keep the original samples; every other step is not an
    original sample and is flagged in ``<var>_estimated`` (ORed with an existing flag, which is
    repeated onto the sub-steps) and counted per variable in ``attrs["repairs"]`` / ``n_repairs``
    (and ``n_estimated`` on the flag). A NaN neighbour gives NaN (gaps are not filled here).

    Onto a coarser step (``step_s`` a whole multiple of the source step), each output step is the mean
    of its source samples (NaN if any is NaN; not flagged: an exact aggregate); flags are ORed over
    the block, ``_qc`` takes the block's largest (worst) value; trailing source steps that do not fill
    a whole output step are dropped (listed in ``repairs``).

    Time must be regular and strictly increasing (DataError otherwise); a variable with time and no
    rule is a DataError. Data are loaded into memory.
    """
    file = _label(ds)
    if method not in ("linear", "block"):
        raise ValueError(f"align_time: method {method!r}; expected 'linear' or 'block'")
    src_step = check_regular_time(ds)
    table = {**TIME_RULES, **(rules or {})}
    for name, rule in table.items():
        if rule not in ("state", "flux"):
            raise ValueError(f"align_time: rule {rule!r} for {name}; expected 'state' or 'flux'")
    timed = [v for v in ds.data_vars if "time" in ds[v].dims]
    unknown = [v for v in timed if not _is_flag(v) and v not in table]
    if unknown:
        raise DataError(f"{file}: no time-alignment rule for {unknown}; expected canonical variables of TIME_RULES "
                        f"or rules={{name: 'state' | 'flux'}}")
    t0 = ds["time"].values[0].astype("datetime64[ns]")
    nt = ds.sizes["time"]
    if math.isclose(src_step, step_s, rel_tol=1e-12):
        return ds.copy()
    out = ds.copy()
    repairs: list[str] = []
    step_ns = np.timedelta64(int(round(step_s * 1e9)), "ns")
    if src_step > step_s:
        k = _ratio(src_step, step_s, file, "source step vs model step")
        new_t = t0 + np.arange(nt * k) * step_ns
        sub = np.arange(k)
        new_vars: dict[str, xr.DataArray] = {}
        est_new: dict[str, np.ndarray] = {}
        for name in timed:
            da = ds[name].transpose("time", ...)
            x = np.asarray(da.values)
            if _is_flag(name):
                new = np.repeat(x, k, axis=0)
            else:
                rule = table[name]
                x = x.astype(float)
                if rule == "state" and method == "linear":
                    nxt = np.concatenate([x[1:], x[-1:]], axis=0)
                    w = (sub / k).reshape((1, k) + (1,) * (x.ndim - 1))
                    new = x[:, None] * (1.0 - w) + nxt[:, None] * w
                    new[:, 0] = x  # original samples exactly
                    new[-1, :] = x[-1]  # after the last sample: held
                    how = "linear interpolation between the source samples"
                else:
                    new = np.repeat(x[:, None], k, axis=1)
                    how = "repeating each interval's value (block; totals conserved)"
                new = new.reshape((nt * k,) + x.shape[1:])
                est = np.ones(new.shape, bool)
                est[::k] = False
                est &= np.isfinite(new)
                est_new[name] = est
                n_held = int(est[-(k - 1):].sum()) if rule == "state" and method == "linear" else 0
                held = (f", {n_held} of them after the last sample {fmt_time(ds['time'].values[-1])} held at its "
                        f"value" if n_held else "")  # fmt: skip
                repairs.append(f"{name}: time step {src_step:g} s -> {step_s:g} s by {how}: {int(est.sum())} values "
                               f"are not original samples{held} (flagged {name}_estimated)")
            new_vars[name] = xr.DataArray(new, dims=da.dims, attrs=dict(da.attrs))
        for name, est in est_new.items():
            flag = f"{name}_estimated"
            old = new_vars[flag].values.astype(bool) if flag in new_vars else np.zeros_like(est)
            dims = new_vars[name].dims
            f = old | est
            new_vars[flag] = xr.DataArray(f, dims=dims, attrs={
                "long_name": f"{name} estimated (not an original sample)", "n_estimated": int(f.sum())})
    else:
        k = _ratio(step_s, src_step, file, "model step vs source step")
        n_out = nt // k
        if n_out == 0:
            raise DataError(f"{file}: {nt} steps of {src_step:g} s do not fill one model step of {step_s:g} s")
        new_t = t0 + np.arange(n_out) * step_ns
        new_vars = {}
        for name in timed:
            da = ds[name].transpose("time", ...)
            x = np.asarray(da.values)[: n_out * k]
            x = x.reshape((n_out, k) + x.shape[1:])
            if name.endswith(("_estimated", "_filled")):
                new = x.any(axis=1)
            elif name.endswith("_qc"):
                new = x.max(axis=1)
            else:
                new = x.astype(float).mean(axis=1)
            new_vars[name] = xr.DataArray(new, dims=da.dims, attrs=dict(da.attrs))
        dropped = nt - n_out * k
        repairs.append(f"time step {src_step:g} s -> {step_s:g} s by averaging {k} source steps per model step"
                       + (f"; the last {dropped} source step(s) from {fmt_time(ds['time'].values[n_out * k])} do not "
                          f"fill a model step and were dropped" if dropped else ""))  # fmt: skip
    out = out.drop_vars(timed).drop_dims("time", errors="ignore")
    out = out.assign_coords(time=new_t)
    for name, da in new_vars.items():
        out[name] = da
    out = out[[v for v in list(ds.data_vars) + [n for n in new_vars if n not in ds.data_vars]]]
    out.attrs = dict(ds.attrs)
    out.attrs["time_step_s"] = float(step_s)
    out.attrs["time_resolution"] = f"{int(step_s // 60)}min"
    _add_repairs(out, repairs)
    return out


# ----------------------------------------------------------------------------------------------------
# 3. thermodynamically constrained gap filling


@dataclass
class FillSummary:
    """What :func:`fill_thermodynamic` did, per variable (counts of cell-steps)."""

    missing_before: dict[str, int] = field(default_factory=dict)
    filled: dict[str, int] = field(default_factory=dict)
    still_missing: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    lapse_rate: np.ndarray | None = None
    """Fitted dT/dz per time step [K m-1] (NaN where no fit)."""
    p_ref: np.ndarray | None = None
    """Fitted sea-level (z = 0) reference pressure per time step [Pa] (NaN where no fit)."""
    elevation: np.ndarray | None = None
    """The (y, x) elevations used [m]: given, or effective ones from each cell's own series."""

    def __str__(self) -> str:
        lines = [f"{v}: {self.missing_before[v]} missing, {self.filled[v]} filled, {self.still_missing[v]} still "
                 f"missing" for v in self.missing_before]  # fmt: skip
        return "\n".join(lines + self.notes)


def _virtual_temperature(t, q):
    """T_v = T (1 + 0.608 q), as :func:`hybridlsm.thermo.air_density` uses it."""
    return t * (1.0 + 0.608 * q)


def _vapour_pressure(t, p, q, rh, vpd_hpa):
    """e [Pa] from Qair (needs p), else RH, else VPD (each through e_s(T)); NaN where none is known."""
    e_q = thermo.vapour_pressure_from_specific_humidity(q, p)
    e_rh = rh / 100.0 * thermo.saturation_vapour_pressure(t)
    e_vpd = thermo.saturation_vapour_pressure(t) - 100.0 * vpd_hpa
    return np.where(np.isfinite(e_q), e_q, np.where(np.isfinite(e_rh), e_rh, e_vpd))


def _per_step_lapse_fit(temp, z, obs):
    """Least-squares T = a(t) + gamma(t) (z - zbar) over the observed cells of each step.

    Steps with fewer than two observed cells of distinct elevation take gamma interpolated in time
    from the fitted steps (constant beyond the ends) and a from their observed cells; steps with no
    observed cell get NaN. Returns (a, gamma, zbar, fitted mask)."""
    zbar = float(np.nanmean(z))
    zc = np.where(np.isfinite(z), z - zbar, 0.0)[None, :]
    m = obs.astype(float)
    n = m.sum(1)
    tt = np.where(obs, temp, 0.0)
    sz, szz, st, szt = (m * zc).sum(1), (m * zc**2).sum(1), tt.sum(1), (tt * zc).sum(1)
    var = szz - np.where(n > 0, sz**2 / np.maximum(n, 1), 0.0)
    spread = np.nanmax(np.abs(zc)) if np.isfinite(zc).any() else 0.0
    fitted = (n >= 2) & (var > 1e-12 * max(spread, 1.0) ** 2 * np.maximum(n, 1))
    gamma = np.full(len(n), np.nan)
    gamma[fitted] = (szt - sz * st / n)[fitted] / var[fitted]
    if fitted.any() and not fitted.all():
        idx = np.flatnonzero(fitted)
        gamma[~fitted] = np.interp(np.flatnonzero(~fitted), idx, gamma[idx])
    a = np.where(n > 0, (st - gamma * sz) / np.maximum(n, 1), np.nan)
    return a, gamma, zbar, fitted


def fill_thermodynamic(ds: xr.Dataset, elevation=None, *, max_iterations: int = 8,
                       iterations_elevation: int = 20) -> tuple[xr.Dataset, FillSummary]:
    """Missing Tair, Psurf and humidity of a gridded dataset ``(time, y, x)`` filled by least-squares
    fits of thermodynamic relations; returns ``(filled dataset, FillSummary)``.

    ``elevation``: cell elevations [m] on ``(y, x)`` (array or DataArray; default the dataset's
    ``elevation`` variable or coordinate on the grid). In this order:

    1. **Tair** (needs elevations): per time step, T = a + gamma z fitted by least squares over the
       cells where T is observed; a missing T is a + gamma z of its cell. A step with one observed
       cell (or all at one elevation) takes gamma interpolated in time from the fitted steps and a
       from its observed cell(s); a step with none is not filled.
    2. **Psurf**: the hypsometric relation p = p_ref exp(-g (z - z_ref) / (R_d T_v)) with z_ref = 0
       (p_ref: the reduced sea-level pressure) and T_v = T (1 + 0.608 q) of the cell; p_ref is fitted
       per time step by least squares in pascal over the cells where p is observed,
       p_ref = sum(p E) / sum(E^2), E = exp(-g z / (R_d T_v)). Where q is missing but RH or VPD is
       known, q depends on p and the relation is iterated (``max_iterations``, a fixed point; the
       dependence is weak); where no humidity is known T_v = T (dry; counted in the notes).
    3. **Humidity**: the vapour pressure e from Qair (with p), else RH (e = RH e_s(T)), else VPD
       (e = e_s(T) - VPD), e_s of :func:`hybridlsm.thermo.saturation_vapour_pressure`; then a missing
       Qair = 0.622 e / (p - 0.378 e), RH = 100 e / e_s(T), VPD = e_s(T) - e. A cell and step with no
       humidity variable is **not** filled: thermodynamics bounds vapour content (e <= e_s(T)) but
       does not determine it, so a fit of dew point there would be a statistical, not a
       thermodynamic, estimate.

    With no elevation, an *effective* elevation of each cell is estimated from the cells' own p and
    T series (the steps where both are observed): first from ln(p / p0) = -g z / (R_d T_v) with
    p0 = 101325 Pa, then by alternating least squares of ln p = ln p_ref(t) - g z / (R_d T_v)
    (``iterations_elevation``) with the mean elevation kept, so that a cell's elevation does not
    depend on which steps it was observed at. These stand in for z in 1 and 2 (a cell with no such
    step cannot be filled). Their common offset from the true elevations (from p_ref != p0) is
    absorbed by a and p_ref only up to the spread of T_v over the cells: the fills are then
    approximate (within 1 Pa and 1e-3 K on the synthetic grid of tests/test_gridprep.py), not exact.

    Only variables present in ``ds`` are filled (none is added). Each filled value is flagged in
    ``<var>_estimated`` (ORed with an existing flag) and counted in ``attrs["repairs"]``; values that
    cannot be filled stay NaN and are counted in ``FillSummary.still_missing``. Data are loaded into
    memory.
    """
    file = _label(ds)
    ydim, xdim = _grid_dims(ds)
    if "time" not in ds.dims:
        raise DataError(f"{file}: no time dimension; expected (time, y, x)")
    ny, nx = ds.sizes[ydim], ds.sizes[xdim]
    nt = ds.sizes["time"]
    ncell = ny * nx

    def get(name):
        if name not in ds:
            return None
        da = ds[name]
        if set(da.dims) != {"time", ydim, xdim}:
            raise DataError(f"{file}: variable {name} has dims {da.dims}; expected (time, {ydim}, {xdim})")
        return np.asarray(da.transpose("time", ydim, xdim).values, float).reshape(nt, ncell)

    nan = np.full((nt, ncell), np.nan)
    arrays = {v: get(v) for v in ("Tair", "Psurf", "Qair", "RH", "VPD")}
    present = [v for v, a in arrays.items() if a is not None]
    t = arrays["Tair"].copy() if arrays["Tair"] is not None else nan.copy()
    p = arrays["Psurf"].copy() if arrays["Psurf"] is not None else nan.copy()
    q = arrays["Qair"].copy() if arrays["Qair"] is not None else nan.copy()
    rh = arrays["RH"].copy() if arrays["RH"] is not None else nan.copy()
    vpd = arrays["VPD"].copy() if arrays["VPD"] is not None else nan.copy()
    summary = FillSummary()
    for v in present:
        summary.missing_before[v] = int(np.isnan(arrays[v]).sum())

    # elevations
    if elevation is None and "elevation" in ds.variables and set(ds["elevation"].dims) == {ydim, xdim}:
        elevation = ds["elevation"]
    if elevation is not None:
        if isinstance(elevation, xr.DataArray) and set(elevation.dims) == {ydim, xdim}:
            elevation = elevation.transpose(ydim, xdim)
        z = np.asarray(elevation, float)
        if z.shape != (ny, nx):
            raise DataError(f"{file}: elevation has shape {z.shape}; expected the grid ({ny}, {nx})")
        z = z.ravel()
        z_note = "given elevations"
    else:
        e_obs = _vapour_pressure(t, p, q, rh, vpd)
        qq = np.where(np.isfinite(q), q, thermo.specific_humidity_from_vapour_pressure(e_obs, p))
        tv = _virtual_temperature(t, np.where(np.isfinite(qq), qq, 0.0))
        ok = np.isfinite(p) & np.isfinite(tv) & (p > 0)
        a = np.where(ok, GRAVITY / (R_DRY * np.where(ok, tv, 1.0)), 0.0)
        b = np.where(ok, -np.log(np.where(ok, p, 1.0) / P_STANDARD), 0.0)
        den = (a * a).sum(0)
        has = den > 0
        z = np.where(has, (a * b).sum(0) / np.where(has, den, 1.0), np.nan)
        # alternating least squares: p_ref(t) given z, then z given p_ref(t), so that a cell's
        # elevation does not depend on which steps it was observed at; the mean elevation is kept
        # (the near-gauge freedom between a common elevation offset and ln p_ref)
        zmean = float(np.nanmean(z)) if has.any() else np.nan
        for _ in range(iterations_elevation):
            if not has.any():
                break
            expo = np.where(ok & has[None, :], np.exp(-a * np.where(has, z, 0.0)[None, :]), 0.0)
            d2 = (expo**2).sum(1)
            pr = np.where(d2 > 0, (np.where(ok, p, 0.0) * expo).sum(1) / np.where(d2 > 0, d2, 1.0), np.nan)
            okr = ok & np.isfinite(pr)[:, None]
            a_r = np.where(okr, a, 0.0)
            b_r = np.where(okr, -np.log(np.where(okr, p, 1.0) / np.where(okr, pr[:, None], 1.0)), 0.0)
            d = (a_r * a_r).sum(0)
            z = np.where(has & (d > 0), (a_r * b_r).sum(0) / np.where(d > 0, d, 1.0), np.nan)
            z = z + (zmean - np.nanmean(z))
        z_note = "effective elevations from each cell's own p and T series (no elevation given)"
        summary.notes.append(f"elevation: {z_note}: ln p = ln p_ref(t) - g z / (R_d T_v) by alternating least "
                             f"squares, the mean elevation kept at that of the first estimate (p_ref = p0 = "
                             f"{P_STANDARD:g} Pa); "
                             f"{int(np.isfinite(z).sum())} of {ncell} cells have one")
    summary.elevation = z.reshape(ny, nx)
    zok = np.isfinite(z)[None, :]

    filled: dict[str, np.ndarray] = {v: np.zeros((nt, ncell), bool) for v in present}

    # 1. Tair: per-step lapse-rate regression on elevation
    if arrays["Tair"] is not None:
        obs = np.isfinite(t) & zok
        if zok.any() and obs.any():
            a_t, gamma, zbar, fitted = _per_step_lapse_fit(t, z, obs)
            est = a_t[:, None] + gamma[:, None] * (z[None, :] - zbar)
            fill = np.isnan(t) & np.isfinite(est)
            t[fill] = est[fill]
            filled["Tair"] = fill
            summary.lapse_rate = gamma
            summary.notes.append(f"Tair: per-step least-squares lapse-rate fit on {z_note} ({int(fitted.sum())} of "
                                 f"{nt} steps fitted, the others with the lapse rate interpolated in time)")
        else:
            summary.notes.append("Tair: not filled (no elevation and no cell with observed Tair and Psurf)")

    # 2. Psurf: hypsometric relation with a per-step least-squares reference pressure
    if arrays["Psurf"] is not None:
        def tv_of(pp):
            e = _vapour_pressure(t, pp, q, rh, vpd)
            qq = np.where(np.isfinite(q), q, thermo.specific_humidity_from_vapour_pressure(e, pp))
            return _virtual_temperature(t, np.where(np.isfinite(qq), qq, 0.0)), np.isfinite(qq)

        obs = np.isfinite(p) & zok & np.isfinite(t)
        tv, _ = tv_of(p)
        expo = np.where(obs, np.exp(-GRAVITY * np.where(zok, z, 0.0) / (R_DRY * np.where(obs, tv, 1.0))), 0.0)
        den = (expo**2).sum(1)
        p_ref = np.where(den > 0, (np.where(obs, p, 0.0) * expo).sum(1) / np.where(den > 0, den, 1.0), np.nan)
        summary.p_ref = p_ref
        todo = np.isnan(p) & zok & np.isfinite(t) & np.isfinite(p_ref)[:, None]
        guess = np.where(todo, p_ref[:, None] * np.exp(-GRAVITY * np.where(zok, z, 0.0) / (R_DRY * t)), np.nan)
        for _ in range(max_iterations):
            tv, _ = tv_of(guess)
            guess = np.where(todo, p_ref[:, None] * np.exp(-GRAVITY * np.where(zok, z, 0.0) / (R_DRY * tv)), np.nan)
        _, humid = tv_of(guess)
        p[todo] = guess[todo]
        filled["Psurf"] = todo
        n_dry = int((todo & ~humid).sum())
        summary.notes.append(f"Psurf: hypsometric relation with p_ref fitted per step over observed cells "
                             f"({int(np.isfinite(p_ref).sum())} of {nt} steps); {n_dry} fills with no humidity known "
                             f"used the dry T_v = T")

    # 3. humidity
    e = _vapour_pressure(t, p, q, rh, vpd)
    es = thermo.saturation_vapour_pressure(t)
    if arrays["Qair"] is not None:
        cand = thermo.specific_humidity_from_vapour_pressure(e, p)
        fill = np.isnan(q) & np.isfinite(cand)
        q[fill] = cand[fill]
        filled["Qair"] = fill
    if arrays["RH"] is not None:
        cand = 100.0 * e / es
        fill = np.isnan(rh) & np.isfinite(cand)
        rh[fill] = cand[fill]
        filled["RH"] = fill
    if arrays["VPD"] is not None:
        cand = (es - e) / 100.0
        fill = np.isnan(vpd) & np.isfinite(cand)
        vpd[fill] = cand[fill]
        filled["VPD"] = fill
    if any(v in present for v in ("Qair", "RH", "VPD")):
        summary.notes.append("humidity: e from Qair, else RH, else VPD through e_s(T) (Magnus, Sonntag 1990); "
                             "cells and steps with no humidity variable are not filled (not determined by "
                             "thermodynamics)")

    out = ds.copy()
    repairs = []
    values = {"Tair": t, "Psurf": p, "Qair": q, "RH": rh, "VPD": vpd}
    how = {"Tair": "per-step least-squares lapse-rate regression on elevation",
           "Psurf": "hypsometric relation with a per-step least-squares sea-level reference pressure",
           "Qair": "vapour pressure from RH or VPD with e_s(T) and Psurf", "RH": "e from Qair or VPD over e_s(T)",
           "VPD": "e_s(T) - e, e from Qair or RH"}  # fmt: skip
    for v in present:
        da = ds[v]
        dims = ("time", ydim, xdim)
        new = values[v].reshape(nt, ny, nx)
        out[v] = xr.DataArray(new, dims=dims, attrs=dict(da.attrs)).transpose(*da.dims)
        fill = filled[v].reshape(nt, ny, nx)
        n = int(fill.sum())
        summary.filled[v] = n
        summary.still_missing[v] = int(np.isnan(new).sum())
        flag = f"{v}_estimated"
        old = np.asarray(ds[flag].transpose(*dims).values, bool) if flag in ds else np.zeros_like(fill)
        f = old | fill
        out[flag] = xr.DataArray(f, dims=dims, attrs={"long_name": f"{v} estimated by the package",
                                                      "n_estimated": int(f.sum())}).transpose(*da.dims)
        if n:
            repairs.append(f"{v}: {n} missing values filled by {how[v]} (flagged {flag}); "
                           f"{summary.still_missing[v]} still missing")
    _add_repairs(out, repairs)
    return out, summary


# ----------------------------------------------------------------------------------------------------
# 4. physical normalisation

P_SCALE_PRECIP = 1.0 / 3600.0
"""Precipitation scale: 1 mm h-1 as kg m-2 s-1."""
WIND_SCALE = 10.0
"""Wind-speed scale [m s-1]."""

NORMALISATION: dict[str, tuple[str, str]] = {
    "Tair": ("temperature", "(T - T0) / (Tmax - T0); T0 = 288.15 K (standard sea level), Tmax the region's maximum"),
    "Psurf": ("pressure", "(p - p0) / p0; p0 = 101325 Pa (standard sea level)"),
    "Qair": ("specific_humidity", "q / q_sat(T0, p0); q_sat(288.15 K, 101325 Pa) = 0.01065 kg kg-1"),
    "RH": ("relative", "RH / 100"),
    "VPD": ("vpd", "VPD / e_s(T0); e_s(288.15 K) = 17.05 hPa"),
    "SWdown": ("radiation", "SW / S0; S0 = 1361 W m-2 (solar constant)"),
    "LWdown": ("radiation", "LW / S0; S0 = 1361 W m-2 (solar constant)"),
    "Wind": ("scale", "Wind / 10 m s-1"),
    "Precip": ("log1p", "log1p(P / P_s); P_s = 1 mm h-1 = 1/3600 kg m-2 s-1"),
}
"""Canonical variable -> (rule, formula). Other variables (flags, CO2air, ...) are left as they are."""


def _norm_constants(ds: xr.Dataset, t_max: float | None) -> dict:
    c = {"T0": T_STANDARD, "p0": P_STANDARD, "q_sat_T0_p0": float(thermo.saturation_specific_humidity(T_STANDARD,
         P_STANDARD)), "e_s_T0_hPa": float(thermo.saturation_vapour_pressure(T_STANDARD)) / 100.0,
         "S0": SOLAR_CONSTANT, "wind_scale": WIND_SCALE, "precip_scale": P_SCALE_PRECIP}  # fmt: skip
    if "Tair" in ds:
        if t_max is None:
            t_max = float(ds["Tair"].max(skipna=True))
            if not np.isfinite(t_max):
                raise DataError(f"{_label(ds)}: Tair has no value; cannot take Tmax from the data (give t_max)")
        c["Tmax"] = float(t_max)
    return c


def _forward(rule: str, x, c: dict):
    if rule == "temperature":
        return (x - c["T0"]) / (c["Tmax"] - c["T0"])
    if rule == "pressure":
        return (x - c["p0"]) / c["p0"]
    if rule == "specific_humidity":
        return x / c["q_sat_T0_p0"]
    if rule == "relative":
        return x / 100.0
    if rule == "vpd":
        return x / c["e_s_T0_hPa"]
    if rule == "radiation":
        return x / c["S0"]
    if rule == "scale":
        return x / c["wind_scale"]
    return np.log1p(x / c["precip_scale"])


def _inverse(rule: str, x, c: dict):
    if rule == "temperature":
        return x * (c["Tmax"] - c["T0"]) + c["T0"]
    if rule == "pressure":
        return x * c["p0"] + c["p0"]
    if rule == "specific_humidity":
        return x * c["q_sat_T0_p0"]
    if rule == "relative":
        return x * 100.0
    if rule == "vpd":
        return x * c["e_s_T0_hPa"]
    if rule == "radiation":
        return x * c["S0"]
    if rule == "scale":
        return x * c["wind_scale"]
    return np.expm1(x) * c["precip_scale"]


def physical_normalise(ds: xr.Dataset, *, t_max: float | None = None, constants: dict | None = None,
                       ) -> tuple[xr.Dataset, dict]:
    """Each variable of :data:`NORMALISATION` scaled by its physical rule; returns
    ``(normalised dataset, constants)``.

    Temperature: T_norm = (T - T0) / (Tmax - T0), T0 = 288.15 K (standard sea-level temperature),
    Tmax the region's maximum Tair (``t_max``, default the data's maximum), so T0 -> 0 and Tmax -> 1.
    Pressure: (p - p0) / p0 with p0 = 101325 Pa. Qair by q_sat(T0, p0); RH as a fraction; VPD by
    e_s(T0). SWdown and LWdown by the solar constant 1361 W m-2. Wind by 10 m s-1. Precip:
    log1p(P / 1 mm h-1).

    ``constants`` (as returned by an earlier call) applies the same normalisation to another period or
    region; :func:`physical_denormalise` inverts it exactly. Normalised variables get ``units = "1"``
    and attrs ``normalisation`` (the formula) and ``normalised_from_units``. Tmax within 1 K of T0 is
    a DataError (no scale); Tmax below T0 (a cold region) gives a DataWarning (the scale is negative).
    Negative Precip is a DataError. Other variables are copied.
    """
    file = _label(ds)
    c = dict(constants) if constants is not None else _norm_constants(ds, t_max)
    if "Tair" in ds and "Tmax" not in c:
        raise DataError("physical_normalise: the constants have no Tmax but the dataset has Tair")
    if "Tmax" in c:
        if abs(c["Tmax"] - c["T0"]) < 1.0:
            raise DataError(f"{file}: Tmax {c['Tmax']:.6g} K is within 1 K of T0 = {c['T0']} K; "
                            f"(T - T0) / (Tmax - T0) has no usable scale")
        if c["Tmax"] < c["T0"] and constants is None:
            warnings.warn(f"{file}: Tmax {c['Tmax']:.6g} K is below T0 = {c['T0']} K: the temperature scale "
                          f"Tmax - T0 is negative (warmer -> smaller)", DataWarning, stacklevel=2)
    if "Precip" in ds:
        neg = int((ds["Precip"] < 0).sum())
        if neg:
            raise DataError(f"{file}: Precip has {neg} negative values (min {float(ds['Precip'].min()):.6g} "
                            f"kg m-2 s-1); expected precipitation >= 0")
    out = ds.copy()
    used = {}
    for name, (rule, formula) in NORMALISATION.items():
        if name not in ds:
            continue
        da = ds[name]
        new = _forward(rule, da.astype(float), c)
        new.attrs = {**da.attrs, "units": "1", "normalised_from_units": da.attrs.get("units", VARIABLES[name].units),
                     "normalisation": formula}  # fmt: skip
        out[name] = new
        used[name] = rule
    c["rules"] = used
    out.attrs["normalisation"] = "physical_normalise: " + ", ".join(sorted(used))
    return out, c


def physical_denormalise(ds: xr.Dataset, constants: dict) -> xr.Dataset:
    """The inverse of :func:`physical_normalise` with its ``constants``: canonical units again."""
    out = ds.copy()
    for name, rule in constants.get("rules", {}).items():
        if name not in ds:
            continue
        da = ds[name]
        new = _inverse(rule, da, constants)
        attrs = {k: v for k, v in da.attrs.items() if k not in ("normalisation", "normalised_from_units")}
        attrs["units"] = da.attrs.get("normalised_from_units", VARIABLES[name].units)
        new.attrs = attrs
        out[name] = new
    out.attrs.pop("normalisation", None)
    return out


# ----------------------------------------------------------------------------------------------------
# 5. land-cover fractions


def _key(name: str) -> str:
    return str(name).strip().lower().replace("-", "_").replace(" ", "_").replace("/", "_")


def land_cover_fractions(index: xr.DataArray, classes: Sequence, factor: int = 1, *, missing=None,
                         ) -> xr.DataArray:
    """Fractional cover of each class: ``(class, y, x)`` with the class names as the ``class``
    coordinate; ``factor`` aggregates a finer index map by ``factor`` x ``factor`` blocks to fractions
    that sum to one per cell (``factor=1``: one-hot).

    ``index``: a 2-D land-cover index map. Its values are named by the CF ``flag_values`` /
    ``flag_meanings`` attrs where present, else by the 17-class IGBP numbering
    (:data:`~hybridlsm.data.schema.IGBP_BY_INDEX`: 1 = ENF ... 17 = WAT). ``classes``: the classes to
    give, each an index value (int) or a name (an IGBP code such as ``"GRA"`` for IGBP-numbered maps, a
    flag meaning such as ``"grasslands"`` for maps with ``flag_meanings``; case and separators ignored).
    Every value of the map must be one of ``classes``: another value (an unknown code, or a class not
    asked for) is a DataError naming the code and its cells. ``missing``: a value meaning "no data";
    those fine cells (and NaN) are left out, the fractions are over the known fine cells and the
    coordinate ``known_fraction`` (y, x) gives their share (a cell with none is NaN).
    """
    name = index.name or "land-cover index"
    if index.ndim != 2:
        raise DataError(f"{name}: dims {index.dims}; expected a 2-D (y, x) map")
    ydim, xdim = index.dims
    ny, nx = index.shape
    if factor < 1 or ny % factor or nx % factor:
        raise DataError(f"{name}: a {ny} x {nx} map cannot be aggregated by factor {factor}; expected a positive "
                        f"factor that divides both sizes")
    vals = np.asarray(index.values, float)
    meanings = str(index.attrs.get("flag_meanings", "")).split()
    if meanings:
        flags = [int(f) for f in np.atleast_1d(index.attrs.get("flag_values", np.arange(1, len(meanings) + 1)))]
        table = dict(zip(flags, meanings))
    else:
        table = {i + 1: code for i, code in enumerate(IGBP_BY_INDEX)}
    by_key = {_key(label): code for code, label in table.items()}
    codes, labels = [], []
    for cl in classes:
        if isinstance(cl, (int, np.integer)):
            code = int(cl)
        elif _key(cl) in by_key:
            code = by_key[_key(cl)]
        else:
            raise DataError(f"{name}: class {cl!r} is not a class of this map; known: "
                            f"{', '.join(f'{k} = {v}' for k, v in table.items())}")
        if code in codes:
            raise DataError(f"{name}: class {cl!r} (code {code}) given twice")
        codes.append(code)
        labels.append(table.get(code, str(code)))
    known = np.isfinite(vals)
    if missing is not None:
        known &= vals != missing
    unknown = known & ~np.isin(vals, codes)
    if unknown.any():
        bad_codes = np.unique(vals[unknown])
        parts = []
        for bc in bad_codes[:5]:
            cells = np.argwhere(unknown & (vals == bc))
            shown = ", ".join(f"({j}, {i})" for j, i in cells[:3]) + (" ..." if len(cells) > 3 else "")
            what = f" ({table[int(bc)]})" if bc == int(bc) and int(bc) in table else " (not a class of the legend)"
            parts.append(f"code {bc:g}{what} at {len(cells)} cell(s) ({ydim}, {xdim}) = {shown}")
        raise DataError(f"{name}: {'; '.join(parts)}{' ...' if len(bad_codes) > 5 else ''}; expected only the "
                        f"classes {labels} (codes {codes}){'' if missing is None else f' or missing = {missing}'}")
    cy, cx = ny // factor, nx // factor
    onehot = np.stack([(vals == code) & known for code in codes]).astype(float)
    counts = onehot.reshape(len(codes), cy, factor, cx, factor).sum(axis=(2, 4))
    n_known = known.reshape(cy, factor, cx, factor).sum(axis=(1, 3)).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(n_known > 0, counts / np.where(n_known > 0, n_known, 1.0), np.nan)
    coords = {"class": ("class", labels), "code": ("class", codes),
              "known_fraction": ((ydim, xdim), n_known / factor**2)}  # fmt: skip
    for cname, c in index.coords.items():
        if c.dims == (ydim,) and np.issubdtype(c.dtype, np.number):
            coords[cname] = ((ydim,), np.asarray(c.values, float).reshape(cy, factor).mean(1), dict(c.attrs))
        elif c.dims == (xdim,) and np.issubdtype(c.dtype, np.number):
            coords[cname] = ((xdim,), np.asarray(c.values, float).reshape(cx, factor).mean(1), dict(c.attrs))
        elif c.dims == (ydim, xdim) and np.issubdtype(c.dtype, np.number):
            coords[cname] = ((ydim, xdim), np.asarray(c.values, float).reshape(cy, factor, cx, factor).mean((1, 3)),
                             dict(c.attrs))
    return xr.DataArray(frac, dims=("class", ydim, xdim), coords=coords, name="land_cover_fraction",
                        attrs={"units": "1", "long_name": "fraction of the cell covered by each class",
                               "aggregation_factor": int(factor)})
