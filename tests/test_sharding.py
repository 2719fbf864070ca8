"""The column axis over devices (issue 14): training split over 4 forced CPU devices gives the
single-device loss and gradient to rounding with the batch really split, and two processes joined by
``jax.distributed`` on the loopback address train one step together. Each check runs in fresh
processes (the device count is fixed when JAX starts), through ``hybridlsm devices --check``."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from pathlib import Path

from hybridlsm.config import ConfigError, TrainConfig, write_config
from hybridlsm.models.registry import load_run_config
from hybridlsm.pipeline import check_resumable
from hybridlsm.training.sharding import cell_mesh, pad_to_devices



def _devices_check(*args: str, devices: int | None = None, timeout: float = 600) -> subprocess.Popen:
    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "")
    if devices is not None:
        flags += f" --xla_force_host_platform_device_count={devices}"
    env["XLA_FLAGS"] = flags.strip()
    return subprocess.Popen([sys.executable, "-m", "hybridlsm", "devices", "--check", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def _result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    lines = out.splitlines()  # gloo's connection notices go to stdout too, before the JSON
    return json.loads("\n".join(lines[next(i for i, line in enumerate(lines) if line.startswith("{")):]))


@pytest.mark.slow  # starts JAX in a new process and compiles a training step (~30 s)
def test_split_over_four_devices_gives_the_single_device_loss_and_gradient():
    r = _result(_devices_check(devices=4))
    assert len(r["devices"]["devices"]) == 4
    c = r["check"]
    assert c["n_devices"] == 4 and c["batch_columns"] == 8
    # the batch is really split: 2 of the 8 windows on each device, for every kind of array
    assert c["shard_columns"] == {k: [2, 2, 2, 2] for k in ("obs", "mask", "forcing.t_air", "weight")}
    assert c["max_abs_diff_loss"] <= 1e-6 * abs(c["loss_single"])
    assert c["max_abs_grad"] > 1e-3  # a gradient worth comparing
    assert c["max_abs_diff_grad"] <= 1e-5 * c["max_abs_grad"]
    assert c["loss_after_update"] < c["loss_sharded"]  # the trainer's update on the split batch learned


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two new JAX processes (~60 s)
def test_two_processes_with_jax_distributed_train_one_step_together():
    address = f"127.0.0.1:{_free_port()}"
    procs = [_devices_check("--coordinator", address, "--num-processes", "2", "--process-id", str(i))
             for i in range(2)]  # fmt: skip
    results = [_result(p) for p in procs]
    for i, r in enumerate(results):
        assert r["devices"]["process_count"] == 2 and r["devices"]["process_index"] == i
        assert len(r["devices"]["devices"]) == 2 and len(r["devices"]["local_devices"]) == 1
        c = r["check"]
        assert c["n_devices"] == 2 and c["n_processes"] == 2
        assert c["shard_columns"]["obs"] == [4]  # each process holds only its own half of the batch
        assert c["max_abs_diff_loss"] <= 1e-6 * abs(c["loss_single"])
        assert c["max_abs_diff_grad"] <= 1e-5 * c["max_abs_grad"]
        assert c["loss_after_update"] < c["loss_sharded"]
    # both processes hold the same replicated model after the update
    assert results[0]["check"]["loss_after_update"] == results[1]["check"]["loss_after_update"]


def test_one_device_needs_no_mesh_and_a_run_resumes_on_other_devices(tmp_path):
    assert cell_mesh(1) is None
    with pytest.raises(ValueError, match="devices"):
        cell_mesh(64)  # more than this process's JAX sees: says how to get more on a CPU
    assert pad_to_devices(7, None) == 7
    assert TrainConfig(devices=4).config_hash() == TrainConfig(devices=1).config_hash()  # resume on other devices
    assert TrainConfig(devices=4).config_hash() != TrainConfig(lr=0.5).config_hash()
    cfg = load_run_config(Path(__file__).parents[1] / "src" / "hybridlsm" / "configs" / "demo.yaml")
    write_config(cfg, tmp_path / "config.yaml")
    check_resumable(cfg.model_copy(update={"training": cfg.training.model_copy(update={"devices": 4})}), tmp_path)
    with pytest.raises(ConfigError, match="training.lr"):
        check_resumable(cfg.model_copy(update={"training": cfg.training.model_copy(update={"lr": 0.5})}), tmp_path)
