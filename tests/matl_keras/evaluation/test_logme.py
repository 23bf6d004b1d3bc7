"""LogME against a direct implementation of the paper's Algorithm 1."""

import math

import numpy as np
import pytest


def _direct(f, y, iterations=11, tolerance=0.01):
    """You et al. (2021), Algorithm 1, with explicit matrices."""
    n, d = f.shape
    evidences = []
    for c in range(int(y.max()) + 1):
        t = (y == c).astype(np.float64)
        eig = np.linalg.eigvalsh(f.T @ f)
        alpha, beta = 1.0, 1.0
        for _ in range(iterations):
            a = alpha * np.eye(d) + beta * f.T @ f
            m = beta * np.linalg.solve(a, f.T @ t)
            gamma = np.sum(beta * eig / (alpha + beta * eig))
            alpha_de = m @ m
            beta_de = np.sum((t - f @ m) ** 2)
            new = (gamma / (alpha_de + 1e-5), (n - gamma) / (beta_de + 1e-5))
            stop = (
                abs(new[0] / new[1] - alpha / beta) / (alpha / beta) < tolerance
            )
            alpha, beta = new
            if stop:
                break
        _, logdet = np.linalg.slogdet(alpha * np.eye(d) + beta * f.T @ f)
        evidence = (
            d / 2 * math.log(alpha)
            + n / 2 * math.log(beta)
            - 0.5 * logdet
            - beta / 2 * (beta_de + 1e-5)
            - alpha / 2 * (alpha_de + 1e-5)
            - n / 2 * math.log(2 * math.pi)
        )
        evidences.append(evidence / n)
    return float(np.mean(evidences))


@pytest.mark.parametrize(
    "n, d, classes", [(200, 16, 2), (40, 64, 3), (120, 32, 5)]
)
def test_matches_the_direct_fixed_point_iteration(n, d, classes):
    from matl_keras.evaluation.logme import logme

    rng = np.random.default_rng(n + d)
    y = rng.integers(0, classes, n)
    f = rng.normal(size=(n, d)) + 0.8 * np.eye(classes, d)[y]
    assert logme(f, y) == pytest.approx(_direct(f, y), rel=1e-6)


def test_separable_features_score_higher():
    from matl_keras.evaluation.logme import logme

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    noise = rng.normal(size=(300, 8))
    informative = noise + 3.0 * y[:, None] * np.eye(8)[0]
    assert logme(informative, y) > logme(noise, y) + 0.1
    with pytest.raises(ValueError, match="one row per label"):
        logme(noise, y[:10])
