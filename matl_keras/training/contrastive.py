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
- The queue, the identities of its keys and its pointer are variables with
  aggregation `only_first_replica`; the keys and identities of all replicas
  are `all_gather`ed (in replica order, which is the global batch's order)
  before they are enqueued, so every replica holds the same queue as one
  device would.
- BatchNorm, methods with a key encoder (MoCo's shuffle-BN): the backbones
  normalise `batchnorm_groups` chunks of the global batch separately
  (`layers.FusedBatchNormalization` with `groups`), and the key batch is
  permuted so that each key group mixes images of several query groups
  (`shuffle_permutation`): a query and its positive key never share their
  BatchNorm statistics, so the network cannot find the positive through
  them. Under several replicas the key images are gathered, permuted
  globally and split again, as MoCo's `_batch_shuffle_ddp`. Methods
  without one (SimCLR) use synchronized BatchNorm over the global batch.
- The key encoder stays `trainable=True` (a non-trainable Keras 3
  BatchNormalization runs in inference mode, so keys would use moving
  statistics); it is kept out of the optimizer instead
  (`optimized_variables`) and moved only by the momentum update.
- The queue, its identities, pointer and fill count, and the key encoder
  are model variables: `save_weights` (the backups) stores and restores
  them.

Small datasets (COVID19-CT has 425 training images) need two things MoCo
on ImageNet does not: the queue holds about the images of one epoch
minus a batch (`queue_size="auto"`; one larger than the dataset is
refused: it would hold several keys of each image), and every key carries
its image's identity (or its source's: the patient, where the dataset
gives sources), so a query's own earlier keys, and those of its patient's
other slices, are never its negatives. The
key-encoder momentum may follow a cosine schedule (BYOL, MoCo v3) from
`momentum` to 1 over the run, which suits runs of a few hundred steps.
"""

from __future__ import annotations

from typing import Any
from typing import Callable

import keras
import tensorflow as tf

from matl_keras.errors import ConfigError
from matl_keras.training import ssl_losses
from matl_keras.training.ssl_method import RunSchedule
from matl_keras.training.ssl_method import SSLMethod

# Largest queue `queue_size="auto"` gives (MoCo's).
MAX_QUEUE = 65536


def projection_head(hidden_dim: int, output_dim: int, name: str) -> keras.Model:
    """MoCo v2's MLP head: pooled features -> Dense-ReLU -> Dense.

    No BatchNorm in the head (MoCo v2): nothing in it depends on the batch.
    """
    return keras.Sequential(
        [
            keras.layers.GlobalAveragePooling2D(name=f"{name}_pool"),
            keras.layers.Dense(
                hidden_dim, activation="relu", name=f"{name}_hidden"
            ),
            keras.layers.Dense(output_dim, name=f"{name}_out"),
        ],
        name=name,
    )


def _replica_context() -> tuple[Any, int, Any]:
    context = tf.distribute.get_replica_context()
    return (
        context,
        context.num_replicas_in_sync,
        context.replica_id_in_sync_group,
    )


def on_replica_device(tensor: tf.Tensor) -> tf.Tensor:
    """`tensor` as an op of this replica's device. Input batches carry no
    device, and MultiWorkerMirroredStrategy's all_gather of such a tensor
    fails ("destinations can not be empty"); an identity made inside the
    replica function is placed on the replica's device."""
    return tf.identity(tensor)


def _global_batch(per_example: tf.Tensor) -> tf.Tensor:
    """Examples in the global batch (this replica's times the replicas)."""
    _, replicas, _ = _replica_context()
    return tf.cast(tf.shape(per_example)[0] * replicas, tf.float32)


_MASK32 = 0xFFFFFFFF


def _fmix32(x: tf.Tensor) -> tf.Tensor:
    """MurmurHash3's 32-bit finaliser on int64 values in [0, 2**32)."""
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))
    x = tf.bitwise.bitwise_and(x * 0x85EBCA6B, _MASK32)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 13))
    x = tf.bitwise.bitwise_and(x * 0xC2B2AE35, _MASK32)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))


def hash_noise(values: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Pseudo-random int64 in [0, 2**32) per element of the int tensor
    `values`, a pure function of (value, seed).

    Why not `tf.random.stateless_uniform`: XLA's Philox is not TensorFlow's
    kernel (the same seed gives other numbers under `jit_compile=True`), so
    the key permutation would change with XLA. Integer hashing is the same
    everywhere.
    """
    seed = tf.bitwise.bitwise_and(tf.cast(seed, tf.int64), _MASK32)
    values = tf.bitwise.bitwise_and(tf.cast(values, tf.int64), _MASK32)
    mixed = _fmix32(tf.bitwise.bitwise_xor(values, _fmix32(seed[0])))
    second = _fmix32(tf.bitwise.bitwise_and(seed[1] + 0x9E3779B9, _MASK32))
    return _fmix32(tf.bitwise.bitwise_xor(mixed, second))


def shuffle_permutation(batch_size, groups: int, seed: tf.Tensor) -> tf.Tensor:
    """The key-batch order of shuffle-BN: `keys = images[perm]`, then split
    into `groups` contiguous BatchNorm groups.

    The query groups are the contiguous chunks of the batch (`s = batch /
    groups` images each). Each query group is shuffled (stateless, from
    `seed`), and the `groups x s` table of positions is read column by
    column, so key group k takes about `s / groups` images of every query
    group: no key group is the same set of images as a query group
    (guaranteed for `groups >= 2`, `s >= 2`), and which images meet is
    random (`hash_noise`). A pure function, tested, the same with XLA.

    Args:
        batch_size: int or int32 scalar tensor. The (global) batch.
        groups: int. BatchNorm groups.
        seed: int `[2]`: (run seed, step).

    Returns:
        (batch_size,) int32 permutation.
    """
    if groups < 2:
        raise ValueError(
            f"shuffle-BN needs >= 2 groups. Received: groups={groups}"
        )
    if isinstance(batch_size, int) and (
        batch_size % groups or batch_size // groups < 2
    ):
        raise ValueError(
            "shuffle-BN needs groups of >= 2 images dividing the batch. "
            f"Received: batch_size={batch_size}, groups={groups}"
        )
    batch_size = tf.cast(batch_size, tf.int32)
    table = tf.reshape(tf.range(batch_size), [groups, -1])
    table = tf.gather(
        table, tf.argsort(hash_noise(table, seed), axis=1), batch_dims=1
    )
    return tf.reshape(tf.transpose(table), [-1])


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
        momentum: float. m of Eq. 3 (key encoder only): the constant, or the
            cosine schedule's start.
        momentum_schedule: str. `"constant"` (MoCo) or `"cosine"` (from
            `momentum` at the first step to 1 at the last; BYOL, MoCo v3).
        queue_size: int or `"auto"`. Negative keys kept (key encoder only;
            0: none). `"auto"`: the images of one epoch minus a batch,
            rounded down to whole batches (at least one batch, at most
            65536 and the number of images). A queue larger than the
            number of training images is refused.
        image_size: int. Side of the views.
        head_factory: callable `(hidden_dim, output_dim, name) -> Model`
            building the projection head(s) (default: `projection_head`,
            MoCo v2's).
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
        momentum_schedule: str = "constant",
        queue_size: int | str = 0,
        image_size: int = 224,
        head_factory: Callable[[int, int, str], keras.Model] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, **kwargs)
        head_factory = head_factory or projection_head
        if not temperature > 0:
            raise ConfigError(
                f"`temperature` must be positive. Received: {temperature}"
            )
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(
                f"`momentum` must be in [0, 1). Received: {momentum}"
            )
        if momentum_schedule not in ssl_losses.MOMENTUM_SCHEDULES:
            raise ConfigError(
                "`momentum_schedule` must be one of "
                f"{ssl_losses.MOMENTUM_SCHEDULES}. Received: "
                f"momentum_schedule={momentum_schedule!r}"
            )
        if queue_size != "auto" and (
            not isinstance(queue_size, int) or queue_size < 0
        ):
            raise ConfigError(
                "`queue_size` must be an int >= 0 or 'auto'. Received: "
                f"queue_size={queue_size!r}"
            )
        if self.needs_key_encoder and key_backbone is None:
            raise ConfigError(f"{type(self).__name__} needs a `key_backbone`")
        self.projection_dim = projection_dim
        self.temperature = temperature
        self.momentum = momentum
        self.momentum_schedule = momentum_schedule
        self.queue_size_setting = queue_size
        self.queue_size = 0 if queue_size == "auto" else queue_size
        self.image_size = image_size
        self.total_steps = 0
        self.seed = 0
        self.projector = head_factory(hidden_dim, projection_dim, "projector")
        self.key_backbone = key_backbone
        self.key_projector = (
            head_factory(hidden_dim, projection_dim, "key_projector")
            if key_backbone is not None
            else None
        )
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.queue = None

    # --- run schedule ----------------------------------------------------

    def configure(self, schedule: RunSchedule) -> None:
        """Sizes the queue for the data and schedules the momentum."""
        super().configure(schedule)
        self.seed = schedule.seed
        self.total_steps = schedule.total_steps
        if self.key_backbone is None:
            return
        batch = schedule.global_batch_size
        images = schedule.num_examples
        if self.queue_size_setting == "auto":
            whole = (images - batch) // batch * batch
            self.queue_size = min(MAX_QUEUE, max(batch, whole), images)
        if self.queue_size > images:
            raise ConfigError(
                f"{type(self).__name__}: `queue_size` ({self.queue_size}) "
                f"is larger than the {images} training images: the queue "
                "would hold several keys of the same images. Use at most "
                f"{images} (queue_size='auto' picks one epoch of images "
                "minus a batch)."
            )
        if self.queue_size and self.queue_size < batch:
            raise ConfigError(
                f"{type(self).__name__}: `queue_size` ({self.queue_size}) "
                f"must be at least the global batch size ({batch})"
            )

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
            replicated = dict(trainable=False, aggregation="only_first_replica")
            self.queue = self.add_weight(
                shape=(self.queue_size, self.projection_dim),
                initializer="zeros",
                name="queue",
                **replicated,
            )
            # The identity of each key's image (its dataset index, or its
            # source's number; -1: empty slot).
            self.queue_ids = self.add_weight(
                shape=(self.queue_size,),
                dtype="int32",
                initializer=keras.initializers.Constant(-1),
                name="queue_ids",
                **replicated,
            )
            self.queue_pointer = self.add_weight(
                shape=(),
                dtype="int32",
                initializer="zeros",
                name="queue_pointer",
                **replicated,
            )
            self.queue_filled = self.add_weight(
                shape=(),
                dtype="int32",
                initializer="zeros",
                name="queue_filled",
                **replicated,
            )
        self.build_heads(features)
        self.built = True

    def build_heads(self, feature_shape) -> None:
        """Builds method-specific heads (e.g. the region classifier)."""

    def run_record(self) -> dict[str, Any]:
        """`queue_size` (as configured for the data) and
        `momentum_schedule` in `run.json`."""
        return {
            "queue_size": self.queue_size,
            "momentum_schedule": self.momentum_schedule,
        }

    @property
    def query_weights(self) -> list:
        """theta_q of Eq. 3: the query encoder's trainable weights."""
        return (
            self.backbone.trainable_weights + self.projector.trainable_weights
        )

    @property
    def key_weights(self) -> list:
        """theta_k of Eq. 3, in the same order as `query_weights`."""
        return (
            self.key_backbone.trainable_weights
            + self.key_projector.trainable_weights
        )

    @property
    def optimized_variables(self) -> list:
        """What the optimizer updates: everything trainable but the key
        encoder (moved by momentum only)."""
        excluded = (
            {id(v) for v in self.key_weights}
            if self.key_backbone is not None
            else set()
        )
        return [v for v in self.trainable_variables if id(v) not in excluded]

    def call(self, images, training=False):
        """Projections of `images` by the query encoder."""
        return self.encode(images, training=training)

    # --- the method's parts --------------------------------------------------

    def per_example_loss(
        self, views: dict[str, tf.Tensor], ids: tf.Tensor
    ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        """Returns the `(b,)` loss of this replica's examples (`ids`: their
        dataset indices) and named per-example values to track (their
        global mean is logged); `keys` among them are enqueued."""
        raise NotImplementedError

    # --- shared machinery -------------------------------------------------

    @property
    def batchnorm_groups(self) -> int:
        return int(getattr(self.backbone, "batchnorm_groups", 1) or 1)

    def encode(self, images, training=True):
        return self.projector(
            self.backbone(images, training=training), training=training
        )

    def _key_seed(self) -> tf.Tensor:
        """This step's seed of the key permutation: (run seed, optimizer
        step), the same on every replica (the step count is mirrored)."""
        return tf.stack(
            [
                tf.constant(self.seed, tf.int64),
                tf.cast(self.optimizer.iterations, tf.int64),
            ]
        )

    def encode_keys(self, images):
        """Keys from the momentum encoder (batch statistics, no gradient),
        with shuffle-BN when the backbones normalise per group."""
        groups = self.batchnorm_groups
        if groups < 2:
            keys = self.key_projector(
                self.key_backbone(images, training=True), training=True
            )
            return tf.stop_gradient(ssl_losses.l2_normalize(keys))
        context, replicas, replica = _replica_context()
        local = tf.shape(images)[0]
        gathered = (
            context.all_gather(on_replica_device(images), axis=0)
            if replicas > 1
            else images
        )
        perm = shuffle_permutation(
            tf.shape(gathered)[0], groups, self._key_seed()
        )
        mine = tf.gather(gathered, perm)[
            replica * local : (replica + 1) * local
        ]
        keys = self.key_projector(
            self.key_backbone(mine, training=True), training=True
        )
        keys = tf.stop_gradient(ssl_losses.l2_normalize(keys))
        if replicas > 1:
            keys = context.all_gather(keys, axis=0)
        # argsort inverts the permutation (XLA has no InvertPermutation).
        keys = tf.gather(keys, tf.argsort(perm))
        return keys[replica * local : (replica + 1) * local]

    def queue_mask(self, ids: tf.Tensor) -> tf.Tensor:
        """(b, K) True where a queue slot is a negative of the query with
        identity `ids[i]`: written at least once and not a key of an image
        of the query's identity (its own image, or its source's)."""
        valid = tf.range(self.queue_size) < self.queue_filled
        own = tf.equal(self.queue_ids[None, :], tf.cast(ids, tf.int32)[:, None])
        return valid[None, :] & ~own

    def momentum_at_step(self) -> tf.Tensor:
        """m of the step just taken (the optimizer's count is already
        incremented when the update runs)."""
        if self.momentum_schedule == "constant":
            return tf.constant(self.momentum, tf.float32)
        return ssl_losses.momentum_at(
            self.optimizer.iterations - 1,
            self.total_steps,
            self.momentum,
            self.momentum_schedule,
        )

    def momentum_update(self) -> None:
        """Eq. 3: theta_k <- m theta_k + (1 - m) theta_q."""
        m = self.momentum_at_step()
        for k, q in zip(self.key_weights, self.query_weights):
            k.assign(m * k + (1.0 - m) * q)

    def enqueue(self, keys: tf.Tensor, ids: tf.Tensor) -> None:
        """Writes the keys of the global batch and their images' dataset
        indices at the pointer (FIFO, wraps)."""
        context, replicas, _ = _replica_context()
        ids = tf.cast(ids, tf.int32)
        if replicas > 1:
            keys = context.all_gather(keys, axis=0)
            ids = context.all_gather(on_replica_device(ids), axis=0)
        n = tf.shape(keys)[0]
        tf.debugging.assert_less_equal(
            n,
            self.queue_size,
            message="queue_size must be at least the global batch size",
        )
        slots = ((self.queue_pointer + tf.range(n)) % self.queue_size)[:, None]
        self.queue.assign(
            tf.tensor_scatter_nd_update(
                self.queue, slots, tf.cast(keys, self.queue.dtype)
            )
        )
        self.queue_ids.assign(
            tf.tensor_scatter_nd_update(self.queue_ids, slots, ids)
        )
        self.queue_pointer.assign((self.queue_pointer + n) % self.queue_size)
        self.queue_filled.assign(
            tf.minimum(self.queue_filled + n, self.queue_size)
        )

    def after_step(self, extras: dict[str, tf.Tensor], ids: tf.Tensor) -> None:
        """After the optimizer step: momentum update, then enqueue."""
        if self.key_backbone is not None:
            self.momentum_update()
        if self.queue_size and "keys" in extras:
            self.enqueue(extras["keys"], ids)

    def train_step(self, data):
        views, ids = data
        with tf.GradientTape() as tape:
            per_example, extras = self.per_example_loss(views, ids)
            loss = tf.reduce_sum(per_example) / _global_batch(per_example)
            # Under mixed_float16 `compile` wrapped the optimizer in a
            # LossScaleOptimizer, which unscales in `apply_gradients`;
            # otherwise this returns `loss` unchanged.
            scaled = self.optimizer.scale_loss(loss)
        variables = self.optimized_variables
        gradients = tape.gradient(scaled, variables)
        self.optimizer.apply_gradients(zip(gradients, variables))
        self.after_step(extras, ids)
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
