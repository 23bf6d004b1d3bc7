"""LARS: layer-wise adaptive rate scaling (You et al. 2017), SimCLR's
optimizer.

Keras 3 core has no LARS (tensorflow-addons, which had one, is end of
life), so it is written here, after google-research/simclr's
`lars_optimizer.py` (read, not copied). Per variable, with momentum `m`,
rate `lr`, L2 coefficient `l2` and trust coefficient `eta`:

    g <- g + l2 * w                               (adapted variables only)
    r = eta * ||w|| / ||g||   (1 where either norm is 0; adapted only)
    v <- m * v + lr * r * g
    w <- w - v

"Adapted" variables are the kernels (rank >= 2); the others, the
BatchNorm scales and offsets and the biases, get neither the trust ratio
nor the weight decay, as SimCLR's `exclude_from_weight_decay` (which names
`batch_normalization` and `bias`) and solo-learn's `exclude_bias_n_norm`
(by rank). The two rules agree on the ResNets; they differ on a rank-1 or
scalar variable that is neither, such as the learnable temperature of the
non-local blocks (`score='cosine'`), which SimCLR's rule would adapt and
decay and this class does not. Keras' `exclude_from_weight_decay` is not read.
`update_step` runs once per variable on the gradient already summed over
replicas, so the norms are the global batch's under MirroredStrategy.
"""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="matl_keras")
class LARS(keras.optimizers.Optimizer):
    """SGD with momentum and a per-layer trust ratio (SimCLR's LARS).

    Args:
        learning_rate: float or schedule. The global rate (before the trust
            ratio).
        momentum: float. In [0, 1).
        l2: float. L2 weight decay added to the gradient of the adapted
            variables (SimCLR: 1e-6).
        trust_coefficient: float. `eta` (SimCLR: 0.001).
        **kwargs: `keras.optimizers.Optimizer`'s (not `weight_decay`).
    """

    def __init__(
        self,
        learning_rate=0.1,
        momentum=0.9,
        l2=1e-6,
        trust_coefficient=1e-3,
        name="lars",
        **kwargs,
    ):
        if kwargs.get("weight_decay") is not None:
            raise ValueError(
                "LARS takes its weight decay as `l2` (added to the "
                "gradient, as SimCLR's). Received: "
                f"weight_decay={kwargs['weight_decay']}"
            )
        kwargs.pop("weight_decay", None)
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(
                f"`momentum` must be in [0, 1). Received: momentum={momentum}"
            )
        if l2 < 0:
            raise ValueError(f"`l2` must be >= 0. Received: l2={l2}")
        if not trust_coefficient > 0:
            raise ValueError(
                "`trust_coefficient` must be positive. Received: "
                f"trust_coefficient={trust_coefficient}"
            )
        self.momentum = momentum
        self.l2 = l2
        self.trust_coefficient = trust_coefficient

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = self.add_optimizer_variables(variables, "momentum")

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        lr = tf.cast(learning_rate, variable.dtype)
        gradient = tf.cast(gradient, variable.dtype)
        if len(variable.shape) >= 2:  # kernels (static)
            weights = tf.convert_to_tensor(variable)
            if self.l2:
                gradient = gradient + tf.cast(self.l2, variable.dtype) * weights
            w_norm = tf.norm(weights)
            g_norm = tf.norm(gradient)
            eta = tf.cast(self.trust_coefficient, variable.dtype)
            trust = tf.where(
                tf.logical_and(w_norm > 0, g_norm > 0),
                eta * tf.math.divide_no_nan(w_norm, g_norm),
                tf.ones_like(w_norm),
            )
            lr = lr * trust
        velocity = self.momentums[index]
        self.assign(
            velocity,
            velocity * tf.cast(self.momentum, variable.dtype) + lr * gradient,
        )
        self.assign_sub(variable, velocity)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "momentum": self.momentum,
                "l2": self.l2,
                "trust_coefficient": self.trust_coefficient,
            }
        )
        return config
