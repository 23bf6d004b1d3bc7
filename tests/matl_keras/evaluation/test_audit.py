"""Leakage audit on generated images with known duplicates and patients."""

import json
import os
import zipfile

import numpy as np
import pytest
from PIL import Image

from matl_keras.errors import DataError
from matl_keras.evaluation import audit
from tests.cli_testing import error_line
from tests.cli_testing import matl
from tests.cli_testing import matl_here


def _scan(seed, size=96):
    """A smooth random 'slice': blobs, so hashes are stable under resizing."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] / size
    image = np.zeros((size, size))
    for _ in range(6):
        cy, cx, r, v = (
            rng.uniform(0.1, 0.9),
            rng.uniform(0.1, 0.9),
            rng.uniform(0.05, 0.3),
            rng.uniform(0.2, 1),
        )
        image += v * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / r**2)
    return (255 * image / image.max()).astype(np.uint8)


@pytest.fixture
def root(tmp_path):
    """image_folder layout train/val/test x a/b; patient ids in a COVIDx
    list. Planted: an exact copy train->val, a re-encoded and resized
    copy train->test, an exact copy within train, one patient in train and
    val with different images."""
    base = tmp_path / "data"
    files = {}
    for split, count in (("train", 6), ("val", 3), ("test", 3)):
        for i in range(count):
            cls = "ab"[i % 2]
            folder = base / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            name = f"{split}{i}.png"
            Image.fromarray(_scan(100 * len(files) + i)).save(folder / name)
            files[name] = folder / name
    (base / "val" / "a" / "copy_of_train0.png").write_bytes(
        files["train0.png"].read_bytes()
    )
    (base / "train" / "b" / "twin_of_train1.png").write_bytes(
        files["train1.png"].read_bytes()
    )
    shrunk = Image.open(files["train2.png"]).resize((80, 80))
    shrunk.convert("RGB").save(
        base / "test" / "a" / "recoded_train2.jpg", quality=80
    )
    shared = {"train3.png", "val1.png"}
    lines = [
        f"{'p_shared' if name in shared else 'p_' + name} {name} x src"
        for name in sorted(files)
    ]
    (base / "list.txt").write_text("\n".join(lines) + "\n")
    return str(base)


def _dataset(root):
    from matl_keras_plugins.datasets.image_folder import ImageFolder

    return ImageFolder(root=root, positive_class="b")


def test_finds_planted_duplicates_and_patients(root):
    report = audit.audit(_dataset(root))
    s = report["summary"]
    assert report["splits"] == {"train": 7, "val": 4, "test": 4}
    exact = {
        tuple(sorted(os.path.basename(i["path"]) for i in e["images"])): e[
            "across_splits"
        ]
        for e in report["exact_duplicates"]
    }
    assert exact == {
        ("copy_of_train0.png", "train0.png"): True,
        ("train1.png", "twin_of_train1.png"): False,
    }
    near = [
        (
            sorted(os.path.basename(i["path"]) for i in n["images"]),
            n["across_splits"],
        )
        for n in report["near_duplicates"]
    ]
    assert near == [(["recoded_train2.jpg", "train2.png"], True)]
    assert report["near_duplicates"][0]["distance"] <= audit.NEAR_THRESHOLD
    assert report["patients"]["in_several_splits"] == {
        "p_shared": {"train": ["train3.png"], "val": ["val1.png"]}
    }
    assert s == {
        "exact_groups_across_splits": 1,
        "exact_groups_within_a_split": 1,
        "near_pairs_across_splits": 1,
        "near_pairs_within_a_split": 0,
        "patients_in_several_splits": 1,
    }
    assert report["leak"]
    # Unrelated images stay apart: the nearest other pair is far above the
    # threshold.
    clean = audit.audit(_dataset(root), splits=["val"], patients={})
    assert not clean["leak"] and clean["near_duplicates"] == []


def test_hash_distances_behave():
    a = _scan(1)
    same = audit.dhash(Image.fromarray(a).resize((120, 120)))
    other = audit.dhash(_scan(2))
    h = audit.dhash(a)
    assert (h != same).sum() <= 10 and (h != other).sum() > 60
    pairs = audit.hamming_pairs(np.stack([h, same, other]), 10)
    assert [(i, j) for i, j, _ in pairs] == [(0, 1)]


def test_refuse_and_cli(root, tmp_path):
    out = str(tmp_path / "audit.json")
    with pytest.raises(DataError, match="1 patient\\(s\\) across splits"):
        audit.run(_dataset(root), None, "refuse", out)
    assert json.load(open(out))["leak"] is True
    with pytest.raises(DataError, match="on_leak"):
        audit.audit(_dataset(root), on_leak="ignore")
    gin = f"--gin_param=image_folder.root = {root!r}"
    positive = "--gin_param=image_folder.positive_class = 'b'"
    warned = matl(
        "audit", "--dataset=image_folder", gin, positive, f"--output={out}"
    )
    assert warned.returncode == 0, warned.stderr
    assert "LEAK: findings across splits" in warned.stdout
    assert (
        "patient p_shared: train 1 (train3.png); val 1 (val1.png)"
        in warned.stdout
    )
    line = error_line(
        matl_here(
            "audit", "--dataset=image_folder", gin, positive, "--on_leak=refuse"
        )
    )
    assert "leakage audit" in line and "on_leak='refuse'" in line
    # One split alone has no leak to refuse.
    ok = matl_here(
        "audit",
        "--dataset=image_folder",
        gin,
        positive,
        "--splits=val",
        "--on_leak=refuse",
    )
    assert ok.returncode == 0 and "no finding across splits" in ok.stdout


def test_patient_ids_from_csv_and_xlsx(tmp_path):
    (tmp_path / "meta.csv").write_text(
        ",image name,patient id\n0,a.jpg,p1\n1,b.jpg,p2\n"
    )
    shared = ["File name", "Patient ID", "b.png", "Patient 7"]
    strings = "".join(f"<si><t>{t}</t></si>" for t in shared)
    ns = 'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"'
    sheet = (
        f"<worksheet {ns}><sheetData>"
        '<row r="1"><c r="A1" t="s"><v>0</v></c>'
        '<c r="B1" t="s"><v>1</v></c></row>'
        '<row r="2"><c r="A2" t="s"><v>2</v></c>'
        '<c r="B2" t="s"><v>3</v></c></row>'
        "</sheetData></worksheet>"
    )
    with zipfile.ZipFile(tmp_path / "meta.xlsx", "w") as z:
        z.writestr("xl/sharedStrings.xml", f"<sst {ns}>{strings}</sst>")
        z.writestr("xl/worksheets/sheet1.xml", sheet)
    (tmp_path / "notes.txt").write_text("just some words\n")
    ids, sources = audit.patient_ids(str(tmp_path))
    assert ids == {"a.jpg": "p1", "b.jpg": "p2", "b.png": "Patient 7"}
    assert [os.path.basename(p) for p in sources] == ["meta.csv", "meta.xlsx"]
