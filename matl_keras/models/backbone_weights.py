"""Loading a previous stage's backbone weights, strictly.

Every stage of a chain hands its `backbone.weights.h5` to the next one; a
file of another architecture must be refused, not half-loaded.
"""

from __future__ import annotations

import warnings

import keras

from matl_keras.errors import ConfigError


def _saved_shapes(path: str) -> list[tuple[int, ...]]:
    """Shapes of every tensor in a Keras `.weights.h5` file."""
    import h5py

    shapes: list[tuple[int, ...]] = []
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda _, v: (
                shapes.append(tuple(v.shape))
                if isinstance(v, h5py.Dataset)
                else None
            )
        )
    return shapes


def bn_after(conv_name: str) -> str:
    """The BatchNormalization that follows convolution `conv_name` in the
    ResNets' naming scheme (`conv2_block1_1_conv` -> `conv2_block1_1_bn`)."""
    return conv_name[: -len("_conv")] + "_bn"


def bias_to_fold(layer, source_layer, targets: dict):
    """`(kernel, (batchnorm, bias))` when `layer` is a bias-free
    convolution, `source_layer` the same convolution with a bias, and the
    BatchNorm after it is among `targets` (name -> layer); else None."""
    ours = [tuple(w.shape) for w in layer.weights]
    theirs = [tuple(w.shape) for w in source_layer.weights]
    if (
        isinstance(layer, keras.layers.Conv2D)
        and not layer.use_bias
        and len(theirs) == 2
        and theirs[:1] == ours
        and bn_after(layer.name) in targets
    ):
        kernel, bias = source_layer.get_weights()
        return kernel, (targets[bn_after(layer.name)], bias)
    return None


def apply_plan(plan: list, folds: list) -> None:
    """Sets each `(layer, weights)` of `plan`, then folds each
    `(batchnorm, bias)` into the moving mean (after the BatchNorms' own
    weights are set)."""
    for layer, weights in plan:
        layer.set_weights(weights)
    for bn, bias in folds:
        bn.moving_mean.assign(bn.moving_mean - bias)


def copy_folding_conv_biases(source: keras.Model, target: keras.Model) -> None:
    """Copies `source`'s weights into `target`, layer by layer name, where
    `target`'s convolutions have no bias and `source`'s may.

    A bias b of a convolution followed by BatchNormalization is folded into
    its moving mean: BN(conv(x) + b) with moving mean m computes exactly
    BN(conv(x)) with moving mean m - b, and in training the batch mean
    absorbs b. `target` is changed only when every layer fits.

    Raises:
        ConfigError: a layer is missing or its shapes differ (named).
    """
    layers = {l.name: l for l in source.layers if l.weights}
    targets = {l.name: l for l in target.layers if l.weights}
    plan, folds = [], []
    for name, layer in targets.items():
        theirs = layers.get(name)
        ours = [tuple(w.shape) for w in layer.weights]
        shapes = (
            None if theirs is None else [tuple(w.shape) for w in theirs.weights]
        )
        folded = (
            None if theirs is None else bias_to_fold(layer, theirs, targets)
        )
        if shapes == ours:
            plan.append((layer, theirs.get_weights()))
        elif folded is not None:
            plan.append((layer, [folded[0]]))
            folds.append(folded[1])
        else:
            raise ConfigError(
                f"layer {name!r} has weight shapes {ours} here but "
                f"{shapes} in {source.name!r}. Nothing was loaded."
            )
    extra = sorted(set(layers) - set(targets))
    if extra:
        raise ConfigError(
            f"{source.name!r} has layers {extra[:5]} that {target.name!r} "
            "lacks. Nothing was loaded."
        )
    apply_plan(plan, folds)


def _with_conv_biases(features: keras.Model) -> keras.Model | None:
    """The same backbone in the layout with conv biases (weights files of
    earlier versions), or None when `features` has no such variant."""
    from matl_keras.models.resnet.resnet_backbone import ResNetBackbone

    if not isinstance(features, ResNetBackbone) or features.conv_bias:
        return None
    config = {**features.get_config(), "conv_bias": True}
    return ResNetBackbone.from_config(config)


def load_backbone(features: keras.Model, path: str) -> None:
    """Loads a previous stage's `backbone.weights.h5` into `features`.

    Keras loads a file of another depth with only a warning, leaving the
    unmatched layers at their random initialisation: here any difference in
    the tensors (count or shapes) or a skipped layer is an error. A file
    with convolution biases (written before bias-free convolutions) loads
    into a bias-free backbone with its biases folded into the BatchNorm
    moving means: the same function (`copy_folding_conv_biases`).
    """
    saved = _saved_shapes(path)  # `workdir.begin` checked that it exists
    wanted = [tuple(w.shape) for w in features.weights]
    mismatch = ConfigError(
        f"`init_backbone`: the weights in {path!r} ({len(saved)} tensors) do "
        f"not fit this backbone ({features.name}, {len(wanted)} tensors): "
        "every stage of a chain must use the same backbone (depth, width, "
        "attention placement)"
    )
    if sorted(saved) != sorted(wanted):
        biased = _with_conv_biases(features)
        if biased is None or sorted(saved) != sorted(
            tuple(w.shape) for w in biased.weights
        ):
            raise mismatch
        _load_strictly(biased, path, mismatch)
        copy_folding_conv_biases(biased, features)
        return
    _load_strictly(features, path, mismatch)


def _load_strictly(features: keras.Model, path: str, mismatch) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            features.load_weights(path)
        except (ValueError, KeyError) as e:
            raise mismatch from e
    skipped = [
        w
        for w in caught
        if "could not be loaded" in str(w.message)
        or "Skipping" in str(w.message)
    ]
    if skipped:
        raise mismatch
