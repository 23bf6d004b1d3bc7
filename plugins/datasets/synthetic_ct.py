"""`synthetic_ct`: generated axial chest CT slices, COVID vs NonCOVID.

What is drawn, per slice (intensities are a soft-tissue-like lung window):
- body outline with a subcutaneous fat ring, mediastinum and heart, spine
  with its canal, rib cross-sections;
- two lungs in radiological display (the patient's right lung on the
  image's left), the left lung smaller and notched by the heart;
- vessels whose density and calibre grow from the upper to the lower zone,
  the right horizontal fissure and both oblique fissures: the paper's five
  lobe regions (right upper/middle/lower, left upper/lower) look different;
- noise, blur, and random pose, size, density and window per slice.

COVID slices add peripheral ground-glass opacities (faint, textured, soft
edged, mostly in the lower/posterior lung) and sometimes a consolidation.
NonCOVID slices sometimes carry a distractor (a small dense nodule or a
dependent atelectasis band), and the per-slice window jitter is larger than
the brightness a lesion adds, so no single pixel statistic separates the
classes (see tests/plugins/test_synthetic_datasets.py).
"""

from __future__ import annotations

import numpy as np
from matl_keras_plugins.datasets import _synthetic as syn


def _lung_point(rng, lung, lower_bias):
    """A point near the periphery of a lung given as (cy, cx, ry, rx)."""
    cy, cx, ry, rx = lung
    theta = rng.uniform(0, 2 * np.pi)
    if rng.uniform() < lower_bias:  # lower / posterior half
        theta = rng.uniform(0.15 * np.pi, 0.85 * np.pi)
    rho = rng.uniform(0.6, 0.92)
    return cy + rho * ry * np.sin(theta), cx + rho * rx * np.cos(theta)


class SyntheticCT(syn.SyntheticDataset):
    """Generated chest CT slices (grayscale), classes NonCOVID / COVID.

    Arguments as for `SyntheticDataset` (image_size, num_train, num_val,
    num_test, seed).
    """

    class_names = ("NonCOVID", "COVID")
    positive_class = "COVID"

    def render(self, rng: np.random.Generator, label: int) -> np.ndarray:
        s = self.image_size
        px = s / 128.0  # blur widths are tuned at 128 px
        y, x = syn.grid(s)
        scale = rng.uniform(0.88, 1.04)
        y = (y - rng.uniform(-0.05, 0.05)) / scale
        x = (x - rng.uniform(-0.05, 0.05)) / scale

        # Body, fat ring, mediastinum.
        tissue = rng.uniform(0.45, 0.58)
        body_ry, body_rx = rng.uniform(0.68, 0.78), rng.uniform(0.86, 0.95)
        body = syn.ellipse(y, x, 0.05, 0.0, body_ry, body_rx, softness=0.03)
        inner = syn.ellipse(
            y, x, 0.05, 0.0, body_ry - 0.07, body_rx - 0.07, softness=0.03
        )
        img = 0.02 + body * (tissue - 0.02) - 0.12 * (body - inner)

        # Lungs: (cy, cx, ry, rx); patient's right lung on the image's left.
        right = (
            rng.uniform(-0.04, 0.04),
            -0.40 + rng.uniform(-0.03, 0.03),
            rng.uniform(0.46, 0.54),
            rng.uniform(0.25, 0.30),
        )
        left = (
            rng.uniform(-0.04, 0.04),
            0.40 + rng.uniform(-0.03, 0.03),
            rng.uniform(0.44, 0.52),
            rng.uniform(0.23, 0.27),
        )
        tilt = rng.uniform(-0.12, 0.12)
        rl = syn.ellipse(y, x, *right, angle=tilt, softness=0.05)
        ll = syn.ellipse(y, x, *left, angle=-tilt, softness=0.05)
        heart = syn.ellipse(y, x, 0.22, 0.12, 0.22, 0.2, softness=0.1)
        ll = ll * (1.0 - heart)
        lungs = np.clip(rl + ll, 0.0, 1.0)
        lung_value = rng.uniform(0.05, 0.14)
        img = img * (1.0 - lungs) + lungs * lung_value
        img += 0.05 * heart * (1.0 - lungs)

        # Spine, canal, ribs.
        spine = syn.ellipse(y, x, 0.62, 0.0, 0.1, 0.09, softness=0.1)
        img = np.maximum(img, 0.9 * spine)
        canal = syn.ellipse(y, x, 0.56, 0.0, 0.035, 0.035, softness=0.2)
        img = img * (1 - canal) + canal * tissue
        for angle in np.linspace(0.15 * np.pi, 0.85 * np.pi, 4):
            for side in (-1, 1):
                ry_, rx_ = 0.93 * (body_ry - 0.07), 0.93 * (body_rx - 0.07)
                cy = 0.05 - ry_ * np.sin(angle + np.pi / 2 - 0.3)
                cx = side * rx_ * abs(np.cos(angle))
                rib = syn.ellipse(y, x, cy, cx, 0.025, 0.04, softness=0.3)
                img = np.maximum(img, 0.85 * rib)

        # Vessels: sparse and fine at the top, dense and thick at the base.
        upper = (y < -0.15).astype(np.float32)
        lower = (y > 0.15).astype(np.float32)
        middle = 1.0 - upper - lower
        fine = syn.speckle(rng, s, int(14 * px**2), lungs * upper, 1.0)
        fine += syn.speckle(rng, s, int(22 * px**2), lungs * middle, 1.0)
        thick = syn.speckle(rng, s, int(10 * px**2), lungs * middle, 1.0)
        thick += syn.speckle(rng, s, int(26 * px**2), lungs * lower, 1.0)
        vessels = 0.9 * syn.blur(fine, 0.6 * px) + 2.2 * syn.blur(
            thick, 1.1 * px
        )
        img += np.clip(vessels, 0, 0.45) * lungs

        # Fissures: right horizontal, and an oblique one in each lung.
        fy = right[0] + rng.uniform(-0.12, -0.04)
        line = np.abs(y - fy - 0.1 * (x - right[1])) < 0.012
        img += 0.12 * line * rl
        for lung, mask, sign in ((right, rl, 1), (left, ll, -1)):
            oblique = (
                np.abs((y - lung[0] - 0.1) - sign * 0.9 * (x - lung[1])) < 0.012
            )
            img += 0.1 * oblique * mask

        # Findings.
        if label == 1:
            for _ in range(rng.integers(2, 6)):
                lung = right if rng.uniform() < 0.5 else left
                cy, cx = _lung_point(rng, lung, lower_bias=0.7)
                r = rng.uniform(0.08, 0.16)
                blob = syn.ellipse(
                    y,
                    x,
                    cy,
                    cx,
                    r,
                    r * rng.uniform(0.7, 1.3),
                    angle=rng.uniform(0, np.pi),
                    softness=0.7,
                )
                texture = 0.7 + 0.6 * syn.blur(
                    rng.uniform(size=(s, s)).astype(np.float32), 1.0 * px
                )
                img += rng.uniform(0.18, 0.32) * blob * texture * lungs
            if rng.uniform() < 0.6:
                lung = right if rng.uniform() < 0.5 else left
                cy, cx = _lung_point(rng, lung, lower_bias=0.8)
                r = rng.uniform(0.04, 0.08)
                dense = syn.ellipse(y, x, cy, cx, r, r, softness=0.25)
                img += rng.uniform(0.3, 0.45) * dense * lungs
        elif rng.uniform() < 0.5:
            lung = right if rng.uniform() < 0.5 else left
            if rng.uniform() < 0.5:  # small, sharp nodule anywhere
                cy = lung[0] + rng.uniform(-0.5, 0.5) * lung[2]
                cx = lung[1] + rng.uniform(-0.5, 0.5) * lung[3]
                r = rng.uniform(0.02, 0.04)
                nodule = syn.ellipse(y, x, cy, cx, r, r, softness=0.1)
                img += 0.5 * nodule * lungs
            else:  # dependent atelectasis: thin band at the posterior base
                band = syn.ellipse(
                    y,
                    x,
                    lung[0] + 0.8 * lung[2],
                    lung[1],
                    0.05,
                    0.7 * lung[3],
                    softness=0.3,
                )
                img += 0.25 * band * lungs

        img = syn.blur(img.astype(np.float32), 0.6 * px)
        img += rng.normal(0.0, rng.uniform(0.01, 0.035), img.shape)
        # Window jitter: larger than the mean brightness a lesion adds.
        img = (
            (img - 0.5) * rng.uniform(0.8, 1.2) + 0.5 + rng.uniform(-0.08, 0.08)
        )
        return syn.to_uint8(img)
