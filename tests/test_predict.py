"""`hybridlsm predict`: a model trained on two sites by `hybridlsm run` is loaded from the run
directory (no retraining) and applied to a third site and to a grid, as a user would, in a
subprocess; bad input gives a one-line error (checked in this process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from hybridlsm.cli import app
from hybridlsm.data import read_site
from hybridlsm.data.schema import DataWarning
from hybridlsm.domain import domain_from_site
from hybridlsm.models.registry import load_run_config, load_saved_model
from hybridlsm.pipeline import load_domains
from hybridlsm.predict import domain_from_file

pytestmark = pytest.mark.slow

CONFIG = """
name: two
data:
  sites:
    - {virtual: {site_id: V-GRA, igbp: GRA, days: 20, seed: 2, noise: 5.0, start: 2011-05-01}}
    - {virtual: {site_id: V-ENF, igbp: ENF, days: 20, seed: 3, noise: 5.0, start: 2011-05-01}}
  split: {train: 0.5, val: 0.25, test: 0.25}
  spinup_days: 1
  window_days: 3
models:
  - {name: physics, options: {epochs: 2, calibrate: [rs_scale, ra_scale]}}
  - {name: 1lin}
  - {name: lstm, options: {hidden_size: 4}}
training: {epochs: 1, batch_windows: 8}
output: {run_dir: RUNS}
"""

US_CRT = "US-CRT_201101-201112_HH.csv"
GRID = "LittleWashita_NLDAS_41x41_120h.nc"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hybridlsm", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("predict")
    cfg = tmp / "two.yaml"
    cfg.write_text(CONFIG.replace("RUNS", str(tmp / "runs")))
    result = _cli("run", str(cfg))
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp / "runs" / "two"


def test_trained_model_is_saved_and_reloads_to_the_same_predictions(run_dir, shared_data):
    """The saved model predicts what the run wrote, and per-site offsets survive the round trip."""
    spec, options, model = load_saved_model(run_dir / "models" / "physics" / "all")
    assert model.sites == ("V-ENF", "V-GRA") and np.asarray(model.deltas["rs_scale"]).shape == (2,)
    assert np.any(np.asarray(model.deltas["rs_scale"]) != 0.0)
    written = xr.open_dataset(run_dir / "predictions" / "V-GRA" / "physics.nc")
    assert written.attrs["parameters_from"] == "calibrated at V-GRA"
    domains = {d.column_ids[0]: d for d in load_domains(load_run_config(run_dir / "config.yaml"))}
    again = spec.predict(model, domains["V-GRA"])
    # the run computed in float32, this test in float64 (the loader casts the saved leaves)
    np.testing.assert_allclose(again["Qle"][:, 0], written["Qle"].values, rtol=1e-3, atol=0.02)
    obs = xr.open_dataset(run_dir / "predictions" / "V-GRA" / "obs.nc")
    assert obs.attrs["site_id"] == "V-GRA"


def test_predict_a_third_site_writes_alma_skill_and_report(run_dir, shared_data):
    out = run_dir / "applied" / "crt"
    result = _cli("predict", str(run_dir), str(shared_data / "fluxnet" / US_CRT), "--model", "physics",
                  "--start", "2011-06-01", "--end", "2011-06-30T23:30", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    pred = xr.open_dataset(out / "predictions" / "US-CRT" / "physics.nc")
    assert pred.sizes["time"] == 30 * 48 and str(pred["time"].values[0])[:16] == "2011-06-01T00:00"
    assert pred["Qle"].attrs["units"] == "W m-2" and np.isfinite(pred["Qle"].values).all()
    # a cropland: no training site of its class, so the mean of both sites' offsets
    assert pred.attrs["parameters_from"] == ("mean of the offsets calibrated at V-ENF, V-GRA "
                                             "(no training site of its class)")
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["columns"]["US-CRT"]["US-CRT"] == pred.attrs["parameters_from"]
    skill = json.loads((out / "skill.json").read_text())
    n_le = [r["n"] for r in skill if r["model"] == "physics" and r["flux"] == "Qle" and r["scale"] == "halfhourly"]
    site = domain_from_site(read_site(shared_data / "fluxnet" / US_CRT)).select_time(
        "2011-06-01", "2011-06-30T23:30").column(0)
    # scored: observed Qle where the forcing was not filled from the diurnal cycle (forcing_filled < 2)
    level = xr.open_dataset(out / "predictions" / "US-CRT" / "obs.nc")["forcing_filled"].values
    assert (level == 2).any() and n_le == [int((np.isfinite(site["Qle"].values) & (level < 2)).sum())]
    report = (out / "report.html").read_text()
    assert "Where the parameters came from" in report and pred.attrs["parameters_from"] in report
    # the model ran from the file's start (spin-up on January, the state reached by June), not from
    # 1 June: June's outputs are those of the record up to --end, cut; the June-only record differs
    spec, options, model = load_saved_model(run_dir / "models" / "physics" / "all")
    whole = domain_from_file(shared_data / "fluxnet" / US_CRT)  # gap-filled, as predict reads it
    lead_in = spec.predict(model, whole.select_time(None, "2011-06-30T23:30"))
    np.testing.assert_allclose(pred["Qle"].values, lead_in["Qle"][-30 * 48:, 0], rtol=1e-3, atol=0.02)
    june_only = spec.predict(model, whole.select_time("2011-06-01", "2011-06-30T23:30"))
    assert np.abs(june_only["Qle"][:, 0] - pred["Qle"].values).max() > 5.0
    # three days cannot settle the soil: the prediction says its start state still drifts
    with pytest.warns(DataWarning, match=r"US-CRT: the spin-up \(5 cycles of the record's first 3 days\) did not converge"):
        spec.predict(model, whole.select_time("2011-06-01", "2011-06-03"))


def test_predict_a_grid_writes_y_x(run_dir, shared_data):
    grid = shared_data / "gridded" / GRID
    out = run_dir / "applied" / "grid"
    result = _cli("predict", str(run_dir), str(grid), "--model", "physics", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    ds = xr.open_dataset(out / f"{grid.stem}_physics.nc")
    assert ds["Qh"].dims == ("time", "y", "x") and ds["Qh"].shape == (120, 41, 41)
    assert np.isfinite(ds["Qh"].values).all()
    src = xr.open_dataset(grid)
    np.testing.assert_array_equal(ds["y"].values, src["y"].values)
    counts = {c: int((ds["igbp"].values == c).sum()) for c in ("GRA", "SAV", "CRO", "DNF")}
    assert counts == {"GRA": 1098, "SAV": 399, "CRO": 166, "DNF": 18}  # the file's land cover (data README §8.2)
    prov = json.loads((out / "provenance.json").read_text())["columns"][grid.stem]
    where = list(prov.values())
    assert sum(w == "mean of the offsets calibrated at V-GRA (same IGBP class GRA)" for w in where) == 1098
    # the empirical baseline applies to the same grid
    result = _cli("predict", str(run_dir), str(grid), "--model", "1lin", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert xr.open_dataset(out / f"{grid.stem}_1lin.nc")["Qle"].shape == (120, 41, 41)


def test_predict_streams_a_zarr_grid_and_refuses_a_model_that_cannot_stream(run_dir):
    from hybridlsm.data.virtual import virtual_grid

    store = run_dir / "vgrid.zarr"  # a grid in the canonical form, written lazily
    virtual_grid(4, 3, 3, step_s=1800, chunks=(48, 2, 3), start="2011-05-01").to_zarr(store, zarr_format=2)
    out = run_dir / "applied" / "zarr"
    result = _cli("predict", str(run_dir), str(store), "--model", "physics", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    ds = xr.open_zarr(out / "vgrid_physics.zarr")
    assert ds["Qle"].dims == ("time", "y", "x") and ds["Qle"].shape == (144, 4, 3)
    assert np.isfinite(ds["Qle"].values).all() and ds.attrs["model"] == "physics"
    assert "vgrid" in json.loads((out / "provenance.json").read_text())["columns"]
    again = _cli("predict", str(run_dir), str(store), "--model", "physics", "--out", str(out))
    assert again.returncode == 2 and "exists; streamed outputs are never replaced" in again.stderr
    # a period: the model runs from the store's start (as for a file in memory) and writes the period
    # only, the last day of the same prediction up to --end
    for name, first in (("day", ["--start", "2011-05-02"]), ("to-end", [])):
        result = _cli("predict", str(run_dir), str(store), "--model", "physics", *first, "--end", "2011-05-02T23:30",
                      "--out", str(run_dir / "applied" / f"zarr-{name}"))
        assert result.returncode == 0, result.stderr[-3000:]
    cut, to_end = (xr.open_zarr(run_dir / "applied" / f"zarr-{n}" / "vgrid_physics.zarr") for n in ("day", "to-end"))
    assert cut.sizes["time"] == 48 and str(cut["time"].values[0])[:16] == "2011-05-02T00:00"
    assert to_end.sizes["time"] == 96
    np.testing.assert_allclose(cut["Qle"].values, to_end["Qle"].values[48:], rtol=1e-5, atol=1e-4)
    assert np.abs(cut["Qle"].values).max() > 50.0
    refused = _cli("predict", str(run_dir), str(store), "--model", "1lin", "--out", str(run_dir / "applied" / "no-zarr"))
    assert refused.returncode == 2 and "cannot run streamed" in refused.stderr, refused.stderr[-2000:]
    assert not (run_dir / "applied" / "no-zarr").exists()
    # two stores, the second with an impossible air temperature at its last step: the prediction
    # fails part-way, and provenance.json says the first store is whole and the second is not
    bad = run_dir / "vgrid-hot.zarr"
    grid = virtual_grid(4, 3, 3, step_s=1800, chunks=(48, 2, 3), start="2011-05-01").load()
    grid["Tair"].values[-1, 1, 2] = 400.0
    grid.chunk({"time": 48}).to_zarr(bad, zarr_format=2)
    out = run_dir / "applied" / "two-stores"
    failed = _cli("predict", str(run_dir), str(store), str(bad), "--model", "physics", "--out", str(out))
    assert failed.returncode != 0 and "Tair" in failed.stderr, failed.stderr[-2000:]
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["complete"] is False and list(prov["columns"]) == ["vgrid"]
    assert prov["not_written"] == [str(out / "vgrid-hot_physics.zarr")]
    assert prov["failed"].startswith(str(out / "vgrid-hot_physics.zarr")) and "Tair" in prov["failed"]
    assert np.isfinite(xr.open_zarr(out / "vgrid_physics.zarr")["Qle"].values).all()
    assert json.loads((run_dir / "applied" / "zarr" / "provenance.json").read_text())["complete"] is True
    # a netCDF grid of the same name as a store: provenance.json would hold one entry for both
    grid.isel(time=slice(0, 48)).to_netcdf(run_dir / "vgrid.nc")
    twin = _cli("predict", str(run_dir), str(store), str(run_dir / "vgrid.nc"), "--model", "physics", "--out",
                str(run_dir / "applied" / "no-twins"))
    assert twin.returncode == 2 and "a zarr store and a file both named ['vgrid']" in twin.stderr, twin.stderr[-2000:]
    assert not (run_dir / "applied" / "no-twins").exists()


@pytest.mark.parametrize("args, message", [
    (["--model", "hybrid_flux", "SITE"], "no trained model 'hybrid_flux'; the run has: 1lin, lstm, physics"),
    (["--model", "physics", "SITE", "--start", "2030-01-01"], "outside its record"),
    (["--model", "physics", "NOSW"], "SWdown"),
    (["--model", "physics", "SITE", "--start", "junk"], "start 'junk' is not a date"),
    (["--model", "physics", "SITE", "--start", "2011-06-01T12:00", "--end", "2011-06-01T12:00"],
     "holds 1 step; give at least two"),
    (["--model", "physics", "SITE", "SITE"], "map to the same folder name"),
    (["--model", "physics", "ICE"], "IGBP class 'SNO' has no LaD parameters"),
    (["--model", "lstm", "GRID"], "lstm was trained on 1800 s time steps and this forcing has 3600 s steps"),
    (["--model", "physics", "ONEROW"], "the file holds 1 step; give at least two"),  # was a traceback in the report
    (["--model", "physics", "SITE", "--start", "2011-06-10", "--end", "2011-06-01"],
     "start 2011-06-10 is after end 2011-06-01"),
])
def test_bad_input_is_one_clear_line(run_dir, shared_data, args, message):
    ice = run_dir / "ice.nc"  # a corner of the Little Washita grid with one cell of permanent snow and ice
    if not ice.exists():
        grid = xr.load_dataset(shared_data / "gridded" / GRID).isel(y=slice(0, 3), x=slice(0, 3))
        grid["land_cover"][0, 0] = 15
        grid.to_netcdf(ice)
    onerow = run_dir / "US-CRT_201101-201101_HH.csv"
    if not onerow.exists():
        lines = (shared_data / "fluxnet" / US_CRT).read_text().splitlines()
        header = lines[0].split(",")
        fluxes = [header.index(c) for c in ("H_F_MDS", "LE_F_MDS")]
        row = next(r for r in lines[1:] if all(r.split(",")[i] != "-9999" for i in fluxes))  # observed fluxes
        onerow.write_text(f"{lines[0]}\n{row}\n")
    files = {"SITE": str(shared_data / "fluxnet" / US_CRT), "ICE": str(ice), "ONEROW": str(onerow),
             "NOSW": str(shared_data / "fluxnet" / "AT-Neu_201007-201007_HH.csv"),  # bigleaf month: no SWdown
             "GRID": str(shared_data / "gridded" / GRID)}  # hourly
    # in this process (the other tests start `hybridlsm predict` as a user does): each refusal comes
    # before any model runs, so a new process would mostly pay JAX's start-up
    result = CliRunner().invoke(app, ["predict", str(run_dir), *[files.get(a, a) for a in args], "--out",
                                      str(run_dir / "applied" / "bad")], env={"COLUMNS": "400"})  # fmt: skip
    assert result.exit_code == 2, result.output[-2000:]
    assert isinstance(result.exception, SystemExit)  # a clear message, not an exception escaping
    assert message in " ".join(result.stderr.split()) and "Traceback" not in result.output
    assert not (run_dir / "applied" / "bad").exists()  # nothing half-written


def test_predict_never_replaces_a_users_files(run_dir, shared_data):
    user = run_dir.parent / "my-folder"
    user.mkdir(exist_ok=True)
    (user / "report.html").write_text("my own report")
    result = CliRunner().invoke(app, ["predict", str(run_dir), str(shared_data / "fluxnet" / US_CRT), "--model",
                                      "physics", "--out", str(user)], env={"COLUMNS": "400"})  # fmt: skip
    assert result.exit_code == 2, result.output[-2000:]
    assert "holds files and is not the folder of an earlier prediction (no provenance.json)" in " ".join(
        result.stderr.split())
    assert sorted(p.name for p in user.iterdir()) == ["report.html"] and (user / "report.html").read_text() == "my own report"


def _predict(*args) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["predict", *map(str, args)], env={"COLUMNS": "400"})
    return result.exit_code, " ".join(result.stderr.split())


def test_predict_keeps_out_of_runs_and_never_mixes_inputs(run_dir, shared_data):
    """`--out` in a run's predictions/ or models/ gave that run files its report read as its own
    (it then failed); a second prediction of another period into the same folder was scored
    against the first's model files."""
    site = shared_data / "fluxnet" / US_CRT
    for out in (run_dir / "predictions" / "X", run_dir / "models" / "zzz", run_dir / "applied", run_dir / "elsewhere"):
        existed = out.exists()
        code, err = _predict(run_dir, site, "--model", "1lin", "--out", out)
        assert code == 2 and f"is inside the run directory {run_dir.resolve()}" in err, err
        assert out.exists() == existed
    elsewhere = run_dir.parent / "applied"  # a folder named applied outside any run is the user's choice
    code, err = _predict(run_dir, site, "--model", "1lin", "--start", "2011-06-01", "--end", "2011-06-02", "--out",
                         elsewhere)
    assert code == 0 and (elsewhere / "provenance.json").is_file(), err
    out = run_dir / "applied" / "mix"
    june = ["--start", "2011-06-01", "--end", "2011-06-10T23:30"]
    for model in ("1lin", "physics"):  # the same inputs: the second model joins the first
        code, err = _predict(run_dir, site, "--model", model, *june, "--out", out)
        assert code == 0, err
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["model"] == "physics" and sorted(prov["models"]) == ["1lin", "physics"]
    assert prov["inputs"]["start"] == "2011-06-01T00:00:00" and len(prov["inputs"]["files"][0]["sha256"]) == 64
    code, err = _predict(run_dir, site, "--model", "physics", "--start", "2011-07-01", "--end", "2011-07-10T23:30",
                         "--out", out)
    assert code == 2 and ("holds predictions of other inputs or scored otherwise (end '2011-06-10T23:30:00'; start "
                          "'2011-06-01T00:00:00')") in err, err
    with xr.open_dataset(out / "predictions" / "US-CRT" / "obs.nc") as obs:
        assert str(obs["time"].values[0])[:10] == "2011-06-01"  # untouched
    # the same period spelled otherwise is the same inputs; a folder inside a prediction's is refused
    code, err = _predict(run_dir, site, "--model", "1lin", "--start", "2011-06-01T00:00", "--end", "2011-06-10T23:30:00",
                         "--out", out)
    assert code == 0, err
    code, err = _predict(run_dir, site, "--model", "1lin", *june, "--out", out / "predictions" / "NEW")
    assert code == 2 and f"is inside the prediction folder {out.resolve()}" in err, err


def test_predict_scores_as_the_run_did(run_dir, shared_data, tmp_path):
    """The observations were scored with QC <= 1 and Qle, Qh whatever the run's data.max_qc and
    targets said: the skill of the run's own test period differed from its metrics.csv."""
    import shutil

    import yaml

    copy = tmp_path / "runs" / "qc0"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("applied"))
    cfg = yaml.safe_load((copy / "config.yaml").read_text())
    cfg["data"]["max_qc"] = 0
    (copy / "config.yaml").write_text(yaml.safe_dump(cfg))
    site = shared_data / "fluxnet" / "DE-Tha_201001-201012_HH.csv"  # QC flags 0 and 1 in these days
    june = ["--start", "2010-06-01", "--end", "2010-06-10T23:30"]
    n = {}
    for name, run in (("qc1", run_dir), ("qc0", copy)):
        code, err = _predict(run, site, "--model", "1lin", *june, "--out", run / "applied" / "qc")
        assert code == 0, err
        with xr.open_dataset(run / "applied" / "qc" / "predictions" / "DE-Tha" / "obs.nc") as obs:
            assert obs.attrs["max_qc"] == int(name[-1]) and obs.attrs["targets"] == "Qle Qh"
            qc = obs["Qle_qc"].values
        skill = json.loads((run / "applied" / "qc" / "skill.json").read_text())
        n[name] = next(r["n"] for r in skill if r["flux"] == "Qle" and r["scale"] == "halfhourly")
    assert (qc == 1).any() and n["qc0"] < n["qc1"]
    # a model of a run that scores otherwise does not join the folder (it would rescore the others)
    code, err = _predict(copy, site, "--model", "physics", *june, "--out", run_dir / "applied" / "qc")
    assert code == 2 and "scored otherwise (max_qc 1)" in err, err
