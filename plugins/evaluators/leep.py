"""`leep` evaluator: Eq. 7 of the paper (Nguyen et al. 2020).

The context's model is the *source* model (its head predicts the source
labels, e.g. ImageNet's 1,000 or COVIDx's 3 classes) and its split holds the
*target* images and labels. In a pipeline every supervised stage scores each
earlier stage this way before it trains (`transferability.json`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from matl_keras.evaluation import leep as leep_lib
from matl_keras.evaluation.evaluator import EvalContext
from matl_keras.evaluation.evaluator import Evaluator


class LEEP(Evaluator):
    """LEEP of the context's model (source) on its split (target)."""

    def run(self, context: EvalContext) -> Iterator[tuple[str, Any]]:
        labels, probs = context.predictions()
        yield "leep", leep_lib.leep(probs, labels, len(context.class_names))
