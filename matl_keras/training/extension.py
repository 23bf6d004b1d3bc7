"""Extending a finished stage with more epochs, without starting over.

A finished stage keeps its last epoch's backup (weights and optimizer
state) as `last_epoch/`. Run again with a higher epoch count and nothing
else changed (`--gin_param='FINETUNE_EPOCHS = 5'` after a 3-epoch run, or
`train(..., epochs=5)`), the stage becomes a resumed run: the backup goes
back to `backup/`, `run.json` gets an `extensions` entry, and epochs 4-5
train as the rest of any interrupted run would (history, best checkpoint
and transferability scores kept). Any other change is still refused with
the bindings that differ (`workdir.previous_run`).

The learning-rate schedule (and an SSL method's momentum schedule) is
built from the new total: epochs 4-5 run at the rates a fresh 5-epoch run
uses there, while epochs 1-3 ran on the 3-epoch schedule, whose decay
points (fractions of the training) came earlier. So an extended run equals
a fresh run of the new length bitwise only when the schedule does not
depend on the total: a constant rate (`sgd.decay_at = []`), with or without
a warm-up in epochs or steps (tested).
"""

from __future__ import annotations

import os
import re
import shutil
from typing import Any

from matl_keras import runs
from matl_keras.errors import ConfigError
from matl_keras.training import workdir as workdir_lib

# The last epoch's backup of a finished stage (what an extension resumes).
LAST_DIR = "last_epoch"
_EPOCH_PARAMS = ("train.epochs", "pretrain.epochs")
_MACRO = re.compile(r"%([A-Za-z_][A-Za-z0-9_.]*)")

SCHEDULE_NOTE = (
    "learning-rate (and SSL momentum) schedule recomputed over {new} epochs: "
    "epochs {first}-{new} follow the {new}-epoch schedule, epochs 1-{old} "
    "ran on the {old}-epoch one; bitwise equal to a fresh {new}-epoch run "
    "only if the schedule does not depend on the total (constant rate, "
    "warm-up in epochs or steps)"
)


def _resolved(text: str) -> dict[str, str]:
    """A stage config's bindings with macros substituted, macros dropped."""
    raw = runs.config_bindings(text)

    def resolve(value: str, depth: int = 0) -> str:
        def macro(match):
            name = match.group(1)
            if name in raw and depth < 20:
                return resolve(raw[name], depth + 1)
            return match.group(0)

        return _MACRO.sub(macro, value)

    return {k: resolve(v) for k, v in raw.items() if "." in k}


def _split_epochs(text: str) -> tuple[dict[str, str], int | None]:
    """(bindings other than the epoch count, the epoch count bound)."""
    bindings, epochs = {}, None
    for key, value in _resolved(text).items():
        if key.split("/")[-1] in _EPOCH_PARAMS:
            try:
                epochs = int(value)
            except ValueError:
                epochs = None
        else:
            bindings[key] = value
    return bindings, epochs


def _digest(config_text: str, init_sha: str | None) -> str:
    # As `workdir.begin` computes it (a test extends a run through `begin`).
    return runs.config_hash(
        config_text + f"\n# init_backbone sha256: {init_sha}\n"
    )


def carry(
    previous: dict[str, Any] | None, record: dict[str, Any], epochs: int
) -> None:
    """Puts into a stage's new `run.json` record its epoch count and the
    extensions of the run it continues."""
    record["epochs"] = epochs
    if previous and previous.get("extensions"):
        record["extensions"] = previous["extensions"]


def keep_last_backup(start: workdir_lib.Start) -> None:
    """Before `workdir.finish`: keeps this process's last backup as
    `last_epoch/` (instead of deleting it) so the stage can be extended."""
    backup = start.path(runs.BACKUP_DIR)
    if not os.path.isdir(backup):
        return
    last = start.path(LAST_DIR)
    shutil.rmtree(last, ignore_errors=True)
    os.replace(backup, last)


def prepare(
    workdir: str, init_backbone: str | None, epochs: int, strategy=None
) -> dict[str, Any] | None:
    """Before `workdir.begin`: when `workdir` holds a finished run whose
    config differs from this one only by a higher epoch count, turns it
    into a run to resume (see the module docstring) and returns the
    `extensions` entry; otherwise changes nothing and returns None.

    Raises:
        ConfigError: the run is to be extended but cannot be: it kept no
            `last_epoch/` backup, or the run is multi-worker.
    """
    from matl_keras.training import checkpoints
    from matl_keras.training import stage_config

    run_path = os.path.join(workdir, runs.RUN_FILE)
    if not os.path.isfile(run_path):
        return None
    record = runs.read_json(run_path)
    if record.get("status") != "complete":
        return None
    config_text = stage_config.stage_config_str()
    init_sha = (
        runs.file_sha256(init_backbone)
        if init_backbone and os.path.isfile(init_backbone)
        else None
    )
    if (record.get("init_backbone") or {}).get("sha256") != init_sha:
        return None  # refused by `begin`, naming the change
    old_path = os.path.join(workdir, "config.gin")
    old_text = open(old_path).read() if os.path.isfile(old_path) else ""
    old_bindings, old_epochs = _split_epochs(old_text)
    new_bindings, _ = _split_epochs(config_text)
    if old_bindings != new_bindings:
        return None  # another change: refused by `begin`
    old_epochs = record.get("epochs", old_epochs)
    if old_epochs is None or epochs <= old_epochs:
        return None  # the same run (skipped) or fewer epochs (refused)
    last = os.path.join(workdir, LAST_DIR)
    where = f"--workdir={workdir!r}"
    if strategy is not None and type(strategy).__name__.startswith(
        "MultiWorker"
    ):
        raise ConfigError(
            f"{where}: extending a finished stage from {old_epochs} to "
            f"{epochs} epochs works on one worker; run the extension without "
            "TF_CONFIG (or delete the stage folder to start over)"
        )
    if checkpoints.ResumableBackup.completed_epochs(last) < 1:
        # Killed after `run.json` said complete, before the rename.
        last = os.path.join(workdir, runs.BACKUP_DIR)
    if checkpoints.ResumableBackup.completed_epochs(last) < 1:
        raise ConfigError(
            f"{where}: the finished run kept no last-epoch backup "
            f"({LAST_DIR}/: stages finished before matl-keras kept one), so "
            f"it cannot be extended from {old_epochs} to {epochs} epochs. "
            "Delete the folder to start over, or use another --workdir."
        )
    runs.lock(workdir)
    done = checkpoints.ResumableBackup.completed_epochs(last)
    extension = {
        "from_epochs": old_epochs,
        "to_epochs": epochs,
        "resumed_after_epoch": done,
        "at": runs.now(),
        "changed": runs.config_diff(old_text, config_text),
        "schedule": SCHEDULE_NOTE.format(
            old=old_epochs, new=epochs, first=old_epochs + 1
        ),
    }
    backup = os.path.join(workdir, runs.BACKUP_DIR)
    if last != backup:
        shutil.rmtree(backup, ignore_errors=True)
        os.replace(last, backup)
    record.update(
        status="running",
        config_hash=_digest(config_text, init_sha),
        extensions=[*record.get("extensions", []), extension],
    )
    runs.write_json(run_path, record)
    print(
        f"{workdir}: extending the finished run from {old_epochs} to "
        f"{epochs} epochs (resuming after epoch {done}); "
        f"{extension['schedule']}",
        flush=True,
    )
    return extension
