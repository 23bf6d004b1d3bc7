"""Gin files: every file parses; job macros reach the model."""

import glob
import os

import pytest

import gin
from matl_keras import config
from matl_keras import registry as registry_lib
from matl_keras.layers.non_local_block import NonLocalBlock
from matl_keras.training import stage_config
from tests.conftest import REPO

JOBS = [
    "gin/finetune.gin",
    "gin/stl_n.gin",
    "gin/stl_m.gin",
    "gin/sstl_m.gin",
    "gin/pipeline.gin",
]


def _parse(files, bindings=()):
    registry = registry_lib.Registry(on_load=config.register_plugin)
    config.parse(
        [os.path.join(REPO, f) for f in files], list(bindings), registry
    )


@pytest.mark.parametrize(
    "path",
    sorted(
        os.path.relpath(p, REPO)
        for p in glob.glob(
            os.path.join(REPO, "gin", "**", "*.gin"), recursive=True
        )
    ),
)
def test_every_gin_file_parses(path):
    files = [path] if path in JOBS else ["gin/pipeline.gin", path]
    _parse(files)


@pytest.mark.parametrize("job", JOBS)
@pytest.mark.parametrize("attention, count", [("none", 0), ("1", 1), ("5", 5)])
def test_attention_macro_switches_the_variant(job, attention, count):
    _parse([job, "gin/models/tiny.gin"], [f"ATTENTION = '{attention}'"])
    backbone = config.configured("resnet_backbone")(image_size=32)
    blocks = [l for l in backbone.layers if isinstance(l, NonLocalBlock)]
    assert len(blocks) == count


def test_explicit_placement_from_gin():
    _parse(
        ["gin/finetune.gin", "gin/models/tiny.gin"],
        ["ATTENTION = {'conv4': [1, 2]}"],
    )
    backbone = config.configured("resnet_backbone")(image_size=32)
    assert backbone.attention_placement == {"conv4": (1, 2)}


@pytest.mark.parametrize("job", JOBS)
def test_job_macros_reach_their_targets(job):
    _parse(
        [job], ["IMAGE_SIZE = 40", "BATCH_SIZE = 4", "SEED = 3", "DEPTH = 34"]
    )
    assert gin.query_parameter("%IMAGE_SIZE") == 40
    assert gin.query_parameter("%DEPTH") == 34
    backbone = config.configured("resnet_backbone")(image_size=32)
    assert backbone.depth == 34


def _stage_texts(bindings=()):
    _parse(["gin/pipeline.gin"], bindings)
    return {
        s: stage_config.stage_config_str(s)
        for s in ("stl_n", "stl_m", "finetune")
    }


def test_stage_config_holds_what_reaches_the_stage():
    texts = _stage_texts()
    assert "stl_n/train.dataset = %NATURAL_DATA" in texts["stl_n"]
    assert "NATURAL_DATA = @synthetic_natural()" in texts["stl_n"]
    assert "stl_m/" not in texts["stl_n"] and "finetune/" not in texts["stl_n"]
    assert "finetune/train.epochs = %FINETUNE_EPOCHS" in texts["finetune"]
    # The embedded data's few-labels schedule (datasets/synthetic_ct.gin).
    assert "FINETUNE_EPOCHS = 30" in texts["finetune"]
    assert "train.image_size = %IMAGE_SIZE" in texts["finetune"]  # unscoped
    for text in texts.values():
        assert "pipeline.stages" not in text and "STAGES" not in text


def test_stage_config_changes_only_where_a_binding_reaches():
    base = _stage_texts()
    gin.clear_config()
    later = _stage_texts(
        ["FINETUNE_EPOCHS = 3", "STAGES = ['stl_m', 'finetune']"]
    )
    assert later["stl_n"] == base["stl_n"] and later["stl_m"] == base["stl_m"]
    assert later["finetune"] != base["finetune"]
    gin.clear_config()
    shared = _stage_texts(["IMAGE_SIZE = 64"])
    assert all(shared[s] != base[s] for s in base)


@pytest.mark.parametrize(
    "binding, expected",
    [
        ('FINETUNE_EPOCHS = "one"', "expected an integer >= 0"),
        ("IMAGE_SIZE = 32.5", "expected an integer >= 1"),
        ("DEPTH = 19", "expected one of [10, 18, 34, 50, 101]"),
        ("ATTENTION = '6'", "expected one of ['1', '5', 'none']"),
        (
            "DEPTH = 10\nATTENTION = '5'",
            "ATTENTION = '5' with DEPTH = 10 (bound in",
        ),
        (
            "ATTENTION = {'conv6': [1]}",
            "DEPTH = 18 (bound in --gin_param=\"ATTENTION = {'conv6': [1]}\"):"
            " `attention` names an unknown stage 'conv6'",
        ),
        ("BATCH_SIZE = 0", "expected an integer >= 1"),
        ("SEED = -1", "expected an integer >= 0"),
        ("WIDTH = 0", "expected a number > 0"),
        ("IMAGE_SIZ = 32", "Did you mean: IMAGE_SIZE?"),
    ],
)
def test_bad_macro_values_are_one_line_errors(binding, expected):
    import gin
    from matl_keras import config as config_lib
    from matl_keras.errors import ConfigError
    from matl_keras.registry import Registry

    gin.clear_config()
    with pytest.raises(ConfigError) as info:
        config_lib.parse(
            [os.path.join(REPO, "gin/finetune.gin")],
            [binding],
            Registry(on_load=config_lib.register_plugin),
        )
    assert expected in str(info.value)
    assert "\n" not in str(info.value)
    gin.clear_config()


@pytest.mark.parametrize(
    "binding, expected",
    [
        ("train.epochs = [1,", "EOF in multi-line statement (an unclosed"),
        ("train.epochs = '3", "Unable to parse value"),
        ("train.epochs 3", "expected ':' or '='"),
        ("train.dropout = 0.5)", "Expected newline"),
    ],
)
def test_gin_param_syntax_error_names_that_param(binding, expected):
    """Gin parses every --gin_param as one text; the error must still say
    which one is wrong, on one line."""
    import gin
    from matl_keras import config as config_lib
    from matl_keras.errors import ConfigError
    from matl_keras.registry import Registry

    gin.clear_config()
    with pytest.raises(ConfigError) as info:
        config_lib.parse(
            [os.path.join(REPO, "gin/finetune.gin")],
            ["IMAGE_SIZE = 32", binding, "BATCH_SIZE = 8"],
            Registry(on_load=config_lib.register_plugin),
        )
    message = str(info.value)
    assert message.startswith(f"gin: syntax error in --gin_param={binding!r}: ")
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "files, region_tau",
    [
        (["gin/sstl_m.gin"], 0.2),
        (["gin/pipeline.gin", "gin/scale/paper.gin"], 0.07),
    ],
)
def test_each_ssl_method_gets_its_papers_temperature(files, region_tau):
    """At paper scale the paper's tau 0.07 for its region-aware method
    (Eq. 2, section 6.2); at CPU scale 0.2, which measured better on
    COVID19-CT val. MoCo v2's 0.2 for MoCo and SimCLR's 0.1 for SimCLR
    ("the same hyperparameters as used in their papers")."""
    _parse(files)
    assert gin.query_parameter("moco.temperature") == 0.2
    assert gin.query_parameter("simclr.temperature") == 0.1
    region = gin.query_parameter("region_aware.temperature")
    assert str(region) == "%SSL_TEMPERATURE"
    assert region.scoped_configurable_fn() == region_tau


@pytest.mark.parametrize(
    "files, mode",
    [
        (["gin/sstl_m.gin"], "decoupled"),
        (["gin/pipeline.gin", "gin/scale/paper.gin"], "l2"),
    ],
)
def test_paper_scale_takes_the_papers_coupled_weight_decay(files, mode):
    """The paper's "weight decay 1e-4" is SGD's L2 term (PyTorch, TF1);
    the CPU scale keeps Keras' decoupled decay (no better for MoCo on
    COVID19-CT val)."""
    from matl_keras.training.sgd import SGD

    _parse(files)
    with gin.config_scope("sstl_m"):
        optimizer = config.configured("sgd")(
            batch_size=32, epochs=2, steps_per_epoch=3
        )
    assert isinstance(optimizer, SGD)
    if mode == "l2":
        assert (optimizer.l2, optimizer.weight_decay) == (1e-4, None)
    else:
        assert (optimizer.l2, optimizer.weight_decay) == (None, 1e-4)
