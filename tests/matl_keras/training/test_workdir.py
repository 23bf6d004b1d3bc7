"""`workdir.releases_lock`: a stage called from Python frees its workdir
when it ends (the stages themselves: test_supervised.py)."""

import os

import pytest

import gin
from matl_keras import runs
from matl_keras.training import workdir as workdir_lib


@workdir_lib.releases_lock
def _stage(workdir: str, fail: bool = False):
    # What `begin` does: a no-op, the lock is already this process's.
    took = runs.lock(workdir)
    if fail:
        raise RuntimeError("stage failed")
    return took


def test_the_lock_is_released_when_the_stage_returns_or_raises(tmp_path):
    workdir = str(tmp_path / "stage")
    assert _stage(workdir) is False  # the decorator holds it
    assert not os.path.exists(os.path.join(workdir, runs.LOCK_FILE))
    with pytest.raises(RuntimeError, match="stage failed"):
        _stage(workdir=workdir, fail=True)
    assert not os.path.exists(os.path.join(workdir, runs.LOCK_FILE))
    # Free for the next run of this process or of another.
    assert runs.lock(workdir)
    runs.unlock(workdir)


def test_a_lock_taken_above_the_stage_stays_with_its_taker(tmp_path):
    # A job or a pipeline holds its folder; its stages write inside it.
    assert runs.lock(str(tmp_path))
    try:
        assert _stage(str(tmp_path / "stage")) is False
        assert os.path.exists(tmp_path / runs.LOCK_FILE)
    finally:
        runs.unlock(str(tmp_path))


def test_gin_still_checks_the_stage_s_own_arguments(tmp_path):
    configurable = gin.external_configurable(
        _stage, name="releases_lock_test_stage"
    )
    try:
        with pytest.raises(ValueError, match="no_such_argument"):
            gin.parse_config("releases_lock_test_stage.no_such_argument = 1")
        # A binding of a real argument reaches the stage.
        gin.parse_config("releases_lock_test_stage.fail = True")
        with pytest.raises(RuntimeError, match="stage failed"):
            configurable(workdir=str(tmp_path))
        assert not os.path.exists(tmp_path / runs.LOCK_FILE)
    finally:
        gin.clear_config()
