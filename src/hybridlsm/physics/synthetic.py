"""Synthetic forcing with known structure, for tests and benchmarks of the physics.

Half-hourly (or any step) forcing with a seasonal and diurnal cycle of radiation and temperature,
regular rain events, one large storm, and a cold spell with snowfall followed by a thaw. Fully
deterministic (no random numbers); sites differ by a small offset in temperature and timing.
"""

from __future__ import annotations

import numpy as np
import jax.numpy as jnp

from ..constants import STEFAN_BOLTZMANN
from ..thermo import specific_humidity_from_vapour_pressure, saturation_vapour_pressure
from .forcing import Forcing


def synthetic_forcing(
    n_days: float = 365,
    time_step_s: float = 1800.0,
    n_sites: int = 1,
    latitude_deg: float = 45.0,
    cold_spell: tuple[float, float] = (15.0, 45.0),
    start_day: float = 0.0,
    dtype=None,
) -> Forcing:
    """A (T, N) ``Forcing`` starting on day-of-year ``start_day`` at midnight.

    - SWdown: clear-sky 0.75 * 1361 * cos(zenith) for ``latitude_deg``, halved on rain days.
    - Tair: 283 K - 12 K cos(seasonal) + 5 K diurnal (max at 15 h) + 0.7 K per site index; during
      ``cold_spell`` (days) 14 K colder, then a 5-day thaw ramp.
    - Qair: relative humidity 70 % (90 % while raining).
    - LWdown: Brutsaert-like 0.72 (0.9 when raining) sigma Tair^4.
    - Wind: 3 + 1.5 sin(diurnal) m s-1; Psurf 96 kPa.
    - Precip: 4 h events of 2 mm h-1 every 5 days (from day 2, 13:00); a 50 mm storm (10 h) on
      day 90 (spring, soil near capacity: drains to groundwater); phase by the model from Tair.
    """
    dt = float(time_step_s)
    n_steps = int(round(n_days * 86400.0 / dt))
    t = start_day * 86400.0 + np.arange(n_steps) * dt + 0.5 * dt  # interval midpoints
    day = t / 86400.0
    hour = (t % 86400.0) / 3600.0
    site = np.arange(n_sites)[None, :]
    day2 = day[:, None] + 0.0 * site
    hour2 = hour[:, None] + 0.0 * site

    # precipitation events
    event_phase = (day2 - 2.0 - 0.1 * site) % 5.0
    raining = (day2 > 2.0) & (event_phase * 24.0 >= 13.0) & (event_phase * 24.0 < 17.0)
    storm = (day2 >= 90.0 + 8.0 / 24.0) & (day2 < 90.0 + 18.0 / 24.0)
    precip = np.where(raining, 2.0 / 3600.0, 0.0) + np.where(storm, 5.0 / 3600.0, 0.0)
    rain_day = ((day2 - 2.0 - 0.1 * site) % 5.0 < 1.0) & (day2 > 2.0)

    # radiation
    lat = np.deg2rad(latitude_deg)
    decl = np.deg2rad(23.44) * np.sin(2.0 * np.pi * (day2 - 81.0) / 365.0)
    hour_angle = np.deg2rad(15.0 * (hour2 - 12.0))
    cos_zen = np.sin(lat) * np.sin(decl) + np.cos(lat) * np.cos(decl) * np.cos(hour_angle)
    sw = 0.75 * 1361.0 * np.clip(cos_zen, 0.0, None) * np.where(rain_day, 0.5, 1.0)

    # temperature
    seasonal = -12.0 * np.cos(2.0 * np.pi * (day2 - 15.0) / 365.0)
    diurnal = 5.0 * np.cos(2.0 * np.pi * (hour2 - 15.0) / 24.0)
    c0, c1 = cold_spell
    cold = np.where((day2 >= c0) & (day2 < c1), 1.0, 0.0)
    thaw = np.clip(1.0 - (day2 - c1) / 5.0, 0.0, 1.0) * (day2 >= c1)
    t_air = 283.0 + seasonal + diurnal + 0.7 * site - 14.0 * np.maximum(cold, thaw)

    rh = np.where(raining | storm, 0.9, 0.7)
    p_surf = np.full_like(t_air, 96000.0)
    e = rh * saturation_vapour_pressure(t_air)
    q_air = specific_humidity_from_vapour_pressure(e, p_surf)
    lw = np.where(raining | storm, 0.9, 0.72) * STEFAN_BOLTZMANN * t_air**4
    wind = 3.0 + 1.5 * np.sin(2.0 * np.pi * (hour2 - 9.0) / 24.0)

    return Forcing(
        sw_down=jnp.asarray(sw, dtype=dtype),
        lw_down=jnp.asarray(lw, dtype=dtype),
        t_air=jnp.asarray(t_air, dtype=dtype),
        q_air=jnp.asarray(q_air, dtype=dtype),
        p_surf=jnp.asarray(p_surf, dtype=dtype),
        wind=jnp.asarray(wind, dtype=dtype),
        precip=jnp.asarray(precip, dtype=dtype),
        time_step_s=dt,
    )
