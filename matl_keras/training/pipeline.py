"""A chain of stages, each starting from the previous stage's backbone.

    STAGES = ['stl_n', 'stl_m', 'finetune']
    pipeline.stages = %STAGES
    stl_n/stage.fn = @train
    stl_n/train.dataset = %NATURAL_DATA
    ...

Every stage runs inside the gin scope of its name, so `stl_m/train.epochs =
30` configures that stage alone while unscoped bindings (`train.image_size`)
reach all of them. A stage writes into `WORKDIR/<stage>/` and passes its
`backbone.weights.h5` to the next one as `init_backbone`.

A stage function is any gin configurable called as
`fn(workdir=..., init_backbone=...)` (plus `sources=[{"stage", "workdir"},
...]`, the earlier stages, when it takes that argument: `train` scores their
transferability) that writes, in its workdir, `run.json`
(with `status`, `config_hash`, `seed`) and `backbone.weights.h5`, and returns
its metrics (`supervised.train` does; the SSL stage does too). A stage whose
run is complete for the same config returns at once, so running the same
command again skips the finished stages and resumes the interrupted one.

`WORKDIR/summary.json` records the lineage: for each stage its workdir,
function, config hash, seed, dataset, the weights it started from (path and
content hash) and the weights it produced, and its metrics.
"""

from __future__ import annotations

import inspect
import os
import re
import time
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import gin
from matl_keras import runs
from matl_keras.errors import ConfigError
from matl_keras.training import workdir as workdir_lib

_STAGE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def stage(fn: Callable[..., Any] | None = None) -> Callable[..., Any]:
    """Returns the function of the stage whose gin scope is active
    (gin: `stl_m/stage.fn = @train`)."""
    if fn is None:
        scope = gin.current_scope_str() or "<stage>"
        raise ConfigError(
            f"stage {scope!r} has no function: bind `{scope}/stage.fn` "
            "(e.g. `@train`, as gin/stages/*.gin do), or remove it from "
            "STAGES"
        )
    return fn


# Configurable as `stage` in gin, registered here on the definition; Python
# callers get the plain function (its errors without gin's call notes).
gin.external_configurable(stage, name="stage")


def _check_stages(stages: Sequence[str]) -> list[str]:
    if isinstance(stages, str) or not stages:
        raise ConfigError(
            "`pipeline.stages` (STAGES) must be a non-empty list of stage "
            f"names, e.g. ['stl_m', 'finetune']. Received: {stages!r}"
        )
    names = list(stages)
    for name in names:
        if not isinstance(name, str) or not _STAGE_NAME.fullmatch(name):
            raise ConfigError(
                f"stage names must be identifiers (they are gin scopes and "
                f"folder names). Received: {name!r} in STAGES={names!r}"
            )
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(
            f"STAGES names {duplicates} more than once: each stage has one "
            f"workdir. Received: STAGES={names!r}"
        )
    return names


def _stage_entry(
    name: str,
    stage_dir: str,
    fn: Callable[..., Any],
    metrics: Any,
    seconds: float,
    workdir: str,
) -> dict[str, Any]:
    run_path = os.path.join(stage_dir, runs.RUN_FILE)
    run = runs.read_json(run_path) if os.path.exists(run_path) else {}
    backbone = os.path.join(stage_dir, runs.BACKBONE_FILE)
    if not os.path.isfile(backbone):
        raise ConfigError(
            f"stage {name!r} finished without writing {backbone!r}: a stage "
            "function must save its backbone there for the next stage"
        )
    init = run.get("init_backbone")
    if init:
        init = dict(init, path=os.path.relpath(init["path"], workdir))
    return {
        "stage": name,
        "function": getattr(fn, "__name__", repr(fn)),
        "workdir": os.path.relpath(stage_dir, workdir),
        "status": run.get("status"),
        "config_hash": run.get("config_hash"),
        "seed": run.get("seed"),
        "dataset": run.get("dataset"),
        "class_names": run.get("class_names"),
        "init_backbone": init,
        "backbone": {
            "path": os.path.relpath(backbone, workdir),
            "sha256": runs.file_sha256(backbone),
        },
        "architecture": run.get("architecture"),
        "method": run.get("method"),
        "kept": run.get("kept"),
        "metrics": _scalars(metrics),
        "transferability": _transfer_scalars(run.get("transferability")),
        "train_seconds": run.get("train_seconds"),
        "train_images_per_second": run.get("train_images_per_second"),
        "seconds_this_invocation": round(seconds, 2),
    }


def _scalars(metrics: Any) -> Any:
    """Per split, the numbers and intervals (not ROC points or matrices:
    those stay in the stage's metrics.json)."""
    if not isinstance(metrics, dict):
        return metrics
    return {
        split: {k: v for k, v in values.items() if not isinstance(v, dict)}
        if isinstance(values, dict)
        else values
        for split, values in metrics.items()
    }


def _transfer_scalars(record: Any) -> Any:
    if not record:
        return None
    return {
        "target": record.get("target"),
        "split": record.get("split"),
        "num_examples": record.get("num_examples"),
        "sources": {
            name: {k: v for k, v in values.items() if k != "workdir"}
            for name, values in record.get("sources", {}).items()
        },
    }


def _accepts_sources(fn: Callable[..., Any]) -> bool:
    try:
        return "sources" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def pipeline(
    workdir: str, stages: Sequence[str] = ("finetune",)
) -> dict[str, Any]:
    """Runs `stages` in order; each starts from the previous one's backbone.

    Args:
        workdir: str. Output folder; stage `s` writes `workdir/s/`.
        stages: sequence of str. Stage names (gin scopes), e.g.
            `['stl_n', 'stl_m', 'finetune']`; any ordered subset.

    Returns:
        The content of `summary.json`.
    """
    from matl_keras.training import strategies

    names = _check_stages(stages)
    runs.prepare(workdir)
    # In a multi-worker run the chief writes the summary; every worker runs
    # the stages (and reads the chief's backbones, complete when a stage's
    # `train`/`pretrain` returns: see `workdir.finish`).
    chief = strategies.chief_from_env()
    summary_path = os.path.join(workdir, runs.SUMMARY_FILE)
    summary: dict[str, Any] = {
        "stages": names,
        "status": "running",
        "started": runs.now(),
        "versions": workdir_lib.versions(),
        "lineage": [],
    }
    # Every stage function must exist before the first one trains for hours.
    functions = []
    for name in names:
        with gin.config_scope(name):
            functions.append(gin.get_configurable(stage)())
    previous = None
    for index, (name, fn) in enumerate(zip(names, functions), start=1):
        stage_dir = os.path.join(workdir, name)
        origin = f"from {previous}" if previous else "from scratch"
        print(
            f"== stage {index}/{len(names)}: {name} ({origin}) -> {stage_dir}",
            flush=True,
        )
        start = time.perf_counter()
        kwargs = {}
        if _accepts_sources(fn):
            # The earlier stages, to score their transferability to this one.
            kwargs["sources"] = [
                {
                    "stage": entry["stage"],
                    "workdir": os.path.join(workdir, entry["workdir"]),
                }
                for entry in summary["lineage"]
            ]
        with gin.config_scope(name):
            metrics = fn(workdir=stage_dir, init_backbone=previous, **kwargs)
        summary["lineage"].append(
            _stage_entry(
                name,
                stage_dir,
                fn,
                metrics,
                time.perf_counter() - start,
                workdir,
            )
        )
        if chief:
            runs.write_json(summary_path, summary)
        previous = os.path.join(stage_dir, runs.BACKBONE_FILE)
    summary.update(status="complete", finished=runs.now())
    if chief:
        runs.write_json(summary_path, summary)
        print(f"wrote {summary_path}", flush=True)
    return summary


# Configurable as `pipeline` in gin, registered here on the definition; Python
# callers get the plain function (its errors without gin's call notes).
gin.external_configurable(pipeline, name="pipeline")
