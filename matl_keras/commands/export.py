"""Export a trained classifier for TensorFlow Serving.

    matl-keras export --model=RUN_OR_STAGE_DIR --export_dir=DIR
        [--model_version=N]

writes TF Serving's versioned layout, `DIR/<model_name>/<N>/`:

- `saved_model.pb`, `variables/`: signatures
  - `serving_default` (`tensorflow/serving/predict`): input `images`, a
    `tf.string` batch of encoded PNG / JPEG / BMP / GIF files (any size;
    grayscale, RGB or RGBA; in REST as `{"b64": ...}`); outputs
    `probabilities` (float32 `[batch, classes]`) and `classes` (string
    `[batch]`, the decided class name). When the stage has a
    `decision.json` (the operating point and temperature fitted on its
    validation split, `evaluation.operating_point`), `probabilities` are
    the temperature-scaled ones and `classes` is the decision at the
    operating point ("positive when p >= threshold"); otherwise raw
    probabilities and argmax. A request fails as a whole, with a message
    naming the index of every image that is empty, not an image file or
    cannot be decoded (truncated, corrupt), or saying that `images` is not
    a batch (rank 1).
  - `serving_pixels`: input `pixels`, float32 `[batch, size, size, 3]` in
    [0, 1], already preprocessed by the client; same outputs.
  The bytes signature decodes and preprocesses inside the graph with the
  functions evaluation uses in training (`decode.decode_image`,
  `pipeline.eval_transform`), so served predictions are the evaluated ones.
- `assets/labels.txt`: the class names in output order.
- `assets.extra/tf_serving_warmup_requests`: `PredictionLog` records TF
  Serving replays at load, so the first real request is not slow.
- `metadata.json` and `config.gin`: what is deployed (name, version, class
  names, input size, the stages and datasets it went through, its config,
  the decision: threshold, temperature, rule and the split it was chosen on).

A version is written to a temporary folder and renamed into place: TF
Serving, which watches `DIR/<model_name>/`, never sees half a model. An
existing version is never overwritten.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from matl_keras import runs
from matl_keras.data import decode
from matl_keras.data import pipeline
from matl_keras.errors import ConfigError
from matl_keras.evaluation import calibration
from matl_keras.evaluation import operating_point
from matl_keras.evaluation import trained as trained_lib

SIGNATURE_BYTES = "serving_default"
SIGNATURE_PIXELS = "serving_pixels"
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
LABELS_FILE = os.path.join("assets", "labels.txt")
METADATA_FILE = "metadata.json"
_NAME = re.compile(r"[^A-Za-z0-9_.-]+")

# Leading bytes of the formats `tf.io.decode_image` reads.
_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM")


def check_encoded(images: tf.Tensor) -> tf.Tensor:
    """Asserts that every element of a `tf.string` batch looks like an
    image file; the `InvalidArgumentError` names the index and the problem
    (the decoder's own message would not say which element failed)."""
    lengths = tf.strings.length(images)
    empty = tf.equal(lengths, 0)
    known = tf.zeros_like(empty)
    for magic in _MAGIC:
        known = known | tf.equal(
            tf.strings.substr(images, 0, len(magic)), magic
        )
    checks = [
        tf.debugging.Assert(
            tf.logical_not(tf.reduce_any(empty)),
            ["`images`: empty string(s) at index", tf.where(empty)[:, 0]],
        ),
        tf.debugging.Assert(
            tf.reduce_all(known | empty),
            [
                "`images`: not a PNG, JPEG, BMP or GIF file at index",
                tf.where(tf.logical_not(known | empty))[:, 0],
            ],
        ),
    ]
    with tf.control_dependencies(checks):
        return tf.identity(images)


def check_rank(images: tf.Tensor) -> tf.Tensor:
    """Asserts that `images` is a batch (rank 1). TF Serving feeds a
    request's tensor whatever its shape; a single string (rank 0) would
    otherwise fail deep inside with "WhereOp: Unhandled input dimensions".
    The rank is computed from the runtime shape's values, which graph
    optimization cannot fold to the signature's static rank."""
    rank = tf.reduce_sum(tf.sign(tf.shape(images) + 1))
    check = tf.debugging.Assert(
        tf.equal(rank, 1),
        [
            "`images` must be a batch (rank 1) of encoded images, e.g. "
            "[png_bytes]; received a tensor of rank",
            rank,
        ],
    )
    with tf.control_dependencies([check]):
        return tf.identity(images)


def check_decodable(
    images: tf.Tensor, image_size: int, crop_fraction: float
) -> tf.Tensor:
    """Asserts that every image decodes and preprocesses; the error names
    the index of each one that does not (a truncated PNG, a PNG header
    followed by zeros, a corrupt JPEG). A graph cannot catch an op's
    error, but `tf.data`'s `ignore_errors` drops the elements whose map
    failed: the indices that did not come through are the failures."""
    count = tf.shape(images, out_type=tf.int64)[0]
    # The map's result must be used by value: its shape alone is static
    # and tf.data's graph optimization would then never decode.
    passed = (
        tf.data.Dataset.from_tensor_slices((tf.range(count), images))
        .map(
            lambda i, data: (
                i,
                tf.reduce_max(
                    pipeline.eval_transform(
                        decode.decode_image(data), image_size, crop_fraction
                    )
                ),
            )
        )
        .ignore_errors()
        .reduce(
            tf.zeros([count], tf.bool),
            lambda ok, item: tf.tensor_scatter_nd_update(
                ok, [[item[0]]], [tf.math.is_finite(item[1])]
            ),
        )
    )
    check = tf.debugging.Assert(
        tf.reduce_all(passed),
        [
            "`images`: cannot decode the image(s) at index",
            tf.where(tf.logical_not(passed))[:, 0],
            "(truncated or corrupt file; the request fails as a whole)",
        ],
    )
    with tf.control_dependencies([check]):
        return tf.identity(images)


def preprocess_encoded(
    images: tf.Tensor, image_size: int, crop_fraction: float
) -> tf.Tensor:
    """Encoded image batch -> model input, as evaluation in training does
    (decode by content, RGB, resize to the load size, uint8, center crop).
    Images of different sizes may share a batch."""
    images = check_rank(images)
    images = check_encoded(images)
    images = check_decodable(images, image_size, crop_fraction)
    return tf.map_fn(
        lambda data: pipeline.eval_transform(
            decode.decode_image(data), image_size, crop_fraction
        ),
        images,
        fn_output_signature=tf.TensorSpec(
            [image_size, image_size, 3], tf.float32
        ),
    )


def _outputs(
    model: keras.Model,
    pixels: tf.Tensor,
    labels: tf.Tensor,
    decision: dict[str, Any] | None = None,
) -> dict[str, tf.Tensor]:
    probabilities = tf.cast(model(pixels, training=False), tf.float32)
    if decision is None:
        return {
            "probabilities": probabilities,
            "classes": tf.gather(labels, tf.argmax(probabilities, axis=-1)),
        }
    # calibration.scale and operating_point.apply, in float64 as there.
    logits = tf.math.log(
        tf.clip_by_value(
            tf.cast(probabilities, tf.float64), calibration.EPS, 1.0
        )
    )
    scaled = tf.nn.softmax(logits / decision["temperature"], axis=-1)
    if decision.get("threshold") is None:
        decided = tf.argmax(scaled, axis=-1, output_type=tf.int32)
    else:
        positive = int(decision["positive_index"])
        decided = tf.where(
            scaled[:, positive] >= decision["threshold"], positive, 1 - positive
        )
    return {
        "probabilities": tf.cast(scaled, tf.float32),
        "classes": tf.gather(labels, decided),
    }


def read_decision(stage_dir: str) -> dict[str, Any] | None:
    """The stage's `decision.json`, or None (a run from before it)."""
    path = os.path.join(stage_dir, runs.DECISION_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _next_version(base: str) -> int:
    versions = (
        [int(d) for d in os.listdir(base) if d.isdigit()]
        if os.path.isdir(base)
        else []
    )
    return max(versions, default=0) + 1


def _example_images(size: int) -> list[bytes]:
    """Warm-up inputs: a PNG at the load size and a smaller JPEG."""
    ramp = np.linspace(0, 255, size * size, dtype=np.float32).reshape(
        size, size, 1
    )
    gray = tf.constant(ramp.astype(np.uint8))
    rgb = tf.image.resize(tf.tile(gray, [1, 1, 3]), (size // 2, size // 3))
    return [
        tf.io.encode_png(gray).numpy(),
        tf.io.encode_jpeg(tf.cast(rgb, tf.uint8)).numpy(),
    ]


def write_warmup(path: str, model_name: str, examples: Sequence[bytes]) -> None:
    """TF Serving warm-up: PredictionLog records of `serving_default`
    requests (a batch of one, then all examples in one batch)."""
    from tensorflow_serving.apis import model_pb2
    from tensorflow_serving.apis import predict_pb2
    from tensorflow_serving.apis import prediction_log_pb2

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for batch in ([examples[0]], list(examples)):
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(
                    name=model_name, signature_name=SIGNATURE_BYTES
                )
            )
            request.inputs["images"].CopyFrom(
                tf.make_tensor_proto(batch, dtype=tf.string)
            )
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
            writer.write(log.SerializeToString())


def _archive(
    model: keras.Model,
    class_names: Sequence[str],
    image_size: int,
    crop_fraction: float,
    dedupe: bool = True,
    decision: dict[str, Any] | None = None,
) -> keras.export.ExportArchive:
    labels = tf.constant(list(class_names))
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        SIGNATURE_BYTES,
        lambda images: _outputs(
            model,
            preprocess_encoded(images, image_size, crop_fraction),
            labels,
            decision,
        ),
        input_signature=[tf.TensorSpec([None], tf.string, name="images")],
    )
    archive.add_endpoint(
        SIGNATURE_PIXELS,
        lambda pixels: _outputs(model, pixels, labels, decision),
        input_signature=[
            tf.TensorSpec(
                [None, image_size, image_size, 3], tf.float32, name="pixels"
            )
        ],
    )
    # Keras 3 stores every weight twice in an exported SavedModel: once
    # under `variables` (the archive's Keras variables) and once under
    # `_all_variables` (the tf.Variables the endpoints capture)
    # (keras-team/keras#23553; measured on R-50 5 ATTNs: 285 MB instead
    # of 143 MB, and load time and memory to match). Serving needs only the
    # captured ones: dropping the Keras-side lists halves the artifact.
    # The revived object then has no `.variables` attribute (only needed to
    # fine-tune from the SavedModel, which users do from model.keras).
    if not dedupe:  # the upstream behaviour, to measure it
        return archive
    archive._tf_trackable.variables = []
    archive._tf_trackable.trainable_variables = []
    archive._tf_trackable.non_trainable_variables = []
    return archive


def export(
    model: str,
    export_dir: str,
    version: int | None = None,
    model_name: str | None = None,
    dedupe: bool = True,
) -> str:
    """Exports the classifier at `model` (a .keras file, a stage workdir or
    a pipeline workdir); returns the version folder written."""
    trained = runs.find(model)
    keras_model = trained_lib.load(trained)
    if len(keras_model.output.shape) != 2:
        raise ConfigError(
            f"--model: {trained.model_path!r} is not a classifier"
        )
    classes = int(keras_model.output.shape[-1])
    class_names = trained.class_names or [str(i) for i in range(classes)]
    if len(class_names) != classes:
        raise ConfigError(
            f"--model: run.json names {len(class_names)} classes, the model "
            f"predicts {classes}"
        )
    image_size = int(keras_model.input.shape[1])
    prep = trained.preprocessing(image_size)
    if prep["image_size"] != image_size:
        raise ConfigError(
            f"--model: run.json says image_size {prep['image_size']}, the "
            f"model takes {image_size}"
        )
    run_root = (
        os.path.dirname(trained.stage_dir)
        if trained.lineage
        else trained.stage_dir
    )
    name = (
        model_name
        or _NAME.sub("_", os.path.basename(os.path.abspath(run_root)))
        or "model"
    )
    base = os.path.join(export_dir, name)
    if version is None:
        version = _next_version(base)
    if version < 1:
        raise ConfigError(
            f"--model_version must be a positive integer. Received: {version}"
        )
    final = os.path.join(base, str(version))
    if os.path.exists(final):
        raise ConfigError(
            f"--model_version: {final!r} exists; TF Serving versions are never "
            "overwritten (leave --model_version out for the next free one)"
        )
    os.makedirs(base, exist_ok=True)
    staging = os.path.join(base, f".tmp-{version}")
    shutil.rmtree(staging, ignore_errors=True)

    decision = read_decision(trained.stage_dir)
    if decision is not None and decision.get("class_names") not in (
        None,
        list(class_names),
    ):
        raise ConfigError(
            f"--model: decision.json is for classes {decision['class_names']}, "
            f"the model predicts {list(class_names)}"
        )
    archive = _archive(
        keras_model,
        class_names,
        image_size,
        prep["crop_fraction"],
        dedupe,
        decision,
    )
    archive.write_out(staging, verbose=False)
    with open(os.path.join(staging, LABELS_FILE), "w") as f:
        f.write("\n".join(class_names) + "\n")
    load = pipeline.load_size(image_size, prep["crop_fraction"])
    write_warmup(
        os.path.join(staging, WARMUP_FILE), name, _example_images(load)
    )
    metadata = _metadata(trained, name, version, class_names, prep, image_size)
    metadata["decision"] = _decision_metadata(decision)
    with open(os.path.join(staging, METADATA_FILE), "w") as f:
        json.dump(metadata, f, indent=2)
    config = os.path.join(trained.stage_dir, runs.OPERATIVE_CONFIG_FILE)
    if os.path.isfile(config):
        shutil.copy(config, os.path.join(staging, "config.gin"))
    os.rename(staging, final)
    print(f"exported {name} version {version} to {final}", flush=True)
    return final


def _metadata(
    trained, name, version, class_names, prep, image_size
) -> dict[str, Any]:
    run = trained.run
    return {
        "model_name": name,
        "version": version,
        "class_names": list(class_names),
        "input": {
            "signature": SIGNATURE_BYTES,
            "images": "tf.string [batch]: PNG, JPEG, BMP or GIF bytes",
            "image_size": image_size,
            "crop_fraction": prep["crop_fraction"],
            "load_size": pipeline.load_size(image_size, prep["crop_fraction"]),
        },
        "outputs": {
            "probabilities": f"float32 [batch, {len(class_names)}]",
            "classes": "string [batch]",
        },  # described in "decision"
        "source_model": os.path.abspath(trained.model_path),
        "dataset": run.get("dataset"),
        "architecture": run.get("architecture"),
        "kept": run.get("kept"),
        "stages": [
            {
                k: entry.get(k)
                for k in ("stage", "function", "dataset", "config_hash", "kept")
            }
            for entry in trained.lineage
        ],
        "versions": run.get("versions"),
    }


def _decision_metadata(decision: dict[str, Any] | None) -> dict[str, Any]:
    """What `probabilities` and `classes` mean in this version."""
    if decision is None:
        return {
            "probabilities": "uncalibrated softmax",
            "classes": "argmax",
            "note": "the stage has no decision.json (trained before "
            "operating points existed): no calibration, argmax",
        }
    threshold = decision.get("threshold")
    return {
        "probabilities": (
            f"temperature-scaled softmax, T={decision['temperature']}"
        ),
        "classes": (
            "argmax"
            if threshold is None
            else f"{decision['positive_class']} when its probability "
            ">= threshold"
        ),
        "threshold": threshold,
        "positive_class": decision.get("positive_class"),
        "rule": decision.get("rule"),
        "target": decision.get("target"),
        "chosen_on": decision.get("fitted_on"),
        "chosen_on_examples": decision.get("num_examples"),
        "how": operating_point.describe(decision),
        "temperature": decision["temperature"],
        "calibration": decision.get("calibration"),
        "at_chosen_split": decision.get(decision.get("fitted_on")),
    }
