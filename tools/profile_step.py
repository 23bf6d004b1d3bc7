"""Where the time of matl-keras's MoCo (or supervised) training step goes,
per op class.

    python tools/profile_step.py [--step=moco|supervised] [--depth=50]
        [--image_size=128] [--batch_size=32] [--steps=2] [--warmup=2]
        [--logdir=/tmp/profile_step] [--out=profile_step.json]
        [--intra_op=0] [--inter_op=0] [--batchnorm_groups=auto]

Builds the step as `tools/bench_ssl.py --methods=moco` does (the optimizer
of `tools/bench_vs_pytorch.py`), or with `--step=supervised` the
supervised step of `tools/benchmark.py` (ResNet classifier, SGD with
momentum 0.9, sparse cross-entropy, one fixed batch), runs `--warmup`
steps, then `--steps` steps under the TensorFlow profiler
(`tf.profiler.experimental.start`), and reads the trace it wrote
(`<logdir>/plugins/profile/*/*.xplane.pb`, the `XSpace` proto
TensorFlow ships) directly: every op kernel's execution is an event
`node name:op type` on an executor thread of the `/host:CPU` plane.
Ops are grouped by class (first match wins):

- all-gather: collectives (none on one device);
- queue: the enqueue and the queue's mask;
- momentum update: the key encoder's Eq. 3 update;
- optimizer: the optimizer's ops (scope `sgd/...`, `ResourceApply*`);
- conv backward-filter / backward-input / forward: the convolution
  kernels (oneDNN's `_MklNative*` included);
- BN: `FusedBatchNorm*` and their gradients, and every op of a BatchNorm
  layer (the grouped statistics of shuffle-BN are plain ops);
- matmul; elementwise (ReLU, add, mul, casts... and their gradients);
- other (reductions, pooling, reshapes, variable reads...).

The method's parts are put in name scopes for this (`momentum_update`,
`enqueue`, `queue_mask`, `encode_keys`), and a second table splits the
same time by part of the step: the key encoder's forward, the momentum
update, the enqueue, the optimizer, and the rest (query forward and
backward, the loss). Printed: ms per step and % of the summed op time;
ops of several executor threads can overlap, so the sum may exceed the
step's wall time, which is printed too. `--out` gets the same as JSON.
"""

from __future__ import annotations

import collections
import glob
import json
import os
import re
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# oneDNN kernels, as the CLI runs them (`tf_startup.prefer_onednn`).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

FLAGS = flags.FLAGS

CLASSES = (
    "conv forward",
    "conv backward-filter",
    "conv backward-input",
    "BN",
    "elementwise",
    "matmul",
    "optimizer",
    "momentum update",
    "queue",
    "all-gather",
    "other",
)
PARTS = (
    "key encoder forward",
    "momentum update",
    "enqueue",
    "optimizer",
    "query forward+backward, loss",
)
# Name scopes the profiled model's parts run under.
SCOPES = {
    "encode_keys": "key encoder forward",
    "momentum_update": "momentum update",
    "enqueue": "enqueue",
    "queue_mask": "query forward+backward, loss",
}
ELEMENTWISE = {
    "Relu",
    "ReluGrad",
    "Relu6",
    "Add",
    "AddV2",
    "AddN",
    "Sub",
    "Mul",
    "RealDiv",
    "Div",
    "DivNoNan",
    "Neg",
    "Rsqrt",
    "RsqrtGrad",
    "Sqrt",
    "Square",
    "SquaredDifference",
    "Maximum",
    "Minimum",
    "Exp",
    "Log",
    "Cast",
    "BiasAdd",
    "BiasAddGrad",
    "Select",
    "SelectV2",
    "Sign",
    "Abs",
    "Pow",
    "Reciprocal",
    "ZerosLike",
    "OnesLike",
    "Fill",
    "Tile",
    "BroadcastTo",
    "LogicalAnd",
    "LogicalNot",
    "Equal",
    "NotEqual",
    "Less",
    "Greater",
    "FloorMod",
}
# Keras 3 optimizers run under their lower-cased name.
OPTIMIZER_SCOPES = {"sgd", "adam", "adamw", "lars", "optimizer"}
# Ops that only call others (their time is their callees').
CALLS = {"PartitionedCall", "StatefulPartitionedCall", "While", "If"}
BN_SCOPE = re.compile(r"(^|/)[^/]*(_bn|batch_?norm|BatchNorm)[^/]*(/|$)", re.I)


def _base_type(op_type: str) -> str:
    """`_MklNativeFusedConv2D` -> `FusedConv2D`, `_MklAddV2` -> `AddV2`."""
    return re.sub(r"^_(Mkl)?(Native)?", "", op_type)


def op_class(name: str, op_type: str) -> str:
    """The class of the op `name` (node name) of type `op_type`."""
    base = _base_type(op_type)
    scopes = set(name.split("/")[:-1])
    if "Collective" in base or "Nccl" in base or "AllToAll" in base:
        return "all-gather"
    if scopes & {"enqueue", "queue_mask"}:
        return "queue"
    if "momentum_update" in scopes:
        return "momentum update"
    if (
        base.startswith("ResourceApply")
        or {s.lower() for s in scopes} & OPTIMIZER_SCOPES
    ):
        return "optimizer"
    if "Conv" in base:
        if "BackpropFilter" in base:
            return "conv backward-filter"
        if "BackpropInput" in base:
            return "conv backward-input"
        return "conv forward"
    if "FusedBatchNorm" in base or BN_SCOPE.search(name):
        return "BN"
    if "MatMul" in base:
        return "matmul"
    if base in ELEMENTWISE or base.startswith("Fused") and "Relu" in base:
        return "elementwise"
    return "other"


def step_part(name: str, op_type: str) -> str:
    """The part of the step the op `name` belongs to (`PARTS`)."""
    scopes = name.split("/")[:-1]
    for scope in scopes:
        if scope in SCOPES:
            return SCOPES[scope]
    if op_class(name, op_type) == "optimizer":
        return "optimizer"
    return PARTS[-1]


def op_events(xspace) -> list[tuple[str, str, float]]:
    """`(node name, op type, seconds)` of every op kernel execution on the
    host plane of an `XSpace` proto."""
    events = []
    for plane in xspace.planes:
        if not plane.name.startswith("/host:"):
            continue
        metadata = plane.event_metadata
        for line in plane.lines:
            for event in line.events:
                meta = metadata[event.metadata_id]
                op_type = meta.display_name
                if not op_type or ":" not in meta.name:
                    continue
                if op_type in CALLS:
                    continue
                name = meta.name.rsplit(":", 1)[0]
                events.append((name, op_type, event.duration_ps * 1e-12))
    return events


def breakdown(events, steps: int, key=op_class) -> dict[str, dict]:
    """Per group of `key(name, type)`: ms per step and % of the total op
    time, the largest first."""
    seconds = collections.Counter()
    for name, op_type, duration in events:
        seconds[key(name, op_type)] += duration
    total = sum(seconds.values()) or 1.0
    return {
        group: {
            "ms_per_step": 1e3 * s / steps,
            "percent": 100.0 * s / total,
        }
        for group, s in seconds.most_common()
    }


def top_types(events, steps: int, count: int = 12) -> list[tuple]:
    """The (op type, class) pairs taking the most time: (type, class, ms
    per step)."""
    seconds = collections.Counter()
    for name, op_type, duration in events:
        seconds[op_type, op_class(name, op_type)] += duration
    return [
        (t, group, 1e3 * s / steps)
        for (t, group), s in seconds.most_common(count)
    ]


def markdown(table: dict[str, dict], title: str) -> str:
    lines = [f"| {title} | ms / step | % of op time |", "|---|---|---|"]
    for group, row in table.items():
        lines.append(
            f"| {group} | {row['ms_per_step']:.1f} | {row['percent']:.1f} |"
        )
    total = sum(row["ms_per_step"] for row in table.values())
    lines.append(f"| total | {total:.1f} | 100.0 |")
    return "\n".join(lines)


def read_xspace(logdir: str):
    """The newest `.xplane.pb` under `logdir`, parsed."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    paths = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    if not paths:
        raise FileNotFoundError(f"no .xplane.pb under {logdir}")
    xspace = xplane_pb2.XSpace()
    with open(max(paths, key=os.path.getmtime), "rb") as f:
        xspace.ParseFromString(f.read())
    return xspace


def name_parts(model) -> None:
    """Runs the model's step parts under the name scopes `SCOPES` keys."""
    import tensorflow as tf

    def scoped(method, scope):
        def run(*args, **kwargs):
            with tf.name_scope(scope):
                return method(*args, **kwargs)

        return run

    for scope in SCOPES:
        setattr(model, scope, scoped(getattr(model, scope), scope))


def define_flags() -> None:
    flags.DEFINE_integer("depth", 50, "ResNet depth.")
    flags.DEFINE_integer("image_size", 128, "View side.")
    flags.DEFINE_integer("batch_size", 32, "Batch size.")
    flags.DEFINE_integer("steps", 2, "Profiled steps.")
    flags.DEFINE_integer("warmup", 2, "Steps before profiling.")
    flags.DEFINE_string("logdir", "/tmp/profile_step", "Profiler logdir.")
    flags.DEFINE_string("out", "", "JSON output path (empty: none).")
    flags.DEFINE_integer("intra_op", 0, "TF intra-op threads (0: TF's).")
    flags.DEFINE_integer("inter_op", 0, "TF inter-op threads (0: TF's).")
    flags.DEFINE_string("batchnorm_groups", "auto", "Shuffle-BN groups.")
    flags.DEFINE_enum("step", "moco", ["moco", "supervised"], "Step type.")


def supervised_step(depth, image_size, batch_size, warmup):
    """`(step, batch)`: the supervised training step of
    `tools/benchmark.py` (its `tf.function`, after `warmup` calls) and its
    one fixed batch of random images."""
    import keras
    import numpy as np
    import tensorflow as tf

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import benchmark

    keras.utils.set_random_seed(0)
    model = benchmark.supervised_model(depth, image_size)
    images = np.random.default_rng(0).uniform(
        0, 1, (batch_size, image_size, image_size, 3)
    )
    batch = iter(
        tf.data.Dataset.from_tensors(
            (
                tf.constant(images.astype("float32")),
                tf.zeros([batch_size], tf.int32),
            )
        ).repeat()
    )
    model.make_train_function()
    step = model.train_function
    for _ in range(warmup):
        float(step(batch)["loss"])
    return step, batch


def main(argv):
    del argv
    import tensorflow as tf

    if FLAGS.intra_op:
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.intra_op)
    if FLAGS.inter_op:
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.inter_op)
    import keras

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_ssl
    import bench_vs_pytorch

    if FLAGS.step == "supervised":
        step, batch = supervised_step(
            FLAGS.depth, FLAGS.image_size, FLAGS.batch_size, FLAGS.warmup
        )
    else:
        groups = FLAGS.batchnorm_groups
        step, batch, _ = bench_ssl.prepare_method(
            bench_ssl._factory("moco"),
            bench_ssl.bench_images(FLAGS.batch_size, FLAGS.image_size),
            depth=FLAGS.depth,
            width=1.0,
            image_size=FLAGS.image_size,
            batch_size=FLAGS.batch_size,
            optimizer=keras.optimizers.SGD(
                bench_vs_pytorch.LR,
                momentum=0.9,
                weight_decay=bench_vs_pytorch.WEIGHT_DECAY,
            ),
            batchnorm_groups=int(groups) if groups.isdigit() else groups,
            warmup=FLAGS.warmup,
            before_trace=name_parts,
        )
    tf.profiler.experimental.start(FLAGS.logdir)
    start = time.perf_counter()
    for _ in range(FLAGS.steps):
        float(step(batch)["loss"])
    wall = (time.perf_counter() - start) / FLAGS.steps
    tf.profiler.experimental.stop()
    events = op_events(read_xspace(FLAGS.logdir))
    classes = breakdown(events, FLAGS.steps)
    parts = breakdown(events, FLAGS.steps, key=step_part)
    print(
        f"\nmatl-keras {FLAGS.step} step, ResNet-{FLAGS.depth}, "
        f"{FLAGS.image_size} px, batch {FLAGS.batch_size}, "
        f"{os.cpu_count()} CPU cores, "
        f"{FLAGS.steps} profiled steps; wall {1e3 * wall:.0f} ms per step "
        f"(under the profiler), {len(events) // FLAGS.steps} op executions "
        "per step"
    )
    print(markdown(classes, "op class"))
    print()
    if FLAGS.step == "moco":  # the parts are MoCo's
        print(markdown(parts, "part of the step"))
        print()
    print("| op type | class | ms / step |\n|---|---|---|")
    for op_type, group, ms in top_types(events, FLAGS.steps):
        print(f"| {op_type} | {group} | {ms:.1f} |")
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            json.dump(
                {
                    "step": FLAGS.step,
                    "depth": FLAGS.depth,
                    "image_size": FLAGS.image_size,
                    "batch_size": FLAGS.batch_size,
                    "steps": FLAGS.steps,
                    "wall_ms_per_step": 1e3 * wall,
                    "classes": classes,
                    "parts": parts,
                    "top_types": top_types(events, FLAGS.steps),
                },
                f,
                indent=2,
            )
        print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
