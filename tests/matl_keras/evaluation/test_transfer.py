"""Transferability of earlier stages, scored on a target split."""

import numpy as np
import pytest
import tensorflow as tf
from matl_keras_plugins.evaluators.leep import LEEP

from matl_keras.evaluation import transfer
from matl_keras.evaluation.evaluator import EvalContext
from matl_keras.evaluation.leep import leep
from matl_keras.models.resnet.resnet_backbone import ResNetBackbone
from matl_keras.models.resnet.resnet_image_classifier import (
    build_image_classifier,
)


def _backbone(size=32):
    return ResNetBackbone(depth=10, width_multiplier=0.25, image_size=size)


def _target(n=24, size=32):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (n, size, size, 3)).astype(np.float32)
    labels = rng.integers(0, 2, n).astype(np.int32)
    return (
        images,
        labels,
        tf.data.Dataset.from_tensor_slices((images, labels)).batch(8),
    )


class _FeatureMean(LEEP):
    """A feature-only evaluator (like LogME): applies to backbones too."""

    needs_classifier = False

    def run(self, context):
        _, features = context.features()
        yield "feature_mean", float(features.mean())


def test_scores_classifier_backbone_and_untrained_sources(tmp_path):
    images, labels, data = _target()
    # A supervised source stage at another input size (48): resized.
    source = build_image_classifier(_backbone(48), 5)
    (tmp_path / "stl_m").mkdir()
    source.save(str(tmp_path / "stl_m" / "model.keras"))
    # A self-supervised source: backbone weights only.
    ssl = _backbone()
    (tmp_path / "sstl_m").mkdir()
    ssl.save_weights(str(tmp_path / "sstl_m" / "backbone.weights.h5"))
    untrained = build_image_classifier(_backbone(), 2)

    scores = transfer.score_sources(
        [
            {"stage": "stl_m", "workdir": str(tmp_path / "stl_m")},
            {"stage": "sstl_m", "workdir": str(tmp_path / "sstl_m")},
        ],
        untrained=untrained,
        build_backbone=_backbone,
        data=data,
        split="train",
        class_names=("NonCOVID", "COVID"),
        positive_index=1,
        evaluators=[LEEP(), _FeatureMean()],
    )
    assert list(scores) == ["untrained", "stl_m", "sstl_m"]
    resized = tf.image.resize(images, (48, 48))
    expected = leep(source.predict(resized, verbose=0), labels, 2)
    assert scores["stl_m"]["leep"] == pytest.approx(expected, rel=1e-5)
    assert scores["stl_m"]["kind"] == "classifier"
    assert scores["stl_m"]["source_classes"] == 5
    assert scores["untrained"]["leep"] == pytest.approx(
        leep(untrained.predict(images, verbose=0), labels, 2), rel=1e-5
    )
    # The backbone source gets the feature evaluator only, and its
    # features are those of the saved weights.
    assert "leep" not in scores["sstl_m"]
    assert scores["sstl_m"]["not_applicable"] == ["LEEP"]
    pooled = ssl.predict(images, verbose=0).mean(axis=(1, 2))
    assert scores["sstl_m"]["feature_mean"] == pytest.approx(
        float(pooled.mean()), rel=1e-4
    )


def test_missing_source_files_are_named(tmp_path):
    with pytest.raises(
        Exception, match="neither model.keras nor backbone.weights.h5"
    ):
        transfer.load_source(str(tmp_path), _backbone)


def test_backbone_context_has_no_predictions():
    _, _, data = _target(8)
    context = EvalContext(
        model=_backbone(), data=data, split="val", class_names=("a", "b")
    )
    with pytest.raises(ValueError, match="no classifier head"):
        context.predictions()
