"""The evaluator contract's shared helpers."""

import numpy as np
import pytest

from matl_keras.errors import ConfigError
from matl_keras.evaluation.evaluator import EvalContext
from matl_keras.evaluation.evaluator import Evaluator
from matl_keras.evaluation.evaluator import resolve_evaluators
from matl_keras.evaluation.evaluator import run_evaluators
from matl_keras.models.resnet.resnet_backbone import ResNetBackbone


class _Const(Evaluator):
    def __init__(self, name, value, needs_classifier=True):
        self.name, self.value, self.needs_classifier = (
            name,
            value,
            needs_classifier,
        )

    def run(self, context):
        yield self.name, self.value


def test_resolve_names_plugins_and_refuses_other_things():
    assert [type(e).__name__ for e in resolve_evaluators(["leep"])] == ["LEEP"]
    with pytest.raises(
        ConfigError, match="`train.transfer_evaluators` must hold"
    ):
        resolve_evaluators([3], "train.transfer_evaluators")


def test_run_converts_skips_and_refuses_duplicates():
    backbone = ResNetBackbone(18, 0.25, 32)
    context = EvalContext(
        model=backbone, data=None, split="val", class_names=("a", "b")
    )
    out = run_evaluators(
        context, [_Const("x", float("nan"), False), _Const("y", 1.0)]
    )
    # NaN becomes JSON null; a classifier-only evaluator does not run on a
    # backbone.
    assert out == {"x": None, "not_applicable": ["_Const"]}
    with pytest.raises(ConfigError, match="both report 'x' for split 'val'"):
        run_evaluators(
            context, [_Const("x", 1.0, False), _Const("x", 2.0, False)]
        )
    assert np.isfinite(run_evaluators(context, [_Const("z", 2.5, False)])["z"])
