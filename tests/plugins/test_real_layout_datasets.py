"""covid_ct, covidx and imagenet on layouts built here (with the real
quirks) and on ../shared/data when present."""

import os

import numpy as np
import pytest
import tensorflow as tf
from matl_keras_plugins.datasets.covid_ct import CovidCT
from matl_keras_plugins.datasets.covidx import COVIDx
from matl_keras_plugins.datasets.imagenet import ImageNet

from matl_keras.data import decode
from matl_keras.data import pipeline
from matl_keras.errors import DataError
from tests.conftest import shared_data

PNG = tf.io.encode_png(np.full((9, 11, 3), 100, np.uint8)).numpy()
JPEG = tf.io.encode_jpeg(np.full((9, 11, 3), 200, np.uint8)).numpy()


def _covid_ct_tree(root, with_test=False):
    for folder, names in (
        ("CT_COVID", ["2020.02.25.20021568-p23-108%0.png", "b.png"]),
        ("CT_NonCOVID", ["c.jpg", "1%0.jpg"]),
    ):
        os.makedirs(root / "Images-processed" / folder, exist_ok=True)
        for name in names:
            # A JPEG named .png, as in the real data.
            (root / "Images-processed" / folder / name).write_bytes(
                JPEG if name == "b.png" else PNG
            )
    split = root / "Data-split"
    (split / "COVID").mkdir(parents=True)
    (split / "NonCOVID").mkdir(parents=True)
    (split / "COVID" / "trainCT_COVID.txt").write_bytes(
        b"2020.02.25.20021568-p23-108%0.png\nb.png"
    )  # no final newline
    (split / "NonCOVID" / "trainCT_NonCOVID.txt").write_bytes(
        b"c.jpg\r\n1%0.jpg\r\n\r\n"
    )  # CRLF
    (split / "COVID" / "valCT_COVID.txt").write_bytes(
        b"\xef\xbb\xbfb.png\n"
    )  # BOM
    (split / "NonCOVID" / "valCT_NonCOVID.txt").write_bytes(b"c.jpg\n")
    if with_test:
        (split / "COVID" / "testCT_COVID.txt").write_bytes(b"b.png\n")


def test_covid_ct_layout_with_quirks(tmp_path):
    _covid_ct_tree(tmp_path)
    ds = CovidCT(str(tmp_path))
    assert ds.splits() == ("train", "val")
    assert ds.class_names == ("NonCOVID", "COVID") and ds.positive_index() == 1
    train = ds.examples("train")
    assert [os.path.basename(p) for p in train.paths] == [
        "c.jpg",
        "1%0.jpg",
        "2020.02.25.20021568-p23-108%0.png",
        "b.png",
    ]
    assert train.labels == (0, 0, 1, 1)
    # No NonCOVID-CT-MetaInfo.csv: a NonCOVID image is its own source; a
    # COVID one's is its paper (a name without the paper pattern: itself).
    assert train.sources == (
        "image:c.jpg",
        "image:1%0.jpg",
        "paper:2020.02.25.20021568",
        "image:b.png",
    )
    (tmp_path / "NonCOVID-CT-MetaInfo.csv").write_text(
        ",image name,patient id\n0,c.jpg,crawled_patient_0\n"
        "1,1%0.jpg,crawled_patient_0\n"
    )
    assert (
        ds.examples("train").sources[:2] == ("patient:crawled_patient_0",) * 2
    )
    (tmp_path / "NonCOVID-CT-MetaInfo.csv").write_text(
        "name,patient\nc.jpg,1\n"
    )
    with pytest.raises(DataError, match="MetaInfo.csv.*'image name'"):
        ds.examples("train")
    (tmp_path / "NonCOVID-CT-MetaInfo.csv").unlink()
    assert ds.class_counts("val") == {"NonCOVID": 1, "COVID": 1}
    split = pipeline.build_split(
        ds, "train", image_size=8, batch_size=2, training=True
    )
    assert split.num_examples == 4


def test_covid_ct_missing_list_names_the_file(tmp_path):
    _covid_ct_tree(tmp_path, with_test=True)  # NonCOVID test list missing
    ds = CovidCT(str(tmp_path))
    assert "test" not in ds.splits()
    expected = os.path.join(
        str(tmp_path), "Data-split", "NonCOVID", "testCT_NonCOVID.txt"
    )
    with pytest.raises(DataError, match="expected the list file") as e:
        ds.examples("test")
    assert expected in str(e.value)
    with pytest.raises(DataError, match="Images-processed"):
        CovidCT(str(tmp_path / "nowhere"))


def test_covidx_layout_patient_disjoint_val(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    lines = []
    for i in range(40):
        name = f"img {i}.jpg"  # spaces in names happen
        (tmp_path / "train" / name).write_bytes(JPEG)
        label = ["normal", "pneumonia", "COVID-19"][i % 3]
        lines.append(f"p{i // 2} {name} {label} cohen")
    (tmp_path / "train.txt").write_text("\r\n".join(lines))
    (tmp_path / "test" / "t.jpg").write_bytes(JPEG)
    (tmp_path / "test.txt").write_text("q1 t.jpg pneumonia rsna\n")
    ds = COVIDx(str(tmp_path), val_fraction=0.3)
    assert ds.splits() == ("train", "val", "test")
    train, val = ds.examples("train"), ds.examples("val")
    assert len(train) + len(val) == 40 and len(val) > 0
    patients = lambda ex: {
        os.path.basename(p).split()[1].split(".")[0] for p in ex.paths
    }
    # Two images per patient: both land on the same side.
    assert all(
        int(n) // 2 not in {int(m) // 2 for m in patients(val)}
        for n in patients(train)
    )
    assert ds.examples("test").labels == (1,)
    assert decode.find_bad_images(train.paths) == []


def test_covidx_bad_lines_are_reported_with_line_numbers(tmp_path):
    (tmp_path / "train.txt").write_text("p1 a.jpg COVID-19 x\np2 b.jpg flu x\n")
    with pytest.raises(
        DataError, match=r"train.txt, line 2: label must be one of"
    ):
        COVIDx(str(tmp_path), val_fraction=0).examples("train")
    (tmp_path / "train.txt").write_text("p1 a.jpg\n")
    with pytest.raises(DataError, match="line 1: expected 'patient_id"):
        COVIDx(str(tmp_path), val_fraction=0).examples("train")


def test_imagenet_layouts(tmp_path):
    for wnid in ("n02", "n01"):
        (tmp_path / "train" / wnid).mkdir(parents=True)
        (tmp_path / "train" / wnid / f"{wnid}_1.JPEG").write_bytes(JPEG)
    (tmp_path / "wnids.txt").write_text("n01 tench\nn02 goldfish\n")
    ds = ImageNet(str(tmp_path))
    assert ds.class_names == ("n01", "n02")  # sorted wnid order
    assert ds.readable_names == {"n01": "tench", "n02": "goldfish"}
    assert ds.splits() == ("train",)
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "v1.JPEG").write_bytes(JPEG)
    (tmp_path / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\nv1,n02 1 2 3 4\n"
    )
    val = ImageNet(str(tmp_path)).examples("val")
    assert val.labels == (1,) and val.paths[0].endswith("v1.JPEG")


def test_real_covid_ct():
    root = shared_data("covid-ct")
    ds = CovidCT(root)
    assert ds.splits() == ("train", "val")
    assert ds.class_counts("train") == {"NonCOVID": 234, "COVID": 191}
    assert ds.class_counts("val") == {"NonCOVID": 58, "COVID": 60}
    # 425 slices of 137 sources (32 papers, 105 patients).
    sources = ds.examples("train").sources
    assert len(set(sources)) == 137
    assert sum(s.startswith("paper:") for s in set(sources)) == 32
    assert not any(s.startswith("image:") for s in sources)
    paths = ds.examples("train").paths + ds.examples("val").paths
    assert decode.find_bad_images(paths) == []
    with pytest.raises(DataError, match="testCT_"):
        ds.examples("test")


def test_real_covidx_like_cxr():
    ds = COVIDx(shared_data("cxr"))
    counts = {s: ds.class_counts(s) for s in ds.splits()}
    total = {c: counts["train"][c] + counts["val"][c] for c in ds.class_names}
    assert total == {"normal": 31, "pneumonia": 60, "COVID-19": 387}
    assert counts["test"] == {"normal": 9, "pneumonia": 23, "COVID-19": 101}
    assert decode.find_bad_images(ds.examples("test").paths) == []


def test_real_imagenet_sample():
    ds = ImageNet(shared_data("imagenet-sample"))
    assert ds.num_classes == 1000
    assert ds.readable_names["n01440764"] == "tench"
    assert len(ds.examples("train")) == 1000
