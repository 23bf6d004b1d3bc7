"""Running the `matl-keras` console script as a user runs it (a
subprocess), shared by the tests that drive the CLI (not a test module)."""

import os
import subprocess
import sys

from tests.conftest import REPO

CLI = os.path.join(os.path.dirname(sys.executable), "matl-keras")
TINY = [
    "--gin_file=gin/finetune.gin",
    "--gin_file=gin/models/tiny.gin",
    "--gin_param=FINETUNE_EPOCHS = 2",
    "--gin_param=IMAGE_SIZE = 32",
    "--gin_param=BATCH_SIZE = 8",
    "--gin_param=synthetic_ct.image_size = 48",
    "--gin_param=synthetic_ct.num_train = 16",
    "--gin_param=synthetic_ct.labelled_fraction = 1.0",
    "--gin_param=synthetic_ct.num_val = 8",
    "--gin_param=synthetic_ct.num_test = 8",
]


def matl(*args, timeout=600):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [CLI, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def error_line(result):
    lines = [
        l
        for l in result.stderr.splitlines()
        if l.startswith("matl-keras: error")
    ]
    assert lines, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return lines[0]
