"""``hybridlsm sweep`` (issue 14): leave-one-site-out folds trained as Dask tasks on a LocalCluster
give the sequential run's skill table, in the same run directory layout, with nothing written outside
it; a single-experiment config sweeps over its model entries."""

from __future__ import annotations

import json
import tempfile

import jax
import pandas as pd
import pytest
from typer.testing import CliRunner

from hybridlsm.cli import app
from hybridlsm.models.registry import load_run_config
from hybridlsm.pipeline import experiments, load_domains
from hybridlsm.sweep import entry_groups, sweep_tasks

CONFIG = """
name: NAME
data:
  sites:
    - {virtual: {site_id: SW-A, igbp: GRA, days: 12, seed: 1, noise: 5.0}}
    - {virtual: {site_id: SW-B, igbp: ENF, days: 12, seed: 2, noise: 5.0, latitude: 45.0}}
    - {virtual: {site_id: SW-C, igbp: CRO, days: 12, seed: 3, noise: 5.0, latitude: 38.0}}
  split: {leave_one_site_out: true, val: 0.25}
  spinup_days: 1
  window_days: 3
models:
  - {name: physics, options: {calibrate: [rs_scale, ra_scale]}}
  - {name: 1lin}
training: {epochs: 2, batch_windows: 8}
output: {run_dir: RUNS}
"""


def _config(tmp_path, name: str, text: str = CONFIG):
    path = tmp_path / f"{name}.yaml"
    path.write_text(text.replace("RUNS", str(tmp_path / "runs")).replace("NAME", name))
    return path


@pytest.mark.slow  # builds two configs' virtual sites (~7 s)
def test_tasks_are_the_folds_or_the_model_entries_of_one_experiment(tmp_path):
    cfg = load_run_config(_config(tmp_path, "t"))
    tasks = sweep_tasks(cfg, experiments(cfg, load_domains(cfg)))
    assert [t.name for t in tasks] == ["loso-SW-A", "loso-SW-B", "loso-SW-C"]
    one = load_run_config(_config(tmp_path, "one", CONFIG.replace("{leave_one_site_out: true, val: 0.25}",
                                                                  "{train: 0.6, val: 0.2, test: 0.2}")))
    tasks = sweep_tasks(one, experiments(one, load_domains(one)))
    assert [t.name for t in tasks] == ["all/physics", "all/1lin"]


def test_a_multi_model_ensemble_shares_its_task_with_its_members(tmp_path):
    """In a single-experiment sweep, the ensemble of two entries goes into their task (so it takes
    them from the task's cache); an entry with other options, and the rest, stay alone."""
    text = CONFIG.replace("{leave_one_site_out: true, val: 0.25}", "{train: 0.6, val: 0.2, test: 0.2}").replace(
        "  - {name: 1lin}\n",
        "  - {name: 1lin}\n"
        "  - {name: hybrid_param, options: {width: 8}}\n"
        "  - {name: hybrid_flux, label: flux_wide, options: {width: 16}}\n"
        "  - {name: hybrid_flux, options: {width: 8}}\n"
        "  - {name: ensemble, label: couplings, options: {members: [{model: hybrid_param, options: {width: 8}},\n"
        "                                                         {model: hybrid_flux, options: {width: 8}}]}}\n")
    cfg = load_run_config(_config(tmp_path, "g", text))
    assert entry_groups(cfg) == [("physics",), ("1lin",), ("hybrid_param", "hybrid_flux", "couplings"), ("flux_wide",)]


@pytest.mark.slow  # three folds twice: sequentially and on a two-worker LocalCluster
def test_a_loso_sweep_on_a_local_cluster_matches_the_sequential_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything written to the working directory would show here
    runner = CliRunner()
    seq = runner.invoke(app, ["run", str(_config(tmp_path, "seq"))])
    assert seq.exit_code == 0, seq.output
    # the system's temporary folder, as Dask finds it in this process and in the workers it starts
    systemp = tmp_path.parent / f"{tmp_path.name}-systemp"
    systemp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(systemp))
    monkeypatch.setenv("TMPDIR", str(systemp))
    swp = runner.invoke(app, ["sweep", str(_config(tmp_path, "swp")), "--workers", "2"])
    assert swp.exit_code == 0, swp.output
    assert not any(systemp.iterdir()), sorted(p.name for p in systemp.rglob("*"))  # no dask-scratch-space there
    assert "3 task(s) on a Dask LocalCluster of 2 worker process(es)" in swp.output
    a = pd.read_csv(tmp_path / "runs" / "seq" / "metrics.csv")
    b = pd.read_csv(tmp_path / "runs" / "swp" / "metrics.csv")
    assert len(a) == len(b) > 0 and set(a["model"]) == {"physics", "1lin"}
    keys = ["site", "model", "flux", "scale", "split"]
    merged = a.merge(b, on=keys, suffixes=("_seq", "_swp"))
    assert len(merged) == len(a)
    for col in ("rmse", "nse"):
        pd.testing.assert_series_equal(merged[f"{col}_seq"], merged[f"{col}_swp"], check_names=False,
                                       rtol=1e-6, atol=1e-6)  # fmt: skip
    timings = json.loads((tmp_path / "runs" / "swp" / "timings.json").read_text())
    assert sorted(timings) == sorted(f"loso-SW-{s}/{m}" for s in "ABC" for m in ("physics", "1lin"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs", "seq.yaml", "swp.yaml"]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["seq", "swp"]
    assert not any(p.name.startswith(".dask") for p in (tmp_path / "runs" / "swp").rglob("*"))


@pytest.mark.slow  # two small models as two tasks
def test_a_single_experiment_sweeps_its_models_as_tasks_on_a_running_scheduler(tmp_path):
    """The tasks go to a cluster the user started (``--scheduler ADDRESS``, as on a real cluster):
    here one of two worker threads in this process, so the tasks reuse its compiled programs."""
    import dask
    from distributed import LocalCluster

    text = CONFIG.replace("{leave_one_site_out: true, val: 0.25}", "{train: 0.6, val: 0.2, test: 0.2}")
    scratch = str(tmp_path / "dask")  # the test's own cluster keeps its files in its folder too
    with dask.config.set({"temporary-directory": scratch}):
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None,
                          scheduler_port=0, protocol="tcp://", local_directory=scratch) as cluster:
            result = CliRunner().invoke(app, ["sweep", str(_config(tmp_path, "one", text)), "--scheduler",
                                              cluster.scheduler_address])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"2 task(s) on the Dask scheduler at {cluster.scheduler_address}" in " ".join(result.output.split())
    metrics = pd.read_csv(tmp_path / "runs" / "one" / "metrics.csv")
    assert set(metrics["model"]) == {"physics", "1lin"} and set(metrics["site"]) == {"SW-A", "SW-B", "SW-C"}


def test_a_scheduler_address_that_does_not_answer_is_refused_before_the_run_directory(tmp_path):
    cfg = _config(tmp_path, "nosched")
    for address in ("garbage", "foo://bar:1"):  # malformed: refused at once (a silent port takes the timeout)
        result = CliRunner().invoke(app, ["sweep", str(cfg), "--scheduler", address], env={"COLUMNS": "400"})
        assert result.exit_code == 2, result.output
        assert f"--scheduler '{address}': no Dask scheduler answers there" in " ".join(result.output.split())
        assert not (tmp_path / "runs").exists()  # no .partial left to block the next sweep
    # and the failed client is not left as the process's dask scheduler (later computations hung or failed)
    import dask.array

    assert float(dask.array.ones(3).sum().compute()) == 3.0


def test_a_failed_task_returns_its_error_and_the_parent_raises_it(tmp_path):
    """A task's own error (here an LSTM whose windows are longer than the records) comes back as a
    value, not a worker's traceback, and the parent raises the same class with the same message."""
    from hybridlsm.data import DataError
    from hybridlsm.sweep import _run_task, _task_timings

    text = CONFIG.replace("window_days: 3", "window_days: 100").replace(
        "  - {name: physics, options: {calibrate: [rs_scale, ra_scale]}}\n  - {name: 1lin}\n",
        "  - {name: lstm, options: {hidden_size: 4}}\n")
    cfg = load_run_config(_config(tmp_path, "failing", text))
    task = sweep_tasks(cfg, experiments(cfg, load_domains(cfg)))[0]
    result = _run_task(cfg.model_dump(mode="json"), tuple(task), "failing.yaml", False, str(tmp_path / "work"),
                       bool(jax.config.jax_enable_x64))  # the process's own precision: _run_task sets it
    assert result["error"][0] == "DataError" and "shorten data.window_days" in result["error"][1]
    with pytest.raises(DataError, match="shorten data.window_days"):
        _task_timings(result)
    assert _task_timings({"timings": {"a/b": 1.0}}) == {"a/b": 1.0}


@pytest.mark.slow  # three folds of a regression, twice
def test_a_failed_task_does_not_stop_the_others_and_resume_trains_only_it(tmp_path, monkeypatch):
    """The sweep used to cancel every task at the first failure, with nothing said of the others.
    Now the others finish, a table says which task failed and why, the error names what finished,
    and ``--resume`` trains only the failed fold."""
    import dask
    from distributed import LocalCluster

    import hybridlsm.pipeline
    import hybridlsm.sweep
    from hybridlsm.data import DataError

    real = hybridlsm.sweep.train_experiment

    def failing_at_b(cfg, exp, *args, **kwargs):
        if exp.name.endswith("SW-B"):
            raise DataError("SW-B: Precip [kg m-2 s-1] is missing [/x]")  # brackets: plain text, not markup
        return real(cfg, exp, *args, **kwargs)

    monkeypatch.setattr(hybridlsm.sweep, "train_experiment", failing_at_b)
    cfg = _config(tmp_path, "fails", CONFIG.replace("  - {name: physics, options: {calibrate: [rs_scale, ra_scale]}}\n", ""))
    scratch = str(tmp_path / "dask")
    with dask.config.set({"temporary-directory": scratch}):  # worker threads in this process: the patch holds
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None,
                          scheduler_port=0, protocol="tcp://", local_directory=scratch) as cluster:
            args = ["sweep", str(cfg), "--scheduler", cluster.scheduler_address]
            result = CliRunner().invoke(app, args, env={"COLUMNS": "400"})
            out = " ".join(result.output.split())
            assert result.exit_code == 2, result.output  # a DataError's exit code
            assert "1 of 3 sweep task(s) failed: loso-SW-B: SW-B: Precip [kg m-2 s-1] is missing [/x]" in out, out
            assert "finished: loso-SW-A, loso-SW-C" in out and "--resume trains only what failed" in out
            assert "sweep tasks" in out and "failed: SW-B: Precip [kg m-2 s-1]" in out  # the table
            partial = tmp_path / "runs" / ".fails.partial"
            assert partial.is_dir() and not (tmp_path / "runs" / "fails").exists()
            monkeypatch.setattr(hybridlsm.sweep, "train_experiment", real)
            trained = []
            monkeypatch.setattr(hybridlsm.pipeline.console, "print", lambda *a, **k: trained.append(str(a[0])))
            result = CliRunner().invoke(app, args + ["--resume"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    skipped = " ".join(line for line in trained if "skipped (resume)" in line)
    assert "loso-SW-A/" in skipped and "loso-SW-C/" in skipped and "loso-SW-B/" not in skipped, trained
    metrics = pd.read_csv(tmp_path / "runs" / "fails" / "metrics.csv")
    assert set(metrics["site"]) == {"SW-A", "SW-B", "SW-C"}


def test_a_task_error_of_a_subclass_comes_back_as_its_listed_base(tmp_path, monkeypatch):
    import hybridlsm.sweep
    from hybridlsm.data import DataError
    from hybridlsm.models.empirical import EmpiricalInputError
    from hybridlsm.sweep import _run_task, _task_timings

    def failing(*args, **kwargs):
        raise EmpiricalInputError("3km27: only 0 usable training rows")

    monkeypatch.setattr(hybridlsm.sweep, "train_experiment", failing)
    cfg = load_run_config(_config(tmp_path, "sub"))
    task = sweep_tasks(cfg, experiments(cfg, load_domains(cfg)))[0]
    result = _run_task(cfg.model_dump(mode="json"), tuple(task), "sub.yaml", False, str(tmp_path / "work"),
                       bool(jax.config.jax_enable_x64))  # the process's own precision: _run_task sets it
    assert result == {"error": ("DataError", "3km27: only 0 usable training rows")}
    with pytest.raises(DataError, match="only 0 usable training rows"):
        _task_timings(result)
