"""Run-to-run determinism of a training stage.

Sources of run-to-run differences and where each is handled:
- weights initialisers and the Keras random layers' first seeds:
  `keras.utils.set_random_seed(seed)` in the stages;
- data order and augmentation: stateless, from (seed, epoch, position)
  (`matl_keras.data.pipeline`, `matl_keras.data.augment`);
- the random layers' state during training (dropout masks): Keras 3 keeps
  it in `SeedGenerator` state variables, which `save_weights` does not
  write, so a resumed run would restart the masks from the first seed.
  `EpochSeeds` sets them from (seed, epoch) at every epoch start, so an
  epoch's masks do not depend on whether the run was resumed;
- kernels whose result depends on thread scheduling or atomics:
  TensorFlow's op determinism (`configure`);
- graph rewrites that differ between processes: Grappler's arithmetic
  optimizer (`configure` turns it off with op determinism; see there).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

# `tf.config.experimental` exports only `enable_op_determinism`; the switch
# back and the query live here (TF 2.8+).
from tensorflow.python.framework import config as tf_config

from matl_keras.errors import ConfigError
from matl_keras.errors import MatlError

DETERMINISTIC = (True, False, "auto")


def _has_gpu() -> bool:
    return bool(tf.config.list_logical_devices("GPU"))


def configure(deterministic: bool | str) -> dict[str, object]:
    """Turns TensorFlow's op determinism on when asked (`"auto"`: on CPU).

    On CPU the cost is small (the tf.data maps run in order anyway and the
    CPU kernels used here are deterministic; `tools/bench_determinism.py`
    measures it). Keras compiles no XLA while op determinism is on (its
    `model_supports_jit`), which the stages record as `jit_compile` in
    `run.json`. On GPU op determinism picks
    slower deterministic cuDNN kernels and makes ops without one (e.g.
    some scatter and resize gradients) raise, so `"auto"` leaves it off
    there. Op determinism is a process-wide switch that cannot be turned
    off through the public API: `deterministic=False` turns it off
    through TensorFlow's internal switch, so that each run gets what it
    asked for even after another run in the same process.

    Returns:
        `{"deterministic": bool, "reason": str}` for `run.json`.
    """
    if deterministic not in DETERMINISTIC:
        raise ConfigError(
            "`deterministic` must be True, False or 'auto'. Received: "
            f"deterministic={deterministic!r}"
        )
    gpu = _has_gpu()
    wanted = (not gpu) if deterministic == "auto" else deterministic
    if wanted:
        tf.config.experimental.enable_op_determinism()
    else:
        tf_config.disable_op_determinism()
    enabled = tf_config.is_op_determinism_enabled()
    # Op determinism fixes kernels, not the graph they run in. Grappler's
    # arithmetic optimizer rewrote the region-aware training step (one
    # backbone through three paths) differently from one process to the
    # next: the same step from the same weights and batch gave 4 different
    # results in 5 processes (R-18 x0.5, 96 px, batch 32; every run of one
    # process repeated itself), so two main-job runs diverged from their
    # first epochs. With the arithmetic optimizer off, 5 of 5 processes
    # agreed (turning the remapper off instead also did; the layout
    # optimizer did not), at no measured cost in step time (README, "Same
    # config and seed, same result"). Process-wide, like op determinism;
    # read when a `tf.function` is first run.
    tf.config.optimizer.set_experimental_options(
        {"arithmetic_optimization": not enabled}
    )
    if enabled and gpu:
        reason = (
            "op determinism on GPU: deterministic cuDNN kernels, Grappler "
            "arithmetic optimizer off; Keras "
            "compiles no XLA while it is on (run.json jit_compile); mixed "
            "precision gives other bits than a float32 run"
        )
    elif enabled:
        reason = "op determinism on CPU; Grappler arithmetic optimizer off"
    elif gpu:
        reason = (
            "GPU without op determinism (deterministic='auto'): cuDNN "
            "autotuning and atomic reductions may differ run to run; set "
            "deterministic=True for bitwise repeatable runs"
        )
    else:
        reason = "op determinism off (deterministic=False)"
    return {"deterministic": bool(enabled), "reason": reason}


def seed_states(model: keras.Model) -> list:
    """The `SeedGenerator` state variables of `model` (dropout and other
    random layers), in the model's variable order."""
    found, seen = [], set()
    for variable in model.variables:
        name = variable.path.rsplit("/", 1)[-1]
        if name == "seed_generator_state" and id(variable) not in seen:
            seen.add(id(variable))
            found.append(variable)
    return found


def epoch_state(seed: int, epoch: int, position: int) -> int:
    """The first seed of random-layer `position` in epoch `epoch`."""
    sequence = np.random.SeedSequence([seed, epoch, position, 0x5EED])
    return int(sequence.generate_state(1, np.uint32)[0])


class EpochSeeds(keras.callbacks.Callback):
    """Sets every random layer's seed state from (seed, epoch) when an
    epoch begins, and checks that `fit` starts at the epoch the training
    data was built for.

    Args:
        seed: int. The run seed.
        start_epoch: int. First epoch of the training data (`build_split`'s
            `start_epoch`): `fit` resuming at another epoch would train on
            the wrong epoch's batches.
    """

    def __init__(self, seed: int, start_epoch: int = 0):
        super().__init__()
        self.seed = seed
        self.start_epoch = start_epoch
        self._first = True

    def on_epoch_begin(self, epoch, logs=None):
        if self._first and epoch != self.start_epoch:
            raise MatlError(
                f"training resumed at epoch {epoch} but its data was built "
                f"from epoch {self.start_epoch}: the backups changed while "
                "the run started"
            )
        self._first = False
        for position, state in enumerate(seed_states(self.model)):
            value = epoch_state(self.seed, epoch, position)
            state.assign(np.array([value, 0], dtype=state.dtype))
