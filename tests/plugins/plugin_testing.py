"""Shared helpers of the plugin tests (not a test module): a finished
pipeline run's files for the report, a CT phantom with a known lung box."""

import json

import numpy as np

STAGE_METHOD = {"MoCo": "MoCo", "Ours": "RegionAware", "SimCLR": "SimCLR"}


def pipeline_run(
    root,
    name,
    attention,
    chain,
    accuracy,
    method=None,
    leep=None,
    depth=50,
    seed=0,
    untrained=-0.70,
    dataset=None,
    size=None,
    data_root=None,
):
    """The `summary.json` (and target `run.json`) of a finished pipeline run,
    as the transferability report reads them; returns its folder."""
    lineage = []
    for stage in list(chain) + ["finetune"]:
        entry = {"stage": stage, "workdir": stage, "seed": seed}
        if stage == "sstl_m":
            entry["method"] = STAGE_METHOD[method]
        lineage.append(entry)
    sources = {"untrained": {"kind": "untrained", "leep": untrained}}
    for stage, value in zip([s for s in chain if s != "sstl_m"], leep or []):
        sources[stage] = {"kind": "classifier", "leep": value}
    if "sstl_m" in chain:
        sources["sstl_m"] = {"kind": "backbone", "not_applicable": ["LEEP"]}
    lineage[-1].update(
        architecture={
            "depth": depth,
            "width_multiplier": 1.0,
            "attention": attention,
        },
        metrics={
            "test": {
                "accuracy": accuracy,
                "f1": accuracy - 0.01,
                "auc": accuracy + 0.02,
                "accuracy_ci": [accuracy - 0.05, accuracy + 0.04],
            }
        },
        transferability={
            "target": "CovidCT",
            "split": "train",
            "sources": sources,
        },
    )
    folder = root / name
    folder.mkdir(parents=True)
    if dataset:
        lineage[-1]["dataset"] = dataset
        (folder / "finetune").mkdir()
        (folder / "finetune" / "run.json").write_text(
            json.dumps(
                {
                    "dataset": dataset,
                    "dataset_root": data_root,
                    "preprocessing": {
                        "image_size": size,
                        "crop_fraction": 0.875,
                    },
                }
            )
        )
    (folder / "summary.json").write_text(
        json.dumps(
            {
                "status": "complete",
                "stages": [e["stage"] for e in lineage],
                "lineage": lineage,
            }
        )
    )
    return str(folder)


def phantom(size=160, shift=(0, 0), label=True, border=True):
    """Body ellipse (0.7) on black, two dark lungs (0.15): known lung box."""
    y, x = np.mgrid[:size, :size].astype(np.float32)
    cy, cx = size / 2 + shift[0], size / 2 + shift[1]
    image = np.zeros((size, size), np.float32)
    image[
        ((y - cy) / (0.36 * size)) ** 2 + ((x - cx) / (0.45 * size)) ** 2 < 1
    ] = 0.7
    lungs = np.zeros_like(image, bool)
    for side in (-1, 1):
        lungs |= ((y - cy) / (0.25 * size)) ** 2 + (
            (x - cx - side * 0.19 * size) / (0.14 * size)
        ) ** 2 < 1
    image[lungs] = 0.15
    if label:  # a text label in a corner, as in the source papers
        image[4:14, 4:40] = 1.0
    if border:
        image[:, -3:] = 1.0
    ys, xs = np.nonzero(lungs)
    box = (
        ys.min() / size,
        xs.min() / size,
        (ys.max() + 1) / size,
        (xs.max() + 1) / size,
    )
    rgb = np.repeat(image[..., None], 3, axis=-1)
    return rgb, np.array(box)
