"""The dataset plugin contract.

A dataset plugin says which classes and splits it has and, per split, where
the images are: files on disk (`FileExamples`, decoded by the core's single
decoding path in `matl_keras.data.decode`) or pixels it generated itself
(`ArrayExamples`). It does not decode, resize or batch: that is the core's
job, so every dataset gets the same bad-file policy and the same pipeline.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import ClassVar

import numpy as np

from matl_keras import PLUGIN_API_VERSION
from matl_keras.errors import DataError
from matl_keras.errors import PluginError


@dataclasses.dataclass(frozen=True)
class FileExamples:
    """A split stored as image files.

    Args:
        paths: tuple of str. Image files (PNG, JPEG, BMP or GIF by content).
        labels: tuple of int or None. Class index per file; None when the
            split is unlabelled (self-supervised data).
        sources: tuple of str or None. The patient (or other source:
            a study, a paper's figure) each image comes from; None when
            every image is its own. Contrastive SSL never takes an image of
            the query's source as its negative (`pretrain.negatives`).
    """

    paths: tuple[str, ...]
    labels: tuple[int, ...] | None = None
    sources: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.labels is not None and len(self.labels) != len(self.paths):
            raise DataError(
                f"FileExamples: {len(self.paths)} paths but "
                f"{len(self.labels)} labels"
            )
        _check_sources("FileExamples", "paths", self.sources, len(self.paths))

    def __len__(self) -> int:
        return len(self.paths)


@dataclasses.dataclass(frozen=True, eq=False)
class ArrayExamples:
    """A split held in memory.

    Args:
        images: uint8 array `(n, height, width, channels)`, channels 1 or 3.
        labels: int array `(n,)` or None when unlabelled.
        sources: tuple of str or None. As in `FileExamples`.
    """

    images: np.ndarray
    labels: np.ndarray | None = None
    sources: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[-1] not in (1, 3):
            raise DataError(
                "ArrayExamples.images must have shape (n, h, w, 1|3). "
                f"Received: shape={self.images.shape}"
            )
        if self.images.dtype != np.uint8:
            raise DataError(
                "ArrayExamples.images must be uint8. "
                f"Received: dtype={self.images.dtype}"
            )
        if self.labels is not None and len(self.labels) != len(self.images):
            raise DataError(
                f"ArrayExamples: {len(self.images)} images but "
                f"{len(self.labels)} labels"
            )
        _check_sources(
            "ArrayExamples", "images", self.sources, len(self.images)
        )

    def __len__(self) -> int:
        return len(self.images)


def _check_sources(kind: str, items: str, sources, n: int) -> None:
    if sources is None:
        return
    if len(sources) != n:
        raise DataError(
            f"{kind}: {n} {items} but {len(sources)} sources (one per image)"
        )
    wrong = [s for s in sources if not isinstance(s, str) or not s]
    if wrong:
        raise DataError(
            f"{kind}.sources must be non-empty strings (a patient or study "
            f"id per image). Received: {wrong[0]!r}"
        )


Examples = FileExamples | ArrayExamples


def source_ids(examples: Examples) -> list[int]:
    """An int per image, equal for images of one source (numbered in
    order of first appearance); each image its own when `sources` is
    None."""
    if examples.sources is None:
        return list(range(len(examples)))
    numbers: dict[str, int] = {}
    return [numbers.setdefault(s, len(numbers)) for s in examples.sources]


class Dataset(abc.ABC):
    """Base class of dataset plugins (entry-point group
    `matl_keras.datasets`).

    Subclasses set `class_names` (and `positive_class` for binary diagnosis
    tasks) and implement `splits()` and `examples(split)`. Constructor
    arguments are what users bind in gin (`my_dataset.root = "/data"`), so
    give them defaults where a default makes sense.

    Example:
    ```python
    class MyCT(Dataset):
        class_names = ("NonCOVID", "COVID")
        positive_class = "COVID"

        def __init__(self, root: str = "/data/my_ct"):
            self.root = root

        def splits(self):
            return ("train", "val")

        def examples(self, split):
            paths, labels = read_my_index(self.root, split)
            return FileExamples(tuple(paths), tuple(labels))
    ```
    """

    api_version: ClassVar[int] = PLUGIN_API_VERSION
    class_names: tuple[str, ...] = ()
    positive_class: str | None = None
    # The share of the train split whose labels supervised stages may use
    # (a stratified subset, drawn with the run's seed); self-supervised
    # stages use every image. Real datasets leave it at 1; the embedded
    # synthetic_ct sets it to be the few-labels case SSL is for.
    labelled_fraction: float = 1.0

    @abc.abstractmethod
    def splits(self) -> tuple[str, ...]:
        """Names of the splits this dataset has, e.g. ("train", "val")."""

    @abc.abstractmethod
    def examples(self, split: str) -> Examples:
        """The images (and labels) of `split`."""

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def positive_index(self) -> int | None:
        """Index of `positive_class` in `class_names`, or None."""
        if self.positive_class is None:
            return None
        if self.positive_class not in self.class_names:
            raise DataError(
                f"{self.name}: positive_class={self.positive_class!r} is not "
                f"one of class_names={list(self.class_names)}"
            )
        return self.class_names.index(self.positive_class)

    def check_split(self, split: str) -> None:
        """Raises `DataError` naming the available splits."""
        if split not in self.splits():
            raise DataError(
                f"{self.name} has no split {split!r}. Available: "
                f"{', '.join(self.splits())}"
            )

    def class_counts(self, split: str) -> dict[str, int]:
        """Images per class name in `split` (empty when unlabelled)."""
        labels = self.examples(split).labels
        if labels is None:
            return {}
        counts = np.bincount(np.asarray(labels), minlength=self.num_classes)
        return {n: int(c) for n, c in zip(self.class_names, counts)}


def examples_of(dataset: Dataset, split: str) -> Examples:
    """`dataset.examples(split)`, checked against the contract.

    Raises:
        DataError: `split` is not one of `dataset.splits()`.
        PluginError: the plugin returned something else than
            `FileExamples` or `ArrayExamples`.
    """
    dataset.check_split(split)
    examples = dataset.examples(split)
    if not isinstance(examples, (FileExamples, ArrayExamples)):
        raise PluginError(
            f"dataset {dataset.name}: examples({split!r}) must return "
            "FileExamples or ArrayExamples (matl_keras.data.dataset). "
            f"Received: {type(examples).__name__}"
        )
    return examples
