"""The SSL monitors of the SSTL-M stage: kNN and the linear probe on
frozen pooled features."""

import keras
import numpy as np
import tensorflow as tf

from matl_keras.training.monitors import KnnMonitor


def _split(rng, n, informative):
    labels = rng.integers(0, 2, n)
    images = rng.normal(0, 1, (n, 4, 4, 3)).astype(np.float32)
    if informative:
        images[:, :, :, 0] += 3.0 * labels[:, None, None]  # channel 0 tells
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)


def _monitor(informative):
    rng = np.random.default_rng(0)
    identity = keras.Sequential(
        [keras.Input((4, 4, 3)), keras.layers.Identity()]
    )
    return KnnMonitor(
        identity,
        _split(rng, 200, informative),
        _split(rng, 100, informative),
        num_classes=2,
        k=5,
    )


def test_linear_probe_scores_what_the_features_carry():
    good = _monitor(informative=True).linear_probe(positive_index=1, seed=0)
    assert good["accuracy"] > 0.95 and good["auc"] > 0.98
    # Features that carry nothing about the label: chance.
    bad = _monitor(informative=False).linear_probe(positive_index=1, seed=0)
    assert 0.3 < bad["accuracy"] < 0.7 and 0.3 < bad["auc"] < 0.7
    assert good["penalty"] > 0
