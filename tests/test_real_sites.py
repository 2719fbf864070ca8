"""Training on the real development sites (../shared/data): calibration of the LaD column improves
held-out skill over the default parameters (issue 3), and a short hybrid run at US-Wkg beats the
PLUMBER 1lin benchmark on held-out Qle (issue 4)."""

from __future__ import annotations

import numpy as np
import pytest

from hybridlsm.data import TEST, prepare_forcing, qc_mask, read_site
from hybridlsm.evaluation.metrics import rmse
from hybridlsm.domain import domain_from_site
from hybridlsm.models.physics import calibrate_physics
from hybridlsm.models.registry import TrainingContext, get_model, validate_options
from hybridlsm.models.registry import validate_run_config as validate_config
from hybridlsm.pipeline import experiments

pytestmark = pytest.mark.slow

SITES = {
    "US-Wkg": "US-Wkg_200405-200412_HH.csv",
    "US-Me2": "US-Me2_201907-202006_HH.csv",
}


# Calibration settings of the site tests: the ``physics`` defaults (60 Adam steps over whole records),
# i.e. the PhysicsOptions that ``hybrid_flux`` starts from, so that the US-Wkg hybrid reuses the
# calibration of the US-Wkg calibration test (``calibrate_physics`` keys ``ctx.cache`` on the data,
# the options and the context). US-Me2 (a whole year, no hybrid test) keeps 30 steps.
CALIBRATION = {"US-Wkg": {}, "US-Me2": {"epochs": 30}}


def _config():
    return validate_config({
        "name": "t", "data": {"sites": [{"virtual": {}}], "split": {"train": 0.6, "val": 0.2, "test": 0.2},
                              "spinup_days": 5, "window_days": 10},
        "models": [{"name": "physics"}],
        "training": {"epochs": 30, "batch_windows": 8, "patience": 5, "lr": 3e-3},
    })  # fmt: skip


@pytest.fixture(scope="module")
def ctx():
    """One TrainingContext for the module: its ``cache`` holds the calibrated physics, so US-Wkg is
    calibrated once for both of its tests (whichever runs first calibrates)."""
    return TrainingContext.from_config(_config(), progress=False)


@pytest.fixture(scope="module")
def experiment(shared_data):
    """site -> (Domain, Experiment), each site read once per module (the same train / val Domains,
    hence the same cache key, for every test of a site)."""
    made = {}

    def get(site):
        if site not in made:
            d = domain_from_site(prepare_forcing(read_site(shared_data / "fluxnet" / SITES[site])))
            made[site] = d, experiments(_config(), [d])[0]
        return made[site]

    return get


def _test_rmse(d, exp, pred, flux):
    ds = d.column(0)
    test = (exp.labels[d.column_ids[0]] == TEST) & np.asarray(qc_mask(ds, flux, 1))
    return rmse(pred[flux][:, 0], np.asarray(ds[flux].values), mask=test)


@pytest.mark.parametrize("site", list(SITES))
def test_calibration_reduces_heldout_rmse(experiment, ctx, site):
    ds, exp = experiment(site)
    spec = get_model("physics")
    opts = validate_options("physics", CALIBRATION[site])  # whole records, one Adam step per epoch
    default = spec.build(opts)
    before = {f: _test_rmse(ds, exp, spec.predict(default, ds), f) for f in ("Qle", "Qh")}
    calibrated = spec.train(default, opts, exp.train, exp.val, ctx)
    after = {f: _test_rmse(ds, exp, spec.predict(calibrated, ds), f) for f in ("Qle", "Qh")}
    msg = f"{site}: held-out RMSE default {before} -> calibrated {after}"
    # Measured here (US-Wkg: the 60 default steps; US-Me2: 30): US-Wkg Qle 17.8 -> 16.7, Qh 54.9 -> 28.4;
    # US-Me2 Qle 51.1 -> 40.6 (seasonal storage through whole-record fitting), Qh 59.8 -> 57.6 W m-2.
    # The shipped configs (60 steps, docs/results.md) give US-Me2 Qle 51.1 -> 38.3, Qh 59.8 -> 54.2.
    assert after["Qle"] < before["Qle"], msg
    assert after["Qh"] < before["Qh"], msg
    big = {"US-Wkg": "Qh", "US-Me2": "Qle"}[site]  # the flux calibration fixes most at each site
    assert after[big] < 0.85 * before[big], msg


def test_hybrid_beats_1lin_on_heldout_qle_at_us_wkg(experiment, ctx):
    ds, exp = experiment("US-Wkg")
    # the calibration the US-Wkg calibration test made (or makes now, when this test runs alone) ...
    calibrate_physics(exp.train, exp.val, ctx, validate_options("physics", CALIBRATION["US-Wkg"]))
    cached = set(ctx.cache)
    scores = {}
    for name, options in (("hybrid_flux", {"epochs": 30}), ("1lin", {})):
        spec = get_model(name)
        opts = validate_options(name, options)
        model = spec.train(spec.build(opts), opts, exp.train, exp.val, ctx)
        scores[name] = _test_rmse(ds, exp, spec.predict(model, ds), "Qle")
    # ... is the one hybrid_flux started from: it found it in ctx.cache and calibrated nothing new.
    # Measured: held-out Qle RMSE hybrid_flux 16.0, 1lin 17.6 W m-2.
    assert set(ctx.cache) == cached, sorted(set(ctx.cache) - cached)
    assert scores["hybrid_flux"] < scores["1lin"], scores
