"""Unit conversion to the canonical units of :data:`hybridlsm.data.schema.VARIABLES`.

``conversion(var, unit, time_step_s)`` returns ``(scale, offset)`` with
``canonical = value * scale + offset``. Unit strings are matched after normalisation (spaces,
``/`` and ``^`` forms: ``W/m2``, ``W m-2`` and ``W m^-2`` are the same unit). Per-step amounts
(``mm/step``, ``mm timestep-1``) need the time step of the file.
"""

from __future__ import annotations

import re

from .schema import VARIABLES, DataError

__all__ = ["normalise_unit", "conversion", "UNIT_TABLE"]


def normalise_unit(unit: str | None) -> str:
    """A comparable form of a unit string: ``'W/m2'``, ``'W m-2'``, ``'W m^-2'`` -> ``'W m-2'``."""
    if unit is None:
        return ""
    u = str(unit).strip().replace("**", "^").replace("^", "").replace("µ", "u").replace("°", "deg")
    u = re.sub(r"\s+", " ", u)
    # a/b/c -> a b-1 c-1 (only simple forms with single-letter-or-word tokens and optional exponent)
    if "/" in u:
        head, *tails = u.split("/")
        parts = [head.strip()]
        for t in tails:
            m = re.fullmatch(r"([A-Za-z]+)(\d*)", t.strip())
            if not m:
                return u
            parts.append(f"{m.group(1)}-{m.group(2) or '1'}")
        u = " ".join(parts)
    return u


_T = {"K": (1.0, 0.0), "C": (1.0, 273.15), "degC": (1.0, 273.15), "deg C": (1.0, 273.15),
      "degrees C": (1.0, 273.15), "Celsius": (1.0, 273.15), "celsius": (1.0, 273.15)}
_RAD = {"W m-2": (1.0, 0.0)}
_SPEED = {"m s-1": (1.0, 0.0)}
_FLUX = {"kg m-2 s-1": (1.0, 0.0), "mm s-1": (1.0, 0.0), "mm h-1": (1.0 / 3600.0, 0.0),
         "mm hr-1": (1.0 / 3600.0, 0.0), "mm d-1": (1.0 / 86400.0, 0.0),
         "mm day-1": (1.0 / 86400.0, 0.0)}
_PER_STEP = {"mm step-1", "mm timestep-1", "mm", "mm per step", "mm per time step", "kg m-2"}
_DIMLESS = {"1": (1.0, 0.0), "-": (1.0, 0.0), "": (1.0, 0.0)}

UNIT_TABLE: dict[str, dict[str, tuple[float, float]]] = {
    "Tair": _T,
    "SoilTemp": _T,
    "AvgSurfT": _T,
    "Qair": {"kg kg-1": (1.0, 0.0), "1": (1.0, 0.0), "-": (1.0, 0.0), "g kg-1": (1e-3, 0.0)},
    "VPD": {"hPa": (1.0, 0.0), "mbar": (1.0, 0.0), "Pa": (0.01, 0.0), "kPa": (10.0, 0.0)},
    "RH": {"%": (1.0, 0.0), "percent": (1.0, 0.0), "1": (100.0, 0.0), "-": (100.0, 0.0)},
    "Psurf": {"Pa": (1.0, 0.0), "hPa": (100.0, 0.0), "mbar": (100.0, 0.0), "kPa": (1000.0, 0.0)},
    "Wind": _SPEED,
    "Wind_E": _SPEED,
    "Wind_N": _SPEED,
    "Ustar": _SPEED,
    "SWdown": _RAD, "LWdown": _RAD, "Rnet": _RAD, "SWup": _RAD, "LWup": _RAD, "Qg": _RAD,
    "Qh": _RAD, "Qle": _RAD, "Qh_cor": _RAD, "Qle_cor": _RAD,
    "Precip": _FLUX, "Rainf": _FLUX, "Snowf": _FLUX,
    "CO2air": {"ppm": (1.0, 0.0), "umol mol-1": (1.0, 0.0), "ppmv": (1.0, 0.0)},
    "SoilMoistVol": {"m3 m-3": (1.0, 0.0), "1": (1.0, 0.0), "-": (1.0, 0.0), "%": (0.01, 0.0)},
    "LAI": {"m2 m-2": (1.0, 0.0), **_DIMLESS},
}


def conversion(var: str, unit: str | None, time_step_s: float | None = None, *, where: str = "") -> tuple[float, float]:
    """``(scale, offset)`` converting ``unit`` to the canonical unit of ``var``; DataError if unknown."""
    u = normalise_unit(unit)
    table = UNIT_TABLE.get(var, {})
    if u in table:
        return table[u]
    if var in ("Precip", "Rainf", "Snowf") and u in _PER_STEP:
        if not time_step_s:
            raise DataError(f"{where} ({var}) in {unit!r} (per time step) needs the time step")
        return 1.0 / float(time_step_s), 0.0
    canonical = VARIABLES[var].units if var in VARIABLES else "?"
    raise DataError(
        f"{where} ({var}): units {unit!r}; expected {canonical!r} or one of "
        f"{sorted(table) or [canonical]}"
    )
