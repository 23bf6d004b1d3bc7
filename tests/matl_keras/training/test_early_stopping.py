"""Early stopping of the supervised stage: the decision by hand, and the
same decision after a kill and a resume."""

import csv
import json

import pytest

from matl_keras.errors import ConfigError
from matl_keras.training import early_stopping
from matl_keras.training import supervised
from tests.matl_keras.training.stage_testing import run_train


def test_decide_by_hand():
    # max mode, patience 2, min_delta 0.05: epoch 2 (+0.1) improves, epoch
    # 3 (+0.03) does not, epoch 4 does not (NaN): stop after epoch 4.
    state = early_stopping.decide(
        [0.5, 0.6, 0.63, float("nan"), 0.9], "max", 2, 0.05
    )
    assert state == {
        "best_epoch": 2,
        "best_value": 0.6,
        "wait": 2,
        "stopped_epoch": 4,
    }
    # min mode (val_loss): a lower value improves.
    state = early_stopping.decide([1.0, 0.8, 0.9], "min", 2, 0.0)
    assert state["stopped_epoch"] is None and state["best_epoch"] == 2


@pytest.mark.parametrize(
    "patience, min_delta, match",
    [
        (0, 0.0, "early_stopping_patience=0"),
        (1.5, 0.0, "early_stopping_patience=1.5"),
        (2, -0.1, "early_stopping_min_delta=-0.1"),
    ],
)
def test_arguments_are_checked(patience, min_delta, match):
    with pytest.raises(ConfigError, match=match):
        early_stopping.check(patience, min_delta)


def _epochs(workdir):
    return [
        int(r["epoch"]) for r in csv.DictReader(open(workdir / "history.csv"))
    ]


def test_stops_and_a_killed_run_resumes_to_the_same_decision(
    tmp_path, monkeypatch
):
    """No epoch improves by more than min_delta=10 on accuracy: epoch 1 is
    the best, patience 2 stops after epoch 3 of 6. Killed before epoch 3
    (index 2), the resumed run must still stop after epoch 3 (a fresh
    counter would run to epoch 5); killed after the decision but before
    the stage finished, the rerun trains no further epoch."""
    from matl_keras.training import monitors as callbacks_lib

    kwargs = dict(
        epochs=6,
        keep="last",
        early_stopping_patience=2,
        early_stopping_min_delta=10.0,
    )

    class Killed(callbacks_lib.Throughput):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise KeyboardInterrupt
            super().on_epoch_begin(epoch, logs)

    monkeypatch.setattr(callbacks_lib, "Throughput", Killed)
    with pytest.raises(KeyboardInterrupt):
        run_train(tmp_path, **kwargs)
    monkeypatch.undo()
    assert _epochs(tmp_path) == [0, 1]

    def killed_after_fit(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(supervised, "evaluate", killed_after_fit)
    with pytest.raises(KeyboardInterrupt):
        run_train(tmp_path, **kwargs)
    monkeypatch.undo()
    assert _epochs(tmp_path) == [0, 1, 2]  # stopped after epoch 3

    run_train(tmp_path, **kwargs)
    assert _epochs(tmp_path) == [0, 1, 2]  # nothing more trained
    record = json.load(open(tmp_path / "run.json"))
    assert record["status"] == "complete"
    stop = record["early_stopping"]
    assert stop["stopped_epoch"] == 3 and stop["best_epoch"] == 1
    assert stop["monitor"] == "val_accuracy" and stop["patience"] == 2
    assert "did not improve by more than 10.0 for 2 epoch(s)" in stop["reason"]
    assert record["kept"] == {"keep": "last", "epoch": 3}


def test_without_patience_nothing_stops(tmp_path):
    run_train(tmp_path, epochs=2, early_stopping_min_delta=10.0)
    record = json.load(open(tmp_path / "run.json"))
    assert "early_stopping" not in record
    assert _epochs(tmp_path) == [0, 1]
