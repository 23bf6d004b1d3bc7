"""Training img/s of the SSL methods, and their view pipelines.

    python tools/bench_ssl.py [--methods=moco,simclr,region_aware,simsiam]
        [--depth=50] [--width=1.0] [--image_size=128] [--batch_size=32]
        [--steps=3]

For each method: images/s of its training step alone (on one fixed batch
of views, after two warm-up steps), images/s of its `views` function in
tf.data (augmentation, and for region_aware the Generator), and the
training cost its forward/backward passes predict relative to MoCo
(forward = 1, backward = 2 per image pass: MoCo 3 + 1 key forward = 4;
SimCLR and SimSiam 2 x 3 = 6; region_aware 4 + 5 crops x 3 = 19).
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from matl_keras.data import pipeline  # noqa: E402
from matl_keras.models.resnet.resnet_backbone import ResNetBackbone  # noqa: E402
from matl_keras.training import self_supervised  # noqa: E402
from matl_keras.training.ssl_method import RunSchedule  # noqa: E402

flags.DEFINE_list("methods", ["moco", "simclr", "region_aware"], "SSL methods.")
flags.DEFINE_integer("depth", 50, "ResNet depth.")
flags.DEFINE_float("width", 1.0, "ResNet width multiplier.")
flags.DEFINE_integer("image_size", 128, "View side.")
flags.DEFINE_integer("batch_size", 32, "Batch size.")
flags.DEFINE_integer("steps", 3, "Timed steps.")
FLAGS = flags.FLAGS
PREDICTED_COST = {"moco": 4, "simclr": 6, "region_aware": 19, "simsiam": 6}


def main(argv):
    del argv
    size = FLAGS.image_size
    load = pipeline.load_size(size, 0.875)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (FLAGS.batch_size, load, load, 3)).astype(np.float32)
    # A phantom-like slice so the Generator finds a lung.
    images[:, load // 4: 3 * load // 4, load // 8: 7 * load // 8] *= 0.2
    rows = []
    for name in FLAGS.methods:
        keras.backend.clear_session()
        groups = self_supervised.resolve_batchnorm_groups(
            "auto", FLAGS.batch_size, 1
        )
        model = self_supervised.build_method(
            name,
            lambda **kw: ResNetBackbone(depth=FLAGS.depth, width_multiplier=FLAGS.width, **kw),
            size,
            sync_batchnorm=False,
            batchnorm_groups=groups,
        )
        # A queue of 4096 keys (the data size only sizes the queue here).
        model.configure(RunSchedule(
            num_examples=4096 + FLAGS.batch_size, steps_per_epoch=100,
            epochs=1, global_batch_size=FLAGS.batch_size, seed=0))
        model.build()
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), jit_compile=False)

        def example(index, image, model=model):
            if model.prepare is not None:
                image = {"image": image, **model.prepare(image)}
            seed = tf.stack([index, tf.constant(0, tf.int64)])
            return model.views(image, seed), tf.cast(index, tf.int32)

        data = tf.data.Dataset.from_tensor_slices(images).enumerate().map(example)
        batches = iter(data.repeat().batch(FLAGS.batch_size))
        batch = next(batches)  # the first one includes tracing
        start = time.perf_counter()
        next(batches)
        views_rate = FLAGS.batch_size / (time.perf_counter() - start)
        step = tf.function(model.train_step)
        for _ in range(2):
            step(batch)
        start = time.perf_counter()
        for _ in range(FLAGS.steps):
            logs = step(batch)
        float(logs["loss"])
        rate = FLAGS.steps * FLAGS.batch_size / (time.perf_counter() - start)
        rows.append((name, rate, views_rate))
        print(f"{name}: {rate:.2f} img/s training, views {views_rate:.0f} img/s", flush=True)
    base = dict((n, r) for n, r, _ in rows).get("moco")
    print(f"\nResNet-{FLAGS.depth} x{FLAGS.width}, {size} px, batch {FLAGS.batch_size}, "
          f"{os.cpu_count()} CPU cores")
    print("| method | train img/s | views img/s (tf.data, sequential map) | time vs MoCo | predicted |")
    print("|---|---|---|---|---|")
    for name, rate, views_rate in rows:
        measured = f"{base / rate:.2f}" if base else "-"
        predicted = PREDICTED_COST.get(name, 0) / PREDICTED_COST["moco"]
        print(f"| {name} | {rate:.2f} | {views_rate:.0f} | {measured} | {predicted:.2f} |")


if __name__ == "__main__":
    app.run(main)
