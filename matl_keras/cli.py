"""`matl-keras`: flags -> gin -> a command of `matl_keras.commands` (running
the job the gin files configure is one: `commands.job`).

    matl-keras --gin_file=gin/finetune.gin [--gin_param=...] [--workdir=...]
    matl-keras plugins [--check] [--json]
    matl-keras --help | --version
    matl-keras evaluate --model=RUN --dataset=NAME [--split=test]
        [--evaluators=metrics,leep]
    matl-keras explain --model=RUN --images=PATH [--output_dir=DIR]
    matl-keras predict --model=RUN --images=PATH [--output_dir=DIR]
    matl-keras report --runs=DIR[,DIR...] [--report=NAME] [--output_dir=DIR]
    matl-keras audit --dataset=NAME [--splits=train,val] [--on_leak=warn|refuse]
    matl-keras export --model=RUN --export_dir=DIR [--model_version=N]
    matl-keras probe --model=RUN --dataset=NAME [--fit_split=train]
        [--score_split=val]

Errors the user can fix (bad flags, gin, data, plugins) are printed as
`matl-keras: error: ...` with exit status 2, without a traceback.

`--help`, `--version`, `plugins` and argument errors answer without importing
TensorFlow (a fraction of a second instead of seconds); the commands that
need it import it through `tf_startup`, which drops its start-up noise.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Sequence

from absl import app
from absl import flags

from matl_keras import tf_startup
from matl_keras.errors import MatlError

FLAGS = flags.FLAGS
flags.DEFINE_multi_string(
    "gin_file", [], "Gin file(s) that configure the job (repeatable)."
)
flags.DEFINE_multi_string(
    "gin_param",
    [],
    "Gin binding(s) applied after the files, e.g. 'FINETUNE_EPOCHS = 2' "
    "(repeatable).",
)
flags.DEFINE_string(
    "workdir",
    None,
    "Output folder of the run (default: runs/<name of the last gin file>). "
    "Running the same command again resumes or skips a finished run.",
)
flags.DEFINE_boolean("json", False, "`plugins`: print JSON.")
flags.DEFINE_boolean(
    "check",
    False,
    "`plugins`: import every plugin and report the ones that are broken "
    "(imports TensorFlow; without it, plugins are listed from their metadata).",
)
flags.DEFINE_string(
    "model",
    None,
    "`evaluate`, `explain`, `predict`, `export`: a trained model: a .keras "
    "file, a stage workdir or a pipeline workdir (its last supervised stage).",
)
flags.DEFINE_string("dataset", None, "`evaluate`: dataset plugin name.")
flags.DEFINE_string("split", "test", "`evaluate`: split to score.")
flags.DEFINE_list(
    "evaluators", ["metrics"], "`evaluate`: evaluator plugin names."
)
flags.DEFINE_string(
    "output",
    None,
    "`evaluate`: JSON file (default: <stage>/evaluate_<dataset>_<split>.json).",
)
flags.DEFINE_integer(
    "batch_size", 32, "`evaluate`, `explain`, `predict`: batch size."
)
flags.DEFINE_multi_string(
    "images", [], "`explain`, `predict`: image files or folders (repeatable)."
)
flags.DEFINE_string(
    "output_dir",
    None,
    "`explain`: folder of the PNGs (default: <stage>/explain); `predict`: "
    "folder of predictions.csv and embeddings.npy (default: <stage>/predict); "
    "`report`: folder of the tables (default: reports/transferability).",
)
flags.DEFINE_string(
    "layer",
    None,
    "`explain`: Grad-CAM layer (default: the last feature map before the "
    "global pooling, or the deepest with >= 3x3 positions).",
)
flags.DEFINE_string(
    "class_name", None, "`explain`: class to explain (default: predicted)."
)
flags.DEFINE_list("runs", [], "`report`: pipeline workdirs to tabulate.")
flags.DEFINE_list("splits", [], "`audit`: splits to compare (default: all).")
flags.DEFINE_enum(
    "on_leak", "warn", ["warn", "refuse"], "`audit`: a leak's effect."
)
flags.DEFINE_string(
    "export_dir", None, "`export`: TF Serving model base folder."
)
flags.DEFINE_integer(
    "model_version",
    None,
    "`export`: TF Serving version number (default: the next free one).",
)
flags.DEFINE_string(
    "model_name",
    None,
    "`export`: folder name under --export_dir (default: the run's name).",
)
flags.DEFINE_string(
    "report",
    "transferability",
    "`report`: the report plugin (entry-point group matl_keras.reports).",
)
# `probe` (issue 20)
flags.DEFINE_string("fit_split", "train", "`probe`: split the probes fit on.")
flags.DEFINE_string("score_split", "val", "`probe`: split the probes score.")
flags.DEFINE_integer("knn_k", 20, "`probe`: neighbours of the kNN probe.")

USAGE = """usage:
  matl-keras --gin_file=FILE [--gin_param=BINDING ...] [--workdir=DIR]
  matl-keras plugins [--check] [--json]
  matl-keras evaluate --model=RUN --dataset=NAME [--split=test]
      [--evaluators=metrics,leep] [--output=FILE] [--gin_param=...]
  matl-keras explain --model=RUN --images=PATH [--images=...] [--output_dir=DIR]
      [--layer=NAME] [--class_name=NAME]
  matl-keras predict --model=RUN --images=PATH [--images=...] [--output_dir=DIR]
  matl-keras report --runs=DIR[,DIR...] [--report=NAME] [--output_dir=DIR]
  matl-keras export --model=RUN --export_dir=DIR [--model_version=N]
      [--model_name=NAME]
  matl-keras audit --dataset=NAME [--splits=train,val] [--on_leak=warn|refuse]
      [--output=FILE] [--gin_param=...]
  matl-keras probe --model=RUN --dataset=NAME [--fit_split=train]
      [--score_split=val] [--knn_k=20] [--output=FILE] [--gin_param=...]
  matl-keras --help | --version"""

COMMANDS_HELP = """commands:
  (none)     run the job the --gin_file files configure
  plugins    list the installed datasets, SSL methods, evaluators, reports
  evaluate   score a trained model on a dataset split (metrics.json-style)
  explain    Grad-CAM and attention-map PNGs for images
  predict    per-image predictions (CSV) and embeddings (.npy) for images
  report     transferability tables (the paper's Tables 2-6) over runs
  audit      leakage audit: duplicates and patients across splits
  export     a TF Serving SavedModel of a trained model
  probe      kNN and linear probe of a stage's frozen backbone (probe.json)"""


def _help() -> str:
    from matl_keras import config

    jobs_dir = config.shipped_gin_dir()
    jobs = (
        sorted(f for f in os.listdir(jobs_dir) if f.endswith(".gin"))
        if os.path.isdir(jobs_dir)
        else []
    )
    flag_help = FLAGS.module_help(__name__).split("\n", 2)[-1]
    return (
        f"matl-keras {_version()}: multi-stage attentive transfer learning "
        f"for medical images.\n\n{USAGE}\n\n{COMMANDS_HELP}\n\n"
        f"jobs shipped with matl-keras (--gin_file=NAME from any folder):\n"
        f"  {' '.join(jobs)}\n  in {jobs_dir}\n\n"
        f"flags:\n{flag_help}\n\n"
        "Every flag, absl's included: matl-keras --helpfull\n"
    )


def _version() -> str:
    from matl_keras import __version__

    return __version__


def _fail(message: str) -> None:
    sys.stderr.write(f"matl-keras: error: {message}\n")
    sys.exit(2)


def _parse_flags(argv: Sequence[str]) -> list[str]:
    # Before absl's own --help (which prints "Try --helpfull" and exits 1).
    if any(a in ("--help", "-h", "help") for a in argv[1:]):
        sys.stdout.write(_help())
        sys.exit(0)
    if "--version" in argv[1:]:
        print(f"matl-keras {_version()}")
        sys.exit(0)
    try:
        return FLAGS(argv)
    except flags.Error as e:
        _fail(f"{e}\n{USAGE}")
    return []


def cmd_plugins() -> None:
    if FLAGS.check:  # imports every plugin
        tf_startup.import_tensorflow()
    from matl_keras.commands import plugins

    plugins.list_plugins(FLAGS.json, FLAGS.check)


def cmd_run_job() -> None:
    from matl_keras import config

    if not FLAGS.gin_file:
        _fail(f"no --gin_file given; nothing to run.\n{USAGE}")
    # A missing file is reported before TensorFlow is imported (seconds).
    config.check_gin_files(FLAGS.gin_file)
    tf_startup.import_tensorflow()
    from matl_keras.commands import job

    job.run_job(FLAGS.gin_file, FLAGS.gin_param, FLAGS.workdir)


def _require(*names: str) -> None:
    for name in names:
        if not getattr(FLAGS, name):
            _fail(f"--{name} is required here.\n{USAGE}")


def _parse_gin_if_given() -> None:
    """The commands: --gin_file/--gin_param configure plugins (e.g. a
    dataset's root folder)."""
    if FLAGS.gin_file or FLAGS.gin_param:
        from matl_keras import config
        from matl_keras import registry as registry_lib

        config.parse(
            FLAGS.gin_file, FLAGS.gin_param, registry_lib.default_registry()
        )


def cmd_evaluate() -> None:
    _require("model", "dataset")
    tf_startup.import_tensorflow()
    from matl_keras.commands import evaluate

    _parse_gin_if_given()
    evaluate.evaluate(
        FLAGS.model,
        FLAGS.dataset,
        FLAGS.split,
        FLAGS.evaluators,
        FLAGS.output,
        FLAGS.batch_size,
    )


def cmd_explain() -> None:
    _require("model", "images")
    tf_startup.import_tensorflow()
    from matl_keras.commands import explain

    explain.explain_images(
        FLAGS.model,
        FLAGS.images,
        FLAGS.output_dir,
        FLAGS.layer,
        FLAGS.class_name,
        FLAGS.batch_size,
    )


def cmd_predict() -> None:
    _require("model", "images")
    tf_startup.import_tensorflow()
    from matl_keras.commands import predict

    predict.predict_images(
        FLAGS.model, FLAGS.images, FLAGS.output_dir, FLAGS.batch_size
    )


def cmd_report() -> None:
    _require("runs")
    tf_startup.import_tensorflow()
    from matl_keras.commands import report

    _parse_gin_if_given()
    report.report(FLAGS.report, FLAGS.runs, FLAGS.output_dir)


def cmd_export() -> None:
    _require("model", "export_dir")
    tf_startup.import_tensorflow()
    from matl_keras.commands import export

    export.export(
        FLAGS.model, FLAGS.export_dir, FLAGS.model_version, FLAGS.model_name
    )


def cmd_audit() -> None:
    _require("dataset")
    from matl_keras.commands import audit

    _parse_gin_if_given()
    audit.audit(FLAGS.dataset, FLAGS.splits, FLAGS.on_leak, FLAGS.output)


def cmd_probe() -> None:
    _require("model", "dataset")
    tf_startup.import_tensorflow()
    from matl_keras.commands import probe

    _parse_gin_if_given()
    probe.probe(
        FLAGS.model,
        FLAGS.dataset,
        FLAGS.fit_split,
        FLAGS.score_split,
        FLAGS.knn_k,
        FLAGS.batch_size,
        FLAGS.output,
    )


COMMANDS = {
    "audit": cmd_audit,
    "export": cmd_export,
    "evaluate": cmd_evaluate,
    "explain": cmd_explain,
    "predict": cmd_predict,
    "probe": cmd_probe,
    "report": cmd_report,
}


class Terminated(KeyboardInterrupt):
    """SIGTERM (what SLURM and Kubernetes send), raised in the main thread
    like SIGINT's KeyboardInterrupt: Python runs the handler between
    bytecodes, so the training step in flight finishes, the last complete
    backup stays as it is, and the workdir lock is released at exit."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def main(argv: Sequence[str]) -> None:
    args = list(argv[1:])
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        if not args:
            cmd_run_job()
        elif args == ["plugins"]:
            cmd_plugins()
        elif len(args) == 1 and args[0] in COMMANDS:
            COMMANDS[args[0]]()
        else:
            _fail(f"unknown command {' '.join(args)!r}.\n{USAGE}")
    except MatlError as e:
        # gin appends "  In call to configurable ..." lines to errors raised
        # inside configurables: not for users.
        _fail(str(e).split("\n  In call to configurable")[0])
    except OSError as e:
        # A full disk anywhere else (a TensorFlow or Keras write the stages
        # do not wrap): one line too.
        from matl_keras import runs

        if runs.os_errno(e) not in runs.WRITE_ERRNOS:
            raise
        _fail(str(runs.as_write_error(e)))
    except Exception as e:  # noqa: BLE001 - re-raised unless a write error
        from matl_keras import runs

        error = runs.reported_write_error(e)
        if error is None:
            raise
        _fail(str(error))
    except KeyboardInterrupt as e:
        name, status = (
            ("SIGTERM", 143) if isinstance(e, Terminated) else ("SIGINT", 130)
        )
        sys.stderr.write(
            f"matl-keras: stopped by {name}; run the same command again to "
            "resume.\n"
        )
        sys.exit(status)


class _DropGinPathProbes(logging.Filter):
    """gin logs an error for every search-path probe of an `include` that
    misses, before it finds the file; those lines are noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.pathname.endswith("resource_reader.py")


class _DropDistributeInfo(logging.Filter):
    """tf.distribute logs an INFO line per all-reduce it builds (dozens per
    multi-worker step function); warnings and errors still pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or (
            "tensorflow/python/distribute" not in record.pathname
        )


def run() -> None:
    """Console-script entry point."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger().addFilter(_DropGinPathProbes())
    logging.getLogger("tensorflow").addFilter(_DropDistributeInfo())
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
