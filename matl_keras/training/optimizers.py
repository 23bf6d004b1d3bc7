"""The stages' optimizers: SGD with step learning-rate decay, as in the
paper (section 6.2), or MoCo v2's cosine decay; SimCLR's LARS."""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras

import gin
from matl_keras.errors import ConfigError
from matl_keras.training import lars as lars_lib
from matl_keras.training import sgd as sgd_lib
from matl_keras.training import warmup

SCHEDULES = ("step", "cosine")
WEIGHT_DECAY_MODES = ("decoupled", "l2")


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
    schedule: str = "step",
    weight_decay_mode: str = "decoupled",
) -> keras.optimizers.Optimizer:
    """SGD with momentum, weight decay and step (or cosine) decay.

    The learning rate is scaled linearly with the batch size (Goyal et al.
    2017): `learning_rate * batch_size / reference_batch_size`, so a recipe
    written for the paper's batch 256 works at batch 16 on a CPU.

    Keras 3's `weight_decay` is decoupled (`w -= lr * wd * w` each step), not
    PyTorch's L2 term that also passes through momentum; with momentum 0.9
    the coupled form is about 10x stronger for the same coefficient.
    `weight_decay_mode="l2"` gives PyTorch's (`torch.optim.SGD`, which
    MoCo's code uses). Keras keeps the rate inside the velocity (`v = m v -
    lr g`), torch outside (`w -= lr buf`): the updates are equal at a
    constant rate and differ for ~1/(1 - momentum) steps after the rate
    changes.

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
        schedule: str. `"step"`: multiply by `decay_rate` at `decay_at`
            (the paper's). `"cosine"`: half a cosine from the base rate to
            0 over the training, per step (MoCo v2's `--cos` sets it once
            an epoch; `decay_at` and `decay_rate` unused); with a warm-up,
            the cosine starts after it (SimCLR's, MoCo v3's).
        weight_decay_mode: str. `"decoupled"` (Keras') or `"l2"`
            (PyTorch's SGD: `weight_decay * w` added to the gradient before
            momentum; `training.sgd.SGD(l2=...)`).
    """
    _check(learning_rate, schedule, weight_decay, decay_at, weight_decay_mode)
    base = learning_rate * batch_size / reference_batch_size
    rate = _rate(
        base,
        epochs,
        steps_per_epoch,
        schedule,
        decay_at,
        decay_rate,
        warmup_epochs,
        warmup_steps,
    )
    decay = weight_decay or None
    if weight_decay_mode == "l2":
        return sgd_lib.SGD(learning_rate=rate, momentum=momentum, l2=decay)
    return sgd_lib.SGD(
        learning_rate=rate, momentum=momentum, weight_decay=decay
    )


def lars(
    batch_size: int,
    epochs: int,
    steps_per_epoch: int,
    learning_rate: float = 0.075,
    learning_rate_scaling: str = "sqrt",
    momentum: float = 0.9,
    weight_decay: float = 1e-6,
    trust_coefficient: float = 1e-3,
    warmup_epochs: float = 0,
    warmup_steps: int = 0,
    schedule: str = "cosine",
) -> keras.optimizers.Optimizer:
    """SimCLR's optimizer: LARS (`training.lars.LARS`), warm-up, cosine.

    google-research/simclr's defaults: base rate 0.3 with linear scaling
    (`lr * batch / 256`) for large batches; for small ones (section B.1 of
    its paper) 0.075 with square-root scaling (`lr * sqrt(batch)`), the
    default here; weight decay 1e-6 (L2, on the kernels only); trust
    coefficient 0.001; cosine decay after a linear warm-up from 0 (its
    `WarmUpAndCosineDecay`: 10 epochs of 100). No warm-up unless
    `warmup_epochs` or `warmup_steps` is bound.

    Args:
        batch_size: int. Global batch size.
        epochs: int. Total epochs.
        steps_per_epoch: int. Optimizer steps per epoch.
        learning_rate: float. Base rate before scaling.
        learning_rate_scaling: str. `"sqrt"` (`lr * sqrt(batch)`) or
            `"linear"` (`lr * batch / 256`).
        momentum: float. Momentum.
        weight_decay: float. L2 on the kernels (rank >= 2).
        trust_coefficient: float. LARS' `eta`.
        warmup_epochs: float. Linear warm-up epochs (0: none).
        warmup_steps: int. The warm-up in optimizer steps instead.
        schedule: str. `"cosine"` (SimCLR's) or `"step"` (x0.1 at 60% and
            80%).
    """
    _check(learning_rate, schedule, weight_decay, (0.6, 0.8))
    if learning_rate_scaling not in ("sqrt", "linear"):
        raise ConfigError(
            "`learning_rate_scaling` must be 'sqrt' or 'linear'. Received: "
            f"learning_rate_scaling={learning_rate_scaling!r}"
        )
    if learning_rate_scaling == "sqrt":
        base = learning_rate * math.sqrt(batch_size)
    else:
        base = learning_rate * batch_size / 256
    rate = _rate(
        base,
        epochs,
        steps_per_epoch,
        schedule,
        (0.6, 0.8),
        0.1,
        warmup_epochs,
        warmup_steps,
    )
    try:
        return lars_lib.LARS(
            learning_rate=rate,
            momentum=momentum,
            l2=weight_decay,
            trust_coefficient=trust_coefficient,
        )
    except ValueError as error:
        raise ConfigError(f"lars: {error}") from None


def _check(
    learning_rate, schedule, weight_decay, decay_at, weight_decay_mode="l2"
):
    """The arguments `sgd` and `lars` share, each error naming its value."""
    if not learning_rate > 0:
        raise ConfigError(
            "`learning_rate` must be positive. Received: "
            f"learning_rate={learning_rate}"
        )
    if schedule not in SCHEDULES:
        raise ConfigError(
            f"`schedule` must be one of {SCHEDULES}. Received: "
            f"schedule={schedule!r}"
        )
    if weight_decay_mode not in WEIGHT_DECAY_MODES:
        raise ConfigError(
            f"`weight_decay_mode` must be one of {WEIGHT_DECAY_MODES}. "
            f"Received: weight_decay_mode={weight_decay_mode!r}"
        )
    if weight_decay is None or not weight_decay >= 0:
        raise ConfigError(
            "`weight_decay` must be a float >= 0 (0: none). Received: "
            f"weight_decay={weight_decay}"
        )
    if any(not 0.0 < f < 1.0 for f in decay_at) or list(decay_at) != sorted(
        decay_at
    ):
        raise ConfigError(
            "`decay_at` must be increasing fractions in (0, 1). Received: "
            f"decay_at={list(decay_at)}"
        )


def _rate(
    base,
    epochs,
    steps_per_epoch,
    schedule,
    decay_at,
    decay_rate,
    warmup_epochs,
    warmup_steps,
):
    """The learning-rate schedule: step decay under a warm-up, or a cosine
    after it."""
    total = epochs * steps_per_epoch
    ramp = warmup.warmup_steps_of(
        warmup_epochs, warmup_steps, steps_per_epoch, total
    )
    if schedule == "cosine":
        # Keras' CosineDecay: base * (1 + cos(pi * step / total)) / 2. With
        # a warm-up, SimCLR's WarmUpAndCosineDecay (and MoCo v3's): linear
        # from 0 to the base rate, then the cosine over the remaining
        # steps, not the ramp multiplied onto a cosine begun at step 0.
        if ramp:
            return keras.optimizers.schedules.CosineDecay(
                0.0, total - ramp, warmup_target=base, warmup_steps=ramp
            )
        return keras.optimizers.schedules.CosineDecay(base, max(total, 1))
    boundaries = [int(round(f * total)) for f in decay_at]
    # Drop decay points that collapse onto each other or onto step 0 in very
    # short runs (PiecewiseConstantDecay needs increasing boundaries).
    boundaries = sorted({b for b in boundaries if 0 < b < total})
    if boundaries:
        values = [base * decay_rate**i for i in range(len(boundaries) + 1)]
        rate = keras.optimizers.schedules.PiecewiseConstantDecay(
            boundaries, values
        )
    else:
        rate = base
    # --- warm-up (issue 20)
    if ramp:
        rate = warmup.LinearWarmup(rate, ramp)
    # --- end warm-up
    return rate


# Configurable as `sgd` and `lars` in gin, registered here on the
# definitions; Python callers get the plain functions (their errors without
# gin's call notes).
gin.external_configurable(sgd, name="sgd")
gin.external_configurable(lars, name="lars")
