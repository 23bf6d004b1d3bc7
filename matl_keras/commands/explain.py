"""`matl-keras explain`: Fig. 4 rows (image, Grad-CAM, attention) for
some images."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from matl_keras import registry as registry_lib
from matl_keras import runs
from matl_keras.commands import images as images_lib
from matl_keras.errors import ConfigError
from matl_keras.evaluation import explain
from matl_keras.evaluation import metrics as metrics_lib
from matl_keras.evaluation import operating_point
from matl_keras.evaluation import trained as trained_lib


def _mean(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def explain_images(
    model: str,
    images: Sequence[str],
    output_dir: str | None = None,
    layer: str | None = None,
    class_name: str | None = None,
    batch_size: int = 8,
) -> list[dict[str, Any]]:
    """Writes one Fig. 4 row per image into `output_dir` (default: the
    trained stage's `explain/`; and `explain.json`): image, Grad-CAM,
    overlay, attention, overlay."""
    trained = runs.find(model)
    output_dir = output_dir or os.path.join(trained.stage_dir, "explain")
    keras_model = trained_lib.load(trained)
    names = trained.class_names or [
        str(i) for i in range(int(keras_model.output.shape[-1]))
    ]
    class_index = None
    if class_name is not None:
        if class_name not in names:
            raise ConfigError(
                f"--class_name must be one of {names}. Received: {class_name!r}"
            )
        class_index = names.index(class_name)
    files = images_lib.image_files(images)
    prep = trained.preprocessing(int(keras_model.input.shape[1]))
    try:
        cam = explain.GradCAM(keras_model, layer)  # set up once for all batches
    except ValueError as e:
        if layer is not None and "No such layer" in str(e):
            raise ConfigError(
                f"--layer: the model has no layer {layer!r}"
            ) from None
        raise ConfigError(f"--layer: {e}") from None
    layer = cam.layer
    decision_path = os.path.join(trained.stage_dir, runs.DECISION_FILE)
    decision = (
        runs.read_json(decision_path) if os.path.isfile(decision_path) else None
    )
    # The share of Grad-CAM mass inside the lung box, from the `gradcam`
    # evaluator plugin (it holds the lung locator; None without it).
    scorer = registry_lib.default_registry().create("evaluators", "gradcam")
    lung_mass = getattr(scorer, "lung_mass", None)
    os.makedirs(output_dir, exist_ok=True)
    records = []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        batch = images_lib.load_batch(
            chunk, prep["image_size"], prep["crop_fraction"]
        )
        probs = keras_model.predict(batch, verbose=0)
        # The stage's decision (calibration, operating point), as served.
        decided = probs.argmax(1)
        if decision is not None:
            probs, decided = operating_point.apply(decision, probs)
        targets = (
            decided if class_index is None else np.full(len(chunk), class_index)
        )
        cams = cam(batch, targets)
        attention = explain.attention_map(keras_model, batch)
        shares, boxes, found = (
            lung_mass(batch, cams) if lung_mass else ([None] * len(chunk),) * 3
        )
        for i, path in enumerate(chunk):
            predicted = int(decided[i])
            stem = os.path.splitext(os.path.basename(path))[0]
            out = os.path.join(output_dir, f"{start + i:04d}_{stem}.png")
            title = (
                f"{os.path.basename(path)}: predicted {names[predicted]} "
                f"(p={probs[i, predicted]:.2f}); Grad-CAM of "
                f"{names[int(targets[i])]} at {layer}"
            )
            explain.write_row(
                out,
                batch[i],
                cams[i],
                None if attention is None else attention[i],
                title,
            )
            records.append(
                {
                    "image": os.path.abspath(path),
                    "png": out,
                    "predicted": names[predicted],
                    "probabilities": {
                        n: float(p) for n, p in zip(names, probs[i])
                    },
                    "gradcam_class": names[int(targets[i])],
                    "gradcam_peak_yx": [
                        int(v)
                        for v in np.unravel_index(
                            cams[i].argmax(), cams[i].shape
                        )
                    ],
                    "lung_mass": metrics_lib.to_json_value(shares[i]),
                    "lung_box": boxes[i] and boxes[i]["box"],
                    "lung_mass_chance": boxes[i] and boxes[i]["chance"],
                    "lung_found": found[i],
                }
            )
    runs.write_json(
        os.path.join(output_dir, "explain.json"),
        {
            "model": os.path.abspath(trained.model_path),
            "gradcam_layer": layer,
            "gradcam_layer_note": cam.note,
            "predicted_by": (
                "argmax (no decision.json)"
                if decision is None
                else operating_point.describe(decision)
            ),
            "attention_block": explain.last_block_name(keras_model),
            "lung_mass_mean": _mean([r["lung_mass"] for r in records]),
            "lung_mass_chance_mean": _mean(
                [r["lung_mass_chance"] for r in records]
            ),
            "lung_mass": "share of the Grad-CAM mass inside the lung box "
            "(lung_box of the region-aware Generator; its central "
            "fallback box where lung_found is false), null where the "
            "Grad-CAM map is zero everywhere (no positive evidence for "
            "the class: no mass to share); chance: the share of a "
            "uniform map (the box's area)",
            "images": records,
        },
    )
    print(f"wrote {len(records)} figure(s) to {output_dir}")
    return records
