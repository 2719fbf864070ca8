"""Trust in the run directory: checksums detect damaged checkpoints, saved models and predictions
(a damaged checkpoint falls back to the previous good one, a damaged prediction is recomputed on
resume), and a lock keeps a second process out of a run directory in use."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import socket
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr
from test_pipeline import CONFIG
from test_training import BATCHES, cfg, make_model, mse_loss, params_of, val_fn
from typer.testing import CliRunner

from hybridlsm.cli import app
from hybridlsm.models.registry import SavedModelError, get_model, load_run_config, load_saved_model
from hybridlsm.pipeline import run
from hybridlsm.predict import PredictError, predict
from hybridlsm.rundir import lock_path, problem
from hybridlsm.training import CheckpointError, fit
from hybridlsm.training.checkpoint import read_checkpoint, write_checkpoint

LINEAR_ONLY = CONFIG.replace("  - {name: physics, options: {epochs: 2, calibrate: [rs_scale, ra_scale]}}\n", "")


def flip(path, n=8):
    """Invert ``n`` bytes in the middle of ``path`` (its size stays the same)."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + n] = bytes(b ^ 0xFF for b in data[mid : mid + n])
    path.write_bytes(bytes(data))


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """(config file, run directory) of a finished one-model run."""
    tmp = tmp_path_factory.mktemp("integrity")
    cfg_file = tmp / "tiny.yaml"
    cfg_file.write_text(LINEAR_ONLY.replace("RUNS", str(tmp / "runs")))
    result = CliRunner().invoke(app, ["run", str(cfg_file)])
    assert result.exit_code == 0, result.output
    return cfg_file, tmp / "runs" / "tiny"


def copy_run(finished, tmp_path):
    """A copy of the finished run under ``tmp_path/runs`` and its config (pointing there)."""
    cfg_file, run_dir = finished
    shutil.copytree(run_dir, tmp_path / "runs" / "tiny")
    new = tmp_path / "tiny.yaml"
    new.write_text(cfg_file.read_text().replace(str(run_dir.parent), str(tmp_path / "runs")))
    return new, tmp_path / "runs" / "tiny"


# ---------------------------------------------------------------------------- checkpoints


def test_a_damaged_checkpoint_falls_back_to_the_previous_epoch(tmp_path):
    def trees(v):
        return {"w": jnp.full(4000, float(v))}

    for epoch in (1, 2, 3):
        write_checkpoint(tmp_path, epoch, trees(epoch), {"epoch": epoch})
    assert sorted(p.name for p in tmp_path.glob("*.eqx")) == ["epoch_0002.eqx", "epoch_0003.eqx"]
    flip(tmp_path / "epoch_0003.eqx")
    with pytest.warns(UserWarning, match="epoch_0003.eqx"):
        loaded, meta = read_checkpoint(tmp_path, trees(0))
    assert meta["epoch"] == 2 and np.all(np.asarray(loaded["w"]) == 2.0)
    flip(tmp_path / "epoch_0002.eqx")  # no good checkpoint left: an error naming the damaged files
    with pytest.raises(CheckpointError, match=r"epoch_0003\.eqx.*epoch_0002\.eqx"):
        read_checkpoint(tmp_path, trees(0))


def test_an_edited_checkpoint_json_is_not_trusted(tmp_path):
    """The metadata carries its own SHA-256: a parseable hand edit (``"finished": true``, another
    epoch) is refused like a damaged leaves file, and the previous checkpoint is used."""
    def trees(v):
        return {"w": jnp.full(8, float(v))}

    for epoch in (1, 2):
        write_checkpoint(tmp_path, epoch, trees(epoch), {"epoch": epoch, "finished": False})
    current = tmp_path / "checkpoint.json"
    meta = json.loads(current.read_text())
    current.write_text(json.dumps(dict(reversed(meta.items())), indent=4))  # laid out otherwise: the same digest
    assert read_checkpoint(tmp_path, trees(0))[1]["epoch"] == 2
    current.write_text(json.dumps({**meta, "best_val": float("nan")}))  # an edit that writes NaN: no traceback
    with pytest.warns(UserWarning, match="checkpoint.json does not match its recorded checksum"):
        assert read_checkpoint(tmp_path, trees(0))[1]["epoch"] == 1
    current.write_text(json.dumps({**meta, "finished": True}, indent=4))
    with pytest.warns(UserWarning, match="checkpoint.json does not match its recorded checksum"):
        loaded, meta = read_checkpoint(tmp_path, trees(0))
    assert meta["epoch"] == 1 and meta["finished"] is False and np.all(np.asarray(loaded["w"]) == 1.0)
    prev = json.loads((tmp_path / "checkpoint.prev.json").read_text())
    unsealed = {k: v for k, v in prev.items() if k != "meta_sha256"}
    # relabelled as written before the seal: was read unchecked, so any edit of it passed
    (tmp_path / "checkpoint.prev.json").write_text(json.dumps({**unsealed, "format": "hybridlsm-checkpoint-1"}))
    with pytest.raises(CheckpointError, match="checkpoint.prev.json has format 'hybridlsm-checkpoint-1', written "
                                              "before checkpoints carried the checksum of their metadata"):
        read_checkpoint(tmp_path, trees(0))
    (tmp_path / "checkpoint.prev.json").write_text(json.dumps(unsealed))  # the new format without its seal
    with pytest.raises(CheckpointError, match="checkpoint.prev.json does not match its recorded checksum"):
        read_checkpoint(tmp_path, trees(0))


def test_a_checkpoint_write_that_stops_keeps_two_good_checkpoints(tmp_path, monkeypatch):
    """A kill while the new leaves are written (most of a checkpoint's time) leaves the last two
    checkpoints named, not the last one twice: the older is the fallback if the newer is damaged."""
    import equinox as eqx

    def trees(v):
        return {"w": jnp.full(4000, float(v))}

    for epoch in (1, 2):
        write_checkpoint(tmp_path, epoch, trees(epoch), {"epoch": epoch})

    def killed(path, tree):
        raise KeyboardInterrupt

    monkeypatch.setattr(eqx, "tree_serialise_leaves", killed)
    with pytest.raises(KeyboardInterrupt):
        write_checkpoint(tmp_path, 3, trees(3), {"epoch": 3})
    monkeypatch.undo()
    assert json.loads((tmp_path / "checkpoint.prev.json").read_text())["epoch"] == 1
    flip(tmp_path / "epoch_0002.eqx")
    with pytest.warns(UserWarning, match="epoch_0002.eqx"):
        loaded, meta = read_checkpoint(tmp_path, trees(0))
    assert meta["epoch"] == 1 and np.all(np.asarray(loaded["w"]) == 1.0)
    # stopped after checkpoint.json, before checkpoint.prev.json: the new one and the old previous
    import hybridlsm.training.checkpoint as checkpoint

    write_checkpoint(tmp_path, 4, trees(4), {"epoch": 4})  # current 4; the damaged 2 never becomes the previous
    write_checkpoint(tmp_path, 5, trees(5), {"epoch": 5})  # current 5, previous 4
    real = checkpoint.atomic_write

    def stops_at_previous(path, write):
        if path.name == "checkpoint.prev.json":
            raise KeyboardInterrupt
        return real(path, write)

    monkeypatch.setattr(checkpoint, "atomic_write", stops_at_previous)
    with pytest.raises(KeyboardInterrupt):
        write_checkpoint(tmp_path, 6, trees(6), {"epoch": 6})
    monkeypatch.undo()
    named = [json.loads((tmp_path / f).read_text())["epoch"] for f in ("checkpoint.json", "checkpoint.prev.json")]
    assert named == [6, 4] and (tmp_path / "epoch_0004.eqx").is_file()


def test_resumed_fit_never_loads_a_damaged_checkpoint(tmp_path):
    c = cfg(epochs=3)
    full = fit(make_model(), mse_loss, BATCHES, val_fn, c, tmp_path, progress=False)
    flip(tmp_path / "epoch_0003.eqx")
    with pytest.warns(UserWarning, match="epoch_0003.eqx"):  # continues from epoch 2
        resumed = fit(make_model(), mse_loss, BATCHES, val_fn, c, tmp_path, progress=False, resume=True)
    np.testing.assert_allclose(params_of(resumed.model), params_of(full.model), rtol=0, atol=1e-12)
    assert len(resumed.history) == 3
    for p in tmp_path.glob("epoch_*.eqx"):
        flip(p)
    with pytest.warns(UserWarning, match="starts afresh"):
        again = fit(make_model(), mse_loss, BATCHES, val_fn, c, tmp_path, progress=False, resume=True)
    np.testing.assert_allclose(params_of(again.model), params_of(full.model), rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- saved models


def test_a_saved_equinox_model_with_flipped_bytes_is_refused(tmp_path):
    spec = get_model("physics")
    options = spec.Options.model_validate({})
    spec.save(spec.build(options), options, tmp_path)
    spec.load(options, tmp_path)
    flip(tmp_path / "model.eqx")
    with pytest.raises(SavedModelError, match=r"model\.eqx.*checksum does not match"):
        spec.load(options, tmp_path)


def test_a_saved_model_that_cannot_be_read_is_named(tmp_path, monkeypatch):
    """An OSError reading model.json (no permission: root reads anything, so it is simulated) is a
    SavedModelError naming the file, not a traceback."""
    from pathlib import Path

    spec = get_model("physics")
    options = spec.Options.model_validate({})
    spec.save(spec.build(options), options, tmp_path)
    real = Path.read_text

    def unreadable(self, *args, **kwargs):
        if self.name == "model.json":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", unreadable)
    with pytest.raises(SavedModelError, match=r"model\.json: cannot be read \(Permission denied\)"):
        load_saved_model(tmp_path)


def test_run_files_carry_checksums_and_a_damaged_empirical_model_is_refused(finished, tmp_path):
    _, run_dir = copy_run(finished, tmp_path)
    saved = run_dir / "models" / "1lin" / "all"
    recorded = json.loads((saved / "model.json").read_text())["sha256"]
    assert recorded == {"Qle.npz": sha256(saved / "Qle.npz"), "Qh.npz": sha256(saved / "Qh.npz")}
    for name in ("1lin.nc", "obs.nc"):  # netCDF files: a sha256sum-format sidecar
        nc = run_dir / "predictions" / "TINY" / name
        assert (nc.parent / f"{name}.sha256").read_text() == f"{sha256(nc)}  {name}\n"
        assert problem(nc) is None
    assert not list(run_dir.rglob("*.tmp")) and not lock_path(run_dir).exists()
    load_saved_model(saved)
    flip(saved / "Qle.npz")
    with pytest.raises(SavedModelError, match=r"Qle\.npz.*checksum does not match"):
        load_saved_model(saved)


def test_run_json_files_that_are_not_json_objects_are_named_not_tracebacks(finished, tmp_path):
    cfg_file, run_dir = copy_run(finished, tmp_path)
    saved = run_dir / "models" / "1lin" / "all"
    meta = json.loads((saved / "model.json").read_text())
    # a hand edit of model.json (an option changes what the model predicts) is refused by its checksum
    (saved / "model.json").write_text(json.dumps({**meta, "options": {**meta["options"], "targets": ["Qle"]}}))
    with pytest.raises(SavedModelError, match=r"model\.json is damaged or truncated.*\(edited by hand\?\)"):
        load_saved_model(saved)
    # a model saved before model.json carried a checksum: its model.json is read as it is
    (saved / "model.json.sha256").unlink()
    (saved / "model.json").write_text("[]")
    with pytest.raises(SavedModelError, match=r"model\.json: corrupt: not the JSON object of a saved model"):
        load_saved_model(saved)
    # a model saved before checksums (no sha256) whose npz is truncated: named, not a BadZipFile
    (saved / "model.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "sha256"}))
    (saved / "Qh.npz").write_bytes((saved / "Qh.npz").read_bytes()[:40])
    with pytest.raises(SavedModelError, match=r"cannot load the saved 1lin \(BadZipFile"):
        load_saved_model(saved)
    # the timings only lose their times; a damaged inputs.json stops the resume, naming it (exit 3)
    (run_dir / "timings.json").write_text("{trunc")
    (run_dir / "inputs.json").write_text("{oops")
    result = CliRunner().invoke(app, ["run", str(cfg_file), "--resume"])
    output = " ".join(result.output.split())
    assert result.exit_code == 3 and f"{run_dir / 'inputs.json'} cannot be read as JSON" in output, output
    (run_dir / "inputs.json").write_text("{}")
    result = CliRunner().invoke(app, ["run", str(cfg_file), "--resume"])
    output = " ".join(result.output.split())
    assert result.exit_code == 0 and "timings.json cannot be read as JSON" in output, output


# ---------------------------------------------------------------------------- predictions


def test_resume_recomputes_a_truncated_prediction(finished, tmp_path, capsys):
    cfg_file, run_dir = copy_run(finished, tmp_path)
    pred = run_dir / "predictions" / "TINY" / "1lin.nc"
    pred.write_bytes(pred.read_bytes()[: pred.stat().st_size // 2])
    assert "does not match" in problem(pred)
    capsys.readouterr()
    run(load_run_config(cfg_file), resume=True)
    err = " ".join(capsys.readouterr().err.split())
    assert f"{pred}" in err and "recomputing" in err
    assert problem(pred) is None
    with xr.open_dataset(pred) as ds:
        assert ds.sizes["time"] == 960 and np.isfinite(ds["Qle"].values[48:]).any()


# ---------------------------------------------------------------------------------- lock


@pytest.mark.slow  # a few seconds; in make test, not test-fast
def test_a_second_process_is_refused_while_the_first_holds_the_run_lock(finished, tmp_path):
    cfg_file, run_dir = copy_run(finished, tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from hybridlsm.rundir import hold_run_lock; "
         "hold_run_lock(sys.argv[1]); print('locked', flush=True); time.sleep(120)", str(run_dir)],
        stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = sha256(run_dir / "predictions" / "TINY" / "1lin.nc")
        result = CliRunner().invoke(app, ["run", str(cfg_file), "--resume"])
        assert result.exit_code == 1
        refusal = [line for line in result.output.splitlines() if "in use by" in line]  # one line
        assert len(refusal) == 1 and f"process {holder.pid} on {socket.gethostname()}" in refusal[0]
        assert "Traceback" not in result.output
        with pytest.raises(PredictError, match=f"process {holder.pid}"):
            predict(run_dir, "1lin", [tmp_path / "site.csv"])
        assert sha256(run_dir / "predictions" / "TINY" / "1lin.nc") == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lock_path(run_dir).exists()  # left behind by the killed process: it must not block
    result = CliRunner().invoke(app, ["run", str(cfg_file), "--resume"])
    assert result.exit_code == 0, result.output
    assert not lock_path(run_dir).exists()


def test_damaged_leaves_of_a_model_saved_before_checksums_are_named(tmp_path):
    """A truncated model.eqx whose model.json records no digest (saved before checksums) was an
    equinox TreePathError traceback."""
    from hybridlsm.models.registry import get_model, validate_options

    spec = get_model("hybrid_param")
    options = validate_options("hybrid_param", {"width": 4})
    spec.save(spec.build(options), options, tmp_path)
    load_saved_model(tmp_path)
    meta = json.loads((tmp_path / "model.json").read_text())
    (tmp_path / "model.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "sha256"}))
    (tmp_path / "model.json.sha256").unlink()
    leaves = (tmp_path / "model.eqx").read_bytes()
    (tmp_path / "model.eqx").write_bytes(leaves[: len(leaves) // 2])
    with pytest.raises(SavedModelError, match=r"model\.eqx: cannot load the trained hybrid_param model: ValueError: EOF"):
        load_saved_model(tmp_path)


def test_a_run_reached_through_a_link_has_one_lock(tmp_path):
    """The lock file was named from the path as typed: a run reached through a symbolic link had a
    second lock, so two processes could write it at once."""
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "runs")
    assert lock_path(tmp_path / "link" / "r") == lock_path(run) == tmp_path / "runs" / ".r.lock"
