"""The pure parts of tools/profile_step.py: op classes, step parts, and
reading op events from an XSpace proto (a profiled step is a tool's run,
not a test's)."""

import importlib.util
import os

import pytest
from tensorflow.tsl.profiler.protobuf import xplane_pb2

PATH = os.path.join(
    os.path.dirname(__file__), "..", "..", "tools", "profile_step.py"
)
spec = importlib.util.spec_from_file_location("profile_step", PATH)
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)


@pytest.mark.parametrize(
    "name, op_type, expected",
    [
        (
            "resnet_1/conv2_block1_1_conv_1/BiasAdd",
            "_MklNativeFusedConv2D",
            "conv forward",
        ),
        ("resnet/conv1_conv/convolution", "Conv2D", "conv forward"),
        (
            "gradient_tape/resnet_1/conv1_conv_1/convolution/"
            "Conv2DBackpropFilter",
            "_MklNativeConv2DBackpropFilterWithBias",
            "conv backward-filter",
        ),
        (
            "gradient_tape/x/Conv2DBackpropInput",
            "_MklNativeConv2DBackpropInput",
            "conv backward-input",
        ),
        ("resnet_1/conv1_bn_1/FusedBatchNormV3", "_MklFusedBatchNormV3", "BN"),
        ("gradient_tape/resnet_1/conv1_bn_1/mul/Mul_1", "Mul", "BN"),
        ("resnet_1/conv2_block1_3_bn_1/moments/variance", "Mean", "BN"),
        ("resnet_1/conv1_relu_1/Relu", "Relu", "elementwise"),
        (
            "gradient_tape/resnet_1/conv1_relu_1/ReluGrad",
            "ReluGrad",
            "elementwise",
        ),
        ("add_3", "_MklAddV2", "elementwise"),
        ("projector_1/projector_hidden_1/MatMul", "_MklMatMul", "matmul"),
        ("sgd/AssignSubVariableOp_17", "AssignSubVariableOp", "optimizer"),
        ("sgd/Mul_545", "Mul", "optimizer"),
        (
            "SGD/update/ResourceApplyMomentum",
            "ResourceApplyMomentum",
            "optimizer",
        ),
        ("momentum_update/mul_372", "Mul", "momentum update"),
        ("enqueue/TensorScatterUpdate", "TensorScatterUpdate", "queue"),
        ("queue_mask/Equal", "Equal", "queue"),
        ("encode_keys/CollectiveGatherV2", "CollectiveGatherV2", "all-gather"),
        ("resnet_1/max_pooling2d/MaxPool", "_MklNativeMaxPool", "other"),
    ],
)
def test_op_classes(name, op_type, expected):
    assert tool.op_class(name, op_type) == expected


def test_step_parts():
    key = "encode_keys/key_resnet_1/conv1_conv_1/BiasAdd"
    assert tool.step_part(key, "_MklNativeFusedConv2D") == (
        "key encoder forward"
    )
    assert tool.step_part("momentum_update/mul", "Mul") == "momentum update"
    assert tool.step_part("enqueue/Assign", "AssignVariableOp") == "enqueue"
    assert tool.step_part("sgd/Mul_1", "Mul") == "optimizer"
    assert tool.step_part("queue_mask/Equal", "Equal") == (
        "query forward+backward, loss"
    )
    assert tool.step_part("resnet_1/conv1_relu_1/Relu", "Relu") == (
        "query forward+backward, loss"
    )


def _xspace():
    """A host plane with two executor threads, and a device plane that is
    not read."""
    space = xplane_pb2.XSpace()
    plane = space.planes.add(name="/host:CPU")
    kinds = {
        1: ("resnet/conv1/Conv2D:Conv2D", "Conv2D"),
        2: ("resnet/conv1_relu/Relu:Relu", "Relu"),
        3: ("ExecutorState::Process", ""),
        4: (
            "StatefulPartitionedCall:StatefulPartitionedCall",
            "StatefulPartitionedCall",
        ),
        5: ("sgd/a:b:Mul", "Mul"),
    }
    for i, (name, display) in kinds.items():
        plane.event_metadata[i].id = i
        plane.event_metadata[i].name = name
        plane.event_metadata[i].display_name = display
    one = plane.lines.add(name="tf_Compute/1")
    one.events.add(metadata_id=1, duration_ps=3_000_000_000)  # 3 ms
    one.events.add(metadata_id=3, duration_ps=9_000_000_000)
    two = plane.lines.add(name="tf_Compute/2")
    two.events.add(metadata_id=2, duration_ps=1_000_000_000)
    two.events.add(metadata_id=4, duration_ps=9_000_000_000)
    two.events.add(metadata_id=5, duration_ps=2_000_000_000)
    two.events.add(metadata_id=1, duration_ps=2_000_000_000)
    device = space.planes.add(name="/device:GPU:0")
    device.event_metadata[1].name = "x:Conv2D"
    device.event_metadata[1].display_name = "Conv2D"
    device.lines.add(name="stream").events.add(
        metadata_id=1, duration_ps=10**12
    )
    return space


def test_op_events_read_only_op_kernels_of_the_host_plane():
    events = tool.op_events(_xspace())
    assert sorted((n, t, round(s * 1e3, 6)) for n, t, s in events) == [
        ("resnet/conv1/Conv2D", "Conv2D", 2.0),
        ("resnet/conv1/Conv2D", "Conv2D", 3.0),
        ("resnet/conv1_relu/Relu", "Relu", 1.0),
        ("sgd/a:b", "Mul", 2.0),
    ]


def test_breakdown_per_step_and_percent():
    events = tool.op_events(_xspace())
    table = tool.breakdown(events, steps=2)
    assert list(table) == ["conv forward", "optimizer", "elementwise"]
    assert table["conv forward"]["ms_per_step"] == pytest.approx(2.5)
    assert table["conv forward"]["percent"] == pytest.approx(62.5)
    assert table["elementwise"]["percent"] == pytest.approx(12.5)
    text = tool.markdown(table, "op class")
    assert "| conv forward | 2.5 | 62.5 |" in text
    assert text.splitlines()[-1] == "| total | 4.0 | 100.0 |"
    assert tool.top_types(events, 2)[0] == ("Conv2D", "conv forward", 2.5)


def test_the_supervised_step_it_profiles_trains():
    # `--step=supervised`, tiny: the same builder at ResNet-18, 32 px.
    step, batch = tool.supervised_step(
        depth=18, image_size=32, batch_size=2, warmup=1
    )
    # One fixed batch, one label: the (running mean) loss falls.
    losses = [float(step(batch)["loss"]) for _ in range(6)]
    assert losses[-1] < losses[0], losses
