"""Optional MLflow tracking: parameters, per-epoch metrics and artefacts
of a stage in a local store; a clear error without MLflow."""

import os
import sys

import pytest

import gin
from matl_keras import config
from matl_keras.errors import ConfigError
from matl_keras.training import optimizers
from matl_keras.training import stage_config
from tests.matl_keras.training.stage_testing import Bright
from tests.matl_keras.training.stage_testing import Count
from tests.matl_keras.training.stage_testing import tiny_backbone


def _bind(*bindings):
    gin.clear_config()
    config.register_core()
    gin.parse_config(list(bindings))


def _train(workdir):
    """The stage called through gin, as a job calls it (so its operative
    config is recorded)."""
    return config.configured("train")(
        str(workdir),
        dataset=Bright(),
        backbone=tiny_backbone,
        image_size=32,
        batch_size=8,
        epochs=2,
        evaluators=[Count()],
        transfer_evaluators=(),
        optimizer=lambda **kw: optimizers.sgd(learning_rate=0.5, **kw),
    )


def test_stage_is_logged_to_a_local_mlflow_store(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    # MLflow 3 keeps the file store behind this switch (a local folder is
    # what a test without a server can use).
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    _bind(
        "mlflow_tracking.enabled = True",
        f"mlflow_tracking.tracking_uri = '{uri}'",
        "mlflow_tracking.experiment = 'tests'",
        "train.keep = 'last'",
    )
    _train(tmp_path / "run")

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tests")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["train.keep"] == "'last'"  # config.gin, at the start
    assert params["train.crop_fraction"] == "0.875"  # operative, at the end
    assert not any(k.startswith("mlflow_tracking") for k in params)
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [m.step for m in history] == [1, 2]
    assert {"loss", "accuracy", "val_auc"} <= set(run.data.metrics)
    artefacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {
        "metrics.json",
        "run.json",
        "config.gin",
        "operative_config.gin",
        "history.csv",
    } <= artefacts
    assert os.path.isfile(tmp_path / "run" / "mlflow.json")


def test_turned_on_without_mlflow_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` fails
    _bind("mlflow_tracking.enabled = True")
    with pytest.raises(ConfigError) as error:
        _train(tmp_path / "run")
    message = str(error.value).split("\n  In call to configurable")[0]
    assert "\n" not in message
    assert "pip install 'matl-keras[mlflow]'" in message
    assert "Received: mlflow_tracking.enabled=True" in message
    assert not os.path.exists(tmp_path / "run" / "history.csv")  # no training


def test_tracking_is_not_part_of_the_stage_config():
    _bind("train.keep = 'last'")
    before = stage_config.stage_config_str()
    _bind("train.keep = 'last'", "mlflow_tracking.enabled = True")
    assert stage_config.stage_config_str() == before
