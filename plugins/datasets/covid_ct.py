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
"""

from __future__ import annotations

import os

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
        paths, labels = [], []
        for label, (_, image_folder, list_folder) in enumerate(CLASSES):
            names = read_lines(
                self._list_path(split, list_folder), f"covid_ct split {split!r}"
            )
            folder = os.path.join(self.root, "Images-processed", image_folder)
            paths += [os.path.join(folder, n) for n in names]
            labels += [label] * len(names)
        return FileExamples(tuple(paths), tuple(labels))
