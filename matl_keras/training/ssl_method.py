"""The SSL method plugin contract (entry-point group `matl_keras.ssl_methods`).

An SSL method is a `keras.Model` that is given a backbone and owns its heads,
augmentations and `train_step` (keras-io `ContrastiveModel`). `SSLMethod`
declares everything the SSTL-M stage (`training.self_supervised.pretrain`),
its callbacks and the tools call on it; a plugin written to it alone works
(`plugins/ssl_methods/simsiam.py` is one, not derived from
`contrastive.ContrastiveModel`).

| member | required | what the stage does with it |
|---|---|---|
| `needs_key_encoder` (class) | no (False) | True: passes `key_backbone=` (a second backbone, same architecture) to the constructor |
| `shuffle_batchnorm` (class) | no (False) | True: builds the backbones with per-group BatchNorm (`FusedBatchNormalization(groups=...)`) |
| `__init__(backbone=, image_size=, [key_backbone=], **gin)` | yes | builds the method under the strategy's scope |
| `backbone` | yes (set by `SSLMethod.__init__`) | the encoder trained; an earlier stage's weights are loaded into it |
| `key_backbone` | no (None) | the key / target encoder, if any; left out of `optimized_variables` |
| `configure(schedule)` | no | once, before `build`, with the `RunSchedule` |
| `prepare(image)` | no (None) | per image, full resolution, before the cache |
| `views(image, seed)` | yes | per example, in `tf.data`: the model input |
| `build()` | no (Keras') | once, under the strategy's scope |
| `init_from_backbone()` | no (copies `backbone` into `key_backbone`) | after loading an earlier stage's weights into `backbone` |
| `optimized_variables` | no (trainable variables but `key_backbone`'s) | what the optimizer updates; a resumed run builds the optimizer on them before restoring its state |
| `train_step(data)` | yes | `fit`'s step on `(views, indices)` batches |
| `metrics` | no (Keras') | trackers, logged per epoch to `history.csv` and reset each epoch |
| `transfer_backbone` | no (`backbone`) | the backbone carried to the next stage (`backbone.weights.h5`), scored by the kNN monitor and the linear probe |
| `run_record()` | no (`{}`) | extra fields of `run.json` (e.g. `queue_size`) |

`check_contract(cls)` lists what a class lacks; the registry refuses such a
plugin when it loads it and the stage when it builds it, naming the plugin
and the missing members.

In detail:

1. Construction: `method(backbone=..., image_size=..., **gin parameters)`,
   plus `key_backbone=` when the class sets `needs_key_encoder = True`.
2. `configure(schedule)`: before `build`, what the run is (`RunSchedule`:
   dataset size, steps, epochs, global batch, seed), so a method can size
   its queue, schedule its momentum or refuse a setting that cannot work.
3. `prepare(image)` (optional): per image, on the full-resolution decoded
   image, before the pipeline's cache (e.g. crops that must not be cut
   from the resized copy); its float32 outputs in [0, 1] are cached.
4. `views(image, seed)`: per example, in `tf.data`: the model input of one
   image (float32 at load size in [0, 1]; with `prepare`, the dict
   `{"image": ..., **prepare(...)}`) from a stateless seed (int64 `[2]`)
   that the pipeline derives from (run seed, epoch, position). All of its
   randomness must come from `seed`, so runs repeat bitwise and a resumed
   run sees the views an uninterrupted one would.
5. `build()`, `compile(optimizer=..., jit_compile=...)`, `fit(...)`: the
   training data is `(views, indices)` batches, where `indices` (int32) are
   the images' positions in the dataset: their identities (a queue uses
   them to never treat an image's own keys as its negatives).
   `train_step` must reduce its loss over the *global* batch (divide a
   sum by `per-replica batch x num_replicas_in_sync`) and hand only
   `optimized_variables` to the optimizer.
6. What is saved: every backup (`backup/`) and `ssl_model.weights.h5` are
   `save_weights` of the whole method, so all state a resumed run needs
   (key encoder, queue, pointers) must be Keras variables the model
   tracks; Python attributes are not saved. `backbone.weights.h5` is
   `transfer_backbone` alone: the next stage starts from it. When starting
   from an earlier stage's backbone, `init_from_backbone()` is called after
   loading it into `backbone` (e.g. to copy it into a key encoder).
"""  # noqa: E501 - a Markdown table

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any
from typing import ClassVar

import keras
import tensorflow as tf

from matl_keras import PLUGIN_API_VERSION
from matl_keras.errors import PluginError


@dataclasses.dataclass(frozen=True)
class RunSchedule:
    """What an SSL run is, given to `SSLMethod.configure` before `build`.

    Attributes:
        num_examples: int. Images in the training split.
        steps_per_epoch: int. Optimizer steps per epoch.
        epochs: int. Epochs of the run.
        global_batch_size: int. Images per step over all replicas.
        seed: int. The run seed (derive any randomness of the step from it).
    """

    num_examples: int
    steps_per_epoch: int
    epochs: int
    global_batch_size: int
    seed: int

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    @property
    def images_per_epoch(self) -> int:
        """Images an epoch uses (the last partial batch is dropped)."""
        return self.steps_per_epoch * self.global_batch_size


class SSLMethod(keras.Model):
    """Base class of self-supervised methods (the contract: module docstring).

    Args:
        backbone: keras.Model. The feature extractor being pretrained.

    Subclasses implement `views(image, seed)` and `train_step(data)`
    (`data` = `(views, indices)`), list their loss trackers in `metrics`
    and may override the other members of the contract.

    Example:

    ```python
    class MyMethod(SSLMethod):
        def __init__(self, backbone, image_size, **kwargs):
            super().__init__(backbone, **kwargs)
            ...
        def views(self, image, seed): ...
        def train_step(self, data): ...
    ```
    """

    api_version: ClassVar[int] = PLUGIN_API_VERSION
    # The stage passes `key_backbone=` to the constructor when True.
    needs_key_encoder: ClassVar[bool] = False
    # The stage builds the backbones with per-group BatchNorm when True.
    shuffle_batchnorm: ClassVar[bool] = False

    def __init__(self, backbone: keras.Model, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backbone = backbone
        # The key / target encoder of methods with one (set it after
        # calling this constructor).
        self.key_backbone: keras.Model | None = None
        self.schedule: RunSchedule | None = None

    def configure(self, schedule: RunSchedule) -> None:
        """Called once before `build` with the run's schedule."""
        self.schedule = schedule

    # A method that needs the full-resolution image defines
    # `prepare(image) -> dict[str, tf.Tensor]`; None: not needed.
    prepare: Callable[[tf.Tensor], dict[str, tf.Tensor]] | None = None

    def views(self, image: Any, seed: tf.Tensor) -> Any:
        """The model input of one image, from the stateless `seed`.

        Required. Runs in `tf.data` (TensorFlow ops only).

        Args:
            image: float32 `(L, L, 3)` in [0, 1] at load size, or the dict
                `{"image": ..., **prepare(image)}` when `prepare` is set.
            seed: int64 `[2]`. The example's stateless seed.

        Returns:
            A tensor or a (nested) dict of tensors: one example of the
            first element of the training batches.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must implement views(image, seed)"
        )

    def init_from_backbone(self) -> None:
        """Called after an earlier stage's weights were loaded into
        `backbone`: by default copies them into `key_backbone`, if any."""
        if self.key_backbone is not None:
            self.key_backbone.set_weights(self.backbone.get_weights())

    @property
    def optimized_variables(self) -> list:
        """What the optimizer updates: every trainable variable but those
        of `key_backbone` (moved by momentum, if at all). `train_step`
        applies gradients to these, and a resumed run builds the optimizer
        on them before it restores the optimizer's state."""
        if self.key_backbone is None:
            return list(self.trainable_variables)
        excluded = {id(v) for v in self.key_backbone.weights}
        return [v for v in self.trainable_variables if id(v) not in excluded]

    @property
    def transfer_backbone(self) -> keras.Model:
        """The backbone the next stage starts from (`backbone.weights.h5`),
        scored by the kNN monitor and the linear probe: `backbone`."""
        return self.backbone

    def run_record(self) -> dict[str, Any]:
        """Method-specific fields of the stage's `run.json` (JSON values)."""
        return {}

    @classmethod
    def missing_members(cls) -> list[str]:
        """What this class lacks of the contract (`contract_errors`); the
        registry refuses a plugin for which it is not empty."""
        return contract_errors(cls)


# name -> what the stage calls, for the members a plugin must provide.
REQUIRED = {
    "views": "views(image, seed): the model input of one image",
    "train_step": "train_step(data): the training step on (views, indices)",
}


def _overrides(cls: type, name: str, base: type) -> bool:
    return getattr(cls, name, None) is not getattr(base, name, None)


def _accepts(cls: type, argument: str) -> bool:
    try:
        parameters = inspect.signature(cls.__init__).parameters.values()
    except (TypeError, ValueError):  # no signature: cannot tell
        return True
    return any(
        p.name == argument or p.kind is inspect.Parameter.VAR_KEYWORD
        for p in parameters
    )


def contract_errors(cls: type) -> list[str]:
    """What SSL method class `cls` lacks of the contract (empty: nothing).

    Checks the class alone, without building it: `views` and `train_step`
    overridden (`keras.Model.train_step` is supervised training on a
    compiled loss), a callable or None `prepare`, and constructor
    arguments `backbone`, `image_size` and, with `needs_key_encoder`,
    `key_backbone`.
    """
    missing = []
    if not (isinstance(cls, type) and issubclass(cls, SSLMethod)):
        return [f"a subclass of {SSLMethod.__module__}.SSLMethod"]
    if not _overrides(cls, "views", SSLMethod):
        missing.append(REQUIRED["views"])
    if not _overrides(cls, "train_step", keras.Model):
        missing.append(REQUIRED["train_step"])
    prepare = getattr(cls, "prepare", None)
    if prepare is not None and not callable(prepare):
        missing.append("prepare: a method prepare(image) or None")
    arguments = ["backbone", "image_size"]
    if cls.needs_key_encoder:
        arguments.append("key_backbone")
    for argument in arguments:
        if not _accepts(cls, argument):
            missing.append(f"__init__ argument `{argument}=`")
    return missing


def check_contract(cls: type, name: str | None = None) -> None:
    """Raises `PluginError` naming the plugin and every member it lacks.

    Args:
        cls: the SSL method class (or a gin-configurable subclass of it).
        name: str or None. The plugin's name (gin / entry point), if known.
    """
    missing = contract_errors(cls)
    if not missing:
        return
    label = f"{cls.__module__}.{cls.__qualname__}"
    if name:
        label = f'"{name}" ({label})'
    raise PluginError(
        f"The SSL method {label} does not implement the SSLMethod contract "
        f"(matl_keras/training/ssl_method.py); missing: " + "; ".join(missing)
    )
