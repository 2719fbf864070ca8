"""Observation-derived parameters (evaluation/derived.py) against hand computations, a Penman-Monteith
round trip, filter counts on a synthetic series and one real site (physics-reference §2, §4)."""

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from hybridlsm.data.schema import DataError, DataWarning
from hybridlsm.evaluation import derived as D

# one reference state: 20 degC, 101.325 kPa
T20 = 293.15
P0 = 101325.0
RHO20 = P0 / (287.0586 * 293.15)  # = 1.204082 kg m-3
ES20 = 611.2 * math.exp(17.62 * 20.0 / (243.12 + 20.0))  # = 2332.596 Pa (Sonntag)
DELTA20 = ES20 * 17.62 * 243.12 / (243.12 + 20.0) ** 2  # = 144.3306 Pa K-1
GAMMA20 = 1004.834 * P0 / (0.622 * (2.501 - 0.00237 * 20.0) * 1e6)  # = 66.71397 Pa K-1


def _series(n=48, **overrides):
    """A half-hourly daytime-like synthetic site: every step passes every criterion by default."""
    base = {
        "Tair": 293.15, "Psurf": P0, "VPD": 15.0, "Wind": 4.0, "Ustar": 0.5, "SWdown": 500.0,
        "Rnet": 500.0, "Qg": 50.0, "Qh": 150.0, "Qle": 200.0, "Precip": 0.0,
    }
    data = {k: np.full(n, v, dtype=float) for k, v in base.items()}
    for k, v in overrides.items():
        data[k] = np.asarray(v, dtype=float)
    time = pd.date_range("2020-07-01", periods=n, freq="30min")
    ds = xr.Dataset({k: ("time", v) for k, v in data.items()}, coords={"time": time})
    ds.attrs.update(site_id="XX-Syn", igbp="ENF", canopy_height=18.0, measurement_height=34.0,
                    time_step_s=1800.0)
    return ds


# --------------------------------------------------------------------------------------------
# formulas by hand


def test_aerodynamic_conductance_by_hand():
    # u* = 0.5, U = 4: Ga_m = 0.25/4 = 0.0625 m s-1, Ra_m = 16 s m-1
    # Rb_h = 6.2 * 0.5^-0.667 = 6.2 * 1.587768 = 9.844161 s m-1; kB_h = 9.844161 * 0.41 * 0.5 = 2.018053
    # Ga_h = 1/(16 + 9.844161) = 0.03869346 m s-1
    out = D.aerodynamic_conductance(_series(n=2))
    assert float(out["Ga_m"][0]) == pytest.approx(0.0625, rel=1e-12)
    assert float(out["Ra_m"][0]) == pytest.approx(16.0, rel=1e-12)
    assert float(out["Rb_h"][0]) == pytest.approx(9.844161, rel=1e-6)
    assert float(out["kB_h"][0]) == pytest.approx(9.844161 * 0.41 * 0.5, rel=1e-6)
    assert float(out["Ga_h"][0]) == pytest.approx(0.03869346, rel=1e-6)
    assert float(out["Ra_h"][0]) == pytest.approx(25.844161, rel=1e-6)
    # a second point: u* = 0.2, U = 2 -> Ga_m = 0.02, Rb_h = 6.2 * 5^0.667 = 6.2 * 2.925587 = 18.13864,
    # Ga_h = 1/(50 + 18.13864) = 0.01467596
    assert float(D.momentum_conductance(0.2, 2.0)) == pytest.approx(0.02)
    assert float(D.thom_boundary_layer_resistance(0.2)) == pytest.approx(6.2 * 5**0.667, rel=1e-12)
    assert 6.2 * 5**0.667 == pytest.approx(18.13864, rel=1e-6)
    assert float(D.heat_conductance(0.02, 6.2 * 5**0.667)) == pytest.approx(0.01467596, rel=1e-6)


def test_exchange_coefficient_by_hand():
    # z = 34, h = 18, d = 0.7 h = 12.6 -> z - d = 21.4 m
    # rho c_p u*^3 T = 1.204082 * 1004.834 * 0.125 * 293.15 = 44335.37
    # H = 200: L = -44335.37/(0.41 * 9.81 * 200) = -55.11471 m, zeta = 21.4/L = -0.3882811
    #   phi_h = (1 + 16 * 0.3882811)^-1/2 = 0.3723550; Kh = 0.41 * 0.5 * 21.4 / 0.3723550 = 11.78177
    # H = -50: L = +220.4588 m, zeta = 0.09707027, phi_h = 1.485351, Kh = 4.387/1.485351 = 2.953510
    ds = _series(n=2, Qh=[200.0, -50.0])
    out = D.exchange_coefficient(ds)
    np.testing.assert_allclose(out["obukhov_length"].values, [-55.11471, 220.4588], rtol=1e-6)
    np.testing.assert_allclose(out["zeta"].values, [-0.3882811, 0.09707027], rtol=1e-6)
    np.testing.assert_allclose(out["phi_h"].values, [0.3723550, 1.485351], rtol=1e-6)
    np.testing.assert_allclose(out["Kh"].values, [11.78177, 2.953510], rtol=1e-6)
    # bulk: (z - d) Ga_h = 21.4 * 0.03869346 = 0.8280400 m2 s-1
    np.testing.assert_allclose(out["Kh_bulk"].values, 21.4 * 0.03869346, rtol=1e-6)
    assert out.attrs["z_minus_d"] == pytest.approx(21.4)
    # neutral (H = 0): L infinite, zeta = 0, phi_h = 1, Kh = k u* (z - d) = 4.387
    neutral = D.exchange_coefficient(_series(n=1, Qh=[0.0]))
    assert float(neutral["phi_h"][0]) == 1.0
    assert float(neutral["Kh"][0]) == pytest.approx(0.41 * 0.5 * 21.4)
    # missing H -> NaN, never a silent neutral value; stability_correction=False is neutral everywhere
    assert np.isnan(float(D.exchange_coefficient(_series(n=1, Qh=[np.nan]))["Kh"][0]))
    off = D.exchange_coefficient(_series(n=1, Qh=[np.nan]), stability_correction=False)
    assert float(off["Kh"][0]) == pytest.approx(4.387)


def test_dyer_phi_h_branches():
    # zeta = -1: (1 + 16)^-1/2 = 0.2425356; zeta = 0.2: 1 + 1 = 2
    np.testing.assert_allclose(D.dyer_phi_h([-1.0, 0.0, 0.2]), [17**-0.5, 1.0, 2.0], rtol=1e-12)


def test_surface_conductance_by_hand():
    # T = 20 degC, p = 101.325 kPa: Delta = 144.3306 Pa K-1, gamma = 66.71397 Pa K-1, rho = 1.204082
    # LE = 200, A = Rn - G = 450 - 50 = 400 W m-2, VPD = 15 hPa = 1500 Pa, Ga = 0.04 m s-1
    # numerator   = 200 * 66.71397 * 0.04 = 533.7118
    # denominator = 144.3306 * 400 + 1.204082 * 1004.834 * 1500 * 0.04 - 200 * (144.3306 + 66.71397)
    #             = 57732.24 + 72594.17 - 42208.91 = 88117.49
    # Gs = 533.7118 / 88117.49 = 0.006056820 m s-1, rs = 165.1031 s m-1
    assert DELTA20 == pytest.approx(144.3306, rel=1e-6)
    assert GAMMA20 == pytest.approx(66.71397, rel=1e-6)
    gs = D.invert_penman_monteith(200.0, 400.0, 1500.0, 0.04, T20, P0)
    assert float(gs) == pytest.approx(0.006056820, rel=1e-6)
    denominator = DELTA20 * 400 + RHO20 * 1004.834 * 1500 * 0.04 - 200 * (DELTA20 + GAMMA20)
    expected = 200 * GAMMA20 * 0.04 / denominator
    assert float(gs) == pytest.approx(expected, rel=1e-12)
    # the same through the dataset interface, with Ga given
    ds = _series(n=1, Rnet=[450.0])
    gs_ds, rs_ds = D.surface_conductance(ds, xr.full_like(ds["Ustar"], 0.04))
    assert float(gs_ds[0]) == pytest.approx(0.006056820, rel=1e-6)
    assert float(rs_ds[0]) == pytest.approx(165.1031, rel=1e-6)
    assert rs_ds.attrs["G_assumed_zero_steps"] == 0


def test_penman_monteith_round_trip():
    rng = np.random.default_rng(13)
    n = 200
    gs_true = 10 ** rng.uniform(-3.5, -1.5, n)  # 0.3 .. 30 mm s-1
    ga = rng.uniform(0.005, 0.3, n)
    a = rng.uniform(60.0, 700.0, n)
    vpd = rng.uniform(100.0, 4000.0, n)
    t = rng.uniform(275.0, 310.0, n)
    p = rng.uniform(70e3, 103e3, n)
    le = D.penman_monteith_latent_heat(a, vpd, ga, gs_true, t, p)
    assert np.all(le > 0)
    gs = D.invert_penman_monteith(le, a, vpd, ga, t, p)
    np.testing.assert_allclose(gs, gs_true, rtol=1e-10)
    # and through the dataset path with Ga_h from u* and U
    ds = _series(n=1, Ustar=[0.4], Wind=[3.0], Rnet=[420.0], Qg=[20.0], VPD=[12.0], Tair=[298.15])
    ga_h = float(D.aerodynamic_conductance(ds)["Ga_h"][0])
    ds["Qle"][:] = D.penman_monteith_latent_heat(400.0, 1200.0, ga_h, 0.0075, 298.15, P0)
    gs_ds, rs_ds = D.surface_conductance(ds)
    assert float(gs_ds[0]) == pytest.approx(0.0075, rel=1e-10)
    assert float(rs_ds[0]) == pytest.approx(1 / 0.0075, rel=1e-10)


# --------------------------------------------------------------------------------------------
# filter


def _filter_series():
    n = 48
    sw = np.full(n, 500.0); le = np.full(n, 200.0); rn = np.full(n, 500.0)
    tair = np.full(n, 293.15); ustar = np.full(n, 0.5); precip = np.zeros(n)
    le[0] = np.nan           # missing
    sw[[1, 2, 12]] = 20.0    # night (12 also lies in the rain window: counted as daytime, first)
    tair[3] = 275.0          # 1.85 degC
    le[4] = -5.0             # dew / condensation
    rn[5] = 80.0             # A = 80 - 50 = 30 W m-2
    precip[10] = 1.0 / 1800  # 1 mm in one half-hour: steps 10..16 wet with precip_hours = 3
    ustar[20] = 0.1          # low turbulence
    ustar[22] = 4.0          # implausible u*
    le[25] = 700.0; rn[25] = 500.0  # LE > what A allows: denominator < 0, Gs < 0
    return _series(n=n, SWdown=sw, Qle=le, Rnet=rn, Tair=tair, Ustar=ustar, Precip=precip)


def test_inversion_filter_counts():
    ds = _filter_series()
    # step 25: 144.33*450 + 1.204082*1004.834*1500*Ga_h - 700*(144.33+66.71) < 0 with Ga_h = 0.0387
    mask, counts = D.inversion_filter(ds, precip_hours=3)
    expected = {"total": 48, "missing": 1, "quality": 0, "daytime": 3, "temperature": 1,
                "latent_heat": 1, "available_energy": 1, "wet_canopy": 6, "friction_velocity": 2,
                "conductance": 1, "kept": 32}
    assert {k: counts[k] for k in expected} == expected
    assert sum(counts[c] for c in D.INVERSION_CRITERIA) + counts["kept"] == 48
    assert counts["skipped"] == {"quality": "no Qle_qc in the dataset"}
    removed = set(np.flatnonzero(~mask.values))
    assert removed == {0, 1, 2, 3, 4, 5, 10, 11, 12, 13, 14, 15, 16, 20, 22, 25}
    # precip_hours = 0: only the rain step itself; None: no rain criterion (and no Precip needed)
    assert D.inversion_filter(ds, precip_hours=0)[1]["wet_canopy"] == 1
    _, c24 = D.inversion_filter(ds)  # 24 h window: steps 10..47 (38) after the rain
    # less step 12 (night, counted first); 20, 22 (u*) and 25 (Gs) now count as wet canopy
    assert (c24["wet_canopy"], c24["friction_velocity"], c24["conductance"]) == (37, 0, 0)
    assert c24["kept"] == 48 - 1 - 3 - 1 - 1 - 1 - 37 == 4
    assert D.inversion_filter(ds.drop_vars("Precip"), precip_hours=None)[1]["wet_canopy"] == 0


def test_inversion_filter_quality_and_missing_precip():
    ds = _series(n=6, Precip=[0, np.nan, 0, 0, 0, 0])
    ds["Qle_qc"] = ("time", np.array([0, 0, 0, 2, 1, 3], dtype=np.int8))
    _, counts = D.inversion_filter(ds, precip_hours=1)
    # step 1: Precip missing -> "missing"; steps 2, 3 (window 1 h = 2 previous steps) -> wet canopy;
    # steps 3 and 5: Qle_qc > 1 -> quality (step 3 counted there, first)
    assert counts["missing"] == 1
    assert counts["quality"] == 2
    assert counts["wet_canopy"] == 1
    assert counts["kept"] == 2


def test_missing_inputs_are_named():
    ds = _series(n=4)
    with pytest.raises(DataError, match="'Ustar'"):
        D.aerodynamic_conductance(ds.drop_vars("Ustar"))
    with pytest.raises(DataError, match="'Ustar'"):
        D.derived_parameters(ds.drop_vars("Ustar"))
    with pytest.raises(DataError, match="'Precip'.*precip_hours"):
        D.inversion_filter(ds.drop_vars("Precip"))
    with pytest.raises(DataError, match="'Qh'.*stability_correction=False"):
        D.exchange_coefficient(ds.drop_vars("Qh"))
    with pytest.raises(DataError, match="'Qg'"):
        D.surface_conductance(ds.drop_vars("Qg"), ground_heat_flux="require")
    # documented fallback: no Qg -> G = 0, said in the attrs
    out = D.derived_parameters(ds.drop_vars("Qg"), precip_hours=None)
    assert out.attrs["G_assumed_zero_steps"] == 4
    assert "G = 0 assumed" in out.attrs["G_source"]
    np.testing.assert_allclose(out["available_energy"].values, 500.0)
    # no canopy height and no IGBP: Kh NaN with a warning and a note; Gs still computed
    bare = ds.copy()
    bare.attrs = {"time_step_s": 1800.0}
    with pytest.warns(DataWarning, match="z - d unknown"):
        out = D.derived_parameters(bare, precip_hours=None)
    assert np.isnan(out["Kh"]).all() and int(out["mask_Kh"].sum()) == 0
    assert "z - d unknown" in out.attrs["heights"]
    assert int(out["mask"].sum()) == 4
    # IGBP only: typical ENF height 15 m, z = max(15 + 2, 22.5) = 22.5, z - d = 22.5 - 10.5 = 12
    igbp = ds.copy()
    igbp.attrs = {"igbp": "ENF", "time_step_s": 1800.0}
    assert D.site_heights(igbp)["z_minus_d"] == pytest.approx(12.0)
    with pytest.raises(DataError, match="not above the displacement"):
        D.site_heights(ds, measurement_height=10.0)


# --------------------------------------------------------------------------------------------
# reasonability


def test_reasonability_log_pearson():
    # log values: learned [0, 1, 2], derived [0, 1, 3] -> r = 3/sqrt(2 * 14/3) = sqrt(27/28)
    learned = np.exp([0.0, 1.0, 2.0])
    derived = np.exp([0.0, 1.0, 3.0])
    out = D.reasonability(learned, derived, min_n=2)
    assert out["r"] == pytest.approx(math.sqrt(27 / 28), rel=1e-12) and out["n"] == 3
    # invariant to a constant factor (Delta z_eff, ra_scale) and resistance vs conductance
    assert D.reasonability(5 * learned, 1 / derived, min_n=2)["r"] == pytest.approx(-math.sqrt(27 / 28))
    # mask and NaN drop pairs; too few -> NaN
    m = np.array([True, True, False])
    assert D.reasonability(learned, derived, m, min_n=2)["r"] == pytest.approx(1.0)
    assert math.isnan(D.reasonability(learned, derived)["r"])  # n = 3 < min_n = 10
    with pytest.raises(ValueError, match="positive"):
        D.reasonability([1.0, -1.0, 2.0], [1.0, 2.0, 3.0], min_n=2)
    assert D.reasonability([1.0, 2.0, 4.0], [1.0, 2.0, 3.0], transform="none", min_n=2)["r"] == pytest.approx(
        math.sqrt(27 / 28))


def test_reasonability_table_per_model():
    ds = _series(n=40, Ustar=np.linspace(0.25, 1.0, 40), Qle=np.linspace(100.0, 250.0, 40))
    der = D.derived_parameters(ds, precip_hours=None)
    assert int(der["mask"].sum()) == 40 and int(der["mask_Kh"].sum()) == 40
    perfect = xr.Dataset({"Kh": 3.0 * der["Kh_bulk"], "rs": der["rs"]})
    flipped = xr.Dataset({"Kh": 1.0 / der["Kh_bulk"]})
    table = D.reasonability_table({"hybrid": perfect, "physics": flipped}, der)
    assert table["hybrid"]["Kh"]["r"] == pytest.approx(1.0)
    assert table["hybrid"]["rs"]["r"] == pytest.approx(1.0)
    assert table["hybrid"]["Kh"]["n"] == 40
    assert table["physics"]["Kh"]["r"] == pytest.approx(-1.0)
    assert table["physics"]["rs"]["n"] == 0 and "no 'rs'" in table["physics"]["rs"]["note"]
    where = np.arange(40) < 20
    assert D.reasonability_table({"hybrid": perfect}, der, where=where)["hybrid"]["rs"]["n"] == 20


# --------------------------------------------------------------------------------------------
# real site


def test_us_me2_medians(shared_data):
    from hybridlsm.data import read_site

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)  # 67 u* values above 3 m s-1 are flagged
        ds = read_site(shared_data / "fluxnet" / "US-Me2_201907-202006_HH.csv")
    out = D.derived_parameters(ds)
    assert out.attrs["heights"] == "h = 18 m (site); z = 34 m (site); d = 0.7 h = 12.6 m"
    assert out.attrs["G_assumed_zero_steps"] == 0
    # 17568 half-hours; SWdown > 100 W m-2 etc. keep 3528 (20 %), mostly April-September
    assert out.attrs["kept"] == 3528
    assert out.attrs["removed_daytime"] == 10738
    assert out.attrs["removed_wet_canopy"] == 926
    assert out.attrs["kept_Kh"] == 14114
    mask = out["mask"]
    midday = mask & (out["time"].dt.hour >= 11) & (out["time"].dt.hour < 14)  # 11-14 LST
    rs_mid = float(out["rs"].where(midday).median())
    ga_h = float(out["Ga_h"].where(mask).median())
    kh = float(out["Kh"].where(out["mask_Kh"]).median())
    assert 50.0 < rs_mid < 2000.0  # ponderosa pine: ~235 s m-1 (Gs ~ 4 mm s-1)
    assert rs_mid == pytest.approx(235.1, rel=1e-3)
    assert 0.01 < ga_h < 0.5  # ~0.065 m s-1 (Ra_h ~ 15 s m-1, tall rough canopy)
    assert ga_h == pytest.approx(0.06476, rel=1e-3)
    assert 0.5 < kh < 50.0  # ~7.7 m2 s-1 at 21.4 m above d
    assert kh == pytest.approx(7.651, rel=1e-3)


@pytest.mark.slow
def test_the_report_scores_parameter_reasonability(shared_data, tmp_path):
    """A run at a site with u* has the reasonability coefficient of each model with learned K_h and
    r_s in its report (the test split, steps where the inversion holds)."""
    from typer.testing import CliRunner

    from hybridlsm.cli import app
    from hybridlsm.evaluation.report import load_run, parameter_reasonability

    name = "US-Wkg_200405-200412_HH.csv"
    (tmp_path / name).write_text("\n".join((shared_data / "fluxnet" / name).read_text().splitlines()[:961]) + "\n")
    rows = [ln for ln in (shared_data / "fluxnet" / "sites.csv").read_text().splitlines()
            if ln.startswith(("SITE_ID", "US-Wkg"))]
    (tmp_path / "sites.csv").write_text("\n".join(rows).replace("200412312330", "200405260930") + "\n")
    cfg = tmp_path / "p.yaml"
    cfg.write_text(f"name: p\ndata: {{sites: [{tmp_path / name}], split: {{train: 0.5, val: 0.2, test: 0.3}}, "
                   "spinup_days: 1, window_days: 2}\nmodels: [{name: physics, options: {epochs: 2, calibrate: "
                   f"[rs_scale]}}}}, {{name: 1lin}}]\noutput: {{run_dir: {tmp_path / 'runs'}}}\n")
    result = CliRunner().invoke(app, ["run", str(cfg)])
    assert result.exit_code == 0, result.output
    table = parameter_reasonability(load_run(tmp_path / "runs" / "p")).set_index("model")
    assert list(table.index) == ["physics"]  # 1lin has no parameters
    row = table.loc["physics"]
    assert (row["n Kh"], row["n rs"]) == (150, 102)  # test-split steps where each derivation holds
    assert -1.0 < row["r Kh"] < 1.0 and -1.0 < row["r rs"] < 1.0
    assert "Parameter reasonability" in (tmp_path / "runs" / "p" / "report.html").read_text()
