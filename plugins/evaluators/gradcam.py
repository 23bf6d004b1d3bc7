"""`gradcam` evaluator: Grad-CAM heatmaps of a split's first images, as
PNGs (image, heatmap, overlay) in `<workdir>/explain/<split>/`, and a
"does the model look at the lung" score: the share of each heatmap's mass
inside the lung box that the region-aware Generator finds
(`lung_regions.lung_box`), per image and averaged, in
`<workdir>/explain/<split>/explain.json` and the evaluator's results."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
from matl_keras_plugins.ssl_methods import lung_regions

from matl_keras.evaluation import explain
from matl_keras.evaluation.evaluator import EvalContext
from matl_keras.evaluation.evaluator import Evaluator
from matl_keras.evaluation.evaluator import first_images


def lung_mass(
    images: np.ndarray, cams: np.ndarray
) -> tuple[list[float], list[dict[str, Any]], list[bool]]:
    """Per image: the share of Grad-CAM mass inside the lung box; the box
    `(y0, x0, y1, x1)` (normalized) with `chance`, the share a uniform
    heatmap would get (the box's area: a share near it says nothing);
    and whether the lung was found (else the box is the Generator's
    central fallback)."""
    shares, boxes, found = [], [], []
    for image, cam in zip(images, cams):
        box, ok = lung_regions.lung_box(image, return_found=True)
        box = [float(v) for v in np.asarray(box)]
        shares.append(explain.mass_inside(cam, box))
        boxes.append(
            {"box": box, "chance": explain.mass_inside(np.ones_like(cam), box)}
        )
        found.append(bool(ok))
    return shares, boxes, found


class GradCAM(Evaluator):
    """Args:
    num_images: int. How many of the split's first images to draw.
    layer: str or None. Feature-map layer (default: the last feature
        map before the global pooling, or the deepest with >= 3x3
        positions; `explain.choose_gradcam_layer`).
    """

    def __init__(self, num_images: int = 8, layer: str | None = None) -> None:
        if num_images < 1:
            raise ValueError(
                f"`num_images` must be >= 1. Received: {num_images}"
            )
        self.num_images = num_images
        self.layer = layer

    # `matl-keras explain` (the core, which imports no plugin) reaches the
    # lung locator through the registry and this method.
    lung_mass = staticmethod(lung_mass)

    def run(self, context: EvalContext) -> Iterator[tuple[str, Any]]:
        images, labels = first_images(context.data, self.num_images)
        cam = explain.GradCAM(context.model, self.layer)
        probs = np.asarray(context.model.predict(images, verbose=0))
        predicted = probs.argmax(axis=1)
        cams = cam(images, predicted)
        shares, boxes, found = self.lung_mass(images, cams)
        names = context.class_names
        files, records = [], []
        folder = (
            os.path.join(context.workdir, "explain", context.split)
            if context.workdir
            else None
        )
        for i, (image, heat) in enumerate(zip(images, cams)):
            truth, guess = names[int(labels[i])], names[int(predicted[i])]
            if folder:
                files.append(
                    explain.write_row(
                        os.path.join(folder, f"gradcam_{i:04d}.png"),
                        image,
                        heat,
                        None,
                        f"{context.split} #{i}: true {truth}, "
                        f"predicted {guess} "
                        f"(p={probs[i, predicted[i]]:.2f}); "
                        f"Grad-CAM of {guess} "
                        f"at {cam.layer}; lung mass {shares[i]:.2f}",
                    )
                )
            records.append(
                {
                    "index": i,
                    "true": truth,
                    "predicted": guess,
                    "gradcam_class": guess,
                    "lung_mass": shares[i],
                    "lung_box": boxes[i],
                    "lung_found": found[i],
                }
            )
        defined = [s for s in shares if not math.isnan(s)]
        summary = {
            "layer": cam.layer,
            "layer_note": cam.note,
            "images": len(images),
            "files": files,
            "lung_mass_mean": float(np.mean(defined)) if defined else None,
            "lung_mass_chance_mean": float(
                np.mean([b["chance"] for b in boxes])
            ),
            "lung_found": int(sum(found)),
        }
        if folder:
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, "explain.json"), "w") as f:
                json.dump(
                    {
                        **summary,
                        "lung_mass": "share of the Grad-CAM mass inside "
                        "the lung box "
                        "(lung_regions.lung_box; central fallback box "
                        "where lung_found is false); chance: the share "
                        "of a uniform map (the box's area)",
                        "per_image": [
                            {
                                k: (
                                    None
                                    if isinstance(v, float) and math.isnan(v)
                                    else v
                                )
                                for k, v in r.items()
                            }
                            for r in records
                        ],
                    },
                    f,
                    indent=2,
                )
        yield "gradcam", summary
