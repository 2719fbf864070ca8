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


def test_a_phase1_stop_that_passes_the_cap_is_an_early_stop(tmp_path):
    """Phase 1 stopped by validation whose jump to phase 2 passes the epoch cap (a calibration of 60
    epochs under a 200-epoch phase 1) stopped on validation; one that phase 2 followed to the cap did not."""
    for path, at in (("physics/all", None), ("hybrid_param/all", 3)):
        hist = _history(6, 2, False)
        hist[-1 if at is None else at]["event"] = "phase1_early_stop"
        d = tmp_path / "checkpoints" / path
        d.mkdir(parents=True)
        (d / META_FILE).write_text(json.dumps({"history": hist, "best_epoch": 2}))
    runs = {r["model"]: r["stopped"] for r in training_runs(tmp_path)}
    assert runs["physics"] == "early stop (validation, in phase 1; phase 2 starts past the epoch cap)"
    assert runs["hybrid_param"] == "epoch cap (phase 1 stopped early on validation)"


def test_members_trained_together_are_one_training_each(tmp_path):
    """A checkpoint of stacked members (per-member lists): member 0 stops early after epoch 2 (its best
    epoch 1), member 1 runs to the cap of 3 with its best at epoch 3."""
    hist = [{"epoch": 1, "train_loss": [1.0, 2.0], "val_loss": [0.5, 0.9], "terms": {"mse": [1.0, 2.0]}},
            {"epoch": 2, "train_loss": [0.9, 1.5], "val_loss": [0.6, 0.8], "terms": {"mse": [0.9, 1.5]},
             "event": "early_stop", "members_stopped": [0]},
            {"epoch": 3, "train_loss": [0.9, 1.2], "val_loss": [0.6, 0.7], "terms": {"mse": [0.9, 1.2]}}]
    d = tmp_path / "checkpoints" / "ens" / "all" / "members"
    d.mkdir(parents=True)
    (d / META_FILE).write_text(json.dumps({"history": hist, "best_epoch": [1, 3], "stopped_early": [True, False]}))
    runs = {r["part"]: r for r in training_runs(tmp_path)}
    assert set(runs) == {"members/member_0", "members/member_1"}
    m0, m1 = runs["members/member_0"], runs["members/member_1"]
    assert (m0["epochs"], m0["best_epoch"], m0["best_val_loss"], m0["stopped"]) == (2, 1, 0.5, "early stop (validation)")
    assert (m1["epochs"], m1["best_epoch"], m1["best_val_loss"], m1["stopped"]) == (3, 3, 0.7, "epoch cap")
    assert [r["train_loss"] for r in m1["history"]] == [2.0, 1.5, 1.2] and m1["history"][1]["terms"] == {"mse": 1.5}
    assert training_html(tmp_path, tmp_path / "plots").count("<img") == 1  # the last stage of ens/all


def test_a_history_that_skips_epochs_is_read_by_epoch_number(tmp_path):
    """A history may skip epochs (the physics calibration logs none for a rejected update): the kept
    epoch's loss is looked up by its number and the epochs run are the last one's."""
    hist = [r for r in _history(8, 6, True) if r["epoch"] not in (2, 3)]
    d = tmp_path / "checkpoints" / "physics" / "all"
    d.mkdir(parents=True)
    (d / META_FILE).write_text(json.dumps({"history": hist, "best_epoch": 6}))
    (run,) = training_runs(tmp_path)
    assert run["epochs"] == 8 and run["best_epoch"] == 6
    assert run["best_val_loss"] == next(r["val_loss"] for r in hist if r["epoch"] == 6)
