"""The SSTL-M stage: through the CLI into fine-tuning, and resume."""

import json
import os

import numpy as np
import pytest

from matl_keras import registry as registry_lib
from matl_keras import runs
from matl_keras.data.dataset import ArrayExamples
from matl_keras.data.dataset import Dataset
from matl_keras.errors import ConfigError
from matl_keras.training import checkpoints as checkpoints_lib
from matl_keras.training import self_supervised
from tests.cli_testing import TINY_MODEL
from tests.cli_testing import matl
from tests.matl_keras.training.ssl_testing import pretrain

TINY_SSL = [
    "--gin_file=gin/sstl_m.gin",
    *TINY_MODEL,
    "--gin_param=IMAGE_SIZE = 32",
    "--gin_param=BATCH_SIZE = 8",
    "--gin_param=SSTL_M_EPOCHS = 1",
    "--gin_param=FINETUNE_EPOCHS = 1",
    "--gin_param=SSL_QUEUE_SIZE = 'auto'",
    "--gin_param=SSL_HIDDEN_DIM = 16",
    "--gin_param=synthetic_ct.image_size = 40",
    "--gin_param=synthetic_ct.num_train = 16",
    "--gin_param=synthetic_ct.labelled_fraction = 1.0",
    "--gin_param=synthetic_ct.num_val = 8",
    "--gin_param=synthetic_ct.num_test = 8",
]


# Every file the README's main job leaves in its workdir (TensorBoard's
# event files by folder): the run contract of `matl_keras.runs`, pinned.
MAIN_JOB_FILES = [
    "finetune/backbone.weights.h5",
    "finetune/best/best.json",
    "finetune/best/model.weights.h5",
    "finetune/config.gin",
    "finetune/decision.json",
    "finetune/history.csv",
    # Kept so that the stage can be extended with more epochs (issue 20).
    "finetune/last_epoch/epoch-1/model.weights.h5",
    "finetune/logs/train/events.out.tfevents",
    "finetune/logs/validation/events.out.tfevents",
    "finetune/metrics.json",
    "finetune/model.keras",
    "finetune/operative_config.gin",
    "finetune/reliability_val.png",
    "finetune/run.json",
    "finetune/test_confusion_matrix.png",
    "finetune/test_roc.png",
    "finetune/transferability.json",
    "finetune/val_confusion_matrix.png",
    "finetune/val_roc.png",
    "sstl_m/backbone.weights.h5",
    "sstl_m/config.gin",
    "sstl_m/history.csv",
    "sstl_m/last_epoch/epoch-1/model.weights.h5",
    "sstl_m/logs/train/events.out.tfevents",
    "sstl_m/metrics.json",
    "sstl_m/operative_config.gin",
    "sstl_m/run.json",
    "sstl_m/ssl_model.weights.h5",
    "summary.json",
]


def _files(workdir):
    found = set()
    for folder, _, names in os.walk(workdir):
        for name in names:
            path = os.path.relpath(os.path.join(folder, name), workdir)
            found.add(
                path.split(".out.tfevents.")[0] + ".out.tfevents"
                if ".out.tfevents." in path
                else path
            )
    return sorted(found)


# The main job by default; the other methods' CLI runs (~20 s each) in the
# `slow` tier (each method's stage runs in process in the default suite).
@pytest.mark.parametrize(
    "method",
    [
        "region_aware",
        pytest.param("simclr", marks=pytest.mark.slow),
        pytest.param("simsiam", marks=pytest.mark.slow),
    ],
)
def test_sstl_m_job_through_the_cli(tmp_path, method):
    """The README's main job (SSTL-M, then fine-tuning) with the paper's
    method; the other methods through SSTL-M alone, their backbone file
    loaded (strictly, as fine-tuning loads it) into the fine-tuning
    backbone. The fine-tuning stage does not depend on the method that
    wrote its `init_backbone`: running it once is enough."""
    from matl_keras.models.backbone_weights import load_backbone
    from matl_keras.models.resnet.resnet_backbone import ResNetBackbone

    main_job = method == "region_aware"
    workdir = str(tmp_path / "run")
    extra = (
        ["--gin_param=simsiam.prediction_dim = 4"]
        if method == "simsiam"
        else []
    )
    if not main_job:
        extra.append("--gin_param=STAGES = ['sstl_m']")
    result = matl(
        *TINY_SSL,
        *extra,
        f"--gin_param=SSL_METHOD = @{method}",
        f"--workdir={workdir}",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.load(open(os.path.join(workdir, "summary.json")))
    sstl = summary["lineage"][0]
    assert (sstl["stage"], sstl["function"]) == ("sstl_m", "pretrain")
    backbone_file = os.path.join(workdir, "sstl_m", "backbone.weights.h5")
    assert sstl["backbone"]["sha256"] == runs.file_sha256(backbone_file)
    if main_job:
        assert _files(workdir) == MAIN_JOB_FILES
        finetune = summary["lineage"][1]
        assert finetune["init_backbone"]["sha256"] == sstl["backbone"]["sha256"]
    else:
        assert _files(workdir) == [
            f for f in MAIN_JOB_FILES if not f.startswith("finetune/")
        ]
        assert len(summary["lineage"]) == 1
        # What fine-tuning does with it (supervised.train -> load_backbone):
        # the tiny job's backbone (tiny.gin, IMAGE_SIZE 32), every tensor.
        load_backbone(
            ResNetBackbone(depth=10, width_multiplier=0.25, image_size=32),
            backbone_file,
        )
    metrics = sstl["metrics"]
    assert 0.0 <= metrics["knn_accuracy"]["before"] <= 1.0
    assert 0.0 <= metrics["knn_accuracy"]["after"] <= 1.0
    probe = metrics["linear_probe"]
    assert 0.0 <= probe["accuracy"] <= 1.0 and 0.0 <= probe["auc"] <= 1.0
    assert (probe["fitted_on"], probe["scored_on"]) == ("train", "val")
    history = open(os.path.join(workdir, "sstl_m", "history.csv")).read()
    assert "knn_accuracy" in history
    assert ("region_accuracy" in history) == (method == "region_aware")
    for name in (
        "ssl_model.weights.h5",
        "backbone.weights.h5",
        "config.gin",
        "operative_config.gin",
        "run.json",
        "logs",
    ):
        assert os.path.exists(os.path.join(workdir, "sstl_m", name)), name
    operative = open(
        os.path.join(workdir, "sstl_m", "operative_config.gin")
    ).read()
    if method == "region_aware":
        assert "sstl_m/region_aware.temperature = %SSL_TEMPERATURE" in operative
        assert "SSL_TEMPERATURE = 0.2" in operative
        assert "sstl_m/region_aware.alpha1 = 0.8" in operative
    elif method == "simclr":
        assert "sstl_m/simclr.temperature = 0.1" in operative
    else:
        assert "sstl_m/simsiam.projection_dim = %SSL_HIDDEN_DIM" in operative
        record = json.load(open(os.path.join(workdir, "sstl_m", "run.json")))
        assert (record["method"], record["projection_dim"]) == ("SimSiam", 16)
        # The collapse diagnostic (SimSiam's Fig. 2) is logged: about
        # 1/sqrt(16) = 0.25 for spread outputs, 0 for a collapsed encoder.
        # (Its projector ends in BatchNorm, so a few steps cannot reach 0;
        # this checks the wiring, not that SimSiam avoids collapse.)
        rows = history.splitlines()
        std = float(rows[1].split(",")[rows[0].split(",").index("output_std")])
        assert 0.1 < std <= 0.26, std


def _state(model):
    names = ["queue", "queue_ids", "queue_pointer", "queue_filled"]
    state = {n: getattr(model, n).numpy().copy() for n in names}
    state["key"] = [w.numpy().copy() for w in model.key_weights]
    return state


def test_resume_restores_queue_and_key_encoder(tmp_path, monkeypatch):
    checkpoints, restored = {}, {}
    save, load = (
        checkpoints_lib.ResumableBackup.on_epoch_end,
        checkpoints_lib.ResumableBackup.on_train_begin,
    )

    def saving(self, epoch, logs=None):
        save(self, epoch, logs)
        checkpoints[epoch + 1] = _state(self.model)
        if epoch == 1:
            raise KeyboardInterrupt  # killed right after the second backup

    def loading(self, logs=None):
        load(self, logs)
        restored.update(_state(self.model), epoch=self.restored_epoch)

    monkeypatch.setattr(checkpoints_lib.ResumableBackup, "on_epoch_end", saving)
    # With patients' sources: the restored queue holds their numbers.
    args = dict(dataset=_Patients(), negatives="source")
    with pytest.raises(KeyboardInterrupt):
        pretrain(tmp_path, **args)
    assert json.load(open(tmp_path / "run.json"))["status"] == "running"
    monkeypatch.setattr(checkpoints_lib.ResumableBackup, "on_epoch_end", save)
    monkeypatch.setattr(
        checkpoints_lib.ResumableBackup, "on_train_begin", loading
    )
    pretrain(tmp_path, **args)
    assert restored["epoch"] == 2
    assert set(restored["queue_ids"].tolist()) <= {0, 1, 2, 3}
    expected = checkpoints[2]
    # 16 images, batch 8: the queue holds an epoch minus a batch (8 keys).
    assert int(expected["queue_filled"]) == 8
    for name in ("queue", "queue_ids", "queue_pointer", "queue_filled"):
        np.testing.assert_array_equal(
            restored[name], expected[name], err_msg=name
        )
    for a, b in zip(restored["key"], expected["key"]):
        np.testing.assert_array_equal(a, b)
    record = json.load(open(tmp_path / "run.json"))
    assert record["status"] == "complete" and record["resumed"] is True
    assert record["negatives"] == (
        "all but images of the query's source (4 sources in 'train')"
    )
    epochs = [
        int(r.split(",")[0])
        for r in open(tmp_path / "history.csv").read().splitlines()[1:]
    ]
    assert epochs == [0, 1, 2]


class _Patients(Dataset):
    """synthetic_ct whose 16 train images are 4 patients' slices."""

    def __init__(self):
        self.base = registry_lib.default_registry().create(
            "datasets", "synthetic_ct", image_size=40, num_train=16, num_val=8
        )
        self.class_names = self.base.class_names
        self.positive_class = self.base.positive_class

    def splits(self):
        return self.base.splits()

    def examples(self, split):
        examples = self.base.examples(split)
        sources = tuple(f"patient-{i % 4}" for i in range(len(examples)))
        return ArrayExamples(examples.images, examples.labels, sources)


# 'source' is checked in the default tier by the resume test; both here
# (~12 s each) in the slow tier.
@pytest.mark.slow
@pytest.mark.parametrize("negatives", ["source", "image"])
def test_the_queue_holds_sources_and_masks_a_patients_slices(
    tmp_path, monkeypatch, negatives
):
    queues = []
    save = checkpoints_lib.ResumableBackup.on_epoch_end

    def saving(self, epoch, logs=None):
        save(self, epoch, logs)
        queues.append(self.model.queue_ids.numpy().copy())

    monkeypatch.setattr(checkpoints_lib.ResumableBackup, "on_epoch_end", saving)
    pretrain(
        tmp_path,
        dataset=_Patients(),
        epochs=1,
        negatives=negatives,
        monitor_split=None,
    )
    record = json.load(open(tmp_path / "run.json"))
    if negatives == "source":
        # The queue's identities are the 4 patients' numbers.
        assert set(queues[-1].tolist()) <= {0, 1, 2, 3}
        assert record["negatives"] == (
            "all but images of the query's source (4 sources in 'train')"
        )
    else:
        assert len(set(queues[-1].tolist())) == 8  # 8 distinct images
        assert record["negatives"] == "all but the query's own image"


def test_negatives_are_checked_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match="negatives.*Received: negatives='x'"):
        pretrain(tmp_path / "run", negatives="x")
    assert not os.path.exists(tmp_path / "run" / "run.json")


def test_method_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="no SSL method"):
        pretrain(tmp_path / "a", method=None)
    with pytest.raises(ConfigError, match="must build an SSLMethod"):
        pretrain(tmp_path / "b", method=lambda **kw: object())


def test_replica_split_refuses_a_batch_the_replicas_cannot_share():
    import tensorflow as tf

    from matl_keras.training import strategies

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    strategies.check_replica_split(8, mirrored)
    with pytest.raises(ConfigError, match=r"batch_size=7.*") as info:
        strategies.check_replica_split(7, mirrored)
    assert "(2)" in str(info.value)
    strategies.check_replica_split(7, tf.distribute.get_strategy())


def test_pretrain_refuses_an_odd_batch_on_two_replicas(tmp_path):
    with pytest.raises(ConfigError, match="batch_size=7"):
        self_supervised.pretrain(
            workdir=str(tmp_path / "w"), batch_size=7, strategy="mirrored"
        )
