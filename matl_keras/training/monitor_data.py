"""The labelled data of SSTL-M's kNN monitor and linear probe.

By default the monitor reads labelled splits of the pretraining dataset
itself. Pretraining on an unlabelled folder (`image_folder.labelled =
False`) has none, so `pretrain.monitor_dataset` names another dataset
plugin (any labelled one: `@labelled/image_folder()`, `@covid_ct()`) whose
`monitor_bank_split` votes for its `monitor_split`; its labels never reach
the SSL loss.
"""

from __future__ import annotations

from typing import Any

from matl_keras.data.dataset import Dataset

HINT = (
    "; name a labelled dataset for it with pretrain.monitor_dataset (e.g. "
    "sstl_m/pretrain.monitor_dataset = @labelled/image_folder())"
)


def resolve(monitor_dataset: Dataset | str | None, dataset: Dataset) -> Dataset:
    """The monitor's dataset: `monitor_dataset` (a plugin or its name) or
    the pretraining `dataset`."""
    if monitor_dataset is None:
        return dataset
    from matl_keras.errors import ConfigError
    from matl_keras.training.supervised import resolve_dataset

    try:
        return resolve_dataset(monitor_dataset)
    except ConfigError:
        raise ConfigError(
            "`pretrain.monitor_dataset` must be a dataset plugin instance "
            "(gin: @covid_ct() or @labelled/image_folder()) or name. "
            f"Received: monitor_dataset={monitor_dataset!r}"
        ) from None


def reads(
    dataset: Dataset, train_split: str, labelled: Dataset, monitor_splits
) -> list[tuple[Dataset, list[str]]]:
    """`(dataset, splits)` of every file the stage reads, for the bad-file
    check: the pretraining split, and the monitor's splits."""
    if labelled is dataset:
        return [(dataset, [train_split, *monitor_splits])]
    out = [(dataset, [train_split])]
    if monitor_splits:
        out.append((labelled, list(monitor_splits)))
    return out


def describe(labelled: Dataset, monitor: Any, dataset: Dataset) -> Any:
    """`run.json`'s `monitor_dataset`: its name and root (None without a
    monitor)."""
    if monitor is None:
        return None
    return {
        "name": labelled.name,
        "root": getattr(labelled, "root", None),
        "same_as_pretraining": labelled is dataset,
    }
