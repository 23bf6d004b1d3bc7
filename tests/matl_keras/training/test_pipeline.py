"""The stage chain: lineage, weights flowing, skipping, kill and resume."""

import csv
import json
import os
import signal
import subprocess
import time

import keras
import numpy as np
import pytest

from matl_keras import config
from matl_keras import registry as registry_lib
from matl_keras.errors import ConfigError
from matl_keras.models.resnet.resnet_backbone import ResNetBackbone
from tests.cli_testing import CLI
from tests.cli_testing import TINY_MODEL
from tests.cli_testing import matl_here
from tests.conftest import REPO

TINY_CHAIN = (
    [
        "--gin_file=gin/pipeline.gin",
        "--gin_file=gin/ablations/supervised.gin",
        *TINY_MODEL,
        "--gin_param=IMAGE_SIZE = 32",
        "--gin_param=BATCH_SIZE = 8",
        "--gin_param=STL_N_EPOCHS = 1",
        "--gin_param=STL_M_EPOCHS = 1",
        "--gin_param=FINETUNE_EPOCHS = 2",
    ]
    + [
        f"--gin_param={name}.{key} = {value}"
        for name in ("synthetic_natural", "synthetic_cxr", "synthetic_ct")
        for key, value in (
            ("image_size", 40),
            ("num_train", 20),
            ("num_val", 10),
        )
    ]
    + [
        "--gin_param=synthetic_ct.num_test = 10",
        "--gin_param=synthetic_ct.labelled_fraction = 1.0",
    ]
)


def _backbone_weights_of(model_path):
    """The backbone layers' weights of a saved classifier, by layer name."""
    model = keras.saving.load_model(model_path, compile=False)
    return {
        layer.name: layer.get_weights()
        for layer in model.layers
        if layer.get_weights()
        and not layer.name.startswith(("head", "predictions"))
    }


def _fresh_backbone_from(path):
    backbone = ResNetBackbone(depth=10, width_multiplier=0.25, image_size=32)
    backbone.load_weights(path)
    return backbone


def test_three_stage_chain_through_the_cli(tmp_path):
    workdir = str(tmp_path / "chain")
    # In this process (`matl_here`): the finetune job, SIGTERM and kill -9
    # tests run the real console script.
    result = matl_here(*TINY_CHAIN, f"--workdir={workdir}")
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.load(open(os.path.join(workdir, "summary.json")))
    assert summary["status"] == "complete"
    lineage = summary["lineage"]
    assert [s["stage"] for s in lineage] == ["stl_n", "stl_m", "finetune"]
    assert [s["dataset"] for s in lineage] == [
        "SyntheticNatural",
        "SyntheticCXR",
        "SyntheticCT",
    ]
    assert lineage[0]["init_backbone"] is None
    for before, after in zip(lineage, lineage[1:]):
        # Each stage started from the file the previous one wrote ...
        assert after["init_backbone"]["path"] == before["backbone"]["path"]
        assert after["init_backbone"]["sha256"] == before["backbone"]["sha256"]
    assert len({s["config_hash"] for s in lineage}) == 3
    assert all(s["seed"] == 0 and s["status"] == "complete" for s in lineage)
    assert set(lineage[2]["metrics"]) == {"val", "test"}
    for stage in lineage:
        stage_dir = os.path.join(workdir, stage["stage"])
        for name in (
            "config.gin",
            "operative_config.gin",
            "metrics.json",
            "model.keras",
            "backbone.weights.h5",
            "history.csv",
            "logs",
        ):
            assert os.path.exists(os.path.join(stage_dir, name)), (stage, name)
        # ... and that file is the kept model's backbone.
        kept = _backbone_weights_of(os.path.join(stage_dir, "model.keras"))
        fresh = _fresh_backbone_from(
            os.path.join(stage_dir, "backbone.weights.h5")
        )
        for name, weights in kept.items():
            for a, b in zip(weights, fresh.get_layer(name).get_weights()):
                np.testing.assert_array_equal(a, b)
        # Heads are per stage: 10, 3 and 2 classes.
    heads = [
        json.load(open(os.path.join(workdir, s["stage"], "run.json")))[
            "class_names"
        ]
        for s in lineage
    ]
    assert [len(h) for h in heads] == [10, 3, 2]
    # LEEP at every boundary: each stage scored its untrained network and
    # every earlier stage's model on its own training data.
    transfer = [s["transferability"]["sources"] for s in lineage]
    assert [list(t) for t in transfer] == [
        ["untrained"],
        ["untrained", "stl_n"],
        ["untrained", "stl_n", "stl_m"],
    ]
    assert [t["source_classes"] for t in transfer[2].values()] == [2, 10, 3]
    for t in transfer:
        for values in t.values():
            assert values["kind"] in ("untrained", "classifier")
            assert -np.log(10) < values["leep"] <= 0.0
    assert lineage[2]["architecture"]["depth"] == 10
    assert os.path.exists(
        os.path.join(workdir, "finetune", "transferability.json")
    )
    stl_m_text = open(os.path.join(workdir, "stl_m", "config.gin")).read()
    assert (
        "stl_m/train.augment = 'stl_m'" in stl_m_text
        and "finetune/" not in stl_m_text
    )

    # Re-running skips every finished stage; adding a stage to the end does
    # not make the earlier ones look changed.
    mtime = os.path.getmtime(
        os.path.join(workdir, "stl_m", "backbone.weights.h5")
    )
    again = matl_here(
        *TINY_CHAIN,
        "--gin_param=STAGES = ['stl_n', 'stl_m']",
        f"--workdir={workdir}",
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already complete") == 2
    assert (
        os.path.getmtime(os.path.join(workdir, "stl_m", "backbone.weights.h5"))
        == mtime
    )


def test_kill_9_mid_run_then_rerun_resumes(tmp_path):
    workdir = str(tmp_path / "run")
    args = [
        "--gin_file=gin/finetune.gin",
        *TINY_MODEL,
        "--gin_param=IMAGE_SIZE = 32",
        "--gin_param=BATCH_SIZE = 8",
        "--gin_param=FINETUNE_EPOCHS = 5",
        "--gin_param=synthetic_ct.image_size = 40",
        "--gin_param=synthetic_ct.num_train = 160",
        "--gin_param=synthetic_ct.labelled_fraction = 1.0",
        "--gin_param=synthetic_ct.num_val = 8",
        "--gin_param=synthetic_ct.num_test = 0",
        f"--workdir={workdir}",
    ]
    history = os.path.join(workdir, "finetune", "history.csv")
    first_backup = os.path.join(workdir, "finetune", "backup", "epoch-1")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    process = subprocess.Popen(
        [CLI, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    # Kill once the first epoch's backup is complete (renamed into place):
    # on a loaded machine the history row comes well before it.
    while time.time() < deadline and process.poll() is None:
        if os.path.isdir(first_backup):
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    time.sleep(0.3)  # into the next epoch
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = len(open(history).read().splitlines()) - 1
    assert 1 <= done < 5
    run = json.load(open(os.path.join(workdir, "finetune", "run.json")))
    assert run["status"] == "running"

    result = matl_here(*args)  # the rerun, in this process
    assert result.returncode == 0, result.stdout + result.stderr
    assert "resuming after epoch" in result.stdout
    resumed_at = int(result.stdout.split("resuming after epoch ")[1].split()[0])
    assert resumed_at >= 1
    assert f"Epoch {resumed_at + 1}/5" in result.stdout
    assert "Epoch 1/5" not in result.stdout
    rows = list(csv.DictReader(open(history)))
    assert sorted({int(r["epoch"]) for r in rows}) == [0, 1, 2, 3, 4]
    run = json.load(open(os.path.join(workdir, "finetune", "run.json")))
    assert run["status"] == "complete" and run["resumed"] is True
    assert not os.path.exists(os.path.join(workdir, "finetune", "backup"))


def _parse(bindings):
    registry = registry_lib.Registry(on_load=config.register_plugin)
    config.parse([os.path.join(REPO, "gin/pipeline.gin")], bindings, registry)


@pytest.mark.parametrize(
    "stages, message",
    [
        ("['stl_m', 'stl_m']", "more than once"),
        ("['stl-m']", "identifiers"),
        ("[]", "non-empty"),
        ("'finetune'", "non-empty list"),
        ("['sstl_x']", "sstl_x/stage.fn"),
    ],
)
def test_stage_lists_are_checked(tmp_path, stages, message):
    _parse([f"STAGES = {stages}"])
    with pytest.raises(ConfigError, match=message):
        config.configured("pipeline")(workdir=str(tmp_path))
    assert not os.path.exists(tmp_path / "summary.json")
