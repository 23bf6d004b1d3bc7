"""Keras callbacks that write a stage's files so that nothing is lost:
the resumable backup (`backup/`), the best epoch (`best/`) and the history
(`history.csv`), each written whole or not at all, and read back by a rerun.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil

import keras
import numpy as np
from absl import logging

from matl_keras import runs
from matl_keras.errors import ConfigError
from matl_keras.training import determinism
from matl_keras.training.monitors import diverged

_WEIGHTS = runs.BACKUP_WEIGHTS_FILE
_STATE = runs.BACKUP_STATE_FILE


def save_weights(model: keras.Model, path: str) -> None:
    """`model.save_weights(path)`, failing cleanly when the disk is full.

    HDF5 failing in the middle of a file leaves objects whose clean-up
    prints tracebacks and then crashes the process (a segmentation fault,
    seen on a full disk). So the file is built in memory, with the H5 store
    Keras itself uses inside `.keras` archives (Keras is pinned in
    setup.py), and written with one plain write, whose failure is an
    ordinary `OSError` that `workdir.writing` turns into one line.
    """
    from keras.src.saving import saving_lib

    if not model.built:
        raise ValueError(f"cannot save the weights of unbuilt {model.name}")
    buffer = io.BytesIO()
    store = saving_lib.H5IOStore(buffer, mode="w")
    try:
        saving_lib._save_state(  # noqa: SLF001
            model,
            weights_store=store,
            assets_store=None,
            inner_path="",
            visited_saveables=set(),
        )
    finally:
        store.close()
    with open(path, "wb") as f:
        f.write(buffer.getvalue())


class ResumableBackup(keras.callbacks.Callback):
    """Backs up weights and optimizer state after every epoch (and, with
    `every_steps`, inside epochs); a rerun resumes from the last complete
    backup.

    Keras' `BackupAndRestore` writes `latest.weights.h5` in place and then
    its epoch file: a kill during or between the two leaves a corrupt or
    mismatched backup. Here each backup is a folder, `epoch-N/` (N epochs
    done) or `epoch-N-step-S/` (and S steps of epoch N), written as
    `<name>.tmp/` and renamed when complete (an atomic step on POSIX); the
    previous backup is removed only after that.

    A step backup also holds what an epoch backup need not (`state.npz`):
    the random layers' seed states, restored before the first step of the
    resumed epoch, and the running sums of the epoch's metrics, added after
    it (Keras builds compiled metrics in the first step; their states are
    sums, so adding gives the uninterrupted run's values). With the
    training data a pure function of (seed, epoch, position), the resumed
    epoch then ends exactly as an uninterrupted one (the stage skips the S
    batches done: `stage_run.fit_resuming`).

    Args:
        backup_dir: str. Folder of the backups a rerun resumes from.
        write_dir: str or None. Where this process writes its backups
            (default: `backup_dir`). A non-chief worker of a multi-worker
            run resumes from the chief's `backup_dir` and writes to its own
            temporary folder.
        every_steps: int or None. Also back up every this many steps of an
            epoch (None: after epochs only).
    """

    def __init__(
        self,
        backup_dir: str,
        write_dir: str | None = None,
        every_steps: int | None = None,
    ):
        super().__init__()
        if every_steps is not None and every_steps < 1:
            raise ConfigError(
                "`backup_every_steps` must be None or at least 1. Received: "
                f"backup_every_steps={every_steps}"
            )
        self.backup_dir = backup_dir
        self.write_dir = write_dir or backup_dir
        self.every_steps = every_steps
        self.restored_epoch = 0
        self.restored_step = 0
        self._started = False
        # state.npz values restored around the first step of a resumed fit.
        self._pending_seeds = None
        self._pending_metrics = None
        self._epoch = 0
        self._offset = 0  # steps of the current epoch done before this fit

    @staticmethod
    def _complete_backups(directory: str) -> list[tuple[tuple[int, int], str]]:
        if not os.path.isdir(directory):
            return []
        found = []
        for name in os.listdir(directory):
            match = re.fullmatch(r"epoch-(\d+)(?:-step-(\d+))?", name)
            path = os.path.join(directory, name)
            if match and os.path.exists(os.path.join(path, _WEIGHTS)):
                key = (int(match.group(1)), int(match.group(2) or 0))
                found.append((key, path))
        return sorted(found)

    @staticmethod
    def resume_point(directory: str) -> tuple[int, int]:
        """(epochs done, steps of the next epoch done) by the latest
        complete backup in `directory` ((0, 0): none): where a rerun
        resumes; the stages build their training data from it before
        `fit` starts."""
        backups = ResumableBackup._complete_backups(directory)
        return backups[-1][0] if backups else (0, 0)

    @staticmethod
    def completed_epochs(directory: str) -> int:
        """Whole epochs done by the latest complete backup (see
        `resume_point`)."""
        return ResumableBackup.resume_point(directory)[0]

    def _metric_variables(self) -> list:
        return [v for m in self.model.metrics for v in m.variables]

    def _seed_variables(self) -> list:
        return determinism.seed_states(self.model)

    @staticmethod
    def _restore(variables, values, what: str, add: bool = False) -> None:
        if len(variables) != len(values):
            raise ValueError(
                f"step backup holds {len(values)} {what}, the model has "
                f"{len(variables)}"
            )
        for variable, value in zip(variables, values):
            if add:
                variable.assign_add(value)
            else:
                variable.assign(value)

    def on_train_begin(self, logs=None):
        # A stage resuming inside an epoch fits twice (that epoch's rest,
        # then the others): restore once.
        if self._started:
            return
        self._started = True
        backups = self._complete_backups(self.backup_dir)
        if not backups:
            return
        (epoch, step), path = backups[-1]
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            # SSL models keep their key encoder out of the optimizer.
            optimizer.build(
                getattr(self.model, "optimized_variables", None)
                or self.model.trainable_variables
            )
        try:
            self.model.load_weights(os.path.join(path, _WEIGHTS))
        except ValueError as e:
            # E.g. a backup of an earlier version's model (ResNets had conv
            # biases): resuming must not half-load it.
            raise ConfigError(
                f"cannot resume from the backup {path!r}: its weights do not "
                f"fit this model ({str(e).splitlines()[0]}). It was written "
                "by another version or configuration; move "
                f"{self.backup_dir!r} away to train from the start."
            ) from e
        if step:
            with np.load(os.path.join(path, _STATE)) as saved:
                self._pending_seeds = _arrays(saved, "seed")
                self._pending_metrics = _arrays(saved, "metric")
            self._offset = step
        # Read by `Model.fit` after `on_train_begin`, as for Keras'
        # BackupAndRestore.
        self.model._initial_epoch = epoch  # noqa: SLF001
        self.restored_epoch, self.restored_step = epoch, step
        where = f"epoch {epoch}" + (f", step {step}" if step else "")
        logging.info("resumed from %s (%s done)", path, where)
        print(f"resuming after {where} from {path}", flush=True)

    def on_train_end(self, logs=None):
        self.model._initial_epoch = None  # noqa: SLF001 - a next fit's own

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        # After EpochSeeds set the seeds of the epoch's start.
        if self._pending_seeds is not None:
            self._restore(
                self._seed_variables(), self._pending_seeds, "seed states"
            )
            self._pending_seeds = None

    def on_train_batch_end(self, batch, logs=None):
        if self._pending_metrics is not None:
            self._restore(
                self._metric_variables(),
                self._pending_metrics,
                "metric sums",
                add=True,
            )
            self._pending_metrics = None
        if not self.every_steps or diverged(logs):
            return
        step = self._offset + batch + 1
        steps = (self.params or {}).get("steps")
        last = steps is not None and batch + 1 >= steps  # epoch backup next
        if step % self.every_steps == 0 and not last:
            self._write(f"epoch-{self._epoch}-step-{step}", state=True)

    def on_epoch_end(self, epoch, logs=None):
        self._offset = 0
        if diverged(logs):
            return  # the last good backup stays
        self._write(f"epoch-{epoch + 1}")

    def _write(self, name: str, state: bool = False) -> None:
        final = os.path.join(self.write_dir, name)
        tmp = final + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        # A failed write (disk full) removes the partial folder and raises
        # a one-line WriteError; the last complete backup stays.
        with runs.writing(os.path.join(tmp, _WEIGHTS), partial=tmp):
            os.makedirs(tmp)
            save_weights(self.model, os.path.join(tmp, _WEIGHTS))
            if state:
                arrays = {
                    f"{kind}_{i}": v.numpy()
                    for kind, variables in (
                        ("seed", self._seed_variables()),
                        ("metric", self._metric_variables()),
                    )
                    for i, v in enumerate(variables)
                }
                np.savez(os.path.join(tmp, _STATE), **arrays)
            os.replace(tmp, final)
        for _, path in self._complete_backups(self.write_dir):
            if path != final:
                shutil.rmtree(path, ignore_errors=True)


def _arrays(saved, kind: str) -> list:
    """`kind_0, kind_1, ...` of a loaded `.npz`, in order."""
    count = sum(1 for name in saved.files if name.startswith(f"{kind}_"))
    return [saved[f"{kind}_{i}"] for i in range(count)]


def truncate_history(path: str, epochs: int) -> None:
    """Keeps in the CSV history `path` the header and one row (the last
    written) of each epoch below `epochs`.

    A run killed after an epoch's row but before its backup, or before its
    first backup, left rows that the rerun writes again; rows of an older
    version's duplicates and a row cut short by the kill go too.
    """
    if not os.path.exists(path):
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or "epoch" not in rows[0]:
        return
    header, column = rows[0], rows[0].index("epoch")
    kept: dict[int, list[str]] = {}
    for row in rows[1:]:
        if len(row) == len(header) and row[column].isdigit():
            if int(row[column]) < epochs:
                kept[int(row[column])] = row
    body = [kept[e] for e in sorted(kept)]
    if body == rows[1:]:
        return
    tmp = path + ".tmp"
    with runs.writing(path, partial=tmp):
        with open(tmp, "w", newline="") as f:
            csv.writer(f).writerows([header] + body)
        os.replace(tmp, path)


class HistoryCSV(keras.callbacks.CSVLogger):
    """`history.csv`: one row per completed epoch, exactly once after any
    crash and rerun.

    Before training it drops the rows of epochs the backup being resumed
    does not hold (`truncate_history`), then appends as Keras' CSVLogger;
    a failed write is a one-line `WriteError` naming the file.

    Args:
        filename: str. The CSV file.
        backup_dir: str. The backups the run resumes from (see
            `ResumableBackup`).
    """

    def __init__(self, filename: str, backup_dir: str):
        super().__init__(filename, append=True)
        self.backup_dir = backup_dir

    def on_train_begin(self, logs=None):
        truncate_history(
            self.filename, ResumableBackup.completed_epochs(self.backup_dir)
        )
        with runs.writing(self.filename):
            super().on_train_begin(logs)

    def on_epoch_end(self, epoch, logs=None):
        with runs.writing(self.filename):
            super().on_epoch_end(epoch, logs)


class BestCheckpoint(keras.callbacks.Callback):
    """Keeps the weights of the epoch with the best `monitor` value.

    Unlike `ModelCheckpoint(save_best_only=True)`, the best value survives a
    resume (it is stored in `best.json` beside the weights), so a resumed run
    does not overwrite a better checkpoint with a worse one. Epochs whose
    value is NaN (e.g. AUC of a split with one class) never count as best.
    The weights and their record are written together as a folder, renamed
    into place when complete.

    Args:
        directory: str. Folder that will hold `model.weights.h5` and
            `best.json`.
        monitor: str. Epoch log key, e.g. `"val_auc"`.
        mode: str. `"max"` or `"min"`.
        resume_from: str or None. The folder a resumed run reads the best
            so far from (default: `directory`; a non-chief worker reads the
            chief's and writes its own).
    """

    def __init__(
        self,
        directory: str,
        monitor: str,
        mode: str = "max",
        resume_from: str | None = None,
    ):
        super().__init__()
        if mode not in ("max", "min"):
            raise ValueError(
                f"`mode` must be 'max' or 'min'. Received: {mode!r}"
            )
        self.directory = directory
        self.resume_from = resume_from or directory
        self.monitor = monitor
        self.mode = mode
        self.best: dict | None = None
        self._best_dir = directory

    @property
    def weights_path(self) -> str:
        """The weights of the best epoch so far (this run's or, until this
        run finds a better one, the resumed run's)."""
        return os.path.join(self._best_dir, _WEIGHTS)

    def on_train_begin(self, logs=None):
        old = self.directory + ".old"
        if not os.path.isdir(self.directory) and os.path.isdir(old):
            os.replace(old, self.directory)  # killed during the swap
        record = os.path.join(self.resume_from, runs.BEST_RECORD_FILE)
        if os.path.exists(record):
            with open(record) as f:
                self.best = json.load(f)
            self._best_dir = self.resume_from

    def _better(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "max":
            return value > self.best["value"]
        return value < self.best["value"]

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if diverged(logs):
            return
        if self.monitor not in logs:
            raise KeyError(
                f"best-checkpoint metric {self.monitor!r} is not in the "
                f"epoch logs; available: {sorted(logs)}"
            )
        value = float(logs[self.monitor])
        if math.isnan(value) or not self._better(value):
            return
        best = {"epoch": epoch + 1, "monitor": self.monitor, "value": value}
        tmp, old = self.directory + ".tmp", self.directory + ".old"
        shutil.rmtree(tmp, ignore_errors=True)
        with runs.writing(os.path.join(tmp, _WEIGHTS), partial=tmp):
            os.makedirs(tmp)
            save_weights(self.model, os.path.join(tmp, _WEIGHTS))
            with open(os.path.join(tmp, runs.BEST_RECORD_FILE), "w") as f:
                json.dump(best, f)
        if os.path.isdir(self.directory):
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.directory, old)
        os.replace(tmp, self.directory)
        shutil.rmtree(old, ignore_errors=True)
        self.best = best
        self._best_dir = self.directory
