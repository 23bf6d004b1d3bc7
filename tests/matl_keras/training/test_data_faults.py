"""Data faults reach the user as one clear message, before anything trains:
every bad file of every split the stage reads (with the binding that skips
them in that stage), a plugin breaking the examples() contract, one class."""

import os

import numpy as np
import pytest
from matl_keras_plugins.datasets.image_folder import ImageFolder
from PIL import Image

import gin
from matl_keras import config
from matl_keras.data.dataset import Dataset
from matl_keras.errors import ConfigError
from matl_keras.errors import DataError
from matl_keras.errors import PluginError
from matl_keras.registry import Registry
from matl_keras.training import self_supervised
from matl_keras.training import stage_config
from matl_keras.training import supervised
from tests.conftest import REPO
from tests.matl_keras.training.stage_testing import run_train


def _folder(root, classes=("a", "b"), bad=True):
    """root/<split>/<class>/: 2 valid PNGs per class and split, plus one
    broken file in each split."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(2):
                pixels = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    if bad:
        (root / "train" / classes[0] / "empty.png").write_bytes(b"")
        (root / "val" / classes[-1] / "page.jpg").write_bytes(b"<html></html>")
    # Folder names that do not tell the positive class: name it.
    positive = classes[-1] if len(classes) == 2 else None
    return ImageFolder(str(root), positive_class=positive)


def _nothing_may_be_built(monkeypatch):
    def built(*args, **kwargs):
        raise AssertionError("a model was built before the data check")

    monkeypatch.setattr(supervised, "build_image_classifier", built)
    monkeypatch.setattr(self_supervised, "build_method", built)


def test_supervised_stage_names_bad_files_of_all_splits_first(
    tmp_path, monkeypatch
):
    dataset = _folder(tmp_path / "data")
    _nothing_may_be_built(monkeypatch)
    config.register_core()
    gin.parse_config("train.on_bad_image = 'refuse'")  # as stages/common.gin
    with gin.config_scope("finetune"):
        with pytest.raises(DataError) as e:
            run_train(tmp_path / "run", dataset=dataset)
    message = str(e.value)
    assert message.startswith(
        "ImageFolder: 2 image files cannot be used (train 1 of 5, val 1 of 5):"
    )
    assert f"  train: {tmp_path}/data/train/a/empty.png: empty file" in message
    assert f"  val: {tmp_path}/data/val/b/page.jpg: not an image: an HTML" in (
        message
    )
    assert message.endswith("skip them with gin: train.on_bad_image = 'skip'")


def test_sstl_m_stage_names_its_own_binding(tmp_path, monkeypatch):
    dataset = _folder(tmp_path / "data")
    _nothing_may_be_built(monkeypatch)
    config.register_core()
    gin.parse_config(
        "train.on_bad_image = 'refuse'\n"
        "sstl_m/pretrain.on_bad_image = 'refuse'"  # as stages/sstl_m.gin
    )
    with gin.config_scope("sstl_m"):
        with pytest.raises(DataError) as e:
            self_supervised.pretrain(str(tmp_path / "run"), dataset=dataset)
    message = str(e.value)
    # The kNN monitor reads val: its bad file is named too.
    assert "(train 1 of 5, val 1 of 5)" in message
    assert message.endswith(
        "skip them with gin: sstl_m/pretrain.on_bad_image = 'skip'"
    )


def test_the_binding_in_force_follows_the_job_files():
    gin.clear_config()
    config.parse(
        [os.path.join(REPO, "gin/pipeline.gin")],
        ["finetune/train.on_bad_image = 'skip'"],
        Registry(on_load=config.register_plugin),
    )
    expected = {
        "stl_n": ("train", "train.on_bad_image"),
        "finetune": ("train", "finetune/train.on_bad_image"),
        "sstl_m": ("pretrain", "sstl_m/pretrain.on_bad_image"),
    }
    for scope, (name, binding) in expected.items():
        with gin.config_scope(scope):
            assert (
                stage_config.binding_in_force(name, "on_bad_image") == binding
            )


class Listy(Dataset):
    """Breaks the contract: examples() returns a list of paths."""

    class_names = ("a", "b")

    def splits(self):
        return ("train", "val")

    def examples(self, split):
        return ["x.png", "y.png"]


def test_examples_of_the_wrong_type_is_one_line(tmp_path):
    with pytest.raises(PluginError) as e:
        run_train(tmp_path, dataset=Listy())
    assert str(e.value) == (
        "dataset Listy: examples('train') must return FileExamples or "
        "ArrayExamples (matl_keras.data.dataset). Received: list"
    )


def test_a_one_class_folder_is_one_line(tmp_path):
    dataset = _folder(tmp_path / "data", classes=("cats",), bad=False)
    with pytest.raises(ConfigError) as e:
        run_train(tmp_path / "run", dataset=dataset)
    assert str(e.value) == (
        "dataset ImageFolder has 1 class(es) ['cats']; a classifier needs "
        "at least 2 (image_folder: one sub-folder per class, "
        "root/<class>/<image>)"
    )
