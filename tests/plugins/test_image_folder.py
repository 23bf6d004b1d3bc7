"""`image_folder` on layouts built here and on the real shared data."""

import io

import numpy as np
import pytest
from matl_keras_plugins.datasets.image_folder import ImageFolder
from PIL import Image

from matl_keras.data import decode
from matl_keras.data import pipeline
from matl_keras.errors import DataError
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
    ds = ImageFolder(str(tmp_path), val_fraction=0.25, positive_class="dog")
    assert ds.class_names == ("cat", "dog")
    assert ds.splits() == ("train", "val")
    train, val = ds.examples("train"), ds.examples("val")
    assert len(train) + len(val) == 40 and 0 < len(val) < 20
    assert not set(train.paths) & set(val.paths)
    # Stable: the same files land in val every time.
    again = ImageFolder(str(tmp_path), val_fraction=0.25, positive_class="dog")
    assert again.examples("val") == val


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
    split = pipeline.build_split(
        ds, "test", image_size=16, batch_size=2, training=False
    )
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
    split = pipeline.build_split(
        ds, "val", image_size=64, batch_size=16, training=False
    )
    images, _ = next(iter(split.data))
    assert images.shape == (16, 64, 64, 3)


def test_real_imagenet_sample_split_layout():
    root = shared_data("imagenet-sample")
    ds = ImageFolder(root)
    assert ds.splits() == ("train",)
    assert ds.num_classes == 1000
    assert len(ds.examples("train")) == 1000


def test_nested_folders_belong_to_their_top_level_class(tmp_path, capsys):
    """Per-patient sub-folders: every image counts, a patient's images stay
    in one split, and the class is the top-level folder."""
    for patient in range(10):
        for i in range(3):
            _png(tmp_path / "CT_COVID" / f"p{patient}" / "series1" / f"{i}.png")
            _png(tmp_path / "CT_NonCOVID" / f"n{patient}" / f"{i}.jpg")
    _png(tmp_path / "CT_COVID" / ".hidden" / "x.png")
    ds = ImageFolder(str(tmp_path), val_fraction=0.3)
    train, val = ds.examples("train"), ds.examples("val")
    assert len(train) + len(val) == 60
    patients = lambda ex: {
        p.split("/")[-2] if "CT_NonCOVID" in p else p.split("/")[-3]
        for p in ex.paths
    }
    assert not patients(train) & patients(val)
    # The positive class: CT_NonCOVID reads as negative, so CT_COVID is
    # positive, although both contain "COVID" and it sorts first.
    assert ds.positive_class == "CT_COVID" and ds.positive_index() == 0
    printed = capsys.readouterr().out
    assert "CT_COVID 30, CT_NonCOVID 30 images" in printed
    assert (
        "positive class 'CT_COVID' (detected from the folder names)" in printed
    )


@pytest.mark.parametrize(
    "names, positive",
    [
        (("COVID", "NonCOVID"), "COVID"),
        (("covid", "noncovid"), "covid"),
        (("normal", "pneumonia"), "pneumonia"),
        (("No_Finding", "Nodule"), "Nodule"),
        (("cat", "dog"), None),  # nothing reads as negative
        (("non_covid", "not_covid"), None),  # both do
        (("a", "b", "normal"), None),  # not binary
    ],
)
def test_positive_class_is_detected_only_when_unambiguous(names, positive):
    from matl_keras_plugins.datasets.image_folder import detect_positive_class

    assert detect_positive_class(names) == positive


def test_binary_names_that_do_not_tell_are_refused(tmp_path):
    for name in ("CT_A", "CT_B"):
        for i in range(5):
            _png(tmp_path / name / f"{i}.png")
    with pytest.raises(
        DataError, match=r"image_folder.positive_class = 'CT_A'"
    ):
        ImageFolder(str(tmp_path))
    assert (
        ImageFolder(str(tmp_path), positive_class="CT_B").positive_index() == 1
    )


def test_a_split_too_small_to_evaluate_is_refused_with_the_counts(tmp_path):
    for split, n_covid, n_non in (("train", 4, 4), ("val", 1, 0)):
        for i in range(n_covid):
            _png(tmp_path / split / "COVID" / f"{i}.png")
        for i in range(n_non):
            _png(tmp_path / split / "NonCOVID" / f"{i}.png")
    (tmp_path / "val" / "NonCOVID").mkdir(parents=True, exist_ok=True)
    ds = ImageFolder(str(tmp_path))
    assert len(ds.examples("train")) == 8
    with pytest.raises(
        DataError,
        match=(
            r"split 'val' of .* is too small to evaluate: COVID 1, NonCOVID 0 "
            r"images \(of 9 in all\); every class needs at least 1"
        ),
    ):
        ds.examples("val")
    with pytest.raises(DataError, match="at least 3"):
        ImageFolder(str(tmp_path), min_eval_per_class=3).examples("val")


def test_unlabelled_flat_or_nested(tmp_path):
    for i in range(3):
        _png(tmp_path / "flat" / f"{i}.png")
        _png(tmp_path / "nested" / f"patient{i}" / "a" / f"{i}.png")
        _png(tmp_path / "nested" / f"patient{i}" / f"{i}.jpeg")
    flat = ImageFolder(str(tmp_path / "flat"), labelled=False)
    assert flat.splits() == ("train",) and flat.class_names == ()
    assert len(flat.examples("train")) == 3
    assert flat.examples("train").labels is None
    assert flat.class_counts("train") == {}
    nested = ImageFolder(str(tmp_path / "nested"), labelled=False)
    assert len(nested.examples("train")) == 6
    # The core's training input takes it as it is (SSL pretraining).
    split = pipeline.build_split(
        nested, "train", image_size=16, batch_size=2, training=True, epochs=1
    )
    assert (split.num_examples, split.steps, split.class_counts) == (6, 3, {})
    images, _ = next(iter(split.data))
    assert images.shape == (2, 16, 16, 3)
    with pytest.raises(DataError, match="no class folders.*labelled = False"):
        ImageFolder(str(tmp_path / "flat"))
    with pytest.raises(DataError, match="takes no class_names"):
        ImageFolder(str(tmp_path / "flat"), labelled=False, positive_class="x")
