"""tf.data input pipelines: dataset plugin -> decode -> resize -> cache ->
augment -> batch -> prefetch.

Images are decoded and resized once to the "load size" (image size divided
by the crop fraction, 256 for 224 as in the paper), cached as uint8 when they
fit in memory, and cropped per epoch: random crop for training, center crop
for evaluation. The evaluation transform here is the one the exported
serving graph uses too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dataclasses

import tensorflow as tf

from matl_keras.data import augment as augment_lib
from matl_keras.data import decode
from matl_keras.data.dataset import ArrayExamples
from matl_keras.data.dataset import Dataset
from matl_keras.data.dataset import FileExamples
from matl_keras.errors import ConfigError
from matl_keras.errors import DataError

AUTOTUNE = tf.data.AUTOTUNE
# Cache decoded images in memory when they take less than this.
AUTO_CACHE_BYTES = 2 * 1024**3


def load_size(image_size: int, crop_fraction: float) -> int:
    """Side the images are resized to before cropping `image_size`."""
    if not 0.0 < crop_fraction <= 1.0:
        raise ConfigError(
            "`crop_fraction` must be in (0, 1]. Received: "
            f"crop_fraction={crop_fraction}"
        )
    return max(image_size, int(round(image_size / crop_fraction)))


def resize(image: tf.Tensor, size: int) -> tf.Tensor:
    """Resizes to `size` x `size` (aspect not kept, as in the paper's "scaled
    to 256x256"), antialiased so large scans do not alias."""
    image = tf.image.resize(image, (size, size), antialias=True)
    return tf.clip_by_value(image, 0.0, 1.0)


def to_load_uint8(image: tf.Tensor, size: int) -> tf.Tensor:
    """Decoded float image -> the cached form: uint8 at the load size."""
    return tf.cast(tf.round(resize(image, size) * 255.0), tf.uint8)


def from_load_uint8(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Cached uint8 image -> evaluation model input (center crop)."""
    return augment_lib.center_crop(
        tf.image.convert_image_dtype(image, tf.float32), image_size
    )


def eval_transform(image: tf.Tensor, image_size: int, crop_fraction: float):
    """Decoded float image -> model input for evaluation, explanation and
    serving: exactly what `build_split(training=False)` feeds the model
    (including the uint8 rounding of its cache)."""
    return from_load_uint8(
        to_load_uint8(image, load_size(image_size, crop_fraction)), image_size
    )


def _subset(examples, count: int, seed: int):
    import numpy as np

    keep = np.sort(np.random.default_rng(seed).choice(len(examples), count, replace=False))
    labels = examples.labels
    if isinstance(examples, FileExamples):
        return FileExamples(
            tuple(examples.paths[i] for i in keep),
            None if labels is None else tuple(labels[i] for i in keep),
        )
    return ArrayExamples(
        examples.images[keep], None if labels is None else np.asarray(labels)[keep]
    )


@dataclasses.dataclass
class Split:
    """A ready `tf.data.Dataset` and what it was made of."""

    data: tf.data.Dataset
    num_examples: int
    steps: int
    class_counts: dict[str, int]
    skipped: int = 0


def _source(examples, size: int, on_bad_image: str, context: str):
    """(uint8 image at load size, label) pairs and the labels kept."""

    def to_uint8(image):
        return to_load_uint8(image, size)

    skipped = 0
    if isinstance(examples, FileExamples):
        keep, bad = decode.filter_bad_images(
            examples.paths, on_bad_image, context
        )
        skipped = len(bad)
        paths = [examples.paths[i] for i in keep]
        labels = None
        if examples.labels is not None:
            labels = [examples.labels[i] for i in keep]
        images = tf.data.Dataset.from_tensor_slices(paths).map(
            lambda p: to_uint8(decode.decode_image(tf.io.read_file(p))),
            num_parallel_calls=AUTOTUNE,
        )
    elif isinstance(examples, ArrayExamples):
        labels = None if examples.labels is None else list(examples.labels)
        images = tf.data.Dataset.from_tensor_slices(examples.images).map(
            lambda x: to_uint8(
                decode.to_rgb(tf.image.convert_image_dtype(x, tf.float32))
            ),
            num_parallel_calls=AUTOTUNE,
        )
    else:
        raise TypeError(
            "Dataset.examples() must return FileExamples or ArrayExamples. "
            f"Received: {type(examples).__name__}"
        )
    if labels is not None:
        labels_ds = tf.data.Dataset.from_tensor_slices(
            tf.constant(labels, tf.int32)
        )
        data = tf.data.Dataset.zip((images, labels_ds))
    else:
        data = images.map(lambda x: (x, tf.constant(-1, tf.int32)))
    return data, labels, skipped


def build_split(
    dataset: Dataset,
    split: str,
    *,
    image_size: int,
    batch_size: int,
    training: bool,
    augment: str | Callable[[tf.Tensor], Any] = "crop_flip",
    crop_fraction: float = 0.875,
    on_bad_image: str = "refuse",
    cache: str = "auto",
    seed: int = 0,
    balance: bool = False,
    max_examples: int | None = None,
) -> Split:
    """The batched input of one split.

    Args:
        dataset: Dataset. A loaded dataset plugin.
        split: str. One of `dataset.splits()`.
        image_size: int. Side of the model input.
        batch_size: int. Global batch size.
        training: bool. Shuffle, augment and drop the last partial batch.
        augment: str or callable. Recipe of `matl_keras.data.augment`
            (training only), or a function of one float32 image at load
            size in [0, 1] returning the model input (any structure, e.g.
            an SSL method's dict of views), written in TensorFlow ops.
        crop_fraction: float. `image_size / load size`.
        on_bad_image: str. `"refuse"` or `"skip"` unreadable files.
        cache: str. `"auto"` (memory when under 2 GiB), `"memory"`,
            `"none"`, or a file path prefix for an on-disk cache.
        seed: int. Shuffle and augmentation seed.
        balance: bool. Training only: draw every class equally often
            (sampling with replacement per class; an epoch keeps its size).
        max_examples: int or None. Use a random subset (seeded by `seed`,
            kept in the split's order) of at most this many examples.

    Returns:
        `Split` yielding `(float32 images (b, s, s, 3) in [0, 1], int32
        labels (b,))`; labels are -1 for unlabelled splits.
    """
    if image_size < 8:
        raise ConfigError(
            f"`image_size` must be at least 8. Received: image_size={image_size}"
        )
    if batch_size < 1:
        raise ConfigError(
            f"`batch_size` must be positive. Received: batch_size={batch_size}"
        )
    dataset.check_split(split)
    context = f"{dataset.name} split {split!r}"
    size = load_size(image_size, crop_fraction)
    examples = dataset.examples(split)
    if max_examples is not None and len(examples) > max_examples:
        examples = _subset(examples, max_examples, seed)
    data, labels, skipped = _source(examples, size, on_bad_image, context)
    if labels is not None and len(labels) and (
        min(labels) < 0 or max(labels) >= dataset.num_classes
    ):
        raise DataError(
            f"{context}: labels must be in 0..{dataset.num_classes - 1} "
            f"(class_names={list(dataset.class_names)}). Received: "
            f"labels from {min(labels)} to {max(labels)}"
        )
    n = int(data.cardinality())
    if n == 0:
        raise ConfigError(f"{context} has no usable images")
    if training and n < batch_size:
        raise ConfigError(
            f"{context} has {n} images, fewer than one batch: lower "
            f"BATCH_SIZE. Received: batch_size={batch_size}"
        )
    if cache == "auto":
        cache = "memory" if n * size * size * 3 < AUTO_CACHE_BYTES else "none"
    if cache == "memory":
        data = data.cache()
    elif cache != "none":
        data = data.cache(cache)
    if training and balance:
        if labels is None:
            raise ConfigError(f"{context}: balanced sampling needs labels")
        present = sorted(set(labels))
        per_class = [
            data.filter(lambda x, y, c=c: tf.equal(y, c))
            .shuffle(labels.count(c), seed=seed)
            .repeat()
            for c in present
        ]
        data = tf.data.Dataset.sample_from_datasets(
            per_class, weights=[1.0 / len(present)] * len(present), seed=seed
        ).take(n)
    elif training:
        data = data.shuffle(min(n, 16384), seed=seed)
    if training and callable(augment):
        transform = augment
    elif training:
        transform = augment_lib.get_augment(augment, image_size, seed)

    def finish(image, label):
        if not training:
            return from_load_uint8(image, image_size), label
        return transform(tf.image.convert_image_dtype(image, tf.float32)), label

    data = data.map(finish, num_parallel_calls=AUTOTUNE)
    data = data.batch(batch_size, drop_remainder=training)
    data = data.prefetch(AUTOTUNE)
    # Multi-worker runs shard by example (tf.data's DATA policy, set here
    # rather than discovered by AUTO with a warning): every worker runs
    # this pipeline in the same seeded order and keeps its share of each
    # global batch, so the global batch equals one process's. The cost is
    # that each worker decodes every image once (then reads its cache).
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    data = data.with_options(options)
    steps = n // batch_size if training else -(-n // batch_size)
    counts = {}
    if labels is not None:
        for index in labels:
            name = dataset.class_names[index]
            counts[name] = counts.get(name, 0) + 1
    return Split(data, n, steps, counts, skipped)
