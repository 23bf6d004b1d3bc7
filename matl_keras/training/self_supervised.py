"""The self-supervised stage (SSTL-M): pretrain a backbone with an SSL
method plugin on (unlabelled) target images.

Writes into the workdir: `config.gin`, `run.json`, `logs/` (TensorBoard),
`history.csv` (loss, method trackers such as `region_accuracy`, and
`knn_accuracy`), `backup/` while running (weights, key encoder, queue and
optimizer state), `ssl_model.weights.h5` (the whole method: both encoders,
heads, queue), `backbone.weights.h5` (the query backbone, for the next
stage), `metrics.json` and `operative_config.gin`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import gin
import keras
from absl import logging

from matl_keras import registry as registry_lib
from matl_keras.data import pipeline
from matl_keras.data.dataset import Dataset
from matl_keras.errors import ConfigError
from matl_keras.models.resnet.resnet_backbone import ResNetBackbone
from matl_keras.training import callbacks as callbacks_lib
from matl_keras.training import progress
from matl_keras.training import optimizers
from matl_keras.training import precision as precision_lib
from matl_keras.training import strategies
from matl_keras.training import workdir as workdir_lib
from matl_keras.training.ssl_method import SSLMethod
from matl_keras.models.backbone_weights import load_backbone
from matl_keras.training.supervised import describe_backbone
from matl_keras.training.supervised import resolve_dataset


def build_method(
    method: Callable[..., SSLMethod] | str | None,
    backbone: Callable[..., keras.Model],
    image_size: int,
    sync_batchnorm: bool = True,
) -> SSLMethod:
    """Instantiates the SSL method with its backbone(s)."""
    if method is None:
        raise ConfigError(
            "no SSL method: bind `pretrain.method` (gin: SSL_METHOD = "
            "@region_aware, @moco, @simclr or an installed plugin's name)"
        )
    registry = registry_lib.default_registry()
    if isinstance(method, str):
        registry.load("ssl_methods", method)
        method = registry.infos("ssl_methods")[method].factory
    needs_key = getattr(method, "needs_key_encoder", False)
    kwargs: dict[str, Any] = {
        "backbone": backbone(image_size=image_size, sync_batchnorm=sync_batchnorm),
        "image_size": image_size,
    }
    if needs_key:
        kwargs["key_backbone"] = backbone(
            image_size=image_size, sync_batchnorm=sync_batchnorm, name="key_resnet"
        )
    model = method(**kwargs)
    if not isinstance(model, SSLMethod):
        raise ConfigError(
            "`pretrain.method` must build an SSLMethod (a subclass of "
            f"matl_keras.training.ssl_method.SSLMethod). Received: {model!r}"
        )
    return model


def pretrain(
    workdir: str,
    init_backbone: str | None = None,
    dataset: Dataset | str | None = None,
    method: Callable[..., SSLMethod] | str | None = None,
    backbone: Callable[..., keras.Model] = ResNetBackbone,
    image_size: int = 224,
    batch_size: int = 256,
    epochs: int = 200,
    crop_fraction: float = 0.875,
    optimizer: Callable[..., keras.optimizers.Optimizer] = optimizers.sgd,
    strategy: str = "auto",
    precision: str = "auto",
    jit_compile: bool | str = "auto",
    sync_batchnorm: bool = True,
    on_bad_image: str = "refuse",
    cache: str = "auto",
    seed: int = 0,
    train_split: str = "train",
    monitor_split: str | None = "val",
    monitor_bank_split: str = "train",
    knn_k: int = 20,
) -> dict[str, Any]:
    """Pretrains a backbone with an SSL method; writes the run's files.

    Args:
        workdir: str. Output folder.
        init_backbone: str or None. Backbone weights to start from (a
            previous stage's `backbone.weights.h5`).
        dataset: Dataset or str. The images (labels are not used for
            training; see `monitor_split`).
        method: callable or str. The SSL method plugin (gin:
            `SSL_METHOD = @region_aware`), called with `backbone=`,
            `key_backbone=` (when it has `needs_key_encoder`) and
            `image_size=`; its own parameters come from gin
            (`moco.temperature = 0.07`).
        backbone: callable. Builds a backbone from `image_size=`,
            `sync_batchnorm=` and `name=`.
        image_size: int. Side of the views.
        batch_size: int. Global batch size.
        epochs: int. Training epochs.
        crop_fraction: float. View crop side over resized side (224/256).
        optimizer: callable. As in `supervised.train`.
        strategy: str. A `strategies.STRATEGIES` name (`"auto"`: see
            `strategies.get_strategy`).
        precision: str. As in `supervised.train`.
        jit_compile: bool or `"auto"`. XLA for the SSL step (`"auto"`: on
            GPU only; tested equal to the plain step on CPU, one device and
            MirroredStrategy).
        sync_batchnorm: bool. BatchNorm over the global batch (see
            `contrastive`); leave on for MoCo under several replicas.
        on_bad_image, cache, seed: as in `supervised.train`.
        train_split: str. Split pretrained on.
        monitor_split: str or None. Labelled split whose kNN accuracy is
            logged after every epoch (None: no monitor). Skipped, with a
            message, when the dataset has no such split or no labels.
        monitor_bank_split: str. Labelled split the kNN votes from.
        knn_k: int. Neighbours of the kNN monitor.

    Returns:
        The content of `metrics.json`.
    """
    if epochs < 1:
        raise ConfigError(f"`epochs` must be at least 1. Received: {epochs}")
    from matl_keras import config

    distribution = strategies.get_strategy(strategy)
    strategies.check_replica_split(batch_size, distribution)
    start = workdir_lib.begin(workdir, init_backbone, distribution)
    if start.complete:
        return workdir_lib.read_json(os.path.join(workdir, "metrics.json"))
    metrics_path = start.path("metrics.json")
    keras.utils.set_random_seed(seed)
    dataset = resolve_dataset(dataset)
    with distribution.scope(), precision_lib.dtype_policy(precision) as policy:
        model = build_method(method, backbone, image_size, sync_batchnorm)
    common = dict(
        image_size=image_size, batch_size=batch_size,
        crop_fraction=crop_fraction, on_bad_image=on_bad_image,
        cache=strategies.worker_cache(cache, distribution), seed=seed,
    )
    train_data = pipeline.build_split(
        dataset, train_split, training=True, augment=model.views, **common
    )
    print(
        f"dataset {dataset.name}: {train_split} {train_data.num_examples} "
        f"images; method {type(model).__name__}",
        flush=True,
    )
    monitor = None
    splits = dataset.splits()
    if monitor_split and monitor_split in splits and monitor_bank_split in splits:
        bank = pipeline.build_split(dataset, monitor_bank_split, training=False, **common)
        queries = pipeline.build_split(dataset, monitor_split, training=False, **common)
        if bank.class_counts and queries.class_counts:
            monitor = callbacks_lib.KnnMonitor(
                model.backbone, bank.data, queries.data, dataset.num_classes, knn_k
            )
    if monitor is None and monitor_split:
        print(
            f"no kNN monitor: {dataset.name} has no labelled "
            f"{monitor_bank_split!r} and {monitor_split!r} splits",
            flush=True,
        )
    previous = start.record or {}
    record = {
        "status": "running",
        "config_hash": start.digest,
        "started": previous.get("started", workdir_lib.now()),
        "resumed": start.resuming,
        "scope": gin.current_scope_str(),
        "seed": seed,
        "init_backbone": start.init,
        "dataset": dataset.name,
        "class_names": list(dataset.class_names),
        "method": type(model).__name__,
        "precision": policy,
        "architecture": describe_backbone(model.backbone),
        "num_examples": {train_split: train_data.num_examples},
        "skipped_images": train_data.skipped,
        "versions": workdir_lib.versions(),
    }
    with distribution.scope():
        model.build()
        if init_backbone:
            load_backbone(model.backbone, init_backbone)
            if model.key_backbone is not None:
                model.key_backbone.set_weights(model.backbone.get_weights())
            print(f"starting from backbone {init_backbone}", flush=True)
        model.compile(
            optimizer=optimizer(
                batch_size=batch_size, epochs=epochs,
                steps_per_epoch=train_data.steps,
            ),
            jit_compile=precision_lib.resolve_jit_compile(
                jit_compile, distribution, False
            ),
        )
    if monitor is not None:
        # Before any training of this stage; a resumed run keeps the value
        # its first start measured.
        before = previous.get("knn_accuracy_before")
        if before is None or not start.resuming:
            before = monitor.score()
        record["knn_accuracy_before"] = before
        print(f"kNN accuracy before pretraining: {before:.4f}", flush=True)
    workdir_lib.write_json(start.path(workdir_lib.RUN_FILE), record)
    nan_guard = callbacks_lib.StopOnNonFinite()
    throughput = callbacks_lib.Throughput()
    callbacks = [throughput, nan_guard, progress.Progress(batch_size)]
    if monitor is not None:
        callbacks.append(monitor)
    callbacks += [
        keras.callbacks.CSVLogger(start.path("history.csv"), append=True),
        callbacks_lib.ResumableBackup(
            start.backup_dir, write_dir=start.path(workdir_lib.BACKUP_DIR)
        ),
        keras.callbacks.TensorBoard(start.path("logs")),
    ]
    logging.info(
        "pretraining %s for %d epochs of %d steps on %d replica(s)",
        type(model).__name__, epochs, train_data.steps,
        distribution.num_replicas_in_sync,
    )
    history = model.fit(
        train_data.data,
        epochs=epochs,
        callbacks=callbacks,
        shuffle=False,  # tf.data shuffles.
        verbose=1 if sys.stdout.isatty() else 2,
    )
    nan_guard.raise_if_failed("pretraining", start.backup_dir)
    model.save_weights(start.path("ssl_model.weights.h5"))
    model.backbone.save_weights(start.path(workdir_lib.BACKBONE_FILE))
    final = {k: float(v[-1]) for k, v in history.history.items() if v}
    results: dict[str, Any] = {"final_epoch": final}
    if monitor is not None:
        results["knn_accuracy"] = {
            "before": record["knn_accuracy_before"],
            "after": final["knn_accuracy"]
            if "knn_accuracy" in final
            else monitor.score(),
            "k": knn_k,
            "bank": monitor_bank_split,
            "queries": monitor_split,
        }
    workdir_lib.write_json(metrics_path, results)
    config.save_config(start.out, "operative_config.gin", operative=True)
    record.update(
        status="complete",
        finished=workdir_lib.now(),
        metrics=results,
        train_seconds=round(throughput.seconds, 2),
        train_images_per_second=round(
            throughput.steps * batch_size / max(throughput.seconds, 1e-9), 2
        ),
    )
    workdir_lib.write_json(start.path(workdir_lib.RUN_FILE), record)
    print(f"metrics: {results}", flush=True)
    workdir_lib.finish(start, distribution)
    return results
