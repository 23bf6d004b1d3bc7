"""What does each pretraining buy the fine-tuned model? Seeds, CIs, one command.

    # The main job's case: embedded synthetic_ct, few labels (README table)
    python tools/compare_pretraining.py --workdir=runs/compare

    # The paper's ablations at CPU scale on real data (val only)
    python tools/compare_pretraining.py --workdir=runs/paper \
        --ct_root=../shared/data/covid-ct --cxr_root=../shared/data/cxr \
        --pretrainings=scratch,stl_m,sstl_m,stl_m+sstl_m \
        --variants=baseline,attn5 --fractions=1.0

    # Table 3 (SSL methods after the same supervised stage) and the
    # label-efficiency curve
    python tools/compare_pretraining.py ... \
        --pretrainings=stl_m+sstl_m:region_aware,stl_m+sstl_m:moco,... \
        --fractions=0.1,0.25,0.5,1.0

A *pretraining* is the chain of stages before fine-tuning: `scratch` (none,
"w/o TL"), `stl_m`, `sstl_m` (SSL method: the job's default,
`region_aware`), `sstl_m:moco`, `stl_m+sstl_m:simclr`, ... Every
(pretraining, variant, seed) is pretrained once, through the `matl-keras`
command; each labelled fraction then fine-tunes a copy of it on the same
stratified subset of the labelled train split (`LABELLED_FRACTION`, seeded
by the run's seed, so a seed's subset is the same for every pretraining).
Everything is scored on val (never on a test split).

Per cell it reads the fine-tuned `metrics.json` (val AUC and its stratified
bootstrap CI; sensitivity and specificity at the operating point the
fine-tuning chose on val, optimistic as it is scored where it was chosen)
and the transferability scores at the fine-tuning boundary:
LEEP where the source has a classifier (`transferability.json`), and two
scores every backbone has, both of the pretrained backbone's pooled
features on the labelled train subset (no val labels): kNN (leave-one-out
20-NN accuracy) and LogME (`matl_keras.evaluation.logme`). A finished cell
written before LogME was scored gets it added when its pretrained
backbone is still in the workdir.
It writes `report.json`, `report.md` (mean +- std over seeds; the paired
difference to `scratch` per seed; Spearman correlation of each
transferability score with the fine-tuned AUC) and, with several
fractions, `label_efficiency.png`.

Resumable: killed, it is run again with the same flags; finished runs are
skipped (the pipeline skips finished stages; a finished cell is read back).
A chain starting with supervised stages that another pretraining of the
same variant and seed already finished (`stl_m` before `stl_m+sstl_m`)
starts from a copy of them, here or in the `--reuse_from` workdirs.
`--report_only` trains nothing: it reports the finished cells of a grid
stopped part-way (or still running in another process) and lists the rest.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

from absl import app
from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def define_flags() -> None:
    """The command's flags (defined when run, not on import: the tests
    import this file beside `matl_keras.cli`, which has a `--workdir`
    too)."""
    flags.DEFINE_string("workdir", "runs/compare_pretraining", "Output folder.")
    flags.DEFINE_string(
        "ct_root",
        None,
        "COVID19-CT root; default: the embedded "
        "synthetic_ct data of gin/sstl_m.gin.",
    )
    flags.DEFINE_string(
        "cxr_root",
        None,
        "COVIDx-like CXR root (for `stl_m`); "
        "default: the embedded synthetic_cxr data.",
    )
    flags.DEFINE_list(
        "pretrainings",
        ["scratch", "sstl_m:region_aware"],
        "Chains before fine-tuning (see the module doc).",
    )
    flags.DEFINE_list(
        "variants",
        ["default"],
        "Attention placements: default (the job's), baseline, attn1, attn5.",
    )
    flags.DEFINE_list(
        "fractions",
        ["default"],
        "Labelled fractions of the train split for fine-tuning "
        "('default': the job's LABELLED_FRACTION).",
    )
    flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
    flags.DEFINE_multi_string("gin_param", [], "Extra bindings for every run.")
    flags.DEFINE_integer("knn_k", 20, "k of the kNN transferability score.")
    flags.DEFINE_bool(
        "report_only",
        False,
        "Train nothing: report the finished cells of the grid these flags "
        "name (one stopped part-way, or still running in another process) "
        "and list the cells not finished.",
    )
    flags.DEFINE_list(
        "reuse_from",
        [],
        "Other workdirs of this tool whose finished supervised stages "
        "(e.g. `stl_m` of seed 0) a chain here may start from, as it does "
        "from this workdir's (Table 3 beside the Table 4/5 grid).",
    )


FLAGS = flags.FLAGS

SUPERVISED = ("stl_n", "stl_m")


def parse_pretraining(name: str) -> tuple[list[str], str | None]:
    """`'stl_m+sstl_m:moco'` -> (['stl_m', 'sstl_m'], 'moco')."""
    if name == "scratch":
        return [], None
    chain, _, method = name.partition(":")
    stages = chain.split("+")
    for stage in stages:
        if stage not in SUPERVISED + ("sstl_m",):
            raise app.UsageError(
                f"--pretrainings: unknown stage {stage!r} in {name!r}; "
                "expected scratch or stages of stl_n, stl_m, sstl_m joined "
                "by '+' (and ':method' after sstl_m)"
            )
    if method and "sstl_m" not in stages:
        raise app.UsageError(
            f"--pretrainings: {name!r} names an SSL method without sstl_m"
        )
    return stages, method or None


def _command(stages, method, variant, fraction, seed, workdir):
    gin_files = ["gin/sstl_m.gin"]
    if FLAGS.ct_root:
        gin_files.append("gin/datasets/covid_ct.gin")
    # The CXR data only where STL-M reads it: gin refuses a macro that no
    # binding uses (CXR_DATA without stages/stl_m.gin).
    cxr = FLAGS.cxr_root and "stl_m" in stages
    if cxr:
        gin_files.append("gin/datasets/covidx.gin")
    if variant != "default":
        gin_files.append(f"gin/variants/{variant}.gin")
    params = [f"STAGES = {stages!r}", f"SEED = {seed}"]
    if "stl_m" in stages:
        params.append("include 'stages/stl_m.gin'")
    if "stl_n" in stages:
        params.append("include 'stages/stl_n.gin'")
    if FLAGS.ct_root:
        params.append(f"covid_ct.root = {os.path.abspath(FLAGS.ct_root)!r}")
    if cxr:
        params.append(f"covidx.root = {os.path.abspath(FLAGS.cxr_root)!r}")
    if method:
        params.append(f"SSL_METHOD = @{method}")
    if fraction != "default":
        params.append(f"LABELLED_FRACTION = {float(fraction)}")
    params += FLAGS.gin_param
    return [
        os.path.join(os.path.dirname(sys.executable), "matl-keras"),
        *[f"--gin_file={f}" for f in gin_files],
        *[f"--gin_param={p}" for p in params],
        f"--workdir={workdir}",
    ]


def _run(command, log_path):
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    start = time.perf_counter()
    with open(log_path, "a") as log:
        done = subprocess.run(
            command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
        )
    if done.returncode:
        raise SystemExit(f"failed (exit {done.returncode}); see {log_path}")
    return time.perf_counter() - start


def knn_loo_accuracy(features, labels, k):
    """Leave-one-out k-NN (cosine, majority vote) accuracy."""
    import numpy as np

    x = features / np.maximum(
        np.linalg.norm(features, axis=1, keepdims=True), 1e-12
    )
    similarity = x @ x.T
    np.fill_diagonal(similarity, -np.inf)
    k = min(k, len(x) - 1)
    neighbours = np.argsort(-similarity, axis=1)[:, :k]
    votes = labels[neighbours]
    predicted = np.array(
        [np.bincount(v, minlength=labels.max() + 1).argmax() for v in votes]
    )
    return float((predicted == labels).mean())


def _feature_scores(finetune_dir, seed):
    """kNN and LogME scores of the backbone the fine-tuning started from
    (the previous stage's weights; for `scratch`, the untrained backbone of
    the seed), or None when that backbone file is gone."""
    import keras
    import numpy as np

    import matl_keras  # noqa: F401  (registers the Keras objects)
    from matl_keras import runs
    from matl_keras.commands.probe import backbone_spec
    from matl_keras.data import pipeline
    from matl_keras.evaluation.evaluator import pooled_features
    from matl_keras.evaluation.logme import logme
    from matl_keras.models.backbone_weights import load_backbone
    from matl_keras.models.resnet.resnet_backbone import ResNetBackbone

    if not os.path.exists(os.path.join(finetune_dir, runs.RUN_FILE)):
        return None  # a cell copied without its runs (results/)
    run = runs.read_json(os.path.join(finetune_dir, runs.RUN_FILE))
    # The architecture as the stage was configured (`matl-keras probe`'s
    # reading of run.json and config.gin).
    spec = backbone_spec(finetune_dir)
    keras.utils.set_random_seed(seed)
    backbone = ResNetBackbone(image_size=spec["image_size"], **spec["backbone"])
    if run.get("init_backbone"):
        if not os.path.exists(run["init_backbone"]["path"]):
            return None
        load_backbone(backbone, run["init_backbone"]["path"])
    split = pipeline.build_split(
        _dataset(run),
        "train",
        image_size=spec["image_size"],
        crop_fraction=spec["crop_fraction"],
        batch_size=64,
        training=False,
        seed=seed,
        labelled_fraction=run.get("labelled_fraction", 1.0),
    )
    features, labels = pooled_features(backbone, split.data)
    labels = np.asarray(labels)
    return {
        "knn": knn_loo_accuracy(features, labels, FLAGS.knn_k),
        "logme": logme(features, labels, len(run["class_names"])),
    }


def _dataset(run):
    from matl_keras.registry import default_registry

    if FLAGS.ct_root:
        return default_registry().load("datasets", "covid_ct")(
            root=FLAGS.ct_root
        )
    return default_registry().load("datasets", "synthetic_ct")(
        **_synthetic_ct_arguments()
    )


def _synthetic_ct_arguments():
    """The embedded default's arguments, as gin/datasets/synthetic_ct.gin
    binds them (read from the file, so the two cannot drift)."""
    import ast

    arguments = {}
    path = os.path.join(REPO, "gin", "datasets", "synthetic_ct.gin")
    with open(path) as f:
        for line in f:
            line = line.split("#")[0].strip()
            if line.startswith("synthetic_ct.") and "=" in line:
                key, value = line[len("synthetic_ct.") :].split("=", 1)
                arguments[key.strip()] = ast.literal_eval(value.strip())
    return arguments


def _cell_name(pretraining, variant):
    return f"{pretraining.replace(':', '-').replace('+', '_')}/{variant}"


def shared_prefix(stages, variant, seed, workdirs):
    """A finished pretraining whose chain starts `stages`: `(folder, prefix)`
    or `(None, [])`.

    Only supervised stages are shared (an SSL stage depends on its method):
    `stl_m+sstl_m:moco` of seed 0 starts from the `stl_m` run that the
    `stl_m` pretraining of seed 0 finished, instead of training the same
    stage again (the same config and seed give the same weights; the
    pipeline checks the copied stage's config hash and refuses another).
    """
    supervised = 0
    while supervised < len(stages) - 1 and stages[supervised] in SUPERVISED:
        supervised += 1
    for n in range(supervised, 0, -1):
        name = _cell_name("+".join(stages[:n]), variant)
        for workdir in workdirs:
            folder = os.path.join(workdir, name, "pretrained", f"seed-{seed}")
            if os.path.exists(os.path.join(folder, "done")):
                return folder, stages[:n]
    return None, []


def _cell_dir(pretraining, variant, fraction, seed, workdir):
    name = _cell_name(pretraining, variant)
    return os.path.join(workdir, name, f"fraction-{fraction}", f"seed-{seed}")


def _cell(pretraining, variant, fraction, seed, workdir):
    stages, method = parse_pretraining(pretraining)
    name = _cell_name(pretraining, variant)
    cell_dir = _cell_dir(pretraining, variant, fraction, seed, workdir)
    result_path = os.path.join(cell_dir, "cell.json")
    if os.path.exists(result_path):
        with open(result_path) as f:
            cell = json.load(f)
        if "logme" not in cell:
            scores = _feature_scores(os.path.join(cell_dir, "finetune"), seed)
            cell["logme"] = scores and scores["logme"]
            if scores is not None:
                _write_cell(cell, result_path)
        metrics_path = os.path.join(cell_dir, "finetune", "metrics.json")
        if "val_operating_point" not in cell and os.path.exists(metrics_path):
            with open(metrics_path) as f:
                cell["val_operating_point"] = operating_point(
                    json.load(f)["val"]
                )
            _write_cell(cell, result_path)
        return cell
    os.makedirs(cell_dir, exist_ok=True)
    seconds = {}
    if stages:
        # Pretrain once per (pretraining, variant, seed), shared by the
        # fractions: its stages' configs do not depend on the fraction.
        pre_dir = os.path.join(workdir, name, "pretrained", f"seed-{seed}")
        if not os.path.exists(os.path.join(pre_dir, "done")):
            source, prefix = shared_prefix(
                stages,
                variant,
                seed,
                [workdir] + [os.path.abspath(w) for w in FLAGS.reuse_from],
            )
            for stage in prefix:
                if not os.path.exists(os.path.join(pre_dir, stage)):
                    print(f"== reuse {stage} of {source}", flush=True)
                    shutil.copytree(
                        os.path.join(source, stage),
                        os.path.join(pre_dir, stage),
                    )
            print(f"== pretrain {name} seed {seed}", flush=True)
            seconds["pretrain"] = _run(
                _command(stages, method, variant, fraction, seed, pre_dir),
                pre_dir + ".log",
            )
            open(os.path.join(pre_dir, "done"), "w").close()
        for stage in stages:
            if not os.path.exists(os.path.join(cell_dir, stage)):
                shutil.copytree(
                    os.path.join(pre_dir, stage), os.path.join(cell_dir, stage)
                )
    print(f"== fine-tune {name} fraction {fraction} seed {seed}", flush=True)
    seconds["finetune"] = _run(
        _command(
            stages + ["finetune"], method, variant, fraction, seed, cell_dir
        ),
        cell_dir + ".log",
    )
    finetune_dir = os.path.join(cell_dir, "finetune")
    with open(os.path.join(finetune_dir, "metrics.json")) as f:
        val = json.load(f)["val"]
    with open(os.path.join(finetune_dir, "run.json")) as f:
        run = json.load(f)
    transfer = run.get("transferability", {}).get("sources", {})
    source = stages[-1] if stages else "untrained"
    cell = {
        "pretraining": pretraining,
        "variant": variant,
        "fraction": fraction,
        "seed": seed,
        "labelled": run["class_counts"]["train"],
        "val_auc": val["auc"],
        "val_auc_ci": val.get("auc_ci"),
        "val_accuracy": val["accuracy"],
        "val_operating_point": operating_point(val),
        "leep": transfer.get(source, {}).get("leep"),
        **_feature_scores(finetune_dir, seed),
        "seconds": seconds,
    }
    print(json.dumps(cell), flush=True)
    _write_cell(cell, result_path)
    return cell


def operating_point(val_metrics):
    """The fine-tuning's decision threshold, chosen on val (its
    `operating_point`: rule, threshold) with val's accuracy, sensitivity
    and specificity there, or None for a run without one. Chosen and
    scored on the same 118 images: optimistic, beside the threshold-free
    AUC that ranks the cells."""
    point = val_metrics.get("operating_point")
    if not point:
        return None
    keys = ("rule", "threshold", "accuracy", "sensitivity", "specificity")
    return {k: point.get(k) for k in keys}


def _write_cell(cell, path):
    # Per process: a `--report_only` run may add LogME to a cell while the
    # grid runs in another process.
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(cell, f, indent=2)
    os.replace(tmp, path)


def _spearman(a, b):
    import numpy as np

    def ranks(v):
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for value in np.unique(v):  # ties: mean rank
            r[v == value] = r[v == value].mean()
        return r

    # Rounded: scores equal but for float noise (LEEP of an untrained
    # network is ln(1/classes) up to the last bit) must tie, not rank.
    a, b = np.round(np.asarray(a, float), 6), np.round(np.asarray(b, float), 6)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def _mean_of_known(values):
    """Mean of the values that are not None (cells written before a score
    existed lack it), or None."""
    known = [v for v in values if v is not None]
    return float(sum(known) / len(known)) if known else None


def summarize(cells):
    """Mean +- std per (pretraining, variant, fraction), paired gains over
    `scratch`, and the transferability scores' rank correlations."""
    import numpy as np

    groups = {}
    for c in cells:
        groups.setdefault(
            (c["pretraining"], c["variant"], c["fraction"]), []
        ).append(c)
    scratch = {
        (c["variant"], c["fraction"], c["seed"]): c["val_auc"]
        for c in cells
        if c["pretraining"] == "scratch"
    }
    rows = []
    for (pretraining, variant, fraction), members in groups.items():
        auc = np.array([m["val_auc"] for m in members])
        gains = [
            m["val_auc"] - scratch[(variant, fraction, m["seed"])]
            for m in members
            if (variant, fraction, m["seed"]) in scratch
        ]
        rows.append(
            {
                "pretraining": pretraining,
                "variant": variant,
                "fraction": fraction,
                "seeds": len(members),
                "labelled": members[0]["labelled"],
                "val_auc_mean": float(auc.mean()),
                "val_auc_std": float(auc.std()),
                "gain_over_scratch_mean": (
                    float(np.mean(gains))
                    if gains and pretraining != "scratch"
                    else None
                ),
                "gain_over_scratch_std": (
                    float(np.std(gains))
                    if gains and pretraining != "scratch"
                    else None
                ),
                "knn_mean": float(np.mean([m["knn"] for m in members])),
                "logme_mean": _mean_of_known([m.get("logme") for m in members]),
            }
        )
    correlation = {}
    for score in ("knn", "logme", "leep"):
        scored = [c for c in cells if c.get(score) is not None]
        # A ranking of pretrainings needs scores of several of them (LEEP
        # exists only where the source has a classifier: within one
        # pretraining it would rank seeds, not transfer).
        kinds = {c["pretraining"] for c in scored}
        correlation[score] = (
            _spearman(
                [c[score] for c in scored], [c["val_auc"] for c in scored]
            )
            if len(kinds) > 1
            else None
        )
    return rows, correlation


def markdown(rows, correlation, cells, minutes, missing=()):
    def fmt(value, std=None):
        if value is None:
            return "-"
        return (
            f"{value:+.3f} +- {std:.3f}" if std is not None else f"{value:.3f}"
        )

    lines = [
        "Fine-tuned val AUC, mean +- std over seeds; gain = paired "
        "difference to `scratch` with the same seed (same labelled subset); "
        "kNN = leave-one-out 20-NN accuracy and LogME of the pretrained "
        "features on the labelled subset (LogME: mean of the seeds that "
        "have it).",
        "",
        "| pretraining | variant | labelled | seeds | val AUC | gain over "
        "scratch | kNN score | LogME |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(
        rows,
        key=lambda r: (
            r["variant"],
            str(r["fraction"]),
            r["pretraining"] != "scratch",
            r["pretraining"],
        ),
    ):
        labelled = sum(r["labelled"].values())
        lines.append(
            f"| {r['pretraining']} | {r['variant']} | {labelled} "
            f"({r['fraction']}) | {r['seeds']} | "
            f"{r['val_auc_mean']:.3f} +- {r['val_auc_std']:.3f} | "
            f"{fmt(r['gain_over_scratch_mean'], r['gain_over_scratch_std'])} "
            f"| {r['knn_mean']:.3f} | {fmt(r.get('logme_mean'))} |"
        )
    lines += [
        "",
        "Rank correlation (Spearman) of transferability scores "
        "with the fine-tuned val AUC over all cells: "
        + ", ".join(f"{k} {fmt(v)}" for k, v in correlation.items()),
        "",
        "Per seed (val AUC with its 95% stratified bootstrap CI; "
        "sensitivity / specificity at the fine-tuning's operating point, "
        "its threshold chosen on val, so optimistic):",
        "",
        "| pretraining | variant | fraction | seed | val AUC | CI "
        "| sens / spec (threshold) | LEEP | kNN | LogME |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        ci = c.get("val_auc_ci") or [float("nan")] * 2
        point = c.get("val_operating_point")
        at_point = (
            f"{point['sensitivity']:.3f} / {point['specificity']:.3f} "
            f"({point['threshold']:.3f})"
            if point
            else "-"
        )
        lines.append(
            f"| {c['pretraining']} | {c['variant']} | {c['fraction']} | "
            f"{c['seed']} | {c['val_auc']:.3f} | {ci[0]:.3f}-{ci[1]:.3f} | "
            f"{at_point} | {fmt(c.get('leep'))} | {c['knn']:.3f} | "
            f"{fmt(c.get('logme'))} |"
        )
    if missing:
        lines += [
            "",
            f"Not finished ({len(missing)}; `--report_only`): "
            + "; ".join(missing)
            + ".",
        ]
    lines += ["", f"Wall time of this invocation: {minutes:.1f} min."]
    return "\n".join(lines) + "\n"


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for key in sorted({(r["pretraining"], r["variant"]) for r in rows}):
        points = sorted(
            (float(r["fraction"]), r["val_auc_mean"], r["val_auc_std"])
            for r in rows
            if (r["pretraining"], r["variant"]) == key
            and r["fraction"] != "default"
        )
        if len(points) < 2:
            continue
        x, y, e = zip(*points)
        axis.errorbar(
            x,
            y,
            yerr=e,
            marker="o",
            capsize=3,
            label=" / ".join(k for k in key if k != "default"),
        )
    axis.set_xscale("log")
    axis.set_xlabel("labelled fraction of the train split")
    axis.set_ylabel("fine-tuned val AUC (mean +- std)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv):
    del argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for name in FLAGS.pretrainings:
        parse_pretraining(name)
    workdir = os.path.abspath(FLAGS.workdir)
    os.makedirs(workdir, exist_ok=True)
    start = time.perf_counter()
    cells, missing = [], []
    for variant in FLAGS.variants:
        for fraction in FLAGS.fractions:
            for seed in FLAGS.seeds:
                for pretraining in FLAGS.pretrainings:
                    where = _cell_dir(
                        pretraining, variant, fraction, seed, workdir
                    )
                    if FLAGS.report_only and not os.path.exists(
                        os.path.join(where, "cell.json")
                    ):
                        missing.append(
                            f"{pretraining} / {variant} / fraction {fraction}"
                            f" / seed {seed}"
                        )
                        continue
                    cells.append(
                        _cell(
                            pretraining, variant, fraction, int(seed), workdir
                        )
                    )
    if not cells:
        raise app.UsageError(
            f"--report_only: no finished cell in {workdir!r} for these flags"
        )
    rows, correlation = summarize(cells)
    minutes = (time.perf_counter() - start) / 60
    with open(os.path.join(workdir, "report.json"), "w") as f:
        json.dump(
            {
                "flags": FLAGS.flag_values_dict(),
                "rows": rows,
                "correlation": correlation,
                "cells": cells,
                "not_finished": missing,
            },
            f,
            indent=2,
            default=str,
        )
    text = markdown(rows, correlation, cells, minutes, missing)
    with open(os.path.join(workdir, "report.md"), "w") as f:
        f.write(text)
    if len([f for f in FLAGS.fractions if f != "default"]) > 1:
        plot(rows, os.path.join(workdir, "label_efficiency.png"))
    print(text)


if __name__ == "__main__":
    define_flags()
    app.run(main)
