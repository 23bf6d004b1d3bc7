"""`imagenet`: the ImageNet (ILSVRC-2012) folder layout.

    ROOT/train/<wnid>/<image>
    ROOT/val/<wnid>/<image>                       (sorted val), or
    ROOT/val/<image> + ROOT/LOC_val_solution.csv  (Kaggle: "ImageId,wnid ...")
                     or ROOT/val_labels.txt       ("<image> <wnid>" lines)
    ROOT/wnids.txt                                (optional "wnid name" lines)

Class index = position of the wnid in sorted order (the convention of
keras.applications' 1000-class heads). Class names are the wnids; the human
names from `wnids.txt`, when present, are in `readable_names`.
"""

from __future__ import annotations

import csv
import os

from matl_keras_plugins.datasets._listing import read_lines

from matl_keras.data.dataset import Dataset
from matl_keras.data.dataset import FileExamples
from matl_keras.errors import DataError

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")


def _images(folder: str) -> list[str]:
    return sorted(
        f
        for f in os.listdir(folder)
        if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")
    )


class ImageNet(Dataset):
    """ImageNet in its `train/<wnid>/` layout (1000 classes for ILSVRC).

    Args:
        root: str. The folder holding `train/` (and optionally `val/`).
    """

    def __init__(self, root: str | None = None) -> None:
        if not root:
            raise DataError(
                "imagenet: `root` is required "
                '(gin: imagenet.root = "/data/imagenet")'
            )
        train = os.path.join(root, "train")
        if not os.path.isdir(train):
            raise DataError(
                f"imagenet: {train!r} not found; "
                "`root` must hold train/<wnid>/. "
                f"Received: root={root!r}"
            )
        self.root = root
        self.class_names = tuple(
            sorted(
                d
                for d in os.listdir(train)
                if os.path.isdir(os.path.join(train, d))
            )
        )
        if not self.class_names:
            raise DataError(f"imagenet: no class folders in {train!r}")
        self.readable_names = dict.fromkeys(self.class_names, "")
        wnids = os.path.join(root, "wnids.txt")
        if os.path.isfile(wnids):
            for line in read_lines(wnids, "imagenet wnids.txt"):
                wnid, _, name = line.partition(" ")
                if wnid in self.readable_names:
                    self.readable_names[wnid] = name.strip()

    def splits(self) -> tuple[str, ...]:
        return (
            ("train", "val")
            if os.path.isdir(os.path.join(self.root, "val"))
            else ("train",)
        )

    def examples(self, split: str) -> FileExamples:
        self.check_split(split)
        folder = os.path.join(self.root, split)
        index = {w: i for i, w in enumerate(self.class_names)}
        subdirs = [
            d
            for d in os.listdir(folder)
            if os.path.isdir(os.path.join(folder, d))
        ]
        paths, labels = [], []
        if subdirs:
            unknown = sorted(set(subdirs) - set(index))
            if unknown:
                raise DataError(
                    f"imagenet {split}: class folders {unknown[:5]} are not "
                    "among the train classes"
                )
            for wnid in sorted(subdirs):
                files = _images(os.path.join(folder, wnid))
                paths += [os.path.join(folder, wnid, f) for f in files]
                labels += [index[wnid]] * len(files)
        else:
            for image, wnid in self._flat_val_labels():
                if wnid not in index:
                    raise DataError(
                        f"imagenet val: {image!r} is labelled {wnid!r}, not "
                        "one of the train classes"
                    )
                paths.append(os.path.join(folder, image))
                labels.append(index[wnid])
        if not paths:
            raise DataError(
                f"imagenet split {split!r} has no images in {folder!r}"
            )
        return FileExamples(tuple(paths), tuple(labels))

    def _flat_val_labels(self) -> list[tuple[str, str]]:
        folder = os.path.join(self.root, "val")
        names = {os.path.splitext(f)[0]: f for f in _images(folder)}
        solution = os.path.join(self.root, "LOC_val_solution.csv")
        if os.path.isfile(solution):
            with open(solution, newline="") as f:
                rows = list(csv.reader(f))[1:]
            return sorted(
                (names.get(r[0], r[0] + ".JPEG"), r[1].split()[0]) for r in rows
            )
        labels = os.path.join(self.root, "val_labels.txt")
        lines = read_lines(
            labels,
            "imagenet val (flat val/ needs LOC_val_solution.csv or "
            "val_labels.txt)",
        )
        return [tuple(line.split()[:2]) for line in lines]
