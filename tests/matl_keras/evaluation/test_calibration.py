"""Temperature scaling, ECE, Brier, reliability diagram."""

import math

import numpy as np
import pytest

from matl_keras.evaluation import calibration


def _overconfident(seed, n=400, classes=2, sharpen=3.0):
    """Probabilities of a model that is right ~75% of the time but says
    ~95%: softmax of sharpened logits."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    logits = rng.normal(0, 1, (n, classes))
    logits[np.arange(n), labels] += 1.0
    z = sharpen * logits
    probs = np.exp(z - z.max(1, keepdims=True))
    return labels, probs / probs.sum(1, keepdims=True)


@pytest.mark.parametrize("seed,classes", [(0, 2), (1, 2), (2, 3), (3, 5)])
def test_temperature_is_the_brute_force_minimum_of_the_nll(seed, classes):
    labels, probs = _overconfident(seed, classes=classes)
    t = calibration.fit_temperature(labels, probs)
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 20001))
    losses = [calibration.nll(labels, probs, g) for g in grid]
    best = grid[int(np.argmin(losses))]
    assert abs(t - best) / best < 1e-3
    assert calibration.nll(labels, probs, t) <= min(losses) + 1e-9
    assert t > 1.5  # it undoes the sharpening


def test_scaling_lowers_ece_and_brier_of_an_overconfident_model():
    labels, probs = _overconfident(4, n=2000)
    t = calibration.fit_temperature(labels, probs)
    s = calibration.summary(labels, probs, t)
    assert s["ece_after"] < 0.5 * s["ece_before"]
    assert s["brier_after"] < s["brier_before"]
    assert s["nll_after"] < s["nll_before"]
    # Scaling keeps every argmax, hence accuracy.
    np.testing.assert_array_equal(
        calibration.scale(probs, t).argmax(1), probs.argmax(1)
    )


def test_ece_and_brier_by_hand():
    labels = np.array([1, 0, 1, 1])
    probs = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.65, 0.35]])
    # bins of 0.5 width: (0.5, 1] holds all four confidences 0.9, 0.8, 0.7,
    # 0.65,
    # 3 of 4 right.
    assert math.isclose(
        calibration.expected_calibration_error(labels, probs, bins=2),
        abs(0.75 - np.mean([0.9, 0.8, 0.7, 0.65])),
    )
    # 10 bins: (0.6,0.7] {0.7 right, 0.65 wrong}, (0.7,0.8] {0.8},
    # (0.8,0.9] {0.9}.
    expected = (2 * abs(0.5 - 0.675) + abs(1 - 0.8) + abs(1 - 0.9)) / 4
    assert math.isclose(
        calibration.expected_calibration_error(labels, probs, bins=10), expected
    )
    brier = np.mean([2 * 0.1**2, 2 * 0.2**2, 2 * 0.3**2, 2 * 0.65**2])
    assert math.isclose(calibration.brier_score(labels, probs), brier)


def test_separable_split_clips_to_the_bound_and_bad_bounds_fail():
    labels = np.array([0, 1, 0, 1])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]])
    assert calibration.fit_temperature(labels, probs) == 0.05
    with pytest.raises(ValueError, match="bounds"):
        calibration.fit_temperature(labels, probs, bounds=(1.0, 0.5))


def test_reliability_diagram_png(tmp_path):
    labels, probs = _overconfident(5)
    path = calibration.write_reliability_diagram(
        str(tmp_path / "r.png"), labels, probs, 2.0, "val"
    )
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    rows = calibration.reliability_bins(labels, probs)
    assert sum(r["count"] for r in rows) == len(labels)
