"""MoCo v2 (He et al. 2020; Chen et al. 2020) as an SSL method plugin.

The query encoder (backbone + MLP head) is trained by backpropagation on
Eq. 2; the key encoder follows it by momentum (Eq. 3); a FIFO queue of past
keys provides the negatives, never a key of the query's own image. Two
augmentations of each image (independent draws of one recipe) are the
query and key views; the key batch is shuffled across BatchNorm groups
(shuffle-BN). The machinery (queue, momentum, shuffle-BN, distribution) is
the core's `ContrastiveModel`.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from matl_keras.data import augment as augment_lib
from matl_keras.errors import ConfigError
from matl_keras.training import ssl_losses
from matl_keras.training.contrastive import ContrastiveModel


class MoCo(ContrastiveModel):
    """MoCo v2.

    Args (beyond `ContrastiveModel`'s):
        augment: str. Augmentation recipe of both views
            (`matl_keras.data.augment.RECIPES`; `moco_v2` is MoCo v2's
            `aug_plus`, `ct_intensity` a CT-aware variant,
            `sstl_m_paper` the paper's literal SSTL-M recipe).
        symmetric: bool. Also contrast the second view's query with the
            first view's key and average the two losses (solo-learn's MoCo
            v2+, MoCo v3): twice the positive pairs a step for twice the
            encoder cost. Default False (MoCo v2: one direction). The
            queue takes the second view's keys either way.

    Defaults are MoCo v2's: tau 0.2, m 0.999, 128-d output, 2048-d hidden
    layer; the queue is sized to the data (`queue_size="auto"`, at most
    MoCo's 65536). `gin/stages/sstl_m.gin` sets the paper's tau 0.07 and
    the momentum schedule for short runs.
    """

    needs_key_encoder = True
    shuffle_batchnorm = True

    def __init__(
        self,
        backbone: keras.Model,
        key_backbone: keras.Model | None = None,
        temperature: float = 0.2,
        momentum: float = 0.999,
        queue_size: int | str = "auto",
        augment: str = "moco_v2",
        symmetric: bool = False,
        **kwargs: Any,
    ) -> None:
        if not isinstance(symmetric, bool):
            raise ConfigError(
                "`symmetric` must be True or False. Received: "
                f"symmetric={symmetric!r}"
            )
        super().__init__(
            backbone,
            key_backbone=key_backbone,
            temperature=temperature,
            momentum=momentum,
            queue_size=queue_size,
            **kwargs,
        )
        self.augment_name = augment
        self._augment = augment_lib.get_augment(augment, self.image_size)
        self.symmetric = symmetric

    def run_record(self):
        return {**super().run_record(), "symmetric": self.symmetric}

    def configure(self, schedule):
        super().configure(schedule)
        if not self.queue_size:
            raise ConfigError(
                f"{type(self).__name__} needs negatives: a queue of at least "
                f"one batch ({schedule.global_batch_size} keys). Received: "
                f"queue_size={self.queue_size_setting!r}"
            )

    def views(self, image, seed: tf.Tensor) -> dict[str, tf.Tensor]:
        query, key = augment_lib.two_views(self._augment, image, seed)
        return {"query": query, "key": key}

    def contrastive_loss(self, views, ids):
        """Eq. 2 for this replica's queries and the keys to enqueue (the
        mean of both directions when `symmetric`)."""
        mask = self.queue_mask(ids) if self.queue_size else None
        queue = (
            self.queue
            if self.queue_size
            else tf.zeros([0, self.projection_dim])
        )

        def direction(query_view, key_view):
            query = self.encode(query_view, training=True)
            keys = self.encode_keys(key_view)
            loss = ssl_losses.info_nce(
                query, keys, queue, self.temperature, mask
            )
            return loss, keys

        loss, keys = direction(views["query"], views["key"])
        if self.symmetric:
            reverse, _ = direction(views["key"], views["query"])
            loss = (loss + reverse) / 2.0
        return loss, keys

    def per_example_loss(self, views, ids):
        loss, keys = self.contrastive_loss(views, ids)
        return loss, {"keys": keys}
