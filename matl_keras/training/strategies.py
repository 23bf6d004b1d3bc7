"""tf.distribute strategy selection."""

from __future__ import annotations

import tensorflow as tf

from matl_keras.errors import ConfigError

STRATEGIES = ("auto", "default", "mirrored")


def get_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """Returns the strategy called `name`.

    Args:
        name: str. `"auto"` (MirroredStrategy when several GPUs are visible,
            else the default strategy), `"default"` (one device) or
            `"mirrored"` (MirroredStrategy over every visible GPU, or over
            the logical CPU devices when there is no GPU).
    """
    if name not in STRATEGIES:
        raise ConfigError(
            f"`strategy` must be one of {STRATEGIES}. Received: "
            f"strategy={name!r}"
        )
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 else "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if gpus:
        return tf.distribute.MirroredStrategy()
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(cpus)
