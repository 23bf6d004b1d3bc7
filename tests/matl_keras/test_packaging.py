"""The built wheel, installed as a user installs it, run from an empty
folder."""

import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

from tests.conftest import REPO

USER_JOB = """\
# A user's own job in a folder of their own: it includes shipped jobs by name.
include 'finetune.gin'
include 'models/tiny.gin'

FINETUNE_EPOCHS = 1
IMAGE_SIZE = 32
BATCH_SIZE = 8
synthetic_ct.image_size = 48
synthetic_ct.num_train = 16
synthetic_ct.labelled_fraction = 1.0
synthetic_ct.num_val = 8
synthetic_ct.num_test = 8
"""


def _build_and_install(tmp_path):
    # Built from a copy, so that the build's own folders (build/, *.egg-info)
    # never touch the checkout.
    src = tmp_path / "src"
    src.mkdir()
    for name in (
        "setup.py",
        "pyproject.toml",
        "README.md",
        "matl_keras_cli.py",
    ):
        shutil.copy(os.path.join(REPO, name), src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("matl_keras", "plugins", "gin"):
        shutil.copytree(os.path.join(REPO, name), src / name, ignore=ignore)
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "-w", str(wheels), str(src)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = list(wheels.glob("matl_keras-*.whl"))
    site = tmp_path / "site"
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return site


# slow: builds a wheel and pip-installs it into a folder (~40 s).
@pytest.mark.slow
def test_wheel_ships_the_jobs_and_runs_them_from_any_folder(tmp_path):
    site = _build_and_install(tmp_path)
    shipped = sorted(
        os.path.relpath(os.path.join(d, f), os.path.join(REPO, "gin"))
        for d, _, files in os.walk(os.path.join(REPO, "gin"))
        for f in files
        if f.endswith(".gin")
    )
    installed = sorted(
        os.path.relpath(os.path.join(d, f), site / "matl_keras" / "gin")
        for d, _, files in os.walk(site / "matl_keras" / "gin")
        for f in files
        if f.endswith(".gin")
    )
    assert installed == shipped and len(shipped) > 20

    # -S: no site-packages of this venv as a site dir, so its editable
    # install (a .pth finder) cannot shadow the wheel; the dependencies
    # come from its site-packages through PYTHONPATH, after the wheel.
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            [str(site), sysconfig.get_paths()["purelib"]]
        ),
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    empty = tmp_path / "empty"
    empty.mkdir()

    def run(*args):
        return subprocess.run(
            [sys.executable, "-S", *args],
            cwd=empty,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    where = run(
        "-c", "import matl_keras.config as c; print(c.shipped_gin_dir())"
    )
    assert where.stdout.strip() == str(site / "matl_keras" / "gin"), where

    cli = str(site / "bin" / "matl-keras")
    # Both spellings resolve from an empty folder: the files are found and
    # parsed (the only error is the deliberate macro typo).
    found = run(
        cli,
        "--gin_file=gin/sstl_m.gin",
        "--gin_file=stl_m.gin",
        "--gin_param=IMAGE_SIZ = 3",
    )
    assert found.returncode == 2, found.stderr
    assert "macro 'IMAGE_SIZ'" in found.stderr, found.stderr

    user = tmp_path / "elsewhere" / "my_job.gin"
    user.parent.mkdir()
    user.write_text(USER_JOB)
    job = run(cli, f"--gin_file={user}", "--workdir=out")
    assert job.returncode == 0, job.stdout + job.stderr
    assert (empty / "out" / "finetune" / "metrics.json").is_file()
    assert not (empty / "out" / "finetune" / "backup").exists()
