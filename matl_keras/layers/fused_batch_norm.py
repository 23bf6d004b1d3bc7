"""BatchNormalization that runs TensorFlow's fused kernel.

Why our own: Keras 3's `BatchNormalization` computes, on the TensorFlow
backend, `moments` and then `tf.nn.batch_normalization`: half a dozen
elementwise passes over every activation, forward and backward, with the
input cast to float32 first. On CPU those passes are memory-bound and make
ResNet-50 training slower at batch 32 than at batch 8 (measured in
`tools/benchmark.py`); tf.keras used TensorFlow's `FusedBatchNormV3`
(one pass, oneDNN on CPU, cuDNN on GPU, float16/bfloat16 input with float32
statistics), which Keras 3 no longer calls. Keras core has no fused option.

This subclass calls `FusedBatchNormV3` where it computes exactly what the
Keras layer computes (4-D input, channels last, no mask, no renorm; in
training mode only when the statistics are this replica's alone: not
synchronized across several replicas) and defers to Keras otherwise. The
moving statistics follow Keras' rule, including its biased batch variance
(the fused kernel returns the Bessel-corrected one; it is converted back).
Weights, config and checkpoints are those of `keras.layers.BatchNormalization`.

Grouped statistics (`groups > 1`), the one-device form of MoCo's
shuffle-BN: MoCo's encoders must not share BatchNorm statistics between a
query and its positive key, or the network lowers the contrastive loss
through the batch statistics instead of the images ("intra-batch
communication", He et al. 2020, section 3.3; Kaiming He in
facebookresearch/moco#46: synchronized BN "is not sufficient in the case of
MoCo"). MoCo trains on 8 GPUs, each normalising its own 32 images, and
shuffles the key batch across GPUs; on one device MoCo's CIFAR demo and
lightly's `SplitBatchNorm` normalise `groups` chunks of the batch
separately, and `ContrastiveModel` permutes the key batch so that each key
group mixes images of several query groups. `groups` counts chunks of the
GLOBAL batch (contiguous, in its order): under R replicas each normalises
its own `groups / R` chunks, exactly the global chunks it holds, so the
outputs equal one device's; the moving statistics take the mean over
groups (as MoCo's demo) and Keras averages the replicas' assignments (the
variables' `mean` aggregation), so they equal one device's too. Inference
uses the moving statistics. Each group runs the fused kernel on its chunk
of the batch (the outputs concatenated; the groups' kernels one after the
other, forward and backward, which keeps runs bitwise repeatable across
processes, see `_fused_groups`): the `tf.nn.moments` form's elementwise
passes made BatchNorm a third of the op time of the MoCo step (ResNet-50,
128 px, batch 32, 2 groups; `tools/profile_step.py`), and fusing them made
the step 20-40% faster (`tools/bench_vs_pytorch.py`, issue #21).
Grouping is an option of this class, not a subclass, because Keras names
a functional model's layers in weights files by their class: a backbone
pretrained with groups must load into a plain one.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def _fused_groups(x, gamma, beta, groups: int, epsilon: float):
    """Training-mode `FusedBatchNormV3` on each of `groups` contiguous
    chunks of the batch of `x` (NHWC): `(y, means, unbiased variances)`,
    the statistics stacked per group.

    The groups' kernels, forward and backward, run one after the other
    (control dependencies, and a gradient written here for that): oneDNN's
    batch-norm kernels running concurrently on TensorFlow's inter-op
    threads gave other bits from one process to the next (the region-aware
    step's fingerprint, `tests/matl_keras/training/
    test_repeatable_across_processes.py`), which op determinism does not
    prevent.
    """

    @tf.custom_gradient
    def run(x, gamma, beta):
        outputs, means, variances, saved = [], [], [], []
        for part in tf.split(x, groups, axis=0):
            with tf.control_dependencies(outputs[-1:]):
                y, mean, var, r1, r2, r3 = tf.raw_ops.FusedBatchNormV3(
                    x=part,
                    scale=gamma,
                    offset=beta,
                    mean=tf.zeros([0], tf.float32),
                    variance=tf.zeros([0], tf.float32),
                    epsilon=epsilon,
                    exponential_avg_factor=1.0,
                    data_format="NHWC",
                    is_training=True,
                )
            outputs.append(y)
            means.append(mean)
            variances.append(var)
            saved.append((part, r1, r2, r3))

        def grad(dy, *unused):
            del unused  # the statistics feed only the moving averages
            dxs, dgammas, dbetas = [], [], []
            for dy_part, (part, r1, r2, r3) in zip(
                tf.split(dy, groups, axis=0), saved
            ):
                with tf.control_dependencies(dxs[-1:]):
                    dx, dgamma, dbeta, _, _ = tf.raw_ops.FusedBatchNormGradV3(
                        y_backprop=dy_part,
                        x=part,
                        scale=gamma,
                        reserve_space_1=r1,
                        reserve_space_2=r2,
                        reserve_space_3=r3,
                        epsilon=epsilon,
                        data_format="NHWC",
                        is_training=True,
                    )
                dxs.append(dx)
                dgammas.append(dgamma)
                dbetas.append(dbeta)
            return tf.concat(dxs, 0), tf.add_n(dgammas), tf.add_n(dbetas)

        y = tf.concat(outputs, axis=0)
        return (y, tf.stack(means), tf.stack(variances)), grad

    return run(x, gamma, beta)


@keras.saving.register_keras_serializable(package="matl_keras")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` on TensorFlow's fused kernel.

    Args:
        groups: int. Training statistics per chunk of the global batch
            (>= 1; 1: the whole replica's batch, Keras' behaviour). The
            global batch must be divisible by `groups`, and `groups` by
            the number of replicas. Excludes `synchronized=True`.
        **kwargs: as `keras.layers.BatchNormalization`.
    """

    # Grouped statistics on the fused kernel (one call per group); False:
    # from `tf.nn.moments` (`_grouped_call_moments`, the reference; kept
    # for the tests and `tools/bench_vs_pytorch.py --fuse_groups=0`).
    fuse_groups = True

    def __init__(self, groups: int = 1, **kwargs):
        super().__init__(**kwargs)
        if (
            not isinstance(groups, int)
            or isinstance(groups, bool)
            or groups < 1
        ):
            raise ValueError(
                f"`groups` must be a positive int. Received: groups={groups!r}"
            )
        if groups > 1 and self.synchronized:
            raise ValueError(
                "BatchNorm groups and synchronized statistics exclude each "
                f"other. Received: groups={groups}, synchronized=True"
            )
        self.groups = groups

    def get_config(self):
        return {**super().get_config(), "groups": self.groups}

    def _local_groups(self) -> int:
        context = tf.distribute.get_replica_context()
        replicas = 1 if context is None else context.num_replicas_in_sync
        if self.groups % replicas:
            raise ValueError(
                f"{self.name}: `groups` ({self.groups}) must be a multiple of "
                f"the number of replicas ({replicas})"
            )
        return self.groups // replicas

    def _check_grouped(self, inputs, mask, groups):
        if mask is not None or self.renorm or self.axis not in (-1, 3):
            raise ValueError(
                f"{self.name}: grouped statistics support channels-last "
                "input without mask or renorm"
            )
        tf.debugging.assert_equal(
            tf.shape(inputs)[0] % groups,
            0,
            message=(
                f"{self.name}: the per-replica batch must be divisible by "
                f"its {groups} BatchNorm group(s)"
            ),
        )

    def _kernel_inputs(self, inputs):
        """`(x, scale, offset)` as the fused kernel takes them: x in a
        float type it accepts, scale and offset float32 (ones and zeros
        where the layer has none)."""
        x = tf.convert_to_tensor(inputs)
        if x.dtype not in (tf.float16, tf.bfloat16, tf.float32):
            x = tf.cast(x, tf.float32)
        channels = x.shape[-1]
        gamma = (
            tf.cast(self.gamma, tf.float32)
            if self.scale
            else tf.ones([channels], tf.float32)
        )
        beta = (
            tf.cast(self.beta, tf.float32)
            if self.center
            else tf.zeros([channels], tf.float32)
        )
        return x, gamma, beta

    def _grouped_call(self, inputs, mask):
        """Training output with per-group statistics: one fused kernel per
        group (a contiguous chunk of the batch), outputs concatenated."""
        if not self.fuse_groups or len(inputs.shape) != 4:
            return self._grouped_call_moments(inputs, mask)
        groups = self._local_groups()
        self._check_grouped(inputs, mask, groups)
        x, gamma, beta = self._kernel_inputs(inputs)
        y, means, unbiased = _fused_groups(x, gamma, beta, groups, self.epsilon)
        n = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]) // groups, tf.float32)
        # Keras' biased batch variance (the kernel's is Bessel's).
        variances = unbiased * (n - 1.0) / tf.maximum(n, 1.0)
        self._update_grouped_moving(
            tf.reduce_mean(means, axis=0), tf.reduce_mean(variances, axis=0)
        )
        return tf.cast(y, self.compute_dtype)

    def _grouped_call_moments(self, inputs, mask):
        """The same as `_grouped_call` from `tf.nn.moments` and elementwise
        ops (any rank; the reference the fused form is tested against)."""
        groups = self._local_groups()
        self._check_grouped(inputs, mask, groups)
        x = tf.cast(inputs, tf.float32)
        shape = tf.shape(x)
        channels = x.shape[-1]
        grouped = tf.reshape(x, [groups, -1, channels])
        mean, variance = tf.nn.moments(grouped, axes=[1], keepdims=True)
        gamma = tf.cast(self.gamma, tf.float32) if self.scale else 1.0
        beta = tf.cast(self.beta, tf.float32) if self.center else 0.0
        y = (grouped - mean) * tf.math.rsqrt(variance + self.epsilon)
        y = tf.reshape(y * gamma + beta, shape)
        self._update_grouped_moving(
            tf.reduce_mean(mean, axis=[0, 1]),
            tf.reduce_mean(variance, axis=[0, 1]),
        )
        return tf.cast(y, self.compute_dtype)

    def _update_grouped_moving(self, group_mean, group_variance):
        """Keras' rule with the mean over groups of the groups' statistics
        (biased batch variance, as keras.layers.BatchNormalization)."""
        momentum = self.momentum
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            # Keras' moving statistics have no aggregation: each replica
            # would keep its own. Every replica assigns the mean over all
            # groups of the global batch instead, as one device does.
            # One tensor per call, as Keras' synchronized BatchNorm does
            # (a list fails under MultiWorkerMirroredStrategy).
            group_mean = context.all_reduce(
                tf.distribute.ReduceOp.MEAN, group_mean
            )
            group_variance = context.all_reduce(
                tf.distribute.ReduceOp.MEAN, group_variance
            )
        self.moving_mean.assign(
            tf.cast(
                tf.cast(self.moving_mean, tf.float32) * momentum
                + group_mean * (1.0 - momentum),
                self.moving_mean.dtype,
            )
        )
        self.moving_variance.assign(
            tf.cast(
                tf.cast(self.moving_variance, tf.float32) * momentum
                + group_variance * (1.0 - momentum),
                self.moving_variance.dtype,
            )
        )

    def _can_fuse(self, inputs, training, mask) -> bool:
        if keras.backend.backend() != "tensorflow" or mask is not None:
            return False
        if len(inputs.shape) != 4 or self.axis not in (-1, 3) or self.renorm:
            return False
        if training and self.trainable and self.synchronized:
            context = tf.distribute.get_replica_context()
            return context is not None and context.num_replicas_in_sync == 1
        return True

    def call(self, inputs, training=None, mask=None):
        if self.groups > 1 and training and self.trainable:
            return self._grouped_call(inputs, mask)
        if not self._can_fuse(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        x, gamma, beta = self._kernel_inputs(inputs)
        moving_mean = tf.cast(self.moving_mean, tf.float32)
        moving_variance = tf.cast(self.moving_variance, tf.float32)
        if training and self.trainable:
            y, mean, unbiased, _, _, _ = tf.raw_ops.FusedBatchNormV3(
                x=x,
                scale=gamma,
                offset=beta,
                mean=tf.zeros([0], tf.float32),
                variance=tf.zeros([0], tf.float32),
                epsilon=self.epsilon,
                exponential_avg_factor=1.0,
                data_format="NHWC",
                is_training=True,
            )
            n = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), tf.float32)
            variance = unbiased * (n - 1.0) / tf.maximum(n, 1.0)
            momentum = self.momentum
            self.moving_mean.assign(
                tf.cast(
                    moving_mean * momentum + mean * (1.0 - momentum),
                    self.moving_mean.dtype,
                )
            )
            self.moving_variance.assign(
                tf.cast(
                    moving_variance * momentum + variance * (1.0 - momentum),
                    self.moving_variance.dtype,
                )
            )
        else:
            y, _, _, _, _, _ = tf.raw_ops.FusedBatchNormV3(
                x=x,
                scale=gamma,
                offset=beta,
                mean=moving_mean,
                variance=moving_variance,
                epsilon=self.epsilon,
                exponential_avg_factor=1.0,
                data_format="NHWC",
                is_training=False,
            )
        return tf.cast(y, self.compute_dtype)
