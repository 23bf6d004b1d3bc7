"""`covidx`: the COVIDx chest X-ray layout (Wang & Wong 2020):

    ROOT/train.txt, ROOT/test.txt    lines "patient_id filename label source"
    ROOT/train/<filename>, ROOT/test/<filename>

Labels are `normal`, `pneumonia`, `COVID-19` (the class order). COVIDx has
no validation split; `val` is carved out of `train` by a hash of the
patient id (`val_fraction` of the patients), so no patient is in both.
File names may contain spaces: a line's first field is the patient, its
last two the label and source, everything between the file name.
"""

from __future__ import annotations

import hashlib
import os

from matl_keras_plugins.datasets._listing import read_lines

from matl_keras.data.dataset import Dataset
from matl_keras.data.dataset import FileExamples
from matl_keras.errors import DataError


class COVIDx(Dataset):
    """COVIDx, classes normal (0), pneumonia (1), COVID-19 (2).

    Args:
        root: str. The folder holding `train.txt`, `test.txt`, `train/`,
            `test/`.
        val_fraction: float. Share of the training patients held out as
            `val` (0 disables the `val` split).
    """

    class_names = ("normal", "pneumonia", "COVID-19")
    positive_class = "COVID-19"

    def __init__(
        self, root: str | None = None, val_fraction: float = 0.1
    ) -> None:
        if not root:
            raise DataError(
                'covidx: `root` is required (gin: covidx.root = "/data/COVIDx")'
            )
        if not os.path.isdir(root):
            raise DataError(
                f"covidx: root folder not found. Received: root={root!r}"
            )
        if not 0.0 <= val_fraction < 1.0:
            raise DataError(
                "covidx: `val_fraction` must be in [0, 1). Received: "
                f"val_fraction={val_fraction}"
            )
        self.root = root
        self.val_fraction = val_fraction

    def splits(self) -> tuple[str, ...]:
        found = [
            s
            for s in ("train", "test")
            if os.path.isfile(os.path.join(self.root, f"{s}.txt"))
        ]
        if "train" in found and self.val_fraction > 0:
            found.insert(1, "val")
        return tuple(found)

    def _in_val(self, patient: str) -> bool:
        digest = hashlib.sha1(patient.encode()).hexdigest()[:8]
        return int(digest, 16) / 0xFFFFFFFF < self.val_fraction

    def examples(self, split: str) -> FileExamples:
        if split not in ("train", "val", "test"):
            raise DataError(
                f"covidx has no split {split!r}. Splits: train, val, test"
            )
        source = "test" if split == "test" else "train"
        list_path = os.path.join(self.root, f"{source}.txt")
        lines = read_lines(list_path, f"covidx split {split!r}")
        paths, labels = [], []
        for number, line in enumerate(lines, 1):
            fields = line.split()
            if len(fields) < 4:
                raise DataError(
                    f"{list_path}, line {number}: expected 'patient_id "
                    f"filename label source'. Received: {line!r}"
                )
            patient, label = fields[0], fields[-2]
            filename = " ".join(fields[1:-2])
            if label not in self.class_names:
                raise DataError(
                    f"{list_path}, line {number}: label must be one of "
                    f"{list(self.class_names)}. Received: {label!r}"
                )
            if split != "test" and self.val_fraction > 0:
                if self._in_val(patient) != (split == "val"):
                    continue
            paths.append(os.path.join(self.root, source, filename))
            labels.append(self.class_names.index(label))
        if not paths:
            raise DataError(f"covidx split {split!r} is empty ({list_path})")
        return FileExamples(tuple(paths), tuple(labels))
