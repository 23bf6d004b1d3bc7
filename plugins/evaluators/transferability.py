"""`transferability` report: the paper's tables (2-6) and Fig. 3 from a set
of pipeline workdirs.

    matl-keras report --runs=runs/a,runs/b,... --output_dir=reports/paper

Each run is one pipeline workdir (`summary.json`); a folder of such
workdirs may be given instead. From each run it reads the architecture
(group R-<depth>, variant Baseline / 1 ATTN / 5 ATTNs), the pretraining
chain (the stages before the last one, the target), the SSL method, the
target stage's scores (the `test` split when there is one, else `val`; with
their bootstrap intervals) and the LEEP of every source the target stage
scored. It writes, as Markdown and CSV:

- Table 2 (overall): runs pretrained with STL-N, STL-M and SSTL-M;
  Improv. against the group's Baseline.
- Table 3 (SSL methods): runs with SSTL-M, one row per method; Improv.
  against MoCo of the same variant.
- Table 4 (with vs without transfer): w/o TL and all three stages;
  Improv. against w/o TL.
- Table 5 (per supervised stage): w/o TL, w STL-N, w STL-M alone;
  Improv. against w/o TL.
- Table 6 (LEEP): w/o TL (the untrained network), w STL-N, w STL-N w STL-M
  (cumulative, as the target stage scored each source); Improv. against
  w/o TL. Fig. 3 plots it per group.
- `runs`: every run with everything above.

Values are percentages with one decimal, as in the paper; Improv. is a
difference in percentage points (LEEP: in LEEP units). A cell without data
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
import os
from typing import Any

from matl_keras.errors import ConfigError
from matl_keras.evaluation.evaluator import ReportEvaluator
from matl_keras.training.workdir import SUMMARY_FILE

STAGE_LABELS = {"stl_n": "STL-N", "stl_m": "STL-M", "sstl_m": "SSTL-M"}
METHOD_LABELS = {"MoCo": "MoCo", "SimCLR": "SimCLR", "RegionAware": "Ours"}
VARIANT_LABELS = {"none": "Baseline", "1": "1 ATTN", "5": "5 ATTNs"}
VARIANT_ORDER = ["Baseline", "1 ATTN", "5 ATTNs"]
METRICS = (("accuracy", "Accuracy"), ("f1", "F1-Score"), ("auc", "AUC"))
FULL = ("STL-N", "STL-M", "SSTL-M")


def _run_dirs(runs: list[str]) -> list[str]:
    found = []
    for path in runs:
        if os.path.isfile(os.path.join(path, SUMMARY_FILE)):
            found.append(path)
        elif os.path.isdir(path):
            inside = sorted(
                os.path.join(path, d) for d in os.listdir(path)
                if os.path.isfile(os.path.join(path, d, SUMMARY_FILE))
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


def describe(run_dir: str) -> dict[str, Any]:
    """The facts of one pipeline run that the tables need."""
    with open(os.path.join(run_dir, SUMMARY_FILE)) as f:
        summary = json.load(f)
    lineage = summary.get("lineage") or []
    if summary.get("status") != "complete" or not lineage:
        raise ConfigError(
            f"--runs: {run_dir!r} is not a complete pipeline run "
            f"(status {summary.get('status')!r}); finish or leave it out"
        )
    target = lineage[-1]
    # The target stage's own record: its input size and data folder.
    stage_run: dict[str, Any] = {}
    run_json = os.path.join(run_dir, target.get("workdir") or "", "run.json")
    if os.path.isfile(run_json):
        with open(run_json) as f:
            stage_run = json.load(f)
    dataset = target.get("dataset") or stage_run.get("dataset") or ""
    if stage_run.get("dataset_root"):
        dataset = f"{dataset} {stage_run['dataset_root']}"
    image_size = (stage_run.get("preprocessing") or {}).get("image_size")
    arch = target.get("architecture") or {}
    depth, width = arch.get("depth"), arch.get("width_multiplier", 1.0)
    group = f"R-{depth}" + ("" if width in (None, 1, 1.0) else f"x{width:g}")
    attention = arch.get("attention", "none")
    variant = VARIANT_LABELS.get(str(attention), str(attention))
    chain = tuple(STAGE_LABELS.get(e["stage"], e["stage"].upper()) for e in lineage[:-1])
    method = next(
        (METHOD_LABELS.get(e.get("method"), e.get("method")) for e in lineage
         if e["stage"] == "sstl_m" and e.get("method")),
        None,
    )
    metrics = target.get("metrics") or {}
    split = "test" if "test" in metrics else "val"
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
        "run": run_dir, "dataset": dataset, "image_size": image_size,
        "group": group, "variant": variant, "chain": chain,
        "method": method, "split": split, "scores": scores, "leep": leep,
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
    rank = VARIANT_ORDER.index(variant) if variant in VARIANT_ORDER else len(VARIANT_ORDER)
    return (row["dataset"], row["image_size"] or 0, row["group"], rank, variant)


def _same(row: dict[str, Any]) -> dict[str, Any]:
    """What a reference row must share with `row` for an Improv."""
    return {"dataset": row["dataset"], "image_size": row["image_size"],
            "group": row["group"]}


def _column(row: dict[str, Any], several: bool) -> str:
    if not several:
        return row["group"]
    return f"{row['group']} {row['dataset'] or '?'} {row['image_size'] or '?'}px"


def _metric_table(rows, names, reference) -> tuple[list[str], list[list[str]]]:
    """Value / CI / Improv. columns per metric; `reference(row)` is the row
    its Improv. is measured against (None: no Improv.)."""
    header = ["Dataset", "Size", "Group", "Model"]
    for _, title in METRICS:
        header += [f"{title}", f"{title} 95% CI", f"{title} Improv."]
    body = []
    for row, name in zip(rows, names):
        ref = reference(row)
        size = row["image_size"]
        line = [row["dataset"], "" if size is None else str(size), row["group"], name]
        for key, _ in METRICS:
            value = row["scores"].get(key)
            line += [_pct(value), _ci(row["scores"].get(f"{key}_ci"))]
            base = None if ref is None else ref["scores"].get(key)
            line.append("" if value is None or base is None else f"{100 * (value - base):.1f}")
        body.append(line)
    return header, body


def _first(rows, **where):
    for row in rows:
        if all(row[k] == v for k, v in where.items()):
            return row
    return None


class Transferability(ReportEvaluator):
    """The paper's transferability tables and Fig. 3 from pipeline runs."""

    def report(self, runs: list[str], output_dir: str) -> dict[str, str]:
        described = sorted((describe(r) for r in _run_dirs(runs)), key=_variant_key)
        os.makedirs(output_dir, exist_ok=True)
        tables: dict[str, tuple[str, list[str], list[list[str]]]] = {}

        full = [r for r in described if set(FULL) <= set(r["chain"])]
        methods = {r["method"] for r in full}
        table2 = [r for r in full if r["method"] == "Ours"] if "Ours" in methods else full
        tables["table2_overall"] = (
            "Table 2: overall, pretrained with STL-N, STL-M and SSTL-M "
            "(Improv. against the group's Baseline)",
            *_metric_table(
                table2, [r["variant"] for r in table2],
                lambda r: _first(table2, **_same(r), variant="Baseline"),
            ),
        )
        ssl = [r for r in described if "SSTL-M" in r["chain"] and r["method"]]
        tables["table3_ssl"] = (
            "Table 3: SSL methods after the same supervised stages "
            "(Improv. against MoCo)",
            *_metric_table(
                ssl, [f"{r['variant']} w {r['method']}" for r in ssl],
                lambda r: _first(ssl, **_same(r), variant=r["variant"], method="MoCo"),
            ),
        )
        plain = [r for r in described if not r["chain"]]
        table4 = sorted(plain + full, key=lambda r: (_variant_key(r), len(r["chain"])))
        tables["table4_transfer"] = (
            "Table 4: with vs without transfer learning (Improv. against w/o TL)",
            *_metric_table(
                table4,
                [f"{r['variant']} {'w TL' if r['chain'] else 'w/o TL'}" for r in table4],
                lambda r: _first(plain, **_same(r), variant=r["variant"]),
            ),
        )
        single = [r for r in described if r["chain"] in ((), ("STL-N",), ("STL-M",))]
        single.sort(key=lambda r: (_variant_key(r), [(), ("STL-N",), ("STL-M",)].index(r["chain"])))
        tables["table5_stages"] = (
            "Table 5: each supervised stage alone (Improv. against w/o TL)",
            *_metric_table(
                single, [f"{r['variant']} {_label(r['chain'])}" for r in single],
                lambda r: _first(plain, **_same(r), variant=r["variant"]),
            ),
        )
        leep_rows, points = self._leep(described)
        splits = sorted({r["leep_split"] for r in described if r["leep"]})
        where = f"the target's {splits[0]} split" if len(splits) == 1 else (
            "the target split each run scored (" + ", ".join(splits) + ")")
        tables["table6_leep"] = (
            f"Table 6: LEEP on {where} (natural log; Improv. against w/o TL)",
            *leep_rows,
        )
        runs_header = ["Run", "Dataset", "Size", "Group", "Model", "Pretraining", "SSL", "Split",
                       "Accuracy", "Accuracy 95% CI", "F1-Score", "F1-Score 95% CI",
                       "AUC", "AUC 95% CI", "LEEP"]
        runs_body = [
            [r["run"], r["dataset"], "" if r["image_size"] is None else str(r["image_size"]),
             r["group"], r["variant"], _label(r["chain"]), r["method"] or "",
             r["split"]]
            + sum(([_pct(r["scores"].get(k)), _ci(r["scores"].get(f"{k}_ci"))] for k, _ in METRICS), [])
            + ["; ".join(f"{k}: {v:.3f}" for k, v in r["leep"].items())]
            for r in described
        ]
        tables["runs"] = ("All runs (target scores on `test` when it exists, else `val`)",
                          runs_header, runs_body)

        written: dict[str, str] = {}
        markdown = ["# Transferability report", ""]
        for name, (title, header, body) in tables.items():
            csv_path = os.path.join(output_dir, f"{name}.csv")
            with open(csv_path, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(header)
                writer.writerows(body)
            text = [f"## {title}", ""]
            if body:
                text += ["| " + " | ".join(header) + " |",
                         "|" + "---|" * len(header)]
                text += ["| " + " | ".join(str(c) for c in line) + " |" for line in body]
            else:
                text.append("_No runs of this kind were given._")
            md_path = os.path.join(output_dir, f"{name}.md")
            with open(md_path, "w") as f:
                f.write("\n".join(text) + "\n")
            markdown += text + [""]
            written[name] = md_path
        written["fig3_leep"] = self._figure(points, os.path.join(output_dir, "fig3_leep.png"))
        report_path = os.path.join(output_dir, "report.md")
        with open(report_path, "w") as f:
            f.write("\n".join(markdown) + "\n![Fig. 3](fig3_leep.png)\n")
        with open(os.path.join(output_dir, "report.json"), "w") as f:
            json.dump({"runs": described, "files": written}, f, indent=2, default=list)
        written["report"] = report_path
        print(f"wrote {report_path} ({len(described)} runs)")
        return written

    @staticmethod
    def _leep(described):
        """Table 6 rows and the Fig. 3 points `{group: {variant: [(label, leep)]}}`."""
        several = len({(r["dataset"], r["image_size"]) for r in described}) > 1
        groups = sorted({_column(r, several) for r in described})
        values: dict[tuple[str, str], dict[str, float]] = {}
        points: dict[str, dict[str, list[tuple[str, float]]]] = {}
        for r in described:
            column = _column(r, several)
            for label, value in r["leep"].items():
                values.setdefault((r["variant"], label), {}).setdefault(column, value)
                series = points.setdefault(column, {}).setdefault(r["variant"], [])
                if label not in [p[0] for p in series]:
                    series.append((label, value))
        header = ["Model"] + sum(([g, f"{g} Improv."] for g in groups), [])
        order = sorted(values, key=lambda k: (
            VARIANT_ORDER.index(k[0]) if k[0] in VARIANT_ORDER else 9, k[1] != "w/o TL", k[1].count(" w ")))
        body = []
        for variant, label in order:
            line = [f"{variant} {label}"]
            for g in groups:
                value = values[(variant, label)].get(g)
                base = values.get((variant, "w/o TL"), {}).get(g)
                line += ["" if value is None else f"{value:.3f}",
                         "" if value is None or base is None else f"{value - base:+.3f}"]
            body.append(line)
        return (header, body), points

    @staticmethod
    def _figure(points, path: str) -> str:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt

        groups = sorted(points) or ["(no LEEP)"]
        figure, axes = plt.subplots(1, len(groups), figsize=(4.5 * len(groups), 3.6), squeeze=False)
        for axis, group in zip(axes[0], groups):
            for variant, series in sorted(points.get(group, {}).items(), key=lambda kv: (
                    VARIANT_ORDER.index(kv[0]) if kv[0] in VARIANT_ORDER else 9)):
                labels = [label for label, _ in series]
                axis.plot(range(len(series)), [v for _, v in series], marker="o", label=variant)
                axis.set_xticks(range(len(series)), labels, fontsize=8)
            axis.set_title(group)
            axis.set_ylabel("LEEP")
            axis.grid(alpha=0.3)
            if points.get(group):
                axis.legend(fontsize=8)
            else:
                axis.text(0.5, 0.5, "no LEEP in these runs", ha="center", transform=axis.transAxes)
        figure.suptitle("Fig. 3: LEEP per stage of transfer")
        figure.tight_layout()
        figure.savefig(path, dpi=110)
        plt.close(figure)
        return path
