"""Linear probe: the solver reaches scikit-learn's optimum of the same
objective; the penalty is chosen on the bank alone."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from matl_keras.evaluation import linear_probe


def _blobs(n, d, classes, seed, spread=1.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d)) * 2.0
    labels = rng.integers(0, classes, n)
    return centres[labels] + spread * rng.normal(size=(n, d)), labels


@pytest.mark.parametrize("classes", [2, 3])
def test_fit_matches_sklearn_optimum(classes):
    x, y = _blobs(120, 6, classes, seed=1, spread=2.0)
    penalty = 0.05
    w, b = linear_probe.fit_logistic(x, y, classes, penalty, max_steps=20000)
    # scikit-learn fits one weight vector w for two classes; our softmax's
    # optimum has W = [-w/2, w/2], whose penalty is |w|^2 / 2: C doubles.
    scale = 2.0 if classes == 2 else 1.0
    reference = LogisticRegression(
        C=scale / (penalty * len(x)), tol=1e-10, max_iter=10000
    ).fit(x, y)
    ours = linear_probe.predict_proba(x, w, b)
    np.testing.assert_allclose(ours, reference.predict_proba(x), atol=2e-4)


def test_probe_separates_and_picks_penalty_on_bank():
    x, y = _blobs(200, 10, 2, seed=2)
    q, qy = _blobs(100, 10, 2, seed=2)  # same centres (same seed)
    result = linear_probe.linear_probe(x, y, q, 2)
    assert result.penalty in linear_probe.PENALTIES
    assert set(result.cv_accuracy) == set(linear_probe.PENALTIES)
    assert np.mean(result.probs.argmax(1) == qy) > 0.95


def test_probe_is_at_chance_on_noise():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(200, 20)), rng.integers(0, 2, 200)
    q, qy = rng.normal(size=(400, 20)), rng.integers(0, 2, 400)
    result = linear_probe.linear_probe(x, y, q, 2)
    assert abs(np.mean(result.probs.argmax(1) == qy) - 0.5) < 0.1


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="features"):
        linear_probe.fit_logistic(np.zeros((3, 2)), np.zeros(4, int), 2, 0.1)
