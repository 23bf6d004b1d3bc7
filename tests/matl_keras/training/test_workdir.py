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


OLD_CONFIG = """# Macros:
# ==============================================================================
FINETUNE_EPOCHS = 2
IMAGE_SIZE = 32

# Parameters for train:
# ==============================================================================
train.epochs = %FINETUNE_EPOCHS
train.evaluators = ['metrics',
                    'leep']
finetune/train.dropout = 0.5
"""


def _trained_run(path, config_text):
    path.mkdir()
    (path / "run.json").write_text(
        json.dumps({"status": "running", "config_hash": "old",
                    "init_backbone": None})
    )
    (path / "config.gin").write_text(config_text)
    (path / workdir_lib.BACKUP_DIR).mkdir()


def test_refusal_names_the_bindings_that_changed(tmp_path):
    path = tmp_path / "run"
    _trained_run(path, OLD_CONFIG)
    new = (
        OLD_CONFIG.replace("FINETUNE_EPOCHS = 2", "FINETUNE_EPOCHS = 3")
        .replace("                    'leep']", "                    'gradcam']")
        .replace("finetune/train.dropout = 0.5\n", "train.seed = 1\n")
    )
    init = {"path": "/x.h5", "sha256": "abc"}
    with pytest.raises(ConfigError) as e:
        workdir_lib.previous_run(str(path), "new", new, init)
    message = str(e.value)
    assert "\n" not in message
    assert "different config" in message
    assert (
        "changed: init_backbone content sha256: None -> abc; "
        "FINETUNE_EPOCHS: 2 -> 3; "
        "finetune/train.dropout = 0.5 (not bound now); "
        "train.evaluators: ['metrics', 'leep'] -> ['metrics', 'gradcam']; "
        "train.seed = 1 (new)). Use another --workdir"
    ) in message
    # The same config is the same run (no refusal).
    assert workdir_lib.previous_run(str(path), "old", OLD_CONFIG) is not None


def test_config_diff_is_bounded():
    old = "\n".join(f"a.p{i} = {i}" for i in range(12))
    new = "\n".join(f"a.p{i} = {i + 1}" for i in range(12))
    diff = workdir_lib.config_diff(old, new, limit=3)
    assert diff == "a.p0: 0 -> 1; a.p1: 1 -> 2; a.p10: 10 -> 11; and 9 more"
    assert workdir_lib.config_diff(old, old) == ""
