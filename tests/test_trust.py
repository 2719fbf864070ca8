"""Issue 11 (trust): every setting used or rejected, impossible forcing reported before training,
training that learned nothing fails, user errors are one line, repairs are flagged and not scored."""

from __future__ import annotations

import pytest

from hybridlsm.config import ConfigError
from hybridlsm.models.registry import validate_run_config


def _config(targets, models):
    return {"name": "t", "data": {"sites": [{"virtual": {"site_id": "V", "days": 20}}], "targets": targets},
            "models": models}


def test_models_train_on_the_runs_targets():
    """gbm used to demand Qle when the run's targets were [Qh]: a model's targets default to data.targets."""
    cfg = validate_run_config(_config(["Qh"], [{"name": "gbm"}, {"name": "lstm"}, {"name": "physics"},
                                               {"name": "hybrid_flux"}]), check_paths=False)
    assert [m.options["targets"] for m in cfg.models] == [["Qh"]] * 4


def test_a_target_a_model_cannot_train_on_is_refused():
    with pytest.raises(ConfigError, match=r"models\[1\] \(physics\) cannot train on data.targets \['Qh_cor'\]; "
                                          r"it can train on \['Qle', 'Qh', 'Qg', 'Rnet', 'AvgSurfT'\]"):
        validate_run_config(_config(["Qle", "Qh", "Qh_cor"], [{"name": "gbm"}, {"name": "physics"}]), check_paths=False)
    # narrowing it explicitly is accepted: gbm trains on all three, physics on two
    cfg = validate_run_config(_config(["Qle", "Qh", "Qh_cor"], [{"name": "gbm"},
                                      {"name": "physics", "options": {"targets": ["Qle", "Qh"]}}]), check_paths=False)
    assert cfg.models[0].options["targets"] == ["Qle", "Qh", "Qh_cor"]


def test_soil_temperature_is_not_a_target():
    """SoilTemp used to be accepted and dropped silently."""
    with pytest.raises(ConfigError, match=r"data.targets\[2\].*SoilTemp"):
        validate_run_config(_config(["Qle", "Qh", "SoilTemp"], [{"name": "gbm"}]), check_paths=False)


def test_a_model_may_only_narrow_the_runs_targets():
    with pytest.raises(ConfigError, match=r"models\[0\].options.targets has \['Qle'\], which data.targets \['Qh'\]"):
        validate_run_config(_config(["Qh"], [{"name": "lstm", "options": {"targets": ["Qle", "Qh"]}}]),
                            check_paths=False)


# ------------------------------------------------------------------ 5. impossible forcing, silent failure

import numpy as np  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from hybridlsm.cli import app  # noqa: E402
from hybridlsm.data import DataError, prepare_forcing, read_site, usable_targets  # noqa: E402
from hybridlsm.data.schema import DataWarning  # noqa: E402

WKG = "US-Wkg_200405-200412_HH.csv"


def _wkg_days(shared_data, tmp_path, days: int, edit=None):
    """The first ``days`` days of US-Wkg as a FLUXNET CSV in tmp_path, ``edit(header, rows)`` applied."""
    lines = (shared_data / "fluxnet" / WKG).read_text().splitlines()[: days * 48 + 1]
    header, rows = lines[0].split(","), [ln.split(",") for ln in lines[1:]]
    if edit is not None:
        edit(header, rows)
    path = tmp_path / WKG
    path.write_text("\n".join([",".join(header)] + [",".join(r) for r in rows]) + "\n")
    return path


def _kelvin_rows(header, rows, fraction=0.3, seed=0):
    j = header.index("TA_F")
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(len(rows), int(fraction * len(rows)), replace=False))
    for i in picked:
        rows[i][j] = f"{float(rows[i][j]) + 273.15:.3f}"
    return picked


def test_air_temperature_partly_in_kelvin_is_reported_with_rows(shared_data, tmp_path):
    picked = []
    path = _wkg_days(shared_data, tmp_path, 10, lambda h, r: picked.extend(_kelvin_rows(h, r)))
    with pytest.warns(Warning):
        ds = read_site(path)
    with pytest.raises(DataError) as err:
        prepare_forcing(ds)
    msg = str(err.value)
    assert f"{len(picked)} of 480 values outside the physically possible range 223.15..333.15 K" in msg
    assert f"(time step {picked[0]})" in msg and WKG in msg and "column TA_F (Tair)" in msg
    assert "they look like K, not degC" in msg
    # the repair on request: those values become gaps, filled, flagged and listed
    with pytest.warns(Warning, match="set missing"):
        fixed = prepare_forcing(ds, out_of_range="missing")
    assert int(fixed["Tair_filled"].values.sum()) == len(picked)
    assert float(fixed["Tair"].max()) < 320.0 and "TA_F (Tair)" in fixed.attrs["repairs"]
    # not scored, however short the gap each leaves (a one-step gap alone would be interpolated and scored)
    np.testing.assert_array_equal(np.flatnonzero(fixed["forcing_filled"].values == 2), picked)


def test_an_observation_outside_its_possible_range_is_set_missing_and_never_scored(shared_data, tmp_path):
    """An undeclared missing-value code in a flux column (-6999, QC 0) was kept and scored."""
    def codes(header, rows):
        j, q = header.index("H_F_MDS"), header.index("H_F_MDS_QC")
        for i, value in ((5, "-6999"), (6, "-9999.9")):
            rows[i][j], rows[i][q] = value, "0"

    path = _wkg_days(shared_data, tmp_path, 3, codes)
    with pytest.warns(Warning):
        ds = read_site(path)
    assert ds["Qh"].values[5] == -6999.0
    with pytest.warns(DataWarning, match=r"column H_F_MDS \(Qh\): 2 of .* observed values outside the physically "
                                         r"possible range -300..800 W m-2 \(min -9999.9, max -6999\), the first at "
                                         r".*\(time step 5\): set missing, never scored"):
        fixed = prepare_forcing(ds)
    assert np.isnan(fixed["Qh"].values[5:7]).all() and "never scored" in fixed.attrs["repairs"]
    usable = usable_targets(fixed, ["Qh"], 0)[1][:, 0]
    assert not usable[5:7].any() and usable[7]


def test_a_run_on_impossible_forcing_fails_before_training(shared_data, tmp_path):
    path = _wkg_days(shared_data, tmp_path, 10, _kelvin_rows)
    cfg = tmp_path / "k.yaml"
    cfg.write_text(f"name: k\ndata: {{sites: [{path}], split: {{train: 0.5, val: 0.25, test: 0.25}}, "
                   f"spinup_days: 1, window_days: 2}}\nmodels: [{{name: 1lin}}]\n"
                   f"output: {{run_dir: {tmp_path / 'runs'}}}\n")
    result = CliRunner().invoke(app, ["run", str(cfg)])
    assert result.exit_code == 2, result.output
    assert "TA_F (Tair)" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "runs" / "k").exists()


# ------------------------------------------------------------------ 7. repairs flagged, listed, not scored


import pandas as pd  # noqa: E402
import xarray as xr  # noqa: E402

from hybridlsm.data import forcing_filled, repair_summary  # noqa: E402


def _gap(first: int, n: int, columns=("TA_F", "SW_IN_F", "WS_F", "VPD_F", "PA_F")):
    def edit(header, rows):
        for c in columns:
            j = header.index(c)
            for i in range(first, first + n):
                rows[i][j] = "-9999"
    return edit


def test_a_three_day_forcing_gap_is_flagged_and_not_scored(shared_data, tmp_path):
    """The gap used to be filled from the diurnal cycle, then stored and scored as if observed."""
    gap0, gap_n = 14 * 48, 3 * 48  # days 15-17 of 20: inside the test block
    path = _wkg_days(shared_data, tmp_path, 20, _gap(gap0, gap_n))
    cfg = tmp_path / "gap.yaml"
    cfg.write_text(f"name: gap\ndata: {{sites: [{path}], split: {{train: 0.5, val: 0.2, test: 0.3}}, "
                   f"spinup_days: 1, window_days: 2}}\nmodels: [{{name: 1lin}}]\n"
                   f"output: {{run_dir: {tmp_path / 'runs'}}}\n")
    result = CliRunner().invoke(app, ["run", str(cfg)])
    assert result.exit_code == 0, result.output
    assert "data repairs and gaps" in result.output and "144 filled from the mean diurnal cycle" in result.output
    run = tmp_path / "runs" / "gap"
    obs = xr.load_dataset(run / "predictions/US-Wkg/obs.nc")
    level = obs["forcing_filled"].values
    assert (level[gap0 : gap0 + gap_n] == 2).all() and int((level == 2).sum()) == gap_n
    assert int(obs["Tair_filled"].values.sum()) == gap_n
    model = xr.load_dataset(run / "predictions/US-Wkg/1lin.nc")
    np.testing.assert_array_equal(model["forcing_filled"].values, level)
    # scored: test steps with usable obs (finite, QC <= 1) outside the gap, counted by hand
    test = obs["split"].values == 3
    usable = np.isfinite(obs["Qle"].values) & (obs["Qle_qc"].values <= 1)
    metrics = pd.read_csv(run / "metrics.csv")
    n = metrics.query("flux == 'Qle' and scale == 'halfhourly'")["n"].item()
    assert n == int((test & usable & (level < 2)).sum()) and n < int((test & usable).sum())
    report = (run / "report.html").read_text()
    assert "Data repairs and gaps" in report and "144 filled from the diurnal cycle or estimated (not scored)" in report


def test_missing_qc_flags_and_estimated_longwave_are_listed(shared_data, tmp_path):
    def drop(header, rows):
        for c in ("LE_F_MDS_QC", "LW_IN_F"):
            j = header.index(c)
            del header[j]
            for r in rows:
                del r[j]

    path = _wkg_days(shared_data, tmp_path, 5, drop)
    with pytest.warns(Warning):
        ds = read_site(path, metadata={"latitude": 31.7365, "longitude": -109.9419, "utc_offset_h": -7.0})
    with pytest.warns(Warning, match=r"LWdown estimated \(.*\) at 240 of 240 steps \(the file has no incoming longwave\)"):
        prepared = prepare_forcing(ds)
    lines = repair_summary(prepared, ["Qle", "Qh"])
    assert "no QC flags for Qle: every finite value counts as measured" in lines
    assert any(ln.startswith("LWdown: estimated") and "240 of 240 steps (the file has none)" in ln for ln in lines)
    assert not forcing_filled(prepared).any()  # a whole-record estimate is listed, not masked


# ------------------------------------------------------------------ 6. one line, nothing half-written

TINY = """
name: tiny
data:
  sites:
    - {virtual: {site_id: TINY, days: 12, seed: 2, noise: 5.0}}
  split: {train: 0.5, val: 0.25, test: 0.25}
  spinup_days: 1
  window_days: 2
models: [{name: 1lin}, {name: 2lin}]
output: {run_dir: RUNS}
"""


@pytest.mark.slow  # kept out of make test-fast (a few seconds)
def test_a_failed_training_is_one_line_and_leaves_no_run_directory(tmp_path, monkeypatch):
    """A run that fails half-way used to leave runs/<name> looking like a run; now the run directory
    appears only when the run has finished, and --resume continues the unfinished one."""
    from hybridlsm.models import empirical
    from hybridlsm.training import TrainingError

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY.replace("RUNS", str(tmp_path / "runs")))
    real_train = empirical.EmpiricalSpec.train

    def failing(self, model, options, train, val, ctx):
        if self.name == "2lin":
            raise TrainingError("no update was accepted in 3 epoch(s)")
        return real_train(self, model, options, train, val, ctx)

    monkeypatch.setattr(empirical.EmpiricalSpec, "train", failing)
    result = CliRunner().invoke(app, ["run", str(cfg)])
    assert result.exit_code == 3 and "Traceback" not in result.output
    partial = tmp_path / "runs" / ".tiny.partial"
    assert "training failed: all/2lin: no update was accepted in 3 epoch(s)" in " ".join(result.output.split())
    assert not (tmp_path / "runs" / "tiny").exists() and (partial / "predictions/TINY/1lin.nc").is_file()
    # a plain rerun refuses to start over silently; --resume keeps 1lin and trains 2lin
    assert CliRunner().invoke(app, ["run", str(cfg)]).exit_code == 1
    monkeypatch.setattr(empirical.EmpiricalSpec, "train", real_train)
    before = (partial / "predictions/TINY/1lin.nc").stat().st_mtime_ns
    result = CliRunner().invoke(app, ["run", str(cfg), "--resume"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "tiny"
    assert not partial.exists() and (run / "report.html").is_file()
    assert (run / "predictions/TINY/1lin.nc").stat().st_mtime_ns == before


def test_a_mistyped_year_is_an_error_not_a_million_missing_rows(shared_data, tmp_path):
    """A row dated 2100 in a 2004 file used to insert 1.7 million 'missing' rows (about 500 MB)."""
    def typo(header, rows):
        j = header.index("TIMESTAMP_START")
        k = header.index("TIMESTAMP_END")
        rows[-1][j] = "2100" + rows[-1][j][4:]
        rows[-1][k] = "2100" + rows[-1][k][4:]

    path = _wkg_days(shared_data, tmp_path, 2, typo)
    with pytest.raises(DataError, match=r"the time jumps from 2004-05-08 10:00 to 2100-05-08 10:30 at line 97 "
                                        r"\(a gap of 35063 days\).*mistyped year"):
        read_site(path)
