"""Running the `matl-keras` console script as a user runs it (a
subprocess), shared by the tests that drive the CLI (not a test module)."""

import os
import subprocess
import sys

from tests.conftest import REPO

CLI = os.path.join(os.path.dirname(sys.executable), "matl-keras")
# The tests' model: tiny.gin's width on a ResNet-10 (one block per
# stage), whose steps trace and run in about a third less time than
# tiny.gin's ResNet-18.
TINY_MODEL = ["--gin_file=gin/models/tiny.gin", "--gin_param=DEPTH = 10"]

TINY = [
    "--gin_file=gin/finetune.gin",
    *TINY_MODEL,
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


def matl_here(*args):
    """`matl-keras ARGS` run in this process, as the console script runs
    it (its flag parsing, `main`, its one-line errors and exit status),
    for the tests of error paths: a subprocess spends ~6 s of CPU importing
    TensorFlow before it reports a bad flag or file. Returns what `matl`
    returns (returncode, stdout, stderr). Each command keeps at least one
    test through the real console script (`matl`)."""
    import contextlib
    import io
    import signal

    import gin
    from matl_keras import cli

    stdout, stderr = io.StringIO(), io.StringIO()
    sigterm = signal.getsignal(signal.SIGTERM)
    cwd = os.getcwd()
    code = 0
    try:
        os.chdir(REPO)
        gin.clear_config()  # as a fresh process: unlocked, nothing bound
        cli.FLAGS.unparse_flags()
        with (
            contextlib.redirect_stdout(stdout),
            contextlib.redirect_stderr(stderr),
        ):
            cli.main(cli._parse_flags(["matl-keras", *args]))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        os.chdir(cwd)
        signal.signal(signal.SIGTERM, sigterm)
        cli.FLAGS.unparse_flags()
        gin.clear_config()
    return subprocess.CompletedProcess(
        ["matl-keras", *args], code, stdout.getvalue(), stderr.getvalue()
    )
