"""The files of a run: names, safe writes, identity, and finding them.

This module is the workdir contract. Everything that writes a run (the
stages) or reads one (`evaluate`, `explain`, `export`, the transferability
report, transfer scoring at a stage boundary, a notebook) names its files
through the constants here and reads them with the helpers here. It imports
neither gin nor TensorFlow (a test checks it), so a reader pays for neither.

A stage's folder (`WORKDIR/<stage>/`, or `--workdir` for a single stage):

    config.gin            CONFIG_FILE            bindings reaching it, at start
    run.json              RUN_FILE               status, config hash,
                                                 versions...
    logs/                 LOGS_DIR               TensorBoard
    history.csv           HISTORY_FILE           one row per completed epoch
    backup/               BACKUP_DIR             only while running
      epoch-N[-step-S]/   (BACKUP_WEIGHTS_FILE, BACKUP_STATE_FILE)
    best/                 BEST_DIR               supervised: the best epoch
      model.weights.h5    BACKUP_WEIGHTS_FILE
      best.json           BEST_RECORD_FILE
    model.keras           MODEL_FILE             supervised: the classifier
    ssl_model.weights.h5  SSL_MODEL_FILE         self-supervised: the method
    backbone.weights.h5   BACKBONE_FILE          the next stage starts here
    decision.json         DECISION_FILE          operating point (val)
    transferability.json  TRANSFER_FILE          sources scored before training
    metrics.json          METRICS_FILE           final scores
    operative_config.gin  OPERATIVE_CONFIG_FILE  gin values actually used

A pipeline's folder holds `summary.json` (SUMMARY_FILE, the lineage) and
`.matl-keras.lock` (LOCK_FILE) while a run holds it.

`run.json` records the state of the run (`running`, `complete`), the hash of
its gin config, versions and timings. A workdir that holds a run of another
config is refused rather than overwritten (`previous_run`); a killed run of
the same config is resumed; a complete one is not recomputed.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from matl_keras.errors import ConfigError
from matl_keras.errors import WriteError

# --- a stage's folder ------------------------------------------------------
CONFIG_FILE = "config.gin"
OPERATIVE_CONFIG_FILE = "operative_config.gin"
RUN_FILE = "run.json"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
LOGS_DIR = "logs"
BACKUP_DIR = "backup"
BEST_DIR = "best"
# Inside `backup/epoch-N[-step-S]/` and `best/`.
BACKUP_WEIGHTS_FILE = "model.weights.h5"
BACKUP_STATE_FILE = "state.npz"
BEST_RECORD_FILE = "best.json"
MODEL_FILE = "model.keras"
SSL_MODEL_FILE = "ssl_model.weights.h5"
BACKBONE_FILE = "backbone.weights.h5"
DECISION_FILE = "decision.json"
TRANSFER_FILE = "transferability.json"
# --- a pipeline's folder ---------------------------------------------------
SUMMARY_FILE = "summary.json"
# The lock of a workdir held by a live run (see `lock`).
LOCK_FILE = ".matl-keras.lock"


# OS errors that mean "the disk (or quota, or file size limit) is full" or
# "this filesystem cannot be written": the user's to fix, anywhere.
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


def os_errno(error: OSError) -> int | None:
    """The OS error number, also when only the message has it: h5py's
    (`errno = 28`) and gin's re-raised copy (`[Errno 28] ...`)."""
    if error.errno:
        return error.errno
    match = re.search(r"errno = (\d+)|^\[Errno (\d+)\]", str(error))
    return int(match.group(1) or match.group(2)) if match else None


def _failed_file(error: OSError) -> str | None:
    """The file named by the error, or by its message (h5py, gin)."""
    if error.filename:
        return str(error.filename)
    first = str(error).splitlines()[0] if str(error) else ""
    match = re.search(r"filename = '([^']+)'|^\[Errno \d+\] .*: '(.+)'$", first)
    return (match.group(1) or match.group(2)) if match else None


def _release(error: BaseException) -> None:
    """Frees what the failed write's frames hold (an h5py file half
    written) now, so that h5py's failure to close it is not printed later
    as "Exception ignored" tracebacks (or worse, at exit)."""
    import gc
    import traceback

    hook = sys.unraisablehook

    def quiet(unraisable):
        if not isinstance(unraisable.exc_value, (RuntimeError, OSError)):
            hook(unraisable)

    sys.unraisablehook = quiet
    try:
        traceback.clear_frames(error.__traceback__)
        gc.collect()
    finally:
        sys.unraisablehook = hook


def as_write_error(error: OSError, path: str | None = None) -> WriteError:
    """The one-line `WriteError` of an OS error while writing `path`."""
    number = os_errno(error)
    reason = os.strerror(number) if number else (error.strerror or str(error))
    reason = reason[:1].lower() + reason[1:]
    _release(error)
    return WriteError(
        f"cannot write {path or _failed_file(error) or 'a file'}: {reason}"
        f"{f' (errno {number})' if number else ''}. Free some space (or "
        "fix the folder) and run the same command again: it resumes from "
        "the last complete backup, which is kept."
    )


def reported_write_error(error: BaseException) -> WriteError | None:
    """The `WriteError` of a failed write that TensorFlow reports in its
    own words (TensorBoard's event files: a `ResourceExhaustedError`
    "{{...}} FILE; No space left on device"), or None for other errors."""
    text = str(error)
    for number in WRITE_ERRNOS:
        reason = os.strerror(number)
        match = re.search(rf"([^\s{{}}]+); {re.escape(reason)}", text)
        if match:
            return as_write_error(OSError(number, reason, match.group(1)))
    return None


@contextlib.contextmanager
def writing(path: str, partial: str | None = None) -> Iterator[None]:
    """Turns an `OSError` (h5py's too) raised while writing `path` into a
    one-line `WriteError` that names `path` and the OS reason.

    Args:
        path: str. The file being written.
        partial: str or None. A temporary file or folder the write was
            filling, removed on failure (it frees the space it took).
    """
    try:
        yield
    except WriteError:
        raise
    except OSError as e:
        error = as_write_error(e, path)
        if partial is not None:
            shutil.rmtree(partial, ignore_errors=True)
            if os.path.isfile(partial):
                os.remove(partial)
        raise error from None


def write_text(path: str, text: str) -> None:
    """Writes a text file atomically: a reader (or a rerun after a kill or
    a power cut) sees the old file or the new one, never a part.

    The text goes to a temporary file of its own in the same folder (two
    writers never share one), is flushed to the disk, then renamed over
    `path`; the rename is made durable by syncing the folder.
    """
    folder = os.path.dirname(os.path.abspath(path))
    with writing(path):
        fd, tmp = tempfile.mkstemp(
            prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder
        )
    with writing(path, partial=tmp):
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    _sync_folder(folder)


def _sync_folder(folder: str) -> None:
    """Makes a rename in `folder` durable (best effort: some filesystems
    cannot open or sync a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json(path: str, data: Any) -> None:
    """Writes JSON atomically (temp file + rename)."""
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def config_hash(config_text: str) -> str:
    return hashlib.sha256(config_text.encode()).hexdigest()[:16]


def file_sha256(path: str) -> str:
    """Content hash of a file (first 16 hex digits), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


# Workdirs this process has locked: real path -> open file descriptor.
_HELD: dict[str, int] = {}


def _holds(real: str) -> bool:
    """Whether this process holds `real` or a folder above it (a pipeline's
    lock covers its stages)."""
    return any(
        real == held or real.startswith(held.rstrip(os.sep) + os.sep)
        for held in _HELD
    )


def _describe(info: dict[str, Any]) -> str:
    return (
        f"pid {info.get('pid', '?')} on {info.get('host', '?')} since "
        f"{info.get('start', '?')} (command {info.get('command', '?')})"
    )


def _read_lock(fd: int) -> dict[str, Any]:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 1 << 16).decode(errors="replace")
    try:
        info = json.loads(text)
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def lock(workdir: str) -> bool:
    """Makes this process the only run writing `workdir`, until it exits.

    Two runs into one workdir would interleave `history.csv`, duplicate
    TensorBoard steps and replace each other's model silently. The lock file
    `LOCK_FILE` names its owner (pid, host, start, command); liveness is an
    `fcntl.flock` on it, which the kernel drops when the owner dies however
    it dies, so a lock left by a killed run is taken over (with a message).
    Re-entrant: a workdir this process holds, or a folder inside one (a
    pipeline's stages), is not locked again. Released by `unlock`, or at
    exit.

    Returns:
        True where this call took the lock; False where this process
        already held it (then the caller that took it releases it).

    Raises:
        ConfigError: another live run holds the workdir.
    """
    prepare(workdir)
    real = os.path.realpath(workdir)
    if _holds(real):
        return False
    path = os.path.join(real, LOCK_FILE)
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        except FileExistsError:
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue  # Released meanwhile: create it.
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info = _read_lock(fd)
            os.close(fd)
            raise ConfigError(
                f"--workdir={workdir!r} is in use by {_describe(info)}. "
                "Wait for it to end, or use another --workdir."
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # Locked a file its owner removed on release: retry.
    old = _read_lock(fd)
    if old:
        print(
            f"{workdir}: taking over the lock of a run that ended without "
            f"releasing it: {_describe(old)}",
            flush=True,
        )
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "start": now(),
        "command": " ".join(sys.argv),
    }
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(info) + "\n").encode())
    os.fsync(fd)
    _HELD[real] = fd
    return True


def unlock(workdir: str) -> None:
    """Releases the lock `lock` took on `workdir` (no-op if not held)."""
    fd = _HELD.pop(os.path.realpath(workdir), None)
    if fd is None:
        return
    try:
        os.unlink(os.path.join(os.path.realpath(workdir), LOCK_FILE))
    except FileNotFoundError:
        pass
    os.close(fd)  # Closing drops the flock, after the file is gone.


@contextlib.contextmanager
def locked(workdir: str, take: bool = True) -> Iterator[None]:
    """`lock(workdir)` for the `with` block: released at its end, returned
    or raised, where this call took it (a lock this process already held
    stays with its taker). `take=False` locks nothing (a multi-worker
    run's non-chief workers, which write elsewhere)."""
    took = take and lock(workdir)
    try:
        yield
    finally:
        if took:
            unlock(workdir)


@atexit.register
def _unlock_all() -> None:
    for real in list(_HELD):
        unlock(real)


def prepare(workdir: str) -> None:
    """Creates `workdir` or raises a `ConfigError` that names it."""
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise ConfigError(
            f"--workdir={workdir!r} cannot be written: {e.strerror or e}"
        ) from e


def config_bindings(text: str) -> dict[str, str]:
    """`{binding or macro: value}` of a gin config text as gin writes it
    (`config.gin`): one binding per line, a value continued on indented
    lines, comments and blank lines ignored."""
    bindings: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if line[0].isspace() and key is not None:
            bindings[key] += " " + stripped
            continue
        name, sep, value = stripped.partition("=")
        if sep:
            key = name.strip()
            bindings[key] = value.strip()
    return bindings


def config_diff(old: str, new: str, limit: int = 8) -> str:
    """The bindings that differ between two gin config texts, on one line:
    `NAME: OLD -> NEW`, `NAME = OLD (not bound now)`, `NAME = NEW (new)`;
    after `limit` of them, how many more."""
    before, after = config_bindings(old), config_bindings(new)
    changes = []
    for name in sorted(before.keys() | after.keys()):
        if name not in after:
            changes.append(f"{name} = {before[name]} (not bound now)")
        elif name not in before:
            changes.append(f"{name} = {after[name]} (new)")
        elif before[name] != after[name]:
            changes.append(f"{name}: {before[name]} -> {after[name]}")
    more = len(changes) - limit
    return "; ".join(changes[:limit]) + (
        f"; and {more} more" if more > 0 else ""
    )


def _what_changed(
    workdir: str,
    record: dict[str, Any],
    config_text: str | None,
    init: dict[str, str] | None,
) -> str:
    """What differs between the run recorded in `workdir` and this one."""
    parts = []
    old_init = (record.get("init_backbone") or {}).get("sha256")
    new_init = (init or {}).get("sha256")
    if old_init != new_init:
        parts.append(f"init_backbone content sha256: {old_init} -> {new_init}")
    path = os.path.join(workdir, CONFIG_FILE)
    if config_text is not None and os.path.exists(path):
        with open(path) as f:
            diff = config_diff(f.read(), config_text)
        if diff:
            parts.append(diff)
    return "; ".join(parts)


def previous_run(
    workdir: str,
    digest: str,
    config_text: str | None = None,
    init: dict[str, str] | None = None,
) -> dict[str, Any] | None:
    """The run recorded in `workdir`, if it has the same config.

    A run of another config that never completed an epoch (no `backup/`,
    e.g. it stopped on a wrong weights path) holds nothing to lose: it is
    forgotten and the workdir reused.

    Args:
        workdir: str. The stage's folder.
        digest: str. This run's config hash.
        config_text: str or None. This run's stage config (what
            `config.gin` holds); the refusal then names the bindings that
            differ from the recorded run's `config.gin`.
        init: dict or None. This run's `init_backbone` record.

    Raises:
        ConfigError: the workdir holds trained results of another config.
    """
    path = os.path.join(workdir, RUN_FILE)
    if not os.path.exists(path):
        return None
    record = read_json(path)
    trained = record.get("status") == "complete" or os.path.isdir(
        os.path.join(workdir, BACKUP_DIR)
    )
    if record.get("config_hash") != digest and not trained:
        return None
    if record.get("config_hash") != digest:
        changed = _what_changed(workdir, record, config_text, init)
        changed = f"; changed: {changed}" if changed else ""
        raise ConfigError(
            f"--workdir={workdir!r} already holds a run with a different "
            f"config (config hash {record.get('config_hash')}, this one "
            f"{digest}; see {os.path.join(workdir, CONFIG_FILE)}{changed}). "
            "Use another --workdir, or delete that one to start over."
        )
    return record


# --- finding a trained model ----------------------------------------------
@dataclasses.dataclass
class Trained:
    """A trained classifier's files (`find`); `evaluation.trained.load`
    loads its model.

    Args:
        model_path: str. Its `model.keras` (or the `.keras` file given).
        stage_dir: str. The stage folder it is in.
        run: dict. That stage's `run.json` (empty for a model from
            elsewhere).
        lineage: list of dict. The pipeline's lineage (`summary.json`)
            when a pipeline folder was given, else empty.
    """

    model_path: str
    stage_dir: str
    run: dict[str, Any]
    lineage: list[dict[str, Any]]

    @property
    def class_names(self) -> list[str]:
        return list(self.run.get("class_names") or [])

    def preprocessing(self, default_size: int) -> dict[str, Any]:
        """`image_size`, `crop_fraction` of evaluation (run.json), or the
        model's input size without a crop for models from elsewhere."""
        return self.run.get("preprocessing") or {
            "image_size": default_size,
            "crop_fraction": 1.0,
        }


def find(path: str, flag: str = "--model") -> Trained:
    """Resolves what a user points at, a `model.keras` file, a stage folder
    or a pipeline folder (its last stage with a classifier), to a `Trained`.

    Raises:
        ConfigError: nothing there, no classifier, or an unfinished stage;
            the message names `flag`.
    """
    if not os.path.exists(path):
        raise ConfigError(f"{flag}: {path!r} does not exist")
    lineage: list[dict[str, Any]] = []
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, SUMMARY_FILE)):
        summary = read_json(os.path.join(path, SUMMARY_FILE))
        lineage = summary.get("lineage", [])
        stages = [
            os.path.join(path, entry["workdir"])
            for entry in lineage
            if os.path.isfile(os.path.join(path, entry["workdir"], MODEL_FILE))
        ]
        if not stages:
            raise ConfigError(
                f"{flag}: the run {path!r} has no stage with a {MODEL_FILE} "
                "(a classifier) yet"
            )
        path = stages[-1]
    if os.path.isdir(path):
        stage_dir, model_path = path, os.path.join(path, MODEL_FILE)
        if not os.path.isfile(model_path):
            raise ConfigError(
                f"{flag}: {path!r} has no {MODEL_FILE}; point at a finished "
                "supervised stage, a pipeline workdir or a .keras file"
            )
    elif path.endswith(".keras"):
        stage_dir, model_path = os.path.dirname(os.path.abspath(path)), path
    else:
        raise ConfigError(
            f"{flag}: expected a .keras file or a workdir. Received: {path!r}"
        )
    run_path = os.path.join(stage_dir, RUN_FILE)
    run = read_json(run_path) if os.path.isfile(run_path) else {}
    if run and run.get("status") != "complete":
        raise ConfigError(
            f"{flag}: the stage in {stage_dir!r} is not complete "
            f"(status {run.get('status')!r}); finish it first"
        )
    return Trained(model_path, stage_dir, run, lineage)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
