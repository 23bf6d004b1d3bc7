"""Load keras.applications ImageNet weights into any ResNet variant.

STL-N without training ImageNet yourself: a `keras.applications.ResNet50`
or `ResNet101` weights file (`.h5`, legacy or Keras 3 `.weights.h5`, with or
without the top) or model is matched onto a `ResNetBackbone` of the same
depth layer by layer, by layer name and weight shapes: the two graphs share
names exactly (see `resnet_backbone`). The non-local blocks and any head are
not in the source and stay at their initialization (blocks start as the
identity), so an attentive variant computes the same features as the
baseline right after loading. The backbones' convolutions have no bias
(see `resnet_backbone`): each keras.applications bias is folded into the
moving mean of the BatchNormalization after it, which computes the same
function.

keras-hub's ResNet presets (`resnet_50_imagenet`, ...) do not share this
topology, so they are refused with the reason rather than loaded into the
wrong places: keras-hub 0.32's ResNet "v1" is ResNet v1.5 (the stride sits
in each block's 3x3 convolution, after explicit zero padding, not in the
first 1x1 one), its convolutions have no bias and its BatchNormalization
epsilon is 1e-5. Its weights would give a different function here, which a
transfer study must not silently do.
"""

from __future__ import annotations

import dataclasses
import os

import keras

from matl_keras.errors import ConfigError
from matl_keras.models.backbone_weights import apply_plan
from matl_keras.models.backbone_weights import bias_to_fold

APPLICATIONS = {
    50: "ResNet50",
    101: "ResNet101",
}


@dataclasses.dataclass
class LoadReport:
    """What `load_imagenet_weights` did.

    Args:
        source: str. The file or model loaded from.
        loaded: list of str. Layers whose weights were copied.
        kept_initial: list of str. Layers with weights not in the source
            (non-local blocks, heads).
        unused: list of str. Source layers with no counterpart (its top).
    """

    source: str
    loaded: list[str]
    kept_initial: list[str]
    unused: list[str]

    def summary(self) -> dict:
        return {
            "source": self.source,
            "loaded_layers": len(self.loaded),
            "kept_initial": self.kept_initial,
            "unused_source_layers": self.unused,
        }


_KERAS_HUB_MISMATCH = (
    "cannot load {source!r}: keras-hub ResNet presets are ResNet v1.5 (stride "
    "in the 3x3 convolution, bias-free convolutions, BN epsilon 1e-5), not the "
    "keras.applications ResNet v1 topology these backbones follow; use a "
    "keras.applications ResNet50/ResNet101 weights file instead"
)


def _application_model(depth: int, path: str) -> keras.Model:
    """A keras.applications ResNet holding the weights of file `path`."""
    if depth not in APPLICATIONS:
        raise ConfigError(
            f"ImageNet weights exist for ResNet depths {sorted(APPLICATIONS)}; "
            f"this backbone has depth={depth}"
        )
    if not os.path.isfile(path):
        raise ConfigError(f"weights file not found: {path!r}")
    build = getattr(keras.applications, APPLICATIONS[depth])
    errors = []
    for include_top in (False, True):
        model = build(weights=None, include_top=include_top)
        try:
            model.load_weights(path)
            return model
        except Exception as e:  # noqa: BLE001 - try the other head layout.
            errors.append(f"include_top={include_top}: {e}")
    raise ConfigError(
        f"{path!r} is not a keras.applications {APPLICATIONS[depth]} weights "
        f"file (tried with and without the top): {errors[-1].splitlines()[0]}"
    )


def load_imagenet_weights(backbone: keras.Model, source) -> LoadReport:
    """Copies ResNet weights from `source` into `backbone`.

    Args:
        backbone: ResNetBackbone (or a model built on it, such as the flat
            classifier) at width 1.0.
        source: str or keras.Model. A keras.applications ResNet weights file
            of the backbone's depth, or such a model.

    Returns:
        A `LoadReport`.

    Raises:
        ConfigError: the source does not fit (depth, width, a missing layer
            or a shape that differs); nothing is changed then.
    """
    depth = getattr(backbone, "depth", None)
    if isinstance(source, (str, os.PathLike)) and os.path.isfile(
        os.path.join(source, "config.json")
    ):
        source = os.fspath(source)
        raise ConfigError(_KERAS_HUB_MISMATCH.format(source=source))
    if type(source).__module__.startswith("keras_hub"):
        raise ConfigError(_KERAS_HUB_MISMATCH.format(source=source.name))
    if isinstance(source, (str, os.PathLike)):
        source_name = os.fspath(source)
        source_model = _application_model(depth, source_name)
    else:
        source_name = source.name
        source_model = source
    source_layers = {l.name: l for l in source_model.layers if l.weights}
    target_layers = [l for l in backbone.layers if l.weights]
    by_name = {l.name: l for l in target_layers}
    plan, kept, folds = [], [], []
    for layer in target_layers:
        # A head is task-specific: never taken from ImageNet's 1000 classes.
        if layer.name not in source_layers or layer.name == "predictions":
            kept.append(layer.name)
            continue
        ours = [tuple(w.shape) for w in layer.weights]
        theirs = [tuple(w.shape) for w in source_layers[layer.name].weights]
        # keras.applications' conv bias, folded into the moving mean of the
        # BatchNorm that follows (the same function).
        folded = bias_to_fold(layer, source_layers[layer.name], by_name)
        if folded is not None:
            plan.append((layer, [folded[0]]))
            folds.append(folded[1])
            continue
        if ours != theirs:
            raise ConfigError(
                f"cannot load {source_name!r}: layer {layer.name!r} has "
                f"weight shapes {ours} here but {theirs} in the source "
                "(different depth or width_multiplier?). Nothing was loaded."
            )
        plan.append((layer, source_layers[layer.name].get_weights()))
    backbone_names = {l.name for l in target_layers}
    missing = [
        n
        for n in source_layers
        if n not in backbone_names and n != "predictions"
    ]
    if missing:
        raise ConfigError(
            f"cannot load {source_name!r}: the backbone has no layers "
            f"{missing[:5]}{'...' if len(missing) > 5 else ''} (different "
            "depth?). Nothing was loaded."
        )
    apply_plan(plan, folds)
    unused = [n for n in source_layers if n not in backbone_names]
    return LoadReport(source_name, [l.name for l, _ in plan], kept, unused)
