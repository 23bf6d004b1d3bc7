"""The SSL method plugin contract (entry-point group `matl_keras.ssl_methods`).

An SSL method is a `keras.Model` that is given a backbone and owns its heads,
augmentations and `train_step` (keras-io `ContrastiveModel`). This class
declares everything the SSTL-M stage (`training.self_supervised.pretrain`)
calls on it; a plugin written to it alone works:

1. Construction: `method(backbone=..., image_size=..., **gin parameters)`,
   plus `key_backbone=` (a second backbone of the same architecture) when
   the class sets `needs_key_encoder = True`, and backbones built with
   per-group BatchNorm statistics when it sets `shuffle_batchnorm = True`
   (`FusedBatchNormalization(groups=...)`).
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
6. After training: `save_weights` of the whole method and of `backbone`
   (the next stage starts from `backbone`). When starting from an earlier
   stage's backbone, `init_from_backbone()` is called after loading it into
   `backbone` (e.g. to copy it into a key encoder).
"""

from __future__ import annotations

import dataclasses
from typing import Any
from typing import ClassVar

import keras
import tensorflow as tf

from matl_keras import PLUGIN_API_VERSION


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
    """Base class of self-supervised methods.

    Args:
        backbone: keras.Model. The feature extractor being pretrained.

    Subclasses implement `views(image, seed)` and `train_step(data)`
    (`data` = `(views, indices)`), list their loss trackers in `metrics`
    and may override `configure`, `prepare` and `init_from_backbone`.
    """

    api_version: ClassVar[int] = PLUGIN_API_VERSION
    # The stage passes `key_backbone=` to the constructor when True.
    needs_key_encoder: ClassVar[bool] = False
    # The stage builds the backbones with per-group BatchNorm when True.
    shuffle_batchnorm: ClassVar[bool] = False

    def __init__(self, backbone: keras.Model, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backbone = backbone
        self.schedule: RunSchedule | None = None

    def configure(self, schedule: RunSchedule) -> None:
        """Called once before `build` with the run's schedule."""
        self.schedule = schedule

    # A method that needs the full-resolution image defines
    # `prepare(image) -> dict[str, tf.Tensor]`; None: not needed.
    prepare = None

    def views(self, image: Any, seed: tf.Tensor) -> Any:
        """The model input of one image, from the stateless `seed`."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement views(image, seed)"
        )

    def init_from_backbone(self) -> None:
        """Called after an earlier stage's weights were loaded into
        `backbone` (e.g. copy them into a momentum encoder)."""
