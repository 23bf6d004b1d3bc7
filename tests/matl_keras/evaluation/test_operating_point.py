"""Operating points fitted on val: every rule against brute force."""

import math

import numpy as np
import pytest

from matl_keras.errors import ConfigError
from matl_keras.evaluation import calibration
from matl_keras.evaluation import operating_point as op


def _scores(seed, n=150, ties=False):
    rng = np.random.default_rng(seed)
    truth = rng.random(n) < 0.4
    scores = np.clip(rng.normal(0.35 + 0.3 * truth, 0.2), 0, 1)
    if ties:
        scores = np.round(scores, 1)
    return truth, scores


def _brute(truth, scores):
    """(sens, spec) of every distinct decision 'score >= t'."""
    out = []
    for t in np.r_[np.unique(scores), np.inf]:
        guess = scores >= t
        out.append((guess[truth].mean(), (~guess[~truth]).mean()))
    return out


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, False)])
def test_rules_reach_the_brute_force_optimum(seed, ties):
    truth, scores = _scores(seed, ties=ties)
    points = _brute(truth, scores)
    youden = op.choose_threshold(truth, scores, "youden")
    assert math.isclose(youden["youden_j"], max(a + b - 1 for a, b in points))
    for target in (0.8, 0.9, 0.95):
        sens = op.choose_threshold(truth, scores, "sensitivity", target)
        assert sens["sensitivity"] >= target
        assert math.isclose(
            sens["specificity"], max(b for a, b in points if a >= target)
        )
        spec = op.choose_threshold(truth, scores, "specificity", target)
        assert spec["specificity"] >= target
        assert math.isclose(
            spec["sensitivity"], max(a for a, b in points if b >= target)
        )
    for point in (youden, sens, spec):
        # The threshold makes the decisions it reports, and no val image
        # sits exactly on it.
        guess = scores >= point["threshold"]
        assert math.isclose(guess[truth].mean(), point["sensitivity"])
        assert (
            not np.any(scores == point["threshold"])
            or point["threshold"] == scores.min()
        )


def test_argmax_rule_is_half_and_rule_errors():
    truth, scores = _scores(3)
    assert op.choose_threshold(truth, scores, "argmax")["threshold"] == 0.5
    with pytest.raises(
        ConfigError, match="rule must be one of|`fit_decision.rule`"
    ):
        op.choose_threshold(truth, scores, "f1")
    with pytest.raises(ConfigError, match="target"):
        op.choose_threshold(truth, scores, "sensitivity")
    with pytest.raises(ConfigError, match="target"):
        op.choose_threshold(truth, scores, "youden", 0.9)
    with pytest.raises(ValueError, match="both classes"):
        op.choose_threshold(np.ones(4, bool), scores[:4], "youden")


def _model_probs(seed, n):
    """An overconfident binary model that rarely says positive at 0.5."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.5).astype(int)
    z = rng.normal(-1.0 + 1.2 * labels, 1.0) * 3.0
    p1 = 1 / (1 + np.exp(-z))
    return labels, np.stack([1 - p1, p1], 1)


def test_fit_on_val_then_score_test_at_it():
    val_y, val_p = _model_probs(0, 300)
    test_y, test_p = _model_probs(1, 300)
    decision = op.fit_decision(
        val_y, val_p, 1, ["NonCOVID", "COVID"], rule="sensitivity", target=0.9
    )
    assert (
        decision["fitted_on"] == "val" and decision["positive_class"] == "COVID"
    )
    assert decision["val"]["sensitivity"] >= 0.9
    assert math.isclose(
        decision["temperature"], calibration.fit_temperature(val_y, val_p)
    )
    # The threshold is on calibrated probabilities of val, not test.
    scaled = calibration.scale(val_p, decision["temperature"])[:, 1]
    assert math.isclose(
        (scaled[val_y == 1] >= decision["threshold"]).mean(),
        decision["val"]["sensitivity"],
    )
    scored = op.score_at(
        decision, test_y, test_p, "test", bootstrap_samples=200
    )
    at_half = (test_p[:, 1] >= 0.5)[test_y == 1].mean()
    assert scored["sensitivity"] > at_half + 0.1  # the point of it
    _, decided = op.apply(decision, test_p)
    assert math.isclose(
        scored["sensitivity"], (decided[test_y == 1] == 1).mean()
    )
    low, high = scored["sensitivity_ci"]
    assert low <= scored["sensitivity"] <= high
    assert (
        scored["calibration"]["ece_after"] < scored["calibration"]["ece_before"]
    )
    assert "sensitivity >= 0.9 on val (300 images)" in scored["description"]


def test_one_class_val_and_multiclass_get_argmax():
    y = np.zeros(10, int)
    p = np.tile([0.7, 0.3], (10, 1))
    decision = op.fit_decision(y, p, 1, ["a", "b"], calibrate=False)
    assert decision["threshold"] is None and "one class" in decision["note"]
    rng = np.random.default_rng(0)
    p3 = rng.dirichlet(np.ones(3), 50)
    d3 = op.fit_decision(rng.integers(0, 3, 50), p3, None, ["a", "b", "c"])
    assert d3["threshold"] is None and d3["rule"] == "argmax"
    np.testing.assert_array_equal(op.apply(d3, p3)[1], p3.argmax(1))
