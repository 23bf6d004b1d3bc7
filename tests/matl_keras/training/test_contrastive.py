"""The contrastive machinery: momentum update, queue, and every SSL method
under MirroredStrategy (2 logical CPUs) equal to one device."""

import numpy as np
import pytest
import tensorflow as tf

from matl_keras.models.resnet.resnet_backbone import ResNetBackbone
from matl_keras.training import strategies
from matl_keras_plugins.ssl_methods.moco import MoCo
from matl_keras_plugins.ssl_methods.region_aware import RegionAware
from matl_keras_plugins.ssl_methods.simclr import SimCLR

SIZE = 32


def _backbone(name="resnet"):
    return ResNetBackbone(depth=18, width_multiplier=0.25, image_size=SIZE,
                          sync_batchnorm=True, name=name)


def _build(cls, **kwargs):
    args = dict(backbone=_backbone(), image_size=SIZE, hidden_dim=16,
                projection_dim=8)
    if cls.needs_key_encoder:
        args.update(key_backbone=_backbone("key_resnet"), queue_size=16, momentum=0.9)
    args.update(kwargs)
    model = cls(**args)
    model.build()
    return model


def test_key_encoder_starts_equal_and_momentum_update_is_eq_3():
    model = _build(MoCo)
    for k, q in zip(model.key_weights, model.query_weights):
        np.testing.assert_array_equal(k.numpy(), q.numpy())
    assert len(model.key_weights) == len(model.query_weights) > 0
    for q in model.query_weights:
        q.assign(q + 1.0)
    before = [k.numpy() for k in model.key_weights]
    model.momentum_update()
    for k, old, q in zip(model.key_weights, before, model.query_weights):
        np.testing.assert_allclose(k.numpy(), 0.9 * old + 0.1 * q.numpy(), rtol=1e-6)
    # Key encoder: not optimized, but BatchNorm still in training mode.
    ids = {id(v) for v in model.optimized_variables}
    assert not any(id(v) in ids for v in model.key_weights)
    assert model.key_backbone.trainable


def test_queue_is_fifo_and_wraps():
    model = _build(MoCo)
    keys = [np.full((6, 8), i + 1, np.float32) for i in range(3)]
    model.enqueue(tf.constant(keys[0]))
    assert int(model.queue_pointer.numpy()) == 6
    assert int(model.queue_filled.numpy()) == 6
    assert model.queue_valid().numpy().sum() == 6
    model.enqueue(tf.constant(keys[1]))
    model.enqueue(tf.constant(keys[2]))  # 18 > 16: wraps
    queue = model.queue.numpy()[:, 0]
    np.testing.assert_array_equal(queue, [3, 3] + [1] * 4 + [2] * 6 + [3] * 4)
    assert int(model.queue_pointer.numpy()) == 2
    assert int(model.queue_filled.numpy()) == 16
    model.enqueue(tf.constant(keys[0][:3]))  # a partial batch
    assert int(model.queue_pointer.numpy()) == 5
    np.testing.assert_array_equal(model.queue.numpy()[2:5, 0], [1, 1, 1])


def test_queue_smaller_than_the_batch_is_an_error():
    model = _build(MoCo, queue_size=4)
    with pytest.raises(tf.errors.InvalidArgumentError, match="queue_size"):
        model.enqueue(tf.zeros([6, 8]))


def _views(cls, n):
    rng = np.random.default_rng(0)
    image = lambda *s: rng.uniform(0, 1, (n, *s, SIZE, SIZE, 3)).astype(np.float32)  # noqa
    if cls is SimCLR:
        return {"view1": image(), "view2": image()}
    views = {"query": image(), "key": image()}
    if cls is RegionAware:
        views["regions"] = image(5)
    return views


def _fit(cls, strategy_name, weights):
    import keras

    # The same initial weights whatever ran before in this process.
    keras.utils.set_random_seed(0)
    strategy = strategies.get_strategy(strategy_name)
    with strategy.scope():
        model = _build(cls)
        if weights is not None:
            model.set_weights(weights)
        initial = model.get_weights()
        # A small learning rate keeps the comparison well-conditioned. From
        # this random init the problem is chaotic at larger steps: with
        # SGD(0.01, momentum 0.9), perturbing the initial weights by 1e-6
        # (relative) on ONE device moves region_aware's two-step updates by
        # up to 60% (MoCo's by 5%), so float rounding alone (the replicas
        # sum gradients in another order) would decide the outcome. At 1e-4
        # the same rounding stays below 0.5% of every update.
        model.compile(optimizer=keras.optimizers.SGD(1e-4, momentum=0.9), jit_compile=False)
    # Two steps: the second uses the queue filled by the first and the
    # momentum-updated key encoder.
    data = tf.data.Dataset.from_tensor_slices((_views(cls, 16), np.zeros(16, np.int32))).batch(8)
    history = model.fit(data, epochs=1, verbose=0, shuffle=False)
    return model, initial, history.history


def _update_mismatch(one, two, initial):
    """Per weight: max |update(two) - update(one)| / max |update(one)|.

    Weights whose update is at the float32 noise floor (e.g. the bias of a
    convolution followed by BatchNorm, whose gradient is ~0) are skipped.
    """
    mismatch = {}
    for w, a, b, w0 in zip(one.weights, one.get_weights(), two.get_weights(), initial):
        if not np.issubdtype(a.dtype, np.floating):
            continue
        update = np.abs(a - w0).max()
        if update < 1e-7:
            continue
        mismatch[w.path] = float(np.abs((b - w0) - (a - w0)).max() / update)
    return mismatch


@pytest.mark.parametrize("cls", [MoCo, SimCLR, RegionAware])
def test_mirrored_over_two_cpus_equals_one_device(cls):
    one, initial, history_one = _fit(cls, "default", None)
    two, _, history_two = _fit(cls, "mirrored", initial)
    assert strategies.get_strategy("mirrored").num_replicas_in_sync == 2
    for key in history_one:
        np.testing.assert_allclose(history_two[key], history_one[key], rtol=1e-5, err_msg=key)
    names = [w.path.split("/", 1)[1] for w in one.weights]
    assert names == [w.path.split("/", 1)[1] for w in two.weights]
    mismatch = _update_mismatch(one, two, initial)
    assert any("moving" in name for name in mismatch)  # BatchNorm statistics compared
    assert any("conv1_conv/kernel" in name for name in mismatch)  # the whole backbone
    worst = max(mismatch, key=mismatch.get)
    assert mismatch[worst] < 1e-2, (worst, mismatch[worst])
    if cls is not SimCLR:
        assert int(two.queue_filled.numpy()) == 16
        # Keys are unit vectors: 1e-5 is float32 rounding through a forward pass.
        np.testing.assert_allclose(two.queue.numpy(), one.queue.numpy(), atol=1e-5)


def test_the_equivalence_check_catches_a_wrong_reduction(monkeypatch):
    """The check above can fail: a loss divided by the replica's batch
    instead of the global batch (the mistake built-in losses make for you
    and a custom train_step must avoid) doubles every update."""
    from matl_keras.training import contrastive

    one, initial, _ = _fit(MoCo, "default", None)
    real = contrastive._replica_context
    monkeypatch.setattr(
        contrastive, "_replica_context", lambda: (*real()[:1], 1, real()[2])
    )
    two, _, _ = _fit(MoCo, "mirrored", initial)
    mismatch = _update_mismatch(one, two, initial)
    assert mismatch["conv1_conv/kernel"] > 0.5


def test_views_are_two_independent_augmentations_and_five_regions():
    from tests.plugins.test_lung_regions import _phantom

    image, _ = _phantom(40)
    moco = _build(MoCo)
    data = tf.data.Dataset.from_tensors(tf.constant(image)).repeat(4).map(moco.views)
    views = [v for v in data]
    for v in views:
        assert v["query"].shape == v["key"].shape == (SIZE, SIZE, 3)
        # Same image, two different random augmentations (else MoCo's
        # positive pair would be trivial).
        assert not np.allclose(v["query"].numpy(), v["key"].numpy())
    # And different draws for the same image across examples.
    assert not np.allclose(views[0]["query"].numpy(), views[1]["query"].numpy())
    region = _build(RegionAware, augment_regions=False)
    crops = next(iter(tf.data.Dataset.from_tensors(tf.constant(image)).map(region.views)))["regions"]
    assert crops.shape == (5, SIZE, SIZE, 3)
    flat = crops.numpy().reshape(5, -1)
    assert all(not np.allclose(flat[i], flat[j]) for i in range(5) for j in range(i + 1, 5))
