"""Functional ResNets: keras.applications compatibility, shapes, config."""

import keras
import numpy as np
import pytest

from matl_keras.layers.input_normalization import InputNormalization
from matl_keras.models.resnet.resnet_backbone import ResNetBackbone
from matl_keras.models.resnet.resnet_image_classifier import (
    build_image_classifier,
)


@pytest.mark.parametrize(
    "depth, application",
    [(50, keras.applications.ResNet50), (101, keras.applications.ResNet101)],
)
def test_matches_keras_applications_layer_by_layer(depth, application):
    ours = ResNetBackbone(depth=depth, image_size=64)
    theirs = application(
        weights=None, include_top=False, input_shape=(64, 64, 3)
    )
    assert ours.count_params() == theirs.count_params()
    ours_layers = [
        (l.name, [w.shape for w in l.weights]) for l in ours.layers if l.weights
    ]
    theirs_layers = [
        (l.name, [w.shape for w in l.weights])
        for l in theirs.layers
        if l.weights
    ]
    assert ours_layers == theirs_layers


def test_same_weights_give_keras_applications_features():
    ours = ResNetBackbone(depth=50, image_size=64)
    theirs = keras.applications.ResNet50(
        weights=None, include_top=False, input_shape=(64, 64, 3)
    )
    # Make BN statistics non-trivial so that the check means something.
    rng = np.random.default_rng(0)
    weights = [
        w + rng.normal(0, 0.01, w.shape).astype(w.dtype)
        for w in theirs.get_weights()
    ]
    theirs.set_weights(weights)
    ours.set_weights(weights)
    images = rng.uniform(0, 1, (2, 64, 64, 3)).astype("float32")
    expected = theirs(
        keras.applications.resnet.preprocess_input(images * 255.0)
    )
    np.testing.assert_allclose(ours(images), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "depth, channels", [(18, 128), (34, 128), (50, 512), (101, 512)]
)
def test_output_and_pyramid_shapes(depth, channels):
    backbone = ResNetBackbone(depth=depth, width_multiplier=0.25, image_size=64)
    out = backbone(np.zeros((2, 64, 64, 3), "float32"))
    assert tuple(out.shape) == (2, 2, 2, channels)
    assert sorted(backbone.pyramid_outputs) == ["P2", "P3", "P4", "P5"]
    assert tuple(backbone.pyramid_outputs["P2"].shape) == (
        None,
        16,
        16,
        channels // 8,
    )


def test_width_multiplier_shrinks_channels():
    full = ResNetBackbone(depth=18, image_size=32)
    quarter = ResNetBackbone(depth=18, width_multiplier=0.25, image_size=32)
    assert full.output.shape[-1] == 512 and quarter.output.shape[-1] == 128
    assert quarter.count_params() < full.count_params() / 10


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="Received: depth=20"):
        ResNetBackbone(depth=20)
    with pytest.raises(ValueError, match="width_multiplier"):
        ResNetBackbone(depth=18, width_multiplier=0)
    with pytest.raises(ValueError, match="mode"):
        InputNormalization("bgr")


def test_config_round_trip():
    backbone = ResNetBackbone(depth=18, width_multiplier=0.25, image_size=32)
    clone = ResNetBackbone.from_config(backbone.get_config())
    assert clone.get_config() == backbone.get_config()
    assert clone.count_params() == backbone.count_params()


def test_classifier_is_flat_and_saves(tmp_path):
    backbone = ResNetBackbone(depth=18, width_multiplier=0.25, image_size=32)
    model = build_image_classifier(backbone, num_classes=3, dropout=0.2)
    assert not any(isinstance(l, keras.Model) for l in model.layers)
    assert model.get_layer("conv5_block2_out") is backbone.get_layer(
        "conv5_block2_out"
    )
    x = np.random.default_rng(0).uniform(0, 1, (2, 32, 32, 3)).astype("float32")
    probs = model(x)
    assert tuple(probs.shape) == (2, 3)
    np.testing.assert_allclose(np.sum(probs, axis=1), 1.0, rtol=1e-5)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(loaded(x), probs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["caffe", "imagenet", "unit"])
def test_input_normalization_modes(mode):
    x = np.full((1, 2, 2, 3), 0.5, "float32")
    x[..., 0] = 1.0
    y = np.asarray(InputNormalization(mode)(x))
    if mode == "caffe":
        expected = keras.applications.resnet.preprocess_input(x * 255.0)
    elif mode == "imagenet":
        expected = (x - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    else:
        expected = x * 2 - 1
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-4)


def _tiny_scale_backbone():
    """Features of a self-supervised backbone's scale (std ~0.01): the
    pooled value of channel c is 0.02 * the image's mean of channel c."""
    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Rescaling(0.02)(inputs)
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize("head_norm", [True, False])
def test_head_norm_lets_a_new_head_learn_on_small_features(head_norm):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 256)
    # Class 1 is brighter in channel 0: separable by one pooled feature.
    x = rng.uniform(0, 1, (256, 8, 8, 3)).astype("float32")
    x[:, :, :, 0] += labels[:, None, None]
    model = build_image_classifier(
        _tiny_scale_backbone(), 2, dropout=0.0, head_norm=head_norm
    )
    assert ("head_norm" in [l.name for l in model.layers]) == head_norm
    model.compile(
        optimizer=keras.optimizers.SGD(0.05),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    history = model.fit(x, labels, batch_size=32, epochs=6, verbose=0)
    accuracy = history.history["accuracy"][-1]
    # Without the normalisation the logits move by ~0.02 per unit weight:
    # six epochs at a fine-tuning learning rate leave it at chance.
    assert (accuracy > 0.9) if head_norm else (accuracy < 0.7)
