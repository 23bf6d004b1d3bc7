"""`training.sgd.SGD`: Keras' SGD with the learning rate read once per
step in its weight decay: the same weights bit for bit, on one device and
under MirroredStrategy, and a schedule traced twice a step instead of
once per variable."""

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
