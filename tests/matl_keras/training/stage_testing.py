"""Shared helpers of the supervised-stage tests: a learnable tiny dataset,
a counting evaluator, a tiny backbone and `run_train` (not a test module)."""

import h5py
import numpy as np
from matl_keras_plugins.datasets.synthetic_ct import SyntheticCT

from matl_keras.data.dataset import ArrayExamples
from matl_keras.data.dataset import Dataset
from matl_keras.evaluation.evaluator import Evaluator
from matl_keras.models.resnet.resnet_backbone import ResNetBackbone
from matl_keras.training import optimizers
from matl_keras.training import supervised


class Bright(Dataset):
    """Label 1 images are brighter: learnable in a few steps."""

    class_names = ("dark", "bright")
    positive_class = "bright"

    def __init__(self, n=16):
        rng = np.random.default_rng(0)
        labels = np.arange(n) % 2
        images = rng.integers(0, 100, (n, 40, 40, 1)).astype(np.uint8)
        images[labels == 1] += 120
        self.data = ArrayExamples(images, labels)

    def splits(self):
        return ("train", "val")

    def examples(self, split):
        return self.data


class Count(Evaluator):
    def run(self, context):
        labels, probs = context.predictions()
        yield "count", int(len(labels))


def tiny_backbone(image_size):
    return ResNetBackbone(
        depth=10, width_multiplier=0.25, image_size=image_size
    )


def run_train(workdir, **kwargs):
    args = dict(
        dataset=Bright(),
        backbone=tiny_backbone,
        image_size=32,
        batch_size=8,
        epochs=2,
        evaluators=[Count()],
        optimizer=lambda **kw: optimizers.sgd(learning_rate=0.5, **kw),
    )
    args.update(kwargs)
    return supervised.train(str(workdir), **args)


def reproducible_train(workdir, **kwargs):
    """`supervised.train` of a tiny model with every kind of random draw
    (the reproducibility and extension tests)."""
    args = {
        "dataset": SyntheticCT(
            image_size=40, num_train=24, num_val=8, num_test=8, seed=0
        ),
        "backbone": lambda image_size: ResNetBackbone(
            depth=10, width_multiplier=0.25, image_size=image_size
        ),
        "image_size": 32,
        "batch_size": 8,
        "epochs": 2,
        "augment": "stl_m",  # every kind of draw: crop, affine, flip, shift
        "dropout": 0.5,
        "keep": "last",
        "transfer_evaluators": (),
        "seed": 3,
        "optimizer": lambda **kw: optimizers.sgd(learning_rate=0.1, **kw),
    }
    args.update(kwargs)
    return supervised.train(str(workdir), **args)


def weights_of(path):
    """Every array of a Keras weights file, by its path in the file."""
    arrays = {}
    with h5py.File(path) as f:
        f.visititems(
            lambda name, item: (
                arrays.__setitem__(name, item[()])
                if isinstance(item, h5py.Dataset)
                else None
            )
        )
    return arrays
