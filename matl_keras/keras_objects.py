"""Every Keras object matl-keras defines, registered with Keras.

Each class carries `@keras.saving.register_keras_serializable(package=
"matl_keras")`, so importing its module is what registers it. The package's
`__init__` imports this module: after `import matl_keras`,
`keras.saving.load_model("model.keras", safe_mode=True)` finds
`matl_keras>InputNormalization` and the others (keras-hub's convention).
The training's learning-rate schedule (`training.warmup.LinearWarmup`) and
optimizers (`training.sgd.SGD`, `training.lars.LARS`), in a saved model's
optimizer, are
registered by the package's `__init__` beside this module: a model-level
module does not import training.
"""

from matl_keras.layers.fused_batch_norm import FusedBatchNormalization
from matl_keras.layers.input_normalization import InputNormalization
from matl_keras.layers.non_local_block import NonLocalBlock
from matl_keras.models.resnet.resnet_backbone import ResNetBackbone

__all__ = [
    "FusedBatchNormalization",
    "InputNormalization",
    "NonLocalBlock",
    "ResNetBackbone",
]
