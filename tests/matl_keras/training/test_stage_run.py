"""`StageRun`'s shared steps on their own: the split options, the compile
every stage does, `run.json` written before fitting, the backbone file."""

import json
import os

import keras
import numpy as np
import tensorflow as tf

from matl_keras import runs
from matl_keras.training.stage_run import StageRun
from tests.matl_keras.training.stage_testing import Bright


def _begin(workdir):
    return StageRun.begin(
        str(workdir),
        None,
        strategy="default",
        batch_size=4,
        epochs=1,
        seed=3,
        deterministic="auto",
        backup_every_steps=None,
    )


def test_the_shared_steps_of_a_stage(tmp_path):
    run = _begin(tmp_path)
    assert not run.complete
    assert run.split_options(32, 0.875, "refuse", "auto") == dict(
        image_size=32,
        batch_size=4,
        crop_fraction=0.875,
        on_bad_image="refuse",
        cache=run.cache("auto"),
        seed=3,
    )
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    asked = {}

    def optimizer(**kwargs):
        asked.update(kwargs)
        return keras.optimizers.SGD(0.1)

    with run.strategy.scope():
        run.compile(model, optimizer, 2, False, False, loss="mse")
    # The optimizer's schedule gets the stage's batch size and length.
    assert asked == {"batch_size": 4, "epochs": 1, "steps_per_epoch": 2}
    assert model.loss == "mse" and model.jit_compile is False

    run.record = run.new_record(Bright(), own_field=1)
    data = tf.data.Dataset.from_tensor_slices(
        (np.ones((8, 2), np.float32), np.ones((8, 1), np.float32))
    ).batch(4)
    run.fit(model, data, 2)
    record = runs.read_json(os.path.join(str(tmp_path), runs.RUN_FILE))
    # Written before fitting, with what Keras compiled.
    assert record["status"] == "running" and record["own_field"] == 1
    assert record["jit_compile"] is False and record["seed"] == 3

    run.save_backbone(model)
    assert os.path.getsize(tmp_path / runs.BACKBONE_FILE) > 0
    run.finish({"val": {"loss": 0.5}}, "done")
    assert json.load(open(tmp_path / runs.METRICS_FILE)) == {
        "val": {"loss": 0.5}
    }
    assert runs.read_json(str(tmp_path / runs.RUN_FILE))["status"] == "complete"
    assert _begin(tmp_path).complete
