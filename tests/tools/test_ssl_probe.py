"""tools/ssl_probe.py's report: paired gains over random init and the
Markdown tables (no training)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tools"))

import ssl_probe  # noqa: E402


def _cell(method, seed, auc):
    return {
        "method": method,
        "seed": seed,
        "knn_accuracy": 0.5,
        "probe_accuracy": 0.6,
        "probe_auc": auc,
        "pretrain_seconds": None if method == "none" else 120.0,
    }


CELLS = [
    _cell("none", 0, 0.60),
    _cell("none", 1, 0.70),
    _cell("moco", 0, 0.70),
    _cell("moco", 1, 0.75),
    _cell("moco", 2, 0.90),  # no random-init cell of seed 2: not paired
]


def test_paired_gains_pair_seeds_and_skip_unpaired_ones():
    gains = ssl_probe.paired_gains(CELLS)
    assert set(gains) == {"moco"}
    assert gains["moco"] == pytest.approx({0: 0.10, 1: 0.05})


def test_report_shows_gains_and_bindings():
    text = ssl_probe._markdown(
        CELLS, ["none", "moco"], "R-18 x0.5", ["moco.symmetric = True"]
    )
    assert text.startswith("R-18 x0.5 on COVID19-CT train")
    assert "Bindings: `moco.symmetric = True`" in text
    assert "| moco | 3 |" in text and "+0.075 +- 0.025 (2)" in text
    assert "| moco | 0 | 0.500 | 0.600 | 0.700 | +0.100 |" in text
    assert "| moco | 2 | 0.500 | 0.600 | 0.900 | - |" in text
    assert "| none | 2 |" in text and "| - | 0.0 |" in text
