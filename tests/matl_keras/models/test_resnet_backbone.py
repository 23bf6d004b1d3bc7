"""Functional ResNets: keras.applications compatibility, shapes, config."""

import keras
import numpy as np
import pytest

from matl_keras.errors import ConfigError
from matl_keras.layers.input_normalization import InputNormalization
from matl_keras.models import backbone_weights
from matl_keras.models.resnet.resnet_backbone import ResNetBackbone
from matl_keras.models.resnet.resnet_image_classifier import (
    build_image_classifier,
)


@pytest.mark.parametrize(
    "depth, application",
    [(50, keras.applications.ResNet50), (101, keras.applications.ResNet101)],
)
def test_matches_keras_applications_layer_by_layer(depth, application):
    theirs = application(
        weights=None, include_top=False, input_shape=(64, 64, 3)
    )
    theirs_layers = [
        (l.name, [w.shape for w in l.weights])
        for l in theirs.layers
        if l.weights
    ]
    # conv_bias=True: keras.applications' layout exactly.
    biased = ResNetBackbone(depth=depth, image_size=64, conv_bias=True)
    assert biased.count_params() == theirs.count_params()
    assert [
        (l.name, [w.shape for w in l.weights])
        for l in biased.layers
        if l.weights
    ] == theirs_layers
    # The default: the same layers, the convolutions without their bias.
    ours = ResNetBackbone(depth=depth, image_size=64)
    without_bias = [
        (n, shapes[:1] if n.endswith("_conv") else shapes)
        for n, shapes in theirs_layers
    ]
    assert [
        (l.name, [w.shape for w in l.weights]) for l in ours.layers if l.weights
    ] == without_bias


def _perturbed_applications_resnet50(rng):
    theirs = keras.applications.ResNet50(
        weights=None, include_top=False, input_shape=(64, 64, 3)
    )
    # Non-trivial BN statistics and conv biases, so the check means
    # something.
    theirs.set_weights(
        [
            w + rng.normal(0, 0.01, w.shape).astype(w.dtype)
            for w in theirs.get_weights()
        ]
    )
    return theirs


def test_same_weights_give_keras_applications_features():
    rng = np.random.default_rng(0)
    theirs = _perturbed_applications_resnet50(rng)
    images = rng.uniform(0, 1, (2, 64, 64, 3)).astype("float32")
    inputs = keras.applications.resnet.preprocess_input(images * 255.0)
    expected = theirs(inputs)
    biased = ResNetBackbone(depth=50, image_size=64, conv_bias=True)
    biased.set_weights(theirs.get_weights())
    np.testing.assert_allclose(biased(images), expected, rtol=1e-4, atol=1e-4)
    # Bias-free: each bias folded into its BatchNorm's moving mean gives
    # the same features in inference, and in training (batch statistics).
    ours = ResNetBackbone(depth=50, image_size=64)
    backbone_weights.copy_folding_conv_biases(theirs, ours)
    np.testing.assert_allclose(ours(images), expected, rtol=1e-4, atol=1e-4)
    # (Relative to the features' scale: at 2 x 2 positions x 2 images the
    # last stages' batch variances are tiny, and 50 layers of them amplify
    # float rounding to ~1e-3 of the largest feature, bias or not.)
    trained = ours(images, training=True).numpy()
    reference = biased(images, training=True).numpy()
    scale = np.abs(reference).max()
    assert np.abs(trained - reference).max() < 2e-3 * scale
    # Without the fold, inference would differ: the check can fail.
    unfolded = ResNetBackbone(depth=50, image_size=64)
    unfolded.set_weights(
        [
            w
            for w, v in zip(theirs.get_weights(), theirs.weights)
            if not (v.path.endswith("bias") and "_conv" in v.path)
        ]
    )
    assert np.abs(unfolded(images) - expected).max() > 1e-2


def test_a_file_with_conv_biases_loads_into_a_bias_free_backbone(tmp_path):
    """Weights files of earlier versions (conv biases) keep loading, folded:
    an R-18's stem bias, a R-50's every bias."""
    rng = np.random.default_rng(1)
    images = rng.uniform(0, 1, (2, 64, 64, 3)).astype("float32")
    for depth in (18, 50):
        old = ResNetBackbone(
            depth=depth, width_multiplier=0.25, image_size=64, conv_bias=True
        )
        old.set_weights(
            [
                w + rng.normal(0, 0.05, w.shape).astype(w.dtype)
                for w in old.get_weights()
            ]
        )
        path = str(tmp_path / f"old{depth}.weights.h5")
        old.save_weights(path)
        new = ResNetBackbone(depth=depth, width_multiplier=0.25, image_size=64)
        assert new.count_params() < old.count_params()
        backbone_weights.load_backbone(new, path)
        expected = old(images).numpy()
        np.testing.assert_allclose(
            new(images), expected, atol=1e-5 * np.abs(expected).max()
        )
        # And the other way round is refused, naming the file.
        path = str(tmp_path / f"new{depth}.weights.h5")
        new.save_weights(path)
        with pytest.raises(ConfigError, match=f"new{depth}.weights.h5"):
            backbone_weights.load_backbone(old, path)


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
    assert clone.conv_bias is False
    # A config saved before `conv_bias` existed is the layout with biases.
    config = backbone.get_config()
    del config["conv_bias"]
    assert ResNetBackbone.from_config(config).conv_bias is True


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
