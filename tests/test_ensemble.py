"""Deep ensembles (``{name: ensemble}``): members differ by seed (and bootstrap days), the prediction
combines them by the law of total variance, members are saved and loaded by their own model."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import equinox as eqx
import jax
import numpy as np
import pytest
import xarray as xr

from hybridlsm.data.virtual import virtual_site
from hybridlsm.domain import domain_from_site
from hybridlsm.models import ensemble
from hybridlsm.models.ensemble import bootstrap_days, combine_members, stacking_weights
from hybridlsm.models.registry import TrainingContext, get_model, load_saved_model, validate_options, validate_run_config


def test_combine_members_by_the_law_of_total_variance():
    a = {"Qh": np.array([1.0, 2.0]), "Qh_sd": np.array([0.5, 0.5]), "Qh_sd_aleatoric": np.array([0.5, 0.5]),
         "Qh_sd_epistemic": np.array([0.0, 0.0]), "Kh": np.array([0.1, 0.1]), "SWE": np.array([0.0, 1.0])}
    b = {"Qh": np.array([3.0, 2.0]), "Qh_sd": np.array([1.5, 1.5]), "Qh_sd_aleatoric": np.array([1.5, 1.5]),
         "Qh_sd_epistemic": np.array([0.0, 0.0]), "Kh": np.array([0.3, 0.1]), "SWE": np.array([2.0, 1.0])}
    out = combine_members([a, b], ("Qh", "Kh"))
    np.testing.assert_allclose(out["Qh"], [2.0, 2.0])
    np.testing.assert_allclose(out["SWE"], [1.0, 1.0])
    # epistemic: variance of the member means (the equal-weight mixture, ddof 0): [1, 0];
    # aleatoric: mean of 0.25 and 2.25
    np.testing.assert_allclose(out["Qh_sd_epistemic"], np.sqrt([1.0, 0.0]))
    np.testing.assert_allclose(out["Qh_sd_aleatoric"], np.sqrt([1.25, 1.25]))
    np.testing.assert_allclose(out["Qh_sd"], np.sqrt([2.25, 1.25]))
    np.testing.assert_allclose(out["Kh_sd"], [0.1, 0.0])  # learned parameters: the members' spread
    # members with MC dropout only: their own epistemic variance adds to the spread of their means
    c = {"Qh": np.array([1.0]), "Qh_sd": np.array([2.0]), "Qh_sd_epistemic": np.array([2.0])}
    d = {"Qh": np.array([3.0]), "Qh_sd": np.array([0.0]), "Qh_sd_epistemic": np.array([0.0])}
    out = combine_members([c, d], ("Qh",))
    np.testing.assert_allclose(out["Qh_sd"], np.sqrt([1.0 + 2.0]))
    assert "Qh_sd_aleatoric" not in out



def test_weighted_members_combine_as_their_weighted_mixture():
    a = {"Qh": np.array([1.0, 2.0]), "Qh_sd": np.array([0.5, 0.5]), "Qh_sd_aleatoric": np.array([0.5, 0.5]),
         "Qh_sd_epistemic": np.array([0.0, 0.0]), "Rnet": np.array([10.0, 20.0])}
    b = {"Qh": np.array([3.0, 2.0]), "Qh_sd": np.array([1.5, 1.5]), "Qh_sd_aleatoric": np.array([1.5, 1.5]),
         "Qh_sd_epistemic": np.array([0.0, 0.0]), "Rnet": np.array([30.0, 20.0])}
    out = combine_members([a, b], ("Qh",), weights=(0.75, 0.25))
    np.testing.assert_allclose(out["Qh"], [1.5, 2.0])
    np.testing.assert_allclose(out["Rnet"], [15.0, 20.0])  # every output with the same weights
    # epistemic: 0.75 (1 - 1.5)^2 + 0.25 (3 - 1.5)^2 = 0.75; aleatoric: 0.75 * 0.25 + 0.25 * 2.25 = 0.75
    np.testing.assert_allclose(out["Qh_sd_epistemic"], np.sqrt([0.75, 0.0]))
    np.testing.assert_allclose(out["Qh_sd_aleatoric"], np.sqrt([0.75, 0.75]))
    np.testing.assert_allclose(out["Qh_sd"], np.sqrt([1.5, 0.75]))
    equal = combine_members([a, b], ("Qh",))
    for k, v in combine_members([a, b], ("Qh",), weights=(0.5, 0.5)).items():
        np.testing.assert_allclose(v, equal[k], rtol=1e-12)
    for bad in ((0.5, 0.6), (1.2, -0.2), (1.0,)):
        with pytest.raises(ValueError, match="weights"):
            combine_members([a, b], ("Qh",), weights=bad)


def test_stacking_weights_minimise_the_validation_error_on_the_simplex():
    rng = np.random.default_rng(0)
    y = rng.normal(100.0, 30.0, 400)
    p1, p2 = y + rng.normal(5.0, 10.0, 400), y + rng.normal(-2.0, 20.0, 400)
    # two members, one target: the best w of w p1 + (1 - w) p2 in closed form
    d = p1 - p2
    w_hand = float(np.sum((y - p2) * d) / np.sum(d * d))
    assert 0.0 < w_hand < 1.0
    w = stacking_weights(np.stack([p1, p2])[:, None], y[None], np.ones((1, 400), bool))
    np.testing.assert_allclose(w, [w_hand, 1.0 - w_hand], atol=1e-4)
    # only usable values count: a member perfect there gets all the weight, whatever it does elsewhere
    usable = np.arange(400) < 200
    p3 = np.where(usable, y, y + 500.0)
    w = stacking_weights(np.stack([p1, p3])[:, None], y[None], usable[None])
    np.testing.assert_allclose(w, [0.0, 1.0], atol=1e-4)
    # an unhelpful member gets none (the optimum is on the simplex's edge), weights sum to 1
    w = stacking_weights(np.stack([p1, p2, y + 1000.0])[:, None], y[None], np.ones((1, 400), bool))
    assert w[2] < 1e-6 and w.sum() == pytest.approx(1.0) and np.all(w >= 0.0)
    # each target is scaled by its observations' SD: a target in other units moves nothing
    two = stacking_weights(np.stack([np.stack([p1, 1e3 * p1]), np.stack([p2, 1e3 * p2])]),
                           np.stack([y, 1e3 * y]), np.ones((2, 400), bool))
    np.testing.assert_allclose(two, [w_hand, 1.0 - w_hand], atol=1e-4)
    with pytest.raises(ValueError, match="no target has usable"):
        stacking_weights(np.stack([p1, p2])[:, None], y[None], np.zeros((1, 400), bool))


def test_options_check_the_members_and_give_each_its_seed():
    opts = validate_options("ensemble", {"model": "hybrid_param", "size": 3, "options": {"width": 8},
                                         "targets": ["Qh"]})  # fmt: skip
    assert opts.options["width"] == 8 and opts.options["targets"] == ["Qh"] and opts.options["seed"] == 0
    assert [opts.member(k).seed for k in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="unknown model"):
        validate_options("ensemble", {"model": "nope"})
    with pytest.raises(ValueError, match="cannot be ensembles"):
        validate_options("ensemble", {"model": "ensemble"})
    with pytest.raises(ValueError, match=r"options.width: Input should be greater than or equal to 1 \(got 0\)"):
        validate_options("ensemble", {"model": "hybrid_param", "options": {"width": 0}})
    # members that would be identical (no seed, no bootstrap) are refused; a bootstrap makes them differ
    with pytest.raises(ValueError, match="a deep ensemble of gbm, which has no seed option it uses, without bootstrap"):
        validate_options("ensemble", {"model": "gbm", "size": 3})
    assert validate_options("ensemble", {"model": "gbm", "size": 3, "bootstrap": True}).size == 3
    # ... and so are those of a model that learns nothing from the data (bootstrap or not)
    for model, options in (("regional_fixed_kh", {}), ("physics", {"calibrate": []})):
        for bootstrap in (False, True):
            with pytest.raises(ValueError, match=f"a deep ensemble of {model} with these options learns nothing"):
                validate_options("ensemble", {"model": model, "options": options, "bootstrap": bootstrap})
    with pytest.raises(ValueError, match=r"member 1 trains with seed \+ 1, above the largest seed"):
        validate_options("ensemble", {"model": "lstm", "size": 2, "options": {"seed": 2**32 - 1}})
    with pytest.raises(ValueError, match="members\\[0\\].options.hidden_size: true is not a number"):
        validate_options("ensemble", {"members": [{"model": "lstm", "options": {"hidden_size": True}}, {"model": "gbm"}]})


def test_bootstrap_keeps_a_resample_of_the_training_days():
    d = domain_from_site(virtual_site(site_id="B", days=40, seed=1))
    mask = np.zeros((d.n_steps, 1), bool)
    mask[48 * 2 : 48 * 32] = True  # 30 training days
    d = d.with_loss_mask(mask)
    b = bootstrap_days(d, np.random.default_rng(0))
    kept = b.data["loss_mask"].values[:, 0]
    assert not (kept & ~mask[:, 0]).any()  # only training steps
    days = np.unique(np.flatnonzero(kept) // 48)
    assert 12 <= days.size <= 26  # about 63 % of 30 days
    assert all(kept[48 * k : 48 * (k + 1)].all() for k in days)  # whole days


CONFIG = """
name: ens
data:
  sites:
    - {virtual: {site_id: ENS, days: 16, seed: 2, noise: 5.0}}
  split: {train: 0.6, val: 0.2, test: 0.2}
  spinup_days: 1
  window_days: 3
models:
  - name: ensemble
    label: hybrid_param_ens
    options: {model: hybrid_param, size: 2, bootstrap: true,
              options: {width: 8, epochs: 2, physics_init: default, calibrate: [], likelihood: gaussian}}
training: {epochs: 2, batch_windows: 8}
output: {run_dir: RUNS}
"""


@pytest.mark.slow  # trains two small hybrids
def test_an_ensemble_run_predicts_with_spread_and_reloads(run_config):
    run = run_config(CONFIG, "ens")
    saved = run / "models" / "hybrid_param_ens" / "all"
    assert (saved / "member_0" / "model.json").is_file() and (saved / "member_1" / "model.json").is_file()
    pred = xr.open_dataset(run / "predictions" / "ENS" / "hybrid_param_ens.nc")
    for t in ("Qh", "Qle"):
        sd, epi, ale = (pred[f"{t}{s}"].values for s in ("_sd", "_sd_epistemic", "_sd_aleatoric"))
        np.testing.assert_allclose(sd**2, epi**2 + ale**2, rtol=1e-6)
        assert np.median(epi) > 0.0  # the members differ
    spec, opts, model = load_saved_model(saved)
    assert spec.name == "ensemble" and len(model.members) == 2
    assert json.loads((run / "timings.json").read_text())["all/hybrid_param_ens"]["members"] == "vmapped"
    d = domain_from_site(virtual_site(site_id="ENS", days=16, seed=2, noise=5.0))
    again = spec.predict(model, d)
    np.testing.assert_allclose(again["Qh"], pred["Qh"].values[:, None], rtol=1e-5, atol=1e-3)
    # a damaged member is named
    (saved / "member_1" / "model.eqx").write_bytes(b"garbage")
    with pytest.raises(Exception, match="member_1"):
        load_saved_model(saved)
    assert get_model("ensemble").targets


def test_multi_model_options_check_every_member():
    opts = validate_options("ensemble", {"members": [{"model": "hybrid_param", "options": {"width": 8}},
                                                     {"model": "hybrid_flux"}], "targets": ["Qh"]})  # fmt: skip
    assert opts.size == 2 and opts.targets == ["Qh"]
    assert [opts.member_model(k) for k in range(2)] == ["hybrid_param", "hybrid_flux"]
    assert opts.member(0).width == 8 and opts.member(1).targets == ["Qh"]
    assert opts.member(0).seed == opts.member(1).seed == 0  # each as it would train alone
    again = validate_options("ensemble", opts.model_dump(mode="json"))  # a saved model.json reloads
    assert again == opts
    for bad, match in ((({"model": "hybrid_param", "members": [{"model": "hybrid_flux"}] * 2}), "either model"),
                       ({}, "either model"),
                       ({"members": [{"model": "hybrid_flux"}]}, "at least 2"),
                       ({"members": [{"model": "hybrid_flux"}, {"model": "nope"}]}, "unknown model"),
                       ({"members": [{"model": "hybrid_flux"}, {"model": "ensemble"}]}, "cannot be ensembles"),
                       ({"members": [{"model": "hybrid_flux"}] * 2, "options": {"width": 8}}, "under members"),
                       ({"members": [{"model": "hybrid_flux"}] * 2, "size": 3}, "leave size out"),
                       ({"members": [{"model": "hybrid_flux"}] * 2, "vmap": True}, "different models"),
                       ({"members": [{"model": "hybrid_flux"}, {"model": "hybrid_param", "options": {"widht": 8}}]},
                        r"members\[1\].options: unknown key 'widht'; allowed keys of hybrid_param: calibrate, "),
                       ({"members": [{"model": "hybrid_flux", "options": {"targets": ["Qh"]}},
                                     {"model": "hybrid_param", "options": {"targets": ["Qle"]}}]}, "different targets")):
        with pytest.raises(ValueError, match=match):
            validate_options("ensemble", bad)


MULTI = """
name: multi
data:
  sites:
    - {virtual: {site_id: MM, days: 16, seed: 2, noise: 5.0}}
  split: {train: 0.6, val: 0.2, test: 0.2}
  spinup_days: 1
  window_days: 3
models:
  - {name: hybrid_param, options: &p {width: 8, epochs: 2, physics_init: default, calibrate: []}}
  - {name: hybrid_flux, options: &f {width: 8, epochs: 2, physics_init: default, calibrate: []}}
  - name: ensemble
    label: couplings
    options: {members: [{model: hybrid_param, options: *p}, {model: hybrid_flux, options: *f}]}
  - name: ensemble
    label: stacked
    options: {members: [{model: hybrid_param, options: *p}, {model: hybrid_flux, options: *f}], weights: validation}
training: {epochs: 2, batch_windows: 8}
output: {run_dir: RUNS}
"""


@pytest.mark.slow  # trains two small hybrids
def test_a_multi_model_ensemble_takes_the_runs_trained_members(run_config):
    """The ensemble of the run's hybrid_param and hybrid_flux is not trained again: its prediction is
    the mean of theirs, its epistemic SD half their difference; it saves, reloads and predicts."""
    run = run_config(MULTI, "multi")
    timings = json.loads((run / "timings.json").read_text())
    assert "taken from this run, already trained: hybrid_param, hybrid_flux" in timings["all/couplings"]["members"]
    assert timings["all/couplings"]["train_s"] < 0.2 * timings["all/hybrid_param"]["train_s"]
    pred = {m: xr.open_dataset(run / "predictions" / "MM" / f"{m}.nc") for m in ("hybrid_param", "hybrid_flux", "couplings")}
    for t in ("Qh", "Qle"):
        a, b, ens = (pred[m][t].values for m in ("hybrid_param", "hybrid_flux", "couplings"))
        assert np.max(np.abs(a - b)) > 1.0  # the members differ
        np.testing.assert_allclose(ens, (a + b) / 2, rtol=1e-6, atol=1e-4)
        np.testing.assert_allclose(pred["couplings"][f"{t}_sd"].values, np.abs(a - b) / 2, rtol=1e-5, atol=1e-4)
    spec, opts, model = load_saved_model(run / "models" / "couplings" / "all")
    assert model.models == ("hybrid_param", "hybrid_flux")
    d = domain_from_site(virtual_site(site_id="MM", days=16, seed=2, noise=5.0))
    np.testing.assert_allclose(spec.predict(model, d)["Qle"], pred["couplings"]["Qle"].values[:, None],
                               rtol=1e-5, atol=1e-3)
    # the stacked ensemble: the same members, weights chosen on validation, every output weighted alike
    assert "weights chosen on validation: hybrid_param" in timings["all/stacked"]["members"]
    _, _, stacked = load_saved_model(run / "models" / "stacked" / "all")
    w = np.asarray(stacked.weights)
    assert w.shape == (2,) and np.all(w >= 0.0) and w.sum() == pytest.approx(1.0)
    stack = xr.open_dataset(run / "predictions" / "MM" / "stacked.nc")
    for t in ("Qh", "Qle", "Rnet", "Qg"):
        a, b = (pred[m][t].values for m in ("hybrid_param", "hybrid_flux"))
        np.testing.assert_allclose(stack[t].values, w[0] * a + w[1] * b, rtol=1e-5, atol=1e-3)
    # its energy balance closes as its members' do
    members_residual = max(float(np.nanmax(np.abs(pred[m]["Rnet"] - pred[m]["Qh"] - pred[m]["Qle"] - pred[m]["Qg"])))
                           for m in ("hybrid_param", "hybrid_flux"))
    residual = np.abs(stack["Rnet"] - stack["Qh"] - stack["Qle"] - stack["Qg"]).values
    assert np.nanmax(residual) <= members_residual + 1e-3


DEEP = """
name: deep
data:
  sites:
    - {virtual: {site_id: DD, days: 12, seed: 3, noise: 5.0}}
  split: {train: 0.6, val: 0.2, test: 0.2}
  spinup_days: 1
  window_days: 3
models:
  - {name: ensemble, label: ens2, options: {model: hybrid_flux, size: 2, vmap: false, options: &f {width: 8, epochs: 2, physics_init: default, calibrate: []}}}
  - {name: ensemble, label: ens3, options: {model: hybrid_flux, size: 3, vmap: false, options: *f}}
training: {epochs: 2, batch_windows: 8}
output: {run_dir: RUNS}
"""


@pytest.mark.slow  # trains three small hybrids
def test_a_larger_deep_ensemble_takes_the_members_a_smaller_one_trained(run_config):
    """Deep ensembles of 2 and 3 seeds of one model: the second trains only its third member; its
    first two are the first ensemble's (same saved weights), the third differs."""
    run = run_config(DEEP, "deep")
    timings = json.loads((run / "timings.json").read_text())
    assert "already trained" not in timings["all/ens2"]["members"]
    assert timings["all/ens3"]["members"].endswith("taken from this run, already trained: hybrid_flux, hybrid_flux")
    _, _, two = load_saved_model(run / "models" / "ens2" / "all")
    _, _, three = load_saved_model(run / "models" / "ens3" / "all")
    leaves = lambda m: [np.asarray(x) for x in jax.tree_util.tree_leaves(eqx.filter(m, eqx.is_inexact_array))]  # noqa: E731
    for k in range(2):
        for a, b in zip(leaves(two.members[k]), leaves(three.members[k]), strict=True):
            np.testing.assert_array_equal(a, b)
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(leaves(three.members[1]), leaves(three.members[2]))) > 1e-3


# ------------------------------------------------------------------ vmapped members


@pytest.fixture(scope="module")
def tiny():
    """A 14-day virtual site: days 1-9 train, days 10-13 validate; 3 epochs of 2-day windows."""
    ds = virtual_site(site_id="V", days=14, seed=3, noise=5.0)
    n = ds.sizes["time"]
    train, val = ds.copy(), ds.copy()
    train["loss_mask"] = ("time", np.r_[np.zeros(48, bool), np.ones(9 * 48, bool), np.zeros(n - 10 * 48, bool)])
    val["loss_mask"] = ("time", np.r_[np.zeros(10 * 48, bool), np.ones(n - 10 * 48, bool)])
    run = validate_run_config({"name": "t", "data": {"sites": [{"virtual": {"days": 14}}], "spinup_days": 1,
                                                     "window_days": 2},
                               "models": [{"name": "physics"}],
                               "training": {"epochs": 3, "batch_windows": 2, "patience": 50}})  # fmt: skip
    return [domain_from_site(train)], [domain_from_site(val)], TrainingContext.from_config(run, progress=False)


def _ensemble_options(**kw):
    members = {"width": 8, "depth": 1, "physics_init": "default", "calibrate": [], "dropout": 0.1, "mc_samples": 4,
               "discovery": False}
    return validate_options("ensemble", {"model": "hybrid_param", "size": 3, "options": members, **kw})


def _leaves(model):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array))]


@pytest.mark.slow  # vmapped and sequential ensemble training; in make test, not test-fast
def test_vmapped_members_equal_the_sequential_ones(tiny):
    """Three hybrid_param members with dropout trained together (one vmapped update) equal, member
    by member, the members trained one after the other (same seeds, same batches) to rounding; the
    ensemble's Qh_sd is combine_members of its members' predictions. Both trainings are timed."""
    train, val, ctx = tiny
    spec = get_model("ensemble")
    trained, seconds = {}, {}
    for vmap in (False, True):
        opts = _ensemble_options(vmap=vmap)
        t0 = time.perf_counter()
        trained[vmap] = spec.train(spec.build(opts), opts, train, val, ctx)
        seconds[vmap] = time.perf_counter() - t0
    print(f"3 tiny hybrid_param members, 3 epochs: sequential {seconds[False]:.1f} s, vmapped {seconds[True]:.1f} s")
    assert trained[True].trained == "vmapped" and trained[False].trained == "one after the other (vmap: false)"
    init = _leaves(spec.build(_ensemble_options()).members[0])
    for k in range(3):
        for a, b in zip(_leaves(trained[True].members[k]), _leaves(trained[False].members[k])):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    # the members trained, and differently (seeds, dropout keys)
    assert max(np.max(np.abs(a - b)) for a, b in zip(_leaves(trained[True].members[0]), init)) > 1e-3
    assert max(np.max(np.abs(a - b)) for a, b in zip(*(_leaves(trained[True].members[k]) for k in (1, 2)))) > 1e-3
    domain = val[0]
    pred = {vmap: spec.predict(m, domain) for vmap, m in trained.items()}
    member = get_model("hybrid_param")
    combined = combine_members([member.predict(m, domain) for m in trained[True].members], ("Qh",))
    np.testing.assert_allclose(pred[True]["Qh_sd"], combined["Qh_sd"], rtol=1e-12)
    np.testing.assert_allclose(pred[True]["Qh_sd"], pred[False]["Qh_sd"], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(pred[True]["Qh"], pred[False]["Qh"], rtol=1e-9, atol=1e-9)
    assert np.median(pred[True]["Qh_sd"]) > 0.1  # W m-2: the members disagree


def test_the_vmap_option_says_which_path_and_why(tiny, monkeypatch):
    train, _, ctx = tiny
    spec = get_model("ensemble")
    assert spec.sequential_reason(_ensemble_options(), train, ctx) is None  # auto: vmapped
    assert spec.sequential_reason(_ensemble_options(vmap=False), train, ctx) == "vmap: false"
    with pytest.raises(ValueError, match="lstm's members cannot train together"):
        validate_options("ensemble", {"model": "lstm", "vmap": True})
    lstm = validate_options("ensemble", {"model": "lstm"})
    assert spec.sequential_reason(lstm, train, ctx) == "lstm trains its members one after the other"
    two_phase = replace(ctx, training=ctx.training.model_copy(update={"two_phase": ctx.training.two_phase.model_copy(
        update={"enabled": True, "phase1_epochs": 2, "phase2_epochs": 1})}))
    assert "two-phase" in spec.sequential_reason(_ensemble_options(), train, two_phase)
    with pytest.raises(ValueError, match="vmap: true: two-phase"):
        spec.sequential_reason(_ensemble_options(vmap=True), train, two_phase)
    # 64 KiB free; needed: 3 members x 2 windows x 144 steps x 512 B (float64) = 432 KiB
    monkeypatch.setattr(ensemble, "available_memory", lambda: 2**16)
    assert spec.sequential_reason(_ensemble_options(), train, ctx) == (
        "the stacked members need about 0.00041 GiB, more than half the 6.1e-05 GiB free")
    assert spec.sequential_reason(_ensemble_options(vmap=True), train, ctx) is None  # true: not checked
