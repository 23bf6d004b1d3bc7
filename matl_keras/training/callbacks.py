"""Keras callbacks of the supervised stage."""

from __future__ import annotations

import math
import time

import keras
from absl import logging

from matl_keras.evaluation import metrics as metrics_lib
from matl_keras.evaluation.evaluator import predict_split


class ValidationMetrics(keras.callbacks.Callback):
    """Scores the validation split after every epoch.

    Adds `val_accuracy`, `val_f1`, `val_auc`, `val_loss` (exact, see
    `matl_keras.evaluation.metrics`) to the epoch logs, so CSVLogger,
    TensorBoard and the progress bar (which Keras adds last) show them.

    Args:
        data: tf.data.Dataset. Batches of `(images, labels)`.
        positive_index: int or None. Positive class of a binary task.
    """

    def __init__(self, data, positive_index=None):
        super().__init__()
        self.data = data
        self.positive_index = positive_index

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        labels, probs = predict_split(self.model, self.data)
        scores = metrics_lib.classification_metrics(
            labels, probs, self.positive_index
        )
        for key in ("accuracy", "f1", "auc", "loss"):
            logs[f"val_{key}"] = scores[key]


class StopOnNonFinite(keras.callbacks.Callback):
    """Stops training at the first non-finite loss and remembers where."""

    def __init__(self):
        super().__init__()
        self.failed_at = None
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.failed_at = (self._epoch + 1, batch + 1, float(loss))
            logging.error(
                "non-finite loss %s at epoch %d step %d; stopping",
                loss,
                self._epoch + 1,
                batch + 1,
            )
            self.model.stop_training = True


class Throughput(keras.callbacks.Callback):
    """Counts the training steps and seconds of this process (a resumed run
    skips the epochs it restored, so they must not count)."""

    def __init__(self):
        super().__init__()
        self.steps = 0
        self.seconds = 0.0
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1

    def on_epoch_end(self, epoch, logs=None):
        self.seconds += time.perf_counter() - self._start
