"""Plugin discovery, isolation, errors and gin configurability."""

import pytest

from matl_keras import config
from matl_keras import registry as registry_lib
from matl_keras.data.dataset import Dataset
from matl_keras.errors import PluginError
from matl_keras.evaluation.evaluator import Evaluator
from tests.matl_keras.registry_testing import FakeEntryPoint
from tests.matl_keras.registry_testing import make_registry


class GoodDataset(Dataset):
    class_names = ("a", "b")

    def __init__(self, size: int = 3):
        self.size = size

    def splits(self):
        return ("train",)

    def examples(self, split):
        raise NotImplementedError


class OldDataset(GoodDataset):
    api_version = 99


class NotAPlugin:
    pass


@pytest.fixture
def fake():
    eps = {
        "matl_keras.datasets": [
            FakeEntryPoint("good", "m:Good", obj=GoodDataset),
            FakeEntryPoint(
                "broken",
                "broken_mod:X",
                error=ModuleNotFoundError("No module named 'broken_mod'"),
                dist=("broken-pkg", "0.3"),
            ),
            FakeEntryPoint("wrong_base", "m:NotAPlugin", obj=NotAPlugin),
            FakeEntryPoint("old", "m:OldDataset", obj=OldDataset),
            FakeEntryPoint(
                "twice", "a:X", obj=GoodDataset, dist=("pkg-a", "1")
            ),
            FakeEntryPoint(
                "twice", "b:X", obj=GoodDataset, dist=("pkg-b", "2")
            ),
        ],
    }
    return make_registry(eps), eps


def test_builtins_are_discovered_and_load():
    registry = registry_lib.Registry()
    assert {
        "synthetic_ct",
        "synthetic_cxr",
        "synthetic_natural",
        "image_folder",
        "covid_ct",
        "covidx",
        "imagenet",
    } <= set(registry.names("datasets"))
    assert "metrics" in registry.names("evaluators")
    for group in registry_lib.GROUPS:
        for name, info in registry.load_all(group).items():
            assert info.status == "ok", (name, info.error)
            assert info.dist == "matl-keras"


def test_discovery_is_lazy(fake):
    registry, eps = fake
    assert "good" in registry.names("datasets")
    assert all(ep.loads == 0 for ep in eps["matl_keras.datasets"])
    assert registry.load("datasets", "good") is GoodDataset


def test_broken_plugins_are_isolated(fake):
    registry, _ = fake
    infos = registry.load_all("datasets")
    assert infos["good"].status == "ok"
    assert infos["broken"].status == "error"
    assert infos["broken"].dist == "broken-pkg"
    assert infos["broken"].version == "0.3"
    assert "broken_mod" in infos["broken"].error
    assert infos["wrong_base"].status == "error"
    assert "not a subclass" in infos["wrong_base"].error
    assert infos["old"].status == "error"
    assert "api_version=99" in infos["old"].error
    # The good one still works after the others failed.
    assert registry.create("datasets", "good").size == 3


def test_asking_for_a_broken_plugin_says_what_and_how_to_fix(fake):
    registry, _ = fake
    with pytest.raises(PluginError) as e:
        registry.load("datasets", "broken")
    message = str(e.value)
    assert '"broken"' in message and "broken-pkg" in message
    assert "No module named 'broken_mod'" in message
    assert "pip uninstall broken-pkg" in message


def test_unknown_name_lists_available(fake):
    registry, _ = fake
    with pytest.raises(PluginError, match="not installed. Available: .*good"):
        registry.load("datasets", "nope")


def test_duplicate_name_is_refused_naming_both(fake):
    registry, _ = fake
    with pytest.raises(PluginError) as e:
        registry.load("datasets", "twice")
    assert "pkg-a" in str(e.value) and "pkg-b" in str(e.value)


def test_same_dist_seen_twice_is_not_a_duplicate():
    ep = FakeEntryPoint("one", "m:Good", obj=GoodDataset)
    registry = make_registry({"matl_keras.datasets": [ep, ep]})
    assert registry.load("datasets", "one") is GoodDataset


def test_evaluator_group_checks_its_own_base():
    eps = {
        "matl_keras.evaluators": [
            FakeEntryPoint("ds_as_eval", "m:Good", obj=GoodDataset)
        ]
    }
    info = make_registry(eps).load_all("evaluators")["ds_as_eval"]
    assert info.status == "error"
    assert Evaluator.__name__ in info.error


def test_gin_binding_reaches_a_plugin_parameter(tmp_path):
    gin_file = tmp_path / "x.gin"
    gin_file.write_text("synthetic_ct.num_train = 7\n")
    registry = registry_lib.Registry(on_load=config.register_plugin)
    config.parse([str(gin_file)], ["synthetic_ct.seed = 5"], registry)
    dataset = registry.create("datasets", "synthetic_ct")
    assert dataset.sizes["train"] == 7
    assert dataset.seed == 5


def test_gin_names_a_broken_plugin_instead_of_unknown(tmp_path, fake):
    registry, _ = fake
    registry._on_load = config.register_plugin
    from matl_keras.errors import ConfigError

    with pytest.raises(ConfigError, match="broken-pkg"):
        config.parse([], ["X = @broken()"], registry)


def test_module_has_no_plugin_imports():
    # The core never imports the built-in plugins.
    import pathlib
    import re

    core = pathlib.Path(registry_lib.__file__).parent
    pattern = re.compile(r"^\s*(from|import)\s+matl_keras_plugins", re.M)
    for path in core.rglob("*.py"):
        assert not pattern.search(path.read_text()), path


def test_group_key_is_checked():
    with pytest.raises(ValueError, match="group"):
        registry_lib.Registry().names("models")
