"""Linear-probe evaluation of frozen features (the standard SSL protocol
beside kNN; MoCo, SimCLR and solo-learn all report it).

A multinomial logistic regression on standardized features, L2-penalized,
its penalty chosen by k-fold cross-validation on the *bank* (training)
split only, then fitted on the whole bank and scored on the query split.

Pure numpy (no scikit-learn at run time): the problem is small (hundreds
to thousands of examples, at most a few thousand feature dimensions) and
strongly convex, so accelerated gradient descent with the exact step
1 / L converges to the optimum; the tests check it against scikit-learn's
`LogisticRegression` on the same objective.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# The penalty grid (lambda of `mean cross-entropy + lambda / 2 * |W|^2`
# on standardized features).
PENALTIES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def fit_logistic(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    penalty: float,
    max_steps: int = 3000,
    tolerance: float = 1e-6,
) -> tuple[np.ndarray, np.ndarray]:
    """Minimizes `mean CE(softmax(X W + b), y) + penalty / 2 * |W|^2`.

    Nesterov's accelerated gradient with step `1 / L`, where
    `L = lambda_max(X^T X) / (2 n) + penalty` bounds the Hessian (the
    softmax cross-entropy's Hessian in the logits is at most I / 2). The
    bias is not penalized.

    Args:
        features: (n, D) float.
        labels: (n,) int in `0..num_classes - 1`.
        num_classes: int.
        penalty: float >= 0.
        max_steps: int. Iteration cap.
        tolerance: float. Stop when the gradient's max-norm is below it.

    Returns:
        `(W (D, C), b (C,))`.
    """
    x = np.asarray(features, np.float64)
    y = np.asarray(labels, np.int64)
    if x.ndim != 2 or len(x) != len(y) or len(x) == 0:
        raise ValueError(
            "`features` must be (n, D) with one label each. Received: "
            f"features.shape={x.shape}, labels.shape={y.shape}"
        )
    if penalty < 0:
        raise ValueError(f"`penalty` must be >= 0. Received: penalty={penalty}")
    n, d = x.shape
    onehot = np.eye(num_classes)[y]
    augmented = np.concatenate([x, np.ones((n, 1))], axis=1)
    lipschitz = np.linalg.eigvalsh(augmented.T @ augmented)[-1] / (2 * n)
    step = 1.0 / (lipschitz + penalty)
    mask = np.ones((d + 1, 1))
    mask[-1] = 0.0  # no penalty on the bias row
    theta = np.zeros((d + 1, num_classes))
    previous = theta
    for t in range(1, max_steps + 1):
        look = theta + (t - 1) / (t + 2) * (theta - previous)
        probs = _softmax(augmented @ look)
        gradient = augmented.T @ (probs - onehot) / n + penalty * mask * look
        previous, theta = theta, look - step * gradient
        if np.abs(gradient).max() < tolerance:
            break
    return theta[:-1], theta[-1]


def predict_proba(
    features: np.ndarray, weights: np.ndarray, bias: np.ndarray
) -> np.ndarray:
    return _softmax(np.asarray(features, np.float64) @ weights + bias)


def _folds(labels: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """Stratified fold index of each example (seeded)."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), np.int64)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        fold[members] = np.arange(len(members)) % k
    return [np.flatnonzero(fold == i) for i in range(k)]


@dataclasses.dataclass
class ProbeResult:
    """The probe's query-split probabilities and how it was fitted."""

    probs: np.ndarray
    penalty: float
    cv_accuracy: dict[float, float]


def linear_probe(
    bank: np.ndarray,
    bank_labels: np.ndarray,
    queries: np.ndarray,
    num_classes: int,
    penalties: tuple[float, ...] = PENALTIES,
    folds: int = 5,
    seed: int = 0,
) -> ProbeResult:
    """Fits the probe on `bank` and returns the probabilities of `queries`.

    Features are standardized with the bank's mean and standard deviation;
    the penalty is the one with the best mean `folds`-fold CV accuracy on
    the bank (ties: the larger penalty). The query split is never used to
    choose anything.
    """
    bank = np.asarray(bank, np.float64)
    bank_labels = np.asarray(bank_labels, np.int64)
    mean = bank.mean(axis=0)
    std = bank.std(axis=0) + 1e-8
    x, q = (bank - mean) / std, (np.asarray(queries, np.float64) - mean) / std
    k = max(2, min(folds, int(np.bincount(bank_labels).min())))
    split = _folds(bank_labels, k, seed)
    scores = {}
    for penalty in penalties:
        correct = 0
        for held in split:
            keep = np.setdiff1d(np.arange(len(x)), held)
            w, b = fit_logistic(
                x[keep], bank_labels[keep], num_classes, penalty
            )
            predicted = predict_proba(x[held], w, b).argmax(axis=1)
            correct += int(np.sum(predicted == bank_labels[held]))
        scores[penalty] = correct / len(x)
    best = max(penalties, key=lambda p: (scores[p], p))
    w, b = fit_logistic(x, bank_labels, num_classes, best)
    return ProbeResult(predict_proba(q, w, b), best, scores)
