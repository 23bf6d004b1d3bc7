"""`gradcam` evaluator: Grad-CAM heatmaps of a split's first images, as
PNGs (image, heatmap, overlay) in `<workdir>/explain/<split>/`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from matl_keras.evaluation import explain
from matl_keras.evaluation.evaluator import EvalContext
from matl_keras.evaluation.evaluator import Evaluator
from matl_keras.evaluation.evaluator import first_images


class GradCAM(Evaluator):
    """Args:
        num_images: int. How many of the split's first images to draw.
        layer: str or None. Feature-map layer (default: the last residual
            block's output, `explain.gradcam_layer`).
    """

    def __init__(self, num_images: int = 8, layer: str | None = None) -> None:
        if num_images < 1:
            raise ValueError(f"`num_images` must be >= 1. Received: {num_images}")
        self.num_images = num_images
        self.layer = layer

    def run(self, context: EvalContext) -> Iterator[tuple[str, Any]]:
        images, labels = first_images(context.data, self.num_images)
        cam = explain.GradCAM(context.model, self.layer)
        cams = cam(images)
        layer = cam.layer
        files = []
        if context.workdir:
            folder = os.path.join(context.workdir, "explain", context.split)
            for i, (image, cam) in enumerate(zip(images, cams)):
                files.append(explain.write_row(
                    os.path.join(folder, f"gradcam_{i:04d}.png"), image, cam, None,
                    f"{context.split} #{i}: label {context.class_names[int(labels[i])]}",
                ))
        yield "gradcam", {"layer": layer, "images": len(images), "files": files}
