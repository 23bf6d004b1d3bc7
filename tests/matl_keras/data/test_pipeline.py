"""tf.data pipelines built from dataset plugins."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from matl_keras.data import pipeline
from matl_keras.data.dataset import ArrayExamples
from matl_keras.data.dataset import Dataset
from matl_keras.data.dataset import FileExamples
from matl_keras.errors import ConfigError
from matl_keras.errors import DataError


class Tiny(Dataset):
    class_names = ("zero", "one")
    positive_class = "one"

    def __init__(self, n=10, channels=1):
        rng = np.random.default_rng(0)
        self.images = rng.integers(0, 256, (n, 40, 40, channels), np.uint8)
        # The label is readable from the image: mean above/below 128.
        self.images[: n // 2] //= 4
        self.labels = np.array([0] * (n // 2) + [1] * (n - n // 2))

    def splits(self):
        return ("train", "val")

    def examples(self, split):
        return ArrayExamples(self.images, self.labels)


def test_eval_split_shapes_labels_and_order():
    ds = Tiny()
    split = pipeline.build_split(
        ds, "val", image_size=32, batch_size=4, training=False
    )
    assert split.num_examples == 10 and split.steps == 3
    assert split.class_counts == {"zero": 5, "one": 5}
    images, labels = zip(*split.data)
    images = np.concatenate(images)
    labels = np.concatenate(labels)
    assert images.shape == (10, 32, 32, 3) and images.dtype == np.float32
    np.testing.assert_array_equal(labels, ds.labels)
    assert 0.0 <= images.min() and images.max() <= 1.0
    # Same path as serving: resize to load size, uint8, center crop: exact.
    expected = pipeline.eval_transform(
        tf.image.convert_image_dtype(
            tf.image.grayscale_to_rgb(tf.constant(ds.images[0])), tf.float32
        ),
        32,
        0.875,
    ).numpy()
    np.testing.assert_array_equal(images[0], expected)


def test_training_split_shuffles_augments_and_keeps_pairs():
    ds = Tiny(n=16)
    split = pipeline.build_split(
        ds, "train", image_size=32, batch_size=4, training=True, seed=1
    )
    assert split.steps == 4
    seen = []
    for images, labels in split.data:
        assert images.shape == (4, 32, 32, 3)
        # Pairs survive shuffling: dark images are label 0.
        means = images.numpy().mean(axis=(1, 2, 3))
        np.testing.assert_array_equal(means > 0.3, labels.numpy() == 1)
        seen += list(labels.numpy())
    assert sorted(seen) == sorted(ds.labels)


def _labels(data):
    return [y.numpy().tolist() for _, y in data]


def test_training_data_is_a_pure_function_of_seed_and_epoch():
    ds = Tiny(n=16)
    kw = {"image_size": 32, "batch_size": 4, "training": True, "seed": 1}
    split = pipeline.build_split(ds, "train", epochs=3, **kw)
    assert split.steps == 4 and int(split.data.cardinality()) == 12
    first = [(x.numpy(), y.numpy()) for x, y in split.data]
    again = [(x.numpy(), y.numpy()) for x, y in split.data]
    for (x1, y1), (x2, y2) in zip(first, again, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    orders = [
        np.concatenate([y for _, y in first[e * 4 : e * 4 + 4]])
        for e in range(3)
    ]
    # Reshuffled every epoch, every example once per epoch.
    assert not np.array_equal(orders[0], orders[1])
    for order in orders:
        assert sorted(order) == sorted(ds.labels)
    # TensorFlow's global seed (set elsewhere in the process) plays no part.
    tf.random.set_seed(12345)
    rebuilt = pipeline.build_split(ds, "train", epochs=3, **kw)
    for (x1, _), (x2, _) in zip(first, rebuilt.data, strict=True):
        np.testing.assert_array_equal(x1, x2.numpy())
    # A resumed run (start_epoch=1) sees what epochs 1-2 were.
    resumed = pipeline.build_split(ds, "train", start_epoch=1, epochs=3, **kw)
    tail = [(x.numpy(), y.numpy()) for x, y in resumed.data]
    assert len(tail) == 8
    for (x1, y1), (x2, y2) in zip(first[4:], tail, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    # One epoch when `epochs` is not given: epoch `start_epoch`.
    one = pipeline.build_split(ds, "train", start_epoch=2, **kw)
    assert _labels(one.data) == [y.tolist() for _, y in first[8:]]
    # Another seed, another order.
    other = pipeline.build_split(ds, "train", **{**kw, "seed": 2})
    assert _labels(other.data) != [y.tolist() for _, y in first[:4]]


def test_each_example_gets_the_seed_of_its_epoch_and_position():
    ds = Tiny(n=10)

    def augment(image, seed):
        return pipeline.augment_lib.center_crop(image, 32), seed

    split = pipeline.build_split(
        ds,
        "train",
        image_size=32,
        batch_size=4,
        training=True,
        seed=7,
        augment=augment,
        epochs=2,
        targets="indices",
    )
    batches = list(split.data)
    assert len(batches) == 4  # 2 epochs of 2 batches; 2 images dropped
    for step, ((_, seeds), _) in enumerate(batches):
        epoch, first = divmod(step, 2)
        for row in range(4):
            expected = pipeline.example_seed(7, epoch, first * 4 + row)
            np.testing.assert_array_equal(seeds[row], expected)
    seeds = np.concatenate([s for (_, s), _ in batches])
    assert len({tuple(s) for s in seeds}) == len(seeds)


def test_indices_are_positions_in_the_examples():
    ds = Tiny(n=12)
    ds.images[:, 0, 0, 0] = np.arange(12) * 20  # the index in a pixel
    split = pipeline.build_split(
        ds,
        "train",
        image_size=40,
        crop_fraction=1.0,
        batch_size=4,
        training=True,
        augment="none",
        targets="indices",
        epochs=2,
    )
    for images, index in split.data:
        assert index.dtype == tf.int32
        np.testing.assert_allclose(
            images.numpy()[:, 0, 0, 0] * 255, index.numpy() * 20, atol=0.5
        )
    val = pipeline.build_split(
        ds,
        "val",
        image_size=32,
        batch_size=5,
        training=False,
        targets="indices",
    )
    assert np.concatenate([i for _, i in val.data]).tolist() == list(range(12))
    with pytest.raises(ConfigError, match="targets"):
        pipeline.build_split(
            ds,
            "val",
            image_size=32,
            batch_size=5,
            training=False,
            targets="ids",
        )


class Patients(Tiny):
    """12 images of 4 patients (sources), listed out of order."""

    SOURCES = ("p7", "p3", "p7", "p9", "p3", "p7", "p1", "p9", "p1", "p3")

    def examples(self, split):
        return ArrayExamples(self.images, self.labels, self.SOURCES)


def test_sources_are_numbered_per_source_and_follow_every_subset():
    ds = Patients(n=10)
    ds.images[:, 0, 0, 0] = np.arange(10) * 20  # the index in a pixel
    number = {"p7": 0, "p3": 1, "p9": 2, "p1": 3}  # first appearance
    expected = np.array([number[s] for s in Patients.SOURCES])
    split = pipeline.build_split(
        ds,
        "train",
        image_size=40,
        crop_fraction=1.0,
        batch_size=5,
        training=True,
        augment="none",
        targets="sources",
        epochs=2,
    )
    seen = 0
    for images, source in split.data:
        index = np.round(images.numpy()[:, 0, 0, 0] * 255 / 20).astype(int)
        assert source.numpy().tolist() == expected[index].tolist()
        seen += len(index)
    assert seen == 20
    assert split.num_sources == 4
    # A seeded subset keeps each image's source.
    subset = pipeline.build_split(
        ds,
        "val",
        image_size=40,
        crop_fraction=1.0,
        batch_size=10,
        training=False,
        targets="sources",
        max_examples=6,
        seed=3,
    )
    images, source = next(iter(subset.data))
    index = np.round(images.numpy()[:, 0, 0, 0] * 255 / 20).astype(int)
    kept = [Patients.SOURCES[i] for i in index]
    renumbered = {}
    for s in kept:
        renumbered.setdefault(s, len(renumbered))
    assert source.numpy().tolist() == [renumbered[s] for s in kept]
    # Without sources, an image is its own.
    plain = pipeline.build_split(
        Tiny(n=10),
        "val",
        image_size=32,
        batch_size=10,
        training=False,
        targets="sources",
    )
    assert next(iter(plain.data))[1].numpy().tolist() == list(range(10))
    assert plain.num_sources is None


def test_sources_are_checked():
    images = np.zeros((3, 8, 8, 1), np.uint8)
    with pytest.raises(DataError, match="3 images but 2 sources"):
        ArrayExamples(images, None, ("a", "b"))
    with pytest.raises(DataError, match="non-empty strings.*Received: 7"):
        ArrayExamples(images, None, ("a", "b", 7))
    with pytest.raises(DataError, match="2 paths but 1 sources"):
        FileExamples(("x.png", "y.png"), None, ("a",))


def test_prepare_runs_on_the_full_resolution_image_before_the_cache():
    ds = Tiny(n=8, channels=3)
    seen = {}

    def prepare(image):
        # A corner at full resolution (40 px), not cut from the load size.
        return {"corner": tf.reshape(image[:8, :8, :], [8, 8, 3])}

    def augment(element, seed):
        seen["keys"] = sorted(element)
        return element["corner"], element["image"][:16, :16]

    split = pipeline.build_split(
        ds,
        "train",
        image_size=16,
        crop_fraction=0.5,
        batch_size=8,
        training=True,
        augment=augment,
        prepare=prepare,
        targets="indices",
    )
    (corners, small), index = next(iter(split.data))
    assert seen["keys"] == ["corner", "image"]
    assert small.shape == (8, 16, 16, 3)  # load size 32, from 40
    expected = ds.images[index.numpy()][:, :8, :8, :] / 255.0
    np.testing.assert_allclose(corners.numpy(), expected, atol=1e-6)
    with pytest.raises(ConfigError, match="callable `augment`"):
        pipeline.build_split(
            ds,
            "train",
            image_size=16,
            batch_size=8,
            training=True,
            prepare=prepare,
        )
    with pytest.raises(ConfigError, match="without the key 'image'"):
        pipeline.build_split(
            ds,
            "train",
            image_size=16,
            batch_size=8,
            training=True,
            augment=augment,
            prepare=lambda x: {"image": x},
        )
    with pytest.raises(ConfigError, match="static shape"):
        pipeline.build_split(
            ds,
            "train",
            image_size=16,
            batch_size=8,
            training=True,
            augment=augment,
            prepare=lambda x: {"c": x[: tf.shape(x)[0] // 2]},
        )


def test_start_epoch_is_checked():
    with pytest.raises(ConfigError, match="start_epoch"):
        pipeline.build_split(
            Tiny(),
            "train",
            image_size=32,
            batch_size=2,
            training=True,
            start_epoch=3,
            epochs=2,
        )


class _Recorder(keras.Model):
    """Records the labels of every batch `fit` trains on."""

    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(1)
        self.seen = []

    def call(self, x):
        return self.dense(keras.ops.mean(x, axis=(1, 2)))

    def train_step(self, data):
        self.seen.append(data[1].numpy().tolist())
        return {"batches": len(self.seen)}


@pytest.mark.parametrize("initial_epoch", [0, 1])
def test_fit_sees_epoch_e_batches_at_epoch_e(initial_epoch):
    """Keras keeps one iterator over the data across the epochs of a `fit`
    given `steps_per_epoch`; `start_epoch` must match `initial_epoch`."""
    ds = Tiny(n=12)
    kw = {"image_size": 32, "batch_size": 4, "training": True, "seed": 3}
    reference = _labels(pipeline.build_split(ds, "train", epochs=3, **kw).data)
    split = pipeline.build_split(
        ds, "train", start_epoch=initial_epoch, epochs=3, **kw
    )
    model = _Recorder()
    model.compile(optimizer="sgd", run_eagerly=True)
    model.fit(
        split.data,
        epochs=3,
        initial_epoch=initial_epoch,
        steps_per_epoch=split.steps,
        shuffle=False,
        verbose=0,
    )
    assert model.seen == reference[initial_epoch * split.steps :]


@pytest.mark.parametrize("training", [True, False])
def test_splits_shard_by_example_across_workers(training):
    """DATA policy, explicit: FILE sharding (AUTO's first choice) cannot
    apply to decoded arrays or file lists read by `map`."""
    split = pipeline.build_split(
        Tiny(n=16), "train", image_size=32, batch_size=4, training=training
    )
    policy = split.data.options().experimental_distribute.auto_shard_policy
    assert policy == tf.data.experimental.AutoShardPolicy.DATA


def test_fewer_images_than_a_batch_is_a_clear_error():
    with pytest.raises(ConfigError, match="fewer than one batch"):
        pipeline.build_split(
            Tiny(n=3), "train", image_size=32, batch_size=8, training=True
        )


def test_unknown_split_names_the_available_ones():
    with pytest.raises(DataError, match="Available: train, val"):
        pipeline.build_split(
            Tiny(), "test", image_size=32, batch_size=2, training=False
        )


class Files(Dataset):
    class_names = ("a", "b")

    def __init__(self, paths, labels):
        self.paths, self.labels = paths, labels

    def splits(self):
        return ("val",)

    def examples(self, split):
        return FileExamples(
            tuple(self.paths),
            tuple(self.labels),
            tuple(f"patient-{i}" for i in range(len(self.paths))),
        )


def test_file_split_skips_bad_files_when_asked(tmp_path):
    good = tmp_path / "good.png"
    good.write_bytes(
        tf.io.encode_png(np.full((50, 60, 3), 200, np.uint8)).numpy()
    )
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    ds = Files([str(good), str(bad)], [0, 1])
    with pytest.raises(DataError, match="bad.png"):
        pipeline.build_split(
            ds, "val", image_size=32, batch_size=2, training=False
        )
    split = pipeline.build_split(
        ds,
        "val",
        image_size=32,
        batch_size=2,
        training=False,
        on_bad_image="skip",
    )
    assert split.skipped == 1 and split.num_examples == 1
    images, labels = next(iter(split.data))
    assert labels.numpy().tolist() == [0]
    np.testing.assert_allclose(images.numpy(), 200 / 255, atol=1e-2)

    # The sources stay aligned with the files kept (bad first: shifted).
    def by_source(sources):
        ds = Files([str(bad), str(good), str(good)], [1, 0, 1])
        ds.examples = lambda split: FileExamples(
            tuple(ds.paths), tuple(ds.labels), sources
        )
        return pipeline.build_split(
            ds,
            "val",
            image_size=32,
            batch_size=4,
            training=False,
            on_bad_image="skip",
            targets="sources",
        )

    split = by_source(("p1", "p2", "p1"))
    # Kept: (good, p2), (good, p1) -> numbered 0, 1; labels were 0, 1.
    assert next(iter(split.data))[1].numpy().tolist() == [0, 1]
    # Skipping counts the sources of the images kept: p2 alone is left.
    assert by_source(("p1", "p2", "p2")).num_sources == 1


def test_crop_fraction_is_checked():
    with pytest.raises(ConfigError, match="crop_fraction"):
        pipeline.load_size(224, 1.5)
    assert pipeline.load_size(224, 0.875) == 256


def test_labels_out_of_range_are_refused():
    ds = Tiny(n=4)
    ds.labels = np.array([0, 1, 2, 0])
    with pytest.raises(DataError, match="labels must be in 0..1"):
        pipeline.build_split(
            ds, "val", image_size=32, batch_size=2, training=False
        )


def test_balanced_sampling_draws_classes_equally():
    ds = Tiny(n=40)
    ds.labels = np.array([0] * 36 + [1] * 4)  # 9:1
    split = pipeline.build_split(
        ds, "train", image_size=32, batch_size=8, training=True, balance=True
    )
    labels = np.concatenate([y for _, y in split.data])
    assert len(labels) == 40
    assert 0.3 < labels.mean() < 0.7  # instead of 0.1


def test_balanced_sampling_is_seeded_per_epoch():
    ds = Tiny(n=40)
    ds.labels = np.array([0] * 36 + [1] * 4)
    kw = {
        "image_size": 32,
        "batch_size": 8,
        "training": True,
        "balance": True,
        "seed": 5,
    }
    full = pipeline.build_split(ds, "train", epochs=2, **kw)
    images = [x.numpy() for x, _ in full.data]
    again = [x.numpy() for x, _ in full.data]
    for a, b in zip(images, again, strict=True):
        np.testing.assert_array_equal(a, b)
    resumed = [
        x.numpy()
        for x, _ in pipeline.build_split(
            ds, "train", start_epoch=1, epochs=2, **kw
        ).data
    ]
    for a, b in zip(images[5:], resumed, strict=True):
        np.testing.assert_array_equal(a, b)
    # The two epochs draw differently.
    assert not np.array_equal(
        np.concatenate(images[:5]), np.concatenate(images[5:])
    )


def test_max_examples_takes_a_seeded_subset_in_order():
    ds = Tiny(n=30)
    full = np.concatenate(
        [
            x
            for x, _ in pipeline.build_split(
                ds, "val", image_size=32, batch_size=8, training=False
            ).data
        ]
    )
    picked = pipeline.build_split(
        ds,
        "val",
        image_size=32,
        batch_size=8,
        training=False,
        max_examples=7,
        seed=3,
    )
    again = pipeline.build_split(
        ds,
        "val",
        image_size=32,
        batch_size=8,
        training=False,
        max_examples=7,
        seed=3,
    )
    images = np.concatenate([x for x, _ in picked.data])
    assert picked.num_examples == 7 and images.shape[0] == 7
    np.testing.assert_array_equal(
        images, np.concatenate([x for x, _ in again.data])
    )
    # Each picked image is one of the split's, in the split's order.
    rows = [
        int(np.argmin(np.abs(full - im).sum(axis=(1, 2, 3)))) for im in images
    ]
    assert rows == sorted(rows) and len(set(rows)) == 7
    assert (
        pipeline.build_split(
            ds,
            "val",
            image_size=32,
            batch_size=8,
            training=False,
            max_examples=100,
        ).num_examples
        == 30
    )


def test_labelled_fraction_is_a_stratified_seeded_subset():
    ds = Tiny(n=40)  # 20 of each class
    common = dict(image_size=32, batch_size=4, training=False)
    picked = pipeline.build_split(
        ds, "val", labelled_fraction=0.25, seed=1, **common
    )
    # A quarter of each class, whatever the class sizes.
    assert picked.class_counts == {"zero": 5, "one": 5}
    labels = np.concatenate([y for _, y in picked.data])
    assert list(labels) == sorted(labels)  # kept in the split's order
    same = [
        x
        for x, _ in pipeline.build_split(
            ds, "val", labelled_fraction=0.25, seed=1, **common
        ).data
    ]
    other = [
        x
        for x, _ in pipeline.build_split(
            ds, "val", labelled_fraction=0.25, seed=2, **common
        ).data
    ]
    mine = [x for x, _ in picked.data]
    np.testing.assert_array_equal(np.concatenate(mine), np.concatenate(same))
    assert not np.array_equal(np.concatenate(mine), np.concatenate(other))
    # A class never vanishes: at least one image each.
    assert pipeline.build_split(
        ds, "val", labelled_fraction=0.01, **common
    ).class_counts == {"zero": 1, "one": 1}


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5])
def test_labelled_fraction_out_of_range_is_refused(fraction):
    with pytest.raises(ConfigError, match="labelled_fraction"):
        pipeline.build_split(
            Tiny(),
            "val",
            image_size=32,
            batch_size=4,
            training=False,
            labelled_fraction=fraction,
        )
