import numpy as np

from matl_keras.evaluation.knn import knn_accuracy


def test_knn_separable_clusters_and_chance():
    rng = np.random.default_rng(0)
    centers = np.eye(3) * 10
    bank_labels = np.repeat(np.arange(3), 20)
    bank = centers[bank_labels] + rng.normal(size=(60, 3))
    query_labels = np.repeat(np.arange(3), 5)
    queries = centers[query_labels] + rng.normal(size=(15, 3))
    assert knn_accuracy(bank, bank_labels, queries, query_labels, 3, k=5) == 1.0
    wrong = (query_labels + 1) % 3
    assert knn_accuracy(bank, bank_labels, queries, wrong, 3, k=5) == 0.0


def test_knn_weights_votes_by_similarity():
    bank = np.array([[1.0, 0.0], [0.0, 1.0], [0.1, 1.0]])
    labels = np.array([0, 1, 1])
    # Nearest is class 0 (cos 1.0); two class-1 points are far: with a low
    # temperature the single close neighbour wins.
    query = np.array([[1.0, 0.05]])
    assert (
        knn_accuracy(
            bank, labels, query, np.array([0]), 2, k=3, temperature=0.01
        )
        == 1.0
    )
