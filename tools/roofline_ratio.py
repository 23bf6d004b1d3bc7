"""The supervised training step as a share of the conv roofline, measured
in interleaved rounds so that the machine's speed drifts out of the ratio.

    python tools/roofline_ratio.py [--depth=50] [--image_size=224] \
        [--batch_size=8] [--rounds=12] [--attention=none] [--conv_bias]

`tools/benchmark.py` measures the roofline first and the steps minutes
later, each in its own process; on a shared host whose speed moves by
10-30% within minutes (other tenants: CPU steal up to 28% seen), the
percentage it prints moves as much. Here one process alternates, per
round: the conv training roofline (forward + both backward kernels of the
ResNet-50 3x3 shapes that set it, the fastest counted) and two steps of the
same supervised ResNet model the benchmark times (`benchmark.step`'s
FLOP count: forward FLOPs from the profiler, training = 3x). Each round
gives achieved / roofline; the median over rounds is the figure, with the
spread of the rounds. Output: one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchmark  # noqa: E402  (tools/benchmark.py: shared measurement code)

# 3x3 ResNet-50 shapes (batch 32) whose training rate sets the roofline.
SHAPES = ((32, 28, 128, 128), (32, 14, 256, 256), (32, 7, 512, 512))


def define_flags() -> None:
    flags.DEFINE_integer("depth", 50, "ResNet depth.")
    flags.DEFINE_integer("image_size", 224, "Input side.")
    flags.DEFINE_integer("batch_size", 8, "Batch of the timed steps.")
    flags.DEFINE_integer("rounds", 12, "Interleaved rounds.")
    flags.DEFINE_integer("steps", 2, "Timed model steps per round.")
    flags.DEFINE_string("attention", "none", "ATTENTION placement.")
    flags.DEFINE_boolean(
        "conv_bias", False, "The older layout with conv biases (A/B)."
    )


def measure(
    depth: int,
    image_size: int,
    batch_size: int,
    rounds: int,
    steps: int = 2,
    attention: str = "none",
    shapes=SHAPES,
    conv_bias: bool = False,
) -> dict:
    """Interleaved roofline / step rounds; returns the ratios."""
    import numpy as np
    import tensorflow as tf

    convs = []
    for batch, side, channels, out in shapes:
        x = tf.random.normal([batch, side, side, channels])
        w = tf.Variable(tf.random.normal([3, 3, channels, out]) * 0.01)
        _, train = benchmark.conv_functions(x, w)
        train()  # trace
        convs.append((3 * 2 * batch * side * side * channels * out * 9, train))
    model = benchmark.supervised_model(
        depth, image_size, attention, conv_bias=conv_bias
    )
    train_flops = 3 * benchmark.forward_flops(model, image_size)
    rng = np.random.default_rng(0)
    data = (
        tf.constant(
            rng.uniform(0, 1, (batch_size, image_size, image_size, 3)),
            tf.float32,
        ),
        tf.zeros([batch_size], tf.int32),
    )
    model.make_train_function()
    iterator = iter(tf.data.Dataset.from_tensors(data).repeat())

    def one_step():
        float(model.train_function(iterator)["loss"])

    one_step()
    one_step()
    per_round = []
    for _ in range(rounds):
        roofline = 0.0
        for flops, train in convs:
            times = []
            for _ in range(3):
                start = time.perf_counter()
                float(train())
                times.append(time.perf_counter() - start)
            roofline = max(roofline, flops / min(times) / 1e9)
        start = time.perf_counter()
        for _ in range(steps):
            one_step()
        seconds = (time.perf_counter() - start) / steps
        achieved = batch_size * train_flops / seconds / 1e9
        per_round.append(
            {
                "roofline_gflops": round(roofline, 3),
                "achieved_gflops": round(achieved, 3),
                "ratio": round(achieved / roofline, 4),
            }
        )
    ratios = sorted(r["ratio"] for r in per_round)
    return {
        "depth": depth,
        "image_size": image_size,
        "batch_size": batch_size,
        "attention": attention,
        "conv_bias": conv_bias,
        "rounds": per_round,
        "median_ratio": ratios[len(ratios) // 2],
        "min_ratio": ratios[0],
        "max_ratio": ratios[-1],
    }


def main(argv):
    del argv
    flags_ = flags.FLAGS
    result = measure(
        flags_.depth,
        flags_.image_size,
        flags_.batch_size,
        flags_.rounds,
        flags_.steps,
        flags_.attention,
        conv_bias=flags_.conv_bias,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    define_flags()
    app.run(main)
