"""tf.distribute strategy selection, and what a stage needs to know about
its place in a cluster (chief or worker).

Several machines: set `TF_CONFIG` on each (as TensorFlow documents) and run
the same command; `strategy='auto'` then becomes `multi_worker`
(MultiWorkerMirroredStrategy). The chief (task `chief`, or `worker` 0 when
the cluster has no chief) writes the workdir; the other workers write to a
temporary folder that is deleted at the end (TensorFlow's documented
pattern), and read the chief's workdir to resume. The workdir must therefore
be on storage all workers see (NFS, GCS).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import tensorflow as tf

from matl_keras.errors import ConfigError

STRATEGIES = ("auto", "default", "one_device", "mirrored", "multi_worker")

# One MirroredStrategy per process: two instances over the same devices reuse
# collective instance keys, and their all-reduces then collide ("Shape
# mismatch in the collective instance ..."), e.g. when a pipeline trains
# several stages in one process.
_MIRRORED: dict[tuple[str, ...], tf.distribute.Strategy] = {}
_SINGLE: dict[str, tf.distribute.Strategy] = {}
_MULTI_WORKER: list[tf.distribute.Strategy] = []


def cluster_from_env() -> dict | None:
    """The `TF_CONFIG` cluster when it has more than one task, else None.

    Raises:
        ConfigError: `TF_CONFIG` is not JSON or lacks `cluster`/`task`.
    """
    text = os.environ.get("TF_CONFIG", "").strip()
    if not text:
        return None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"TF_CONFIG is not valid JSON ({e.msg} at character {e.pos}). "
            f"Received: TF_CONFIG={text[:200]!r}"
        ) from None
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise ConfigError(
            "TF_CONFIG must hold {'cluster': {'worker': [host:port, ...]}, "
            "'task': {'type': 'worker', 'index': i}}. Received keys: "
            f"{sorted(config)}"
        )
    tasks = sum(len(v) for k, v in cluster.items() if k in ("chief", "worker"))
    if task.get("type") not in cluster or not 0 <= int(
        task.get("index", -1)
    ) < len(cluster[task["type"]]):
        raise ConfigError(
            f"TF_CONFIG task {task} is not in its cluster {cluster}"
        )
    return config if tasks > 1 else None


def chief_from_env() -> bool:
    """Whether this process writes shared files, from `TF_CONFIG` alone
    (for code that runs outside any strategy, e.g. the pipeline's
    `summary.json`): True without a cluster, for task `chief`, and for
    `worker` 0 of a cluster without a chief."""
    config = cluster_from_env()
    if config is None:
        return True
    task = config["task"]
    if task["type"] == "chief":
        return True
    return (
        task["type"] == "worker"
        and int(task["index"]) == 0
        and "chief" not in config["cluster"]
    )


def start_multi_worker_from_env() -> tf.distribute.Strategy | None:
    """Creates the MultiWorkerMirroredStrategy when `TF_CONFIG` describes a
    cluster. Call it before TensorFlow runs any op (the CLI does, first):
    collectives can only be configured at program start."""
    if cluster_from_env() is None:
        return None
    return _multi_worker()


def _multi_worker() -> tf.distribute.Strategy:
    if _MULTI_WORKER:
        return _MULTI_WORKER[0]
    if cluster_from_env() is None:
        raise ConfigError(
            "strategy='multi_worker' needs TF_CONFIG describing a cluster of "
            "at least two tasks (e.g. {'cluster': {'worker': ['host1:port', "
            "'host2:port']}, 'task': {'type': 'worker', 'index': 0}})"
        )
    from matl_keras.training import keras_multi_worker_fix

    keras_multi_worker_fix.apply()
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as e:
        if "program startup" not in str(e):
            raise
        raise ConfigError(
            "strategy='multi_worker' must be created before TensorFlow runs "
            "any op (collectives are configured at program start). The "
            "matl-keras CLI does this when TF_CONFIG is set; in your own "
            "script call matl_keras.training.strategies."
            "start_multi_worker_from_env() first."
        ) from None
    _MULTI_WORKER.append(strategy)
    return strategy


def auto_choice(gpus: int) -> str:
    """What `strategy='auto'` means on one machine with `gpus` GPUs."""
    return "mirrored" if gpus > 1 else "one_device" if gpus else "default"


def get_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """Returns the strategy called `name`.

    Args:
        name: str. `"auto"` (`multi_worker` when `TF_CONFIG` describes a
            cluster; else MirroredStrategy over several GPUs; `one_device`
            on one GPU; the default strategy on CPU), `"default"` (one
            device, no distribution), `"one_device"` (OneDeviceStrategy on
            the first GPU, else the CPU: its input pipeline prefetches
            batches onto the device), `"mirrored"` (every visible GPU, or
            the logical CPU devices when there is no GPU) or
            `"multi_worker"` (MultiWorkerMirroredStrategy from `TF_CONFIG`).
    """
    if name not in STRATEGIES:
        raise ConfigError(
            f"`strategy` must be one of {STRATEGIES}. Received: "
            f"strategy={name!r}"
        )
    cluster = cluster_from_env()
    if name == "multi_worker" or (name == "auto" and cluster is not None):
        return _multi_worker()
    if cluster is not None:
        raise ConfigError(
            f"TF_CONFIG describes a cluster ({cluster['cluster']}) but "
            f"strategy={name!r}: use 'auto' or 'multi_worker', or unset "
            "TF_CONFIG to train on this machine alone"
        )
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        name = auto_choice(len(gpus))
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        device = (gpus or tf.config.list_logical_devices("CPU"))[0].name
        if device not in _SINGLE:
            _SINGLE[device] = tf.distribute.OneDeviceStrategy(device)
        return _SINGLE[device]
    devices = tuple(
        d.name for d in (gpus or tf.config.list_logical_devices("CPU"))
    )
    if devices not in _MIRRORED:
        _MIRRORED[devices] = tf.distribute.MirroredStrategy(list(devices))
    return _MIRRORED[devices]


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    from matl_keras.training import keras_multi_worker_fix

    return keras_multi_worker_fix.in_multi_worker_mode(strategy)


def task_index(strategy: tf.distribute.Strategy) -> int:
    """This process's index among the cluster's tasks (0: the chief)."""
    if not is_multi_worker(strategy):
        return 0
    resolver = strategy.cluster_resolver
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    if resolver.task_type == "chief":
        return 0
    return int(resolver.task_id) + (1 if has_chief else 0)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True where the run's files are written (always on one machine)."""
    return task_index(strategy) == 0


def broadcast_from_chief(
    strategy: tf.distribute.Strategy, values: Sequence[int]
) -> list[int]:
    """The chief's `values` on every worker (a collective: every worker must
    call it at the same point). Used for decisions taken from files, so
    that all workers take the same branch (a worker that skipped a step the
    chief runs would wait for it forever)."""
    if not is_multi_worker(strategy):
        return [int(v) for v in values]
    mine = tf.constant(
        [int(v) for v in values] if is_chief(strategy) else [0] * len(values),
        tf.int64,
    )

    @tf.function  # eager collectives log an overhead warning
    def total():
        per_replica = strategy.run(tf.identity, args=(mine,))
        return strategy.reduce("SUM", per_replica, axis=None)

    total = total()
    replicas_here = len(strategy.extended.worker_devices)
    # The chief's replicas each contributed `values`.
    return [int(v) // replicas_here for v in total.numpy()]


def worker_cache(cache: str, strategy: tf.distribute.Strategy) -> str:
    """`cache` for this worker: an on-disk cache path gets a per-worker
    suffix on the non-chief workers (tf.data refuses a cache file another
    process is writing); `auto`, `memory` and `none` are kept."""
    if cache in ("auto", "memory", "none") or is_chief(strategy):
        return cache
    return f"{cache}-worker{task_index(strategy)}"


def check_replica_split(batch_size: int, strategy: tf.distribute.Strategy):
    """Refuse a global batch that the replicas cannot share equally.

    Keras splits the global batch over the replicas; with a remainder the
    replicas get different batch sizes (or the last one none), so the
    per-replica losses and BN statistics no longer average to the one-device
    result. Checked at start, before any data is read.
    """
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise ConfigError(
            f"`batch_size` must be divisible by the number of replicas "
            f"({replicas}). Received: batch_size={batch_size}"
        )
