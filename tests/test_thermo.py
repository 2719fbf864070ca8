"""Thermodynamic helpers against the reference values of physics-reference §3 (NumPy and JAX)."""

import jax.numpy as jnp
import numpy as np
import pytest

from hybridlsm import thermo
from hybridlsm.constants import T_FREEZE

T20 = T_FREEZE + 20.0
P0 = 101325.0


@pytest.mark.parametrize("xp", [np, jnp], ids=["numpy", "jax"])
def test_reference_values(xp):
    t = xp.asarray(T20)
    assert float(thermo.saturation_vapour_pressure(t)) / 1000.0 == pytest.approx(2.333, abs=5e-4)
    assert float(thermo.saturation_vapour_pressure_slope(t)) / 1000.0 == pytest.approx(0.1443, abs=5e-5)
    assert float(thermo.air_density(t, xp.asarray(P0))) == pytest.approx(1.204, abs=5e-4)
    assert float(thermo.psychrometric_constant(t, xp.asarray(P0))) / 1000.0 == pytest.approx(
        0.0667, abs=1e-4
    )
    assert float(thermo.latent_heat_vaporisation(t)) == pytest.approx(2.4536e6, rel=1e-6)


def test_returns_jax_for_jax_input():
    out = thermo.saturation_specific_humidity(jnp.asarray([T20]), jnp.asarray([P0]))
    assert isinstance(out, type(jnp.zeros(1)))
    assert float(out[0]) == pytest.approx(0.622 * 2332.6 / (P0 - 0.378 * 2332.6), rel=1e-4)


def test_q_sat_slope_matches_finite_difference():
    t = np.array([250.0, 273.15, 300.0])
    h = 1e-4
    fd = (thermo.saturation_specific_humidity(t + h, P0) - thermo.saturation_specific_humidity(t - h, P0)) / (2 * h)
    np.testing.assert_allclose(thermo.saturation_specific_humidity_slope(t, P0), fd, rtol=1e-7)


def test_humidity_round_trip():
    e = np.array([500.0, 1500.0, 3000.0])
    q = thermo.specific_humidity_from_vapour_pressure(e, P0)
    np.testing.assert_allclose(thermo.vapour_pressure_from_specific_humidity(q, P0), e, rtol=1e-12)
