"""`training.sgd.SGD`: Keras' SGD with the learning rate read once per
step in its weight decay: the same weights bit for bit, on one device and
under MirroredStrategy, and a schedule traced twice a step instead of
once per variable."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from matl_keras.training import optimizers
from matl_keras.training import strategies
from matl_keras.training.sgd import SGD


class CountingSchedule(keras.optimizers.schedules.PiecewiseConstantDecay):
    calls = 0

    def __call__(self, step):
        CountingSchedule.calls += 1
        return super().__call__(step)


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    x = inputs
    for width in (8, 8, 8, 8):
        x = keras.layers.Dense(width, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(2)(x))


def _train(optimizer_cls, strategy, steps=4):
    x = np.random.default_rng(0).normal(size=(8, 6)).astype("float32")
    y = np.arange(8) % 2
    with strategy.scope():
        model = _model()
        schedule = CountingSchedule([2], [0.1, 0.01])
        model.compile(
            optimizer=optimizer_cls(
                learning_rate=schedule, momentum=0.9, weight_decay=0.05
            ),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    CountingSchedule.calls = 0
    model.fit(x, y, batch_size=8, epochs=steps, shuffle=False, verbose=0)
    return [w.numpy() for w in model.weights], CountingSchedule.calls


@pytest.mark.parametrize("replicas", [1, 2])
def test_same_weights_as_keras_sgd_with_a_schedule_read_once(replicas):
    # The process's one MirroredStrategy (a second one in the same process
    # can collide with the first's collective keys).
    strategy = (
        strategies.get_strategy("mirrored")
        if replicas == 2
        else tf.distribute.get_strategy()
    )
    ours, our_calls = _train(SGD, strategy)
    theirs, their_calls = _train(keras.optimizers.SGD, strategy)
    assert len(ours) == 10
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)
    # Per trace of the step (fit traces it twice here), Keras evaluates
    # the schedule once for the update and once per variable (10) for the
    # weight decay; ours twice.
    traces = our_calls // 2
    assert traces >= 1 and our_calls == 2 * traces
    assert their_calls == 11 * traces


def test_the_stage_optimizer_is_ours_and_saves():
    optimizer = optimizers.sgd(batch_size=32, epochs=10, steps_per_epoch=5)
    assert isinstance(optimizer, SGD)
    restored = keras.optimizers.deserialize(
        keras.optimizers.serialize(optimizer)
    )
    assert type(restored) is SGD
    assert restored.get_config() == optimizer.get_config()


def _torch_sgd_reference(w0, grads, lr, momentum, l2):
    """torch.optim.SGD's update (dampening 0, no Nesterov), written out:
    d = g + l2 * w; buf = momentum * buf + d (buf = d at the first step);
    w -= lr * buf."""
    w, buf = w0.copy(), None
    for g in grads:
        d = g + l2 * w
        buf = d if buf is None else momentum * buf + d
        w = w - lr * buf
    return w


@pytest.mark.parametrize("replicas", [1, 2])
def test_l2_mode_is_pytorchs_coupled_weight_decay(replicas):
    # The L2 term goes through the momentum buffer, as torch.optim.SGD's
    # weight_decay (MoCo's); under MirroredStrategy it is counted once,
    # not once per replica.
    strategy = (
        strategies.get_strategy("mirrored")
        if replicas == 2
        else tf.distribute.get_strategy()
    )
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(5, 1)).astype("float32")
    x = rng.normal(size=(8, 5)).astype("float32")
    lr, momentum, l2 = 0.1, 0.9, 0.5
    with strategy.scope():
        model = keras.Sequential(
            [
                keras.Input((5,)),
                keras.layers.Dense(
                    1,
                    use_bias=False,
                    kernel_initializer=keras.initializers.Constant(w0),
                ),
            ]
        )
        model.compile(
            optimizer=optimizers.sgd(
                batch_size=256,
                epochs=1,
                steps_per_epoch=4,
                learning_rate=lr,
                momentum=momentum,
                weight_decay=l2,
                decay_at=(),
                weight_decay_mode="l2",
            ),
            loss="mse",
        )
    grads_seen = []
    for _ in range(4):
        # mean((x w)^2) over the global batch of 8.
        current = model.get_weights()[0]
        grads_seen.append(2 / 8 * x.T @ (x @ current))
        model.fit(x, np.zeros((8, 1)), batch_size=8, shuffle=False, verbose=0)
    w = model.get_weights()[0]
    expected = _torch_sgd_reference(w0, grads_seen, lr, momentum, l2)
    np.testing.assert_allclose(w, expected, rtol=1e-4, atol=1e-5)
    # Not the decoupled form: that shrinks by lr * wd only.
    decoupled = w0.copy()
    velocity = np.zeros_like(w0)
    for g in grads_seen:
        decoupled = decoupled - decoupled * l2 * lr
        velocity = momentum * velocity - lr * g
        decoupled = decoupled + velocity
    assert np.abs(decoupled - expected).max() > 1e-2


def test_cosine_schedule_is_moco_v2s():
    optimizer = optimizers.sgd(
        batch_size=32,
        epochs=2,
        steps_per_epoch=5,
        learning_rate=0.256,
        schedule="cosine",
    )
    base = 0.256 * 32 / 256
    rates = [float(optimizer._learning_rate(s)) for s in range(11)]
    expected = [base * (1 + np.cos(np.pi * s / 10)) / 2 for s in range(11)]
    np.testing.assert_allclose(rates, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "kwargs, named",
    [
        ({"schedule": "linear"}, "schedule='linear'"),
        ({"weight_decay_mode": "adamw"}, "weight_decay_mode='adamw'"),
        ({"weight_decay": -1.0}, "weight_decay=-1.0"),
        ({"weight_decay": None}, "weight_decay=None"),
        ({"learning_rate": 0.0}, "learning_rate=0.0"),
    ],
)
def test_bad_schedule_or_decay_mode_is_named(kwargs, named):
    from matl_keras.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(named)):
        optimizers.sgd(batch_size=32, epochs=2, steps_per_epoch=5, **kwargs)


def test_l2_optimizer_saves_and_refuses_both_decays():
    optimizer = optimizers.sgd(
        batch_size=32, epochs=2, steps_per_epoch=5, weight_decay_mode="l2"
    )
    assert optimizer.l2 == 1e-4 and optimizer.weight_decay is None
    restored = keras.optimizers.deserialize(
        keras.optimizers.serialize(optimizer)
    )
    assert restored.l2 == 1e-4
    with pytest.raises(ValueError, match="l2=0.1, weight_decay=0.1"):
        SGD(learning_rate=0.1, l2=0.1, weight_decay=0.1)
    with pytest.raises(ValueError, match="l2=0.0"):
        SGD(learning_rate=0.1, l2=0.0)


def test_l2_under_loss_scaling_sees_unscaled_gradients():
    w0 = np.array([1.0, -2.0, 3.0], "float32")
    grad = np.array([0.5, 0.25, -1.0], "float32")
    plain = keras.Variable(w0)
    SGD(learning_rate=0.1, momentum=0.9, l2=0.5).apply(
        [tf.constant(grad)], [plain]
    )
    scaled = keras.Variable(w0)
    keras.optimizers.LossScaleOptimizer(
        SGD(learning_rate=0.1, momentum=0.9, l2=0.5), initial_scale=512.0
    ).apply([tf.constant(grad * 512.0)], [scaled])
    # torch: w - lr * (g + l2 * w) at the first step.
    expected = w0 - 0.1 * (grad + 0.5 * w0)
    np.testing.assert_allclose(plain.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(scaled.numpy(), expected, rtol=1e-6)


def test_cosine_after_a_warm_up_starts_from_the_full_rate():
    """With a warm-up the cosine runs over the steps after it (SimCLR's
    and MoCo v3's shape), for `sgd` as for `lars`."""
    optimizer = optimizers.sgd(
        batch_size=256,
        epochs=10,
        steps_per_epoch=10,
        learning_rate=0.1,
        schedule="cosine",
        warmup_steps=20,
    )
    rate = optimizer._learning_rate
    assert float(rate(10)) == pytest.approx(0.05, rel=1e-5)
    assert float(rate(20)) == pytest.approx(0.1, rel=1e-5)
    assert float(rate(60)) == pytest.approx(0.05, rel=1e-5)
    assert float(rate(100)) == pytest.approx(0.0, abs=1e-7)
