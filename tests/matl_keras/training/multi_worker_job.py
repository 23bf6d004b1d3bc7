"""One process of the multi-worker equivalence test (run by
`test_multi_worker.py`, not collected by pytest).

    python -m tests.matl_keras.training.multi_worker_job OUT.npz [INITIAL.npz]

Trains each SSL method for two steps on fixed views (global batch 8) with
`strategy='auto'`: MultiWorkerMirroredStrategy when TF_CONFIG names a
cluster, one device otherwise. Saves, per method, the initial weights (when
no INITIAL file is given), the final weights and the loss history.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from matl_keras.training import strategies  # noqa: E402

# Before any TensorFlow op (collectives are configured at program start).
strategies.start_multi_worker_from_env()

import keras  # noqa: E402
import numpy as np  # noqa: E402
from matl_keras_plugins.ssl_methods.moco import MoCo  # noqa: E402
from matl_keras_plugins.ssl_methods.region_aware import RegionAware  # noqa: E402
from matl_keras_plugins.ssl_methods.simclr import SimCLR  # noqa: E402
from matl_keras_plugins.ssl_methods.simsiam import SimSiam  # noqa: E402

from tests.matl_keras.training.ssl_testing import build as _build  # noqa: E402
from tests.matl_keras.training.ssl_testing import data as _data  # noqa: E402

METHODS = {
    "moco": MoCo,
    "simclr": SimCLR,
    "region_aware": RegionAware,
    "simsiam": SimSiam,
}
# SimSiam's gradients are ~10x smaller (see test_contrastive._fit).
LEARNING_RATE = {"simsiam": 1e-3}


def main(out: str, initial_path: str | None) -> None:
    initial = dict(np.load(initial_path)) if initial_path else {}
    strategy = strategies.get_strategy("auto")
    results = {"replicas": np.array(strategy.num_replicas_in_sync)}
    for name, cls in METHODS.items():
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = _build(cls)
            if initial:
                count = sum(k.startswith(f"{name}/initial/") for k in initial)
                model.set_weights(
                    [initial[f"{name}/initial/{i}"] for i in range(count)]
                )
            model.compile(
                optimizer=keras.optimizers.SGD(
                    LEARNING_RATE.get(name, 1e-4), momentum=0.9
                ),
                jit_compile=False,
            )
        for i, w in enumerate(model.get_weights()):
            results[f"{name}/initial/{i}"] = w
        data = _data(cls)
        history = model.fit(data, epochs=1, verbose=0, shuffle=False)
        for i, w in enumerate(model.get_weights()):
            results[f"{name}/final/{i}"] = w
        for key, values in history.history.items():
            results[f"{name}/history/{key}"] = np.asarray(values)
        results[f"{name}/paths"] = np.array([w.path for w in model.weights])
    np.savez(out, **results)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
