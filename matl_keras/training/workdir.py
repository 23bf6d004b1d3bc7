"""The files of a run in its workdir, written so that nothing is lost.

`run.json` records the state of the run (`running`, `complete`), the hash of
its gin config, versions and timings. A workdir that holds a run of another
config is refused rather than overwritten; a killed run of the same config is
resumed; a complete one is not recomputed.
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
import platform
import re
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

from matl_keras.errors import ConfigError
from matl_keras.errors import WriteError

# The files of a stage's workdir that other parts read (the next stage,
# transferability scoring, `evaluate`/`explain`/`export`).
RUN_FILE = "run.json"
MODEL_FILE = "model.keras"
BACKBONE_FILE = "backbone.weights.h5"
TRANSFER_FILE = "transferability.json"
# A pipeline's lineage, in the pipeline's workdir.
SUMMARY_FILE = "summary.json"


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
    """Writes a text file atomically (temp file + rename)."""
    tmp = f"{path}.tmp"
    with writing(path, partial=tmp):
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)


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


# The lock of a workdir held by a live run (see `lock`).
LOCK_FILE = ".matl-keras.lock"
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


def lock(workdir: str) -> None:
    """Makes this process the only run writing `workdir`, until it exits.

    Two runs into one workdir would interleave `history.csv`, duplicate
    TensorBoard steps and replace each other's model silently. The lock file
    `LOCK_FILE` names its owner (pid, host, start, command); liveness is an
    `fcntl.flock` on it, which the kernel drops when the owner dies however
    it dies, so a lock left by a killed run is taken over (with a message).
    Re-entrant: a workdir this process holds, or a folder inside one (a
    pipeline's stages), is not locked again. Released at exit.

    Raises:
        ConfigError: another live run holds the workdir.
    """
    prepare(workdir)
    real = os.path.realpath(workdir)
    if _holds(real):
        return
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


BACKUP_DIR = "backup"


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
    return "; ".join(changes[:limit]) + (f"; and {more} more" if more > 0 else "")


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
    path = os.path.join(workdir, "config.gin")
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
            f"{digest}; see {os.path.join(workdir, 'config.gin')}{changed}). "
            "Use another --workdir, or delete that one to start over."
        )
    return record


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
    # Whether the chief's workdir held `TRANSFER_FILE` at the start.
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
    import shutil

    from matl_keras.training import strategies

    shutil.rmtree(start.path(BACKUP_DIR), ignore_errors=True)
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


def begin(workdir: str, init_backbone: str | None, strategy=None) -> Start:
    """Starts a stage in `workdir`: config hash, previous run, `config.gin`.

    The config hash covers the gin bindings that reach the current scope
    (`config.stage_config_str`) and the content of `init_backbone`.

    In a multi-worker run (`strategy`), only the chief writes `workdir`;
    the others read it and write to a temporary `Start.out`, and the
    decisions taken from its files (complete, resuming) are the chief's, on
    every worker.

    Raises:
        ConfigError: `init_backbone` is missing, the workdir cannot be
            written or holds trained results of another config.
    """
    from matl_keras import config
    from matl_keras.training import strategies

    chief = strategy is None or strategies.is_chief(strategy)
    if chief:
        lock(workdir)
        out = workdir
    else:
        import tempfile

        out = tempfile.mkdtemp(
            prefix=f"matl-keras-worker{strategies.task_index(strategy)}-"
        )
    init = None
    if init_backbone:
        if not os.path.isfile(init_backbone):
            raise ConfigError(f"`init_backbone`: no such file: {init_backbone!r}")
        init = {
            "path": os.path.abspath(init_backbone),
            "sha256": file_sha256(init_backbone),
        }
    config_text = config.stage_config_str()
    digest = config_hash(
        config_text + f"\n# init_backbone sha256: {init and init['sha256']}\n"
    )
    record = previous_run(workdir, digest, config_text, init)
    backup_dir = os.path.join(workdir, BACKUP_DIR)
    complete = bool(record and record.get("status") == "complete")
    resuming = os.path.isdir(backup_dir)
    has_transfer = os.path.exists(os.path.join(workdir, TRANSFER_FILE))
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
        write_text(os.path.join(out, "config.gin"), config_text)
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
    import gin
    import keras
    import tensorflow as tf

    import matl_keras

    return {
        "matl_keras": matl_keras.__version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "gin": getattr(gin, "__version__", "0.5.0"),
        "python": platform.python_version(),
    }


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
