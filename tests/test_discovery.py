"""Discovery: the branched exchange law as physics, the fits of ``evaluation.discovery`` against known
laws, the twin's truth, and ``hybridlsm discover`` end to end on a tiny twin run."""

from __future__ import annotations

import json

from dataclasses import replace

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from typer.testing import CliRunner

from hybridlsm.cli import app
from hybridlsm.data.virtual import TWIN_LAW, tower_gaps, virtual_site
from hybridlsm.evaluation.discovery import (
    DiscoveryError,
    compare_forms,
    fit_abs_ri_law,
    fit_power_law,
    sparse_search,
)
from hybridlsm.physics import AbstractLandModel, LaDModel, default_params, rollout, synthetic_forcing
from hybridlsm.physics.exchange import ExchangeLaw

GRASS = {"igbp": "GRA", "canopy_height": 0.5, "measurement_height": 3.0}


@pytest.fixture(scope="module")
def twin():
    """60 days of the twin: truth K_h from TWIN_LAW, noise and 20 % tower gaps on the fluxes."""
    return virtual_site(site_id="TWIN", truth="kh_law", days=60, start="2020-06-01", seed=3, noise=10.0,
                        gap_fraction=0.2)


def test_law_run_as_physics_reports_its_k_h_and_conserves_energy_and_water():
    forcing = synthetic_forcing(6, n_sites=2, start_day=150.0)
    params = default_params(["GRA", "ENF"])
    model = LaDModel(exchange_law=ExchangeLaw(TWIN_LAW))
    state0 = model.init_state(params, forcing)
    _, out = jax.jit(rollout)(model, params, forcing, state0)
    out = jax.tree_util.tree_map(np.asarray, out)
    # K_h = (z - d) / r_a is the law's at the step's wind and Ri (ra_scale = 1 by default)
    law = ExchangeLaw(TWIN_LAW)
    np.testing.assert_allclose(out["Kh"], np.asarray(law(np.asarray(forcing.wind), out["RiB"])), rtol=1e-10)
    assert (out["RiB"] > 0.05).any() and (out["RiB"] < -0.05).any()  # both branches are used
    # the closure conserves: Rn - H - LE - Qf = dS/dt to 1e-3 W m-2, water to 1e-6 mm
    from test_physics_lad import energy_residual, water_residual

    run = dict(out=out, params=params, state0=state0, forcing=forcing, dt=forcing.time_step_s)
    assert np.max(np.abs(energy_residual(run)[0])) <= 1e-3
    assert np.max(np.abs(water_residual(run))) <= 1e-6
    # and it is not the Louis scheme
    _, louis = jax.jit(rollout)(LaDModel(), params, forcing, state0)
    assert np.max(np.abs(np.asarray(louis["Qh"]) - out["Qh"])) > 10.0


def test_twin_has_its_truth_noise_and_tower_gaps(twin):
    assert {"Kh_true", "RiB_true"} <= set(twin.data_vars)
    assert twin.attrs["gap_fraction"] == pytest.approx(0.2, abs=0.02)
    missing = np.isnan(twin["Qh"].values)
    assert missing.mean() == pytest.approx(0.2, abs=0.02)
    np.testing.assert_array_equal(missing, np.isnan(twin["Qle"].values))
    assert not np.isnan(twin["Rnet"].values).any()
    runs = np.diff(np.flatnonzero(np.diff(np.r_[0, missing.astype(int), 0])))[::2]  # gap lengths
    assert runs.max() > 10  # blocks, not scattered steps
    gaps = tower_gaps(1000, 0.3, np.random.default_rng(0), max_length=20)
    assert 0.3 <= gaps.mean() < 0.33


def test_fits_recover_the_twin_law_from_its_true_series(twin):
    kh, wind, ri = twin["Kh_true"].values, twin["Wind"].values, twin["RiB_true"].values
    fit = fit_power_law(kh, wind, ri)
    for branch, (a, b, c) in TWIN_LAW.items():
        assert fit[branch]["a"] == pytest.approx(a, rel=1e-3)  # the sigmoid join of the branches at Ri = 0
        assert fit[branch]["b"] == pytest.approx(b, rel=1e-4)
        assert fit[branch]["c"] == pytest.approx(c, rel=1e-4)
    assert fit["scores"]["r2"] > 0.999999
    table, fits = compare_forms(kh, wind, ri, GRASS)
    assert list(table["form"])[0] == "power_law" and table["delta_aic"].iloc[0] == 0.0
    assert set(table["form"]) == {"power_law", "zhang_abs_ri", "businger_dyer", "louis"}
    assert (table["n"] == fit["scores"]["n"]).all()  # every form on the same steps
    # one law in |Ri| cannot follow a K_h that falls with stable Ri and rises with unstable |Ri|
    assert fits["zhang_abs_ri"]["scores"]["r2"] < 0.9
    sparse = sparse_search(kh, wind, ri)
    assert {"log_u", "log_ri"} <= set(sparse["stable"]["terms"])
    assert sparse["stable"]["terms"]["log_ri"] == pytest.approx(-0.32, abs=0.02)
    assert sparse["stable"]["cv_r2_log"] > 0.999


def test_fits_against_hand_computations():
    rng = np.random.default_rng(1)
    n = 400
    wind = rng.uniform(0.5, 8.0, n)
    ri = np.where(rng.random(n) < 0.5, 1, -1) * 10 ** rng.uniform(-1.5, 0.0, n)
    log_u, log_ri = 0.5 * np.log(wind**2 + 0.01), 0.5 * np.log(ri**2 + 1e-4)
    noise = rng.normal(0.0, 0.05, n)
    kh = np.exp(np.where(ri > 0, np.log(0.01) + 1.1 * log_u - 0.4 * log_ri, np.log(0.05) + 0.8 * log_u + 0.3 * log_ri)
                + noise)  # fmt: skip
    fit = fit_power_law(kh, wind, ri)
    # OLS by hand on the stable half
    s = ri > 0
    x = np.column_stack([np.ones(s.sum()), log_u[s], log_ri[s]])
    beta = np.linalg.solve(x.T @ x, x.T @ np.log(kh[s]))
    assert fit["stable"]["b"] == pytest.approx(beta[1], rel=1e-10) and fit["stable"]["c"] == pytest.approx(beta[2], rel=1e-10)
    assert abs(fit["stable"]["b"] - 1.1) < 4 * fit["stable"]["b_se"] and fit["stable"]["b_se"] < 0.02
    # AIC = n ln(RSS/n) + 2k on the log residuals
    resid = np.empty(n)
    for branch, where in (("stable", s), ("unstable", ~s)):
        f = fit[branch]
        resid[where] = np.log(kh[where]) - (np.log(f["a"]) + f["b"] * log_u[where] + f["c"] * log_ri[where])
    assert fit["scores"]["aic"] == pytest.approx(n * np.log(resid @ resid / n) + 12, rel=1e-10)
    # the |Ri| law is one OLS over both halves
    pooled = fit_abs_ri_law(kh, wind, ri)
    x = np.column_stack([np.ones(n), log_u, log_ri])
    beta = np.linalg.solve(x.T @ x, x.T @ np.log(kh))
    assert pooled["b"] == pytest.approx(beta[1], rel=1e-10)
    # near-neutral steps are left out; too few steps is a clear error
    ri_near = np.full(n, 1e-3)
    with pytest.raises(DiscoveryError, match="stable branch has 0 steps"):
        fit_power_law(kh, wind, ri_near)


def test_the_schemes_fit_one_scale_factor():
    rng = np.random.default_rng(2)
    wind, ri = rng.uniform(1, 6, 300), rng.uniform(-1, 0.15, 300)
    from hybridlsm.evaluation.discovery import scheme_kh

    kh = 2.5 * scheme_kh(wind, ri, "louis", **{"igbp": "GRA", "canopy_height": 0.5, "measurement_height": 3.0})
    table, fits = compare_forms(kh, wind, ri, GRASS)
    assert fits["louis"]["alpha"] == pytest.approx(2.5, rel=1e-8)
    assert fits["louis"]["scores"]["r2"] == pytest.approx(1.0, abs=1e-10)
    assert table.iloc[0]["form"] == "louis"  # exact with k = 1: the lowest AIC
    # pooled sites: each step with its own site's roughness and heights
    forest = scheme_kh(wind, ri, "louis", "ENF", 20.0, 30.0)
    half = np.arange(wind.size) < 150
    pooled = np.where(half, 2.5 * scheme_kh(wind, ri, "louis", "GRA", 0.5, 3.0), 2.5 * forest)
    site = {"igbp": np.where(half, "GRA", "ENF"), "canopy_height": np.where(half, 0.5, 20.0),
            "measurement_height": np.where(half, 3.0, 30.0)}
    _, fits = compare_forms(pooled, wind, ri, site)
    assert fits["louis"]["alpha"] == pytest.approx(2.5, rel=1e-8)
    assert not np.allclose(forest, kh / 2.5)  # the geometry matters


TINY = """
name: twin-tiny
data:
  sites:
    - {virtual: {site_id: TWIN, days: 40, start: 2020-06-01, seed: 3, noise: 5.0, truth: kh_law}}
  split: {blocked: {block: 4 d, test_every: 4, val_every: 4, offset: 0, gap: 0 d}}
  spinup_days: 1
  window_days: 3
models:
  - {name: physics, options: {epochs: 2, calibrate: [rs_scale]}}
  - {name: hybrid_param, options: {stability_inputs: true, physics_init: default, calibrate: [], epochs: 3}}
training: {epochs: 3, batch_windows: 8, two_phase: {enabled: true, phase1_epochs: 2, phase2_epochs: 1}}
output: {run_dir: RUNS}
"""


@pytest.mark.slow
def test_discover_end_to_end_on_a_tiny_twin_run(tmp_path):
    cfg = tmp_path / "twin.yaml"
    cfg.write_text(TINY.replace("RUNS", str(tmp_path / "runs")))
    runner = CliRunner()
    result = runner.invoke(app, ["run", str(cfg)])
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "twin-tiny"
    assert "Kh_true" in xr.open_dataset(run / "predictions/TWIN/obs.nc")
    result = runner.invoke(app, ["discover", str(run)])
    assert result.exit_code == 0, result.output
    out = run / "discovery"
    forms = pd.read_csv(out / "forms.csv")
    assert set(forms["form"]) == {"power_law", "zhang_abs_ri", "businger_dyer", "louis"}
    assert set(forms["model"]) == {"hybrid_param"}  # physics learns no K_h
    meta = json.loads((out / "discovery.json").read_text())
    entry = meta["models"]["hybrid_param"]
    assert set(entry["co_trained_law"]) == {"stable", "unstable"}
    gra = entry["classes"]["GRA"]
    assert gra["chosen_form"] in ("power_law", "zhang_abs_ri") and set(gra["chosen_law"]) == {"stable", "unstable"}
    assert -1.0 <= gra["r2_kh_true_test_steps"] <= 1.0
    skill = pd.read_csv(out / "skill.csv")
    assert {"hybrid_param", "physics", "hybrid_param_law"} <= set(skill["model"])
    law_run = xr.open_dataset(out / "predictions/TWIN/hybrid_param_law.nc")
    assert np.isfinite(law_run["Qh"].values).all()
    # the law's file is the chosen law, refitted online, run as physics: its K_h is the law's at each step
    assert entry["offline_law"] == gra["chosen_law"] and set(entry["online_law"]) == {"stable", "unstable"}
    assert entry["online_law"] != entry["offline_law"]
    law = ExchangeLaw({b: (c["a"], c["b"], c["c"]) for b, c in entry["online_law"].items()})
    wind = xr.open_dataset(run / "predictions/TWIN/obs.nc")["Wind"].values
    np.testing.assert_allclose(law_run["Kh"].values, np.asarray(law(wind, law_run["RiB"].values)), rtol=2e-4)
    assert "Discovered exchange law" in (run / "report.html").read_text()
    assert (out / "forms.csv.sha256").is_file()
    # discovered again: the folder is replaced whole (an earlier discovery's plots and law runs
    # stayed, and the report showed them), and a killed discover's hidden folder is cleared
    (out / "plots" / "gone_GRA.png").write_bytes((out / "plots" / "hybrid_param_GRA.png").read_bytes())
    (out / "predictions" / "TWIN" / "gone_law.nc").write_bytes(b"stale")
    (run / ".discovery.partial").mkdir()
    out.rename(run / ".discovery.replaced")  # as if stopped between the swap's two renames: taken back
    result = runner.invoke(app, ["discover", str(run), "--refit-epochs", "0"])
    assert result.exit_code == 0, result.output
    assert not (out / "plots" / "gone_GRA.png").exists() and not (out / "predictions" / "TWIN" / "gone_law.nc").exists()
    assert (out / "plots" / "hybrid_param_GRA.png").is_file() and not list(run.glob(".discovery.*"))
    assert "gone_GRA" not in (run / "report.html").read_text()


def test_discover_refuses_what_it_cannot_fit(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["discover", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "no such run directory" in result.output
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["discover", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "predictions" in result.output


@pytest.mark.slow  # kept out of make test-fast (a few seconds)
def test_with_exchange_law_replaces_only_the_learned_k_h():
    """The symbolic step: hybrid_param's network keeps setting r_s, the law sets K_h (r_a multiplier 1)."""
    from hybridlsm.models.registry import get_model, validate_options

    spec = get_model("hybrid_param")
    model = spec.build(validate_options("hybrid_param", {"stability_inputs": True, "calibrate": ["ra_scale", "rs_scale"]}))
    model = replace(eqx_perturb(model), deltas={"ra_scale": jnp.asarray(0.1), "rs_scale": jnp.asarray(0.2)})  # calibrated
    law = ExchangeLaw(TWIN_LAW)
    swapped = model.with_exchange_law(law)
    assert "ra_scale" not in swapped.deltas and "rs_scale" in swapped.deltas and swapped.law is None
    forcing = synthetic_forcing(3, n_sites=1, start_day=150.0)
    params = default_params(["GRA"])
    _, out = jax.jit(rollout)(swapped.land, params, forcing)
    _, net = jax.jit(rollout)(model.land, params, forcing)
    np.testing.assert_array_equal(np.asarray(out["ra_mult"]), 1.0)
    np.testing.assert_allclose(np.asarray(out["Kh"]), np.asarray(law(np.asarray(forcing.wind), out["RiB"])), rtol=1e-10)
    assert np.ptp(np.asarray(out["rs_mult"])) > 0.01  # the r_s network still acts
    assert np.max(np.abs(np.asarray(net["ra_mult"]) - 1.0)) > 0.01  # and the original learned r_a
    with pytest.raises(NotImplementedError, match="no exchange coefficient"):
        _NoExchange().with_exchange_law(law)


def eqx_perturb(model):
    """The model with its network's output layer made non-trivial (an untrained one returns ~1)."""
    import equinox as eqx

    last = model.land.mlp.layers[-1]
    return eqx.tree_at(lambda m: m.land.mlp.layers[-1].weight, model, last.weight * 100.0)


class _NoExchange(AbstractLandModel):
    """A land model without an exchange coefficient."""

    def init_state(self, params, forcing):
        return None

    def step(self, state, forcing, params, key=None):
        return state, None

    def observe(self, state, fluxes):
        return {}


@pytest.mark.slow  # builds and saves a hybrid (a few seconds)
def test_a_model_saved_with_another_law_shape_is_a_clear_error(tmp_path):
    """A hybrid saved by an older version (its co-trained law had one branch) is refused naming the
    file and what to do, not with Equinox's traceback."""
    import equinox as eqx

    from hybridlsm.models.registry import SavedModelError, get_model, load_saved_model, validate_options

    spec = get_model("hybrid_param")
    opts = validate_options("hybrid_param", {"width": 8})
    model = spec.build(opts)
    old = eqx.tree_at(lambda m: (m.law.log_a, m.law.b, m.law.c), model, (jnp.zeros(()), jnp.ones(()), jnp.zeros(())))
    spec.save(old, opts, tmp_path / "m")
    with pytest.raises(SavedModelError, match=r"model\.eqx: .*another version of hybridlsm.*--resume"):
        load_saved_model(tmp_path / "m")


LOSO = """
name: loso-tiny
data:
  sites:
    - {virtual: {site_id: TA, days: 24, start: 2020-06-01, seed: 3, noise: 5.0, truth: kh_law}}
    - {virtual: {site_id: TB, days: 24, start: 2020-06-01, seed: 4, noise: 5.0, truth: kh_law}}
    - {virtual: {site_id: TC, days: 24, start: 2020-06-01, seed: 5, noise: 5.0, truth: kh_law}}
  split: {leave_one_site_out: true, val: 0.25}
  spinup_days: 1
  window_days: 3
models:
  - {name: physics, options: {calibrate: []}}
  - {name: hybrid_param, options: {stability_inputs: true, physics_init: default, calibrate: [], epochs: 2}}
training: {epochs: 2, batch_windows: 8}
output: {run_dir: RUNS}
"""


@pytest.mark.slow  # a three-fold run (~1 min)
def test_discover_fits_each_fold_of_a_leave_one_site_out_run(tmp_path, run_config):
    import shutil

    from hybridlsm.discover import discover
    from hybridlsm.evaluation.discovery import fit_abs_ri_law
    from hybridlsm.models.column import predict_column_model
    from hybridlsm.models.registry import load_saved_model
    from hybridlsm.predict import PredictError
    from hybridlsm.validate import site_domains

    run = run_config(LOSO, "loso-tiny")
    result = CliRunner().invoke(app, ["discover", str(run), "--refit-epochs", "0"])  # the offline laws re-run
    assert result.exit_code == 0, result.output
    out = run / "discovery"
    folds = pd.read_csv(out / "folds.csv")
    assert not folds["refit"].any()
    assert list(folds["fold"]) == ["loso-TA", "loso-TB", "loso-TC"] and list(folds["held_out"]) == ["TA", "TB", "TC"]
    assert list(folds["training_sites"]) == ["TB TC", "TA TC", "TA TB"]
    meta = json.loads((out / "discovery.json").read_text())
    entry = meta["models"]["hybrid_param"]

    # each fold's fit is on the K_h its own model learned at its own training sites (train + val steps)
    obs = {s: xr.load_dataset(run / f"predictions/{s}/obs.nc") for s in ("TA", "TB", "TC")}
    domains = site_domains(run, obs)
    _, _, model = load_saved_model(run / "models/hybrid_param/loso-TA")
    series = [predict_column_model(model, domains[s]) for s in ("TB", "TC")]
    kh, ri = (np.concatenate([o[k][:, 0] for o in series]) for k in ("Kh", "RiB"))
    wind = np.concatenate([obs[s]["Wind"].values for s in ("TB", "TC")])
    mine = fit_power_law(kh, wind, ri)
    fit_ta = entry["folds"]["loso-TA"]["classes"]["GRA"]
    for branch in ("stable", "unstable"):
        for k in "abc":
            assert fit_ta["fits"]["power_law"][branch][k] == pytest.approx(mine[branch][k], rel=1e-9)
    assert fit_ta["fits"]["zhang_abs_ri"]["c"] == pytest.approx(fit_abs_ri_law(kh, wind, ri)["c"], rel=1e-9)
    assert folds.loc[0, "n"] == mine["scores"]["n"] > 0  # every form is fitted on the same steps

    # the summary is the spread of the folds' coefficients
    summary = pd.read_csv(out / "fold_summary.csv")
    assert len(summary) == 2 * 3  # (stable, unstable) x (a, b, c)
    for branch in ("stable", "unstable"):
        for k in "bc":
            v = folds[f"{k}_{branch}"].to_numpy()
            row = summary.query(f"branch == '{branch}' and coefficient == '{k}'").iloc[0]
            assert row["folds"] == 3 and row["mean"] == pytest.approx(v.mean(), rel=1e-12)
            assert row["sd"] == pytest.approx(v.std(ddof=1), rel=1e-9) and row["min"] == v.min() and row["max"] == v.max()
    assert summary["sd"].max() > 0  # the folds learned on different sites

    # each fold's law re-run at its held-out site: K_h is that law's, scored beside the hybrid and physics
    skill = pd.read_csv(out / "skill.csv").query("scale == 'halfhourly'")
    for fold, site in zip(folds["fold"], folds["held_out"]):
        law = entry["folds"][fold]["classes"]["GRA"]["chosen_law"]
        assert entry["folds"][fold]["offline_law"] == law and entry["folds"][fold]["online_law"] is None
        law_run = xr.load_dataset(out / f"predictions/{site}/hybrid_param_law.nc")
        assert json.loads(law_run.attrs["law"]) == law
        exchange = ExchangeLaw({b: (c["a"], c["b"], c["c"]) for b, c in law.items()})
        np.testing.assert_allclose(law_run["Kh"].values, np.asarray(exchange(obs[site]["Wind"].values,
                                                                             law_run["RiB"].values)), rtol=2e-4)
        rows = skill[(skill["fold"] == fold) & (skill["site"] == site)]
        assert set(rows["model"]) == {"hybrid_param", "physics", "hybrid_param_law"}
        law_nse = rows.query("model == 'hybrid_param_law' and flux == 'Qh'")["nse"].item()
        assert np.isfinite(law_nse) and folds.set_index("fold").loc[fold, "nse_Qh_law"] == pytest.approx(law_nse)
    assert (out / "folds.csv.sha256").is_file() and "Leave-one-site-out folds" in (run / "report.html").read_text()

    # a model that is not in the run, or that learns no K_h, is named; a label given twice is fitted once
    with pytest.raises(PredictError, match=r"no model nosuch in the run; it has: .*hybrid_param"):
        discover(run, labels=["nosuch"])
    with pytest.raises(PredictError, match=r"\['physics'\] have no learned K_h to fit"):
        discover(run, labels=["physics"])
    # still refused, clearly: a test_sites run (its training sites' K_h is not in the run)
    other = tmp_path / "test-sites"
    shutil.copytree(run, other)
    cfg = (other / "config.yaml").read_text()
    (other / "config.yaml").write_text(cfg.replace("leave_one_site_out: true", "test_sites: [TA]"))
    with pytest.raises(PredictError, match="a test_sites run predicts only its test sites"):
        discover(other)


@pytest.mark.slow  # an online refit through the physics; in make test, not test-fast
def test_online_refit_moves_a_perturbed_law_to_the_truth():
    """refit_exchange_law on noise-free twin data: the true LaD (Jarvis r_s, the twin's law) with the
    law's exponents of u off by 0.2; only the law trains, both exponents come at least halfway back
    and the validation Qh error falls by more than two thirds."""
    from hybridlsm.config import TrainConfig
    from hybridlsm.data import prepare_forcing
    from hybridlsm.data.virtual import _true_model
    from hybridlsm.domain import domain_from_site
    from hybridlsm.models.column import ColumnModel, predict_column_model
    from hybridlsm.models.column_fit import exchange_laws, refit_exchange_law
    from hybridlsm.models.registry import TrainingContext

    site = virtual_site(site_id="TWIN", truth="kh_law", days=40, start="2020-06-01", seed=3)
    domain = domain_from_site(prepare_forcing(site))
    day = np.arange(domain.n_steps) // 48
    train, val = domain.with_loss_mask(day % 5 != 4), domain.with_loss_mask(day % 5 == 4)
    start = {b: (a, bb - 0.2, c) for b, (a, bb, c) in TWIN_LAW.items()}  # the exponents of u off by 0.2
    model = ColumnModel(land=_true_model("kh_law"), deltas={}).with_exchange_law(ExchangeLaw(start))
    ctx = TrainingContext(max_qc=1, spinup_days=2.0, window_days=6.0, progress=False,
                          training=TrainConfig(epochs=300, lr=0.05, patience=300, batch_windows=8))
    fitted = refit_exchange_law(model, [train], [val], ctx, targets=["Qle", "Qh"], train_cfg=ctx.training)
    law = exchange_laws(fitted)[0].coefficients()
    for branch, (a, b, c) in TWIN_LAW.items():  # each exponent of u at least halfway back to the truth
        assert abs(law[branch]["b"] - b) < 0.1, law
    obs = val.data["Qh"].values[:, 0]
    rmse = {k: np.sqrt(np.nanmean(((predict_column_model(m, val)["Qh"][:, 0] - obs) ** 2)[val.data["loss_mask"].values[:, 0]]))
            for k, m in (("before", model), ("after", fitted))}  # fmt: skip
    assert rmse["after"] < 0.3 * rmse["before"], rmse  # measured 1.6 against 7.3 W m-2
    # nothing but the law trained: the r_s closure and every other leaf are the model's
    same = eqx.filter(fitted.with_exchange_law(ExchangeLaw(start)), eqx.is_array)
    for x, y in zip(jax.tree_util.tree_leaves(same), jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # the start competes on validation: from the truth itself (noise-free data) any step is worse
    truth = ColumnModel(land=_true_model("kh_law"), deltas={}).with_exchange_law(ExchangeLaw(TWIN_LAW))
    kept = refit_exchange_law(truth, [train], [val], ctx, targets=["Qle", "Qh"],
                              train_cfg=ctx.training.model_copy(update={"epochs": 3, "lr": 0.3}))
    assert exchange_laws(kept)[0].coefficients() == exchange_laws(truth)[0].coefficients()
    with pytest.raises(ValueError, match="exactly one exchange law"):
        refit_exchange_law(ColumnModel(land=LaDModel(), deltas={}), [train], [val], ctx, targets=["Qh"],
                           train_cfg=ctx.training)


@pytest.mark.slow  # a few seconds; in make test, not test-fast
def test_a_twin_can_observe_its_surface_temperature_and_a_hybrid_train_on_it():
    """``surface_temperature_noise``: the twin's radiometric surface temperature with that noise (the
    other observations unchanged); AvgSurfT is a target the column models accept."""
    from hybridlsm.models.registry import validate_run_config

    exact = virtual_site(truth="kh_law", days=10, seed=3, noise=10.0, surface_temperature_noise=0.0)
    noisy = virtual_site(truth="kh_law", days=10, seed=3, noise=10.0, surface_temperature_noise=0.7)
    assert "AvgSurfT" not in virtual_site(truth="kh_law", days=10, seed=3, noise=10.0)
    np.testing.assert_array_equal(noisy["Qh"].values, exact["Qh"].values)
    diff = noisy["AvgSurfT"].values - exact["AvgSurfT"].values
    assert np.isfinite(diff).all() and abs(diff.mean()) < 0.1 and diff.std() == pytest.approx(0.7, rel=0.1)
    assert 270.0 < exact["AvgSurfT"].values.min() and exact["AvgSurfT"].values.max() < 340.0
    cfg = validate_run_config({
        "name": "t", "data": {"sites": [{"virtual": {"surface_temperature_noise": 1.0}}], "targets": ["Qh", "AvgSurfT"]},
        "models": [{"name": "hybrid_param"}, {"name": "physics", "options": {"targets": ["Qh"]}}]})
    assert cfg.models[0].options["targets"] == ["Qh", "AvgSurfT"]
    assert validate_run_config({"name": "t", "data": {"sites": [{"virtual": {}}]}, "models": [
        {"name": "hybrid_param"}]}).models[0].options["targets"] == ["Qle", "Qh"]  # the default stays the fluxes
    # a target the training sites never observe is refused by name, not trained on as NaN
    from hybridlsm.config import TrainConfig
    from hybridlsm.data import DataError, prepare_forcing
    from hybridlsm.domain import domain_from_site
    from hybridlsm.models.column import ColumnModel
    from hybridlsm.models.column_fit import train_column_model
    from hybridlsm.models.registry import TrainingContext

    domain = domain_from_site(prepare_forcing(virtual_site(days=10, seed=3)))
    ctx = TrainingContext(max_qc=1, spinup_days=2.0, window_days=4.0, progress=False, training=TrainConfig(epochs=1))
    with pytest.raises(DataError, match=r"\['AvgSurfT'\] have no usable observation"):
        train_column_model(ColumnModel(land=LaDModel(), deltas={}), [domain], [domain], ctx, targets=["Qh", "AvgSurfT"],
                           train_cfg=ctx.training)


def test_discover_refuses_a_refit_that_cannot_learn(tmp_path):
    result = CliRunner().invoke(app, ["discover", str(tmp_path), "--refit-lr", "0"])
    assert result.exit_code == 2 and "lr > 0" in result.output
