"""MC dropout in the hybrids and the lstm (issue 13): a PRNG key reaches every network inside the
rollout (training and prediction), prediction is the mean of ``mc_samples`` stochastic passes with
``<flux>_sd`` = the total predictive SD (law of total variance), and with dropout 0 nothing changes.
Uses a short virtual site."""

from __future__ import annotations

from dataclasses import replace

import equinox as eqx
import jax
import numpy as np
import pytest
import xarray as xr

from hybridlsm.data.virtual import virtual_site
from hybridlsm.domain import domain_from_site, write_site_outputs
from hybridlsm.models import column, column_fit
from hybridlsm.models.registry import get_model, validate_options
from hybridlsm.neural import dropout_rate, mc_dropout
from hybridlsm.physics import LaDState
from hybridlsm.training import losses, windows

FLUX_OUTPUTS = ("Qh", "Qle", "Qf", "Rnet", "SR")


@pytest.fixture(scope="module")
def domain():
    return domain_from_site(virtual_site(site_id="T-GRA", days=6, seed=3, noise=5.0, latitude=32.0, longitude=-110.0))


def _build(name, **options):
    spec = get_model(name)
    size = {"hidden_size": 4} if name == "lstm" else {"width": 8, "hidden_size": 4}
    return spec, spec.build(validate_options(name, size | options))


def _far_from_physics(model):
    """The networks' weights x 10: the closure starts near the physics, where dropout barely shows."""
    return jax.tree_util.tree_map(lambda a: a * 10.0 if eqx.is_inexact_array(a) and a.ndim == 2 else a, model)


def test_dropout_samples_inside_the_rollout_and_each_sample_conserves_energy(domain):
    _, model = _build("hybrid_flux", dropout=0.2)
    assert dropout_rate(model) == 0.2 and model.mc_samples == 50
    a = column.sample_column_model(model, domain, 2, jax.random.key(1), FLUX_OUTPUTS)
    b = column.sample_column_model(model, domain, 2, jax.random.key(2), FLUX_OUTPUTS)
    assert a["Qle"].shape == (2, domain.n_steps, 1)
    # different masks give different closure fluxes, within a draw and between draws
    assert np.max(np.abs(a["Qle"][0] - a["Qle"][1])) > 1e-3
    assert np.max(np.abs(a["Qh"] - b["Qh"])) > 1e-3
    dt = 1800.0
    for s in range(2):  # Rn - H - LE - Qf = dS/dt at every step of every sample (SR of step 0 unknown here)
        residual = (a["Rnet"][s] - a["Qh"][s] - a["Qle"][s] - a["Qf"][s])[1:] - np.diff(a["SR"][s], axis=0) / dt
        assert np.max(np.abs(residual)) < 1e-3


def test_without_dropout_prediction_is_the_deterministic_rollout(domain):
    spec, model = _build("hybrid_flux")
    assert dropout_rate(model) == 0.0
    forcing, base = column.domain_inputs(model, domain)
    state0 = model.spun_up_state(forcing, base)
    _, plain = column.run_jit(model, forcing, base, state0)
    # a key does nothing without dropout (compiled like run_jit: same rounding)
    _, keyed = eqx.filter_jit(lambda m, *a: m.run(*a))(model, forcing, base, state0, jax.random.key(3))
    out = spec.predict(model, domain)
    assert not any(k.endswith("_sd") or "_sd_" in k for k in out)
    for k in ("Qh", "Qle", "SoilMoist"):
        np.testing.assert_array_equal(out[k], np.asarray(plain[k]))
        np.testing.assert_array_equal(np.asarray(keyed[k]), np.asarray(plain[k]))


def test_prediction_is_the_sample_mean_and_sd(domain):
    spec, model = _build("hybrid_flux", dropout=0.2, mc_samples=5)
    model = _far_from_physics(model)
    key = jax.random.key(4)
    out = column.predict_column_model(model, domain, key=key)
    samples = column.sample_column_model(model, domain, 5, key, column.PREDICTION_OUTPUTS)
    for k in ("Qh", "Qle"):
        assert out[f"{k}_sd"].shape == (domain.n_steps, 1)
        sd = np.std(samples[k], axis=0, ddof=1)
        np.testing.assert_allclose(out[f"{k}_sd"], sd, rtol=1e-8, atol=1e-10)
        np.testing.assert_array_equal(out[f"{k}_sd_epistemic"], out[f"{k}_sd"])  # no aleatoric head
        assert f"{k}_sd_aleatoric" not in out
    assert np.all(out["Qle_sd"] > 0.0) and np.mean(out["Qle_sd"]) > 1.0
    np.testing.assert_allclose(out["SoilTemp"], samples["SoilTemp"].mean(0), rtol=1e-12)
    # the mean of energy-conserving samples conserves energy too (the balance is linear)
    residual = (out["Rnet"] - out["Qh"] - out["Qle"] - out["Qf"])[1:] - np.diff(out["SR"], axis=0) / 1800.0
    assert np.max(np.abs(residual)) < 1e-3
    # the default key is fixed: predictions are reproducible
    again = spec.predict(model, domain)
    np.testing.assert_array_equal(again["Qle_sd"], spec.predict(model, domain)["Qle_sd"])


def test_the_learned_parameters_get_their_spread_over_time(domain):
    """hybrid_param's network sets r_a and r_s every step: with dropout their MC spread is written
    as rs_sd, ra_sd (the parameter uncertainty over time, seed 000 section 2.5)."""
    spec, model = _build("hybrid_param", dropout=0.2, mc_samples=5)
    model = _far_from_physics(model)
    key = jax.random.key(5)
    out = column.predict_column_model(model, domain, key=key)
    samples = column.sample_column_model(model, domain, 5, key, column.PREDICTION_OUTPUTS)
    for k in ("rs", "ra", "Kh"):
        np.testing.assert_allclose(out[f"{k}_sd"], np.std(samples[k], axis=0, ddof=1), rtol=1e-8, atol=1e-12)
    assert np.median(out["rs_sd"] / out["rs"]) > 1e-3  # the network's dropout moves r_s


def test_law_of_total_variance():
    """With an aleatoric variance per sample: sd^2 = var of the sample means + mean variance,
    whatever the batching over samples."""
    def sample(keys):  # sample s is drawn with key s of jax.random.split(key, n)
        z = jax.vmap(lambda k: jax.random.normal(k, (11, 2, 2)))(keys)
        return {"Qle": 100.0 + 20.0 * z[..., 0], "Qle_var": 1.0 + z[..., 1] ** 2, "SWE": 5.0 * z[..., 0]}

    ref = {k: np.asarray(v) for k, v in sample(jax.random.split(jax.random.key(0), 7)).items()}
    mu, var = ref["Qle"], ref["Qle_var"]
    for batch in (7, 3):
        out = mc_dropout(sample, jax.random.key(0), 7, ("Qle",), batch)
        np.testing.assert_allclose(out["Qle"], mu.mean(0), rtol=1e-12)
        np.testing.assert_allclose(out["SWE"], ref["SWE"].mean(0), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(out["Qle_sd_epistemic"], mu.std(0, ddof=1), rtol=1e-10)
        np.testing.assert_allclose(out["Qle_sd_aleatoric"], np.sqrt(var.mean(0)), rtol=1e-12)
        np.testing.assert_allclose(out["Qle_sd"] ** 2, out["Qle_sd_epistemic"] ** 2 + out["Qle_sd_aleatoric"] ** 2,
                                   rtol=1e-12)
        assert "Qle_var" not in out and "SWE_sd" not in out


@pytest.mark.slow  # kept out of make test-fast (several seconds)
def test_training_loss_uses_the_key_with_dropout(domain):
    rec = column.prepare_site(domain.column(0), ["Qle", "Qh"], 3)
    scale = losses.target_scale([rec])
    loss_fn = column_fit.make_loss(["Qle", "Qh"], scale)
    weights = {"energy": 0.0, "sparsity": 0.0, "discovery": 0.0}
    batch = windows.make_windows([column.with_model_trajectory(_build("hybrid_flux")[1], rec)], 48, 2 * 48, LaDState)

    def loss(model, seed):
        return float(loss_fn(model, batch, jax.random.key(seed), weights)[0])

    _, noisy = _build("hybrid_flux", dropout=0.2)
    assert loss(noisy, 0) != loss(noisy, 1)
    _, plain = _build("hybrid_flux")
    assert loss(plain, 0) == loss(plain, 1)
    grads = jax.grad(lambda m: loss_fn(m, batch, jax.random.key(0), weights)[0])(noisy)
    g = np.asarray(grads.land.closure.mlp.layers[0].weight)
    assert np.all(np.isfinite(g)) and np.max(np.abs(g)) > 0.0


def test_lstm_baseline_with_dropout_gives_sd_and_the_writer_says_what_it_is(domain, tmp_path):
    spec, model = _build("lstm", dropout=0.2, mc_samples=4)
    model = spec.with_statistics(model, list(domain.columns()))  # standardised inputs (raw ones saturate it)
    out = spec.predict(model, domain)
    for k in ("Qle", "Qh"):
        assert out[k].shape == out[f"{k}_sd"].shape == (domain.n_steps, 1)
        assert np.all(out[f"{k}_sd"] >= 0.0) and np.mean(out[f"{k}_sd"] > 0.0) > 0.9  # 4 samples may share a mask
    assert "Qle_sd" not in spec.predict(_build("lstm")[1], domain)
    (path,) = write_site_outputs(domain, out, tmp_path, "lstm.nc", {"model": "lstm"})
    with xr.open_dataset(path) as ds:
        np.testing.assert_allclose(ds["Qle_sd"].values, out["Qle_sd"][:, 0])
        assert ds["Qle_sd"].attrs["units"] == "W m-2"
        assert "equal to Qle_sd_epistemic where no Qle_sd_aleatoric" in ds["Qle_sd"].attrs["long_name"]


@pytest.mark.parametrize("name", ["hybrid_param", pytest.param("hybrid_lstm", marks=pytest.mark.slow),
                                  pytest.param("post_correction", marks=pytest.mark.slow)])  # fmt: skip
def test_every_hybrid_predicts_with_mc_dropout(name, domain):
    spec, model = _build(name, dropout=0.2, mc_samples=3)
    out = spec.predict(model, domain)
    for k in ("Qle", "Qh"):
        assert out[f"{k}_sd"].shape == (domain.n_steps, 1)
        assert np.mean(out[f"{k}_sd"]) > 0.0, (name, k)


@pytest.mark.slow  # several rollouts with 10 dropout passes per step
def test_epistemic_fallback_uses_the_physics_where_the_network_is_unsure(domain):
    """hybrid_param with fallback_threshold: at prediction only, a multiplier whose spread over the
    step's dropout passes exceeds the threshold is 1 (the physics); 0 threshold: always the physics,
    a huge one: never. Training never sees it."""
    spec, model = _build("hybrid_param", dropout=0.3, mc_samples=3, fallback_threshold=1e-9)
    model = _far_from_physics(model)
    active = replace(model, land=replace(model.land, fallback_active=True))
    forcing, base = column.domain_inputs(model, domain)
    state0 = model.spun_up_state(forcing, base)
    _, everywhere = column.run_jit(active, forcing, base, state0)
    np.testing.assert_array_equal(np.asarray(everywhere["ra_mult"]), 1.0)  # every multiplier fell back
    np.testing.assert_array_equal(np.asarray(everywhere["rs_mult"]), 1.0)
    np.testing.assert_array_equal(np.asarray(everywhere["fallback"]), 1.0)
    never = replace(active, land=replace(active.land, fallback_threshold=1e9))
    _, out = column.run_jit(never, forcing, base, state0)
    _, plain = column.run_jit(model, forcing, base, state0)  # not active: the network as trained
    np.testing.assert_allclose(np.asarray(out["Qh"]), np.asarray(plain["Qh"]), rtol=1e-12)
    np.testing.assert_array_equal(np.asarray(out["fallback"]), 0.0)
    assert "fallback" not in plain and np.max(np.abs(np.asarray(plain["ra_mult"]) - 1.0)) > 1e-2
    # a threshold inside the spread's range: some steps fall back, not all
    mid = replace(active, land=replace(active.land, fallback_threshold=0.05))
    _, part = column.run_jit(mid, forcing, base, state0)
    frac = float(np.mean(np.asarray(part["fallback"])))
    assert 0.0 < frac < 1.0, frac
    # the spec's prediction switches it on and writes the fraction; MC-mean over the samples
    out = spec.predict(model, domain)
    assert out["fallback"].shape == (domain.n_steps, 1) and float(np.mean(out["fallback"])) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="needs dropout"):
        validate_options("hybrid_param", {"fallback_threshold": 0.1})
