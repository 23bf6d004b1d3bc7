"""Loading a previous stage's backbone weights, strictly.

Every stage of a chain hands its `backbone.weights.h5` to the next one; a
file of another architecture must be refused, not half-loaded.
"""

from __future__ import annotations

import warnings

import keras

from matl_keras.errors import ConfigError


def _saved_shapes(path: str) -> list[tuple[int, ...]]:
    """Shapes of every tensor in a Keras `.weights.h5` file."""
    import h5py

    shapes: list[tuple[int, ...]] = []
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda _, v: (
                shapes.append(tuple(v.shape))
                if isinstance(v, h5py.Dataset)
                else None
            )
        )
    return shapes


def load_backbone(features: keras.Model, path: str) -> None:
    """Loads a previous stage's `backbone.weights.h5` into `features`.

    Keras loads a file of another depth with only a warning, leaving the
    unmatched layers at their random initialisation: here any difference in
    the tensors (count or shapes) or a skipped layer is an error.
    """
    saved = _saved_shapes(path)  # `workdir.begin` checked that it exists
    wanted = [tuple(w.shape) for w in features.weights]
    mismatch = ConfigError(
        f"`init_backbone`: the weights in {path!r} ({len(saved)} tensors) do "
        f"not fit this backbone ({features.name}, {len(wanted)} tensors): "
        "every stage of a chain must use the same backbone (depth, width, "
        "attention placement)"
    )
    if sorted(saved) != sorted(wanted):
        raise mismatch
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            features.load_weights(path)
        except (ValueError, KeyError) as e:
            raise mismatch from e
    skipped = [
        w
        for w in caught
        if "could not be loaded" in str(w.message)
        or "Skipping" in str(w.message)
    ]
    if skipped:
        raise mismatch
