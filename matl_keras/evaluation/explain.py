"""Grad-CAM and attention maps side by side: the paper's Fig. 4.

Grad-CAM (Selvaraju et al. 2017) is computed here with a gradient tape
(tf-keras-vis, used before, cannot take a multi-output layer such as the
non-local block before the pooling, and upsampled corner-aligned); it needs
a flat functional model, which `build_image_classifier` makes. The
attention map is the last non-local block's attention averaged over all
query positions (`models.resnet.attention_maps`). A row of Fig. 4 is:
image, Grad-CAM heatmap, overlay, attention heatmap, overlay.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from absl import logging

from matl_keras.models.resnet import attention_maps as attention_lib

_BLOCK_OUT = re.compile(r"conv(\d+)_block(\d+)_out$")
POOL_LAYER = "avg_pool"


# Grad-CAM needs a spatial map: at 1x1 it is one number spread over the
# image (a blank panel), at 2x2 four blocks. 3x3 is the least that shows
# where in the image the evidence lies.
MIN_POSITIONS = 3


def _output(layer: keras.layers.Layer) -> Any:
    output = layer.output
    return output[0] if isinstance(output, (list, tuple)) else output


def _grid(layer: keras.layers.Layer) -> tuple[int, int] | None:
    """`(height, width)` of a 4-D feature-map layer's output, else None."""
    try:
        shape = _output(layer).shape
    except (AttributeError, ValueError):
        return None
    if len(shape) != 4 or shape[1] is None or shape[2] is None:
        return None
    return int(shape[1]), int(shape[2])


def _before_pooling(model: keras.Model) -> str:
    """The layer whose output the classifier pools (`avg_pool`'s input),
    else the last `convN_blockM_out` layer."""
    try:
        pooled = model.get_layer(POOL_LAYER).input
        return pooled._keras_history[0].name
    except (ValueError, AttributeError, IndexError):
        pass
    names = [
        layer.name for layer in model.layers if _BLOCK_OUT.search(layer.name)
    ]
    if not names:
        raise ValueError(
            f"model {model.name!r} has no {POOL_LAYER!r} layer and no "
            "`convN_blockM_out` layer: pass `layer=` (a 4-D feature-map "
            "layer) for Grad-CAM"
        )
    return names[-1]


def choose_gradcam_layer(
    model: keras.Model, layer: str | None = None
) -> tuple[str, str | None]:
    """`(layer name, note)` for Grad-CAM.

    Default: the last feature map before the global average pooling (the
    paper's Fig. 4; with a non-local block at the end of res5 that block's
    output). When it has fewer than `MIN_POSITIONS` x `MIN_POSITIONS`
    positions (e.g. 1x1 for a 32 px input), the deepest earlier feature map
    with at least that many, and a note saying so (also logged as a
    warning). A `layer` named by the caller is refused with the reason
    when it is too small.
    """
    if layer is not None:
        grid = _grid(
            model.get_layer(layer)
        )  # a clear error for an unknown name
        if grid is None:
            raise ValueError(
                f"Grad-CAM layer {layer!r} is not a 4-D feature map"
            )
        if min(grid) < MIN_POSITIONS:
            deepest = _deepest_large_enough(model, len(model.layers))
            raise ValueError(
                f"Grad-CAM layer {layer!r} has {grid[0]}x{grid[1]} positions "
                f"at this input size: its heatmap cannot show where the "
                f"evidence is (needs >= {MIN_POSITIONS}x{MIN_POSITIONS})"
                + (f"; try {deepest!r}" if deepest else "")
            )
        return layer, None
    name = _before_pooling(model)
    grid = _grid(model.get_layer(name))
    if grid is not None and min(grid) >= MIN_POSITIONS:
        return name, None
    index = [layer.name for layer in model.layers].index(name)
    deepest = _deepest_large_enough(model, index)
    if deepest is None:
        raise ValueError(
            f"no feature map of model {model.name!r} has {MIN_POSITIONS}x"
            f"{MIN_POSITIONS} positions at input size "
            f"{tuple(model.input.shape[1:3])}: Grad-CAM would be blank; use "
            "larger images"
        )
    shown = "?" if grid is None else f"{grid[0]}x{grid[1]}"
    small = _grid(model.get_layer(deepest))
    note = (
        f"{name!r} (before pooling) has {shown} positions at this input "
        f"size; Grad-CAM uses {deepest!r} ({small[0]}x{small[1]}), the "
        f"deepest feature map with >= {MIN_POSITIONS}x{MIN_POSITIONS}"
    )
    logging.warning("Grad-CAM: %s", note)
    return deepest, note


def _deepest_large_enough(model: keras.Model, before: int) -> str | None:
    for layer in reversed(model.layers[:before]):
        grid = _grid(layer)
        if (
            grid is not None
            and min(grid) >= MIN_POSITIONS
            and not isinstance(layer, keras.layers.InputLayer)
        ):
            return layer.name
    return None


def gradcam_layer(model: keras.Model) -> str:
    """The default Grad-CAM layer (`choose_gradcam_layer`)."""
    return choose_gradcam_layer(model)[0]


def upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`(batch, h, w)` maps -> `(batch, *size)`, scaled to [0, 1] per map.

    The one upsampling of both Fig. 4 heatmaps: bilinear with half-pixel
    centres (`tf.image.resize`), so a feature-map cell is drawn centred on
    the image area it covers. (tf-keras-vis' own `scipy.ndimage.zoom` is
    corner-aligned: an edge cell's peak lands on the image border, and
    its Grad-CAM and the attention panel of one row disagreed.)
    """
    import tensorflow as tf

    maps = np.asarray(maps, np.float32)
    up = tf.image.resize(maps[..., None], size, method="bilinear").numpy()[
        ..., 0
    ]
    low = up.min(axis=(1, 2), keepdims=True)
    high = up.max(axis=(1, 2), keepdims=True)
    return ((up - low) / np.maximum(high - low, 1e-12)).astype(np.float32)


def mass_inside(heat: np.ndarray, box: Sequence[float]) -> float:
    """Share of a heatmap's mass inside `box` `(y0, x0, y1, x1)`
    (normalized to [0, 1]); a pixel counts when its centre is inside.
    NaN for an all-zero map."""
    heat = np.asarray(heat, np.float64)
    h, w = heat.shape
    ys = (np.arange(h) + 0.5) / h
    xs = (np.arange(w) + 0.5) / w
    y0, x0, y1, x1 = (float(v) for v in box)
    inside = ((ys >= y0) & (ys <= y1))[:, None] & ((xs >= x0) & (xs <= x1))[
        None, :
    ]
    total = heat.sum()
    return float(heat[inside].sum() / total) if total > 0 else math.nan


class GradCAM:
    """Grad-CAM (Selvaraju et al. 2017) of one classifier, set up once and
    applied to any number of batches: the class score is the logit (the
    final softmax Dense layer's pre-activation, computed from its input and
    weights; the caller's model is not modified), the channel weights its
    gradient averaged over positions, the map `relu(sum_k w_k A_k)` at the
    layer's resolution, brought to the image by `upsample`.

    Args:
        model: a classifier (images -> softmax probabilities).
        layer: name of the feature-map layer (default and checks:
            `choose_gradcam_layer`; `note` says when the default moved).
    """

    def __init__(self, model: keras.Model, layer: str | None = None) -> None:
        self.model = model
        self.layer, self.note = choose_gradcam_layer(model, layer)
        if (
            layer is None
            and self.layer == _before_pooling(model)
            and _has_pool(model)
        ):
            features = model.get_layer(POOL_LAYER).input
        else:
            features = _output(model.get_layer(self.layer))
        last = model.layers[-1]
        self._head = None
        pre = model.output
        if (
            isinstance(last, keras.layers.Dense)
            and getattr(last.activation, "__name__", "") == "softmax"
        ):
            pre, self._head = last.input, last
        self._sub = keras.Model(model.input, [features, pre])

    def __call__(
        self, images: np.ndarray, class_index: int | Sequence[int] | None = None
    ) -> np.ndarray:
        """Heatmaps `(batch, height, width)` in [0, 1] of `class_index` (per
        image or for all; None: the predicted class)."""
        import tensorflow as tf

        images = np.asarray(images, np.float32)
        if class_index is None:
            class_index = np.argmax(
                self.model.predict(images, verbose=0), axis=1
            )
        classes = np.broadcast_to(np.asarray(class_index), (len(images),))
        with tf.GradientTape() as tape:
            features, pre = self._sub(images, training=False)
            features = tf.cast(features, tf.float32)
            logits = tf.cast(pre, tf.float32)
            if self._head is not None:
                logits = tf.matmul(
                    logits, tf.cast(self._head.kernel, tf.float32)
                )
                logits += tf.cast(self._head.bias, tf.float32)
            score = tf.gather(logits, classes[:, None], batch_dims=1)
        grads = tape.gradient(score, features)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cams = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1)).numpy()
        return upsample(cams, images.shape[1:3])


def _has_pool(model: keras.Model) -> bool:
    return any(layer.name == POOL_LAYER for layer in model.layers)


def gradcam(
    model: keras.Model,
    images: np.ndarray,
    class_index: int | Sequence[int] | None = None,
    layer: str | None = None,
) -> np.ndarray:
    """One-off `GradCAM(model, layer)(images, class_index)`."""
    return GradCAM(model, layer)(images, class_index)


def attention_map(model: keras.Model, images: np.ndarray) -> np.ndarray | None:
    """The last non-local block's attention averaged over all query
    positions, upsampled as Grad-CAM is (`upsample`) and scaled to [0, 1]
    per image; None for a model without non-local blocks."""
    blocks = attention_lib.nonlocal_blocks(model)
    if not blocks:
        return None
    images = np.asarray(images, np.float32)
    attention = attention_lib.attention_maps(model, images)[blocks[-1].name]
    # The key grid (`attention_maps._key_grid`): the block's input, subsampled.
    height, width = blocks[-1].input.shape[1:3]
    step = blocks[-1].subsample
    key_h, key_w = -(-height // step), -(-width // step)
    return upsample(
        attention.mean(axis=1).reshape(-1, key_h, key_w), images.shape[1:3]
    )


def last_block_name(model: keras.Model) -> str | None:
    """Name of the block `attention_map` shows (None: no block)."""
    blocks = attention_lib.nonlocal_blocks(model)
    return blocks[-1].name if blocks else None


def overlay(
    image: np.ndarray, heat: np.ndarray, alpha: float = 0.45
) -> np.ndarray:
    """`image` (h, w, 3) in [0, 1] blended with the jet-coloured `heat`."""
    from matplotlib import colormaps

    colored = colormaps["jet"](np.clip(heat, 0.0, 1.0))[..., :3]
    return np.clip((1.0 - alpha) * image + alpha * colored, 0.0, 1.0)


def write_row(
    path: str,
    image: np.ndarray,
    cam: np.ndarray,
    attention: np.ndarray | None,
    title: str = "",
    cam_label: str = "Grad-CAM",
) -> str:
    """Writes one Fig. 4 row as a PNG: image, Grad-CAM, overlay and (for a
    model with non-local blocks) attention, overlay."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    panels = [
        ("image", image),
        (cam_label, cam),
        (f"{cam_label} overlay", overlay(image, cam)),
    ]
    if attention is not None:
        panels += [
            ("attention", attention),
            ("attention overlay", overlay(image, attention)),
        ]
    figure, axes = plt.subplots(
        1, len(panels), figsize=(2.6 * len(panels), 2.9)
    )
    for axis, (name, picture) in zip(np.atleast_1d(axes), panels):
        if picture.ndim == 2:
            axis.imshow(picture, cmap="jet", vmin=0.0, vmax=1.0)
        else:
            axis.imshow(picture)
        axis.set_title(name, fontsize=9)
        axis.axis("off")
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
