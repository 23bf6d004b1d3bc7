"""`matl-keras report`: tables over finished runs, and the report contract.

A report is a command over runs, not an evaluator of a model: it reads the
files of finished pipeline workdirs (through `matl_keras.runs`) and writes
tables, where an evaluator scores one model on one split. Report plugins
register in their own entry-point group, `matl_keras.reports`:

    [project.entry-points."matl_keras.reports"]
    my_tables = "my_pkg.tables:MyTables"

    matl-keras report --report=my_tables --runs=runs/a,runs/b
"""

from __future__ import annotations

import abc
import os
from collections.abc import Sequence
from typing import ClassVar

from matl_keras import PLUGIN_API_VERSION
from matl_keras import registry as registry_lib


class Report(abc.ABC):
    """Base class of report plugins (entry-point group `matl_keras.reports`).

    Example:
    ```python
    class RunCount(Report):
        def report(self, runs, output_dir):
            path = os.path.join(output_dir, "count.txt")
            os.makedirs(output_dir, exist_ok=True)
            with open(path, "w") as f:
                f.write(f"{len(runs)}\\n")
            return {"count": path}
    ```
    """

    api_version: ClassVar[int] = PLUGIN_API_VERSION

    @abc.abstractmethod
    def report(self, runs: list[str], output_dir: str) -> dict[str, str]:
        """Writes the report for pipeline workdirs `runs` (or folders of
        them) into `output_dir`; returns `{what: path}` of the files
        written."""


def report(
    name: str, runs: Sequence[str], output_dir: str | None = None
) -> dict[str, str]:
    """Runs report plugin `name` over `runs` into `output_dir` (default:
    `reports/<name>`); returns what it wrote.

    Raises:
        PluginError: `name` is no installed report (an evaluator's name
            says so).
    """
    plugin = registry_lib.resolve("reports", name, "--report")
    return plugin.report(
        list(runs), output_dir or os.path.join("reports", name)
    )
