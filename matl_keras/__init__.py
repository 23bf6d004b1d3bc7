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
