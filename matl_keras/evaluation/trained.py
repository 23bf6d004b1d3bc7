"""Loading a trained classifier found by `matl_keras.runs.find`."""

from __future__ import annotations

from typing import Any

from matl_keras import runs


def load(trained: runs.Trained) -> Any:
    """The `keras.Model` of `trained`, uncompiled."""
    import keras

    # Registers the custom layers (InputNormalization, NonLocalBlock,
    # ResNetBackbone) with Keras' deserializer; the CLI does not import
    # them with the package (see matl_keras/__init__.py).
    import matl_keras.keras_objects  # noqa: F401

    return keras.saving.load_model(trained.model_path, compile=False)
