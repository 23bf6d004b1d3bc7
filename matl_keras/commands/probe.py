"""`matl-keras probe`: how good a trained backbone's frozen features are
for a labelled dataset, without fine-tuning (the standard SSL protocol).

The backbone of a stage (`backbone.weights.h5`, rebuilt from the stage's
`config.gin` and `run.json`) embeds the dataset's `fit_split` and
`score_split` (evaluation preprocessing, global-average pooling); a
weighted kNN (`evaluation.knn`) and a linear probe (`evaluation.
linear_probe`: logistic regression, penalty by cross-validation on the fit
split only) fitted on the fit split score the other. Writes `probe.json`
in the stage folder (or `--output`).
"""

from __future__ import annotations

import ast
import os
import re
from typing import Any

from matl_keras import runs
from matl_keras.errors import ConfigError

PROBE_FILE = "probe.json"
_BACKBONE_PARAMS = (
    "depth",
    "width_multiplier",
    "normalization",
    "attention",
    "attention_reduction",
    "attention_subsample",
)


def find_backbone(path: str, flag: str = "--model") -> tuple[str, str]:
    """`(stage folder, backbone weights)` of a stage folder, its
    `backbone.weights.h5`, or a pipeline folder (its last stage that wrote
    one)."""
    if not os.path.exists(path):
        raise ConfigError(f"{flag}: {path!r} does not exist")
    if os.path.isfile(path):
        return os.path.dirname(os.path.abspath(path)), path
    summary = os.path.join(path, runs.SUMMARY_FILE)
    if os.path.isfile(summary):
        stages = [
            os.path.join(path, entry["workdir"])
            for entry in runs.read_json(summary).get("lineage", [])
        ]
        stages = [
            s
            for s in stages
            if os.path.isfile(os.path.join(s, runs.BACKBONE_FILE))
        ]
        if stages:
            path = stages[-1]
    weights = os.path.join(path, runs.BACKBONE_FILE)
    if not os.path.isfile(weights):
        raise ConfigError(
            f"{flag}: {path!r} has no {runs.BACKBONE_FILE}; point at a "
            "finished stage (e.g. RUN/sstl_m), a pipeline folder or the "
            "weights file"
        )
    return path, weights


def _resolved_bindings(stage_dir: str) -> dict[str, Any]:
    """`{binding: value}` of the stage's `config.gin`, macros substituted,
    values as Python literals where they are ones."""
    path = os.path.join(stage_dir, "config.gin")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        raw = runs.config_bindings(f.read())

    def resolve(text: str, depth: int = 0) -> str:
        def macro(match):
            value = raw.get(match.group(1))
            if value and depth < 10:
                return resolve(value, depth + 1)
            return match.group(0)

        return re.sub(r"%([A-Za-z_][A-Za-z0-9_.]*)", macro, text)

    out = {}
    for key, value in raw.items():
        value = resolve(value)
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def _param(bindings: dict[str, Any], names: tuple[str, ...]) -> Any:
    """The value of the most specific binding of any of `names` (e.g.
    `train.image_size`), whatever its scope."""
    found = [
        (key.count("/"), value)
        for key, value in bindings.items()
        if key.split("/")[-1] in names
    ]
    return max(found, key=lambda f: f[0])[1] if found else None


def backbone_spec(stage_dir: str) -> dict[str, Any]:
    """How to rebuild the stage's backbone: `ResNetBackbone` arguments,
    `image_size` and `crop_fraction` of its evaluation."""
    run_path = os.path.join(stage_dir, runs.RUN_FILE)
    run = runs.read_json(run_path) if os.path.isfile(run_path) else {}
    if run and run.get("status") != "complete":
        raise ConfigError(
            f"--model: the stage in {stage_dir!r} is not complete (status "
            f"{run.get('status')!r}); finish it first"
        )
    bindings = _resolved_bindings(stage_dir)
    kwargs = {
        k: v
        for k, v in (run.get("architecture") or {}).items()
        if k in _BACKBONE_PARAMS
    }
    for name in _BACKBONE_PARAMS:
        value = _param(bindings, (f"resnet_backbone.{name}",))
        if value is not None:
            kwargs[name] = value
    prep = run.get("preprocessing") or {}
    image_size = prep.get("image_size") or _param(
        bindings, ("train.image_size", "pretrain.image_size")
    )
    crop = prep.get("crop_fraction") or _param(
        bindings, ("train.crop_fraction", "pretrain.crop_fraction")
    )
    if "depth" not in kwargs or not isinstance(image_size, int):
        raise ConfigError(
            f"--model: cannot tell the backbone of {stage_dir!r} (no "
            "architecture in run.json or image_size in config.gin); point "
            "at a stage folder matl-keras wrote"
        )
    return {
        "backbone": kwargs,
        "image_size": image_size,
        "crop_fraction": float(crop or 0.875),
    }


def probe(
    model: str,
    dataset: str,
    fit_split: str = "train",
    score_split: str = "val",
    k: int = 20,
    batch_size: int = 32,
    output: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """kNN and linear probe of the backbone at `model` on `dataset`;
    writes and returns the `probe.json` record."""
    from matl_keras import registry as registry_lib
    from matl_keras.data import pipeline
    from matl_keras.models.backbone_weights import load_backbone
    from matl_keras.models.resnet.resnet_backbone import ResNetBackbone
    from matl_keras.training.monitors import KnnMonitor

    if k < 1:
        raise ConfigError(f"--knn_k must be at least 1. Received: {k}")
    stage_dir, weights = find_backbone(model)
    spec = backbone_spec(stage_dir)
    data = registry_lib.default_registry().create("datasets", dataset)
    splits = (("--fit_split", fit_split), ("--score_split", score_split))
    for flag, split in splits:
        if split not in data.splits():
            raise ConfigError(
                f"{flag}: dataset {dataset!r} has splits "
                f"{list(data.splits())}. Received: {split!r}"
            )
    backbone = ResNetBackbone(image_size=spec["image_size"], **spec["backbone"])
    load_backbone(backbone, weights)
    common = dict(
        image_size=spec["image_size"],
        crop_fraction=spec["crop_fraction"],
        batch_size=batch_size,
        training=False,
        seed=seed,
    )
    bank = pipeline.build_split(data, fit_split, **common)
    queries = pipeline.build_split(data, score_split, **common)
    for flag, split, built in (
        ("--fit_split", fit_split, bank),
        ("--score_split", score_split, queries),
    ):
        if not built.class_counts:
            raise ConfigError(
                f"{flag}: split {split!r} of dataset {dataset!r} has no "
                "labels; the probe needs a labelled dataset"
            )
    monitor = KnnMonitor(backbone, bank.data, queries.data, data.num_classes, k)
    result = {
        "backbone": {
            "path": os.path.abspath(weights),
            "sha256": runs.file_sha256(weights),
            **spec,
        },
        "dataset": dataset,
        "dataset_root": getattr(data, "root", None),
        "class_names": list(data.class_names),
        "fitted_on": fit_split,
        "scored_on": score_split,
        "class_counts": {
            fit_split: bank.class_counts,
            score_split: queries.class_counts,
        },
        "knn_accuracy": {"value": monitor.score(), "k": k},
        "linear_probe": monitor.linear_probe(data.positive_index(), seed),
    }
    output = output or os.path.join(stage_dir, PROBE_FILE)
    runs.write_json(output, result)
    print(
        f"probe of {weights} on {dataset} ({fit_split} -> {score_split}): "
        f"kNN accuracy {result['knn_accuracy']['value']:.4f}, linear probe "
        f"{result['linear_probe']}\nwrote {output}",
        flush=True,
    )
    return result
