"""LEEP (Eq. 7) against a direct implementation and hand-computable cases."""

import math

import numpy as np
import pytest

from matl_keras.evaluation.leep import leep


def _direct(theta, labels, classes):
    """Eq. 7 written out with loops, as in Nguyen et al. (2020), Sec. 3."""
    n, sources = theta.shape
    joint = np.zeros((classes, sources))
    for i in range(n):
        for z in range(sources):
            joint[labels[i], z] += theta[i, z] / n
    total = 0.0
    for i in range(n):
        eep = 0.0
        for z in range(sources):
            p_z = joint[:, z].sum()
            if p_z > 0:
                eep += joint[labels[i], z] / p_z * theta[i, z]
        total += math.log(eep)
    return total / n


@pytest.mark.parametrize(
    "n, sources, classes", [(50, 3, 2), (40, 7, 3), (30, 1000, 2)]
)
def test_matches_direct_implementation(n, sources, classes):
    rng = np.random.default_rng(sources)
    logits = rng.normal(scale=3.0, size=(n, sources))
    theta = np.exp(logits - logits.max(1, keepdims=True))
    theta /= theta.sum(1, keepdims=True)
    labels = rng.integers(0, classes, n)
    assert leep(theta, labels, classes) == pytest.approx(
        _direct(theta, labels, classes), rel=1e-10
    )


def test_perfect_source_model_scores_zero():
    labels = np.array([0, 1, 2, 1, 0, 2, 2])
    # Source labels are a relabelling of the target labels.
    theta = np.eye(4)[[3, 0, 1, 0, 3, 1, 1]]
    assert leep(theta, labels, 3) == pytest.approx(0.0, abs=1e-12)


def test_constant_source_model_scores_minus_target_entropy():
    labels = np.array([0] * 6 + [1] * 3 + [2] * 1)
    theta = np.tile([0.2, 0.5, 0.3], (10, 1))
    frequencies = np.bincount(labels) / len(labels)
    entropy = -np.sum(frequencies * np.log(frequencies))
    assert leep(theta, labels, 3) == pytest.approx(-entropy, rel=1e-12)


def test_more_informative_source_scores_higher_and_underflow_is_finite():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    noisy = np.where(rng.uniform(size=200) < 0.6, labels, 1 - labels)
    sharp = np.eye(2)[noisy].astype(np.float32)  # exact zeros
    blurred = 0.5 * sharp + 0.25
    assert np.isfinite(leep(sharp, labels))
    assert leep(sharp, labels) > leep(np.full((200, 2), 0.5), labels)
    assert leep(blurred, labels) > leep(np.full((200, 2), 0.5), labels)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="probability distributions"):
        leep(np.array([[2.0, -1.0]]), np.array([0]))
    with pytest.raises(ValueError, match="one row per label"):
        leep(np.ones((3, 2)) / 2, np.array([0, 1]))
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        leep(np.ones((2, 2)) / 2, np.array([0, 2]), 2)
