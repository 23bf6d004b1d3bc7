"""The shared machinery of contrastive SSL methods: one `keras.Model` with a
custom `train_step` (after keras-io's `ContrastiveModel`).

It owns the projection head, the optional momentum key encoder (Eq. 3) and
the queue of negative keys, and reduces per-example losses (from the pure
functions in `ssl_losses`) over the global batch. A method plugin
(`plugins/ssl_methods/`) subclasses it and implements `views` (the
per-image inputs, as TensorFlow ops for `tf.data`) and `per_example_loss`.

Correct under `tf.distribute.MirroredStrategy`, where each point below
silently gives wrong training if ignored (observed on TF 2.21 / Keras 3.15):

- The loss is `sum(per-example) / global batch`: the optimizer sums the
  replicas' gradients, and unlike built-in Keras losses a hand-written
  reduction is not divided by the number of replicas for us.
- The queue and its pointer are variables with aggregation
  `only_first_replica`; the keys of all replicas are `all_gather`ed (in
  replica order, which is the global batch's order) before they are
  enqueued, so every replica holds the same queue as one device would.
- BatchNorm: the method's backbones are built with `sync_batchnorm=True`
  (synchronized BatchNormalization: statistics over the global batch).
  This is our answer to MoCo's shuffle-BN: the key encoder cannot cheat
  through per-device batch statistics because there are none; it also makes
  the moving statistics identical on every replica.
- The key encoder stays `trainable=True` (a non-trainable Keras 3
  BatchNormalization runs in inference mode, so keys would use moving
  statistics); it is kept out of the optimizer instead
  (`optimized_variables`) and moved only by the momentum update.
- The queue, its pointer and fill count, and the key encoder are model
  variables: `save_weights` (the backups) stores and restores them.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from matl_keras.errors import ConfigError
from matl_keras.training import ssl_losses
from matl_keras.training.ssl_method import SSLMethod


def projection_head(hidden_dim: int, output_dim: int, name: str) -> keras.Model:
    """MoCo v2's MLP head: pooled features -> Dense-ReLU -> Dense.

    No BatchNorm in the head (MoCo v2): nothing in it depends on the batch.
    """
    return keras.Sequential(
        [
            keras.layers.GlobalAveragePooling2D(name=f"{name}_pool"),
            keras.layers.Dense(hidden_dim, activation="relu", name=f"{name}_hidden"),
            keras.layers.Dense(output_dim, name=f"{name}_out"),
        ],
        name=name,
    )


def _replica_context() -> tuple[Any, int, Any]:
    context = tf.distribute.get_replica_context()
    return context, context.num_replicas_in_sync, context.replica_id_in_sync_group


class ContrastiveModel(SSLMethod):
    """Base of the contrastive SSL methods.

    Args:
        backbone: keras.Model. The query encoder's backbone (pretrained).
        key_backbone: keras.Model or None. A second backbone of the same
            architecture: the momentum key encoder (MoCo); None for methods
            without one (SimCLR).
        projection_dim: int. Output of the projection head.
        hidden_dim: int. Hidden width of the projection head.
        temperature: float. tau of the contrastive loss.
        momentum: float. m of Eq. 3 (key encoder only).
        queue_size: int. Negative keys kept (key encoder only; 0: none).
        image_size: int. Side of the views.
    """

    needs_key_encoder = False

    def __init__(
        self,
        backbone: keras.Model,
        key_backbone: keras.Model | None = None,
        projection_dim: int = 128,
        hidden_dim: int = 2048,
        temperature: float = 0.2,
        momentum: float = 0.999,
        queue_size: int = 0,
        image_size: int = 224,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, **kwargs)
        if not temperature > 0:
            raise ConfigError(f"`temperature` must be positive. Received: {temperature}")
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"`momentum` must be in [0, 1). Received: {momentum}")
        if queue_size < 0:
            raise ConfigError(f"`queue_size` must be >= 0. Received: {queue_size}")
        if self.needs_key_encoder and key_backbone is None:
            raise ConfigError(f"{type(self).__name__} needs a `key_backbone`")
        self.projection_dim = projection_dim
        self.temperature = temperature
        self.momentum = momentum
        self.queue_size = queue_size
        self.image_size = image_size
        self.projector = projection_head(hidden_dim, projection_dim, "projector")
        self.key_backbone = key_backbone
        self.key_projector = (
            projection_head(hidden_dim, projection_dim, "key_projector")
            if key_backbone is not None
            else None
        )
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.queue = None

    # --- building ----------------------------------------------------------

    def build(self, input_shape=None):
        shape = (None, self.image_size, self.image_size, 3)
        self.backbone.build(shape)
        features = self.backbone.compute_output_shape(shape)
        self.projector.build(features)
        if self.key_backbone is not None:
            self.key_backbone.build(shape)
            self.key_projector.build(features)
            for k, q in zip(self.key_weights, self.query_weights):
                k.assign(q)
        if self.queue_size:
            self.queue = self.add_weight(
                shape=(self.queue_size, self.projection_dim),
                initializer="zeros",
                trainable=False,
                aggregation="only_first_replica",
                name="queue",
            )
            self.queue_pointer = self.add_weight(
                shape=(), dtype="int32", initializer="zeros", trainable=False,
                aggregation="only_first_replica", name="queue_pointer",
            )
            self.queue_filled = self.add_weight(
                shape=(), dtype="int32", initializer="zeros", trainable=False,
                aggregation="only_first_replica", name="queue_filled",
            )
        self.build_heads(features)
        self.built = True

    def build_heads(self, feature_shape) -> None:
        """Builds method-specific heads (e.g. the region classifier)."""

    @property
    def query_weights(self) -> list:
        """theta_q of Eq. 3: the query encoder's trainable weights."""
        return self.backbone.trainable_weights + self.projector.trainable_weights

    @property
    def key_weights(self) -> list:
        """theta_k of Eq. 3, in the same order as `query_weights`."""
        return self.key_backbone.trainable_weights + self.key_projector.trainable_weights

    @property
    def optimized_variables(self) -> list:
        """What the optimizer updates: everything trainable but the key
        encoder (moved by momentum only)."""
        excluded = {id(v) for v in self.key_weights} if self.key_backbone is not None else set()
        return [v for v in self.trainable_variables if id(v) not in excluded]

    def call(self, images, training=False):
        """Projections of `images` by the query encoder."""
        return self.encode(images, training=training)

    # --- the method's parts --------------------------------------------------

    def views(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
        """The inputs of one image (float32 `(load, load, 3)` in [0, 1]), as
        TensorFlow ops: runs in `tf.data`."""
        raise NotImplementedError

    def per_example_loss(
        self, views: dict[str, tf.Tensor]
    ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        """Returns the `(b,)` loss of this replica's examples and named
        per-example values to track (their global mean is logged)."""
        raise NotImplementedError

    # --- shared machinery ------------------------------------------------------

    def encode(self, images, training=True):
        return self.projector(self.backbone(images, training=training), training=training)

    def encode_keys(self, images):
        """Keys from the momentum encoder (batch statistics, no gradient)."""
        keys = self.key_projector(
            self.key_backbone(images, training=True), training=True
        )
        return tf.stop_gradient(ssl_losses.l2_normalize(keys))

    def queue_valid(self) -> tf.Tensor:
        """(K,) True for queue slots written at least once."""
        return tf.range(self.queue_size) < self.queue_filled

    def momentum_update(self) -> None:
        """Eq. 3: theta_k <- m theta_k + (1 - m) theta_q."""
        m = self.momentum
        for k, q in zip(self.key_weights, self.query_weights):
            k.assign(m * k + (1.0 - m) * q)

    def enqueue(self, keys: tf.Tensor) -> None:
        """Writes the keys of the global batch at the pointer (FIFO, wraps)."""
        context, replicas, _ = _replica_context()
        if replicas > 1:
            keys = context.all_gather(keys, axis=0)
        n = tf.shape(keys)[0]
        tf.debugging.assert_less_equal(
            n, self.queue_size,
            message="queue_size must be at least the global batch size",
        )
        slots = (self.queue_pointer + tf.range(n)) % self.queue_size
        self.queue.assign(
            tf.tensor_scatter_nd_update(
                self.queue, slots[:, None], tf.cast(keys, self.queue.dtype)
            )
        )
        self.queue_pointer.assign((self.queue_pointer + n) % self.queue_size)
        self.queue_filled.assign(tf.minimum(self.queue_filled + n, self.queue_size))

    def after_step(self, extras: dict[str, tf.Tensor]) -> None:
        """After the optimizer step: momentum update, then enqueue."""
        if self.key_backbone is not None:
            self.momentum_update()
        if self.queue_size and "keys" in extras:
            self.enqueue(extras["keys"])

    def train_step(self, data):
        views = data[0] if isinstance(data, tuple) else data
        _, replicas, _ = _replica_context()
        with tf.GradientTape() as tape:
            per_example, extras = self.per_example_loss(views)
            global_batch = tf.cast(tf.shape(per_example)[0] * replicas, tf.float32)
            loss = tf.reduce_sum(per_example) / global_batch
            # Under mixed_float16 `compile` wrapped the optimizer in a
            # LossScaleOptimizer, which unscales in `apply_gradients`;
            # otherwise this returns `loss` unchanged.
            scaled = self.optimizer.scale_loss(loss)
        variables = self.optimized_variables
        gradients = tape.gradient(scaled, variables)
        self.optimizer.apply_gradients(zip(gradients, variables))
        self.after_step(extras)
        self.loss_tracker.update_state(per_example)
        for tracker in self.extra_trackers:
            tracker.update_state(extras[tracker.name])
        return {m.name: m.result() for m in self.metrics}

    @property
    def extra_trackers(self) -> list:
        """Mean trackers of per-example extras (method-specific)."""
        return []

    @property
    def metrics(self):
        return [self.loss_tracker, *self.extra_trackers]
