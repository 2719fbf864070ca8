"""Trainer (AdamW, schedules, early stopping, validity rollback, two-phase, resume), losses, lstm."""

import json
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from hybridlsm.config import TrainConfig
from hybridlsm.domain import domain_from_site
from hybridlsm.models.registry import TrainingContext, UnknownModelError, available_models, get_model, validate_options
from hybridlsm.models.registry import validate_run_config as validate_config
from hybridlsm.neural import Normaliser
from hybridlsm.physics.exchange import ExchangeLaw
from hybridlsm.training.members import member_of, stack_batches, stack_members
from hybridlsm.training import (
    CheckpointError,
    TrainingError,
    discovery_loss,
    energy_residual_loss,
    fit,
    gaussian_nll,
    learning_rate,
    loss_weights,
    masked_mse,
    sparsity_l1,
    total_loss,
)

# ------------------------------------------------------------------------------ fixtures


class Affine(eqx.Module):
    """y = w . (x - mean) / std + b, with non-trainable input statistics."""

    norm: Normaliser
    w: jax.Array
    b: jax.Array

    def __call__(self, x):
        return self.norm(x) @ self.w + self.b


TRUE_W = np.array([1.5, -2.0])
TRUE_B = 0.5


def make_model():
    return Affine(Normaliser([1.0, 0.0], [2.0, 1.0]), jnp.zeros(2), jnp.zeros(()))


def make_batches(n_batches=4, size=16, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_batches):
        x = rng.normal(size=(size, 2)) * [2.0, 1.0] + [1.0, 0.0]
        z = (x - [1.0, 0.0]) / [2.0, 1.0]
        out.append({"x": jnp.asarray(x), "y": jnp.asarray(z @ TRUE_W + TRUE_B + 0.01 * rng.normal(size=size))})
    return out


BATCHES = make_batches()
VAL = make_batches(1, 64, seed=1)[0]


def mse_loss(model, batch, key, weights):
    # the key perturbs the inputs slightly, so that rng threading matters for determinism
    x = batch["x"] + 1e-3 * jax.random.normal(key, batch["x"].shape)
    mse = masked_mse(model(x), batch["y"])
    return mse + weights["energy"] * 0.0, {"mse": mse, "w_energy": weights["energy"],
                                           "w_sparsity": weights["sparsity"],
                                           "w_discovery": weights["discovery"]}  # fmt: skip


@eqx.filter_jit
def _val(model, batch):
    return masked_mse(model(batch["x"]), batch["y"])


def val_fn(model):
    return float(_val(model, VAL))


def cfg(**kw):
    base = dict(epochs=12, lr=0.2, min_lr=1e-4, weight_decay=0.01, patience=50, seed=3)
    base.update(kw)
    if "two_phase" in kw:
        del base["epochs"]  # the sum of the two phases
    return TrainConfig(**base)


def params_of(model):
    return np.concatenate([np.ravel(model.w), np.ravel(model.b)])


# -------------------------------------------------------------------------------- trainer


def test_loss_falls_on_small_regression_and_statistics_stay_fixed():
    res = fit(make_model(), mse_loss, BATCHES, val_fn, cfg(), progress=False)
    h = res.history
    assert len(h) == 12 and not res.stopped_early
    assert h[-1]["train_loss"] < 0.02 * h[0]["train_loss"]
    assert res.best_val < 0.01 and res.best_val == min(r["val_loss"] for r in h)
    assert h[res.best_epoch - 1]["val_loss"] == res.best_val
    np.testing.assert_allclose(params_of(res.model), [*TRUE_W, TRUE_B], atol=0.1)
    # weight decay and gradients never touch the NonTrainable normalisation statistics
    np.testing.assert_array_equal(res.model.norm.mean, [1.0, 0.0])
    np.testing.assert_array_equal(res.model.norm.std, [2.0, 1.0])
    # single-phase training passes zero physics weights
    assert all(r["weights"] == {"energy": 0.0, "sparsity": 0.0, "discovery": 0.0} for r in h)


def test_fit_is_deterministic_given_the_seed():
    a = fit(make_model(), mse_loss, BATCHES, val_fn, cfg(epochs=3), progress=False)
    b = fit(make_model(), mse_loss, BATCHES, val_fn, cfg(epochs=3), progress=False)
    np.testing.assert_array_equal(params_of(a.model), params_of(b.model))
    c = fit(make_model(), mse_loss, BATCHES, val_fn, cfg(epochs=3, seed=4), progress=False)
    assert np.max(np.abs(params_of(c.final_model) - params_of(a.final_model))) > 0


def test_early_stopping_keeps_the_best_model():
    calls = []

    def worsening_val(model):  # best after epoch 1, then worse and worse
        calls.append(params_of(model))
        return float(len(calls))

    res = fit(make_model(), mse_loss, BATCHES, worsening_val, cfg(patience=2), progress=False)
    assert res.stopped_early and len(res.history) == 3 and res.best_epoch == 1
    assert res.history[-1]["event"] == "early_stop"
    np.testing.assert_array_equal(params_of(res.model), calls[0])
    assert np.max(np.abs(params_of(res.final_model) - calls[0])) > 0


def test_validity_hook_rolls_back_and_halves_learning_rate():
    def bias_below(model):
        return bool(model.b < 0.3), f"bias {float(model.b):.3f} >= 0.3"

    res = fit(make_model(), mse_loss, BATCHES, val_fn, cfg(epochs=6, schedule="constant"),
              progress=False, validity_fn=bias_below)  # fmt: skip
    rejections = [r for h in res.history for r in h["rejections"]]
    assert len(rejections) >= 1
    assert all(r["message"].startswith("bias ") for r in rejections)
    # each rejection halves the learning-rate scale (none of these is followed by 10 accepted updates)
    scales = [r["lr_scale"] for r in rejections]
    assert scales[0] == 0.5 and all(b == a / 2 or b >= a for a, b in zip(scales, scales[1:]))
    last = res.history[-1]
    if not last["rejections"]:
        assert last["lr"] == pytest.approx(0.2 * last["lr_scale"], rel=1e-12)
    assert float(res.final_model.b) < 0.3 and float(res.model.b) < 0.3

    # a rare rejection costs speed for a while, not the rest of the run: after 10 accepted updates
    # in a row the halved rate doubles back (the first update rejected; 4 updates an epoch)
    calls = []

    def first_rejected(model):
        calls.append(1)
        return len(calls) > 1, "first update"

    res = fit(make_model(), mse_loss, BATCHES, val_fn, cfg(epochs=4, schedule="constant"), progress=False,
              validity_fn=first_rejected)  # fmt: skip
    assert [h["lr_scale"] for h in res.history] == [0.5, 0.5, 1.0, 1.0]
    assert [h["lr"] for h in res.history] == pytest.approx([0.1, 0.1, 0.2, 0.2], rel=1e-12)

    # a hook that rejects everything: the run learned nothing, and says so instead of returning
    # the untrained model (it used to return it as if trained)
    with pytest.raises(TrainingError, match=r"no update was accepted in 2 epoch\(s\) \(8 steps; last rejection: "
                                            r"never valid\)"):
        fit(make_model(), mse_loss, BATCHES, val_fn, cfg(epochs=2), progress=False,
            validity_fn=lambda m: (False, "never valid"))  # fmt: skip


def test_training_that_cannot_recover_stops_with_a_message():
    """A loss that stays non-finite (NaN in the forcing, an absurd learning rate): each update is
    rolled back and halves the rate; 20 in a row stop the run with a message, not a silent model."""

    def nan_loss(model, batch, key, weights):
        loss, aux = mse_loss(model, batch, key, weights)
        return loss * jnp.nan, aux

    with pytest.raises(TrainingError, match=r"20 updates in a row rejected \(epoch 5, last: non-finite loss or "
                                            r"parameters; loss nan\), the learning rate halved to 9.54e-07"):
        with pytest.warns(UserWarning, match=r"epoch 4: 4 of 4 update\(s\) rejected \(last: non-finite loss or "
                                             r"parameters\); learning rate now 1.53e-05 of its setting"):
            fit(make_model(), nan_loss, BATCHES, val_fn, cfg(epochs=10), progress=False)
    # one window in four non-finite at every step (as the hybrid_flux closure was at strongly negative
    # available energy): single updates pass, but the rate halves each epoch and never wins a halving
    # back; it used to fall to ~0 while the run "succeeded"
    bad = float(BATCHES[1]["x"][0, 0])

    def nan_on_one_window(model, batch, key, weights):
        loss, aux = mse_loss(model, batch, key, weights)
        return jnp.where(batch["x"][0, 0] == bad, jnp.nan, loss), aux

    with pytest.raises(TrainingError, match=r"the learning rate collapsed to 4.77e-07 of its setting in epoch 21: "
                                            r"21 of 83 updates rejected"):
        with pytest.warns(UserWarning):
            fit(make_model(), nan_on_one_window, BATCHES, val_fn, cfg(epochs=40), progress=False)
    # a finite loss whose validation is never finite also learned nothing that can be checked
    with pytest.raises(TrainingError, match="no epoch gave a finite validation loss in 3 epoch"):
        fit(make_model(), mse_loss, BATCHES, lambda m: float("nan"), cfg(epochs=3), progress=False)


def _in_key_order(batches):
    """``key -> batches`` in the order fit itself visits a sequence of batches."""
    return lambda key: [batches[int(i)] for i in np.asarray(jax.random.permutation(key, len(batches)))]


def _scripted(scores):
    """A validation function giving these scores epoch after epoch."""
    calls = iter(scores)
    return lambda model: next(calls)


def test_stacked_members_train_as_each_would_alone():
    """fit(members=2) gives each member what its own fit (seed + k) gives: its own keys and batch
    order, its own AdamW state and global-norm clip (member 0's targets are 1000 times larger: a
    clip over both members would shrink member 1's steps), and its own early stopping (member 0's
    scripted validation stops it after epoch 4 with its best at epoch 2; it takes no update after)."""
    big = [{"x": b["x"], "y": 1000.0 * b["y"]} for b in BATCHES]
    script0 = [3.0, 2.0, 2.5, 2.6] + [9.0] * 8
    c = cfg(patience=2)
    alone = [fit(make_model(), mse_loss, big, _scripted(script0), c, progress=False),
             fit(make_model(), mse_loss, BATCHES, val_fn, c.model_copy(update={"seed": c.seed + 1}), progress=False)]
    assert alone[0].stopped_early and alone[0].best_epoch == 2 and len(alone[0].history) == 4
    val0 = _scripted(script0)
    together = fit(stack_members([make_model(), make_model()]), mse_loss,
                   stack_batches([_in_key_order(big), _in_key_order(BATCHES)]),
                   lambda m: [val0(member_of(m, 0)), val_fn(member_of(m, 1))], c, progress=False, members=2)
    assert together.best_epoch == [2, alone[1].best_epoch]
    assert together.stopped_early == [True, alone[1].stopped_early]
    assert len(together.history) == len(alone[1].history) and together.history[-1]["val_loss"][1] == pytest.approx(
        alone[1].history[-1]["val_loss"], rel=1e-12)
    for k in range(2):
        np.testing.assert_allclose(params_of(member_of(together.model, k)), params_of(alone[k].model), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(params_of(member_of(together.final_model, k)), params_of(alone[k].final_model),
                                   rtol=1e-12, atol=1e-14)
    # member 1 learned the line (its steps were not shrunk by member 0's gradient)
    np.testing.assert_allclose(params_of(member_of(together.model, 1)), [*TRUE_W, TRUE_B], atol=0.05)
    with pytest.raises(ValueError, match="one phase on one device"):
        fit(stack_members([make_model(), make_model()]), mse_loss, stack_batches([_in_key_order(BATCHES)] * 2),
            lambda m: [0.0, 0.0], cfg(two_phase={"enabled": True, "phase1_epochs": 1, "phase2_epochs": 1}),
            progress=False, members=2)


def test_stacked_members_resume_as_if_uninterrupted(tmp_path):
    """A members checkpoint keeps each member's key, counters and best (member 1 stops at epoch 3
    on its scripted validation): resumed after epoch 2, the result equals the uninterrupted one."""
    c = cfg(epochs=5, patience=2)
    scores = [1.0, 0.9, 0.95, 0.99, 0.98]  # member 1: best at epoch 2, stops after epoch 4

    def run(directory, resume=False, stop_after=None):
        v1 = _scripted(scores[2:] if resume else scores)
        epochs = iter(range(1, 10))

        def val(m):
            if next(epochs) == stop_after:
                raise KeyboardInterrupt
            return [val_fn(member_of(m, 0)), v1(member_of(m, 1))]

        return fit(stack_members([make_model(), make_model()]), mse_loss,
                   stack_batches([_in_key_order(BATCHES)] * 2), val, c, directory, progress=False, resume=resume,
                   members=2)

    full = run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", stop_after=3)
    meta = json.loads((tmp_path / "b" / "checkpoint.json").read_text())
    assert meta["epoch"] == 2 and meta["best_epoch"] == [2, 2] and np.shape(meta["rng"]) == (2, 2)
    resumed = run(tmp_path / "b", resume=True)
    assert resumed.best_epoch == full.best_epoch and full.best_epoch[1] == 2
    assert resumed.stopped_early == full.stopped_early == [False, True]
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]
    for k in range(2):
        np.testing.assert_allclose(params_of(member_of(resumed.model, k)), params_of(member_of(full.model, k)),
                                   rtol=0, atol=1e-12)


def test_resume_equals_uninterrupted(tmp_path):
    c = cfg(epochs=4)
    full = fit(make_model(), mse_loss, BATCHES, val_fn, c, tmp_path / "a", progress=False)

    class Interrupted(Exception):
        pass

    n = {"val": 0}

    def val_interrupting(model):
        n["val"] += 1
        if n["val"] == 3:  # the process dies during epoch 3, after the epoch-2 checkpoint
            raise Interrupted
        return val_fn(model)

    with pytest.raises(Interrupted):
        fit(make_model(), mse_loss, BATCHES, val_interrupting, c, tmp_path / "b", progress=False)
    meta = json.loads((tmp_path / "b" / "checkpoint.json").read_text())
    assert meta["epoch"] == 2 and meta["config_hash"] == c.config_hash() and len(meta["rng"]) == 2
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["checkpoint.json", "checkpoint.prev.json",
                                                                 "epoch_0001.eqx", "epoch_0002.eqx"]  # fmt: skip

    resumed = fit(make_model(), mse_loss, BATCHES, val_fn, c, tmp_path / "b", progress=False, resume=True)
    np.testing.assert_allclose(params_of(resumed.model), params_of(full.model), rtol=0, atol=1e-12)
    np.testing.assert_allclose(params_of(resumed.final_model), params_of(full.final_model), rtol=0, atol=1e-12)
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]
    assert resumed.best_epoch == full.best_epoch

    # resuming a finished run returns it unchanged; a different config is refused
    again = fit(make_model(), mse_loss, BATCHES, val_fn, c, tmp_path / "b", progress=False, resume=True)
    np.testing.assert_array_equal(params_of(again.model), params_of(resumed.model))
    with pytest.raises(CheckpointError, match="different training config"):
        fit(make_model(), mse_loss, BATCHES, val_fn, cfg(epochs=5), tmp_path / "b", progress=False, resume=True)


def test_two_phase_weights_ramp_and_learning_rate_schedule():
    c = cfg(lr=0.01, two_phase={"enabled": True, "phase1_epochs": 2, "phase2_epochs": 3})
    assert c.epochs == 5
    res = fit(make_model(), mse_loss, BATCHES, val_fn, c, progress=False)
    h = res.history
    assert [r["phase"] for r in h] == [1, 1, 2, 2, 2]
    assert h[2]["event"] == "phase2_start"
    seen = [r["terms"]["w_energy"] for r in h]  # what loss_fn actually received
    np.testing.assert_allclose(seen, [0, 0, 0.1, 0.3, 0.5], atol=1e-12)
    np.testing.assert_allclose([r["terms"]["w_discovery"] for r in h], [0, 0, 0.05, 0.125, 0.2], atol=1e-12)
    np.testing.assert_allclose([r["terms"]["w_sparsity"] for r in h], [0, 0, 0.01, 0.01, 0.01], atol=1e-12)
    # phase 1: constant lr; phase 2: cosine over its 3 epochs (last batch of each epoch recorded)
    assert h[0]["lr"] == h[1]["lr"] == 0.01
    t = (2 + 3 / 4) / 3
    assert h[4]["lr"] == pytest.approx(1e-4 + (0.01 - 1e-4) * 0.5 * (1 + math.cos(math.pi * t)), rel=1e-12)


def test_phase1_patience_moves_on_to_phase2():
    n = {"val": 0}

    def val_worse_in_phase1(model):
        n["val"] += 1
        return float(n["val"]) if n["val"] <= 3 else 1.0 / n["val"]

    c = cfg(patience=2, two_phase={"enabled": True, "phase1_epochs": 5, "phase2_epochs": 2})
    res = fit(make_model(), mse_loss, BATCHES, val_worse_in_phase1, c, progress=False)
    assert [r["phase"] for r in res.history] == [1, 1, 1, 2, 2]
    assert res.history[2]["event"] == "phase1_early_stop" and res.history[3]["event"] == "phase2_start"
    assert res.best_epoch == 7 and not res.stopped_early  # epochs 6, 7 (1-based) are phase 2


def test_phase2_starts_from_what_on_phase2_makes_of_the_best_phase1_model():
    seen = []

    def restart(model):  # e.g. a co-trained law refitted to what phase 1 learned
        seen.append(params_of(model))
        return eqx.tree_at(lambda m: m.b, model, jnp.asarray(5.0))

    c = cfg(two_phase={"enabled": True, "phase1_epochs": 3, "phase2_epochs": 1}, lr=1e-9, min_lr=1e-9)
    res = fit(make_model(), mse_loss, BATCHES, val_fn, c, progress=False, on_phase2=restart)
    assert len(seen) == 1 and np.allclose(seen[0], 0.0, atol=1e-6)  # once, with the (untrained) phase-1 model
    assert float(res.model.b) == pytest.approx(5.0, abs=1e-6)  # phase 2 (lr ~ 0) kept the restart
    plain = fit(make_model(), mse_loss, BATCHES, val_fn, c, progress=False)
    assert float(plain.model.b) == pytest.approx(0.0, abs=1e-6)


def test_filter_spec_trains_only_the_chosen_leaves():
    model = make_model()
    only_bias = jax.tree_util.tree_map(lambda _: False, model)
    only_bias = eqx.tree_at(lambda m: m.b, only_bias, True)
    res = fit(model, mse_loss, BATCHES, val_fn, cfg(epochs=2), filter_spec=only_bias, progress=False)
    np.testing.assert_array_equal(res.model.w, model.w)
    assert abs(float(res.model.b) - TRUE_B) < 0.2


def test_schedules_by_hand():
    c = cfg(epochs=10, lr=1e-3, min_lr=1e-5, warmup_steps=4)
    assert learning_rate(c, 0, 0, 5, step=0) == pytest.approx(1e-3 * 0.25)  # warm-up 1/4, cosine at 0
    assert learning_rate(c, 5, 0, 5, step=100) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)
    assert learning_rate(cfg(schedule="constant", lr=2e-3), 7, 3, 5, step=50) == 2e-3
    tp = cfg(two_phase={"enabled": True, "phase1_epochs": 3, "phase2_epochs": 1})
    assert loss_weights(tp, 2) == {"energy": 0.0, "sparsity": 0.0, "discovery": 0.0}
    assert loss_weights(tp, 3) == {"energy": 0.5, "sparsity": 0.01, "discovery": 0.2}  # P = 1: end values
    # past phase 2 (a model's epochs beyond the phases) the weights and the rate hold their end values
    t2 = cfg(lr=1e-2, min_lr=1e-6, two_phase={"enabled": True, "phase1_epochs": 2, "phase2_epochs": 2})
    assert [loss_weights(t2, e)["energy"] for e in range(2, 6)] == [pytest.approx(v) for v in (0.1, 0.5, 0.5, 0.5)]
    assert [learning_rate(t2, e, 0, 1, step=99) for e in (4, 5)] == [pytest.approx(1e-6)] * 2


# --------------------------------------------------------------------------------- losses


def test_masked_mse_ignores_masked_and_missing_values_and_their_gradients():
    pred = np.array([1.0, 2.0, 3.0, 4.0])
    obs = np.array([2.0, np.nan, 5.0, 0.0])
    mask = np.array([True, True, True, False])
    value, grad = jax.jit(jax.value_and_grad(masked_mse))(pred, obs, mask)
    assert float(value) == pytest.approx((1.0 + 4.0) / 2)
    np.testing.assert_allclose(grad, [-1.0, 0.0, -2.0, 0.0])
    assert float(jax.jit(masked_mse)(pred, obs, np.zeros(4, bool))) == 0.0


def test_energy_residual_loss_by_hand():
    h = np.array([100.0, 50.0, 10.0])
    le = np.array([200.0, 100.0, 10.0])
    rn = np.array([400.0, np.nan, 50.0])
    g = np.array([50.0, 10.0, np.nan])

    @jax.jit
    def losses(h):
        return (energy_residual_loss(h, le, rn, g, scale=10.0), energy_residual_loss(h, le, rn, g),
                energy_residual_loss(h, le, rn))  # fmt: skip

    scaled, relative, no_g = (float(x) for x in losses(h))
    # only entry 0 has both Rn and G: residual 400 - 50 - 100 - 200 = 50; A = 350
    assert scaled == pytest.approx(25.0)
    assert relative == pytest.approx(50.0**2 / 350.0**2)
    # without G: entries 0 and 2, residuals 100 and 30, normalised by mean(Rn^2)
    assert no_g == pytest.approx((100.0**2 + 30.0**2) / (400.0**2 + 50.0**2))
    grad = jax.jit(jax.grad(lambda x: losses(x)[0]))(h)
    np.testing.assert_allclose(grad, [-2 * 50.0 / 100.0, 0.0, 0.0])


def test_sparsity_and_gaussian_nll_by_hand():
    @jax.jit
    def terms():
        sparse = sparsity_l1({"a": jnp.array([1.0, -3.0]), "b": jnp.array([-2.0])})
        nll = gaussian_nll(jnp.array([0.0, 1.0]), jnp.array([1.0, 2.0]), jnp.array([1.0, jnp.nan]))
        loss, aux = total_loss(jnp.asarray(1.0), {"energy": jnp.asarray(2.0)}, {"energy": 0.25})
        return sparse, nll, loss, aux

    sparse, nll, loss, aux = terms()
    assert float(sparse) == pytest.approx(2.0)
    assert float(nll) == pytest.approx(0.5 + 0.5 * math.log(2 * math.pi))
    assert float(loss) == 1.5 and set(aux) == {"mse", "energy"}
    with pytest.raises(ValueError, match="allowed"):
        total_loss(1.0, {"momentum": 1.0}, {})


def test_discovery_law_and_loss():
    """The co-trained law has a stable and an unstable branch (never |Ri|), each a u^b |Ri|^c by hand."""
    law = ExchangeLaw({"stable": (0.005, 1.23, -0.32), "unstable": (0.1, 0.9, 0.25)})
    u, ri = np.array([1.0, 3.0, 6.0, 2.0]), np.array([-0.5, 0.0, 0.1, 0.5])

    @eqx.filter_jit
    def evaluate(law, factor):
        kh = jnp.exp(law.log_kh(u, ri))
        loss, grads = eqx.filter_value_and_grad(lambda l: discovery_loss(l, factor * kh, u, ri))(law)
        g_kh = jax.grad(lambda k: discovery_loss(law, k, u, ri))(factor * kh)
        return kh, loss, grads, g_kh

    kh, loss0, _, _ = evaluate(law, 1.0)
    kh = np.asarray(kh)
    ue, rie = np.sqrt(u**2 + 0.01), np.sqrt(ri**2 + 1e-4)
    stable, unstable = 0.005 * ue**1.23 * rie**-0.32, 0.1 * ue**0.9 * rie**0.25
    w = 1.0 / (1.0 + np.exp(-ri / 1e-3))  # the branches' sigmoid join: exact beyond |Ri| = 0.01
    expected = np.exp(w * np.log(stable) + (1 - w) * np.log(unstable))
    np.testing.assert_allclose(kh, expected, rtol=1e-10)
    np.testing.assert_allclose(kh[[0, 2, 3]], np.where(ri > 0, stable, unstable)[[0, 2, 3]], rtol=1e-12)
    assert kh[2] / kh[3] == pytest.approx((6.0**2 + 0.01) ** (1.23 / 2) / (2.0**2 + 0.01) ** (1.23 / 2)
                                          * (0.1**2 + 1e-4) ** -0.16 / (0.5**2 + 1e-4) ** -0.16, rel=1e-10)
    assert float(loss0) == pytest.approx(0.0, abs=1e-24)
    coef = law.coefficients()
    assert coef["stable"] == pytest.approx({"a": 0.005, "b": 1.23, "c": -0.32})
    # a K_h field twice the law: loss (log 2)^2, gradients into each branch's a, b, c and into K_h
    _, loss, grads, g_kh = evaluate(law, 2.0)
    assert float(loss) == pytest.approx(math.log(2.0) ** 2)
    assert float(jnp.sum(grads.log_a)) == pytest.approx(-2 * math.log(2.0))
    assert np.all(np.abs(np.asarray(grads.b)) > 0) and np.all(np.abs(np.asarray(grads.c)) > 0)
    np.testing.assert_allclose(g_kh, 2 * math.log(2.0) / (4 * 2.0 * expected), rtol=1e-10)
    # bounded when it sets r_a
    assert float(law(np.array([0.0]), np.array([50.0]))[0]) >= 1e-4
    with pytest.raises(ValueError, match="branches"):
        ExchangeLaw({"stable": (0.1, 1.0, 0.0)})


# ---------------------------------------------------------------------------- lstm baseline


def synthetic_site(site_id, days, seed):
    """A small site with a diurnal cycle; Qle and Qh depend on radiation, VPD and wind."""
    rng = np.random.default_rng(seed)
    n = days * 48
    time = pd.date_range("2020-06-01", periods=n, freq="30min")
    hour = (np.arange(n) % 48) / 2.0
    sw = np.clip(800.0 * np.sin(np.pi * (hour - 6.0) / 12.0), 0.0, None) * rng.uniform(0.6, 1.0, n)
    tair = 293.0 + 6.0 * np.sin(np.pi * (hour - 9.0) / 12.0) + rng.normal(0, 0.5, n)
    vpd = np.clip(10.0 + 8.0 * np.sin(np.pi * (hour - 9.0) / 12.0), 0.5, None)
    wind = rng.gamma(2.0, 1.5, n)
    qle = 0.45 * sw * np.tanh(vpd / 10.0) + rng.normal(0, 5, n)
    qh = 0.3 * sw - 15.0 + 2.0 * wind + rng.normal(0, 5, n)
    qc = rng.choice([0, 1, 3], size=n, p=[0.7, 0.2, 0.1]).astype(np.int8)
    data = {
        "SWdown": sw, "LWdown": 330.0 + rng.normal(0, 10, n), "Tair": tair, "VPD": vpd,
        "Wind": wind, "Precip": np.zeros(n), "Psurf": np.full(n, 98000.0) + rng.normal(0, 50, n),
        "Qle": qle, "Qh": qh, "Qle_qc": qc, "Qh_qc": qc,
    }  # fmt: skip
    ds = xr.Dataset({k: ("time", v) for k, v in data.items()}, coords={"time": time})
    ds.attrs.update(site_id=site_id, time_step_s=1800.0)
    return ds


def test_registry_lists_lstm_and_rejects_unknown_names():
    assert "lstm" in available_models()
    spec = get_model("lstm")
    assert all(callable(getattr(spec, m)) for m in ("build", "train", "predict"))
    with pytest.raises(UnknownModelError, match="unknown model 'lsmt'; allowed: .*lstm"):
        get_model("lsmt")


def test_lstm_baseline_loss_falls_and_predicts(tmp_path):
    train = [synthetic_site("S1", 5, 0), synthetic_site("S2", 5, 1)]
    val = [synthetic_site("S3", 2, 2)]
    train[1]["loss_mask"] = ("time", np.arange(240) < 150)  # e.g. a split: only these steps train
    run = validate_config({
        "name": "t",
        "data": {"sites": [{"virtual": {}}], "window_days": 1, "spinup_days": "6 h", "max_qc": 1},
        "models": [{"name": "lstm", "options": {"hidden_size": 12}}],
        "training": {"epochs": 4, "lr": 0.02, "batch_windows": 2, "weight_decay": 0.0, "seed": 1},
    })  # fmt: skip
    spec = get_model("lstm")
    opts = validate_options("lstm", run.models[0].options)
    train_d, val_d = [domain_from_site(ds) for ds in train], [domain_from_site(ds) for ds in val]
    model = spec.build(opts)
    assert model.inputs[3] == "Qair"  # derived from VPD, Tair and Psurf
    zero = spec.predict(spec.with_statistics(model, train), val_d[0])  # untrained, with the data's scales
    ctx = TrainingContext.from_config(run, checkpoint_dir=tmp_path / "ckpt", progress=False)
    trained = spec.train(model, opts, train_d, val_d, ctx)
    meta = json.loads((tmp_path / "ckpt" / "checkpoint.json").read_text())
    vals = [h["val_loss"] for h in meta["history"]]
    trains = [h["train_loss"] for h in meta["history"]]
    assert trains[-1] < 0.3 * trains[0] and min(vals) < 0.4 * vals[0]
    pred = spec.predict(trained, val_d[0])
    assert set(pred) == {"Qle", "Qh"} and pred["Qle"].shape == (96, 1)
    obs = val[0]["Qle"].values
    rmse_trained = np.sqrt(np.mean((pred["Qle"][:, 0] - obs)[12:] ** 2))
    rmse_untrained = np.sqrt(np.mean((zero["Qle"][:, 0] - obs)[12:] ** 2))
    assert rmse_trained < 0.5 * rmse_untrained
