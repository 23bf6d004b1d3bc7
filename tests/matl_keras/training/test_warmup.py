"""Linear learning-rate warm-up (`training.warmup`), against hand-computed
rates."""

import keras
import pytest

from matl_keras.errors import ConfigError
from matl_keras.training import optimizers
from matl_keras.training import warmup


def test_warmup_factor_by_hand():
    # 4 warm-up steps: 1/4, 2/4, 3/4, 4/4, then 1.
    assert [warmup.warmup_factor(s, 4) for s in range(6)] == [
        0.25,
        0.5,
        0.75,
        1.0,
        1.0,
        1.0,
    ]
    assert warmup.warmup_factor(0, 0) == 1.0  # no warm-up


def _rates(optimizer, steps):
    schedule = optimizer._learning_rate  # noqa: SLF001
    return [float(schedule(s)) for s in steps]


def test_sgd_warms_up_then_follows_its_step_decay():
    # base 0.4 * 32 / 256 = 0.05; 10 epochs x 10 steps; decay x0.1 at 50%;
    # warm-up 2 epochs = 20 steps: step s < 20 runs at 0.05 * (s + 1) / 20
    # (Keras decays after the boundary step: 0.005 from step 51).
    optimizer = optimizers.sgd(
        batch_size=32,
        epochs=10,
        steps_per_epoch=10,
        learning_rate=0.4,
        decay_at=(0.5,),
        warmup_epochs=2,
    )
    assert _rates(optimizer, [0, 1, 9, 19, 20, 50, 51, 99]) == pytest.approx(
        [0.0025, 0.005, 0.025, 0.05, 0.05, 0.05, 0.005, 0.005]
    )
    # The same in steps; and a constant rate (no decay point) warms up too.
    steps = optimizers.sgd(
        batch_size=32,
        epochs=10,
        steps_per_epoch=10,
        learning_rate=0.4,
        decay_at=(0.5,),
        warmup_steps=20,
    )
    assert _rates(steps, range(100)) == _rates(optimizer, range(100))
    constant = optimizers.sgd(
        batch_size=256,
        epochs=1,
        steps_per_epoch=10,
        learning_rate=0.1,
        decay_at=(),
        warmup_steps=4,
    )
    assert _rates(constant, [0, 3, 9]) == pytest.approx([0.025, 0.1, 0.1])


def test_without_warmup_the_schedule_is_unchanged():
    optimizer = optimizers.sgd(
        batch_size=32,
        epochs=10,
        steps_per_epoch=10,
        learning_rate=0.4,
        decay_at=(0.5,),
    )
    assert not isinstance(optimizer._learning_rate, warmup.LinearWarmup)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"warmup_epochs": 1, "warmup_steps": 5}, "not both"),
        ({"warmup_steps": -1}, r"Received: warmup_epochs=0, warmup_steps=-1"),
        ({"warmup_epochs": 10}, r"shorter than the training \(100 steps\)"),
    ],
)
def test_warmup_arguments_are_checked(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        optimizers.sgd(batch_size=32, epochs=10, steps_per_epoch=10, **kwargs)


def test_warmup_schedule_round_trips_through_its_config():
    schedule = warmup.LinearWarmup(
        keras.optimizers.schedules.PiecewiseConstantDecay([5], [1.0, 0.1]), 4
    )
    again = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(schedule)
    )
    assert [float(again(s)) for s in (0, 3, 6)] == pytest.approx(
        [0.25, 1.0, 0.1]
    )
