"""Calibration as pure numpy functions: temperature scaling (Guo et al.
2017, https://arxiv.org/abs/1706.04599), expected calibration error, the
Brier score, and a reliability diagram.

The classifier ends in a softmax, so its logits are recovered as
`log(probs)` up to a per-row constant, which the softmax ignores:
`softmax(log(p) / T)` is the temperature-scaled prediction.
"""

from __future__ import annotations

import math

import numpy as np

# Probabilities are clipped here before the log (float32 softmax outputs
# reach exactly 0 and 1).
EPS = 1e-12


def _logits(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(probs, np.float64), EPS, 1.0))


def scale(probs: np.ndarray, temperature: float) -> np.ndarray:
    """`softmax(log(probs) / temperature)`, row by row."""
    z = _logits(probs) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(
    labels: np.ndarray, probs: np.ndarray, temperature: float = 1.0
) -> float:
    """Mean negative log-likelihood of the labels under `scale(probs, T)`."""
    labels = np.asarray(labels, np.int64)
    z = _logits(probs) / temperature
    m = z.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(z - m).sum(axis=1))
    return float(np.mean(lse - z[np.arange(len(labels)), labels]))


def fit_temperature(
    labels: np.ndarray,
    probs: np.ndarray,
    bounds: tuple[float, float] = (0.05, 20.0),
    iterations: int = 100,
) -> float:
    """The temperature `T` minimizing `nll(labels, probs, T)` in `bounds`.

    The NLL is convex in `b = 1 / T` (a log-sum-exp of functions linear in
    `b` minus a linear term), so its derivative in `b`,
    `mean(E_softmax(b z)[z] - z_label)`, increases with `b`: bisection on
    its sign finds the minimum to `(1/low - 1/high) / 2**iterations`. A
    minimum outside `bounds` (e.g. a val split the model separates
    perfectly, where the NLL keeps falling as `T -> 0`) is clipped to the
    nearest bound.
    """
    labels = np.asarray(labels, np.int64)
    low, high = bounds
    if not 0.0 < low < high:
        raise ValueError(f"`bounds` must be 0 < low < high. Received: {bounds}")
    if len(labels) == 0:
        raise ValueError("fit_temperature: no examples")
    z = _logits(probs)
    picked = z[np.arange(len(labels)), labels]

    def slope(b: float) -> float:
        w = b * z
        w -= w.max(axis=1, keepdims=True)
        p = np.exp(w)
        p /= p.sum(axis=1, keepdims=True)
        return float(np.mean((p * z).sum(axis=1) - picked))

    b_low, b_high = 1.0 / high, 1.0 / low
    if slope(b_low) >= 0.0:
        return high
    if slope(b_high) <= 0.0:
        return low
    for _ in range(iterations):
        mid = 0.5 * (b_low + b_high)
        if slope(mid) < 0.0:
            b_low = mid
        else:
            b_high = mid
    return float(1.0 / (0.5 * (b_low + b_high)))


def expected_calibration_error(
    labels: np.ndarray, probs: np.ndarray, bins: int = 15
) -> float:
    """Top-label ECE (Guo et al.): over `bins` equal-width confidence bins
    `(k/bins, (k+1)/bins]`, the example-weighted mean of
    `|accuracy - mean confidence|` of each bin's argmax predictions."""
    labels = np.asarray(labels, np.int64)
    probs = np.asarray(probs, np.float64)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    which = np.clip(
        np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1
    )
    total = 0.0
    for k in range(bins):
        members = which == k
        if members.any():
            total += members.sum() * abs(
                correct[members].mean() - confidence[members].mean()
            )
    return float(total / len(labels)) if len(labels) else math.nan


def reliability_bins(
    labels: np.ndarray, probs: np.ndarray, bins: int = 15
) -> list[dict[str, float]]:
    """Per non-empty bin: `low`, `high`, `count`, `confidence`, `accuracy`
    (the points of a reliability diagram, same bins as the ECE)."""
    labels = np.asarray(labels, np.int64)
    probs = np.asarray(probs, np.float64)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    which = np.clip(
        np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1
    )
    rows = []
    for k in range(bins):
        members = which == k
        if members.any():
            rows.append(
                {
                    "low": k / bins,
                    "high": (k + 1) / bins,
                    "count": int(members.sum()),
                    "confidence": float(confidence[members].mean()),
                    "accuracy": float(correct[members].mean()),
                }
            )
    return rows


def brier_score(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean over examples of `sum_c (p_c - [label == c])**2` (the
    multi-class Brier score; for two classes twice the positive-class
    one)."""
    labels = np.asarray(labels, np.int64)
    probs = np.asarray(probs, np.float64)
    onehot = np.eye(probs.shape[1])[labels]
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def summary(
    labels: np.ndarray, probs: np.ndarray, temperature: float, bins: int = 15
) -> dict[str, float]:
    """ECE, Brier and NLL before (T = 1) and after temperature scaling."""
    after = scale(probs, temperature)
    return {
        "ece_before": expected_calibration_error(labels, probs, bins),
        "ece_after": expected_calibration_error(labels, after, bins),
        "brier_before": brier_score(labels, probs),
        "brier_after": brier_score(labels, after),
        "nll_before": nll(labels, probs),
        "nll_after": nll(labels, probs, temperature),
    }


def write_reliability_diagram(
    path: str,
    labels: np.ndarray,
    probs: np.ndarray,
    temperature: float,
    title: str,
    bins: int = 15,
) -> str:
    """A PNG: accuracy against confidence per bin, before and after
    scaling, with the diagonal of perfect calibration."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="gray", linestyle=":", label="perfect")
    for name, p in (
        ("T = 1", probs),
        (f"T = {temperature:.2f}", scale(probs, temperature)),
    ):
        rows = reliability_bins(labels, p, bins)
        ece = expected_calibration_error(labels, p, bins)
        ax.plot(
            [r["confidence"] for r in rows],
            [r["accuracy"] for r in rows],
            marker="o",
            label=f"{name} (ECE {ece:.3f})",
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top class)")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
