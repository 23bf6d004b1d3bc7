"""SSTL-M on unlabelled images with the kNN monitor on another, labelled
dataset (`pretrain.monitor_dataset`)."""

import json

import numpy as np
import pytest
from PIL import Image

from matl_keras import registry as registry_lib
from matl_keras.errors import ConfigError
from tests.matl_keras.training.ssl_testing import pretrain as _pretrain


def _unlabelled(root, n=16):
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"patient{i % 3}"  # nested, as users keep them
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, (40, 40), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"slice{i}.png")
    return registry_lib.default_registry().create(
        "datasets", "image_folder", root=str(root), labelled=False
    )


def test_unlabelled_pretraining_is_monitored_on_a_labelled_dataset(tmp_path):
    labelled = registry_lib.default_registry().create(
        "datasets",
        "synthetic_ct",
        image_size=40,
        num_train=16,
        num_val=8,
        num_test=0,
    )
    results = _pretrain(
        tmp_path / "run",
        dataset=_unlabelled(tmp_path / "ct"),
        epochs=1,
        monitor_dataset=labelled,
    )
    knn = results["knn_accuracy"]
    assert knn["dataset"] == labelled.name
    assert (knn["bank"], knn["queries"]) == ("train", "val")
    assert 0.0 <= knn["before"] <= 1.0 and 0.0 <= knn["after"] <= 1.0
    assert 0.0 <= results["linear_probe"]["auc"] <= 1.0
    record = json.load(open(tmp_path / "run" / "run.json"))
    assert record["dataset"] != labelled.name
    assert record["monitor_dataset"]["name"] == labelled.name
    assert record["monitor_dataset"]["same_as_pretraining"] is False


def test_monitor_dataset_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="Received: monitor_dataset=42"):
        _pretrain(tmp_path / "run", monitor_dataset=42)
