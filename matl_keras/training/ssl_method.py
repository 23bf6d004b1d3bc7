"""The SSL method plugin contract (entry-point group `matl_keras.ssl_methods`).

An SSL method is a `keras.Model` that is given a backbone and owns its heads,
augmentations and `train_step` (keras-io `ContrastiveModel`). After
pretraining, the stage pipeline keeps `method.backbone` and drops the rest.
"""

from __future__ import annotations

from typing import Any
from typing import ClassVar

import keras

from matl_keras import PLUGIN_API_VERSION


class SSLMethod(keras.Model):
    """Base class of self-supervised methods.

    Args:
        backbone: keras.Model. The feature extractor being pretrained.

    Subclasses implement `train_step(data)` (data: a batch of float images
    in [0, 1]) and list their loss trackers in `metrics`.
    """

    api_version: ClassVar[int] = PLUGIN_API_VERSION

    def __init__(self, backbone: keras.Model, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backbone = backbone
