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
    assert got["accuracy"] == pytest.approx(
        sk.accuracy_score(labels, predicted)
    )
    assert got["f1"] == pytest.approx(sk.f1_score(labels, predicted))
    assert got["auc"] == pytest.approx(sk.roc_auc_score(labels, probs[:, 1]))
    assert got["sensitivity"] == pytest.approx(
        sk.recall_score(labels, predicted)
    )
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
    assert got["auc"] == pytest.approx(
        sk.roc_auc_score(labels == 0, probs[:, 0])
    )


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


@pytest.mark.parametrize("seed, ties", [(3, False), (4, True)])
def test_roc_curve_and_confusion_matrix_match_sklearn(seed, ties):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, 120)
    probs = _probs(rng, 120, 3, ties)
    fpr, tpr, thresholds = metrics.roc_curve(labels == 2, probs[:, 2])
    sk_fpr, sk_tpr, sk_thr = sk.roc_curve(
        labels == 2, probs[:, 2], drop_intermediate=False
    )
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    assert thresholds[0] == np.inf
    np.testing.assert_allclose(thresholds[1:], sk_thr[1:])
    predicted = probs.argmax(1)
    np.testing.assert_array_equal(
        metrics.confusion_matrix(labels, predicted, 3),
        sk.confusion_matrix(labels, predicted, labels=[0, 1, 2]),
    )
    np.testing.assert_allclose(
        metrics.average_ranks(probs[:, 0]),
        __import__("scipy.stats").stats.rankdata(probs[:, 0]),
    )


def test_bootstrap_ci_equals_a_direct_numpy_bootstrap_with_sklearn():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 80)
    probs = _probs(rng, 80, 2)
    probs[:, 1] = np.clip(probs[:, 1] + 0.3 * (labels - 0.5), 0.01, 0.99)
    probs[:, 0] = 1 - probs[:, 1]
    got = metrics.bootstrap_ci(
        labels,
        probs,
        lambda y, p: metrics.classification_metrics(y, p, 1),
        num_samples=300,
        confidence=0.9,
        seed=7,
        stratified=False,
    )
    # The same resamples, drawn and scored independently.
    draws = np.random.default_rng(7).integers(0, 80, (300, 80))
    acc, f1, auc = [], [], []
    for idx in draws:
        y, p = labels[idx], probs[idx]
        acc.append(sk.accuracy_score(y, p.argmax(1)))
        f1.append(sk.f1_score(y, p.argmax(1)))
        auc.append(sk.roc_auc_score(y, p[:, 1]))
    for name, values in (("accuracy", acc), ("f1", f1), ("auc", auc)):
        np.testing.assert_allclose(
            got[name], np.quantile(values, [0.05, 0.95]), err_msg=name
        )
    point = metrics.classification_metrics(labels, probs, 1)
    for name in ("accuracy", "f1", "auc"):
        low, high = got[name]
        assert low < point[name] < high
        assert 0.02 < high - low < 0.4  # n=80: several points wide


def test_bootstrap_undefined_values_are_left_out_or_nan():
    labels = np.array([0] * 20)  # no positive: sensitivity, AUC undefined
    labels[:2] = [0, 0]
    probs = np.tile([0.6, 0.4], (20, 1))
    probs[0] = [0.3, 0.7]  # one wrong: accuracy 0.95
    got = metrics.bootstrap_ci(
        labels,
        probs,
        lambda y, p: metrics.classification_metrics(y, p, 1),
        num_samples=200,
        seed=0,
    )
    assert all(math.isnan(v) for v in got["sensitivity"] + got["auc"])
    assert got["accuracy"][0] < 0.95 <= got["accuracy"][1] == 1.0
    with pytest.raises(ValueError, match="confidence"):
        metrics.bootstrap_ci(labels, probs, lambda y, p: {}, confidence=95)


def test_stratified_bootstrap_keeps_the_class_counts_of_every_resample():
    rng = np.random.default_rng(3)
    labels = rng.permutation(np.r_[np.zeros(120, int), np.ones(80, int)])
    plain = metrics.resample_indices(labels, 1000, seed=0, stratified=False)
    share = labels[plain].mean(axis=1)
    assert share.max() - share.min() > 0.1  # what the class mix did before
    idx = metrics.resample_indices(labels, 1000, seed=0)
    assert idx.shape == (1000, 200)
    np.testing.assert_array_equal(labels[idx].sum(axis=1), np.full(1000, 80))
    # Within a class, positions are drawn with replacement from that class.
    positives = np.flatnonzero(labels == 1)
    assert set(idx[:, 120:].ravel()) == set(positives)
    # Same seed, same resamples; a stratified interval of sensitivity is
    # then only the within-class spread.
    np.testing.assert_array_equal(
        idx, metrics.resample_indices(labels, 1000, seed=0)
    )
    probs = np.tile([0.3, 0.7], (200, 1))
    probs[labels == 0] = [0.8, 0.2]
    probs[positives[:20]] = [0.6, 0.4]  # sensitivity 0.75 exactly
    got = metrics.bootstrap_ci(
        labels, probs, lambda y, p: metrics.classification_metrics(y, p, 1)
    )
    assert got["specificity"] == (1.0, 1.0)
    assert got["sensitivity"][0] < 0.75 < got["sensitivity"][1]


def test_f1_without_a_positive_is_nan_not_zero():
    assert math.isnan(metrics.f1_binary([0, 0, 0], [0, 1, 0], positive=1))
    assert math.isnan(metrics.f1_binary([0, 0], [0, 0], positive=1))
    assert metrics.f1_binary([1, 0], [0, 0], positive=1) == 0.0
    scores = metrics.classification_metrics(
        [0, 0], np.array([[0.9, 0.1], [0.2, 0.8]]), 1
    )
    assert math.isnan(scores["f1"]) and scores["accuracy"] == 0.5
    # Macro F1 averages the classes that occur.
    three = metrics.classification_metrics(
        [0, 1, 0],
        np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.2, 0.1, 0.7]]),
    )
    np.testing.assert_allclose(three["f1"], np.mean([2 / 3, 1.0]))
    # In a bootstrap, resamples without a positive leave F1's interval
    # instead of pulling it to 0.
    labels = np.array([1] + [0] * 9)
    probs = np.tile([0.8, 0.2], (10, 1))
    probs[0] = [0.1, 0.9]
    got = metrics.bootstrap_ci(
        labels,
        probs,
        lambda y, p: metrics.classification_metrics(y, p, 1),
        num_samples=200,
        stratified=False,
    )
    assert got["f1"] == (1.0, 1.0)
