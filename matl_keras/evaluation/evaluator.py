"""The evaluator plugin contract (entry-point group `matl_keras.evaluators`).

An evaluator scores a trained model on one labelled split and yields
`(metric name, value)` pairs; the caller stores them under the split's name
in `metrics.json`. Predictions are computed once per split and shared by all
evaluators through `EvalContext.predictions()`.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterator
from typing import Any
from typing import ClassVar

import numpy as np

from matl_keras import PLUGIN_API_VERSION


def predict_split(model: Any, data: Any) -> tuple[np.ndarray, np.ndarray]:
    """`(labels (n,), probabilities (n, classes))` of a batched split.

    `predict()` runs the compiled, distribution-aware predict function
    (`predict_on_batch` duplicates rows under MirroredStrategy).
    """
    probs = np.asarray(model.predict(data, verbose=0))
    labels = np.concatenate([np.asarray(y) for _, y in data])
    return labels, probs


@dataclasses.dataclass
class EvalContext:
    """What an evaluator may look at.

    Args:
        model: keras.Model. The trained classifier (images -> probabilities).
        data: tf.data.Dataset. Batches of `(images, labels)` of one split,
            preprocessed as in evaluation.
        split: str. Name of the split ("val", "test").
        class_names: tuple of str. Class names in label order.
        positive_index: int or None. Positive class of a binary task.
        workdir: str or None. Where an evaluator may write files.
    """

    model: Any
    data: Any
    split: str
    class_names: tuple[str, ...]
    positive_index: int | None = None
    workdir: str | None = None
    _cache: tuple[np.ndarray, np.ndarray] | None = dataclasses.field(
        default=None, repr=False
    )

    def predictions(self) -> tuple[np.ndarray, np.ndarray]:
        """`(labels (n,), probabilities (n, classes))`, computed once."""
        if self._cache is None:
            self._cache = predict_split(self.model, self.data)
        return self._cache


class Evaluator(abc.ABC):
    """Base class of evaluator plugins.

    Example:
    ```python
    class TopClassRate(Evaluator):
        def run(self, context):
            labels, probs = context.predictions()
            yield "top_class_rate", float(np.mean(probs.argmax(1) == 0))
    ```
    """

    api_version: ClassVar[int] = PLUGIN_API_VERSION

    @abc.abstractmethod
    def run(self, context: EvalContext) -> Iterator[tuple[str, Any]]:
        """Yields `(name, value)` pairs; values must be JSON-serializable."""
