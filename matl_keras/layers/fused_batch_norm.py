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
"""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="matl_keras")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` on TensorFlow's fused kernel."""

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
        if not self._can_fuse(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        x = tf.convert_to_tensor(inputs)
        if x.dtype not in (tf.float16, tf.bfloat16, tf.float32):
            x = tf.cast(x, tf.float32)
        channels = x.shape[-1]
        gamma = (tf.cast(self.gamma, tf.float32) if self.scale
                 else tf.ones([channels], tf.float32))
        beta = (tf.cast(self.beta, tf.float32) if self.center
                else tf.zeros([channels], tf.float32))
        moving_mean = tf.cast(self.moving_mean, tf.float32)
        moving_variance = tf.cast(self.moving_variance, tf.float32)
        if training and self.trainable:
            y, mean, unbiased, _, _, _ = tf.raw_ops.FusedBatchNormV3(
                x=x, scale=gamma, offset=beta,
                mean=tf.zeros([0], tf.float32), variance=tf.zeros([0], tf.float32),
                epsilon=self.epsilon, exponential_avg_factor=1.0,
                data_format="NHWC", is_training=True,
            )
            n = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), tf.float32)
            variance = unbiased * (n - 1.0) / tf.maximum(n, 1.0)
            momentum = self.momentum
            self.moving_mean.assign(
                tf.cast(moving_mean * momentum + mean * (1.0 - momentum),
                        self.moving_mean.dtype)
            )
            self.moving_variance.assign(
                tf.cast(moving_variance * momentum + variance * (1.0 - momentum),
                        self.moving_variance.dtype)
            )
        else:
            y, _, _, _, _, _ = tf.raw_ops.FusedBatchNormV3(
                x=x, scale=gamma, offset=beta, mean=moving_mean,
                variance=moving_variance, epsilon=self.epsilon,
                exponential_avg_factor=1.0, data_format="NHWC", is_training=False,
            )
        return tf.cast(y, self.compute_dtype)
