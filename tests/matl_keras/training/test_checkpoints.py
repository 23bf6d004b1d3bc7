"""The callbacks that write a stage's files (`training.checkpoints`): the
resumable backup, the best epoch, the history; each survives a kill."""

import os

import keras
import numpy as np
import pytest

from matl_keras.errors import ConfigError
from matl_keras.training import checkpoints


def _tiny_model(use_bias=True):
    inputs = keras.Input((3,))
    model = keras.Model(
        inputs, keras.layers.Dense(2, use_bias=use_bias)(inputs)
    )
    model.compile(optimizer="sgd", loss="mse")
    return model


def test_backup_ignores_a_half_written_one_and_keeps_the_last(tmp_path):
    model = _tiny_model()
    backup = checkpoints.ResumableBackup(str(tmp_path))
    backup.set_model(model)
    backup.on_epoch_end(0, {"loss": 1.0})
    saved = [w.copy() for w in model.get_weights()]
    model.set_weights([w + 1 for w in saved])
    backup.on_epoch_end(1, {"loss": 1.0})
    assert sorted(os.listdir(tmp_path)) == ["epoch-2"]
    model.set_weights([w + 5 for w in saved])
    backup.on_epoch_end(2, {"loss": float("nan")})  # diverged: not backed up
    os.makedirs(tmp_path / "epoch-3.tmp")  # killed while writing
    (tmp_path / "epoch-3.tmp" / "model.weights.h5").write_bytes(b"garbage")
    fresh = _tiny_model()
    restore = checkpoints.ResumableBackup(str(tmp_path))
    restore.set_model(fresh)
    restore.on_train_begin()
    assert restore.restored_epoch == 2 and fresh._initial_epoch == 2
    for a, b in zip(fresh.get_weights(), saved):
        np.testing.assert_array_equal(a, b + 1)


def test_a_backup_of_another_model_is_refused_and_kept(tmp_path):
    """E.g. a run started before the ResNets lost their conv biases."""
    backup = checkpoints.ResumableBackup(str(tmp_path))
    backup.set_model(_tiny_model(use_bias=True))
    backup.on_epoch_end(0, {"loss": 1.0})
    restore = checkpoints.ResumableBackup(str(tmp_path))
    restore.set_model(_tiny_model(use_bias=False))
    with pytest.raises(
        ConfigError, match="cannot resume from the backup.*epoch-1.*move"
    ):
        restore.on_train_begin()
    assert os.listdir(tmp_path / "epoch-1")  # nothing deleted


def test_best_checkpoint_survives_a_resume(tmp_path):
    model = _tiny_model()
    best = checkpoints.BestCheckpoint(str(tmp_path / "best"), "val_auc")
    best.set_model(model)
    best.on_train_begin()
    best.on_epoch_end(0, {"loss": 1.0, "val_auc": 0.7})
    kept = [w.copy() for w in model.get_weights()]
    model.set_weights([w + 1 for w in kept])
    best.on_epoch_end(1, {"loss": 1.0, "val_auc": float("nan")})
    # A new process: the best value is read back, a worse epoch is ignored.
    again = checkpoints.BestCheckpoint(str(tmp_path / "best"), "val_auc")
    again.set_model(model)
    again.on_train_begin()
    again.on_epoch_end(2, {"loss": 1.0, "val_auc": 0.6})
    assert again.best == {"epoch": 1, "monitor": "val_auc", "value": 0.7}
    model.load_weights(again.weights_path)
    for a, b in zip(model.get_weights(), kept):
        np.testing.assert_array_equal(a, b)
    again.on_epoch_end(3, {"loss": 1.0, "val_auc": 0.9})
    assert again.best["epoch"] == 4
    assert sorted(os.listdir(tmp_path)) == ["best"]


def test_loss_minimised_when_best_metric_is_a_loss(tmp_path):
    model = _tiny_model()
    best = checkpoints.BestCheckpoint(
        str(tmp_path / "b"), "val_loss", mode="min"
    )
    best.set_model(model)
    best.on_train_begin()
    for epoch, loss in enumerate([0.5, 0.7, 0.3]):
        best.on_epoch_end(epoch, {"loss": 1.0, "val_loss": loss})
    assert best.best["epoch"] == 3


def test_truncate_history_keeps_one_row_per_backed_up_epoch(tmp_path):
    path = str(tmp_path / "history.csv")
    with open(path, "w", newline="") as f:
        f.write("epoch,loss\r\n0,1.0\r\n0,0.9\r\n1,0.8\r\n2,0.7\r\n3,0.")
    checkpoints.truncate_history(path, 2)
    # The last row of a repeated epoch (the one the backup holds) is kept.
    assert open(path).read() == "epoch,loss\n0,0.9\n1,0.8\n"
    checkpoints.truncate_history(path, 0)  # killed before any backup
    assert open(path).read() == "epoch,loss\n"
    checkpoints.truncate_history(str(tmp_path / "none.csv"), 3)  # no file
