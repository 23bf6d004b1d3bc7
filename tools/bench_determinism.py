"""What bitwise repeatability costs: training-step img/s with TensorFlow's
op determinism on and off (issue 19).

    python tools/bench_determinism.py [--depth=18 --width=0.5 \
        --image_size=96 --batch_size=32 --rounds=3 --steps=5]

For the supervised step (ResNet + classifier head) and the MoCo step (with
shuffle-BN and a 4096-key queue), alternates rounds with op determinism on
and off in one process (so that load on this shared machine hits both
alike), each round a fresh `tf.function` traced under its setting, and
prints the median img/s of each and their ratio. The input pipeline needs
no switch: its randomness is stateless per example (`data/pipeline.py`),
so it is repeatable at any setting; its throughput is `tools/benchmark.py`'s.
"""

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# oneDNN kernels, as the CLI runs them (`tf_startup.prefer_onednn`).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from matl_keras.models.resnet.resnet_backbone import ResNetBackbone  # noqa: E402
from matl_keras.models.resnet.resnet_image_classifier import (  # noqa: E402
    build_image_classifier,
)
from matl_keras.training import determinism  # noqa: E402
from matl_keras.training import self_supervised  # noqa: E402
from matl_keras.training.ssl_method import RunSchedule  # noqa: E402

flags.DEFINE_integer("depth", 18, "ResNet depth.")
flags.DEFINE_float("width", 0.5, "ResNet width multiplier.")
flags.DEFINE_integer("image_size", 96, "Input side.")
flags.DEFINE_integer("batch_size", 32, "Batch size.")
flags.DEFINE_integer("rounds", 3, "Rounds per setting (alternated).")
flags.DEFINE_integer("steps", 5, "Timed steps per round.")
FLAGS = flags.FLAGS


def _images(rng, *shape):
    size = FLAGS.image_size
    return tf.constant(
        rng.uniform(0, 1, (FLAGS.batch_size, *shape, size, size, 3)), tf.float32
    )


def _supervised():
    keras.utils.set_random_seed(0)
    backbone = ResNetBackbone(FLAGS.depth, FLAGS.width, FLAGS.image_size)
    model = build_image_classifier(backbone, 2)
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        loss="sparse_categorical_crossentropy",
        jit_compile=False,
    )
    rng = np.random.default_rng(0)
    return model, (_images(rng), tf.zeros([FLAGS.batch_size], tf.int32))


def _moco():
    keras.utils.set_random_seed(0)
    batch = FLAGS.batch_size
    model = self_supervised.build_method(
        "moco",
        lambda **kw: ResNetBackbone(FLAGS.depth, FLAGS.width, **kw),
        FLAGS.image_size,
        batchnorm_groups=self_supervised.resolve_batchnorm_groups(
            "auto", batch, 1
        ),
    )
    model.configure(
        RunSchedule(
            num_examples=4096 + batch,
            steps_per_epoch=100,
            epochs=1,
            global_batch_size=batch,
            seed=0,
        )
    )
    model.build()
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9), jit_compile=False
    )
    rng = np.random.default_rng(0)
    views = {"query": _images(rng), "key": _images(rng)}
    return model, (views, tf.range(batch, dtype=tf.int32))


def _round(model, batch, deterministic):
    determinism.configure(deterministic)
    step = tf.function(model.train_step)
    for _ in range(2):  # trace and warm up under this setting
        step(batch)
    start = time.perf_counter()
    for _ in range(FLAGS.steps):
        logs = step(batch)
    float(logs["loss"])
    return FLAGS.steps * FLAGS.batch_size / (time.perf_counter() - start)


def main(argv):
    del argv
    rows = []
    for name, make in (("supervised", _supervised), ("moco", _moco)):
        model, batch = make()
        rates = {True: [], False: []}
        for _ in range(FLAGS.rounds):
            for setting in (True, False):
                rates[setting].append(_round(model, batch, setting))
        on = statistics.median(rates[True])
        off = statistics.median(rates[False])
        rows.append((name, on, off))
        print(
            f"{name}: deterministic {on:.2f} img/s, not {off:.2f}", flush=True
        )
    print(
        f"\nResNet-{FLAGS.depth} x{FLAGS.width}, {FLAGS.image_size} px, batch "
        f"{FLAGS.batch_size}, {os.cpu_count()} CPU cores, median of "
        f"{FLAGS.rounds} rounds of {FLAGS.steps} steps"
    )
    print("| step | op determinism on (img/s) | off (img/s) | on / off |")
    print("|---|---|---|---|")
    for name, on, off in rows:
        print(f"| {name} | {on:.2f} | {off:.2f} | {on / off:.3f} |")


if __name__ == "__main__":
    app.run(main)
