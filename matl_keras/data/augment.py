"""Training-time augmentation recipes, built from Keras 3 core layers.

A recipe maps a float32 `(load, load, 3)` image in [0, 1] to a
`(size, size, 3)` one. Recipes run per example inside `tf.data` (not per
batch): Keras' `RandomCrop` draws one offset for a whole batch, which would
give every image of a batch the same crop.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf

from matl_keras.errors import ConfigError

Augment = Callable[[tf.Tensor], tf.Tensor]


def center_crop(image: tf.Tensor, size: int) -> tf.Tensor:
    """Central `size` x `size` patch of a square image (evaluation)."""
    height = tf.shape(image)[0]
    width = tf.shape(image)[1]
    top = (height - size) // 2
    left = (width - size) // 2
    image = image[top : top + size, left : left + size, :]
    image.set_shape([size, size, 3])
    return image


def _crop_flip(size: int, seed: int | None) -> Augment:
    """STL-N (He et al. 2016): random `size` crop of the resized image and a
    horizontal flip with p=0.5."""
    crop = keras.layers.RandomCrop(size, size, seed=seed)
    flip = keras.layers.RandomFlip("horizontal", seed=seed)

    def augment(image: tf.Tensor) -> tf.Tensor:
        image = crop(image, training=True)
        image = flip(image, training=True)
        image.set_shape([size, size, 3])
        return image

    return augment


def _none(size: int, seed: int | None) -> Augment:
    del seed
    return lambda image: center_crop(image, size)


RECIPES: dict[str, Callable[[int, int | None], Augment]] = {
    "none": _none,
    "crop_flip": _crop_flip,
}


def get_augment(name: str, size: int, seed: int | None = None) -> Augment:
    """The augmentation recipe `name` for output size `size`."""
    if name not in RECIPES:
        raise ConfigError(
            f"`augment` must be one of {sorted(RECIPES)}. Received: "
            f"augment={name!r}"
        )
    return RECIPES[name](size, seed)
