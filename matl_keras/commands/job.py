"""`matl-keras --gin_file=...`: run the job the gin files configure."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from matl_keras import config
from matl_keras import registry as registry_lib
from matl_keras import runs
from matl_keras.training import strategies


def default_workdir(gin_files: Sequence[str]) -> str:
    """`runs/<name of the last gin file>`."""
    return os.path.join(
        "runs", os.path.splitext(os.path.basename(gin_files[-1]))[0]
    )


def run_job(
    gin_files: Sequence[str],
    gin_params: Sequence[str] = (),
    workdir: str | None = None,
) -> Any:
    """Parses the gin files and bindings and runs the configured `job` in
    `workdir` (default: `default_workdir`); the chief holds the workdir's
    lock for the whole job (every stage of a pipeline).

    Raises:
        ConfigError: bad gin; a workdir another job holds.
    """
    # First, before any TensorFlow op: multi-worker collectives can only be
    # configured at program start.
    strategies.start_multi_worker_from_env()
    config.parse(gin_files, gin_params, registry_lib.default_registry())
    workdir = workdir or default_workdir(gin_files)
    print(f"workdir: {workdir}", flush=True)
    # Released when the job ends, not at the interpreter's exit: a job run
    # from Python (a notebook, a tool, a test) leaves the workdir free for
    # the next command.
    with runs.locked(workdir, take=strategies.chief_from_env()):
        job = config.configured("job")()
        return job(workdir=workdir)
