"""tf.data input pipelines: dataset plugin -> decode -> resize -> cache ->
augment -> batch -> prefetch.

Images are decoded and resized once to the "load size" (image size divided
by the crop fraction, 256 for 224 as in the paper), cached as uint8 when they
fit in memory, and cropped per epoch: random crop for training, center crop
for evaluation. The evaluation transform here is the one the exported
serving graph uses too.

Training data is a pure function of `(seed, epoch)`: epoch e's order is a
shuffle seeded by (seed, e) and the example at position p of epoch e is
augmented with the stateless seed derived from (seed, e, p). Nothing
depends on thread scheduling, on TensorFlow's global seed or on how many
epochs ran before in this process, so the same command gives the same
batches and a resumed run (`start_epoch`) the batches an uninterrupted
one would have seen.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import tensorflow as tf

from matl_keras.data import augment as augment_lib
from matl_keras.data import decode
from matl_keras.data.dataset import ArrayExamples
from matl_keras.data.dataset import Dataset
from matl_keras.data.dataset import FileExamples
from matl_keras.data.dataset import examples_of
from matl_keras.data.dataset import source_ids
from matl_keras.errors import ConfigError
from matl_keras.errors import DataError
from matl_keras.errors import PluginError

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
    return max(image_size, round(image_size / crop_fraction))


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


def _take(examples, keep):
    """The examples at the sorted positions `keep`, of the same kind."""
    import numpy as np

    labels = examples.labels
    sources = examples.sources
    if sources is not None:
        sources = tuple(sources[i] for i in keep)
    if isinstance(examples, FileExamples):
        return FileExamples(
            tuple(examples.paths[i] for i in keep),
            None if labels is None else tuple(labels[i] for i in keep),
            sources,
        )
    return ArrayExamples(
        examples.images[keep],
        None if labels is None else np.asarray(labels)[keep],
        sources,
    )


def _subset(examples, count: int, seed: int):
    import numpy as np

    return _take(
        examples,
        np.sort(
            np.random.default_rng(seed).choice(
                len(examples), count, replace=False
            )
        ),
    )


def _labelled_subset(examples, fraction: float, seed: int, context: str):
    """A stratified subset: `fraction` of each class (at least one image),
    drawn with `seed`, kept in the split's order."""
    import numpy as np

    if examples.labels is None:
        raise ConfigError(
            f"{context} is unlabelled: `labelled_fraction` needs labels. "
            f"Received: labelled_fraction={fraction}"
        )
    labels = np.asarray(examples.labels)
    rng = np.random.default_rng([seed, 0x1ABE1])
    keep = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = max(1, int(round(fraction * len(members))))
        keep.extend(rng.choice(members, count, replace=False))
    return _take(examples, np.sort(np.asarray(keep)))


@dataclasses.dataclass
class Split:
    """A ready `tf.data.Dataset` and what it was made of."""

    data: tf.data.Dataset
    num_examples: int
    steps: int
    class_counts: dict[str, int]
    skipped: int = 0
    # Distinct sources (patients) among the examples used; None when the
    # dataset gives no sources.
    num_sources: int | None = None


# --- seeds --------------------------------------------------------------------

# Tags that keep the random streams derived from one run seed apart.
_DATA_STREAM = 0x44415441  # "DATA"
_SHUFFLE = 1
_AUGMENT = 2
_BALANCE = 3
_CLASS_SHUFFLE = 1000
# Graph-level seed of the functions that build an epoch: tf.data's shuffle
# combines the graph seed with its own, so fixing it here keeps an epoch's
# order independent of TensorFlow's global seed.
_GRAPH_SEED = 0x5EED
_SHUFFLE_BUFFER = 16384
TARGETS = ("labels", "indices", "sources")


def epoch_seed(seed: int, epoch) -> tf.Tensor:
    """The stateless seed (int64 `[2]`) of epoch `epoch` of a run seeded
    with `seed`; everything random in that epoch is split from it."""
    base = tf.constant([seed, _DATA_STREAM], tf.int64)
    return tf.random.experimental.stateless_fold_in(
        base, tf.cast(epoch, tf.int64)
    )


def example_seed(seed: int, epoch, position) -> tf.Tensor:
    """The augmentation seed of the example at `position` of epoch `epoch`
    (what `augment(image, seed)` receives)."""
    stream = tf.random.experimental.stateless_fold_in(
        epoch_seed(seed, epoch), _AUGMENT
    )
    return tf.random.experimental.stateless_fold_in(
        stream, tf.cast(position, tf.int64)
    )


def _op_seed(seed: tf.Tensor, tag: int) -> tf.Tensor:
    """An int64 scalar op seed for a tf.data op, drawn from `seed`."""
    return tf.random.stateless_uniform(
        [],
        tf.random.experimental.stateless_fold_in(seed, tag),
        minval=1,
        maxval=2**31 - 1,
        dtype=tf.int64,
    )


def _fix_graph_seed() -> None:
    """Sets the graph-level seed of the function being traced (not the
    global one: dataset functions are traced in graph mode). In tf.data's
    debug mode, which runs them eagerly, the global seed is left alone
    and the order then also depends on it."""
    if not tf.executing_eagerly():
        tf.compat.v1.set_random_seed(_GRAPH_SEED)


# --- source -------------------------------------------------------------------


def _to_uint8(value: tf.Tensor) -> tf.Tensor:
    return tf.cast(
        tf.round(tf.clip_by_value(value, 0.0, 1.0) * 255.0), tf.uint8
    )


def _to_float(element):
    return tf.nest.map_structure(
        lambda t: tf.image.convert_image_dtype(t, tf.float32), element
    )


def _check_prepare(prepare, context: str) -> None:
    """Traces `prepare` once on a full-resolution image of unknown size:
    it must return a dict of float tensors with static shapes (they are
    cached), without the key `image` (the load-size image's)."""
    traced = tf.function(prepare, autograph=True).get_concrete_function(
        tf.TensorSpec([None, None, 3], tf.float32)
    )
    spec = traced.structured_outputs
    if not isinstance(spec, dict) or "image" in spec or not spec:
        raise ConfigError(
            f"{context}: `prepare` must return a non-empty dict without the "
            "key 'image' (reserved for the load-size image). Received: "
            f"{type(spec).__name__} "
            f"{sorted(spec) if isinstance(spec, dict) else spec}"
        )
    for key, value in spec.items():
        if not value.shape.is_fully_defined():
            raise ConfigError(
                f"{context}: `prepare` output {key!r} must have a static "
                f"shape (it is cached). Received: shape={value.shape}"
            )


def _source(
    examples, size: int, on_bad_image: str, context: str, prepare, by_source
):
    """(cached image, label, identity) triples, the labels kept, the
    number of images skipped and of sources among those kept. The
    cached image is the uint8 load-size image, or with `prepare` the dict
    `{"image": that, **prepare(full-resolution image)}` in uint8; the
    identity is the example's index, or with `by_source` its source's
    number (`dataset.source_ids`)."""

    def cached_form(image):
        load = to_load_uint8(image, size)
        if prepare is None:
            return load
        extra = prepare(image)
        return {"image": load, **{k: _to_uint8(v) for k, v in extra.items()}}

    if prepare is not None:
        _check_prepare(prepare, context)
    skipped = 0
    if isinstance(examples, FileExamples):
        keep, bad = decode.filter_bad_images(
            examples.paths, on_bad_image, context
        )
        skipped = len(bad)
        examples = _take(examples, keep)
        paths = list(examples.paths)
        labels = None if examples.labels is None else list(examples.labels)
        images = tf.data.Dataset.from_tensor_slices(paths).map(
            lambda p: cached_form(decode.decode_file_image(tf.io.read_file(p))),
            num_parallel_calls=AUTOTUNE,
        )
    elif isinstance(examples, ArrayExamples):
        labels = None if examples.labels is None else list(examples.labels)
        images = tf.data.Dataset.from_tensor_slices(examples.images).map(
            lambda x: cached_form(
                decode.to_rgb(tf.image.convert_image_dtype(x, tf.float32))
            ),
            num_parallel_calls=AUTOTUNE,
        )
    else:
        raise PluginError(
            f"{context}: the dataset's examples() must return FileExamples "
            f"or ArrayExamples. Received: {type(examples).__name__}"
        )
    n = int(images.cardinality())
    if labels is not None:
        labels_ds = tf.data.Dataset.from_tensor_slices(
            tf.constant(labels, tf.int32)
        )
    else:
        labels_ds = tf.data.Dataset.from_tensors(tf.constant(-1, tf.int32))
        labels_ds = labels_ds.repeat(n)
    identities = source_ids(examples) if by_source else list(range(n))
    index_ds = tf.data.Dataset.from_tensor_slices(
        tf.constant(identities, tf.int32, shape=[n])
    )
    data = tf.data.Dataset.zip((images, labels_ds, index_ds))
    num_sources = (
        None if examples.sources is None else len(set(examples.sources))
    )
    return data, labels, skipped, num_sources


# --- training order -----------------------------------------------------------


def _shuffled(data, n: int, seeds: tf.Tensor):
    """One epoch in the order seeded by `seeds` (every example once)."""
    return data.shuffle(
        min(n, _SHUFFLE_BUFFER),
        seed=_op_seed(seeds, _SHUFFLE),
        reshuffle_each_iteration=False,
    )


def _balanced(data, labels: list[int], n: int, seeds: tf.Tensor):
    """`n` examples with every present class equally likely (with
    replacement within a class), seeded by `seeds`."""
    present = sorted(set(labels))
    per_class = [
        data.filter(lambda x, y, i, c=c: tf.equal(y, c))
        .shuffle(
            labels.count(c),
            seed=_op_seed(seeds, _CLASS_SHUFFLE + c),
            reshuffle_each_iteration=True,
        )
        .repeat()
        for c in present
    ]
    return tf.data.Dataset.sample_from_datasets(
        per_class,
        weights=[1.0 / len(present)] * len(present),
        seed=_op_seed(seeds, _BALANCE),
    ).take(n)


def build_split(
    dataset: Dataset,
    split: str,
    *,
    image_size: int,
    batch_size: int,
    training: bool,
    augment: str | Callable[[Any, tf.Tensor], Any] = "crop_flip",
    crop_fraction: float = 0.875,
    on_bad_image: str = "refuse",
    cache: str = "auto",
    seed: int = 0,
    balance: bool = False,
    max_examples: int | None = None,
    labelled_fraction: float = 1.0,
    start_epoch: int = 0,
    epochs: int | None = None,
    prepare: Callable[[tf.Tensor], dict[str, tf.Tensor]] | None = None,
    targets: str = "labels",
) -> Split:
    """The batched input of one split.

    Args:
        dataset: Dataset. A loaded dataset plugin.
        split: str. One of `dataset.splits()`.
        image_size: int. Side of the model input.
        batch_size: int. Global batch size.
        training: bool. Shuffle, augment and drop the last partial batch.
        augment: str or callable. Recipe of `matl_keras.data.augment`
            (training only), or a function `augment(image, seed)` of one
            float32 image at load size in [0, 1] (with `prepare`: the dict
            described there) and a stateless seed (int64 `[2]`), returning
            the model input (any structure, e.g. an SSL method's dict of
            views), written in TensorFlow ops; its randomness must come
            from `seed` alone.
        crop_fraction: float. `image_size / load size`.
        on_bad_image: str. `"refuse"` or `"skip"` unreadable files.
        cache: str. `"auto"` (memory when under 2 GiB), `"memory"`,
            `"none"`, or a file path prefix for an on-disk cache.
        seed: int. Shuffle and augmentation seed: epoch e is shuffled
            with (seed, e), its example at position p augmented with
            `example_seed(seed, e, p)`.
        balance: bool. Training only: draw every class equally often
            (sampling with replacement per class; an epoch keeps its size),
            seeded by (seed, epoch).
        max_examples: int or None. Use a random subset (seeded by `seed`,
            kept in the split's order) of at most this many examples.
        labelled_fraction: float in (0, 1]. Use a stratified subset: this
            fraction of each class (rounded, at least one image), drawn
            with `seed` (label-efficiency runs: the same seed gives the
            same images whatever the model).
        start_epoch: int. Training only: the first epoch the data yields
            (a resumed run passes the epochs already done).
        epochs: int or None. Training only: the data yields epochs
            `start_epoch .. epochs - 1` back to back, `steps` batches each,
            so `Model.fit(..., steps_per_epoch=split.steps)` sees epoch e's
            batches at epoch e. None: the one epoch `start_epoch`.
        prepare: callable or None. Training only: `prepare(image) -> dict`
            of float32 tensors in [0, 1] with static shapes, computed on
            the full-resolution decoded image before the cache (e.g. crops
            that must not be cut from the resized image) and cached in
            uint8 with the load-size image as `{"image": ..., **prepare}`;
            `augment` then receives that dict. Needs a callable `augment`.
        targets: str. `"labels"`: elements are `(x, label)`; `"indices"`:
            `(x, index)`, the int32 position of the example in
            `dataset.examples(split)` (after `max_examples`), the image's
            identity; `"sources"`: `(x, source)`, the int32 number of the
            example's source (`Examples.sources`; its index when the
            dataset gives none): SSL methods never take an image of the
            query's identity as a negative.

    Returns:
        `Split` yielding `(float32 images (b, s, s, 3) in [0, 1], int32
        labels (b,))` (or the augment's structure and indices); labels are
        -1 for unlabelled splits.
    """
    if image_size < 8:
        raise ConfigError(
            "`image_size` must be at least 8. "
            f"Received: image_size={image_size}"
        )
    if batch_size < 1:
        raise ConfigError(
            f"`batch_size` must be positive. Received: batch_size={batch_size}"
        )
    if targets not in TARGETS:
        raise ConfigError(
            f"`targets` must be one of {TARGETS}. Received: targets={targets!r}"
        )
    if start_epoch < 0 or (epochs is not None and epochs < start_epoch):
        raise ConfigError(
            "`start_epoch` must be in 0..epochs. Received: "
            f"start_epoch={start_epoch}, epochs={epochs}"
        )
    if training and prepare is not None and not callable(augment):
        raise ConfigError(
            "`prepare` gives the augmentation a dict, which only a callable "
            f"`augment` takes. Received: augment={augment!r}"
        )
    context = f"{dataset.name} split {split!r}"
    size = load_size(image_size, crop_fraction)
    if training and not callable(augment):
        transform = augment_lib.get_augment(augment, image_size)
    elif training:
        transform = augment
    if not 0.0 < labelled_fraction <= 1.0:
        raise ConfigError(
            "`labelled_fraction` must be in (0, 1]. Received: "
            f"labelled_fraction={labelled_fraction}"
        )
    examples = examples_of(dataset, split)
    if max_examples is not None and len(examples) > max_examples:
        examples = _subset(examples, max_examples, seed)
    if labelled_fraction < 1.0:
        examples = _labelled_subset(examples, labelled_fraction, seed, context)
    data, labels, skipped, num_sources = _source(
        examples,
        size,
        on_bad_image,
        context,
        prepare if training else None,
        by_source=targets == "sources",
    )
    if (
        labels is not None
        and len(labels)
        and (min(labels) < 0 or max(labels) >= dataset.num_classes)
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
    if training and balance and labels is None:
        raise ConfigError(f"{context}: balanced sampling needs labels")
    if cache == "auto":
        cache = "memory" if n * size * size * 3 < AUTO_CACHE_BYTES else "none"
    if cache == "memory":
        data = data.cache()
    elif cache != "none":
        data = data.cache(cache)

    def target(label, index):
        return label if targets == "labels" else index

    steps = n // batch_size if training else -(-n // batch_size)
    if training:
        end = start_epoch + 1 if epochs is None else epochs
        per_epoch = steps * batch_size
        cached = data

        def epoch_data(epoch):
            # One epoch: its order (and class draws) from (seed, epoch);
            # the partial last batch is cut here so that every epoch
            # gives exactly `steps` batches and batches never span epochs.
            _fix_graph_seed()
            seeds = epoch_seed(seed, epoch)
            if balance:
                ordered = _balanced(cached, labels, n, seeds)
            else:
                ordered = _shuffled(cached, n, seeds)
            return (
                ordered.take(per_epoch)
                .enumerate()
                .map(lambda position, element: (epoch, position, element))
            )

        def finish(epoch, position, element):
            image, label, index = element
            views = transform(
                _to_float(image), example_seed(seed, epoch, position)
            )
            return views, target(label, index)

        data = tf.data.Dataset.range(start_epoch, end).flat_map(epoch_data)
        # Parallel but ordered (tf.data's default `deterministic=True`);
        # all randomness is the stateless per-example seed.
        data = data.map(finish, num_parallel_calls=AUTOTUNE)
        data = data.batch(batch_size, drop_remainder=True)
        data = data.apply(
            tf.data.experimental.assert_cardinality((end - start_epoch) * steps)
        )
    else:
        data = data.map(
            lambda image, label, index: (
                from_load_uint8(image, image_size),
                target(label, index),
            ),
            num_parallel_calls=AUTOTUNE,
        )
        data = data.batch(batch_size)
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
    counts = {}
    if labels is not None:
        for index in labels:
            name = dataset.class_names[index]
            counts[name] = counts.get(name, 0) + 1
    return Split(data, n, steps, counts, skipped, num_sources)
