"""The workdir lock: one live run per workdir, tested across processes."""

import json
import os
import subprocess
import sys
import time

import pytest

from matl_keras.errors import ConfigError
from matl_keras.training import workdir as workdir_lib
from tests.conftest import REPO

HOLDER = """
import sys, time
from matl_keras.training import workdir
workdir.lock(sys.argv[1])
print("locked", flush=True)
time.sleep(120)
"""


def _holder(path):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, path], cwd=REPO,
        stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_live_process_is_refused_with_owner(tmp_path):
    path = str(tmp_path / "run")
    proc = _holder(path)
    try:
        with pytest.raises(ConfigError) as e:
            workdir_lib.lock(path)
        message = str(e.value)
        assert f"--workdir={path!r} is in use by pid {proc.pid} on " in message
        assert "since " in message and "(command " in message
        assert "\n" not in message
    finally:
        proc.kill()
        proc.wait()
    # The owner died (SIGKILL: no cleanup): its lock is taken over.
    workdir_lib.lock(path)
    try:
        with open(os.path.join(path, workdir_lib.LOCK_FILE)) as f:
            assert json.load(f)["pid"] == os.getpid()
    finally:
        workdir_lib.unlock(path)
    assert not os.path.exists(os.path.join(path, workdir_lib.LOCK_FILE))


def test_stale_lock_file_is_taken_over_with_a_message(tmp_path, capsys):
    path = tmp_path / "run"
    path.mkdir()
    (path / workdir_lib.LOCK_FILE).write_text(
        json.dumps({"pid": 999999, "host": "h", "start": "t", "command": "c"})
    )
    workdir_lib.lock(str(path))
    try:
        out = capsys.readouterr().out
        assert "taking over the lock" in out
        assert "pid 999999 on h since t (command c)" in out
    finally:
        workdir_lib.unlock(str(path))


def test_reentrant_for_the_same_process_and_its_stages(tmp_path):
    path = str(tmp_path / "run")
    workdir_lib.lock(path)
    try:
        workdir_lib.lock(path)  # Same workdir: no error.
        workdir_lib.lock(os.path.join(path, "finetune"))  # A stage inside.
        # Other tests of this worker process may hold their own workdirs.
        held = [h for h in workdir_lib._HELD if h.startswith(str(tmp_path))]
        assert held == [os.path.realpath(path)]
    finally:
        workdir_lib.unlock(path)


def test_released_at_exit(tmp_path):
    path = str(tmp_path / "run")
    subprocess.run(
        [
            sys.executable, "-c",
            (
                "import sys; from matl_keras.training import workdir as w; "
                "w.lock(sys.argv[1])"
            ),
            path,
        ],
        cwd=REPO, check=True, timeout=120,
    )
    assert not os.path.exists(os.path.join(path, workdir_lib.LOCK_FILE))
    start = time.time()
    workdir_lib.lock(path)
    workdir_lib.unlock(path)
    assert time.time() - start < 5
