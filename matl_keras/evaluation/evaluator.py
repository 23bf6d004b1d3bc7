"""The evaluator plugin contract (entry-point group `matl_keras.evaluators`).

An evaluator scores a trained model on one labelled split and yields
`(metric name, value)` pairs; the caller stores them under the split's name
in `metrics.json` (or, for transferability, under the source stage's name in
`transferability.json`). Predictions and pooled features are computed once
per split and shared by all evaluators through `EvalContext.predictions()`
and `EvalContext.features()`.

The model is either a classifier (images -> class probabilities) or, for a
self-supervised source, a backbone alone (images -> feature maps). An
evaluator that needs class probabilities (`needs_classifier = True`, the
default: metrics, LEEP) is only given classifiers; one that only reads
features (`needs_classifier = False`, e.g. LogME) is given both.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterator
from typing import Any
from typing import ClassVar

import numpy as np

from matl_keras import PLUGIN_API_VERSION

POOL_LAYER = "avg_pool"


def is_classifier(model: Any) -> bool:
    """True for a model ending in class probabilities `(batch, classes)`."""
    return len(model.output.shape) == 2


def feature_model(model: Any) -> Any:
    """Images -> pooled features `(batch, channels)`: the classifier's
    `avg_pool` output, or a backbone's feature map averaged over space."""
    import keras

    if is_classifier(model):
        try:
            pooled = model.get_layer(POOL_LAYER).output
        except ValueError:
            raise ValueError(
                f"classifier {model.name!r} has no {POOL_LAYER!r} layer: "
                "features are read there (build it with "
                "build_image_classifier)"
            ) from None
    else:
        pooled = keras.layers.GlobalAveragePooling2D()(model.output)
    return keras.Model(model.input, pooled, name=f"{model.name}_features")


def pooled_features(backbone: Any, data: Any) -> tuple[np.ndarray, np.ndarray]:
    """`(features (n, channels), labels (n,))` of a batched split: the
    backbone's feature maps averaged over space, in float32, computed eagerly
    batch by batch (safe inside `fit`, where the kNN monitor calls it)."""
    import keras

    features, labels = [], []
    for images, batch_labels in data:
        maps = backbone(images, training=False)
        pooled = keras.ops.mean(keras.ops.cast(maps, "float32"), axis=(1, 2))
        features.append(keras.ops.convert_to_numpy(pooled))
        labels.append(keras.ops.convert_to_numpy(batch_labels))
    return np.concatenate(features), np.concatenate(labels)


def predict_split(model: Any, data: Any) -> tuple[np.ndarray, np.ndarray]:
    """`(labels (n,), probabilities (n, classes))` of a batched split.

    `predict()` runs the compiled, distribution-aware predict function
    (`predict_on_batch` duplicates rows under MirroredStrategy).
    """
    probs = np.asarray(model.predict(data, verbose=0))
    labels = np.concatenate([np.asarray(y) for _, y in data])
    return labels, probs


@dataclasses.dataclass
class EvalContext:
    """What an evaluator may look at.

    Args:
        model: keras.Model. The trained classifier (images -> probabilities).
        data: tf.data.Dataset. Batches of `(images, labels)` of one split,
            preprocessed as in evaluation.
        split: str. Name of the split ("val", "test").
        class_names: tuple of str. Class names in label order.
        positive_index: int or None. Positive class of a binary task.
        workdir: str or None. Where an evaluator may write files.
        prefix: str or None. Start of the names of the files written next
            to the scores (default: the split, as in `val_roc.png`).
        decision: dict or None. The operating point and temperature fitted
            on the validation split (`operating_point.fit_decision`), when
            there is one; evaluators score other splits at it.
    """

    model: Any
    data: Any
    split: str
    class_names: tuple[str, ...]
    positive_index: int | None = None
    workdir: str | None = None
    prefix: str | None = None
    decision: dict[str, Any] | None = None
    _cache: tuple[np.ndarray, np.ndarray] | None = dataclasses.field(
        default=None, repr=False
    )
    _features: tuple[np.ndarray, np.ndarray] | None = dataclasses.field(
        default=None, repr=False
    )

    def predictions(self) -> tuple[np.ndarray, np.ndarray]:
        """`(labels (n,), probabilities (n, classes))`, computed once."""
        if self._cache is None:
            if not is_classifier(self.model):
                raise ValueError(
                    f"model {self.model.name!r} has no classifier head (a "
                    "self-supervised backbone): only feature evaluators apply"
                )
            self._cache = predict_split(self.model, self.data)
        return self._cache

    def features(self) -> tuple[np.ndarray, np.ndarray]:
        """`(labels (n,), pooled features (n, channels))`, computed once."""
        if self._features is None:
            self._features = predict_split(feature_model(self.model), self.data)
        return self._features


def resolve_evaluators(
    evaluators: Any, param: str = "train.evaluators"
) -> list["Evaluator"]:
    """Evaluator plugins from instances or registry names; `param` names
    the setting in errors."""
    from matl_keras import registry as registry_lib

    return [
        registry_lib.resolve(
            "evaluators", evaluator, param, "hold evaluator plugins or names"
        )
        for evaluator in evaluators
    ]


def run_evaluators(context: EvalContext, evaluators: Any) -> dict[str, Any]:
    """Runs every evaluator that applies to `context.model`; returns
    `{name: JSON-ready value}`. Evaluators that need a classifier head are
    listed under `not_applicable` for a backbone. Two evaluators reporting
    the same name is an error."""
    from matl_keras.errors import ConfigError
    from matl_keras.evaluation.metrics import to_json_value

    results: dict[str, Any] = {}
    skipped = []
    for evaluator in evaluators:
        if evaluator.needs_classifier and not is_classifier(context.model):
            skipped.append(type(evaluator).__name__)
            continue
        for name, value in evaluator.run(context):
            if name in results:
                raise ConfigError(
                    f"two evaluators both report {name!r} for split "
                    f"{context.split!r}"
                )
            results[name] = (
                to_json_value(value) if isinstance(value, float) else value
            )
    if skipped:
        results["not_applicable"] = skipped
    return results


class Evaluator(abc.ABC):
    """Base class of evaluator plugins.

    Example:
    ```python
    class TopClassRate(Evaluator):
        def run(self, context):
            labels, probs = context.predictions()
            yield "top_class_rate", float(np.mean(probs.argmax(1) == 0))
    ```
    """

    api_version: ClassVar[int] = PLUGIN_API_VERSION
    # False for evaluators that read only `context.features()`: they also
    # score self-supervised backbones.
    needs_classifier: ClassVar[bool] = True

    @abc.abstractmethod
    def run(self, context: EvalContext) -> Iterator[tuple[str, Any]]:
        """Yields `(name, value)` pairs; values must be JSON-serializable."""


def first_images(data: Any, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` `(images, labels)` of a batched split."""
    images, labels = [], []
    seen = 0
    for x, y in data:
        images.append(np.asarray(x))
        labels.append(np.asarray(y))
        seen += len(images[-1])
        if seen >= count:
            break
    return np.concatenate(images)[:count], np.concatenate(labels)[:count]


def __getattr__(name: str) -> Any:
    # A report is a command over runs, not an evaluator of a model: its
    # contract left this group (issue 17). Old plugins get the fix, not a
    # bare ImportError.
    if name == "ReportEvaluator":
        raise ImportError(
            "matl_keras.evaluation.evaluator.ReportEvaluator is gone: a "
            "report subclasses matl_keras.commands.report.Report and "
            'registers in the entry-point group "matl_keras.reports" '
            '(not "matl_keras.evaluators").'
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
