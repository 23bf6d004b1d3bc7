"""Attentive ResNets: placements, ImageNet weight import, attention maps."""

import keras
import numpy as np
import pytest

from matl_keras.errors import ConfigError
from matl_keras.layers.non_local_block import NonLocalBlock
from matl_keras.models.resnet import attention_maps
from matl_keras.models.resnet import attention_placement
from matl_keras.models.resnet.imagenet_weights import load_imagenet_weights
from matl_keras.models.resnet.resnet_backbone import ResNetBackbone
from matl_keras.models.resnet.resnet_image_classifier import (
    build_image_classifier,
)

EXPECTED = {
    # depth: (1 ATTN, 5 ATTNs)
    18: (
        ["conv3_block2"],
        [
            "conv3_block1",
            "conv3_block2",
            "conv4_block1",
            "conv4_block2",
            "conv5_block2",
        ],
    ),
    34: (
        ["conv3_block4"],
        [
            "conv3_block2",
            "conv3_block4",
            "conv4_block4",
            "conv4_block6",
            "conv5_block3",
        ],
    ),
    50: (
        ["conv3_block4"],
        [
            "conv3_block2",
            "conv3_block4",
            "conv4_block4",
            "conv4_block6",
            "conv5_block3",
        ],
    ),
    101: (
        ["conv3_block4"],
        [
            "conv3_block2",
            "conv3_block4",
            "conv4_block21",
            "conv4_block23",
            "conv5_block3",
        ],
    ),
}


def _blocks(backbone):
    return [l.name for l in backbone.layers if isinstance(l, NonLocalBlock)]


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_variants_put_blocks_in_the_documented_places(depth):
    width = 1.0 if depth >= 50 else 0.25
    one, five = EXPECTED[depth]
    assert _blocks(ResNetBackbone(depth, width, 32, attention="none")) == []
    got = _blocks(ResNetBackbone(depth, width, 32, attention="1"))
    assert got == [f"{b}_nonlocal" for b in one]
    backbone = ResNetBackbone(depth, width, 32, attention="5")
    assert _blocks(backbone) == [f"{b}_nonlocal" for b in five]
    # Each block sits right after its residual block's output.
    for name in five:
        block = backbone.get_layer(f"{name}_nonlocal")
        assert (
            block._inbound_nodes[0].parent_nodes[0].operation.name
            == f"{name}_out"
        )


def test_explicit_placement_any_depth():
    backbone = ResNetBackbone(
        18, 0.25, 32, attention={"res2": [1], "conv4": [-1], "conv5": [1, 2]}
    )
    assert _blocks(backbone) == [
        "conv2_block1_nonlocal",
        "conv4_block2_nonlocal",
        "conv5_block1_nonlocal",
        "conv5_block2_nonlocal",
    ]


@pytest.mark.parametrize(
    "attention, message",
    [
        ("7", "must be one of"),
        ({"conv6": [1]}, "unknown stage 'conv6'"),
        ({"conv3": [5]}, "block 5 of conv3, which has blocks 1..2"),
        ({"conv3": [0]}, "block 0"),
    ],
)
def test_bad_placements_say_why(attention, message):
    with pytest.raises(ValueError, match=message):
        ResNetBackbone(18, 0.25, 32, attention=attention)


def test_resnet10_has_one_block_per_stage_and_refuses_five_attns():
    """ResNet-10 (one basic block per stage): the 1-ATTN preset and any
    explicit placement fit it; the 5-ATTN preset, which needs two blocks
    in res3 and res4, is refused with what to use instead."""
    plain = ResNetBackbone(10, 0.25, 32)
    blocks = sorted(
        l.name[: -len("_out")]
        for l in plain.layers
        if l.name.endswith("_out") and "_block" in l.name
    )
    assert blocks == [f"conv{s}_block1" for s in (2, 3, 4, 5)]
    assert plain.output.shape == (None, 1, 1, 128)
    assert _blocks(ResNetBackbone(10, 0.25, 32, attention="1")) == [
        "conv3_block1_nonlocal"
    ]
    with pytest.raises(ValueError, match=r"conv3, which has 1 residual"):
        ResNetBackbone(10, 0.25, 32, attention="5")


def test_placement_presets_resolve():
    blocks = {"conv2": 3, "conv3": 4, "conv4": 6, "conv5": 3}
    assert attention_placement.resolve("5", blocks) == {
        "conv3": (2, 4),
        "conv4": (4, 6),
        "conv5": (3,),
    }
    assert (
        attention_placement.count(attention_placement.resolve("1", blocks)) == 1
    )


@pytest.fixture(scope="module")
def imagenet_like_r50(tmp_path_factory):
    """A keras.applications ResNet-50 with random, non-trivial weights
    (including BN statistics), saved as Keras 3 `.weights.h5` and in the
    Keras 2 weights-only `.h5` layout of the files keras.applications
    downloads (resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5)."""
    rng = np.random.default_rng(1)
    model = keras.applications.ResNet50(weights=None, include_top=False)
    weights = []
    for w in model.get_weights():
        noise = rng.normal(0, 0.02, w.shape).astype(w.dtype)
        weights.append(
            np.abs(w + noise) + 0.5
            if w.ndim == 1 and np.all(w >= 0)
            else w + noise
        )
    model.set_weights(weights)
    folder = tmp_path_factory.mktemp("weights")
    new_format = str(folder / "resnet50_notop.weights.h5")
    model.save_weights(new_format)
    legacy = str(
        folder / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    )
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(legacy, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    return model, new_format, legacy


@pytest.mark.parametrize("which", ["new", "legacy"])
def test_imagenet_weights_give_keras_applications_features(
    imagenet_like_r50, which
):
    reference, new_format, legacy = imagenet_like_r50
    path = new_format if which == "new" else legacy
    images = (
        np.random.default_rng(2).uniform(0, 1, (2, 64, 64, 3)).astype("float32")
    )
    expected = reference(
        keras.applications.resnet.preprocess_input(images * 255.0)
    )
    for attention in ("none", "1", "5"):
        backbone = ResNetBackbone(50, image_size=64, attention=attention)
        report = load_imagenet_weights(backbone, path)
        assert len(report.loaded) == len(
            [l for l in reference.layers if l.weights]
        )
        assert report.kept_initial == [
            f"{b}_nonlocal"
            for b in (
                []
                if attention == "none"
                else EXPECTED[50][0 if attention == "1" else 1]
            )
        ]
        # Features reach thousands here; the fused BatchNorm kernel rounds
        # differently from keras.applications' unfused one (2e-6 of the
        # largest feature). A wrong weight mapping is off by O(1).
        np.testing.assert_allclose(
            backbone(images),
            expected,
            rtol=1e-4,
            atol=1e-5 * float(np.abs(expected).max()),
        )


def test_imagenet_weights_from_a_model_and_into_a_classifier(imagenet_like_r50):
    reference, _, _ = imagenet_like_r50
    backbone = ResNetBackbone(50, image_size=64, attention="5")
    classifier = build_image_classifier(backbone, 2)
    report = load_imagenet_weights(classifier, reference)
    assert "predictions" in report.kept_initial
    np.testing.assert_array_equal(
        backbone.get_layer("conv1_conv").kernel,
        reference.get_layer("conv1_conv").kernel,
    )


def test_weights_that_do_not_fit_are_refused(imagenet_like_r50, tmp_path):
    reference, path, _ = imagenet_like_r50
    narrow = ResNetBackbone(50, width_multiplier=0.5, image_size=64)
    before = [np.asarray(w).copy() for w in narrow.weights]
    with pytest.raises(ConfigError, match="conv1_conv.*width_multiplier"):
        load_imagenet_weights(narrow, path)
    for a, b in zip(before, narrow.weights):
        np.testing.assert_array_equal(a, b)  # nothing half-loaded
    with pytest.raises(ConfigError, match="depths"):
        load_imagenet_weights(ResNetBackbone(18, image_size=64), path)
    with pytest.raises(ConfigError, match="not found"):
        load_imagenet_weights(
            ResNetBackbone(50, image_size=64), str(tmp_path / "x.h5")
        )
    with pytest.raises(ConfigError, match="no layers"):
        load_imagenet_weights(
            ResNetBackbone(50, image_size=64),
            ResNetBackbone(101, image_size=64),
        )


def test_keras_hub_presets_are_refused_with_the_reason(tmp_path):
    preset = tmp_path / "resnet_50_imagenet"
    preset.mkdir()
    (preset / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="v1.5"):
        load_imagenet_weights(ResNetBackbone(50, image_size=64), str(preset))
    hub_like = type(
        "ResNetBackbone",
        (),
        {"__module__": "keras_hub.src.models.resnet", "name": "hub"},
    )
    with pytest.raises(ConfigError, match="keras-hub"):
        load_imagenet_weights(ResNetBackbone(50, image_size=64), hub_like())


def test_saved_model_shows_blocks_and_reloads_identically(tmp_path):
    backbone = ResNetBackbone(18, 0.25, 64, attention="5")
    model = build_image_classifier(backbone, 2)
    for layer in attention_maps.nonlocal_blocks(model):
        layer.output_bn.gamma.assign(
            np.full(layer.output_bn.gamma.shape, 0.5, "float32")
        )
    x = np.random.default_rng(3).uniform(0, 1, (2, 64, 64, 3)).astype("float32")
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert (
        len([l for l in loaded.layers if type(l).__name__ == "NonLocalBlock"])
        == 5
    )
    np.testing.assert_allclose(loaded(x), model(x), rtol=1e-5, atol=1e-6)


def test_attention_maps_without_rebuilding():
    backbone = ResNetBackbone(18, 0.25, 64, attention="5")
    model = build_image_classifier(backbone, 2)
    x = np.random.default_rng(4).uniform(0, 1, (2, 64, 64, 3)).astype("float32")
    maps = attention_maps.attention_maps(model, x)
    assert list(maps) == [f"{b}_nonlocal" for b in EXPECTED[18][1]]
    assert maps["conv5_block2_nonlocal"].shape == (2, 4, 4)  # 2x2 grid
    assert maps["conv3_block1_nonlocal"].shape == (2, 64, 64)  # 8x8 grid
    figure = attention_maps.average_attention_map(model, x)
    assert figure.shape == (2, 64, 64)
    assert figure.min() == 0.0 and figure.max() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no NonLocalBlock"):
        attention_maps.attention_model(ResNetBackbone(18, 0.25, 64))


def test_one_training_step_under_mirrored_strategy():
    from matl_keras.training import strategies

    strategy = strategies.get_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        model = build_image_classifier(
            ResNetBackbone(18, 0.25, 64, attention="5"), 2
        )
        model.compile(
            keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy"
        )
    block = model.get_layer("conv5_block2_nonlocal")
    before = np.asarray(block.output_bn.gamma).copy()
    x = np.random.default_rng(5).uniform(0, 1, (4, 64, 64, 3)).astype("float32")
    y = np.array([0, 1, 0, 1])
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert not np.array_equal(before, np.asarray(block.output_bn.gamma))
