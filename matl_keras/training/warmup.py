"""Linear learning-rate warm-up in front of a stage's schedule.

Large learning rates (the paper's 0.3 at batch 256) can diverge in the first
steps from random or freshly transferred weights; Goyal et al. 2017 ramp
the rate up linearly over the first epochs. Here the rate of step `s`
(counted from 0) during a warm-up of `W` steps is the schedule's rate
times `(s + 1) / W`; from step `W` on it is the schedule's rate
unchanged. The step-decay points of `optimizers.sgd` stay at their
fractions of the whole training (warm-up included), as in Goyal et al.

Example:
    `sgd.warmup_epochs = 2` (or `finetune/sgd.warmup_steps = 50`).
"""

from __future__ import annotations

import keras

from matl_keras.errors import ConfigError


def warmup_factor(step: float, warmup_steps: int) -> float:
    """The multiplier of the schedule's rate at optimizer step `step`
    (0-based): `(step + 1) / warmup_steps` during the warm-up, then 1.
    Pure Python, the reference of `LinearWarmup`."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return 1.0
    return (step + 1) / warmup_steps


def warmup_steps_of(
    warmup_epochs: float,
    warmup_steps: int,
    steps_per_epoch: int,
    total_steps: int,
) -> int:
    """The warm-up length in optimizer steps from `sgd`'s two arguments.

    Raises:
        ConfigError: negative values, both given, or a warm-up as long as
            the whole training.
    """
    if warmup_epochs < 0 or warmup_steps < 0:
        raise ConfigError(
            "`warmup_epochs` and `warmup_steps` must be >= 0. Received: "
            f"warmup_epochs={warmup_epochs}, warmup_steps={warmup_steps}"
        )
    if warmup_epochs and warmup_steps:
        raise ConfigError(
            "give `warmup_epochs` or `warmup_steps`, not both. Received: "
            f"warmup_epochs={warmup_epochs}, warmup_steps={warmup_steps}"
        )
    steps = warmup_steps or int(round(warmup_epochs * steps_per_epoch))
    if steps and steps >= total_steps:
        raise ConfigError(
            f"the warm-up ({steps} steps) must be shorter than the training "
            f"({total_steps} steps). Received: warmup_epochs={warmup_epochs}, "
            f"warmup_steps={warmup_steps}"
        )
    return steps


@keras.saving.register_keras_serializable(package="matl_keras")
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """`schedule(step) * warmup_factor(step, warmup_steps)`.

    Args:
        schedule: LearningRateSchedule or float. The schedule after (and
            under) the warm-up.
        warmup_steps: int. Steps of the linear ramp (>= 1).
    """

    def __init__(self, schedule, warmup_steps: int):
        if warmup_steps < 1:
            raise ValueError(
                f"`warmup_steps` must be >= 1. Received: {warmup_steps}"
            )
        self.schedule = schedule
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        base = (
            self.schedule(step)
            if callable(self.schedule)
            else keras.ops.convert_to_tensor(self.schedule, "float32")
        )
        factor = keras.ops.minimum((step + 1.0) / self.warmup_steps, 1.0)
        return keras.ops.cast(base, "float32") * factor

    def get_config(self):
        schedule = self.schedule
        if callable(schedule):
            schedule = keras.saving.serialize_keras_object(schedule)
        return {"schedule": schedule, "warmup_steps": self.warmup_steps}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config["schedule"], dict):
            config["schedule"] = keras.saving.deserialize_keras_object(
                config["schedule"]
            )
        return cls(**config)
