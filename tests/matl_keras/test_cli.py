"""The `matl-keras` console script, run as a user runs it (subprocesses)."""

import json
import os
import re
import subprocess
import sys

import pytest

from tests.cli_testing import CLI
from tests.cli_testing import TINY
from tests.cli_testing import error_line
from tests.cli_testing import matl
from tests.cli_testing import matl_here
from tests.conftest import REPO


def test_finetune_job_end_to_end_then_skip_then_refuse(tmp_path):
    top = str(tmp_path / "run")
    workdir = os.path.join(top, "finetune")
    result = matl(*TINY, f"--workdir={top}")
    assert result.returncode == 0, result.stdout + result.stderr
    for name in (
        "config.gin",
        "operative_config.gin",
        "run.json",
        "history.csv",
        "model.keras",
        "backbone.weights.h5",
        "metrics.json",
        "val_roc.png",
        "val_confusion_matrix.png",
        "test_roc.png",
        "test_confusion_matrix.png",
    ):
        assert os.path.exists(os.path.join(workdir, name)), name
    assert os.listdir(os.path.join(workdir, "logs"))  # TensorBoard
    assert not os.path.exists(os.path.join(workdir, "backup"))
    metrics = json.load(open(os.path.join(workdir, "metrics.json")))
    assert set(metrics) == {"val", "test"}
    for split in metrics.values():
        for key in ("accuracy", "f1", "auc"):
            assert 0.0 <= split[key] <= 1.0
    run = json.load(open(os.path.join(workdir, "run.json")))
    assert run["status"] == "complete"
    assert run["class_counts"]["train"] == {"NonCOVID": 8, "COVID": 8}
    assert run["dataset"] == "SyntheticCT" and run["dataset_root"] is None
    operative = open(os.path.join(workdir, "operative_config.gin")).read()
    assert "DEPTH = 10" in operative
    assert "resnet_backbone.depth = %DEPTH" in operative
    history = open(os.path.join(workdir, "history.csv")).read().splitlines()
    assert len(history) == 3 and "val_auc" in history[0]

    # In this process (a console-script run each costs ~6 s of imports).
    again = matl_here(*TINY, f"--workdir={top}")
    assert again.returncode == 0
    assert "already complete" in again.stdout

    other = matl_here(
        *TINY, "--gin_param=finetune/train.dropout = 0.3", f"--workdir={top}"
    )
    assert other.returncode == 2
    assert "different config" in error_line(other)
    assert "changed: finetune/train.dropout: 0.5 -> 0.3)" in error_line(other)
    assert "In call to configurable" not in other.stderr
    # Nothing that was written is lost.
    assert json.load(open(os.path.join(workdir, "metrics.json"))) == metrics

    # More epochs alone extend the finished stage (issue 20).
    more = matl_here(
        *TINY, "--gin_param=FINETUNE_EPOCHS = 3", f"--workdir={top}"
    )
    assert more.returncode == 0, more.stdout + more.stderr
    assert "extending the finished run from 2 to 3 epochs" in more.stdout
    run = json.load(open(os.path.join(workdir, "run.json")))
    assert run["status"] == "complete" and run["epochs"] == 3
    assert run["extensions"][0]["changed"] == "FINETUNE_EPOCHS: 2 -> 3"
    history = open(os.path.join(workdir, "history.csv")).read().splitlines()
    assert [row.split(",")[0] for row in history[1:]] == ["0", "1", "2"]


def test_bad_flag_is_one_clear_line():
    result = matl("--gin_fil=x.gin")
    assert result.returncode == 2
    assert "gin_fil" in error_line(result)


def test_unknown_command():
    result = matl("trian")
    assert result.returncode == 2
    assert "unknown command 'trian'" in error_line(result)


def test_missing_gin_file():
    result = matl("--gin_file=gin/nope.gin")
    assert result.returncode == 2
    assert "gin file not found: 'gin/nope.gin'" in error_line(result)


def test_unknown_configurable_and_parameter(tmp_path):
    result = matl_here(*TINY, "--gin_param=synthetic_cta.seed = 1")
    assert result.returncode == 2
    line = error_line(result)
    assert "synthetic_cta" in line and "synthetic_ct" in line  # did you mean
    result = matl_here(*TINY, "--gin_param=train.epocs = 1")
    assert result.returncode == 2
    assert "epocs" in error_line(result)


def test_unwritable_workdir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = matl_here(*TINY, f"--workdir={blocker}/sub")
    assert result.returncode == 2
    assert "cannot be written" in error_line(result)


def test_plugins_json():
    result = matl_here("plugins", "--check", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    # Reports are a group of their own (issue 17), not evaluators.
    assert set(report) == {"datasets", "ssl_methods", "evaluators", "reports"}
    assert report["reports"]["transferability"]["status"] == "ok"
    assert "transferability" not in report["evaluators"]
    ct = report["datasets"]["synthetic_ct"]
    assert ct["status"] == "ok" and ct["error"] is None
    assert ct["dist"] == "matl-keras" and ct["version"]
    assert report["evaluators"]["metrics"]["status"] == "ok"
    # Without --check: the same plugins, from their metadata only.
    listed = json.loads(matl("plugins", "--json").stdout)
    assert {g: set(i) for g, i in listed.items()} == {
        g: set(i) for g, i in report.items()
    }
    assert listed["datasets"]["synthetic_ct"]["status"] == "not loaded"


def test_plugins_table():
    result = matl("plugins")
    assert result.returncode == 0
    assert (
        "synthetic_natural" in result.stdout and "not loaded" in result.stdout
    )
    assert "plugins --check" in result.stdout


def test_help_and_version_exit_0():
    from matl_keras import __version__

    result = matl("--help")
    assert result.returncode == 0, result.stderr
    for text in (
        "usage:",
        "commands:",
        "evaluate",
        "export",
        "predict",
        "--gin_file",
        "--gin_param",
        "--workdir",
        "--model_version",
        "sstl_m.gin",
    ):
        assert text in result.stdout, text
    result = matl("--version")
    assert (result.returncode, result.stdout) == (
        0,
        f"matl-keras {__version__}\n",
    )


IMPORTS_TENSORFLOW = re.compile(r"\|\s*(tensorflow|keras)\s*$", re.MULTILINE)


@pytest.mark.parametrize(
    "args,status",
    [
        (["--help"], 0),
        (["--version"], 0),
        (["plugins"], 0),
        (["plugins", "--json"], 0),
        (["--gin_fil=x.gin"], 2),
        (["trian"], 2),
        (["evaluate"], 2),
        (["predict", "--model=x"], 2),
        (["export", "--model=x"], 2),
        (["--gin_file=nope.gin"], 2),
    ],
)
def test_answers_without_importing_tensorflow(args, status):
    # -X importtime lists every module the process imports, on stderr.
    result = subprocess.run(
        [sys.executable, "-X", "importtime", CLI, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == status, result.stderr[-2000:]
    assert "matl_keras.cli" in result.stderr  # the listing is there
    assert not IMPORTS_TENSORFLOW.search(result.stderr), (
        IMPORTS_TENSORFLOW.search(result.stderr).group(0)
    )


def test_no_cuda_probe_noise_on_stderr():
    """Without TF_CPP_MIN_LOG_LEVEL from the user, a command that imports
    TensorFlow prints its own line only (on this CPU machine: no
    cudart_stub / cuInit / absl pre-initialisation lines)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run(
        [CLI, "evaluate", "--model=/nonexistent", "--dataset=synthetic_ct"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "matl-keras: error: --model: '/nonexistent' does not exist"
    ], result.stderr


def test_job_files_name_the_documented_macros():
    text = "".join(
        open(os.path.join(REPO, "gin", p)).read()
        for p in (
            "pipeline.gin",
            "stages/common.gin",
            "stages/stl_n.gin",
            "stages/stl_m.gin",
            "stages/sstl_m.gin",
            "stages/finetune.gin",
            "models/resnet.gin",
            "datasets/synthetic_natural.gin",
            "datasets/synthetic_cxr.gin",
            "datasets/synthetic_ct.gin",
        )
    )
    for macro in (
        "IMAGE_SIZE",
        "BATCH_SIZE",
        "DEPTH",
        "WIDTH",
        "ATTENTION",
        "SEED",
        "STAGES",
        "NATURAL_DATA",
        "CXR_DATA",
        "CT_DATA",
        "STL_N_EPOCHS",
        "STL_M_EPOCHS",
        "SSTL_M_EPOCHS",
        "FINETUNE_EPOCHS",
        "SSL_METHOD",
    ):
        assert f"%{macro}" in text, macro
        assert f"{macro} =" in text, macro


def test_sigterm_stops_cleanly_and_holds_the_workdir_until_then(tmp_path):
    """A live job locks its workdir (a second run is refused with one line
    naming the owner); SIGTERM ends it with one line and exit 143, and the
    same command then resumes from the backup and completes."""
    import signal
    import time

    top = str(tmp_path / "run")
    args = [a for a in TINY if "FINETUNE_EPOCHS" not in a]
    # The job is paused (SIGSTOP: still alive, still holding its lock)
    # while the second run starts, so it is caught mid-run however slow the
    # second run's start is. The epochs after the first backup (~0.4 s each
    # here) are the window in which this test must see that backup and stop
    # the job: with 8 epochs a loaded machine delayed the test past the
    # job's end (it exited 0 before SIGTERM); 30 give a window of ~12 s.
    # The rerun then trains only the rest of them.
    args += ["--gin_param=FINETUNE_EPOCHS = 30", f"--workdir={top}"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen(
        [CLI, *args],
        cwd=REPO,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    backup = os.path.join(top, "finetune", "backup")

    def complete_backup():  # an epoch's backup renamed into place
        try:
            names = os.listdir(backup)
        except FileNotFoundError:
            return False
        return any(re.fullmatch(r"epoch-\d+", n) for n in names)

    deadline = time.time() + 300
    while not complete_backup() and proc.poll() is None:
        assert time.time() < deadline, "no backup appeared"
        time.sleep(0.05)
    if proc.poll() is None:
        proc.send_signal(signal.SIGSTOP)
    assert proc.poll() is None, proc.communicate()
    try:
        second = matl_here(*args)  # refused before it imports anything
    finally:
        proc.send_signal(signal.SIGTERM)  # delivered when it continues
        proc.send_signal(signal.SIGCONT)
    assert second.returncode == 2
    line = error_line(second)
    assert f"is in use by pid {proc.pid} on " in line, line
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr, stderr
    assert "matl-keras: stopped by SIGTERM" in stderr, stderr
    assert not os.path.exists(os.path.join(top, ".matl-keras.lock"))
    rerun = matl_here(*args)  # the rerun, in this process
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "resuming after epoch" in rerun.stdout, rerun.stdout
    with open(os.path.join(top, "finetune", "run.json")) as f:
        assert json.load(f)["status"] == "complete"


def test_a_job_run_from_python_frees_its_workdir_when_it_ends(tmp_path):
    """`job.run_job` releases the lock it took when the job ends (here a
    refused config, raised after the lock), not at the interpreter's
    exit: a second command on the workdir is not refused as "in use"."""
    from matl_keras import runs

    top = str(tmp_path / "run")
    bad = matl_here(
        *TINY, "--gin_param=FINETUNE_EPOCHS = 0", f"--workdir={top}"
    )
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert "in use" not in bad.stderr
    assert not os.path.exists(os.path.join(top, runs.LOCK_FILE))
    assert os.path.realpath(top) not in runs._HELD
