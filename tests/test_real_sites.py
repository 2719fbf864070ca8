"""Training on the real development sites (../shared/data): calibration of the LaD column improves
held-out skill over the default parameters (issue 3), and a short hybrid run at US-Wkg beats the
PLUMBER 1lin benchmark on held-out Qle (issue 4)."""

from __future__ import annotations

import numpy as np
import pytest

from hybridlsm.data import TEST, prepare_forcing, qc_mask, read_site
from hybridlsm.evaluation.metrics import rmse
from hybridlsm.domain import domain_from_site
from hybridlsm.models.registry import TrainingContext, get_model, validate_options
from hybridlsm.models.registry import validate_run_config as validate_config
from hybridlsm.pipeline import experiments

pytestmark = pytest.mark.slow

SITES = {
    "US-Wkg": "US-Wkg_200405-200412_HH.csv",
    "US-Me2": "US-Me2_201907-202006_HH.csv",
}


def _experiment(shared_data, site, epochs):
    ds = prepare_forcing(read_site(shared_data / "fluxnet" / SITES[site]))
    cfg = validate_config({
        "name": "t", "data": {"sites": [{"virtual": {}}], "split": {"train": 0.6, "val": 0.2, "test": 0.2},
                              "spinup_days": 5, "window_days": 10},
        "models": [{"name": "physics"}],
        "training": {"epochs": epochs, "batch_windows": 8, "patience": 5, "lr": 3e-3},
    })  # fmt: skip
    d = domain_from_site(ds)
    return d, TrainingContext.from_config(cfg, progress=False), experiments(cfg, [d])[0]


def _test_rmse(d, exp, pred, flux):
    ds = d.column(0)
    test = (exp.labels[d.column_ids[0]] == TEST) & np.asarray(qc_mask(ds, flux, 1))
    return rmse(pred[flux][:, 0], np.asarray(ds[flux].values), mask=test)


@pytest.mark.parametrize("site", list(SITES))
def test_calibration_reduces_heldout_rmse(shared_data, site):
    ds, cfg, exp = _experiment(shared_data, site, epochs=30)
    spec = get_model("physics")
    opts = validate_options("physics", {"epochs": 30})  # 30 steps over whole records
    default = spec.build(opts)
    before = {f: _test_rmse(ds, exp, spec.predict(default, ds), f) for f in ("Qle", "Qh")}
    calibrated = spec.train(default, opts, exp.train, exp.val, cfg)
    after = {f: _test_rmse(ds, exp, spec.predict(calibrated, ds), f) for f in ("Qle", "Qh")}
    msg = f"{site}: held-out RMSE default {before} -> calibrated {after}"
    # Measured with the shipped configs (60 steps, docs/results.md): US-Wkg Qle 17.8 -> 16.5,
    # Qh 54.9 -> 27.6; US-Me2 Qle 51.1 -> 38.3 (seasonal storage through whole-record fitting),
    # Qh 59.8 -> 54.2 W m-2.
    # (30 steps here: US-Wkg Qle 17.8 -> 16.8, Qh 54.9 -> 27.6; US-Me2 Qle 51.1 -> 40.6, Qh 59.8 -> 57.6)
    assert after["Qle"] < before["Qle"], msg
    assert after["Qh"] < before["Qh"], msg
    big = {"US-Wkg": "Qh", "US-Me2": "Qle"}[site]  # the flux calibration fixes most at each site
    assert after[big] < 0.85 * before[big], msg


def test_hybrid_beats_1lin_on_heldout_qle_at_us_wkg(shared_data):
    ds, cfg, exp = _experiment(shared_data, "US-Wkg", epochs=30)
    scores = {}
    for name, options in (("hybrid_flux", {"epochs": 30}), ("1lin", {})):
        spec = get_model(name)
        opts = validate_options(name, options)
        model = spec.train(spec.build(opts), opts, exp.train, exp.val, cfg)
        scores[name] = _test_rmse(ds, exp, spec.predict(model, ds), "Qle")
    assert scores["hybrid_flux"] < scores["1lin"], scores
