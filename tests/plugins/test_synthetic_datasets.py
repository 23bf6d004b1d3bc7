"""The embedded generated datasets."""

import numpy as np
import pytest
from matl_keras_plugins.datasets.synthetic_ct import SyntheticCT
from matl_keras_plugins.datasets.synthetic_cxr import SyntheticCXR
from matl_keras_plugins.datasets.synthetic_natural import SyntheticNatural
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict

from matl_keras.errors import ConfigError

ALL = [
    (SyntheticCT, 2, 1),
    (SyntheticCXR, 3, 1),
    (SyntheticNatural, 10, 3),
]


@pytest.mark.parametrize("cls, classes, channels", ALL)
def test_shapes_balance_and_determinism(cls, classes, channels):
    ds = cls(
        image_size=48,
        num_train=2 * classes,
        num_val=classes,
        num_test=0,
        seed=3,
    )
    assert ds.splits() == ("train", "val")
    assert ds.num_classes == classes == len(set(ds.class_names))
    train = ds.examples("train")
    assert train.images.shape == (2 * classes, 48, 48, channels)
    assert train.images.dtype == np.uint8
    assert sorted(np.bincount(train.labels)) == [2] * classes
    again = cls(
        image_size=48,
        num_train=2 * classes,
        num_val=classes,
        num_test=0,
        seed=3,
    )
    np.testing.assert_array_equal(again.examples("train").images, train.images)
    other = cls(
        image_size=48,
        num_train=2 * classes,
        num_val=classes,
        num_test=0,
        seed=4,
    )
    assert not np.array_equal(other.examples("train").images, train.images)
    # Splits differ, and an image does not depend on the split's size.
    assert not np.array_equal(ds.examples("val").images, train.images[:classes])
    bigger = cls(
        image_size=48, num_train=4 * classes, num_val=1, num_test=0, seed=3
    )
    np.testing.assert_array_equal(
        bigger.examples("train").images[: 2 * classes], train.images
    )


def test_images_use_the_range_and_vary():
    images = SyntheticCT(num_train=8, num_val=2).examples("train").images
    assert images.min() < 20 and images.max() > 200
    assert np.std(images.reshape(8, -1).mean(1)) > 1.0


def _one_statistic_auc(statistic):
    ds = SyntheticCT(image_size=64, num_train=200, num_val=1, num_test=0)
    examples = ds.examples("train")
    images = examples.images.astype(np.float32)[..., 0] / 255.0
    value = statistic(images)
    auc = roc_auc_score(examples.labels, value)
    return max(auc, 1 - auc)


@pytest.mark.parametrize(
    "statistic",
    [
        lambda x: x.mean(axis=(1, 2)),
        lambda x: x.std(axis=(1, 2)),
        lambda x: x[:, 16:48, 8:56].mean(axis=(1, 2)),  # lung band
        lambda x: np.percentile(x.reshape(len(x), -1), 90, axis=1),
    ],
)
def test_ct_is_not_solved_by_one_pixel_statistic(statistic):
    assert _one_statistic_auc(statistic) < 0.75


def test_ct_classes_are_separable_from_pixels():
    # Learnable: even a linear model on downsampled pixels beats chance.
    ds = SyntheticCT(image_size=64, num_train=300, num_val=1, num_test=0)
    ex = ds.examples("train")
    x = (
        ex.images[..., 0]
        .reshape(300, 16, 4, 16, 4)
        .mean((2, 4))
        .reshape(300, -1)
    )
    x = (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-6)
    scores = cross_val_predict(
        LogisticRegression(C=0.05, max_iter=2000),
        x,
        ex.labels,
        cv=3,
        method="predict_proba",
    )[:, 1]
    assert roc_auc_score(ex.labels, scores) > 0.6


def test_arguments_are_checked():
    with pytest.raises(ConfigError, match="image_size"):
        SyntheticCT(image_size=8)
    with pytest.raises(ConfigError, match="num_train"):
        SyntheticCXR(num_train=0)


def test_no_test_split_when_num_test_is_zero():
    assert SyntheticCT(num_train=2, num_val=2, num_test=0).splits() == (
        "train",
        "val",
    )
    assert "test" in SyntheticCT(num_train=2, num_val=2, num_test=2).splits()
