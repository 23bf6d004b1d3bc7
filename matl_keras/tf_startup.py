"""Importing TensorFlow for the CLI without the start-up noise of a CPU box.

On a machine without an NVIDIA driver, `import tensorflow` and its first
device probe write lines such as

    WARNING: All log messages before absl::InitializeLog() is called ...
    I0000 ... cudart_stub.cc:31] Could not find cuda drivers on your machine
    E0000 ... cuda_platform.cc:52] failed call to cuInit: ... (303)

straight to file descriptor 2, from C++. The INFO lines are logged before
TensorFlow initialises its logging, so `TF_CPP_MIN_LOG_LEVEL` does not reach
them, and the cuInit "error" is the expected answer when there is no GPU.

`import_tensorflow()` runs the import and the device probe with descriptor 2
pointed at a temporary file, then writes back every line that
`TF_CPP_MIN_LOG_LEVEL` would have hidden had it applied (the CLI's default is
2: errors only), plus the cuInit failure when no driver is installed (with a
driver, a failing cuInit is a real problem and is shown). Everything else,
Python warnings and tracebacks included, passes unchanged, and
`TF_CPP_MIN_LOG_LEVEL=0` shows everything.

It also turns on TensorFlow's oneDNN kernels where TensorFlow would leave
them off (`prefer_onednn`).
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from types import ModuleType

_LOG_LINE = re.compile(r"^([IWEF])\d{4} ")
# Lines that belong to TensorFlow's pre-initialisation INFO output.
_INFO_TEXT = (
    "WARNING: All log messages before absl::InitializeLog() is called",
    # The second line of cpu_feature_guard's INFO message.
    "To enable the following instructions:",
)
_NO_DRIVER_ERRORS = ("failed call to cuInit",)


ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"


def prefer_onednn() -> str:
    """Sets `TF_ENABLE_ONEDNN_OPTS=1` unless the user set it; returns the
    value in force. Call it before TensorFlow is imported (it is read
    then).

    TensorFlow's x86 Linux wheels turn their oneDNN kernels on by default
    only on CPUs with AVX-512 VNNI/BF16 or AMX; on an AVX2-only CPU (AMD
    EPYC Rome/Milan, many cloud VMs) training runs on the Eigen kernels.
    Measured on such a 2-core EPYC (`tools/profile_step.py`, median of 2
    steps): the supervised ResNet-18 step at 96 px, batch 32, 1349 ms ->
    490 ms (2.75x); ResNet-50 at 128 px, batch 8, 971 -> 551 ms; the MoCo
    step (ResNet-50, 128 px, batch 32) 5045 -> 2914 ms (1.73x). The
    convolutions' backward passes are where Eigen loses (Conv2DBackpropInput
    712 ms against 239). `TF_ENABLE_ONEDNN_OPTS=0` keeps Eigen; the kernels
    change the float rounding, so `run.json` records which ran
    (`versions.onednn`).
    """
    return os.environ.setdefault(ONEDNN_VARIABLE, "1")


def onednn_enabled() -> bool:
    """Whether the imported TensorFlow runs its oneDNN kernels."""
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:  # a build without the probe
        return os.environ.get(ONEDNN_VARIABLE) == "1"
    return bool(_pywrap_util_port.IsMklEnabled())


def gpu_driver_present() -> bool:
    """Whether an NVIDIA driver is loaded (its device node or proc entry)."""
    return os.path.exists("/dev/nvidiactl") or os.path.exists(
        "/proc/driver/nvidia/version"
    )


def min_log_level() -> int:
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


def keep_line(line: str, min_level: int, gpu: bool) -> bool:
    """Whether a line TensorFlow wrote while it started is shown."""
    if min_level <= 0:
        return True
    if line.startswith(_INFO_TEXT):
        return False
    match = _LOG_LINE.match(line)
    if match is None:
        return True
    if "IWEF".index(match.group(1)) < min_level:
        return False
    return gpu or not any(text in line for text in _NO_DRIVER_ERRORS)


def import_tensorflow() -> ModuleType:
    """Imports TensorFlow and probes the devices, dropping the noise."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    prefer_onednn()
    min_level, gpu = min_log_level(), gpu_driver_present()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            import tensorflow as tf

            # The CUDA probe; it does not initialise the runtime, so
            # multi-worker collectives can still be configured after it.
            tf.config.list_physical_devices("GPU")
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode(errors="replace").splitlines()
            kept = [l for l in lines if keep_line(l, min_level, gpu)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")
                sys.stderr.flush()
    return tf
