"""A full disk and a crash between an epoch's row and its backup: one line,
exit 2, the last complete backup kept, each epoch once in history.csv."""

import csv
import errno
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from matl_keras import runs
from matl_keras.errors import WriteError
from matl_keras.training import checkpoints
from tests.cli_testing import TINY
from tests.cli_testing import matl_here
from tests.conftest import REPO
from tests.matl_keras.training.stage_testing import run_train

# Runs the CLI with a file size limit (RLIMIT_FSIZE, no privileges needed)
# from epoch 1 on: every write past it fails with a real OS error (EFBIG)
# inside h5py, as a full disk does (ENOSPC).
LIMITED_CLI = """
import resource, signal, sys
from matl_keras.training import monitors

class Limited(monitors.Throughput):
    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        if epoch == 1:
            resource.setrlimit(
                resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY)
            )

monitors.Throughput = Limited
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not a kill
from matl_keras import cli
sys.argv = [sys.argv[0], *sys.argv[1:]]
cli.run()
"""


def _epochs(path):
    return [int(r["epoch"]) for r in csv.DictReader(open(path))]


def test_write_error_in_a_backup_is_one_line_and_keeps_the_last(tmp_path):
    top = str(tmp_path / "run")
    stage = os.path.join(top, "finetune")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    failed = subprocess.run(
        [sys.executable, "-c", LIMITED_CLI, *TINY, f"--workdir={top}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    # Not 139 (HDF5 cleaning up a half-written file segfaulted).
    assert failed.returncode == 2, failed.stderr[-3000:]
    assert "Traceback" not in failed.stderr, failed.stderr[-3000:]
    lines = [
        line
        for line in failed.stderr.splitlines()
        if line.startswith("matl-keras: error:")
    ]
    assert len(lines) == 1, failed.stderr[-3000:]
    assert lines[0].startswith(
        f"matl-keras: error: cannot write {stage}/backup/epoch-2.tmp/"
        "model.weights.h5: file too large (errno 27). Free some space"
    ) or lines[0].startswith(
        f"matl-keras: error: cannot write {stage}/best.tmp/"
        "model.weights.h5: file too large (errno 27). Free some space"
    ), lines[0]
    assert sorted(os.listdir(os.path.join(stage, "backup"))) == ["epoch-1"]
    assert not os.path.exists(os.path.join(stage, "best.tmp"))
    resumed = matl_here(*TINY, f"--workdir={top}")  # in this process
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming after epoch 1" in resumed.stdout
    assert _epochs(os.path.join(stage, "history.csv")) == [0, 1]


def test_history_has_each_epoch_once_after_a_crash_before_its_backup(
    tmp_path, monkeypatch
):
    real = checkpoints.ResumableBackup.on_epoch_end

    def killed_before_second_backup(self, epoch, logs=None):
        if epoch == 1:  # epoch 1's history row is written, its backup not
            raise KeyboardInterrupt
        real(self, epoch, logs)

    monkeypatch.setattr(
        checkpoints.ResumableBackup,
        "on_epoch_end",
        killed_before_second_backup,
    )
    with pytest.raises(KeyboardInterrupt):
        run_train(tmp_path, epochs=3)
    assert _epochs(tmp_path / "history.csv") == [0, 1]
    monkeypatch.undo()
    run_train(tmp_path, epochs=3)
    assert _epochs(tmp_path / "history.csv") == [0, 1, 2]


def test_write_errors_name_the_file_and_the_os_reason(tmp_path, monkeypatch):
    path = str(tmp_path / "run.json")
    runs.write_json(path, {"a": 1})

    def disk_full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(WriteError) as e:
        runs.write_json(path, {"a": 2})
    assert str(e.value).startswith(
        f"cannot write {path}: no space left on device (errno 28). "
    )
    assert "\n" not in str(e.value)
    monkeypatch.undo()
    assert json.load(open(path)) == {"a": 1}  # the last complete file
    assert os.listdir(tmp_path) == ["run.json"]  # no partial file left
    # h5py puts the errno in its message only.
    partial = tmp_path / "epoch-2.tmp"
    partial.mkdir()
    with pytest.raises(WriteError, match=r"x\.h5: no space left on device"):
        with runs.writing(str(partial / "x.h5"), partial=str(partial)):
            raise OSError(
                "Can't synchronously write data (file write failed: "
                "filename = 'x.h5', errno = 28, error message = 'No space')"
            )
    assert not partial.exists()


def _cli_with_failing_write(tmp_path, failure: str):
    """Runs the CLI's tiny job in a fresh process where the first write
    of the run (config.gin) raises `failure` (a Python expression)."""
    script = (
        "import errno, sys\n"
        "import tensorflow as tf\n"
        "from matl_keras import runs\n"
        "def full(*a, **k):\n"
        f"    raise {failure}\n"
        "runs.write_text = full\n"
        "from matl_keras import cli\n"
        "cli.run()\n"
    )
    return subprocess.run(
        [sys.executable, "-c", script, *TINY, f"--workdir={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )


def test_cli_turns_a_full_disk_anywhere_into_one_line(tmp_path):
    """A write the stages do not wrap (here, the first one: config.gin)."""
    result = _cli_with_failing_write(
        tmp_path, "OSError(errno.ENOSPC, 'No space left on device', 'f.bin')"
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert (
        "matl-keras: error: cannot write f.bin: no space left on device "
        "(errno 28)."
    ) in result.stderr


def test_save_weights_in_memory_equals_keras_save_weights(tmp_path):
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    model.compile(optimizer="sgd", loss="mse")
    model.fit(np.ones((4, 3)), np.ones((4, 2)), verbose=0)
    checkpoints.save_weights(model, str(tmp_path / "ours.weights.h5"))
    clone = keras.models.clone_model(model)
    clone.compile(optimizer="sgd", loss="mse")
    clone.optimizer.build(clone.trainable_variables)
    clone.load_weights(str(tmp_path / "ours.weights.h5"))
    for a, b in zip(model.get_weights(), clone.get_weights()):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(model.optimizer.variables, clone.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_cli_turns_tensorflow_write_errors_into_one_line(tmp_path):
    """TensorBoard's event files are written by TensorFlow, which reports
    a full disk as a ResourceExhaustedError naming the file."""
    result = _cli_with_failing_write(
        tmp_path,
        "tf.errors.ResourceExhaustedError(None, None, ("
        "'{{function_node __wrapped__WriteSummary_device_/job:local}}'"
        "' /w/logs/events.v2; No space left on device\\n'"
        "'\\tFailed to flush 11 events to /w/logs/events.v2'))",
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert (
        "matl-keras: error: cannot write /w/logs/events.v2: no space left on "
        "device (errno 28)."
    ) in result.stderr
