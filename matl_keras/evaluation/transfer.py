"""Transferability at a stage boundary: score every earlier stage's model
(the *sources*) on this stage's labelled data (the *target*) before training.

A supervised stage of a pipeline receives the earlier stages' workdirs. For
each one it loads the model that stage produced (`model.keras`, a classifier
with the source head; or, for a self-supervised stage, its
`backbone.weights.h5` into this stage's backbone architecture) and runs the
transferability evaluators (`leep` by default; `logme` from the
matl-keras-dicom package works on backbones too). The untrained network of
this stage (same architecture and seed, random weights) is scored as well:
the paper's "w/o TL" row of Table 6.

Results go to `transferability.json` in the stage's workdir and to its
`run.json`; the pipeline copies them into `summary.json`, from which the
`transferability` report draws Table 6 and Fig. 3.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf
from absl import logging

from matl_keras import runs
from matl_keras.errors import ConfigError
from matl_keras.evaluation.evaluator import EvalContext
from matl_keras.evaluation.evaluator import Evaluator
from matl_keras.evaluation.evaluator import is_classifier
from matl_keras.evaluation.evaluator import run_evaluators
from matl_keras.models.backbone_weights import load_backbone

UNTRAINED = "untrained"


def load_source(
    stage_dir: str, build_backbone: Callable[[], keras.Model]
) -> tuple[keras.Model, str]:
    """The model a stage produced: `(model, "classifier" | "backbone")`."""
    model_path = os.path.join(stage_dir, runs.MODEL_FILE)
    if os.path.isfile(model_path):
        return keras.saving.load_model(model_path, compile=False), "classifier"
    weights = os.path.join(stage_dir, runs.BACKBONE_FILE)
    if not os.path.isfile(weights):
        raise ConfigError(
            f"source stage {stage_dir!r} has neither {runs.MODEL_FILE} nor "
            f"{runs.BACKBONE_FILE}: is it finished?"
        )
    backbone = build_backbone()
    load_backbone(backbone, weights)
    return backbone, "backbone"


def _fit_input(model: keras.Model, data: tf.data.Dataset) -> tf.data.Dataset:
    """Resizes the batches when the source model was trained at another
    input size than this stage's."""
    size = tuple(model.input.shape[1:3])
    if None in size or tuple(data.element_spec[0].shape[1:3]) == size:
        return data
    return data.map(lambda x, y: (tf.image.resize(x, size), y))


def score(
    model: keras.Model,
    kind: str,
    data: tf.data.Dataset,
    split: str,
    class_names: Sequence[str],
    positive_index: int | None,
    evaluators: Sequence[Evaluator],
) -> dict[str, Any]:
    """Runs the evaluators that apply to `model` on the target split."""
    context = EvalContext(
        model=model,
        data=_fit_input(model, data),
        split=split,
        class_names=tuple(class_names),
        positive_index=positive_index,
    )
    results: dict[str, Any] = {"kind": kind}
    if is_classifier(model):
        results["source_classes"] = int(model.output.shape[-1])
    return results | run_evaluators(context, evaluators)


def score_sources(
    sources: Sequence[dict[str, str]],
    untrained: keras.Model | None,
    build_backbone: Callable[[], keras.Model],
    data: tf.data.Dataset,
    split: str,
    class_names: Sequence[str],
    positive_index: int | None,
    evaluators: Sequence[Evaluator],
) -> dict[str, Any]:
    """Scores the untrained network and every source stage.

    Args:
        sources: `[{"stage": name, "workdir": dir}, ...]`, earlier first.
        untrained: this stage's classifier before any weights are loaded,
            or None.
        build_backbone: builds this stage's backbone (for backbone sources).
        data: the target split, batched `(images, labels)`, evaluation
            preprocessing.

    Returns:
        `{source name: {metric: value, "kind": ...}}`, in chain order.
    """
    results: dict[str, Any] = {}
    if untrained is not None:
        results[UNTRAINED] = score(
            untrained,
            "untrained",
            data,
            split,
            class_names,
            positive_index,
            evaluators,
        )
    for source in sources:
        model, kind = load_source(source["workdir"], build_backbone)
        results[source["stage"]] = dict(
            score(
                model,
                kind,
                data,
                split,
                class_names,
                positive_index,
                evaluators,
            ),
            workdir=source["workdir"],
        )
    for name, values in results.items():
        shown = {k: v for k, v in values.items() if isinstance(v, float)}
        logging.info("transferability of %s on %s: %s", name, split, shown)
    return results
