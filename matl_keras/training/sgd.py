"""Keras SGD whose decoupled weight decay reads the learning rate once a
step, and which can add PyTorch's coupled L2 term instead.

Keras 3.15's TensorFlow optimizer applies weight decay variable by variable
and evaluates `self.learning_rate` (the whole schedule: the step decay of
`optimizers.sgd`, the warm-up) inside that loop, once per variable. Tracing
a training step then builds the schedule's ops 60-120 times: in a tiny
ResNet-18 fine-tuning job that was 74 of the 234 profile samples spent
tracing the training step (py-spy), about a third of it. This class
computes the rate once and hands the same tensor to every variable's
update: the same arithmetic (`w -= w * wd * lr`, in that order), the same
weights bit for bit; only the graph is smaller. On a whole tiny CLI job
that is 1-5% of its CPU time (measured back to back), on each of the
hundreds of stage runs the tests make.

`l2` is the weight decay of `torch.optim.SGD`, which the reference
implementation (facebookresearch/moco) uses: `wd * w` is
added to the gradient before the momentum buffer, so with momentum 0.9 it
shrinks the weights about 10x as much as Keras' decoupled
`weight_decay` of the same coefficient. Keras has no such option; it is
added in `update_step`, which runs once per variable on the gradient
already summed over replicas, so the term is counted once under
MirroredStrategy.
"""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="matl_keras")
class SGD(keras.optimizers.SGD):
    """`keras.optimizers.SGD`, its weight decay traced once per step.

    Takes the arguments of `keras.optimizers.SGD`, and:

    Args:
        l2: float or None. PyTorch's SGD weight decay: `l2 * w` added to
            the gradient before momentum (on the variables Keras' weight
            decay would apply to). Not to be combined with `weight_decay`.
    """

    def __init__(self, *args, l2=None, **kwargs):
        super().__init__(*args, **kwargs)
        if l2 is not None and not l2 > 0:
            raise ValueError(
                f"`l2` must be a positive float or None. Received: l2={l2}"
            )
        if l2 is not None and self.weight_decay is not None:
            raise ValueError(
                "`l2` and `weight_decay` exclude each other (coupled or "
                f"decoupled decay). Received: l2={l2}, "
                f"weight_decay={self.weight_decay}"
            )
        self.l2 = l2

    def update_step(self, gradient, variable, learning_rate):
        if self.l2 is not None and self._use_weight_decay(variable):
            gradient = tf.cast(gradient, variable.dtype) + tf.cast(
                self.l2, variable.dtype
            ) * tf.convert_to_tensor(variable)
        return super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        config = super().get_config()
        config["l2"] = self.l2
        return config

    def _apply_weight_decay(self, variables):
        if self.weight_decay is None:
            return
        # In the replica context, as Keras' own update step computes the
        # rate it passes to `_distributed_tf_update_step`.
        learning_rate = self.learning_rate

        def decay(variable, learning_rate):
            if self._use_weight_decay(variable):
                lr = tf.cast(learning_rate, variable.dtype)
                wd = tf.cast(self.weight_decay, variable.dtype)
                variable.assign_sub(variable * wd * lr)

        def distributed_decay(distribution, variables, learning_rate):
            for variable in variables:
                if isinstance(variable, keras.Variable):
                    variable = variable.value  # the tf.Variable
                distribution.extended.update(
                    variable, decay, args=(learning_rate,), group=False
                )

        tf.__internal__.distribute.interim.maybe_merge_call(
            distributed_decay,
            self._distribution_strategy,
            variables,
            learning_rate,
        )
