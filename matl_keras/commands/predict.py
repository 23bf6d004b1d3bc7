"""`matl-keras predict`: per-image predictions (CSV) and pooled
embeddings (.npy)."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence

import numpy as np

from matl_keras import runs
from matl_keras.commands import images as images_lib
from matl_keras.evaluation import trained as trained_lib
from matl_keras.evaluation.evaluator import feature_model

PREDICTIONS_FILE = "predictions.csv"
EMBEDDINGS_FILE = "embeddings.npy"


def predict_images(
    model: str,
    images: Sequence[str],
    output_dir: str | None = None,
    batch_size: int = 32,
) -> tuple[str, str]:
    """Per-image predictions and embeddings of a trained classifier.

    Images are decoded and preprocessed as evaluation in training does.
    Writes `predictions.csv` (image, predicted class, one probability column
    per class) and `embeddings.npy` (float32 `(images, channels)`, the
    pooled backbone features; row i is the CSV's row i) into `output_dir`
    (default: the trained stage's `predict/`); returns their paths.
    """
    import keras

    trained = runs.find(model)
    output_dir = output_dir or os.path.join(trained.stage_dir, "predict")
    keras_model = trained_lib.load(trained)
    names = trained.class_names or [
        str(i) for i in range(int(keras_model.output.shape[-1]))
    ]
    files = images_lib.image_files(images)
    prep = trained.preprocessing(int(keras_model.input.shape[1]))
    # One pass gives both: probabilities and the pooled features.
    both = keras.Model(
        keras_model.input,
        [keras_model.output, feature_model(keras_model).output],
    )
    probabilities, embeddings = [], []
    for start in range(0, len(files), batch_size):
        batch = images_lib.load_batch(
            files[start : start + batch_size],
            prep["image_size"],
            prep["crop_fraction"],
        )
        probs, features = both.predict(batch, verbose=0)
        probabilities.append(np.asarray(probs))
        embeddings.append(np.asarray(features, np.float32))
    probs = np.concatenate(probabilities)
    os.makedirs(output_dir, exist_ok=True)
    csv_path = os.path.join(output_dir, PREDICTIONS_FILE)
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "predicted"] + [f"p_{n}" for n in names])
        for path, p in zip(files, probs):
            writer.writerow(
                [os.path.abspath(path), names[int(p.argmax())]]
                + [f"{v:.6f}" for v in p]
            )
    npy_path = os.path.join(output_dir, EMBEDDINGS_FILE)
    np.save(npy_path, np.concatenate(embeddings))
    print(f"wrote {csv_path} and {npy_path} ({len(files)} images)")
    return csv_path, npy_path
