"""Image classifier: a backbone, global average pooling, dropout, softmax.

The classifier is built on the backbone's own input and output tensors, so it
is one flat functional model (no model nested inside a model): Grad-CAM tools
such as tf-keras-vis need that, and the backbone's layers keep their names.
"""

import keras
from keras import layers


def build_image_classifier(backbone, num_classes, dropout=0.5, name=None):
    """Adds a classification head to `backbone`.

    Args:
        backbone: keras.Model. A functional backbone (e.g. `ResNetBackbone`).
        num_classes: int. Number of classes (at least 2).
        dropout: float. Dropout rate before the dense layer.
        name: str or None. Model name (default: backbone name + "_classifier").

    Returns:
        A functional `keras.Model` from images to class probabilities
        (float32 even under mixed precision).
    """
    if num_classes < 2:
        raise ValueError(
            f"`num_classes` must be at least 2. Received: num_classes={num_classes}"
        )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(
            f"`dropout` must be in [0, 1). Received: dropout={dropout}"
        )
    x = layers.GlobalAveragePooling2D(name="avg_pool")(backbone.output)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    outputs = layers.Dense(
        num_classes, activation="softmax", dtype="float32", name="predictions"
    )(x)
    return keras.Model(
        backbone.input, outputs, name=name or f"{backbone.name}_classifier"
    )
