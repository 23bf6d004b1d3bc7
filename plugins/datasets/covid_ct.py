"""`covid_ct`: the COVID19-CT dataset (Zhao et al. 2020) in its upstream
layout (github.com/UCSD-AI4H/COVID-CT):

    ROOT/Images-processed/CT_COVID/<image>
    ROOT/Images-processed/CT_NonCOVID/<image>
    ROOT/Data-split/COVID/{train,val,test}CT_COVID.txt
    ROOT/Data-split/NonCOVID/{train,val,test}CT_NonCOVID.txt

Each list holds one file name per line (CRLF or LF, final newline or not);
the label is the folder. A split is available when both of its lists exist;
asking for a split whose list is missing names the file that was expected.
Images are decoded by content (34 files named .png are JPEG inside).

Sources (`FileExamples.sources`): several slices come from one patient. A
COVID image's name starts with the medRxiv/bioRxiv id of the paper its
figure was cut from (`2020.02.25.20021568-p23-...`): its source is that
paper (one paper shows one or a few patients). A NonCOVID image's source
is its `patient id` in the upstream `ROOT/NonCOVID-CT-MetaInfo.csv`
(columns `image name`, `patient id`); without that file, or for a name
it does not list, an image is its own source.
"""

from __future__ import annotations

import csv
import os
import re

from matl_keras_plugins.datasets._listing import read_lines

from matl_keras.data.dataset import Dataset
from matl_keras.data.dataset import FileExamples
from matl_keras.errors import DataError

SPLITS = ("train", "val", "test")
# label index -> (class name, image folder, list folder)
CLASSES = (
    ("NonCOVID", "CT_NonCOVID", "NonCOVID"),
    ("COVID", "CT_COVID", "COVID"),
)
NONCOVID_META = "NonCOVID-CT-MetaInfo.csv"
# "<paper id>-p<page>-<figure>..." (every COVID file name upstream).
_PAPER = re.compile(r"^(?P<paper>.+?)-p\d+-")


def paper_source(name: str) -> str:
    """The source of a COVID image: the paper its figure was cut from."""
    match = _PAPER.match(name)
    return f"paper:{match['paper']}" if match else f"image:{name}"


def read_patients(path: str) -> dict[str, str]:
    """`image name -> patient id` from NonCOVID-CT-MetaInfo.csv.

    Raises:
        DataError: the file lacks the two columns (named).
    """
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        fields = [c.strip() for c in reader.fieldnames or []]
        if "image name" not in fields or "patient id" not in fields:
            raise DataError(
                f"covid_ct: {path!r} must have the columns 'image name' and "
                f"'patient id'. Received: columns {fields}"
            )
        rows = [
            {k.strip(): (v or "").strip() for k, v in r.items()} for r in reader
        ]
    return {
        r["image name"]: f"patient:{r['patient id']}"
        for r in rows
        if r["image name"] and r["patient id"]
    }


class CovidCT(Dataset):
    """COVID19-CT, classes NonCOVID (0) and COVID (1, the positive class).

    Args:
        root: str. The folder holding `Images-processed/` and `Data-split/`.
    """

    class_names = tuple(c[0] for c in CLASSES)
    positive_class = "COVID"

    def __init__(self, root: str | None = None) -> None:
        if not root:
            raise DataError(
                "covid_ct: `root` is required "
                '(gin: covid_ct.root = "/data/COVID-CT")'
            )
        for sub in ("Images-processed", "Data-split"):
            if not os.path.isdir(os.path.join(root, sub)):
                raise DataError(
                    f"covid_ct: {os.path.join(root, sub)!r} not found; `root` "
                    "must hold Images-processed/ and Data-split/ (the upstream "
                    f"COVID-CT layout). Received: root={root!r}"
                )
        self.root = root

    def _list_path(self, split: str, list_folder: str) -> str:
        return os.path.join(
            self.root, "Data-split", list_folder, f"{split}CT_{list_folder}.txt"
        )

    def splits(self) -> tuple[str, ...]:
        return tuple(
            s
            for s in SPLITS
            if all(os.path.isfile(self._list_path(s, c[2])) for c in CLASSES)
        )

    def check_split(self, split: str) -> None:
        if split not in SPLITS:
            raise DataError(
                f"covid_ct has no split {split!r}. Splits: {', '.join(SPLITS)}"
            )
        for _, _, list_folder in CLASSES:
            path = self._list_path(split, list_folder)
            if not os.path.isfile(path):
                raise DataError(
                    f"covid_ct split {split!r}: expected the list file "
                    f"{path!r}, not found"
                )

    def examples(self, split: str) -> FileExamples:
        self.check_split(split)
        meta = os.path.join(self.root, NONCOVID_META)
        patients = read_patients(meta) if os.path.isfile(meta) else {}
        paths, labels, sources = [], [], []
        for label, (name, image_folder, list_folder) in enumerate(CLASSES):
            names = read_lines(
                self._list_path(split, list_folder), f"covid_ct split {split!r}"
            )
            folder = os.path.join(self.root, "Images-processed", image_folder)
            paths += [os.path.join(folder, n) for n in names]
            labels += [label] * len(names)
            if name == "COVID":
                sources += [paper_source(n) for n in names]
            else:
                sources += [patients.get(n, f"image:{n}") for n in names]
        return FileExamples(tuple(paths), tuple(labels), tuple(sources))
