"""Image classifier: a backbone, global average pooling, (optionally) feature
normalisation, dropout, softmax.

The classifier is built on the backbone's own input and output tensors, so it
is one flat functional model (no model nested inside a model): Grad-CAM tools
such as tf-keras-vis need that, and the backbone's layers keep their names.
"""

import keras
from keras import layers


def build_image_classifier(
    backbone, num_classes, dropout=0.5, head_norm=False, name=None
):
    """Adds a classification head to `backbone`.

    Args:
        backbone: keras.Model. A functional backbone (e.g. `ResNetBackbone`).
        num_classes: int. Number of classes (at least 2).
        dropout: float. Dropout rate before the dense layer.
        head_norm: bool. BatchNormalization of the pooled features before
            the dropout (layer `head_norm`). Self-supervised backbones end
            in features of arbitrary scale: their SSL loss is computed
            after a projection head with BatchNorm and an L2
            normalisation, so weight decay shrinks the backbone's last
            scales freely (a region-aware backbone measured a feature std
            of 0.05 against 1.5 at init) and a new dense layer on them
            barely learns at a fine-tuning learning rate. MoCo (He et al.
            2020, section 4.2) fine-tunes with normalised features for the
            same reason; MAE's linear probe puts a BatchNorm before the
            classifier.
        name: str or None. Model name (default: backbone name + "_classifier").

    Returns:
        A functional `keras.Model` from images to class probabilities
        (float32 even under mixed precision).
    """
    if num_classes < 2:
        raise ValueError(
            "`num_classes` must be at least 2. "
            f"Received: num_classes={num_classes}"
        )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(
            f"`dropout` must be in [0, 1). Received: dropout={dropout}"
        )
    x = layers.GlobalAveragePooling2D(name="avg_pool")(backbone.output)
    if head_norm:
        # Momentum 0.9: a few-labels fine-tuning has a few steps per epoch
        # and is scored in inference mode from its first epoch.
        # epsilon 1e-5 (PyTorch's, MoCo's): Keras' 1e-3 is larger than the
        # variance of such features and would leave them unnormalised.
        x = layers.BatchNormalization(
            momentum=0.9, epsilon=1e-5, name="head_norm"
        )(x)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    outputs = layers.Dense(
        num_classes, activation="softmax", dtype="float32", name="predictions"
    )(x)
    return keras.Model(
        backbone.input, outputs, name=name or f"{backbone.name}_classifier"
    )
