"""The paper's SSL method (section 5, Fig. 2, Eqs. 2-6): MoCo's image-scale
branch plus a region-scale branch.

The Generator (Eq. 4, `lung_regions`) cuts five lobe regions from each
image in `tf.data`; they pass through the same backbone as the queries; a
shared 5-way classifier predicts which region each crop is (Eq. 5); the
loss per image is Eq. 6, `alpha1 * L_cons + alpha2 * L_ra` (see
`ssl_losses.combined` for how we read Eq. 6's sum over negatives).
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from matl_keras.training import ssl_losses
from matl_keras_plugins.ssl_methods import lung_regions
from matl_keras_plugins.ssl_methods.moco import MoCo


class RegionAware(MoCo):
    """MoCo v2 + region-aware loss.

    Args (beyond `MoCo`'s):
        alpha1: float. Weight of the contrastive loss (paper: 0.8).
        alpha2: float. Weight of the region-aware loss (paper: 0.8).
        orientation: str. `"radiological"` (patient's right lung on the
            image's left, the CT display convention and COVID19-CT's) or
            `"neurological"` (mirrored).
        augment_regions: bool. Augment the crops like the views (the paper
            does: "all images as well as cropped regions").
    """

    def __init__(
        self,
        backbone: keras.Model,
        key_backbone: keras.Model | None = None,
        alpha1: float = 0.8,
        alpha2: float = 0.8,
        orientation: str = "radiological",
        augment_regions: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, key_backbone=key_backbone, **kwargs)
        if orientation not in lung_regions.ORIENTATIONS:
            raise ValueError(
                f"`orientation` must be one of {lung_regions.ORIENTATIONS}. "
                f"Received: orientation={orientation!r}"
            )
        self.alpha1 = alpha1
        self.alpha2 = alpha2
        self.orientation = orientation
        self.augment_regions = augment_regions
        self.region_pool = keras.layers.GlobalAveragePooling2D(name="region_pool")
        self.region_classifier = keras.layers.Dense(
            len(lung_regions.REGIONS), name="region_classifier"
        )
        self.region_loss_tracker = keras.metrics.Mean(name="region_loss")
        self.region_accuracy_tracker = keras.metrics.Mean(name="region_accuracy")

    def build_heads(self, feature_shape):
        self.region_classifier.build((None, feature_shape[-1]))

    def views(self, image):
        views = super().views(image)
        load = tf.shape(image)[0]
        regions = lung_regions.generate_regions(image, load, self.orientation)
        if self.augment_regions:
            regions = tf.stack(
                [self._query_augment(regions[i]) for i in range(len(lung_regions.REGIONS))]
            )
        else:
            regions = tf.image.resize(regions, [self.image_size, self.image_size])
        views["regions"] = regions
        return views

    def per_example_loss(self, views):
        contrastive, keys = self.contrastive_loss(views)
        regions = views["regions"]  # (b, 5, s, s, 3)
        shape = tf.shape(regions)
        crops = tf.reshape(regions, [-1, shape[2], shape[3], shape[4]])
        features = self.region_pool(self.backbone(crops, training=True))
        logits = tf.reshape(
            self.region_classifier(features), [shape[0], shape[1], -1]
        )
        region = ssl_losses.region_aware(logits)
        loss = ssl_losses.combined(contrastive, region, self.alpha1, self.alpha2)
        return loss, {
            "keys": keys,
            "region_loss": region,
            "region_accuracy": ssl_losses.region_accuracy(logits),
        }

    @property
    def extra_trackers(self):
        return [self.region_loss_tracker, self.region_accuracy_tracker]
