"""Heteroscedastic Gaussian heads (issue 13): ``likelihood: gaussian`` gives the lstm and
post_correction a mean and an aleatoric SD per target, trained with the masked Gaussian negative
log-likelihood; the prediction writes ``<t>_sd_aleatoric`` and the total ``<t>_sd`` (law of total
variance with MC dropout). ``likelihood: mse`` (the default) is the model as before."""

from __future__ import annotations

import math
from dataclasses import replace

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from hybridlsm.data.virtual import virtual_site
from hybridlsm.domain import domain_from_site
from hybridlsm.models.lstm import LSTMModel
from hybridlsm.models.column import predict_column_model
from hybridlsm.models.registry import TrainingContext, get_model, load_saved_model, validate_options
from hybridlsm.models.registry import validate_run_config as validate_config
from hybridlsm.neural import GaussianHead
from hybridlsm.training.losses import gaussian_nll


def _noise_sd(x2):
    return 0.1 + 0.5 * np.abs(x2)


def _synthetic(seed: int, days: int = 40, site_id: str = "SYN") -> xr.Dataset:
    """Inputs x1 (as SWdown), x2 (as Tair), i.i.d. N(0, 1) per step; Qle = x1 + eps with
    sd(eps) = 0.1 + 0.5 |x2| (units do not matter to the lstm, which standardises everything)."""
    rng = np.random.default_rng(seed)
    n = days * 48
    x1, x2 = rng.standard_normal(n), rng.standard_normal(n)
    y = x1 + _noise_sd(x2) * rng.standard_normal(n)
    time = pd.date_range("2020-01-01", periods=n, freq="30min")
    return xr.Dataset({"SWdown": ("time", x1), "Tair": ("time", x2), "Qle": ("time", y)}, coords={"time": time},
                      attrs={"site_id": site_id, "time_step_s": 1800.0})  # fmt: skip


def _ctx(epochs: int) -> TrainingContext:
    run = validate_config({
        "name": "t",
        "data": {"sites": [{"virtual": {"days": 24}}], "spinup_days": 0.5, "window_days": 2},
        "models": [{"name": "physics"}],
        "training": {"epochs": epochs, "lr": 1e-2, "batch_windows": 8, "patience": 100},
    })  # fmt: skip
    return TrainingContext.from_config(run, progress=False)


LSTM_OPTS = {"inputs": ["SWdown", "Tair"], "hour_features": False, "targets": ["Qle"], "hidden_size": 16}


def test_head_and_nll_by_hand():
    head = GaussianHead(1, min_std=1e-2, max_std=10.0)
    raw = jnp.array([0.3, 0.2])
    mean, std = head(raw)
    sd = math.log1p(math.exp(0.2)) + 1e-2
    assert float(mean[0]) == pytest.approx(0.3) and float(std[0]) == pytest.approx(sd, rel=1e-6)
    nll = gaussian_nll(mean, std, jnp.array([1.1]))
    z = (1.1 - 0.3) / sd
    assert float(nll) == pytest.approx(math.log(sd) + 0.5 * z * z + 0.5 * math.log(2 * math.pi), rel=1e-6)
    # bounded SD (the log-variance clipped), finite gradients at the bounds, raw_for_std inverts
    assert float(head(jnp.array([0.0, -1e4]))[1][0]) == pytest.approx(1e-2)
    assert float(GaussianHead(1, 1e-2, 10.0)(jnp.array([0.0, 1e4]))[1][0]) == 10.0
    g = jax.grad(lambda r: gaussian_nll(*head(r), jnp.array([5.0])))(jnp.array([0.0, -50.0]))
    assert np.all(np.isfinite(np.asarray(g)))
    assert float(head(jnp.array([0.0, head.raw_for_std(1.0)]))[1][0]) == pytest.approx(1.0, rel=1e-6)
    # masked entries (NaN observations too) count neither in value nor gradient
    m2, s2 = jnp.array([0.3, 9.0]), jnp.array([sd, 1e-2])
    assert float(gaussian_nll(m2, s2, jnp.array([1.1, jnp.nan]))) == pytest.approx(float(nll), rel=1e-6)
    masked = gaussian_nll(m2, s2, jnp.array([1.1, 0.0]), jnp.array([True, False]))
    assert float(masked) == pytest.approx(float(nll), rel=1e-6)


@pytest.fixture(scope="module")
def trained_gaussian_lstm():
    spec = get_model("lstm")
    opts = validate_options("lstm", LSTM_OPTS | {"likelihood": "gaussian"})
    train, val = domain_from_site(_synthetic(1)), domain_from_site(_synthetic(2, days=10, site_id="SYN-V"))
    model = spec.train(spec.build(opts), opts, [train], [val], _ctx(150))
    return spec, opts, model


def test_gaussian_lstm_learns_input_dependent_noise_and_covers(trained_gaussian_lstm):
    spec, _, model = trained_gaussian_lstm
    test = _synthetic(3, days=20, site_id="SYN-T")
    out = spec.predict(model, domain_from_site(test))
    assert set(out) == {"Qle", "Qle_sd", "Qle_sd_aleatoric"}
    np.testing.assert_array_equal(out["Qle_sd"], out["Qle_sd_aleatoric"])  # no dropout: all aleatoric
    y, x2 = test["Qle"].values, test["Tair"].values
    mu, sd = out["Qle"][48:, 0], out["Qle_sd"][48:, 0]  # after a day's warm-up of the state
    y, x2 = y[48:], x2[48:]
    assert np.all(sd > 0)
    noisy, quiet = np.abs(x2) > 1.5, np.abs(x2) < 0.3
    ratio = np.median(sd[noisy]) / np.median(sd[quiet])
    assert ratio > 3.0, ratio  # true ratio of the median noise SDs there: about 1.0 / 0.18
    coverage = np.mean(np.abs(y - mu) <= 1.6449 * sd)
    assert 0.8 <= coverage <= 0.97, coverage


def test_gaussian_lstm_saves_and_loads_to_the_same_prediction(trained_gaussian_lstm, tmp_path):
    spec, opts, model = trained_gaussian_lstm
    spec.save(model, opts, tmp_path / "m")
    _, again_opts, again = load_saved_model(tmp_path / "m")
    assert again_opts.likelihood == "gaussian" and again.head is not None
    d = domain_from_site(_synthetic(4, days=3, site_id="SYN-S"))
    before, after = spec.predict(model, d), spec.predict(again, d)
    for k in ("Qle", "Qle_sd", "Qle_sd_aleatoric"):
        np.testing.assert_array_equal(after[k], before[k])


def test_gaussian_lstm_with_dropout_splits_the_variance():
    spec = get_model("lstm")
    opts = validate_options("lstm", LSTM_OPTS | {"likelihood": "gaussian", "dropout": 0.2, "mc_samples": 5})
    d = domain_from_site(_synthetic(5, days=3))
    model = spec.with_statistics(spec.build(opts), list(d.columns()))
    model = eqx.tree_at(lambda m: m.target_norm, model, replace(model.target_norm, std=model.target_norm.std * 3.0))
    out = spec.predict(model, d)
    for k in ("Qle_sd", "Qle_sd_epistemic", "Qle_sd_aleatoric"):
        assert out[k].shape == (d.n_steps, 1)
    np.testing.assert_allclose(out["Qle_sd"] ** 2, out["Qle_sd_epistemic"] ** 2 + out["Qle_sd_aleatoric"] ** 2,
                               rtol=1e-10)
    assert np.mean(out["Qle_sd_epistemic"]) > 0 and "Qle_var" not in out
    # SDs in W m-2: the untrained head's SD is near 1 standardised unit, i.e. near the target's SD
    scale = float(model.target_norm.std[0])
    assert 0.3 * scale < np.median(out["Qle_sd_aleatoric"]) < 3.0 * scale


def test_mse_lstm_is_the_model_as_before():
    """The default builds the network of before (same weights: one output per target) and trains
    and predicts it the same as an explicit ``likelihood: mse``."""
    from hybridlsm.neural import LSTM

    spec = get_model("lstm")
    default = validate_options("lstm", LSTM_OPTS)
    assert default.likelihood == "mse"
    model = spec.build(default)
    assert model.head is None
    old_net = LSTM(in_size=2, out_size=1, hidden_size=16, dropout=0.0, forget_bias=1.0, key=jax.random.key(0))
    for a, b in zip(jax.tree_util.tree_leaves(model.net), jax.tree_util.tree_leaves(old_net)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    train, val = domain_from_site(_synthetic(1, days=6)), domain_from_site(_synthetic(2, days=3, site_id="SYN-V"))
    explicit = validate_options("lstm", LSTM_OPTS | {"likelihood": "mse"})
    a = spec.train(spec.build(default), default, [train], [val], _ctx(2))
    b = spec.train(LSTMModel().build(explicit), explicit, [train], [val], _ctx(2))
    pa, pb = spec.predict(a, val), spec.predict(b, val)
    assert set(pa) == {"Qle"}
    np.testing.assert_array_equal(pa["Qle"], pb["Qle"])


def _virtual_split(days: int, train_days: int, noise: float, epochs: int, lr: float):
    """A virtual site's days 2..train_days as training, the rest as validation, and a training context."""
    ds = virtual_site(site_id="T-GRA", days=days, seed=3, noise=noise, latitude=32.0, longitude=-110.0)
    labels = np.zeros(ds.sizes["time"], bool)
    labels[48 : train_days * 48] = True
    train, val = ds.copy(), ds.copy()
    train["loss_mask"] = ("time", labels)
    val["loss_mask"] = ("time", ~labels)
    run = validate_config({
        "name": "t", "data": {"sites": [{"virtual": {"days": days}}], "spinup_days": 1, "window_days": 3},
        "models": [{"name": "physics"}], "training": {"epochs": epochs, "lr": lr, "batch_windows": 8, "patience": 50},
    })  # fmt: skip
    return domain_from_site(train), domain_from_site(val), TrainingContext.from_config(run, progress=False)


@pytest.mark.slow  # kept out of make test-fast (several seconds)
def test_post_correction_with_gaussian_writes_aleatoric_sd(tmp_path):
    train, val, ctx = _virtual_split(days=8, train_days=6, noise=5.0, epochs=3, lr=1e-2)
    spec = get_model("post_correction")
    opts = validate_options("post_correction", {"likelihood": "gaussian", "width": 8, "epochs": 3, "calibrate": []})
    model = spec.train(spec.build(opts), opts, [train], [val], ctx)
    out = spec.predict(model, val)
    for t in ("Qle", "Qh"):
        assert out[f"{t}_sd"].shape == out[f"{t}_sd_aleatoric"].shape == (val.n_steps, 1)
        assert np.all(out[f"{t}_sd"] > 0) and np.all(np.isfinite(out[f"{t}_sd"]))
        np.testing.assert_array_equal(out[f"{t}_sd"], out[f"{t}_sd_aleatoric"])
        assert f"{t}_var" not in out
    # in W m-2: of the order of the physics' error (scale), not of the standardised units
    assert 0.1 * model.scale[0] < np.median(out["Qle_sd"]) < 10.0 * model.scale[0]
    # the evaporation moves with the corrected Qle (over L_v at the air temperature); the rest is the physics'
    physics = predict_column_model(model.physics, val)
    lv = 2.501e6 - 2370.0 * (val.data["Tair"].values - 273.15)
    np.testing.assert_allclose(out["Evap"] - physics["Evap"], (out["Qle"] - physics["Qle"]) / lv, rtol=1e-9, atol=1e-15)
    assert np.abs(out["Qle"] - physics["Qle"]).min() > 0.1  # the short training moved Qle a little
    np.testing.assert_array_equal(out["Rnet"], physics["Rnet"])
    spec.save(model, opts, tmp_path / "pc")
    _, _, again = load_saved_model(tmp_path / "pc")
    after = spec.predict(again, val)
    np.testing.assert_allclose(after["Qle_sd"], out["Qle_sd"], rtol=1e-10)
    np.testing.assert_allclose(after["Qle"], out["Qle"], rtol=1e-10)
    # with dropout: the total SD by the law of total variance
    mc = validate_options("post_correction", {"likelihood": "gaussian", "width": 8, "dropout": 0.2, "mc_samples": 4})
    m2 = eqx.tree_at(lambda m: m.mlp, model, spec.build(mc).mlp)
    m2 = replace(m2, mc_samples=4)
    res = spec.predict(m2, val)
    np.testing.assert_allclose(res["Qle_sd"] ** 2, res["Qle_sd_epistemic"] ** 2 + res["Qle_sd_aleatoric"] ** 2,
                               rtol=1e-10)


def test_only_models_with_an_aleatoric_head_accept_a_likelihood():
    """The likelihood option used to sit in every hybrid's options and be ignored by all but one."""
    from hybridlsm.config import ConfigError
    from hybridlsm.models.registry import validate_run_config

    def cfg(name):
        return {"name": "t", "data": {"sites": [{"virtual": {"site_id": "V", "days": 20}}]},
                "models": [{"name": name, "options": {"likelihood": "gaussian"}}]}

    for name in ("post_correction", "lstm", "hybrid_param", "hybrid_lstm", "hybrid_flux"):
        assert validate_run_config(cfg(name), check_paths=False).models[0].options["likelihood"] == "gaussian"
    for name in ("pretrain_then_finetune",):
        with pytest.raises(ConfigError, match=r"models\[0\]: options: unknown key 'likelihood'"):
            validate_run_config(cfg(name), check_paths=False)


def test_normalised_nll_by_hand():
    from hybridlsm.training.losses import normalised_nll, normalised_mse

    sim = jnp.array([[[1.0, 10.0]], [[2.0, 20.0]]])  # (T=2, W=1, K=2)
    obs = jnp.array([[[1.5, 13.0]], [[jnp.nan, 14.0]]])
    mask = jnp.array([[[True, True]], [[False, True]]])
    sigma = jnp.array([[[0.5, 3.0]], [[9.0, 6.0]]])
    scale = jnp.array([1.0, 10.0])
    got = float(normalised_nll(sim, sigma, obs, mask, scale))
    c = 0.5 * math.log(2 * math.pi)
    k0 = math.log(0.5) + 0.5 + c  # z = 1
    k1 = (math.log(0.3) + 0.5 + c + math.log(0.6) + 0.5 + c) / 2  # z = 1 and -1
    assert got == pytest.approx((k0 + k1) / 2, rel=1e-12)
    # sigma = scale: half the normalised MSE plus the constant
    mse = float(normalised_mse(sim, obs, mask, scale))
    nll = float(normalised_nll(sim, jnp.broadcast_to(scale, sim.shape), obs, mask, scale))
    assert nll == pytest.approx(0.5 * mse + c, rel=1e-12)


@pytest.fixture(scope="module", params=["hybrid_param", "hybrid_lstm", "hybrid_flux"])
def gaussian_hybrid_param(request):
    """hybrid_param (and hybrid_lstm, hybrid_flux) with ``likelihood: gaussian`` trained briefly on a
    virtual site with 25 W m-2 noise."""
    train, val, ctx = _virtual_split(days=16, train_days=12, noise=25.0, epochs=12, lr=2e-2)
    spec = get_model(request.param)
    opts = validate_options(request.param, {"likelihood": "gaussian", "width": 8, "hidden_size": 8,
                                            "physics_init": "default", "calibrate": [], "lr": 2e-2})  # fmt: skip
    return spec, opts, spec.train(spec.build(opts), opts, [train], [val], ctx), val


@pytest.mark.slow  # a short rollout training
def test_gaussian_hybrid_param_learns_the_noise_level(gaussian_hybrid_param, tmp_path):
    spec, opts, model, val = gaussian_hybrid_param
    assert model.aleatoric_targets == ("Qle", "Qh")
    out = spec.predict(model, val)
    for t in ("Qle", "Qh"):
        np.testing.assert_array_equal(out[f"{t}_sd"], out[f"{t}_sd_aleatoric"])  # no dropout: all aleatoric
        # from its start at 50 W m-2 towards the 25 W m-2 of the noise
        assert 15.0 < np.median(out[f"{t}_sd"]) < 45.0, np.median(out[f"{t}_sd"])
    spec.save(model, opts, tmp_path / "hp")
    _, _, again = load_saved_model(tmp_path / "hp")
    after = spec.predict(again, val)
    np.testing.assert_allclose(after["Qh_sd"], out["Qh_sd"], rtol=1e-10)


@pytest.mark.slow  # kept out of make test-fast (a few seconds)
@pytest.mark.parametrize("name", ["hybrid_param", "hybrid_lstm", "hybrid_flux"])
def test_gaussian_hybrid_param_with_dropout_splits_the_variance(name):
    spec = get_model(name)
    opts = validate_options(name, {"likelihood": "gaussian", "width": 8, "hidden_size": 8, "dropout": 0.2,
                                   "mc_samples": 4, "calibrate": []})  # fmt: skip
    model = spec.build(opts)
    d = domain_from_site(virtual_site(site_id="T-GRA", days=3, seed=1))
    out = spec.predict(model, d)
    for t in ("Qle", "Qh"):
        np.testing.assert_allclose(out[f"{t}_sd"] ** 2, out[f"{t}_sd_epistemic"] ** 2 + out[f"{t}_sd_aleatoric"] ** 2,
                                   rtol=1e-10)
        assert 30.0 < np.median(out[f"{t}_sd_aleatoric"]) < 80.0  # the untrained head: about SIGMA_SCALE
        assert f"{t}_var" not in out and f"{t}_sigma" not in out
