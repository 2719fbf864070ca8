"""`hybridlsm run` end to end on a tiny virtual-site config: the run directory, resume, and the
refusal to overwrite a run without being asked."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from typer.testing import CliRunner

from hybridlsm.cli import app
from hybridlsm.data import DataError, DataWarning
from hybridlsm.domain import site_file_name
from hybridlsm.pipeline import check_site_folders

CONFIG = """
name: tiny
data:
  sites:
    - {virtual: {site_id: TINY, days: 20, seed: 2, noise: 5.0}}
  split: {train: 0.5, val: 0.25, test: 0.25}
  spinup_days: 1
  window_days: 3
models:
  - {name: physics, options: {epochs: 2, calibrate: [rs_scale, ra_scale]}}
  - {name: 1lin}
training: {epochs: 2, batch_windows: 8}
output: {run_dir: RUNS}
"""


@pytest.mark.slow  # a few seconds; in make test, not test-fast
def test_run_writes_run_directory_and_resumes(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(CONFIG.replace("RUNS", str(tmp_path / "runs")))
    runner = CliRunner()
    result = runner.invoke(app, ["run", str(cfg)])
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "tiny"
    for path in ("config.yaml", "metrics.csv", "skill.json", "report.html", "predictions/TINY/obs.nc",
                 "predictions/TINY/physics.nc", "predictions/TINY/1lin.nc"):  # fmt: skip
        assert (run / path).exists(), path
    skill = json.loads((run / "skill.json").read_text())
    assert {r["model"] for r in skill} == {"physics", "1lin"}
    assert set(skill[0]) == {"site", "model", "flux", "scale", "split", "rmse", "nse", "kge", "kge_form", "bias", "bias_pct",
                             "bias_pct_note", "r", "n", "suspect", "suspect_reason", "config"}
    # the test block is the last quarter of the 960 - 48 steps after the one-day spin-up
    obs = xr.open_dataset(run / "predictions/TINY/obs.nc")
    split = obs["split"].values
    assert (split == 3).sum() == 228 and split[-1] == 3 and (split[:48] == 0).all()
    pred = xr.open_dataset(run / "predictions/TINY/physics.nc")
    assert pred["Qle"].attrs["units"] == "W m-2" and pred.sizes["time"] == 960
    assert np.isfinite(pred["Qh"].values).all()
    metrics = pd.read_csv(run / "metrics.csv")
    n_test = metrics.query("model == '1lin' and flux == 'Qle' and scale == 'halfhourly'")["n"].item()
    assert n_test == 228

    # a second run without --resume or --overwrite refuses and leaves the run as it was
    before = (run / "predictions/TINY/physics.nc").stat().st_mtime_ns
    result = runner.invoke(app, ["run", str(cfg)])
    assert result.exit_code == 1 and "exists" in result.output
    # --resume keeps finished predictions and only rebuilds the report, and the training times of
    # models finished before (here as if the run had stopped before writing timings.json)
    timings = json.loads((run / "timings.json").read_text())
    assert set(timings) == {"all/physics", "all/1lin"}
    (run / "timings.json").unlink()
    result = runner.invoke(app, ["run", str(cfg), "--resume"])
    assert result.exit_code == 0, result.output
    assert (run / "predictions/TINY/physics.nc").stat().st_mtime_ns == before
    assert json.loads((run / "timings.json").read_text()) == timings
    # a prediction damaged since: `hybridlsm report` names it and scores nothing, never the damaged values
    metrics = (run / "metrics.csv").read_text()
    data = bytearray((run / "predictions/TINY/1lin.nc").read_bytes())
    data[-100] ^= 0xFF
    (run / "predictions/TINY/1lin.nc").write_bytes(bytes(data))
    result = runner.invoke(app, ["report", str(run)])
    assert result.exit_code == 3 and "1lin.nc is damaged or truncated" in " ".join(result.output.split())
    assert (run / "metrics.csv").read_text() == metrics
    # nor a folder a run is still writing
    partial = run.with_name(".tiny.partial")
    run.rename(partial)
    result = runner.invoke(app, ["report", str(partial)])
    assert result.exit_code == 2 and "is an unfinished run" in " ".join(result.output.split())


def test_bad_config_is_a_clear_error(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(CONFIG.replace("RUNS", str(tmp_path)).replace("window_days: 3", "window_dayz: 3"))
    result = CliRunner().invoke(app, ["run", str(cfg)])
    assert result.exit_code == 2
    assert "window_dayz" in result.output


def test_overwrite_with_bad_data_keeps_the_previous_run(tmp_path):
    """Every input is read and checked before the run directory is touched: a config whose data
    cannot be read leaves an existing run as it was, even with --overwrite."""
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(CONFIG.replace("RUNS", str(tmp_path / "runs")))
    run = tmp_path / "runs" / "tiny"
    run.mkdir(parents=True)
    (run / "keep.txt").write_text("an earlier run")
    bad = tmp_path / "bad.csv"
    bad.write_text("TIMESTAMP_START,TIMESTAMP_END,TA_F\n201001010000,201001010030,nonsense\n")
    cfg.write_text(cfg.read_text().replace("    - {virtual: {site_id: TINY, days: 20, seed: 2, noise: 5.0}}",
                                           f"    - {bad}"))
    result = CliRunner().invoke(app, ["run", str(cfg), "--overwrite"])
    assert result.exit_code == 2, result.output
    assert "bad.csv" in result.output and "Traceback" not in result.output
    assert (run / "keep.txt").read_text() == "an earlier run"


def test_site_ids_become_safe_folder_names_and_clashes_are_refused():
    assert site_file_name("US-Wkg") == "US-Wkg"
    assert site_file_name("../../X") == "_.._X" and "/" not in site_file_name("a/b/../c")
    check_site_folders(["US-Wkg", "US-Me2"])
    with pytest.raises(DataError, match=r"site ids \['US/X', 'US_X'\] map to the same folder name"):
        check_site_folders(["US/X", "US_X", "DE-Tha"])


@pytest.mark.slow
def test_resume_reuses_the_saved_calibration_for_the_hybrids(tmp_path):
    """A resumed run whose physics is finished gives the hybrids that physics (loaded from
    models/), not a fresh calibration, and the hybrid trains to the same predictions."""
    import shutil

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(CONFIG.replace("RUNS", str(tmp_path / "runs")).replace(
        "{name: physics, options: {epochs: 2, calibrate: [rs_scale, ra_scale]}}",
        "{name: physics, options: {calibrate: [rs_scale, ra_scale]}}").replace(  # what the hybrid starts from
        "  - {name: 1lin}", "  - {name: hybrid_flux, options: {epochs: 1, width: 8, calibrate: [rs_scale, ra_scale]}}"))
    runner = CliRunner()
    assert runner.invoke(app, ["run", str(cfg)]).exit_code == 0
    run = tmp_path / "runs" / "tiny"
    assert not (run / "checkpoints/hybrid_flux/all/physics_init").exists()  # shared within the run
    first = xr.load_dataset(run / "predictions/TINY/hybrid_flux.nc")["Qle"].values
    for path in ("predictions/TINY/hybrid_flux.nc", "checkpoints/hybrid_flux", "models/hybrid_flux"):
        target = run / path
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    result = runner.invoke(app, ["run", str(cfg), "--resume"])
    assert result.exit_code == 0, result.output
    assert not (run / "checkpoints/hybrid_flux/all/physics_init").exists()  # no second calibration
    again = xr.load_dataset(run / "predictions/TINY/hybrid_flux.nc")["Qle"].values
    np.testing.assert_allclose(again, first, rtol=1e-5, atol=1e-3)


def test_overwrite_replaces_the_old_run_only_when_the_new_one_has_finished(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(CONFIG.replace("RUNS", str(tmp_path / "runs")).replace("  - {name: physics, options: {epochs: 2, calibrate: [rs_scale, ra_scale]}}\n", ""))
    run = tmp_path / "runs" / "tiny"
    run.mkdir(parents=True)
    (run / "keep.txt").write_text("a user's file, not a run")
    # a folder that is not a run directory (no config.yaml) is neither written into nor replaced
    for flag in ("--overwrite", "--resume"):
        result = CliRunner().invoke(app, ["run", str(cfg), flag])
        assert result.exit_code == 1 and "is not a hybridlsm run directory (no config.yaml)" in " ".join(
            result.output.split()), result.output
        assert sorted(p.name for p in run.iterdir()) == ["keep.txt"]
    # nor is a folder of the user's that holds a config.yaml (its own, or a run's) without the files
    # every run has
    for text in ("hello: 1\n", cfg.read_text()):
        (run / "config.yaml").write_text(text)
        result = CliRunner().invoke(app, ["run", str(cfg), "--overwrite"])
        assert result.exit_code == 1 and "is not a hybridlsm run directory" in result.output, result.output
        assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "keep.txt"]
    (run / "inputs.json").write_text("{}")  # an earlier run
    result = CliRunner().invoke(app, ["run", str(cfg), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert not (run / "keep.txt").exists() and (run / "predictions/TINY/1lin.nc").is_file()
    # the report was built before the run took its place, and names the place
    assert (run / "report.html").is_file() and str(run) in (run / "report.html").read_text()
    assert ".partial" not in (run / "report.html").read_text() and ".overwrite" not in (run / "report.html").read_text()
    assert sorted(p.name for p in run.parent.iterdir()) == ["tiny"]  # no temporary sibling left
    # the data files are recorded; a virtual site has none
    assert json.loads((run / "inputs.json").read_text()) == {}


@pytest.mark.slow  # three tiny runs of 1lin on ten days of a real site
def test_resume_refuses_changed_data_and_recomputes_a_model_without_its_model_json(shared_data, tmp_path):
    lines = (shared_data / "fluxnet" / "US-Wkg_200405-200412_HH.csv").read_text().splitlines()[: 10 * 48 + 1]
    data = tmp_path / "US-Wkg_200405-200412_HH.csv"
    data.write_text("\n".join(lines) + "\n")
    cfg = tmp_path / "wkg.yaml"
    cfg.write_text(f"name: wkg\ndata: {{sites: [{data}], split: {{train: 0.5, val: 0.25, test: 0.25}}, "
                   f"spinup_days: 1, window_days: 2}}\nmodels: [{{name: 1lin}}]\noutput: {{run_dir: {tmp_path / 'runs'}}}\n")
    runner = CliRunner()
    assert runner.invoke(app, ["run", str(cfg)]).exit_code == 0
    run = tmp_path / "runs" / "wkg"
    assert list(json.loads((run / "inputs.json").read_text())) == [str(data)]
    # a model saved without its model.json cannot be applied elsewhere: resume recomputes it
    (run / "models/1lin/all/model.json").unlink()
    result = runner.invoke(app, ["run", str(cfg), "--resume"])
    assert result.exit_code == 0 and "no trained model here (model.json missing); recomputing" in " ".join(
        result.output.split()), result.output
    assert (run / "models/1lin/all/model.json").is_file()
    # the data file changed since: resuming would score the old models against the new data
    data.write_text(data.read_text().replace("\n2004", "\n 2004", 1))
    result = runner.invoke(app, ["run", str(cfg), "--resume"])
    assert result.exit_code == 2 and f"data file(s) {data} changed since {run} started" in " ".join(
        result.output.split()), result.output


def test_a_model_label_may_not_replace_the_observations_file():
    from hybridlsm.config import ConfigError
    from hybridlsm.models.registry import validate_run_config

    with pytest.raises(ConfigError, match=r"label 'obs' is the name of a file every run writes"):
        validate_run_config({"name": "t", "data": {"sites": [{"virtual": {"days": 5}}]},
                             "models": [{"name": "1lin", "label": "obs"}]})


@pytest.mark.slow  # a few seconds; in make test, not test-fast
def test_resume_with_a_different_config_names_the_keys(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(CONFIG.replace("RUNS", str(tmp_path / "runs")).replace("  - {name: physics, options: {epochs: 2, calibrate: [rs_scale, ra_scale]}}\n", ""))
    runner = CliRunner()
    assert runner.invoke(app, ["run", str(cfg)]).exit_code == 0
    stored = (tmp_path / "runs/tiny/config.yaml").read_text()
    cfg.write_text(cfg.read_text().replace("split: {train: 0.5, val: 0.25, test: 0.25}",
                                           "split: {train: 0.6, val: 0.2, test: 0.2}"))
    result = runner.invoke(app, ["run", str(cfg), "--resume"])
    assert result.exit_code == 2, result.output
    assert "data.split.train: 0.5 -> 0.6" in " ".join(result.output.split())
    assert (tmp_path / "runs/tiny/config.yaml").read_text() == stored  # untouched
    # output settings may change on resume
    cfg.write_text(cfg.read_text().replace("split: {train: 0.6, val: 0.2, test: 0.2}",
                                           "split: {train: 0.5, val: 0.25, test: 0.25}") + "\n")
    assert runner.invoke(app, ["run", str(cfg), "--resume", "--overwrite"]).exit_code == 0


def test_resume_with_overwrite_continues_an_overwrite_that_stopped(tmp_path):
    from hybridlsm.config import write_config
    from hybridlsm.models.registry import validate_run_config
    from hybridlsm.pipeline import prepare_run_dir

    cfg = validate_run_config({"name": "tiny", "data": {"sites": [{"virtual": {"days": 5}}]},
                               "models": [{"name": "1lin"}], "output": {"run_dir": str(tmp_path)}})
    run, stopped = tmp_path / "tiny", tmp_path / ".tiny.overwrite"
    for folder in (run, stopped):
        folder.mkdir()
        write_config(cfg, folder / "config.yaml")
        (folder / "inputs.json").write_text("{}")  # what every run directory has
    (stopped / "checkpoint-of-the-new-run").write_text("x")
    assert prepare_run_dir(cfg, resume=True)[0] == run  # the finished run, and the overwrite is named
    overwrite = cfg.model_copy(update={"output": cfg.output.model_copy(update={"overwrite": True})})
    assert prepare_run_dir(overwrite, resume=True)[0] == stopped
    assert (stopped / "checkpoint-of-the-new-run").is_file()
    # stopped between finish_run_dir's renames: the old run aside, nothing in its place; it was left
    # hidden, and a new run started beside it
    (run / "report.html").write_text("the old run's")
    run.rename(tmp_path / ".tiny.replaced")
    assert prepare_run_dir(overwrite, resume=True)[0] == stopped
    assert (run / "report.html").read_text() == "the old run's" and not (tmp_path / ".tiny.replaced").exists()
    run.rename(tmp_path / ".tiny.replaced")
    run.mkdir()  # an empty folder in its place: the new run went to .partial and its end deleted the old one
    assert prepare_run_dir(overwrite, resume=True)[0] == stopped
    assert (run / "report.html").read_text() == "the old run's" and not (tmp_path / ".tiny.replaced").exists()


def test_a_model_with_memory_is_refused_before_training_when_a_test_site_has_another_time_step(tmp_path):
    cfg = tmp_path / "mixed.yaml"
    cfg.write_text(f"""
name: mixed
data:
  sites:
    - {{virtual: {{site_id: HALF, days: 6, seed: 1}}}}
    - {{virtual: {{site_id: HOUR, days: 6, seed: 2, time_step_s: 3600}}}}
  split: {{test_sites: [HOUR], val: 0.25}}
  spinup_days: 1
  window_days: 2
models:
  - {{name: 1lin}}
  - {{name: lstm, options: {{hidden_size: 4}}}}
output: {{run_dir: {tmp_path / 'runs'}}}
""")
    result = CliRunner().invoke(app, ["run", str(cfg)], env={"COLUMNS": "400"})
    assert result.exit_code == 2, result.output
    assert ("HOUR has 3600 s time steps, its training sites 1800 s; lstm learn their memory at the training step"
            in " ".join(result.output.split()))
    assert not (tmp_path / "runs").exists()  # refused before anything trained or was written


def test_a_model_input_the_data_lacks_is_refused_before_the_run_directory_is_written(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(CONFIG.replace("RUNS", str(tmp_path / "runs")).replace(
        "  - {name: 1lin}\n", "  - {name: lstm, options: {inputs: [LAI, Tair], hidden_size: 4}}\n"))
    result = CliRunner().invoke(app, ["run", str(cfg)])
    assert result.exit_code == 2 and "lstm (lstm) needs ['LAI'], which TINY does not give" in " ".join(
        result.output.split()), result.output
    assert not (tmp_path / "runs").exists()


def test_windows_longer_than_every_record_name_data_window_days(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(CONFIG.replace("RUNS", str(tmp_path / "runs")).replace("window_days: 3", "window_days: 100").replace(
        "  - {name: 1lin}\n", "  - {name: lstm, options: {hidden_size: 4}}\n").replace(
        "  - {name: physics, options: {epochs: 2, calibrate: [rs_scale, ra_scale]}}\n", ""))
    result = CliRunner().invoke(app, ["run", str(cfg)])
    assert result.exit_code == 2 and "shorten data.window_days" in " ".join(result.output.split()), result.output


def test_a_regional_model_on_sites_is_refused_before_the_run_directory_is_written(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(CONFIG.replace("RUNS", str(tmp_path / "runs")).replace("  - {name: 1lin}\n",
                                                                          "  - {name: regional_hybrid}\n"))
    result = CliRunner().invoke(app, ["run", str(cfg)])
    assert result.exit_code == 2 and "regional_hybrid (regional_hybrid) runs on grid domains, and TINY is in a sites domain" in " ".join(
        result.output.split()), result.output
    assert not (tmp_path / "runs").exists()


def test_ctrl_c_says_the_run_can_be_resumed(tmp_path, monkeypatch):
    import hybridlsm.pipeline

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(hybridlsm.pipeline, "load_domains", interrupted)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(CONFIG.replace("RUNS", str(tmp_path / "runs")))
    result = CliRunner().invoke(app, ["run", str(cfg)])
    output = " ".join(result.output.split())
    assert result.exit_code == 130 and "interrupted: stopped by Ctrl-C; a run or sweep keeps" in output and "--resume" in output


def test_a_date_split_without_a_step_of_any_site_is_refused_and_a_site_without_one_warned(tmp_path):
    from hybridlsm.models.registry import load_run_config
    from hybridlsm.pipeline import experiments, load_domains

    def config(test: str, second_days: int = 20):
        text = CONFIG.replace("RUNS", str(tmp_path / "runs")).replace(
            "    - {virtual: {site_id: TINY, days: 20, seed: 2, noise: 5.0}}\n",
            "    - {virtual: {site_id: TINY, days: 20, seed: 2, noise: 5.0, start: 2011-05-01}}\n"
            f"    - {{virtual: {{site_id: SHORT, days: {second_days}, seed: 3, noise: 5.0, start: 2011-05-01}}}}\n").replace(
            "split: {train: 0.5, val: 0.25, test: 0.25}",
            f"split: {{train: [2011-05-02, 2011-05-10], val: [2011-05-11, 2011-05-15], test: {test}}}")
        path = tmp_path / "dates.yaml"
        path.write_text(text)
        cfg = load_run_config(path)
        return cfg, load_domains(cfg)

    cfg, sites = config("[2011-05-16, 2011-05-20]")
    assert {k: int(v.max()) for k, v in experiments(cfg, sites)[0].labels.items()} == {"TINY": 3, "SHORT": 3}
    cfg, sites = config("[2011-05-16, 2011-05-20]", second_days=12)  # SHORT ends before the test dates
    with pytest.warns(DataWarning, match=r"data.split.test \(2011-05-16 .. 2011-05-20\) holds no step of SHORT"):
        assert int(experiments(cfg, sites)[0].labels["SHORT"].max()) == 2
    cfg, sites = config("[2012-01-01, 2012-01-31]")
    with pytest.raises(DataError, match=r"data.split.test \(2012-01-01 .. 2012-01-31\) holds no step of any site's "
                                        r"record \(TINY 2011-05-01 .. 2011-05-20, SHORT"):
        experiments(cfg, sites)


def test_an_ensemble_of_regional_models_on_sites_is_refused_before_the_run_directory_is_written(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(CONFIG.replace("RUNS", str(tmp_path / "runs")).replace(
        "  - {name: 1lin}\n", "  - {name: ensemble, options: {model: regional_hybrid, size: 2}}\n"))
    result = CliRunner().invoke(app, ["run", str(cfg)])
    assert result.exit_code == 2 and "ensemble (ensemble) runs on grid domains" in " ".join(result.output.split())
    assert not (tmp_path / "runs").exists()
