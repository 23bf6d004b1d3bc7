"""Input pipeline vs training step throughput, on this machine.

    python tools/bench_input_pipeline.py [--dataset=synthetic_ct]
        [--image_size=96] [--batch_size=32] [--depth=18] [--width=0.5]
        [--root=DIR]  # image_folder root, for real files

Prints images/s of: generating or listing the data, the first pass of the
tf.data pipeline (decode + resize + cache fill), later passes (from cache,
with augmentation), and training steps of the model alone on one cached
batch. The pipeline keeps up when its cached img/s is well above the
training img/s.
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# oneDNN kernels, as the CLI runs them (`tf_startup.prefer_onednn`).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from matl_keras import registry as registry_lib  # noqa: E402
from matl_keras.data import pipeline  # noqa: E402
from matl_keras.models.resnet.resnet_backbone import ResNetBackbone  # noqa
from matl_keras.models.resnet.resnet_image_classifier import (  # noqa: E402
    build_image_classifier,
)

flags.DEFINE_string("dataset", "synthetic_ct", "Dataset plugin name.")
flags.DEFINE_string("root", None, "Root folder (for image_folder).")
flags.DEFINE_integer("image_size", 96, "Model input side.")
flags.DEFINE_integer("batch_size", 32, "Batch size.")
flags.DEFINE_integer("depth", 18, "ResNet depth.")
flags.DEFINE_float("width", 0.5, "ResNet width multiplier.")
flags.DEFINE_integer("steps", 10, "Timed training steps.")
FLAGS = flags.FLAGS


def _epoch_rate(data):
    start, n = time.perf_counter(), 0
    for images, _ in data:
        n += int(images.shape[0])
    return n / (time.perf_counter() - start)


def main(argv):
    del argv
    kwargs = {"root": FLAGS.root} if FLAGS.root else {}
    start = time.perf_counter()
    dataset = registry_lib.default_registry().create(
        "datasets", FLAGS.dataset, **kwargs
    )
    n = len(dataset.examples("train"))
    print(
        f"{FLAGS.dataset}: {n} train images listed/generated in "
        f"{time.perf_counter() - start:.2f}s"
    )
    split = pipeline.build_split(
        dataset,
        "train",
        image_size=FLAGS.image_size,
        batch_size=FLAGS.batch_size,
        training=True,
    )
    first = _epoch_rate(split.data)
    cached = np.median([_epoch_rate(split.data) for _ in range(3)])
    print(f"pipeline, first pass (decode/resize/cache): {first:9.1f} img/s")
    print(f"pipeline, cached + augment:                 {cached:9.1f} img/s")

    model = build_image_classifier(
        ResNetBackbone(FLAGS.depth, FLAGS.width, FLAGS.image_size),
        dataset.num_classes,
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        loss="sparse_categorical_crossentropy",
    )
    images, labels = next(iter(split.data))
    batch = tf.data.Dataset.from_tensors((images, labels)).repeat(FLAGS.steps)
    model.fit(batch.take(2), verbose=0)  # trace and warm up
    start = time.perf_counter()
    model.fit(batch, verbose=0)
    train = FLAGS.steps * FLAGS.batch_size / (time.perf_counter() - start)
    print(
        f"training step alone (R-{FLAGS.depth} x{FLAGS.width}, "
        f"{FLAGS.image_size}px): {train:9.1f} img/s"
    )
    print(f"pipeline headroom: {cached / train:.1f}x")


if __name__ == "__main__":
    app.run(main)
