"""`NonLocalBlock`: the paper's self-attention layer (ATTN, Eq. 1).

Embedded-Gaussian non-local block of Wang et al. 2018 ("Non-local Neural
Networks", https://arxiv.org/abs/1711.07971), as the paper uses it:

    Q = W_q X,  K = W_k X,  V = W_v X          (1x1 convolutions)
    O = V softmax(K^T Q)                        (Eq. 1; softmax over keys)
    Y = X + BN(W_o O)                           (1x1 conv back to C, residual)

The output BatchNormalization's gamma starts at zero, so a new block is the
identity and can be inserted into a pretrained ResNet without changing it.

Score normalisation (`score="cosine"`, the default). With the plain dot
product `K^T Q` on ResNet activations (post-ReLU, un-normalised, hundreds of
channels) the scores of an untrained R-18/R-50 have a std of thousands in
the first block, so the softmax is one-hot (mean max weight 0.998-1.000,
entropy ~0 nats) and stays near one-hot after fine-tuning (0.92-1.00, issue
15): Eq. 1 degenerates to an argmax. Wang et al.'s reference code
(video-nonlocal-net `nonlocal_helper.py`) keeps scores small with a 0.01-std
init of theta/phi and `use_scale` (d_k^-0.5), but both only fix the scale
at init: training is free to grow the weights back. We keep Eq. 1's form (a
softmax over keys of q . k) but L2-normalise q and k over channels first
(cosine attention, as Swin-V2) and multiply by a learnable temperature
`tau = exp(log_tau)`, clipped to `[1, max_logit_scale]`. The logits are
then bounded by +-max_logit_scale whatever the activations or the training
do, and start at +-logit_scale. `score="dot"` is the old, unscaled layer
(kept so old configs and their weights mean what they meant).
"""

import keras
import numpy as np
from keras import layers
from keras import ops

from matl_keras.layers.fused_batch_norm import FusedBatchNormalization


@keras.saving.register_keras_serializable(package="matl_keras")
class NonLocalBlock(keras.layers.Layer):
    """Non-local self-attention over all spatial positions.

    Args:
        reduction: int. d_k = d_v = input channels // reduction unless given
            below (2, half the channels, as in Wang et al.).
        key_channels: int or None. d_k, channels of Q and K.
        value_channels: int or None. d_v, channels of V.
        subsample: int. Max-pool K and V by this factor (1: none; 2 is Wang
            et al.'s trick that cuts the hw x hw cost by 4).
        return_attention: bool. Also return the attention weights
            `(batch, h * w, h' * w')`: for each query position (row), the
            softmax over key positions (columns of Eq. 1 transposed).
        sync_batchnorm: bool. The output BatchNormalization uses the global
            batch of all replicas (`synchronized=True`).
        batchnorm_groups: int. The output BatchNormalization's training
            statistics per chunk of the global batch
            (`FusedBatchNormalization(groups=...)`, MoCo's shuffle-BN); 1: off.
        score: str. `"cosine"`: softmax(tau * cos(q, k)) with a learnable
            tau (see the module docstring); `"dot"`: the old unscaled
            softmax(q . k), which saturates on ResNet activations.
        logit_scale: float. Initial tau for `score="cosine"`.
        max_logit_scale: float. Upper clip of tau: logits stay within
            +-max_logit_scale, so training cannot make the softmax one-hot
            on a map with many keys.
        name: str. Layer name; sub-layers are `f"{name}_q"` etc.

    Example:
    ```python
    block = NonLocalBlock(return_attention=True)
    y, attention = block(np.zeros((2, 8, 8, 64), "float32"))
    ```
    """

    def __init__(
        self,
        reduction=2,
        key_channels=None,
        value_channels=None,
        subsample=1,
        return_attention=False,
        sync_batchnorm=False,
        batchnorm_groups=1,
        score="cosine",
        logit_scale=4.0,
        max_logit_scale=10.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if score not in ("cosine", "dot"):
            raise ValueError(
                f"`score` must be 'cosine' or 'dot'. Received: score={score!r}"
            )
        if not 1.0 <= float(logit_scale) <= float(max_logit_scale):
            raise ValueError(
                "Need 1 <= logit_scale <= max_logit_scale. Received: "
                f"logit_scale={logit_scale!r}, "
                f"max_logit_scale={max_logit_scale!r}"
            )
        self.score = score
        self.logit_scale = float(logit_scale)
        self.max_logit_scale = float(max_logit_scale)
        for arg, value in (
            ("key_channels", key_channels),
            ("value_channels", value_channels),
        ):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(
                    f"`{arg}` must be a positive int or None. Received: "
                    f"{arg}={value!r}"
                )
        if not isinstance(reduction, int) or reduction < 1:
            raise ValueError(
                "`reduction` must be an int >= 1. "
                f"Received: reduction={reduction!r}"
            )
        if not isinstance(subsample, int) or subsample < 1:
            raise ValueError(
                "`subsample` must be an int >= 1. "
                f"Received: subsample={subsample!r}"
            )
        self.reduction = reduction
        self.key_channels = key_channels
        self.value_channels = value_channels
        self.subsample = subsample
        self.return_attention = return_attention
        self.sync_batchnorm = sync_batchnorm
        self.batchnorm_groups = batchnorm_groups

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(
                "NonLocalBlock needs a known channel count. Received: "
                f"input_shape={input_shape}"
            )
        self._dk = self.key_channels or max(1, channels // self.reduction)
        self._dv = self.value_channels or max(1, channels // self.reduction)
        name = self.name
        self.query_conv = layers.Conv2D(
            self._dk, 1, dtype=self.dtype_policy, name=f"{name}_q"
        )
        self.key_conv = layers.Conv2D(
            self._dk, 1, dtype=self.dtype_policy, name=f"{name}_k"
        )
        self.value_conv = layers.Conv2D(
            self._dv, 1, dtype=self.dtype_policy, name=f"{name}_v"
        )
        self.output_conv = layers.Conv2D(
            channels, 1, dtype=self.dtype_policy, name=f"{name}_out"
        )
        if self.batchnorm_groups > 1:
            self.output_bn = FusedBatchNormalization(
                groups=self.batchnorm_groups,
                gamma_initializer="zeros",
                dtype=self.dtype_policy,
                name=f"{name}_out_bn",
            )
        else:
            self.output_bn = layers.BatchNormalization(
                gamma_initializer="zeros",
                synchronized=self.sync_batchnorm,
                dtype=self.dtype_policy,
                name=f"{name}_out_bn",
            )
        self.pool = None
        kv_shape = input_shape
        if self.subsample > 1:
            self.pool = layers.MaxPooling2D(
                self.subsample,
                padding="same",
                dtype=self.dtype_policy,
                name=f"{name}_pool",
            )
            kv_shape = self.pool.compute_output_shape(input_shape)
        self.query_conv.build(input_shape)
        self.key_conv.build(kv_shape)
        self.value_conv.build(kv_shape)
        self.output_conv.build(tuple(input_shape[:-1]) + (self._dv,))
        self.output_bn.build(tuple(input_shape[:-1]) + (channels,))
        self.log_tau = None
        if self.score == "cosine":
            self.log_tau = self.add_weight(
                shape=(),
                initializer=keras.initializers.Constant(
                    float(np.log(self.logit_scale))
                ),
                dtype="float32",
                autocast=False,
                name="log_tau",
            )

    def load_own_variables(self, store):
        # Weights files of the layer before `score="cosine"` have no entry
        # for log_tau: start it at its explicit default, `logit_scale`, as a
        # new layer would (the q/k/v/out kernels load as saved).
        if self.log_tau is not None and len(store.keys()) == 0:
            self.log_tau.assign(float(np.log(self.logit_scale)))
            return
        super().load_own_variables(store)

    def temperature(self):
        """tau of the cosine scores, float32, within [1, max_logit_scale]."""
        return ops.exp(
            ops.clip(self.log_tau, 0.0, float(np.log(self.max_logit_scale)))
        )

    def _flatten(self, x, channels):
        # Static h * w where known: a -1 here would leave Keras unable to
        # infer the shape of everything downstream.
        h, w = x.shape[1], x.shape[2]
        if h is not None and w is not None:
            return ops.reshape(x, (-1, h * w, channels))
        shape = ops.shape(x)
        return ops.reshape(x, (shape[0], shape[1] * shape[2], channels))

    def call(self, inputs, training=None):
        kv_input = inputs if self.pool is None else self.pool(inputs)
        q = self._flatten(self.query_conv(inputs), self._dk)
        k = self._flatten(self.key_conv(kv_input), self._dk)
        v = self._flatten(self.value_conv(kv_input), self._dv)
        # Scores and softmax in float32 even under mixed precision.
        q = ops.cast(q, "float32")
        k = ops.cast(k, "float32")
        if self.score == "cosine":
            q = q / ops.sqrt(ops.sum(q * q, axis=-1, keepdims=True) + 1e-12)
            k = k / ops.sqrt(ops.sum(k * k, axis=-1, keepdims=True) + 1e-12)
        scores = ops.matmul(q, ops.transpose(k, (0, 2, 1)))
        if self.score == "cosine":
            scores = scores * self.temperature()
        attention = ops.softmax(scores, axis=-1)
        o = ops.matmul(ops.cast(attention, v.dtype), v)
        if inputs.shape[1] is not None and inputs.shape[2] is not None:
            o = ops.reshape(o, (-1, inputs.shape[1], inputs.shape[2], self._dv))
        else:
            shape = ops.shape(inputs)
            o = ops.reshape(o, (shape[0], shape[1], shape[2], self._dv))
        y = self.output_bn(self.output_conv(o), training=training)
        outputs = inputs + ops.cast(y, inputs.dtype)
        if self.return_attention:
            return outputs, attention
        return outputs

    def compute_output_shape(self, input_shape):
        if not self.return_attention:
            return input_shape
        hw = None
        kv_hw = None
        if input_shape[1] is not None and input_shape[2] is not None:
            hw = input_shape[1] * input_shape[2]
            kh = -(-input_shape[1] // self.subsample)
            kw = -(-input_shape[2] // self.subsample)
            kv_hw = kh * kw
        return input_shape, (input_shape[0], hw, kv_hw)

    def compute_output_spec(self, inputs, training=None):
        shapes = self.compute_output_shape(inputs.shape)
        if not self.return_attention:
            return keras.KerasTensor(shapes, dtype=inputs.dtype)
        return (
            keras.KerasTensor(shapes[0], dtype=inputs.dtype),
            keras.KerasTensor(shapes[1], dtype="float32"),
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "reduction": self.reduction,
                "key_channels": self.key_channels,
                "value_channels": self.value_channels,
                "subsample": self.subsample,
                "return_attention": self.return_attention,
                "sync_batchnorm": self.sync_batchnorm,
                "batchnorm_groups": self.batchnorm_groups,
                "score": self.score,
                "logit_scale": self.logit_scale,
                "max_logit_scale": self.max_logit_scale,
            }
        )
        return config
