"""`matl-keras evaluate`: score a trained model on a dataset split."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from matl_keras import registry as registry_lib
from matl_keras import runs
from matl_keras.data import pipeline
from matl_keras.errors import ConfigError
from matl_keras.evaluation import metrics as metrics_lib
from matl_keras.evaluation import trained as trained_lib
from matl_keras.evaluation.evaluator import EvalContext
from matl_keras.evaluation.evaluator import resolve_evaluators
from matl_keras.evaluation.evaluator import run_evaluators


def evaluate(
    model: str,
    dataset: str,
    split: str = "test",
    evaluators: Sequence[str] = ("metrics",),
    output: str | None = None,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Scores the model at `model` on `dataset`'s `split`; writes JSON."""
    trained = runs.find(model)
    keras_model = trained_lib.load(trained)
    registry = registry_lib.default_registry()
    data_plugin = registry.create("datasets", dataset)
    if split not in data_plugin.splits():
        raise ConfigError(
            f"--split: dataset {dataset!r} has splits "
            f"{list(data_plugin.splits())}. "
            f"Received: {split!r}"
        )
    plugins = resolve_evaluators(evaluators, "--evaluators")
    classes = int(keras_model.output.shape[-1])
    if (
        classes == data_plugin.num_classes
        and trained.class_names
        and trained.class_names != list(data_plugin.class_names)
    ):
        raise ConfigError(
            f"--dataset: the model was trained on classes "
            f"{trained.class_names}, "
            f"dataset {dataset!r} has {list(data_plugin.class_names)}: the "
            "labels would not line up"
        )
    prep = trained.preprocessing(int(keras_model.input.shape[1]))
    data = pipeline.build_split(
        data_plugin,
        split,
        image_size=prep["image_size"],
        crop_fraction=prep["crop_fraction"],
        batch_size=batch_size,
        training=False,
    )
    output = output or os.path.join(
        trained.stage_dir, f"evaluate_{dataset}_{split}.json"
    )
    # The stage's val-fitted operating point, if it has one (and the head
    # is this dataset's): the split is also scored at it.
    decision_path = os.path.join(trained.stage_dir, runs.DECISION_FILE)
    decision = (
        runs.read_json(decision_path)
        if os.path.isfile(decision_path) and classes == data_plugin.num_classes
        else None
    )
    context = EvalContext(
        model=keras_model,
        data=data.data,
        split=split,
        class_names=tuple(data_plugin.class_names),
        positive_index=data_plugin.positive_index(),
        workdir=os.path.dirname(os.path.abspath(output)),
        prefix=os.path.splitext(os.path.basename(output))[0],
        decision=decision,
    )
    results = run_evaluators(context, plugins)
    report = {
        "model": os.path.abspath(trained.model_path),
        "dataset": dataset,
        "split": split,
        "num_examples": data.num_examples,
        "class_names": list(data_plugin.class_names),
        "evaluators": list(evaluators),
        "results": results,
    }
    runs.write_json(output, report)
    print(
        f"{dataset} {split} ({data.num_examples} images), "
        f"model {trained.model_path}"
    )
    print(metrics_lib.format_table(results))
    print(f"wrote {output}")
    return report
