"""Finding a trained classifier and how it was fed, from what a user points
at: a `model.keras` file, a stage workdir, or a pipeline workdir (its last
stage that produced a classifier)."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from matl_keras.errors import ConfigError
from matl_keras.training.workdir import MODEL_FILE
from matl_keras.training.workdir import RUN_FILE
from matl_keras.training.workdir import SUMMARY_FILE



@dataclasses.dataclass
class Trained:
    """A trained classifier's files."""

    model_path: str
    stage_dir: str
    run: dict[str, Any]
    lineage: list[dict[str, Any]]

    @property
    def class_names(self) -> list[str]:
        return list(self.run.get("class_names") or [])

    def preprocessing(self, default_size: int) -> dict[str, Any]:
        """`image_size`, `crop_fraction` of evaluation (run.json), or the
        model's input size without a crop for models from elsewhere."""
        return self.run.get("preprocessing") or {
            "image_size": default_size, "crop_fraction": 1.0,
        }

    def load(self):
        import keras

        # Registers the custom layers (InputNormalization, NonLocalBlock,
        # ResNetBackbone) with Keras' deserializer; the CLI does not import
        # them with the package (see matl_keras/__init__.py).
        import matl_keras.keras_objects  # noqa: F401

        return keras.saving.load_model(self.model_path, compile=False)


def _read(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def find(path: str, flag: str = "--model") -> Trained:
    """Resolves `path` (file, stage dir or pipeline dir) to a `Trained`."""
    if not os.path.exists(path):
        raise ConfigError(f"{flag}: {path!r} does not exist")
    lineage: list[dict[str, Any]] = []
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, SUMMARY_FILE)):
        summary = _read(os.path.join(path, SUMMARY_FILE))
        lineage = summary.get("lineage", [])
        stages = [
            os.path.join(path, entry["workdir"]) for entry in lineage
            if os.path.isfile(os.path.join(path, entry["workdir"], MODEL_FILE))
        ]
        if not stages:
            raise ConfigError(
                f"{flag}: the run {path!r} has no stage with a {MODEL_FILE} "
                "(a classifier) yet"
            )
        path = stages[-1]
    if os.path.isdir(path):
        stage_dir, model_path = path, os.path.join(path, MODEL_FILE)
        if not os.path.isfile(model_path):
            raise ConfigError(
                f"{flag}: {path!r} has no {MODEL_FILE}; point at a finished "
                "supervised stage, a pipeline workdir or a .keras file"
            )
    elif path.endswith(".keras"):
        stage_dir, model_path = os.path.dirname(os.path.abspath(path)), path
    else:
        raise ConfigError(
            f"{flag}: expected a .keras file or a workdir. Received: {path!r}"
        )
    run_path = os.path.join(stage_dir, RUN_FILE)
    run = _read(run_path) if os.path.isfile(run_path) else {}
    if run and run.get("status") != "complete":
        raise ConfigError(
            f"{flag}: the stage in {stage_dir!r} is not complete "
            f"(status {run.get('status')!r}); finish it first"
        )
    return Trained(model_path, stage_dir, run, lineage)
