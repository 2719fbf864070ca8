"""Neural building blocks: shapes, normalisation, dropout, causality, heads' guarantees."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybridlsm.neural import (
    LSTM,
    MLP,
    BoundedHead,
    EnergySplitHead,
    GaussianHead,
    Normaliser,
    trainable_filter,
)


# Eager JAX compiles every primitive separately; jit whole calls so that the suite stays fast.
_apply = eqx.filter_jit(lambda module, *args, **kw: module(*args, **kw))


def apply(module, *args, **kw):
    """``module(*args, **kw)`` under jit, returned as NumPy (NumPy inputs are traced too)."""
    return jax.tree_util.tree_map(np.asarray, _apply(module, *args, **kw))


@pytest.fixture(scope="module")
def mlp():
    return MLP(3, 2, width_size=8, depth=2, activation="tanh", dropout=0.5,
               mean=[1.0, -2.0, 10.0], std=[2.0, 0.5, 4.0], key=jax.random.key(0))  # fmt: skip


@pytest.fixture(scope="module")
def lstm():
    return LSTM(3, 2, hidden_size=6, mean=[0.5, 0.0, 1.0], std=[1.0, 2.0, 3.0], key=jax.random.key(1))


def test_mlp_normalises_inputs_with_stored_statistics(mlp):
    x = np.array([[3.0, -1.0, 2.0], [1.0, -2.0, 10.0]])
    plain = mlp.with_normalisation(np.zeros(3), np.ones(3))
    z = (x - np.array([1.0, -2.0, 10.0])) / np.array([2.0, 0.5, 4.0])
    np.testing.assert_allclose(apply(mlp, x), apply(plain, z), rtol=0, atol=1e-14)
    # broadcasting over leading axes equals applying row by row
    np.testing.assert_allclose(apply(mlp, x)[1], apply(mlp, x[1]), rtol=0, atol=1e-14)
    assert jax.eval_shape(mlp, jnp.zeros((4, 5, 3))).shape == (4, 5, 2)


def test_normalisation_statistics_are_not_trainable(mlp):
    spec = trainable_filter(mlp)
    assert spec.normaliser.mean is False and spec.normaliser.std is False
    assert all(jax.tree_util.tree_leaves(eqx.filter(spec.layers, eqx.is_array)) or [True])
    params, _ = eqx.partition(mlp, spec)
    n_train = sum(x.size for x in jax.tree_util.tree_leaves(params))
    assert n_train == (3 * 8 + 8) + (8 * 8 + 8) + (8 * 2 + 2)
    # even when differentiated directly, the statistics get zero gradient (stop_gradient)
    grads = eqx.filter_jit(eqx.filter_grad(lambda m: jnp.sum(m(jnp.ones(3)) ** 2)))(mlp)
    assert np.abs(np.asarray(grads.normaliser.mean)).sum() == 0.0
    assert np.abs(np.asarray(grads.layers[0].weight)).sum() > 0.0


def test_mlp_dropout_only_with_a_key(mlp):
    x = np.ones((16, 3))
    np.testing.assert_array_equal(apply(mlp, x), apply(mlp, x))  # deterministic without a key
    a = apply(mlp, x, key=jax.random.key(1))
    b = apply(mlp, x, key=jax.random.key(2))
    assert np.max(np.abs(a - b)) > 1e-6  # MC dropout samples differ
    np.testing.assert_array_equal(a, apply(mlp, x, key=jax.random.key(1)))  # and are reproducible


def test_mlp_rejects_unknown_activation():
    with pytest.raises(ValueError, match="allowed: gelu, relu, silu, tanh"):
        MLP(2, 1, 4, 1, activation="swish", key=jax.random.key(0))


def test_normaliser_from_data_ignores_nan_and_constant_features():
    x = np.array([[1.0, 5.0], [3.0, 5.0], [np.nan, 5.0]])
    n = Normaliser.from_data(x)
    np.testing.assert_allclose(n.mean, [2.0, 5.0])
    np.testing.assert_allclose(n.std, [1.0, 1.0])  # constant feature: std 1
    np.testing.assert_allclose((np.array([7.0, 9.0]) - n.mean) / n.std, [5.0, 4.0])
    with pytest.raises(ValueError, match="std strictly positive"):
        Normaliser([0.0], [0.0])


def test_lstm_shapes_batch_and_causality(lstm):
    x = np.random.default_rng(3).normal(size=(12, 4, 3))
    y = apply(lstm, x)
    assert y.shape == (12, 4, 2)
    # batch (vmap over N) equals each sequence on its own
    np.testing.assert_allclose(y[:, 2], apply(lstm, x[:, 2]), rtol=0, atol=1e-13)
    # causal: changing the input at t = 7 leaves outputs before 7 unchanged and changes t >= 7
    x2 = x.copy()
    x2[7, 1, 0] += 5.0
    y2 = apply(lstm, x2)
    np.testing.assert_array_equal(y2[:7], y[:7])
    assert np.abs(y2[7:, 1] - y[7:, 1]).max() > 1e-4
    np.testing.assert_array_equal(y2[:, 0], y[:, 0])


def test_lstm_state_carry_continues_sequence(lstm):
    x = np.random.default_rng(4).normal(size=(10, 3))
    scan = eqx.filter_jit(lambda m, x, state=None: m.scan(x, state))
    full, _ = scan(lstm, x)
    first, state = scan(lstm, x[:6])
    second, _ = scan(lstm, x[6:], state)
    np.testing.assert_allclose(np.concatenate([first, second]), full, rtol=0, atol=1e-13)


def test_lstm_matches_equinox_cell_reference(lstm):
    x = np.random.default_rng(5).normal(size=(5, 3))

    @eqx.filter_jit
    def reference(m, x):
        h = c = jnp.zeros(6)
        outs = []
        for t in range(5):
            h, c = m.cell(m.normaliser(x[t]), (h, c))
            outs.append(m.head(h))
        return jnp.stack(outs)

    np.testing.assert_allclose(apply(lstm, x), reference(lstm, x), rtol=0, atol=1e-13)


def test_lstm_forget_bias_initialisation(lstm):
    # eqx.nn.LSTMCell draws biases from U(-1/sqrt(H), 1/sqrt(H)); forget_bias=1 shifts the forget gate
    bound = 1.0 / np.sqrt(6)
    bias = np.asarray(lstm.cell.bias).reshape(4, 6)  # gates i, f, g, o
    assert np.all(np.abs(bias[[0, 2, 3]]) <= bound)
    assert np.all(np.abs(bias[1] - 1.0) <= bound)


# ------------------------------------------------------------------------------------ heads


def test_bounded_head_stays_within_bounds_for_extreme_inputs():
    lower = [1e-3, 1e2, -5.0]
    upper = [1e2, 1e4, 5.0]
    head = BoundedHead(lower, upper, log_space="auto")
    assert head.log_space == (True, True, False)
    raw = np.array([[-1e6, -1e6, -1e6], [1e6, 1e6, 1e6], [-40.0, 40.0, 0.0], [np.inf, -np.inf, 3.0], [0, 0, 0]])
    y = np.asarray(apply(head, raw))
    assert np.all(y >= lower) and np.all(y <= upper)
    np.testing.assert_allclose(y[0], lower, rtol=1e-12)
    np.testing.assert_allclose(y[1], upper, rtol=1e-12)
    # z = 0: geometric midpoint in log space, arithmetic midpoint otherwise
    np.testing.assert_allclose(y[4], [np.sqrt(1e-3 * 1e2), 1e3, 0.0], rtol=1e-12, atol=1e-15)


def test_bounded_head_gradients_are_nonzero_and_match_finite_differences():
    head = BoundedHead([1e-3, 0.0], [1e2, 1.0], log_space=[True, False])
    z = np.array([0.7, -1.3])
    jac, y = eqx.filter_jit(lambda h, z: (jax.jacfwd(h)(z), h(z)))(head, jnp.asarray(z))
    jac, y = np.asarray(jac), np.asarray(y)
    assert np.min(np.abs(np.diag(jac))) > 1e-3
    eps = 1e-6
    zs = jnp.asarray(np.stack([z + eps * np.eye(2)[i] for i in range(2)] + [z - eps * np.eye(2)[i] for i in range(2)]))
    ys = np.asarray(apply(head, zs))
    fd = [(ys[i, i] - ys[2 + i, i]) / (2 * eps) for i in range(2)]
    np.testing.assert_allclose(np.diag(jac), fd, rtol=1e-7)
    # log space: d log y / dz = (log hi - log lo) sigmoid'(z)
    s = 1.0 / (1.0 + np.exp(-0.7))
    np.testing.assert_allclose(jac[0, 0] / y[0], np.log(1e5) * s * (1 - s), rtol=1e-12)


def test_bounded_head_inverse_roundtrip_and_validation():
    head = BoundedHead([1e-3, 44.0], [1e2, 218.0], log_space=[True, False])
    y = jnp.array([0.05, 100.0])
    roundtrip = eqx.filter_jit(lambda h, y: h(h.inverse(y)))(head, y)
    np.testing.assert_allclose(roundtrip, y, rtol=1e-10)
    with pytest.raises(ValueError, match="lower > 0"):
        BoundedHead([0.0], [1.0], log_space=True)
    with pytest.raises(ValueError, match="lower < upper"):
        BoundedHead([1.0, 2.0], [0.5, 3.0])


def test_energy_split_conserves_energy_to_rounding():
    head = EnergySplitHead(residual_scale=50.0)
    rng = np.random.default_rng(7)
    n = 20000
    raw = 10.0 * rng.normal(size=(n, 2))
    rn = rng.uniform(-200.0, 1000.0, n)
    g = rng.uniform(-100.0, 300.0, n)
    h, le = tuple(apply(head, raw, rn, g))
    assert np.max(np.abs(h + le + g - rn)) <= 1e-10
    assert np.min(h) < -100 and np.max(le) > 500  # a wide range of partitions was exercised
    h0, le0 = tuple(apply(head, raw, rn))  # without G: H + LE = Rn
    assert np.max(np.abs(h0 + le0 - rn)) <= 1e-10


def test_energy_split_partitions_day_and_night_sensibly():
    pure = EnergySplitHead(residual_scale=0.0)
    assert pure.raw_size == 1
    h, le = tuple(apply(pure, jnp.array([[0.0], [2.0]]), jnp.full(2, 600.0), jnp.full(2, 100.0)))
    # daytime, A = 500 W m-2 >> smoothing: EF = sigmoid(z), 0 < LE < A, H = A - LE
    np.testing.assert_allclose(le, 500.0 / (1.0 + np.exp(-np.array([0.0, 2.0]))), rtol=1e-12)
    assert np.all((le > 0) & (le < 500.0) & (h > 0))
    # night, A = -60 W m-2: LE is the bounded residual only, H carries the deficit
    head = EnergySplitHead(residual_scale=20.0)
    raw = jnp.array([[5.0, 100.0], [-5.0, -100.0], [0.0, 0.3]])
    h, le = tuple(apply(head, raw, jnp.full(3, -80.0), jnp.full(3, -20.0)))
    assert np.max(np.abs(le)) < 20.0 + 0.03  # |LE| < residual_scale + EF * A+ (A+ = 0.025)
    np.testing.assert_allclose(h + le, -60.0, atol=1e-12)
    assert np.all(h < -35.0)
    # gradients reach both raw outputs
    grad = eqx.filter_jit(jax.grad(lambda r: head(r, 400.0, 50.0)[1]))(np.array([0.2, 0.1]))
    assert np.min(np.abs(np.asarray(grad))) > 1.0


def test_gaussian_head_positive_std():
    head = GaussianHead(2, min_std=1e-3)
    raw = np.array([[1.0, -2.0, -1e4, 0.0], [3.0, 4.0, 1e4, 2.0]])
    mean, std = tuple(apply(head, raw))
    np.testing.assert_array_equal(mean, raw[:, :2])
    assert np.all(std >= 1e-3)
    np.testing.assert_allclose(std[0, 1], np.log(2.0) + 1e-3, rtol=1e-12)
    np.testing.assert_allclose(std[1, 0], 1e4 + 1e-3, rtol=1e-12)
