"""The one place that works around Keras 3's `fit` under
MultiWorkerMirroredStrategy (keras-team/keras#20585, open; also
tensorflow/tensorflow#72388). Remove this module when the upstream issue is
fixed: `tests/matl_keras/training/test_multi_worker.py` then still passes
with `apply()` made a no-op.

Two failures, both in `keras/src/backend/tensorflow/trainer.py` (Keras
3.15.1, TF 2.21), both only when the strategy is a MultiWorkerMirroredStrategy
in multi-worker mode:

1. `TensorFlowTrainer._maybe_symbolic_build` takes the first batch of the
   distributed dataset and calls `strategy.reduce("MEAN", batch, axis=None)`
   only to learn its shapes. The multi-worker reduce of a `PerReplica` batch
   raises "Attempt to convert a value (PerReplica...) ... to a Tensor". Fix:
   the first local replica's batch has the shapes and dtypes needed (the
   per-replica batch, as the in-process MirroredStrategy path gets too).
2. `reduce_per_replica(..., reduction="mean")` (the step's returned logs)
   calls `strategy.reduce("MEAN", v, axis=0)` in multi-worker mode, which
   fails on scalar logs ("Invalid reduction dimension 0 for input with 0
   dimensions") and for vector logs would average over the vector's first
   axis too. Fix: `axis=None` (mean over replicas only), which is what the
   single-worker branch computes.

Why patch rather than subclass: the supervised model is a plain functional
`keras.Model` (saved and loaded as such), so there is no subclass to put an
override in. Both wrappers delegate to the original code for every other
strategy and are installed once, by `strategies.get_strategy("multi_worker")`.
"""

from __future__ import annotations

import functools

import tensorflow as tf

_APPLIED = False


def in_multi_worker_mode(strategy) -> bool:
    """True for a MultiWorkerMirroredStrategy over more than one worker."""
    return (
        isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        and strategy.extended._in_multi_worker_mode()
    )  # noqa: SLF001


def apply() -> None:
    """Installs both fixes (idempotent).

    Raises:
        RuntimeError: this Keras no longer has the functions patched here
            (then check whether keras-team/keras#20585 is fixed and this
            module can go).
    """
    global _APPLIED
    if _APPLIED:
        return
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer as tf_trainer

    trainer_cls = tf_trainer.TensorFlowTrainer
    if not hasattr(trainer_cls, "_maybe_symbolic_build") or not hasattr(
        tf_trainer, "reduce_per_replica"
    ):
        raise RuntimeError(
            "keras_multi_worker_fix: keras.src.backend.tensorflow.trainer "
            "has changed (no _maybe_symbolic_build / reduce_per_replica); "
            "check keras-team/keras#20585 and update this workaround"
        )

    original_build = trainer_cls._maybe_symbolic_build  # noqa: SLF001

    @functools.wraps(original_build)
    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy  # noqa: SLF001
        if iterator is None or not in_multi_worker_mode(strategy):
            return original_build(
                self, iterator=iterator, data_batch=data_batch
            )
        for _, _, it in iterator:
            batch = next(it)
            data_batch = tree.map_structure(
                lambda v: (
                    strategy.experimental_local_results(v)[0]
                    if isinstance(v, tf.distribute.DistributedValues)
                    else v
                ),
                batch,
            )
            break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)  # noqa: SLF001

    original_reduce = tf_trainer.reduce_per_replica

    @functools.wraps(original_reduce)
    def reduce_per_replica(values, strategy, reduction):
        if reduction == "auto" and in_multi_worker_mode(strategy):
            return tree.map_structure(
                lambda v: strategy.reduce("MEAN", v, axis=None), values
            )
        return original_reduce(values, strategy, reduction)

    trainer_cls._maybe_symbolic_build = _maybe_symbolic_build  # noqa: SLF001
    tf_trainer.reduce_per_replica = reduce_per_replica
    _APPLIED = True
