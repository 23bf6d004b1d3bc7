"""LEEP, the Log Expected Empirical Prediction (Nguyen et al. 2020; the
paper's Eq. 7): how well a source model's predicted *source* labels explain
the *target* labels, without training anything on the target.

With `theta(x_i)` the source model's distribution over its source labels
`z` for target image `x_i`:

    P(y, z)  = 1/n sum_i theta(x_i)_z [y_i = y]      empirical joint
    P(y | z) = P(y, z) / sum_y' P(y', z)              empirical conditional
    LEEP     = 1/n sum_i log( sum_z P(y_i | z) theta(x_i)_z )

LEEP is <= 0; higher means more transferable. A source model whose output is
the same for every image gives `-H(Y)`, minus the entropy of the target
labels; one whose prediction identifies the target label gives 0. We use the
natural logarithm, as Nguyen et al. do.
"""

from __future__ import annotations

import numpy as np

# Below any real expected prediction; keeps log() finite if a row of
# theta underflowed to exact zeros in float32.
_TINY = 1e-300


def leep(
    source_probs: np.ndarray,
    target_labels: np.ndarray,
    num_target_classes: int | None = None,
) -> float:
    """Eq. 7.

    Args:
        source_probs: float `(n, source classes)`, each row a probability
            distribution (the source model's softmax on the target images).
        target_labels: int `(n,)`, the target labels in `[0, classes)`.
        num_target_classes: int or None. Number of target classes (default:
            `max(label) + 1`); absent classes change nothing.

    Returns:
        The LEEP score (float, <= 0).
    """
    theta = np.asarray(source_probs, np.float64)
    labels = np.asarray(target_labels, np.int64)
    if theta.ndim != 2 or labels.ndim != 1 or len(theta) != len(labels):
        raise ValueError(
            "`source_probs` must be (n, source classes) with one row per "
            f"label. Received: source_probs.shape={theta.shape}, "
            f"target_labels.shape={labels.shape}"
        )
    if len(labels) == 0:
        raise ValueError("LEEP needs at least one target example; got none")
    if (theta < 0).any() or not np.allclose(theta.sum(axis=1), 1.0, atol=1e-3):
        raise ValueError(
            "`source_probs` rows must be probability distributions (>= 0, "
            "summing to 1): pass the source model's softmax output, not "
            "logits. Row sums range over "
            f"[{theta.sum(axis=1).min():.4g}, {theta.sum(axis=1).max():.4g}]"
        )
    classes = (
        int(labels.max()) + 1
        if num_target_classes is None
        else num_target_classes
    )
    if labels.min() < 0 or labels.max() >= classes:
        raise ValueError(
            f"`target_labels` must be in [0, {classes}). Received labels in "
            f"[{labels.min()}, {labels.max()}]"
        )
    n = len(labels)
    one_hot = np.zeros((n, classes), np.float64)
    one_hot[np.arange(n), labels] = 1.0
    joint = one_hot.T @ theta / n  # (Y, Z)
    marginal = joint.sum(axis=0)  # (Z,)
    conditional = np.divide(
        joint, marginal, out=np.zeros_like(joint), where=marginal > 0
    )  # P(y | z); a z with no mass has theta_z = 0 for every image
    expected = np.einsum("iz,iz->i", theta, conditional[labels])
    return float(np.mean(np.log(np.maximum(expected, _TINY))))
