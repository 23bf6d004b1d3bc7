"""Classification metrics as pure numpy functions.

Exact (no threshold binning, unlike `keras.metrics.AUC`), cross-checked
against scikit-learn in the tests. Binary tasks report F1 and AUC for the
positive class; tasks with more classes report their macro averages
(one-vs-rest AUC). A metric that is undefined on the given labels (AUC when
only one class occurs) is NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np


def _check(labels: np.ndarray, probs: np.ndarray) -> None:
    if probs.ndim != 2 or len(labels) != len(probs):
        raise ValueError(
            "`probs` must be (n, classes) with one row per label. Received: "
            f"labels.shape={labels.shape}, probs.shape={probs.shape}"
        )


def accuracy(labels: np.ndarray, probs: np.ndarray) -> float:
    """Fraction of argmax predictions equal to the labels."""
    labels, probs = np.asarray(labels), np.asarray(probs)
    _check(labels, probs)
    return float(np.mean(np.argmax(probs, axis=1) == labels))


def f1_binary(
    labels: np.ndarray, predicted: np.ndarray, positive: int
) -> float:
    """F1 of class `positive`; NaN when the class does not occur in
    `labels` (its recall is undefined: a bootstrap resample without a
    positive says nothing about F1, and scoring it 0 would drag the
    interval down)."""
    truth = np.asarray(labels) == positive
    guess = np.asarray(predicted) == positive
    if not truth.any():
        return math.nan
    tp = float(np.sum(truth & guess))
    return 2.0 * tp / float(np.sum(truth) + np.sum(guess))


def roc_auc_binary(is_positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic.

    Ties get average ranks, so this equals the trapezoidal ROC area
    (`sklearn.metrics.roc_auc_score`). NaN when only one class occurs.
    """
    is_positive = np.asarray(is_positive, bool)
    scores = np.asarray(scores, np.float64)
    n_pos = int(is_positive.sum())
    n_neg = len(is_positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    u = average_ranks(scores)[is_positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def average_ranks(scores: np.ndarray) -> np.ndarray:
    """1-based ranks of `scores`, ties sharing their average rank
    (`scipy.stats.rankdata(method="average")`, vectorized)."""
    ordered = np.sort(scores)
    low = np.searchsorted(ordered, scores, side="left")
    high = np.searchsorted(ordered, scores, side="right")
    return (low + high + 1) / 2.0


def confusion_matrix(
    labels: np.ndarray, predicted: np.ndarray, num_classes: int
) -> np.ndarray:
    """`(classes, classes)` counts: row = true class, column = predicted."""
    labels = np.asarray(labels, np.int64)
    predicted = np.asarray(predicted, np.int64)
    counts = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(counts, (labels, predicted), 1)
    return counts


def roc_curve(
    is_positive: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points `(fpr, tpr, thresholds)`, one per distinct score in
    decreasing order, after a first point `(0, 0)` at threshold +inf
    (`sklearn.metrics.roc_curve(..., drop_intermediate=False)`). A point
    means "positive when score >= threshold"."""
    is_positive = np.asarray(is_positive, bool)
    scores = np.asarray(scores, np.float64)
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, truth = scores[order], is_positive[order]
    # The last index of each run of equal scores.
    ends = np.r_[np.nonzero(np.diff(sorted_scores))[0], len(scores) - 1]
    tp = np.cumsum(truth)[ends]
    fp = (ends + 1) - tp
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    tpr = np.r_[0.0, tp / n_pos] if n_pos else np.full(len(ends) + 1, math.nan)
    fpr = np.r_[0.0, fp / n_neg] if n_neg else np.full(len(ends) + 1, math.nan)
    return fpr, tpr, np.r_[np.inf, sorted_scores[ends]]


def bootstrap_ci(
    labels: np.ndarray,
    probs: np.ndarray,
    statistic: Callable[[np.ndarray, np.ndarray], dict[str, float]],
    num_samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    stratified: bool = True,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of every value `statistic` returns.

    Draws `num_samples` resamples of the examples with replacement
    (`resample_indices`; stratified by default: each resample keeps every
    class's count, so sensitivity and specificity are not also measuring
    the spread of the class mix: unstratified, a 200-image split's
    positive share ranges about 0.37-0.59 over 1000 resamples), evaluates
    `statistic(labels[idx], probs[idx])` on each, and returns the
    `(1 - confidence) / 2` and `(1 + confidence) / 2` quantiles (numpy's
    default linear interpolation). Resamples where a value is undefined
    (NaN, e.g. AUC of a resample with one class) are left out of that
    value's interval; with fewer than half of them defined it is NaN.
    """
    if num_samples < 1:
        raise ValueError(f"`num_samples` must be >= 1. Received: {num_samples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(
            f"`confidence` must be in (0, 1). Received: confidence={confidence}"
        )
    labels, probs = np.asarray(labels), np.asarray(probs)
    _check(labels, probs)
    indices = resample_indices(labels, num_samples, seed, stratified)
    draws: dict[str, list[float]] = {}
    for idx in indices:
        for name, value in statistic(labels[idx], probs[idx]).items():
            draws.setdefault(name, []).append(value)
    quantiles = [(1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0]
    intervals = {}
    for name, values in draws.items():
        values = np.asarray(values, np.float64)
        values = values[np.isfinite(values)]
        if len(values) < num_samples / 2:
            intervals[name] = (math.nan, math.nan)
        else:
            low, high = np.quantile(values, quantiles)
            intervals[name] = (float(low), float(high))
    return intervals


def resample_indices(
    labels: np.ndarray, num_samples: int, seed: int, stratified: bool = True
) -> np.ndarray:
    """`(num_samples, n)` bootstrap indices into `labels`.

    Unstratified: `default_rng(seed).integers(0, n, (num_samples, n))`.
    Stratified: for each class in increasing label order, its examples'
    positions resampled with replacement (`rng.integers(0, n_c,
    (num_samples, n_c))` from the same generator), so every resample has
    exactly the class counts of `labels`; columns are grouped by class.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    if not stratified:
        return rng.integers(0, len(labels), (num_samples, len(labels)))
    parts = []
    for value in np.unique(labels):
        members = np.flatnonzero(labels == value)
        parts.append(
            members[rng.integers(0, len(members), (num_samples, len(members)))]
        )
    if not parts:
        return np.zeros((num_samples, 0), np.int64)
    return np.concatenate(parts, axis=1)


def classification_metrics(
    labels: np.ndarray,
    probs: np.ndarray,
    positive_index: int | None = None,
) -> dict[str, float]:
    """Accuracy, F1, AUC and the mean cross-entropy of class probabilities.

    Args:
        labels: int array `(n,)`.
        probs: float array `(n, classes)`, rows summing to 1.
        positive_index: int or None. For a binary task, the class whose F1,
            AUC, sensitivity and specificity are reported (default: 1).

    Returns:
        dict with `accuracy`, `f1`, `auc`, `loss`; binary tasks also get
        `sensitivity` and `specificity`.
    """
    labels = np.asarray(labels, np.int64)
    probs = np.asarray(probs, np.float64)
    _check(labels, probs)
    num_classes = probs.shape[1]
    predicted = np.argmax(probs, axis=1)
    eps = 1e-7
    picked = probs[np.arange(len(labels)), labels]
    results = {
        "accuracy": accuracy(labels, probs),
        "loss": float(-np.mean(np.log(np.clip(picked, eps, 1.0)))),
    }
    if num_classes == 2:
        positive = 1 if positive_index is None else positive_index
        truth = labels == positive
        guess = predicted == positive
        results["f1"] = f1_binary(labels, predicted, positive)
        results["auc"] = roc_auc_binary(truth, probs[:, positive])
        results["sensitivity"] = (
            float(np.sum(truth & guess) / np.sum(truth))
            if truth.any()
            else math.nan
        )
        results["specificity"] = (
            float(np.sum(~truth & ~guess) / np.sum(~truth))
            if (~truth).any()
            else math.nan
        )
    else:
        # Macro averages over the classes where the value is defined.
        f1s = [f1_binary(labels, predicted, c) for c in range(num_classes)]
        f1s = [f for f in f1s if not math.isnan(f)]
        aucs = [
            roc_auc_binary(labels == c, probs[:, c]) for c in range(num_classes)
        ]
        defined = [a for a in aucs if not math.isnan(a)]
        results["f1"] = float(np.mean(f1s)) if f1s else math.nan
        results["auc"] = float(np.mean(defined)) if defined else math.nan
    return results


def to_json_value(value: float) -> float | None:
    """NaN/inf become None (JSON null); other floats are kept."""
    return None if value is None or not math.isfinite(value) else float(value)


def format_table(results: dict) -> str:
    """The scalar results (with their interval when there is one) as a
    text table; matrices, curves and notes stay in the JSON files."""
    lines = [f"  {'metric':<14} {'value':>8}   95% interval"]
    for name, value in results.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        interval = results.get(f"{name}_ci")
        shown = (
            f"[{interval[0]:.3f}, {interval[1]:.3f}]"
            if interval and None not in interval
            else ""
        )
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"  {name:<14} {text:>8}   {shown}")
    at = results.get("operating_point")
    if isinstance(at, dict) and at.get("threshold") is not None:
        lines.append(f"  at the operating point: {at.get('description')}")
        lines += format_table(
            {
                k: v
                for k, v in at.items()
                if k not in ("threshold", "temperature")
            }
        ).splitlines()[1:]
    if isinstance(at, dict) and at.get("calibration"):
        c = at["calibration"]
        lines.append(
            f"  calibration (T={at['temperature']:.3f}): ECE "
            f"{c['ece_before']:.4f} -> {c['ece_after']:.4f}, Brier "
            f"{c['brier_before']:.4f} -> {c['brier_after']:.4f}"
        )
    return "\n".join(lines)
