"""`matl-keras probe`: kNN and linear probe of a stage's frozen backbone."""

import json

import pytest

from matl_keras.commands import probe
from matl_keras.errors import ConfigError
from matl_keras.models.resnet.resnet_backbone import ResNetBackbone
from matl_keras.training import checkpoints
from tests.cli_testing import error_line
from tests.cli_testing import matl
from tests.cli_testing import matl_here

DATA = [
    "--gin_param=synthetic_ct.image_size = 40",
    "--gin_param=synthetic_ct.num_train = 16",
    "--gin_param=synthetic_ct.labelled_fraction = 1.0",
    "--gin_param=synthetic_ct.num_val = 8",
    "--gin_param=synthetic_ct.num_test = 0",
]


def _stage(folder):
    """A finished SSTL-M-like stage: its backbone and the config.gin /
    run.json it was written with (image size through a macro, as the
    shipped jobs write it; no `preprocessing`, as pretrain writes none)."""
    folder.mkdir()
    backbone = ResNetBackbone(depth=10, width_multiplier=0.25, image_size=32)
    checkpoints.save_weights(backbone, str(folder / "backbone.weights.h5"))
    (folder / "config.gin").write_text(
        "IMAGE_SIZE = 32\nWIDTH = 0.25\n"
        "resnet_backbone.depth = 10\n"
        "resnet_backbone.width_multiplier = %WIDTH\n"
        "sstl_m/pretrain.image_size = %IMAGE_SIZE\n"
    )
    (folder / "run.json").write_text(
        json.dumps(
            {
                "status": "complete",
                "architecture": {
                    "depth": 10,
                    "width_multiplier": 0.25,
                    "attention": "none",
                    "name": "resnet",
                },
            }
        )
    )
    return folder


def test_probe_command_writes_probe_json_next_to_the_run(tmp_path):
    stage = _stage(tmp_path / "sstl_m")
    result = matl(
        "probe",
        f"--model={stage}",
        "--dataset=synthetic_ct",
        "--batch_size=8",
        *DATA,
    )
    assert result.returncode == 0, result.stderr
    record = json.load(open(stage / "probe.json"))
    assert (record["fitted_on"], record["scored_on"]) == ("train", "val")
    assert record["backbone"]["image_size"] == 32
    assert record["backbone"]["backbone"]["width_multiplier"] == 0.25
    assert record["class_counts"]["val"] == {"NonCOVID": 4, "COVID": 4}
    assert 0.0 <= record["knn_accuracy"]["value"] <= 1.0
    assert record["knn_accuracy"]["k"] == 20
    assert 0.0 <= record["linear_probe"]["auc"] <= 1.0
    assert record["linear_probe"]["penalty"] > 0
    assert "kNN accuracy" in result.stdout

    bad = matl_here(
        "probe",
        f"--model={stage}",
        "--dataset=synthetic_ct",
        "--score_split=holdout",
        *DATA,
    )
    assert bad.returncode == 2
    assert "--score_split" in error_line(bad) and "'holdout'" in error_line(bad)


def test_backbone_spec_and_missing_weights(tmp_path):
    stage = _stage(tmp_path / "sstl_m")
    spec = probe.backbone_spec(str(stage))
    assert spec == {
        "backbone": {
            "depth": 10,
            "width_multiplier": 0.25,
            "attention": "none",
        },
        "image_size": 32,
        "crop_fraction": 0.875,
    }
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="has no backbone.weights.h5"):
        probe.find_backbone(str(tmp_path / "empty"))
