"""The validation hierarchy (``hybridlsm.evaluation.validation``): offline, partially coupled and
online levels of a tiny run, the drift definitions checked by hand, and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from hybridlsm.constants import LATENT_HEAT_FUSION
from hybridlsm.evaluation.validation import (
    LEVELS,
    SECONDS_PER_YEAR,
    ValidationRunError,
    cycle_drift,
    daily_means,
    emergent_statistics,
    storage_drift,
    stored_energy,
    stored_water,
    validation_html,
)
from hybridlsm.validate import validate_run
from hybridlsm.rundir import lock_path, problem
from hybridlsm.data.schema import DataWarning

DAYS = 60
#: the tiny runs' data section (the name line first)
DATA = f"""
data:
  sites:
    - {{virtual: {{site_id: TINY, days: {DAYS}, seed: 2, noise: 5.0}}}}
  split: {{train: 0.5, val: 0.25, test: 0.25}}
  spinup_days: 1
  window_days: 3
"""
CONFIG = "name: tiny" + DATA + """models:
  - {name: physics, options: {calibrate: []}}
  - {name: 1lin}
  - {name: hybrid_flux, options: {epochs: 1, width: 8, calibrate: []}}
training: {epochs: 1, batch_windows: 8}
output: {run_dir: RUNS}
"""


@pytest.fixture(scope="module")
def validated(tmp_path_factory):
    """A finished tiny run (physics, a hybrid, an empirical baseline) validated over 5 years."""
    from hybridlsm.pipeline import run_config_file

    root = tmp_path_factory.mktemp("validation")
    cfg = root / "tiny.yaml"
    cfg.write_text(CONFIG.replace("RUNS", str(root / "runs")))
    run = run_config_file(cfg)
    return run, validate_run(run, years=5, progress=False)


@pytest.mark.slow  # builds and validates a small run (~25 s)
def test_validate_run_levels_drift_and_files(validated):
    run, result = validated
    assert set(result["models"]) == {"physics", "1lin", "hybrid_flux"}
    assert result["models"]["physics"]["type"] == "physics"
    metrics = pd.read_csv(run / "metrics.csv").query("scale == 'halfhourly'")
    for label in ("physics", "hybrid_flux"):
        levels = result["models"][label]["sites"]["TINY"]
        assert set(levels) == set(LEVELS) and all(v["status"] == "ok" for v in levels.values())
        on = levels["online"]
        # 5 years of the 60-day record: round(5 * 365 / 60) = 30 cycles of 2880 steps
        assert on["cycles"] == 30 and on["steps"] == 30 * DAYS * 48
        assert on["simulated_years"] == pytest.approx(30 * DAYS / 365)
        assert on["finite"] and sum(on["nonfinite"].values()) == 0 and on["first_nonfinite_cycle"] is None
        assert abs(on["energy_drift_w_m2"]) < 0.1 and abs(on["water_drift_mm_yr"]) < 1.0 and on["stable"]
        assert len(on["cycle_mean_energy_j_m2"]) == on["cycles"]
        e = on["cycle_mean_energy_j_m2"]  # the drift is the definition applied to the stored series
        assert on["energy_drift_w_m2"] == pytest.approx((e[-1] - e[0]) / (29 * DAYS * 86400.0), rel=1e-9)
        assert set(on["emergent"]) == {"daily_Qh", "daily_Qle", "bowen_ratio", "dry_down"}
        assert on["emergent"]["daily_Qle"]["status"] == "ok"
        assert set(on["emergent"]["bowen_ratio"]) == {"DJF", "MAM", "JJA", "SON"}
        assert on["emergent"]["bowen_ratio"]["DJF"]["n_obs_days"] == DAYS  # Jan-Feb: every day has LE > 10
        assert on["emergent"]["bowen_ratio"]["JJA"]["status"] == "not available"
        # partially coupled = the run's own half-hourly test skill (metrics.csv)
        pc, off = levels["partially_coupled"], levels["offline"]
        for flux in ("Qh", "Qle"):
            row = metrics.query(f"model == '{label}' and flux == '{flux}'").iloc[0]
            assert pc[flux]["nse"] == pytest.approx(row["nse"], rel=1e-9) and pc[flux]["n"] == row["n"]
            # offline: every test step has an observed SoilTemp, so it scores the same steps
            assert off[flux]["n"] == pc[flux]["n"] > 0 and np.isfinite(off[flux]["nse"]) and off[flux]["rmse"] > 0
        assert "SoilTemp" in off["surface_temperature_proxy"]

    # a model without states: not applicable offline and online, scored partially coupled
    lin = result["models"]["1lin"]["sites"]["TINY"]
    assert lin["offline"]["status"] == lin["online"]["status"] == "not applicable"
    assert "no prognostic state" in lin["online"]["reason"] and lin["partially_coupled"]["status"] == "ok"

    out = run / "validation"
    stored = json.loads((out / "validation.json").read_text())
    assert set(stored) == {"run_dir", "years", "energy_drift_tol_w_m2", "water_drift_tol_mm_yr", "models"}
    assert stored["models"]["physics"]["sites"]["TINY"]["online"]["cycles"] == 30
    for name in ("validation.json", "levels.csv", "physics_online.png", "physics_emergent.png",
                 "hybrid_flux_online.png"):  # fmt: skip
        assert problem(out / name) is None, name  # written with a verifying sha256 sidecar
    assert not (out / "1lin_online.png").exists()
    table = pd.read_csv(out / "levels.csv")
    drift = table.query("model == 'physics' and quantity == 'energy drift'")["value"].item()
    assert drift == pytest.approx(stored["models"]["physics"]["sites"]["TINY"]["online"]["energy_drift_w_m2"])
    assert set(table.query("model == '1lin'")["status"]) == {"not applicable", "ok"}
    assert not lock_path(run).exists()  # the run's lock was released

    page = validation_html(run)
    assert page.startswith("<h2>Validation levels</h2>") and page.count("<img") == 4 and "not applicable" in page


@pytest.mark.slow  # builds and validates a small run (~25 s)
def test_offline_level_is_not_available_without_soil_temperature(validated):
    from hybridlsm.evaluation.validation import offline
    from hybridlsm.validate import site_domains
    from hybridlsm.models.registry import load_saved_model

    run, _ = validated
    obs = xr.load_dataset(run / "predictions/TINY/obs.nc")
    domain = site_domains(run, {"TINY": obs})["TINY"]
    _, _, model = load_saved_model(run / "models/physics/all")
    res = offline(model, None, domain, obs.drop_vars("SoilTemp"), {}, None)
    assert res["status"] == "not available" and "SoilTemp" in res["reason"]


def test_drift_against_a_hand_computation():
    # cycle means 10, 12, 16 J m-2 over cycles of 100 s: (16 - 10) / (2 * 100 s) = 0.03 W m-2
    assert cycle_drift([10.0, 12.0, 16.0], 100.0) == pytest.approx(0.03)
    assert np.isnan(cycle_drift([10.0], 100.0))
    # a stored series: seasonal cycle + a trend of 2e-3 per second, 4 cycles of 48 half-hours
    t = np.arange(4 * 48) * 1800.0
    series = 5e6 + 3e5 * np.sin(2 * np.pi * t / (48 * 1800.0)) + 2e-3 * t
    assert storage_drift(series, 48, 1800.0) == pytest.approx(2e-3, rel=1e-9)
    # by hand: cycle means 1.5 and 5.5 of [1, 2 | 3, 4 | 5, 6] -> 4 / (2 cycles * 2 steps * 10 s) = 0.1
    assert storage_drift(np.arange(1.0, 7.0), 2, 10.0) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="whole cycles"):
        storage_drift(np.arange(5.0), 2, 10.0)
    # the stored quantities: energy E = S_R - L_f S, water W + S + W_g; 1 mm lost per year
    assert stored_energy(np.array([1e6]), np.array([2.0]))[0] == pytest.approx(1e6 - 2.0 * LATENT_HEAT_FUSION)
    assert stored_water(100.0, 2.0, 30.0) == pytest.approx(132.0)
    water = [132.0, 131.0, 130.0]
    assert cycle_drift(water, SECONDS_PER_YEAR) * SECONDS_PER_YEAR == pytest.approx(-1.0)


def test_emergent_statistics_on_a_constructed_record():
    days = np.arange("2020-01-01", "2020-12-31", dtype="datetime64[D]")
    n = days.size
    le = np.full(n, 50.0)
    h = 0.5 * le  # Bowen ratio 0.5 everywhere
    precip = np.zeros(n)
    wet = [20, 100, 200, 300]
    for i in wet:
        precip[i] = 10.0
        le[i + 1:i + 6] = 50.0 * 0.9 ** np.arange(5)  # LE decays by 10 % a day after rain
    h = 0.5 * le
    model_le = np.stack([le, le * 0.8])  # two cycles; the second evaporates 20 % less
    em = emergent_statistics(np.stack([h, h]), model_le, h, le, precip, days)
    assert em["bowen_ratio"]["JJA"]["obs_median"] == pytest.approx(0.5)
    assert em["bowen_ratio"]["JJA"]["model_median"] == pytest.approx(np.median(np.r_[h / le, h / (0.8 * le)]))
    dd = em["dry_down"]
    assert dd["n_obs_events"] == len(wet)
    assert dd["obs_mean_ratio"] == pytest.approx(0.9 ** np.arange(5))
    assert dd["model_mean_ratio"] == pytest.approx(0.9 ** np.arange(5)) and dd["within_observed_range"]
    q = em["daily_Qle"]
    assert q["obs_q05_q50_q95"][1] == pytest.approx(50.0) and q["within_observed_range"] is False  # model 5 % < obs min

    # daily means of full days only
    t = np.arange("2020-01-01T12:00", "2020-01-04T00:00", 30, dtype="datetime64[m]").astype("datetime64[ns]")
    d, m = daily_means(np.arange(t.size, dtype=float), t, 1800.0)
    assert d.tolist() == [np.datetime64("2020-01-02"), np.datetime64("2020-01-03")]
    assert m == pytest.approx([24 + 23.5, 24 + 48 + 23.5])


@pytest.mark.slow  # builds and validates a small run (~25 s)
def test_bad_run_directories_are_clear_errors(tmp_path, validated):
    with pytest.raises(ValidationRunError, match=r"run directory .*nowhere does not exist"):
        validate_run(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValidationRunError, match="not a finished run directory"):
        validate_run(tmp_path / "empty")
    run, _ = validated
    with pytest.raises(ValidationRunError, match=r"model\(s\) \['lstm'\]; the run has: 1lin, hybrid_flux, physics"):
        validate_run(run, labels=["lstm"])
    for years in (0, float("nan"), float("inf")):  # nan and inf crashed the online run's cycle count
        with pytest.raises(ValidationRunError, match="years must be a positive number"):
            validate_run(run, years=years)
    assert validation_html(tmp_path / "empty") == ""


@pytest.mark.slow  # validates one model of the small run again
def test_validating_one_model_keeps_the_others_results(tmp_path, validated):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(validated[0], run)
    result = validate_run(run, years=5, labels=["1lin"], progress=False)
    assert sorted(result["models"]) == ["1lin", "hybrid_flux", "physics"]
    stored = json.loads((run / "validation" / "validation.json").read_text())
    assert sorted(stored["models"]) == ["1lin", "hybrid_flux", "physics"]
    assert set(pd.read_csv(run / "validation" / "levels.csv")["model"]) == {"1lin", "hybrid_flux", "physics"}
    with pytest.warns(DataWarning, match=r"the earlier validation of hybrid_flux, physics ran 5 years, this one 2"):
        result = validate_run(run, years=2, labels=["1lin"], progress=False)
    assert sorted(result["models"]) == ["1lin"]


FALLBACK_CONFIG = "name: fallback" + DATA + """models:
  - {name: physics, options: {calibrate: []}}
  - {name: hybrid_param, label: hp, options: {epochs: 1, width: 8, calibrate: [], physics_init: default,
      dropout: 0.2, mc_samples: 3}}
  - {name: hybrid_param, label: hp_fallback, options: {epochs: 1, width: 8, calibrate: [], physics_init: default,
      dropout: 0.2, mc_samples: 3, fallback_threshold: 1.0e-9}}
training: {epochs: 1, batch_windows: 8}
output: {run_dir: RUNS}
"""


@pytest.mark.slow  # builds and validates a small run (~30 s)
def test_validate_runs_the_epistemic_fallback_at_every_level(tmp_path):
    """hybrid_param with a threshold so small that every multiplier falls back is the physics at
    every level (to rounding), with a fallen-back fraction of 1; without a threshold it is the hybrid."""
    from hybridlsm.pipeline import run_config_file

    cfg = tmp_path / "fallback.yaml"
    cfg.write_text(FALLBACK_CONFIG.replace("RUNS", str(tmp_path / "runs")))
    run = run_config_file(cfg)
    result = validate_run(run, years=1, progress=False)
    physics, hp, fb = (result["models"][m]["sites"]["TINY"] for m in ("physics", "hp", "hp_fallback"))
    for level in LEVELS:
        assert fb[level]["fallback_fraction"] == 1.0, level
        assert "fallback_fraction" not in hp[level] and "fallback_fraction" not in physics[level]
    for level in ("offline", "partially_coupled"):
        for flux in ("Qh", "Qle"):
            for k in ("nse", "rmse", "bias"):
                assert fb[level][flux][k] == pytest.approx(physics[level][flux][k], rel=1e-9, abs=1e-9), (level, flux, k)
            assert fb[level][flux]["n"] == physics[level][flux]["n"] > 0
            # the hybrid's own result is not the physics'
            assert abs(hp[level][flux]["rmse"] - physics[level][flux]["rmse"]) > 0.05, (level, flux)
    for k in ("energy_drift_w_m2", "water_drift_mm_yr"):
        assert fb["online"][k] == pytest.approx(physics["online"][k], rel=1e-6, abs=1e-12)
    assert fb["online"]["cycle_mean_water_mm"] == pytest.approx(physics["online"]["cycle_mean_water_mm"], rel=1e-12)
    assert hp["online"]["cycle_mean_water_mm"] != pytest.approx(physics["online"]["cycle_mean_water_mm"], rel=1e-6)

    table = pd.read_csv(run / "validation" / "levels.csv").query("quantity == 'fallen back'")
    assert sorted(table["level"]) == sorted(LEVELS) and set(table["model"]) == {"hp_fallback"}
    assert (table["value"] == 1.0).all()
    page = validation_html(run)
    assert "fallen back offline" in page and page.count("<td>1</td>") == 3
