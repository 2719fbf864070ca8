"""The spatiotemporal parameteriser (seed 000 §2.3): shapes on any grid, hard bounds, fusion weights,
derived physical features, dropout switching, prior and Gaussian initialisation, gradients, and a
short training run on a synthetic K_h field."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hybridlsm.neural import (
    CosineAttention,
    SpatiotemporalOptions,
    SpatiotemporalParameteriser,
    VariableFusion,
    physical_features,
    trainable_filter,
)
from hybridlsm.neural._spatiotemporal import _downsample, _upsample, gaussian_profile

#: a narrow network: the same layers as the default, fewer channels (fast to compile); tests on
#: it use (3, 4, 8, 8) inputs so that they share compilations
SMALL = SpatiotemporalOptions(embed_size=4, encoder_channels=(6, 8, 8), gru_hidden=8, attention_size=16,
                              decoder_channels=(8, 8, 6), head_width=8)  # fmt: skip
BOUNDS = np.array([[1e-3, 1e2], [1e2, 1e4]])  # K_h [m2 s-1], r_s [s m-1]
PRIOR = np.array([0.5, 200.0])

_apply = eqx.filter_jit(lambda m, x, s, key=None: m(x, s, key=key))


def apply(model, x, s, key=None) -> np.ndarray:
    return np.asarray(_apply(model, x, s, key))


def inputs(v, s, t, ny, nx, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(v, t, ny, nx)).astype(dtype), rng.uniform(size=(s, ny, nx)).astype(dtype)


@pytest.fixture(scope="module")
def small():
    return SpatiotemporalParameteriser(3, 2, options=SMALL, key=jax.random.key(0))


def test_output_is_on_the_physics_grid_for_any_size():
    model = SpatiotemporalParameteriser(8, 5, key=jax.random.key(1))  # default sizes
    for ny, nx in [(32, 32), (41, 41), (8, 10), (1, 1)]:
        for t in (1, 5, 24):
            out = jax.eval_shape(model, jnp.zeros((8, t, ny, nx)), jnp.zeros((5, ny, nx)))
            assert out.shape == (2, t, ny, nx), (ny, nx, t)
    # 32 x 32 -> latent 8 x 8 (two stride-2 layers), 41 x 41 -> 11 x 11
    latent = jax.eval_shape(lambda x: model.encoder[2](model.encoder[1](model.encoder[0](x))),
                            jnp.zeros((13, 4, 32, 32)))  # fmt: skip
    assert latent.shape == (32, 4, 8, 8)
    x, s = inputs(8, 5, 3, 8, 10)  # and one evaluation on an odd, non-square grid
    y = apply(model, x, s)
    assert y.shape == (2, 3, 8, 10) and np.all(np.isfinite(y))


def test_fast_strided_convolutions_equal_equinox_layers():
    # the encoder and decoder run their strided layers as stride-1 convolutions (space-to-depth and
    # sub-pixel forms); values and input gradients equal eqx.nn.Conv3d / ConvTranspose3d
    rng = np.random.default_rng(13)

    @eqx.filter_jit
    def gaps(fast, layer, a):
        """Largest differences of the values and of the input gradients of sum(sin(.))."""
        def grad(f):
            return jax.grad(lambda b: jnp.sum(jnp.sin(f(b))))(a)

        return (jnp.max(jnp.abs(fast(layer, a) - layer(a))),
                jnp.max(jnp.abs(grad(lambda b: fast(layer, b)) - grad(layer))))  # fmt: skip

    for stride, (ny, nx) in [(2, (9, 6)), (3, (7, 8))]:
        conv = eqx.nn.Conv3d(3, 4, (3, 5, 5), stride=(1, stride, stride), padding=(1, 2, 2),
                             key=jax.random.key(stride))  # fmt: skip
        deconv = eqx.nn.ConvTranspose3d(4, 3, (1, 5, 5), stride=(1, stride, stride), padding=(0, 2, 2),
                                        output_padding=(0, stride - 1, stride - 1), key=jax.random.key(7))  # fmt: skip
        x = rng.normal(size=(3, 2, ny, nx))
        z = rng.normal(size=(4, 2, -(-ny // stride), -(-nx // stride)))
        assert conv(x).shape[2:] == z.shape[2:]
        np.testing.assert_array_less(np.asarray(gaps(_downsample, conv, x)), 1e-13)
        np.testing.assert_array_less(np.asarray(gaps(_upsample, deconv, z)), 1e-13)


def test_attention_matches_a_direct_computation():
    # each latent cell at step t attends to all cells at steps t-1..t+1 (window 1), with scores
    # tau_h cos(q, k); chunks of 2 steps over T = 5 (a remainder chunk) change nothing
    t, n, c, heads, size = 5, 3, 6, 2, 8
    rng = np.random.default_rng(14)
    arrays = [rng.normal(size=shape) * 0.5 for shape, _ in CosineAttention.specs(c, size)]
    att = CosineAttention(c, size, heads, window=1, time_chunk=2, temperature=3.0, arrays=arrays,
                          dtype=np.float64)  # fmt: skip
    att = eqx.tree_at(lambda a: a.log_temperature, att, jnp.log(jnp.array([3.0, 0.5])))
    f = rng.normal(size=(t, n, c))
    w_qkv, b_qkv, w_out, b_out = arrays
    q, k, v = np.split((f @ w_qkv.T + b_qkv).reshape(t, n, 3 * heads, -1), 3, axis=2)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    k = k / np.linalg.norm(k, axis=-1, keepdims=True)
    out = np.zeros((t, n, heads, size // heads))
    for ti in range(t):
        steps = [s for s in (ti - 1, ti, ti + 1) if 0 <= s < t]
        for h, tau in enumerate((3.0, 0.5)):
            keys = np.concatenate([k[s, :, h] for s in steps])  # (len(steps) n, d)
            vals = np.concatenate([v[s, :, h] for s in steps])
            scores = tau * q[ti, :, h] @ keys.T
            a = np.exp(scores - scores.max(-1, keepdims=True))
            out[ti, :, h] = (a / a.sum(-1, keepdims=True)) @ vals
    expected = f + out.reshape(t, n, size) @ w_out.T + b_out
    np.testing.assert_allclose(np.asarray(eqx.filter_jit(att)(f)), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fields_stay_in_bounds_for_extreme_inputs_and_weights(small, dtype):
    model = SpatiotemporalParameteriser(3, 2, options=SMALL, dtype=dtype, key=jax.random.key(2))
    x, s = inputs(3, 2, 4, 8, 8, seed=1, dtype=dtype)
    lo, hi = BOUNDS[:, :1, None, None], BOUNDS[:, 1:, None, None]
    # randomised weights: every trainable array replaced by N(0, 3^2) draws
    params, rest = eqx.partition(model, eqx.is_inexact_array)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    rng = np.random.default_rng(3)
    wild = eqx.combine(jax.tree_util.tree_unflatten(
        treedef, [jnp.asarray(3.0 * rng.normal(size=a.shape), a.dtype) for a in leaves]), rest)  # fmt: skip
    wild = eqx.tree_at(lambda m: m.head, wild, model.head)  # the bounds are not weights
    reached = []
    for m in (model, wild):
        for scale in (1e4, -1e4, 1.0):
            y = apply(m, scale * x, 1e4 * s)
            assert y.dtype == dtype
            assert np.all(np.isfinite(y))
            assert np.all(y >= lo.astype(dtype)) and np.all(y <= hi.astype(dtype))
            reached.append(np.log(y / lo) / np.log(hi / lo))
    # the wild network does reach the edges of both ranges (the check above is not vacuous)
    spread = np.stack(reached[3:])
    assert spread.min() < 0.01 and spread.max() > 0.99


def test_fusion_weights_sum_to_one_before_and_after_a_gradient_step():
    fusion = VariableFusion(5, 3, key=jax.random.key(3))
    np.testing.assert_allclose(np.asarray(fusion.weights()), 0.2, rtol=0, atol=1e-15)  # uniform at start
    x = jnp.asarray(np.random.default_rng(4).normal(size=(5, 2, 4, 4)))
    target = jnp.asarray(np.random.default_rng(5).normal(size=(3, 2, 4, 4)))

    def loss(f):
        return jnp.mean((f(x) - target) ** 2) + 5.0 * jnp.mean(f(x)[0] * x[1])  # pulls omega apart

    opt = optax.adam(0.3)
    state = opt.init(eqx.filter(fusion, eqx.is_inexact_array))
    grad = eqx.filter_jit(eqx.filter_grad(loss))
    for _ in range(3):
        updates, state = opt.update(grad(fusion), state)
        fusion = eqx.apply_updates(fusion, updates)
    w = np.asarray(fusion.weights())
    assert np.ptp(w) > 0.05  # the step moved the weights ...
    assert np.all(w > 0) and abs(w.sum() - 1.0) < 1e-6  # ... and they still sum to 1
    # each embedding is bounded by 1, so omega_k bounds the contribution of variable k
    assert float(jnp.max(jnp.abs(fusion(100.0 * x)))) <= 1.0 + 1e-12


def test_physical_features_by_hand():
    shape = (1, 1, 1)
    one = np.ones(shape)
    z = 10.0
    z0 = z / math.e  # ln(z / z0) = 1
    feats, names = physical_features(290.0 * one, 0.0 * one, 3.0 * one, 4.0 * one, 1e5 * one, 288.0 * one,
                                     height=z, z0=z0, gustiness=0.0)  # fmt: skip
    assert names == ("wind_shear", "temperature_gradient", "bulk_richardson")
    assert feats.shape == (3, 1, 1, 1)
    # U = 5 m s-1; dU/dz = U / (z ln(z/z0)) = 0.5 s-1
    # theta_a = 290 exp(9.81 * 10 / (1004.834 * 290)) = 290 exp(3.3664850e-4) = 290.0976445 K (p = p0)
    # (theta_s - theta_a) / z = (288 - 290.0976445) / 10 = -0.20976445 K m-1
    # Ri = 9.81 * 10 * 2.0976445 / (0.5 * 578.0976445 * 25) = 205.778926 / 7226.220556 = 0.02847670
    np.testing.assert_allclose(np.asarray(feats).ravel(), [0.5, -0.20976445, 0.02847670], rtol=1e-6)


def test_physical_features_signs_and_horizontal_gradient():
    t, ny, nx, dx = 2, 4, 5, 500.0
    ones = np.ones((t, ny, nx))
    common = dict(height=10.0, z0=0.1, grid_spacing=dx, gustiness=0.0)
    args = (290.0 * ones, 0.008 * ones, 2.0 * ones, 0.0 * ones, 9.5e4 * ones)
    stable, _ = physical_features(*args, 285.0 * ones, **common)
    unstable, _ = physical_features(*args, 300.0 * ones, **common)
    assert np.all(np.asarray(stable[2]) > 0) and np.all(np.asarray(stable[1]) < 0)  # surface colder
    assert np.all(np.asarray(unstable[2]) < 0) and np.all(np.asarray(unstable[1]) > 0)
    # uniform fields: no horizontal gradient, the shear is the log-law value exactly
    np.testing.assert_allclose(np.asarray(stable[0]), 2.0 / (10.0 * np.log(100.0)), rtol=1e-14)
    # u growing by 0.1 m s-1 per cell in x: |grad U| = 0.1 / 500 s-1 everywhere (edges included)
    u = 2.0 + 0.1 * np.arange(nx) * ones
    sheared, _ = physical_features(args[0], args[1], u, args[3], args[4], 285.0 * ones, **common)
    vertical = u / (10.0 * np.log(100.0))
    np.testing.assert_allclose(np.asarray(sheared[0]), np.hypot(vertical, 0.1 / dx), rtol=1e-12)
    # a single cell has no neighbours: zero horizontal gradient rather than an error
    single, _ = physical_features(*(a[:, :1, :1] for a in args), 285.0 * ones[:, :1, :1], **common)
    np.testing.assert_allclose(np.asarray(single[0]), 2.0 / (10.0 * np.log(100.0)), rtol=1e-14)


def test_dropout_only_with_a_key(small):
    x, s = inputs(3, 2, 4, 8, 8, seed=6)
    a, b = apply(small, x, s), apply(small, x, s)
    np.testing.assert_array_equal(a, b)
    k1, k2 = apply(small, x, s, jax.random.key(1)), apply(small, x, s, jax.random.key(2))
    assert np.max(np.abs(np.log(k1 / k2))) > 1e-4  # MC-dropout samples differ
    np.testing.assert_array_equal(k1, apply(small, x, s, jax.random.key(1)))  # and are reproducible
    no_dropout = SpatiotemporalParameteriser(3, 2, options=SpatiotemporalOptions(**{**SMALL.__dict__, "dropout": 0.0}),
                                             key=jax.random.key(0))  # fmt: skip
    assert small.dropout == 0.15 and no_dropout.dropout == 0.0
    np.testing.assert_array_equal(apply(no_dropout, x, s, jax.random.key(1)), apply(no_dropout, x, s))


def test_initial_fields_are_near_the_prior():
    for options in (SMALL, None):
        model = SpatiotemporalParameteriser(3, 2, options=options, key=jax.random.key(7))
        x, s = inputs(3, 2, 4, 8, 8, seed=7)
        y = apply(model, x, s)
        assert np.max(np.abs(np.log(y / PRIOR[:, None, None, None]))) < 0.05  # within 5 % in log space
    custom = SpatiotemporalParameteriser(3, 2, options=SMALL, prior={"rs": 1500.0}, key=jax.random.key(7))
    y = apply(custom, x, s)
    np.testing.assert_allclose(np.median(y, axis=(1, 2, 3)), [0.5, 1500.0], rtol=0.05)
    with pytest.raises(ValueError, match="prior outside the bounds"):
        SpatiotemporalParameteriser(3, 2, prior={"Kh": 500.0}, key=jax.random.key(0))


def test_decoder_kernels_start_as_smooth_gaussians():
    model = SpatiotemporalParameteriser(3, 2, key=jax.random.key(8))  # default noise 1 %
    for layer, stride in zip(model.decoder, (1, 2, 2)):
        w = np.asarray(layer.weight)[:, :, 0]  # (out, in, 5, 5)
        # every channel pair is one Gaussian profile times an amplitude: its |peak| is the centre
        flat = np.abs(w).reshape(*w.shape[:2], -1)
        assert np.all(flat.argmax(-1) == 12)
        # sign-aligned mean profile: symmetric under flips and transposition, and the Gaussian itself
        p = (w * np.sign(w[:, :, 2:3, 2:3])).sum((0, 1))
        p = p / p.sum() * stride**2
        for q in (p[::-1], p[:, ::-1], p.T):
            np.testing.assert_allclose(q, p, rtol=0, atol=0.005 * p.max())
        np.testing.assert_allclose(p, gaussian_profile(5, 1.0, stride**2), rtol=0, atol=0.005 * p.max())
        # smooth, unlike an i.i.d. draw: neighbouring taps are strongly correlated within a kernel
        a, b = w[..., 1:, :].ravel(), w[..., :-1, :].ravel()
        assert np.corrcoef(a, b)[0, 1] > 0.6
    # the kernel sums to stride^2 (unit gain for a uniform field after upsampling)
    np.testing.assert_allclose(gaussian_profile(5, 1.0, 4.0).sum(), 4.0, rtol=1e-14)


def test_gradient_matches_finite_differences():
    # output weights at the default init scale: the prior init's small weights would make every
    # deeper gradient tiny and the finite difference mostly rounding
    options = SpatiotemporalOptions(**{**SMALL.__dict__, "output_weight_scale": 1.0})
    model = SpatiotemporalParameteriser(3, 2, options=options, dtype=np.float64, key=jax.random.key(9))
    x, s = inputs(3, 2, 4, 8, 8, seed=9)
    weights = np.random.default_rng(10).normal(size=(2, 4, 8, 8))

    @eqx.filter_jit
    def loss(m):
        return jnp.sum(weights * jnp.log(m(x, s)))

    grads = eqx.filter_jit(eqx.filter_grad(loss))(model)
    picks = [
        (lambda m: m.encoder[0].weight, (1, 2, 1, 2, 3)),
        (lambda m: m.gru_forward.weight_ih, (2, 3)),
        (lambda m: m.attention.log_temperature, (3,)),
        (lambda m: m.decoder[1].weight, (2, 4, 0, 2, 2)),
        (lambda m: m.fusion.logits, (1,)),
    ]
    eps = 1e-4  # the loss is ~100: smaller steps lose digits to rounding
    for where, idx in picks:
        w0 = where(model)
        up = eqx.tree_at(where, model, w0.at[idx].add(eps))
        down = eqx.tree_at(where, model, w0.at[idx].add(-eps))
        fd = (float(loss(up)) - float(loss(down))) / (2 * eps)
        ad = float(where(grads)[idx])
        assert abs(ad) > 1e-6, (idx, ad)
        np.testing.assert_allclose(ad, fd, rtol=1e-4, err_msg=str(idx))


@pytest.mark.slow  # model training: ~5 s alone on two cores, ~9 s when they are shared
def test_short_training_fits_a_synthetic_exchange_coefficient_field():
    # K_h depends on the first input variable at the same cell and step, and on the land-cover class
    rng = np.random.default_rng(11)
    n, t, ny, nx = 4, 8, 8, 8
    x = rng.normal(size=(n, 3, t, ny, nx))
    cover = (rng.uniform(size=(n, ny, nx)) < 0.5).astype(float)
    static = np.stack([cover, 1.0 - cover], axis=1)  # one-hot (n, 2, ny, nx)
    log_kh = np.log(0.5) + 0.8 * np.tanh(x[:, 0]) + 1.2 * cover[:, None] - 0.6
    options = SpatiotemporalOptions(**{**SMALL.__dict__, "dropout": 0.0})
    model = SpatiotemporalParameteriser(3, 2, names=("Kh",), options=options, key=jax.random.key(12))

    params, frozen = eqx.partition(model, trainable_filter(model))  # the bounds do not train

    def loss(p):
        m = eqx.combine(p, frozen)
        pred = jax.vmap(lambda a, b: m(a, b)[0])(x, static)
        return jnp.mean((jnp.log(pred) - log_kh) ** 2)

    opt = optax.adam(1e-2)
    state = opt.init(params)

    @eqx.filter_jit
    def step(p, state):
        value, grads = eqx.filter_value_and_grad(loss)(p)
        updates, state = opt.update(grads, state, p)
        return eqx.apply_updates(p, updates), state, value

    values = []
    for _ in range(101):  # the value of step i is the loss before its update
        params, state, value = step(params, state)
        values.append(float(value))
    first, last = values[0], values[-1]
    model = eqx.combine(params, frozen)
    assert last <= 0.2 * first, (first, last)  # falls by >= 80 % (about 99.9 % in practice)
    # the fusion weight of the variable that drives K_h has become the largest
    w = np.asarray(model.variable_weights())
    assert abs(w.sum() - 1.0) < 1e-12 and np.argmax(w) == 0 and w[0] > 0.4, w
