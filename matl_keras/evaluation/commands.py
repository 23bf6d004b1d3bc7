"""`matl-keras evaluate` and `matl-keras explain`: score a trained model on a
dataset split, and draw Fig. 4 rows for some images. The CLI parses flags
and calls these."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from matl_keras import registry as registry_lib
from matl_keras import runs
from matl_keras.data import decode
from matl_keras.data import pipeline
from matl_keras.errors import ConfigError
from matl_keras.errors import DataError
from matl_keras.evaluation import explain
from matl_keras.evaluation import metrics as metrics_lib
from matl_keras.evaluation import operating_point
from matl_keras.evaluation import trained as trained_lib
from matl_keras.evaluation.evaluator import EvalContext
from matl_keras.evaluation.evaluator import feature_model
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
            f"--split: dataset {dataset!r} has splits {list(data_plugin.splits())}. "
            f"Received: {split!r}"
        )
    plugins = resolve_evaluators(evaluators, "--evaluators")
    classes = int(keras_model.output.shape[-1])
    if (classes == data_plugin.num_classes and trained.class_names
            and trained.class_names != list(data_plugin.class_names)):
        raise ConfigError(
            f"--dataset: the model was trained on classes {trained.class_names}, "
            f"dataset {dataset!r} has {list(data_plugin.class_names)}: the "
            "labels would not line up"
        )
    prep = trained.preprocessing(int(keras_model.input.shape[1]))
    data = pipeline.build_split(
        data_plugin, split, image_size=prep["image_size"],
        crop_fraction=prep["crop_fraction"], batch_size=batch_size,
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
        model=keras_model, data=data.data, split=split,
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
    print(f"{dataset} {split} ({data.num_examples} images), model {trained.model_path}")
    print(metrics_lib.format_table(results))
    print(f"wrote {output}")
    return report


def _mean(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def _image_files(paths: Sequence[str]) -> list[str]:
    files = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(
                os.path.join(path, name) for name in os.listdir(path)
                if name.lower().endswith(decode.IMAGE_EXTENSIONS)
            )
            if not found:
                raise ConfigError(f"--images: no image files in folder {path!r}")
            files += found
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise ConfigError(f"--images: {path!r} does not exist")
    bad = decode.find_bad_images(files)
    if bad:
        raise DataError(
            "--images: cannot read " + "; ".join(str(b) for b in bad)
        )
    return files


def explain_images(
    model: str,
    images: Sequence[str],
    output_dir: str,
    layer: str | None = None,
    class_name: str | None = None,
    batch_size: int = 8,
) -> list[dict[str, Any]]:
    """Writes one Fig. 4 row per image into `output_dir` (and
    `explain.json`): image, Grad-CAM, overlay, attention, overlay."""
    trained = runs.find(model)
    keras_model = trained_lib.load(trained)
    names = trained.class_names or [
        str(i) for i in range(int(keras_model.output.shape[-1]))
    ]
    class_index = None
    if class_name is not None:
        if class_name not in names:
            raise ConfigError(
                f"--class_name must be one of {names}. Received: {class_name!r}"
            )
        class_index = names.index(class_name)
    files = _image_files(images)
    prep = trained.preprocessing(int(keras_model.input.shape[1]))
    try:
        cam = explain.GradCAM(keras_model, layer)  # set up once for all batches
    except ValueError as e:
        if layer is not None and "No such layer" in str(e):
            raise ConfigError(f"--layer: the model has no layer {layer!r}") from None
        raise ConfigError(f"--layer: {e}") from None
    layer = cam.layer
    decision_path = os.path.join(trained.stage_dir, runs.DECISION_FILE)
    decision = (runs.read_json(decision_path)
                if os.path.isfile(decision_path) else None)
    # The share of Grad-CAM mass inside the lung box, from the `gradcam`
    # evaluator plugin (it holds the lung locator; None without it).
    scorer = registry_lib.default_registry().create("evaluators", "gradcam")
    lung_mass = getattr(scorer, "lung_mass", None)
    os.makedirs(output_dir, exist_ok=True)
    records = []
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        batch = np.stack([
            pipeline.eval_transform(
                decode.decode_file_image(tf.io.read_file(f)),
                prep["image_size"], prep["crop_fraction"],
            ).numpy()
            for f in chunk
        ])
        probs = keras_model.predict(batch, verbose=0)
        # The stage's decision (calibration, operating point), as served.
        decided = probs.argmax(1)
        if decision is not None:
            probs, decided = operating_point.apply(decision, probs)
        targets = decided if class_index is None else np.full(len(chunk), class_index)
        cams = cam(batch, targets)
        attention = explain.attention_map(keras_model, batch)
        shares, boxes, found = (
            lung_mass(batch, cams) if lung_mass else ([None] * len(chunk),) * 3)
        for i, path in enumerate(chunk):
            predicted = int(decided[i])
            stem = os.path.splitext(os.path.basename(path))[0]
            out = os.path.join(output_dir, f"{start + i:04d}_{stem}.png")
            title = (
                f"{os.path.basename(path)}: predicted {names[predicted]} "
                f"(p={probs[i, predicted]:.2f}); Grad-CAM of "
                f"{names[int(targets[i])]} at {layer}"
            )
            explain.write_row(
                out, batch[i], cams[i],
                None if attention is None else attention[i], title,
            )
            records.append({
                "image": os.path.abspath(path),
                "png": out,
                "predicted": names[predicted],
                "probabilities": {n: float(p) for n, p in zip(names, probs[i])},
                "gradcam_class": names[int(targets[i])],
                "gradcam_peak_yx": [int(v) for v in np.unravel_index(cams[i].argmax(), cams[i].shape)],
                "lung_mass": metrics_lib.to_json_value(shares[i]),
                "lung_box": boxes[i] and boxes[i]["box"],
                "lung_mass_chance": boxes[i] and boxes[i]["chance"],
                "lung_found": found[i],
            })
    runs.write_json(
        os.path.join(output_dir, "explain.json"),
        {"model": os.path.abspath(trained.model_path), "gradcam_layer": layer,
         "gradcam_layer_note": cam.note,
         "predicted_by": ("argmax (no decision.json)" if decision is None
                          else operating_point.describe(decision)),
         "attention_block": explain.last_block_name(keras_model),
         "lung_mass_mean": _mean([r["lung_mass"] for r in records]),
         "lung_mass_chance_mean": _mean([r["lung_mass_chance"] for r in records]),
         "lung_mass": "share of the Grad-CAM mass inside the lung box "
                      "(lung_box of the region-aware Generator; its central "
                      "fallback box where lung_found is false); chance: the "
                      "share of a uniform map (the box's area)",
         "images": records},
    )
    print(f"wrote {len(records)} figure(s) to {output_dir}")
    return records


PREDICTIONS_FILE = "predictions.csv"
EMBEDDINGS_FILE = "embeddings.npy"


def predict_images(
    model: str,
    images: Sequence[str],
    output_dir: str,
    batch_size: int = 32,
) -> tuple[str, str]:
    """Per-image predictions and embeddings of a trained classifier.

    Images are decoded and preprocessed as evaluation in training does.
    Writes `predictions.csv` (image, predicted class, one probability column
    per class) and `embeddings.npy` (float32 `(images, channels)`, the
    pooled backbone features; row i is the CSV's row i) into `output_dir`;
    returns their paths.
    """
    import keras

    trained = runs.find(model)
    keras_model = trained_lib.load(trained)
    names = trained.class_names or [
        str(i) for i in range(int(keras_model.output.shape[-1]))
    ]
    files = _image_files(images)
    prep = trained.preprocessing(int(keras_model.input.shape[1]))
    # One pass gives both: probabilities and the pooled features.
    both = keras.Model(
        keras_model.input,
        [keras_model.output, feature_model(keras_model).output],
    )
    probabilities, embeddings = [], []
    for start in range(0, len(files), batch_size):
        batch = np.stack([
            pipeline.eval_transform(
                decode.decode_image(tf.io.read_file(f)),
                prep["image_size"], prep["crop_fraction"],
            ).numpy()
            for f in files[start:start + batch_size]
        ])
        probs, features = both.predict(batch, verbose=0)
        probabilities.append(np.asarray(probs))
        embeddings.append(np.asarray(features, np.float32))
    probs = np.concatenate(probabilities)
    os.makedirs(output_dir, exist_ok=True)
    csv_path = os.path.join(output_dir, PREDICTIONS_FILE)
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "predicted"] + [f"p_{n}" for n in names])
        for path, p in zip(files, probs):
            writer.writerow(
                [os.path.abspath(path), names[int(p.argmax())]]
                + [f"{v:.6f}" for v in p]
            )
    npy_path = os.path.join(output_dir, EMBEDDINGS_FILE)
    np.save(npy_path, np.concatenate(embeddings))
    print(f"wrote {csv_path} and {npy_path} ({len(files)} images)")
    return csv_path, npy_path
