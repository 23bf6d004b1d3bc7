"""Plugin discovery through entry points.

Four groups, one base class each:

| group                   | base class                                  |
|-------------------------|---------------------------------------------|
| `matl_keras.datasets`    | `matl_keras.data.dataset.Dataset`            |
| `matl_keras.ssl_methods` | `matl_keras.training.ssl_method.SSLMethod`   |
| `matl_keras.evaluators`  | `matl_keras.evaluation.evaluator.Evaluator`  |
| `matl_keras.reports`     | `matl_keras.commands.report.Report`          |

An evaluator scores one model on one split (inside a stage or `matl-keras
evaluate`); a report is a command over finished runs (`matl-keras report`).

Discovery reads entry-point metadata only; a plugin's module is imported the
first time it is used (`load`, `create`) or listed (`load_all`). Built-in
plugins (`matl_keras_plugins`) come through the same groups as third-party
ones and get no special treatment.

Failure isolation: a plugin that fails to import, is not a subclass of its
group's base class, or declares an unsupported `api_version` is recorded with
its distribution, version and the error. Other plugins keep working; asking
for the broken one by name raises `PluginError` with the reason and the fix.

Duplicate names: two distributions that register the same name in one group
make that name unusable (`PluginError` names both distributions) until one is
uninstalled. Silently preferring either one would make a run's result depend
on install order, which a reproducible pipeline must not allow.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
from collections.abc import Callable
from collections.abc import Iterable
from typing import Any

from matl_keras import SUPPORTED_PLUGIN_API_VERSIONS
from matl_keras.errors import PluginError

# group key -> (entry point group, "module:Base", noun for messages)
GROUPS: dict[str, tuple[str, str, str]] = {
    "datasets": (
        "matl_keras.datasets",
        "matl_keras.data.dataset:Dataset",
        "dataset",
    ),
    "ssl_methods": (
        "matl_keras.ssl_methods",
        "matl_keras.training.ssl_method:SSLMethod",
        "SSL method",
    ),
    "evaluators": (
        "matl_keras.evaluators",
        "matl_keras.evaluation.evaluator:Evaluator",
        "evaluator",
    ),
    "reports": (
        "matl_keras.reports",
        "matl_keras.commands.report:Report",
        "report",
    ),
}

OK = "ok"
ERROR = "error"
NOT_LOADED = "not loaded"


@dataclasses.dataclass
class PluginInfo:
    """What is known about one plugin name in one group.

    Args:
        group: str. Group key (`"datasets"`, `"ssl_methods"`,
            `"evaluators"`, `"reports"`).
        name: str. Entry-point name, the name users write in gin.
        value: str. The entry point's `module:attr`.
        dist: str. Distribution that provides it (several, comma separated,
            for a duplicate name).
        version: str. That distribution's version.
        status: str. `"ok"`, `"error"` or `"not loaded"`.
        error: str or None. Why it cannot be used.
        obj: the loaded class, once loaded successfully.
        factory: what `Registry.create` calls (the gin-configurable class
            when the registry has an `on_load` hook, else `obj`).
    """

    group: str
    name: str
    value: str
    dist: str
    version: str
    status: str = NOT_LOADED
    error: str | None = None
    obj: Any = None
    factory: Any = None
    duplicate: bool = False
    _entry_point: Any = dataclasses.field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dist": self.dist,
            "version": self.version,
            "status": self.status,
            "error": self.error,
            "value": self.value,
        }


def _import_object(path: str) -> Any:
    module, _, attr = path.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _dist_of(entry_point: Any) -> tuple[str, str]:
    dist = getattr(entry_point, "dist", None)
    if dist is None:
        return "unknown", "unknown"
    return dist.metadata["Name"] or dist.name, dist.version or "unknown"


class Registry:
    """Finds, loads and checks plugins.

    Args:
        entry_points: callable. `importlib.metadata.entry_points`-compatible
            function taking `group=`; tests pass fakes.
        on_load: callable or None. Called with every successfully loaded
            `PluginInfo`; what it returns (if not None) becomes the plugin's
            factory (the CLI makes plugins gin-configurable this way).
    """

    def __init__(
        self,
        entry_points: Callable[..., Iterable[Any]] | None = None,
        on_load: Callable[[PluginInfo], None] | None = None,
    ) -> None:
        self._entry_points = entry_points or importlib.metadata.entry_points
        self._on_load = on_load
        self._infos: dict[str, dict[str, PluginInfo]] = {}

    # --- discovery (metadata only) -------------------------------------
    def infos(self, group: str) -> dict[str, PluginInfo]:
        """Every plugin name of `group`, without importing anything."""
        _check_group(group)
        if group not in self._infos:
            self._infos[group] = self._discover(group)
        return self._infos[group]

    def _discover(self, group: str) -> dict[str, PluginInfo]:
        ep_group, _, noun = GROUPS[group]
        found: dict[str, list[PluginInfo]] = {}
        for ep in self._entry_points(group=ep_group):
            dist, version = _dist_of(ep)
            info = PluginInfo(group, ep.name, ep.value, dist, version)
            info._entry_point = ep
            same = found.setdefault(ep.name, [])
            # The same distribution seen twice (e.g. on two sys.path entries)
            # is one plugin, not a conflict.
            if not any(i.dist == dist and i.value == ep.value for i in same):
                same.append(info)
        infos = {}
        for name, candidates in sorted(found.items()):
            if len(candidates) == 1:
                infos[name] = candidates[0]
                continue
            providers = ", ".join(
                f"{c.dist} {c.version} ({c.value})" for c in candidates
            )
            infos[name] = PluginInfo(
                group,
                name,
                value=", ".join(c.value for c in candidates),
                dist=", ".join(c.dist for c in candidates),
                version=", ".join(c.version for c in candidates),
                status=ERROR,
                duplicate=True,
                error=(
                    f'the {noun} name "{name}" is registered by several '
                    f"distributions: {providers}. Uninstall all but one "
                    "(pip uninstall NAME) so that runs do not depend on "
                    "install order."
                ),
            )
        return infos

    def names(self, group: str) -> list[str]:
        return sorted(self.infos(group))

    # --- loading ---------------------------------------------------------
    def load(self, group: str, name: str) -> Any:
        """Imports and checks plugin `name` of `group`; returns its class.

        Raises:
            PluginError: unknown name, or the plugin is broken (the message
                names its distribution, the failure and how to fix it).
        """
        infos = self.infos(group)
        noun = GROUPS[group][2]
        if name not in infos:
            available = ", ".join(self.names(group)) or "(none installed)"
            raise PluginError(
                f'The {noun} "{name}" is not installed. Available: '
                f"{available}.{self._other_group_hint(group, name)}"
            )
        info = infos[name]
        if info.status == NOT_LOADED:
            self._load_info(info)
        if info.status == ERROR:
            raise PluginError(_broken_message(info))
        return info.obj

    def _other_group_hint(self, group: str, name: str) -> str:
        """Says so when `name` is a plugin of another group (an evaluator
        asked for as a report, or the reverse): metadata only."""
        for other, (ep_group, base, noun) in GROUPS.items():
            if other != group and name in self.infos(other):
                wanted_group, wanted_base, wanted = GROUPS[group]
                return (
                    f' "{name}" is {_article(noun)} {noun} (entry-point '
                    f"group {ep_group}), not {_article(wanted)} {wanted}: "
                    f"{_article(wanted)} {wanted} subclasses "
                    f"{wanted_base.replace(':', '.')} and registers in "
                    f"{wanted_group}."
                )
        return ""

    def load_all(self, group: str) -> dict[str, PluginInfo]:
        """Loads every plugin of `group`, recording (not raising) failures."""
        for info in self.infos(group).values():
            if info.status == NOT_LOADED:
                self._load_info(info)
        return self.infos(group)

    def _load_info(self, info: PluginInfo) -> None:
        base = _import_object(GROUPS[info.group][1])
        noun = GROUPS[info.group][2]
        try:
            obj = info._entry_point.load()
        except Exception as e:  # noqa: BLE001 - any import failure isolates.
            info.status, info.error = ERROR, f"{type(e).__name__}: {e}"
            return
        if not (isinstance(obj, type) and issubclass(obj, base)):
            info.status = ERROR
            info.error = (
                f"{info.value} is {obj!r}, not a subclass of "
                f"{base.__module__}.{base.__qualname__} (every {noun} "
                "plugin must subclass it)"
            )
            return
        api = getattr(obj, "api_version", None)
        if api not in SUPPORTED_PLUGIN_API_VERSIONS:
            info.status = ERROR
            info.error = (
                f"{info.value} declares api_version={api!r}; this matl-keras "
                f"supports {list(SUPPORTED_PLUGIN_API_VERSIONS)}"
            )
            return
        # A base class may check more of its contract than subclassing
        # (SSLMethod: the members the stage calls).
        missing = getattr(obj, "missing_members", lambda: [])()
        if missing:
            info.status = ERROR
            info.error = (
                f"{info.value} does not implement the {noun} contract of "
                f"{base.__module__}.{base.__qualname__}; missing: "
                + "; ".join(missing)
            )
            return
        info.status, info.obj, info.factory = OK, obj, obj
        if self._on_load is not None:
            info.factory = self._on_load(info) or obj

    def create(self, group: str, name: str, **kwargs: Any) -> Any:
        """Instantiates plugin `name`; gin bindings for it apply."""
        self.load(group, name)
        return self.infos(group)[name].factory(**kwargs)


def _check_group(group: str) -> None:
    if group not in GROUPS:
        raise ValueError(
            f"`group` must be one of {sorted(GROUPS)}. "
            f"Received: group={group!r}"
        )


def _article(noun: str) -> str:
    return "an" if noun[0] in "aeiou" else "a"


def _broken_message(info: PluginInfo) -> str:
    noun = GROUPS[info.group][2]
    if info.duplicate:
        return f"The {info.error[4:]}"
    return (
        f'The {noun} "{info.name}" from distribution "{info.dist}" '
        f"{info.version} cannot be used: {info.error}. To fix it, repair or "
        f"reinstall that distribution (pip install --force-reinstall "
        f"{info.dist.split(',')[0]}); to disable it, uninstall it "
        f"(pip uninstall {info.dist.split(',')[0]})."
    )


_DEFAULT: Registry | None = None
# What `default_registry` calls with every plugin it loads (`Registry`'s
# `on_load`): `matl_keras.config` adds the plugin -> gin hook when it is
# imported, so this module imports nothing above it.
_LOAD_HOOKS: list[Callable[[PluginInfo], Any]] = []


def add_load_hook(hook: Callable[[PluginInfo], Any]) -> None:
    """Calls `hook` with every plugin the default registry loads (and has
    loaded); what it returns (if not None) becomes the plugin's factory."""
    if hook in _LOAD_HOOKS:
        return
    _LOAD_HOOKS.append(hook)
    if _DEFAULT is not None:
        for infos in _DEFAULT._infos.values():
            for info in infos.values():
                if info.status == OK:
                    info.factory = hook(info) or info.factory


def _run_load_hooks(info: PluginInfo) -> Any:
    factory = None
    for hook in _LOAD_HOOKS:
        factory = hook(info) or factory
    return factory


def default_registry() -> Registry:
    """The process-wide registry over the installed entry points."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Registry(on_load=_run_load_hooks)
    return _DEFAULT


def set_default_registry(registry: Registry | None) -> None:
    """Replaces the process-wide registry (tests)."""
    global _DEFAULT
    _DEFAULT = registry


def resolve(
    group: str, value: Any, param: str, expected: str | None = None
) -> Any:
    """The checked plugin of `value`, a plugin name or an instance: the
    one "name or instance -> plugin" rule of every stage argument.

    A name is created (datasets, evaluators, reports: their gin bindings
    apply) or, for SSL methods, whose stage builds them around its
    backbones, loaded (its factory, the gin-configurable class). An
    instance (or, for SSL methods, a factory such as gin's `@moco`) must be
    of the group's base class.

    Args:
        group: str. A `GROUPS` key (`"datasets"`, `"ssl_methods"`,
            `"evaluators"`, `"reports"`).
        value: a name, an instance or (SSL methods) a factory.
        param: str. The setting, named in errors (`train.dataset`).
        expected: str or None. What the error says `param` must be
            (default: "be a <noun> plugin instance or name").

    Raises:
        PluginError: an unknown or broken plugin name.
        ConfigError: a value that is not of the group's base class.
    """
    from matl_keras.errors import ConfigError

    _check_group(group)
    noun = GROUPS[group][2]
    if isinstance(value, str):
        registry = default_registry()
        if group == "ssl_methods":
            registry.load(group, value)
            return registry.infos(group)[value].factory
        return registry.create(group, value)
    base = _import_object(GROUPS[group][1])
    if group == "ssl_methods" and callable(value):
        return value  # A factory; the stage checks what it builds.
    if not isinstance(value, base):
        expected = (
            expected or f"be {_article(noun)} {noun} plugin instance or name"
        )
        raise ConfigError(f"`{param}` must {expected}. Received: {value!r}")
    return value
