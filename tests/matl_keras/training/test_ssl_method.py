"""The SSLMethod contract: what a plugin must provide, the defaults of the
rest, and the errors that name a plugin lacking a part. Driven by minimal
subclasses that are not among the built-in methods."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from matl_keras_plugins.ssl_methods.moco import MoCo
from matl_keras_plugins.ssl_methods.region_aware import RegionAware
from matl_keras_plugins.ssl_methods.simclr import SimCLR
from matl_keras_plugins.ssl_methods.simsiam import SimSiam

from matl_keras.errors import PluginError
from matl_keras.training import self_supervised
from matl_keras.training import ssl_method
from matl_keras.training.ssl_method import SSLMethod
from tests.matl_keras.registry_testing import FakeEntryPoint
from tests.matl_keras.registry_testing import make_registry


def _tiny_backbone(name="tiny", **kwargs):
    del kwargs  # image_size, sync_batchnorm: not needed by this one
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(2, 3, name=f"{name}_conv"),
        ],
        name=name,
    )


class Minimal(SSLMethod):
    """Only the required members: views and train_step."""

    def __init__(self, backbone, image_size, **kwargs):
        super().__init__(backbone, **kwargs)
        self.image_size = image_size
        self.tracker = keras.metrics.Mean(name="loss")

    def views(self, image, seed):
        return tf.image.stateless_random_flip_left_right(image, seed)

    def train_step(self, data):
        views, _ = data
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(
                tf.square(self.backbone(views, training=True))
            )
        variables = self.optimized_variables
        self.optimizer.apply_gradients(
            zip(tape.gradient(loss, variables), variables)
        )
        self.tracker.update_state(loss)
        return {"loss": self.tracker.result()}

    @property
    def metrics(self):
        return [self.tracker]


class WithKey(Minimal):
    needs_key_encoder = True

    def __init__(self, backbone, image_size, key_backbone=None, **kwargs):
        super().__init__(backbone, image_size, **kwargs)
        self.key_backbone = key_backbone


class NoViews(SSLMethod):
    def __init__(self, backbone, image_size, **kwargs):
        super().__init__(backbone, **kwargs)


class NoKeyArgument(Minimal):
    needs_key_encoder = True

    def __init__(self, backbone, image_size):
        super().__init__(backbone, image_size)


def test_built_in_methods_fulfil_the_contract():
    for cls in (MoCo, SimCLR, RegionAware, SimSiam, Minimal, WithKey):
        assert ssl_method.contract_errors(cls) == [], cls


def test_a_class_lacking_parts_is_named_with_every_missing_member():
    missing = ssl_method.contract_errors(NoViews)
    assert any("views(image, seed)" in m for m in missing)
    assert any("train_step(data)" in m for m in missing)
    assert ssl_method.contract_errors(NoKeyArgument) == [
        "__init__ argument `key_backbone=`"
    ]
    with pytest.raises(PluginError) as info:
        ssl_method.check_contract(NoViews, "noviews")
    message = str(info.value)
    assert '"noviews"' in message and "NoViews" in message
    assert "views(image, seed)" in message and "train_step(data)" in message


def test_the_registry_refuses_a_plugin_that_lacks_a_member():
    registry = make_registry(
        {
            "matl_keras.ssl_methods": [
                FakeEntryPoint("noviews", "m:NoViews", obj=NoViews),
                FakeEntryPoint("minimal", "m:Minimal", obj=Minimal),
            ],
        }
    )
    infos = registry.load_all("ssl_methods")
    assert infos["minimal"].status == "ok"
    assert infos["noviews"].status == "error"
    assert "views(image, seed)" in infos["noviews"].error
    with pytest.raises(PluginError, match=r'"noviews".*missing: views'):
        registry.load("ssl_methods", "noviews")


def test_the_stage_refuses_a_factory_that_builds_an_incomplete_method():
    def factory(backbone, image_size):
        return NoViews(backbone, image_size)

    with pytest.raises(PluginError, match="NoViews.*views"):
        self_supervised.build_method(factory, _tiny_backbone, 8)


def test_defaults_of_the_optional_members():
    model = self_supervised.build_method(WithKey, _tiny_backbone, 8)
    assert model.key_backbone is not None  # needs_key_encoder honoured
    model.build((None, 8, 8, 3))
    model.key_backbone.build((None, 8, 8, 3))
    assert model.transfer_backbone is model.backbone
    assert model.run_record() == {}
    assert model.prepare is None
    key_ids = {id(v) for v in model.key_backbone.weights}
    optimized = model.optimized_variables
    assert optimized and not key_ids & {id(v) for v in optimized}
    model.init_from_backbone()
    for k, q in zip(
        model.key_backbone.get_weights(), model.backbone.get_weights()
    ):
        np.testing.assert_array_equal(k, q)
    # fit on (views, indices) through the declared members alone.
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    images = (
        np.random.default_rng(0).uniform(size=(4, 8, 8, 3)).astype("float32")
    )
    data = tf.data.Dataset.from_tensor_slices(
        (images, np.arange(4, dtype=np.int32))
    ).batch(2)
    before = model.key_backbone.get_weights()
    history = model.fit(data, epochs=1, verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"][0])
    for a, b in zip(before, model.key_backbone.get_weights()):
        np.testing.assert_array_equal(a, b)  # not optimized
