"""Export for TF Serving: the contract a TF Serving deployment relies on,
checked in a fresh Python process that does not import matl_keras."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from matl_keras import runs
from matl_keras.commands import export
from matl_keras.data import decode
from matl_keras.data import pipeline
from matl_keras.evaluation import operating_point
from matl_keras.evaluation import trained as trained_lib
from tests.cli_testing import error_line
from tests.cli_testing import matl
from tests.cli_testing import matl_here
from tests.conftest import SHARED_DATA

TRAIN = [
    "--gin_file=gin/finetune.gin",
    "--gin_file=gin/models/tiny.gin",
    "--gin_param=IMAGE_SIZE = 64",
    "--gin_param=BATCH_SIZE = 8",
    "--gin_param=FINETUNE_EPOCHS = 1",
    "--gin_param=synthetic_ct.image_size = 80",
    "--gin_param=synthetic_ct.num_train = 16",
    "--gin_param=synthetic_ct.labelled_fraction = 1.0",
    "--gin_param=synthetic_ct.num_val = 8",
    "--gin_param=synthetic_ct.num_test = 8",
    "--gin_param=train.evaluators = ['metrics']",
]


def _train(workdir, variant):
    result = matl(
        *TRAIN, f"--gin_file=gin/variants/{variant}.gin", f"--workdir={workdir}"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return workdir


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return _train(str(tmp_path_factory.mktemp("export") / "attn5_run"), "attn5")


def _images(folder):
    """Files as a hospital system might send them: formats, modes, sizes."""
    rng = np.random.default_rng(0)
    os.makedirs(folder, exist_ok=True)
    files = {
        "gray.png": Image.fromarray(rng.integers(0, 255, (120, 100), np.uint8)),
        "rgba.png": Image.fromarray(
            rng.integers(0, 255, (70, 90, 4), np.uint8)
        ),
        "rgb.jpg": Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8)),
        "gray16.png": Image.fromarray(
            rng.integers(0, 65535, (50, 80), np.uint16)
        ),
        "scan.bmp": Image.fromarray(
            rng.integers(0, 255, (96, 96, 3), np.uint8)
        ),
        "scan.gif": Image.fromarray(rng.integers(0, 255, (60, 60), np.uint8)),
    }
    paths = []
    for name, image in files.items():
        path = os.path.join(folder, name)
        image.save(path)
        paths.append(path)
    real = sorted(
        glob.glob(
            os.path.join(SHARED_DATA, "covid-ct", "Images-processed", "*", "*")
        )
    )
    paths += real[:: max(1, len(real) // 3)][
        :3
    ]  # a few real CT slices when present
    return paths


# Runs in a fresh interpreter that never imports matl_keras: what a serving
# host has is TensorFlow and the artifact.
CLIENT = r"""
import json, sys
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

path, files, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
model = tf.saved_model.load(path)
serve = model.signatures["serving_default"]
pixels = model.signatures["serving_pixels"]
data = [open(f, "rb").read() for f in files]
result = {}
# Mixed sizes and formats in one batch.
answer = serve(images=tf.constant(data))
result["probabilities"] = answer["probabilities"].numpy().tolist()
result["classes"] = [c.decode() for c in answer["classes"].numpy()]
# One at a time gives the same.
result["single"] = [
    serve(images=tf.constant([d]))["probabilities"].numpy()[0].tolist()
    for d in data
]
# A PredictRequest as a TF Serving client builds it (gRPC), converted to
# the signature's inputs the way the server does.
request = predict_pb2.PredictRequest()
request.model_spec.name = "m"
request.model_spec.signature_name = "serving_default"
request.inputs["images"].CopyFrom(
    tf.make_tensor_proto(data[:2], dtype=tf.string)
)
request = predict_pb2.PredictRequest.FromString(request.SerializeToString())
inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
spec = serve.structured_input_signature[1]
assert set(inputs) == set(spec), (inputs.keys(), spec)
assert all(inputs[k].dtype == spec[k].dtype for k in inputs)
reply = serve(**inputs)
result["request"] = reply["probabilities"].numpy().tolist()
# Bad requests: an InvalidArgument that names the problem; the model still
# answers after.
errors = {}
png = data[0]
for name, batch in {
    "not_image": [b"hello, I am a text file"],
    "empty": [data[0], b""],
    "truncated": [data[0][: len(data[0]) // 2]],
    "truncated_second": [png, png[: len(png) // 2], png],
    "header_then_zeros": [png, png, png[:16] + bytes(400)],
    "two_bad": [png[:100], png, png[:33] + bytes(50)],
    "rank0": png,
}.items():
    try:
        serve(images=tf.constant(batch))
        errors[name] = None
    except tf.errors.InvalidArgumentError as e:
        found = " ".join(line for line in e.message.splitlines()
                         if "assertion failed" in line)
        errors[name] = found[:400] or e.message[:400]
    result.setdefault("after_error", []).append(
        serve(images=tf.constant(data[:1]))["probabilities"].numpy()[0].tolist())
result["errors"] = errors
# The warm-up records replay.
records = tf.data.TFRecordDataset(
    path + "/assets.extra/tf_serving_warmup_requests"
)
result["warmup"] = []
for record in records:
    log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
    req = log.predict_log.request
    ins = {k: tf.constant(tf.make_ndarray(v)) for k, v in req.inputs.items()}
    rows = int(serve(**ins)["probabilities"].shape[0])
    result["warmup"].append([req.model_spec.signature_name, rows])
result["pixels_shape"] = (
    pixels.structured_input_signature[1]["pixels"].shape.as_list()
)
result["imported_matl_keras"] = any(
    m.startswith("matl_keras") for m in sys.modules
)
json.dump(result, open(out, "w"))
"""


def _client(version_dir, files, tmp_path):
    out = str(tmp_path / "client.json")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH="")
    done = subprocess.run(
        [sys.executable, "-c", CLIENT, version_dir, json.dumps(files), out],
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.load(open(out))


def _keras_predictions(run_dir, files, decided=False):
    """Raw probabilities and class names; with `decided`, the stage's
    calibrated probabilities and decided labels instead."""
    trained = runs.find(run_dir)
    model = trained_lib.load(trained)
    prep = trained.preprocessing(64)
    batch = np.stack(
        [
            pipeline.eval_transform(
                decode.decode_image(tf.io.read_file(f)),
                prep["image_size"],
                prep["crop_fraction"],
            ).numpy()
            for f in files
        ]
    )
    probs = model.predict(batch, verbose=0)
    if decided:
        decision = json.load(
            open(os.path.join(trained.stage_dir, "decision.json"))
        )
        scaled, labels = operating_point.apply(decision, probs)
        return scaled, [trained.class_names[i] for i in labels], decision
    return probs, trained.class_names


def test_served_predictions_equal_the_trained_model(run, tmp_path):
    files = _images(str(tmp_path / "images"))
    version = export.export(run, str(tmp_path / "serving"))
    assert version == str(tmp_path / "serving" / "attn5_run" / "1")
    result = _client(version, files, tmp_path)
    assert not result["imported_matl_keras"]
    expected, decided, decision = _keras_predictions(run, files, decided=True)
    names = runs.find(run).class_names
    # Served: the val-fitted temperature and operating point.
    assert decision["fitted_on"] == "val" and decision["temperature"] != 1.0
    np.testing.assert_allclose(
        result["probabilities"], expected, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(result["single"], expected, rtol=1e-5, atol=1e-6)
    assert result["classes"] == decided
    np.testing.assert_allclose(
        result["request"], expected[:2], rtol=1e-5, atol=1e-6
    )
    errors = result["errors"]
    assert (
        "not a PNG, JPEG, BMP or GIF file at index] [0]" in errors["not_image"]
    )
    assert "empty string(s) at index] [1]" in errors["empty"]
    # Every decode failure names its image(s).
    assert "cannot decode the image(s) at index] [0]" in errors["truncated"]
    assert (
        "cannot decode the image(s) at index] [1]" in errors["truncated_second"]
    )
    assert (
        "cannot decode the image(s) at index] [2]"
        in errors["header_then_zeros"]
    )
    assert "cannot decode the image(s) at index] [0 2]" in errors["two_bad"]
    assert "must be a batch (rank 1)" in errors["rank0"], errors["rank0"]
    for answer in result["after_error"]:  # not left broken
        np.testing.assert_allclose(answer, expected[0], rtol=1e-5, atol=1e-6)
    assert result["warmup"] == [["serving_default", 1], ["serving_default", 2]]
    assert result["pixels_shape"] == [None, 64, 64, 3]
    assert (
        open(os.path.join(version, "assets", "labels.txt")).read().split()
        == names
    )
    metadata = json.load(open(os.path.join(version, "metadata.json")))
    assert metadata["class_names"] == names and metadata["version"] == 1
    assert (
        metadata["input"]["image_size"] == 64
        and metadata["stages"][0]["stage"] == "finetune"
    )
    served = metadata["decision"]
    assert (
        served["threshold"] == decision["threshold"]
        and served["rule"] == "youden"
    )
    assert (
        served["chosen_on"] == "val"
        and served["temperature"] == decision["temperature"]
    )
    assert "Youden's J on val (8 images)" in served["how"]
    # The stage scored test at the same val-chosen point, beside argmax.
    metrics = json.load(open(os.path.join(run, "finetune", "metrics.json")))
    at = metrics["test"]["operating_point"]
    assert at["threshold"] == decision["threshold"] and at["fitted_on"] == "val"
    assert "sensitivity_ci" in at and "sensitivity" in metrics["test"]
    assert os.path.isfile(os.path.join(run, "finetune", "reliability_val.png"))
    assert os.path.isfile(os.path.join(version, "config.gin"))


def test_saved_model_cli_lists_the_signatures(run, tmp_path):
    version = export.export(run, str(tmp_path / "serving"), model_name="covid")
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    shown = subprocess.run(
        [cli, "show", "--all", "--dir", version],
        capture_output=True,
        text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    ).stdout
    default = shown.split("signature_def['serving_default']:")[1].split(
        "signature_def["
    )[0]
    assert (
        "inputs['images'] tensor_info:\n        dtype: DT_STRING\n"
        "        shape: (-1)" in default
    )
    assert (
        "outputs['probabilities'] tensor_info:\n        dtype: DT_FLOAT\n"
        "        shape: (-1, 2)" in default
    )
    assert (
        "outputs['classes'] tensor_info:\n        dtype: DT_STRING\n"
        "        shape: (-1)" in default
    )
    assert "Method name is: tensorflow/serving/predict" in default
    pixels = shown.split("signature_def['serving_pixels']:")[1]
    assert "dtype: DT_FLOAT\n        shape: (-1, 64, 64, 3)" in pixels


def test_versions_and_errors(run, tmp_path):
    base = str(tmp_path / "serving")
    assert export.export(run, base, model_name="m").endswith(
        os.path.join("m", "1")
    )
    assert export.export(run, base, model_name="m").endswith(
        os.path.join("m", "2")
    )
    assert not [
        d for d in os.listdir(os.path.join(base, "m")) if d.startswith(".tmp")
    ]
    line = error_line(
        matl_here(
            "export",
            f"--model={run}",
            f"--export_dir={base}",
            "--model_name=m",
            "--model_version=2",
        )
    )
    assert "exists" in line and "never overwritten" in line
    assert "--export_dir is required" in error_line(
        matl_here("export", f"--model={run}")
    )


def test_deduplicated_weights_are_half_the_upstream_export(run, tmp_path):
    def size(folder):
        return sum(
            os.path.getsize(os.path.join(folder, "variables", f))
            for f in os.listdir(os.path.join(folder, "variables"))
        )

    ours = export.export(run, str(tmp_path / "a"))
    upstream = export.export(run, str(tmp_path / "b"), dedupe=False)
    assert size(ours) < 0.6 * size(upstream)
    x = (
        np.random.default_rng(0)
        .uniform(0, 1, (2, 64, 64, 3))
        .astype(np.float32)
    )
    a = tf.saved_model.load(ours).signatures["serving_pixels"](pixels=x)[
        "probabilities"
    ]
    b = tf.saved_model.load(upstream).signatures["serving_pixels"](pixels=x)[
        "probabilities"
    ]
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)


# slow: a training run per variant (~30 s each); the default suite
# exports and serves the 5-ATTN run of the `run` fixture.
@pytest.mark.slow
@pytest.mark.parametrize("variant", ["baseline", "attn1"])
def test_every_variant_exports_and_serves(variant, tmp_path):
    run_dir = _train(str(tmp_path / variant), variant)
    files = _images(str(tmp_path / "images"))[:3]
    version = export.export(run_dir, str(tmp_path / "serving"))
    result = _client(version, files, tmp_path)
    expected, decided, _ = _keras_predictions(run_dir, files, decided=True)
    np.testing.assert_allclose(
        result["probabilities"], expected, rtol=1e-5, atol=1e-6
    )
    assert result["classes"] == decided
