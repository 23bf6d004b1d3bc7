"""`synthetic_natural`: generated colour images of 10 shape/texture classes.

A stand-in for ImageNet in STL-N: the class is a shape (disk, square,
triangle, ring, cross, star) or a texture (horizontal stripes, vertical
stripes, checkerboard, polka dots), drawn in a random colour over a random,
low-frequency textured background, at random position, size and rotation,
with noise. Colour carries no class information.
"""

from __future__ import annotations

import numpy as np
from matl_keras_plugins.datasets import _synthetic as syn


def _shape_mask(kind, y, x, cy, cx, r, angle):
    c, s = np.cos(angle), np.sin(angle)
    u = (x - cx) * c + (y - cy) * s
    v = -(x - cx) * s + (y - cy) * c
    rad = np.sqrt(u * u + v * v)
    theta = np.arctan2(v, u)
    if kind == "disk":
        return rad < r
    if kind == "square":
        return (np.abs(u) < 0.8 * r) & (np.abs(v) < 0.8 * r)
    if kind == "triangle":
        normals = [np.pi / 2 + k * 2 * np.pi / 3 for k in range(3)]
        return np.all(
            [u * np.cos(a) + v * np.sin(a) < 0.5 * r for a in normals], axis=0
        )
    if kind == "ring":
        return (rad < r) & (rad > 0.6 * r)
    if kind == "cross":
        w = 0.3 * r
        return ((np.abs(u) < w) & (np.abs(v) < r)) | (
            (np.abs(v) < w) & (np.abs(u) < r)
        )
    if kind == "star":
        return rad < r * (0.55 + 0.45 * np.cos(5 * theta))
    raise ValueError(kind)


def _texture_mask(kind, y, x, freq, phase, angle):
    c, s = np.cos(angle), np.sin(angle)
    u = x * c + y * s
    v = -x * s + y * c
    if kind == "horizontal_stripes":
        return np.sin(np.pi * freq * v + phase) > 0
    if kind == "vertical_stripes":
        return np.sin(np.pi * freq * u + phase) > 0
    if kind == "checkerboard":
        return (np.sin(np.pi * freq * u + phase) > 0) ^ (
            np.sin(np.pi * freq * v + phase) > 0
        )
    if kind == "polka_dots":
        du = np.mod(u * freq / 2 + phase, 1.0) - 0.5
        dv = np.mod(v * freq / 2 + phase, 1.0) - 0.5
        return du * du + dv * dv < 0.07
    raise ValueError(kind)


class SyntheticNatural(syn.SyntheticDataset):
    """Generated natural-image-like RGB images, 10 classes.

    Arguments as for `SyntheticDataset` (image_size, num_train, num_val,
    num_test, seed).
    """

    class_names = (
        "disk",
        "square",
        "triangle",
        "ring",
        "cross",
        "star",
        "horizontal_stripes",
        "vertical_stripes",
        "checkerboard",
        "polka_dots",
    )

    def __init__(
        self,
        image_size: int = 64,
        num_train: int = 1000,
        num_val: int = 200,
        num_test: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(image_size, num_train, num_val, num_test, seed)

    def render(self, rng: np.random.Generator, label: int) -> np.ndarray:
        s = self.image_size
        y, x = syn.grid(s)
        kind = self.class_names[label]
        background = rng.uniform(0.0, 1.0, 3)
        foreground = rng.uniform(0.0, 1.0, 3)
        while np.abs(foreground - background).sum() < 0.6:
            foreground = rng.uniform(0.0, 1.0, 3)
        img = np.empty((s, s, 3), np.float32)
        for ch in range(3):
            texture = syn.blur(
                rng.normal(0, 1, (s, s)).astype(np.float32), s / 16
            )
            img[..., ch] = background[ch] + 0.6 * texture
        if label < 6:
            mask = _shape_mask(
                kind,
                y,
                x,
                rng.uniform(-0.35, 0.35),
                rng.uniform(-0.35, 0.35),
                rng.uniform(0.3, 0.55),
                rng.uniform(0, 2 * np.pi),
            )
        else:
            region = (
                syn.ellipse(
                    y,
                    x,
                    rng.uniform(-0.2, 0.2),
                    rng.uniform(-0.2, 0.2),
                    rng.uniform(0.5, 0.8),
                    rng.uniform(0.5, 0.8),
                )
                > 0
            )
            mask = region & _texture_mask(
                kind,
                y,
                x,
                rng.uniform(3, 7),
                rng.uniform(0, 2 * np.pi),
                rng.uniform(-0.2, 0.2),
            )
        mask = syn.blur(mask.astype(np.float32), 0.5)
        img = img * (1 - mask[..., None]) + foreground * mask[..., None]
        img += rng.normal(0.0, 0.04, img.shape)
        return syn.to_uint8(img)
