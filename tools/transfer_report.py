"""Fine-tuning on COVID19-CT with and without STL-M, per backbone variant.

    python tools/transfer_report.py --ct_root=../shared/data/covid-ct \
        --cxr_root=../shared/data/cxr --workdir=runs/transfer_report \
        [--variants=baseline,attn5] [--image_size=128] [--depth=18] \
        [--width=0.5] [--stl_m_epochs=6] [--finetune_epochs=12]

Runs `gin/pipeline.gin` with the ablations `wo_tl` and `w_stl_m` for each
variant through the `matl-keras` command (so a killed report resumes where
it stopped), then writes `report.md` and `report.json` in the workdir: the
fine-tuned model's accuracy / F1 / AUC on the held-out test split when the
dataset has one (else on val, labelled as selected on val: the kept epoch
and the operating point were chosen there, so it is optimistic), the
sensitivity / specificity at the val-chosen operating point, each stage's
wall time and training img/s (from the runs' `run.json`), and the input
pipeline's img/s alone per dataset (`tools/bench_input_pipeline.py`'s
measure: decode, resize and cache on the first pass, augmentation from the
cache after).
"""

import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags
from matl_keras_plugins.reports.transferability import held_out_split
from matl_keras_plugins.reports.transferability import split_label

from matl_keras import runs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
flags.DEFINE_string("ct_root", None, "COVID19-CT root (upstream layout).")
flags.DEFINE_string("cxr_root", None, "COVIDx-layout chest X-ray root.")
flags.DEFINE_string("workdir", "runs/transfer_report", "Output folder.")
flags.DEFINE_list(
    "variants", ["baseline", "attn5"], "gin/variants/*.gin names."
)
flags.DEFINE_list(
    "ablations", ["wo_tl", "w_stl_m"], "gin/ablations/*.gin names."
)
flags.DEFINE_integer("image_size", 128, "Model input side.")
flags.DEFINE_integer("batch_size", 32, "Batch size of every stage.")
flags.DEFINE_integer("depth", 18, "ResNet depth.")
flags.DEFINE_float("width", 0.5, "ResNet width multiplier.")
flags.DEFINE_integer("stl_m_epochs", 6, "STL-M epochs.")
flags.DEFINE_integer("finetune_epochs", 12, "Fine-tuning epochs.")
flags.DEFINE_string(
    "leep_split",
    "val",
    "COVID19-CT split on which the fine-tuning stage scores LEEP of the "
    "untrained network and of every earlier stage.",
)
flags.DEFINE_boolean("pipeline_rates", True, "Also measure the input pipeline.")
flags.mark_flags_as_required(["ct_root", "cxr_root"])
FLAGS = flags.FLAGS


def _run(variant, ablation):
    workdir = os.path.join(FLAGS.workdir, variant, ablation)
    command = [
        os.path.join(os.path.dirname(sys.executable), "matl-keras"),
        "--gin_file=gin/pipeline.gin",
        f"--gin_file=gin/ablations/{ablation}.gin",
        f"--gin_file=gin/variants/{variant}.gin",
        "--gin_file=gin/datasets/covid_ct.gin",
        "--gin_file=gin/datasets/covidx.gin",
        f"--gin_param=covid_ct.root = {os.path.abspath(FLAGS.ct_root)!r}",
        f"--gin_param=covidx.root = {os.path.abspath(FLAGS.cxr_root)!r}",
        f"--gin_param=IMAGE_SIZE = {FLAGS.image_size}",
        f"--gin_param=BATCH_SIZE = {FLAGS.batch_size}",
        f"--gin_param=DEPTH = {FLAGS.depth}",
        f"--gin_param=WIDTH = {FLAGS.width}",
        f"--gin_param=STL_M_EPOCHS = {FLAGS.stl_m_epochs}",
        f"--gin_param=FINETUNE_EPOCHS = {FLAGS.finetune_epochs}",
        f"--gin_param=finetune/train.transfer_split = {FLAGS.leep_split!r}",
        f"--workdir={workdir}",
    ]
    print(f"== {variant} / {ablation}", flush=True)
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True)
    with open(os.path.join(REPO, workdir, runs.SUMMARY_FILE)) as f:
        summary = json.load(f)
    summary["wall_seconds_this_invocation"] = time.perf_counter() - start
    return summary


def _operating_point(variant, ablation, stage, split):
    """Sensitivity / specificity at the stage's val-chosen operating point
    on `split` (from the stage's metrics.json), and how it was chosen."""
    path = os.path.join(
        REPO,
        FLAGS.workdir,
        variant,
        ablation,
        stage["workdir"],
        runs.METRICS_FILE,
    )
    if not os.path.isfile(path):
        return ""
    with open(path) as f:
        at = json.load(f).get(split, {}).get("operating_point") or {}
    if at.get("threshold") is None:
        return ""
    return (
        f"{at['sensitivity']:.3f} / {at['specificity']:.3f} "
        f"({at['description']})"
    )


def _pipeline_rate(dataset, root):
    """img/s of the tf.data pipeline alone: first pass and cached passes."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from matl_keras import registry as registry_lib
    from matl_keras.data import pipeline

    data = registry_lib.default_registry().create(
        "datasets", dataset, root=root
    )
    rates = {}
    for name, augment in (("stl_m", "stl_m"), ("finetune", "moco_v2")):
        split = pipeline.build_split(
            data,
            "train",
            image_size=FLAGS.image_size,
            batch_size=FLAGS.batch_size,
            training=True,
            augment=augment,
        )
        for label in ("first_pass", "cached"):
            start, n = time.perf_counter(), 0
            for images, _ in split.data:
                n += int(images.shape[0])
            rates[f"{name}_{label}"] = n / (time.perf_counter() - start)
    return rates


def main(argv):
    del argv
    rows, results = [], {}
    for variant in FLAGS.variants:
        for ablation in FLAGS.ablations:
            summary = _run(variant, ablation)
            results[f"{variant}/{ablation}"] = summary
            stages = {s["stage"]: s for s in summary["lineage"]}
            metrics = stages["finetune"]["metrics"]
            split = held_out_split(metrics)
            scores = metrics[split]
            at = _operating_point(variant, ablation, stages["finetune"], split)
            timing = ", ".join(
                f"{s['stage']} {s['train_seconds']:.0f} s @ "
                f"{s['train_images_per_second']:.1f} img/s"
                for s in summary["lineage"]
            )
            sources = stages["finetune"]["transferability"]["sources"]
            leep = ", ".join(
                f"{name} {values['leep']:.4f}"
                for name, values in sources.items()
                if values.get("leep") is not None
            )
            rows.append(
                f"| {variant} | {ablation} | {split_label(split)} | "
                f"{scores['accuracy']:.3f} | {scores['f1']:.3f} | "
                f"{scores['auc']:.3f} | {at} | {leep} | {timing} |"
            )
    rates = (
        {
            "covid_ct": _pipeline_rate("covid_ct", FLAGS.ct_root),
            "covidx": _pipeline_rate("covidx", FLAGS.cxr_root),
        }
        if FLAGS.pipeline_rates
        else {}
    )
    lines = [
        f"ResNet-{FLAGS.depth} x{FLAGS.width}, {FLAGS.image_size} px, batch "
        f"{FLAGS.batch_size}; STL-M {FLAGS.stl_m_epochs} epochs, fine-tuning "
        f"{FLAGS.finetune_epochs} epochs; COVID19-CT, scores on the "
        "split named in each row (val scores are of the epoch chosen on "
        "val: optimistic).",
        "",
        f"LEEP on the {FLAGS.leep_split} split (untrained network, and each "
        "source stage's model with its own head).",
        "",
        "| variant | chain | split | acc | F1 | AUC | "
        "sens / spec at the val-chosen "
        "operating point | LEEP | training (per stage) |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    if rates:
        lines += [
            "",
            "Input pipeline alone (img/s, train split, with augmentation):",
            "",
            *(
                f"- {name}: " + ", ".join(f"{k} {v:.0f}" for k, v in r.items())
                for name, r in rates.items()
            ),
        ]
    os.makedirs(FLAGS.workdir, exist_ok=True)
    with open(os.path.join(FLAGS.workdir, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(FLAGS.workdir, "report.json"), "w") as f:
        json.dump(
            {"runs": results, "pipeline_images_per_second": rates}, f, indent=2
        )
    print("\n".join(lines))
    # The paper's tables from the same runs.
    subprocess.run(
        [
            os.path.join(os.path.dirname(sys.executable), "matl-keras"),
            "report",
            f"""--runs={
                ",".join(
                    os.path.join(FLAGS.workdir, v, a)
                    for v in FLAGS.variants
                    for a in FLAGS.ablations
                )
            }""",
            f"--output_dir={os.path.join(FLAGS.workdir, 'tables')}",
        ],
        cwd=REPO,
        check=True,
    )


if __name__ == "__main__":
    app.run(main)
