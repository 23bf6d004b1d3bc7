"""tf.distribute strategy selection."""

from __future__ import annotations

import tensorflow as tf

from matl_keras.errors import ConfigError

STRATEGIES = ("auto", "default", "mirrored")

# One MirroredStrategy per process: two instances over the same devices reuse
# collective instance keys, and their all-reduces then collide ("Shape
# mismatch in the collective instance ..."), e.g. when a pipeline trains
# several stages in one process.
_MIRRORED: dict[tuple[str, ...], tf.distribute.Strategy] = {}


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
    devices = tuple(
        d.name for d in (gpus or tf.config.list_logical_devices("CPU"))
    )
    if devices not in _MIRRORED:
        _MIRRORED[devices] = tf.distribute.MirroredStrategy(list(devices))
    return _MIRRORED[devices]
