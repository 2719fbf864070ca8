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
