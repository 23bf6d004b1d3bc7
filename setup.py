"""Packaging for matl-keras.

The built-in plugins in `plugins/` are shipped as the import package
`matl_keras_plugins` and register through the same entry-point groups a
third-party package uses; the core (`matl_keras`) never imports them.
"""

import pathlib
import re

import setuptools

HERE = pathlib.Path(__file__).parent
VERSION = re.search(
    r'__version__ = "([^"]+)"',
    (HERE / "matl_keras" / "__init__.py").read_text(),
).group(1)

setuptools.setup(
    name="matl-keras",
    version=VERSION,
    description=(
        "Multi-stage attentive transfer learning for medical images "
        "(Keras 3 / TensorFlow)."
    ),
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.14",
    packages=(
        setuptools.find_packages(include=["matl_keras", "matl_keras.*"])
        + ["matl_keras.gin", "matl_keras_plugins"]
        + [
            "matl_keras_plugins." + p
            for p in setuptools.find_packages(where="plugins")
        ]
    ),
    # The jobs (`gin/`) ship as package data under `matl_keras/gin/`, mapped
    # rather than moved: `--gin_file=gin/sstl_m.gin` keeps working from a
    # clone, and the files stay where every README line and test names them.
    # `matl_keras.config.shipped_gin_dir()` finds them in either layout.
    package_dir={"matl_keras_plugins": "plugins", "matl_keras.gin": "gin"},
    package_data={"matl_keras": ["py.typed"], "matl_keras.gin": ["**/*.gin"]},
    # The console script's launcher: `--help`, `--version` and `plugins`
    # answer without importing Keras (see matl_keras_cli.py).
    py_modules=["matl_keras_cli"],
    # Versions tested together on Python 3.11 / CPU (see README "Versions").
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "keras>=3.15,<3.16",
        "gin-config==0.5.0",
        "absl-py>=2.1,<3",
        # TF 2.21 no longer pulls TensorBoard in; Keras' TensorBoard callback
        # needs it.
        "tensorboard>=2.21,<2.22",
        "numpy>=1.26,<3",
        # TIFF and WebP decoding, image headers read before decoding.
        "pillow>=10,<14",
        "matplotlib>=3.8,<4",
        # Grad-CAM (0.8.7: first release on Keras 3 / TF backend).
        "tf-keras-vis==0.8.7",
        # Warm-up records of exported models (PredictionLog protos).
        "tensorflow-serving-api>=2.21,<2.22",
    ],
    extras_require={
        "test": [
            "pytest>=8,<10",
            "pytest-xdist>=3.5,<4",
            "scikit-learn>=1.4,<2",
            "pillow>=10,<14",
            # The third-party example package's tests
            # (plugins/matl-keras-dicom).
            "pydicom>=3.0,<4",
            # The optional MLflow tracking's test (a local file store; the
            # client alone, without MLflow's server and UI).
            "mlflow-skinny>=2.10,<4",
            # CI's lint steps (.ci/run): `ruff check`, `lint-imports`.
            "ruff>=0.17,<0.18",
            "import-linter>=2.16,<3",
        ],
        "gpu": ["tensorflow[and-cuda]>=2.21,<2.22"],
        # The PyTorch side of `tools/bench_vs_pytorch.py` (a benchmark
        # dependency only: matl-keras never imports torch).
        "bench": ["torch==2.14.1", "torchvision==0.29.1"],
        # Optional MLflow tracking (`mlflow_tracking.enabled = True`): the
        # full package, whose default store (SQLite) needs its SQLAlchemy.
        "mlflow": ["mlflow>=2.10,<4"],
    },
    entry_points={
        "console_scripts": ["matl-keras = matl_keras_cli:run"],
        "matl_keras.datasets": [
            "synthetic_ct = "
            "matl_keras_plugins.datasets.synthetic_ct:SyntheticCT",
            "synthetic_cxr = "
            "matl_keras_plugins.datasets.synthetic_cxr:SyntheticCXR",
            "synthetic_natural = "
            "matl_keras_plugins.datasets.synthetic_natural:SyntheticNatural",
            "image_folder = "
            "matl_keras_plugins.datasets.image_folder:ImageFolder",
            "covid_ct = matl_keras_plugins.datasets.covid_ct:CovidCT",
            "covidx = matl_keras_plugins.datasets.covidx:COVIDx",
            "imagenet = matl_keras_plugins.datasets.imagenet:ImageNet",
        ],
        "matl_keras.ssl_methods": [
            "moco = matl_keras_plugins.ssl_methods.moco:MoCo",
            "simclr = matl_keras_plugins.ssl_methods.simclr:SimCLR",
            "region_aware = "
            "matl_keras_plugins.ssl_methods.region_aware:RegionAware",
            "simsiam = matl_keras_plugins.ssl_methods.simsiam:SimSiam",
        ],
        "matl_keras.evaluators": [
            "metrics = "
            "matl_keras_plugins.evaluators.metrics:ClassificationMetrics",
            "leep = matl_keras_plugins.evaluators.leep:LEEP",
            "gradcam = matl_keras_plugins.evaluators.gradcam:GradCAM",
            "attention_maps = "
            "matl_keras_plugins.evaluators.attention_maps:AttentionMaps",
        ],
        # Reports are commands over finished runs, not evaluators of a
        # model (`matl-keras report`).
        "matl_keras.reports": [
            "transferability = "
            "matl_keras_plugins.reports.transferability:Transferability",
        ],
    },
)
