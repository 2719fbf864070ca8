"""The prior that keeps learned parameters near the LaD defaults (issue 12, ``prior_weight``): the
term against a hand computation, its exact place in the loss, both parameter-learning hybrids
reporting their multipliers, and a short training in which the prior keeps them nearer 1."""

from __future__ import annotations

import equinox as eqx
import numpy as np
import pytest
from pydantic import ValidationError

from hybridlsm.config import TrainConfig
from hybridlsm.data.virtual import virtual_site
from hybridlsm.domain import domain_from_site
from hybridlsm.models.column import domain_inputs
from hybridlsm.models.column_fit import make_loss
from hybridlsm.models.hybrid import multiplier_prior
from hybridlsm.models.registry import TrainingContext, get_model, validate_options
from hybridlsm.training.losses import log_multiplier_prior


def test_log_multiplier_prior_is_the_mean_square_log_multiplier():
    m = [np.array([1.0, np.e, 1.0 / np.e]), np.array([[2.0]])]
    expected = (0.0 + 1.0 + 1.0 + np.log(2.0) ** 2) / 4.0
    assert float(log_multiplier_prior(m)) == pytest.approx(expected, rel=1e-6)
    assert float(log_multiplier_prior(np.ones(5))) == 0.0
    with pytest.raises(ValueError, match="no arrays"):
        log_multiplier_prior([])


def test_only_the_parameter_learning_hybrids_take_a_prior():
    assert validate_options("hybrid_param", {"prior_weight": 0.5}).prior_weight == 0.5
    assert validate_options("hybrid_lstm", {"prior_weight": 0.5}).prior_weight == 0.5
    with pytest.raises(ValidationError, match="prior_weight"):
        validate_options("hybrid_flux", {"prior_weight": 0.5})
    with pytest.raises(ValidationError):
        validate_options("hybrid_param", {"prior_weight": -1.0})


def _batch(model, domain):
    forcing, base = domain_inputs(model, domain)
    state0 = model.land.init_state(model.site_params(base), forcing)
    _, out = model.run(forcing, base, state0)
    obs = np.stack([np.asarray(out["Qle"]) + 20.0, np.asarray(out["Qh"]) - 10.0], -1)
    return {"forcing": forcing, "base": base, "state0": state0, "obs": obs, "mask": np.ones(obs.shape, bool),
            "rnet": np.asarray(out["Rnet"]), "qg": np.asarray(out["Qg"])}


@pytest.mark.parametrize("name", ["hybrid_param", pytest.param("hybrid_lstm", marks=pytest.mark.slow)])
def test_the_prior_enters_the_loss_with_its_weight(name):
    options = validate_options(name, {"width": 8, "hidden_size": 4, "discovery": False, "physics_init": "default",
                                      "calibrate": []})
    model = get_model(name).build(options)
    # away from the defaults: the output layer's bias shifted, so that the multipliers are not 1
    where = (lambda m: m.land.mlp.layers[-1].bias) if name == "hybrid_param" else (lambda m: m.dynamic_net.head.bias)
    model = eqx.tree_at(where, model, where(model) + 0.3)
    batch = _batch(model, domain_from_site(virtual_site(site_id="P1", days=2, seed=1)))
    _, out = model.run(batch["forcing"], batch["base"], batch["state0"])
    assert set(out) >= {"ra_mult", "rs_mult"} and out["rs_mult"].shape == out["Qh"].shape
    prior = float(multiplier_prior(model, out))
    assert prior > 1e-3
    weights = {"energy": 0.0, "sparsity": 0.0, "discovery": 0.0}
    scale = np.array([50.0, 50.0])
    plain, aux0 = make_loss(("Qle", "Qh"), scale, deterministic=True)(model, batch, None, weights)
    with_prior, aux = make_loss(("Qle", "Qh"), scale, deterministic=True, prior=(multiplier_prior, 0.7))(
        model, batch, None, weights)
    assert float(aux["prior"]) == pytest.approx(prior, rel=1e-5)
    assert float(aux["mse"]) == pytest.approx(float(aux0["mse"]), rel=1e-6)
    assert float(with_prior) - float(plain) == pytest.approx(0.7 * prior, rel=1e-4)


@pytest.mark.slow  # two short trainings, ~30 s
def test_a_strong_prior_keeps_the_learned_multipliers_nearer_the_defaults():
    site = domain_from_site(virtual_site(site_id="P2", days=16, seed=2, noise=5.0))
    ctx = TrainingContext(max_qc=1, spinup_days=1.0, window_days=3.0, progress=False,
                          training=TrainConfig(epochs=6, lr=1e-2, batch_windows=4, patience=6))
    spread = {}
    for weight in (0.0, 10.0):
        options = validate_options("hybrid_param", {"width": 8, "discovery": False, "physics_init": "default",
                                                    "calibrate": [], "prior_weight": weight, "epochs": 6})
        spec = get_model("hybrid_param")
        model = spec.train(spec.build(options), options, [site], [site], ctx)
        batch = _batch(model, site)
        _, out = model.run(batch["forcing"], batch["base"], batch["state0"])
        spread[weight] = float(multiplier_prior(model, out))
    assert spread[0.0] > 1e-3  # the data moved the multipliers
    assert spread[10.0] < 0.5 * spread[0.0]


@pytest.mark.slow  # an LSTM rollout, ~5 s
def test_the_lstm_sparsity_term_measures_its_multipliers_not_the_variation_of_r_a():
    # phase 2's sparsity of hybrid_lstm used to be the L1 of log(r_a / mean r_a), which the physics'
    # own diurnal and stability cycle of r_a makes large with every multiplier at 1
    options = validate_options("hybrid_lstm", {"hidden_size": 4, "discovery": False, "physics_init": "default",
                                               "calibrate": []})
    spec = get_model("hybrid_lstm")
    model = spec.build(options)
    batch = _batch(model, domain_from_site(virtual_site(site_id="P3", days=3, seed=3)))
    _, out = model.run(batch["forcing"], batch["base"], batch["state0"])
    assert float(np.mean(np.abs(np.log(out["ra"] / np.mean(out["ra"]))))) > 0.1  # r_a varies by itself
    assert float(spec.sparsity_fn(model, out)) < 0.02  # the untrained LSTM's multipliers start near 1
    shifted = eqx.tree_at(lambda m: m.dynamic_net.head.bias, model, model.dynamic_net.head.bias + 0.3)
    _, out = shifted.run(batch["forcing"], batch["base"], batch["state0"])
    assert float(spec.sparsity_fn(shifted, out)) > 0.05
