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

from collections.abc import Callable
from typing import Any

import keras

import gin
from matl_keras import registry as registry_lib
from matl_keras import runs
from matl_keras.data import decode
from matl_keras.data import pipeline
from matl_keras.data.dataset import Dataset
from matl_keras.errors import ConfigError
from matl_keras.models.backbone_weights import load_backbone
from matl_keras.models.resnet.resnet_backbone import ResNetBackbone
from matl_keras.training import checkpoints
from matl_keras.training import monitor_data as monitor_lib
from matl_keras.training import monitors
from matl_keras.training import optimizers
from matl_keras.training import precision as precision_lib
from matl_keras.training import ssl_method
from matl_keras.training import stage_config
from matl_keras.training import workdir as workdir_lib
from matl_keras.training.ssl_method import RunSchedule
from matl_keras.training.ssl_method import SSLMethod
from matl_keras.training.stage_run import StageRun
from matl_keras.training.stage_run import describe_backbone
from matl_keras.training.stage_run import resolve_dataset


def resolve_batchnorm_groups(
    setting: int | str, global_batch_size: int, replicas: int
) -> int:
    """BatchNorm groups of a shuffle-BN method's backbones.

    `"auto"`: groups of about 32 images (MoCo's per-GPU batch), at least 2;
    an int: that many (1: no shuffle-BN). The groups must split the global
    batch into chunks of at least 2 images and be a multiple of the number
    of replicas (each replica normalises whole groups).
    """
    allowed = [
        g
        for g in range(2, global_batch_size // 2 + 1)
        if global_batch_size % g == 0 and g % replicas == 0
    ]
    if setting == 1:
        return 1
    if setting == "auto":
        if not allowed:
            raise ConfigError(
                "shuffle-BN needs a global batch that splits into at least "
                f"2 groups of 2 images on {replicas} replica(s). Received: "
                f"batch_size={global_batch_size}; set "
                "pretrain.batchnorm_groups = 1 to turn it off"
            )
        target = global_batch_size / 32
        return min(allowed, key=lambda g: (abs(g - target), g))
    if setting not in allowed:
        raise ConfigError(
            "`pretrain.batchnorm_groups` must be 'auto', 1 or one of "
            f"{allowed} for batch_size={global_batch_size} on {replicas} "
            f"replica(s). Received: batchnorm_groups={setting!r}"
        )
    return setting


NEGATIVES = ("image", "source")


def _describe_negatives(
    negatives: str, data: pipeline.Split, split: str
) -> str:
    """What `run.json` says of the negatives, with the source count of the
    images actually used (after any skipped files)."""
    if negatives == "image":
        return "all but the query's own image"
    if data.num_sources is None:
        return "all but the query's own image (the dataset gives no sources)"
    return (
        "all but images of the query's source "
        f"({data.num_sources} sources in {split!r})"
    )


def build_method(
    method: Callable[..., SSLMethod] | str | None,
    backbone: Callable[..., keras.Model],
    image_size: int,
    sync_batchnorm: bool = True,
    batchnorm_groups: int = 1,
) -> SSLMethod:
    """Instantiates the SSL method with its backbone(s).

    Backbones of a method with `shuffle_batchnorm` get `batchnorm_groups`
    (when > 1) instead of synchronized BatchNorm."""
    factory = resolve_method(method)
    name = method if isinstance(method, str) else None
    if isinstance(factory, type):
        ssl_method.check_contract(factory, name)
    kwargs: dict[str, Any] = {"image_size": image_size}
    if getattr(factory, "shuffle_batchnorm", False) and batchnorm_groups > 1:
        kwargs["batchnorm_groups"] = batchnorm_groups
    else:
        kwargs["sync_batchnorm"] = sync_batchnorm
    model = factory(
        backbone=backbone(**kwargs),
        image_size=image_size,
        **(
            {"key_backbone": backbone(**kwargs, name="key_resnet")}
            if getattr(factory, "needs_key_encoder", False)
            else {}
        ),
    )
    if not isinstance(model, SSLMethod):
        raise ConfigError(
            "`pretrain.method` must build an SSLMethod (a subclass of "
            f"matl_keras.training.ssl_method.SSLMethod). Received: {model!r}"
        )
    ssl_method.check_contract(type(model), name)
    return model


def resolve_method(method) -> Callable[..., SSLMethod]:
    """The method factory of a name or callable (gin: `@moco`)."""
    if method is None:
        raise ConfigError(
            "no SSL method: bind `pretrain.method` (gin: SSL_METHOD = "
            "@region_aware, @moco, @simclr or an installed plugin's name)"
        )
    return registry_lib.resolve("ssl_methods", method, "pretrain.method")


@workdir_lib.releases_lock
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
    batchnorm_groups: int | str = "auto",
    on_bad_image: str = "refuse",
    max_image_pixels: int = decode.MAX_PIXELS,
    cache: str = "auto",
    seed: int = 0,
    deterministic: bool | str = "auto",
    backup_every_steps: int | None = None,
    train_split: str = "train",
    monitor_split: str | None = "val",
    monitor_bank_split: str = "train",
    knn_k: int = 20,
    monitor_dataset: Dataset | str | None = None,
    negatives: str = "image",
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
            (`moco.temperature = 0.2`).
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
        sync_batchnorm: bool. BatchNorm over the global batch for methods
            without shuffle-BN (SimCLR), or with `batchnorm_groups=1`.
        batchnorm_groups: int or `"auto"`. Shuffle-BN groups of the
            backbones of methods that declare `shuffle_batchnorm` (MoCo,
            region_aware); see `resolve_batchnorm_groups`. 1: off.
        on_bad_image, max_image_pixels, cache, seed: as in
            `supervised.train`; the seed also drives every view's
            augmentation and the key permutation.
        deterministic: bool or `"auto"`. As in `supervised.train`.
        backup_every_steps: int or None. As in `supervised.train` (one
            replica only): a killed run resumes at the last such step.
        train_split: str. Split pretrained on.
        monitor_split: str or None. Labelled split whose kNN accuracy is
            logged after every epoch (None: no monitor). Skipped, with a
            message, when the dataset has no such split or no labels.
        monitor_bank_split: str. Labelled split the kNN votes from.
        knn_k: int. Neighbours of the kNN monitor.
        monitor_dataset: Dataset, str or None. The labelled dataset the kNN
            monitor and the final linear probe read `monitor_bank_split`
            and `monitor_split` from (e.g. `@labelled/image_folder()`
            beside unlabelled pretraining images). None: `dataset`.
        negatives: str. Which images a query never has as a negative (in
            MoCo's queue, in SimCLR's batch): `"image"`, only its own;
            `"source"`, also every image of its source (patient, study)
            when the dataset gives `sources` (COVID19-CT does). `"image"`
            is the default: on COVID19-CT val, masking the sources made
            MoCo's representation worse (README, "Representation
            quality").

    Returns:
        The content of `metrics.json`.
    """
    if negatives not in NEGATIVES:
        raise ConfigError(
            f"`negatives` must be one of {NEGATIVES}. Received: "
            f"negatives={negatives!r}"
        )
    run = StageRun.begin(
        workdir,
        init_backbone,
        strategy=strategy,
        batch_size=batch_size,
        epochs=epochs,
        seed=seed,
        deterministic=deterministic,
        backup_every_steps=backup_every_steps,
    )
    if run.complete:
        return run.results()
    dataset = resolve_dataset(dataset)
    # The kNN monitor's labelled data (issue 20): its own dataset or `dataset`.
    labelled = monitor_lib.resolve(monitor_dataset, dataset)
    # Every bad file of every split read, up front (before any model).
    read = [monitor_bank_split, monitor_split]
    if not (monitor_split and set(read) <= set(labelled.splits())):
        read = []  # no kNN monitor
    for source, splits in monitor_lib.reads(
        dataset, train_split, labelled, read
    ):
        decode.check_splits(
            source,
            splits,
            on_bad_image,
            stage_config.binding_in_force("pretrain", "on_bad_image"),
            max_image_pixels,
        )
    groups = (
        resolve_batchnorm_groups(
            batchnorm_groups, batch_size, run.strategy.num_replicas_in_sync
        )
        if getattr(resolve_method(method), "shuffle_batchnorm", False)
        else 1
    )
    with run.strategy.scope(), precision_lib.dtype_policy(precision) as policy:
        model = build_method(
            method, backbone, image_size, sync_batchnorm, groups
        )
    common = run.split_options(image_size, crop_fraction, on_bad_image, cache)
    train_data = pipeline.build_split(
        dataset,
        train_split,
        training=True,
        augment=model.views,
        prepare=model.prepare,
        targets="sources" if negatives == "source" else "indices",
        start_epoch=run.start_epoch,
        epochs=epochs,
        **common,
    )
    model.configure(
        RunSchedule(
            num_examples=train_data.num_examples,
            steps_per_epoch=train_data.steps,
            epochs=epochs,
            global_batch_size=batch_size,
            seed=seed,
        )
    )
    print(
        f"dataset {dataset.name}: {train_split} {train_data.num_examples} "
        f"images; method {type(model).__name__}",
        flush=True,
    )
    monitor = _knn_monitor(
        model,
        labelled,
        monitor_split,
        monitor_bank_split,
        knn_k,
        common,
        hint=monitor_dataset is None,
    )
    run.record = run.new_record(
        dataset,
        class_names=list(dataset.class_names),
        monitor_dataset=monitor_lib.describe(labelled, monitor, dataset),
        method=type(model).__name__,
        batchnorm=(
            f"shuffle-BN, {groups} groups"
            if groups > 1
            else ("synchronized" if sync_batchnorm else "per replica")
        ),
        **model.run_record(),
        negatives=_describe_negatives(negatives, train_data, train_split),
        precision=policy,
        architecture=describe_backbone(model.transfer_backbone),
        num_examples={train_split: train_data.num_examples},
        skipped_images=train_data.skipped,
    )
    with run.strategy.scope():
        model.build()
        if init_backbone:
            load_backbone(model.backbone, init_backbone)
            model.init_from_backbone()
            print(f"starting from backbone {init_backbone}", flush=True)
        run.compile(model, optimizer, train_data.steps, jit_compile, False)
    if monitor is not None:
        # Before any training of this stage; a resumed run keeps the value
        # its first start measured.
        before = (run.start.record or {}).get("knn_accuracy_before")
        if before is None or not run.start.resuming:
            before = monitor.score()
        run.record["knn_accuracy_before"] = before
        print(f"kNN accuracy before pretraining: {before:.4f}", flush=True)
    run.fit(
        model,
        train_data.data,
        train_data.steps,
        [monitor] if monitor is not None else [],
        what="pretraining",
    )
    checkpoints.save_weights(model, run.path(runs.SSL_MODEL_FILE))
    run.save_backbone(model.transfer_backbone)
    final = {k: float(v[-1]) for k, v in model.history.history.items() if v}
    results: dict[str, Any] = {"final_epoch": final}
    if monitor is not None:
        results.update(
            _monitor_scores(
                monitor,
                final,
                run.record["knn_accuracy_before"],
                knn_k,
                monitor_bank_split,
                monitor_split,
                labelled,
                seed,
            )
        )
    return run.finish(results, f"metrics: {results}", metrics=results)


# Configurable as `pretrain` in gin, registered here on the definition; Python
# callers get the plain function (its errors without gin's call notes).
gin.external_configurable(pretrain, name="pretrain")


def _knn_monitor(
    model, dataset, monitor_split, monitor_bank_split, knn_k, common, hint=False
) -> monitors.KnnMonitor | None:
    """The kNN monitor of the backbone's features, or None (with a message)
    when the dataset has no labelled bank and query splits."""
    monitor = None
    splits = dataset.splits()
    if (
        monitor_split
        and monitor_split in splits
        and monitor_bank_split in splits
    ):
        # Only the labels supervised stages may use (the embedded data's
        # few-labels case keeps 10%): the monitor and the probe fit on them.
        bank = pipeline.build_split(
            dataset,
            monitor_bank_split,
            training=False,
            labelled_fraction=getattr(dataset, "labelled_fraction", 1.0),
            **common,
        )
        queries = pipeline.build_split(
            dataset, monitor_split, training=False, **common
        )
        if bank.class_counts and queries.class_counts:
            monitor = monitors.KnnMonitor(
                model.transfer_backbone,
                bank.data,
                queries.data,
                dataset.num_classes,
                knn_k,
            )
    if monitor is None and monitor_split:
        print(
            f"no kNN monitor: {dataset.name} has no labelled "
            f"{monitor_bank_split!r} and {monitor_split!r} splits"
            + monitor_lib.HINT
            * hint,
            flush=True,
        )
    return monitor


def _monitor_scores(
    monitor, final, before, knn_k, bank_split, query_split, dataset, seed
) -> dict[str, Any]:
    """kNN accuracy before and after, and the frozen backbone's linear
    probe (fitted on the bank split, scored on the query split), the
    standard SSL score beside kNN."""
    scores: dict[str, Any] = {
        "knn_accuracy": {
            "before": before,
            "after": final["knn_accuracy"]
            if "knn_accuracy" in final
            else monitor.score(),
            "k": knn_k,
            "bank": bank_split,
            "queries": query_split,
            "dataset": dataset.name,
        },
        "linear_probe": {
            **monitor.linear_probe(dataset.positive_index(), seed),
            "fitted_on": bank_split,
            "scored_on": query_split,
        },
    }
    print(f"linear probe: {scores['linear_probe']}", flush=True)
    return scores
