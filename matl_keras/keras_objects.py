"""Every Keras object matl-keras defines, registered with Keras.

Each class carries `@keras.saving.register_keras_serializable(package=
"matl_keras")`, so importing its module is what registers it. The package's
`__init__` imports this module: after `import matl_keras`,
`keras.saving.load_model("model.keras", safe_mode=True)` finds
`matl_keras>InputNormalization` and the others (keras-hub's convention).
"""

from matl_keras.layers.fused_batch_norm import FusedBatchNormalization
from matl_keras.layers.input_normalization import InputNormalization
from matl_keras.layers.non_local_block import NonLocalBlock
from matl_keras.models.resnet.resnet_backbone import ResNetBackbone
from matl_keras.training.warmup import LinearWarmup

__all__ = [
    "FusedBatchNormalization",
    "InputNormalization",
    "LinearWarmup",
    "NonLocalBlock",
    "ResNetBackbone",
]
