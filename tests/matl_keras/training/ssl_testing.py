"""Shared helpers of the SSL tests: tiny methods and fixed views (not a
test module; imported by test_contrastive, test_precision, the
self-supervised stage tests and the multi-worker job)."""

import numpy as np
import tensorflow as tf
from matl_keras_plugins.ssl_methods.region_aware import RegionAware
from matl_keras_plugins.ssl_methods.simclr import SimCLR
from matl_keras_plugins.ssl_methods.simsiam import SimSiam

from matl_keras import registry as registry_lib
from matl_keras.models.resnet.resnet_backbone import ResNetBackbone
from matl_keras.training import optimizers
from matl_keras.training import self_supervised

SIZE = 32
# Float32 spacings of a weight allowed between two runs that round
# differently (one device vs two replicas): each SGD step with momentum
# rounds the stored weight twice (velocity, then weight), so two steps may
# leave it a couple of ulps apart whatever the arithmetic before.
ULPS = 2
# Shuffle-BN groups of the tiny methods with a key encoder (global batch 8:
# two groups of 4, one per replica under a 2-replica strategy).
GROUPS = 2


def backbone(name="resnet", groups=1):
    if groups > 1:
        return ResNetBackbone(
            depth=10,
            width_multiplier=0.25,
            image_size=SIZE,
            batchnorm_groups=groups,
            name=name,
        )
    return ResNetBackbone(
        depth=10,
        width_multiplier=0.25,
        image_size=SIZE,
        sync_batchnorm=True,
        name=name,
    )


def build(cls, groups=None, **kwargs):
    """A built tiny `cls`; methods with a key encoder get shuffle-BN
    (`groups`, default GROUPS), as the SSTL-M stage builds them."""
    if groups is None:
        groups = GROUPS if cls.shuffle_batchnorm else 1
    args = dict(backbone=backbone(groups=groups), image_size=SIZE)
    if cls is SimSiam:
        args.update(projection_dim=16, prediction_dim=4)
    else:
        args.update(hidden_dim=16, projection_dim=8)
    if cls.needs_key_encoder:
        args.update(
            key_backbone=backbone("key_resnet", groups),
            queue_size=16,
            momentum=0.9,
        )
    args.update(kwargs)
    model = cls(**args)
    model.build()
    return model


def views(cls, n, seed=0, region_size=SIZE):
    """Fixed random views of `n` images in `cls`'s structure."""
    rng = np.random.default_rng(seed)
    image = lambda *s: rng.uniform(0, 1, (n, *s, SIZE, SIZE, 3)).astype(
        np.float32
    )  # noqa
    if cls in (SimCLR, SimSiam):
        return {"view1": image(), "view2": image()}
    out = {"query": image(), "key": image()}
    if cls is RegionAware:
        out["regions"] = rng.uniform(
            0, 1, (n, 5, region_size, region_size, 3)
        ).astype(np.float32)
    return out


def data(cls, n=16, batch=8, region_size=SIZE):
    """`(views, identities)` batches, as the SSTL-M pipeline gives with
    sources: pairs of images share a source (two slices of one patient),
    one pair straddles the replicas' halves of the second batch, and two
    of its images share a source with keys the first batch enqueued, so
    the masks of same-source negatives are exercised across replicas and
    in the queue."""
    identities = np.array([0, 0, 1, 1, 2, 2, 3, 3, 3, 4, 5, 6, 6, 7, 0, 8])
    identities = np.resize(identities, n).astype(np.int32)
    return tf.data.Dataset.from_tensor_slices(
        (views(cls, n, region_size=region_size), identities)
    ).batch(batch)


def pretrain(workdir, **kwargs):
    """`self_supervised.pretrain` of a tiny MoCo on 16 synthetic CT images."""
    dataset = registry_lib.default_registry().create(
        "datasets",
        "synthetic_ct",
        image_size=40,
        num_train=16,
        num_val=8,
        num_test=0,
    )
    args = dict(
        dataset=dataset,
        method=tiny_moco,
        backbone=lambda **kw: ResNetBackbone(
            depth=10, width_multiplier=0.25, **kw
        ),
        image_size=32,
        batch_size=8,
        epochs=3,
        strategy="default",
        optimizer=lambda **kw: optimizers.sgd(learning_rate=0.3, **kw),
    )
    args.update(kwargs)
    return self_supervised.pretrain(str(workdir), **args)


def tiny_moco(**kwargs):
    from matl_keras_plugins.ssl_methods.moco import MoCo

    return MoCo(
        queue_size=8, hidden_dim=16, projection_dim=8, momentum=0.9, **kwargs
    )


tiny_moco.needs_key_encoder = True
tiny_moco.shuffle_batchnorm = True


def update_mismatch(initial, reference, other):
    """max |update(other) - update(reference)| / max |update(reference)|,
    less `ULPS` float32 spacings of each element.

    The slack is the weight's own representation: a BatchNorm gamma near
    1.0 moved by 54 ulps in two steps differs by one ulp between one
    device and two replicas on an AVX2 host (1.9% of its update, all of it
    rounding of the stored value). Kernels (small magnitudes, fine
    spacing) keep almost no slack, so a wrong reduction still reads as a
    mismatch of its full size. None where the update is at the float32
    noise floor (e.g. a weight whose gradient is ~0).
    """
    reference = np.asarray(reference)
    update = np.abs(reference - initial).max()
    if update < 1e-7:
        return None
    spacing = np.spacing(np.abs(reference).astype(np.float32))
    excess = np.abs(np.asarray(other) - reference) - ULPS * spacing
    return float(np.maximum(excess, 0.0).max() / update)
