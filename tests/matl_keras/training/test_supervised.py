"""The supervised stage in-process: strategies, divergence, optimiser."""

import json
import os

import numpy as np
import pytest

from matl_keras import runs
from matl_keras.errors import ConfigError
from matl_keras.errors import MatlError
from matl_keras.models.resnet.resnet_backbone import ResNetBackbone
from matl_keras.training import optimizers
from matl_keras.training import strategies
from matl_keras.training import supervised
from tests.matl_keras.training.stage_testing import Bright
from tests.matl_keras.training.stage_testing import run_train
from tests.matl_keras.training.stage_testing import tiny_backbone


def test_mirrored_strategy_over_two_logical_cpus(tmp_path):
    strategy = strategies.get_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2
    results = run_train(tmp_path, strategy="mirrored")
    assert results == {"val": {"count": 16}}
    saved = json.load(open(tmp_path / "metrics.json"))
    assert saved == results


def test_one_device_strategy_trains(tmp_path):
    """What `auto` picks on one GPU (batches prefetched to the device),
    here on the CPU."""
    assert strategies.auto_choice(1) == "one_device"
    assert strategies.auto_choice(0) == "default"
    assert strategies.auto_choice(4) == "mirrored"
    results = run_train(tmp_path, strategy="one_device")
    assert results == {"val": {"count": 16}}
    assert json.load(open(tmp_path / "run.json"))["precision"] == "float32"
    # Called from Python, the stage frees its workdir when it returns.
    assert not os.path.exists(tmp_path / runs.LOCK_FILE)


def test_non_finite_loss_stops_with_a_clear_error(tmp_path):
    with pytest.raises(MatlError, match=r"diverged: loss .* at epoch 1, step"):
        run_train(
            tmp_path,
            optimizer=lambda **kw: optimizers.sgd(learning_rate=1e30, **kw),
        )
    assert not os.path.exists(tmp_path / "model.keras")
    # ... and when it raises.
    assert not os.path.exists(tmp_path / runs.LOCK_FILE)


def test_sgd_scales_learning_rate_and_decays_in_steps():
    optimizer = optimizers.sgd(
        batch_size=32,
        epochs=10,
        steps_per_epoch=10,
        learning_rate=0.4,
        reference_batch_size=256,
        decay_at=(0.5,),
        decay_rate=0.1,
    )
    schedule = optimizer.learning_rate
    if not callable(schedule):
        schedule = optimizer._learning_rate
    assert float(schedule(0)) == pytest.approx(0.05)
    assert float(schedule(60)) == pytest.approx(0.005)
    assert optimizer.momentum == 0.9


def test_sgd_checks_decay_points():
    with pytest.raises(ConfigError, match="decay_at"):
        optimizers.sgd(
            batch_size=8, epochs=2, steps_per_epoch=2, decay_at=(0.8, 0.6)
        )


def test_epochs_checked(tmp_path):
    with pytest.raises(ConfigError, match="epochs"):
        run_train(tmp_path, epochs=0)


def test_interrupted_run_resumes_from_its_last_epoch(tmp_path, monkeypatch):
    import csv

    from matl_keras.training import monitors

    class KilledInSecondEpoch(monitors.Throughput):
        def on_epoch_begin(self, epoch, logs=None):
            super().on_epoch_begin(epoch, logs)
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == 1:
                raise KeyboardInterrupt  # as if killed mid-epoch

    monkeypatch.setattr(monitors, "Throughput", KilledInSecondEpoch)
    with pytest.raises(KeyboardInterrupt):
        run_train(tmp_path, epochs=3)
    assert json.load(open(tmp_path / "run.json"))["status"] == "running"
    assert os.path.isdir(tmp_path / "backup")
    monkeypatch.undo()
    run_train(tmp_path, epochs=3)
    record = json.load(open(tmp_path / "run.json"))
    assert record["status"] == "complete" and record["resumed"] is True
    rows = list(csv.DictReader(open(tmp_path / "history.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]  # each epoch once
    assert not os.path.exists(tmp_path / "backup")


def test_inverse_frequency_weights():
    weights = supervised.inverse_frequency_weights(
        {"normal": 30, "pneumonia": 60, "COVID-19": 390},
        ["normal", "pneumonia", "COVID-19"],
    )
    assert weights[0] == pytest.approx(480 / (3 * 30))
    assert weights[2] == pytest.approx(480 / (3 * 390))
    total = 30 * weights[0] + 60 * weights[1] + 390 * weights[2]
    assert total == pytest.approx(480)


@pytest.mark.parametrize("balance", ["weights", "sampling"])
def test_class_balance_modes_train(tmp_path, balance, monkeypatch):
    calls = []
    real = supervised.inverse_frequency_weights
    monkeypatch.setattr(
        supervised,
        "inverse_frequency_weights",
        lambda *a: calls.append(a) or real(*a),
    )
    results = run_train(tmp_path, class_balance=balance, epochs=1)
    assert results == {"val": {"count": 16}}
    assert json.load(open(tmp_path / "run.json"))["class_balance"] == balance
    # Loss weights only in "weights" mode (sampling balances the data).
    assert len(calls) == (1 if balance == "weights" else 0)


def test_untrained_run_of_another_config_is_replaced(tmp_path):
    (tmp_path / "run.json").write_text(
        json.dumps({"status": "running", "config_hash": "other"})
    )
    assert run_train(tmp_path, epochs=1) == {"val": {"count": 16}}
    (tmp_path / "backup").mkdir()  # now it looks trained: refused
    record = json.load(open(tmp_path / "run.json"))
    record.update(status="running", config_hash="other")
    (tmp_path / "run.json").write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="different config"):
        run_train(tmp_path, epochs=1)


def test_class_balance_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="class_balance"):
        run_train(tmp_path, class_balance="oversample")


def test_training_starts_from_init_backbone(tmp_path, monkeypatch):
    source = tiny_backbone(32)
    path = str(tmp_path / "start.weights.h5")
    source.save_weights(path)
    seen = {}
    real = supervised.load_backbone

    def spy(features, file):
        real(features, file)
        seen["weights"] = [w.copy() for w in features.get_weights()]

    monkeypatch.setattr(supervised, "load_backbone", spy)
    run_train(tmp_path / "run", init_backbone=path, epochs=1)
    for a, b in zip(seen["weights"], source.get_weights()):
        np.testing.assert_array_equal(a, b)
    record = json.load(open(tmp_path / "run" / "run.json"))
    assert record["init_backbone"]["path"] == path
    # Another starting file is another config.
    other = ResNetBackbone(depth=10, width_multiplier=0.25, image_size=32)
    other.set_weights([w + 1.0 for w in source.get_weights()])
    other.save_weights(path)
    with pytest.raises(ConfigError, match="different config"):
        run_train(tmp_path / "run", init_backbone=path, epochs=1)


def test_init_backbone_of_another_architecture_is_refused(tmp_path):
    path = str(tmp_path / "r34.weights.h5")
    ResNetBackbone(depth=34, width_multiplier=0.25, image_size=32).save_weights(
        path
    )
    with pytest.raises(ConfigError, match="same backbone"):
        run_train(tmp_path / "run", init_backbone=path, epochs=1)
    with pytest.raises(ConfigError, match="no such file"):
        run_train(tmp_path / "run2", init_backbone=str(tmp_path / "nope.h5"))


def test_keep_and_best_metric_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="keep"):
        run_train(tmp_path, keep="first")
    with pytest.raises(ConfigError, match="best_metric"):
        run_train(tmp_path, best_metric="val_acc")


def test_labelled_fraction_of_the_run_and_of_the_dataset_multiply(tmp_path):
    dataset = Bright(n=64)  # 32 per class
    dataset.labelled_fraction = 0.5  # the dataset's share of labels
    results = run_train(
        tmp_path,
        dataset=dataset,
        labelled_fraction=0.5,
        head_norm=True,
        epochs=1,
    )
    run = json.load(open(tmp_path / "run.json"))
    # A quarter of each class trains; validation stays whole.
    assert run["class_counts"]["train"] == {"dark": 8, "bright": 8}
    assert run["labelled_fraction"] == 0.25
    assert results == {"val": {"count": 64}}


def test_labelled_fraction_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="labelled_fraction=0"):
        run_train(tmp_path, labelled_fraction=0)
