"""`transferability` report: the paper's tables (2-6) and Fig. 3 from a set
of pipeline workdirs.

    matl-keras report --runs=runs/a,runs/b,... --output_dir=reports/paper

Each run is one pipeline workdir (`summary.json`); a folder of such
workdirs may be given instead. From each run it reads the architecture
(group R-<depth>, variant Baseline / 1 ATTN / 5 ATTNs), the pretraining
chain (the stages before the last one, the target), the SSL method, the
target stage's scores (the `test` split when there is one, else `val`; with
their bootstrap intervals) and the LEEP of every source the target stage
scored. Runs are grouped into cells: one cell is one group, variant, pretraining
chain, SSL method and scored split; several runs of a cell (seeds) are
reported as mean +- sample std over the runs, with `n`, their seeds and
their names. Improv. compares like with like: a cell is compared only
with the reference cell of the same group, the same seed set (the target
stage's seeds) and the same split, and, for Table 3, the same earlier
stages and variant; the `Compared with` column names the reference's runs,
or says why there is none (then Improv. is empty). It writes, as Markdown
and CSV:

- Table 2 (overall): runs pretrained with STL-N, STL-M and SSTL-M with the
  paper's SSL method (Ours); Improv. against the group's Baseline. Without
  such runs the table is empty and says which methods there were (never
  another method in their place).
- Table 3 (SSL methods): runs with SSTL-M, one row per method; Improv.
  against MoCo with the same earlier stages and variant.
- Table 4 (with vs without transfer): w/o TL and all three stages;
  Improv. against w/o TL.
- Table 5 (per supervised stage): w/o TL, w STL-N, w STL-M alone;
  Improv. against w/o TL.
- Table 6 (LEEP): w/o TL (the untrained network), w STL-N, w STL-N w STL-M
  (cumulative, as the target stage scored each source), mean +- std over
  the runs that scored it; Improv. is the mean of each run's own
  difference to its untrained network (paired). Fig. 3 plots the means.
- `runs`: every run with everything above.

Values are percentages with one decimal, as in the paper; Improv. is a
difference in percentage points (LEEP: in LEEP units). A 95% CI is the
run's bootstrap interval (shown for cells of one run). A cell without data
is empty; a table without runs of its kind says so.

Runs on different target data or image sizes are not comparable: every
table has Dataset (the plugin, and its root folder when it has one) and
Size columns, rows are ordered by them, and an Improv. is only ever taken
against a run of the same dataset, size and group. Table 6 and Fig. 3 get
one column / panel per dataset, size and group when there are several.
"""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Any

from matl_keras import runs as runs_lib
from matl_keras.commands.report import Report
from matl_keras.errors import ConfigError

STAGE_LABELS = {"stl_n": "STL-N", "stl_m": "STL-M", "sstl_m": "SSTL-M"}
METHOD_LABELS = {"MoCo": "MoCo", "SimCLR": "SimCLR", "RegionAware": "Ours"}
VARIANT_LABELS = {"none": "Baseline", "1": "1 ATTN", "5": "5 ATTNs"}
VARIANT_ORDER = ["Baseline", "1 ATTN", "5 ATTNs"]
METRICS = (("accuracy", "Accuracy"), ("f1", "F1-Score"), ("auc", "AUC"))
FULL = ("STL-N", "STL-M", "SSTL-M")


def _run_dirs(runs: list[str]) -> list[str]:
    found = []
    for path in runs:
        if os.path.isfile(os.path.join(path, runs_lib.SUMMARY_FILE)):
            found.append(path)
        elif os.path.isdir(path):
            inside = sorted(
                os.path.join(path, d)
                for d in os.listdir(path)
                if os.path.isfile(os.path.join(path, d, runs_lib.SUMMARY_FILE))
            )
            if not inside:
                raise ConfigError(
                    f"--runs: {path!r} holds no summary.json (a pipeline "
                    "workdir) and no folders with one"
                )
            found += inside
        else:
            raise ConfigError(f"--runs: {path!r} does not exist")
    return found


VAL_SELECTED = "val, selected on val (optimistic)"


def held_out_split(metrics: dict[str, Any]) -> str:
    """The split a run's scores are reported on: `test` (held out) when the
    stage scored it, else `val`, which also chose the kept epoch and the
    operating point, so its scores are optimistic (`split_label`)."""
    return "test" if "test" in (metrics or {}) else "val"


def split_label(split: str) -> str:
    """How a table names the split: val scores are labelled val-selected."""
    return VAL_SELECTED if split == "val" else split


def describe(run_dir: str) -> dict[str, Any]:
    """The facts of one pipeline run that the tables need."""
    summary = runs_lib.read_json(os.path.join(run_dir, runs_lib.SUMMARY_FILE))
    lineage = summary.get("lineage") or []
    if summary.get("status") != "complete" or not lineage:
        raise ConfigError(
            f"--runs: {run_dir!r} is not a complete pipeline run "
            f"(status {summary.get('status')!r}); finish or leave it out"
        )
    target = lineage[-1]
    # The target stage's own record: its input size and data folder.
    stage_run: dict[str, Any] = {}
    run_json = os.path.join(
        run_dir, target.get("workdir") or "", runs_lib.RUN_FILE
    )
    if os.path.isfile(run_json):
        stage_run = runs_lib.read_json(run_json)
    dataset = target.get("dataset") or stage_run.get("dataset") or ""
    if stage_run.get("dataset_root"):
        dataset = f"{dataset} {stage_run['dataset_root']}"
    image_size = (stage_run.get("preprocessing") or {}).get("image_size")
    arch = target.get("architecture") or {}
    depth, width = arch.get("depth"), arch.get("width_multiplier", 1.0)
    group = f"R-{depth}" + ("" if width in (None, 1, 1.0) else f"x{width:g}")
    attention = arch.get("attention", "none")
    variant = VARIANT_LABELS.get(str(attention), str(attention))
    chain = tuple(
        STAGE_LABELS.get(e["stage"], e["stage"].upper()) for e in lineage[:-1]
    )
    method = next(
        (
            METHOD_LABELS.get(e.get("method"), e.get("method"))
            for e in lineage
            if e["stage"] == "sstl_m" and e.get("method")
        ),
        None,
    )
    metrics = target.get("metrics") or {}
    split = held_out_split(metrics)
    scores = metrics.get(split, {})
    leep: dict[str, float] = {}
    sources = ((target.get("transferability") or {}).get("sources")) or {}
    names: list[str] = []  # the chain up to each source, cumulatively
    for name, values in sources.items():
        if name == "untrained":
            label = "w/o TL"
        else:
            names.append(STAGE_LABELS.get(name, name.upper()))
            label = "w " + " w ".join(names)
        if values.get("leep") is not None:
            leep[label] = values["leep"]
    return {
        "run": run_dir,
        "name": os.path.basename(os.path.normpath(run_dir)),
        "seed": target.get("seed"),
        "dataset": dataset,
        "image_size": image_size,
        "group": group,
        "variant": variant,
        "chain": chain,
        "method": method,
        "split": split,
        "scores": scores,
        "leep": leep,
        "leep_split": (target.get("transferability") or {}).get("split"),
    }


def _pct(value: Any) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def _ci(interval: Any) -> str:
    if not interval or None in interval:
        return ""
    return f"[{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"


def _label(chain: tuple[str, ...]) -> str:
    return "w/o TL" if not chain else "w " + " w ".join(chain)


def _variant_key(row: dict[str, Any]) -> tuple:
    variant = row["variant"]
    rank = (
        VARIANT_ORDER.index(variant)
        if variant in VARIANT_ORDER
        else len(VARIANT_ORDER)
    )
    return (row["dataset"], row["image_size"] or 0, row["group"], rank, variant)


def _column(row: dict[str, Any], several: bool) -> str:
    if not several:
        return row["group"]
    return (
        f"{row['group']} {row['dataset'] or '?'} {row['image_size'] or '?'}px"
    )


def _stats(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(
        sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    )


CELL_KEYS = (
    "dataset",
    "image_size",
    "group",
    "variant",
    "chain",
    "method",
    "split",
)


def cells(described: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs of one dataset, image size, group, variant, chain, method and
    split merged into one
    cell: `mean`/`std` per metric over its runs, `n`, `seeds`, `runs`."""
    merged: dict[tuple, list[dict[str, Any]]] = {}
    for row in described:
        merged.setdefault(tuple(row[k] for k in CELL_KEYS), []).append(row)
    out = []
    for key, rows in merged.items():
        cell = dict(zip(CELL_KEYS, key))
        cell["n"] = len(rows)
        cell["seeds"] = tuple(sorted((r["seed"] for r in rows), key=str))
        cell["runs"] = [r["name"] for r in rows]
        cell["mean"], cell["std"] = {}, {}
        for metric, _ in METRICS:
            cell["mean"][metric], cell["std"][metric] = _stats(
                [r["scores"].get(metric) for r in rows]
            )
        cell["ci"] = {
            metric: rows[0]["scores"].get(f"{metric}_ci")
            if len(rows) == 1
            else None
            for metric, _ in METRICS
        }
        out.append(cell)
    return sorted(out, key=_variant_key)


def _value(cell: dict[str, Any], metric: str) -> str:
    mean, std = cell["mean"].get(metric), cell["std"].get(metric)
    if mean is None:
        return ""
    return _pct(mean) if std is None else f"{_pct(mean)} ± {100 * std:.1f}"


def _seeds(cell: dict[str, Any]) -> str:
    return ", ".join(str(s) for s in cell["seeds"])


def _reference(cells_, cell, what: str, **where) -> tuple[dict | None, str]:
    """The cell with `cell`'s dataset, image size, group, seed set and split
    and `where`; or None and why not."""
    setting = dict(
        dataset=cell["dataset"],
        image_size=cell["image_size"],
        group=cell["group"],
    )
    same = dict(**setting, seeds=cell["seeds"], split=cell["split"], **where)
    for other in cells_:
        if all(other[k] == v for k, v in same.items()):
            return other, f"{what}: " + ", ".join(other["runs"])
    near = [
        o
        for o in cells_
        if all(o[k] == v for k, v in {**where, **setting}.items())
    ]
    if near:
        why = "; ".join(
            f"{', '.join(o['runs'])} has seeds {_seeds(o) or '-'} "
            f"on {o['split']}"
            for o in near
        )
        return None, (
            f"no {what} with seeds {_seeds(cell) or '-'} on "
            f"{cell['split']} ({why})"
        )
    return None, f"no {what} run"


def _metric_table(
    cells_, names, reference
) -> tuple[list[str], list[list[str]]]:
    """Value / CI / Improv. columns per metric; `reference(cell)` returns
    `(reference cell or None, what it was compared with)`."""
    header = ["Dataset", "Size", "Group", "Model", "n", "Seeds", "Split"]
    for _, title in METRICS:
        header += [f"{title}", f"{title} 95% CI", f"{title} Improv."]
    header += ["Compared with", "Runs"]
    body = []
    for cell, name in zip(cells_, names):
        ref, compared = reference(cell)
        size = cell["image_size"]
        line = [
            cell["dataset"],
            "" if size is None else str(size),
            cell["group"],
            name,
            str(cell["n"]),
            _seeds(cell),
            split_label(cell["split"]),
        ]
        for key, _ in METRICS:
            value = cell["mean"].get(key)
            line += [_value(cell, key), _ci(cell["ci"].get(key))]
            base = None if ref is None else ref["mean"].get(key)
            line.append(
                ""
                if value is None or base is None
                else f"{100 * (value - base):.1f}"
            )
        body.append(line + [compared, ", ".join(cell["runs"])])
    return header, body


class Transferability(Report):
    """The paper's transferability tables and Fig. 3 from pipeline runs."""

    def report(self, runs: list[str], output_dir: str) -> dict[str, str]:
        described = sorted(
            (describe(r) for r in _run_dirs(runs)), key=_variant_key
        )
        os.makedirs(output_dir, exist_ok=True)
        tables: dict[str, tuple[str, list[str], list[list[str]]]] = {}

        merged = cells(described)
        notes: dict[str, str] = {}
        full_all = [c for c in merged if set(FULL) <= set(c["chain"])]
        table2 = [c for c in full_all if c["method"] == "Ours"]
        if not table2 and full_all:
            notes["table2_overall"] = (
                "No full-chain run with the paper's SSL method (Ours); the "
                "full-chain runs given use "
                + ", ".join(sorted({str(c["method"]) for c in full_all}))
                + " (see Tables 3 and 4)."
            )
        tables["table2_overall"] = (
            "Table 2: overall, pretrained with STL-N, STL-M and SSTL-M (Ours) "
            "(Improv. against the group's Baseline with the same chain, "
            "seeds and split)",
            *_metric_table(
                table2,
                [c["variant"] for c in table2],
                lambda c: _reference(
                    table2,
                    c,
                    "Baseline",
                    variant="Baseline",
                    chain=c["chain"],
                    method=c["method"],
                ),
            ),
        )
        ssl = [c for c in merged if "SSTL-M" in c["chain"] and c["method"]]
        ssl.sort(key=lambda c: (_variant_key(c), c["chain"], str(c["method"])))
        tables["table3_ssl"] = (
            "Table 3: SSL methods (Improv. against MoCo after the same "
            "earlier stages, with the same backbone variant, seeds and split)",
            *_metric_table(
                ssl,
                [
                    f"{c['variant']} {_label(c['chain'])} ({c['method']})"
                    if c["chain"] != FULL
                    else f"{c['variant']} w {c['method']}"
                    for c in ssl
                ],
                lambda c: _reference(
                    ssl,
                    c,
                    "MoCo",
                    variant=c["variant"],
                    chain=c["chain"],
                    method="MoCo",
                ),
            ),
        )
        plain = [c for c in merged if not c["chain"]]
        table4 = sorted(
            plain + full_all,
            key=lambda c: (_variant_key(c), len(c["chain"]), str(c["method"])),
        )
        tables["table4_transfer"] = (
            "Table 4: with vs without transfer learning (Improv. against w/o "
            "TL with the same variant, seeds and split)",
            *_metric_table(
                table4,
                [
                    f"{c['variant']} w TL ({c['method']})"
                    if c["chain"]
                    else f"{c['variant']} w/o TL"
                    for c in table4
                ],
                lambda c: _reference(plain, c, "w/o TL", variant=c["variant"]),
            ),
        )
        single = [
            c for c in merged if c["chain"] in ((), ("STL-N",), ("STL-M",))
        ]
        single.sort(
            key=lambda c: (
                _variant_key(c),
                [(), ("STL-N",), ("STL-M",)].index(c["chain"]),
            )
        )
        tables["table5_stages"] = (
            "Table 5: each supervised stage alone (Improv. against w/o TL "
            "with the same variant, seeds and split)",
            *_metric_table(
                single,
                [f"{c['variant']} {_label(c['chain'])}" for c in single],
                lambda c: _reference(plain, c, "w/o TL", variant=c["variant"]),
            ),
        )
        leep_rows, points = self._leep(described)
        splits = sorted({r["leep_split"] for r in described if r["leep"]})
        where = (
            f"the target's {splits[0]} split"
            if len(splits) == 1
            else (
                "the target split each run scored (" + ", ".join(splits) + ")"
            )
        )
        tables["table6_leep"] = (
            f"Table 6: LEEP on {where} (natural log; Improv. against w/o TL)",
            *leep_rows,
        )
        runs_header = [
            "Run",
            "Seed",
            "Dataset",
            "Size",
            "Group",
            "Model",
            "Pretraining",
            "SSL",
            "Split",
            "Accuracy",
            "Accuracy 95% CI",
            "F1-Score",
            "F1-Score 95% CI",
            "AUC",
            "AUC 95% CI",
            "LEEP",
        ]
        runs_body = [
            [
                r["run"],
                str(r["seed"]),
                r["dataset"],
                "" if r["image_size"] is None else str(r["image_size"]),
                r["group"],
                r["variant"],
                _label(r["chain"]),
                r["method"] or "",
                split_label(r["split"]),
            ]
            + sum(
                (
                    [_pct(r["scores"].get(k)), _ci(r["scores"].get(f"{k}_ci"))]
                    for k, _ in METRICS
                ),
                [],
            )
            + ["; ".join(f"{k}: {v:.3f}" for k, v in r["leep"].items())]
            for r in described
        ]
        tables["runs"] = (
            "All runs (target scores on `test` when it exists, else `val`, "
            "labelled as selected on val)",
            runs_header,
            runs_body,
        )

        written: dict[str, str] = {}
        markdown = ["# Transferability report", ""]
        for name, (title, header, body) in tables.items():
            csv_path = os.path.join(output_dir, f"{name}.csv")
            with open(csv_path, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(header)
                writer.writerows(body)
            text = [f"## {title}", ""]
            if name in notes:
                text += [f"_{notes[name]}_", ""]
            if body:
                text += [
                    "| " + " | ".join(header) + " |",
                    "|" + "---|" * len(header),
                ]
                text += [
                    "| " + " | ".join(str(c) for c in line) + " |"
                    for line in body
                ]
            elif name not in notes:
                text.append("_No runs of this kind were given._")
            md_path = os.path.join(output_dir, f"{name}.md")
            with open(md_path, "w") as f:
                f.write("\n".join(text) + "\n")
            markdown += text + [""]
            written[name] = md_path
        written["fig3_leep"] = self._figure(
            points, os.path.join(output_dir, "fig3_leep.png")
        )
        report_path = os.path.join(output_dir, "report.md")
        with open(report_path, "w") as f:
            f.write("\n".join(markdown) + "\n![Fig. 3](fig3_leep.png)\n")
        with open(os.path.join(output_dir, "report.json"), "w") as f:
            json.dump(
                {
                    "runs": described,
                    "cells": merged,
                    "notes": notes,
                    "files": written,
                },
                f,
                indent=2,
                default=list,
            )
        written["report"] = report_path
        print(f"wrote {report_path} ({len(described)} runs)")
        return written

    @staticmethod
    def _leep(described):
        """Table 6 rows and the Fig. 3 points `{group: {variant: [(label,
        mean leep)]}}`. Each (variant, source) value is the mean +- std over
        the runs that scored it; Improv. the mean of each such run's own
        `leep - leep(w/o TL)` (the same run's untrained network)."""
        several = len({(r["dataset"], r["image_size"]) for r in described}) > 1
        groups = sorted({_column(r, several) for r in described})
        values: dict[tuple[str, str], dict[str, list[float]]] = {}
        paired: dict[tuple[str, str], dict[str, list[float]]] = {}
        runs: dict[tuple[str, str], set[str]] = {}
        order_seen: dict[tuple[str, str], list[str]] = {}
        for r in described:
            base = r["leep"].get("w/o TL")
            column = _column(r, several)
            series = order_seen.setdefault((column, r["variant"]), [])
            for label, value in r["leep"].items():
                key = (r["variant"], label)
                values.setdefault(key, {}).setdefault(column, []).append(value)
                runs.setdefault(key, set()).add(r["name"])
                if base is not None:
                    paired.setdefault(key, {}).setdefault(column, []).append(
                        value - base
                    )
                if label not in series:
                    series.append(label)
        header = (
            ["Model"]
            + sum(([g, f"{g} n", f"{g} Improv."] for g in groups), [])
            + ["Runs"]
        )
        order = sorted(
            values,
            key=lambda k: (
                VARIANT_ORDER.index(k[0]) if k[0] in VARIANT_ORDER else 9,
                k[1] != "w/o TL",
                k[1].count(" w "),
            ),
        )
        body = []
        for variant, label in order:
            line = [f"{variant} {label}"]
            for g in groups:
                mean, std = _stats(values[(variant, label)].get(g, []))
                diff, _ = _stats(paired.get((variant, label), {}).get(g, []))
                n = len(values[(variant, label)].get(g, []))
                shown = (
                    ""
                    if mean is None
                    else (
                        f"{mean:.3f}"
                        if std is None
                        else f"{mean:.3f} ± {std:.3f}"
                    )
                )
                line += [
                    shown,
                    str(n) if n else "",
                    "" if diff is None else f"{diff:+.3f}",
                ]
            body.append(line + [", ".join(sorted(runs[(variant, label)]))])
        points: dict[str, dict[str, list[tuple[str, float]]]] = {}
        for (group, variant), labels in order_seen.items():
            points.setdefault(group, {})[variant] = [
                (label, _stats(values[(variant, label)][group])[0])
                for label in labels
            ]
        return (header, body), points

    @staticmethod
    def _figure(points, path: str) -> str:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt

        groups = sorted(points) or ["(no LEEP)"]
        figure, axes = plt.subplots(
            1, len(groups), figsize=(4.5 * len(groups), 3.6), squeeze=False
        )
        for axis, group in zip(axes[0], groups):
            for variant, series in sorted(
                points.get(group, {}).items(),
                key=lambda kv: (
                    VARIANT_ORDER.index(kv[0]) if kv[0] in VARIANT_ORDER else 9
                ),
            ):
                labels = [label for label, _ in series]
                axis.plot(
                    range(len(series)),
                    [v for _, v in series],
                    marker="o",
                    label=variant,
                )
                axis.set_xticks(range(len(series)), labels, fontsize=8)
            axis.set_title(group)
            axis.set_ylabel("LEEP")
            axis.grid(alpha=0.3)
            if points.get(group):
                axis.legend(fontsize=8)
            else:
                axis.text(
                    0.5,
                    0.5,
                    "no LEEP in these runs",
                    ha="center",
                    transform=axis.transAxes,
                )
        figure.suptitle("Fig. 3: LEEP per stage of transfer")
        figure.tight_layout()
        figure.savefig(path, dpi=110)
        plt.close(figure)
        return path
