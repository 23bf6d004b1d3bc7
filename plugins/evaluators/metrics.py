"""`metrics` evaluator: accuracy, F1, AUC, sensitivity, specificity, loss."""

from __future__ import annotations

from collections.abc import Iterator

from matl_keras.errors import ConfigError
from matl_keras.evaluation import metrics as metrics_lib
from matl_keras.evaluation.evaluator import EvalContext
from matl_keras.evaluation.evaluator import Evaluator


class ClassificationMetrics(Evaluator):
    """Exact classification metrics of a split's predictions.

    Args:
        positive_class: str or None. Name of the class whose F1/AUC a binary
            task reports; None uses the dataset's `positive_class`.
    """

    def __init__(self, positive_class: str | None = None) -> None:
        self.positive_class = positive_class

    def run(self, context: EvalContext) -> Iterator[tuple[str, float]]:
        labels, probs = context.predictions()
        positive = context.positive_index
        if self.positive_class is not None:
            if self.positive_class not in context.class_names:
                raise ConfigError(
                    "`positive_class` must be one of "
                    f"{list(context.class_names)}. Received: "
                    f"positive_class={self.positive_class!r}"
                )
            positive = context.class_names.index(self.positive_class)
        scores = metrics_lib.classification_metrics(labels, probs, positive)
        yield from scores.items()
        yield "num_examples", int(len(labels))
