"""Test set-up: quiet TensorFlow, 2 logical CPU devices, gin isolation,
and the `slow` marker (skipped unless --run_slow)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# As the CLI and `import matl_keras` do (`tf_startup.prefer_onednn`): the
# tests import TensorFlow first, so they set it here.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import gin  # noqa: E402

# MirroredStrategy tests need two devices; split the CPU before TF starts.
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0],
    [tf.config.LogicalDeviceConfiguration()] * 2,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.normpath(os.path.join(REPO, "..", "shared", "data"))


def pytest_addoption(parser):
    parser.addoption(
        "--run_slow", action="store_true", help="run tests marked slow"
    )


# The longest tests (each a minute or more of CLI jobs on 2 cores), longest
# first. They run first: pytest-xdist (`-n auto`) hands out tests in
# collection order, so a long test collected last would run alone at the end
# while the other worker idles. Names of test functions (every parameter).
LONGEST_FIRST = (
    "test_two_workers_equal_each_other_and_one_process",
    "test_cli_pipeline_on_two_workers_chief_writes",
    "test_sstl_m_job_through_the_cli",
    "test_finetune_job_end_to_end_then_skip_then_refuse",
    "test_three_stage_chain_through_the_cli",
    "test_sigterm_stops_cleanly_and_holds_the_workdir_until_then",
)


def _run_first(items):
    """Moves LONGEST_FIRST's tests to the front (a stable, deterministic
    order: every xdist worker must collect the same). None of them uses a
    module- or session-scoped fixture, so no fixture is set up twice."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    last = len(LONGEST_FIRST)
    keyed = [
        (rank.get(getattr(item, "originalname", item.name), last), i, item)
        for i, item in enumerate(items)
    ]
    items[:] = [item for _, _, item in sorted(keyed, key=lambda k: k[:2])]


def pytest_collection_modifyitems(config, items):
    _run_first(items)
    if config.getoption("--run_slow"):
        return
    skip = pytest.mark.skip(reason="slow: pass --run_slow to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def shared_data(*parts):
    """Path under ../shared/data, or skip the test when it is absent."""
    path = os.path.join(SHARED_DATA, *parts)
    if not os.path.exists(path):
        pytest.skip(f"real data not available: {path} is absent")
    return path
