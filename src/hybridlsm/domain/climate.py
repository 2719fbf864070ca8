"""Climate summaries of each column computed from its (gap-free) forcing.

What a user can know of a new site before any flux is measured, so they may feed a model that
transfers (Kratzert et al. 2019 use the same kind of attributes for catchments):

- mean annual temperature [degC] and precipitation [mm yr-1] from the monthly climatology (the mean of
  each calendar month present, so a record that over-samples one season is not biased towards it);
- aridity index PET / P with Priestley-Taylor potential evaporation (alpha = 1.26) driven by a net
  radiation estimated from the forcing with the surface at air temperature:
  Rn = (1 - 0.23) SWdown + 0.97 (LWdown - sigma Tair^4), daily means clipped at 0;
- precipitation seasonality: the Walsh & Lawler (1981) index sum_m |P_m - P/12| / P of the monthly
  climatology (0 = even, 1.83 = all rain in one month);
- temperature seasonality: standard deviation of the monthly mean temperatures [K].

With fewer than 12 calendar months the summaries use the months present; ``climate_months`` says
how many, so a reader of the static attributes can tell a partial climatology.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..constants import STEFAN_BOLTZMANN, T_FREEZE
from ..thermo import latent_heat_vaporisation, psychrometric_constant, saturation_vapour_pressure_slope

__all__ = ["climate_summaries", "CLIMATE_ATTRIBUTES"]

CLIMATE_ATTRIBUTES = ("mean_annual_temperature", "mean_annual_precipitation", "aridity_index",
                      "precipitation_seasonality", "temperature_seasonality", "climate_months")  # fmt: skip

PT_ALPHA = 1.26
ALBEDO = 0.23
EMISSIVITY = 0.97


def climate_summaries(time: np.ndarray, tair: np.ndarray, precip: np.ndarray, swdown: np.ndarray,
                      lwdown: np.ndarray, psurf: np.ndarray) -> dict[str, np.ndarray]:
    """(N,) climate summaries from (T, N) forcing (K, kg m-2 s-1, W m-2, W m-2, Pa)."""
    t = pd.DatetimeIndex(time)
    dt = float(np.median(np.diff(t.values)) / np.timedelta64(1, "s")) if len(t) > 1 else 1800.0
    rn = (1.0 - ALBEDO) * swdown + EMISSIVITY * (lwdown - STEFAN_BOLTZMANN * tair**4)
    delta = saturation_vapour_pressure_slope(tair)
    gamma = psychrometric_constant(tair, psurf)
    lv = latent_heat_vaporisation(tair)
    # equilibrium evaporation [kg m-2 s-1] per step; clipped at 0 on daily means below
    eq = PT_ALPHA * delta / (delta + gamma) * rn / lv
    frame = {"tair": tair - T_FREEZE, "precip": precip * dt, "pet": eq * dt}
    out: dict[str, list[float]] = {k: [] for k in CLIMATE_ATTRIBUTES}
    day = t.floor("D")
    for j in range(tair.shape[1]):
        df = pd.DataFrame({k: v[:, j] for k, v in frame.items()}, index=t)
        daily = df.groupby(day).agg({"tair": "mean", "precip": "sum", "pet": "sum"})
        daily["pet"] = daily["pet"].clip(lower=0.0)
        # per calendar month: mean temperature, mean daily precipitation and PET
        monthly = daily.groupby(pd.DatetimeIndex(daily.index).month).mean()
        days = np.asarray([pd.Timestamp(2001, m, 1).days_in_month for m in monthly.index], float)
        n_months = len(monthly)
        p_month = monthly["precip"].to_numpy() * days
        pet_month = monthly["pet"].to_numpy() * days
        scale = 12.0 / n_months  # months present stand for the year
        p_year = p_month.sum() * scale
        out["mean_annual_temperature"].append(float(monthly["tair"].mean()))
        out["mean_annual_precipitation"].append(float(p_year))
        out["aridity_index"].append(float(pet_month.sum() * scale / p_year) if p_year > 0 else np.inf)
        out["precipitation_seasonality"].append(
            float(np.sum(np.abs(p_month - p_year / 12.0)) / p_year) if p_year > 0 and n_months == 12 else np.nan)
        out["temperature_seasonality"].append(float(monthly["tair"].std(ddof=0)) if n_months > 1 else np.nan)
        out["climate_months"].append(float(n_months))
    return {k: np.asarray(v, float) for k, v in out.items()}
