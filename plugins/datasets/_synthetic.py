"""Shared machinery of the generated datasets: splits, seeding, drawing.

Every image is drawn from its own generator seeded by `(seed, split, index)`,
so an image does not change when the number of images of a split does, and
two processes with the same seed produce the same bytes.
"""

from __future__ import annotations

import abc

import numpy as np

from matl_keras.data.dataset import ArrayExamples
from matl_keras.data.dataset import Dataset
from matl_keras.errors import ConfigError

SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


class SyntheticDataset(Dataset):
    """A dataset drawn by `render(rng, label)`, balanced over classes.

    Args:
        image_size: int. Side of the generated images in pixels.
        num_train: int. Images in the `train` split.
        num_val: int. Images in the `val` split.
        num_test: int. Images in the `test` split (0: no test split).
        seed: int. Seed of the whole dataset.
        labelled_fraction: float in (0, 1]. The share of `train` whose
            labels supervised stages may use (`Dataset.labelled_fraction`);
            self-supervised stages see every image.
    """

    def __init__(
        self,
        image_size: int = 128,
        num_train: int = 400,
        num_val: int = 100,
        num_test: int = 100,
        seed: int = 0,
        labelled_fraction: float = 1.0,
    ) -> None:
        if image_size < 32:
            raise ConfigError(
                f"{type(self).__name__}: `image_size` must be at least 32. "
                f"Received: image_size={image_size}"
            )
        for arg, value in (("num_train", num_train), ("num_val", num_val)):
            if value < 1:
                raise ConfigError(
                    f"{type(self).__name__}: `{arg}` must be positive. "
                    f"Received: {arg}={value}"
                )
        if not 0.0 < labelled_fraction <= 1.0:
            raise ConfigError(
                f"{type(self).__name__}: `labelled_fraction` must be in "
                f"(0, 1]. Received: labelled_fraction={labelled_fraction}"
            )
        self.labelled_fraction = float(labelled_fraction)
        self.image_size = image_size
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.seed = seed
        self._cache: dict[str, ArrayExamples] = {}

    def splits(self) -> tuple[str, ...]:
        return tuple(s for s, n in self.sizes.items() if n > 0)

    def examples(self, split: str) -> ArrayExamples:
        self.check_split(split)
        if split not in self._cache:
            n = self.sizes[split]
            labels = np.arange(n) % self.num_classes
            images = np.stack(
                [
                    self.render(
                        np.random.default_rng([self.seed, SPLIT_IDS[split], i]),
                        int(labels[i]),
                    )
                    for i in range(n)
                ]
            )
            self._cache[split] = ArrayExamples(images, labels)
        return self._cache[split]

    @abc.abstractmethod
    def render(self, rng: np.random.Generator, label: int) -> np.ndarray:
        """One uint8 image `(size, size, 1 or 3)` of class `label`."""


# --- drawing helpers (float images in [0, 1]) ------------------------------


def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates `(y, x)` in [-1, 1]."""
    axis = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    return np.meshgrid(axis, axis, indexing="ij")


def ellipse(y, x, cy, cx, ry, rx, angle=0.0, softness=0.0):
    """Inside-ness of an ellipse: 1 inside, 0 outside, a ramp of width
    `softness` (in normalized radius units) at the edge."""
    c, s = np.cos(angle), np.sin(angle)
    dy, dx = y - cy, x - cx
    u = (dx * c + dy * s) / rx
    v = (-dx * s + dy * c) / ry
    r = np.sqrt(u * u + v * v)
    if softness <= 0:
        return (r <= 1.0).astype(np.float32)
    return np.clip((1.0 + softness / 2 - r) / softness, 0.0, 1.0).astype(
        np.float32
    )


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a 2-D array (edges replicated)."""
    if sigma <= 0:
        return image
    radius = max(1, int(3 * sigma))
    taps = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (taps / sigma) ** 2)
    kernel /= kernel.sum()
    out = image
    for axis in (0, 1):
        padded = np.pad(
            out,
            [(radius, radius) if a == axis else (0, 0) for a in (0, 1)],
            mode="edge",
        )
        acc = np.zeros_like(out)
        for w, t in zip(kernel, range(2 * radius + 1)):
            index = [slice(None), slice(None)]
            index[axis] = slice(t, t + out.shape[axis])
            acc += w * padded[tuple(index)]
        out = acc
    return out


def speckle(rng, size: int, count: int, mask: np.ndarray, amplitude: float):
    """`count` single-pixel impulses at random points of `mask`."""
    points = np.zeros((size, size), np.float32)
    ys, xs = np.nonzero(mask > 0.5)
    if len(ys) == 0 or count <= 0:
        return points
    pick = rng.integers(0, len(ys), count)
    np.add.at(points, (ys[pick], xs[pick]), amplitude)
    return points


def to_uint8(image: np.ndarray) -> np.ndarray:
    image = np.clip(image, 0.0, 1.0) * 255.0 + 0.5
    image = image.astype(np.uint8)
    return image[..., None] if image.ndim == 2 else image
