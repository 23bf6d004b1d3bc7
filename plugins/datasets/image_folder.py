"""`image_folder`: your own images, in class folders or unlabelled.

Labelled (the default), two layouts are recognised under `root`:
- `root/<split>/<class>/...` for splits named train, val, test;
- `root/<class>/...`: split deterministically into `train` and `val` by a
  hash of each entry directly under the class folder (`val_fraction` of each
  class goes to `val`): a file, or a whole sub-folder (a patient's images
  stay together), so adding images never moves existing ones between splits.

The class is the top-level folder; images in sub-folders of any depth
(per-patient, per-series folders) belong to it. A `val` or `test` split in
which a class has fewer than `min_eval_per_class` images is refused, with the
counts: its AUC, sensitivity or specificity would not be defined.

Unlabelled (`labelled=False`, for SSTL-M pretraining): every image under
`root`, flat or nested, is one `train` split without labels; the
self-supervised stage then runs without its kNN monitor.

A binary task needs its positive class (sensitivity, specificity and F1 are
about it): `positive_class=` names it; without it, it is detected only when
exactly one of the two folder names reads as the negative class (a word
such as non, no, not, normal, negative, healthy: `CT_NonCOVID`), never from
the order of the names. The classes, their counts and the positive class are
printed when the dataset is opened.

Files with an extension of `matl_keras.data.decode.IMAGE_EXTENSIONS`
(.png .jpg .jpeg .bmp .gif .tif .tiff .webp, any case) are used; their
content decides how they are decoded. Other files and hidden files and
folders are ignored.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence

from matl_keras.data.dataset import Dataset
from matl_keras.data.dataset import FileExamples
from matl_keras.data.decode import IMAGE_EXTENSIONS
from matl_keras.errors import DataError

SPLIT_NAMES = ("train", "val", "test")
EVAL_SPLITS = ("val", "test")
# Words of a folder name that mark the negative class of a binary task.
NEGATIVE_WORDS = frozenset(
    {
        "non",
        "no",
        "not",
        "normal",
        "negative",
        "neg",
        "healthy",
        "benign",
        "control",
    }
)


def _list_images(folder: str) -> list[str]:
    """Image files under `folder`, at any depth, in a stable order."""
    found = []
    for parent, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [
            os.path.join(parent, f)
            for f in files
            if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
        ]
    return sorted(found)


def _words(name: str) -> list[str]:
    """`CT_NonCOVID` -> ['ct', 'non', 'covid']; `noncovid` -> ['noncovid']."""
    return [
        w.lower()
        for w in re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+", name)
    ]


def reads_negative(name: str) -> bool:
    """Whether a class folder name reads as the negative class."""
    return any(
        w in NEGATIVE_WORDS or (w.startswith(("non", "not")) and len(w) > 4)
        for w in _words(name)
    )


def detect_positive_class(class_names: Sequence[str]) -> str | None:
    """The positive class of a binary task when the names make it
    unambiguous (exactly one reads as negative), else None."""
    if len(class_names) != 2:
        return None
    negative = [reads_negative(n) for n in class_names]
    if negative.count(True) != 1:
        return None
    return class_names[negative.index(False)]


class ImageFolder(Dataset):
    """Your own images: class folders (any depth) or an unlabelled folder.

    Args:
        root: str. The dataset folder.
        class_names: sequence of str or None. Classes in label order
            (default: the sorted sub-folder names).
        positive_class: str or None. Positive class of a binary task
            (default: detected from the names when unambiguous; a binary
            task whose names do not tell is refused until it is given).
        val_fraction: float. Share of each class held out as `val` in the
            layout without split folders.
        labelled: bool. False: every image under `root` is one unlabelled
            `train` split (self-supervised pretraining).
        min_eval_per_class: int. Fewest images of each class a `val` or
            `test` split must hold.
    """

    def __init__(
        self,
        root: str | None = None,
        class_names: Sequence[str] | None = None,
        positive_class: str | None = None,
        val_fraction: float = 0.2,
        labelled: bool = True,
        min_eval_per_class: int = 1,
    ) -> None:
        if not root:
            raise DataError(
                "image_folder: `root` is required "
                '(gin: image_folder.root = "/path/to/images")'
            )
        if not os.path.isdir(root):
            raise DataError(
                f"image_folder: root folder not found. Received: root={root!r}"
            )
        if not 0.0 < val_fraction < 1.0:
            raise DataError(
                "image_folder: `val_fraction` must be in (0, 1). Received: "
                f"val_fraction={val_fraction}"
            )
        self.root = root
        self.val_fraction = val_fraction
        self.labelled = labelled
        self.min_eval_per_class = min_eval_per_class
        if not labelled:
            self._open_unlabelled(class_names, positive_class)
            return
        subdirs = _subdirs(root)
        self._split_layout = bool(subdirs) and set(subdirs) <= set(SPLIT_NAMES)
        if self._split_layout:
            self._splits = tuple(s for s in SPLIT_NAMES if s in subdirs)
            found = sorted(
                {
                    c
                    for s in self._splits
                    for c in _subdirs(os.path.join(root, s))
                }
            )
        else:
            self._splits = ("train", "val")
            found = subdirs
        if not found:
            raise DataError(
                f"image_folder: no class folders in {root!r} (expected "
                "root/<class>/<image> or root/<split>/<class>/<image>; for "
                "unlabelled images set image_folder.labelled = False)"
            )
        if class_names is not None:
            missing = sorted(set(class_names) - set(found))
            if missing:
                raise DataError(
                    f"image_folder: class folders {missing} not found in "
                    f"{root!r}. Found: {found}"
                )
            found = list(class_names)
        self.class_names = tuple(found)
        self._files = {
            name: self._class_files(name) for name in self.class_names
        }
        how = "given"
        if positive_class is None and len(self.class_names) == 2:
            positive_class = detect_positive_class(self.class_names)
            if positive_class is None:
                raise DataError(
                    f"image_folder: a binary task needs its positive class and "
                    f"the folder names {list(self.class_names)} do not tell "
                    "which it is. Set image_folder.positive_class = "
                    f"{self.class_names[0]!r} (or {self.class_names[1]!r})."
                )
            how = "detected from the folder names"
        self.positive_class = positive_class
        self.positive_index()  # Validates positive_class early.
        counts = ", ".join(
            f"{n} {sum(len(f) for f in self._files[n].values())}"
            for n in self.class_names
        )
        positive = (
            f"; positive class {positive_class!r} ({how})"
            if positive_class is not None
            else ""
        )
        print(f"image_folder {root}: {counts} images{positive}", flush=True)

    def _open_unlabelled(self, class_names, positive_class) -> None:
        if class_names is not None or positive_class is not None:
            raise DataError(
                "image_folder: labelled=False takes no class_names or "
                f"positive_class. Received: class_names={class_names!r}, "
                f"positive_class={positive_class!r}"
            )
        self._split_layout = False
        self._splits = ("train",)
        self._unlabelled = _list_images(self.root)
        if not self._unlabelled:
            raise DataError(
                f"image_folder: no images with extensions {IMAGE_EXTENSIONS} "
                f"under {self.root!r}"
            )
        print(
            f"image_folder {self.root}: {len(self._unlabelled)} unlabelled "
            "images (split 'train'; no labels: the kNN monitor needs "
            "pretrain.monitor_dataset)",
            flush=True,
        )

    def _class_files(self, name: str) -> dict[str, list[str]]:
        """The class's image files per split."""
        if self._split_layout:
            return {
                split: _list_images(os.path.join(self.root, split, name))
                for split in self._splits
            }
        files = _list_images(os.path.join(self.root, name))
        in_val = [self._in_val(f, name) for f in files]
        return {
            "train": [f for f, v in zip(files, in_val) if not v],
            "val": [f for f, v in zip(files, in_val) if v],
        }

    def splits(self) -> tuple[str, ...]:
        return self._splits

    def examples(self, split: str) -> FileExamples:
        self.check_split(split)
        if not self.labelled:
            return FileExamples(tuple(self._unlabelled), None)
        paths: list[str] = []
        labels: list[int] = []
        for label, name in enumerate(self.class_names):
            files = self._files[name].get(split, [])
            paths += files
            labels += [label] * len(files)
        if not paths:
            raise DataError(
                f"image_folder: split {split!r} of {self.root!r} has no "
                f"images with extensions {IMAGE_EXTENSIONS}"
            )
        if split in EVAL_SPLITS:
            self._check_evaluable(split)
        return FileExamples(tuple(paths), tuple(labels))

    def _check_evaluable(self, split: str) -> None:
        counts = {
            n: len(self._files[n].get(split, [])) for n in self.class_names
        }
        if min(counts.values()) >= self.min_eval_per_class:
            return
        listed = ", ".join(f"{n} {c}" for n, c in counts.items())
        total = sum(
            len(f) for files in self._files.values() for f in files.values()
        )
        fix = (
            f"raise image_folder.val_fraction (now {self.val_fraction}) or add "
            "images"
            if split == "val" and not self._split_layout
            else f"add images to {os.path.join(self.root, split)}"
        )
        raise DataError(
            f"image_folder: split {split!r} of {self.root!r} is too small to "
            f"evaluate: {listed} images (of {total} in all); every class needs "
            f"at least {self.min_eval_per_class} (image_folder."
            f"min_eval_per_class). To fix it, {fix}."
        )

    def _in_val(self, path: str, name: str) -> bool:
        # The entry directly under the class folder: a sub-folder (a
        # patient) goes to one split as a whole.
        inside = os.path.relpath(path, os.path.join(self.root, name))
        entry = inside.split(os.sep, 1)[0]
        key = os.path.join(name, entry).encode()
        bucket = int(hashlib.sha1(key).hexdigest()[:8], 16) / 0xFFFFFFFF
        return bucket < self.val_fraction


def _subdirs(folder: str) -> list[str]:
    return sorted(
        d
        for d in os.listdir(folder)
        if os.path.isdir(os.path.join(folder, d)) and not d.startswith(".")
    )
