"""Training img/s of the SSL methods, and their view pipelines.

    python tools/bench_ssl.py [--methods=moco,simclr,region_aware,simsiam]
        [--depth=50] [--width=1.0] [--image_size=128] [--batch_size=32]
        [--steps=3] [--rounds=1] [--region_sizes=0,64]

For each method: images/s of its training step alone (on one fixed batch
of views, after two warm-up steps), images/s of its `views` function in
tf.data (augmentation, and for region_aware the Generator), and the
training cost its forward/backward passes predict relative to MoCo
(forward = 1, backward = 2 per image pass: MoCo 3 + 1 key forward = 4;
SimCLR and SimSiam 2 x 3 = 6; region_aware 4 + 5 crops x 3 = 19).

`--region_sizes` runs region_aware once per crop side (`region_size`; 0:
the image size, the paper's), as rows `region_aware@SIZE`. With
`--rounds=N` every method is timed N times, the methods taking turns, and
the median rate is reported: on a shared machine, compare the ratios of
one run, not absolute figures.
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
from matl_keras.models.resnet.resnet_backbone import ResNetBackbone  # noqa: E402
from matl_keras.training import self_supervised  # noqa: E402
from matl_keras.training.ssl_method import RunSchedule  # noqa: E402

FLAGS = flags.FLAGS
PREDICTED_COST = {"moco": 4, "simclr": 6, "region_aware": 19, "simsiam": 6}


def define_flags() -> None:
    """The command's flags (defined when run, not on import:
    `tools/bench_vs_pytorch.py` and `tools/profile_step.py` import
    `prepare_method`)."""
    flags.DEFINE_list(
        "methods", ["moco", "simclr", "region_aware"], "SSL methods."
    )
    flags.DEFINE_integer("depth", 50, "ResNet depth.")
    flags.DEFINE_float("width", 1.0, "ResNet width multiplier.")
    flags.DEFINE_integer("image_size", 128, "View side.")
    flags.DEFINE_integer("batch_size", 32, "Batch size.")
    flags.DEFINE_integer("steps", 3, "Timed steps.")
    flags.DEFINE_integer(
        "rounds", 1, "Timing rounds, the methods taking turns."
    )
    flags.DEFINE_list(
        "region_sizes", ["0"], "region_aware crop sides (0: image size)."
    )


def predicted_cost(name: str) -> float:
    """Forward-equivalents per image (forward 1, backward 2)."""
    method, _, size = name.partition("@")
    if method == "region_aware" and size:
        # MoCo's 4, plus 5 crops x 3 at (crop side / image side)^2.
        return 4 + 15 * (int(size) / FLAGS.image_size) ** 2
    return PREDICTED_COST.get(method, 0)


def _factory(name: str, **kwargs):
    """The registered method `name` with `kwargs` bound, keeping its class
    flags (which `build_method` reads)."""
    registry = registry_lib.default_registry()
    cls = registry.load("ssl_methods", name)

    def factory(**args):
        return cls(**args, **kwargs)

    factory.needs_key_encoder = cls.needs_key_encoder
    factory.shuffle_batchnorm = cls.shuffle_batchnorm
    return factory


def _runs() -> list:
    """(row name, method factory) per timed configuration."""
    runs = []
    for name in FLAGS.methods:
        if name != "region_aware":
            runs.append((name, _factory(name)))
            continue
        for size in FLAGS.region_sizes:
            side = int(size) or FLAGS.image_size
            runs.append(
                (f"region_aware@{side}", _factory(name, region_size=side))
            )
    return runs


def bench_images(batch_size: int, image_size: int) -> np.ndarray:
    """The fixed random batch of loaded images (`load_size` side) the
    views are made from: a phantom-like slice so the Generator finds a
    lung."""
    load = pipeline.load_size(image_size, 0.875)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (batch_size, load, load, 3)).astype(np.float32)
    images[:, load // 4 : 3 * load // 4, load // 8 : 7 * load // 8] *= 0.2
    return images


def prepare_method(
    factory,
    images: np.ndarray,
    *,
    depth: int,
    width: float,
    image_size: int,
    batch_size: int,
    optimizer=None,
    batchnorm_groups="auto",
    warmup: int = 2,
    before_trace=None,
):
    """Builds the method of `factory` on a ResNet backbone as the training
    command does (BatchNorm groups, a queue of 4096 keys) and returns
    `(step, batch, views_rate)`: its `tf.function` training step after
    `warmup` calls, one batch of views of `images`, and the views'
    img/s in tf.data. `before_trace(model)`, if given, runs before the
    step is first traced (`tools/profile_step.py` names its parts)."""
    groups = self_supervised.resolve_batchnorm_groups(
        batchnorm_groups, batch_size, 1
    )
    model = self_supervised.build_method(
        factory,
        lambda **kw: ResNetBackbone(depth=depth, width_multiplier=width, **kw),
        image_size,
        sync_batchnorm=False,
        batchnorm_groups=groups,
    )
    # A queue of 4096 keys (the data size only sizes the queue here).
    model.configure(
        RunSchedule(
            num_examples=4096 + batch_size,
            steps_per_epoch=100,
            epochs=1,
            global_batch_size=batch_size,
            seed=0,
        )
    )
    model.build()
    model.compile(
        optimizer=optimizer or keras.optimizers.SGD(0.01, momentum=0.9),
        jit_compile=False,
    )

    def example(index, image):
        if model.prepare is not None:
            image = {"image": image, **model.prepare(image)}
        seed = tf.stack([index, tf.constant(0, tf.int64)])
        return model.views(image, seed), tf.cast(index, tf.int32)

    data = tf.data.Dataset.from_tensor_slices(images).enumerate().map(example)
    batches = iter(data.repeat().batch(batch_size))
    batch = next(batches)  # the first one includes tracing
    start = time.perf_counter()
    next(batches)
    views_rate = batch_size / (time.perf_counter() - start)
    if before_trace is not None:
        before_trace(model)
    step = tf.function(model.train_step)
    for _ in range(warmup):
        step(batch)
    return step, batch, views_rate


def main(argv):
    del argv
    size = FLAGS.image_size
    images = bench_images(FLAGS.batch_size, size)
    prepared = []
    for name, factory in _runs():
        step, batch, views_rate = prepare_method(
            factory,
            images,
            depth=FLAGS.depth,
            width=FLAGS.width,
            image_size=size,
            batch_size=FLAGS.batch_size,
        )
        prepared.append((name, step, batch, views_rate))
    rates = {name: [] for name, *_ in prepared}
    for round_ in range(FLAGS.rounds):
        for name, step, batch, views_rate in prepared:
            start = time.perf_counter()
            for _ in range(FLAGS.steps):
                logs = step(batch)
            float(logs["loss"])
            rate = (
                FLAGS.steps * FLAGS.batch_size / (time.perf_counter() - start)
            )
            rates[name].append(rate)
            print(
                f"round {round_ + 1} {name}: {rate:.2f} img/s training, "
                f"views {views_rate:.0f} img/s",
                flush=True,
            )
    rows = [
        (name, float(np.median(rates[name])), views_rate)
        for name, _, _, views_rate in prepared
    ]
    base = dict((n, r) for n, r, _ in rows).get("moco")
    print(
        f"\nResNet-{FLAGS.depth} x{FLAGS.width}, {size} px, "
        f"batch {FLAGS.batch_size}, "
        f"{os.cpu_count()} CPU cores"
    )
    print(f"median of {FLAGS.rounds} round(s) of {FLAGS.steps} steps")
    print(
        "| method | train img/s | views img/s (tf.data, sequential map) | "
        "time vs MoCo | predicted |"
    )
    print("|---|---|---|---|---|")
    for name, rate, views_rate in rows:
        measured = f"{base / rate:.2f}" if base else "-"
        predicted = predicted_cost(name) / PREDICTED_COST["moco"]
        print(
            f"| {name} | {rate:.2f} | {views_rate:.0f} | {measured} | "
            f"{predicted:.2f} |"
        )
    regions = [(n, r) for n, r, _ in rows if n.startswith("region_aware@")]
    if len(regions) > 1:
        (first, first_rate), *others = regions
        for name, rate in others:
            print(
                f"{name} / {first}: {rate / first_rate:.2f}x img/s "
                "(predicted "
                f"{predicted_cost(first) / predicted_cost(name):.2f}x)"
            )


if __name__ == "__main__":
    define_flags()
    app.run(main)
