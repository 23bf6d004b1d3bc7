"""Keras callbacks that watch a stage train: validation scores, kNN
accuracy of the features, non-finite losses, throughput.

They add to the epoch logs (so `history.csv`, TensorBoard and the progress
bar show their values) or stop the fit; they write no file of the run (see
`checkpoints` for those).
"""

from __future__ import annotations

import math
import time

import keras
from absl import logging

from matl_keras.errors import MatlError
from matl_keras.evaluation import metrics as metrics_lib
from matl_keras.evaluation.evaluator import pooled_features
from matl_keras.evaluation.evaluator import predict_split


def diverged(logs) -> bool:
    """True when the epoch's mean training loss is not finite: its weights
    are garbage and must not be scored, kept or backed up."""
    loss = (logs or {}).get("loss")
    return loss is not None and not math.isfinite(float(loss))


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
        if diverged(logs):
            for key in ("accuracy", "f1", "auc", "loss"):
                logs[f"val_{key}"] = math.nan
            return
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

    def raise_if_failed(self, what: str, backup_dir: str) -> None:
        """Raises a `MatlError` naming where `what` diverged."""
        if self.failed_at is None:
            return
        epoch, step, loss = self.failed_at
        raise MatlError(
            f"{what} diverged: loss {loss} at epoch {epoch}, step {step}. "
            f"The last completed epoch is kept in {backup_dir}; lower "
            "sgd.learning_rate or check the data."
        )

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


class KnnMonitor(keras.callbacks.Callback):
    """Logs `knn_accuracy` of the backbone's frozen features after every
    epoch (`score()` gives it at any time): a labelled bank split
    votes for the labels of a query split. Tells during SSL whether the
    representation is getting better for the target task.

    Args:
        backbone: keras.Model. The encoder being pretrained.
        bank, queries: tf.data.Dataset of `(images, labels)`.
        num_classes: int.
        k: int. Neighbours.
    """

    def __init__(self, backbone, bank, queries, num_classes, k=20):
        super().__init__()
        self.backbone = backbone
        self.bank = bank
        self.queries = queries
        self.num_classes = num_classes
        self.k = k

    def score(self) -> float:
        from matl_keras.evaluation.knn import knn_accuracy

        bank, bank_labels = pooled_features(self.backbone, self.bank)
        queries, query_labels = pooled_features(self.backbone, self.queries)
        return knn_accuracy(
            bank, bank_labels, queries, query_labels, self.num_classes, self.k
        )

    def linear_probe(self, positive_index=None, seed: int = 0) -> dict:
        """The standard SSL protocol beside kNN: a logistic-regression probe
        on the frozen pooled features, fitted on the bank split (penalty by
        5-fold CV on it, `evaluation.linear_probe`), scored on the query
        split: accuracy, and AUC of the positive class for two classes."""
        from matl_keras.evaluation import linear_probe as probe_lib

        bank, bank_labels = pooled_features(self.backbone, self.bank)
        queries, labels = pooled_features(self.backbone, self.queries)
        probe = probe_lib.linear_probe(
            bank, bank_labels, queries, self.num_classes, seed=seed
        )
        result = {
            "accuracy": metrics_lib.accuracy(labels, probe.probs),
            "penalty": probe.penalty,
        }
        if self.num_classes == 2:
            positive = 1 if positive_index is None else positive_index
            result["auc"] = metrics_lib.roc_auc_binary(
                labels == positive, probe.probs[:, positive]
            )
        return result

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and not diverged(logs):
            logs["knn_accuracy"] = self.score()
