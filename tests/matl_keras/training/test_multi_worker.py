"""MultiWorkerMirroredStrategy with two worker processes on 127.0.0.1:
every SSL method ends with the same weights on both workers, equal to one
process on the same global batch; the CLI runs a pipeline across two workers
with the chief writing the workdir. Also the strategy's configuration errors
and the Keras workaround (keras-team/keras#20585)."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from matl_keras.errors import ConfigError
from matl_keras.training import strategies
from tests.cli_testing import CLI
from tests.conftest import REPO
from tests.matl_keras.training.ssl_testing import update_mismatch

JOB = "tests.matl_keras.training.multi_worker_job"


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _tf_config(ports, index):
    return json.dumps(
        {
            "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
            "task": {"type": "worker", "index": index},
        }
    )


def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _run_workers(args_of, env_of, timeout=600):
    """Starts one process per worker and waits for all; kills the rest when
    one fails (the others would wait for it forever)."""
    ports = _free_ports(2)
    procs = [
        subprocess.Popen(
            args_of(i),
            cwd=REPO,
            env=env_of(i, _tf_config(ports, i)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-5000:]
    return outputs


def _mismatch(reference, other, name, paths):
    """Per weight: `ssl_testing.update_mismatch` of the two runs."""
    worst = {}
    for i, path in enumerate(paths):
        w0 = reference[f"{name}/initial/{i}"]
        a, b = reference[f"{name}/final/{i}"], other[f"{name}/final/{i}"]
        if not np.issubdtype(a.dtype, np.floating):
            np.testing.assert_array_equal(a, b, err_msg=path)
            continue
        value = update_mismatch(w0, a, b)
        if value is not None:
            worst[path] = value
    return worst


# slow: three processes train all four methods (~2 min); the default suite
# runs two workers through the CLI below and each method under an
# in-process MirroredStrategy (test_contrastive).
@pytest.mark.slow
def test_two_workers_equal_each_other_and_one_process(tmp_path):
    single = tmp_path / "single.npz"
    result = subprocess.run(
        [sys.executable, "-m", JOB, str(single)],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    outs = [tmp_path / f"worker{i}.npz" for i in range(2)]
    _run_workers(
        lambda i: [sys.executable, "-m", JOB, str(outs[i]), str(single)],
        lambda i, config: _env(TF_CONFIG=config),
    )
    one = dict(np.load(single))
    workers = [dict(np.load(o)) for o in outs]
    assert int(one["replicas"]) == 1
    assert [int(w["replicas"]) for w in workers] == [2, 2]
    for name in ("moco", "simclr", "region_aware", "simsiam"):
        paths = list(one[f"{name}/paths"])
        # The workers hold identical weights: all-reduced gradients, the
        # same momentum update, the same gathered queue.
        finals = [k for k in workers[0] if k.startswith(f"{name}/final/")]
        for key in finals:
            np.testing.assert_array_equal(
                workers[0][key], workers[1][key], err_msg=key
            )
        for key in (k for k in one if k.startswith(f"{name}/history/")):
            # atol: SimSiam's loss, a mean of cosines, starts near 0.
            np.testing.assert_allclose(
                workers[0][key], one[key], rtol=1e-5, atol=1e-6, err_msg=key
            )
        # And they equal one process on the global batch, to float32
        # rounding of summing the gradients in another order (as the
        # in-process MirroredStrategy test; 1e-2 of every update).
        mismatch = _mismatch(one, workers[0], name, paths)
        assert any("conv1_conv/kernel" in p for p in mismatch)
        assert any(
            "moving" in p for p in mismatch
        )  # synchronized BN statistics
        worst = max(mismatch, key=mismatch.get)
        assert mismatch[worst] < 1e-2, (name, worst, mismatch[worst])
        if name in ("moco", "region_aware"):
            queue = paths.index(next(p for p in paths if p.endswith("queue")))
            np.testing.assert_allclose(
                workers[0][f"{name}/final/{queue}"],
                one[f"{name}/final/{queue}"],
                atol=1e-5,
            )


TINY_PIPELINE = [
    "--gin_file=gin/sstl_m.gin",
    "--gin_file=gin/models/tiny.gin",
    "--gin_param=SSL_METHOD = @moco",
    "--gin_param=SSTL_M_EPOCHS = 1",
    "--gin_param=FINETUNE_EPOCHS = 2",
    "--gin_param=IMAGE_SIZE = 32",
    "--gin_param=BATCH_SIZE = 8",
    "--gin_param=SSL_QUEUE_SIZE = 'auto'",
    "--gin_param=synthetic_ct.image_size = 48",
    "--gin_param=synthetic_ct.num_train = 16",
    "--gin_param=synthetic_ct.labelled_fraction = 1.0",
    "--gin_param=synthetic_ct.num_val = 8",
    "--gin_param=synthetic_ct.num_test = 8",
]


# slow: two worker processes on the 2 cores (~60 s of both); the default
# suite checks the strategy's configuration and errors (below) and
# MirroredStrategy in process.
@pytest.mark.slow
def test_cli_pipeline_on_two_workers_chief_writes(tmp_path):
    workdir = tmp_path / "run"
    scratch = [tmp_path / f"tmp{i}" for i in range(2)]
    for s in scratch:
        s.mkdir()
    outputs = _run_workers(
        lambda i: [CLI, *TINY_PIPELINE, f"--workdir={workdir}"],
        lambda i, config: _env(TF_CONFIG=config, TMPDIR=str(scratch[i])),
    )
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["status"] == "complete"
    assert [e["stage"] for e in summary["lineage"]] == ["sstl_m", "finetune"]
    for stage, files in {
        "sstl_m": [
            "backbone.weights.h5",
            "ssl_model.weights.h5",
            "history.csv",
        ],
        "finetune": ["model.keras", "metrics.json", "history.csv", "best"],
    }.items():
        run = json.loads((workdir / stage / "run.json").read_text())
        assert run["status"] == "complete"
        for name in files:
            assert (workdir / stage / name).exists(), (stage, name)
        assert not (workdir / stage / "backup").exists()
        assert not [
            p for p in os.listdir(workdir / stage) if p.endswith(".tmp")
        ]
    # The worker wrote only to its temporary folders, and removed them.
    assert os.listdir(scratch[1]) == []
    assert "the chief wrote" in outputs[1]
    assert f"wrote {workdir / 'summary.json'}" in outputs[0]
    assert "Collective all_reduce" not in outputs[0]  # INFO noise filtered
    # Both workers trained on the chief's initial weights and synchronized
    # every step: the scores the worker computed equal the chief's.
    lines = lambda out: [
        l for l in out.splitlines() if l.startswith("  accuracy")
    ]  # noqa: E731
    assert lines(outputs[0]) and lines(outputs[0]) == lines(outputs[1])


def test_tf_config_errors_name_the_variable(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ConfigError, match="TF_CONFIG is not valid JSON"):
        strategies.get_strategy("auto")
    monkeypatch.setenv(
        "TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1"]}})
    )
    with pytest.raises(ConfigError, match="TF_CONFIG must hold"):
        strategies.get_strategy("auto")
    monkeypatch.setenv(
        "TF_CONFIG",
        json.dumps(
            {
                "cluster": {"worker": ["a:1", "b:2"]},
                "task": {"type": "worker", "index": 2},
            }
        ),
    )
    with pytest.raises(ConfigError, match="not in its cluster"):
        strategies.get_strategy("auto")
    monkeypatch.setenv("TF_CONFIG", _tf_config([1, 2], 1))
    with pytest.raises(ConfigError, match="strategy='mirrored'"):
        strategies.get_strategy("mirrored")
    assert not strategies.chief_from_env()
    monkeypatch.setenv("TF_CONFIG", _tf_config([1, 2], 0))
    assert strategies.chief_from_env()
    # This process already ran TensorFlow ops: a clear error, not TF's.
    import tensorflow as tf

    assert int(tf.constant(1) + 1) == 2  # the runtime is started
    with pytest.raises(ConfigError, match="before TensorFlow runs any op"):
        strategies.get_strategy("multi_worker")
    monkeypatch.delenv("TF_CONFIG")
    with pytest.raises(ConfigError, match="needs TF_CONFIG"):
        strategies.get_strategy("multi_worker")
    # One task is not a cluster: the machine's own strategy.
    monkeypatch.setenv(
        "TF_CONFIG",
        json.dumps(
            {
                "cluster": {"worker": ["a:1"]},
                "task": {"type": "worker", "index": 0},
            }
        ),
    )
    assert strategies.cluster_from_env() is None
    assert strategies.chief_from_env()
