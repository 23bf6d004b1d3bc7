"""`metrics` evaluator: accuracy, F1, AUC, sensitivity, specificity and loss
with bootstrap confidence intervals, the confusion matrix and ROC points;
given a decision fitted on val, the same split scored at its operating point
and calibration before/after temperature scaling (`operating_point`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from matl_keras.errors import ConfigError
from matl_keras.evaluation import metrics as metrics_lib
from matl_keras.evaluation import operating_point
from matl_keras.evaluation.evaluator import EvalContext
from matl_keras.evaluation.evaluator import Evaluator

# The values that get an interval (the loss is a training diagnostic).
CI_METRICS = ("accuracy", "f1", "auc", "sensitivity", "specificity")


def _json(value: float) -> float | None:
    return metrics_lib.to_json_value(value)


class ClassificationMetrics(Evaluator):
    """Exact classification metrics of a split's predictions.

    COVID19-CT's test split has about 200 images: a point estimate alone
    misleads by several points, so every score comes with a percentile
    bootstrap interval (`<name>_ci: [low, high]`).

    Args:
        positive_class: str or None. Name of the class whose F1, AUC,
            sensitivity and specificity a binary task reports; None uses the
            dataset's `positive_class` (COVID for the CT datasets).
        bootstrap_samples: int. Resamples for the intervals (0: none).
        confidence: float. Interval coverage (0.95: the 2.5th and 97.5th
            percentiles).
        seed: int. Seed of the resampling (same seed, same intervals).
    """

    def __init__(
        self,
        positive_class: str | None = None,
        bootstrap_samples: int = 1000,
        confidence: float = 0.95,
        seed: int = 0,
    ) -> None:
        if bootstrap_samples < 0:
            raise ConfigError(
                "`bootstrap_samples` must be >= 0. Received: "
                f"bootstrap_samples={bootstrap_samples}"
            )
        if not 0.0 < confidence < 1.0:
            raise ConfigError(
                f"`confidence` must be in (0, 1). Received: confidence={confidence}"
            )
        self.positive_class = positive_class
        self.bootstrap_samples = bootstrap_samples
        self.confidence = confidence
        self.seed = seed

    def _positive(self, context: EvalContext) -> int | None:
        if self.positive_class is None:
            return context.positive_index
        if self.positive_class not in context.class_names:
            raise ConfigError(
                "`positive_class` must be one of "
                f"{list(context.class_names)}. Received: "
                f"positive_class={self.positive_class!r}"
            )
        return context.class_names.index(self.positive_class)

    def run(self, context: EvalContext) -> Iterator[tuple[str, Any]]:
        labels, probs = context.predictions()
        num_classes = probs.shape[1]
        if num_classes != len(context.class_names):
            raise ConfigError(
                f"metrics: the model predicts {num_classes} classes, split "
                f"{context.split!r} has {len(context.class_names)} "
                f"({list(context.class_names)}); to score a source model on "
                "another task use the `leep` evaluator (--evaluators=leep)"
            )
        positive = self._positive(context)
        scores = metrics_lib.classification_metrics(labels, probs, positive)
        yield from scores.items()
        yield "num_examples", int(len(labels))
        if self.bootstrap_samples:
            intervals = metrics_lib.bootstrap_ci(
                labels,
                probs,
                lambda y, p: {
                    k: v
                    for k, v in metrics_lib.classification_metrics(
                        y, p, positive
                    ).items()
                    if k in CI_METRICS
                },
                num_samples=self.bootstrap_samples,
                confidence=self.confidence,
                seed=self.seed,
            )
            for name in CI_METRICS:
                if name in intervals:
                    yield f"{name}_ci", [_json(v) for v in intervals[name]]
            yield "ci", {
                "method": "percentile bootstrap, stratified by class",
                "samples": self.bootstrap_samples,
                "confidence": self.confidence,
                "seed": self.seed,
            }
        matrix = metrics_lib.confusion_matrix(
            labels, np.argmax(probs, axis=1), num_classes
        )
        yield "confusion_matrix", {
            "rows_true_columns_predicted": list(context.class_names),
            "counts": matrix.tolist(),
        }
        if num_classes == 2:
            positive = 1 if positive is None else positive
            yield "positive_class", context.class_names[positive]
            curves = {context.class_names[positive]: positive}
        else:
            curves = {name: c for c, name in enumerate(context.class_names)}
        roc = {}
        for name, c in curves.items():
            fpr, tpr, thresholds = metrics_lib.roc_curve(labels == c, probs[:, c])
            roc[name] = {
                "fpr": [_json(v) for v in fpr],
                "tpr": [_json(v) for v in tpr],
                "thresholds": [_json(v) for v in thresholds],  # first: +inf -> null
            }
        yield "roc", roc
        if context.decision is not None:
            # Argmax scores above; the val-fitted decision's beside them.
            yield "operating_point", operating_point.score_at(
                context.decision, labels, probs, context.split,
                bootstrap_samples=self.bootstrap_samples,
                confidence=self.confidence, seed=self.seed,
            )
