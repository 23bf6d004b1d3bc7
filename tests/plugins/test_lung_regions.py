"""The Generator of Eq. 4 on phantoms with known lungs and on real CT."""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf
from matl_keras_plugins.ssl_methods import lung_regions

from matl_keras.data import decode
from tests.conftest import shared_data
from tests.plugins.plugin_testing import phantom as _phantom


def _iou(a, b):
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(
        0, min(a[3], b[3]) - max(a[1], b[1])
    )
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


@pytest.mark.parametrize(
    "size, shift", [(160, (0, 0)), (96, (6, -8)), (300, (-20, 15))]
)
def test_lung_box_of_phantoms(size, shift):
    image, truth = _phantom(size, shift)
    box, found = lung_regions.lung_box(image, return_found=True)
    assert bool(found)
    assert _iou(box.numpy(), truth) >= 0.9, (box.numpy(), truth)


def test_regions_land_on_their_lobes():
    image, truth = _phantom()
    boxes = lung_regions.region_boxes(lung_regions.lung_box(image)).numpy()
    centers_y = (boxes[:, 0] + boxes[:, 2]) / 2
    centers_x = (boxes[:, 1] + boxes[:, 3]) / 2
    mid_x = (truth[1] + truth[3]) / 2
    # Radiological: the patient's right lung (regions 0-2) on the image's left.
    assert (centers_x[:3] < mid_x).all() and (centers_x[3:] > mid_x).all()
    assert centers_y[0] < centers_y[1] < centers_y[2]  # upper, middle, lower
    assert centers_y[3] < centers_y[4]
    mirrored = lung_regions.region_boxes(
        lung_regions.lung_box(image), "neurological"
    ).numpy()
    assert (((mirrored[:3, 1] + mirrored[:3, 3]) / 2) > mid_x).all()
    with pytest.raises(ValueError, match="orientation"):
        lung_regions.region_boxes(lung_regions.lung_box(image), "sideways")


def test_boundary_map_is_the_3x3_distinct_value_rule():
    binary = np.zeros((7, 7), np.float32)
    binary[2:5, 2:5] = 1.0
    edges = lung_regions.boundary_map(tf.constant(binary)).numpy()
    expected = np.zeros((7, 7), bool)
    expected[1:6, 1:6] = True
    expected[3, 3] = False  # its whole window is 1
    np.testing.assert_array_equal(edges, expected)


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((64, 64, 3)),
        np.ones((64, 64, 3)),
        np.random.default_rng(0).uniform(size=(64, 64, 3)),
    ],
)
def test_no_lung_falls_back_to_the_central_box(image):
    box, found = lung_regions.lung_box(
        image.astype(np.float32), return_found=True
    )
    assert not bool(found)
    np.testing.assert_allclose(box.numpy(), [0.1, 0.1, 0.9, 0.9])


def test_generate_regions_in_a_graph_and_in_tf_data():
    image, _ = _phantom(96)
    crops = tf.function(lambda x: lung_regions.generate_regions(x, 48))(image)
    assert crops.shape == (5, 48, 48, 3)
    data = tf.data.Dataset.from_tensors(image).map(
        lambda x: lung_regions.generate_regions(x, 32)
    )
    assert next(iter(data)).shape == (5, 32, 32, 3)


def test_real_ct_slices_give_five_crops_inside_the_image():
    root = shared_data("covid-ct")
    files = sorted(glob.glob(os.path.join(root, "**", "*.png"), recursive=True))
    assert files

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.float32)])
    def generate(image):
        box, ok = lung_regions.lung_box(image, return_found=True)
        boxes = lung_regions.region_boxes(box)
        crops = tf.image.crop_and_resize(
            image[None], boxes, tf.zeros([5], tf.int32), [32, 32]
        )
        return boxes, ok, crops

    found = 0
    for path in files:
        boxes, ok, crops = generate(decode.decode_image(tf.io.read_file(path)))
        boxes, crops = boxes.numpy(), crops.numpy()
        assert (boxes >= 0).all() and (boxes <= 1).all(), path
        assert (boxes[:, 2] - boxes[:, 0] > 0.05).all(), path
        assert (boxes[:, 3] - boxes[:, 1] > 0.05).all(), path
        assert (
            np.isfinite(crops).all() and crops.std(axis=(1, 2, 3)).min() > 0
        ), path
        found += bool(ok)
    print(f"lung found on {found}/{len(files)} real slices")
    # The lung is located on nearly every real slice (fallback otherwise).
    assert found / len(files) > 0.9, found / len(files)
