"""The paper's SSL method (section 5, Fig. 2, Eqs. 2-6): MoCo's image-scale
branch plus a region-scale branch.

The Generator (Eq. 4, `lung_regions`) cuts five lobe regions from each
image's full-resolution decode (`prepare`, cached by the pipeline): squares
of one side around the lobe centres, so that a crop's geometry says
nothing about its region. They are augmented like the views but never
flipped (a flip would turn a right-lung crop into a left-lung look-alike),
pass through the same backbone as the queries, and a shared 5-way
classifier predicts which region each crop is (Eq. 5); the loss per image
is Eq. 6, `alpha1 * L_cons + alpha2 * L_ra` (see `ssl_losses.combined` for
how we read Eq. 6's sum over negatives).
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf
from matl_keras_plugins.ssl_methods import lung_regions
from matl_keras_plugins.ssl_methods.moco import MoCo

from matl_keras.data import augment as augment_lib
from matl_keras.errors import ConfigError
from matl_keras.training import ssl_losses


class RegionAware(MoCo):
    """MoCo v2 + region-aware loss.

    Args (beyond `MoCo`'s):
        alpha1: float. Weight of the contrastive loss (paper: 0.8).
        alpha2: float. Weight of the region-aware loss (paper: 0.8).
        orientation: str. `"radiological"` (patient's right lung on the
            image's left, the CT display convention and COVID19-CT's) or
            `"neurological"` (mirrored).
        augment_regions: bool. Augment the crops like the views, without
            the flip (the paper augments "all images as well as cropped
            regions"); False: each crop resized to the view size.
        region_size: int or None. Side of the crops the backbone sees
            (None: `image_size`, the paper's). The region branch costs
            five backbone passes per image at this side, about 15 of the
            19 forward-equivalents of a step at full size; `image_size //
            2` cuts its cost to a quarter (measured in README, "SSTL-M").
            At most `image_size`.
        region_load_size: int or None. Side at which the crops are cut
            from the full-resolution image and cached (None: the crops'
            load size, `region_size / 0.875` rounded).
    """

    def __init__(
        self,
        backbone: keras.Model,
        key_backbone: keras.Model | None = None,
        alpha1: float = 0.8,
        alpha2: float = 0.8,
        orientation: str = "radiological",
        augment_regions: bool = True,
        region_size: int | None = None,
        region_load_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, key_backbone=key_backbone, **kwargs)
        if region_size is None:
            region_size = self.image_size
        if (
            not isinstance(region_size, int)
            or isinstance(region_size, bool)
            or not 1 <= region_size <= self.image_size
        ):
            raise ConfigError(
                "`region_size` must be a positive int at most `image_size` "
                f"({self.image_size}), or None for `image_size`. Received: "
                f"region_size={region_size!r}"
            )
        if orientation not in lung_regions.ORIENTATIONS:
            raise ValueError(
                f"`orientation` must be one of {lung_regions.ORIENTATIONS}. "
                f"Received: orientation={orientation!r}"
            )
        if region_load_size is not None and region_load_size < region_size:
            raise ValueError(
                "`region_load_size` must be at least `region_size` "
                f"({region_size}). Received: "
                f"region_load_size={region_load_size!r}"
            )
        self.alpha1 = alpha1
        self.alpha2 = alpha2
        self.orientation = orientation
        self.augment_regions = augment_regions
        self.region_size = region_size
        self.region_load_size = region_load_size or round(region_size / 0.875)
        self._region_augment = augment_lib.get_augment(
            self.augment_name, region_size, flip=False
        )
        if region_size != self.image_size:
            # The backbone is built for the views' side; its layers take any
            # side, only the functional model's input spec pins it.
            self.backbone.input_spec = keras.layers.InputSpec(
                ndim=4, axes={-1: 3}
            )
        self.region_pool = keras.layers.GlobalAveragePooling2D(
            name="region_pool"
        )
        self.region_classifier = keras.layers.Dense(
            len(lung_regions.REGIONS), name="region_classifier"
        )
        self.region_loss_tracker = keras.metrics.Mean(name="region_loss")
        self.region_accuracy_tracker = keras.metrics.Mean(
            name="region_accuracy"
        )

    def build_heads(self, feature_shape):
        self.region_classifier.build((None, feature_shape[-1]))

    def prepare(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
        """Eq. 4 on the full-resolution image: `(5, L, L, 3)` crops."""
        return {
            "regions": lung_regions.generate_regions(
                image, self.region_load_size, self.orientation
            )
        }

    def views(self, image, seed):
        view_seed, region_seed = augment_lib.split_seed(seed, 2)
        views = super().views(image["image"], view_seed)
        regions = image["regions"]
        count = len(lung_regions.REGIONS)
        if self.augment_regions:
            seeds = augment_lib.split_seed(region_seed, count)
            regions = tf.stack(
                [
                    self._region_augment(regions[i], seeds[i])
                    for i in range(count)
                ]
            )
        else:
            regions = tf.image.resize(
                regions, [self.region_size, self.region_size], antialias=True
            )
        views["regions"] = regions
        return views

    def per_example_loss(self, views, ids):
        contrastive, keys = self.contrastive_loss(views, ids)
        regions = views["regions"]  # (b, 5, region_size, region_size, 3)
        shape = tf.shape(regions)
        crops = tf.reshape(regions, [-1, shape[2], shape[3], shape[4]])
        features = self.region_pool(self.backbone(crops, training=True))
        logits = tf.reshape(
            self.region_classifier(features), [shape[0], shape[1], -1]
        )
        region = ssl_losses.region_aware(logits)
        loss = ssl_losses.combined(
            contrastive, region, self.alpha1, self.alpha2
        )
        return loss, {
            "keys": keys,
            "region_loss": region,
            "region_accuracy": ssl_losses.region_accuracy(logits),
        }

    def run_record(self):
        return {**super().run_record(), "region_size": self.region_size}

    @property
    def extra_trackers(self):
        return [self.region_loss_tracker, self.region_accuracy_tracker]
