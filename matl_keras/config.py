"""Gin configuration: strict parsing and messages, and the plugin -> gin hook.

The jobs, stages and optimizer are registered with gin where they are
defined (`gin.external_configurable(train, name="train")` under
`supervised.train`), so nothing imports "up" to register them;
`register_core` imports them (and makes the backbone builder configurable:
model code never reads gin). Plugins are registered under their
entry-point name (and `<group>.<name>`) when the registry loads them (the
hook is installed on import), so `image_folder.root = "/data/x"` works for
any installed plugin.

Plugins are loaded lazily: before parsing, the gin text (files, their
`include`s and `--gin_param` bindings) is scanned for plugin names, and only
the plugins it mentions are imported.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import gin
from matl_keras import registry as registry_lib
from matl_keras.errors import ConfigError
from matl_keras.training import stage_config

_REGISTERED_PLUGINS: dict[tuple[str, str], Any] = {}
_CORE: dict[str, Any] = {}


def register_plugin(info: Any) -> Any:
    """Makes a loaded plugin class configurable as `name` and `group.name`.

    Returns the gin-configurable class, which `Registry.create` then
    instantiates so that bindings apply there too.
    """
    key = (info.group, info.name)
    if key not in _REGISTERED_PLUGINS:
        # A plugin named only in code (a default such as `leep`) loads after
        # gin locked the config; no binding can name it, so registering it
        # then changes nothing that was parsed.
        with gin.unlock_config():
            _REGISTERED_PLUGINS[key] = gin.external_configurable(
                info.obj, name=info.name, module=info.group
            )
    return _REGISTERED_PLUGINS[key]


registry_lib.add_load_hook(register_plugin)


def register_core() -> None:
    """Imports the core's configurables, so that gin knows them, and makes
    the backbone builder configurable (idempotent). Imported here, not at
    the top, so that `--help` answers without TensorFlow."""
    if _CORE:
        return
    from matl_keras.models.resnet import resnet_backbone
    from matl_keras.training import jobs
    from matl_keras.training import mlflow_tracking
    from matl_keras.training import optimizers
    from matl_keras.training import pipeline
    from matl_keras.training import self_supervised
    from matl_keras.training import supervised

    for fn in (
        jobs.job,
        pipeline.pipeline,
        pipeline.stage,
        supervised.train,
        self_supervised.pretrain,
        optimizers.sgd,
        optimizers.lars,
        mlflow_tracking.mlflow_tracking,
    ):
        _CORE[fn.__name__] = gin.get_configurable(fn)
    # Model code never imports gin: registered from outside.
    _CORE["resnet_backbone"] = gin.external_configurable(
        resnet_backbone.ResNetBackbone, name="resnet_backbone"
    )


def configured(name: str) -> Any:
    """The gin-configurable version of core function `name`."""
    register_core()
    return _CORE[name]


_INCLUDE = re.compile(r"""^\s*include\s+['"]([^'"]+)['"]""", re.MULTILINE)
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _strip_comments(text: str) -> str:
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def _read_gin_texts(path: str, seen: set[str], flag: str) -> list[str]:
    """Text of a gin file and (best effort) of the files it includes."""
    resolved = _resolve(path)
    if resolved is None:
        raise ConfigError(
            f"{flag}: gin file not found: {path!r} (looked in the current "
            f"directory {os.getcwd()!r} and the gin search paths)"
        )
    if resolved in seen:
        return []
    seen.add(resolved)
    with open(resolved) as f:
        text = _strip_comments(f.read())
    texts = [text]
    for include in _INCLUDE.findall(text):
        if _resolve(include) is not None:
            texts += _read_gin_texts(include, seen, flag)
    return texts


def _resolve(path: str) -> str | None:
    if os.path.isfile(path):
        return os.path.abspath(path)
    for prefix in gin.config._LOCATION_PREFIXES:
        candidate = os.path.join(prefix, path)
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    return None


def add_search_path(path: str) -> None:
    """Lets `include` find files relative to `path` (once per path)."""
    if path not in gin.config._LOCATION_PREFIXES:
        gin.add_config_file_search_path(path)


def shipped_gin_dir() -> str:
    """The folder of the jobs that ship with matl-keras.

    A wheel holds them as package data in `matl_keras/gin/` (setup.py maps
    the repository's `gin/` there); a clone or an editable install reads
    the repository's `gin/`, next to the `matl_keras` package.
    """
    package = os.path.dirname(os.path.abspath(__file__))
    installed = os.path.join(package, "gin")
    if os.path.isdir(installed):
        return installed
    return os.path.join(os.path.dirname(package), "gin")


def add_shipped_search_paths() -> None:
    """Puts the shipped jobs on gin's search path, after the user's folders.

    `sstl_m.gin` and `include 'finetune.gin'` then resolve from any folder
    (the shipped folder), and so does `gin/sstl_m.gin` (its parent), as
    written in the README. A file of that name in the current folder or in
    the folder of a `--gin_file` comes first (gin searches in order).
    """
    shipped = shipped_gin_dir()
    add_search_path(shipped)
    add_search_path(os.path.dirname(shipped))


def check_gin_files(gin_files: Sequence[str]) -> None:
    """Refuses a missing `--gin_file` (before anything heavy is imported).

    Raises:
        ConfigError: the first file that is found nowhere.
    """
    for path in gin_files:
        add_search_path(os.path.dirname(os.path.abspath(path)))
    add_shipped_search_paths()
    for path in gin_files:
        if _resolve(path) is None:
            raise ConfigError(
                f"--gin_file: gin file not found: {path!r} (looked in the "
                f"current directory {os.getcwd()!r}, the folders of the "
                f"--gin_file flags and the shipped jobs {shipped_gin_dir()!r})"
            )


def load_plugins_named_in(texts: Sequence[str], registry: Any) -> None:
    """Imports the plugins whose names occur in `texts`.

    Failures are not raised here: gin then reports the name as unknown and
    `parse` replaces that message by the plugin's own error.
    """
    from matl_keras.errors import PluginError
    from matl_keras.registry import GROUPS

    words = set()
    for text in texts:
        words.update(_WORD.findall(text))
    for group in GROUPS:
        for name in registry.names(group):
            if name in words:
                try:
                    registry.load(group, name)
                except PluginError:
                    pass


def parse(
    gin_files: Sequence[str],
    gin_bindings: Sequence[str],
    registry: Any,
) -> None:
    """Parses gin files and bindings strictly.

    Raises:
        ConfigError: a missing file, a syntax error, an unknown configurable
            or parameter; the message names it and where it came from.
    """
    # `include 'datasets/x.gin'` inside gin/finetune.gin resolves relative
    # to the including file's folder as well, then to the shipped jobs.
    check_gin_files(gin_files)
    register_core()
    texts: list[str] = []
    seen: set[str] = set()
    for path in gin_files:
        texts += _read_gin_texts(path, seen, "--gin_file")
    for binding in gin_bindings:
        text = _strip_comments(binding)
        texts.append(text)
        # `--gin_param="include 'stages/stl_m.gin'"`: its macros count too.
        for include in _INCLUDE.findall(text):
            if _resolve(include) is not None:
                texts += _read_gin_texts(include, seen, "--gin_param")
    load_plugins_named_in(texts, registry)
    try:
        gin.parse_config_files_and_bindings(
            list(gin_files), list(gin_bindings), skip_unknown=False
        )
    except Exception as e:  # gin raises ValueError, SyntaxError, IOError...
        for binding in gin_bindings:
            bad = _syntax_error(binding)
            if bad:
                raise ConfigError(
                    f"gin: syntax error in --gin_param={binding!r}: {bad}"
                ) from e
        raise ConfigError(_gin_message(e, registry)) from e
    check_macros(texts, gin_bindings)


def _syntax_error(binding: str) -> str | None:
    """Parses one binding alone, so a syntax error names its --gin_param.

    Gin parses all bindings as one text: an unclosed bracket or quote in one
    (a `tokenize.TokenError`, not a `SyntaxError`) would otherwise be
    reported, without a name, at the end of the last one.
    """
    import tokenize

    from gin import config_parser

    try:
        list(
            config_parser.ConfigParser(
                binding, gin.config.ParserDelegate(skip_unknown=True)
            )
        )
    except SyntaxError as e:
        return f"{e.msg}, line {e.lineno}" if e.lineno else str(e.msg)
    except tokenize.TokenError as e:
        return f"{e.args[0]} (an unclosed bracket or quote)"
    except Exception:  # noqa: BLE001 - not a syntax problem of this binding
        return None
    return None


_MACRO_DEF = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*=", re.MULTILINE)
_MACRO_REF = stage_config.MACRO_REF


def _int_at_least(low: int) -> Any:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            return f"an integer >= {low}"
        return None

    return check


def _positive_number(v: Any) -> str | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
        return "a number > 0"
    return None


def _macro_spec() -> dict[str, Any]:
    # The accepted values come from the model code itself, so this check
    # cannot drift from what the backbone builder accepts.
    from matl_keras.models.resnet.attention_placement import PRESETS
    from matl_keras.models.resnet.resnet_backbone import DEPTHS

    def depth(v: Any) -> str | None:
        return None if v in DEPTHS else f"one of {sorted(DEPTHS)}"

    def attention(v: Any) -> str | None:
        if isinstance(v, dict) or v is None or v in PRESETS:
            return None
        return f"one of {sorted(PRESETS)} or a {{stage: [blocks]}} mapping"

    spec: dict[str, Any] = {
        "IMAGE_SIZE": _int_at_least(1),
        "BATCH_SIZE": _int_at_least(1),
        "SEED": _int_at_least(0),
        "WIDTH": _positive_number,
        "DEPTH": depth,
        "ATTENTION": attention,
    }
    return spec


def check_macros(texts: Sequence[str], gin_bindings: Sequence[str]) -> None:
    """Refuses macros nobody reads and macro values of the wrong type.

    Gin accepts `EPOCHS = 1` even when no binding says `%EPOCHS`, so a typo
    silently trains the defaults; and a wrong type (`IMAGE_SIZE = 32.5`)
    surfaces as a long traceback deep inside tf.data. Both are checked here,
    before any TensorFlow work, naming the macro as the user wrote it.
    """
    import difflib

    referenced = set()
    for text in texts:
        referenced |= set(_MACRO_REF.findall(text))
    where: dict[str, str] = {}
    for text in texts:
        for name in _MACRO_DEF.findall(text):
            where.setdefault(name, "a gin file")
    for binding in gin_bindings:
        for name in _MACRO_DEF.findall(_strip_comments(binding)):
            where[name] = f"--gin_param={binding!r}"
    for name, origin in where.items():
        if name in referenced:
            continue
        close = difflib.get_close_matches(name, sorted(referenced), n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"gin: macro {name!r} (bound in {origin}) is not used by any "
            f"binding.{hint}"
        )
    spec = _macro_spec()
    for name, origin in where.items():
        check = spec.get(name)
        if name.endswith("_EPOCHS"):
            check = _int_at_least(0)
        if check is None:
            continue
        value = gin.query_parameter(f"%{name}")
        accepted = check(value)
        if accepted is not None:
            raise ConfigError(
                f"gin: macro {name} = {value!r} (bound in {origin}) is not "
                f"accepted: expected {accepted}."
            )
    _check_placement_fits_depth(where)


def _check_placement_fits_depth(where: dict[str, str]) -> None:
    """ATTENTION and DEPTH each valid can still not fit together (the 5-ATTN
    preset needs two blocks in res3 and res4, which ResNet-10 has not):
    refused here, naming both macros, not as a traceback from the model."""
    if "ATTENTION" not in where and "DEPTH" not in where:
        return
    from matl_keras.models.resnet import attention_placement
    from matl_keras.models.resnet.resnet_backbone import DEPTHS
    from matl_keras.models.resnet.resnet_backbone import STAGES

    try:
        depth = gin.query_parameter("%DEPTH")
        attention = gin.query_parameter("%ATTENTION")
    except ValueError:  # a job without a backbone macro
        return
    if depth not in DEPTHS:
        return
    try:
        attention_placement.resolve(
            attention, dict(zip(STAGES, DEPTHS[depth][1]))
        )
    except ValueError as e:
        raise ConfigError(
            f"gin: ATTENTION = {attention!r} with DEPTH = {depth} (bound "
            f"in {where.get('ATTENTION') or where['DEPTH']}): {e}"
        ) from None


def _gin_message(error: Exception, registry: Any) -> str:
    from matl_keras.registry import GROUPS

    message = str(error).strip()
    unknown = re.search(
        r"No configurable matching (?:reference )?'@?([^'()]+)", message
    )
    if unknown:
        name = unknown.group(1).split(".")[-1]
        for group in GROUPS:
            info = registry.infos(group).get(name)
            if info is not None and info.status == "error":
                from matl_keras.registry import _broken_message

                return _broken_message(info)
        known = sorted(
            {n.split(".")[-1] for n, _ in gin.config._REGISTRY.items()}
            | {n for g in GROUPS for n in registry.names(g)}
        )
        close = [k for k in known if _similar(name, k)]
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        where = _location(message)
        return (
            f"gin: unknown configurable {unknown.group(1)!r}{where}.{hint} "
            "Run `matl-keras plugins` to list installed plugins."
        )
    first = message.splitlines()[0] if message else type(error).__name__
    return f"gin: {first}{_location(message)}"


def _location(message: str) -> str:
    match = re.search(
        r'In (?:file|bindings string) "?([^"\n]+)"?, line (\d+)', message
    )
    if match:
        return f" (in {match.group(1)}, line {match.group(2)})"
    return ""


def _similar(a: str, b: str) -> bool:
    import difflib

    return difflib.SequenceMatcher(None, a, b).ratio() > 0.75
