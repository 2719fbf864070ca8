"""Training curves and stopping epochs (issue 12): a validation score's per-site parts reach the
history, and the report's Training section reads every checkpointed training of a run, says how
each stopped, draws the curves and writes training.csv."""

from __future__ import annotations

import json
import time

import pandas as pd

from hybridlsm.evaluation.training_curves import training_html, training_runs
from hybridlsm.training import fit
from hybridlsm.training.checkpoint import META_FILE
from hybridlsm.training.trainer import ValidationScore
from test_training import BATCHES, cfg, make_model, mse_loss, val_fn


def test_per_site_parts_of_the_validation_score_are_recorded_each_epoch():
    def by_site(model):
        v = val_fn(model)
        return ValidationScore(v, {"A": 2.0 * v, "B": 0.5 * v})

    res = fit(make_model(), mse_loss, BATCHES, by_site, cfg(epochs=3), progress=False)
    for r in res.history:
        assert r["val_parts"] == {"A": 2.0 * r["val_loss"], "B": 0.5 * r["val_loss"]}
    plain = fit(make_model(), mse_loss, BATCHES, val_fn, cfg(epochs=2), progress=False)
    assert "val_parts" not in plain.history[0]
    assert float(ValidationScore(1.5, {})) == 1.5


def _history(n, best, early):
    h = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": abs(e - best) + 0.5, "val_parts": {"S1": 1.0, "S2": 2.0}}
         for e in range(1, n + 1)]  # fmt: skip
    if early:
        h[-1]["event"] = "early_stop"
    return h


def test_the_training_section_says_how_each_training_stopped(tmp_path):
    for path, hist in (("hybrid_flux/loso-A/round0", _history(5, 5, False)),
                       ("hybrid_flux/loso-B/round0", _history(7, 3, True)),
                       ("physics/all", _history(4, 2, False))):  # fmt: skip
        d = tmp_path / "checkpoints" / path
        d.mkdir(parents=True)
        best = min(hist, key=lambda r: r["val_loss"])["epoch"]
        (d / META_FILE).write_text(json.dumps({"history": hist, "best_epoch": best}))
        time.sleep(0.01)  # the stages are ordered by when their checkpoints were written
    runs = {(r["model"], r["experiment"], r["part"]): r for r in training_runs(tmp_path)}
    assert runs[("hybrid_flux", "loso-A", "round0")]["stopped"] == "epoch cap"
    assert runs[("hybrid_flux", "loso-B", "round0")]["stopped"] == "early stop (validation)"
    assert runs[("hybrid_flux", "loso-B", "round0")]["best_epoch"] == 3
    assert runs[("physics", "all", "")]["epochs"] == 4 and runs[("physics", "all", "")]["best_val_loss"] == 0.5
    text = training_html(tmp_path, tmp_path / "plots")
    assert text.count("<img") == 3 and "early stop (validation)" in text
    table = pd.read_csv(tmp_path / "training.csv")
    assert list(table["epochs"]) == [5, 7, 4] and list(table["best_epoch"]) == [5, 3, 2]
    assert training_html(tmp_path / "empty", tmp_path / "plots") == ""
