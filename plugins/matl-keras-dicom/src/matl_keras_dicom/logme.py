"""`logme` evaluator: LogME of a model's pooled features on a labelled
split. It reads only features (`needs_classifier = False`), so it scores
self-supervised backbones too: at a pipeline's stage boundaries
(`train.transfer_evaluators = ['leep', 'logme']`) it scores the SSTL-M
stage, which LEEP cannot."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from matl_keras.evaluation.evaluator import EvalContext
from matl_keras.evaluation.evaluator import Evaluator
from matl_keras.evaluation.logme import logme


class LogME(Evaluator):
    """Args:
    max_iterations: int. Fixed-point steps at most (reference: 11).
    tolerance: float. Stop when alpha/beta changes by less than this
        fraction (reference: 0.01).
    """

    needs_classifier = False

    def __init__(
        self, max_iterations: int = 11, tolerance: float = 0.01
    ) -> None:
        if max_iterations < 1:
            raise ValueError(
                f"`max_iterations` must be >= 1. Received: {max_iterations}"
            )
        self.max_iterations = max_iterations
        self.tolerance = tolerance

    def run(self, context: EvalContext) -> Iterator[tuple[str, Any]]:
        labels, features = context.features()
        yield (
            "logme",
            logme(
                features,
                labels,
                len(context.class_names),
                self.max_iterations,
                self.tolerance,
            ),
        )
