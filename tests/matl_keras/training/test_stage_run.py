"""`StageRun`'s shared steps on their own: the split options, the compile
every stage does, `run.json` written before fitting, the backbone file."""

import json
import os

import keras
import numpy as np
import tensorflow as tf

from matl_keras import runs
from matl_keras.training.stage_run import StageRun
from matl_keras.training.stage_run import build_before_fit
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


def _traces_of_fit(prebuild):
    """How often `fit` runs the Python of `train_step` (once per trace) for
    a compiled model with a metric, with or without `build_before_fit`."""
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    traces = []
    original = model.train_step

    def counted(data):
        traces.append(1)
        return original(data)

    model.train_step = counted
    data = tf.data.Dataset.from_tensor_slices(
        (np.ones((8, 2), np.float32), np.ones((8,), np.int32))
    ).batch(4)
    if prebuild:
        build_before_fit(model, data, tf.distribute.get_strategy())
    model.fit(data, epochs=1, verbose=0, shuffle=False)
    return len(traces)


def test_the_train_step_is_traced_once():
    # Keras builds the optimizer and the compiled metric inside the first
    # trace when no strategy scope is active; a tf.function that creates
    # variables is traced twice (the case this guards against).
    assert _traces_of_fit(prebuild=False) == 2
    assert _traces_of_fit(prebuild=True) == 1


def test_an_ssl_model_gets_no_optimizer_slots_for_its_key_encoder():
    from matl_keras_plugins.ssl_methods.moco import MoCo

    from tests.matl_keras.training import ssl_testing

    model = ssl_testing.build(MoCo)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    data = ssl_testing.data(MoCo, n=8)
    build_before_fit(model, data, tf.distribute.get_strategy())
    # SGD with momentum: iterations, learning rate, then one slot per
    # optimized variable.
    slots = model.optimizer.variables[2:]
    assert len(slots) == len(model.optimized_variables) > 0
    assert len(model.optimized_variables) < len(model.trainable_variables)
