"""Same seed, same result: a fine-tune repeated into another workdir, and
one interrupted and resumed, give bitwise the weights and history of an
uninterrupted run (data order, augmentation, dropout and kernels all
seeded; see `matl_keras.training.determinism`)."""

import csv
import json

import numpy as np
import pytest
import tensorflow as tf

from matl_keras.training import checkpoints
from matl_keras.training import determinism
from matl_keras.training import monitors
from matl_keras.training import optimizers
from tests.matl_keras.training import ssl_testing
from tests.matl_keras.training.stage_testing import reproducible_train as _train
from tests.matl_keras.training.stage_testing import weights_of as _weights


def _assert_same_run(first, second):
    a = _weights(first / "backbone.weights.h5")
    b = _weights(second / "backbone.weights.h5")
    assert a.keys() == b.keys() and len(a) > 50
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    rows = [
        list(csv.DictReader(open(d / "history.csv"))) for d in (first, second)
    ]
    assert [int(r["epoch"]) for r in rows[0]] == [0, 1]
    assert rows[0] == rows[1]
    assert json.load(open(first / "metrics.json")) == json.load(
        open(second / "metrics.json")
    )


def _kill(monkeypatch, epoch=None, batch=None):
    """Makes the next run raise KeyboardInterrupt (as a kill would) at the
    start of `epoch` (after the previous epoch's backup) or at the end of
    `batch` of the first epoch trained (before that step's backup)."""

    class Killed(monitors.Throughput):
        def on_epoch_begin(self, e, logs=None):
            if e == epoch:
                raise KeyboardInterrupt
            super().on_epoch_begin(e, logs)

        def on_train_batch_end(self, b, logs=None):
            super().on_train_batch_end(b, logs)
            if b == batch:
                raise KeyboardInterrupt

    monkeypatch.setattr(monitors, "Throughput", Killed)


def _uninterrupted(tmp_path_factory, run, name):
    """`run(path)` once for a module's tests (gin cleared first, as the
    per-test fixture does)."""
    import gin

    gin.clear_config()
    path = tmp_path_factory.mktemp(name) / "straight"
    run(path)
    return path


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """One uninterrupted tiny fine-tuning, shared by the tests below."""
    return _uninterrupted(tmp_path_factory, _train, "finetune")


def test_same_fine_tune_twice_is_bitwise_identical(tmp_path, straight):
    _train(tmp_path / "b")
    _assert_same_run(straight, tmp_path / "b")
    record = json.load(open(straight / "run.json"))
    assert record["deterministic"] is True  # CPU default ("auto")
    # Another seed is another run (the comparison above can fail).
    _train(tmp_path / "c", seed=4)
    other = _weights(tmp_path / "c" / "backbone.weights.h5")
    ours = _weights(straight / "backbone.weights.h5")
    assert any(not np.array_equal(ours[k], other[k]) for k in ours)


def test_interrupted_then_resumed_equals_uninterrupted(
    tmp_path, monkeypatch, straight
):
    _kill(monkeypatch, epoch=1)  # as if killed after epoch 0's backup
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "resumed")
    assert (
        checkpoints.ResumableBackup.completed_epochs(
            str(tmp_path / "resumed" / "backup")
        )
        == 1
    )
    monkeypatch.undo()
    _train(tmp_path / "resumed")
    record = json.load(open(tmp_path / "resumed" / "run.json"))
    assert record["resumed"] is True
    _assert_same_run(straight, tmp_path / "resumed")


def test_epoch_seeds_set_dropout_state_from_seed_and_epoch():
    """Keras does not save SeedGenerator states with the weights: the
    callback derives them from (seed, epoch) instead."""
    import keras

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dropout(0.5)(inputs))
    (state,) = determinism.seed_states(model)
    callback = determinism.EpochSeeds(seed=3, start_epoch=1)
    callback.set_model(model)
    callback.on_epoch_begin(1)
    first = state.numpy().tolist()
    assert first == [determinism.epoch_state(3, 1, 0), 0]
    callback.on_epoch_begin(2)
    assert state.numpy().tolist() == [determinism.epoch_state(3, 2, 0), 0]
    late = determinism.EpochSeeds(seed=3, start_epoch=0)
    late.set_model(model)
    with pytest.raises(Exception, match="built from epoch 0"):
        late.on_epoch_begin(1)


def test_deterministic_option_is_checked_and_recorded():
    from matl_keras.errors import ConfigError

    with pytest.raises(ConfigError, match="deterministic"):
        determinism.configure("yes")
    assert determinism.configure(False)["deterministic"] is False
    assert determinism.configure("auto")["deterministic"] is True  # CPU


def test_determinism_turns_off_the_arithmetic_optimizer_and_back():
    # With Grappler's arithmetic optimizer on, the region-aware step from
    # the same weights and batch gave different bits in different
    # processes (determinism.configure's comment has the measurement).
    options = tf.config.optimizer.get_experimental_options
    record = determinism.configure(True)
    assert options()["arithmetic_optimization"] is False
    assert "arithmetic optimizer off" in record["reason"]
    determinism.configure(False)
    assert options()["arithmetic_optimization"] is True
    determinism.configure("auto")
    assert options()["arithmetic_optimization"] is False


def _pretrain(workdir, **kwargs):
    kwargs = {"epochs": 2, "seed": 5, "monitor_split": None, **kwargs}
    return ssl_testing.pretrain(workdir, **kwargs)


def _assert_same_pretrain(first, second):
    for name in ("ssl_model.weights.h5", "backbone.weights.h5"):
        a, b = _weights(first / name), _weights(second / name)
        assert a.keys() == b.keys() and len(a) > 50
        for key in a:  # both encoders, heads, queue and its identities
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    rows = [
        list(csv.DictReader(open(d / "history.csv"))) for d in (first, second)
    ]
    assert [int(r["epoch"]) for r in rows[0]] == [0, 1]
    assert rows[0] == rows[1]


@pytest.fixture(scope="module")
def straight_pretrain(tmp_path_factory):
    """One uninterrupted tiny MoCo pretraining, shared by the tests below."""
    return _uninterrupted(tmp_path_factory, _pretrain, "pretrain")


def test_same_ssl_pretrain_twice_is_bitwise_identical(
    tmp_path, straight_pretrain
):
    """MoCo with shuffle-BN (the key permutation is seeded by the run seed
    and the step), a queue and two augmented views per image."""
    _pretrain(tmp_path / "b")
    _assert_same_pretrain(straight_pretrain, tmp_path / "b")
    _pretrain(tmp_path / "c", seed=6)
    ours = _weights(straight_pretrain / "backbone.weights.h5")
    other = _weights(tmp_path / "c" / "backbone.weights.h5")
    assert any(not np.array_equal(ours[k], other[k]) for k in ours)


def test_interrupted_then_resumed_pretrain_equals_uninterrupted(
    tmp_path, monkeypatch, straight_pretrain
):
    _kill(monkeypatch, epoch=1)  # as if killed after epoch 0's backup
    with pytest.raises(KeyboardInterrupt):
        _pretrain(tmp_path / "resumed")
    monkeypatch.undo()
    _pretrain(tmp_path / "resumed")
    assert json.load(open(tmp_path / "resumed" / "run.json"))["resumed"] is True
    _assert_same_pretrain(straight_pretrain, tmp_path / "resumed")


def test_killed_mid_epoch_resumes_at_its_step_backup_and_equals_uninterrupted(
    tmp_path, monkeypatch, capsys, straight
):
    """`backup_every_steps`: a kill inside epoch 0 (3 steps) after its
    step-2 backup resumes at step 2, finishes that epoch on its last batch
    only, then trains epoch 1: weights, history (epoch means of the
    training metrics too) and metrics equal an uninterrupted run's (one
    without step backups: they change nothing else)."""

    _kill(monkeypatch, batch=2)  # as if killed in the third step
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "resumed", backup_every_steps=2)
    backup = str(tmp_path / "resumed" / "backup")
    assert checkpoints.ResumableBackup.resume_point(backup) == (0, 2)
    monkeypatch.undo()
    capsys.readouterr()
    _train(tmp_path / "resumed", backup_every_steps=2)
    assert "resuming after epoch 0, step 2 from" in capsys.readouterr().out
    _assert_same_run(straight, tmp_path / "resumed")


def test_backup_every_steps_is_checked():
    from matl_keras.errors import ConfigError

    with pytest.raises(ConfigError, match="backup_every_steps=0"):
        checkpoints.ResumableBackup("backup", every_steps=0)


def test_backup_every_steps_is_refused_on_several_replicas(tmp_path):
    from matl_keras.errors import ConfigError

    with pytest.raises(
        ConfigError, match="works on one replica; this run has 2"
    ):
        _train(tmp_path, backup_every_steps=2, strategy="mirrored")
    assert not (tmp_path / "run.json").exists()  # refused before anything


def test_pretrain_killed_mid_epoch_resumes_at_its_step_and_equals_uninterrupted(
    tmp_path, monkeypatch, straight_pretrain
):
    """SSTL-M with `backup_every_steps=1` (2 steps an epoch): killed in the
    second step of epoch 0, it resumes after step 1 with the queue, key
    encoder and optimizer of that step, and ends as an uninterrupted run
    (step backups change nothing else)."""

    _kill(monkeypatch, batch=1)  # in the second step of epoch 0
    with pytest.raises(KeyboardInterrupt):
        _pretrain(tmp_path / "resumed", backup_every_steps=1)
    backup = str(tmp_path / "resumed" / "backup")
    assert checkpoints.ResumableBackup.resume_point(backup) == (0, 1)
    monkeypatch.undo()
    _pretrain(tmp_path / "resumed", backup_every_steps=1)
    _assert_same_pretrain(straight_pretrain, tmp_path / "resumed")


def test_lars_pretrain_resumes_to_the_uninterrupted_bits(tmp_path, monkeypatch):
    """SimCLR's optimizer: its momentum slots and cosine rate are restored
    from the backup like SGD's (a kill after epoch 0, then the rest)."""

    def lars(**kw):
        return optimizers.lars(learning_rate=1.0, warmup_epochs=1, **kw)

    _pretrain(tmp_path / "straight", optimizer=lars)
    _kill(monkeypatch, epoch=1)
    with pytest.raises(KeyboardInterrupt):
        _pretrain(tmp_path / "resumed", optimizer=lars)
    monkeypatch.undo()
    _pretrain(tmp_path / "resumed", optimizer=lars)
    assert json.load(open(tmp_path / "resumed" / "run.json"))["resumed"] is True
    _assert_same_pretrain(tmp_path / "straight", tmp_path / "resumed")
