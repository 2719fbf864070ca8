"""Solar geometry, top-of-atmosphere and clear-sky shortwave, and incoming longwave estimates.

- Top-of-atmosphere shortwave: :mod:`hybridlsm.solar` (Spencer 1971 geometry, S0 = 1361 W m-2),
  averaged over each interval from sub-samples.
- Clear-sky surface shortwave: (0.75 + 2e-5 z) x TOA (FAO-56, Allen et al. 1998, eq. 37).
- Clear-sky emissivity: Brutsaert (1975, WRR 11, 742) eps = 1.24 (e/T)^(1/7) with e in hPa;
  Prata (1996, QJRMS 122, 1127) eps = 1 - (1 + w) exp(-(1.2 + 3w)^0.5), w = 46.5 e/T [e hPa];
  Crawford & Duchon (1999, JAM 38, 474) eps = (1.22 + 0.06 sin((month + 2) pi / 6)) (e/T)^(1/7).
- Cloud correction: Crawford & Duchon (1999): cloud fraction c = 1 - SWdown / SWclear (daytime),
  eps_all = c + (1 - c) eps_clear; at night c is interpolated linearly in time between the
  neighbouring daytime values.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import solar
from ..constants import STEFAN_BOLTZMANN

__all__ = [
    "toa_shortwave",
    "clear_sky_shortwave",
    "clear_sky_emissivity",
    "cloud_fraction",
    "longwave_down",
]

def toa_shortwave(
    time,
    latitude: float,
    longitude: float,
    utc_offset_h: float,
    time_step_s: float,
    n_sub: int = 6,
) -> np.ndarray:
    """Mean top-of-atmosphere shortwave [W m-2] on a horizontal surface over each interval.

    ``time`` are interval starts in local standard time (UTC + ``utc_offset_h``); the interval
    mean is the average of :func:`hybridlsm.solar.toa_shortwave` at ``n_sub`` evenly spaced
    instants, which resolves sunrise and sunset within the interval.
    """
    t = pd.DatetimeIndex(time)
    total = np.zeros(len(t))
    for k in range(n_sub):
        dt = pd.Timedelta(seconds=(k + 0.5) / n_sub * float(time_step_s))
        total += solar.toa_shortwave(t + dt, latitude, longitude, utc_offset_h, 0.0)
    return total / n_sub


def clear_sky_shortwave(sw_toa, elevation_m: float):
    """Clear-sky surface shortwave [W m-2] = (0.75 + 2e-5 z) x TOA (FAO-56 eq. 37)."""
    z = 0.0 if not np.isfinite(elevation_m) else float(elevation_m)
    return (0.75 + 2.0e-5 * z) * np.asarray(sw_toa)


def clear_sky_emissivity(t_air, e_pa, method: str = "brutsaert1975", month=None):
    """Clear-sky atmospheric emissivity from air temperature [K] and vapour pressure [Pa]."""
    e_hpa = np.asarray(e_pa) / 100.0
    t = np.asarray(t_air)
    if method == "brutsaert1975":
        return 1.24 * (e_hpa / t) ** (1.0 / 7.0)
    if method == "prata1996":
        w = 46.5 * e_hpa / t
        return 1.0 - (1.0 + w) * np.exp(-np.sqrt(1.2 + 3.0 * w))
    if method == "crawford1999":
        if month is None:
            raise ValueError("crawford1999 needs the month (1-12) of each value")
        return (1.22 + 0.06 * np.sin((np.asarray(month) + 2.0) * np.pi / 6.0)) * (e_hpa / t) ** (1.0 / 7.0)
    raise ValueError(f"unknown clear-sky emissivity method {method!r}; use brutsaert1975, prata1996 or crawford1999")


def cloud_fraction(sw_down, sw_clear, min_clear: float = 200.0, window_steps: int = 1) -> np.ndarray:
    """Cloud fraction c = 1 - sum(SWdown) / sum(SWclear), clipped to 0..1 (Crawford & Duchon 1999).

    The sums run over a centred window of ``window_steps`` time steps, counting only daytime steps
    (SWclear >= ``min_clear`` W m-2, SWdown present); ratios of sums are less sensitive than
    single-step ratios to the errors of the clear-sky model at low sun. At night, at low sun and
    where SWdown is missing, c is interpolated linearly in time between the neighbouring daytime
    values (held constant before the first and after the last). NaN everywhere when there is no
    daytime value at all.
    """
    sw = np.asarray(sw_down, dtype=float)
    clr = np.asarray(sw_clear, dtype=float)
    day = (clr >= min_clear) & np.isfinite(sw)
    c = np.full(sw.shape, np.nan)
    if not day.any():
        return c
    num = pd.Series(np.where(day, sw, 0.0)).rolling(window_steps, center=True, min_periods=1).sum()
    den = pd.Series(np.where(day, clr, 0.0)).rolling(window_steps, center=True, min_periods=1).sum()
    ratio = (num / den).to_numpy()
    c[day] = np.clip(1.0 - ratio[day], 0.0, 1.0)
    idx = np.arange(sw.size)
    return np.interp(idx, idx[day], c[day])


def longwave_down(t_air, e_pa, cloud=None, method: str = "brutsaert1975", month=None):
    """Incoming longwave [W m-2] = eps sigma T^4 with eps = c + (1 - c) eps_clear (c = 0 if None)."""
    eps = clear_sky_emissivity(t_air, e_pa, method, month)
    if cloud is not None:
        c = np.asarray(cloud)
        eps = c + (1.0 - c) * eps
    return eps * STEFAN_BOLTZMANN * np.asarray(t_air) ** 4
