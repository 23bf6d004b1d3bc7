"""Metrics cross-checked against scikit-learn."""

import math

import numpy as np
import pytest
from sklearn import metrics as sk

from matl_keras.evaluation import metrics


def _probs(rng, n, classes, ties=False):
    logits = rng.normal(size=(n, classes))
    if ties:
        logits = np.round(logits)  # many equal scores
    e = np.exp(logits)
    return e / e.sum(1, keepdims=True)


@pytest.mark.parametrize("seed, ties", [(0, False), (1, True), (2, True)])
def test_binary_matches_sklearn(seed, ties):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 97)
    probs = _probs(rng, 97, 2, ties)
    got = metrics.classification_metrics(labels, probs, positive_index=1)
    predicted = probs.argmax(1)
    assert got["accuracy"] == pytest.approx(sk.accuracy_score(labels, predicted))
    assert got["f1"] == pytest.approx(sk.f1_score(labels, predicted))
    assert got["auc"] == pytest.approx(sk.roc_auc_score(labels, probs[:, 1]))
    assert got["sensitivity"] == pytest.approx(sk.recall_score(labels, predicted))
    assert got["specificity"] == pytest.approx(
        sk.recall_score(labels, predicted, pos_label=0)
    )
    assert got["loss"] == pytest.approx(sk.log_loss(labels, probs), rel=1e-6)


def test_positive_class_zero():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 50)
    probs = _probs(rng, 50, 2)
    got = metrics.classification_metrics(labels, probs, positive_index=0)
    assert got["f1"] == pytest.approx(
        sk.f1_score(labels, probs.argmax(1), pos_label=0)
    )
    assert got["auc"] == pytest.approx(sk.roc_auc_score(labels == 0, probs[:, 0]))


def test_multiclass_macro_matches_sklearn():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, 120)
    probs = _probs(rng, 120, 3)
    got = metrics.classification_metrics(labels, probs)
    assert got["f1"] == pytest.approx(
        sk.f1_score(labels, probs.argmax(1), average="macro")
    )
    assert got["auc"] == pytest.approx(
        sk.roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    )


def test_auc_is_nan_with_one_class_and_becomes_null():
    value = metrics.roc_auc_binary(np.ones(4, bool), np.arange(4.0))
    assert math.isnan(value)
    assert metrics.to_json_value(value) is None


def test_perfect_and_inverted_scores():
    truth = np.array([0, 0, 1, 1], bool)
    assert metrics.roc_auc_binary(truth, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert metrics.roc_auc_binary(truth, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="probs"):
        metrics.accuracy(np.zeros(3, int), np.zeros((2, 2)))
