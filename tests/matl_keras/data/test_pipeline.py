"""tf.data pipelines built from dataset plugins."""

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
    first = [l.numpy().tolist() for _, l in split.data]
    second = [l.numpy().tolist() for _, l in split.data]
    assert first != second  # reshuffled every epoch


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
        return FileExamples(tuple(self.paths), tuple(self.labels))


def test_file_split_skips_bad_files_when_asked(tmp_path):
    good = tmp_path / "good.png"
    good.write_bytes(
        tf.io.encode_png(np.full((50, 60, 3), 200, np.uint8)).numpy()
    )
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    ds = Files([str(good), str(bad)], [0, 1])
    with pytest.raises(DataError, match="bad.png"):
        pipeline.build_split(ds, "val", image_size=32, batch_size=2, training=False)
    split = pipeline.build_split(
        ds, "val", image_size=32, batch_size=2, training=False,
        on_bad_image="skip",
    )
    assert split.skipped == 1 and split.num_examples == 1
    images, labels = next(iter(split.data))
    assert labels.numpy().tolist() == [0]
    np.testing.assert_allclose(images.numpy(), 200 / 255, atol=1e-2)


def test_crop_fraction_is_checked():
    with pytest.raises(ConfigError, match="crop_fraction"):
        pipeline.load_size(224, 1.5)
    assert pipeline.load_size(224, 0.875) == 256


def test_labels_out_of_range_are_refused():
    ds = Tiny(n=4)
    ds.labels = np.array([0, 1, 2, 0])
    with pytest.raises(DataError, match="labels must be in 0..1"):
        pipeline.build_split(ds, "val", image_size=32, batch_size=2, training=False)


def test_balanced_sampling_draws_classes_equally():
    ds = Tiny(n=40)
    ds.labels = np.array([0] * 36 + [1] * 4)  # 9:1
    split = pipeline.build_split(
        ds, "train", image_size=32, batch_size=8, training=True, balance=True
    )
    labels = np.concatenate([y for _, y in split.data])
    assert len(labels) == 40
    assert 0.3 < labels.mean() < 0.7  # instead of 0.1


def test_max_examples_takes_a_seeded_subset_in_order():
    ds = Tiny(n=30)
    full = np.concatenate([x for x, _ in pipeline.build_split(
        ds, "val", image_size=32, batch_size=8, training=False).data])
    picked = pipeline.build_split(ds, "val", image_size=32, batch_size=8,
                                  training=False, max_examples=7, seed=3)
    again = pipeline.build_split(ds, "val", image_size=32, batch_size=8,
                                 training=False, max_examples=7, seed=3)
    images = np.concatenate([x for x, _ in picked.data])
    assert picked.num_examples == 7 and images.shape[0] == 7
    np.testing.assert_array_equal(images, np.concatenate([x for x, _ in again.data]))
    # Each picked image is one of the split's, in the split's order.
    rows = [int(np.argmin(np.abs(full - im).sum(axis=(1, 2, 3)))) for im in images]
    assert rows == sorted(rows) and len(set(rows)) == 7
    assert pipeline.build_split(ds, "val", image_size=32, batch_size=8, training=False,
                                max_examples=100).num_examples == 30
