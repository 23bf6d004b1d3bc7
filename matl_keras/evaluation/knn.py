"""Weighted k-nearest-neighbour accuracy of frozen features (Wu et al.
2018, the usual online monitor of SSL): cosine similarity to a labelled
bank, the k nearest vote with weights `exp(similarity / temperature)`."""

from __future__ import annotations

import numpy as np


def knn_accuracy(
    bank: np.ndarray,
    bank_labels: np.ndarray,
    queries: np.ndarray,
    query_labels: np.ndarray,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Accuracy of the weighted kNN vote of `queries` over `bank`.

    Args:
        bank: (N, D) features with labels `bank_labels` (N,).
        queries: (M, D) features with labels `query_labels` (M,).
        num_classes: int.
        k: int. Neighbours (capped at N).
        temperature: float. Vote weights `exp(cos / temperature)`.
    """
    if len(bank) == 0 or len(queries) == 0:
        raise ValueError("knn_accuracy needs a non-empty bank and queries")

    def normalize(x):
        x = np.asarray(x, np.float64)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    similarity = normalize(queries) @ normalize(bank).T  # (M, N)
    k = min(k, len(bank))
    nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    weights = np.exp(np.take_along_axis(similarity, nearest, 1) / temperature)
    votes = np.zeros((len(queries), num_classes))
    np.add.at(
        votes,
        (
            np.repeat(np.arange(len(queries)), k),
            np.asarray(bank_labels)[nearest].ravel(),
        ),
        weights.ravel(),
    )
    return float(np.mean(votes.argmax(1) == np.asarray(query_labels)))
