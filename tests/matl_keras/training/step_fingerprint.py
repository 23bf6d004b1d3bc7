"""Prints a hash of the weights after two region-aware SSTL-M steps at the
main job's scale (R-18 x0.5, 96 px, batch 32, shuffle-BN), from the seed-0
initialisation and the first batch of the embedded data's pipeline.

Run as a script by `test_repeatable_across_processes` (not a test module):
the defect it catches showed only between processes, never within one.
"""

import hashlib
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from matl_keras import registry  # noqa: E402
from matl_keras.data import pipeline  # noqa: E402
from matl_keras.models.resnet.resnet_backbone import ResNetBackbone  # noqa: E402
from matl_keras.training import determinism  # noqa: E402
from matl_keras.training import optimizers  # noqa: E402
from matl_keras.training.ssl_method import RunSchedule  # noqa: E402

SIZE, BATCH, GROUPS = 96, 32, 4


def main():
    determinism.configure("auto")
    keras.utils.set_random_seed(0)
    dataset = registry.default_registry().create(
        "datasets",
        "synthetic_ct",
        image_size=128,
        num_train=BATCH,
        num_val=8,
        num_test=8,
        seed=0,
    )

    def backbone(name):
        return ResNetBackbone(
            depth=18,
            width_multiplier=0.5,
            image_size=SIZE,
            batchnorm_groups=GROUPS,
            name=name,
        )

    method = registry.default_registry().load("ssl_methods", "region_aware")
    model = method(
        backbone=backbone("resnet"),
        key_backbone=backbone("key_resnet"),
        image_size=SIZE,
        queue_size=BATCH,
        augment="moco_v2",
    )
    split = pipeline.build_split(
        dataset,
        "train",
        training=True,
        augment=model.views,
        prepare=model.prepare,
        targets="indices",
        start_epoch=0,
        epochs=1,
        image_size=SIZE,
        batch_size=BATCH,
        crop_fraction=0.875,
        on_bad_image="refuse",
        cache="memory",
        seed=0,
    )
    batch = next(iter(split.data))
    model.configure(
        RunSchedule(
            num_examples=BATCH,
            steps_per_epoch=2,
            epochs=1,
            global_batch_size=BATCH,
            seed=0,
        )
    )
    model.build()
    model.compile(
        optimizer=optimizers.sgd(
            batch_size=BATCH, epochs=1, steps_per_epoch=2, learning_rate=0.03
        )
    )
    step = tf.function(model.train_step)
    for _ in range(2):
        step(batch)
    digest = hashlib.sha1()
    for weight in model.weights:
        digest.update(np.asarray(weight).tobytes())
    print(digest.hexdigest())


if __name__ == "__main__":
    main()
