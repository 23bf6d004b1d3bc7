"""SSL loss math against plain numpy references."""

import numpy as np
import pytest
import tensorflow as tf

from matl_keras.training import ssl_losses


def _normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def test_info_nce_matches_numpy():
    rng = np.random.default_rng(0)
    q, k = rng.normal(size=(6, 8)), rng.normal(size=(6, 8))
    queue = _normalize(rng.normal(size=(10, 8)))
    tau = 0.07
    got = ssl_losses.info_nce(q, k, queue, tau).numpy()
    qn, kn = _normalize(q), _normalize(k)
    logits = (
        np.concatenate([(qn * kn).sum(1, keepdims=True), qn @ queue.T], 1) / tau
    )
    np.testing.assert_allclose(got, -_log_softmax(logits)[:, 0], rtol=1e-4)


def test_info_nce_ignores_unwritten_queue_slots():
    rng = np.random.default_rng(1)
    q, k = rng.normal(size=(4, 8)), rng.normal(size=(4, 8))
    queue = _normalize(rng.normal(size=(10, 8)))
    valid = np.arange(10) < 3
    zeros_after = queue.copy()
    zeros_after[3:] = 0.0  # stale zeros must not count
    masked = ssl_losses.info_nce(
        q, k, zeros_after, 0.2, tf.constant(valid)
    ).numpy()
    only_three = ssl_losses.info_nce(q, k, queue[:3], 0.2).numpy()
    np.testing.assert_allclose(masked, only_three, rtol=1e-5)
    empty = ssl_losses.info_nce(q, k, queue, 0.2, tf.zeros([10], bool)).numpy()
    np.testing.assert_allclose(empty, 0.0, atol=1e-6)  # only the positive


def _nt_xent_numpy(z1, z2, tau, ids=None):
    z = _normalize(np.concatenate([z1, z2]))
    n = len(z1)
    sim = z @ z.T / tau
    positives = np.concatenate([np.arange(n, 2 * n), np.arange(n)])
    ids = np.arange(n) if ids is None else np.asarray(ids)
    both = np.concatenate([ids, ids])
    # Not a negative: any view of an image of the row's identity (its own
    # view included), except the row's positive.
    masked = both[:, None] == both[None, :]
    masked[np.arange(2 * n), positives] = False
    sim[masked] = -np.inf
    return -_log_softmax(sim)[np.arange(2 * n), positives]


def test_nt_xent_matches_numpy():
    rng = np.random.default_rng(2)
    z1, z2 = rng.normal(size=(5, 8)), rng.normal(size=(5, 8))
    got = ssl_losses.nt_xent(z1, z2, 0.5).numpy()
    np.testing.assert_allclose(got, _nt_xent_numpy(z1, z2, 0.5), rtol=1e-4)


def test_nt_xent_of_a_replica_slice_equals_the_global_rows():
    rng = np.random.default_rng(3)
    z1, z2 = rng.normal(size=(6, 8)), rng.normal(size=(6, 8))
    full = _nt_xent_numpy(z1, z2, 0.1)
    # Replica 1 of 2 holds examples 3..5 and sees the gathered batch.
    got = ssl_losses.nt_xent(z1[3:], z2[3:], 0.1, z1, z2, offset=3).numpy()
    np.testing.assert_allclose(got[:3], full[3:6], rtol=1e-4)
    np.testing.assert_allclose(got[3:], full[9:12], rtol=1e-4)


def test_nt_xent_never_takes_an_image_of_the_query_source_as_a_negative():
    rng = np.random.default_rng(5)
    z1, z2 = rng.normal(size=(6, 8)), rng.normal(size=(6, 8))
    # Images 0, 1, 2 are slices of one patient; 3, 4, 5 of three others.
    ids = np.array([7, 7, 7, 1, 2, 3], np.int32)
    got = ssl_losses.nt_xent(z1, z2, 0.2, ids=ids).numpy()
    np.testing.assert_allclose(got, _nt_xent_numpy(z1, z2, 0.2, ids), rtol=1e-4)
    plain = ssl_losses.nt_xent(z1, z2, 0.2).numpy()
    # Fewer negatives for the patient's rows only; the others are unchanged.
    assert (got[[0, 1, 2, 6, 7, 8]] < plain[[0, 1, 2, 6, 7, 8]]).all()
    np.testing.assert_allclose(got[3:6], plain[3:6], rtol=1e-5)
    # A batch of one patient: only the positive is left, the loss is 0.
    one = ssl_losses.nt_xent(z1, z2, 0.2, ids=np.zeros(6, np.int32)).numpy()
    np.testing.assert_allclose(one, 0.0, atol=1e-6)
    # Per replica (examples 3..5 of the gathered batch), the same rows.
    part = ssl_losses.nt_xent(
        z1[3:], z2[3:], 0.2, z1, z2, offset=3, ids=ids[3:], ids_all=ids
    ).numpy()
    np.testing.assert_allclose(part, got[[3, 4, 5, 9, 10, 11]], rtol=1e-4)
    # Distinct ids are exactly the plain loss.
    distinct = ssl_losses.nt_xent(z1, z2, 0.2, ids=np.arange(6)).numpy()
    np.testing.assert_allclose(distinct, plain, rtol=1e-6)


def test_region_aware_is_the_sum_of_five_cross_entropies():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(3, 5, 5))
    got = ssl_losses.region_aware(logits).numpy()
    expected = -_log_softmax(logits)[:, np.arange(5), np.arange(5)].sum(1)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    perfect = np.tile(np.eye(5) * 50.0, (2, 1, 1))
    np.testing.assert_allclose(
        ssl_losses.region_aware(perfect).numpy(), 0.0, atol=1e-5
    )
    np.testing.assert_allclose(ssl_losses.region_accuracy(perfect).numpy(), 1.0)


def test_combined_is_eq_6_per_image():
    got = ssl_losses.combined(
        tf.constant([1.0, 2.0]), tf.constant([3.0, 5.0]), 0.8, 0.8
    )
    np.testing.assert_allclose(got.numpy(), [0.8 * 4, 0.8 * 7], rtol=1e-6)


@pytest.mark.parametrize("tau", [0.07, 1.0])
def test_info_nce_gradient_is_finite_with_masked_slots(tau):
    q = tf.Variable(np.random.default_rng(5).normal(size=(2, 4)))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(
            ssl_losses.info_nce(
                q, q, tf.zeros([6, 4]), tau, tf.zeros([6], bool)
            )
        )
    assert np.isfinite(tape.gradient(loss, q).numpy()).all()


def test_momentum_constant_and_cosine():
    m0, total = 0.99, 100
    for t in (0, 25, 50, 100, 150):
        assert ssl_losses.momentum_at(t, total, m0, "constant").numpy() == (
            pytest.approx(m0)
        )
        expected = 1 - (1 - m0) * (np.cos(np.pi * min(t / total, 1)) + 1) / 2
        got = ssl_losses.momentum_at(t, total, m0, "cosine").numpy()
        assert got == pytest.approx(expected, abs=1e-6)
    assert ssl_losses.momentum_at(0, total, m0, "cosine").numpy() == (
        pytest.approx(m0)
    )
    assert ssl_losses.momentum_at(total, total, m0, "cosine").numpy() == (
        pytest.approx(1.0)
    )


def test_momentum_schedule_refuses_unknown_names():
    from matl_keras.errors import ConfigError

    with pytest.raises(ConfigError, match="momentum_schedule"):
        ssl_losses.momentum_at(0, 10, 0.99, "linear")
    with pytest.raises(ConfigError, match="total_steps"):
        ssl_losses.momentum_at(0, 0, 0.99, "cosine")


def _simsiam_algorithm_1(p1, p2, z1, z2):
    """SimSiam's Algorithm 1, in numpy: D(p, z) = -(p/|p| . z/|z|)."""

    def D(p, z):  # noqa: N802 - the paper's name
        return -(_normalize(p) * _normalize(z)).sum(axis=1)

    return D(p1, z2) / 2 + D(p2, z1) / 2


def test_simsiam_loss_is_algorithm_1():
    rng = np.random.default_rng(3)
    p1, p2, z1, z2 = (rng.normal(size=(5, 7)) for _ in range(4))
    got = ssl_losses.simsiam(p1, p2, z1, z2).numpy()
    np.testing.assert_allclose(
        got, _simsiam_algorithm_1(p1, p2, z1, z2), rtol=1e-5
    )
    # Minimum -1 when each prediction points along the other view's z.
    np.testing.assert_allclose(
        ssl_losses.simsiam(3 * z2, 0.5 * z1, z1, z2).numpy(),
        -np.ones(5),
        rtol=1e-6,
    )


def test_simsiam_loss_passes_no_gradient_through_z():
    rng = np.random.default_rng(4)
    p1, p2, z1, z2 = (
        tf.constant(rng.normal(size=(3, 4)), tf.float32) for _ in range(4)
    )
    with tf.GradientTape(persistent=True) as tape:
        for t in (p1, p2, z1, z2):
            tape.watch(t)
        loss = tf.reduce_sum(ssl_losses.simsiam(p1, p2, z1, z2))
    assert tape.gradient(loss, z1) is None and tape.gradient(loss, z2) is None
    # d/dp of -cos(p, z) / 2, in numpy: -(z/|z| - cos * p/|p|) / (2 |p|).
    p, z = p1.numpy(), z2.numpy()
    cos = (_normalize(p) * _normalize(z)).sum(1, keepdims=True)
    expected = -(_normalize(z) - cos * _normalize(p)) / (
        2 * np.linalg.norm(p, axis=1, keepdims=True)
    )
    np.testing.assert_allclose(
        tape.gradient(loss, p1).numpy(), expected, rtol=1e-4, atol=1e-6
    )


def test_output_std_is_zero_for_collapse_and_about_one_over_sqrt_d_otherwise():
    same = np.tile(np.random.default_rng(5).normal(size=(1, 64)), (32, 1))
    assert float(ssl_losses.output_std(same)) < 1e-6
    spread = np.random.default_rng(6).normal(size=(4096, 64))
    np.testing.assert_allclose(
        float(ssl_losses.output_std(spread)), 1 / 8, rtol=0.05
    )
