"""SimCLR (Chen et al. 2020) as an SSL method plugin.

Both views go through the same encoder; NT-Xent takes the other view of
the same image as the positive and both views of every other image of the
*global* batch as negatives (the projections are `all_gather`ed across
replicas; `all_gather` passes gradients), except images of the query's
source (patient) where the dataset gives sources.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from matl_keras.data import augment as augment_lib
from matl_keras.training import contrastive
from matl_keras.training import ssl_losses
from matl_keras.training.contrastive import ContrastiveModel


class SimCLR(ContrastiveModel):
    """SimCLR.

    Args (beyond `ContrastiveModel`'s):
        augment: str. Augmentation recipe of both views (independent
            draws).

    Default temperature 0.1 (SimCLR's, for large batches 0.5 is common).
    """

    needs_key_encoder = False

    def __init__(
        self,
        backbone: keras.Model,
        key_backbone: keras.Model | None = None,
        temperature: float = 0.1,
        augment: str = "moco_v2",
        **kwargs: Any,
    ) -> None:
        del key_backbone  # SimCLR has no key encoder
        super().__init__(backbone, temperature=temperature, **kwargs)
        self.augment_name = augment
        self._augment = augment_lib.get_augment(augment, self.image_size)

    def views(self, image, seed: tf.Tensor) -> dict[str, tf.Tensor]:
        view1, view2 = augment_lib.two_views(self._augment, image, seed)
        return {"view1": view1, "view2": view2}

    def per_example_loss(self, views, ids):
        # The negatives: the other images of the batch whose identity (image
        # or source, `pretrain.negatives`) is not the query's.
        ids = tf.cast(ids, tf.int32)
        b = tf.shape(views["view1"])[0]
        # One forward pass over both views.
        z = self.encode(
            tf.concat([views["view1"], views["view2"]], 0), training=True
        )
        z1, z2 = z[:b], z[b:]
        context = tf.distribute.get_replica_context()
        z1_all, z2_all, ids_all, offset = z1, z2, ids, 0
        if context.num_replicas_in_sync > 1:
            z1_all = context.all_gather(z1, axis=0)
            z2_all = context.all_gather(z2, axis=0)
            ids_all = context.all_gather(
                contrastive.on_replica_device(ids), axis=0
            )
            offset = context.replica_id_in_sync_group * b
        loss = ssl_losses.nt_xent(
            z1, z2, self.temperature, z1_all, z2_all, offset, ids, ids_all
        )
        # One value per image: the mean over its two views.
        return (loss[:b] + loss[b:]) / 2.0, {}
