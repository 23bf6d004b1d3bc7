"""`attention_maps` evaluator: the last non-local block's attention averaged
over all query positions (the paper's Fig. 4, columns 4-5) for a split's
first images, as PNGs in `<workdir>/explain/<split>/`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from matl_keras.evaluation import explain
from matl_keras.evaluation.evaluator import EvalContext
from matl_keras.evaluation.evaluator import Evaluator
from matl_keras.evaluation.evaluator import first_images


class AttentionMaps(Evaluator):
    """Args:
    num_images: int. How many of the split's first images to draw.
    """

    def __init__(self, num_images: int = 8) -> None:
        if num_images < 1:
            raise ValueError(
                f"`num_images` must be >= 1. Received: {num_images}"
            )
        self.num_images = num_images

    def run(self, context: EvalContext) -> Iterator[tuple[str, Any]]:
        block = explain.last_block_name(context.model)
        if block is None:
            yield (
                "attention_maps",
                {
                    "block": None,
                    "images": 0,
                    "files": [],
                    "note": (
                        "the model has no non-local block (baseline variant)"
                    ),
                },
            )
            return
        images, labels = first_images(context.data, self.num_images)
        maps = explain.attention_map(context.model, images)
        predicted = np.asarray(context.model.predict(images, verbose=0)).argmax(
            axis=1
        )
        files = []
        if context.workdir:
            folder = os.path.join(context.workdir, "explain", context.split)
            for i, (image, heat) in enumerate(zip(images, maps)):
                path = os.path.join(folder, f"attention_{i:04d}.png")
                files.append(
                    explain.write_row(
                        path,
                        image,
                        heat,
                        None,
                        f"{context.split} #{i}: "
                        f"true {context.class_names[int(labels[i])]}, "
                        f"predicted {context.class_names[int(predicted[i])]}",
                        cam_label="attention",
                    )
                )
        yield (
            "attention_maps",
            {"block": block, "images": len(images), "files": files},
        )
