"""Loss math of the self-supervised methods, as pure functions.

Every function returns one loss per example (no reduction): the caller
reduces over the *global* batch, which under `tf.distribute` a built-in
reduction would get wrong (see `contrastive.ContrastiveModel`).

Embeddings are L2-normalized here, so callers pass raw projections.
"""

from __future__ import annotations

import tensorflow as tf

from matl_keras.errors import ConfigError

# A finite stand-in for -inf in masked logits: exp() of it is exactly 0 in
# float32, and it keeps gradients finite (a true -inf times 0 gives NaN).
_MASKED = -1e9


def l2_normalize(x: tf.Tensor) -> tf.Tensor:
    return tf.math.l2_normalize(tf.cast(x, tf.float32), axis=-1)


def info_nce(
    query: tf.Tensor,
    positive_key: tf.Tensor,
    queue: tf.Tensor,
    temperature: float,
    queue_valid: tf.Tensor | None = None,
) -> tf.Tensor:
    """Eq. 2 (MoCo's InfoNCE): `-log softmax` of the positive among
    `1 + K` candidates, for each query.

    Eq. 2 as printed divides only the positive logit by the temperature; this
    is a typo against MoCo (He et al. 2020, Eq. 1), whose code and every
    reimplementation divide all logits by tau. We follow MoCo.

    Args:
        query: (B, D) query projections `x_q`.
        positive_key: (B, D) key projections `x_k+` of the same images.
        queue: (K, D) negative keys `x_k-` (already normalized).
        temperature: float. tau.
        queue_valid: (K,) or (B, K) bool, or None. False for queue slots
            that are not negatives (of any query, or of query i): slots
            never written, and keys of the query's own image.

    Returns:
        (B,) loss per query.
    """
    q = l2_normalize(query)
    k = l2_normalize(positive_key)
    positive = tf.reduce_sum(q * k, axis=-1, keepdims=True)  # (B, 1)
    negative = tf.matmul(q, tf.cast(queue, tf.float32), transpose_b=True)
    if queue_valid is not None:
        # (K,) broadcasts over the queries.
        negative = tf.where(queue_valid, negative, _MASKED)
    logits = tf.concat([positive, negative], axis=1) / temperature
    return -tf.nn.log_softmax(logits, axis=1)[:, 0]


def nt_xent(
    z1: tf.Tensor,
    z2: tf.Tensor,
    temperature: float,
    z1_all: tf.Tensor | None = None,
    z2_all: tf.Tensor | None = None,
    offset: tf.Tensor | int = 0,
    ids: tf.Tensor | None = None,
    ids_all: tf.Tensor | None = None,
) -> tf.Tensor:
    """SimCLR's NT-Xent (Chen et al. 2020): each view's positive is the other
    view of its image; the negatives are both views of every other image of
    the *global* batch (of every image of another identity, with `ids`).

    Args:
        z1, z2: (b, D) projections of this replica's two views.
        temperature: float.
        z1_all, z2_all: (B, D) projections of the global batch (from
            `all_gather`, which passes gradients); default: z1, z2.
        offset: index of this replica's first example in the global batch.
        ids, ids_all: (b,) and (B,) int identities (e.g. the patient) of
            this replica's and the global batch's images, or None: the
            views of an image with the query's identity are not its
            negatives (the positive stays).

    Returns:
        (2b,) loss per view: the first b for `z1`, then `z2`.
    """
    z1, z2 = l2_normalize(z1), l2_normalize(z2)
    z1_all = z1 if z1_all is None else l2_normalize(z1_all)
    z2_all = z2 if z2_all is None else l2_normalize(z2_all)
    b = tf.shape(z1)[0]
    n = tf.shape(z1_all)[0]
    local = tf.concat([z1, z2], axis=0)  # (2b, D)
    candidates = tf.concat([z1_all, z2_all], axis=0)  # (2B, D)
    logits = tf.matmul(local, candidates, transpose_b=True) / temperature
    rows = tf.range(2 * b)
    # Global index of each local row's own view and of its positive.
    own = tf.where(rows < b, offset + rows, n + offset + rows - b)
    positive = tf.where(rows < b, n + offset + rows, offset + rows - b)
    self_mask = tf.one_hot(own, 2 * n, on_value=True, off_value=False)
    if ids is not None:
        ids_all = ids if ids_all is None else ids_all
        row_ids = tf.concat([ids, ids], axis=0)
        candidate_ids = tf.concat([ids_all, ids_all], axis=0)
        same = tf.equal(row_ids[:, None], candidate_ids[None, :])
        positive_mask = tf.one_hot(
            positive, 2 * n, on_value=True, off_value=False
        )
        self_mask = self_mask | (same & ~positive_mask)
    logits = tf.where(self_mask, _MASKED, logits)
    log_probs = tf.nn.log_softmax(logits, axis=1)
    return -tf.gather(log_probs, positive, axis=1, batch_dims=1)


def negative_cosine(p: tf.Tensor, z: tf.Tensor) -> tf.Tensor:
    """SimSiam's `D(p, z) = -cos(p, stopgrad(z))` (Chen & He 2021, Eq. 1
    with the stop-gradient of Eq. 3 and Algorithm 1).

    No gradient flows into `z`: the stop-gradient is what keeps SimSiam from
    collapsing (the paper's Fig. 2), so it belongs to the loss itself.

    Args:
        p: (B, D) predictor outputs.
        z: (B, D) projector outputs of the other view.

    Returns:
        (B,) loss per example, in [-1, 1].
    """
    return -tf.reduce_sum(
        l2_normalize(p) * tf.stop_gradient(l2_normalize(z)), axis=-1
    )


def simsiam(
    p1: tf.Tensor, p2: tf.Tensor, z1: tf.Tensor, z2: tf.Tensor
) -> tf.Tensor:
    """SimSiam's symmetrized loss (Eq. 4, Algorithm 1):
    `L = D(p1, z2) / 2 + D(p2, z1) / 2` per example, minimum -1.

    Args:
        p1, p2: (B, D) predictor outputs of views 1 and 2.
        z1, z2: (B, D) projector outputs of views 1 and 2.

    Returns:
        (B,) loss per example.
    """
    return 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)


def output_std(z: tf.Tensor) -> tf.Tensor:
    """SimSiam's collapse diagnostic (Fig. 2, middle): the standard
    deviation over the batch of the L2-normalized outputs, averaged over
    the channels. 0 when every image maps to one vector (collapse); about
    `1 / sqrt(D)` for outputs spread like a unit Gaussian.

    Args:
        z: (B, D) outputs.

    Returns:
        Scalar.
    """
    return tf.reduce_mean(tf.math.reduce_std(l2_normalize(z), axis=0))


def region_aware(region_logits: tf.Tensor) -> tf.Tensor:
    """Eq. 5: the sum over the five regions of the cross-entropy of the
    shared region classifier, whose target for crop i is class i.

    Args:
        region_logits: (B, R, R) logits: image b, crop i, class scores.

    Returns:
        (B,) loss per image.
    """
    logits = tf.cast(region_logits, tf.float32)
    regions = tf.shape(logits)[1]
    labels = tf.broadcast_to(tf.range(regions)[None, :], tf.shape(logits)[:2])
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
    return tf.reduce_sum(ce, axis=1)


def region_accuracy(region_logits: tf.Tensor) -> tf.Tensor:
    """(B,) fraction of an image's crops whose region is predicted right."""
    predicted = tf.argmax(region_logits, axis=-1, output_type=tf.int32)
    labels = tf.range(tf.shape(region_logits)[1])[None, :]
    return tf.reduce_mean(tf.cast(tf.equal(predicted, labels), tf.float32), 1)


def combined(
    contrastive: tf.Tensor, region: tf.Tensor, alpha1: float, alpha2: float
) -> tf.Tensor:
    """Eq. 6 per image: `alpha1 * L_cons + alpha2 * L_ra`.

    Eq. 6 adds, for one query X, the region losses of X and of its n
    negatives. Over a batch, every image is the query of its own sample and
    a negative of the others, so summing Eq. 6 over the batch counts each
    image's L_ra once per sample it appears in: a constant factor that
    alpha2 absorbs. We count each image of the global batch once. Queue
    negatives are stored keys (no image passes the network for them), so
    they carry no region term.
    """
    return alpha1 * contrastive + alpha2 * region


MOMENTUM_SCHEDULES = ("constant", "cosine")


def momentum_at(step, total_steps: int, base: float, schedule: str):
    """Key-encoder momentum m_t at optimizer step `step` (0-based).

    `constant`: m_t = base (MoCo). `cosine` (BYOL, MoCo v3):
    m_t = 1 - (1 - base) * (cos(pi t / T) + 1) / 2, rising from `base` at
    t = 0 to 1 at t = T, so the keys follow the query encoder closely early
    (useful on short runs) and freeze as training converges.
    """
    if schedule not in MOMENTUM_SCHEDULES:
        raise ConfigError(
            f"`momentum_schedule` must be one of {MOMENTUM_SCHEDULES}. "
            f"Received: momentum_schedule={schedule!r}"
        )
    if schedule == "constant":
        return tf.constant(base, tf.float32)
    if total_steps <= 0:
        raise ConfigError(
            f"The cosine momentum schedule needs total_steps > 0. "
            f"Received: total_steps={total_steps}"
        )
    t = tf.minimum(tf.cast(step, tf.float32) / float(total_steps), 1.0)
    cosine = (tf.cos(tf.constant(3.141592653589793) * t) + 1.0) / 2.0
    return 1.0 - (1.0 - base) * cosine
