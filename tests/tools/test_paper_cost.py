"""The arithmetic of tools/paper_cost.py (its FLOP counting builds
ResNet-50s: a tool's run, not a unit test's)."""

import importlib.util
import os
import sys

import pytest

PATH = os.path.join(
    os.path.dirname(__file__), "..", "..", "tools", "paper_cost.py"
)
spec = importlib.util.spec_from_file_location("paper_cost", PATH)
tool = importlib.util.module_from_spec(spec)
sys.modules["paper_cost"] = tool  # its dataclass looks itself up there
spec.loader.exec_module(tool)


def test_training_flops_are_three_trained_forwards_plus_one_key_forward():
    assert tool.training_flops_per_image(2.0) == 6.0
    # MoCo: query forward+backward, key encoder forward only.
    assert tool.training_flops_per_image(2.0, 2.0) == 8.0


def test_schedule_drops_the_partial_last_batch():
    # COVID19-CT's 425 train images at batch 256: one step per epoch.
    assert tool.schedule(425, 256, 200) == {
        "images_per_epoch": 256,
        "epochs": 200,
        "steps": 200,
        "images_seen": 51_200,
    }
    assert tool.schedule(1_281_167, 512, 90)["steps"] == 2502 * 90
    with pytest.raises(ValueError, match="fewer than one batch"):
        tool.schedule(100, 256, 1)


def test_the_reference_network_costs_its_published_throughput():
    # A stage that *is* the reference (ResNet-50, 90 ImageNet epochs) takes
    # images / (reference img/s) whatever its FLOPs count: 1 281 024 x 90
    # images at 2375 img/s = 13.48 h.
    forward = 4.1  # GFLOPs, any value
    rate = tool.effective_flops_per_second(
        2375.0, tool.training_flops_per_image(forward) * 1e9
    )
    stage = tool.Stage("stl_n", "r50", 1_281_167, 512, 90, forward)
    row = stage.row({"A100": rate})
    assert row["images_seen"] == 1_281_024 * 90
    assert row["gpu_hours"]["A100"] == pytest.approx(
        1_281_024 * 90 / 2375.0 / 3600.0
    )
    assert row["gpu_hours"]["A100"] == pytest.approx(13.48, abs=0.01)
    # Units: 3 x 4.1 GFLOPs x 115 292 160 images = 1418.1 PFLOPs.
    assert row["total_pflops"] == pytest.approx(
        3 * 4.1e9 * 1_281_024 * 90 / 1e15
    )


def test_a_model_twice_as_costly_takes_twice_the_gpu_hours():
    rate = tool.effective_flops_per_second(1000.0, 30e9)  # 30 TFLOP/s
    assert rate == 30e12
    cheap = tool.Stage("a", "m", 1000, 100, 2, 10.0).row({"g": rate})
    key = tool.Stage("b", "m", 1000, 100, 2, 10.0, 30.0).row({"g": rate})
    assert cheap["train_gflops_per_image"] == 30.0
    assert key["train_gflops_per_image"] == 60.0
    # 2000 images x 30 GFLOPs at 30 TFLOP/s = 2 s.
    assert cheap["gpu_hours"]["g"] == pytest.approx(2.0 / 3600.0)
    assert key["gpu_hours"]["g"] == pytest.approx(2 * cheap["gpu_hours"]["g"])


def test_totals_leave_out_the_comparison_rows():
    rows = [
        tool.Stage("sstl_m", "m", 1000, 100, 1, 1.0).row({"g": 1e12}),
        tool.Stage("sstl_m:moco", "m", 1000, 100, 1, 5.0, in_total=False).row(
            {"g": 1e12}
        ),
    ]
    total = tool.totals(rows)
    assert total["total_pflops"] == pytest.approx(rows[0]["total_pflops"])
    assert total["gpu_hours"]["g"] == pytest.approx(rows[0]["gpu_hours"]["g"])
    table = tool.markdown(rows, total)
    assert table[-1].startswith("| total |")
    assert "| (sstl_m:moco) |" in table[3]


def test_grid_names_parse():
    assert tool.grid_networks(["50:none", "101:5", "50"]) == [
        (50, "none"),
        (101, "5"),
        (50, "none"),
    ]
