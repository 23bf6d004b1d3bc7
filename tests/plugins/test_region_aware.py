"""region_aware's `region_size`: smaller crops for the region branch (issue
21), validated, with the shapes and the region loss they give. Exactness
under MirroredStrategy with half-size crops: test_contrastive."""

import numpy as np
import pytest
import tensorflow as tf
from matl_keras_plugins.ssl_methods.region_aware import RegionAware

from matl_keras.errors import ConfigError
from tests.matl_keras.training.ssl_testing import SIZE
from tests.matl_keras.training.ssl_testing import build as _build
from tests.matl_keras.training.ssl_testing import data as _data
from tests.plugins.plugin_testing import phantom as _phantom


@pytest.mark.parametrize("bad", [0, -16, SIZE + 1, 16.0, True, "16"])
def test_region_size_must_be_a_positive_int_at_most_the_image_size(bad):
    with pytest.raises(
        ConfigError,
        match=(
            rf"`region_size` must be .*at most `image_size` \({SIZE}\)"
            rf".*region_size={bad!r}"
        ),
    ):
        _build(RegionAware, region_size=bad)


def test_default_is_the_full_image_size():
    model = _build(RegionAware)
    assert model.region_size == SIZE
    assert model.region_load_size == round(SIZE / 0.875)
    assert model.run_record()["region_size"] == SIZE


@pytest.mark.parametrize("augment_regions", [True, False])
def test_half_size_crops_reach_the_backbone_and_the_region_loss(
    augment_regions,
):
    half = SIZE // 2
    model = _build(
        RegionAware, region_size=half, augment_regions=augment_regions
    )
    # Cut and cached at the crops' own load size.
    assert model.region_load_size == round(half / 0.875)
    full = tf.constant(_phantom(120)[0])
    element = {"image": tf.image.resize(full, [37, 37]), **model.prepare(full)}
    assert element["regions"].shape == (
        5,
        model.region_load_size,
        model.region_load_size,
        3,
    )
    views = model.views(element, tf.constant([0, 1], tf.int64))
    assert views["query"].shape == views["key"].shape == (SIZE, SIZE, 3)
    assert views["regions"].shape == (5, half, half, 3)
    # The region classifier trains on the small crops: two steps, finite
    # losses.
    model.compile(optimizer="sgd", jit_compile=False)
    history = model.fit(
        _data(RegionAware, region_size=half), epochs=1, verbose=0, shuffle=False
    ).history
    assert np.isfinite(history["loss"][0]) and np.isfinite(
        history["region_loss"][0]
    )
    assert 0.0 <= history["region_accuracy"][0] <= 1.0
