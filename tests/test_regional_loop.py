"""Closed-loop prediction of the regional model (models/regional_loop.py; issue 15 item 5): the
residual check, recomputation with adjusted K_h, range and smoothness checks, the report."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybridlsm.models.regional_loop import closed_loop, roughness, smooth_field
from hybridlsm.physics import default_params, rollout, synthetic_forcing
from hybridlsm.physics.air_layer import AirLayer
from hybridlsm.physics.regional import GridForcing, RegionalModel

NY, NX = 6, 6
N = NY * NX


def _case(dtype=None):
    """A 6 x 6 grid, one day hourly, 3 m s-1 wind blowing across it, air 1 K apart between cells."""
    f = synthetic_forcing(n_days=1, time_step_s=3600.0, n_sites=1, dtype=dtype)
    bump = jnp.asarray(np.random.default_rng(0).normal(0, 1.0, N), f.t_air.dtype)
    f = jax.tree_util.tree_map(lambda a: jnp.repeat(a, N, axis=1), f)
    f = type(f)(**{**{k: getattr(f, k) for k in ("sw_down", "lw_down", "q_air", "p_surf", "precip")},
                   "wind": jnp.full_like(f.wind, 3.0), "t_air": f.t_air + bump, "time_step_s": 3600.0})
    gf = GridForcing(f, jnp.full_like(f.wind, 2.7), jnp.full_like(f.wind, -1.2))
    params = default_params((["GRA", "CRO", "ENF", "GRA", "BSV", "CRO"] * N)[:N], dtype=dtype)
    model = RegionalModel(AirLayer((NY, NX)), max_refinements=0).for_forcing(gf)
    return model, params, gf


@pytest.fixture(scope="module")
def grid():
    model, params, gf = _case()
    loop = jax.jit(lambda p, f, kh, rs: closed_loop(model, p, f, kh, rs))
    plain = jax.jit(lambda p, f, kh, rs: rollout(model, p, f, dynamic={"Kh": kh, "rs": rs}, chunk=None)[1])
    return model, params, gf, loop, plain


def _fields(kh, rs=200.0):
    t = 24
    return jnp.broadcast_to(jnp.asarray(kh, float), (t, N)), jnp.broadcast_to(jnp.asarray(rs, float), (t, N))


@pytest.mark.slow  # closed-loop rollouts with recomputations; in make test, not test-fast
def test_a_stiff_kh_field_is_adjusted_until_every_step_is_within_10_wm2(grid):
    model, params, gf, loop, plain = grid
    kh, rs = _fields(10.0)  # inside the bounds, but 10-500 x the stability scheme's K_h at 3 m s-1
    _, out, report = loop(params, gf, kh, rs)
    s = report.summary()
    # the plain step misses by far more than 10 W m-2 (the first step starts from the same state)
    first = float(np.max(plain(params, gf, kh, rs)["coupling_residual"][0]))
    assert first > 10.0 and float(report.residual_before[0]) == pytest.approx(first, rel=1e-9)
    assert s["max_residual_before_wm2"] > 50.0
    assert np.all(np.asarray(report.residual_after) <= 10.0) and s["steps_above_tolerance"] == 0
    assert s["recomputations"] > 0 and s["recomputed_steps"] > 0
    assert s["max_recomputations"] <= 4
    # the report's residual is the outputs' residual of the attempt kept
    kept = np.maximum(np.asarray(out["coupling_residual"]), np.asarray(out["energy_residual"])).max(axis=1)
    np.testing.assert_allclose(np.asarray(report.residual_after), kept, rtol=1e-12)
    # only the flagged cells were changed, toward the physics' (smaller) K_h; the columns ran on them
    used = np.asarray(out["Kh_field"])
    changed = used != 10.0
    assert changed.any() and not changed.all() and used[changed].max() < 10.0
    np.testing.assert_allclose(np.asarray(out["Kh"]), used, rtol=1e-10)
    assert set(np.asarray(report.recomputations)[changed.any(axis=1)]) - {0} and \
        (np.asarray(report.recomputations)[~changed.any(axis=1)] == 0).all()
    json.dumps(s)  # plain ints and floats


@pytest.mark.slow  # a few seconds; in make test, not test-fast
def test_the_domain_energy_stays_conserved_through_recomputed_steps(grid):
    model, params, gf, loop, _ = grid
    kh, rs = _fields(10.0)
    _, out, report = loop(params, gf, kh, rs)
    assert int(np.sum(report.recomputations)) > 0
    # the air layer's domain heat budget and every column's Rn - H - LE - Q_f = Delta S_R / dt close to
    # rounding: the state carried on is the one of the attempt kept
    assert float(np.max(out["air_energy_residual"])) < 1e-8
    assert float(np.max(out["energy_residual"])) < 1e-8
    sr = np.asarray(out["SR"])
    g = np.asarray(out["Rnet"] - out["Qh"] - out["Qle"] - out["Qf"])
    np.testing.assert_allclose(g[1:], (sr[1:] - sr[:-1]) / 3600.0, atol=1e-7)


@pytest.mark.slow  # a few seconds; in make test, not test-fast
def test_a_benign_field_is_not_recomputed_and_equals_the_plain_rollout(grid):
    model, params, gf, loop, plain = grid
    rng = np.random.default_rng(1)
    kh = jnp.asarray(0.1 * np.exp(rng.normal(0, 0.2, (24, N))))
    rs = jnp.asarray(np.full((24, N), 150.0))
    _, out, report = loop(params, gf, kh, rs)
    s = report.summary()
    assert s["recomputations"] == 0 and s["cells_clipped"] == 0 and s["rough_steps"] == 0
    assert s["max_residual_after_wm2"] < 1.0
    np.testing.assert_array_equal(np.asarray(out["Kh_field"]), np.asarray(kh))
    ref = plain(params, gf, kh, rs)
    for name in ("Qh", "Qle", "AvgSurfT", "Tair_layer", "Qair_layer", "Kh"):
        np.testing.assert_allclose(np.asarray(out[name]), np.asarray(ref[name]), rtol=1e-12, atol=1e-12,
                                   err_msg=name)
    # a residual: the difference of near-equal air temperatures, so rounding in absolute terms
    np.testing.assert_allclose(np.asarray(out["coupling_residual"]), np.asarray(ref["coupling_residual"]),
                               atol=1e-9)


def test_fields_outside_their_bounds_are_clipped_and_counted(grid):
    model, params, gf, loop, _ = grid
    checker = np.indices((NY, NX)).sum(axis=0).reshape(-1) % 2
    kh = np.where(checker, 0.3, 0.02) * np.ones((24, 1))  # a factor 15 between neighbours: rough
    rs = np.full((24, N), 200.0)
    kh[:, 0], kh[:, 7], kh[3, 8] = 1e-6, 1e3, np.nan  # below, above, missing
    rs[:, 1], rs[::2, 2] = 20.0, 1e6
    _, out, report = loop(params, gf, jnp.asarray(kh), jnp.asarray(rs))
    expected = 3 + (np.arange(24) % 2 == 0) + (np.arange(24) == 3)
    np.testing.assert_array_equal(np.asarray(report.cells_clipped), expected)
    used_kh, used_rs = np.asarray(out["Kh_field"]), np.asarray(out["rs_field"])
    assert np.isfinite(used_kh).all() and used_kh.min() >= 1e-3 and used_kh.max() <= 1e2
    assert used_rs.min() >= 1e2 and used_rs.max() <= 1e4
    np.testing.assert_allclose(used_kh[:, 0], 1e-3)
    np.testing.assert_allclose(used_rs[:, 1], 1e2)
    # one cell at the upper bound couples stiffly; the air blown through it from its neighbours
    # (ten cells an hour) mostly relieves it: kept at 100 except in the few steps it was pulled down
    redone = np.asarray(report.recomputations) > 0
    np.testing.assert_allclose(used_kh[~redone, 7], 1e2)
    assert 0 < redone.sum() < 12 and used_kh[redone, 7].max() < 1.0
    assert np.all(np.asarray(report.residual_after) <= 10.0)
    # the missing value is the physics' own K_h of that step (the stability scheme's, ~0.01-1)
    assert 1e-3 <= used_kh[3, 8] < 1.0 and used_kh[3, 8] not in (0.02, 0.3)
    # roughness: the mean |Delta log K_h| over the 60 neighbouring pairs of the clipped field
    grid = np.log(np.clip(np.where(np.isfinite(kh), kh, used_kh), 1e-3, 1e2)).reshape(24, NY, NX)
    expected = (np.abs(np.diff(grid, axis=1)).sum(axis=(1, 2)) + np.abs(np.diff(grid, axis=2)).sum(axis=(1, 2))) / 60
    np.testing.assert_allclose(np.asarray(report.roughness), expected, rtol=1e-12)
    assert expected.min() > np.log(15.0) and bool(np.all(report.rough))


def test_smoothing_and_roughness_on_the_grid():
    checker = jnp.asarray((np.indices((4, 5)).sum(axis=0) % 2 * 2.0).reshape(-1))  # 0 and 2 alternating
    assert float(roughness(checker, (4, 5))) == pytest.approx(2.0)
    assert float(roughness(jnp.full(20, 3.0), (4, 5))) == 0.0
    smooth = np.asarray(smooth_field(checker, (4, 5), periodic=False)).reshape(4, 5)
    # (4 x centre + 2 x 4 edge neighbours + 4 corners) / 16 of a checkerboard: its mean inside
    np.testing.assert_allclose(smooth[1:-1, 1:-1], 1.0)
    # a uniform field is unchanged, at the edges too
    np.testing.assert_allclose(np.asarray(smooth_field(jnp.full(20, 3.0), (4, 5))), 3.0)


def test_closed_loop_names_what_it_expected(grid):
    model, params, gf, _, _ = grid
    kh, rs = _fields(0.1)
    with pytest.raises(ValueError, match=r"kh has shape \(24, 35\); expected \(T, N\) = \(24, 36\)"):
        closed_loop(model, params, gf, kh[:, :35], rs)
    with pytest.raises(ValueError, match="integer max_adjustments"):
        closed_loop(model, params, gf, kh, rs, max_adjustments=1.5)
    with pytest.raises(ValueError, match=r"unknown outputs \['Qhh'\]; expected names among .*'Kh_field'"):
        jax.eval_shape(lambda: closed_loop(model, params, gf, kh, rs, outputs=("Qh", "Qhh")))
    kept = jax.eval_shape(lambda: closed_loop(model, params, gf, kh, rs, outputs=("Qh", "Kh_field")))[1]
    assert set(kept) == {"Qh", "Kh_field"} and kept["Qh"].shape == (24, N)


@pytest.mark.slow  # a second compilation (~6 s)
def test_closed_loop_in_float32():
    model, params, gf = _case(jnp.float32)
    kh = jnp.full((24, N), 10.0, jnp.float32)
    rs = jnp.full((24, N), 200.0, jnp.float32)
    _, out, report = jax.jit(lambda p, f, k, r: closed_loop(model, p, f, k, r))(params, gf, kh, rs)
    assert out["Qh"].dtype == jnp.float32 and report.residual_after.dtype == jnp.float32
    s = report.summary()
    assert s["recomputations"] > 0 and s["steps_above_tolerance"] == 0
    assert float(np.max(out["energy_residual"])) < 0.5  # float32 rounding of S_R ~ 1e8 J m-2 over an hour


@pytest.mark.slow  # two more compilations (~10 s)
def test_sub_steps_do_not_cure_a_stiff_kh_but_the_physics_own_kh_does():
    model, params, gf = _case()
    kh, rs = _fields(10.0)
    refined = RegionalModel(model.air, max_refinements=2)  # up to 4 sub-steps where above 10 W m-2
    out = jax.jit(lambda p, f: rollout(refined, p, f, dynamic={"Kh": kh, "rs": rs}, chunk=None)[1])(params, gf)
    residual = np.asarray(out["coupling_residual"]).max(axis=1)
    # a third of the steps stay above 10 W m-2, some far above
    assert (residual > 10.0).sum() >= 8 and residual.max() > 300.0 and np.asarray(out["n_substeps"]).max() == 4
    own = jax.jit(lambda p, f: rollout(model, p, f, chunk=None)[1])(params, gf)  # the stability scheme's K_h
    assert float(np.max(own["coupling_residual"])) < 1.0


@pytest.mark.slow  # two regional rollouts; in make test, not test-fast
def test_a_kh_multiplier_of_one_is_the_physics_own_exchange():
    """exchange=Kh_scale: a multiplier field of 1 runs the stability scheme's K_h (the fixed-K_h
    physics, to rounding); the loop's Kh_field is the K_h it gave, exchange_field the multiplier."""
    from hybridlsm.physics.lad import PRESCRIBED_KH_SCALE

    model, params, gf = _case()
    ones = jnp.ones((gf.n_steps, gf.n_sites), gf.wind_u.dtype)
    rs = jnp.full_like(ones, 300.0)
    _, out, report = closed_loop(model, params, gf, ones, rs, exchange=PRESCRIBED_KH_SCALE, max_adjustments=0)
    _, plain = rollout(model, params, gf, dynamic={"rs": rs}, chunk=None)
    np.testing.assert_allclose(np.asarray(out["Qh"]), np.asarray(plain["Qh"]), rtol=1e-9, atol=1e-8)
    np.testing.assert_allclose(np.asarray(out["Kh_field"]), np.asarray(plain["Kh"]), rtol=1e-9)
    np.testing.assert_array_equal(np.asarray(out["exchange_field"]), 1.0)
    assert int(np.sum(report.cells_clipped)) == 0


@pytest.mark.slow  # two closed-loop rollouts, each attempting every step five times (~10 s)
def test_the_attempt_with_the_lowest_residual_is_kept(grid):
    """Pulling a K_h below the stability scheme's up toward it couples more stiffly: with a tolerance
    every step misses (1e-4 W m-2), every step is recomputed four times, and the loop keeps whichever attempt had
    the lowest residual, never one above the fields as given; where that is the first attempt, the
    step is the plain run's and no cell counts as recomputed."""
    model, params, gf, _, _ = grid
    kh, rs = _fields(0.1)  # within the scheme's K_h at 3 m s-1 (~0.02-1): the pull raises it at some steps
    strict = jax.jit(lambda p, f, kh, rs, k: closed_loop(model, p, f, kh, rs, tolerance=1e-4, max_adjustments=k),
                     static_argnums=4)
    _, out, report = strict(params, gf, kh, rs, 4)
    _, _, once = strict(params, gf, kh, rs, 0)
    before, after = np.asarray(report.residual_before), np.asarray(report.residual_after)
    assert (np.asarray(report.recomputations) == 4).all()
    assert before[0] == pytest.approx(float(once.residual_after[0]), rel=1e-12)  # the same start state
    assert (after <= before).all() and (after < before).any()  # some adjustment helped, none was kept worse
    kept_first = after == before
    assert kept_first.any(), "expected steps where every adjustment raised the residual"
    # there the fields are the ones given, and no cell counts as recomputed
    np.testing.assert_array_equal(np.asarray(out["recomputed"])[kept_first], 0.0)
    np.testing.assert_array_equal(np.asarray(out["exchange_field"])[kept_first], np.asarray(kh)[kept_first])
    assert np.asarray(out["recomputed"])[~kept_first].any(axis=1).all()
    # the report's residual is the kept attempt's outputs' residual
    kept = np.maximum(np.asarray(out["coupling_residual"]), np.asarray(out["energy_residual"])).max(axis=1)
    np.testing.assert_allclose(after, kept, rtol=1e-12)
