"""How good are the SSTL-M representations? kNN and linear probe on val.

    python tools/ssl_probe.py --ct_root=../shared/data/covid-ct \
        --workdir=runs/ssl_probe [--methods=none,moco,simclr,region_aware] \
        [--seeds=0,1,2] [--image_size=96] [--epochs=30] [--depth=18] \
        [--width=0.5] [--batch_size=32] [--attention=none]

For every method and seed, pretrains a backbone with the SSTL-M stage on
the COVID19-CT *train* split (labels unused) through the `matl-keras`
command (`gin/sstl_m.gin` with `STAGES = ['sstl_m']`, so a killed report
resumes and a finished cell is not rerun), then freezes it and scores its
global-average-pooled features on the *val* split (never a test split):

- kNN accuracy (k = 20, cosine, the SSL monitor of Wu et al. 2018), bank =
  train;
- linear probe (`matl_keras.evaluation.linear_probe`: logistic regression,
  penalty chosen by 5-fold CV on train only): val accuracy and AUC
  (positive class COVID).

`none` is the random-init backbone of the same architecture and seed: the
baseline every SSL method must beat. Writes `report.json` and `report.md`
(mean +- std over seeds, and every seed's values) in the workdir.
"""

import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def define_flags() -> None:
    """The tool's flags (defined when it runs, not on import: the tests
    import the report functions beside other absl programs' flags)."""
    flags.DEFINE_string("ct_root", None, "COVID19-CT root (upstream layout).")
    flags.DEFINE_string("workdir", "runs/ssl_probe", "Output folder.")
    flags.DEFINE_list(
        "methods",
        ["none", "moco", "simclr", "region_aware"],
        "SSL methods ('none': random init).",
    )
    flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
    flags.DEFINE_integer("image_size", 96, "Model input side.")
    flags.DEFINE_integer("batch_size", 32, "SSL batch size.")
    flags.DEFINE_integer("epochs", 30, "SSTL-M epochs.")
    flags.DEFINE_integer("depth", 18, "ResNet depth.")
    flags.DEFINE_float("width", 0.5, "ResNet width multiplier.")
    flags.DEFINE_string("attention", "none", "ATTENTION placement.")
    flags.DEFINE_multi_string(
        "gin_param",
        [],
        "Extra bindings for every SSTL-M run (e.g. "
        "'moco.augment = \"ct_intensity\"').",
    )
    flags.mark_flags_as_required(["ct_root"])


FLAGS = flags.FLAGS


def _pretrain(method, seed, workdir):
    command = [
        os.path.join(os.path.dirname(sys.executable), "matl-keras"),
        "--gin_file=gin/sstl_m.gin",
        "--gin_file=gin/datasets/covid_ct.gin",
        f"--gin_param=covid_ct.root = {os.path.abspath(FLAGS.ct_root)!r}",
        "--gin_param=STAGES = ['sstl_m']",
        f"--gin_param=SSL_METHOD = @{method}",
        f"--gin_param=SEED = {seed}",
        f"--gin_param=IMAGE_SIZE = {FLAGS.image_size}",
        f"--gin_param=BATCH_SIZE = {FLAGS.batch_size}",
        f"--gin_param=DEPTH = {FLAGS.depth}",
        f"--gin_param=WIDTH = {FLAGS.width}",
        f"--gin_param=ATTENTION = {FLAGS.attention!r}",
        f"--gin_param=SSTL_M_EPOCHS = {FLAGS.epochs}",
        # The probe below is the measurement; the per-epoch kNN monitor
        # would score the same split every epoch.
        "--gin_param=sstl_m/pretrain.monitor_split = None",
        *[f"--gin_param={p}" for p in FLAGS.gin_param],
        f"--workdir={workdir}",
    ]
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True)
    return time.perf_counter() - start


def _score(backbone_path, seed):
    """kNN and linear-probe scores of one backbone on val."""
    import keras
    from matl_keras_plugins.datasets.covid_ct import CovidCT

    from matl_keras.data import pipeline
    from matl_keras.evaluation import knn
    from matl_keras.evaluation import linear_probe
    from matl_keras.evaluation import metrics as metrics_lib
    from matl_keras.evaluation.evaluator import pooled_features
    from matl_keras.models.backbone_weights import load_backbone
    from matl_keras.models.resnet.resnet_backbone import ResNetBackbone

    keras.utils.set_random_seed(seed)
    backbone = ResNetBackbone(
        depth=FLAGS.depth,
        width_multiplier=FLAGS.width,
        image_size=FLAGS.image_size,
        attention=FLAGS.attention,
        normalization="caffe",
    )
    if backbone_path:
        load_backbone(backbone, backbone_path)
    dataset = CovidCT(root=FLAGS.ct_root)
    common = dict(
        image_size=FLAGS.image_size, batch_size=64, training=False, seed=seed
    )
    bank, bank_labels = pooled_features(
        backbone, pipeline.build_split(dataset, "train", **common).data
    )
    queries, labels = pooled_features(
        backbone, pipeline.build_split(dataset, "val", **common).data
    )
    positive = dataset.positive_index()
    probe = linear_probe.linear_probe(
        bank, bank_labels, queries, dataset.num_classes, seed=seed
    )
    return {
        "knn_accuracy": knn.knn_accuracy(
            bank, bank_labels, queries, labels, dataset.num_classes, 20
        ),
        "probe_accuracy": metrics_lib.accuracy(labels, probe.probs),
        "probe_auc": metrics_lib.roc_auc_binary(
            labels == positive, probe.probs[:, positive]
        ),
        "probe_penalty": probe.penalty,
        "num_bank": int(len(bank)),
        "num_queries": int(len(queries)),
    }


def paired_gains(cells, baseline="none"):
    """Per method other than `baseline`: its probe AUC minus the
    `baseline`'s of the same seed, for the seeds both have
    ({method: {seed: gain}})."""
    reference = {
        c["seed"]: c["probe_auc"] for c in cells if c["method"] == baseline
    }
    gains = {}
    for c in cells:
        if c["method"] != baseline and c["seed"] in reference:
            gains.setdefault(c["method"], {})[c["seed"]] = (
                c["probe_auc"] - reference[c["seed"]]
            )
    return gains


def _setting() -> str:
    return (
        f"R-{FLAGS.depth} x{FLAGS.width}, {FLAGS.image_size} px, attention "
        f"{FLAGS.attention}, SSTL-M {FLAGS.epochs} epochs at batch "
        f"{FLAGS.batch_size}"
    )


def _markdown(cells, methods, setting, bindings=()):
    import numpy as np

    keys = ("knn_accuracy", "probe_accuracy", "probe_auc")
    gains = paired_gains(cells)
    lines = [
        f"{setting} on COVID19-CT train (labels unused); scored on "
        "val (kNN k=20 bank train; linear probe fitted on train, penalty by "
        "5-fold CV on train). Mean +- std over seeds; the gain is the probe "
        "AUC minus random init's (`none`) of the same seed.",
    ]
    if bindings:
        lines += ["", "Bindings: " + "; ".join(f"`{b}`" for b in bindings)]
    lines += [
        "",
        "| method | seeds | kNN acc | probe acc | probe AUC | "
        "paired gain over none | SSL min/run |",
        "|---|---|---|---|---|---|---|",
    ]
    for method in methods:
        rows = [c for c in cells if c["method"] == method]
        if not rows:
            continue
        stats = []
        for key in keys:
            values = np.array([r[key] for r in rows], float)
            stats.append(f"{values.mean():.3f} +- {values.std():.3f}")
        gain = np.array(list(gains.get(method, {}).values()), float)
        stats.append(
            f"{gain.mean():+.3f} +- {gain.std():.3f} ({len(gain)})"
            if len(gain)
            else "-"
        )
        minutes = np.mean([r.get("pretrain_seconds") or 0.0 for r in rows]) / 60
        lines.append(
            f"| {method} | {len(rows)} | "
            + " | ".join(stats)
            + f" | {minutes:.1f} |"
        )
    lines += [
        "",
        "| method | seed | kNN acc | probe acc | probe AUC | gain |",
        "|---|---|---|---|---|---|",
    ]
    for c in cells:
        gain = gains.get(c["method"], {}).get(c["seed"])
        lines.append(
            f"| {c['method']} | {c['seed']} | {c['knn_accuracy']:.3f} | "
            f"{c['probe_accuracy']:.3f} | {c['probe_auc']:.3f} | "
            + ("-" if gain is None else f"{gain:+.3f}")
            + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    workdir = os.path.abspath(FLAGS.workdir)
    os.makedirs(workdir, exist_ok=True)
    cells = []
    for method in FLAGS.methods:
        for seed in map(int, FLAGS.seeds):
            cell_dir = os.path.join(workdir, method, f"seed-{seed}")
            score_path = os.path.join(cell_dir, "probe.json")
            if os.path.exists(score_path):
                with open(score_path) as f:
                    cells.append(json.load(f))
                continue
            os.makedirs(cell_dir, exist_ok=True)
            seconds, weights = None, None
            if method != "none":
                print(f"== SSTL-M {method} seed {seed}", flush=True)
                seconds = _pretrain(method, seed, cell_dir)
                weights = os.path.join(
                    cell_dir, "sstl_m", "backbone.weights.h5"
                )
            cell = {
                "method": method,
                "seed": seed,
                "pretrain_seconds": seconds,
                **_score(weights, seed),
            }
            print(json.dumps(cell), flush=True)
            with open(score_path + ".tmp", "w") as f:
                json.dump(cell, f, indent=2)
            os.replace(score_path + ".tmp", score_path)
            cells.append(cell)
    with open(os.path.join(workdir, "report.json"), "w") as f:
        json.dump(
            {
                "flags": FLAGS.flag_values_dict(),
                "cells": cells,
                "paired_gains": paired_gains(cells),
            },
            f,
            indent=2,
            default=str,
        )
    text = _markdown(cells, FLAGS.methods, _setting(), FLAGS.gin_param)
    with open(os.path.join(workdir, "report.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    define_flags()
    app.run(main)
