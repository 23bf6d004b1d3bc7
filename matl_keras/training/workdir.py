"""Where a stage starts and ends in its workdir (the training side of the
run contract in `matl_keras.runs`): the config hash of the gin bindings that
reach the stage, the previous run it resumes or skips, the chief/worker
split of a multi-worker run, the versions recorded in `run.json`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import platform
import shutil
from typing import Any

from matl_keras import runs
from matl_keras.errors import ConfigError
from matl_keras.training import stage_config


@dataclasses.dataclass
class Start:
    """Where a stage stands when it starts (see `begin`)."""

    digest: str
    record: dict[str, Any] | None
    init: dict[str, str] | None
    backup_dir: str
    resuming: bool
    complete: bool
    # Where this process writes: the workdir on the chief; a temporary
    # folder on the other workers of a multi-worker run (see `finish`).
    out: str = ""
    chief: bool = True
    workdir: str = ""
    # Whether the chief's workdir held `runs.TRANSFER_FILE` at the start.
    has_transfer: bool = False

    def path(self, name: str) -> str:
        """Where this process writes the workdir's file `name`."""
        return os.path.join(self.out, name)


def finish(start: Start, strategy=None) -> None:
    """Ends a complete stage: removes the backup this process wrote (it
    holds optimizer state, 2-3x the model, not needed any more); in a
    multi-worker run waits until every worker is here (so the chief's files
    are complete before anyone reads them, e.g. the next stage's
    `init_backbone`) and removes a non-chief worker's temporary folder;
    says where the files are."""
    from matl_keras.training import strategies

    shutil.rmtree(start.path(runs.BACKUP_DIR), ignore_errors=True)
    if strategy is not None:
        strategies.broadcast_from_chief(strategy, [1])
    if start.chief:
        print(f"wrote {start.workdir}", flush=True)
    else:
        shutil.rmtree(start.out, ignore_errors=True)
        print(
            f"worker {strategies.task_index(strategy)} done (the chief "
            f"wrote {start.workdir})",
            flush=True,
        )


def releases_lock(stage_fn):
    """Decorates a stage function (one with a `workdir` argument) so that
    the workdir lock its stage takes (`begin`, `extension`) is released
    when the call ends, returned or raised, not when the interpreter exits:
    a stage called from Python (a notebook, a tool, a test) leaves its
    workdir free for the next run. A lock taken above it (a job's, a
    pipeline's, whose folder holds the stage's) stays with its taker. Only
    the chief locks (as `begin`). The signature is the stage's own, so gin
    still checks its bindings against the real arguments."""
    signature = inspect.signature(stage_fn)

    @functools.wraps(stage_fn)
    def run(*args, **kwargs):
        from matl_keras.training import strategies

        workdir = signature.bind_partial(*args, **kwargs).arguments.get(
            "workdir"
        )
        take = workdir is not None and strategies.chief_from_env()
        with runs.locked(workdir, take=take):
            return stage_fn(*args, **kwargs)

    run.__signature__ = signature
    return run


def begin(workdir: str, init_backbone: str | None, strategy=None) -> Start:
    """Starts a stage in `workdir`: config hash, previous run, `config.gin`.

    The config hash covers the gin bindings that reach the current scope
    (`stage_config.stage_config_str`) and the content of `init_backbone`.

    In a multi-worker run (`strategy`), only the chief writes `workdir`;
    the others read it and write to a temporary `Start.out`, and the
    decisions taken from its files (complete, resuming) are the chief's, on
    every worker.

    Raises:
        ConfigError: `init_backbone` is missing, the workdir cannot be
            written or holds trained results of another config.
    """
    from matl_keras.training import strategies

    chief = strategy is None or strategies.is_chief(strategy)
    if chief:
        runs.lock(workdir)
        out = workdir
    else:
        import tempfile

        out = tempfile.mkdtemp(
            prefix=f"matl-keras-worker{strategies.task_index(strategy)}-"
        )
    init = None
    if init_backbone:
        if not os.path.isfile(init_backbone):
            raise ConfigError(
                f"`init_backbone`: no such file: {init_backbone!r}"
            )
        init = {
            "path": os.path.abspath(init_backbone),
            "sha256": runs.file_sha256(init_backbone),
        }
    config_text = stage_config.stage_config_str()
    digest = runs.config_hash(
        config_text + f"\n# init_backbone sha256: {init and init['sha256']}\n"
    )
    record = runs.previous_run(workdir, digest, config_text, init)
    backup_dir = os.path.join(workdir, runs.BACKUP_DIR)
    complete = bool(record and record.get("status") == "complete")
    resuming = os.path.isdir(backup_dir)
    has_transfer = os.path.exists(os.path.join(workdir, runs.TRANSFER_FILE))
    if strategy is not None:
        complete, resuming, has_transfer = map(
            bool,
            strategies.broadcast_from_chief(
                strategy, [complete, resuming, has_transfer]
            ),
        )
    if complete:
        print(
            f"{workdir}: this run is already complete (same config); "
            "nothing to do. Delete the folder to run it again.",
            flush=True,
        )
    else:
        runs.write_text(os.path.join(out, runs.CONFIG_FILE), config_text)
    return Start(
        digest=digest,
        record=record,
        init=init,
        backup_dir=backup_dir,
        resuming=resuming,
        complete=complete,
        out=out,
        chief=chief,
        workdir=workdir,
        has_transfer=has_transfer,
    )


def versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    import gin
    import matl_keras
    from matl_keras import tf_startup

    return {
        "matl_keras": matl_keras.__version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "gin": getattr(gin, "__version__", "0.5.0"),
        "python": platform.python_version(),
        # oneDNN or Eigen kernels: the same run differs in rounding.
        "onednn": tf_startup.onednn_enabled(),
    }
