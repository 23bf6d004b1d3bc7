"""`matl-keras`: flags -> plugins -> gin -> the job or a command.

    matl-keras --gin_file=gin/finetune.gin [--gin_param=...] [--workdir=...]
    matl-keras plugins [--json]

Errors the user can fix (bad flags, gin, data, plugins) are printed as
`matl-keras: error: ...` with exit status 2, without a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence

from absl import app
from absl import flags

from matl_keras.errors import MatlError

FLAGS = flags.FLAGS
flags.DEFINE_multi_string(
    "gin_file", [], "Gin file(s) that configure the job (repeatable)."
)
flags.DEFINE_multi_string(
    "gin_param",
    [],
    "Gin binding(s) applied after the files, e.g. 'EPOCHS = 2' (repeatable).",
)
flags.DEFINE_string(
    "workdir",
    None,
    "Output folder of the run (default: runs/<name of the last gin file>). "
    "Running the same command again resumes or skips a finished run.",
)
flags.DEFINE_boolean("json", False, "`plugins`: print JSON.")

USAGE = """usage:
  matl-keras --gin_file=FILE [--gin_param=BINDING ...] [--workdir=DIR]
  matl-keras plugins [--json]"""


def _fail(message: str) -> None:
    sys.stderr.write(f"matl-keras: error: {message}\n")
    sys.exit(2)


def _parse_flags(argv: Sequence[str]) -> list[str]:
    try:
        return FLAGS(argv)
    except flags.Error as e:
        _fail(f"{e}\n{USAGE}")
    return []


def cmd_plugins(as_json: bool) -> None:
    """Lists every plugin by group with its distribution and status."""
    from matl_keras import registry as registry_lib

    registry = registry_lib.default_registry()
    report = {}
    for group in registry_lib.GROUPS:
        infos = registry.load_all(group)
        report[group] = {name: info.as_dict() for name, info in infos.items()}
    if as_json:
        print(json.dumps(report, indent=2))
        return
    for group, infos in report.items():
        print(group)
        if not infos:
            print("  (none installed)")
        for name, info in infos.items():
            print(
                f"  {name:<20} {info['status']:<6} "
                f"{info['dist']} {info['version']}  ({info['value']})"
            )
            if info["error"]:
                print(f"      error: {info['error']}")


def cmd_run_job() -> None:
    """Runs the job the gin files configure."""
    from matl_keras import config
    from matl_keras import registry as registry_lib

    if not FLAGS.gin_file:
        _fail(f"no --gin_file given; nothing to run.\n{USAGE}")
    registry = registry_lib.default_registry()
    config.parse(FLAGS.gin_file, FLAGS.gin_param, registry)
    workdir = FLAGS.workdir or os.path.join(
        "runs", os.path.splitext(os.path.basename(FLAGS.gin_file[-1]))[0]
    )
    print(f"workdir: {workdir}", flush=True)
    job = config.configured("job")()
    job(workdir=workdir)


def main(argv: Sequence[str]) -> None:
    args = list(argv[1:])
    try:
        if not args:
            cmd_run_job()
        elif args == ["plugins"]:
            cmd_plugins(FLAGS.json)
        else:
            _fail(f"unknown command {' '.join(args)!r}.\n{USAGE}")
    except MatlError as e:
        # gin appends "  In call to configurable ..." lines to errors raised
        # inside configurables: not for users.
        _fail(str(e).split("\n  In call to configurable")[0])
    except KeyboardInterrupt:
        sys.stderr.write(
            "matl-keras: interrupted; run the same command again to resume.\n"
        )
        sys.exit(130)


class _DropGinPathProbes(logging.Filter):
    """gin logs an error for every search-path probe of an `include` that
    misses, before it finds the file; those lines are noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.pathname.endswith("resource_reader.py")


def run() -> None:
    """Console-script entry point."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger().addFilter(_DropGinPathProbes())
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
