"""Which lines of TensorFlow's start-up the CLI shows."""

import os
import subprocess
import sys

from matl_keras import tf_startup

# As written by TensorFlow 2.21 on a CPU machine without a driver.
BANNER = (
    "WARNING: All log messages before absl::InitializeLog() is called "
    "are written to STDERR"
)
ONEDNN = (
    "I0000 00:00:1796198640.401721    6573 port.cc:153] oneDNN custom "
    "operations are on."
)
STUB = (
    "I0000 00:00:1796198640.402000    6573 cudart_stub.cc:31] Could not "
    "find cuda drivers on your machine, GPU will not be used."
)
FEATURES = (
    "I0000 00:00:1796198627.772973    6428 cpu_feature_guard.cc:227] "
    "This TensorFlow binary is optimized to use available CPU "
    "instructions in performance-critical operations."
)
FEATURES_2 = (
    "To enable the following instructions: AVX2 AVX512F FMA, in other "
    "operations, rebuild TensorFlow with the appropriate compiler flags."
)
CUINIT = (
    "E0000 00:00:1796198633.066547    6428 cuda_platform.cc:52] failed "
    "call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: "
    "UNKNOWN ERROR (303)"
)
OTHER_ERROR = "E0000 00:00:1796198633.066547    6428 foo.cc:1] a real error"
WARNING = "W0000 00:00:1796198633.066547    6428 foo.cc:1] a warning"
PYTHON = "UserWarning: something from Python"
NOISE = [BANNER, ONEDNN, STUB, FEATURES, FEATURES_2, CUINIT]


def test_default_level_without_a_driver_keeps_only_real_messages():
    kept = [
        l
        for l in NOISE + [OTHER_ERROR, WARNING, PYTHON]
        if tf_startup.keep_line(l, min_level=2, gpu=False)
    ]
    assert kept == [OTHER_ERROR, PYTHON]


def test_with_a_driver_a_failing_cuinit_is_shown():
    assert tf_startup.keep_line(CUINIT, min_level=2, gpu=True)
    assert not tf_startup.keep_line(STUB, min_level=2, gpu=True)


def test_level_0_shows_everything_and_1_keeps_warnings():
    lines = NOISE + [OTHER_ERROR, WARNING, PYTHON]
    assert all(tf_startup.keep_line(l, 0, False) for l in lines)
    assert tf_startup.keep_line(WARNING, 1, False)
    assert not tf_startup.keep_line(ONEDNN, 1, False)


def test_import_in_a_fresh_process_drops_the_noise_only():
    # As the console script does: its launcher first, so that importing the
    # package does not import TensorFlow itself (matl_keras/__init__.py).
    code = (
        "import sys, matl_keras_cli; from matl_keras import tf_startup; "
        "tf = tf_startup.import_tensorflow(); "
        "print('after', file=sys.stderr); print(tf.__version__)"
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("2.")
    shown = result.stderr.splitlines()
    if not tf_startup.gpu_driver_present():
        assert shown == ["after"], shown
    assert not [l for l in shown if "cudart_stub" in l or "InitializeLog" in l]


def test_onednn_is_preferred_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv(tf_startup.ONEDNN_VARIABLE, raising=False)
    assert tf_startup.prefer_onednn() == "1"
    assert os.environ[tf_startup.ONEDNN_VARIABLE] == "1"
    monkeypatch.setenv(tf_startup.ONEDNN_VARIABLE, "0")
    assert tf_startup.prefer_onednn() == "0"  # the user's choice stands


def test_this_process_runs_the_onednn_kernels():
    # conftest sets the variable before TensorFlow starts, as the CLI and
    # `import matl_keras` do; run.json records it.
    from matl_keras.training import workdir

    assert tf_startup.onednn_enabled() is True
    assert workdir.versions()["onednn"] is True
