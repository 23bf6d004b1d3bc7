"""More epochs for a finished stage: it resumes its last epoch instead of
starting over; any other change is still refused."""

import csv
import json

import pytest

import gin
from matl_keras import config
from matl_keras.errors import ConfigError
from matl_keras.training import optimizers
from tests.matl_keras.training.stage_testing import reproducible_train as _train


def _bind(*bindings):
    """The stage config as the CLI would give it (`E` plays
    FINETUNE_EPOCHS); the stage itself gets its arguments directly."""
    gin.clear_config()
    config.register_core()
    gin.parse_config(["E = 2", "train.epochs = %E", *bindings])


# A constant rate: the schedule does not depend on the total, so 2 + 1
# epochs must equal a fresh 3-epoch run bitwise.
CONSTANT = dict(
    optimizer=lambda **kw: optimizers.sgd(learning_rate=0.1, decay_at=(), **kw)
)


def test_raising_epochs_extends_and_equals_a_fresh_run(tmp_path):
    _bind("E = 3")
    _train(tmp_path / "fresh", epochs=3, **CONSTANT)

    _bind()
    _train(tmp_path / "extended", epochs=2, **CONSTANT)
    assert (tmp_path / "extended" / "last_epoch" / "epoch-2").is_dir()
    _bind("E = 3")
    _train(tmp_path / "extended", epochs=3, **CONSTANT)

    record = json.load(open(tmp_path / "extended" / "run.json"))
    assert record["status"] == "complete" and record["epochs"] == 3
    (extension,) = record["extensions"]
    assert extension["from_epochs"] == 2 and extension["to_epochs"] == 3
    assert extension["resumed_after_epoch"] == 2
    assert extension["changed"] == "E: 2 -> 3"
    assert "recomputed over 3 epochs" in extension["schedule"]
    assert (tmp_path / "extended" / "last_epoch" / "epoch-3").is_dir()
    rows = [
        list(csv.DictReader(open(tmp_path / d / "history.csv")))
        for d in ("fresh", "extended")
    ]
    assert [int(r["epoch"]) for r in rows[1]] == [0, 1, 2]
    assert rows[0] == rows[1]
    _assert_weights_equal(tmp_path / "fresh", tmp_path / "extended")

    # The same command again: complete, nothing to do.
    _train(tmp_path / "extended", epochs=3, **CONSTANT)
    assert (
        len(json.load(open(tmp_path / "extended" / "run.json"))["extensions"])
        == 1
    )


def _assert_weights_equal(a, b):
    import numpy as np

    from tests.matl_keras.training.stage_testing import weights_of as _weights

    first, second = (
        _weights(a / "backbone.weights.h5"),
        _weights(b / "backbone.weights.h5"),
    )
    assert first.keys() == second.keys()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)


def test_other_changes_and_fewer_epochs_are_still_refused(tmp_path):
    _bind()
    _train(tmp_path, epochs=2)
    _bind("E = 3", "train.dropout = 0.3")
    with pytest.raises(
        ConfigError, match=r"changed: .*E: 2 -> 3.*train.dropout"
    ):
        _train(tmp_path, epochs=3)
    _bind("E = 1")
    with pytest.raises(ConfigError, match=r"changed: E: 2 -> 1"):
        _train(tmp_path, epochs=1)
    # A run finished without its last-epoch backup cannot be extended.
    import shutil

    shutil.rmtree(tmp_path / "last_epoch")
    _bind("E = 3")
    with pytest.raises(
        ConfigError, match="kept no last-epoch backup.*from 2 to 3"
    ):
        _train(tmp_path, epochs=3)


def test_pretraining_is_extended_too(tmp_path):
    from tests.matl_keras.training.ssl_testing import pretrain as _pretrain

    _pretrain(tmp_path, epochs=1, monitor_split=None)
    _pretrain(tmp_path, epochs=2, monitor_split=None)
    record = json.load(open(tmp_path / "run.json"))
    assert record["status"] == "complete" and record["resumed"] is True
    assert [
        (e["from_epochs"], e["to_epochs"]) for e in record["extensions"]
    ] == [(1, 2)]
    rows = list(csv.DictReader(open(tmp_path / "history.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
