"""The supervised stage: train a ResNet classifier on a labelled dataset.

Writes into the workdir: `config.gin` (at start: the gin bindings that
reach this stage), `run.json` (state, config hash, starting weights, versions,
class counts, throughput), `logs/` (TensorBoard), `history.csv`, `backup/`
(while running; resumes a killed run), `best/` (the best epoch by a
validation metric), `model.keras`, `backbone.weights.h5`, `metrics.json` and
`operative_config.gin` (at the end).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import keras

import gin
from matl_keras import runs
from matl_keras.data import decode
from matl_keras.data import pipeline
from matl_keras.data.dataset import Dataset
from matl_keras.errors import ConfigError
from matl_keras.evaluation import metrics as metrics_lib
from matl_keras.evaluation import operating_point
from matl_keras.evaluation import transfer
from matl_keras.evaluation.evaluator import EvalContext
from matl_keras.evaluation.evaluator import Evaluator
from matl_keras.evaluation.evaluator import resolve_evaluators
from matl_keras.evaluation.evaluator import run_evaluators
from matl_keras.models.backbone_weights import load_backbone
from matl_keras.models.resnet import imagenet_weights
from matl_keras.models.resnet.resnet_backbone import ResNetBackbone
from matl_keras.models.resnet.resnet_image_classifier import (
    build_image_classifier,
)
from matl_keras.training import checkpoints
from matl_keras.training import early_stopping
from matl_keras.training import monitors
from matl_keras.training import optimizers
from matl_keras.training import precision as precision_lib
from matl_keras.training import stage_config
from matl_keras.training import workdir as workdir_lib
from matl_keras.training.stage_run import StageRun
from matl_keras.training.stage_run import describe_backbone
from matl_keras.training.stage_run import resolve_dataset

CLASS_BALANCE = ("none", "weights", "sampling")


def inverse_frequency_weights(
    class_counts: dict[str, int], class_names: Sequence[str]
) -> dict[int, float]:
    """`n / (classes * n_c)` per present class: the mean weight per image is
    1."""
    total = sum(class_counts.values())
    present = [c for c in class_names if class_counts.get(c, 0) > 0]
    return {
        class_names.index(c): total / (len(present) * class_counts[c])
        for c in present
    }


def evaluate(
    model,
    split_data,
    split,
    dataset,
    evaluators,
    workdir=None,
    decision=None,
    fit_decision=False,
):
    """Runs `evaluators` on one split; returns `{metric: value}`. With
    `fit_decision` (the val split only), first fits the operating point and
    temperature there (`operating_point.fit_and_write`) and returns
    `(results, decision)`; `decision` scores another split at it."""
    context = EvalContext(
        model=model,
        data=split_data,
        split=split,
        class_names=tuple(dataset.class_names),
        positive_index=dataset.positive_index(),
        workdir=workdir,
        decision=decision,
    )
    if fit_decision:
        context.decision = operating_point.fit_and_write(context, workdir)
        return run_evaluators(context, evaluators), context.decision
    return run_evaluators(context, evaluators)


KEEP = ("best", "last")
BEST_METRICS = ("val_accuracy", "val_f1", "val_auc", "val_loss")


@workdir_lib.releases_lock
def train(
    workdir: str,
    dataset: Dataset | str | None = None,
    backbone: Callable[..., keras.Model] = ResNetBackbone,
    init_backbone: str | None = None,
    pretrained_weights: str | None = None,
    image_size: int = 224,
    batch_size: int = 32,
    epochs: int = 10,
    dropout: float = 0.5,
    head_norm: bool = False,
    augment: str = "crop_flip",
    crop_fraction: float = 0.875,
    optimizer: Callable[..., keras.optimizers.Optimizer] = optimizers.sgd,
    strategy: str = "auto",
    precision: str = "auto",
    jit_compile: bool | str = "auto",
    evaluators: Sequence[Evaluator | str] = ("metrics",),
    transfer_evaluators: Sequence[Evaluator | str] = ("leep",),
    transfer_split: str | None = None,
    transfer_max_examples: int | None = 5000,
    sources: Sequence[dict[str, str]] = (),
    on_bad_image: str = "refuse",
    max_image_pixels: int = decode.MAX_PIXELS,
    cache: str = "auto",
    class_balance: str = "none",
    seed: int = 0,
    deterministic: bool | str = "auto",
    keep: str = "best",
    best_metric: str = "val_accuracy",
    backup_every_steps: int | None = None,
    train_split: str = "train",
    val_split: str = "val",
    test_split: str = "test",
    labelled_fraction: float = 1.0,
    early_stopping_patience: int | None = None,
    early_stopping_min_delta: float = 0.0,
) -> dict[str, Any]:
    """Trains a classifier and writes the run's files into `workdir`.

    Args:
        workdir: str. Output folder (from `--workdir`).
        dataset: Dataset or str. The labelled dataset (a plugin instance, as
            from `@synthetic_ct()`, or a plugin name).
        backbone: callable. Builds the backbone given `image_size=`
            (gin: `@resnet_backbone`).
        init_backbone: str or None. Backbone weights to start from (a
            previous stage's `backbone.weights.h5`; the pipeline passes it).
            Its content hash is part of the config hash.
        pretrained_weights: str or None. A keras.applications ResNet-50/101
            ImageNet weights file loaded into the backbone before training
            (STL-N without training ImageNet); non-local blocks stay new.
        image_size: int. Model input side in pixels.
        batch_size: int. Global batch size.
        epochs: int. Training epochs.
        dropout: float. Dropout rate before the classification layer.
        head_norm: bool. Normalise the pooled features (BatchNorm) before
            the classification layer: fine-tuning a self-supervised
            backbone needs it (see `build_image_classifier`).
        augment: str. Training augmentation recipe.
        crop_fraction: float. Crop side over resized side (224/256).
        optimizer: callable. Builds the optimizer from `batch_size`,
            `epochs` and `steps_per_epoch` (gin: `@sgd`).
        strategy: str. A `strategies.STRATEGIES` name (`"auto"`: see
            `strategies.get_strategy`).
        precision: str. `"auto"` (`mixed_float16` on GPU, `float32` on
            CPU), `"float32"`, `"mixed_float16"` or `"mixed_bfloat16"`
            (see `training.precision`).
        jit_compile: bool or `"auto"`. XLA for the training step (`"auto"`:
            on GPU; on CPU, Keras' own choice).
        evaluators: sequence. Evaluator plugins (or names) for the final
            scores in `metrics.json`.
        transfer_evaluators: sequence. Evaluator plugins (or names) that
            score, before training, how well the untrained network and each
            earlier stage's model (`sources`) transfer to this stage's data
            (`transferability.json`; LEEP by default). Empty: none.
        transfer_split: str or None. The labelled split they score on
            (default: `train_split`, with evaluation preprocessing).
        transfer_max_examples: int or None. Score a seeded random subset of
            at most this many images (LEEP needs no more; the STL-N stage
            would otherwise run every source over all of ImageNet). None:
            all.
        sources: sequence of `{"stage", "workdir"}`. The earlier stages of
            the chain (the pipeline passes them).
        on_bad_image: str. `"refuse"` or `"skip"` unreadable image files
            (every file of every split used is checked before training).
        max_image_pixels: int. Images whose header claims more pixels
            (width x height) are bad files, refused before decoding.
        cache: str. Decoded-image cache, see `pipeline.build_split`.
        class_balance: str. `"none"`, `"weights"` (loss weighted by inverse
            class frequency) or `"sampling"` (classes drawn equally often).
        seed: int. Seed of weights, shuffling, augmentation and dropout.
        deterministic: bool or `"auto"`. TensorFlow op determinism
            (`"auto"`: on CPU; see `training.determinism`); `run.json`
            records what was in force.
        keep: str. `"best"`: the final model is the epoch with the best
            `best_metric`; `"last"`: the last epoch.
        best_metric: str. Validation metric for `keep="best"`: `val_accuracy`,
            `val_f1`, `val_auc` (higher is better) or `val_loss`.
        backup_every_steps: int or None. Also back up every this many
            steps inside an epoch (long epochs): a killed run resumes at
            that step, with the result of an uninterrupted run. One replica
            only. None: after every epoch only.
        train_split: str. Split to train on.
        val_split: str. Split scored after every epoch.
        test_split: str. Split scored at the end when the dataset has it.
        labelled_fraction: float in (0, 1]. Train on this stratified
            fraction of the labelled part of `train_split` (seeded by
            `seed`; label-efficiency runs): of `dataset.labelled_fraction`
            of the split (1 for real datasets; the embedded synthetic_ct's
            few-labels case sets 0.1). Validation and test splits are
            whole.
        early_stopping_patience: int or None. Stop when `best_metric` has
            not improved for this many epochs (`training.early_stopping`;
            resumable). None: off.
        early_stopping_min_delta: float. Smallest change of `best_metric`
            that counts as an improvement.

    Returns:
        The content of `metrics.json`.
    """
    _check_args(class_balance, keep, best_metric, labelled_fraction)
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
    # Early stopping (issue 20): its state survives a resume.
    stopper = early_stopping.for_stage(
        early_stopping_patience,
        early_stopping_min_delta,
        best_metric,
        run.start.out,
        run.start.backup_dir,
        workdir,
    )
    dataset = resolve_dataset(dataset)
    # The dataset's own share of labels times this run's share.
    labelled_fraction = labelled_fraction * getattr(
        dataset, "labelled_fraction", 1.0
    )
    test_splits = [test_split] if test_split in dataset.splits() else []
    _check_data(
        dataset,
        [train_split, val_split, transfer_split or train_split, *test_splits],
        on_bad_image,
        max_image_pixels,
    )
    evaluators = resolve_evaluators(evaluators)
    transfer_evaluators = resolve_evaluators(
        transfer_evaluators, "train.transfer_evaluators"
    )
    common = run.split_options(image_size, crop_fraction, on_bad_image, cache)
    train_data = pipeline.build_split(
        dataset,
        train_split,
        training=True,
        augment=augment,
        balance=class_balance == "sampling",
        labelled_fraction=labelled_fraction,
        start_epoch=run.start_epoch,
        epochs=epochs,
        **common,
    )
    val_data = pipeline.build_split(
        dataset, val_split, training=False, **common
    )
    print(
        f"dataset {dataset.name}: {train_split} {train_data.class_counts}"
        + (
            f" (a stratified {labelled_fraction:g} of its labelled images)"
            if labelled_fraction < 1.0
            else ""
        )
        + f", {val_split} {val_data.class_counts}",
        flush=True,
    )
    run.record = run.new_record(
        dataset,
        # Tells two runs of one plugin on different folders apart (report).
        dataset_root=getattr(dataset, "root", None),
        class_names=list(dataset.class_names),
        class_counts={
            train_split: train_data.class_counts,
            val_split: val_data.class_counts,
        },
        skipped_images=train_data.skipped + val_data.skipped,
        class_balance=class_balance,
        labelled_fraction=labelled_fraction,
        # What evaluation fed the model: `explain` and `export` reuse it.
        preprocessing={
            "image_size": image_size,
            "crop_fraction": crop_fraction,
            "load_size": pipeline.load_size(image_size, crop_fraction),
        },
    )
    with run.strategy.scope(), precision_lib.dtype_policy(precision) as policy:
        features = backbone(image_size=image_size)
        run.record["architecture"] = describe_backbone(features)
        run.record["precision"] = policy
        model = build_image_classifier(
            features,
            dataset.num_classes,
            dropout=dropout,
            head_norm=head_norm,
        )
        if transfer_evaluators and not run.start.has_transfer:
            # Before any weights are loaded: `model` is the untrained network.
            transfer_data = pipeline.build_split(
                dataset,
                transfer_split or train_split,
                training=False,
                max_examples=transfer_max_examples,
                # Only the labels this run may use.
                labelled_fraction=(
                    1.0 if transfer_split else labelled_fraction
                ),
                **common,
            )
            _score_transfer(
                run,
                model,
                lambda: backbone(image_size=image_size),
                transfer_data,
                transfer_split or train_split,
                dataset,
                sources,
                transfer_evaluators,
            )
        _record_transfer(run)
        # Loading source models draws from the global RNG: reseed so that
        # training does not depend on whether (or how many) sources ran.
        keras.utils.set_random_seed(seed)
        _load_weights(run.record, features, init_backbone, pretrained_weights)
        run.compile(
            model,
            optimizer,
            train_data.steps,
            jit_compile,
            "auto",
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
    best = checkpoints.BestCheckpoint(
        run.path(runs.BEST_DIR),
        resume_from=os.path.join(workdir, runs.BEST_DIR),
        monitor=best_metric,
        mode="min" if best_metric == "val_loss" else "max",
    )
    run.fit(
        model,
        train_data.data,
        train_data.steps,
        # The scores first, then the best checkpoint that reads them.
        [
            monitors.ValidationMetrics(val_data.data, dataset.positive_index()),
            best,
            *([stopper] if stopper else []),
        ],
        epochs=(
            stopper.epochs_to_fit(run.start_epoch, epochs) if stopper else None
        ),
        class_weight=(
            inverse_frequency_weights(
                train_data.class_counts, list(dataset.class_names)
            )
            if class_balance == "weights"
            else None
        ),
    )
    run.record["kept"] = _keep(model, best, keep, best_metric, epochs)
    if stopper is not None:  # early stopping (issue 20)
        run.record["early_stopping"] = stopper.record(epochs)
        if run.record["kept"]["keep"] == "last" and stopper.stopped_epoch:
            run.record["kept"]["epoch"] = stopper.stopped_epoch
    model_path = run.path(runs.MODEL_FILE)
    with runs.writing(model_path, partial=model_path):
        model.save(model_path)
    run.save_backbone(features)
    # Operating point and temperature: fitted on val, never on test.
    results = {}
    results[val_split], decision = evaluate(
        model,
        val_data.data,
        val_split,
        dataset,
        evaluators,
        run.start.out,
        fit_decision=True,
    )
    for split in test_splits:
        test_data = pipeline.build_split(
            dataset, split, training=False, **common
        )
        results[split] = evaluate(
            model,
            test_data.data,
            split,
            dataset,
            evaluators,
            run.start.out,
            decision=decision,
        )
    return run.finish(
        results,
        "\n".join(
            f"{split}:\n{metrics_lib.format_table(values)}"
            for split, values in results.items()
        ),
    )


# Configurable as `train` in gin, registered here on the definition; Python
# callers get the plain function (its errors without gin's call notes).
gin.external_configurable(train, name="train")


def _check_args(
    class_balance: str, keep: str, best_metric: str, labelled_fraction: float
) -> None:
    if class_balance not in CLASS_BALANCE:
        raise ConfigError(
            f"`class_balance` must be one of {CLASS_BALANCE}. Received: "
            f"class_balance={class_balance!r}"
        )
    if keep not in KEEP:
        raise ConfigError(
            f"`keep` must be one of {KEEP}. Received: keep={keep!r}"
        )
    if best_metric not in BEST_METRICS:
        raise ConfigError(
            f"`best_metric` must be one of {BEST_METRICS}. Received: "
            f"best_metric={best_metric!r}"
        )
    if not 0.0 < labelled_fraction <= 1.0:
        raise ConfigError(
            "`labelled_fraction` must be in (0, 1]. Received: "
            f"labelled_fraction={labelled_fraction}"
        )


def _check_data(
    dataset: Dataset,
    splits: Sequence[str],
    on_bad_image: str,
    max_image_pixels: int,
) -> None:
    """Faults (issue 19): one-class data; every bad file of every split
    used, named before anything trains."""
    if dataset.num_classes < 2:
        raise ConfigError(
            f"dataset {dataset.name} has {dataset.num_classes} class(es) "
            f"{list(dataset.class_names)}; a classifier needs at least 2 "
            "(image_folder: one sub-folder per class, root/<class>/<image>)"
        )
    decode.check_splits(
        dataset,
        splits,
        on_bad_image,
        stage_config.binding_in_force("train", "on_bad_image"),
        max_image_pixels,
    )


def _score_transfer(
    run: StageRun,
    untrained: keras.Model,
    build_backbone,
    data,
    split: str,
    dataset: Dataset,
    sources: Sequence[dict[str, str]],
    evaluators: Sequence[Evaluator],
) -> None:
    """Scores the untrained network and every source stage on `data`
    into `transferability.json`."""
    scores = transfer.score_sources(
        sources,
        untrained=untrained,
        build_backbone=build_backbone,
        data=data.data,
        split=split,
        class_names=dataset.class_names,
        positive_index=dataset.positive_index(),
        evaluators=evaluators,
    )
    runs.write_json(
        run.path(runs.TRANSFER_FILE),
        {
            "target": dataset.name,
            "split": split,
            "num_examples": data.num_examples,
            "sources": scores,
        },
    )


def _record_transfer(run: StageRun) -> None:
    """Copies this process's transfer scores (or, resuming, the chief's)
    into `run.json`."""
    for path in (
        run.path(runs.TRANSFER_FILE),
        os.path.join(run.workdir, runs.TRANSFER_FILE),
    ):
        if os.path.exists(path):
            run.record["transferability"] = runs.read_json(path)
            break


def _load_weights(
    record: dict[str, Any],
    features: keras.Model,
    init_backbone: str | None,
    pretrained_weights: str | None,
) -> None:
    """Starts the backbone from the previous stage's weights and/or the
    ImageNet weights of keras.applications."""
    if init_backbone:
        load_backbone(features, init_backbone)
        print(f"starting from backbone {init_backbone}", flush=True)
    if pretrained_weights:
        report = imagenet_weights.load_imagenet_weights(
            features, pretrained_weights
        )
        record["pretrained_weights"] = report.summary()
        print(
            f"loaded {len(report.loaded)} layers from "
            f"{pretrained_weights}; new: {report.kept_initial}",
            flush=True,
        )


def _keep(model, best, keep: str, best_metric: str, epochs: int) -> dict:
    """Loads the kept epoch's weights into `model`; returns its record."""
    if keep == "best" and best.best is not None:
        model.load_weights(best.weights_path)
        print(
            f"keeping epoch {best.best['epoch']} ({best_metric} "
            f"{best.best['value']:.4f})",
            flush=True,
        )
        return {"keep": "best", **best.best}
    return {"keep": "last", "epoch": epochs}
