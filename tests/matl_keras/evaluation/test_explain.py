"""Grad-CAM on a model whose answer is known; attention maps; Fig. 4 rows."""

import keras
import numpy as np
import pytest
from PIL import Image

from matl_keras.evaluation import explain
from matl_keras.models.resnet import attention_maps
from matl_keras.models.resnet.resnet_backbone import ResNetBackbone
from matl_keras.models.resnet.resnet_image_classifier import (
    build_image_classifier,
)


def _corner_detector():
    """Class 1's evidence is brightness: its logit is the mean of an 8x8
    brightness map, so Grad-CAM for class 1 is that map and peaks where the
    image is bright."""
    images = keras.Input((32, 32, 3))
    bright = keras.layers.Conv2D(
        1,
        1,
        activation="relu",
        name="bright",
        kernel_initializer=keras.initializers.Constant(1 / 3),
    )(images)
    grid = keras.layers.AveragePooling2D(4, name="conv5_block1_out")(bright)
    pooled = keras.layers.GlobalAveragePooling2D(name="avg_pool")(grid)
    logits = keras.layers.Dense(2, activation="softmax", name="predictions")(
        pooled
    )
    model = keras.Model(images, logits)
    model.get_layer("predictions").set_weights(
        [np.array([[-4.0, 4.0]]), np.zeros(2)]
    )
    return model


@pytest.mark.parametrize("corner", ["top_left", "bottom_right"])
def test_gradcam_peaks_where_the_class_evidence_is(corner):
    model = _corner_detector()
    image = np.full((1, 32, 32, 3), 0.05, np.float32)
    if corner == "top_left":
        image[0, 2:10, 3:11] = 1.0
    else:
        image[0, 22:30, 21:29] = 1.0
    assert explain.gradcam_layer(model) == "conv5_block1_out"
    cam = explain.gradcam(model, image, class_index=1)
    assert cam.shape == (1, 32, 32)
    assert 0.0 <= cam.min() and cam.max() == pytest.approx(1.0, abs=1e-4)
    y, x = np.unravel_index(cam[0].argmax(), (32, 32))
    assert (
        (y < 16 and x < 16) if corner == "top_left" else (y >= 16 and x >= 16)
    )
    # The far quadrant carries (almost) nothing.
    far = cam[0, 16:, 16:] if corner == "top_left" else cam[0, :16, :16]
    assert far.max() < 0.2
    # The caller's model still ends in a softmax (tf-keras-vis edits a clone).
    assert model.get_layer("predictions").activation.__name__ == "softmax"
    # Predicted class by default: class 1 for a bright image.
    np.testing.assert_allclose(explain.gradcam(model, image), cam, atol=1e-6)


def test_gradcam_layer_of_a_resnet_and_unknown_layers():
    # Large enough: the last feature map before pooling, i.e. the output of
    # the res5 attention block (the paper's Fig. 4), not the block's input.
    big = build_image_classifier(
        ResNetBackbone(18, 0.25, 128, attention="5"), 2
    )
    assert explain.choose_gradcam_layer(big) == ("conv5_block2_nonlocal", None)
    plain = build_image_classifier(ResNetBackbone(18, 0.25, 128), 2)
    assert explain.gradcam_layer(plain) == "conv5_block2_out"
    # At 64 px res5 is 2x2: the deepest map with >= 3x3 positions, and why.
    model = build_image_classifier(
        ResNetBackbone(18, 0.25, 64, attention="5"), 2
    )
    layer, note = explain.choose_gradcam_layer(model)
    assert layer == "conv4_block2_nonlocal"
    assert "has 2x2 positions" in note and "(4x4)" in note
    assert explain.last_block_name(model) == "conv5_block2_nonlocal"
    # A layer named by the caller that is too small is refused with the reason.
    with pytest.raises(
        ValueError, match="2x2 positions.*try 'conv4_block2_nonlocal'"
    ):
        explain.GradCAM(model, "conv5_block2_out")
    with pytest.raises(ValueError, match="No such layer: nope"):
        explain.gradcam(
            model, np.zeros((1, 64, 64, 3), np.float32), 0, layer="nope"
        )
    with pytest.raises(ValueError, match="convN_blockM_out"):
        explain.gradcam_layer(_plain())
    # A model where nothing has 3x3 positions: refused, not blank.
    images = keras.Input((8, 8, 3))
    small = keras.layers.Conv2D(4, 3, strides=4, name="conv5_block1_out")(
        images
    )
    pooled = keras.layers.GlobalAveragePooling2D(name="avg_pool")(small)
    tiny = keras.Model(
        images, keras.layers.Dense(2, activation="softmax")(pooled)
    )
    with pytest.raises(ValueError, match="Grad-CAM would be blank"):
        explain.GradCAM(tiny)


def test_one_centre_aligned_upsampling_for_both_panels():
    # Half-pixel centres: cell (1, 2) of a 4x4 map covers rows 8-15 and
    # columns 16-23 of a 32 px image, so its upsampled mass is centred on
    # (11.5, 19.5). A corner-aligned zoom (scipy.ndimage.zoom, as in
    # tf-keras-vis) centres it on (10.3, 20.7): off by a pixel or more.
    cell = np.zeros((1, 4, 4), np.float32)
    cell[0, 1, 2] = 1.0
    up = explain.upsample(cell, (32, 32))[0]
    weights = up / up.sum()
    assert (weights.sum(1) * np.arange(32)).sum() == pytest.approx(
        11.5, abs=1e-4
    )
    assert (weights.sum(0) * np.arange(32)).sum() == pytest.approx(
        19.5, abs=1e-4
    )
    # An edge cell stays on its own area: its peak and most of its mass lie
    # in rows 0-7, columns 24-31.
    edge = np.zeros((1, 4, 4), np.float32)
    edge[0, 0, 3] = 1.0
    up = explain.upsample(edge, (32, 32))[0]
    ys, xs = np.nonzero(up == up.max())
    assert ys.max() <= 7 and xs.min() >= 24
    assert up[:8, 24:].sum() / up.sum() > 0.5
    # Grad-CAM goes through it: the corner detector's map is its 8x8
    # brightness grid, so the Grad-CAM panel is exactly that grid upsampled.
    model = _corner_detector()
    image = np.full((1, 32, 32, 3), 0.05, np.float32)
    image[0, 0:4, 28:32] = 1.0  # one grid cell, at the image's corner
    grid = image[0, :, :, 0].reshape(8, 4, 8, 4).mean(axis=(1, 3))[None]
    cam = explain.gradcam(model, image, class_index=1)
    np.testing.assert_allclose(cam, explain.upsample(grid, (32, 32)), atol=1e-5)
    # The attention panel too.
    attn = build_image_classifier(
        ResNetBackbone(18, 0.25, 64, attention="5"), 2
    )
    x = np.random.default_rng(0).uniform(0, 1, (2, 64, 64, 3)).astype("float32")
    raw = attention_maps.attention_maps(attn, x)["conv5_block2_nonlocal"].mean(
        axis=1
    )
    side = int(np.sqrt(raw.shape[-1]))
    np.testing.assert_allclose(
        explain.attention_map(attn, x),
        explain.upsample(raw.reshape(2, side, side), (64, 64)),
        atol=1e-6,
    )


def test_mass_inside_a_box():
    heat = np.zeros((10, 10))
    heat[2:4, 2:4] = 1.0
    heat[8, 8] = 4.0
    assert explain.mass_inside(heat, (0.0, 0.0, 0.5, 0.5)) == pytest.approx(0.5)
    assert explain.mass_inside(heat, (0.0, 0.0, 1.0, 1.0)) == 1.0
    assert np.isnan(explain.mass_inside(np.zeros((4, 4)), (0, 0, 1, 1)))


def _plain():
    images = keras.Input((8, 8, 3))
    return keras.Model(
        images, keras.layers.Dense(2)(keras.layers.Flatten()(images))
    )


def test_attention_maps_shape_and_sums():
    model = build_image_classifier(
        ResNetBackbone(18, 0.25, 64, attention="5"), 2
    )
    x = np.random.default_rng(0).uniform(0, 1, (3, 64, 64, 3)).astype("float32")
    raw = attention_maps.attention_maps(model, x)["conv5_block2_nonlocal"]
    # Each query's attention is a distribution over keys, so their mean is too.
    np.testing.assert_allclose(raw.mean(axis=1).sum(axis=-1), 1.0, rtol=1e-5)
    shown = explain.attention_map(model, x)
    assert shown.shape == (3, 64, 64)  # the image's shape
    np.testing.assert_allclose(
        shown.min(axis=(1, 2)), 0.0, atol=1e-6
    )  # scaled to [0, 1]
    np.testing.assert_allclose(shown.max(axis=(1, 2)), 1.0, atol=1e-6)
    assert (
        explain.attention_map(
            build_image_classifier(ResNetBackbone(18, 0.25, 64), 2), x
        )
        is None
    )


def test_row_png_is_written_with_five_or_three_panels(tmp_path):
    image = np.random.default_rng(1).uniform(0, 1, (48, 48, 3))
    heat = np.linspace(0, 1, 48 * 48).reshape(48, 48)
    five = explain.write_row(
        str(tmp_path / "a" / "five.png"), image, heat, heat, "title"
    )
    three = explain.write_row(str(tmp_path / "three.png"), image, heat, None)
    wide, narrow = Image.open(five), Image.open(three)
    assert wide.size[0] > narrow.size[0] > 0
    pixels = np.asarray(wide.convert("RGB"), np.float32)
    assert pixels.std() > 10  # not a blank canvas
    over = explain.overlay(np.zeros((4, 4, 3)), np.ones((4, 4)))
    assert over.shape == (4, 4, 3) and over.max() > 0
