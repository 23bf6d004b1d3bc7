"""SimCLR (Chen et al. 2020) as an SSL method plugin.

Both views go through the same encoder; NT-Xent takes the other view of
the same image as the positive and both views of every other image of the
*global* batch as negatives (the projections are `all_gather`ed across
replicas; `all_gather` passes gradients), except images of the query's
source (patient) where the dataset gives sources.

The projection head is SimCLR's, not MoCo v2's: BatchNorm after both of
its Dense layers (google-research/simclr `ProjectionHead`: Dense-BN-ReLU,
then Dense without bias and BN without shift; lightly's and solo-learn's
SimCLR heads keep the hidden BatchNorm too), over the global batch like
the backbone's. `head_batchnorm=False` gives the earlier head (MoCo v2's
Dense-ReLU-Dense) for comparison.
"""

from __future__ import annotations

import functools
from typing import Any

import keras
import tensorflow as tf

from matl_keras.data import augment as augment_lib
from matl_keras.errors import ConfigError
from matl_keras.training import contrastive
from matl_keras.training import ssl_losses
from matl_keras.training.contrastive import ContrastiveModel


def projection_head(
    hidden_dim: int, output_dim: int, name: str, sync: bool = True
) -> keras.Model:
    """SimCLR's 2-layer head: pooled features -> Dense-BN-ReLU -> Dense-BN.

    As google-research/simclr's `ProjectionHead` (v1's two layers): no
    Dense has a bias (its BatchNorm follows: its `LinearLayer` drops the
    bias where it normalises), the output BatchNorm has no shift
    (`center=False`);
    epsilon 1e-5 and momentum 0.9 as its `BatchNormRelu`. `sync`: the
    statistics over the global batch (SimCLR's global BN), else per
    replica.
    """

    def batchnorm(suffix: str, center: bool = True):
        return keras.layers.BatchNormalization(
            epsilon=1e-5,
            momentum=0.9,
            center=center,
            synchronized=sync,
            name=f"{name}_{suffix}",
        )

    return keras.Sequential(
        [
            keras.layers.GlobalAveragePooling2D(name=f"{name}_pool"),
            keras.layers.Dense(
                hidden_dim, use_bias=False, name=f"{name}_hidden"
            ),
            batchnorm("hidden_bn"),
            keras.layers.ReLU(name=f"{name}_relu"),
            keras.layers.Dense(output_dim, use_bias=False, name=f"{name}_out"),
            batchnorm("out_bn", center=False),
        ],
        name=name,
    )


class SimCLR(ContrastiveModel):
    """SimCLR.

    Args (beyond `ContrastiveModel`'s):
        augment: str. Augmentation recipe of both views (independent
            draws).
        head_batchnorm: bool. SimCLR's projection head with BatchNorm
            (default); False: MoCo v2's head without it.
        sync_batchnorm: bool or None. The head's BatchNorm over the global
            batch (None: as the backbone's `sync_batchnorm`, default True).

    Default temperature 0.1 (SimCLR's, for large batches 0.5 is common).
    """

    needs_key_encoder = False

    def __init__(
        self,
        backbone: keras.Model,
        key_backbone: keras.Model | None = None,
        temperature: float = 0.1,
        augment: str = "moco_v2",
        head_batchnorm: bool = True,
        sync_batchnorm: bool | None = None,
        **kwargs: Any,
    ) -> None:
        del key_backbone  # SimCLR has no key encoder
        if not isinstance(head_batchnorm, bool):
            raise ConfigError(
                "`head_batchnorm` must be True or False. Received: "
                f"head_batchnorm={head_batchnorm!r}"
            )
        if sync_batchnorm is None:
            sync_batchnorm = bool(getattr(backbone, "sync_batchnorm", True))
        if head_batchnorm:
            if kwargs.get("head_factory") is not None:
                raise ConfigError(
                    "`head_factory` and `head_batchnorm=True` (SimCLR's "
                    "head) exclude each other; pass head_batchnorm=False "
                    "to use your own head."
                )
            kwargs["head_factory"] = functools.partial(
                projection_head, sync=sync_batchnorm
            )
        super().__init__(backbone, temperature=temperature, **kwargs)
        self.augment_name = augment
        self._augment = augment_lib.get_augment(augment, self.image_size)
        self.head_batchnorm = head_batchnorm

    def run_record(self):
        return {**super().run_record(), "head_batchnorm": self.head_batchnorm}

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
