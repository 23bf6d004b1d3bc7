"""The run contract (`matl_keras.runs`): a module free of gin and
TensorFlow; atomic writes; the workdir lock (one live run per workdir,
tested across processes); the refusal of another config's folder; finding a
trained model."""

import json
import os
import subprocess
import sys
import time

import pytest

from matl_keras import runs
from matl_keras.errors import ConfigError
from tests.conftest import REPO

LIGHT = """
import sys
# As the console script does (matl_keras_cli): the package then leaves its
# Keras objects unregistered, so what loads is what `runs` itself needs.
import matl_keras_cli  # noqa: F401
import matl_keras.runs

heavy = sorted(
    m for m in sys.modules
    if m.split(".")[0] in ("gin", "tensorflow", "keras", "numpy", "absl")
)
print(heavy)
"""


def test_import_loads_neither_gin_nor_tensorflow():
    result = subprocess.run(
        [sys.executable, "-c", LIGHT],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert result.stdout.strip() == "[]", result.stdout


def test_write_json_replaces_atomically_and_leaves_no_temp(
    tmp_path, monkeypatch
):
    path = str(tmp_path / "run.json")
    runs.write_json(path, {"status": "running"})
    seen = []
    real_replace = os.replace

    def replace(src, dst):
        # The new text is complete (and on disk) before it takes the name;
        # the temporary file is this write's own, in the same folder.
        seen.append((os.path.dirname(src), json.load(open(src))))
        assert json.load(open(dst)) == {"status": "running"}
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    runs.write_json(path, {"status": "complete"})
    monkeypatch.undo()
    assert seen == [(str(tmp_path), {"status": "complete"})]
    assert runs.read_json(path) == {"status": "complete"}
    assert os.listdir(tmp_path) == ["run.json"]
    assert oct(os.stat(path).st_mode & 0o777) == "0o644"


def _stage(path, status="complete", model=True):
    path.mkdir(parents=True)
    (path / runs.RUN_FILE).write_text(
        json.dumps({"status": status, "class_names": ["a", "b"]})
    )
    if model:
        (path / runs.MODEL_FILE).write_bytes(b"model")
    return path


def test_find_a_trained_model_from_file_stage_or_pipeline(tmp_path):
    stage = _stage(tmp_path / "run" / "finetune")
    _stage(tmp_path / "run" / "sstl_m", model=False)
    (tmp_path / "run" / runs.SUMMARY_FILE).write_text(
        json.dumps(
            {
                "lineage": [
                    {"stage": "sstl_m", "workdir": "sstl_m"},
                    {"stage": "finetune", "workdir": "finetune"},
                ]
            }
        )
    )
    by_pipeline = runs.find(str(tmp_path / "run"))
    assert by_pipeline.stage_dir == str(stage)
    assert len(by_pipeline.lineage) == 2
    assert by_pipeline.class_names == ["a", "b"]
    assert runs.find(str(stage)).model_path == str(stage / runs.MODEL_FILE)
    by_file = runs.find(str(stage / runs.MODEL_FILE))
    assert by_file.stage_dir == str(stage) and not by_file.lineage
    assert by_file.preprocessing(64) == {"image_size": 64, "crop_fraction": 1.0}
    running = _stage(tmp_path / "running", status="running")
    with pytest.raises(ConfigError, match="is not complete"):
        runs.find(str(running))
    with pytest.raises(ConfigError, match=r"--model: .* has no model.keras"):
        runs.find(str(tmp_path / "run" / "sstl_m"))
    with pytest.raises(ConfigError, match="does not exist"):
        runs.find(str(tmp_path / "nowhere"))


HOLDER = """
import sys, time
from matl_keras import runs
runs.lock(sys.argv[1])
print("locked", flush=True)
time.sleep(120)
"""


def _holder(path):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, path],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_live_process_is_refused_with_owner(tmp_path):
    path = str(tmp_path / "run")
    proc = _holder(path)
    try:
        with pytest.raises(ConfigError) as e:
            runs.lock(path)
        message = str(e.value)
        assert f"--workdir={path!r} is in use by pid {proc.pid} on " in message
        assert "since " in message and "(command " in message
        assert "\n" not in message
    finally:
        proc.kill()
        proc.wait()
    # The owner died (SIGKILL: no cleanup): its lock is taken over.
    runs.lock(path)
    try:
        with open(os.path.join(path, runs.LOCK_FILE)) as f:
            assert json.load(f)["pid"] == os.getpid()
    finally:
        runs.unlock(path)
    assert not os.path.exists(os.path.join(path, runs.LOCK_FILE))


def test_stale_lock_file_is_taken_over_with_a_message(tmp_path, capsys):
    path = tmp_path / "run"
    path.mkdir()
    (path / runs.LOCK_FILE).write_text(
        json.dumps({"pid": 999999, "host": "h", "start": "t", "command": "c"})
    )
    runs.lock(str(path))
    try:
        out = capsys.readouterr().out
        assert "taking over the lock" in out
        assert "pid 999999 on h since t (command c)" in out
    finally:
        runs.unlock(str(path))


def test_reentrant_for_the_same_process_and_its_stages(tmp_path):
    path = str(tmp_path / "run")
    assert runs.lock(path) is True  # taken: this caller releases it
    try:
        assert runs.lock(path) is False  # Same workdir: no error.
        assert runs.lock(os.path.join(path, "finetune")) is False  # A stage
        # Other tests of this worker process may hold their own workdirs.
        held = [h for h in runs._HELD if h.startswith(str(tmp_path))]
        assert held == [os.path.realpath(path)]
    finally:
        runs.unlock(path)


def test_locked_releases_what_it_took_and_only_that(tmp_path):
    inner = str(tmp_path / "stage")
    with pytest.raises(RuntimeError):
        with runs.locked(inner):
            assert os.path.exists(os.path.join(inner, runs.LOCK_FILE))
            raise RuntimeError
    assert not os.path.exists(os.path.join(inner, runs.LOCK_FILE))
    with runs.locked(str(tmp_path)):
        with runs.locked(inner):  # held above: not taken, not released
            pass
        assert os.path.exists(tmp_path / runs.LOCK_FILE)
    assert not os.path.exists(tmp_path / runs.LOCK_FILE)
    with runs.locked(inner, take=False):
        assert not os.path.exists(os.path.join(inner, runs.LOCK_FILE))


def test_released_at_exit(tmp_path):
    path = str(tmp_path / "run")
    subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "import sys; from matl_keras import runs as w; "
                "w.lock(sys.argv[1])"
            ),
            path,
        ],
        cwd=REPO,
        check=True,
        timeout=120,
    )
    assert not os.path.exists(os.path.join(path, runs.LOCK_FILE))
    start = time.time()
    runs.lock(path)
    runs.unlock(path)
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
        json.dumps(
            {"status": "running", "config_hash": "old", "init_backbone": None}
        )
    )
    (path / "config.gin").write_text(config_text)
    (path / runs.BACKUP_DIR).mkdir()


def test_refusal_names_the_bindings_that_changed(tmp_path):
    path = tmp_path / "run"
    _trained_run(path, OLD_CONFIG)
    new = (
        OLD_CONFIG.replace("FINETUNE_EPOCHS = 2", "FINETUNE_EPOCHS = 3")
        .replace(
            "                    'leep']", "                    'gradcam']"
        )
        .replace("finetune/train.dropout = 0.5\n", "train.seed = 1\n")
    )
    init = {"path": "/x.h5", "sha256": "abc"}
    with pytest.raises(ConfigError) as e:
        runs.previous_run(str(path), "new", new, init)
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
    assert runs.previous_run(str(path), "old", OLD_CONFIG) is not None


def test_config_diff_is_bounded():
    old = "\n".join(f"a.p{i} = {i}" for i in range(12))
    new = "\n".join(f"a.p{i} = {i + 1}" for i in range(12))
    diff = runs.config_diff(old, new, limit=3)
    assert diff == "a.p0: 0 -> 1; a.p1: 1 -> 2; a.p10: 10 -> 11; and 9 more"
    assert runs.config_diff(old, old) == ""
