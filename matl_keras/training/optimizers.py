"""SGD with step learning-rate decay, as in the paper (section 6.2)."""

from __future__ import annotations

from collections.abc import Sequence

import keras

import gin
from matl_keras.errors import ConfigError
from matl_keras.training import sgd as sgd_lib
from matl_keras.training import warmup


def sgd(
    batch_size: int,
    epochs: int,
    steps_per_epoch: int,
    learning_rate: float = 0.3,
    reference_batch_size: int = 256,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    decay_at: Sequence[float] = (0.6, 0.8),
    decay_rate: float = 0.1,
    warmup_epochs: float = 0,
    warmup_steps: int = 0,
) -> keras.optimizers.Optimizer:
    """SGD with momentum, weight decay and step decay.

    The learning rate is scaled linearly with the batch size (Goyal et al.
    2017): `learning_rate * batch_size / reference_batch_size`, so a recipe
    written for the paper's batch 256 works at batch 16 on a CPU.

    Keras 3's `weight_decay` is decoupled (`w -= lr * wd * w` each step), not
    PyTorch's L2 term that also passes through momentum; with momentum 0.9
    the coupled form is about 10x stronger for the same coefficient.

    Args:
        batch_size: int. Global batch size.
        epochs: int. Total epochs (the decay points are fractions of it).
        steps_per_epoch: int. Optimizer steps per epoch.
        learning_rate: float. Learning rate at `reference_batch_size`.
        reference_batch_size: int. Batch size `learning_rate` was tuned for.
        momentum: float. SGD momentum.
        weight_decay: float. Decoupled weight decay.
        decay_at: sequence of float. Fractions of training (0.6, 0.8 = the
            paper's epochs 120 and 160 of 200) at which the rate decays.
        decay_rate: float. Multiplier applied at each decay point.
        warmup_epochs: float. Linear warm-up over this many epochs first
            (`training.warmup`; 0: none). The decay points stay fractions of
            the whole training.
        warmup_steps: int. The warm-up in optimizer steps instead.
    """
    if learning_rate <= 0:
        raise ConfigError(
            f"`learning_rate` must be positive. Received: {learning_rate}"
        )
    if any(not 0.0 < f < 1.0 for f in decay_at) or list(decay_at) != sorted(
        decay_at
    ):
        raise ConfigError(
            "`decay_at` must be increasing fractions in (0, 1). Received: "
            f"decay_at={list(decay_at)}"
        )
    base = learning_rate * batch_size / reference_batch_size
    total = epochs * steps_per_epoch
    boundaries = [int(round(f * total)) for f in decay_at]
    # Drop decay points that collapse onto each other or onto step 0 in very
    # short runs (PiecewiseConstantDecay needs increasing boundaries).
    boundaries = sorted({b for b in boundaries if 0 < b < total})
    if boundaries:
        values = [base * decay_rate**i for i in range(len(boundaries) + 1)]
        schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
            boundaries, values
        )
    else:
        schedule = base
    # --- warm-up (issue 20)
    ramp = warmup.warmup_steps_of(
        warmup_epochs, warmup_steps, steps_per_epoch, total
    )
    if ramp:
        schedule = warmup.LinearWarmup(schedule, ramp)
    # --- end warm-up
    return sgd_lib.SGD(
        learning_rate=schedule,
        momentum=momentum,
        weight_decay=weight_decay or None,
    )


# Configurable as `sgd` in gin, registered here on the definition; Python
# callers get the plain function (its errors without gin's call notes).
gin.external_configurable(sgd, name="sgd")
