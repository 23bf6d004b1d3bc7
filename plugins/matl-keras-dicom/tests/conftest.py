"""The package is tested as users get it: pip-installed into a temporary
target that only these tests (and the subprocesses they start) see."""

import os
import shutil
import subprocess
import sys

import pytest

PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(os.path.dirname(PACKAGE))
CLI = os.path.join(os.path.dirname(sys.executable), "matl-keras")


def pip_install(source, target):
    """`pip install SOURCE --target TARGET`, offline-safe: the build uses
    the environment's setuptools, dependencies are the environment's."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return str(target)


@pytest.fixture(scope="session")
def installed(tmp_path_factory):
    """Installs the package once per test process; makes it importable here."""
    build = tmp_path_factory.mktemp("src") / "matl-keras-dicom"
    shutil.copytree(
        PACKAGE,
        build,
        ignore=shutil.ignore_patterns("tests", "build", "*.egg-info"),
    )
    target = pip_install(build, tmp_path_factory.mktemp("site"))
    sys.path.insert(0, target)
    yield target
    sys.path.remove(target)


def matl(*args, target=None, timeout=600):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = target or ""
    return subprocess.run(
        [CLI, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
