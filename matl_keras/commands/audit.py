"""`matl-keras audit`: the leakage audit of a dataset plugin's splits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from matl_keras import registry as registry_lib
from matl_keras.evaluation import audit as audit_lib


def audit(
    dataset: str,
    splits: Sequence[str] | None = None,
    on_leak: str = "warn",
    output: str | None = None,
) -> dict[str, Any]:
    """Audits `dataset` (a plugin name; gin bindings apply) for duplicates
    and patients across `splits` (None: all), prints the findings and
    writes `output` (JSON) when given.

    Raises:
        DataError: a leak, with `on_leak="refuse"`.
    """
    plugin = registry_lib.resolve("datasets", dataset, "--dataset")
    return audit_lib.run(plugin, splits or None, on_leak, output)
