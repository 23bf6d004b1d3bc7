"""MoCo v2 (He et al. 2020; Chen et al. 2020) as an SSL method plugin.

The query encoder (backbone + MLP head) is trained by backpropagation on
Eq. 2; the key encoder follows it by momentum (Eq. 3); a FIFO queue of past
keys provides the negatives. Two MoCo v2 augmentations of each image are
the query and key views. The machinery (queue, momentum, distribution) is
the core's `ContrastiveModel`.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from matl_keras.data import augment as augment_lib
from matl_keras.training import ssl_losses
from matl_keras.training.contrastive import ContrastiveModel


class MoCo(ContrastiveModel):
    """MoCo v2.

    Args (beyond `ContrastiveModel`'s):
        augment: str. Augmentation recipe of both views (`moco_v2`).
        seed: int. Augmentation seed (the key view uses `seed + 1`).

    Defaults are MoCo v2's: tau 0.2, m 0.999, queue 65536, 128-d output,
    2048-d hidden layer (gin/sstl_m.gin sets the paper's tau 0.07).
    """

    needs_key_encoder = True

    def __init__(
        self,
        backbone: keras.Model,
        key_backbone: keras.Model | None = None,
        temperature: float = 0.2,
        momentum: float = 0.999,
        queue_size: int = 65536,
        augment: str = "moco_v2",
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            backbone,
            key_backbone=key_backbone,
            temperature=temperature,
            momentum=momentum,
            queue_size=queue_size,
            **kwargs,
        )
        self.augment_name = augment
        self._query_augment = augment_lib.get_augment(augment, self.image_size, seed)
        self._key_augment = augment_lib.get_augment(augment, self.image_size, seed + 1)

    def views(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"query": self._query_augment(image), "key": self._key_augment(image)}

    def contrastive_loss(self, views):
        """Eq. 2 for this replica's queries and the keys to enqueue."""
        query = self.encode(views["query"], training=True)
        keys = self.encode_keys(views["key"])
        loss = ssl_losses.info_nce(
            query, keys, self.queue, self.temperature, self.queue_valid()
        )
        return loss, keys

    def per_example_loss(self, views):
        loss, keys = self.contrastive_loss(views)
        return loss, {"keys": keys}
