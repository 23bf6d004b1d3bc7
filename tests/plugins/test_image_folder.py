"""`image_folder` on layouts built here and on the real shared data."""

import io

import numpy as np
import pytest
from PIL import Image

from matl_keras.data import decode
from matl_keras.data import pipeline
from matl_keras.errors import DataError
from matl_keras_plugins.datasets.image_folder import ImageFolder
from tests.conftest import shared_data


def _png(path, value=128, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.full((12, 16, 3), value, np.uint8)
    image = Image.fromarray(array).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())


def test_class_folders_split_by_hash(tmp_path):
    for i in range(20):
        _png(tmp_path / "cat" / f"{i}.png", 10)
        _png(tmp_path / "dog" / f"{i}.PNG", 240)
    (tmp_path / "cat" / "notes.txt").write_text("ignored")
    ds = ImageFolder(str(tmp_path), val_fraction=0.25)
    assert ds.class_names == ("cat", "dog")
    assert ds.splits() == ("train", "val")
    train, val = ds.examples("train"), ds.examples("val")
    assert len(train) + len(val) == 40 and 0 < len(val) < 20
    assert not set(train.paths) & set(val.paths)
    # Stable: the same files land in val every time.
    assert ImageFolder(str(tmp_path), val_fraction=0.25).examples("val") == val


def test_split_folders_and_given_class_order(tmp_path):
    for split in ("train", "val", "test"):
        _png(tmp_path / split / "COVID" / "a.png")
        _png(tmp_path / split / "NonCOVID" / "b.png", mode="L")
    ds = ImageFolder(
        str(tmp_path), class_names=["NonCOVID", "COVID"], positive_class="COVID"
    )
    assert ds.splits() == ("train", "val", "test")
    assert ds.positive_index() == 1
    test = ds.examples("test")
    assert test.labels == (0, 1) and test.paths[0].endswith("b.png")
    split = pipeline.build_split(ds, "test", image_size=16, batch_size=2, training=False)
    images, labels = next(iter(split.data))
    assert images.shape == (2, 16, 16, 3)


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="root is required|`root` is required"):
        ImageFolder()
    with pytest.raises(DataError, match="root folder not found"):
        ImageFolder(str(tmp_path / "missing"))
    with pytest.raises(DataError, match="no class folders"):
        ImageFolder(str(tmp_path))
    _png(tmp_path / "a" / "1.png")
    with pytest.raises(DataError, match=r"\['b'\] not found"):
        ImageFolder(str(tmp_path), class_names=["a", "b"])
    with pytest.raises(DataError, match="positive_class"):
        ImageFolder(str(tmp_path), positive_class="z")


def test_real_covid_ct_images_all_decode():
    root = shared_data("covid-ct", "Images-processed")
    ds = ImageFolder(root, positive_class="CT_COVID")
    assert ds.class_names == ("CT_COVID", "CT_NonCOVID")
    paths = ds.examples("train").paths + ds.examples("val").paths
    assert len(paths) > 500
    # RGB, RGBA, L and JPEG-inside-.png files are all usable.
    assert decode.find_bad_images(paths) == []
    split = pipeline.build_split(ds, "val", image_size=64, batch_size=16, training=False)
    images, _ = next(iter(split.data))
    assert images.shape == (16, 64, 64, 3)


def test_real_imagenet_sample_split_layout():
    root = shared_data("imagenet-sample")
    ds = ImageFolder(root)
    assert ds.splits() == ("train",)
    assert ds.num_classes == 1000
    assert len(ds.examples("train")) == 1000
