"""`import matl_keras` is enough to load a saved model (keras-hub's
convention), in a fresh process that imports nothing else of ours."""

import os
import subprocess
import sys

import keras

from matl_keras.layers.input_normalization import InputNormalization
from matl_keras.models.resnet.resnet_backbone import ResNetBackbone
from matl_keras.models.resnet.resnet_image_classifier import (
    build_image_classifier,
)

LOAD = """
import sys
import matl_keras
import keras

names = set()
for path in sys.argv[1:]:
    model = keras.saving.load_model(path, safe_mode=True)
    names |= {type(l).__name__ for l in model.layers}
    names.add(type(model).__name__)
print(sorted(n for n in names if n in {
    "InputNormalization", "NonLocalBlock", "FusedBatchNormalization",
    "ResNetBackbone"}))
"""


def test_load_model_after_import_matl_keras_only(tmp_path):
    backbone = ResNetBackbone(10, 0.25, 32, attention="1")
    classifier = build_image_classifier(backbone, num_classes=2)
    assert any(isinstance(l, InputNormalization) for l in classifier.layers)
    paths = [
        str(tmp_path / "classifier.keras"),
        str(tmp_path / "backbone.keras"),
    ]
    classifier.save(paths[0])
    backbone.save(paths[1])
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-c", LOAD, *paths],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split("\n")[-2] == (
        "['FusedBatchNormalization', 'InputNormalization', 'NonLocalBlock', "
        "'ResNetBackbone']"
    ), result.stdout
    assert keras.saving.get_registered_name(ResNetBackbone) == (
        "matl_keras>ResNetBackbone"
    )
