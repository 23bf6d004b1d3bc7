"""SavedModel export of R-50 with 5 ATTNs: size, load time and memory with
and without the weight de-duplication, and serving latency/throughput next
to `model.predict`.

    python tools/bench_export.py
        [--images=../shared/data/covid-ct/Images-processed/CT_COVID]
        [--depth=50] [--attention=5] [--image_size=224]
        [--workdir=runs/bench_export]

Loads run in fresh processes (peak RSS from `getrusage`). Writes
`bench_export.json` and `bench_export.md` in the workdir.
"""

import glob
import json
import os
import subprocess
import sys

from absl import app
from absl import flags
from timing import median_seconds  # tools/timing.py

flags.DEFINE_string(
    "images",
    "../shared/data/covid-ct/Images-processed/CT_COVID",
    "Folder of real images to serve (PNG/JPEG).",
)
flags.DEFINE_integer("depth", 50, "ResNet depth.")
flags.DEFINE_string("attention", "5", "Attention placement.")
flags.DEFINE_integer("image_size", 224, "Model input side.")
flags.DEFINE_integer("batch", 32, "Throughput batch size.")
flags.DEFINE_integer("repeats", 10, "Timed repeats (median).")
flags.DEFINE_string("workdir", "runs/bench_export", "Output folder.")
FLAGS = flags.FLAGS

LOAD = (
    "\n"
    "import resource, sys, time, json\n"
    "import tensorflow as tf\n"
    "start = time.perf_counter()\n"
    "model = tf.saved_model.load(sys.argv[1])\n"
    "seconds = time.perf_counter() - start\n"
    'print(json.dumps({"load_seconds": seconds,\n'
    '                  "peak_rss_mb": '
    "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))\n"
)


def _size_mb(folder):
    total = 0
    for root, _, files in os.walk(folder):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total / 1e6


def main(argv):
    del argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import tensorflow as tf

    from matl_keras.commands import export
    from matl_keras.data import decode
    from matl_keras.data import pipeline
    from matl_keras.models.resnet.resnet_backbone import ResNetBackbone
    from matl_keras.models.resnet.resnet_image_classifier import (
        build_image_classifier,
    )

    stage = os.path.join(FLAGS.workdir, "stage")
    os.makedirs(stage, exist_ok=True)
    model = build_image_classifier(
        ResNetBackbone(
            FLAGS.depth, 1.0, FLAGS.image_size, attention=FLAGS.attention
        ),
        2,
    )
    model.save(os.path.join(stage, "model.keras"))
    with open(os.path.join(stage, "run.json"), "w") as f:
        json.dump(
            {
                "status": "complete",
                "class_names": ["NonCOVID", "COVID"],
                "preprocessing": {
                    "image_size": FLAGS.image_size,
                    "crop_fraction": 0.875,
                },
            },
            f,
        )
    results = {
        "model": (
            f"R-{FLAGS.depth} attention={FLAGS.attention} {FLAGS.image_size}px"
        ),
        "params": model.count_params(),
    }
    for label, dedupe in (("deduplicated", True), ("keras_default", False)):
        base = os.path.join(FLAGS.workdir, label)
        subprocess.run(["rm", "-rf", base], check=True)
        version = export.export(stage, base, model_name="m", dedupe=dedupe)
        loads = [
            json.loads(
                subprocess.run(
                    [sys.executable, "-c", LOAD, version],
                    capture_output=True,
                    text=True,
                    check=True,
                    env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
                ).stdout.splitlines()[-1]
            )
            for _ in range(3)
        ]
        results[label] = {
            "variables_mb": round(
                _size_mb(os.path.join(version, "variables")), 1
            ),
            "savedmodel_mb": round(_size_mb(version), 1),
            "load_seconds": round(
                sorted(l["load_seconds"] for l in loads)[1], 2
            ),
            "peak_rss_mb": round(sorted(l["peak_rss_mb"] for l in loads)[1]),
        }
        if dedupe:
            served = tf.saved_model.load(version).signatures["serving_default"]

    files = sorted(glob.glob(os.path.join(FLAGS.images, "*")))[: FLAGS.batch]
    data = [open(f, "rb").read() for f in files]
    while len(data) < FLAGS.batch:
        data += data[: FLAGS.batch - len(data)]
    one = tf.constant(data[:1])
    many = tf.constant(data)
    decoded = np.stack(
        [
            pipeline.eval_transform(
                decode.decode_image(d), FLAGS.image_size, 0.875
            ).numpy()
            for d in data
        ]
    )
    r = FLAGS.repeats
    timing = {
        "serving_default_1_image_ms": 1000
        * median_seconds(lambda: served(images=one), r),
        "serving_default_batch_img_s": FLAGS.batch
        / median_seconds(lambda: served(images=many), r),
        "predict_1_image_ms": 1000
        * median_seconds(lambda: model.predict(decoded[:1], verbose=0), r),
        "predict_batch_img_s": FLAGS.batch
        / median_seconds(
            lambda: model.predict(decoded, batch_size=FLAGS.batch, verbose=0), r
        ),
        "model_call_batch_img_s": FLAGS.batch
        / median_seconds(lambda: model(decoded, training=False), r),
    }
    results["timing"] = {k: round(v, 1) for k, v in timing.items()}
    results["batch"] = FLAGS.batch
    results["images"] = FLAGS.images
    with open(os.path.join(FLAGS.workdir, "bench_export.json"), "w") as f:
        json.dump(results, f, indent=2)
    d, k, t = (
        results["deduplicated"],
        results["keras_default"],
        results["timing"],
    )
    lines = [
        f"{results['model']}, {results['params']:,} parameters",
        "",
        "| export | variables MB | SavedModel MB | load s | peak RSS MB |",
        "|---|---|---|---|---|",
        f"| Keras default | {k['variables_mb']} | {k['savedmodel_mb']} | "
        f"{k['load_seconds']} | {k['peak_rss_mb']} |",
        f"| de-duplicated (ours) | {d['variables_mb']} | "
        f"{d['savedmodel_mb']} | {d['load_seconds']} | {d['peak_rss_mb']} |",
        "",
        "| path | 1 image (ms) | batch of %d (img/s) |" % FLAGS.batch,
        "|---|---|---|",
        "| serving_default (bytes: decode + preprocess + model) | "
        f"{t['serving_default_1_image_ms']} | "
        f"{t['serving_default_batch_img_s']} |",
        "| model.predict (decoded, preprocessed) | "
        f"{t['predict_1_image_ms']} | {t['predict_batch_img_s']} |",
        "| model(x) (decoded, preprocessed) | - | "
        f"{t['model_call_batch_img_s']} |",
    ]
    with open(os.path.join(FLAGS.workdir, "bench_export.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    app.run(main)
