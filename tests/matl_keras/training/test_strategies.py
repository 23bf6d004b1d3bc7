"""Distribution strategies (`training.strategies`): the choices, one
strategy per process, the worker-side helpers on one device."""

import pytest
import tensorflow as tf

from matl_keras.errors import ConfigError
from matl_keras.training import strategies


def test_auto_choice_by_gpu_count():
    assert strategies.auto_choice(0) == "default"
    assert strategies.auto_choice(1) == "one_device"
    assert strategies.auto_choice(4) == "mirrored"


def test_mirrored_strategy_is_one_per_process():
    assert strategies.get_strategy("mirrored") is strategies.get_strategy(
        "mirrored"
    )


def test_strategy_name_is_checked():
    with pytest.raises(ConfigError, match="Received: strategy='tpu'"):
        strategies.get_strategy("tpu")


def test_one_device_and_worker_cache(monkeypatch):
    one = strategies.get_strategy("one_device")
    assert isinstance(one, tf.distribute.OneDeviceStrategy)
    assert strategies.get_strategy("one_device") is one
    assert strategies.is_chief(one) and strategies.task_index(one) == 0
    assert strategies.worker_cache("/data/cache", one) == "/data/cache"
    assert strategies.broadcast_from_chief(one, [3, 0]) == [3, 0]
    # A non-chief worker: its own on-disk cache file, memory caches as is.
    monkeypatch.setattr(strategies, "task_index", lambda strategy: 2)
    assert not strategies.is_chief(one)
    assert strategies.worker_cache("/data/cache", one) == "/data/cache-worker2"
    assert strategies.worker_cache("memory", one) == "memory"
