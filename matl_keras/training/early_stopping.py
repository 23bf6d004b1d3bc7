"""Early stopping of a supervised stage, resumable.

The stage stops when its monitored validation metric (`train.best_metric`)
has not improved by more than `min_delta` for `patience` epochs; the kept
model is then, as always, the best checkpoint (`keep='best'`) or the last
epoch trained (`keep='last'`).

Keras' `EarlyStopping` keeps its counters in memory: a run killed and
resumed would count from zero again and stop later than the uninterrupted
run. Here every epoch's monitored value is written to
`early_stopping.json` before that epoch's backup; a resumed run reads the
values of the epochs its backup holds and takes exactly the uninterrupted
run's decision (also when the kill came after the decision, before the
stage finished: it then trains no further epoch).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import keras

from matl_keras import runs
from matl_keras.errors import ConfigError

STATE_FILE = "early_stopping.json"


def check(patience: int | None, min_delta: float) -> None:
    """Refuses bad `early_stopping_patience` / `early_stopping_min_delta`."""
    if patience is not None and (
        isinstance(patience, bool)
        or not isinstance(patience, int)
        or patience < 1
    ):
        raise ConfigError(
            "`early_stopping_patience` must be None (off) or an int >= 1. "
            f"Received: early_stopping_patience={patience!r}"
        )
    if not isinstance(min_delta, (int, float)) or min_delta < 0:
        raise ConfigError(
            "`early_stopping_min_delta` must be a number >= 0. Received: "
            f"early_stopping_min_delta={min_delta!r}"
        )


def decide(
    values: Sequence[float], mode: str, patience: int, min_delta: float
) -> dict[str, Any]:
    """The early-stopping state after the epochs whose monitored values are
    `values` (epoch 1 first). Pure: the callback and a resumed run use it.

    An epoch improves when its value beats the best so far by more than
    `min_delta` (`mode` `"max"`: higher is better; `"min"`: lower); the
    first finite value is the first best; NaN never improves. The stage
    stops after the epoch at which `patience` epochs in a row have not
    improved.

    Returns:
        `{"best_epoch", "best_value", "wait", "stopped_epoch"}` (epochs
        1-based; `stopped_epoch` None while training goes on).
    """
    best_epoch, best_value, wait = None, None, 0
    for epoch, value in enumerate(values, start=1):
        value = float(value)
        if math.isnan(value):
            improved = False
        elif best_value is None:
            improved = True
        elif mode == "max":
            improved = value > best_value + min_delta
        else:
            improved = value < best_value - min_delta
        if improved:
            best_epoch, best_value, wait = epoch, value, 0
        else:
            wait += 1
        if wait >= patience:
            return {
                "best_epoch": best_epoch,
                "best_value": best_value,
                "wait": wait,
                "stopped_epoch": epoch,
            }
    return {
        "best_epoch": best_epoch,
        "best_value": best_value,
        "wait": wait,
        "stopped_epoch": None,
    }


class EarlyStopping(keras.callbacks.Callback):
    """Stops `fit` when `monitor` stops improving; survives a resume.

    Args:
        directory: str. Where this process writes `early_stopping.json`.
        monitor: str. Epoch log key (the stage's `best_metric`).
        mode: str. `"max"` or `"min"`.
        patience: int. Epochs without improvement before stopping.
        min_delta: float. Smallest change that counts as an improvement.
        backup_dir: str. The backups the run resumes from: only the values
            of the epochs they hold are read back.
        resume_from: str or None. The folder a resumed run reads the state
            from (default: `directory`; a non-chief worker reads the
            chief's).
    """

    def __init__(
        self,
        directory: str,
        monitor: str,
        mode: str,
        patience: int,
        min_delta: float,
        backup_dir: str,
        resume_from: str | None = None,
    ):
        super().__init__()
        self.path = os.path.join(directory, STATE_FILE)
        self.resume_path = os.path.join(resume_from or directory, STATE_FILE)
        self.monitor = monitor
        self.mode = mode
        self.patience = patience
        self.min_delta = min_delta
        self.backup_dir = backup_dir
        self.values: dict[int, float] = {}
        self.restore()

    def restore(self) -> None:
        """Reads the monitored values of the epochs the backup holds."""
        from matl_keras.training.checkpoints import ResumableBackup

        done = ResumableBackup.completed_epochs(self.backup_dir)
        self.values = {}
        if done and os.path.exists(self.resume_path):
            saved = runs.read_json(self.resume_path)
            self.values = {
                int(e): float(v)
                for e, v in saved.get("values", {}).items()
                if int(e) < done
            }

    def state(self) -> dict[str, Any]:
        ordered = [self.values[e] for e in sorted(self.values)]
        return decide(ordered, self.mode, self.patience, self.min_delta)

    @property
    def stopped_epoch(self) -> int | None:
        """The last epoch trained (1-based) when the stage stopped early."""
        return self.state()["stopped_epoch"]

    def epochs_to_fit(self, start_epoch: int, epochs: int) -> int:
        """`epochs`, or `start_epoch` when the epochs already done decided
        to stop (a run killed after the decision trains nothing more)."""
        return start_epoch if self.stopped_epoch is not None else epochs

    def on_epoch_end(self, epoch, logs=None):
        from matl_keras.training.monitors import diverged as _diverged

        logs = logs or {}
        if _diverged(logs):
            return
        if self.monitor not in logs:
            raise KeyError(
                f"early-stopping metric {self.monitor!r} is not in the epoch "
                f"logs; available: {sorted(logs)}"
            )
        self.values[epoch] = float(logs[self.monitor])
        runs.write_json(
            self.path,
            {
                "monitor": self.monitor,
                "mode": self.mode,
                "values": {str(e): v for e, v in sorted(self.values.items())},
            },
        )
        state = self.state()
        if state["stopped_epoch"] is not None:
            self.model.stop_training = True
            print(f"early stopping: {self.reason(state)}", flush=True)

    def reason(self, state: dict[str, Any]) -> str:
        return (
            f"{self.monitor} did not improve by more than {self.min_delta} "
            f"for {self.patience} epoch(s) after epoch {state['best_epoch']} "
            f"({state['best_value']}); stopped after epoch "
            f"{state['stopped_epoch']}"
        )

    def record(self, epochs: int) -> dict[str, Any]:
        """What `run.json` records under `early_stopping`."""
        state = self.state()
        return {
            "monitor": self.monitor,
            "patience": self.patience,
            "min_delta": self.min_delta,
            "epochs": epochs,
            "stopped_epoch": state["stopped_epoch"],
            "best_epoch": state["best_epoch"],
            "best_value": state["best_value"],
            "reason": (
                self.reason(state)
                if state["stopped_epoch"] is not None
                else f"not stopped: ran all {epochs} epochs"
            ),
        }


def for_stage(
    patience: int | None,
    min_delta: float,
    monitor: str,
    directory: str,
    backup_dir: str,
    resume_from: str,
) -> EarlyStopping | None:
    """The stage's callback, or None when `patience` is None (off)."""
    check(patience, min_delta)
    if patience is None:
        return None
    return EarlyStopping(
        directory,
        monitor,
        "min" if monitor == "val_loss" else "max",
        patience,
        min_delta,
        backup_dir,
        resume_from,
    )
