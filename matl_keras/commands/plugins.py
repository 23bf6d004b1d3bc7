"""`matl-keras plugins`: every installed plugin by group, and its status."""

from __future__ import annotations

import json
from typing import Any

from matl_keras import registry as registry_lib


def plugins_report(check: bool = False) -> dict[str, dict[str, Any]]:
    """`{group: {name: info}}` of every plugin, from entry-point metadata
    only, or imported and checked with `check` (which imports each plugin:
    the caller imports TensorFlow first)."""
    registry = registry_lib.default_registry()
    report = {}
    for group in registry_lib.GROUPS:
        infos = registry.load_all(group) if check else registry.infos(group)
        report[group] = {name: info.as_dict() for name, info in infos.items()}
    return report


def list_plugins(as_json: bool = False, check: bool = False) -> None:
    """Prints `plugins_report` as a table per group, or as JSON."""
    report = plugins_report(check)
    if as_json:
        print(json.dumps(report, indent=2))
        return
    for group, infos in report.items():
        print(group)
        if not infos:
            print("  (none installed)")
        for name, info in infos.items():
            print(
                f"  {name:<20} {info['status']:<10} "
                f"{info['dist']} {info['version']}  ({info['value']})"
            )
            if info["error"]:
                print(f"      error: {info['error']}")
    if not check:
        print(
            "(not loaded: `matl-keras plugins --check` imports each one "
            "and reports the broken ones)"
        )
