"""Solar geometry: declination, cosine of the solar zenith angle, top-of-atmosphere shortwave.

Used for clear-sky radiation (cloudiness from SWdown) and the virtual-site weather generator.
Times are local standard time; longitude and UTC offset place solar noon.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SOLAR_CONSTANT = 1361.0  # [W m-2]


def cos_solar_zenith(time, latitude: float, longitude: float, utc_offset_h: float, step_s: float = 0.0):
    """Cosine of the solar zenith angle at the middle of each interval starting at ``time`` (LST).

    Spencer (1971) declination and equation of time; negative values (sun below the horizon) are kept
    so callers can clip.
    """
    t = pd.DatetimeIndex(time) + pd.to_timedelta(step_s / 2.0, unit="s")
    doy = t.day_of_year.to_numpy()
    hour = (t.hour + t.minute / 60.0 + t.second / 3600.0).to_numpy()
    gamma = 2.0 * np.pi * (doy - 1) / 365.0
    decl = (
        0.006918
        - 0.399912 * np.cos(gamma)
        + 0.070257 * np.sin(gamma)
        - 0.006758 * np.cos(2 * gamma)
        + 0.000907 * np.sin(2 * gamma)
        - 0.002697 * np.cos(3 * gamma)
        + 0.00148 * np.sin(3 * gamma)
    )
    eot_min = 229.18 * (
        0.000075
        + 0.001868 * np.cos(gamma)
        - 0.032077 * np.sin(gamma)
        - 0.014615 * np.cos(2 * gamma)
        - 0.040849 * np.sin(2 * gamma)
    )
    solar_time = hour + (4.0 * (longitude - 15.0 * utc_offset_h) + eot_min) / 60.0
    hour_angle = np.deg2rad(15.0 * (solar_time - 12.0))
    lat = np.deg2rad(latitude)
    return np.sin(lat) * np.sin(decl) + np.cos(lat) * np.cos(decl) * np.cos(hour_angle)


def toa_shortwave(time, latitude: float, longitude: float, utc_offset_h: float, step_s: float = 0.0):
    """Top-of-atmosphere shortwave on a horizontal surface [W m-2] (>= 0)."""
    t = pd.DatetimeIndex(time)
    gamma = 2.0 * np.pi * (t.day_of_year.to_numpy() - 1) / 365.0
    eccentricity = 1.000110 + 0.034221 * np.cos(gamma) + 0.001280 * np.sin(gamma)
    mu = cos_solar_zenith(time, latitude, longitude, utc_offset_h, step_s)
    return SOLAR_CONSTANT * eccentricity * np.clip(mu, 0.0, None)
