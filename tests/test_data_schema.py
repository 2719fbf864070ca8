"""The canonical variable table, unit handling and the error types."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from hybridlsm.data import (
    FORCING_VARIABLES,
    VARIABLES,
    DataError,
    DataWarning,
    schema,
    variables_table,
)
from hybridlsm.data.checks import check_plausible
from hybridlsm.data.units import conversion, normalise_unit

# docs/architecture.md §1: the canonical names and units
ARCHITECTURE = {
    "Tair": "K", "Qair": "kg kg-1", "VPD": "hPa", "RH": "%", "Psurf": "Pa", "Wind": "m s-1",
    "SWdown": "W m-2", "LWdown": "W m-2", "Precip": "kg m-2 s-1", "Ustar": "m s-1", "CO2air": "ppm",
    "Rnet": "W m-2", "SWup": "W m-2", "LWup": "W m-2", "Qg": "W m-2", "Qh": "W m-2", "Qle": "W m-2",
    "Qh_cor": "W m-2", "Qle_cor": "W m-2", "SoilTemp": "K", "SoilMoistVol": "m3 m-3", "LAI": "m2 m-2",
}


def test_table_covers_the_architecture():
    for name, unit in ARCHITECTURE.items():
        assert VARIABLES[name].units == unit, name
    assert set(FORCING_VARIABLES) == {"SWdown", "LWdown", "Tair", "Qair", "Psurf", "Wind", "Precip"}
    assert {v["name"] for v in variables_table()} == set(VARIABLES)
    for v in VARIABLES.values():
        lo, hi = v.valid_range
        assert lo < hi and v.long_name


def test_docstring_table_matches_variables():
    doc = schema.__doc__
    for name, v in VARIABLES.items():
        if not v.fluxnet_columns:
            continue
        line = next(ln for ln in doc.splitlines() if ln.startswith(name + " "))
        assert v.units in line and v.fluxnet_columns[0] in line, name


@pytest.mark.parametrize(
    "var, raw, expected",
    [("Tair", 25.149, 298.299), ("Psurf", 85.348, 85348.0), ("VPD", 27.45, 27.45),
     ("SoilMoistVol", 24.3, 0.243), ("SoilTemp", -1.955, 271.195), ("CO2air", 371.759, 371.759)],
)
def test_fluxnet_conversions(var, raw, expected):
    assert VARIABLES[var].to_canonical(np.array([raw]))[0] == pytest.approx(expected, rel=1e-12)


def test_precip_per_step():
    assert VARIABLES["Precip"].to_canonical(np.array([0.25]), 1800.0)[0] == pytest.approx(0.25 / 1800.0)
    assert VARIABLES["Precip"].to_canonical(np.array([3.6]), 3600.0)[0] == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="time step"):
        VARIABLES["Precip"].to_canonical(np.array([1.0]))


def test_units_normalisation_and_conversion():
    assert normalise_unit("W/m2") == normalise_unit("W m^-2") == "W m-2"
    assert normalise_unit("kg/m2/s") == "kg m-2 s-1" and normalise_unit("m/s") == "m s-1"
    assert conversion("Tair", "C") == (1.0, 273.15) and conversion("Tair", "K") == (1.0, 0.0)
    assert conversion("Psurf", "kPa") == (1000.0, 0.0) and conversion("Psurf", "hPa") == (100.0, 0.0)
    assert conversion("Precip", "mm/step", 3600.0) == (1.0 / 3600.0, 0.0)
    assert conversion("Qair", "kg/kg") == (1.0, 0.0) and conversion("RH", "1") == (100.0, 0.0)
    with pytest.raises(DataError, match=r"f.nc: variable p \(Precip\) in 'mm timestep-1' \(per time step\) needs the time step"):
        conversion("Precip", "mm timestep-1", None, where="f.nc: variable p")


def test_error_types():
    assert issubclass(DataError, ValueError) and issubclass(DataWarning, UserWarning)


def test_plausibility_error_and_warning_messages():
    t = np.array(["2004-05-06T11:00", "2004-05-06T11:30", "2004-05-06T12:00"], dtype="datetime64[ns]")
    lines = np.array([2, 3, 4])
    kelvin = np.array([298.3, 299.0, 300.0])
    with pytest.raises(DataError, match=r"a.csv: column TA_F \(Tair\): 3 of 3 values .* the values look like K, not degC"):
        check_plausible(kelvin + 273.15, "Tair", file="a.csv", column="TA_F", declared_units="degC",
                        raw=kelvin, times=t, lines=lines)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_plausible(np.array([1.0, 2.0, 45.0]), "Wind", file="a.csv", column="WS_F",
                        declared_units="m s-1", times=t, lines=lines)
    assert len(caught) == 1 and caught[0].category is DataWarning
    assert "1 of 3 values outside the plausible range 0..40 m s-1" in str(caught[0].message)
    assert "first at line 4 (2004-05-06 12:00) (value 45 m s-1)" in str(caught[0].message)
