"""The pure parts of tools/bench_vs_pytorch.py (the table, the median and
ratio arithmetic, the error without PyTorch), and a tiny run of all three
frameworks (slow; skipped without PyTorch)."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

PATH = os.path.join(
    os.path.dirname(__file__), "..", "..", "tools", "bench_vs_pytorch.py"
)
spec = importlib.util.spec_from_file_location("bench_vs_pytorch", PATH)
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)

TIMES = {
    "pytorch": [[1.0, 2.0, 3.0], [2.0]],
    "keras": [[4.0], [4.0]],
    "matl": [[0.5, 0.5], [1.0]],
}


def test_rates_are_the_median_step_per_round_and_overall():
    rows = {r["framework"]: r for r in tool.summarize(TIMES, batch_size=4)}
    assert rows["pytorch"]["per_round"] == [2.0, 2.0]
    assert rows["pytorch"]["median"] == 2.0  # median of 1, 2, 3, 2
    assert rows["pytorch"]["best"] == 4.0  # the 1-second step
    assert rows["matl"]["per_round"] == [8.0, 4.0]
    assert rows["matl"]["median"] == 8.0  # median of 0.5, 0.5, 1.0
    assert rows["matl"]["best"] == 8.0
    assert rows["matl"]["median_vs_pytorch"] == 4.0
    assert rows["matl"]["best_vs_pytorch"] == 2.0
    assert rows["keras"]["median_vs_pytorch"] == 0.5
    assert rows["keras"]["best_vs_pytorch"] == 0.25
    assert rows["pytorch"]["median_vs_pytorch"] == 1.0


def test_no_ratio_without_pytorch():
    rows = tool.summarize({"matl": [[1.0]]}, batch_size=2)
    assert rows == [
        {
            "framework": "matl",
            "per_round": [2.0],
            "median": 2.0,
            "best": 2.0,
            "median_vs_pytorch": None,
            "best_vs_pytorch": None,
        }
    ]
    table = tool.markdown_table(rows, {})
    assert table.splitlines()[-1] == (
        "| matl-keras (bench_ssl MoCo) | - | 2.00 | 2.00 | - | 2.00 | - |"
    )


def test_markdown_table():
    rows = tool.summarize(TIMES, batch_size=4)
    table = tool.markdown_table(rows, {"pytorch": "torch 2 / interop 2"})
    lines = table.splitlines()
    assert lines[0].startswith("| framework | threads | img/s per round")
    assert lines[1] == "|---|---|---|---|---|---|---|"
    assert lines[2] == (
        "| PyTorch (torchvision ResNet, eager) | torch 2 / interop 2 | "
        "2.00 / 2.00 | 2.00 | 1.00x | 4.00 | 1.00x |"
    )
    assert lines[4].endswith("| 8.00 / 4.00 | 8.00 | 4.00x | 8.00 | 2.00x |")
    assert len(lines) == 5


def test_turns_rotate_per_round():
    names = ["pytorch", "keras", "matl"]
    assert tool.round_order(names, 0) == names
    assert tool.round_order(names, 1) == ["keras", "matl", "pytorch"]
    assert tool.round_order(names, 3) == names


def test_missing_extra_names_the_extra():
    real = importlib.util.find_spec
    assert tool.missing_extra(lambda name: object()) is None
    message = tool.missing_extra(
        lambda name: None if name == "torchvision" else real("os")
    )
    assert "'.[bench]'" in message and "\n" not in message


# Runs the tool as a script with `torch` and `torchvision` unfindable.
WITHOUT_TORCH = """
import importlib.util, runpy, sys
real = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: (
    None if name.split(".")[0] in ("torch", "torchvision") else real(name, *a)
)
sys.argv = [sys.argv[1], "--frameworks=pytorch,matl"]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_without_torch_one_clear_line_and_no_traceback():
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCH, PATH],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == tool.MISSING_TORCH
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.slow
def test_tiny_run_of_the_three_frameworks(tmp_path):
    # Not imported here: torch imported after TensorFlow (conftest) crashes
    # the process, which is why the tool runs each framework in its own.
    if tool.missing_extra():
        pytest.skip("the bench extra (torch, torchvision) is not installed")
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [
            sys.executable,
            PATH,
            "--image_size=32",
            "--batch_size=4",
            "--steps=1",
            "--warmup=1",
            "--rounds=1",
            f"--out={out}",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(out.read_text())
    assert [r["framework"] for r in record["rows"]] == list(tool.FRAMEWORKS)
    assert all(r["median"] > 0 for r in record["rows"])
    assert "| PyTorch (torchvision ResNet, eager) |" in result.stdout
    assert set(record["workers"]) == set(tool.FRAMEWORKS)


def test_variants_parse_and_label():
    assert tool.parse_framework("matl") == ("matl", {})
    assert tool.parse_framework("matl@intra_op=2+onednn=0") == (
        "matl",
        {"intra_op": "2", "onednn": "0"},
    )
    assert tool.label("matl@fuse_groups=1") == (
        "matl-keras (bench_ssl MoCo) [fuse_groups=1]"
    )
    with pytest.raises(ValueError, match="unknown framework 'jax'"):
        tool.parse_framework("jax")
    with pytest.raises(ValueError, match="unknown variant setting 'x=1'"):
        tool.parse_framework("keras@x=1")
    with pytest.raises(ValueError, match="'intra_op'"):
        tool.parse_framework("keras@intra_op")
