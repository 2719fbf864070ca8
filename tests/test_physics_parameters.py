"""The parameter table: LaD defaults per IGBP class, reference height, bounds and transforms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybridlsm.physics import (
    ALLOWED_IGBP,
    CALIBRATABLE,
    PARAMETERS,
    default_params,
    from_unconstrained,
    to_unconstrained,
)

REQUIRED = [
    "albedo", "emissivity", "rs_min", "z0m", "kB_inv", "displacement_fraction",
    "soil_heat_capacity", "soil_thermal_conductivity", "root_zone_capacity", "beta_threshold",
    "tau_groundwater", "albedo_snow_warm", "albedo_snow_cold", "rs_scale", "ra_scale",
]


def test_table_declares_required_parameters_once():
    for name in REQUIRED:
        spec = PARAMETERS[name]
        assert spec.unit and spec.description and spec.lower < spec.upper
        assert spec.calibratable
    assert len(set(PARAMETERS)) == len(PARAMETERS)
    assert set(CALIBRATABLE) >= set(REQUIRED)


def test_lad_defaults_for_us_me2_and_us_wkg_classes():
    p = default_params(["ENF", "GRA"])
    np.testing.assert_allclose(p["rs_min"], [69.7, 56.6])
    np.testing.assert_allclose(p["z0m"], [0.90, 0.07])
    np.testing.assert_allclose(p["albedo"], [0.126, 0.182])
    # W_max = z_r * AWC with z_r = zeta ln(M_r / (zeta 0.125)), medium soil AWC 132 (reference table)
    np.testing.assert_allclose(p["root_zone_capacity"], [110.3, 129.1], atol=0.1)
    np.testing.assert_allclose(p["beta_threshold"], 0.75)
    np.testing.assert_allclose(p["tau_groundwater"], 60.0)
    np.testing.assert_allclose(p["kB_inv"], 2.0)
    np.testing.assert_allclose(p["soil_heat_capacity"], 2.0e6)
    np.testing.assert_allclose(p["soil_thermal_conductivity"], 0.8)
    assert p["rs_min"].shape == (2,)


def test_open_water_is_wetland_cover_that_never_dries_with_water_heat_capacity():
    """WAT (LaD has no lake): WET's defaults but for physics.OPEN_WATER_PARAMETERS, wherever a column
    comes from (a site, a grid's land cover, the virtual regions' truth)."""
    from hybridlsm.models.column import column_igbp
    from hybridlsm.physics import OPEN_WATER_PARAMETERS

    p = default_params(["WAT", "WET", "WAT"])
    for name in PARAMETERS:
        if name in OPEN_WATER_PARAMETERS:
            np.testing.assert_allclose(p[name], [OPEN_WATER_PARAMETERS[name], p[name][1], OPEN_WATER_PARAMETERS[name]])
        else:
            np.testing.assert_allclose(p[name], p[name][1], err_msg=name)
    np.testing.assert_allclose(p["soil_heat_capacity"], [4.18e6, 2.0e6, 4.18e6])
    assert column_igbp("WAT", "lake")[1].startswith("open water")
    assert column_igbp("GRA", "meadow") == ("GRA", "")


def test_every_allowed_class_has_defaults_inside_bounds():
    p = default_params(list(ALLOWED_IGBP))
    for name, spec in PARAMETERS.items():
        v = np.asarray(p[name])
        assert v.shape == (len(ALLOWED_IGBP),)
        if spec.calibratable:  # the sigmoid transform must reach it: inside the open bounds
            assert np.all((v > spec.lower) & (v < spec.upper)), name
        else:
            assert np.all((v >= spec.lower) & (v <= spec.upper)), name
    assert np.all(p["irrigated"] == 0.0)  # rain-fed unless the site metadata say otherwise


def test_reference_height_rules():
    p = default_params(["ENF", "GRA", "ENF"], canopy_height=[18.0, np.nan, 18.0],
                       measurement_height=[32.0, np.nan, np.nan])
    np.testing.assert_allclose(p["canopy_height"], [18.0, 0.5, 18.0])
    # measured height when known, else max(h + 2, 1.5 h)
    np.testing.assert_allclose(p["reference_height"], [32.0, 2.5, 27.0])


def test_overrides_and_errors():
    p = default_params(["GRA"], overrides={"rs_scale": 2.0})
    assert float(p["rs_scale"][0]) == 2.0
    with pytest.raises(ValueError, match="allowed classes: ENF, EBF"):
        default_params(["GRA", "XYZ"])
    with pytest.raises(ValueError, match="unknown parameter 'nope'"):
        default_params(["GRA"], overrides={"nope": 1.0})
    with pytest.raises(ValueError, match="outside its bounds"):
        default_params(["GRA"], overrides={"albedo": 2.0})
    with pytest.raises(ValueError, match="not above"):
        default_params(["ENF"], canopy_height=20.0, measurement_height=5.0)


@pytest.mark.parametrize("name", list(PARAMETERS))
def test_bounded_transform_round_trip(name):
    spec = PARAMETERS[name]
    value = jnp.asarray(default_params(["ENF"])[name])
    raw = to_unconstrained(name, value)
    np.testing.assert_allclose(from_unconstrained(name, raw), value, rtol=1e-10)
    extremes = from_unconstrained(name, jnp.array([-30.0, 0.0, 30.0]))
    assert np.all((np.asarray(extremes) >= spec.lower) & (np.asarray(extremes) <= spec.upper))
    assert np.isfinite(float(jax.grad(lambda r: from_unconstrained(name, r))(raw[0])))


def test_log_scale_midpoint_is_geometric_mean():
    spec = PARAMETERS["tau_groundwater"]
    assert spec.log_scale
    mid = float(from_unconstrained("tau_groundwater", 0.0))
    assert mid == pytest.approx(np.sqrt(spec.lower * spec.upper), rel=1e-12)
    mid_lin = float(from_unconstrained("albedo", 0.0))
    spec_a = PARAMETERS["albedo"]
    assert mid_lin == pytest.approx(0.5 * (spec_a.lower + spec_a.upper), rel=1e-12)
