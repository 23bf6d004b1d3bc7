"""`metrics` evaluator: accuracy, F1, AUC, sensitivity, specificity and loss
with bootstrap confidence intervals, the confusion matrix and ROC points;
with a workdir, also as figures next to `metrics.json`:
`<split>_roc.png` and `<split>_confusion_matrix.png`; given a decision
fitted on val, the same split scored at its operating point and calibration
before/after temperature scaling (`operating_point`)."""

from __future__ import annotations

import os
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
                "`confidence` must be in (0, 1). "
                f"Received: confidence={confidence}"
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
            yield (
                "ci",
                {
                    "method": "percentile bootstrap, stratified by class",
                    "samples": self.bootstrap_samples,
                    "confidence": self.confidence,
                    "seed": self.seed,
                },
            )
        matrix = metrics_lib.confusion_matrix(
            labels, np.argmax(probs, axis=1), num_classes
        )
        yield (
            "confusion_matrix",
            {
                "rows_true_columns_predicted": list(context.class_names),
                "counts": matrix.tolist(),
            },
        )
        if num_classes == 2:
            positive = 1 if positive is None else positive
            yield "positive_class", context.class_names[positive]
            curves = {context.class_names[positive]: positive}
        else:
            curves = {name: c for c, name in enumerate(context.class_names)}
        roc = {}
        for name, c in curves.items():
            fpr, tpr, thresholds = metrics_lib.roc_curve(
                labels == c, probs[:, c]
            )
            roc[name] = {
                "fpr": [_json(v) for v in fpr],
                "tpr": [_json(v) for v in tpr],
                "thresholds": [
                    _json(v) for v in thresholds
                ],  # first: +inf -> null
            }
        yield "roc", roc
        if context.decision is not None:
            # Argmax scores above; the val-fitted decision's beside them.
            yield (
                "operating_point",
                operating_point.score_at(
                    context.decision,
                    labels,
                    probs,
                    context.split,
                    bootstrap_samples=self.bootstrap_samples,
                    confidence=self.confidence,
                    seed=self.seed,
                ),
            )
        if context.workdir:
            prefix = os.path.join(
                context.workdir, context.prefix or context.split
            )
            _plot_roc(
                roc, scores, num_classes, f"{prefix}_roc.png", context.split
            )
            _plot_confusion(
                matrix,
                context.class_names,
                f"{prefix}_confusion_matrix.png",
                context.split,
            )


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def _plot_roc(roc, scores, num_classes, path: str, split: str) -> None:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(4.2, 4.2))
    axis.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1)
    for name, curve in roc.items():
        label = name
        if num_classes == 2 and scores.get("auc") is not None:
            label = f"{name} (AUC {scores['auc']:.3f})"
        axis.plot(curve["fpr"], curve["tpr"], linewidth=1.5, label=label)
    axis.set_xlabel("false positive rate (1 - specificity)")
    axis.set_ylabel("true positive rate (sensitivity)")
    axis.set_title(f"ROC, {split}")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.01)
    axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _plot_confusion(matrix, class_names, path: str, split: str) -> None:
    plt = _pyplot()
    n = len(class_names)
    side = 2.4 + 0.6 * n
    figure, axis = plt.subplots(figsize=(side, side))
    axis.imshow(matrix, cmap="Blues")
    high = matrix.max() if matrix.size else 0
    for i in range(n):
        for j in range(n):
            axis.text(
                j,
                i,
                str(int(matrix[i, j])),
                ha="center",
                va="center",
                color="white" if matrix[i, j] > high / 2 else "black",
            )
    axis.set_xticks(range(n), class_names, rotation=30, ha="right", fontsize=8)
    axis.set_yticks(range(n), class_names, fontsize=8)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(f"confusion matrix, {split}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
