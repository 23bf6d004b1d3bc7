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
    b, h, w, _ = x.shape
    kv = x if block.subsample == 1 else _maxpool(x, block.subsample)
    q = _conv1x1(x, block.query_conv).reshape(b, h * w, -1)
    k = _conv1x1(kv, block.key_conv).reshape(b, -1, q.shape[-1])
    v = _conv1x1(kv, block.value_conv).reshape(b, k.shape[1], -1)
    if block.score == "cosine":
        tau = np.exp(
            np.clip(float(block.log_tau), 0, np.log(block.max_logit_scale))
        )
        q = np.sqrt(tau) * q / np.linalg.norm(q, axis=-1, keepdims=True)
        k = np.sqrt(tau) * k / np.linalg.norm(k, axis=-1, keepdims=True)
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
    np.testing.assert_allclose(
        attention, expected_attention, rtol=1e-4, atol=1e-5
    )
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
    block = NonLocalBlock(
        key_channels=4, value_channels=6, subsample=2, name="nl"
    )
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


# Saturation on realistic activations (issue 15): the old unscaled dot
# product gave mean max weight 0.998-1.000 on an untrained ResNet.


def _ct_like_images(n=4, size=64):
    """Gray 'slices': a bright body disk, two dark lungs, noise, in [0, 1]."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:size, :size] / size
    images = []
    for _ in range(n):
        cx, cy = 0.5 + rng.normal(0, 0.03, 2)
        body = ((xx - cx) ** 2 + (yy - cy) ** 2 < 0.42**2) * 0.7
        for side in (-1, 1):
            lung = ((xx - cx - side * 0.17) / 0.12) ** 2 + (
                (yy - cy) / 0.25
            ) ** 2
            body = np.where(lung < 1, 0.1, body)
        image = np.clip(body + rng.normal(0, 0.05, body.shape), 0, 1)
        images.append(np.repeat(image[..., None], 3, axis=-1))
    return np.asarray(images, "float32")


def _stats(attention):
    a = np.asarray(attention, "float64")
    entropy = -(a * np.log(np.clip(a, 1e-30, None))).sum(-1).mean()
    return a.max(-1).mean(), entropy, np.log(a.shape[-1])


def _backbone(score):
    from matl_keras.models.resnet.resnet_backbone import ResNetBackbone

    keras.utils.set_random_seed(0)
    model = ResNetBackbone(
        depth=18, width_multiplier=0.5, image_size=64, attention="5"
    )
    from matl_keras.models.resnet.attention_maps import nonlocal_blocks

    for block in nonlocal_blocks(model):
        block.score = score  # "dot": the old layer's scores, same weights
    return model


@pytest.mark.parametrize("score", ["cosine", "dot"])
def test_attention_is_spread_on_resnet_activations(score):
    from matl_keras.models.resnet.attention_maps import attention_maps

    maps = attention_maps(_backbone(score), _ct_like_images())
    stats = {name: _stats(a) for name, a in maps.items()}
    spread = all(m < 0.5 and e > 0.3 * u for m, e, u in stats.values())
    # The old layer is the negative control: it must show the saturation.
    print(score, stats)
    assert spread == (score == "cosine"), stats


def test_training_with_large_lr_does_not_saturate():
    x = tf.constant(RNG.normal(size=(8, 6, 6, 16)).astype("float32") * 5)
    target = tf.constant(RNG.normal(size=(8, 6, 6, 16)).astype("float32"))
    block = NonLocalBlock(return_attention=True)
    block(x)
    block.output_bn.gamma.assign(np.ones(16, "float32"))
    optimizer = keras.optimizers.SGD(learning_rate=10.0)
    for _ in range(20):
        with tf.GradientTape() as tape:
            y, _ = block(x, training=True)
            loss = tf.reduce_mean((y - target) ** 2)
        grads = tape.gradient(loss, block.trainable_variables)
        optimizer.apply(grads, block.trainable_variables)
    _, attention = block(x, training=False)
    max_weight, entropy, uniform = _stats(attention)
    assert float(block.temperature()) <= 10.0 + 1e-4
    # Logits within +-10 over 36 keys: the max weight is bounded by
    # e^20 / (e^20 + 35) in principle, but after 20 huge steps the mean
    # stays well spread.
    assert max_weight < 0.9 and entropy > 0.2, (max_weight, entropy, uniform)


def test_old_weights_files_load_with_default_temperature(tmp_path):
    # score="dot" has exactly the old layer's variables (no log_tau), so a
    # file it saves is an old-layer weights file.
    x = RNG.normal(size=(2, 5, 5, 8)).astype("float32")
    inputs = keras.Input((5, 5, 8))
    old = keras.Model(inputs, NonLocalBlock(name="nl", score="dot")(inputs))
    old.layers[1].output_bn.gamma.assign(np.ones(8, "float32"))
    assert len(old.layers[1].weights) == 12
    old.save_weights(tmp_path / "old.weights.h5")
    new = keras.Model(inputs, NonLocalBlock(name="nl")(inputs))
    new.layers[1].log_tau.assign(0.0)
    new.load_weights(tmp_path / "old.weights.h5")
    block = new.layers[1]
    np.testing.assert_allclose(float(block.temperature()), 4.0, rtol=1e-6)
    loaded = [w for w in block.weights if w is not block.log_tau]
    for a, b in zip(loaded, old.layers[1].weights, strict=True):
        np.testing.assert_array_equal(a, b)
    again = keras.Model(inputs, NonLocalBlock(name="nl", score="dot")(inputs))
    again.load_weights(tmp_path / "old.weights.h5")
    np.testing.assert_allclose(again(x), old(x), atol=1e-6)


def test_dot_score_is_the_old_unscaled_eq1():
    block = NonLocalBlock(score="dot", return_attention=True)
    x = RNG.normal(size=(2, 4, 4, 8)).astype("float32")
    _, attention = block(x)
    q = _conv1x1(x, block.query_conv).reshape(2, 16, -1)
    k = _conv1x1(x, block.key_conv).reshape(2, 16, -1)
    s = q @ k.transpose(0, 2, 1)
    s = np.exp(s - s.max(-1, keepdims=True))
    np.testing.assert_allclose(
        attention, s / s.sum(-1, keepdims=True), atol=1e-5
    )
    with pytest.raises(ValueError, match="score"):
        NonLocalBlock(score="scaled")
    with pytest.raises(ValueError, match="logit_scale"):
        NonLocalBlock(logit_scale=20.0)
