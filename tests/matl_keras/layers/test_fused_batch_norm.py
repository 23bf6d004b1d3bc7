"""FusedBatchNormalization computes what keras.layers.BatchNormalization
computes (outputs, gradients, moving statistics, inference), on the fused
kernel where it can and through Keras where it cannot."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from matl_keras.layers.fused_batch_norm import FusedBatchNormalization


def _pair(**kwargs):
    x = tf.constant(
        np.random.default_rng(0).normal(2, 3, (4, 5, 6, 8)).astype("float32")
    )
    layers = [
        keras.layers.BatchNormalization(
            momentum=0.9, epsilon=1.001e-5, **kwargs
        ),
        FusedBatchNormalization(momentum=0.9, epsilon=1.001e-5, **kwargs),
    ]
    for layer in layers:
        layer.build(x.shape)
        if layer.scale:
            layer.gamma.assign(np.linspace(0.5, 2, 8))
        if layer.center:
            layer.beta.assign(np.linspace(-1, 1, 8))
    return x, layers


def _run(layer, x):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        loss = tf.reduce_sum(y * tf.sin(y))
    grads = tape.gradient(loss, [x, *layer.trainable_weights])
    return y, grads


@pytest.mark.parametrize("kwargs", [{}, {"scale": False}, {"center": False}])
def test_equals_keras_batch_normalization(kwargs):
    x, (reference, fused) = _pair(**kwargs)
    for _ in range(2):  # moving statistics over two updates
        y_ref, g_ref = _run(reference, x)
        y, g = _run(fused, x)
    np.testing.assert_allclose(y, y_ref, atol=1e-5)
    for a, b in zip(g, g_ref):
        np.testing.assert_allclose(a, b, atol=1e-4 * np.abs(b).max())
    # Keras' rule with the biased batch variance (the kernel's is unbiased).
    np.testing.assert_allclose(
        fused.moving_mean, reference.moving_mean, rtol=1e-6
    )
    np.testing.assert_allclose(
        fused.moving_variance, reference.moving_variance, rtol=1e-5
    )
    np.testing.assert_allclose(
        fused(x, training=False), reference(x, training=False), atol=1e-5
    )


def test_fuses_where_it_can_and_defers_otherwise(monkeypatch):
    calls = []
    real = tf.raw_ops.FusedBatchNormV3
    monkeypatch.setattr(
        tf.raw_ops,
        "FusedBatchNormV3",
        lambda **kw: calls.append(kw["is_training"]) or real(**kw),
    )
    x, (_, fused) = _pair()
    fused(x, training=True)
    fused(x, training=False)
    assert calls == [True, False]
    fused.trainable = False  # frozen: inference statistics, fused
    fused(x, training=True)
    assert calls == [True, False, False]
    calls.clear()
    FusedBatchNormalization(axis=1)(x, training=True)  # channels first: Keras
    FusedBatchNormalization()(tf.zeros([2, 3, 8]), training=True)  # 3-D: Keras
    assert calls == []


def test_synchronized_fuses_on_one_replica_only():
    from matl_keras.training import strategies

    x, _ = _pair()
    sync = FusedBatchNormalization(synchronized=True)
    assert sync._can_fuse(x, True, None)  # one replica: the same statistics
    mirrored = strategies.get_strategy("mirrored")
    seen = []

    def replica_fn():
        seen.append(sync._can_fuse(x, True, None))
        return tf.constant(0.0)

    mirrored.run(replica_fn)
    assert seen and not any(seen)  # several replicas: Keras' all-reduce


def test_mixed_precision_keeps_float16_activations_and_float32_statistics():
    layer = FusedBatchNormalization(dtype="mixed_float16")
    x = tf.random.normal([2, 4, 4, 8], dtype=tf.float16)
    y = layer(x, training=True)
    assert y.dtype == tf.float16
    assert layer.moving_mean.dtype == "float32"
    assert np.isfinite(layer.moving_variance.numpy()).all()


def test_serializes_and_loads_as_itself(tmp_path):
    inputs = keras.Input((4, 4, 8))
    model = keras.Model(inputs, FusedBatchNormalization()(inputs))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.layers[-1], FusedBatchNormalization)


@pytest.mark.parametrize(
    "kwargs", [{}, {"scale": False}, {"center": False, "momentum": 0.5}]
)
def test_grouped_statistics_on_the_fused_kernel_equal_the_moments_form(
    monkeypatch, kwargs
):
    """`fuse_groups`: one fused kernel per group computes what the
    `tf.nn.moments` form computes (outputs, gradients, moving
    statistics), in a `tf.function` as in training."""
    x = np.random.default_rng(0).normal(2, 3, (8, 5, 6, 8)).astype("float32")
    x[4:] *= 10.0  # the groups have other statistics
    x = tf.constant(x)
    results = []
    for fuse in (False, True):
        monkeypatch.setattr(FusedBatchNormalization, "fuse_groups", fuse)
        layer = FusedBatchNormalization(groups=2, epsilon=1e-3, **kwargs)
        layer.build(x.shape)
        if layer.scale:
            layer.gamma.assign(np.linspace(0.5, 2, 8))
        run = tf.function(lambda x, layer=layer: _run(layer, x))
        for _ in range(2):  # moving statistics over two updates
            y, grads = run(x)
        results.append(
            (y, grads, layer.moving_mean.numpy(), layer.moving_variance)
        )
    (y_ref, g_ref, mean_ref, var_ref), (y, g, mean, var) = results
    np.testing.assert_allclose(y, y_ref, atol=1e-5)
    for a, b in zip(g, g_ref):
        np.testing.assert_allclose(a, b, atol=1e-4 * np.abs(b).max())
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-5)
    np.testing.assert_allclose(var, var_ref, rtol=1e-5)
