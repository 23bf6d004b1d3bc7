"""The package as a user installs it: discovered through entry points,
isolated when broken, and usable from gin in a real `matl-keras` run."""

import json
import os
import shutil

import pytest
from conftest import PACKAGE
from conftest import matl
from conftest import pip_install
from tests_dicom_phantoms import write_volume


def _plugins(target):
    result = matl("plugins", "--check", "--json", target=target)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# slow: pip-installs the package (~15-25 s).
@pytest.mark.slow
def test_listed_with_its_distribution_only_when_installed(installed):
    seen = _plugins(installed)
    for group, name in (("datasets", "dicom_ct"), ("evaluators", "logme")):
        info = seen[group][name]
        assert (info["status"], info["dist"], info["version"]) == (
            "ok",
            "matl-keras-dicom",
            "0.1.0",
        )
    assert seen["evaluators"]["metrics"]["status"] == "ok"
    without = _plugins(None)
    assert (
        "dicom_ct" not in without["datasets"]
        and "logme" not in without["evaluators"]
    )


# slow: pip-installs the package (~15-25 s).
@pytest.mark.slow
def test_a_broken_copy_is_isolated(tmp_path):
    broken = tmp_path / "src" / "matl-keras-dicom"
    shutil.copytree(
        PACKAGE,
        broken,
        ignore=shutil.ignore_patterns("tests", "build", "*.egg-info"),
    )
    module = broken / "src" / "matl_keras_dicom" / "logme.py"
    module.write_text(
        module.read_text().replace(
            "from __future__ import annotations\n",
            "from __future__ import annotations\n"
            "import a_module_that_is_not_installed\n",
        )
    )
    target = pip_install(broken, tmp_path / "site")
    seen = _plugins(target)
    logme = seen["evaluators"]["logme"]
    assert logme["status"] == "error" and logme["dist"] == "matl-keras-dicom"
    assert (
        logme["version"] == "0.1.0"
        and "a_module_that_is_not_installed" in logme["error"]
    )
    assert seen["datasets"]["dicom_ct"]["status"] == "ok"
    assert all(
        i["status"] == "ok"
        for g in seen.values()
        for n, i in g.items()
        if n != "logme"
    )
    # Naming it in a job gives the plugin's own error as one line.
    result = matl(
        "evaluate",
        "--model=/nonexistent",
        "--dataset=synthetic_ct",
        "--evaluators=logme",
        "--gin_param=logme.tolerance = 0.01",
        target=target,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "matl-keras-dicom" in result.stderr


# slow: pip-installs the package (~15-25 s).
@pytest.mark.slow
def test_fine_tune_on_dicom_from_gin_with_logme(installed, tmp_path):
    root = tmp_path / "dicom"
    labels = ["PatientID,label"]
    for i in range(8):
        write_volume(root / f"p{i}", f"P{i}", covid=i % 2 == 1, slices=5)
        labels.append(f"P{i},{'COVID' if i % 2 else 'NonCOVID'}")
    (tmp_path / "labels.csv").write_text("\n".join(labels) + "\n")
    workdir = tmp_path / "run"
    result = matl(
        "--gin_file=gin/finetune.gin",
        "--gin_file=gin/models/tiny.gin",
        "--gin_param=CT_DATA = @dicom_ct()",
        f"--gin_param=dicom_ct.root = '{root}'",
        f"--gin_param=dicom_ct.labels_csv = '{tmp_path / 'labels.csv'}'",
        "--gin_param=dicom_ct.size = 48",
        "--gin_param=dicom_ct.split_fractions = {'train': 0.5, 'val': 0.5}",
        "--gin_param=IMAGE_SIZE = 32",
        "--gin_param=BATCH_SIZE = 4",
        "--gin_param=FINETUNE_EPOCHS = 1",
        # The embedded default's few-labels batch is 8.
        "--gin_param=FINETUNE_BATCH_SIZE = 4",
        "--gin_param=train.transfer_evaluators = ['leep', 'logme']",
        f"--workdir={workdir}",
        target=installed,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    run = json.load(open(workdir / "finetune" / "run.json"))
    assert (
        run["dataset"] == "DicomCT"
        and sum(run["class_counts"]["train"].values()) > 0
    )
    untrained = json.load(open(workdir / "finetune" / "transferability.json"))[
        "sources"
    ]["untrained"]
    assert untrained["leep"] <= 0 and isinstance(untrained["logme"], float)
    scored = matl(
        "evaluate",
        f"--model={workdir}",
        "--dataset=dicom_ct",
        "--split=val",
        "--evaluators=metrics,logme",
        f"--gin_param=dicom_ct.root = '{root}'",
        f"--gin_param=dicom_ct.labels_csv = '{tmp_path / 'labels.csv'}'",
        "--gin_param=dicom_ct.size = 48",
        "--gin_param=dicom_ct.split_fractions = {'train': 0.5, 'val': 0.5}",
        f"--output={tmp_path / 'scores.json'}",
        target=installed,
    )
    assert scored.returncode == 0, scored.stderr[-3000:]
    results = json.load(open(tmp_path / "scores.json"))["results"]
    assert isinstance(results["logme"], float) and "accuracy" in results
    assert os.path.isfile(workdir / "finetune" / "model.keras")


def test_the_readme_minimal_dataset_plugin_works(tmp_path):
    from PIL import Image

    readme = open(os.path.join(PACKAGE, "README.md")).read()
    code = (
        readme.split("A minimal dataset plugin is")[1]
        .split("```python")[1]
        .split("```")[0]
    )
    namespace = {}
    exec(code, namespace)
    for split in ("train", "val"):
        for name in ("NonCOVID", "COVID"):
            os.makedirs(tmp_path / split / name)
            Image.new("L", (8, 8)).save(tmp_path / split / name / "a.png")
    data = namespace["MyCT"](root=str(tmp_path))
    examples = data.examples("train")
    assert len(examples.paths) == 2 and sorted(examples.labels) == [0, 1]
    assert data.positive_index() == 1
