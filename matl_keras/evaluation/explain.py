"""Grad-CAM and attention maps side by side: the paper's Fig. 4.

Grad-CAM (Selvaraju et al. 2017) comes from tf-keras-vis (>= 0.8.7 runs on
Keras 3 with the TensorFlow backend); it needs a flat functional model,
which `build_image_classifier` makes. The attention map is the last
non-local block's attention averaged over all query positions
(`models.resnet.attention_maps`). A row of Fig. 4 is: image, Grad-CAM
heatmap, overlay, attention heatmap, overlay.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import keras
import numpy as np

from matl_keras.models.resnet import attention_maps as attention_lib

_BLOCK_OUT = re.compile(r"conv(\d+)_block(\d+)_out$")


def gradcam_layer(model: keras.Model) -> str:
    """The default Grad-CAM layer: the output of the last residual block
    (`convN_blockM_out`, the paper's "last convolutional layer right before
    the global average pooling"; with a non-local block at the end of res5
    this is the block's input, so Grad-CAM shows the convolutions and the
    attention map shows the ATTN)."""
    names = [layer.name for layer in model.layers if _BLOCK_OUT.search(layer.name)]
    if not names:
        raise ValueError(
            f"model {model.name!r} has no `convN_blockM_out` layer: pass "
            "`layer=` (a 4-D feature-map layer) for Grad-CAM"
        )
    return names[-1]


class GradCAM:
    """Grad-CAM of one classifier, set up once (tf-keras-vis clones the
    model to replace its softmax by a linear output, as it recommends; the
    caller's model is not modified) and applied to any number of batches.

    Args:
        model: a classifier (images -> softmax probabilities).
        layer: name of the feature-map layer (default: `gradcam_layer`).
    """

    def __init__(self, model: keras.Model, layer: str | None = None) -> None:
        from tf_keras_vis.gradcam import Gradcam
        from tf_keras_vis.utils.model_modifiers import ReplaceToLinear

        self.model = model
        self.layer = layer or gradcam_layer(model)
        model.get_layer(self.layer)  # a clear error for an unknown name
        self._explainer = Gradcam(model, model_modifier=ReplaceToLinear(), clone=True)

    def __call__(
        self, images: np.ndarray, class_index: int | Sequence[int] | None = None
    ) -> np.ndarray:
        """Heatmaps `(batch, height, width)` in [0, 1] of `class_index` (per
        image or for all; None: the predicted class)."""
        from tf_keras_vis.utils.scores import CategoricalScore

        images = np.asarray(images, np.float32)
        if class_index is None:
            class_index = np.argmax(self.model.predict(images, verbose=0), axis=1)
        classes = np.broadcast_to(np.asarray(class_index), (len(images),)).tolist()
        cams = self._explainer(
            CategoricalScore(classes), images, penultimate_layer=self.layer,
            seek_penultimate_conv_layer=False,
        )
        return np.asarray(cams, np.float32).reshape(len(images), *images.shape[1:3])


def gradcam(
    model: keras.Model,
    images: np.ndarray,
    class_index: int | Sequence[int] | None = None,
    layer: str | None = None,
) -> np.ndarray:
    """One-off `GradCAM(model, layer)(images, class_index)`."""
    return GradCAM(model, layer)(images, class_index)


def attention_map(model: keras.Model, images: np.ndarray) -> np.ndarray | None:
    """The last non-local block's mean attention, upsampled and scaled to
    [0, 1] per image; None for a model without non-local blocks."""
    if not attention_lib.nonlocal_blocks(model):
        return None
    return attention_lib.average_attention_map(model, np.asarray(images, np.float32))


def last_block_name(model: keras.Model) -> str | None:
    """Name of the block `attention_map` shows (None: no block)."""
    blocks = attention_lib.nonlocal_blocks(model)
    return blocks[-1].name if blocks else None


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
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

    panels = [("image", image), (cam_label, cam), (f"{cam_label} overlay", overlay(image, cam))]
    if attention is not None:
        panels += [("attention", attention), ("attention overlay", overlay(image, attention))]
    figure, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.9))
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
