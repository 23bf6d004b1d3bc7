"""One stage's lifecycle in its workdir, written once for every stage.

A stage is: begin (or skip a complete run), build, fit with the standard
callbacks, score, write, finish. `StageRun` owns every step that does not
depend on what is trained; `supervised.train` and `self_supervised.pretrain`
build their model and data, add their own callbacks and scores, and hand
the rest to it:

    run = StageRun.begin(workdir, init_backbone, strategy=..., ...)
    if run.complete:
        return run.results()
    ...                                   # data (run.split_options(...)),
    ...                                   # model (under run.strategy)
    run.record = run.new_record(dataset, **fields)
    run.compile(model, optimizer, steps, jit_compile, ...)
    run.fit(model, data, steps, stage_callbacks, **fit_kwargs)
    run.save_backbone(backbone)           # and the stage's own files, scores
    run.finish(results, summary_text)

The files it writes are named in `matl_keras.runs`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import keras
from absl import logging

import gin
from matl_keras import registry as registry_lib
from matl_keras import runs
from matl_keras.data.dataset import Dataset
from matl_keras.errors import ConfigError
from matl_keras.training import checkpoints
from matl_keras.training import determinism
from matl_keras.training import extension as extension_lib
from matl_keras.training import mlflow_tracking
from matl_keras.training import monitors
from matl_keras.training import precision as precision_lib
from matl_keras.training import progress
from matl_keras.training import stage_config
from matl_keras.training import strategies
from matl_keras.training import workdir as workdir_lib


class StageRun:
    """A stage running in its workdir (see the module docstring).

    Use `StageRun.begin`; its attributes:

    Args:
        start: workdir.Start. Where the stage stands (complete, resuming,
            config hash, where this process writes).
        strategy: tf.distribute.Strategy. The stage's strategy.
        batch_size: int. Global batch size.
        epochs: int. Training epochs.
        seed: int. The stage's seed.
        backup_every_steps: int or None. Step backups inside an epoch.
        start_epoch, start_step: int. Where the latest backup resumes.
        determinism: dict. What `determinism.configure` put in force
            (recorded in `run.json`).
    """

    def __init__(
        self, start, strategy, batch_size, epochs, seed, backup_every_steps
    ):
        self.start = start
        self.strategy = strategy
        self.batch_size = batch_size
        self.epochs = epochs
        self.seed = seed
        self.backup_every_steps = backup_every_steps
        self.start_epoch = self.start_step = 0
        self.determinism: dict[str, Any] = {}
        self.record: dict[str, Any] = {}
        self.nan_guard = monitors.StopOnNonFinite()
        self.throughput = monitors.Throughput()
        self.tracker = None  # optional MLflow tracking (issue 20)

    @classmethod
    def begin(
        cls,
        workdir: str,
        init_backbone: str | None,
        *,
        strategy: str,
        batch_size: int,
        epochs: int,
        seed: int,
        deterministic: bool | str,
        backup_every_steps: int | None,
    ) -> StageRun:
        """Checks the shared arguments, creates the strategy, starts the
        stage in `workdir` (`workdir.begin`: lock, config hash, previous
        run, `config.gin`) and, unless it is complete, seeds everything and
        finds where the backup resumes.

        Raises:
            ConfigError: a bad argument, a workdir of another config, a
                missing `init_backbone`.
        """
        if epochs < 1:
            raise ConfigError(
                f"`epochs` must be at least 1. Received: {epochs}"
            )
        distribution = strategies.get_strategy(strategy)
        strategies.check_replica_split(batch_size, distribution)
        if backup_every_steps and distribution.num_replicas_in_sync > 1:
            # Tested bitwise on one replica; on MirroredStrategy the resumed
            # epoch's validation scores differed (the weights did not):
            # refused until that is understood.
            raise ConfigError(
                "`backup_every_steps` works on one replica; this run has "
                f"{distribution.num_replicas_in_sync}. Received: "
                f"backup_every_steps={backup_every_steps}"
            )
        # More epochs for a finished stage (issue 20): resume its last epoch.
        extension_lib.prepare(workdir, init_backbone, epochs, distribution)
        start = workdir_lib.begin(workdir, init_backbone, distribution)
        run = cls(
            start, distribution, batch_size, epochs, seed, backup_every_steps
        )
        if start.complete:
            return run
        run.tracker = mlflow_tracking.for_stage(start)
        keras.utils.set_random_seed(seed)
        run.determinism = determinism.configure(deterministic)
        # The training data starts at the epoch the backup resumes from
        # (read again by ResumableBackup at `fit`; EpochSeeds checks they
        # agree).
        run.start_epoch, run.start_step = (
            checkpoints.ResumableBackup.resume_point(start.backup_dir)
        )
        if run.start_epoch >= epochs:
            run.start_epoch, run.start_step = epochs, 0
        return run

    # --- where things are ---------------------------------------------
    @property
    def complete(self) -> bool:
        """The same config already ran to the end here: nothing to do."""
        return self.start.complete

    @property
    def workdir(self) -> str:
        return self.start.workdir

    def path(self, name: str) -> str:
        """Where this process writes the workdir's file `name`."""
        return self.start.path(name)

    def results(self) -> dict[str, Any]:
        """The `metrics.json` of the complete run."""
        return runs.read_json(os.path.join(self.workdir, runs.METRICS_FILE))

    def cache(self, cache: str) -> str:
        """The decoded-image cache setting for this process."""
        return strategies.worker_cache(cache, self.strategy)

    def split_options(
        self,
        image_size: int,
        crop_fraction: float,
        on_bad_image: str,
        cache: str,
    ) -> dict[str, Any]:
        """The `pipeline.build_split` arguments every split of the stage
        shares: these, the batch size, the seed and this process's cache."""
        return dict(
            image_size=image_size,
            batch_size=self.batch_size,
            crop_fraction=crop_fraction,
            on_bad_image=on_bad_image,
            cache=self.cache(cache),
            seed=self.seed,
        )

    # --- run.json -----------------------------------------------------
    def new_record(self, dataset: Any, **fields: Any) -> dict[str, Any]:
        """The `run.json` of a running stage: the fields every stage
        records, then the stage's own `fields`, then the versions."""
        previous = self.start.record or {}
        record = {
            "status": "running",
            "config_hash": self.start.digest,
            "started": previous.get("started", runs.now()),
            "resumed": self.start.resuming,
            "scope": gin.current_scope_str(),
            "seed": self.seed,
            **self.determinism,
            "init_backbone": self.start.init,
            "dataset": dataset.name,
            **fields,
            "versions": workdir_lib.versions(),
        }
        # A stage extended with more epochs records it (issue 20).
        extension_lib.carry(self.start.record, record, self.epochs)
        return record

    def write_record(self) -> None:
        runs.write_json(self.path(runs.RUN_FILE), self.record)

    # --- fit ------------------------------------------------------------
    def compile(
        self,
        model: keras.Model,
        optimizer: Any,
        steps: int,
        jit_compile: bool | str,
        jit_default: bool | str,
        **kwargs: Any,
    ) -> None:
        """Compiles `model` with the stage's optimizer (`optimizer` builds
        it from the batch size, epochs and `steps` per epoch) and XLA
        setting (`"auto"`: on GPU, else `jit_default`; see
        `precision.resolve_jit_compile`). Call it under `strategy.scope()`.
        """
        model.compile(
            optimizer=optimizer(
                batch_size=self.batch_size,
                epochs=self.epochs,
                steps_per_epoch=steps,
            ),
            jit_compile=precision_lib.resolve_jit_compile(
                jit_compile, self.strategy, jit_default
            ),
            **kwargs,
        )

    def callbacks(
        self, stage_callbacks: Sequence[keras.callbacks.Callback] = ()
    ) -> list[keras.callbacks.Callback]:
        """The standard callbacks around the stage's own (which score the
        epoch: they run after the throughput, non-finite and progress
        callbacks and before anything is written).

        Order matters: scores before the best checkpoint (a stage
        callback), the history before the backup (a kill between them
        re-runs a logged epoch rather than losing one from history.csv).
        """
        backup_dir = self.start.backup_dir
        return [
            self.throughput,
            self.nan_guard,
            progress.Progress(self.batch_size),
            *stage_callbacks,
            checkpoints.HistoryCSV(self.path(runs.HISTORY_FILE), backup_dir),
            checkpoints.ResumableBackup(
                backup_dir,
                write_dir=self.path(runs.BACKUP_DIR),
                every_steps=self.backup_every_steps,
            ),
            keras.callbacks.TensorBoard(self.path(runs.LOGS_DIR)),
            determinism.EpochSeeds(self.seed, self.start_epoch),
            *([self.tracker] if self.tracker else []),
        ]

    def fit(
        self,
        model: keras.Model,
        data: Any,
        steps: int,
        stage_callbacks: Sequence[keras.callbacks.Callback] = (),
        what: str = "training",
        epochs: int | None = None,
        **kwargs: Any,
    ) -> None:
        """Records what Keras compiled and writes `run.json`, then fits
        `model` on `data` (epochs `start_epoch ..` back to back, `steps`
        batches each) from where the backup resumes, with the standard
        callbacks; raises if the loss went non-finite.

        Raises:
            MatlError: `what` diverged (the epoch and step are named).
        """
        # What Keras compiled: it turns XLA off while op determinism is on.
        self.record["jit_compile"] = bool(model.jit_compile)
        self.write_record()
        logging.info(
            "%s %s (%d params) for %d epochs of %d steps on %d replica(s)",
            what,
            model.name,
            model.count_params(),
            self.epochs,
            steps,
            self.strategy.num_replicas_in_sync,
        )
        build_before_fit(model, data, self.strategy)
        fit_resuming(
            model,
            data,
            steps,
            self.epochs if epochs is None else epochs,
            self.start_epoch,
            self.start_step,
            callbacks=self.callbacks(stage_callbacks),
            shuffle=False,  # tf.data shuffles.
            verbose=1 if sys.stdout.isatty() else 2,
            **kwargs,
        )
        self.nan_guard.raise_if_failed(what, self.start.backup_dir)

    # --- end ------------------------------------------------------------
    def save_backbone(self, backbone: keras.Model) -> None:
        """Writes `backbone.weights.h5`, what the next stage starts from."""
        path = self.path(runs.BACKBONE_FILE)
        with runs.writing(path):
            checkpoints.save_weights(backbone, path)

    def finish(
        self, results: dict[str, Any], summary: str, **fields: Any
    ) -> dict[str, Any]:
        """Writes `metrics.json`, `operative_config.gin` and the complete
        `run.json` (with `fields`, the training time and throughput),
        prints `summary`, removes the backup and, in a multi-worker run,
        waits for every worker (`workdir.finish`). Returns `results`."""
        runs.write_json(self.path(runs.METRICS_FILE), results)
        stage_config.save_config(
            self.start.out, runs.OPERATIVE_CONFIG_FILE, operative=True
        )
        throughput = self.throughput
        self.record.update(
            status="complete",
            finished=runs.now(),
            **fields,
            train_seconds=round(throughput.seconds, 2),
            # Training steps only: Throughput runs before the validation
            # callbacks, so its epoch time excludes validation.
            train_images_per_second=round(
                throughput.steps
                * self.batch_size
                / max(throughput.seconds, 1e-9),
                2,
            ),
        )
        self.write_record()
        print(summary, flush=True)
        extension_lib.keep_last_backup(self.start)  # extendable (issue 20)
        if self.tracker:  # MLflow artefacts, after run.json is complete
            self.tracker.finish()
        workdir_lib.finish(self.start, self.strategy)
        return results


def build_before_fit(model: keras.Model, data: Any, strategy: Any) -> None:
    """Creates the optimizer's and the compiled metrics' variables before
    `fit` traces its step.

    Without a strategy scope Keras defers them to the trace of the first
    train step (`TensorFlowTrainer._maybe_symbolic_build`), and a
    `tf.function` that creates variables on its first call is traced a
    second time. Measured on the tests' tiny MoCo (2 epochs, AVX2 host):
    the first pretraining in a process 19.5 s -> 13.6 s, a second one
    11.3 s -> 8.1 s; supervised stages trace their step once instead of
    twice too.
    Built here, each step function is traced once; the values are the
    same (zeros), so the run is bitwise unchanged.

    The optimizer gets `optimized_variables` where the model has them (an
    SSL model's key encoder moves by momentum only: no optimizer slots),
    the same list under every strategy.
    """
    optimizer = model.optimizer
    with strategy.scope():
        if optimizer is not None and not optimizer.built:
            optimizer.build(
                getattr(model, "optimized_variables", None)
                or model.trainable_variables
            )
        # Compiled metrics and losses (supervised stages), from the data's
        # element spec: nothing is read from the pipeline. The private
        # method is what `fit` itself calls under a strategy.
        spec = getattr(data, "element_spec", None)
        symbolic_build = getattr(model, "_symbolic_build", None)
        if spec is not None and symbolic_build is not None:
            symbolic_build(data_batch=spec)


def fit_resuming(
    model, data, steps, epochs, start_epoch, start_step=0, **kwargs
) -> None:
    """`model.fit` on `data`, which holds epochs `start_epoch .. epochs-1`
    back to back (`steps` batches each), resuming after `start_step` steps
    of epoch `start_epoch`.

    Keras keeps one iterator across the epochs of a fit given
    `steps_per_epoch`, so epoch e trains on epoch e's batches. A fit has
    one `steps_per_epoch`, so the rest of a partly done epoch is a fit of
    its own, on the data past its done batches: the data is a pure
    function of (seed, epoch, position), so these are the batches an
    uninterrupted run trains on (`ResumableBackup` restores the rest).
    """
    if start_step:
        model.fit(
            data.skip(start_step),
            initial_epoch=start_epoch,
            epochs=start_epoch + 1,
            steps_per_epoch=steps - start_step,
            **kwargs,
        )
        if model.stop_training or start_epoch + 1 >= epochs:
            return
        data, start_epoch = data.skip(steps), start_epoch + 1
    model.fit(
        data,
        initial_epoch=start_epoch,
        epochs=epochs,
        steps_per_epoch=steps,
        **kwargs,
    )


def resolve_dataset(dataset: Dataset | str | None) -> Dataset:
    if dataset is None:
        raise ConfigError(
            "no dataset: bind `train.dataset` (e.g. CT_DATA = @synthetic_ct())"
        )
    return registry_lib.resolve("datasets", dataset, "train.dataset")


def describe_backbone(features: keras.Model) -> dict[str, Any]:
    """What the tables need to know of a backbone (depth, width, attention)."""
    config = features.get_config() if hasattr(features, "get_config") else {}
    keys = ("depth", "width_multiplier", "attention", "attention_subsample")
    return {k: config[k] for k in keys if k in config} | {"name": features.name}
