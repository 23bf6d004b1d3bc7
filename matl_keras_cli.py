"""The `matl-keras` console script (setup.py: `matl_keras_cli:run`).

A top-level module rather than `matl_keras.cli:run` because importing the
`matl_keras` package registers its Keras objects, which imports TensorFlow
(seconds, and CUDA probe noise). This module is imported first; the package
sees it in `sys.modules` and skips that, so `matl-keras --help`,
`--version`, `plugins` and argument errors answer in a fraction of a second.
"""


def run() -> None:
    from matl_keras import cli

    cli.run()
