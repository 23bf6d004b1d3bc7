"""The pure parts of tools/compare_pretraining.py (its runs are a tool's,
not a test's)."""

import importlib.util
import os

import numpy as np
import pytest
from absl import app

PATH = os.path.join(
    os.path.dirname(__file__), "..", "..", "tools", "compare_pretraining.py"
)
spec = importlib.util.spec_from_file_location("compare_pretraining", PATH)
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)


def test_pretraining_names_parse_into_stages_and_method():
    assert tool.parse_pretraining("scratch") == ([], None)
    assert tool.parse_pretraining("sstl_m") == (["sstl_m"], None)
    assert tool.parse_pretraining("stl_m+sstl_m:moco") == (
        ["stl_m", "sstl_m"],
        "moco",
    )
    with pytest.raises(app.UsageError, match="unknown stage 'stl_x'"):
        tool.parse_pretraining("stl_x")
    with pytest.raises(app.UsageError, match="without sstl_m"):
        tool.parse_pretraining("stl_m:moco")


def test_knn_score_is_leave_one_out():
    rng = np.random.default_rng(0)
    centres = np.array([[1.0, 0.0], [0.0, 1.0]])
    labels = np.repeat([0, 1], 20)
    features = centres[labels] + 0.05 * rng.normal(size=(40, 2))
    assert tool.knn_loo_accuracy(features, labels, k=5) == 1.0
    # One image per class: its only neighbour is the other class.
    assert tool.knn_loo_accuracy(centres, np.array([0, 1]), k=5) == 0.0


def test_summary_pairs_each_seed_with_its_scratch_run():
    def cell(pretraining, seed, auc, knn):
        return {
            "pretraining": pretraining,
            "variant": "default",
            "fraction": "0.1",
            "seed": seed,
            "val_auc": auc,
            "knn": knn,
            "labelled": {"a": 2, "b": 2},
            "leep": None,
            "val_auc_ci": [auc - 0.1, auc + 0.1],
        }

    cells = [
        cell("scratch", 0, 0.6, 0.5),
        cell("scratch", 1, 0.8, 0.6),
        cell("ssl", 0, 0.7, 0.7),
        cell("ssl", 1, 0.85, 0.8),
    ]
    rows, correlation = tool.summarize(cells)
    ssl = next(r for r in rows if r["pretraining"] == "ssl")
    assert ssl["gain_over_scratch_mean"] == pytest.approx(0.075)
    assert ssl["gain_over_scratch_std"] == pytest.approx(0.025)
    assert ssl["val_auc_mean"] == pytest.approx(0.775)
    scratch = next(r for r in rows if r["pretraining"] == "scratch")
    assert scratch["gain_over_scratch_mean"] is None
    # kNN ranks the four cells exactly as their AUCs: correlation 0.8
    # (0.6<0.7<0.8<0.85 vs knn 0.5<0.7<0.6<0.8: one swap).
    assert correlation["knn"] == pytest.approx(0.8)
    assert correlation["leep"] is None
    # Scores equal up to float noise tie: no correlation to report.
    noisy = [
        dict(c, leep=-0.6931471805599453 + i * 1e-12)
        for i, c in enumerate(cells)
    ]
    assert tool.summarize(noisy)[1]["leep"] is None
    # Scores of one pretraining only (LEEP of the untrained network): they
    # rank seeds, not pretrainings, so no correlation is reported.
    only_scratch = [
        dict(c, leep=c["val_auc"] if c["pretraining"] == "scratch" else None)
        for c in cells + [cell("scratch", 2, 0.7, 0.6)]
    ]
    assert tool.summarize(only_scratch)[1]["leep"] is None
    text = tool.markdown(rows, correlation, cells, minutes=1.0)
    assert (
        "| ssl | default | 4 (0.1) | 2 | 0.775 +- 0.075 | +0.075 +- 0.025"
        " | 0.750 | - |" in text
    )
    assert correlation["logme"] is None  # no cell has it
    # Cells written before LogME was scored lack it: means and the rank
    # correlation use the cells that have it.
    scored = [dict(c, logme=-0.1 * c["val_auc"]) for c in cells[:3]] + [
        cells[3]
    ]
    rows, correlation = tool.summarize(scored)
    ssl = next(r for r in rows if r["pretraining"] == "ssl")
    assert ssl["logme_mean"] == pytest.approx(-0.07)  # seed 0 only
    assert correlation["logme"] == pytest.approx(-1.0)
    assert "| 0.750 | -0.070 |" in tool.markdown(rows, correlation, scored, 1.0)
    # The operating point chosen on val, per seed; "-" for a cell without.
    point = tool.operating_point(
        {
            "auc": 0.7,
            "operating_point": {
                "rule": "youden",
                "threshold": 0.38,
                "accuracy": 0.73,
                "sensitivity": 0.8167,
                "specificity": 0.6379,
                "calibration": {},
            },
        }
    )
    assert point == {
        "rule": "youden",
        "threshold": 0.38,
        "accuracy": 0.73,
        "sensitivity": 0.8167,
        "specificity": 0.6379,
    }
    assert tool.operating_point({"auc": 0.7}) is None
    text = tool.markdown(
        rows, correlation, [dict(cells[0], val_operating_point=point)], 1.0
    )
    assert "| 0.817 / 0.638 (0.380) |" in text
    assert "| 0.600 | 0.500-0.700 | - |" in tool.markdown(
        rows, correlation, cells[:1], 1.0
    )


def test_feature_scores_of_a_cell_copied_without_its_runs(tmp_path):
    """A cell kept as cell.json alone (results/) has no backbone to score:
    None, and the caller leaves the cell as it is."""
    assert tool._feature_scores(str(tmp_path / "finetune"), 0) is None


def test_embedded_dataset_arguments_are_read_from_its_gin_file():
    arguments = tool._synthetic_ct_arguments()
    assert arguments["image_size"] > 0 and arguments["num_train"] > 0


@pytest.mark.parametrize(
    "name", ["scratch", "stl_m", "sstl_m:moco", "stl_m+sstl_m:simclr"]
)
def test_every_command_parses_with_both_real_roots(monkeypatch, name):
    """The CXR set is configured only where STL-M reads it: gin refuses a
    macro no binding uses (a scratch cell failed so on real data)."""
    import gin
    from matl_keras import config
    from matl_keras import registry as registry_lib

    monkeypatch.setattr(
        tool,
        "FLAGS",
        type(
            "Flags",
            (),
            {"ct_root": "/data/ct", "cxr_root": "/data/cxr", "gin_param": []},
        ),
    )
    stages, method = tool.parse_pretraining(name)
    command = tool._command(stages, method, "attn5", "1.0", 0, "/tmp/w")
    files = [a.split("=", 1)[1] for a in command if a.startswith("--gin_file")]
    params = [
        a.split("=", 1)[1] for a in command if a.startswith("--gin_param")
    ]
    assert ("gin/datasets/covidx.gin" in files) == ("stl_m" in stages)
    monkeypatch.chdir(os.path.join(os.path.dirname(PATH), ".."))
    gin.clear_config()
    try:
        config.parse(files, params, registry_lib.default_registry())
    finally:
        gin.clear_config()


def test_chains_start_from_a_finished_supervised_prefix(tmp_path):
    def finished(workdir, pretraining, seed, done=True):
        folder = os.path.join(
            workdir,
            tool._cell_name(pretraining, "baseline"),
            "pretrained",
            f"seed-{seed}",
        )
        os.makedirs(folder)
        if done:
            open(os.path.join(folder, "done"), "w").close()
        return folder

    here, there = str(tmp_path / "here"), str(tmp_path / "there")
    stl_m = finished(there, "stl_m", 0)
    finished(here, "stl_m", 1, done=False)
    chain = ["stl_m", "sstl_m"]
    assert tool.shared_prefix(chain, "baseline", 0, [here, there]) == (
        stl_m,
        ["stl_m"],
    )
    # Not another seed's, nor another variant's, nor an unfinished run.
    assert tool.shared_prefix(chain, "baseline", 1, [here, there]) == (None, [])
    assert tool.shared_prefix(chain, "attn5", 0, [here, there]) == (None, [])
    # The longest supervised prefix wins; the chain itself is never a
    # prefix of itself, and an SSL stage is never shared.
    both = finished(here, "stl_n+stl_m", 0)
    long_chain = ["stl_n", "stl_m", "sstl_m"]
    assert tool.shared_prefix(long_chain, "baseline", 0, [here, there]) == (
        both,
        ["stl_n", "stl_m"],
    )
    assert tool.shared_prefix(["stl_m"], "baseline", 0, [here, there]) == (
        None,
        [],
    )
    finished(here, "sstl_m", 0)
    assert tool.shared_prefix(["sstl_m", "stl_m"], "baseline", 0, [here]) == (
        None,
        [],
    )


def test_feature_scores_of_the_backbone_a_fine_tuning_started_from(
    tmp_path, monkeypatch
):
    """kNN and LogME of the init backbone's pooled features on the labelled
    subset of the embedded data; None once that backbone file is gone."""
    import json

    from matl_keras.models.resnet.resnet_backbone import ResNetBackbone

    monkeypatch.setattr(
        tool,
        "FLAGS",
        type("Flags", (), {"ct_root": None, "knn_k": 5}),
    )
    start = str(tmp_path / "start.weights.h5")
    ResNetBackbone(10, 0.25, 32).save_weights(start)
    finetune = tmp_path / "finetune"
    finetune.mkdir()
    (finetune / "run.json").write_text(
        json.dumps(
            {
                "status": "complete",
                "class_names": ["NonCOVID", "COVID"],
                "architecture": {"depth": 10, "width_multiplier": 0.25},
                "preprocessing": {"image_size": 32, "crop_fraction": 0.875},
                "init_backbone": {"path": start},
                "labelled_fraction": 0.1,
            }
        )
    )
    scores = tool._feature_scores(str(finetune), 0)
    assert set(scores) == {"knn", "logme"}
    assert 0.0 <= scores["knn"] <= 1.0
    assert np.isfinite(scores["logme"]) and scores["logme"] < 0.5
    # The scores of a cell are a function of its run: a rerun (a report
    # made later, a backfill) gives the same numbers.
    assert tool._feature_scores(str(finetune), 0) == scores
    os.remove(start)
    assert tool._feature_scores(str(finetune), 0) is None


def test_report_only_reports_the_finished_cells_and_lists_the_rest(
    tmp_path, monkeypatch
):
    """`--report_only` trains nothing: a grid stopped part-way (or running
    elsewhere) is reported from its finished cells, the others listed."""
    import json

    workdir = tmp_path / "grid"
    flags_ = dict(
        workdir=str(workdir),
        pretrainings=["scratch", "sstl_m"],
        variants=["baseline"],
        fractions=["1.0"],
        seeds=["0", "1"],
        report_only=True,
    )
    monkeypatch.setattr(
        tool,
        "FLAGS",
        type("Flags", (), dict(flags_, flag_values_dict=lambda self: flags_))(),
    )
    with pytest.raises(app.UsageError, match="no finished cell"):
        tool.main([])
    for pretraining, seed, auc in (("scratch", 0, 0.7), ("sstl_m", 0, 0.75)):
        where = tool._cell_dir(pretraining, "baseline", "1.0", seed, workdir)
        os.makedirs(where)
        with open(os.path.join(where, "cell.json"), "w") as f:
            json.dump(
                {
                    "pretraining": pretraining,
                    "variant": "baseline",
                    "fraction": "1.0",
                    "seed": seed,
                    "labelled": {"a": 5, "b": 5},
                    "val_auc": auc,
                    "val_auc_ci": [auc - 0.1, auc + 0.1],
                    "leep": None,
                    "knn": 0.6,
                    "logme": -0.6,
                },
                f,
            )
    tool.main([])
    report = json.load(open(workdir / "report.json"))
    assert len(report["cells"]) == 2
    assert report["not_finished"] == [
        "scratch / baseline / fraction 1.0 / seed 1",
        "sstl_m / baseline / fraction 1.0 / seed 1",
    ]
    text = open(workdir / "report.md").read()
    assert "Not finished (2; `--report_only`): scratch / baseline" in text
    row = "| sstl_m | baseline | 10 (1.0) | 1 | 0.750 +- 0.000 | +0.050"
    assert row in text
    # Nothing trained: no pretraining, no cell folder of seed 1.
    name = tool._cell_name("sstl_m", "baseline")
    assert os.path.isdir(os.path.join(workdir, name))
    assert not os.path.exists(os.path.join(workdir, name, "pretrained"))
    assert not os.path.exists(
        tool._cell_dir("sstl_m", "baseline", "1.0", 1, workdir)
    )


def test_a_finished_cell_without_logme_gets_it_once_its_backbone_is_here(
    tmp_path, monkeypatch
):
    """A cell written before LogME was scored is read back with LogME added
    (and written, so it is computed once) when its backbone can be scored;
    one that cannot be (a cell copied alone) is returned unchanged."""
    import json

    where = tool._cell_dir("stl_m", "baseline", "1.0", 0, tmp_path)
    os.makedirs(where)
    path = os.path.join(where, "cell.json")
    old = {"pretraining": "stl_m", "seed": 0, "val_auc": 0.7, "knn": 0.6}
    with open(path, "w") as f:
        json.dump(old, f)
    calls = []

    def scores(finetune_dir, seed):
        calls.append((finetune_dir, seed))
        return None

    monkeypatch.setattr(tool, "_feature_scores", scores)
    assert tool._cell("stl_m", "baseline", "1.0", 0, tmp_path) == dict(
        old, logme=None
    )
    assert json.load(open(path)) == old  # nothing to add: left as it was
    monkeypatch.setattr(
        tool,
        "_feature_scores",
        lambda finetune_dir, seed: (
            calls.append((finetune_dir, seed)) or {"knn": 0.9, "logme": -0.61}
        ),
    )
    cell = tool._cell("stl_m", "baseline", "1.0", 0, tmp_path)
    # Only LogME is added: the kNN score the cell was reported with stays.
    assert cell == dict(old, logme=-0.61)
    assert json.load(open(path)) == cell
    assert calls == [(os.path.join(where, "finetune"), 0)] * 2
    tool._cell("stl_m", "baseline", "1.0", 0, tmp_path)
    assert len(calls) == 2  # written once, read back after
    assert [n for n in os.listdir(where) if n.endswith(".tmp")] == []
    # The operating point of a cell written before it was recorded: read
    # from its fine-tuning's metrics once they are here, and written.
    os.makedirs(os.path.join(where, "finetune"))
    with open(os.path.join(where, "finetune", "metrics.json"), "w") as f:
        json.dump(
            {
                "val": {
                    "operating_point": {
                        "rule": "youden",
                        "threshold": 0.4,
                        "accuracy": 0.7,
                        "sensitivity": 0.8,
                        "specificity": 0.6,
                    }
                }
            },
            f,
        )
    cell = tool._cell("stl_m", "baseline", "1.0", 0, tmp_path)
    assert cell["val_operating_point"]["threshold"] == 0.4
    assert json.load(open(path))["val_operating_point"]["sensitivity"] == 0.8
