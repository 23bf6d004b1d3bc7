"""Classification metrics as pure numpy functions.

Exact (no threshold binning, unlike `keras.metrics.AUC`), cross-checked
against scikit-learn in the tests. Binary tasks report F1 and AUC for the
positive class; tasks with more classes report their macro averages
(one-vs-rest AUC). A metric that is undefined on the given labels (AUC when
only one class occurs) is NaN.
"""

from __future__ import annotations

import math

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


def f1_binary(labels: np.ndarray, predicted: np.ndarray, positive: int) -> float:
    """F1 of class `positive` (0.0 when it is never predicted nor present)."""
    truth = np.asarray(labels) == positive
    guess = np.asarray(predicted) == positive
    tp = float(np.sum(truth & guess))
    denominator = float(np.sum(truth) + np.sum(guess))
    return 2.0 * tp / denominator if denominator else 0.0


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
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), np.float64)
    sorted_scores = scores[order]
    # Average rank for each run of equal scores.
    start = 0
    for end in range(1, len(scores) + 1):
        if end == len(scores) or sorted_scores[end] != sorted_scores[start]:
            ranks[order[start:end]] = (start + end + 1) / 2.0
            start = end
    u = ranks[is_positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


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
        f1s = [f1_binary(labels, predicted, c) for c in range(num_classes)]
        aucs = [
            roc_auc_binary(labels == c, probs[:, c]) for c in range(num_classes)
        ]
        defined = [a for a in aucs if not math.isnan(a)]
        results["f1"] = float(np.mean(f1s))
        results["auc"] = float(np.mean(defined)) if defined else math.nan
    return results


def to_json_value(value: float) -> float | None:
    """NaN/inf become None (JSON null); other floats are kept."""
    return None if value is None or not math.isfinite(value) else float(value)
