"""SimSiam (Chen & He, "Exploring Simple Siamese Representation Learning",
CVPR 2021, https://arxiv.org/abs/2011.10566) as an SSL method plugin.

Why SimSiam for SSTL-M on a few hundred CT slices (over BYOL, the other
non-contrastive candidate):
- No negatives, so none of what a small dataset breaks in contrastive
  methods: no queue that holds several keys of each image, no own-image
  negatives to mask, no dependence on a large batch (the paper's accuracy
  is flat from batch 64 to 2048, Table 2; CPU runs use 32).
- No momentum encoder: BYOL's target network needs an EMA schedule tuned
  to the run's length (a CPU run has a few hundred steps), doubles the
  weights kept, and its paper relies on batch 4096 with LARS; SimSiam
  reaches the same kind of representation with the stop-gradient alone
  (the paper's Table 4 and section 5).
- Cheapest step here: two forward/backward passes of one encoder, with
  BatchNorm over the batch (no shuffle-BN, no key forward).

What it trains (Algorithm 1): both views pass through the encoder `f`
(backbone + 3-layer projector MLP, BatchNorm after every layer, the last
one without scale and shift) and the predictor `h` (2-layer bottleneck
MLP); the loss per image is `D(p1, z2) / 2 + D(p2, z1) / 2` with
`D(p, z) = -cos(p, stopgrad(z))` (`ssl_losses.simsiam`).

Written against the public `SSLMethod` contract alone (no
`ContrastiveModel`): it declares no key encoder and no shuffle-BN, reduces
its loss over the global batch itself and uses synchronized BatchNorm in
its heads (the official code converts every BatchNorm to SyncBN), so it is
exact under MirroredStrategy.

Collapse diagnostic (the paper's Fig. 2): `output_std`, the standard
deviation of the L2-normalized projector outputs over the global batch,
mean over channels, is logged each epoch; it is 0 for a collapsed encoder
and about `1 / sqrt(projection_dim)` for well spread outputs.

Not reproduced: the paper's cosine learning-rate decay and its option of
a constant learning rate for the predictor; this stage's SGD decays in
steps (`optimizers.sgd`). SimSiam's base rate is 0.05 at batch 256
(`--gin_param='sstl_m/sgd.learning_rate = 0.05'`); the stage's default is
MoCo's 0.3.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from matl_keras.data import augment as augment_lib
from matl_keras.errors import ConfigError
from matl_keras.training import ssl_losses
from matl_keras.training.ssl_method import SSLMethod


def _batchnorm(name: str, sync: bool, affine: bool = True):
    # PyTorch's epsilon (the paper's code); Keras' 1e-3 would differ.
    return keras.layers.BatchNormalization(
        epsilon=1e-5, center=affine, scale=affine, synchronized=sync, name=name
    )


def projection_mlp(
    dim: int, sync: bool, name: str = "projector"
) -> keras.Model:
    """SimSiam's projector: pooled features -> 3 x (Dense, BatchNorm), ReLU
    after the first two, the last BatchNorm without scale and shift."""
    layers: list = [keras.layers.GlobalAveragePooling2D(name=f"{name}_pool")]
    for i in (1, 2, 3):
        layers.append(
            keras.layers.Dense(dim, use_bias=False, name=f"{name}_dense{i}")
        )
        layers.append(_batchnorm(f"{name}_bn{i}", sync, affine=i < 3))
        if i < 3:
            layers.append(keras.layers.ReLU(name=f"{name}_relu{i}"))
    return keras.Sequential(layers, name=name)


def prediction_mlp(
    dim: int, bottleneck: int, sync: bool, name: str = "predictor"
) -> keras.Model:
    """SimSiam's predictor: Dense-BatchNorm-ReLU to the bottleneck, then a
    Dense back to `dim` (no BatchNorm on the output)."""
    return keras.Sequential(
        [
            keras.layers.Dense(
                bottleneck, use_bias=False, name=f"{name}_dense1"
            ),
            _batchnorm(f"{name}_bn1", sync),
            keras.layers.ReLU(name=f"{name}_relu1"),
            keras.layers.Dense(dim, name=f"{name}_dense2"),
        ],
        name=name,
    )


class SimSiam(SSLMethod):
    """SimSiam: a siamese encoder, a predictor and a stop-gradient.

    Args:
        backbone: keras.Model. The encoder's backbone (pretrained).
        image_size: int. Side of the views.
        projection_dim: int. Width of the projector's three layers (the
            paper: 2048; `gin/stages/sstl_m.gin`: `SSL_HIDDEN_DIM`).
        prediction_dim: int. The predictor's bottleneck (the paper: 512,
            a quarter of `projection_dim`).
        augment: str. Augmentation recipe of both views (independent
            draws; `moco_v2` is the paper's, MoCo v2's `aug_plus`).
        sync_batchnorm: bool or None. BatchNorm of the heads over the
            global batch (None: as the backbone's `sync_batchnorm`,
            default True).

    Example:

    ```python
    backbone = ResNetBackbone(depth=18, image_size=96, sync_batchnorm=True)
    model = SimSiam(backbone=backbone, image_size=96, projection_dim=512,
                    prediction_dim=128)
    ```
    """

    needs_key_encoder = False
    shuffle_batchnorm = False

    def __init__(
        self,
        backbone: keras.Model,
        image_size: int = 224,
        projection_dim: int = 2048,
        prediction_dim: int = 512,
        augment: str = "moco_v2",
        sync_batchnorm: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, **kwargs)
        for name, value in (
            ("projection_dim", projection_dim),
            ("prediction_dim", prediction_dim),
        ):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(
                    f"`{name}` must be a positive int. Received: "
                    f"{name}={value!r}"
                )
        if sync_batchnorm is None:
            sync_batchnorm = bool(getattr(backbone, "sync_batchnorm", True))
        self.image_size = image_size
        self.projection_dim = projection_dim
        self.prediction_dim = prediction_dim
        self.augment_name = augment
        self._augment = augment_lib.get_augment(augment, image_size)
        # === Heads ===
        self.projector = projection_mlp(projection_dim, sync_batchnorm)
        self.predictor = prediction_mlp(
            projection_dim, prediction_dim, sync_batchnorm
        )
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.std_tracker = keras.metrics.Mean(name="output_std")

    def build(self, input_shape=None):
        shape = (None, self.image_size, self.image_size, 3)
        self.backbone.build(shape)
        features = self.backbone.compute_output_shape(shape)
        self.projector.build(features)
        self.predictor.build((None, self.projection_dim))
        self.built = True

    def views(self, image, seed: tf.Tensor) -> dict[str, tf.Tensor]:
        view1, view2 = augment_lib.two_views(self._augment, image, seed)
        return {"view1": view1, "view2": view2}

    def call(self, images, training=False):
        """Projector outputs `z` of `images`."""
        return self.projector(
            self.backbone(images, training=training), training=training
        )

    def train_step(self, data):
        views, _ = data  # no negatives: the images' identities are unused
        context = tf.distribute.get_replica_context()
        with tf.GradientTape() as tape:
            # One pass per view: BatchNorm statistics per view, as the
            # paper's code (`f(x1)`, `f(x2)`).
            z1 = self(views["view1"], training=True)
            z2 = self(views["view2"], training=True)
            p1 = self.predictor(z1, training=True)
            p2 = self.predictor(z2, training=True)
            per_example = ssl_losses.simsiam(p1, p2, z1, z2)
            # Divided by the global batch: the optimizer sums the replicas'
            # gradients.
            global_batch = tf.cast(
                tf.shape(per_example)[0] * context.num_replicas_in_sync,
                tf.float32,
            )
            loss = tf.reduce_sum(per_example) / global_batch
            scaled = self.optimizer.scale_loss(loss)
        variables = self.optimized_variables
        gradients = tape.gradient(scaled, variables)
        self.optimizer.apply_gradients(zip(gradients, variables))
        # The collapse diagnostic over the global batch (the same on every
        # replica, so the logged mean equals one device's).
        z = tf.stop_gradient(tf.cast(z1, tf.float32))
        if context.num_replicas_in_sync > 1:
            z = context.all_gather(tf.identity(z), axis=0)
        self.loss_tracker.update_state(per_example)
        self.std_tracker.update_state(ssl_losses.output_std(z))
        return {m.name: m.result() for m in self.metrics}

    @property
    def metrics(self):
        return [self.loss_tracker, self.std_tracker]

    def run_record(self) -> dict[str, Any]:
        return {
            "projection_dim": self.projection_dim,
            "prediction_dim": self.prediction_dim,
        }
