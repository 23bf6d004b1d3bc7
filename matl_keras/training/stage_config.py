"""The gin bindings that reach a stage: its config text (what its config
hash covers, `config.gin` and `operative_config.gin`) and the binding in
force for one parameter (named in error messages).

Training reads gin here only; parsing the user's files is `matl_keras.config`.
"""

from __future__ import annotations

import os
import re

import gin
from matl_keras import runs

# Configurables that choose what runs, not how a stage trains: left out of a
# stage's config (adding a stage to `STAGES` must not make the finished
# stages before it look changed).
NOT_STAGE_CONFIG = ("job", "pipeline", "mlflow_tracking")
# A macro reference in gin text: `%NAME`.
MACRO_REF = re.compile(r"%([A-Za-z_][A-Za-z0-9_.]*)")


def stage_config_str(scope: str | None = None, operative: bool = False) -> str:
    """The gin bindings that can reach code running in `scope`.

    That is the unscoped bindings and those whose scopes are all active in
    `scope` (gin's rule), minus `NOT_STAGE_CONFIG`, plus the macros they
    reference (transitively). Two stages of one pipeline file thus get
    different texts, and a stage's text (hence its config hash) changes only
    when something that can affect it changes.

    Uses gin 0.5's `_CONFIG` / `_OPERATIVE_CONFIG` (dicts keyed by
    `(scope, selector)`) and `_config_str`: gin has no public API for one
    scope's bindings. The gin version is pinned in setup.py.
    """
    scope = gin.current_scope_str() if scope is None else scope
    active = set(filter(None, scope.split("/")))
    source = gin.config._OPERATIVE_CONFIG if operative else gin.config._CONFIG
    macros = {
        key: values
        for key, values in gin.config._CONFIG.items()
        if key[1] == "gin.macro"
    }
    kept = {}
    for (key_scope, selector), values in source.items():
        if selector == "gin.macro":
            continue
        if selector.split(".")[-1] in NOT_STAGE_CONFIG:
            continue
        if set(filter(None, key_scope.split("/"))) <= active:
            kept[(key_scope, selector)] = values
    pending = set(MACRO_REF.findall(gin.config._config_str(kept)))
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        seen.add(name)
        key = (name, "gin.macro")
        if key in macros:
            kept[key] = macros[key]
            text = gin.config._config_str({key: macros[key]})
            pending |= set(MACRO_REF.findall(text)) - seen
    return gin.config._config_str(kept)


def binding_in_force(name: str, param: str) -> str:
    """The binding that sets `name.param` in the current gin scope, as a
    user writes it to change the value: with the scope of the most
    specific binding that reaches here (`sstl_m/pretrain.on_bad_image`,
    since `gin/stages/sstl_m.gin` binds it in that scope), unscoped when
    only an unscoped one (or none) does. Rebinding that key wins; a less
    specific one would have no effect.

    Uses gin 0.5's `_CONFIG` (see `stage_config_str`).
    """
    active = set(filter(None, gin.current_scope_str().split("/")))
    best: list[str] = []
    for (key_scope, selector), values in gin.config._CONFIG.items():
        if selector.split(".")[-1] != name or param not in values:
            continue
        parts = list(filter(None, key_scope.split("/")))
        if set(parts) <= active and len(parts) > len(best):
            best = parts
    return "/".join([*best, f"{name}.{param}"])


def save_config(workdir: str, filename: str, operative: bool) -> str:
    """Writes the (operative) gin config of the current scope to
    `workdir/filename`."""
    path = os.path.join(workdir, filename)
    runs.write_text(path, stage_config_str(operative=operative))
    return path
