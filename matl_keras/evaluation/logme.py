"""LogME (You et al., "LogME: Practical Assessment of Pre-trained Models for
Transfer Learning", ICML 2021) as a pure numpy function.

For features `F` (n, D) and each class c's one-vs-rest target `y_c`, LogME
is the log marginal evidence of Bayesian linear regression
`y = F w + noise`, `w ~ N(0, 1/alpha)`, `noise ~ N(0, 1/beta)`, maximised
over alpha and beta by the paper's fixed-point iteration (Algorithm 1),
divided by n and averaged over classes. Higher is better; unlike LEEP it
needs no source labels, so it also scores self-supervised backbones.

We run the iteration in the basis of the SVD of F (F = U S V^T), where
every quantity is a sum over singular values: O(n D min(n, D)) once, then
O(min(n, D)) per iteration, for n < D as well as n > D. The stopping rule
is the reference implementation's (at most 11 steps; stop when
alpha / beta changes by less than 1%).

The core's, not a plugin's: `tools/compare_pretraining.py` scores each
pretraining with it, and the `logme` evaluator of the example third-party
package (`plugins/matl-keras-dicom`) wraps it for stage boundaries.
"""

from __future__ import annotations

import math

import numpy as np


def _evidence(
    y: np.ndarray,
    u: np.ndarray,
    s2: np.ndarray,
    n: int,
    d: int,
    max_iterations: int,
    tolerance: float,
) -> float:
    z = u.T @ y  # y in the left singular basis (k,)
    outside = float(y @ y - z @ z)  # ||y||^2 outside the span of F
    alpha, beta = 1.0, 1.0
    lam = alpha / beta
    for _ in range(max_iterations):
        gamma = float(np.sum(beta * s2 / (alpha + beta * s2)))
        # m = beta A^-1 F^T y, in the right singular basis.
        m = beta * np.sqrt(s2) * z / (alpha + beta * s2)
        alpha_de = float(m @ m)
        beta_de = outside + float(np.sum((z - np.sqrt(s2) * m) ** 2))
        alpha = gamma / (alpha_de + 1e-5)
        beta = (n - gamma) / (beta_de + 1e-5)
        new_lam = alpha / beta
        if abs(new_lam - lam) / lam < tolerance:
            break
        lam = new_lam
    # log det A = sum_i log(alpha + beta s_i^2) + (D - k) log alpha.
    log_det = float(np.sum(np.log(alpha + beta * s2))) + (
        d - len(s2)
    ) * math.log(alpha)
    evidence = (
        d / 2.0 * math.log(alpha)
        + n / 2.0 * math.log(beta)
        - 0.5 * log_det
        - beta / 2.0 * (beta_de + 1e-5)
        - alpha / 2.0 * (alpha_de + 1e-5)
        - n / 2.0 * math.log(2 * math.pi)
    )
    return evidence / n


def logme(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int | None = None,
    max_iterations: int = 11,
    tolerance: float = 0.01,
) -> float:
    """LogME of `features` (n, D) for integer `labels` (n,).

    Classes absent from `labels` are left out of the average.
    """
    f = np.asarray(features, np.float64)
    y = np.asarray(labels, np.int64)
    if f.ndim != 2 or y.ndim != 1 or len(f) != len(y):
        raise ValueError(
            "`features` must be (n, D) with one row per label. Received: "
            f"features.shape={f.shape}, labels.shape={y.shape}"
        )
    if len(y) < 2:
        raise ValueError(f"LogME needs at least 2 examples. Received: {len(y)}")
    if not np.isfinite(f).all():
        raise ValueError("`features` contain NaN or inf")
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    s2 = s**2
    classes = range(int(y.max()) + 1 if num_classes is None else num_classes)
    scores = [
        _evidence(
            (y == c).astype(np.float64), u, s2, n, d, max_iterations, tolerance
        )
        for c in classes
        if (y == c).any()
    ]
    return float(np.mean(scores))
