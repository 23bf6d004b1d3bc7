"""Numeric precision and XLA choices of a training stage.

Mixed precision keeps variables in float32 and computes in float16 (GPU) or
bfloat16; the parts that need the range or the accuracy stay in float32 in
the model code itself: the non-local block's scores and softmax
(`layers.non_local_block`), the classifier's softmax layer
(`resnet_image_classifier`), every SSL loss (`training.ssl_losses` casts
its inputs). Under `mixed_float16` Keras wraps the optimizer in a
`LossScaleOptimizer` at `compile`; `ContrastiveModel.train_step` scales its
loss through it as Keras' own `train_step` does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras
import tensorflow as tf

from matl_keras.errors import ConfigError

PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")


def _has_gpu() -> bool:
    return bool(tf.config.list_logical_devices("GPU"))


def resolve_precision(precision: str) -> str:
    """`"auto"`: `mixed_float16` when a GPU is visible, else `float32` (CPU
    float16 kernels are slower than float32)."""
    if precision not in PRECISIONS:
        raise ConfigError(
            f"`precision` must be one of {PRECISIONS}. Received: "
            f"precision={precision!r}"
        )
    if precision == "auto":
        return "mixed_float16" if _has_gpu() else "float32"
    return precision


@contextlib.contextmanager
def dtype_policy(precision: str) -> Iterator[str]:
    """Builds the models made inside with `precision`; restores the global
    policy afterwards (each layer keeps the policy it was built with)."""
    name = resolve_precision(precision)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield name
    finally:
        keras.config.set_dtype_policy(previous)


def resolve_jit_compile(
    jit_compile: bool | str,
    strategy: tf.distribute.Strategy,
    default_on_cpu: bool | str,
) -> bool | str:
    """XLA for the training step.

    `"auto"`: on GPU with one replica; on CPU, `default_on_cpu` (`"auto"`
    leaves the choice to Keras, which turns XLA off on CPU-only machines).
    Never with several replicas: Keras 3 compiles the whole cross-replica
    step (`strategy.run` inside the jit-compiled function) as one XLA
    cluster, which cannot reach the other devices' variables ("Trying to
    access resource .../replica_1 located in device CPU:1 from device
    CPU:0", observed on 2 logical CPUs with Keras 3.15 / TF 2.21).

    Raises:
        ConfigError: `jit_compile` is not True, False or "auto", or is True
            under a strategy with several replicas.
    """
    if jit_compile not in (True, False, "auto"):
        raise ConfigError(
            "`jit_compile` must be True, False or 'auto'. Received: "
            f"jit_compile={jit_compile!r}"
        )
    replicas = strategy.num_replicas_in_sync
    if jit_compile is True and replicas > 1:
        raise ConfigError(
            f"jit_compile=True with {replicas} replicas: Keras 3 compiles the "
            "whole cross-replica step as one XLA cluster, which fails to "
            "reach the other devices' variables. Use jit_compile='auto' "
            "(XLA on one GPU only) or False."
        )
    if jit_compile != "auto":
        return jit_compile
    if replicas > 1:
        return False
    return True if _has_gpu() else default_on_cpu
