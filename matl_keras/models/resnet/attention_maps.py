"""Attention maps of the non-local blocks of a trained model.

Works on a backbone or on any flat model built on it (the classifier): the
blocks' attention tensors are already in the graph, so a second functional
model over the same layers reads them; nothing is rebuilt or copied.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from matl_keras.layers.non_local_block import NonLocalBlock


def nonlocal_blocks(model: keras.Model) -> list[NonLocalBlock]:
    """The model's non-local blocks in graph order."""
    return [l for l in model.layers if isinstance(l, NonLocalBlock)]


def attention_model(model: keras.Model) -> keras.Model:
    """A model from `model`'s input to `{block name: attention}`.

    Each attention is `(batch, h * w, h' * w')`: row q is the softmax over
    key positions for query position q.
    """
    blocks = nonlocal_blocks(model)
    if not blocks:
        raise ValueError(
            f"model {model.name!r} has no NonLocalBlock; build it with "
            "attention='1', '5' or a placement"
        )
    outputs = {}
    for block in blocks:
        output = block.output
        if not isinstance(output, (list, tuple)):
            raise ValueError(
                f"block {block.name!r} was built without return_attention"
            )
        outputs[block.name] = output[1]
    return keras.Model(model.input, outputs, name=f"{model.name}_attention")


def attention_maps(model: keras.Model, images) -> dict[str, np.ndarray]:
    """Attention weights of every block for `images` (inference mode)."""
    maps = attention_model(model)(images, training=False)
    return {k: np.asarray(v) for k, v in maps.items()}


def _key_grid(block: NonLocalBlock) -> tuple[int, int]:
    height, width = block.input.shape[1], block.input.shape[2]
    step = block.subsample
    return -(-height // step), -(-width // step)


def average_attention_map(
    model: keras.Model,
    images,
    block_name: str | None = None,
) -> np.ndarray:
    """The paper's Fig. 4 map: one block's attention averaged over all query
    positions, upsampled to the image and scaled to [0, 1] per image.

    Args:
        model: a backbone or a classifier built on one.
        images: float images `(batch, size, size, 3)` in [0, 1].
        block_name: str or None. Block to show (default: the last one, which
            for the 5-ATTN variant is the block at the end of res5).

    Returns:
        float32 `(batch, size, size)`.
    """
    blocks = {b.name: b for b in nonlocal_blocks(model)}
    if not blocks:
        attention_model(model)  # raises the explanatory error
    name = block_name or list(blocks)[-1]
    if name not in blocks:
        raise ValueError(
            f"`block_name` must be one of {list(blocks)}. Received: "
            f"block_name={name!r}"
        )
    attention = attention_maps(model, images)[name]
    key_h, key_w = _key_grid(blocks[name])
    mean = attention.mean(axis=1).reshape(-1, key_h, key_w, 1)
    size = np.asarray(images).shape[1:3]
    up = tf.image.resize(mean, size, method="bilinear").numpy()[..., 0]
    low = up.min(axis=(1, 2), keepdims=True)
    high = up.max(axis=(1, 2), keepdims=True)
    return ((up - low) / np.maximum(high - low, 1e-12)).astype(np.float32)
