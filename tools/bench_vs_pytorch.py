"""One MoCo v2 training step side by side: PyTorch, plain Keras 3 and
matl-keras, timed in one run on the same cores.

    python tools/bench_vs_pytorch.py [--depth=50] [--image_size=128]
        [--batch_size=32] [--steps=8] [--warmup=2] [--rounds=2]
        [--frameworks=pytorch,keras,matl] [--out=bench_vs_pytorch.json]
        [--intra_op=0] [--inter_op=0] [--torch_threads=0]
        [--batchnorm_groups=auto] [--fuse_groups=] [--keys_outside_tape]

The step is query forward + backward, key forward (momentum encoder,
m = 0.999, updated without gradients), InfoNCE against a queue of 4096
128-d keys (temperature 0.2), SGD (lr 0.03, momentum 0.9, weight decay
1e-4) and the enqueue, on one fixed batch of random images:

- `pytorch`: a plain MoCo v2 step written the usual way: torchvision's
  ResNet with `fc` replaced by the 2-layer MLP head (2048 -> 2048 -> 128),
  eager mode, BatchNorm over the whole batch.
- `keras`: the same step in plain Keras 3: `keras.applications.ResNet50`
  (`weights=None, include_top=False, pooling="avg"`) + the MLP head, a
  hand-written `tf.function` train step.
- `matl`: matl-keras's MoCo as `tools/bench_ssl.py --methods=moco` builds
  it (`prepare_method`: shuffle-BN over `--batchnorm_groups` groups,
  the queue's identities mask), with the optimizer above.

Each framework runs in its own subprocess (their thread pools never meet),
built and warmed up one after the other; then in every round each one
times `--steps` steps in turn (the order rotates per round), each step
timed alone. Reported: img/s of the median step per round and over all
rounds, and of the fastest step (other jobs on a shared machine only slow
steps down), and the ratios to PyTorch. `--out` gets the same as JSON,
with each framework's thread settings and the load after each turn. 0 for
a thread flag keeps the framework's default (TF: intra/inter op 0, i.e.
chosen by TF; PyTorch: its default). Short rounds (`--steps=2
--rounds=8`) interleave the frameworks more finely than long ones, so a
change of load on the machine hits them more evenly.

Variants of a framework are timed beside it: `--frameworks=matl,
matl@intra_op=2+inter_op=1,matl@onednn=0` (settings joined by `+`: the
thread flags, `batchnorm_groups`, `fuse_groups` (matl-keras's grouped
BatchNorm on the fused kernel: 1, or from moments: 0), `keys_outside_tape`
(1: the key encoder's forward before the gradient tape), `onednn`
(TF_ENABLE_ONEDNN_OPTS of that worker)).

PyTorch is an optional benchmark dependency (`pip install -e '.[bench]'`),
never a runtime one; matl-keras does not import this file. On a shared
machine, compare the ratios of one run, not absolute figures.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# oneDNN kernels, as the CLI runs them (`tf_startup.prefer_onednn`).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

FRAMEWORKS = ("pytorch", "keras", "matl")
LABELS = {
    "pytorch": "PyTorch (torchvision ResNet, eager)",
    "keras": "plain Keras 3 (keras.applications)",
    "matl": "matl-keras (bench_ssl MoCo)",
}
KERAS_RESNETS = {50: "ResNet50", 101: "ResNet101", 152: "ResNet152"}
QUEUE = 4096
DIM = 128
HIDDEN = 2048
TEMPERATURE = 0.2
MOMENTUM = 0.999
LR = 0.03
WEIGHT_DECAY = 1e-4
MISSING_TORCH = (
    "bench_vs_pytorch: PyTorch is not installed; it is an optional benchmark "
    "dependency: pip install -e '.[bench]' (torch, torchvision), or leave "
    "it out with --frameworks=keras,matl"
)
# Settings a variant may change (`--frameworks=matl@intra_op=2+onednn=0`):
# the flags of the same name, and `onednn` (TF_ENABLE_ONEDNN_OPTS).
VARIANT_OPTIONS = {
    "intra_op",
    "inter_op",
    "torch_threads",
    "batchnorm_groups",
    "fuse_groups",
    "keys_outside_tape",
    "onednn",
}
# The flags every worker process is started with (the variant options but
# `onednn`, an environment variable).
WORKER_FLAGS = (
    "depth",
    "image_size",
    "batch_size",
    "steps",
    "warmup",
    *sorted(VARIANT_OPTIONS - {"onednn"}),
)
# Lines of a worker's stdout that carry its answers (TF may print too).
MARK = "@@bench "

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags (defined when run, not on import: the tests
    import this file)."""
    flags.DEFINE_enum("depth", "50", ["50", "101", "152"], "ResNet depth.")
    flags.DEFINE_integer("image_size", 128, "Image side.")
    flags.DEFINE_integer("batch_size", 32, "Batch size.")
    flags.DEFINE_integer("steps", 8, "Timed steps per round.")
    flags.DEFINE_integer("warmup", 2, "Untimed steps after building.")
    flags.DEFINE_integer("rounds", 2, "Rounds, the frameworks taking turns.")
    flags.DEFINE_list("frameworks", list(FRAMEWORKS), "Frameworks to time.")
    flags.DEFINE_string("out", "", "JSON output path (empty: none).")
    flags.DEFINE_integer("intra_op", 0, "TF intra-op threads (0: TF's).")
    flags.DEFINE_integer("inter_op", 0, "TF inter-op threads (0: TF's).")
    flags.DEFINE_integer("torch_threads", 0, "PyTorch threads (0: its own).")
    flags.DEFINE_string(
        "batchnorm_groups", "auto", "matl-keras shuffle-BN groups."
    )
    flags.DEFINE_string(
        "fuse_groups",
        "",
        "matl-keras: grouped BatchNorm on the fused kernel (1) or from "
        "moments (0); empty: the code's default.",
    )
    flags.DEFINE_bool(
        "keys_outside_tape",
        False,
        "matl-keras: the key encoder's forward before the gradient tape.",
    )
    flags.DEFINE_enum("worker", "", ["", *FRAMEWORKS], "(internal)")


# --- pure parts (tested) ---------------------------------------------------


def missing_extra(find_spec=importlib.util.find_spec) -> str | None:
    """The one-line error when the `bench` extra is not installed, else
    None."""
    for module in ("torch", "torchvision"):
        if find_spec(module) is None:
            return MISSING_TORCH
    return None


def summarize(
    times: dict[str, list[list[float]]], batch_size: int
) -> list[dict]:
    """Rows of the table from `times[framework][round]` (seconds per
    step): img/s of the median step per round and over all steps, of the
    fastest step (on a shared machine other jobs only slow a step down),
    and both rates relative to PyTorch's (None without PyTorch)."""
    rows = []
    for name, rounds in times.items():
        every = [t for steps in rounds for t in steps]
        rows.append(
            {
                "framework": name,
                "per_round": [
                    batch_size / statistics.median(steps) for steps in rounds
                ],
                "median": batch_size / statistics.median(every),
                "best": batch_size / min(every),
            }
        )
    base = next((r for r in rows if r["framework"] == "pytorch"), None)
    for row in rows:
        for key in ("median", "best"):
            row[f"{key}_vs_pytorch"] = row[key] / base[key] if base else None
    return rows


def _ratio(value) -> str:
    return "-" if value is None else f"{value:.2f}x"


def markdown_table(rows: list[dict], threads: dict[str, str]) -> str:
    """The Markdown table of `summarize`'s rows."""
    lines = [
        "| framework | threads | img/s per round | img/s median | "
        "vs PyTorch | img/s best step | vs PyTorch |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        per_round = " / ".join(f"{r:.2f}" for r in row["per_round"])
        lines.append(
            f"| {label(row['framework'])} | "
            f"{threads.get(row['framework'], '-')} | {per_round} | "
            f"{row['median']:.2f} | {_ratio(row['median_vs_pytorch'])} | "
            f"{row['best']:.2f} | {_ratio(row['best_vs_pytorch'])} |"
        )
    return "\n".join(lines)


def parse_framework(spec: str) -> tuple[str, dict[str, str]]:
    """`matl@intra_op=2+inter_op=1` -> ("matl", {"intra_op": "2", ...}):
    a framework and the settings of this variant (`VARIANT_OPTIONS`)."""
    base, _, rest = spec.partition("@")
    if base not in FRAMEWORKS:
        raise ValueError(f"unknown framework {base!r} in {spec!r}")
    options = {}
    for item in filter(None, rest.split("+")):
        key, sep, value = item.partition("=")
        if not sep or key not in VARIANT_OPTIONS:
            raise ValueError(
                f"unknown variant setting {item!r} in {spec!r}: use "
                f"key=value with a key of {sorted(VARIANT_OPTIONS)}"
            )
        options[key] = value
    return base, options


def label(spec: str) -> str:
    """The table's name of a framework or variant."""
    base, options = parse_framework(spec)
    if not options:
        return LABELS[base]
    settings = ", ".join(f"{k}={v}" for k, v in options.items())
    return f"{LABELS[base]} [{settings}]"


def round_order(frameworks: list[str], round_: int) -> list[str]:
    """The frameworks' turns in round `round_` (rotated each round)."""
    shift = round_ % len(frameworks) if frameworks else 0
    return frameworks[shift:] + frameworks[:shift]


# --- the workers (one subprocess per framework) ----------------------------


def _answer(kind: str, value) -> None:
    print(f"{MARK}{kind} {json.dumps(value)}", flush=True)


def _serve(step, info: dict, steps: int) -> None:
    """Answers `run` (times `steps` steps, each alone) until `quit`."""
    _answer("ready", info)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        _answer("times", times)


def _tf_threads(intra: int, inter: int) -> str:
    import tensorflow as tf

    if intra:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
    if inter:
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    got_intra = tf.config.threading.get_intra_op_parallelism_threads()
    got_inter = tf.config.threading.get_inter_op_parallelism_threads()
    onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on)")
    return (
        f"TF intra {got_intra or 'auto'} / inter {got_inter or 'auto'}, "
        f"oneDNN {onednn}"
    )


def torch_worker(depth, image_size, batch_size, warmup, threads):
    """A plain MoCo v2 step in PyTorch; returns (step, info)."""
    import torch
    import torch.nn.functional as F
    import torchvision
    from torch import nn

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)

    def encoder():
        net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
        net.fc = nn.Sequential(
            nn.Linear(net.fc.in_features, HIDDEN),
            nn.ReLU(inplace=True),
            nn.Linear(HIDDEN, DIM),
        )
        return net

    query_net = encoder().train()
    key_net = encoder().train()
    key_net.load_state_dict(query_net.state_dict())
    for p in key_net.parameters():
        p.requires_grad_(False)
    optimizer = torch.optim.SGD(
        query_net.parameters(), LR, momentum=0.9, weight_decay=WEIGHT_DECAY
    )
    queue = F.normalize(torch.randn(DIM, QUEUE), dim=0)
    pointer = [0]
    shape = (batch_size, 3, image_size, image_size)
    x_query, x_key = torch.rand(shape), torch.rand(shape)
    labels = torch.zeros(batch_size, dtype=torch.long)

    def step():
        q = F.normalize(query_net(x_query), dim=1)
        with torch.no_grad():
            for pk, pq in zip(key_net.parameters(), query_net.parameters()):
                pk.mul_(MOMENTUM).add_(pq.detach(), alpha=1.0 - MOMENTUM)
            k = F.normalize(key_net(x_key), dim=1)
        positive = (q * k).sum(dim=1, keepdim=True)
        negative = q @ queue
        logits = torch.cat([positive, negative], dim=1) / TEMPERATURE
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            start = pointer[0]
            queue[:, start : start + batch_size] = k.T
            pointer[0] = (start + batch_size) % QUEUE
        return loss.item()

    for _ in range(warmup):
        step()
    info = {
        "threads": f"torch {torch.get_num_threads()} / interop "
        f"{torch.get_num_interop_threads()}",
        "version": torch.__version__,
    }
    return step, info


def keras_worker(depth, image_size, batch_size, warmup, intra, inter):
    """The same step in plain Keras 3; returns (step, info)."""
    threads = _tf_threads(intra, inter)
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    resnet = getattr(keras.applications, KERAS_RESNETS[depth])

    def encoder(name):
        base = resnet(
            weights=None,
            include_top=False,
            pooling="avg",
            input_shape=(image_size, image_size, 3),
        )
        x = keras.layers.Dense(HIDDEN, activation="relu")(base.output)
        x = keras.layers.Dense(DIM)(x)
        return keras.Model(base.input, x, name=name)

    query_net = encoder("query")
    key_net = encoder("key")
    key_net.set_weights(query_net.get_weights())
    variables = query_net.trainable_variables
    optimizer = keras.optimizers.SGD(
        LR, momentum=0.9, weight_decay=WEIGHT_DECAY
    )
    optimizer.build(variables)
    queue = tf.Variable(
        tf.math.l2_normalize(tf.random.normal([QUEUE, DIM]), axis=1)
    )
    pointer = tf.Variable(0)
    shape = (batch_size, image_size, image_size, 3)
    x_query = tf.random.uniform(shape)
    x_key = tf.random.uniform(shape)
    labels = tf.zeros([batch_size], tf.int32)

    @tf.function
    def train_step(x_query, x_key):
        for wk, wq in zip(key_net.trainable_variables, variables):
            wk.assign(MOMENTUM * wk + (1.0 - MOMENTUM) * wq)
        k = tf.stop_gradient(
            tf.math.l2_normalize(key_net(x_key, training=True), axis=1)
        )
        with tf.GradientTape() as tape:
            q = tf.math.l2_normalize(query_net(x_query, training=True), axis=1)
            positive = tf.reduce_sum(q * k, axis=1, keepdims=True)
            negative = tf.matmul(q, queue, transpose_b=True)
            logits = tf.concat([positive, negative], axis=1) / TEMPERATURE
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
            )
        gradients = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(gradients, variables))
        slots = ((pointer + tf.range(batch_size)) % QUEUE)[:, None]
        queue.assign(tf.tensor_scatter_nd_update(queue, slots, k))
        pointer.assign((pointer + batch_size) % QUEUE)
        return loss

    def step():
        return float(train_step(x_query, x_key))

    for _ in range(warmup):
        step()
    return step, {"threads": threads, "version": keras.__version__}


def keys_outside_tape(model) -> None:
    """Patches `model` so that its step computes the keys before opening
    the gradient tape (the key encoder's forward off the tape)."""
    step, encode_keys = model.train_step, model.encode_keys

    def train_step(data):
        views, _ = data
        keys = encode_keys(views["key"])
        model.encode_keys = lambda images: keys
        try:
            return step(data)
        finally:
            model.encode_keys = encode_keys

    model.train_step = train_step


def matl_worker(
    depth, image_size, batch_size, warmup, intra, inter, groups, variant
):
    """matl-keras's MoCo step as tools/bench_ssl.py builds it; returns
    (step, info). `variant`: `fuse_groups` ("", "0", "1") and
    `keys_outside_tape` (bool)."""
    threads = _tf_threads(intra, inter)
    import keras

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_ssl

    import matl_keras
    from matl_keras.layers.fused_batch_norm import FusedBatchNormalization

    if variant["fuse_groups"]:
        FusedBatchNormalization.fuse_groups = variant["fuse_groups"] == "1"
    step_fn, batch, _ = bench_ssl.prepare_method(
        bench_ssl._factory("moco"),
        bench_ssl.bench_images(batch_size, image_size),
        depth=depth,
        width=1.0,
        image_size=image_size,
        batch_size=batch_size,
        optimizer=keras.optimizers.SGD(
            LR, momentum=0.9, weight_decay=WEIGHT_DECAY
        ),
        batchnorm_groups=int(groups) if groups.isdigit() else groups,
        warmup=warmup,
        before_trace=(
            keys_outside_tape if variant["keys_outside_tape"] else None
        ),
    )

    def step():
        return float(step_fn(batch)["loss"])

    threads += f", grouped BN fused: {FusedBatchNormalization.fuse_groups}"
    return step, {"threads": threads, "version": matl_keras.__version__}


def run_worker(name: str) -> None:
    depth = int(FLAGS.depth)
    common = (depth, FLAGS.image_size, FLAGS.batch_size, FLAGS.warmup)
    if name == "pytorch":
        step, info = torch_worker(*common, FLAGS.torch_threads)
    elif name == "keras":
        step, info = keras_worker(*common, FLAGS.intra_op, FLAGS.inter_op)
    else:
        step, info = matl_worker(
            *common,
            FLAGS.intra_op,
            FLAGS.inter_op,
            FLAGS.batchnorm_groups,
            {
                "fuse_groups": FLAGS.fuse_groups,
                "keys_outside_tape": FLAGS.keys_outside_tape,
            },
        )
    _serve(step, info, FLAGS.steps)


# --- the parent ------------------------------------------------------------


class Worker:
    """One framework's subprocess."""

    def __init__(self, spec: str, argv: list[str]):
        self.name = spec
        base, options = parse_framework(spec)
        env = dict(os.environ)
        if "onednn" in options:
            env["TF_ENABLE_ONEDNN_OPTS"] = options.pop("onednn")
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), f"--worker={base}"]
            + argv
            + [f"--{k}={v}" for k, v in options.items()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def read(self, kind: str):
        for line in self.process.stdout:
            if line.startswith(MARK):
                got, _, value = line[len(MARK) :].partition(" ")
                if got == kind:
                    return json.loads(value)
        raise RuntimeError(
            f"the {self.name} worker exited (code {self.process.wait()}) "
            f"before answering '{kind}'"
        )

    def run(self) -> list[float]:
        self.process.stdin.write("run\n")
        self.process.stdin.flush()
        return self.read("times")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.write("quit\n")
            self.process.stdin.close()
            self.process.wait()


def _uptime() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def main(argv):
    del argv
    if FLAGS.worker:
        run_worker(FLAGS.worker)
        return 0
    frameworks = list(dict.fromkeys(FLAGS.frameworks))
    try:
        bases = {parse_framework(spec)[0] for spec in frameworks}
    except ValueError as error:
        raise app.UsageError(f"--frameworks: {error}") from None
    if not frameworks:
        raise app.UsageError(f"--frameworks: choose from {FRAMEWORKS}")
    if "pytorch" in bases and missing_extra():
        print(MISSING_TORCH, file=sys.stderr)
        return 1
    forwarded = [f"--{name}={getattr(FLAGS, name)}" for name in WORKER_FLAGS]
    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = _uptime()
    workers, info = {}, {}
    try:
        for name in frameworks:  # built one after the other
            build = time.perf_counter()
            workers[name] = Worker(name, forwarded)
            info[name] = workers[name].read("ready")
            print(
                f"{name}: built and warmed up in "
                f"{time.perf_counter() - build:.0f} s, "
                f"{info[name]['threads']}",
                flush=True,
            )
        times = {name: [] for name in frameworks}
        loads = []  # 1-minute load average after each turn
        for round_ in range(FLAGS.rounds):
            for name in round_order(frameworks, round_):
                steps = workers[name].run()
                times[name].append(steps)
                loads.append(os.getloadavg()[0])
                rate = FLAGS.batch_size / statistics.median(steps)
                print(
                    f"round {round_ + 1} {name}: {rate:.2f} img/s "
                    f"(median of {len(steps)} steps; load {loads[-1]:.2f})",
                    flush=True,
                )
    finally:
        for worker in workers.values():
            worker.close()
    rows = summarize(times, FLAGS.batch_size)
    threads = {name: info[name]["threads"] for name in frameworks}
    header = (
        f"MoCo v2 step, ResNet-{FLAGS.depth}, {FLAGS.image_size} px, batch "
        f"{FLAGS.batch_size}, {os.cpu_count()} CPU cores; median step of "
        f"{FLAGS.rounds} round(s) x {FLAGS.steps} steps after "
        f"{FLAGS.warmup} warm-up; {started:%Y-%m-%d %H:%M} UTC, load "
        f"{load_before} before, {_uptime()} after"
    )
    print("\n" + header)
    print(markdown_table(rows, threads))
    if FLAGS.out:
        record = {
            "settings": {
                name: getattr(FLAGS, name) for name in (*WORKER_FLAGS, "rounds")
            },
            "tf_enable_onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
            "cpu_count": os.cpu_count(),
            "started_utc": started.isoformat(timespec="seconds"),
            "load_before": load_before,
            "load_after": _uptime(),
            "load_per_turn": loads,
            "workers": info,
            "step_seconds": times,
            "rows": rows,
        }
        with open(FLAGS.out, "w") as f:
            json.dump(record, f, indent=2)
        print(f"wrote {FLAGS.out}")
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
