"""tools/benchmark.py: the roofline's convolution timings time what they
count (the timings themselves are the tool's run, not a test's)."""

import importlib.util
import os
import sys

import numpy as np
import tensorflow as tf

TOOLS = os.path.join(os.path.dirname(__file__), "..", "..", "tools")
sys.path.insert(0, TOOLS)  # benchmark.py imports tools/timing.py
spec = importlib.util.spec_from_file_location(
    "benchmark", os.path.join(TOOLS, "benchmark.py")
)
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)


def test_the_train_timing_computes_the_forward_convolution_too():
    # The "train" rate counts three convolutions (forward, backward-input,
    # backward-filter); its function must return something that depends on
    # all three, or Grappler prunes the forward one from the timed graph.
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(0.5, 1.0, (2, 5, 5, 3)).astype("float32"))
    w = tf.Variable(rng.uniform(0.5, 1.0, (3, 3, 3, 4)).astype("float32"))
    forward, train = tool.conv_functions(x, w)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.reduce_sum(tf.nn.conv2d(x, w, 1, "SAME"))
    dx, dw = tape.gradient(y, [x, w])
    gradients = float(tf.reduce_sum(dx) + tf.reduce_sum(dw))
    np.testing.assert_allclose(float(forward()), float(y), rtol=1e-5)
    np.testing.assert_allclose(float(train()), float(y) + gradients, rtol=1e-5)
    # y is no rounding error beside the gradients: a train() that dropped
    # it would miss by this much.
    assert float(y) > 0.1 * gradients
