"""`image_folder`: images in one sub-folder per class.

Two layouts are recognised under `root`:
- `root/<split>/<class>/<image>` for splits named train, val, test;
- `root/<class>/<image>`: split deterministically into `train` and `val`
  by a hash of each file's relative path (`val_fraction` of each class goes
  to `val`), so adding images never moves existing ones between splits.

Files with an image extension (.png .jpg .jpeg .bmp .gif .tif .tiff .webp,
any case) are used; their content decides how they are decoded. Other files
are ignored.
Classes are the sub-folder names in sorted order unless `class_names` is
given.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

from matl_keras.data.decode import IMAGE_EXTENSIONS
from matl_keras.data.dataset import Dataset
from matl_keras.data.dataset import FileExamples
from matl_keras.errors import DataError

SPLIT_NAMES = ("train", "val", "test")


def _list_images(folder: str) -> list[str]:
    return sorted(
        os.path.join(folder, f)
        for f in os.listdir(folder)
        if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
    )


class ImageFolder(Dataset):
    """Labelled images in class folders.

    Args:
        root: str. The dataset folder.
        class_names: sequence of str or None. Classes in label order
            (default: the sorted sub-folder names).
        positive_class: str or None. Positive class of a binary task.
        val_fraction: float. Share of each class held out as `val` in the
            layout without split folders.
    """

    def __init__(
        self,
        root: str | None = None,
        class_names: Sequence[str] | None = None,
        positive_class: str | None = None,
        val_fraction: float = 0.2,
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
        subdirs = sorted(
            d for d in os.listdir(root)
            if os.path.isdir(os.path.join(root, d)) and not d.startswith(".")
        )
        self._split_layout = bool(subdirs) and set(subdirs) <= set(SPLIT_NAMES)
        if self._split_layout:
            self._splits = tuple(s for s in SPLIT_NAMES if s in subdirs)
            found = sorted({
                c
                for s in self._splits
                for c in os.listdir(os.path.join(root, s))
                if os.path.isdir(os.path.join(root, s, c))
            })
        else:
            self._splits = ("train", "val")
            found = subdirs
        if not found:
            raise DataError(
                f"image_folder: no class folders in {root!r} (expected "
                "root/<class>/<image> or root/<split>/<class>/<image>)"
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
        self.positive_class = positive_class
        self.positive_index()  # Validates positive_class early.

    def splits(self) -> tuple[str, ...]:
        return self._splits

    def examples(self, split: str) -> FileExamples:
        self.check_split(split)
        paths: list[str] = []
        labels: list[int] = []
        for label, name in enumerate(self.class_names):
            if self._split_layout:
                folder = os.path.join(self.root, split, name)
                files = _list_images(folder) if os.path.isdir(folder) else []
            else:
                files = [
                    f
                    for f in _list_images(os.path.join(self.root, name))
                    if (self._in_val(f) == (split == "val"))
                ]
            paths += files
            labels += [label] * len(files)
        if not paths:
            raise DataError(
                f"image_folder: split {split!r} of {self.root!r} has no "
                f"images with extensions {IMAGE_EXTENSIONS}"
            )
        return FileExamples(tuple(paths), tuple(labels))

    def _in_val(self, path: str) -> bool:
        key = os.path.relpath(path, self.root).encode()
        bucket = int(hashlib.sha1(key).hexdigest()[:8], 16) / 0xFFFFFFFF
        return bucket < self.val_fraction
