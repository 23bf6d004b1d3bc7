"""The paper's tables and Fig. 3 from fixture pipeline workdirs."""

import csv
import json
import os

import numpy as np
import pytest
from matl_keras_plugins.reports.transferability import Transferability
from PIL import Image

from matl_keras.errors import ConfigError
from tests.plugins.plugin_testing import pipeline_run as _run

FULL = ("stl_n", "stl_m", "sstl_m")


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    for attention, base in (("none", 0.80), ("5", 0.82)):
        tag = {"none": "base", "5": "attn5"}[attention]
        bump = 0.0 if attention == "none" else 0.02
        _run(root, f"{tag}_wo", attention, (), base)
        _run(
            root,
            f"{tag}_n",
            attention,
            ("stl_n",),
            base + 0.02 + bump,
            leep=[-0.69],
        )
        _run(
            root,
            f"{tag}_m",
            attention,
            ("stl_m",),
            base + 0.03 + bump,
            leep=[-0.68],
        )
        _run(
            root,
            f"{tag}_ours",
            attention,
            FULL,
            base + 0.06 + bump,
            "Ours",
            [-0.68, -0.66 + bump],
        )
        _run(
            root,
            f"{tag}_moco",
            attention,
            FULL,
            base + 0.05 + bump,
            "MoCo",
            [-0.68, -0.66 + bump],
        )
    return str(root)


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_tables_and_figure(runs, tmp_path):
    out = str(tmp_path / "report")
    written = Transferability().report([runs], out)
    assert set(written) >= {
        "table2_overall",
        "table3_ssl",
        "table4_transfer",
        "table5_stages",
        "table6_leep",
        "fig3_leep",
        "report",
    }
    t2 = _rows(os.path.join(out, "table2_overall.csv"))
    assert [r["Model"] for r in t2] == [
        "Baseline",
        "5 ATTNs",
    ]  # the "Ours" runs
    assert [r["Accuracy"] for r in t2] == ["86.0", "90.0"]
    assert [r["Accuracy Improv."] for r in t2] == ["0.0", "4.0"]
    assert t2[0]["Accuracy 95% CI"] == "[81.0, 90.0]"
    t3 = _rows(os.path.join(out, "table3_ssl.csv"))
    assert [r["Model"] for r in t3] == [
        "Baseline w MoCo",
        "Baseline w Ours",
        "5 ATTNs w MoCo",
        "5 ATTNs w Ours",
    ]
    assert [r["Accuracy Improv."] for r in t3] == ["0.0", "1.0", "0.0", "1.0"]
    t4 = _rows(os.path.join(out, "table4_transfer.csv"))
    by_model = {r["Model"]: r for r in t4}
    assert by_model["5 ATTNs w/o TL"]["Accuracy Improv."] == "0.0"
    assert by_model["5 ATTNs w TL (MoCo)"]["Accuracy Improv."] == "7.0"
    assert by_model["5 ATTNs w TL (Ours)"]["Accuracy Improv."] == "8.0"
    assert (
        by_model["5 ATTNs w TL (Ours)"]["Compared with"] == "w/o TL: attn5_wo"
    )
    t5 = _rows(os.path.join(out, "table5_stages.csv"))
    assert [r["Model"] for r in t5[:3]] == [
        "Baseline w/o TL",
        "Baseline w STL-N",
        "Baseline w STL-M",
    ]
    assert [r["Accuracy Improv."] for r in t5[:3]] == ["0.0", "2.0", "3.0"]
    t6 = _rows(os.path.join(out, "table6_leep.csv"))
    leep = {r["Model"]: (r["R-50"], r["R-50 n"], r["R-50 Improv."]) for r in t6}
    # Every run scored the untrained network (5 per variant), two the full
    # chain.
    assert leep["Baseline w/o TL"] == ("-0.700 ± 0.000", "5", "+0.000")
    assert leep["Baseline w STL-N w STL-M"] == ("-0.660 ± 0.000", "2", "+0.040")
    assert leep["5 ATTNs w STL-N w STL-M"] == ("-0.640 ± 0.000", "2", "+0.060")
    text = open(written["report"]).read()
    assert "Table 6" in text and "| 5 ATTNs w TL (Ours) |" in text
    figure = Image.open(written["fig3_leep"])
    assert figure.size[0] > 200 and np.asarray(figure.convert("L")).std() > 5


def test_empty_kinds_say_so_and_bad_runs_are_named(tmp_path):
    root = tmp_path / "runs"
    one = _run(root, "only", "1", (), 0.7, depth=101)
    out = str(tmp_path / "r")
    Transferability().report([one], out)
    assert (
        "_No runs of this kind were given._"
        in open(os.path.join(out, "table2_overall.md")).read()
    )
    assert (
        _rows(os.path.join(out, "table4_transfer.csv"))[0]["Group"] == "R-101"
    )
    with pytest.raises(ConfigError, match="does not exist"):
        Transferability().report([str(tmp_path / "nope")], out)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no summary.json"):
        Transferability().report([str(tmp_path / "empty")], out)
    summary = json.loads((root / "only" / "summary.json").read_text())
    summary["status"] = "running"
    (root / "only" / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ConfigError, match="not a complete pipeline run"):
        Transferability().report([one], out)


def _t(out, name):
    return {r["Model"]: r for r in _rows(os.path.join(out, f"{name}.csv"))}


def test_table3_compares_only_the_same_earlier_stages_and_seeds(tmp_path):
    root = tmp_path / "runs"
    _run(root, "ours_full", "5", FULL, 0.90, "Ours", [-0.68, -0.66])
    _run(
        root, "moco_sstl_only", "5", ("sstl_m",), 0.80, "MoCo"
    )  # shorter chain
    _run(
        root, "moco_full_seed1", "5", FULL, 0.85, "MoCo", [-0.68, -0.66], seed=1
    )
    out = str(tmp_path / "r")
    Transferability().report([str(root)], out)
    t3 = _t(out, "table3_ssl")
    ours = t3["5 ATTNs w Ours"]
    # Not +10.0 against the SSTL-M-only MoCo, nor against another seed.
    assert ours["Accuracy Improv."] == ""
    assert "no MoCo with seeds 0" in ours["Compared with"]
    assert "moco_full_seed1 has seeds 1" in ours["Compared with"]
    assert t3["5 ATTNs w SSTL-M (MoCo)"]["Accuracy Improv."] == "0.0"
    text = open(os.path.join(out, "table3_ssl.md")).read()
    assert (
        "same earlier stages, with the same backbone variant, seeds and split"
        in text
    )
    # Both methods after the full chain with seeds 0 and 1: now compared.
    _run(root, "moco_full", "5", FULL, 0.86, "MoCo", [-0.68, -0.66])
    _run(
        root, "ours_full_seed1", "5", FULL, 0.88, "Ours", [-0.68, -0.66], seed=1
    )
    Transferability().report([str(root)], out)
    ours = _t(out, "table3_ssl")["5 ATTNs w Ours"]
    assert ours["Accuracy"] == "89.0 ± 1.4" and ours["n"] == "2"
    assert ours["Accuracy Improv."] == "3.5"
    assert ours["Compared with"] == "MoCo: moco_full, moco_full_seed1"


def test_seeds_of_one_cell_are_mean_std_n_and_named(tmp_path):
    root = tmp_path / "runs"
    for seed, acc in enumerate((0.70, 0.74, 0.78)):
        _run(
            root,
            f"wo_s{seed}",
            "5",
            (),
            acc,
            seed=seed,
            untrained=-0.70 - 0.01 * seed,
        )
    for seed, acc in enumerate((0.80, 0.84, 0.82)):
        _run(
            root,
            f"full_s{seed}",
            "5",
            FULL,
            acc,
            "Ours",
            [-0.68, -0.60 - 0.01 * seed],
            seed=seed,
            untrained=-0.70 - 0.01 * seed,
        )
    out = str(tmp_path / "r")
    Transferability().report([str(root)], out)
    t4 = _t(out, "table4_transfer")
    assert list(t4) == [
        "5 ATTNs w/o TL",
        "5 ATTNs w TL (Ours)",
    ]  # no run against its twin
    wo = t4["5 ATTNs w/o TL"]
    assert (
        wo["n"] == "3"
        and wo["Seeds"] == "0, 1, 2"
        and wo["Runs"] == "wo_s0, wo_s1, wo_s2"
    )
    assert wo["Accuracy"] == "74.0 ± 4.0" and wo["Accuracy 95% CI"] == ""
    assert wo["Accuracy Improv."] == "0.0"
    assert t4["5 ATTNs w TL (Ours)"]["Accuracy"] == "82.0 ± 2.0"
    assert t4["5 ATTNs w TL (Ours)"]["Accuracy Improv."] == "8.0"
    # Table 6: every run's LEEP counted, Improv. paired within each run.
    t6 = _t(out, "table6_leep")
    assert (
        t6["5 ATTNs w/o TL"]["R-50"] == "-0.710 ± 0.009"
        and t6["5 ATTNs w/o TL"]["R-50 n"] == "6"
    )
    two = t6["5 ATTNs w STL-N w STL-M"]
    assert two["R-50"] == "-0.610 ± 0.010" and two["R-50 Improv."] == "+0.100"
    assert two["Runs"] == "full_s0, full_s1, full_s2"


def test_table2_never_falls_back_to_another_method(tmp_path):
    root = tmp_path / "runs"
    _run(root, "moco_full", "none", FULL, 0.85, "MoCo", [-0.68, -0.66])
    out = str(tmp_path / "r")
    Transferability().report([str(root)], out)
    assert _rows(os.path.join(out, "table2_overall.csv")) == []
    text = open(os.path.join(out, "table2_overall.md")).read()
    assert (
        "No full-chain run with the paper's SSL method (Ours)" in text
        and "MoCo" in text
    )


def test_val_scores_are_labelled_val_selected(tmp_path):
    root = tmp_path / "runs"
    _run(root, "held_out", "none", (), 0.80)
    path = _run(root, "val_only", "none", ("stl_n",), 0.85, leep=[-0.69])
    summary = json.loads(open(os.path.join(path, "summary.json")).read())
    summary["lineage"][-1]["metrics"] = {
        "val": summary["lineage"][-1]["metrics"]["test"]
    }
    open(os.path.join(path, "summary.json"), "w").write(json.dumps(summary))
    out = str(tmp_path / "r")
    Transferability().report([str(root)], out)
    t5 = _t(out, "table5_stages")
    assert t5["Baseline w/o TL"]["Split"] == "test"
    assert (
        t5["Baseline w STL-N"]["Split"] == "val, selected on val (optimistic)"
    )
    # Scores on different splits are not compared.
    assert t5["Baseline w STL-N"]["Accuracy Improv."] == ""
    assert "on test" in t5["Baseline w STL-N"]["Compared with"]


def test_runs_on_other_data_or_sizes_are_grouped_not_compared(tmp_path):
    root = tmp_path / "runs"
    for data_root, size, base in (
        ("/data/a", 32, 0.70),
        ("/data/a", 64, 0.75),
        ("/data/b", 32, 0.60),
    ):
        tag = f"{data_root[-1]}{size}"
        kw = dict(dataset="ImageFolder", size=size, data_root=data_root)
        _run(root, f"{tag}_wo", "none", (), base, leep=None, **kw)
        _run(
            root, f"{tag}_m", "none", ("stl_m",), base + 0.05, leep=[-0.6], **kw
        )
    _run(root, "synthetic", "none", (), 0.9, dataset="SyntheticCT", size=96)
    out = str(tmp_path / "report")
    Transferability().report([str(root)], out)
    t5 = _rows(os.path.join(out, "table5_stages.csv"))
    assert [
        (r["Dataset"], r["Size"], r["Model"], r["Accuracy Improv."]) for r in t5
    ] == [
        ("ImageFolder /data/a", "32", "Baseline w/o TL", "0.0"),
        ("ImageFolder /data/a", "32", "Baseline w STL-M", "5.0"),
        ("ImageFolder /data/a", "64", "Baseline w/o TL", "0.0"),
        ("ImageFolder /data/a", "64", "Baseline w STL-M", "5.0"),
        ("ImageFolder /data/b", "32", "Baseline w/o TL", "0.0"),
        ("ImageFolder /data/b", "32", "Baseline w STL-M", "5.0"),
        ("SyntheticCT", "96", "Baseline w/o TL", "0.0"),
    ]
    t6 = _rows(os.path.join(out, "table6_leep.csv"))
    assert (
        "R-50 ImageFolder /data/a 64px" in t6[0]
        and "R-50 SyntheticCT 96px" in t6[0]
    )
    runs = _rows(os.path.join(out, "runs.csv"))
    assert {(r["Dataset"], r["Size"]) for r in runs} == {
        ("ImageFolder /data/a", "32"),
        ("ImageFolder /data/a", "64"),
        ("ImageFolder /data/b", "32"),
        ("SyntheticCT", "96"),
    }
