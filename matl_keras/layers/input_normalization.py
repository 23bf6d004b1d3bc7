"""`InputNormalization`: [0, 1] RGB in, what the backbone's weights expect out.

It sits inside every backbone so that a saved or exported model carries its
own normalization and cannot be fed differently in training and serving.
"""

import keras
from keras import ops

MODES = ("caffe", "imagenet", "unit")
# keras.applications.resnet.preprocess_input ("caffe"): BGR, 0-255, minus the
# ImageNet mean per channel, no scaling.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package="matl_keras")
class InputNormalization(keras.layers.Layer):
    """Normalizes float RGB images in [0, 1].

    Args:
        mode: str. `"caffe"` (the convention of keras.applications ResNet
            weights: BGR, 0-255, mean subtracted), `"imagenet"` (RGB, mean
            0.485/0.456/0.406, std 0.229/0.224/0.225) or `"unit"` ([-1, 1]).

    Example:
    ```python
    layer = InputNormalization("caffe")
    y = layer(np.ones((1, 8, 8, 3), "float32"))
    ```
    """

    def __init__(self, mode="caffe", **kwargs):
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(
                f"`mode` must be one of {MODES}. Received: mode={mode!r}"
            )
        self.mode = mode

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self.mode == "caffe":
            x = ops.flip(x, axis=-1) * 255.0
            return x - ops.convert_to_tensor(_CAFFE_MEAN_BGR, x.dtype)
        if self.mode == "imagenet":
            mean = ops.convert_to_tensor(_IMAGENET_MEAN, x.dtype)
            std = ops.convert_to_tensor(_IMAGENET_STD, x.dtype)
            return (x - mean) / std
        return x * 2.0 - 1.0

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"mode": self.mode})
        return config
