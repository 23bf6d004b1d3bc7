"""`training.lars.LARS` against SimCLR's update written out in NumPy, on
one device and under MirroredStrategy; `optimizers.lars`' rate."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from matl_keras.errors import ConfigError
from matl_keras.training import optimizers
from matl_keras.training import strategies
from matl_keras.training.lars import LARS


def _reference(params, grads_of, lr, momentum, l2, eta, steps):
    """google-research/simclr's LARS (classic momentum, no Nesterov), with
    the rank-1 variables excluded from decay and adaptation."""
    params = [p.copy() for p in params]
    velocity = [np.zeros_like(p) for p in params]
    for _ in range(steps):
        grads = grads_of(params)
        for i, (w, g) in enumerate(zip(params, grads)):
            scaled = lr
            if w.ndim >= 2:
                g = g + l2 * w
                w_norm, g_norm = np.linalg.norm(w), np.linalg.norm(g)
                if w_norm > 0 and g_norm > 0:
                    scaled = lr * eta * w_norm / g_norm
            velocity[i] = momentum * velocity[i] + scaled * g
            params[i] = w - velocity[i]
    return params


@pytest.mark.parametrize("replicas", [1, 2])
def test_lars_is_simclrs_update(replicas):
    strategy = (
        strategies.get_strategy("mirrored")
        if replicas == 2
        else tf.distribute.get_strategy()
    )
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(5, 3)).astype("float32")
    bias = rng.normal(size=(3,)).astype("float32")
    x = rng.normal(size=(8, 5)).astype("float32")
    lr, momentum, l2, eta = 0.5, 0.9, 0.01, 0.1
    with strategy.scope():
        model = keras.Sequential(
            [
                keras.Input((5,)),
                keras.layers.Dense(
                    3,
                    kernel_initializer=keras.initializers.Constant(kernel),
                    bias_initializer=keras.initializers.Constant(bias),
                ),
            ]
        )
        model.compile(
            optimizer=LARS(
                learning_rate=lr,
                momentum=momentum,
                l2=l2,
                trust_coefficient=eta,
            ),
            loss="mse",
        )
    steps = 4
    model.fit(
        x,
        np.zeros((8, 3), "float32"),
        batch_size=8,
        epochs=steps,
        shuffle=False,
        verbose=0,
    )

    def grads_of(params):
        # mse over the global batch: mean over 8 rows and 3 outputs.
        k, b = params
        residual = x @ k + b
        return [2 / 24 * x.T @ residual, 2 / 24 * residual.sum(0)]

    expected = _reference(
        [kernel, bias], grads_of, lr, momentum, l2, eta, steps
    )
    for got, want in zip(model.get_weights(), expected):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    # The trust ratio matters here: plain SGD with momentum lands elsewhere.
    plain = _reference([kernel, bias], grads_of, lr, momentum, 0.0, 1.0, steps)
    assert np.abs(plain[0] - expected[0]).max() > 1e-2


def test_zero_weights_take_the_plain_rate():
    optimizer = LARS(learning_rate=0.1, momentum=0.0, l2=0.0)
    zero = keras.Variable(np.zeros((2, 2), "float32"))
    optimizer.apply([tf.ones((2, 2))], [zero])
    np.testing.assert_allclose(zero.numpy(), -0.1 * np.ones((2, 2)))


def test_lars_factory_scales_warms_up_and_decays():
    optimizer = optimizers.lars(
        batch_size=64,
        epochs=10,
        steps_per_epoch=10,
        learning_rate=0.075,
        warmup_epochs=1,
    )
    assert isinstance(optimizer, LARS)
    assert optimizer.l2 == 1e-6 and optimizer.trust_coefficient == 1e-3
    rate = optimizer._learning_rate
    base = 0.075 * 8.0  # sqrt(64)
    # SimCLR's WarmUpAndCosineDecay: step / 10 * base over the 10 warm-up
    # steps, then the cosine over the other 90 from the full base rate.
    for step in (0, 5):
        assert float(rate(step)) == pytest.approx(base * step / 10, abs=1e-7)
    for step in (10, 55, 100):
        expected = base * (1 + np.cos(np.pi * (step - 10) / 90)) / 2
        assert float(rate(step)) == pytest.approx(expected, rel=1e-5, abs=1e-7)
    linear = optimizers.lars(
        batch_size=512,
        epochs=1,
        steps_per_epoch=1,
        learning_rate=0.3,
        learning_rate_scaling="linear",
        schedule="step",
    )
    assert float(linear.learning_rate) == pytest.approx(0.6)
    restored = keras.optimizers.deserialize(
        keras.optimizers.serialize(optimizer)
    )
    assert type(restored) is LARS and restored.l2 == optimizer.l2


@pytest.mark.parametrize(
    "kwargs, named",
    [
        ({"learning_rate_scaling": "log"}, "learning_rate_scaling='log'"),
        ({"schedule": "poly"}, "schedule='poly'"),
        ({"trust_coefficient": 0.0}, "trust_coefficient=0.0"),
        ({"momentum": 1.5}, "momentum=1.5"),
    ],
)
def test_bad_lars_arguments_are_named(kwargs, named):
    with pytest.raises(ConfigError, match=named):
        optimizers.lars(batch_size=32, epochs=2, steps_per_epoch=5, **kwargs)


def test_lars_under_loss_scaling_sees_unscaled_gradients():
    """Mixed precision wraps the optimizer in a LossScaleOptimizer: the
    trust ratio and the L2 term are computed after unscaling."""
    kernel = np.arange(1.0, 7.0, dtype="float32").reshape(2, 3)
    grad = np.full((2, 3), 0.5, "float32")
    plain = keras.Variable(kernel)
    LARS(learning_rate=0.1, l2=0.01, trust_coefficient=0.1).apply(
        [tf.constant(grad)], [plain]
    )
    scaled = keras.Variable(kernel)
    optimizer = keras.optimizers.LossScaleOptimizer(
        LARS(learning_rate=0.1, l2=0.01, trust_coefficient=0.1),
        initial_scale=1024.0,
    )
    optimizer.apply([tf.constant(grad * 1024.0)], [scaled])
    np.testing.assert_allclose(scaled.numpy(), plain.numpy(), rtol=1e-6)
    assert not np.allclose(plain.numpy(), kernel)
