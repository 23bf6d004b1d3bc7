"""Optional MLflow tracking of every stage (off by default).

`--gin_param='mlflow_tracking.enabled = True'` (scoped:
`finetune/mlflow_tracking.enabled`) makes each stage an MLflow run in
`mlflow_tracking.experiment`: its gin bindings as parameters at the start
(the operative ones, defaults included, added at the end), every epoch's
logs (loss, `val_auc`, `knn_accuracy`, ...) as metrics with the epoch as
step, and `metrics.json`, `run.json`, `config.gin`, `operative_config.gin`
and `history.csv` as artefacts when the stage finishes. A killed and
resumed stage continues its MLflow run (its id is kept in `mlflow.json`).

MLflow is not a dependency of matl-keras: `pip install 'matl-keras[mlflow]'`.
Turned on without it, the stage stops at its start with one line. These
bindings are not part of a stage's config hash
(`training.stage_config.NOT_STAGE_CONFIG`): turning tracking on for a
finished or interrupted run does not make it another run. Only the chief
of a multi-worker run logs.

Uses `MlflowClient` (no global active run), so a failed stage never leaves
a run open that the next one would trip over.
"""

from __future__ import annotations

import math
import os
from typing import Any

import keras

import gin
from matl_keras import runs
from matl_keras.errors import ConfigError
from matl_keras.training import workdir as workdir_lib

RUN_ID_FILE = "mlflow.json"
ARTIFACTS = (
    "metrics.json",
    "run.json",
    "config.gin",
    "operative_config.gin",
    "history.csv",
)
_MAX_VALUE = 500  # characters of a parameter value (MLflow limits them)


def mlflow_tracking(
    enabled: bool = False,
    tracking_uri: str | None = None,
    experiment: str = "matl-keras",
    run_name: str | None = None,
) -> dict[str, Any]:
    """The tracking settings of the stage in whose gin scope it is called.

    Args:
        enabled: bool. Log this stage to MLflow.
        tracking_uri: str or None. MLflow tracking URI (None: MLflow's own
            default, e.g. `MLFLOW_TRACKING_URI`).
        experiment: str. Experiment name (created if missing).
        run_name: str or None. Run name (default: the workdir's last two
            folder names, e.g. `sstl_m/finetune`).
    """
    return {
        "enabled": enabled,
        "tracking_uri": tracking_uri,
        "experiment": experiment,
        "run_name": run_name,
    }


_configured_tracking = gin.external_configurable(
    mlflow_tracking, name="mlflow_tracking"
)


def _import_mlflow():
    try:
        import mlflow  # noqa: F401
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ConfigError(
            "mlflow_tracking.enabled = True needs MLflow, which is not "
            "installed: pip install 'matl-keras[mlflow]' (or pip install "
            "mlflow). Received: mlflow_tracking.enabled=True"
        ) from None
    return MlflowClient


def _params(config_text: str) -> dict[str, str]:
    return {
        key: value[:_MAX_VALUE]
        for key, value in runs.config_bindings(config_text).items()
    }


class MLflowTracking(keras.callbacks.Callback):
    """Logs a stage to MLflow: parameters, per-epoch metrics, artefacts.

    Args:
        out: str. The stage folder this process writes.
        settings: dict. `mlflow_tracking()`'s.
    """

    def __init__(self, out: str, settings: dict[str, Any]):
        super().__init__()
        client_cls = _import_mlflow()
        self.out = out
        self.settings = settings
        uri = settings["tracking_uri"]
        try:
            self.client = client_cls(tracking_uri=uri)
            self.run_id = self._run_id()
        except Exception as e:  # noqa: BLE001 - MLflow's many errors
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise ConfigError(
                f"MLflow could not start a run at "
                f"mlflow_tracking.tracking_uri={uri!r}: "
                f"{type(e).__name__}: {first}"
            ) from None
        self._logged = set(self.client.get_run(self.run_id).data.params)
        self.log_params(os.path.join(out, "config.gin"))

    def _run_id(self) -> str:
        """This stage's MLflow run: the one a killed run started, or new."""
        path = os.path.join(self.out, RUN_ID_FILE)
        if os.path.isfile(path):
            saved = runs.read_json(path)
            if saved.get("tracking_uri") == self.settings["tracking_uri"]:
                try:
                    run = self.client.get_run(saved["run_id"])
                    if run.info.status != "FINISHED":
                        return saved["run_id"]
                except Exception:  # noqa: BLE001 - deleted: start anew
                    pass
        name = self.settings["experiment"]
        found = self.client.get_experiment_by_name(name)
        experiment_id = (
            found.experiment_id
            if found
            else self.client.create_experiment(name)
        )
        parts = os.path.abspath(self.out).split(os.sep)
        run = self.client.create_run(
            experiment_id,
            run_name=self.settings["run_name"] or "/".join(parts[-2:]),
            tags={"matl_keras.workdir": os.path.abspath(self.out)},
        )
        runs.write_json(
            path,
            {
                "run_id": run.info.run_id,
                "tracking_uri": self.settings["tracking_uri"],
                "experiment": name,
            },
        )
        return run.info.run_id

    def log_params(self, config_path: str) -> None:
        """Logs the bindings of a gin config file not logged yet."""
        from mlflow.entities import Param

        if not os.path.isfile(config_path):
            return
        with open(config_path) as f:
            params = _params(f.read())
        new = [
            Param(k, v)
            for k, v in sorted(params.items())
            if k not in self._logged
        ]
        for i in range(0, len(new), 100):  # MLflow's batch limit
            self.client.log_batch(self.run_id, params=new[i : i + 100])
        self._logged |= {p.key for p in new}

    def on_epoch_end(self, epoch, logs=None):
        import time

        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [
            Metric(key, float(value), stamp, epoch + 1)
            for key, value in (logs or {}).items()
            if isinstance(value, (int, float)) and math.isfinite(float(value))
        ]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self) -> None:
        """At the end of the stage: the operative parameters and the
        artefacts; the MLflow run is marked finished."""
        self.log_params(os.path.join(self.out, "operative_config.gin"))
        for name in ARTIFACTS:
            path = os.path.join(self.out, name)
            if os.path.isfile(path):
                self.client.log_artifact(self.run_id, path)
        self.client.set_terminated(self.run_id)


def for_stage(start: workdir_lib.Start) -> MLflowTracking | None:
    """The stage's tracker, or None when tracking is off (or this process
    is not the chief)."""
    settings = _configured_tracking()
    if not settings["enabled"] or not start.chief:
        return None
    return MLflowTracking(start.out, settings)
