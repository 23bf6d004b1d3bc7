"""The contrastive machinery: momentum update, queue, and every SSL method
(SimSiam too) under MirroredStrategy (2 logical CPUs) equal to one device."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from matl_keras_plugins.ssl_methods.moco import MoCo
from matl_keras_plugins.ssl_methods.region_aware import RegionAware
from matl_keras_plugins.ssl_methods.simclr import SimCLR
from matl_keras_plugins.ssl_methods.simsiam import SimSiam

from matl_keras.errors import ConfigError
from matl_keras.layers.fused_batch_norm import FusedBatchNormalization
from matl_keras.models.resnet.resnet_backbone import ResNetBackbone
from matl_keras.training import contrastive
from matl_keras.training import ssl_losses
from matl_keras.training import strategies
from matl_keras.training.ssl_method import RunSchedule
from matl_keras.training.stage_run import build_before_fit
from tests.matl_keras.training import ssl_testing
from tests.matl_keras.training.ssl_testing import SIZE
from tests.matl_keras.training.ssl_testing import build as _build
from tests.matl_keras.training.ssl_testing import data as _data
from tests.matl_keras.training.ssl_testing import update_mismatch


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
        np.testing.assert_allclose(
            k.numpy(), 0.9 * old + 0.1 * q.numpy(), rtol=1e-6, atol=1e-7
        )
    # Key encoder: not optimized, but BatchNorm still in training mode.
    ids = {id(v) for v in model.optimized_variables}
    assert not any(id(v) in ids for v in model.key_weights)
    assert model.key_backbone.trainable


def _ids(start, n):
    return tf.range(start, start + n, dtype=tf.int32)


def test_queue_is_fifo_wraps_and_keeps_the_images_identities():
    model = _build(MoCo)
    keys = [np.full((6, 8), i + 1, np.float32) for i in range(3)]
    model.enqueue(tf.constant(keys[0]), _ids(0, 6))
    assert int(model.queue_pointer.numpy()) == 6
    assert int(model.queue_filled.numpy()) == 6
    # Never-written slots are no query's negatives.
    assert model.queue_mask(_ids(100, 2)).numpy().sum(1).tolist() == [6, 6]
    model.enqueue(tf.constant(keys[1]), _ids(6, 6))
    model.enqueue(tf.constant(keys[2]), _ids(12, 6))  # 18 > 16: wraps
    queue = model.queue.numpy()[:, 0]
    np.testing.assert_array_equal(queue, [3, 3] + [1] * 4 + [2] * 6 + [3] * 4)
    np.testing.assert_array_equal(
        model.queue_ids.numpy(),
        [16, 17, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
    )
    assert int(model.queue_pointer.numpy()) == 2
    assert int(model.queue_filled.numpy()) == 16
    model.enqueue(tf.constant(keys[0][:3]), _ids(0, 3))  # a partial batch
    assert int(model.queue_pointer.numpy()) == 5
    np.testing.assert_array_equal(model.queue.numpy()[2:5, 0], [1, 1, 1])


def test_queue_smaller_than_the_batch_is_an_error():
    model = _build(MoCo, queue_size=4)
    with pytest.raises(tf.errors.InvalidArgumentError, match="queue_size"):
        model.enqueue(tf.zeros([6, 8]), _ids(0, 6))


def test_a_query_never_has_a_key_of_its_own_image_as_a_negative():
    """A queue full of the query's own image: the degenerate case where an
    unmasked InfoNCE pushes an image away from its own views."""
    model = _build(MoCo, queue_size=8)
    rng = np.random.default_rng(0)
    query = rng.normal(size=(2, 8)).astype(np.float32)
    key = query + 0.1 * rng.normal(size=(2, 8)).astype(np.float32)
    own = ssl_losses.l2_normalize(np.repeat(key[:1], 6, 0)).numpy()
    others = ssl_losses.l2_normalize(rng.normal(size=(2, 8))).numpy()
    model.enqueue(
        tf.constant(np.concatenate([own, others])),
        tf.constant([5] * 6 + [7, 8]),
    )
    ids = tf.constant([5, 6])
    mask = model.queue_mask(ids).numpy()
    assert mask[0].tolist() == [False] * 6 + [True, True]  # 0 self-negatives
    assert mask[1].all()
    got = ssl_losses.info_nce(
        query, key, model.queue, 0.2, model.queue_mask(ids)
    ).numpy()
    # Reference: query 0 against the other images' keys only.
    q = query[0] / np.linalg.norm(query[0])
    k = key[0] / np.linalg.norm(key[0])
    logits = np.array([q @ k, *(others @ q)]) / 0.2
    expected = -(logits[0] - np.log(np.exp(logits).sum()))
    np.testing.assert_allclose(got[0], expected, rtol=1e-5)
    unmasked = ssl_losses.info_nce(query, key, model.queue, 0.2).numpy()
    assert unmasked[0] > got[0] + 1.0  # what the mask prevents


def test_symmetric_moco_averages_both_directions_and_enqueues_the_same_keys():
    model = _build(MoCo, symmetric=True)
    model.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=False)
    model.optimizer.build(model.optimized_variables)
    views = {k: tf.constant(v) for k, v in ssl_testing.views(MoCo, 8).items()}
    negatives = np.random.default_rng(1).normal(size=(16, 8))
    model.enqueue(
        ssl_losses.l2_normalize(tf.constant(negatives, tf.float32)),
        _ids(100, 16),
    )
    ids = _ids(0, 8)
    both, extras = model.per_example_loss(views, ids)
    model.symmetric = False
    forward, forward_extras = model.per_example_loss(views, ids)
    swapped = {"query": views["key"], "key": views["query"]}
    backward, _ = model.per_example_loss(swapped, ids)
    np.testing.assert_allclose(both, (forward + backward) / 2, rtol=1e-5)
    assert np.abs(both.numpy() - forward.numpy()).max() > 1e-3
    # The queue takes the second view's keys, as without `symmetric`.
    np.testing.assert_allclose(
        extras["keys"], forward_extras["keys"], atol=1e-6
    )
    assert MoCo(**_moco_args(symmetric=True)).run_record()["symmetric"]
    with pytest.raises(ConfigError, match="symmetric='yes'"):
        MoCo(**_moco_args(symmetric="yes"))


def _moco_args(**kwargs):
    return dict(
        backbone=ssl_testing.backbone(groups=2),
        key_backbone=ssl_testing.backbone("key_resnet", 2),
        image_size=SIZE,
        hidden_dim=16,
        projection_dim=8,
        queue_size=16,
        **kwargs,
    )


def test_simclr_head_is_simclrs_with_batchnorm_over_the_global_batch():
    model = _build(SimCLR)
    norms = [
        layer
        for layer in model.projector.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    # Dense-BN-ReLU-Dense-BN; the output BatchNorm has no shift, its Dense
    # no bias (google-research/simclr's ProjectionHead).
    assert [n.center for n in norms] == [True, False]
    assert all(n.synchronized for n in norms)
    dense = [
        layer
        for layer in model.projector.layers
        if isinstance(layer, keras.layers.Dense)
    ]
    assert [d.use_bias for d in dense] == [False, False]
    assert model.run_record()["head_batchnorm"] is True
    plain = _build(SimCLR, head_batchnorm=False)
    assert not any(
        isinstance(layer, keras.layers.BatchNormalization)
        for layer in plain.projector.layers
    )
    # Per-replica BatchNorm backbone: per-replica head.
    local = SimCLR(
        backbone=ResNetBackbone(
            depth=10, width_multiplier=0.25, image_size=SIZE
        ),
        image_size=SIZE,
        hidden_dim=16,
        projection_dim=8,
    )
    assert not any(
        getattr(layer, "synchronized", False)
        for layer in local.projector.layers
    )
    with pytest.raises(ConfigError, match="head_batchnorm=1"):
        _build(SimCLR, head_batchnorm=1)
    with pytest.raises(ConfigError, match="head_factory"):
        _build(SimCLR, head_factory=contrastive.projection_head)
    own = _build(
        SimCLR, head_batchnorm=False, head_factory=contrastive.projection_head
    )
    assert own.projector.name == "projector"


def _schedule(num_examples, batch=8, epochs=3, seed=0):
    return RunSchedule(
        num_examples=num_examples,
        steps_per_epoch=num_examples // batch,
        epochs=epochs,
        global_batch_size=batch,
        seed=seed,
    )


def test_queue_is_sized_to_the_data_and_a_larger_one_refused():
    def moco(**kwargs):
        return MoCo(
            backbone=_build(MoCo).backbone,
            image_size=SIZE,
            key_backbone=_build(MoCo).key_backbone,
            **kwargs,
        )

    model = moco(queue_size="auto")
    model.configure(_schedule(425, batch=32))
    # 13 steps x 32 = 416 images an epoch, minus a batch, whole batches.
    assert model.queue_size == 384
    paper = moco(queue_size="auto")
    paper.configure(_schedule(425, batch=256))  # one step an epoch
    assert paper.queue_size == 256
    with pytest.raises(
        ConfigError, match=r"queue_size` \(4096\).*425 training images"
    ):
        moco(queue_size=4096).configure(_schedule(425, batch=32))
    with pytest.raises(ConfigError, match="at least the global batch"):
        moco(queue_size=16).configure(_schedule(425, batch=32))
    with pytest.raises(ConfigError, match="needs negatives"):
        moco(queue_size=0).configure(_schedule(425, batch=32))


def test_cosine_momentum_schedule_is_used_by_the_update():
    model = _build(MoCo, momentum=0.9, momentum_schedule="cosine")
    model.configure(_schedule(32, batch=8, epochs=2))  # 8 steps
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    for q in model.query_weights:
        q.assign(q + 1.0)
    model.optimizer.iterations.assign(1)  # the first step was just taken
    before = [k.numpy() for k in model.key_weights]
    model.momentum_update()
    for k, old, q in zip(model.key_weights, before, model.query_weights):
        np.testing.assert_allclose(
            k.numpy(), 0.9 * old + 0.1 * q.numpy(), rtol=1e-5, atol=1e-7
        )
    model.optimizer.iterations.assign(9)  # t = T: m = 1
    before = [k.numpy() for k in model.key_weights]
    model.momentum_update()
    for k, old in zip(model.key_weights, before):
        np.testing.assert_array_equal(k.numpy(), old)


def test_shuffle_permutation_mixes_every_key_group():
    seed = tf.constant([3, 4], tf.int64)
    for batch, groups in [(8, 2), (32, 2), (32, 4), (12, 3), (64, 8)]:
        perm = contrastive.shuffle_permutation(batch, groups, seed).numpy()
        assert sorted(perm) == list(range(batch))
        size = batch // groups
        query_groups = [
            set(range(g * size, (g + 1) * size)) for g in range(groups)
        ]
        for k in range(groups):
            key_group = set(perm[k * size : (k + 1) * size])
            assert key_group not in query_groups
            # Images of at least two query groups meet in every key group.
            assert sum(bool(key_group & q) for q in query_groups) >= 2
    other = contrastive.shuffle_permutation(
        32, 4, tf.constant([3, 5], tf.int64)
    )
    assert not np.array_equal(
        other.numpy(), contrastive.shuffle_permutation(32, 4, seed).numpy()
    )
    with pytest.raises(ValueError, match="groups"):
        contrastive.shuffle_permutation(8, 1, seed)


def test_grouped_batchnorm_normalises_each_group_alone():
    layer = FusedBatchNormalization(groups=2, momentum=0.5, epsilon=1e-3)
    x = (
        np.random.default_rng(0)
        .normal(2.0, 3.0, (4, 3, 3, 5))
        .astype(np.float32)
    )
    x[2:] *= 10.0  # the second group has other statistics
    y = layer(x, training=True).numpy()
    for g in (slice(0, 2), slice(2, 4)):
        part = x[g]
        mean = part.mean((0, 1, 2))
        var = part.var((0, 1, 2))
        np.testing.assert_allclose(
            y[g], (part - mean) / np.sqrt(var + 1e-3), atol=1e-4
        )
    groups = x.reshape(2, -1, 5)
    np.testing.assert_allclose(
        layer.moving_mean.numpy(), 0.5 * groups.mean(1).mean(0), rtol=1e-5
    )
    np.testing.assert_allclose(
        layer.moving_variance.numpy(),
        0.5 + 0.5 * groups.var(1).mean(0),
        rtol=1e-5,
    )
    # Inference: the moving statistics, whatever the groups.
    plain = keras.layers.BatchNormalization(momentum=0.5, epsilon=1e-3)
    plain.build(x.shape)
    plain.set_weights(layer.get_weights())
    np.testing.assert_allclose(layer(x).numpy(), plain(x).numpy(), atol=1e-4)
    with pytest.raises(ValueError, match="exclude"):
        FusedBatchNormalization(groups=2, synchronized=True)


def test_keys_come_from_shuffled_groups_and_return_in_order():
    """Shuffle-BN: each key is computed with the BatchNorm statistics of a
    key group that is not its query's group, and handed back in the
    query's order."""
    model = _build(MoCo)
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    images = tf.constant(
        np.random.default_rng(1).uniform(0, 1, (8, SIZE, SIZE, 3)), tf.float32
    )
    keys = model.encode_keys(images).numpy()
    perm = contrastive.shuffle_permutation(8, 2, model._key_seed()).numpy()
    expected = np.zeros_like(keys)
    # Reference: a plain-BN copy of the key encoder run on each key group
    # alone, so that each group is normalised with its own statistics only.
    from tests.matl_keras.training.ssl_testing import backbone

    plain = backbone("plain_key")
    plain.build((None, SIZE, SIZE, 3))
    plain.set_weights(model.key_backbone.get_weights())
    for k in range(2):
        members = perm[k * 4 : (k + 1) * 4]
        alone = tf.gather(images, members)
        single = model.key_projector(plain(alone, training=True))
        expected[members] = ssl_losses.l2_normalize(single).numpy()
        assert set(members) not in ({0, 1, 2, 3}, {4, 5, 6, 7})
    np.testing.assert_allclose(keys, expected, atol=1e-4)


def _fit(cls, strategy_name, weights, **kwargs):
    # The same initial weights whatever ran before in this process.
    keras.utils.set_random_seed(0)
    strategy = strategies.get_strategy(strategy_name)
    with strategy.scope():
        model = _build(cls, **kwargs)
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
        # SimSiam's gradients are ~10x smaller (its cosines start near 0):
        # at 1e-4 a BatchNorm gamma (~1.0) moves by ~1e-5, about 100 float32
        # ulps, so one ulp of rounding would read as a 1% mismatch.
        rate = 1e-3 if cls is SimSiam else 1e-4
        model.compile(
            optimizer=keras.optimizers.SGD(rate, momentum=0.9),
            jit_compile=False,
        )
    # Two steps: the second uses the queue filled by the first and the
    # momentum-updated key encoder.
    data = _data(cls, region_size=kwargs.get("region_size") or SIZE)
    # As a stage does: the step is traced once (optimizer built first).
    build_before_fit(model, data, strategy)
    history = model.fit(data, epochs=1, verbose=0, shuffle=False)
    return model, initial, history.history


def _update_mismatch(one, two, initial):
    """Per weight: `ssl_testing.update_mismatch` of the two runs' updates.

    Weights whose update is at the float32 noise floor (e.g. the bias of a
    convolution followed by BatchNorm, whose gradient is ~0) are skipped.
    """
    mismatch = {}
    for w, a, b, w0 in zip(
        one.weights, one.get_weights(), two.get_weights(), initial
    ):
        if not np.issubdtype(a.dtype, np.floating):
            continue
        value = update_mismatch(w0, a, b)
        if value is not None:
            mismatch[w.path] = value
    return mismatch


# SimSiam (beyond the paper; ~30 s) in the `slow` tier.
@pytest.mark.parametrize(
    "cls",
    [MoCo, SimCLR, RegionAware, pytest.param(SimSiam, marks=pytest.mark.slow)],
)
def test_mirrored_over_two_cpus_equals_one_device(cls):
    _check_mirrored_equals_one_device(cls)


# slow: the equality above for region_aware with `region_size` set (~30 s).
@pytest.mark.slow
def test_mirrored_equals_one_device_with_half_size_region_crops():
    _check_mirrored_equals_one_device(RegionAware, region_size=SIZE // 2)


# slow: the equality above for MoCo's symmetric loss (~15 s).
@pytest.mark.slow
def test_mirrored_equals_one_device_with_symmetric_moco():
    _check_mirrored_equals_one_device(MoCo, symmetric=True)


def _check_mirrored_equals_one_device(cls, **kwargs):
    one, initial, history_one = _fit(cls, "default", None, **kwargs)
    two, _, history_two = _fit(cls, "mirrored", initial, **kwargs)
    assert strategies.get_strategy("mirrored").num_replicas_in_sync == 2
    for key in history_one:
        # atol: SimSiam's loss, a mean of cosines in [-1, 1], starts near 0.
        np.testing.assert_allclose(
            history_two[key],
            history_one[key],
            rtol=1e-5,
            atol=1e-6,
            err_msg=key,
        )
    names = [w.path.split("/", 1)[1] for w in one.weights]
    assert names == [w.path.split("/", 1)[1] for w in two.weights]
    mismatch = _update_mismatch(one, two, initial)
    assert any(
        "moving" in name for name in mismatch
    )  # BatchNorm statistics compared
    assert any(
        "conv1_conv/kernel" in name for name in mismatch
    )  # the whole backbone
    worst = max(mismatch, key=mismatch.get)
    assert mismatch[worst] < 1e-2, (worst, mismatch[worst])
    if cls.needs_key_encoder:
        assert int(two.queue_filled.numpy()) == 16
        # Keys are unit vectors: 1e-5 is float32 rounding through a forward
        # pass.
        np.testing.assert_allclose(
            two.queue.numpy(), one.queue.numpy(), atol=1e-5
        )


# slow: a check of the check (~30 s); the equalities above run by default.
@pytest.mark.slow
def test_the_equivalence_check_catches_a_wrong_reduction(monkeypatch):
    """The check above can fail: a loss divided by the replica's batch
    instead of the global batch (the mistake built-in losses make for you
    and a custom train_step must avoid) doubles every update."""
    one, initial, _ = _fit(MoCo, "default", None)
    monkeypatch.setattr(
        contrastive,
        "_global_batch",
        lambda per_example: tf.cast(tf.shape(per_example)[0], tf.float32),
    )
    two, _, _ = _fit(MoCo, "mirrored", initial)
    mismatch = _update_mismatch(one, two, initial)
    assert mismatch["conv1_conv/kernel"] > 0.5


def _seeded(fn, element):
    """`fn(element, seed)` for 4 examples with seeds (i, 0), as tf.data."""
    return list(
        tf.data.Dataset.from_tensors(element)
        .repeat(4)
        .enumerate()
        .map(lambda i, x: fn(x, tf.stack([i, tf.constant(0, tf.int64)])))
    )


def test_views_are_two_independent_augmentations_and_five_regions():
    from tests.plugins.plugin_testing import phantom as _phantom

    image, _ = _phantom(40)
    moco = _build(MoCo)
    views = _seeded(moco.views, tf.constant(image))
    for v in views:
        assert v["query"].shape == v["key"].shape == (SIZE, SIZE, 3)
        # Same image, two different random augmentations (else MoCo's
        # positive pair would be trivial).
        assert not np.allclose(v["query"].numpy(), v["key"].numpy())
    # Different draws for the same image across examples, and the same
    # views again for the same seed (nothing random outside the seed).
    assert not np.allclose(views[0]["query"].numpy(), views[1]["query"].numpy())
    again = _seeded(moco.views, tf.constant(image))
    np.testing.assert_array_equal(
        views[2]["key"].numpy(), again[2]["key"].numpy()
    )
    region = _build(RegionAware, augment_regions=False)
    full = tf.constant(_phantom(120)[0])  # the Generator sees full resolution
    element = {"image": tf.image.resize(full, [37, 37]), **region.prepare(full)}
    assert element["regions"].shape == (
        5,
        region.region_load_size,
        region.region_load_size,
        3,
    )
    crops = _seeded(region.views, element)[0]["regions"]
    assert crops.shape == (5, SIZE, SIZE, 3)
    flat = crops.numpy().reshape(5, -1)
    assert all(
        not np.allclose(flat[i], flat[j])
        for i in range(5)
        for j in range(i + 1, 5)
    )


def test_region_crops_are_augmented_but_never_flipped():
    """A flip would make a right-lung crop look like a left-lung one."""
    region = _build(RegionAware)
    half = np.zeros((40, 40, 3), np.float32)
    half[:, 20:] = 1.0  # dark left, bright right: a flip shows as bright left
    element = {
        "image": tf.constant(half),
        "regions": tf.constant(np.stack([half] * 5)),
    }
    for v in _seeded(region.views, element):
        crops = v["regions"].numpy()
        assert (
            crops[:, :, : SIZE // 4].mean() < crops[:, :, -SIZE // 4 :].mean()
        )
    # The views themselves are flipped about half the time.
    flips = [
        v["query"].numpy()[:, :4].mean() > v["query"].numpy()[:, -4:].mean()
        for i in range(8)
        for v in [region.views(element, tf.constant([i, 1], tf.int64))]
    ]
    assert 0 < sum(flips) < 8


def test_key_permutation_is_the_same_under_xla():
    """XLA's Philox differs from TensorFlow's kernel; the permutation uses
    an integer hash so that jit_compile cannot change the training."""

    def perm(seed):
        return contrastive.shuffle_permutation(32, 4, seed)

    for seed in ([0, 1], [7, 123456], [2**31 - 1, 5]):
        seed = tf.constant(seed, tf.int64)
        np.testing.assert_array_equal(
            tf.function(perm, jit_compile=True)(seed).numpy(),
            perm(seed).numpy(),
        )
