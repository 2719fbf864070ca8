"""Report of a synthetic run directory: two sites, three models, known truths."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from matplotlib import image as mpimg

from hybridlsm.evaluation import metrics as M
from hybridlsm.evaluation.report import (
    _skill_html,
    build_report,
    drying_efolding_time,
    dry_down_episodes,
    load_run,
    untrained_variables,
)

DT = 1800.0
NDAYS = 100
SPLIT_DAYS = (10, 60, 75)  # split 0 before day 10, 1 until 60, 2 until 75, 3 (test) after
RAIN_DAYS = (20, 40, 76, 84, 93)  # 15 mm each, 14:00-17:00
MODELS = ("physics", "hybrid", "2lin")
TAU_OBS, TAU_PHYS, TAU_HYB = 8.0, 4.0, 12.0


def _bucket(precip, tau_days, dz, theta_r=0.1, theta0=0.25):
    """θ decays to θ_r with e-folding time τ between rains; rain adds P·Δt/(ρ_w dz)."""
    decay = math.exp(-DT / (tau_days * 86400.0))
    th = np.empty(precip.size)
    x = theta0
    for i, p in enumerate(precip):
        x = theta_r + (x - theta_r) * decay + p * DT / (1000.0 * dz)
        th[i] = x
    return th


def _write_site(root, site, seed):
    rng = np.random.default_rng(seed)
    n = NDAYS * 48
    time = pd.date_range("2021-02-01", periods=n, freq="30min")
    day = np.arange(n) // 48
    hour = (np.arange(n) % 48) / 2.0 + 0.25
    split = np.select([day < SPLIT_DAYS[0], day < SPLIT_DAYS[1], day < SPLIT_DAYS[2]], [0, 1, 2], 3)
    sw = np.maximum(0.0, 700 * np.sin(np.pi * (hour - 6) / 12)) * np.repeat(rng.uniform(0.4, 1, NDAYS), 48)
    rn = 0.75 * sw - 40.0
    g = 0.1 * rn
    avail = rn - g
    frac = np.clip(0.6 + 0.1 * rng.normal(size=n), 0.1, 0.9)  # evaporative fraction
    qle = 0.8 * frac * avail  # tower closes 80 % of Rn − G
    qh = 0.8 * (1 - frac) * avail
    precip = np.zeros(n)
    for d in RAIN_DAYS:
        precip[d * 48 + 28 : d * 48 + 34] = 15.0 / 6 / DT
    theta_obs = _bucket(precip, TAU_OBS, dz=0.3)
    tsoil = 280.0 + 5 * np.sin(np.pi * (hour - 10) / 12) + 0.05 * day

    qle_qc = rng.choice([0, 1, 2, 3], size=n, p=[0.6, 0.2, 0.1, 0.1]).astype(np.int8)
    qle_obs = np.where(qle_qc >= 2, qle + 300.0, qle)  # wrong where QC is poor: must be excluded
    gap = rng.uniform(size=n) < 0.05
    qle_obs[gap] = np.nan
    qle_qc[gap] = -1
    obs = {
        "Qle": ("time", qle_obs),
        "Qle_qc": ("time", qle_qc),
        "Qh": ("time", qh),
        "Rnet": ("time", rn),
        "Qg": ("time", g),
        "SoilTemp": ("time", tsoil),
        "SoilMoistVol": ("time", theta_obs),
        "Precip": ("time", precip),
        "split": ("time", split.astype(np.int8)),
    }
    if seed == 0:  # one site with QC for H as well
        qh_qc = np.where(rng.uniform(size=n) < 0.1, 2, 0).astype(np.int8)
        obs["Qh"] = ("time", np.where(qh_qc == 2, qh - 200.0, qh))
        obs["Qh_qc"] = ("time", qh_qc)
    d = root / "predictions" / site
    d.mkdir(parents=True)
    xr.Dataset(obs, coords={"time": time}, attrs={"site_id": site, "time_step_s": DT}).to_netcdf(d / "obs.nc")

    attrs = {"site": site, "config": "syn-config"}
    lay = ("time", "soil_layer")
    # physics: conserving (Rn − G − H − LE = 0), SoilMoist in kg m-2 with layer thickness, Kh, rs
    e = rng.normal(0, 25, n)
    p_le = qle + e + np.where(split == 1, 100.0, 0.0)  # large errors outside the test split
    p_h = qh - e
    p_rn = 0.7 * sw - 35.0
    p_g = p_rn - p_le - p_h
    th_p = _bucket(precip, TAU_PHYS, dz=0.1)
    sm = np.stack([th_p * 1000 * 0.1, th_p * 1000 * 0.3, th_p * 1000 * 0.6], axis=1)
    ts = np.stack([tsoil + 1.5, tsoil, tsoil - 1.0], axis=1)
    # site B's physics file does not say how thick its layers are: kg m-2 cannot become m3 m-3
    sm_attrs = {"units": "kg m-2"} | ({"layer_thickness": [0.1, 0.3, 0.6]} if seed == 0 else {})
    ds = xr.Dataset(
        {"Qle": ("time", p_le), "Qh": ("time", p_h), "Rnet": ("time", p_rn), "Qg": ("time", p_g),
         "SoilMoist": (lay, sm, sm_attrs),
         "SoilTemp": (lay, ts, {"units": "K"}),
         "Kh": ("time", 0.05 + 0.1 * sw / 700), "rs": ("time", 80 + 1000 * (sw < 1))},
        coords={"time": time}, attrs=attrs | {"model": "physics"})
    ds.to_netcdf(d / "physics.nc")
    # hybrid: better fluxes, volumetric SoilMoist offset by 0.02
    ds = xr.Dataset(
        {"Qle": ("time", qle + rng.normal(0, 10, n)), "Qh": ("time", qh + rng.normal(0, 10, n)),
         "SoilMoist": (lay, (_bucket(precip, TAU_HYB, dz=0.2) + 0.02)[:, None], {"units": "m3 m-3"}),
         "SoilTemp": (lay, (tsoil - 0.5)[:, None]),
         "rs": ("time", 60 + 900 * (sw < 1))},
        coords={"time": time}, attrs=attrs | {"model": "hybrid"})
    ds.to_netcdf(d / "hybrid.nc")
    # 2lin: fluxes only, with a gap
    le2 = 0.3 * sw - 10
    le2[100:130] = np.nan
    xr.Dataset({"Qle": ("time", le2), "Qh": ("time", 0.15 * sw)}, coords={"time": time},
               attrs=attrs | {"model": "2lin"}).to_netcdf(d / "2lin.nc")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("run") / "syn"
    _write_site(root, "XX-Aaa", 0)
    _write_site(root, "XX-Bbb", 1)
    build_report(root)
    return root


def _usable(obs, flux):
    ok = np.isfinite(obs[flux].values) & (obs["split"].values == 3)
    if f"{flux}_qc" in obs:
        qc = obs[f"{flux}_qc"].values
        ok &= (qc >= 0) & (qc <= 1)
    return ok


def _period_means(x, time, freq, need):
    """Independent aggregation with pandas: mean per day / ISO week, NaN if fewer than need values."""
    s = pd.Series(x, index=time)
    key = time.normalize() if freq == "D" else time.to_period("W-SUN").start_time
    g = s.groupby(key)
    return np.where(g.count() >= need, g.mean(), np.nan)


def test_metrics_csv_equals_direct_computation(run_dir):
    df = pd.read_csv(run_dir / "metrics.csv")
    assert list(df.columns) == list(M.SKILL_COLUMNS)
    assert len(df) == 2 * 3 * 2 * 3  # sites × models × fluxes × scales
    assert set(df.split) == {"test"}
    for site in ("XX-Aaa", "XX-Bbb"):
        obs = xr.load_dataset(run_dir / "predictions" / site / "obs.nc")
        time = pd.DatetimeIndex(obs.time.values)
        for model in MODELS:
            sim_ds = xr.load_dataset(run_dir / "predictions" / site / f"{model}.nc")
            for flux in ("Qle", "Qh"):
                o, s = obs[flux].values, sim_ds[flux].values
                ok = _usable(obs, flux) & np.isfinite(s)
                rows = df[(df.site == site) & (df.model == model) & (df.flux == flux)].set_index("scale")
                hh = rows.loc["halfhourly"]
                assert hh.n == ok.sum()
                assert hh.rmse == pytest.approx(math.sqrt(np.mean((s[ok] - o[ok]) ** 2)), rel=1e-9)
                assert hh.nse == pytest.approx(M.nse(s, o, ok), rel=1e-9)
                assert hh.kge == pytest.approx(M.kge(s, o, ok), rel=1e-9)
                assert hh.bias_pct == pytest.approx(100 * np.sum(s[ok] - o[ok]) / np.sum(o[ok]), rel=1e-9)
                assert hh.bias == pytest.approx(np.mean(s[ok] - o[ok]), rel=1e-9)
                assert hh.kge_form == 2009 and not rows.suspect.any()  # obs means well above 0.1·σo
                assert hh.r == pytest.approx(np.corrcoef(s[ok], o[ok])[0, 1], rel=1e-9)
                for scale, freq, need in (("daily", "D", 24), ("weekly", "W", 168)):
                    so = _period_means(np.where(ok, o, np.nan), time, freq, need)
                    ss = _period_means(np.where(ok, s, np.nan), time, freq, need)
                    v = np.isfinite(so)
                    row = rows.loc[scale]
                    assert row.n == v.sum() and row.n > 0
                    assert row.rmse == pytest.approx(math.sqrt(np.mean((ss[v] - so[v]) ** 2)), rel=1e-9)
                    assert row.r == pytest.approx(np.corrcoef(ss[v], so[v])[0, 1], rel=1e-9)
                    assert row.nse == pytest.approx(
                        1 - np.sum((ss[v] - so[v]) ** 2) / np.sum((so[v] - so[v].mean()) ** 2), rel=1e-9)
    # the QC-corrupted obs were excluded: the near-perfect hybrid has a small RMSE
    hyb = df[(df.model == "hybrid") & (df.scale == "halfhourly")]
    assert (hyb.rmse < 15).all()


def test_skill_json_records(run_dir):
    recs = json.loads((run_dir / "skill.json").read_text())
    assert len(recs) == 36
    keys = {"site", "model", "flux", "scale", "split", "rmse", "nse", "kge", "kge_form", "bias", "bias_pct",
            "bias_pct_note", "r", "n", "suspect", "suspect_reason", "config"}
    assert all(set(r) == keys for r in recs)
    assert {r["kge_form"] for r in recs} == {"2009"} and not any(r["suspect"] for r in recs)
    assert {r["config"] for r in recs} == {"syn-config"}  # from the prediction files' attrs
    csv = pd.read_csv(run_dir / "metrics.csv")
    assert [r["rmse"] for r in recs] == pytest.approx(list(csv.rmse), rel=1e-12)


def test_html_and_plots(run_dir):
    text = (run_dir / "report.html").read_text()
    for name in ("XX-Aaa", "XX-Bbb", *MODELS):
        assert name in text
    # best value per (site, flux, scale) and column: 2 × 2 × 3 groups × 6 columns, no ties here
    assert text.count("class='best'") == 72
    assert "class='suspect'" not in text and "Suspect scores" not in text
    pngs = sorted((run_dir / "plots").glob("*.png"))
    kinds = ("diurnal", "timeseries", "scatter", "energy_balance", "parameters", "untrained")
    assert {p.name for p in pngs} == {f"{s}_{k}.png" for s in ("XX-Aaa", "XX-Bbb") for k in kinds}
    for p in pngs:
        raw = p.read_bytes()
        assert raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) > 5000, p.name
        img = mpimg.imread(p)
        assert img.shape[0] > 100 and img.shape[1] > 100
        assert img[..., :3].std() > 0.01, f"{p.name} is blank"
    assert text.count("data:image/png;base64,") == len(pngs)


def test_untrained_variables_known_truth(run_dir):
    sites = load_run(run_dir)
    tab = untrained_variables(sites["XX-Aaa"]).set_index(["model", "variable"])
    assert set(tab.index.get_level_values("model")) == {"physics", "hybrid"}  # 2lin has no soil output
    st = tab.loc[("physics", "SoilTemp")]
    assert st.bias == pytest.approx(1.5) and st.r == pytest.approx(1.0)
    assert tab.loc[("hybrid", "SoilTemp")].bias == pytest.approx(-0.5)
    # dry-downs: episodes after rain on days 76, 84, 93 (test split), e-folding times as generated
    phys = tab.loc[("physics", "SoilMoist")]
    hyb = tab.loc[("hybrid", "SoilMoist")]
    assert phys.n_episodes == 3 and hyb.n_episodes == 3
    assert phys.tau_obs_days == pytest.approx(TAU_OBS, rel=1e-6)
    assert phys.tau_sim_days == pytest.approx(TAU_PHYS, rel=1e-6)
    assert hyb.tau_sim_days == pytest.approx(TAU_HYB, rel=1e-6)
    # bias in m3 m-3: kg m-2 converted with the 0.1 m top layer; direct computation on the test split
    obs = sites["XX-Aaa"].obs
    test = obs.split.values == 3
    th_o = obs.SoilMoistVol.values
    th_p = xr.load_dataset(run_dir / "predictions/XX-Aaa/physics.nc").SoilMoist.values[:, 0] / 100.0
    assert phys.bias == pytest.approx(np.mean(th_p[test] - th_o[test]), rel=1e-9)
    assert phys.bias_units == "m3 m-3"
    th_h = xr.load_dataset(run_dir / "predictions/XX-Aaa/hybrid.nc").SoilMoist.values[:, 0]
    assert hyb.bias == pytest.approx(np.mean(th_h[test] - th_o[test]), rel=1e-9)
    assert hyb.r == pytest.approx(np.corrcoef(th_h[test], th_o[test])[0, 1], rel=1e-9)
    # site B: physics SoilMoist in kg m-2 without layer thickness -> no bias, but r and τ (unit-free)
    b = untrained_variables(sites["XX-Bbb"]).set_index(["model", "variable"]).loc[("physics", "SoilMoist")]
    assert math.isnan(b.bias) and b.bias_units == "units differ"
    assert b.r == pytest.approx(phys.r, rel=1e-9) and b.tau_sim_days == pytest.approx(TAU_PHYS, rel=1e-6)


def test_energy_balance_and_soil_scores_leave_out_filled_forcing_steps():
    """The model rows of the energy balance and the soil-temperature scores counted the test steps
    driven by forcing filled from the diurnal cycle, which no other score does."""
    from hybridlsm.evaluation.report import SiteData, energy_balance_table, untrained_variables

    n = 96
    time = pd.date_range("2020-06-01", periods=n, freq="30min")
    split = np.r_[np.ones(48), np.full(48, 3)].astype("int8")
    filled = np.zeros(n, "int8")
    filled[60:72] = 2
    obs = xr.Dataset({"Rnet": ("time", np.full(n, 400.0)), "Qg": ("time", np.full(n, 40.0)),
                      "Qh": ("time", np.full(n, 100.0)), "Qle": ("time", np.full(n, 200.0)), "split": ("time", split),
                      "forcing_filled": ("time", filled), "SoilTemp": ("time", np.full(n, 290.0))}, coords={"time": time})
    le, soil = np.full(n, 260.0), np.full(n, 291.0)
    le[60:72], soil[60:72] = 900.0, 320.0  # far off where the forcing was made up
    model = xr.Dataset({"Rnet": ("time", np.full(n, 400.0)), "Qg": ("time", np.full(n, 40.0)),
                        "Qh": ("time", np.full(n, 100.0)), "Qle": ("time", le), "SoilTemp": ("time", soil)},
                       coords={"time": time})
    sd = SiteData("S", obs, {"m": model})
    row = energy_balance_table(sd).set_index("source").loc["m"]
    assert (row.residual_mean, row.n) == (0.0, 36) and row.closure_ratio == pytest.approx(1.0)
    soil_row = untrained_variables(sd).set_index("variable").loc["SoilTemp"]
    assert (soil_row.bias, soil_row.n) == (1.0, 36)


def test_energy_balance_section(run_dir):
    from hybridlsm.evaluation.report import energy_balance_table

    sites = load_run(run_dir)
    eb = energy_balance_table(sites["XX-Bbb"]).set_index("source")
    assert eb.loc["obs", "closure_ratio"] == pytest.approx(0.8)  # tower built to close 80 %
    assert eb.loc["physics", "residual_mean_abs"] == pytest.approx(0.0, abs=1e-9)  # conserving model
    assert math.isnan(eb.loc["2lin", "residual_mean"])  # no Rnet/Qg output
    from hybridlsm.evaluation.report import flux_mask

    obs = sites["XX-Bbb"].obs
    # the steps of the obs row: test, observed H and LE usable
    test = (obs.split.values == 3) & flux_mask(obs, "Qh") & flux_mask(obs, "Qle")
    avail = obs.Rnet.values[test] - obs.Qg.values[test]
    hyb = xr.load_dataset(run_dir / "predictions/XX-Bbb/hybrid.nc")
    expect = np.sum(hyb.Qh.values[test] + hyb.Qle.values[test]) / np.sum(avail)
    assert eb.loc["hybrid", "closure_ratio"] == pytest.approx(expect, rel=1e-9)


def test_dry_down_measure_by_hand():
    p = np.array([0, 10, 0, 0, 0, 0, 0, 0.5, 3, 0, 0, 20, 0, 0], dtype=float)
    # rain ≥ 5 mm on day 1 -> dry spell days 2..7 (day 8 has 3 mm ≥ 1): 6 days; day 11 -> 12..13: 2 days
    assert dry_down_episodes(p) == [(2, 6)]
    assert dry_down_episodes(p, min_days=2) == [(2, 6), (12, 2)]
    assert dry_down_episodes(p, max_days=4) == [] and dry_down_episodes(p, max_days=4, min_days=4) == [(2, 4)]
    # θ = 0.1 + 0.2·e^{−t/5} (any units and offset): τ = 5; a wetting day is left out of the fit
    t = np.arange(8.0)
    th = 0.1 + 0.2 * np.exp(-t / 5)
    assert drying_efolding_time(th) == pytest.approx(5.0, rel=1e-9)
    assert drying_efolding_time(1000 * th + 7) == pytest.approx(5.0, rel=1e-9)
    assert math.isnan(drying_efolding_time(np.array([0.3, 0.3, 0.31, 0.32])))  # not drying


def test_missing_split_is_an_error(tmp_path):
    d = tmp_path / "predictions" / "XX-C"
    d.mkdir(parents=True)
    t = pd.date_range("2021-01-01", periods=4, freq="30min")
    xr.Dataset({"Qle": ("time", np.ones(4)), "Qh": ("time", np.ones(4))}, coords={"time": t}).to_netcdf(d / "obs.nc")
    with pytest.raises(ValueError, match=r"obs.nc: no 'split'"):
        build_report(tmp_path)


def test_units_error_is_suspect_and_never_best(tmp_path):
    """A copy of the hybrid in J m-2 per half-hour (× 1800) has the hybrid's r, which was highlighted
    as best; its |bias| exceeds the observed range, so every row of it is suspect, red and never best."""
    root = tmp_path / "units"
    _write_site(root, "XX-Ccc", 2)
    d = root / "predictions" / "XX-Ccc"
    hyb = xr.load_dataset(d / "hybrid.nc")
    xr.Dataset({f: hyb[f] * DT for f in ("Qle", "Qh")}, attrs=hyb.attrs).to_netcdf(d / "hybrid_J.nc")
    text = build_report(root).read_text()
    df = pd.read_csv(root / "metrics.csv")
    obs = xr.load_dataset(d / "obs.nc")
    o = obs.Qle.values
    ok = _usable(obs, "Qle")
    bias_j, span = np.mean(DT * hyb.Qle.values[ok] - o[ok]), np.ptp(o[ok])  # ≈ 1.6e5 vs ≈ 600 W m-2
    assert bias_j > 100 * span
    bad = df[df.model == "hybrid_J"]
    assert bad.suspect.all() and not df[df.model != "hybrid_J"].suspect.any()
    hh = bad[(bad.flux == "Qle") & (bad.scale == "halfhourly")].iloc[0]
    assert hh.bias == pytest.approx(bias_j, rel=1e-9)
    reason = f"|bias| {bias_j:.3g} W m-2 exceeds the observed range {span:.3g} W m-2 — check the forcing units"
    assert hh.suspect_reason == reason
    assert f"model hybrid_J at site XX-Ccc (Qle): {reason}" in text
    rows = [line for line in text.splitlines() if line.startswith("<tr")]
    red = [line for line in rows if "hybrid_J" in line]
    assert len(red) == 6 and all(line.startswith("<tr class='suspect'>") for line in red)
    assert not any("class='best'" in line for line in red)
    # its r equals the hybrid's (to rounding): before, it shared or took the best r
    by = ["flux", "scale"]
    assert bad.set_index(by).r.to_numpy() == pytest.approx(df[df.model == "hybrid"].set_index(by).r.to_numpy())
    assert text.count("class='best'") == 6 * 6  # one per table and column, all on sane models


def test_skill_html_near_zero_mean_note():
    """Night-time H: no bias %, KGE″ marked and the reason under the table."""
    time = pd.date_range("2024-01-01 22:00", periods=4, freq="30min")
    obs = np.array([-30.0, -10.0, 10.0, 31.0])
    df = M.skill_table(obs, {"a": 0.5 * obs + 5.0, "b": obs + 1.0}, time, scales=("halfhourly",),
                       site="XX-Nit", flux="Qh", split="test")
    out = _skill_html(df)
    kge_b = 1 - 1 / math.sqrt(515.1875)  # r = α = 1, β″ = 1/σo
    assert df.kge.iloc[1] == pytest.approx(kge_b)
    assert f"<td class='best'>{kge_b:.3f}″</td>" in out  # b: best KGE″ and best bias (1 W m-2)
    assert "<td class='best'>1.000</td><td>–</td>" in out  # bias %: withheld, not best
    assert "KGE″ (marked ″) and no bias %: XX-Nit: observed mean near zero: μo = 0.25 ≤ 0.1·σo = 2.27 W m-2." in out


def test_the_report_names_what_was_scored_by_the_runs_split(run_dir, tmp_path):
    """The headings and the note say which steps were scored: a plain run's test split, and for a
    leave-one-site-out run each site's whole record from the fold that left it out."""
    from hybridlsm.evaluation.report import split_words

    text = (run_dir / "report.html").read_text()
    assert "All scores on the steps of split = 3: the test split." in text
    assert "<h3>Qle (LE), halfhourly, test split</h3>" in text
    root = tmp_path / "loso"
    _write_site(root, "XX-Ddd", 3)
    obs_path = root / "predictions" / "XX-Ddd" / "obs.nc"
    obs = xr.load_dataset(obs_path)
    obs.attrs["split_kind"] = "loso"
    obs.to_netcdf(obs_path)
    text = build_report(root).read_text()
    assert "the whole record of each site, from the leave-one-site-out fold trained without it" in text
    assert "<h3>Qh (H), daily, left-out site, whole record</h3>" in text and ", test split</h3>" not in text
    assert set(pd.read_csv(root / "metrics.csv")["split"]) == {"loso"}
    assert split_words(["blocked", "blocked", "loso"]) == "test weeks of the blocked split; left-out site, whole record"
    assert split_words(["custom"], sentence=True) == "the custom split"


def test_a_model_whose_predictions_were_deleted_is_not_dropped(run_dir, tmp_path):
    """A deleted prediction file (its checksum still there) made the report drop the model from
    every table and rewrite metrics.csv without it, exit 0."""
    import shutil

    from hybridlsm.rundir import DamagedRunFile

    copy = tmp_path / "syn"
    shutil.copytree(run_dir / "predictions", copy / "predictions")
    (copy / "predictions" / "XX-Aaa" / "lstm.nc.sha256").write_text("0" * 64 + "\n")
    with pytest.raises(DamagedRunFile, match=r"XX-Aaa: lstm.nc missing \(their checksums are there"):
        build_report(copy)
    assert not (copy / "metrics.csv").exists()  # nothing written


def test_unreadable_validation_and_discovery_files_are_named(run_dir, tmp_path):
    """A validation.json or discovery.json that is not a JSON object (written by hand, no checksum)
    was a JSONDecodeError or TypeError traceback."""
    import shutil

    from hybridlsm.rundir import DamagedRunFile

    copy = tmp_path / "syn"
    shutil.copytree(run_dir / "predictions", copy / "predictions")
    (copy / "validation").mkdir()
    (copy / "validation" / "validation.json").write_text("{oops")
    with pytest.raises(DamagedRunFile, match=r"validation\.json cannot be read as JSON"):
        build_report(copy)
    shutil.rmtree(copy / "validation")
    (copy / "discovery").mkdir()
    (copy / "discovery" / "forms.csv").write_text("model,form\nx,y\n")
    (copy / "discovery" / "discovery.json").write_text("[1, 2]")
    with pytest.raises(DamagedRunFile, match=r"discovery\.json holds a JSON list"):
        build_report(copy)
