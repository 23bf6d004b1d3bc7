"""tools/roofline_ratio.py on a tiny model (the measurement is the tool's
run, not a test's)."""

import importlib.util
import os
import sys

import pytest

TOOLS = os.path.join(os.path.dirname(__file__), "..", "..", "tools")
sys.path.insert(0, TOOLS)
spec = importlib.util.spec_from_file_location(
    "roofline_ratio", os.path.join(TOOLS, "roofline_ratio.py")
)
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)


# slow: builds and profiles a ResNet (~6 s) for a tool's arithmetic.
@pytest.mark.slow
def test_rounds_interleave_and_give_a_median_ratio():
    result = tool.measure(
        depth=18,
        image_size=32,
        batch_size=2,
        rounds=3,
        steps=1,
        shapes=((2, 4, 8, 8),),
    )
    assert len(result["rounds"]) == 3
    for r in result["rounds"]:
        assert r["roofline_gflops"] > 0 and r["achieved_gflops"] > 0
        assert (
            abs(r["ratio"] - r["achieved_gflops"] / r["roofline_gflops"])
            < 0.01 * r["ratio"] + 1e-3
        )
    assert result["min_ratio"] <= result["median_ratio"] <= result["max_ratio"]
