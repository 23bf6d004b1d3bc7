"""The benchmark suite: this machine's limits, then every training step,
the input pipeline and serving against them.

    python tools/benchmark.py [--output_dir=runs/benchmark]
        [--sections=roofline,steps,input,serving]
        [--steps=supervised,moco,simclr,region_aware]
        [--backbones=baseline,attn5] [--sizes=128,224] [--batch_size=8]
        [--covid_ct=../shared/data/covid-ct]

Sections (each measurement runs in its own Python process, so that its peak
memory is its own and no TensorFlow state carries over):

- roofline: sustained float32 matmul GFLOP/s (n x n x n) and conv GFLOP/s
  (ResNet-50's 3x3 and 1x1 shapes; forward, and forward + both backward
  kernels, which is what training runs).
- steps: for each step type x backbone (ResNet-50 baseline / 5 ATTNs) x
  size: training img/s on one fixed batch (the step alone), training
  FLOPs per image (forward FLOPs from the TF profiler times 3 for each view
  that is backpropagated, times 1 for the momentum encoder's keys), the
  achieved GFLOP/s and its fraction of the conv rooflines, and peak RSS.
- input: the tf.data pipeline alone on the real COVID-CT train images
  (decode + resize + cache, then augmentation / views / lung-region
  generation), first pass and cached passes, in img/s, and its ratio to
  the training step of the same method and size.
- serving: `tools/bench_export.py` (serving_default latency/throughput).

Writes `benchmark.json` and `benchmark.md` in `--output_dir`.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# oneDNN kernels, as the CLI runs them (`tf_startup.prefer_onednn`).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from timing import median_seconds  # noqa: E402  (tools/timing.py)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags (defined when run, so that tests can import the
    measurement functions)."""
    flags.DEFINE_string(
        "output_dir", "runs/benchmark", "Where the JSON/Markdown go."
    )
    flags.DEFINE_list(
        "sections", ["roofline", "steps", "input", "serving"], "Sections."
    )
    flags.DEFINE_list(
        "steps", ["supervised", "moco", "simclr", "region_aware"], "Step types."
    )
    flags.DEFINE_list("backbones", ["baseline", "attn5"], "ResNet-50 variants.")
    flags.DEFINE_list("sizes", ["128", "224"], "Input sides.")
    flags.DEFINE_integer("batch_size", 8, "Global batch of the timed steps.")
    flags.DEFINE_integer(
        "warmup_steps", 2, "Untimed steps (tracing, allocation)."
    )
    flags.DEFINE_integer("timed_steps", 3, "Timed steps.")
    flags.DEFINE_integer("depth", 50, "ResNet depth.")
    flags.DEFINE_string("precision", "float32", "Dtype policy of the steps.")
    flags.DEFINE_boolean("jit_compile", False, "XLA for the steps.")
    flags.DEFINE_string(
        "covid_ct",
        os.path.join(REPO, "..", "shared", "data", "covid-ct"),
        "COVID19-CT root (Images-processed, Data-split).",
    )
    flags.DEFINE_integer(
        "input_images", 256, "COVID-CT train images the input section reads."
    )
    flags.DEFINE_string("child", None, "Internal: run one measurement (JSON).")


ATTENTION = {"baseline": "none", "attn5": "5"}
# Backbone passes per image: (backpropagated, forward only).
PASSES = {
    "supervised": (1, 0),
    "moco": (1, 1),
    "simclr": (2, 0),
    "region_aware": (6, 1),
}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- measurements (run in a child process) ----------------------------------


def roofline() -> dict:
    import tensorflow as tf

    out = {}
    n = 2048
    a = tf.random.normal([n, n])
    b = tf.random.normal([n, n])
    matmul = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
    matmul()
    seconds = median_seconds(lambda: float(matmul()), 10, warmup=0)
    out["matmul"] = {
        "shape": f"{n}x{n}x{n}",
        "gflops": round(2 * n**3 / seconds / 1e9, 1),
    }
    convs = []
    # (batch, side, c_in, c_out, kernel): ResNet-50 conv2..conv5 shapes at 224.
    for batch, side, cin, cout, k in [
        (32, 56, 64, 64, 3),
        (32, 28, 128, 128, 3),
        (32, 14, 256, 256, 3),
        (32, 7, 512, 512, 3),
        (32, 56, 256, 64, 1),
        (32, 14, 1024, 256, 1),
    ]:
        x = tf.random.normal([batch, side, side, cin])
        w = tf.Variable(tf.random.normal([k, k, cin, cout]) * 0.01)
        flops = 2 * batch * side * side * cin * cout * k * k
        forward, train = conv_functions(x, w)
        forward()
        train()
        fwd = (
            flops / median_seconds(lambda: float(forward()), 7, warmup=0) / 1e9
        )
        trn = (
            3
            * flops
            / median_seconds(lambda: float(train()), 5, warmup=0)
            / 1e9
        )
        convs.append(
            {
                "shape": f"{batch}x{side}x{side}x{cin}->{cout} k{k}",
                "forward_gflops": round(fwd, 1),
                "train_gflops": round(trn, 1),
            }
        )
    out["conv"] = convs
    out["conv_forward_gflops"] = max(c["forward_gflops"] for c in convs)
    out["conv_train_gflops"] = max(c["train_gflops"] for c in convs)
    return out


def conv_functions(x, w):
    """`(forward, train)`: graph functions of one stride-1 SAME convolution
    of `x` by the variable `w`. `forward()` computes the output; `train()`
    computes the output and both backward kernels (input and filter
    gradients), which is what a training step runs per convolution. Each
    returns a scalar that depends on everything it computed, so that
    Grappler cannot prune a kernel from the timing: before, `train`
    returned only the gradients, the forward convolution was pruned, and
    its rate counted three convolutions' FLOPs over the time of two (1.5x
    too high; `tests/tools/test_benchmark.py`)."""
    import tensorflow as tf

    @tf.function
    def forward():
        return tf.reduce_sum(tf.nn.conv2d(x, w, 1, "SAME"))

    @tf.function
    def train():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.reduce_sum(tf.nn.conv2d(x, w, 1, "SAME"))
        dx, dw = tape.gradient(y, [x, w])
        return y + tf.reduce_sum(dx) + tf.reduce_sum(dw)

    return forward, train


def supervised_model(
    depth: int, size: int, attention="none", jit_compile=False, conv_bias=False
):
    """The timed supervised model: a ResNet classifier (2 classes), SGD
    with momentum 0.9, sparse cross-entropy (also what
    `tools/profile_step.py --step=supervised` profiles)."""
    import keras

    from matl_keras.models.resnet.resnet_backbone import ResNetBackbone
    from matl_keras.models.resnet.resnet_image_classifier import (
        build_image_classifier,
    )

    features = ResNetBackbone(
        depth, 1.0, size, attention=attention, conv_bias=conv_bias
    )
    model = build_image_classifier(features, 2)
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        loss="sparse_categorical_crossentropy",
        jit_compile=jit_compile,
    )
    return model


def forward_flops(model, size: int) -> int:
    """Forward FLOPs of `model` on one `size` x `size` image, from the TF
    profiler on the frozen inference graph (multiply-add = 2 FLOPs)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2_as_graph,
    )

    fn = tf.function(lambda x: model(x, training=False))
    concrete = fn.get_concrete_function(
        tf.TensorSpec([1, size, size, 3], tf.float32)
    )
    frozen, _ = convert_variables_to_constants_v2_as_graph(concrete)
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    info = tf.compat.v1.profiler.profile(
        graph=frozen.graph,
        run_meta=tf.compat.v1.RunMetadata(),
        cmd="op",
        options=options,
    )
    return int(info.total_float_ops)


def _encoder(backbone):
    import keras

    return keras.Sequential([backbone, keras.layers.GlobalAveragePooling2D()])


def step(
    kind: str,
    backbone_name: str,
    size: int,
    batch: int,
    warmup: int,
    timed: int,
    precision: str,
    jit_compile: bool,
) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    from matl_keras.models.resnet.resnet_backbone import ResNetBackbone
    from matl_keras.training import precision as precision_lib
    from matl_keras.training import self_supervised

    keras.utils.set_random_seed(0)
    attention = ATTENTION[backbone_name]
    rng = np.random.default_rng(0)

    def images(*shape):
        return tf.constant(
            rng.uniform(0, 1, (batch, *shape, size, size, 3)).astype("float32")
        )

    with precision_lib.dtype_policy(precision):
        if kind == "supervised":
            model = supervised_model(FLAGS.depth, size, attention, jit_compile)
            data = (images(), tf.zeros([batch], tf.int32))
            flops_model = model
        else:
            from matl_keras.training.ssl_method import RunSchedule

            model = self_supervised.build_method(
                kind,
                lambda **kw: ResNetBackbone(
                    FLAGS.depth, 1.0, attention=attention, **kw
                ),
                size,
                sync_batchnorm=True,
                batchnorm_groups=self_supervised.resolve_batchnorm_groups(
                    "auto", batch, 1
                ),
            )
            # A queue of 4096 keys (the data size only sizes the queue).
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
                optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                jit_compile=jit_compile,
            )
            if kind == "simclr":
                data = ({"view1": images(), "view2": images()},)
            else:
                data = {"query": images(), "key": images()}
                if kind == "region_aware":
                    data["regions"] = images(5)
                data = (data,)
            # The SSL step takes (views, dataset indices).
            data = (data[0], tf.range(batch, dtype=tf.int32))
            flops_model = _encoder(model.backbone)
    forward = forward_flops(flops_model, size)
    model.make_train_function()
    train_step = model.train_function
    dataset = tf.data.Dataset.from_tensors(data).repeat()
    iterator = iter(dataset)

    def one():
        logs = train_step(iterator)
        float(logs["loss"])

    for _ in range(warmup):
        one()
    start = time.perf_counter()
    for _ in range(timed):
        one()
    seconds = time.perf_counter() - start
    backward, forward_only = PASSES[kind]
    train_flops = forward * (3 * backward + forward_only)
    rate = batch * timed / seconds
    return {
        "images_per_second": round(rate, 2),
        "forward_gflops_per_image": round(forward / 1e9, 3),
        "train_gflops_per_image": round(train_flops / 1e9, 3),
        "achieved_gflops": round(rate * train_flops / 1e9, 1),
        "seconds_per_step": round(seconds / timed, 3),
        "peak_rss_mb": round(_peak_rss_mb()),
    }


def input_pipeline(kind: str, size: int, root: str, count: int) -> dict:
    import tensorflow as tf

    from matl_keras import registry as registry_lib
    from matl_keras.data import pipeline
    from matl_keras.data.dataset import Dataset
    from matl_keras.models.resnet.resnet_backbone import ResNetBackbone
    from matl_keras.training import self_supervised

    real = registry_lib.default_registry().create(
        "datasets", "covid_ct", root=root
    )

    class Subset(Dataset):
        """The first `count` train images (the timing needs no more)."""

        name = "covid_ct_subset"
        class_names = real.class_names

        def splits(self):
            return ("train",)

        def examples(self, split):
            examples = real.examples(split)
            return type(examples)(
                examples.paths[:count], examples.labels[:count]
            )

    augment, extra = "crop_flip", {}
    if kind != "supervised":
        model = self_supervised.build_method(
            kind, lambda **kw: ResNetBackbone(18, 0.25, **kw), size
        )
        augment = model.views
        extra = {"prepare": model.prepare, "targets": "indices"}
    split = pipeline.build_split(
        Subset(),
        "train",
        image_size=size,
        batch_size=32,
        training=True,
        augment=augment,
        cache="memory",
        seed=0,
        **extra,
    )

    def epoch():
        start, n = time.perf_counter(), 0
        for _, labels in split.data:
            n += int(tf.shape(labels)[0])
        return n / (time.perf_counter() - start)

    first = epoch()
    cached = max(epoch() for _ in range(2))
    return {
        "first_pass_images_per_second": round(first, 1),
        "cached_images_per_second": round(cached, 1),
        "images": split.num_examples,
        "cpu_cores": os.cpu_count(),
    }


# --- orchestration ------------------------------------------------------------


def _child(spec: dict) -> dict:
    print(f"  running {spec}", flush=True)
    result = subprocess.run(
        [
            sys.executable,
            os.path.abspath(__file__),
            f"--child={json.dumps(spec)}",
        ]
        + [f"--depth={FLAGS.depth}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    lines = [l for l in result.stdout.splitlines() if l.startswith("{")]
    if result.returncode != 0 or not lines:
        return {"error": (result.stderr or result.stdout)[-2000:]}
    return json.loads(lines[-1])


def run_child(spec: dict) -> None:
    what = spec.pop("what")
    if what == "roofline":
        out = roofline()
    elif what == "step":
        out = step(**spec)
    elif what == "input":
        out = input_pipeline(**spec)
    else:
        raise ValueError(what)
    print(json.dumps(out), flush=True)


def _markdown(results: dict) -> str:
    lines = []
    env = results["machine"]
    lines.append(
        f"Machine: {env['cpu']}, {env['cores']} cores; TensorFlow "
        f"{env['tensorflow']}, Keras {env['keras']}; steps in "
        f"{results['settings']['precision']}, XLA "
        f"{'on' if results['settings']['jit_compile'] else 'off'}, "
        f"batch {results['settings']['batch_size']}."
    )
    roof = results.get("roofline")
    if roof and "error" not in roof:
        lines += [
            "",
            "| limit | GFLOP/s |",
            "|---|---|",
            f"| matmul {roof['matmul']['shape']} float32 | "
            f"{roof['matmul']['gflops']} |",
        ]
        for c in roof["conv"]:
            lines.append(
                f"| conv {c['shape']} forward / train | "
                f"{c['forward_gflops']} / {c['train_gflops']} |"
            )
    steps = results.get("steps", [])
    if steps:
        lines += [
            "",
            "| step | backbone | px | train img/s | GFLOP/img (train) | "
            "achieved GFLOP/s | % conv fwd roofline | % conv train roofline | "
            "peak RSS MB | input img/s (cached) | input / step |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in steps:
            r = row["result"]
            if "error" in r:
                lines.append(
                    f"| {row['step']} | {row['backbone']} | {row['size']} | "
                    f"error: {r['error'].splitlines()[-1][:80]} |"
                )
                continue
            inp = row.get("input", {})
            cached = inp.get("cached_images_per_second")
            lines.append(
                f"| {row['step']} | {row['backbone']} | {row['size']} | "
                f"{r['images_per_second']} | {r['train_gflops_per_image']} | "
                f"{r['achieved_gflops']} | "
                f"{row.get('pct_conv_forward', '-')} | "
                f"{row.get('pct_conv_train', '-')} | "
                f"{r['peak_rss_mb']} | "
                f"{cached if cached else '-'} | "
                f"""{
                    round(cached / r["images_per_second"], 1) if cached else "-"
                } |"""
            )
    ratios = results.get("region_aware_vs_moco", [])
    if ratios:
        lines += [
            "",
            "| backbone | px | region_aware / MoCo time | FLOP ratio | "
            "off by |",
            "|---|---|---|---|---|",
        ]
        for r in ratios:
            lines.append(
                f"| {r['backbone']} | {r['size']} | {r['time_ratio']} | "
                f"{r['flop_ratio']} | {r['off_by_percent']}% |"
            )
    inputs = results.get("input", [])
    if inputs:
        lines += [
            "",
            "| input pipeline (real COVID-CT) | px | first pass img/s | "
            "cached img/s |",
            "|---|---|---|---|",
        ]
        for row in inputs:
            r = row["result"]
            if "error" in r:
                lines.append(f"| {row['step']} | {row['size']} | error | |")
                continue
            lines.append(
                f"| {row['step']} | {row['size']} | "
                f"{r['first_pass_images_per_second']} | "
                f"{r['cached_images_per_second']} |"
            )
    serving = results.get("serving")
    if serving and "timing" in serving:
        t = serving["timing"]
        lines += [
            "",
            f"Serving ({serving['model']}): serving_default "
            f"{t['serving_default_1_image_ms']} ms for 1 image, "
            f"{t['serving_default_batch_img_s']} img/s "
            f"at batch {serving['batch']}.",
        ]
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    if FLAGS.child:
        run_child(json.loads(FLAGS.child))
        return
    import keras
    import tensorflow as tf

    os.makedirs(FLAGS.output_dir, exist_ok=True)
    path = os.path.join(FLAGS.output_dir, "benchmark.json")
    cpu = next(
        (
            l.split(":", 1)[1].strip()
            for l in open("/proc/cpuinfo")
            if l.startswith("model name")
        ),
        "unknown",
    )
    results = {
        "command": " ".join(sys.argv),
        "machine": {
            "cpu": cpu,
            "cores": os.cpu_count(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
        },
        "settings": {
            "batch_size": FLAGS.batch_size,
            "precision": FLAGS.precision,
            "jit_compile": FLAGS.jit_compile,
            "depth": FLAGS.depth,
            "warmup_steps": FLAGS.warmup_steps,
            "timed_steps": FLAGS.timed_steps,
        },
    }
    if os.path.exists(path):  # keep sections not rerun
        previous = json.load(open(path))
        for key in ("roofline", "steps", "input", "serving"):
            if key in previous and key not in FLAGS.sections:
                results[key] = previous[key]

    def save():
        with open(path, "w") as f:
            json.dump(results, f, indent=2)
        with open(os.path.join(FLAGS.output_dir, "benchmark.md"), "w") as f:
            f.write(_markdown(results))

    if "roofline" in FLAGS.sections:
        print("roofline", flush=True)
        results["roofline"] = _child({"what": "roofline"})
        save()
    sizes = [int(s) for s in FLAGS.sizes]
    if "input" in FLAGS.sections:
        print("input pipeline", flush=True)
        results["input"] = []
        if not os.path.isdir(FLAGS.covid_ct):
            results["input"] = [
                {
                    "step": "-",
                    "size": 0,
                    "result": {
                        "error": f"--covid_ct={FLAGS.covid_ct} is absent"
                    },
                }
            ]
        else:
            for kind in FLAGS.steps:
                for size in sizes:
                    results["input"].append(
                        {
                            "step": kind,
                            "size": size,
                            "result": _child(
                                {
                                    "what": "input",
                                    "kind": kind,
                                    "size": size,
                                    "root": FLAGS.covid_ct,
                                    "count": FLAGS.input_images,
                                }
                            ),
                        }
                    )
                    save()
    if "steps" in FLAGS.sections:
        print("training steps", flush=True)
        results["steps"] = []
        for kind in FLAGS.steps:
            for name in FLAGS.backbones:
                for size in sizes:
                    r = _child(
                        {
                            "what": "step",
                            "kind": kind,
                            "backbone_name": name,
                            "size": size,
                            "batch": FLAGS.batch_size,
                            "warmup": FLAGS.warmup_steps,
                            "timed": FLAGS.timed_steps,
                            "precision": FLAGS.precision,
                            "jit_compile": FLAGS.jit_compile,
                        }
                    )
                    results["steps"].append(
                        {
                            "step": kind,
                            "backbone": name,
                            "size": size,
                            "result": r,
                        }
                    )
                    save()
    roof = results.get("roofline", {})
    inputs = {
        (r["step"], r["size"]): r["result"] for r in results.get("input", [])
    }
    by_key = {}
    for row in results.get("steps", []):
        r = row["result"]
        by_key[(row["step"], row["backbone"], row["size"])] = r
        if "error" in r:
            continue
        if "conv_forward_gflops" in roof:
            row["pct_conv_forward"] = round(
                100 * r["achieved_gflops"] / roof["conv_forward_gflops"], 1
            )
            row["pct_conv_train"] = round(
                100 * r["achieved_gflops"] / roof["conv_train_gflops"], 1
            )
        if "error" not in inputs.get((row["step"], row["size"]), {"error": 1}):
            row["input"] = inputs[(row["step"], row["size"])]
    results["region_aware_vs_moco"] = []
    for (kind, name, size), r in by_key.items():
        moco = by_key.get(("moco", name, size))
        if (
            kind != "region_aware"
            or not moco
            or "error" in r
            or "error" in moco
        ):
            continue
        time_ratio = moco["images_per_second"] / r["images_per_second"]
        flop_ratio = (
            r["train_gflops_per_image"] / moco["train_gflops_per_image"]
        )
        results["region_aware_vs_moco"].append(
            {
                "backbone": name,
                "size": size,
                "time_ratio": round(time_ratio, 2),
                "flop_ratio": round(flop_ratio, 2),
                "off_by_percent": round(100 * (time_ratio / flop_ratio - 1), 1),
            }
        )
    if "serving" in FLAGS.sections:
        print("serving", flush=True)
        work = os.path.join(FLAGS.output_dir, "export")
        images = os.path.join(FLAGS.covid_ct, "Images-processed", "CT_COVID")
        if not os.path.isdir(images):
            images = os.path.join(REPO, "tests", "data")
        proc = subprocess.run(
            [
                sys.executable,
                os.path.join(REPO, "tools", "bench_export.py"),
                f"--workdir={work}",
                f"--images={images}",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        )
        out = os.path.join(work, "bench_export.json")
        results["serving"] = (
            json.load(open(out))
            if proc.returncode == 0
            else {"error": proc.stderr[-2000:]}
        )
    save()
    print(_markdown(results))
    print(f"wrote {path}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
