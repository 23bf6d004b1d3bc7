"""`dicom_ct` on DICOM files written here, on pydicom's bundled real CT
slice, and on every kind of bad file."""

import shutil

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from tests_dicom_phantoms import chest_hu
from tests_dicom_phantoms import write_slice
from tests_dicom_phantoms import write_volume


def _dataset(**kwargs):
    from matl_keras_dicom.dicom_ct import DicomCT

    return DicomCT(**kwargs)


def test_hounsfield_units_and_lung_window_on_known_values(installed, tmp_path):
    from matl_keras_dicom.dicom_ct import hounsfield
    from matl_keras_dicom.dicom_ct import window

    hu = np.array([[-1000.0, -600.0, 0.0], [-1350.0, 150.0, 400.0]])
    path = write_slice(
        str(tmp_path / "a.dcm"),
        hu,
        "P1",
        "1.2",
        "1.3",
        0,
        slope=2.0,
        intercept=-1024.0,
    )
    ds = pydicom.dcmread(path)
    assert ds.pixel_array[0, 2] == 512  # stored: (0 + 1024) / 2
    np.testing.assert_allclose(hounsfield(ds), hu)
    # Lung window W 1500 / L -600: -1350 -> 0, -600 -> 127.5, 150 -> 255.
    np.testing.assert_array_equal(
        window(hu, 1500, -600), [[60, 128, 230], [0, 255, 255]]
    )


def test_real_ct_slice_from_pydicom(installed, tmp_path):
    source = get_testdata_file("CT_small.dcm")
    (tmp_path / "ct").mkdir()
    shutil.copy(source, tmp_path / "ct" / "slice")
    data = _dataset(
        root=str(tmp_path / "ct"), size=64, split_fractions={"train": 1.0}
    )
    examples = data.examples("train")
    assert examples.images.shape == (1, 64, 64, 1) and examples.labels is None
    ds = pydicom.dcmread(source)
    hu = pydicom.pixels.apply_modality_lut(ds.pixel_array, ds)
    from matl_keras_dicom.dicom_ct import hounsfield

    np.testing.assert_allclose(hounsfield(ds), hu)
    assert data.report["patients"] == 1


def _cohort(root, n=6):
    labels = ["PatientID,StudyInstanceUID,label"]
    for i in range(n):
        covid = i % 2 == 1
        study = write_volume(root / f"p{i}" / "series1", f"P{i}", covid)
        labels.append(f"P{i},{study},{'COVID' if covid else 'NonCOVID'}")
    csv = root.parent / "labels.csv"
    csv.write_text("\n".join(labels) + "\n")
    return str(csv)


def test_labels_splits_and_slice_choice(installed, tmp_path):
    root = tmp_path / "dicom"
    csv = _cohort(root)
    data = _dataset(
        root=str(root),
        labels_csv=csv,
        label_key="PatientID",
        label_column="label",
        size=32,
        split_fractions={"train": 0.5, "val": 0.5},
    )
    train, val = data.examples("train"), data.examples("val")
    assert len(train) + len(val) == 36 and len(val) > 0
    assert set(np.unique(np.concatenate([train.labels, val.labels]))) == {0, 1}
    assert data.report["patients"] == 6
    # Patient-disjoint: each patient's 6 slices are in one split.
    assert len(train) % 6 == 0
    # Each slice's source is its patient (SSL masks a patient's slices).
    assert len(train.sources) == len(train)
    assert all(s.startswith("patient:") for s in train.sources)
    assert len(set(train.sources) | set(val.sources)) == 6
    assert all(train.sources.count(s) == 6 for s in set(train.sources))
    # The same labels keyed by study (PatientID column renamed away).
    text = open(csv).read().replace("PatientID,", "patient,")
    (tmp_path / "by_study.csv").write_text(text)
    by_study = _dataset(
        root=str(root),
        labels_csv=str(tmp_path / "by_study.csv"),
        label_key="StudyInstanceUID",
        label_column="label",
        size=32,
        split_fractions={"train": 0.5, "val": 0.5},
    )
    np.testing.assert_array_equal(
        by_study.examples("train").labels, train.labels
    )
    every = _dataset(
        root=str(root),
        slices="every",
        every=2,
        size=32,
        split_fractions={"all": 1.0},
    )
    assert len(every.examples("all")) == 18
    lung = _dataset(
        root=str(root),
        slices="lung",
        min_lung_fraction=0.02,
        size=32,
        split_fractions={"all": 1.0},
    )
    assert 0 < len(lung.examples("all")) < 36  # the end slices hold little lung


def test_every_kth_slice_follows_position_not_file_names(installed, tmp_path):
    from matl_keras_dicom.dicom_ct import window

    root = tmp_path / "dicom"
    root.mkdir()
    # File names run against z; each slice is a flat HU value that grows with z.
    for z in range(6):
        write_slice(
            str(root / f"IM{5 - z}"),
            np.full((16, 16), -1200.0 + 150 * z),
            "P0",
            "1.2",
            "1.2.1",
            z,
        )
    data = _dataset(
        root=str(root),
        slices="every",
        every=2,
        size=8,
        split_fractions={"all": 1.0},
    )
    values = data.examples("all").images[:, 0, 0, 0]
    expected = [
        window(np.array([-1200.0 + 150 * z]), 1500, -600)[0] for z in (0, 2, 4)
    ]
    np.testing.assert_array_equal(values, expected)


def test_label_errors_name_the_file_and_key(installed, tmp_path):
    from matl_keras.errors import DataError

    root = tmp_path / "dicom"
    csv = _cohort(root, 2)
    bad = tmp_path / "bad.csv"
    bad.write_text("PatientID,label\nP0,COVID\nP1,flu\n")
    with pytest.raises(DataError, match=r"bad.csv, line 3: label 'flu'"):
        _dataset(
            root=str(root), labels_csv=str(bad), label_key="PatientID"
        ).examples("train")
    partial = tmp_path / "partial.csv"
    partial.write_text("PatientID,label\nP0,COVID\n")
    with pytest.raises(DataError, match=r"PatientID\(s\) have no row.*P1"):
        _dataset(
            root=str(root), labels_csv=str(partial), label_key="PatientID"
        ).examples("train")
    with pytest.raises(DataError, match="needs columns"):
        _dataset(
            root=str(root),
            labels_csv=csv,
            label_key="StudyInstanceUID",
            label_column="diagnosis",
        ).examples("train")


def test_bad_files_are_named_then_refused_or_skipped(installed, tmp_path):
    from pydicom.uid import JPEG2000

    from matl_keras.errors import DataError

    root = tmp_path / "dicom"
    write_volume(root / "good", "P0", False, slices=3)
    (root / "notes.txt").write_text("not a DICOM file")
    write_slice(
        str(root / "nopixels"),
        chest_hu(64, 1, 3, False),
        "P2",
        "1.2.3",
        "1.2.4",
        0,
        pixel_data=False,
    )
    shutil.copy(get_testdata_file("MR_small.dcm"), root / "mr.dcm")
    # A JPEG 2000 file: pydicom has no decoder for it without extra packages.
    path = write_slice(
        str(root / "j2k"), chest_hu(64, 1, 3, False), "P3", "1.3", "1.3.1", 0
    )
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEG2000
    ds.PixelData = pydicom.encaps.encapsulate(
        [b"\xff\x4f\xff\x51" + b"\x00" * 64]
    )
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    # A series whose slices disagree on size.
    for z, size in enumerate((64, 48)):
        write_slice(
            str(root / f"mixed{z}"),
            chest_hu(size, z, 2, False),
            "P4",
            "1.4",
            "1.4.1",
            z,
        )
    # A scout (coronal) image: left out, not an error.
    write_slice(
        str(root / "scout"),
        chest_hu(64, 1, 3, False),
        "P0",
        "1.5",
        "1.5.1",
        0,
        orientation=(1, 0, 0, 0, 0, -1),
    )

    with pytest.raises(DataError) as refused:
        _dataset(root=str(root), size=32).examples("train")
    message = str(refused.value)
    for name, reason in (
        ("notes.txt", "not a DICOM file"),
        ("nopixels", "no pixel data"),
        ("mr.dcm", "modality 'MR', not CT"),
        ("j2k", "cannot decode transfer syntax JPEG 2000"),
        ("mixed0", "mixes slice sizes"),
        ("mixed1", "mixes slice sizes"),
    ):
        assert name in message and reason in message, (name, message)
    assert "scout" not in message
    skipped = _dataset(
        root=str(root),
        size=32,
        on_bad_file="skip",
        split_fractions={"all": 1.0},
    )
    assert len(skipped.examples("all")) == 3
    assert skipped.report["files_bad"] == 6 and skipped.report["not_axial"] == 1


def test_configuration_errors_name_the_parameter(installed, tmp_path):
    from matl_keras.errors import ConfigError

    with pytest.raises(ConfigError, match="dicom_ct.root"):
        _dataset(root=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="dicom_ct.slices"):
        _dataset(root=str(tmp_path), slices="some")
    with pytest.raises(ConfigError, match="split_fractions"):
        _dataset(root=str(tmp_path), split_fractions={"train": 0.5})
