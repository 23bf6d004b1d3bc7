"""Operating points and calibration chosen on the validation split.

Argmax (a 0.5 threshold for two classes) is rarely the decision a clinic
wants: a kept best-AUC epoch can have sensitivity 0.07 at 0.5. A decision
is fitted once, on the validation split (never the test split), as
`fit_decision`:

1. a temperature `T` (temperature scaling, `calibration.fit_temperature`),
2. for a binary task, a threshold on the calibrated positive-class
   probability, "positive when p >= threshold", by one rule:
   - `youden`: maximize Youden's J = sensitivity + specificity - 1;
   - `sensitivity`: sensitivity >= `target`, the highest such specificity;
   - `specificity`: specificity >= `target`, the highest such sensitivity;
   - `argmax`: threshold 0.5 (what the model does without a decision).

The supervised stage writes it to `decision.json`; the `metrics`
evaluator scores other splits at it (beside the argmax scores), and the
export serves it. Configure it with gin, e.g.
`finetune/fit_decision.rule = 'sensitivity'`,
`finetune/fit_decision.target = 0.95`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

import gin
from matl_keras import runs
from matl_keras.errors import ConfigError
from matl_keras.evaluation import calibration
from matl_keras.evaluation import metrics as metrics_lib

RULES = ("youden", "sensitivity", "specificity", "argmax")
DECISION_FILE = runs.DECISION_FILE


def choose_threshold(
    is_positive: np.ndarray,
    scores: np.ndarray,
    rule: str,
    target: float | None = None,
) -> dict[str, float]:
    """The threshold a rule picks among the ROC points of `scores`.

    Each ROC point is "positive when score >= s" for a distinct score `s`.
    The threshold returned lies midway between the chosen `s` and the next
    lower distinct score, so it makes the same decisions on these scores
    but does not sit on a validation image's exact score (the lowest point
    keeps `s`; the no-positive point lies midway between the highest score
    and 1, or just above 1). Ties in the rule's objective go to the highest
    threshold.

    Returns:
        dict with `threshold` and the `sensitivity`, `specificity` and
        `youden_j` it gives on these scores.
    """
    is_positive = np.asarray(is_positive, bool)
    scores = np.asarray(scores, np.float64)
    _check_rule(rule, target)
    if not is_positive.any() or is_positive.all():
        raise ValueError(
            "an operating point needs both classes in the split. Received: "
            f"{int(is_positive.sum())} positive of {len(is_positive)}"
        )
    if rule == "argmax":
        threshold = 0.5
    else:
        fpr, tpr, points = metrics_lib.roc_curve(is_positive, scores)
        if rule == "youden":
            k = int(np.argmax(tpr - fpr))  # first maximum: highest threshold
        elif rule == "sensitivity":
            k = int(np.flatnonzero(tpr >= target - 1e-12)[0])
        else:  # specificity: the last point with few enough false positives
            k = int(np.flatnonzero(1.0 - fpr >= target - 1e-12)[-1])
        if k == 0:
            top = points[1]
            threshold = (
                top + (1.0 - top) / 2.0
                if top < 1.0
                else math.nextafter(1.0, 2.0)
            )
        elif k == len(points) - 1:
            threshold = float(points[k])
        else:
            threshold = float((points[k] + points[k + 1]) / 2.0)
    guess = scores >= threshold
    sensitivity = float(np.mean(guess[is_positive]))
    specificity = float(np.mean(~guess[~is_positive]))
    return {
        "threshold": float(threshold),
        "sensitivity": sensitivity,
        "specificity": specificity,
        "youden_j": sensitivity + specificity - 1.0,
    }


def _check_rule(rule: str, target: float | None) -> None:
    if rule not in RULES:
        raise ConfigError(
            f"`fit_decision.rule` must be one of {RULES}. "
            f"Received: rule={rule!r}"
        )
    if rule in ("sensitivity", "specificity"):
        if target is None or not 0.0 < target <= 1.0:
            raise ConfigError(
                f"`fit_decision.target` must be in (0, 1] for rule={rule!r} "
                f"(the {rule} to reach). Received: target={target!r}"
            )
    elif target is not None:
        raise ConfigError(
            f"`fit_decision.target` applies to rules 'sensitivity' and "
            f"'specificity', not rule={rule!r}. Received: target={target!r}"
        )


@gin.configurable
def fit_decision(
    labels: np.ndarray,
    probs: np.ndarray,
    positive_index: int | None,
    class_names: Sequence[str],
    split: str = "val",
    rule: str = "youden",
    target: float | None = None,
    calibrate: bool = True,
    bins: int = 15,
) -> dict[str, Any]:
    """Fits the temperature and the operating point on one split.

    Args:
        labels: int array `(n,)` of the validation split.
        probs: float array `(n, classes)`, the model's probabilities there.
        positive_index: int or None. The positive class (default 1).
        class_names: sequence of str. Class names in label order.
        split: str. Name of the split fitted on (recorded).
        rule: str. One of `RULES` (binary tasks; more classes: argmax).
        target: float or None. The sensitivity or specificity to reach.
        calibrate: bool. Fit a temperature (False: T = 1).
        bins: int. Confidence bins of the ECE.

    Returns:
        The JSON-ready decision (see `apply`).
    """
    labels = np.asarray(labels, np.int64)
    probs = np.asarray(probs, np.float64)
    _check_rule(rule, target)
    temperature = (
        calibration.fit_temperature(labels, probs) if calibrate else 1.0
    )
    decision: dict[str, Any] = {
        "fitted_on": split,
        "num_examples": int(len(labels)),
        "temperature": temperature,
        "calibration": {
            "method": "temperature scaling" if calibrate else "none",
            "bins": bins,
            split: calibration.summary(labels, probs, temperature, bins),
        },
        "class_names": list(class_names),
    }
    positive = 1 if positive_index is None else positive_index
    if probs.shape[1] == 2 and len(np.unique(labels)) < 2:
        decision |= {
            "rule": "argmax",
            "target": None,
            "threshold": None,
            "note": f"{split} has one class only: no operating point",
        }
    elif probs.shape[1] == 2:
        point = choose_threshold(
            labels == positive,
            calibration.scale(probs, temperature)[:, positive],
            rule,
            target,
        )
        decision |= {
            "rule": rule,
            "target": target,
            "positive_class": class_names[positive],
            "positive_index": positive,
            "threshold": point.pop("threshold"),
            split: point,
        }
    else:
        decision |= {"rule": "argmax", "target": None, "threshold": None}
    return to_json(decision)


def to_json(value: Any) -> Any:
    """Nested dicts/lists with NaN and inf floats as None (JSON null)."""
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, float):
        return metrics_lib.to_json_value(value)
    return value


def describe(decision: dict[str, Any]) -> str:
    """One line: how the decision was chosen."""
    if decision.get("threshold") is None:
        how = "argmax"
    elif decision["rule"] == "youden":
        how = "Youden's J"
    elif decision["rule"] == "argmax":
        how = "argmax (0.5)"
    else:
        how = f"{decision['rule']} >= {decision['target']}"
    threshold = decision.get("threshold")
    shown = (
        ""
        if threshold is None
        else (f", {decision['positive_class']} when p >= {threshold:.4f}")
    )
    return (
        f"{how} on {decision['fitted_on']} ({decision['num_examples']} "
        f"images), temperature {decision['temperature']:.3f}{shown}"
    )


def apply(
    decision: dict[str, Any], probs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """`(calibrated probabilities, decided labels)` of `probs`."""
    scaled = calibration.scale(probs, decision["temperature"])
    if decision.get("threshold") is None:
        return scaled, scaled.argmax(axis=1)
    positive = decision["positive_index"]
    chosen = scaled[:, positive] >= decision["threshold"]
    return scaled, np.where(chosen, positive, 1 - positive)


def threshold_metrics(
    labels: np.ndarray, predicted: np.ndarray, positive: int
) -> dict[str, float]:
    """Accuracy, F1, sensitivity, specificity of given decisions (binary);
    NaN where the labels lack the class a value is conditioned on."""
    labels = np.asarray(labels)
    predicted = np.asarray(predicted)
    truth, guess = labels == positive, predicted == positive
    return {
        "accuracy": float(np.mean(truth == guess)),
        "f1": metrics_lib.f1_binary(labels, predicted, positive),
        "sensitivity": float(np.mean(guess[truth]))
        if truth.any()
        else math.nan,
        "specificity": float(np.mean(~guess[~truth]))
        if (~truth).any()
        else math.nan,
    }


def score_at(
    decision: dict[str, Any],
    labels: np.ndarray,
    probs: np.ndarray,
    split: str,
    bootstrap_samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """A split's scores at the decision: calibration before/after and, for
    a binary task, accuracy / F1 / sensitivity / specificity at the
    threshold, with stratified bootstrap intervals (`<name>_ci`)."""
    labels = np.asarray(labels, np.int64)
    temperature = decision["temperature"]
    result: dict[str, Any] = {
        "fitted_on": decision["fitted_on"],
        "rule": decision.get("rule"),
        "target": decision.get("target"),
        "threshold": decision.get("threshold"),
        "description": describe(decision),
        "temperature": temperature,
        "calibration": calibration.summary(
            labels, probs, temperature, decision["calibration"]["bins"]
        ),
    }
    if decision.get("threshold") is None:
        return result
    positive = decision["positive_index"]
    scaled, predicted = apply(decision, probs)
    result.update(threshold_metrics(labels, predicted, positive))
    if bootstrap_samples:
        intervals = metrics_lib.bootstrap_ci(
            labels,
            scaled,
            lambda y, p: threshold_metrics(
                y,
                np.where(
                    p[:, positive] >= decision["threshold"],
                    positive,
                    1 - positive,
                ),
                positive,
            ),
            num_samples=bootstrap_samples,
            confidence=confidence,
            seed=seed,
        )
        for name, interval in intervals.items():
            result[f"{name}_ci"] = list(interval)
    return to_json(result)


def fit_and_write(context: Any, out_dir: str | None) -> dict[str, Any]:
    """Fits the decision on `context`'s split (the validation split: the
    supervised stage calls this with it, never with the test split),
    writes `decision.json` and `reliability_<split>.png` into `out_dir`
    and returns the decision. `context` is an `EvalContext`; its cached
    predictions are reused by the evaluators that run after."""
    import json
    import os

    labels, probs = context.predictions()
    decision = fit_decision(
        labels,
        probs,
        context.positive_index,
        context.class_names,
        split=context.split,
    )
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, DECISION_FILE), "w") as f:
            json.dump(decision, f, indent=2, allow_nan=False)
        calibration.write_reliability_diagram(
            os.path.join(out_dir, f"reliability_{context.split}.png"),
            labels,
            probs,
            decision["temperature"],
            f"{context.split} ({len(labels)} images): temperature "
            f"{decision['temperature']:.2f}",
            decision["calibration"]["bins"],
        )
    print(f"decision: {describe(decision)}", flush=True)
    return decision
