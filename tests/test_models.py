"""Hybrid and physics column models: losses fall, energy is conserved by construction, windows and
registry behave (issue 4). Uses a short virtual site so it needs no external data."""

from __future__ import annotations

from dataclasses import replace

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybridlsm.data.virtual import virtual_site
from hybridlsm.domain import domain_from_site
from hybridlsm.models import column, column_fit
from hybridlsm.models.hybrid import start_from_physics
from hybridlsm.models.registry import TrainingContext, get_model, validate_options
from hybridlsm.models.registry import validate_run_config as validate_config
from hybridlsm.physics import LaDState, from_unconstrained, to_unconstrained
from hybridlsm.physics.soil import LAYER_THICKNESS, layer_heat_capacity, soil_heat_storage
from hybridlsm.training import losses, windows

ROLLOUT_MODELS = ["physics", "fixed_kh", "hybrid_flux", "hybrid_param", "hybrid_lstm"]


# session scope (built once per test worker, in under a second), not module scope: tests/conftest.py
# keeps a module-scoped fixture's tests in one worker, and these tests are better spread over both
@pytest.fixture(scope="session")
def site():
    ds = virtual_site(site_id="T-GRA", days=24, seed=3, noise=5.0, latitude=32.0, longitude=-110.0)
    labels = np.zeros(ds.sizes["time"], bool)
    labels[2 * 48 : 16 * 48] = True
    train = ds.copy()
    train["loss_mask"] = ("time", labels)
    val = ds.copy()
    val["loss_mask"] = ("time", np.r_[np.zeros(16 * 48, bool), np.ones(ds.sizes["time"] - 16 * 48, bool)])
    return domain_from_site(train), domain_from_site(val)


@pytest.fixture(scope="session")
def cfg():
    run = validate_config({
        "name": "t",
        "data": {"sites": [{"virtual": {"days": 24}}], "spinup_days": 1, "window_days": 3},
        "models": [{"name": "physics"}],
        "training": {"epochs": 6, "lr": 1e-2, "batch_windows": 8, "patience": 50},
    })  # fmt: skip
    return TrainingContext.from_config(run, progress=False)


def _record(domain, model=None):
    return column.prepare_site(domain.column(0), ["Qle", "Qh"], 3, model=model)


def _windows(domain):
    rec = column.with_model_trajectory(get_model("physics").build(validate_options("physics", {"calibrate": []})),
                                       _record(domain))
    return rec, windows.make_windows([rec], 48, 3 * 48, LaDState)


def _window_loss(model, windows, targets, scale):
    loss_fn = column_fit.make_loss(targets, scale)
    weights = {"energy": 0.0, "sparsity": 0.0, "discovery": 0.0}
    return float(loss_fn(model, windows, jax.random.key(0), weights)[0])


# `make test-fast` keeps one training test per family: physics (calibration) and hybrid_flux (which
# also starts from the calibrated physics); the variants train in the full suite only (~10 s each).
SLOW_ROLLOUT = {"fixed_kh", "hybrid_flux", "hybrid_param", "hybrid_lstm"}  # physics stays in make test-fast


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_ROLLOUT else n
                                  for n in ROLLOUT_MODELS])  # fmt: skip
@pytest.mark.slow  # a few seconds; in make test, not test-fast
def test_rollout_model_training_lowers_loss(name, site, cfg):
    train, val = site
    spec = get_model(name)
    physics_like = name in ("physics", "fixed_kh")  # calibration: default Adam step 0.05 on the offsets
    opts = validate_options(name, {"epochs": 6} if physics_like else {"epochs": 6, "lr": 1e-2, "width": 16, "hidden_size": 8})
    model0 = spec.build(opts)
    rec, w = _windows(train)
    scale = losses.target_scale([rec])
    before = _window_loss(model0, w, ["Qle", "Qh"], scale)
    model1 = spec.train(model0, opts, [train], [val], cfg)
    after = _window_loss(model1, w, ["Qle", "Qh"], scale)
    assert np.isfinite(after)
    assert after < 0.97 * before, f"{name}: training loss {before:.4f} -> {after:.4f}"


def test_energy_conserving_hybrid_closes_energy_balance(site):
    """Rn - H - LE - Qf - dS_R/dt = 0 per step for the hybrid_flux closure with random weights."""
    train, _ = site
    opts = validate_options("hybrid_flux", {"width": 16, "seed": 5})
    model = get_model("hybrid_flux").build(opts)
    # perturb the network so it is far from the physics
    model = jax.tree_util.tree_map(lambda a: a * 30.0 if eqx.is_inexact_array(a) and a.ndim == 2 else a, model)
    rec = _record(train)
    _, out = model.run(rec.forcing, rec.base, rec.state0)
    dt = rec.forcing.time_step_s
    sr = np.asarray(out["SR"])[:, 0]
    sr0 = soil_heat_storage(rec.state0.soil_temp, layer_heat_capacity(rec.base["soil_heat_capacity"], LAYER_THICKNESS))
    sr_prev = np.r_[np.asarray(sr0)[0], sr[:-1]]
    residual = (np.asarray(out["Rnet"]) - np.asarray(out["Qh"]) - np.asarray(out["Qle"]) - np.asarray(out["Qf"]))[:, 0] - (sr - sr_prev) / dt
    assert np.max(np.abs(residual)) < 1e-3
    assert abs(np.mean(residual)) < 0.01
    # the network really moved the fluxes away from the bulk physics
    phys = column.predict_column_model(get_model("physics").build(validate_options("physics", {})), train)
    assert phys["Qle"].shape == (train.n_steps, 1)
    assert np.mean(np.abs(np.asarray(out["Qle"])[:, 0] - phys["Qle"][:, 0])) > 5.0


def test_windows_skip_spinup_and_keep_shapes(site):
    train, _ = site
    _, w = _windows(train)
    n_windows = w["obs"].shape[1]
    assert w["forcing"].t_air.shape == (4 * 48, n_windows)
    assert not bool(w["mask"][:48].any())  # spin-up carries no loss
    batches = windows.batches_of(w, 3)(jax.random.key(1))
    assert all(b["obs"].shape == (4 * 48, 3, 2) for b in batches)
    # every usable window step appears once across the batches
    assert sum(int(b["mask"].sum()) for b in batches) == int(w["mask"].sum())


def test_unknown_option_is_an_error():
    with pytest.raises(Exception, match="unknown_knob"):
        validate_options("hybrid_flux", {"unknown_knob": 1})


@pytest.mark.slow  # ~10-15 s of training
def test_physics_calibrates_per_site_in_a_multi_site_time_split(cfg):
    """Two sites with different hidden closures (virtual grassland and forest): per-site offsets,
    weighted by each column's site, differ between the sites; a hybrid starts from them; a site the
    model was not calibrated for gets the mean of its class's training sites, and says so."""
    recs = []
    for sid, igbp, seed in (("V-GRA", "GRA", 3), ("V-ENF", "ENF", 4)):
        ds = virtual_site(site_id=sid, igbp=igbp, days=16, seed=seed, noise=3.0, start="2020-06-01",
                          latitude=40.0, longitude=-100.0)
        n = ds.sizes["time"]
        d = domain_from_site(ds)
        recs.append((d.with_loss_mask(np.arange(n) < 11 * 48), d.with_loss_mask(np.arange(n) >= 11 * 48)))
    train, val = [r[0] for r in recs], [r[1] for r in recs]
    opts = validate_options("physics", {"epochs": 8, "calibrate": ["rs_scale", "ra_scale"]})
    physics = get_model("physics").train(get_model("physics").build(opts), opts, train, val, cfg)
    assert physics.sites == ("V-ENF", "V-GRA") and physics.site_classes == ("ENF", "GRA")
    rs = np.asarray(physics.deltas["rs_scale"])
    assert rs.shape == (2,) and np.all(rs != 0.0) and abs(rs[0] - rs[1]) > 1e-3, rs
    base = column.site_base_params(train[0].column(0))
    weighted, where = physics.with_site_weights(base, ["V-GRA"], ["GRA"])
    p = physics.site_params(weighted)
    expected = from_unconstrained("rs_scale", to_unconstrained("rs_scale", base["rs_scale"]) + rs[1])
    np.testing.assert_allclose(np.asarray(p["rs_scale"]), np.asarray(expected), rtol=1e-12)
    assert "site_weights" not in p and where == ["calibrated at V-GRA"]
    # new sites: a grassland takes V-GRA's offsets, a cropland (no training site of its class) the mean
    weighted, where = physics.with_site_weights(base, ["V-XYZ", "V-CRO"], ["GRA", "CRO"])
    np.testing.assert_allclose(np.asarray(weighted["site_weights"]), [[0.0, 1.0], [0.5, 0.5]])
    assert where == ["mean of the offsets calibrated at V-GRA (same IGBP class GRA)",
                     "mean of the offsets calibrated at V-ENF, V-GRA (no training site of its class)"]
    hyb_opts = validate_options("hybrid_flux", {"epochs": 1, "width": 8, "calibrate": ["rs_scale", "ra_scale"]})
    hybrid = get_model("hybrid_flux").build(hyb_opts)
    hybrid, spec, start = start_from_physics(hybrid, train, val, cfg, hyb_opts)
    assert hybrid.sites == start.sites == physics.sites
    np.testing.assert_allclose(np.asarray(hybrid.deltas["rs_scale"]) * hybrid.delta_gain,
                               np.asarray(start.deltas["rs_scale"]), rtol=1e-12)
    assert spec.deltas["rs_scale"] is False  # fixed while the network trains


def test_physics_with_nothing_to_calibrate_is_the_default_model(site, cfg):
    """``calibrate: []`` (the uncalibrated LaD reference of the site configs) trains nothing and
    predicts what LaD predicts with its IGBP-table parameters (zero offsets)."""
    train, val = site
    spec = get_model("physics")
    opts = validate_options("physics", {"calibrate": []})
    model = spec.train(spec.build(opts), opts, [train], [val], cfg)
    assert model.deltas == {}
    default = spec.build(validate_options("physics", {}))  # offsets all zero, untrained
    expected, got = column.predict_column_model(default, val), column.predict_column_model(model, val)
    for name in ("Qle", "Qh"):
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-12, atol=1e-9)


def test_site_weights_give_each_site_the_same_say(site):
    """The weighted loss over two sites equals the mean of each site's MSE / sigma_s^2; with one
    site the weights are 1 (the loss is unchanged)."""
    train, _ = site
    rec = _record(train)
    short = replace(rec, site="B", obs=rec.obs * 3.0 + 20.0, mask=rec.mask & (np.arange(len(rec.mask)) < 8 * 48)[:, None])
    recs = [rec, short]
    scale = losses.target_scale(recs)
    weights = losses.site_weights(recs, scale)
    assert [w.shape for w in weights] == [(2,), (2,)]
    rng = np.random.default_rng(0)
    sims = [r.obs + rng.normal(0.0, s, r.obs.shape) for r, s in zip(recs, (5.0, 40.0))]

    def as_batch(items):  # (T, W, K) stacked like windows
        return jnp.asarray(np.nan_to_num(np.stack(items, axis=1)))

    loss = losses.normalised_mse(as_batch(sims), as_batch([r.obs for r in recs]), as_batch([r.mask for r in recs]),
                                 jnp.asarray(scale), jnp.asarray(np.stack(weights)))
    per_site = []
    for r, sim in zip(recs, sims):
        sigma = losses.target_scale([r])
        per_site.append(np.mean([np.mean(((sim - r.obs)[r.mask[:, k], k] / sigma[k]) ** 2) for k in range(2)]))
    np.testing.assert_allclose(float(loss), np.mean(per_site), rtol=1e-10)
    np.testing.assert_array_equal(losses.site_weights([rec], losses.target_scale([rec]))[0], [1.0, 1.0])


def test_loss_weights_follow_the_site_weighting_option(site):
    train, val = site
    recs = [_record(d) for d in (train, val)]
    recs[1] = replace(recs[1], site="B", obs=recs[1].obs * 2.0)
    scale = losses.target_scale(recs)
    assert losses.site_loss_weights(recs, recs, scale, "pooled") == (None, None)
    train_w, val_w = losses.site_loss_weights(recs, recs, scale, "balanced")
    np.testing.assert_allclose(train_w[0], losses.site_weights(recs, scale)[0])
    assert not np.allclose(train_w[0], 1.0)
    with pytest.raises(ValueError, match="site_weighting"):
        losses.site_loss_weights(recs, recs, scale, "by_size")
    with pytest.raises(Exception, match="site_weighting"):
        validate_config({"name": "t", "data": {"sites": [{"virtual": {"days": 24}}]}, "models": [{"name": "physics"}],
                         "training": {"site_weighting": "by_size"}})


@pytest.mark.slow  # ~10-15 s of training
def test_hybrid_trains_on_whole_records_when_asked(site, cfg):
    """``fit: record`` (one step per epoch on the whole record from the model's spun-up state)."""
    train, val = site
    spec = get_model("hybrid_param")
    opts = validate_options("hybrid_param", {"epochs": 6, "lr": 1e-2, "width": 16, "fit": "record",
                                             "physics_init": "default"})  # the network alone moves
    model0 = spec.build(opts)
    rec = _record(train)
    w = windows.record_windows([rec], [model0.spun_up_state(rec.forcing, rec.base)], [column.spinup_period(rec.forcing)])
    scale = losses.target_scale([rec])
    before = _window_loss(model0, w, ["Qle", "Qh"], scale)
    after = _window_loss(spec.train(model0, opts, [train], [val], cfg), w, ["Qle", "Qh"], scale)
    assert after < 0.97 * before, f"record fit: loss {before:.4f} -> {after:.4f}"


def test_a_column_without_land_cover_class_gets_named_defaults(site):
    """An empty IGBP class (a site table without it) runs with the GRA defaults, and the
    provenance says so; a class without LaD parameters is an error naming the column."""
    _, val = site
    ds = val.column(0)
    ds.attrs["igbp"] = ""
    unknown = domain_from_site(ds)
    spec = get_model("physics")
    model = spec.build(validate_options("physics", {"calibrate": []}))
    out = spec.predict(model, unknown)
    ds.attrs["igbp"] = "GRA"
    np.testing.assert_allclose(out["Qle"], spec.predict(model, domain_from_site(ds))["Qle"], rtol=1e-12)
    assert spec.provenance(model, unknown) == ["parameter-table defaults of its IGBP class; IGBP class unknown: GRA defaults"]
    ds.attrs["igbp"] = "SNO"
    with pytest.raises(Exception, match="T-GRA: IGBP class 'SNO' has no LaD parameters"):
        spec.predict(model, domain_from_site(ds))


@pytest.mark.slow
def test_every_model_saves_loads_and_predicts_the_same(site, cfg, tmp_path):
    """Each registered model, trained briefly, reloads from its saved files to the same predictions
    (a hybrid keeps the calibrated offsets it took from the physics, per-site layout included)."""
    from dataclasses import replace as dc_replace

    from hybridlsm.models.registry import available_models, load_saved_model

    from hybridlsm.data.schema import DataError

    train, val = site
    hourly = val.column(0).isel(time=slice(None, None, 2))
    hourly = domain_from_site(hourly.assign_attrs(time_step_s=3600.0))
    ctx = dc_replace(cfg, cache={})
    small = {"lstm": {"hidden_size": 4}, "physics": {"epochs": 2, "calibrate": ["rs_scale", "ra_scale", "albedo"]},
             "ensemble": {"model": "1lin", "size": 2, "bootstrap": True}}
    for name in available_models():
        if name.startswith("regional_"):  # grids only: tests/test_pipeline_regional.py
            continue
        spec = get_model(name)
        extra = {"epochs": 1, "width": 8, "hidden_size": 4, "pretrain_epochs": 1,
                 "calibrate": ["rs_scale", "ra_scale", "albedo"]} if name.startswith(("hybrid", "post", "pre")) else {}
        opts = validate_options(name, small.get(name, extra if name != "fixed_kh" else {"epochs": 2}))
        model = spec.train(spec.build(opts), opts, [train], [val], ctx)
        spec.save(model, opts, tmp_path / name)
        _, _, again = load_saved_model(tmp_path / name)
        before, after = spec.predict(model, val), spec.predict(again, val)
        for flux in ("Qle", "Qh"):
            assert after[flux].shape == (val.n_steps, 1), name
            np.testing.assert_allclose(after[flux], before[flux], rtol=1e-10, atol=1e-8, err_msg=name)
        # a network with memory (an LSTM) learned it at the training step: an hourly forcing is refused
        if name in ("lstm", "hybrid_lstm"):
            assert again.time_steps == (1800.0,), name
            with pytest.raises(DataError, match=rf"T-GRA: {name} was trained on 1800 s time steps and this "
                                                "forcing has 3600 s steps"):
                spec.predict(again, hourly)
        else:  # per-step networks, the physics and the regressions run at any step
            spec.check_domain(again, hourly)
