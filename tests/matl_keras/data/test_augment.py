"""Augmentation recipes: shapes, range, randomness, eager vs tf.data."""

import numpy as np
import pytest
import tensorflow as tf

from matl_keras.data import augment
from matl_keras.errors import ConfigError

IMAGE = tf.constant(
    np.random.default_rng(0).uniform(0, 1, (37, 37, 3)).astype("float32")
)


@pytest.mark.parametrize("name", sorted(augment.RECIPES))
def test_recipes_give_the_size_and_range_eagerly_and_in_tf_data(name):
    fn = augment.get_augment(name, 32, seed=1)
    eager = fn(IMAGE)
    assert eager.shape == (32, 32, 3)
    graph = list(tf.data.Dataset.from_tensors(IMAGE).repeat(6).map(fn))
    for out in [eager] + graph:
        out = out.numpy()
        assert out.shape == (32, 32, 3)
        assert out.min() >= 0.0 and out.max() <= 1.0
    if name != "none":
        # Random per example: not every output is the same.
        assert len({o.numpy().tobytes() for o in graph}) > 1


def test_none_is_the_center_crop():
    out = augment.get_augment("none", 33)(IMAGE).numpy()
    np.testing.assert_array_equal(out, IMAGE.numpy()[2:35, 2:35])


def test_with_probability_extremes():
    double = lambda x: x * 2.0  # noqa: E731
    np.testing.assert_array_equal(augment.with_probability(double, 0.0)(IMAGE), IMAGE)
    np.testing.assert_allclose(
        augment.with_probability(double, 1.0)(IMAGE), np.clip(IMAGE * 2, 0, 1)
    )
    rates = [
        float(tf.reduce_any(augment.with_probability(double, 0.5)(IMAGE) != IMAGE))
        for _ in range(200)
    ]
    assert 0.35 < np.mean(rates) < 0.65
    with pytest.raises(ConfigError, match="p"):
        augment.with_probability(double, 2.0)


def test_unknown_recipe_lists_the_known_ones():
    with pytest.raises(ConfigError, match="moco_v2"):
        augment.get_augment("autoaugment", 32)
