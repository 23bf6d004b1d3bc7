"""The report plugin contract (`matl_keras.reports`) and `matl-keras
report`'s dispatch through it: a third party's report is found and run, an
evaluator is refused as a report with a message that says why."""

import os
import signal

import pytest
from absl.testing import flagsaver

import gin
from matl_keras import cli
from matl_keras import config
from matl_keras import registry as registry_lib
from matl_keras.commands import report as report_lib
from matl_keras.commands.report import Report
from matl_keras.errors import ConfigError
from matl_keras.errors import PluginError
from matl_keras.evaluation.evaluator import Evaluator
from tests.cli_testing import error_line
from tests.cli_testing import matl_here
from tests.matl_keras.registry_testing import FakeEntryPoint
from tests.matl_keras.registry_testing import make_registry


class RunCount(Report):
    """Written against the documented contract alone, as another package
    would: counts the runs it is given."""

    def __init__(self, title: str = "runs"):
        self.title = title

    def report(self, runs, output_dir):
        os.makedirs(output_dir, exist_ok=True)
        path = os.path.join(output_dir, "count.md")
        with open(path, "w") as f:
            f.write(f"{self.title}: {len(runs)}\n")
        return {"count": path}


class TopScore(Evaluator):
    def run(self, context):
        yield "top", 1.0


@pytest.fixture
def registry(monkeypatch):
    registry = make_registry(
        {
            "matl_keras.reports": [
                FakeEntryPoint(
                    "run_count",
                    "their_pkg.tables:RunCount",
                    obj=RunCount,
                    dist=("their-pkg", "0.1"),
                ),
                FakeEntryPoint(
                    "score_as_report",
                    "their_pkg.score:TopScore",
                    obj=TopScore,
                    dist=("their-pkg", "0.1"),
                ),
            ],
            "matl_keras.evaluators": [
                FakeEntryPoint(
                    "top_score",
                    "their_pkg.score:TopScore",
                    obj=TopScore,
                    dist=("their-pkg", "0.1"),
                ),
            ],
        },
        on_load=config.register_plugin,
    )
    monkeypatch.setattr(registry_lib, "_DEFAULT", registry)
    gin.clear_config()
    yield registry
    gin.clear_config()


def test_a_third_party_report_is_found_and_run(registry, tmp_path):
    written = report_lib.report("run_count", ["a", "b"], str(tmp_path / "out"))
    assert written == {"count": str(tmp_path / "out" / "count.md")}
    assert open(written["count"]).read() == "runs: 2\n"
    assert registry.infos("reports")["run_count"].status == "ok"


def test_the_default_output_dir_is_named_after_the_report(
    registry, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    written = report_lib.report("run_count", ["a"])
    assert written["count"] == os.path.join("reports", "run_count", "count.md")


def test_the_cli_runs_it_with_its_gin_bindings(registry, tmp_path):
    handler = signal.getsignal(signal.SIGTERM)
    try:
        with flagsaver.flagsaver():
            argv = cli.FLAGS(
                [
                    "matl-keras",
                    "report",
                    "--report=run_count",
                    "--runs=a,b,c",
                    f"--output_dir={tmp_path}",
                    "--gin_param=run_count.title = 'seeds'",
                ]
            )
            cli.main(argv)
    finally:
        signal.signal(signal.SIGTERM, handler)
    assert (tmp_path / "count.md").read_text() == "seeds: 3\n"


def test_an_evaluator_name_is_refused_as_a_report(registry):
    with pytest.raises(PluginError) as e:
        report_lib.report("top_score", ["a"])
    message = str(e.value)
    assert message.startswith('The report "top_score" is not installed.')
    assert (
        '"top_score" is an evaluator (entry-point group '
        "matl_keras.evaluators), not a report: a report subclasses "
        "matl_keras.commands.report.Report and registers in "
        "matl_keras.reports." in message
    )


def test_an_evaluator_registered_as_a_report_is_refused(registry):
    info = registry.load_all("reports")["score_as_report"]
    assert info.status == "error"
    assert "not a subclass of matl_keras.commands.report.Report" in info.error
    with pytest.raises(PluginError, match="their-pkg"):
        report_lib.report("score_as_report", ["a"])
    # The broken one does not take the good one down.
    assert registry.load("reports", "run_count") is RunCount


def test_an_evaluator_instance_is_refused_as_a_report():
    with pytest.raises(ConfigError, match="`--report` must be a report plugin"):
        registry_lib.resolve("reports", TopScore(), "--report")


def test_the_old_report_base_says_where_reports_went():
    with pytest.raises(ImportError, match="matl_keras.commands.report.Report"):
        from matl_keras.evaluation.evaluator import ReportEvaluator  # noqa: F401


def test_the_builtin_report_and_an_evaluator_through_the_cli(tmp_path):
    installed = registry_lib.Registry()
    assert "transferability" in installed.names("reports")
    assert "transferability" not in installed.names("evaluators")
    result = matl_here("report", f"--runs={tmp_path}", "--report=metrics")
    assert result.returncode == 2
    line = error_line(result)
    assert (
        'The report "metrics" is not installed. Available: transferability.'
        in line
    )
    assert '"metrics" is an evaluator' in line
