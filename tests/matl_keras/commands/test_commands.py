"""`matl-keras evaluate`, `explain` and `report` through the CLI on a saved
classifier (a stage workdir as training leaves it)."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from matl_keras.models.resnet.resnet_backbone import ResNetBackbone
from matl_keras.models.resnet.resnet_image_classifier import (
    build_image_classifier,
)
from tests.cli_testing import error_line
from tests.cli_testing import matl
from tests.cli_testing import matl_here

CT = [
    "--gin_param=synthetic_ct.num_test = 12",
    "--gin_param=synthetic_ct.image_size = 80",
]


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run") / "finetune"
    folder.mkdir()
    model = build_image_classifier(
        ResNetBackbone(18, 0.25, 64, attention="5"), 2
    )
    model.save(str(folder / "model.keras"))
    (folder / "run.json").write_text(
        json.dumps(
            {
                "status": "complete",
                "class_names": ["NonCOVID", "COVID"],
                "preprocessing": {
                    "image_size": 64,
                    "crop_fraction": 0.875,
                    "load_size": 73,
                },
            }
        )
    )
    return str(folder)


def test_evaluate_writes_json_and_prints_a_table(stage, tmp_path):
    out = str(tmp_path / "scores.json")
    result = matl(
        "evaluate",
        f"--model={stage}",
        "--dataset=synthetic_ct",
        "--evaluators=metrics,leep",
        f"--output={out}",
        *CT,
    )
    assert result.returncode == 0, result.stderr
    assert "accuracy" in result.stdout and "95% interval" in result.stdout
    report = json.load(open(out))
    assert report["num_examples"] == 12 and report["split"] == "test"
    results = report["results"]
    counts = np.array(results["confusion_matrix"]["counts"])
    assert counts.sum() == 12
    assert results["accuracy"] == pytest.approx(np.trace(counts) / 12)
    assert results["positive_class"] == "COVID" and len(results["auc_ci"]) == 2
    assert results["leep"] <= 0


def test_evaluate_errors_are_one_line(stage):
    assert "--dataset is required" in error_line(
        matl_here("evaluate", f"--model={stage}")
    )
    line = error_line(
        matl_here(
            "evaluate",
            f"--model={stage}",
            "--dataset=synthetic_cxr",
            "--gin_param=synthetic_cxr.num_test = 6",
        )
    )
    assert "predicts 2 classes" in line and "--evaluators=leep" in line
    # A source model scored on another task: LEEP needs no matching head.
    other = matl_here(
        "evaluate",
        f"--model={stage}",
        "--dataset=synthetic_cxr",
        "--evaluators=leep",
        "--gin_param=synthetic_cxr.num_test = 6",
        f"--output={stage}/leep_cxr.json",
    )
    assert other.returncode == 0, other.stderr
    assert json.load(open(f"{stage}/leep_cxr.json"))["results"]["leep"] <= 0
    assert "has splits" in error_line(
        matl_here(
            "evaluate",
            f"--model={stage}",
            "--dataset=synthetic_ct",
            "--split=nope",
        )
    )
    assert "does not exist" in error_line(
        matl_here("evaluate", "--model=/no/such", "--dataset=synthetic_ct")
    )


def test_explain_writes_one_fig4_row_per_image(stage, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (90, 70), np.uint8)).save(
        images / "gray.png"
    )
    Image.fromarray(rng.integers(0, 255, (50, 60, 4), np.uint8)).save(
        images / "rgba.png"
    )
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8)).save(
        images / "c.jpg"
    )
    out = tmp_path / "out"
    result = matl(
        "explain",
        f"--model={stage}",
        f"--images={images}",
        f"--output_dir={out}",
    )
    assert result.returncode == 0, result.stderr
    record = json.load(open(out / "explain.json"))
    # res5 is 2x2 at 64 px: the deepest map with >= 3x3 positions, and why.
    assert record["gradcam_layer"] == "conv4_block2_nonlocal"
    assert "2x2 positions" in record["gradcam_layer_note"]
    # A share in [0, 1], or null where the tiny model's Grad-CAM map is zero
    # everywhere (its documented meaning; the fixture's bits decide which).
    shares = [r["lung_mass"] for r in record["images"]]
    defined = [v for v in shares if v is not None]
    assert all(0.0 <= v <= 1.0 for v in defined)
    assert len(record["images"][0]["lung_box"]) == 4
    if defined:
        assert record["lung_mass_mean"] == pytest.approx(np.mean(defined))
    else:
        assert record["lung_mass_mean"] is None
    assert "null where the Grad-CAM map is zero" in record["lung_mass"]
    assert 0.0 < record["images"][0]["lung_mass_chance"] < 1.0
    assert record["attention_block"] == "conv5_block2_nonlocal"
    assert [os.path.basename(r["image"]) for r in record["images"]] == [
        "c.jpg",
        "gray.png",
        "rgba.png",
    ]
    for r in record["images"]:
        png = Image.open(r["png"])
        assert png.size[0] > 4 * png.size[1]  # five panels side by side
    line = error_line(
        matl_here(
            "explain",
            f"--model={stage}",
            f"--images={images}",
            f"--output_dir={out}",
            "--layer=conv5_block2_out",
        )
    )
    assert "--layer" in line and "2x2 positions" in line
    assert record["predicted_by"] == "argmax (no decision.json)"
    # With the stage's decision, "predicted" is the served decision.
    from matl_keras.evaluation import operating_point

    decision = operating_point.fit_decision(
        np.array([0, 1, 0, 1]),
        np.array([[0.9, 0.1], [0.7, 0.3], [0.8, 0.2], [0.6, 0.4]]),
        1,
        ["NonCOVID", "COVID"],
        calibrate=False,
    )
    assert decision["threshold"] < 0.4  # low: COVID whenever p >= ~0.25
    with open(os.path.join(stage, "decision.json"), "w") as f:
        json.dump(decision, f)
    try:
        out2 = tmp_path / "out2"
        result = matl_here(
            "explain",
            f"--model={stage}",
            f"--images={images}",
            f"--output_dir={out2}",
        )
        assert result.returncode == 0, result.stderr
        with_decision = json.load(open(out2 / "explain.json"))
    finally:
        os.remove(os.path.join(stage, "decision.json"))
    assert "Youden's J on val (4 images)" in with_decision["predicted_by"]
    for r in with_decision["images"]:
        p = r["probabilities"]["COVID"]
        assert r["predicted"] == (
            "COVID" if p >= decision["threshold"] else "NonCOVID"
        )
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    line = error_line(
        matl_here(
            "explain",
            f"--model={stage}",
            f"--images={images}",
            f"--output_dir={out}",
        )
    )
    assert "broken.png" in line


def test_predict_writes_csv_and_embeddings_row_for_row(stage, tmp_path):
    import csv

    import keras
    import tensorflow as tf

    from matl_keras.data import decode
    from matl_keras.data import pipeline
    from matl_keras.evaluation.evaluator import feature_model

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (90, 70), np.uint8)).save(
        images / "b.png"
    )
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8)).save(
        images / "a.jpg"
    )
    Image.fromarray(rng.integers(0, 255, (40, 80, 3), np.uint8)).save(
        images / "c.png"
    )
    # A format the input pipeline reads by content with Pillow: predict
    # reads it as training did.
    Image.fromarray(rng.integers(0, 255, (50, 50, 3), np.uint8)).save(
        images / "d.tif"
    )
    result = matl(
        "predict", f"--model={stage}", f"--images={images}", "--batch_size=2"
    )
    assert result.returncode == 0, result.stderr
    out = os.path.join(stage, "predict")
    rows = list(csv.DictReader(open(os.path.join(out, "predictions.csv"))))
    assert [os.path.basename(r["image"]) for r in rows] == [
        "a.jpg",
        "b.png",
        "c.png",
        "d.tif",
    ]
    assert list(rows[0]) == ["image", "predicted", "p_NonCOVID", "p_COVID"]
    embeddings = np.load(os.path.join(out, "embeddings.npy"))
    # What the saved model computes in this process, on the same files.
    model = keras.saving.load_model(os.path.join(stage, "model.keras"))
    batch = np.stack(
        [
            pipeline.eval_transform(
                decode.decode_file_image(tf.io.read_file(r["image"])),
                64,
                0.875,
            )
            for r in rows
        ]
    )
    probs = np.asarray(model(batch, training=False))
    np.testing.assert_allclose(
        [[float(r["p_NonCOVID"]), float(r["p_COVID"])] for r in rows],
        probs,
        atol=1e-5,
    )
    assert [r["predicted"] for r in rows] == [
        ["NonCOVID", "COVID"][i] for i in probs.argmax(1)
    ]
    features = np.asarray(feature_model(model)(batch, training=False))
    assert embeddings.dtype == np.float32 and embeddings.shape == features.shape
    np.testing.assert_allclose(embeddings, features, atol=1e-4)
    assert "--images is required" in error_line(
        matl_here("predict", f"--model={stage}")
    )


def test_report_command(tmp_path):
    from tests.plugins.plugin_testing import pipeline_run as _run

    run = _run(tmp_path / "runs", "a", "none", ("stl_n",), 0.8, leep=[-0.6])
    result = matl("report", f"--runs={run}", f"--output_dir={tmp_path / 'rep'}")
    assert result.returncode == 0, result.stderr
    assert os.path.getsize(tmp_path / "rep" / "fig3_leep.png") > 1000
    assert "w STL-N" in open(tmp_path / "rep" / "table6_leep.md").read()


def test_evaluate_scores_at_the_stage_decision(stage, tmp_path):
    from matl_keras.evaluation import operating_point

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 40)
    p1 = np.clip(0.3 + 0.2 * y + rng.normal(0, 0.1, 40), 0.01, 0.99)
    decision = operating_point.fit_decision(
        y, np.stack([1 - p1, p1], 1), 1, ["NonCOVID", "COVID"]
    )
    path = os.path.join(stage, "decision.json")
    with open(path, "w") as f:
        json.dump(decision, f)
    try:
        out = str(tmp_path / "scores.json")
        result = matl_here(
            "evaluate",
            f"--model={stage}",
            "--dataset=synthetic_ct",
            f"--output={out}",
            *CT,
        )
        assert result.returncode == 0, result.stderr
        at = json.load(open(out))["results"]["operating_point"]
        assert (
            at["threshold"] == decision["threshold"] and at["rule"] == "youden"
        )
        assert (
            "at the operating point: Youden's J on val (40 images)"
            in result.stdout
        )
    finally:
        os.remove(path)
