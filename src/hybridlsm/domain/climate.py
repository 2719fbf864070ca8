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

:class:`ClimateAccumulator` gathers the same summaries from a record read in time chunks (a grid
streamed beyond memory, ``models/streaming.py``); ``climate_summaries`` is one chunk of the whole
record.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from ..constants import STEFAN_BOLTZMANN, T_FREEZE
from ..thermo import latent_heat_vaporisation, psychrometric_constant, saturation_vapour_pressure_slope

__all__ = ["ClimateAccumulator", "climate_summaries", "CLIMATE_ATTRIBUTES"]

CLIMATE_ATTRIBUTES = ("mean_annual_temperature", "mean_annual_precipitation", "aridity_index",
                      "precipitation_seasonality", "temperature_seasonality", "climate_months")  # fmt: skip

PT_ALPHA = 1.26
ALBEDO = 0.23
EMISSIVITY = 0.97


class ClimateAccumulator:
    """The climate summaries of N columns from their forcing added chunk by chunk in time order:
    each complete day's values go into sums per calendar month, and the day a chunk ends in waits
    for the next chunk, so the memory held is (12, N) whatever the record's length. Missing values
    are skipped as pandas does (a day's mean over its finite steps, its sums of the finite ones)."""

    def __init__(self, n_columns: int, step_s: float):
        self.step_s = float(step_s)
        self._tair = np.zeros((12, n_columns))  # sums of daily mean temperature [degC]
        self._tair_days = np.zeros((12, n_columns))  # days with a temperature
        self._precip = np.zeros((12, n_columns))  # sums of daily precipitation [mm]
        self._pet = np.zeros((12, n_columns))  # sums of daily PET clipped at 0 [mm]
        self._days = np.zeros(12)  # days of each calendar month seen
        self._pending: tuple[np.datetime64, dict[str, np.ndarray]] | None = None  # the last day, maybe incomplete
        self._last: np.datetime64 | None = None

    def add(self, time: np.ndarray, tair: np.ndarray, precip: np.ndarray, swdown: np.ndarray, lwdown: np.ndarray,
            psurf: np.ndarray) -> None:
        """Add the next (T, N) forcing (K, kg m-2 s-1, W m-2, W m-2, Pa) at ``time`` (T,), later than
        every time added before."""
        time = np.asarray(time, "datetime64[ns]")
        if time.size == 0:
            return
        if np.any(np.diff(time) <= np.timedelta64(0)) or (self._last is not None and time[0] <= self._last):
            raise ValueError("ClimateAccumulator.add: times must increase from one step and one chunk to the next")
        self._last = time[-1]
        rn = (1.0 - ALBEDO) * swdown + EMISSIVITY * (lwdown - STEFAN_BOLTZMANN * tair**4)
        delta = saturation_vapour_pressure_slope(tair)
        gamma = psychrometric_constant(tair, psurf)
        # equilibrium evaporation [kg m-2 s-1] per step; clipped at 0 on daily sums
        eq = PT_ALPHA * delta / (delta + gamma) * rn / latent_heat_vaporisation(tair)
        day = time.astype("datetime64[D]")
        starts = np.flatnonzero(np.r_[True, day[1:] != day[:-1]])
        finite = np.isfinite(tair)
        daily = {"tair": np.add.reduceat(np.where(finite, tair - T_FREEZE, 0.0), starts, axis=0),
                 "steps": np.add.reduceat(finite.astype(float), starts, axis=0),
                 "precip": np.add.reduceat(np.nan_to_num(precip * self.step_s), starts, axis=0),
                 "pet": np.add.reduceat(np.nan_to_num(eq * self.step_s), starts, axis=0)}  # fmt: skip
        days = day[starts]
        if self._pending is not None:
            if self._pending[0] == days[0]:  # the day the last chunk ended in goes on
                for k, v in self._pending[1].items():
                    daily[k][0] += v
            else:
                self._close(np.asarray([self._pending[0]]), {k: v[None] for k, v in self._pending[1].items()})
        self._close(days[:-1], {k: v[:-1] for k, v in daily.items()})
        self._pending = days[-1], {k: v[-1] for k, v in daily.items()}

    def _close(self, days: np.ndarray, daily: dict[str, np.ndarray]) -> None:
        """Add complete days (D,) with their (D, N) sums to their calendar months."""
        if days.size == 0:
            return
        month = days.astype("datetime64[M]").astype(int) % 12
        with np.errstate(invalid="ignore", divide="ignore"):
            tmean = daily["tair"] / daily["steps"]
        np.add.at(self._tair, month, np.nan_to_num(tmean))
        np.add.at(self._tair_days, month, np.isfinite(tmean))
        np.add.at(self._precip, month, daily["precip"])
        np.add.at(self._pet, month, np.clip(daily["pet"], 0.0, None))
        np.add.at(self._days, month, 1.0)

    def summaries(self) -> dict[str, np.ndarray]:
        """(N,) summaries of everything added (``CLIMATE_ATTRIBUTES``)."""
        if self._pending is not None:
            self._close(np.asarray([self._pending[0]]), {k: v[None] for k, v in self._pending[1].items()})
            self._pending = None
        present = self._days > 0
        n_months = int(present.sum())
        n = self._tair.shape[1]
        if n_months == 0:
            return {k: np.full(n, np.nan) for k in CLIMATE_ATTRIBUTES}
        days_in = np.asarray([pd.Timestamp(2001, m + 1, 1).days_in_month for m in np.flatnonzero(present)], float)
        per_day = self._days[present][:, None]
        with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a column without any temperature: NaN
            t_month = self._tair[present] / self._tair_days[present]
            p_month = self._precip[present] / per_day * days_in[:, None]
            pet_month = self._pet[present] / per_day * days_in[:, None]
            scale = 12.0 / n_months  # months present stand for the year
            p_year = p_month.sum(axis=0) * scale
            wet = p_year > 0
            return {
                "mean_annual_temperature": np.nanmean(t_month, axis=0),
                "mean_annual_precipitation": p_year,
                "aridity_index": np.where(wet, pet_month.sum(axis=0) * scale / p_year, np.inf),
                "precipitation_seasonality": np.where(
                    wet & (n_months == 12), np.abs(p_month - p_year / 12.0).sum(axis=0) / p_year, np.nan),
                "temperature_seasonality": np.nanstd(t_month, axis=0) if n_months > 1 else np.full(n, np.nan),
                "climate_months": np.full(n, float(n_months)),
            }  # fmt: skip


def climate_summaries(time: np.ndarray, tair: np.ndarray, precip: np.ndarray, swdown: np.ndarray,
                      lwdown: np.ndarray, psurf: np.ndarray) -> dict[str, np.ndarray]:
    """(N,) climate summaries from (T, N) forcing (K, kg m-2 s-1, W m-2, W m-2, Pa)."""
    t = np.asarray(pd.DatetimeIndex(time).values, "datetime64[ns]")
    dt = float(np.median(np.diff(t)) / np.timedelta64(1, "s")) if len(t) > 1 else 1800.0
    order = np.argsort(t, kind="stable")
    acc = ClimateAccumulator(np.shape(tair)[1], dt)
    acc.add(t[order], *(np.asarray(v, float)[order] for v in (tair, precip, swdown, lwdown, psurf)))
    return acc.summaries()
