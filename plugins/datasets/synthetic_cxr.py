"""`synthetic_cxr`: generated frontal chest X-rays, normal / pneumonia /
COVID-19.

Each radiograph has a body silhouette, two lung fields with domed bases, the
heart shadow (to the image's right: the patient's left), mediastinum,
clavicles and ribs, noise and random exposure. The classes follow the
radiological patterns that tell them apart:
- normal: clear lungs (sometimes a small nodule as a distractor);
- pneumonia (bacterial, lobar): one dense, well-defined consolidation in one
  lung, mostly in a lower zone;
- COVID-19: bilateral, peripheral, hazy multifocal opacities, lower zones
  predominating.
"""

from __future__ import annotations

import numpy as np
from matl_keras_plugins.datasets import _synthetic as syn


class SyntheticCXR(syn.SyntheticDataset):
    """Generated chest X-rays (grayscale), 3 classes.

    Arguments as for `SyntheticDataset` (image_size, num_train, num_val,
    num_test, seed).
    """

    class_names = ("normal", "pneumonia", "COVID-19")
    positive_class = "COVID-19"

    def render(self, rng: np.random.Generator, label: int) -> np.ndarray:
        s = self.image_size
        px = s / 128.0
        y, x = syn.grid(s)
        y = (y - rng.uniform(-0.05, 0.05)) / rng.uniform(0.9, 1.05)
        x = (x - rng.uniform(-0.05, 0.05)) / rng.uniform(0.9, 1.05)

        body = syn.ellipse(y, x, 0.2, 0.0, 1.05, 0.88, softness=0.15)
        img = 0.06 + 0.5 * body
        lungs_info = []
        masks = []
        for side in (-1, 1):
            lung = (
                -0.08 + rng.uniform(-0.04, 0.04),
                side * (0.36 + rng.uniform(-0.03, 0.03)),
                rng.uniform(0.55, 0.65),
                rng.uniform(0.22, 0.27),
            )
            mask = syn.ellipse(
                y,
                x,
                *lung,
                angle=side * rng.uniform(0.03, 0.12),
                softness=0.12,
            )
            lungs_info.append(lung)
            masks.append(mask)
        lungs = np.clip(masks[0] + masks[1], 0, 1)
        img = img * (1 - 0.6 * lungs)
        heart = syn.ellipse(y, x, 0.3, 0.1, 0.26, 0.27, softness=0.15)
        img += 0.22 * heart
        mediastinum = syn.ellipse(y, x, -0.2, 0.0, 0.6, 0.11, softness=0.3)
        img += 0.18 * mediastinum

        # Ribs: arcs across both hemithoraces; clavicles at the top.
        for k in range(9):
            y0 = -0.62 + k * 0.14 + rng.uniform(-0.02, 0.02)
            arc = np.abs(y - (y0 + 0.35 * (np.abs(x) - 0.1) ** 2)) < 0.022
            img += 0.09 * arc * body * (np.abs(x) > 0.08)
        for side in (-1, 1):
            clavicle = np.abs(y + 0.72 - 0.25 * (side * x - 0.3)) < 0.03
            img += 0.15 * clavicle * (np.abs(x) < 0.7) * (side * x > 0)

        if label == 1:  # lobar consolidation, one lung
            index = rng.integers(0, 2)
            cy, cx, ry, rx = lungs_info[index]
            zone = rng.choice([0.45, 0.0, -0.4], p=[0.6, 0.25, 0.15])
            r = rng.uniform(0.12, 0.2)
            patch = syn.ellipse(
                y,
                x,
                cy + zone * ry,
                cx + rng.uniform(-0.3, 0.3) * rx,
                r,
                r * rng.uniform(0.8, 1.4),
                softness=0.25,
            )
            img += rng.uniform(0.22, 0.35) * patch * masks[index]
        elif label == 2:  # bilateral, peripheral, hazy
            for index in (0, 1, *rng.integers(0, 2, rng.integers(0, 3))):
                cy, cx, ry, rx = lungs_info[index]
                side = np.sign(cx)
                zone = (
                    rng.uniform(0.0, 0.6)
                    if rng.uniform() < 0.75
                    else (rng.uniform(-0.5, 0.0))
                )
                r = rng.uniform(0.08, 0.15)
                blob = syn.ellipse(
                    y,
                    x,
                    cy + zone * ry,
                    cx + side * rng.uniform(0.35, 0.7) * rx,
                    r,
                    r,
                    softness=0.8,
                )
                texture = 0.6 + 0.8 * syn.blur(
                    rng.uniform(size=(s, s)).astype(np.float32), 1.5 * px
                )
                img += rng.uniform(0.1, 0.2) * blob * texture * masks[index]
        elif rng.uniform() < 0.25:
            index = rng.integers(0, 2)
            cy, cx, ry, rx = lungs_info[index]
            r = rng.uniform(0.025, 0.04)
            nodule = syn.ellipse(
                y,
                x,
                cy + rng.uniform(-0.5, 0.5) * ry,
                cx + rng.uniform(-0.5, 0.5) * rx,
                r,
                r,
                softness=0.2,
            )
            img += 0.3 * nodule * masks[index]

        img = syn.blur(img.astype(np.float32), 0.8 * px)
        img += rng.normal(0.0, rng.uniform(0.01, 0.03), img.shape)
        img = (
            (img - 0.4) * rng.uniform(0.8, 1.2) + 0.4 + rng.uniform(-0.07, 0.07)
        )
        return syn.to_uint8(img)
