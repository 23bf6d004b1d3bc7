"""The built-in evaluator plugins on prepared predictions."""

import json

import numpy as np
import pytest
from matl_keras_plugins.evaluators.leep import LEEP
from matl_keras_plugins.evaluators.metrics import ClassificationMetrics
from sklearn import metrics as sk

from matl_keras.errors import ConfigError
from matl_keras.evaluation.evaluator import EvalContext


def _context(
    labels, probs, class_names=("CT_COVID", "CT_NonCOVID"), positive=0
):
    context = EvalContext(
        model=None,
        data=None,
        split="test",
        class_names=class_names,
        positive_index=positive,
    )
    context._cache = (labels, probs)
    return context


def _binary(seed=0, n=150):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    p = np.clip(
        0.5 + 0.35 * (labels == 0) - 0.175 + rng.normal(0, 0.25, n), 0.01, 0.99
    )
    return labels, np.stack([p, 1 - p], 1)


def test_metrics_report_positive_class_intervals_matrix_and_roc():
    labels, probs = _binary()
    out = dict(
        ClassificationMetrics(bootstrap_samples=200, seed=3).run(
            _context(labels, probs)
        )
    )
    json.dumps(out, allow_nan=False)  # strict JSON: NaN/inf became null
    # Positive class from the dataset: CT_COVID (index 0).
    assert out["positive_class"] == "CT_COVID"
    predicted = probs.argmax(1)
    assert out["f1"] == pytest.approx(
        sk.f1_score(labels, predicted, pos_label=0)
    )
    assert out["auc"] == pytest.approx(
        sk.roc_auc_score(labels == 0, probs[:, 0])
    )
    assert out["sensitivity"] == pytest.approx(
        sk.recall_score(labels, predicted, pos_label=0)
    )
    for name in ("accuracy", "f1", "auc", "sensitivity", "specificity"):
        low, high = out[f"{name}_ci"]
        assert low <= out[name] <= high, name
    # The same seed gives the same intervals, another seed others.
    again = dict(
        ClassificationMetrics(bootstrap_samples=200, seed=3).run(
            _context(labels, probs)
        )
    )
    other = dict(
        ClassificationMetrics(bootstrap_samples=200, seed=4).run(
            _context(labels, probs)
        )
    )
    assert again["auc_ci"] == out["auc_ci"] != other["auc_ci"]
    assert out["ci"]["samples"] == 200
    np.testing.assert_array_equal(
        out["confusion_matrix"]["counts"],
        sk.confusion_matrix(labels, predicted),
    )
    fpr, tpr, _ = sk.roc_curve(
        labels == 0, probs[:, 0], drop_intermediate=False
    )
    np.testing.assert_allclose(out["roc"]["CT_COVID"]["fpr"], fpr)
    np.testing.assert_allclose(out["roc"]["CT_COVID"]["tpr"], tpr)
    assert out["roc"]["CT_COVID"]["thresholds"][0] is None


def test_metrics_positive_class_by_name_and_errors():
    labels, probs = _binary(1)
    out = dict(
        ClassificationMetrics(
            positive_class="CT_NonCOVID", bootstrap_samples=0
        ).run(_context(labels, probs))
    )
    assert out["auc"] == pytest.approx(
        sk.roc_auc_score(labels == 1, probs[:, 1])
    )
    assert "auc_ci" not in out
    with pytest.raises(ConfigError, match="positive_class"):
        dict(
            ClassificationMetrics(positive_class="covid").run(
                _context(labels, probs)
            )
        )
    with pytest.raises(ConfigError, match="confidence"):
        ClassificationMetrics(confidence=95)


def test_multiclass_roc_per_class():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, 60)
    probs = rng.dirichlet(np.ones(3), 60)
    out = dict(
        ClassificationMetrics(bootstrap_samples=50).run(
            _context(labels, probs, ("a", "b", "c"), None)
        )
    )
    assert sorted(out["roc"]) == ["a", "b", "c"]
    assert "positive_class" not in out


def test_leep_plugin_on_source_predictions():
    labels = np.array([0, 1, 1, 0])
    probs = np.eye(3)[[2, 0, 0, 2]]
    out = dict(LEEP().run(_context(labels, probs)))
    assert out == {"leep": pytest.approx(0.0)}


def test_metrics_refuses_a_head_of_another_task():
    labels, probs = _binary(3, 20)
    three = np.concatenate([probs * 0.5, np.full((20, 1), 0.5)], axis=1)
    with pytest.raises(
        ConfigError, match="predicts 3 classes.*--evaluators=leep"
    ):
        dict(
            ClassificationMetrics(bootstrap_samples=0).run(
                _context(labels, three)
            )
        )


def test_metrics_figures_next_to_the_scores(tmp_path):
    from PIL import Image

    labels, probs = _binary(2)
    context = _context(labels, probs)
    context.workdir = str(tmp_path)
    out = dict(ClassificationMetrics(bootstrap_samples=0).run(context))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "test_confusion_matrix.png",
        "test_roc.png",
    ]
    for name in ("test_confusion_matrix.png", "test_roc.png"):
        image = np.asarray(Image.open(tmp_path / name).convert("L"))
        assert image.shape[0] > 200 and image.std() > 5
    assert "roc" in out  # the numbers stay in metrics.json
    context = _context(labels, probs)
    context.workdir, context.prefix = str(tmp_path), "evaluate_covid_ct_test"
    dict(ClassificationMetrics(bootstrap_samples=0).run(context))
    assert (tmp_path / "evaluate_covid_ct_test_roc.png").is_file()
    # Without a workdir (per-epoch scoring), nothing is written.
    dict(
        ClassificationMetrics(bootstrap_samples=0).run(_context(labels, probs))
    )
    assert len(list(tmp_path.iterdir())) == 4


def test_metrics_score_the_split_at_the_val_fitted_decision():
    from matl_keras.evaluation import operating_point

    val_y, val_p = _binary(5)
    test_y, test_p = _binary(6)
    decision = operating_point.fit_decision(
        val_y,
        val_p,
        0,
        ["CT_COVID", "CT_NonCOVID"],
        rule="specificity",
        target=0.9,
    )
    context = _context(test_y, test_p)
    plain = dict(ClassificationMetrics(bootstrap_samples=100).run(context))
    assert "operating_point" not in plain
    context.decision = decision
    out = dict(ClassificationMetrics(bootstrap_samples=100).run(context))
    json.dumps(out, allow_nan=False)
    at = out["operating_point"]
    # Argmax scores stay; the decision's are beside them, at val's threshold.
    assert out["sensitivity"] == plain["sensitivity"]
    assert at["threshold"] == decision["threshold"] and at["fitted_on"] == "val"
    _, decided = operating_point.apply(decision, test_p)
    assert at["specificity"] == pytest.approx(
        np.mean(decided[test_y == 1] == 1)
    )
    assert at["sensitivity"] == pytest.approx(
        np.mean(decided[test_y == 0] == 0)
    )
    for name in ("accuracy", "f1", "sensitivity", "specificity"):
        low, high = at[f"{name}_ci"]
        assert low <= at[name] <= high, name
    assert set(at["calibration"]) >= {
        "ece_before",
        "ece_after",
        "brier_before",
        "brier_after",
    }


def test_gradcam_evaluator_titles_both_labels_and_scores_lung_mass(
    tmp_path, monkeypatch
):
    import keras
    import tensorflow as tf
    from matl_keras_plugins.evaluators import gradcam as gradcam_plugin
    from matl_keras_plugins.evaluators.attention_maps import AttentionMaps

    from matl_keras.evaluation import explain
    from matl_keras.models.resnet.resnet_backbone import ResNetBackbone
    from matl_keras.models.resnet.resnet_image_classifier import (
        build_image_classifier,
    )
    from tests.plugins.plugin_testing import phantom as _phantom

    # lung_mass: a heatmap inside the phantom's lungs scores ~1, one on the
    # text label in the corner ~0.
    image, box = _phantom(64)
    inside = np.zeros((64, 64), np.float32)
    y0, x0, y1, x1 = (box * 64).astype(int)
    inside[(y0 + y1) // 2 - 2 : (y0 + y1) // 2 + 2, x0 + 3 : x0 + 8] = 1.0
    corner = np.zeros((64, 64), np.float32)
    corner[1:4, 1:6] = 1.0
    shares, boxes, found = gradcam_plugin.lung_mass(
        np.stack([image, image]), np.stack([inside, corner])
    )
    assert found == [True, True]
    assert shares[0] == pytest.approx(1.0) and shares[1] == pytest.approx(0.0)
    # Chance: what a uniform map would score, the lung box's area.
    area = (boxes[0]["box"][2] - boxes[0]["box"][0]) * (
        boxes[0]["box"][3] - boxes[0]["box"][1]
    )
    assert boxes[0]["chance"] == pytest.approx(area, abs=0.05)

    titles = []
    real_write = explain.write_row
    monkeypatch.setattr(
        explain,
        "write_row",
        lambda path, *a, **k: titles.append(a[3]) or real_write(path, *a, **k),
    )
    # Seeded: an unlucky random init can give an all-zero Grad-CAM (ReLU of
    # negative evidence), whose lung mass is undefined (None).
    keras.utils.set_random_seed(0)
    model = build_image_classifier(
        ResNetBackbone(18, 0.25, 64, attention="5"), 2
    )
    images = np.stack([image, image[::-1]]).astype(np.float32)
    data = tf.data.Dataset.from_tensor_slices((images, np.array([1, 0]))).batch(
        2
    )
    context = EvalContext(
        model=model,
        data=data,
        split="val",
        class_names=("NonCOVID", "COVID"),
        positive_index=1,
        workdir=str(tmp_path),
    )
    out = dict(gradcam_plugin.GradCAM(num_images=2).run(context))["gradcam"]
    predicted = model.predict(images, verbose=0).argmax(1)
    names = ("NonCOVID", "COVID")
    assert titles[0].startswith(
        f"val #0: true COVID, predicted {names[predicted[0]]}"
    )
    assert titles[1].startswith(
        f"val #1: true NonCOVID, predicted {names[predicted[1]]}"
    )
    assert (
        out["layer"] == "conv4_block2_nonlocal" and "2x2" in out["layer_note"]
    )
    saved = json.load(open(tmp_path / "explain" / "val" / "explain.json"))
    assert [r["true"] for r in saved["per_image"]] == ["COVID", "NonCOVID"]
    assert (
        0.0 <= saved["lung_mass_mean"] <= 1.0
        and saved["lung_mass_mean"] == out["lung_mass_mean"]
    )
    assert 0.0 < saved["lung_mass_chance_mean"] < 1.0
    dict(AttentionMaps(num_images=2).run(context))
    assert titles[-1].startswith(
        f"val #1: true NonCOVID, predicted {names[predicted[1]]}"
    )
