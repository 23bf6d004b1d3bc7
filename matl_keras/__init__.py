"""matl-keras: multi-stage attentive transfer learning (Keras 3 / TensorFlow).

Liu & Ji, "A Multi-Stage Attentive Transfer Learning Framework for Improving
COVID-19 Diagnosis". The core package holds models, data pipelines, training
and evaluation; datasets, SSL methods and evaluators are plugins reached only
through `matl_keras.registry`.
"""

__version__ = "0.1.0"

# Version of the plugin contract (base classes in `matl_keras.data.dataset`,
# `matl_keras.training.ssl_method` and `matl_keras.evaluation.evaluator`).
# A plugin declares the version it was written for in `api_version`.
PLUGIN_API_VERSION = 1
SUPPORTED_PLUGIN_API_VERSIONS = (1,)

# keras-hub's convention: importing the package registers its Keras objects,
# so `keras.saving.load_model(path, safe_mode=True)` works after
# `import matl_keras` alone. That imports Keras and TensorFlow (seconds). The
# `matl-keras` console script must answer `--help`, `--version`, `plugins`
# and argument errors without them, so its entry point is a separate
# top-level module, `matl_keras_cli`, imported before this package: when it
# is loaded, the registration is left to the commands that need Keras (a job
# builds its models from these modules; `evaluate`, `explain` and `export`
# load through `evaluation.trained`, which imports `keras_objects`).
import sys as _sys  # noqa: E402 - after the constants, as documented above

if "matl_keras_cli" not in _sys.modules:
    if "tensorflow" not in _sys.modules:
        # oneDNN kernels on AVX2-only CPUs too (2-3x faster training;
        # `tf_startup.prefer_onednn`); TF_ENABLE_ONEDNN_OPTS=0 opts out.
        from matl_keras import tf_startup as _tf_startup  # noqa: E402

        _tf_startup.prefer_onednn()
    from matl_keras import keras_objects  # noqa: E402,F401
    from matl_keras.training import lars  # noqa: E402,F401
    from matl_keras.training import sgd  # noqa: E402,F401
    from matl_keras.training import warmup  # noqa: E402,F401
