"""Static site attributes as network inputs (issue 12): fixed physical scalings, a clear refusal of
a site without an attribute the networks need, the inputs reaching every hybrid's network, and one
hybrid trained on two sites that predicts a third with no per-site parameter."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import xarray as xr

from hybridlsm.data import DataError
from hybridlsm.data.virtual import virtual_site
from hybridlsm.domain import domain_from_site
from hybridlsm.models.column import predict_column_model
from hybridlsm.models.features import STATIC_COVERS, STATIC_KEY, n_static_features, static_features
from hybridlsm.models.registry import get_model, load_saved_model, validate_options


def test_static_features_are_fixed_physical_scalings():
    x = static_features({"latitude": [45.0, -30.0], "elevation": [1500.0, 0.0], "igbp": ["ENF", "CRO"]},
                        ["latitude", "elevation", "igbp"], ["A", "B"])  # fmt: skip
    assert x.shape == (2, 2 + len(STATIC_COVERS)) == (2, n_static_features(["latitude", "elevation", "igbp"]))
    np.testing.assert_allclose(x[:, :2], [[0.5, 1.5], [-1.0 / 3.0, 0.0]])
    np.testing.assert_array_equal(x[0, 2:], np.eye(len(STATIC_COVERS))[STATIC_COVERS.index("NE")])
    np.testing.assert_array_equal(x[1, 2:], np.eye(len(STATIC_COVERS))[STATIC_COVERS.index("A")])


@pytest.mark.parametrize("values, message", [
    ({"latitude": [np.nan]}, "SITE-X: static attribute 'latitude' is unknown (NaN)"),
    ({"aridity_index": [np.nan]}, "monthly climatology, and this record is too short"),
    ({"igbp": [""]}, "SITE-X: IGBP class '' is not one the network knows"),
    ({}, "SITE-X: no static attribute 'elevation'"),
])
def test_a_site_without_a_needed_attribute_is_refused_by_name(values, message):
    names = list(values) or ["elevation"]
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        static_features(values, names, ["SITE-X"])


def test_check_domain_refuses_a_domain_without_a_needed_attribute():
    """``hybridlsm predict`` checks every input with ``check_domain`` before it writes anything: a
    site without an attribute the networks take failed only in ``predict``, after provenance.json
    of an earlier prediction into the same --out had been rewritten as incomplete."""
    from hybridlsm.models.registry import get_model, validate_options

    spec = get_model("hybrid_param")
    model = spec.build(validate_options("hybrid_param", {"static_inputs": ["elevation"]}))
    site = virtual_site(site_id="S", days=3)
    spec.check_domain(model, domain_from_site(site))
    site.attrs["elevation"] = float("nan")
    with pytest.raises(DataError, match="S: static attribute 'elevation' is unknown"):
        spec.check_domain(model, domain_from_site(site))


@pytest.mark.parametrize("name", ["hybrid_param", pytest.param("hybrid_flux", marks=pytest.mark.slow),
                                  pytest.param("hybrid_lstm", marks=pytest.mark.slow)])  # ~7 s each
@pytest.mark.slow  # a few seconds; in make test, not test-fast
def test_the_static_attributes_reach_the_network(name):
    model = get_model(name).build(validate_options(name, {"width": 8, "hidden_size": 4,
                                                          "static_inputs": ["latitude", "igbp"]}))  # fmt: skip
    assert model.static_inputs == ("latitude", "igbp")
    d = domain_from_site(virtual_site(site_id="S1", days=3, seed=1, latitude=40.0))
    out = predict_column_model(model, d, ("Qle",))
    assert np.isfinite(out["Qle"]).all()
    from hybridlsm.models.column import domain_inputs

    forcing, base = domain_inputs(model, d)
    assert base[STATIC_KEY].shape == (1, 1 + len(STATIC_COVERS))
    state0 = model.land.init_state(model.site_params(base), forcing)

    def mean_qle(static):
        _, o = model.run(forcing, {**base, STATIC_KEY: static}, state0)
        return o["Qle"].mean()

    grad = jax.grad(mean_qle)(base[STATIC_KEY])
    assert float(np.abs(np.asarray(grad[0, 0]))) > 0.0  # Qle depends on the latitude input


CONFIG = """
name: static
data:
  sites:
    - {virtual: {site_id: ST-A, igbp: GRA, days: 24, start: 2020-07-10, seed: 1, noise: 5.0, latitude: 32.0}}
    - {virtual: {site_id: ST-B, igbp: CRO, days: 24, start: 2020-07-10, seed: 2, noise: 5.0, latitude: 40.0}}
    - {virtual: {site_id: ST-C, igbp: GRA, days: 24, start: 2020-07-10, seed: 3, noise: 5.0, latitude: 36.0}}
  split: {test_sites: [ST-C], val: 0.25}
  spinup_days: 1
  window_days: 3
models:
  - {name: physics, label: physics_default, options: {calibrate: []}}
  - {name: hybrid_param, options: {width: 16, physics_init: default, calibrate: [], discovery: false, epochs: 12,
                                   static_inputs: [latitude, elevation, canopy_height, igbp]}}
  - {name: hybrid_param, label: hybrid_param_dpl, options: {width: 16, physics_init: default, calibrate: [],
                                   discovery: false, epochs: 12, static_inputs: [latitude, elevation, canopy_height, igbp],
                                   static_parameters: [albedo, kB_inv, soil_thermal_conductivity]}}
training: {epochs: 12, batch_windows: 8, patience: 12}
output: {run_dir: RUNS}
"""


@pytest.mark.slow  # trains one small hybrid on two virtual sites
def test_one_hybrid_trained_on_two_sites_predicts_a_third_without_per_site_parameters(run_config):
    run = run_config(CONFIG, "static")
    spec, options, model = load_saved_model(run / "models" / "hybrid_param" / "test_sites")
    assert model.sites == () and model.deltas == {}  # no per-site (or any) free physical parameter
    assert model.static_inputs == ("latitude", "elevation", "canopy_height", "igbp")
    pred = xr.open_dataset(run / "predictions" / "ST-C" / "hybrid_param.nc")
    obs = xr.open_dataset(run / "predictions" / "ST-C" / "obs.nc")
    default = xr.open_dataset(run / "predictions" / "ST-C" / "physics_default.nc")
    assert "network shared by every column" in pred.attrs["parameters_from"]
    ok = np.isfinite(obs["Qle"].values)
    rmse = {k: float(np.sqrt(np.mean((ds["Qle"].values[ok] - obs["Qle"].values[ok]) ** 2)))
            for k, ds in (("hybrid", pred), ("default", default))}  # fmt: skip
    assert rmse["hybrid"] < rmse["default"], rmse  # out of sample, better than the LaD defaults
    # with learned static parameters: still no per-site parameter; the network moved them off the defaults
    _, _, dpl = load_saved_model(run / "models" / "hybrid_param_dpl" / "test_sites")
    assert dpl.sites == () and dpl.deltas == {}
    assert dpl.static_parameters == ("albedo", "kB_inv", "soil_thermal_conductivity")
    pred = xr.open_dataset(run / "predictions" / "ST-C" / "hybrid_param_dpl.nc")
    assert "albedo, kB_inv, soil_thermal_conductivity set from its static attributes" in pred.attrs["parameters_from"]
    assert np.isfinite(pred["Qle"].values).all() and np.isfinite(pred["Qh"].values).all()
    from hybridlsm.models.column import domain_inputs

    _, base = domain_inputs(dpl, domain_from_site(virtual_site(site_id="ST-C", igbp="GRA", days=24, start="2020-07-10",
                                                               seed=3, noise=5.0, latitude=36.0)))
    assert float(np.max(np.abs(np.asarray(dpl.static_offsets(base))))) > 1e-3


# ------------------------------------------------------------------ static parameters (parameter learning)


@pytest.mark.parametrize("options, message", [
    ({"static_parameters": ["albedo"]}, "need static_inputs"),
    ({"static_inputs": ["latitude"], "static_parameters": ["albedo", "nope"]}, r"not learnable: \['nope'\]"),
    ({"static_inputs": ["latitude"], "static_parameters": ["albedo"], "calibrate": ["albedo", "kB_inv"]},
     r"\['albedo'\] both in calibrate and in static_parameters"),
    ({"static_inputs": ["latitude"], "static_parameters": ["deep_root_fraction"], "calibrate": []}, "not learnable"),
    ({"static_inputs": ["latitude"], "static_parameters": ["albedo", "albedo"], "calibrate": []}, "repeats"),
])
def test_static_parameters_options_are_checked(options, message):
    with pytest.raises(ValueError, match=message):
        validate_options("hybrid_param", options)
    with pytest.raises(ValueError, match="both in calibrate"):  # from the defaults calibrate is a shared offset
        validate_options("hybrid_lstm", {"static_inputs": ["latitude"], "static_parameters": ["albedo"],
                                         "calibrate": ["albedo"], "physics_init": "default"})
    opts = validate_options("hybrid_flux", {"static_inputs": ["latitude"], "static_parameters": ["albedo"],
                                            "calibrate": ["kB_inv"]})
    assert opts.static_parameters == ["albedo"] and opts.static_prior_weight == 0.1


@pytest.mark.slow  # two short rollouts and their gradient (~10 s)
def test_the_parameter_network_sets_each_columns_parameters_from_its_attributes():
    """Offsets start near 0 (the defaults); a network with bias b and no weights gives the parameter
    from_unconstrained(to_unconstrained(default) + b); two sites with different attributes get
    different albedos; the loss's gradient with respect to the bias matches central differences."""
    import equinox as eqx
    import jax.numpy as jnp

    from hybridlsm.models.column import STATIC_OFFSETS, column_provenance, domain_inputs
    from hybridlsm.physics import from_unconstrained, to_unconstrained

    options = validate_options("hybrid_param", {"width": 8, "static_inputs": ["latitude"], "calibrate": [],
                                                "physics_init": "default", "static_parameters": ["albedo", "kB_inv"]})
    model = get_model("hybrid_param").build(options)
    assert model.static_parameters == ("albedo", "kB_inv") and model.deltas == {}
    d = domain_from_site(virtual_site(site_id="SP", days=2, seed=1, latitude=40.0))
    forcing, base = domain_inputs(model, d)
    assert float(jnp.max(jnp.abs(model.static_offsets(base)))) < 0.05
    assert "albedo, kB_inv set from its static attributes" in column_provenance(model, d)[0]

    def with_bias(m, bias, weight_scale=0.0):
        last = lambda n: n.parameter_net.layers[-1]  # noqa: E731
        m = eqx.tree_at(lambda n: last(n).weight, m, last(m).weight * weight_scale)
        return eqx.tree_at(lambda n: last(n).bias, m, jnp.asarray(bias, last(m).bias.dtype))

    set_ = with_bias(model, [0.5, -0.3])
    params = set_.site_params(base)
    for name, b in (("albedo", 0.5), ("kB_inv", -0.3)):
        expect = from_unconstrained(name, to_unconstrained(name, base[name]) + b)
        np.testing.assert_allclose(np.asarray(params[name]), np.asarray(expect), rtol=1e-12)
    assert float(params["albedo"][0]) > float(base["albedo"][0])  # a positive offset raises it
    # one network, two sites: the latitude input gives them different parameters
    two = {**base, STATIC_KEY: jnp.asarray([[0.2], [0.8]], base[STATIC_KEY].dtype),
           **{k: jnp.repeat(v, 2) for k, v in base.items() if k != STATIC_KEY}}
    albedo = np.asarray(with_bias(model, [0.5, -0.3], weight_scale=100.0).site_params(two)["albedo"])
    assert abs(albedo[0] - albedo[1]) > 1e-3

    state0 = model.land.init_state(params, forcing)

    def mean_qh(bias):
        _, out = with_bias(model, bias).run(forcing, base, state0)
        assert out[STATIC_OFFSETS].shape == (1, 2)
        return out["Qh"].mean()

    b0 = jnp.asarray([0.5, -0.3])
    grad = np.asarray(jax.grad(mean_qh)(b0))
    eps = 1e-4
    fd = [(float(mean_qh(b0.at[i].add(eps))) - float(mean_qh(b0.at[i].add(-eps)))) / (2 * eps) for i in range(2)]
    np.testing.assert_allclose(grad, fd, rtol=1e-3)
    assert grad[0] < 0.0  # a higher albedo absorbs less: less sensible heat
