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


def _chain(steps: list[Augment], size: int) -> Augment:
    """Applies `steps` in order; the result is `(size, size, 3)`."""

    def augment(image: tf.Tensor) -> tf.Tensor:
        for step in steps:
            image = step(image)
        image.set_shape([size, size, 3])
        return image

    return augment


def _crop_flip(size: int, seed: int | None) -> Augment:
    """STL-N (He et al. 2016): random `size` crop of the resized image and a
    horizontal flip with p=0.5."""
    crop = keras.layers.RandomCrop(size, size, seed=seed)
    flip = keras.layers.RandomFlip("horizontal", seed=seed)
    # One lambda per line: AutoGraph cannot tell two apart on one line.
    steps = [
        lambda x: crop(x, training=True),
        lambda x: flip(x, training=True),
    ]
    return _chain(steps, size)


def with_probability(transform: Augment, p: float) -> Augment:
    """Applies `transform` to an image with probability `p` (Keras 3 core
    has no RandomApply; its layers always apply when training)."""
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"`p` must be in [0, 1]. Received: p={p}")

    def apply(image: tf.Tensor) -> tf.Tensor:
        return tf.cond(
            tf.random.uniform([]) < p,
            lambda: tf.clip_by_value(transform(image), 0.0, 1.0),
            lambda: image,
        )

    return apply


def _stl_m(size: int, seed: int | None) -> Augment:
    """STL-M (paper section 6.2, chest X-rays): translation, rotation,
    horizontal flip and intensity shift, each with p=0.5, on the centre crop.
    The magnitudes (10% shift, 10 degrees, 0.1 intensity) are the paper's
    unstated values made explicit."""
    translate = keras.layers.RandomTranslation(
        0.1, 0.1, fill_mode="constant", seed=seed
    )
    rotate = keras.layers.RandomRotation(
        10.0 / 360.0, fill_mode="constant", seed=seed
    )
    flip = keras.layers.RandomFlip("horizontal", seed=seed)
    shift = keras.layers.RandomBrightness(0.1, value_range=(0.0, 1.0), seed=seed)
    steps = [
        lambda x: center_crop(x, size),
        with_probability(lambda x: translate(x, training=True), 0.5),
        with_probability(lambda x: rotate(x, training=True), 0.5),
        lambda x: flip(x, training=True),  # RandomFlip already flips half
        with_probability(lambda x: shift(x, training=True), 0.5),
    ]
    return _chain(steps, size)


def _moco_v2(size: int, seed: int | None) -> Augment:
    """SSTL-M and target fine-tuning (paper section 6.2, after MoCo): random
    `size` crop of the resized image, then colour jitter, horizontal flip
    and grayscale conversion, each with p=0.5."""
    crop = keras.layers.RandomCrop(size, size, seed=seed)
    jitter = keras.layers.RandomColorJitter(
        value_range=(0.0, 1.0),
        brightness_factor=0.4,
        contrast_factor=0.4,
        saturation_factor=0.4,
        hue_factor=0.1,
        seed=seed,
    )
    flip = keras.layers.RandomFlip("horizontal", seed=seed)
    gray = keras.layers.RandomGrayscale(factor=1.0, seed=seed)
    steps = [
        lambda x: crop(x, training=True),
        with_probability(lambda x: jitter(x, training=True), 0.5),
        lambda x: flip(x, training=True),
        with_probability(lambda x: gray(x, training=True), 0.5),
    ]
    return _chain(steps, size)


def _none(size: int, seed: int | None) -> Augment:
    del seed
    return lambda image: center_crop(image, size)


RECIPES: dict[str, Callable[[int, int | None], Augment]] = {
    "none": _none,
    "crop_flip": _crop_flip,
    "stl_m": _stl_m,
    "moco_v2": _moco_v2,
}


def get_augment(name: str, size: int, seed: int | None = None) -> Augment:
    """The augmentation recipe `name` for output size `size`."""
    if name not in RECIPES:
        raise ConfigError(
            f"`augment` must be one of {sorted(RECIPES)}. Received: "
            f"augment={name!r}"
        )
    return RECIPES[name](size, seed)
