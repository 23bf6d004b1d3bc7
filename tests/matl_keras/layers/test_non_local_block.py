"""NonLocalBlock: Eq. 1 against numpy, identity at init, gradients, dtypes."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from matl_keras.layers.non_local_block import NonLocalBlock

RNG = np.random.default_rng(0)


def _conv1x1(x, layer):
    kernel, bias = (np.asarray(w) for w in layer.weights)
    return x @ kernel[0, 0] + bias


def _maxpool(x, k):
    b, h, w, c = x.shape
    hp, wp = -(-h // k), -(-w // k)
    padded = np.full((b, hp * k, wp * k, c), -np.inf)
    padded[:, :h, :w] = x
    return padded.reshape(b, hp, k, wp, k, c).max(axis=(2, 4))


def numpy_eq1(block, x):
    """Eq. 1 written out: O = V softmax(K^T Q), then W_o, BN, residual."""
    b, h, w, c = x.shape
    kv = x if block.subsample == 1 else _maxpool(x, block.subsample)
    q = _conv1x1(x, block.query_conv).reshape(b, h * w, -1)
    k = _conv1x1(kv, block.key_conv).reshape(b, -1, q.shape[-1])
    v = _conv1x1(kv, block.value_conv).reshape(b, k.shape[1], -1)
    out = np.empty((b, h * w, v.shape[-1]))
    attention = np.empty((b, h * w, k.shape[1]))
    for i in range(b):
        # Paper layout: Q, K are (d_k, hw), V is (d_v, hw).
        Q, K, V = q[i].T, k[i].T, v[i].T
        S = K.T @ Q  # (hw_k, hw_q)
        S = np.exp(S - S.max(axis=0, keepdims=True))
        A = S / S.sum(axis=0, keepdims=True)  # columns sum to 1
        out[i] = (V @ A).T
        attention[i] = A.T
    o = _conv1x1(out.reshape(b, h, w, -1), block.output_conv)
    gamma, beta, mean, var = (np.asarray(w) for w in block.output_bn.weights)
    y = gamma * (o - mean) / np.sqrt(var + block.output_bn.epsilon) + beta
    return x + y, attention


def _randomize(block):
    for weight in block.weights:
        weight.assign(RNG.normal(0, 0.3, weight.shape).astype("float32"))
    # BN variance must stay positive.
    block.output_bn.moving_variance.assign(
        RNG.uniform(0.5, 1.5, block.output_bn.moving_variance.shape)
    )


@pytest.mark.parametrize("subsample", [1, 2])
def test_matches_numpy_eq1(subsample):
    x = RNG.normal(size=(2, 5, 6, 8)).astype("float32")
    block = NonLocalBlock(subsample=subsample, return_attention=True)
    block(x)
    _randomize(block)
    y, attention = block(x, training=False)
    expected_y, expected_attention = numpy_eq1(block, x.astype(np.float64))
    np.testing.assert_allclose(attention, expected_attention, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(y, expected_y, rtol=1e-4, atol=1e-4)
    assert attention.shape == (2, 30, 30 if subsample == 1 else 9)
    np.testing.assert_allclose(np.sum(attention, -1), 1.0, rtol=1e-5)


def test_new_block_is_identity_until_gamma_moves():
    x = RNG.normal(size=(2, 4, 4, 16)).astype("float32")
    block = NonLocalBlock()
    np.testing.assert_array_equal(block(x, training=False), x)
    np.testing.assert_array_equal(block(x, training=True), x)
    block.output_bn.gamma.assign(np.ones(16, "float32"))
    assert np.abs(np.asarray(block(x, training=False)) - x).max() > 1e-3


def test_gradients_reach_query_key_value():
    x = tf.constant(RNG.normal(size=(2, 4, 4, 8)).astype("float32"))
    block = NonLocalBlock()
    block(x)
    block.output_bn.gamma.assign(np.ones(8, "float32"))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(block(x, training=True) ** 2)
    grads = tape.gradient(loss, block.trainable_weights)
    by_name = {w.path: g for w, g in zip(block.trainable_weights, grads)}
    for part in ("_q/kernel", "_k/kernel", "_v/kernel", "_out/kernel"):
        grad = next(g for n, g in by_name.items() if n.endswith(part))
        assert float(tf.reduce_max(tf.abs(grad))) > 0, part


def test_fresh_block_still_trains_its_gamma():
    x = tf.constant(RNG.normal(size=(2, 4, 4, 8)).astype("float32"))
    block = NonLocalBlock()
    block(x)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(block(x, training=True) * x)
    grad = tape.gradient(loss, block.output_bn.gamma)
    assert float(tf.reduce_max(tf.abs(grad))) > 0


def test_mixed_precision_keeps_softmax_in_float32():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        block = NonLocalBlock(return_attention=True)
        x = RNG.normal(size=(1, 4, 4, 8)).astype("float16")
        y, attention = block(x)
        assert y.dtype == tf.float16
        assert attention.dtype == tf.float32
        assert block.query_conv.kernel.dtype == "float32"  # variables fp32
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_static_shapes_in_a_functional_graph():
    inputs = keras.Input((7, 9, 16))
    y, attention = NonLocalBlock(return_attention=True, subsample=2)(inputs)
    assert tuple(y.shape) == (None, 7, 9, 16)
    assert tuple(attention.shape) == (None, 63, 20)


def test_config_round_trip_and_checks():
    block = NonLocalBlock(key_channels=4, value_channels=6, subsample=2, name="nl")
    clone = NonLocalBlock.from_config(block.get_config())
    assert clone.get_config() == block.get_config()
    with pytest.raises(ValueError, match="Received: subsample=0"):
        NonLocalBlock(subsample=0)
    with pytest.raises(ValueError, match="key_channels"):
        NonLocalBlock(key_channels=-1)


def test_reduction_sets_key_and_value_channels():
    block = NonLocalBlock(reduction=4)
    block(np.zeros((1, 4, 4, 32), "float32"))
    assert block.query_conv.kernel.shape == (1, 1, 32, 8)
    assert block.value_conv.kernel.shape == (1, 1, 32, 8)
    explicit = NonLocalBlock(reduction=4, key_channels=3, value_channels=5)
    explicit(np.zeros((1, 4, 4, 32), "float32"))
    assert explicit.key_conv.kernel.shape == (1, 1, 32, 3)
    assert explicit.value_conv.kernel.shape == (1, 1, 32, 5)
    with pytest.raises(ValueError, match="reduction"):
        NonLocalBlock(reduction=0)
