"""Parameter counts and forward-pass throughput of the attentive ResNets.

    python tools/bench_attention.py [--depths=50,101] [--sizes=224,128]
        [--batch_size=8] [--batches=3] [--json=out.json]

For each depth, variant (baseline, 1 ATTN, 5 ATTNs) and input size: the
parameter count and inference images/s of the backbone (compiled with
tf.function, after a warm-up batch), and for the attentive variants the same
with keys/values sub-sampled 2x2 (`attention_subsample=2`), which is what
sub-sampling saves.
"""

import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# oneDNN kernels, as the CLI runs them (`tf_startup.prefer_onednn`).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from matl_keras.models.resnet.resnet_backbone import ResNetBackbone  # noqa

flags.DEFINE_list("depths", ["50", "101"], "ResNet depths.")
flags.DEFINE_list("sizes", ["224", "128"], "Input sides.")
flags.DEFINE_integer("batch_size", 8, "Batch size.")
flags.DEFINE_integer("batches", 3, "Timed batches (median taken).")
flags.DEFINE_string("json", None, "Also write the rows to this JSON file.")
FLAGS = flags.FLAGS


def measure(depth, size, attention, subsample):
    model = ResNetBackbone(
        depth,
        image_size=size,
        attention=attention,
        attention_subsample=subsample,
    )
    forward = tf.function(lambda x: model(x, training=False))
    x = tf.constant(
        np.random.default_rng(0).uniform(
            0, 1, (FLAGS.batch_size, size, size, 3)
        ),
        tf.float32,
    )
    for _ in range(2):  # trace, then let oneDNN settle its kernels
        forward(x).numpy()
    times = []
    for _ in range(FLAGS.batches):
        start = time.perf_counter()
        forward(x).numpy()
        times.append(time.perf_counter() - start)
    return model.count_params(), FLAGS.batch_size / float(np.median(times))


def main(argv):
    del argv
    rows = []
    print(
        f"{'model':<22}{'size':>5}{'params':>13}{'img/s':>9}{'img/s sub2':>12}"
    )
    for depth in map(int, FLAGS.depths):
        for size in map(int, FLAGS.sizes):
            for attention, label in (
                ("none", "baseline"),
                ("1", "1 ATTN"),
                ("5", "5 ATTNs"),
            ):
                params, rate = measure(depth, size, attention, 1)
                sub = None
                if attention != "none":
                    _, sub = measure(depth, size, attention, 2)
                rows.append(
                    dict(
                        depth=depth,
                        size=size,
                        variant=label,
                        params=params,
                        img_per_s=round(rate, 2),
                        img_per_s_subsample2=sub and round(sub, 2),
                    )
                )
                print(
                    f"R-{depth} {label:<16}{size:>5}{params:>13,}"
                    f"{rate:>9.2f}{(f'{sub:.2f}' if sub else '-'):>12}",
                    flush=True,
                )
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    app.run(main)
