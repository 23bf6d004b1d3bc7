"""Augmentation recipes: stateless per-example randomness, shapes, range,
and the distributions each recipe promises (MoCo v2's crop scale, jitter
and grayscale rates, multiplicative brightness, no flips when asked, gray
CT stays gray)."""

import numpy as np
import pytest
import tensorflow as tf

from matl_keras.data import augment
from matl_keras.errors import ConfigError

IMAGE = tf.constant(
    np.random.default_rng(0).uniform(0, 1, (37, 37, 3)).astype("float32")
)
SEED = tf.constant([3, 4], tf.int64)


def _many(fn, image, count, start=0):
    """`fn(image, seed)` for `count` seeds, computed in one tf.data pass
    (parallel, as in training)."""
    data = tf.data.Dataset.range(start, start + count).map(
        lambda i: fn(image, tf.stack([i, tf.constant(17, tf.int64)])),
        num_parallel_calls=4,
    )
    return np.stack([x.numpy() for x in data])


@pytest.mark.parametrize("name", sorted(augment.RECIPES))
def test_recipes_are_pure_functions_of_image_and_seed(name):
    fn = augment.get_augment(name, 32)
    eager = fn(IMAGE, SEED).numpy()
    assert eager.shape == (32, 32, 3) and eager.dtype == np.float32
    assert eager.min() >= 0.0 and eager.max() <= 1.0
    # Same seed: the same output, eagerly, again, in a parallel tf.data map
    # and for an int32 seed.
    np.testing.assert_array_equal(fn(IMAGE, SEED).numpy(), eager)
    np.testing.assert_array_equal(fn(IMAGE, tf.constant([3, 4])).numpy(), eager)
    graph = _many(fn, IMAGE, 8)
    np.testing.assert_array_equal(graph, _many(fn, IMAGE, 8))
    assert graph.min() >= 0.0 and graph.max() <= 1.0
    if name != "none":
        # Different seeds: different outputs (crop_flip has 72 outcomes
        # here, so two of 8 may coincide).
        assert len({g.tobytes() for g in graph}) >= len(graph) - 2
    flipless = augment.get_augment(name, 32, flip=False)(IMAGE, SEED)
    assert flipless.shape == (32, 32, 3)


def test_none_is_the_center_crop():
    out = augment.get_augment("none", 33)(IMAGE, SEED).numpy()
    np.testing.assert_array_equal(out, IMAGE.numpy()[2:35, 2:35])


def test_with_probability_extremes_and_rate():
    double = lambda x, s: x * 2.0
    never = augment.with_probability(double, 0.0)
    always = augment.with_probability(double, 1.0)
    np.testing.assert_array_equal(never(IMAGE, SEED), IMAGE)
    np.testing.assert_allclose(always(IMAGE, SEED), np.clip(IMAGE * 2, 0, 1))
    half = augment.with_probability(double, 0.5)
    outs = _many(half, IMAGE, 400)
    rate = np.mean([not np.array_equal(o, IMAGE.numpy()) for o in outs])
    assert 0.42 < rate < 0.58
    with pytest.raises(ConfigError, match="p"):
        augment.with_probability(double, 2.0)


def _coordinates(height, width):
    """Channel 0: x / (w - 1), channel 1: y / (h - 1), channel 2: 0."""
    y, x = np.meshgrid(
        np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij"
    )
    return tf.constant(np.stack([x, y, np.zeros_like(x)], -1).astype("float32"))


def _torchvision_areas(side, count, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)):
    """Area fractions of torchvision's `RandomResizedCrop.get_params` (its
    documented algorithm, in numpy) on a `side` x `side` image."""
    rng = np.random.default_rng(0)
    areas = []
    for _ in range(count):
        for _ in range(10):
            target = side * side * rng.uniform(*scale)
            aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
            w = round(np.sqrt(target * aspect))
            h = round(np.sqrt(target / aspect))
            if 0 < w <= side and 0 < h <= side:
                areas.append(w * h / side**2)
                break
        else:
            areas.append(1.0)
    return np.array(areas)


def test_resized_crop_covers_scale_02_to_1_with_moco_ratios():
    """Areas measured on a coordinate-encoded image: the crop's corners
    carry its box."""
    side = 129
    image = _coordinates(side, side)
    crops = _many(
        lambda x, s: augment.random_resized_crop(x, s, 32), image, 500
    )
    # Corner pixels sit half an output pixel inside the box: undo that.
    widths = (crops[:, 0, -1, 0] - crops[:, 0, 0, 0]) * (side - 1) * 32 / 31
    heights = (crops[:, -1, 0, 1] - crops[:, 0, 0, 1]) * (side - 1) * 32 / 31
    areas = widths * heights / side**2
    assert areas.min() > 0.17 and areas.max() <= 1.02
    assert areas.min() < 0.23 and areas.max() > 0.9  # both ends reached
    # torchvision's distribution: U[0.2, 1] areas, less the large ones
    # whose aspect does not fit (redrawn), so a mean of about 0.54.
    reference = _torchvision_areas(side, 20000)
    assert abs(areas.mean() - reference.mean()) < 0.03
    bins = [0.0, 0.4, 0.6, 0.8, 1.1]
    ours = np.histogram(areas, bins)[0] / len(areas)
    np.testing.assert_allclose(
        ours, np.histogram(reference, bins)[0] / len(reference), atol=0.06
    )
    ratios = widths / heights
    assert ratios.min() > 0.70 and ratios.max() < 1.42
    assert ratios.min() < 0.8 and ratios.max() > 1.25


def test_resized_crop_falls_back_to_the_central_crop():
    """No draw of area >= 20% with aspect <= 4/3 fits in a 4 x 400 image:
    torchvision then takes the central crop of aspect 4/3."""
    for seed in range(5):
        box = augment.resized_crop_box(tf.constant([seed, 0]), 4, 400)
        assert [int(v) for v in box] == [0, 197, 4, 5]


def test_brightness_is_multiplicative():
    black = tf.zeros([40, 40, 3])
    gray = tf.fill([40, 40, 3], 0.5)
    np.testing.assert_array_equal(augment.adjust_brightness(black, 0.6), black)
    np.testing.assert_allclose(augment.adjust_brightness(gray, 0.6), 0.3)
    moco = augment.get_augment("moco_v2", 32)
    # Every jitter component leaves black black; a mid-gray image is only
    # scaled (its contrast, saturation and hue are nothing to change), by
    # factors in [0.6, 1.4]: never clipped to black.
    assert _many(moco, black, 100).max() == 0.0
    grays = _many(moco, gray, 300)
    assert grays.min() > 0.3 - 1e-5 and grays.max() < 0.7 + 1e-5
    assert grays.min() < 0.33 and grays.max() > 0.67


def test_contrast_and_saturation_follow_torchvision():
    x = IMAGE.numpy()
    luma = x @ np.array([0.2989, 0.587, 0.114], np.float32)
    out = augment.adjust_contrast(IMAGE, 0.5).numpy()
    np.testing.assert_allclose(
        out, luma.mean() + 0.5 * (x - luma.mean()), atol=1e-5
    )
    np.testing.assert_allclose(
        augment.adjust_saturation(IMAGE, 0.0),
        np.repeat(luma[..., None], 3, -1),
        atol=1e-6,
    )
    np.testing.assert_allclose(
        augment.adjust_saturation(IMAGE, 1.0), x, atol=1e-6
    )


@pytest.mark.parametrize(
    ("name", "p_jitter", "p_gray"),
    [("moco_v2", 0.8, 0.2), ("sstl_m_paper", 0.5, 0.5)],
)
def test_jitter_and_grayscale_rates(name, p_jitter, p_gray):
    """On a plain coloured image crops, blur and flips change nothing, so
    each output tells whether it was jittered and whether turned gray."""
    colour = tf.constant([0.8, 0.4, 0.2]) * tf.ones([40, 40, 3])
    outs = _many(augment.get_augment(name, 32), colour, 600)
    pixel = outs[:, 16, 16, :]
    gray = np.ptp(pixel, axis=-1) < 1e-5
    untouched = np.abs(pixel - [0.8, 0.4, 0.2]).max(axis=-1) < 1e-4
    assert abs(gray.mean() - p_gray) < 0.06
    # P(untouched) = (1 - p_jitter) * (1 - p_gray).
    jittered = 1.0 - untouched.mean() / (1.0 - gray.mean())
    assert abs(jittered - p_jitter) < 0.07


def _direction(outs):
    """+1 where the image reads left to right (a ramp rising in x), -1
    where mirrored: the sign of the correlation of its column means with x."""
    profile = outs.mean(axis=(1, 3))
    x = np.arange(profile.shape[1]) - (profile.shape[1] - 1) / 2
    return np.sign((profile - profile.mean(1, keepdims=True)) @ x)


@pytest.mark.parametrize("name", sorted(set(augment.RECIPES) - {"none"}))
def test_flip_false_never_flips(name):
    ramp = tf.tile(tf.linspace(0.2, 0.8, 40)[None, :, None], [40, 1, 3])
    flipless = _many(augment.get_augment(name, 32, flip=False), ramp, 60)
    assert (_direction(flipless) == 1).all()
    flipping = _direction(_many(augment.get_augment(name, 32), ramp, 60))
    assert 0.25 < (flipping == -1).mean() < 0.75


def test_ct_intensity_keeps_gray_images_gray_and_varies_them():
    gray = tf.tile(IMAGE[..., :1], [1, 1, 3])
    outs = _many(augment.get_augment("ct_intensity", 32), gray, 200)
    np.testing.assert_array_equal(outs[..., 0], outs[..., 1])
    np.testing.assert_array_equal(outs[..., 0], outs[..., 2])
    # Window/level and gamma move the gray values (a plain crop would keep
    # the mean near the image's 0.5).
    means = outs.mean(axis=(1, 2, 3))
    assert means.std() > 0.03


def test_crop_blur_changes_no_gray_value():
    # A flat image stays flat (no brightness, contrast, gamma or window),
    # while moco_v2's jitter moves it.
    flat = tf.fill([40, 40, 3], 0.37)
    kept = _many(augment.get_augment("crop_blur", 32), flat, 50)
    np.testing.assert_allclose(kept, 0.37, atol=1e-5)
    moved = _many(augment.get_augment("moco_v2", 32), flat, 50)
    assert np.abs(moved.mean(axis=(1, 2, 3)) - 0.37).max() > 0.05


def test_window_level_and_gamma_magnitudes():
    x = tf.constant(np.linspace(0.0, 1.0, 101, dtype=np.float32))
    image = tf.stack([x, x, x], axis=-1)[None]
    for i in range(50):
        seed = tf.constant([i, 1])
        out = augment.gamma(image, seed).numpy()
        assert out[0, 0, 0] == 0.0 and out[0, -1, 0] == 1.0
        wl = augment.window_level(image, seed).numpy()[0, :, 0]
        slope = (wl[60] - wl[40]) / 0.2
        assert 1 / 1.3 - 1e-3 < slope < 1 / 0.7 + 1e-3


def test_affine_identity_and_integer_shift():
    image = IMAGE[:32, :32]
    same = augment.affine(
        image, tf.constant(0.0), tf.constant(0.0), tf.constant(0.0)
    )
    np.testing.assert_allclose(same, image, atol=1e-6)
    shifted = augment.affine(
        image, tf.constant(0.0), tf.constant(2.0), tf.constant(3.0)
    ).numpy()
    np.testing.assert_allclose(shifted[2:, 3:], image[:-2, :-3], atol=1e-6)
    assert (shifted[:2] == 0).all() and (shifted[:, :3] == 0).all()


def test_gaussian_blur_keeps_constants_and_smooths_noise():
    plain = tf.fill([32, 32, 3], 0.25)
    np.testing.assert_allclose(
        augment.gaussian_blur(plain, 1.0, 5), plain, atol=1e-6
    )
    blurred = augment.gaussian_blur(IMAGE, 2.0, 5).numpy()
    assert blurred.shape == IMAGE.shape
    assert blurred.std() < 0.6 * IMAGE.numpy().std()
    assert augment.blur_kernel_size(224) == 23
    assert augment.blur_kernel_size(32) == 3


def test_unknown_recipe_and_bad_size_are_refused():
    with pytest.raises(ConfigError, match="moco_v2"):
        augment.get_augment("autoaugment", 32)
    with pytest.raises(ConfigError, match="size"):
        augment.get_augment("moco_v2", 0)


@pytest.mark.parametrize("name", sorted(augment.RECIPES))
def test_a_recipe_is_traced_once_for_all_views_and_equals_its_python(name):
    """`get_augment` returns the recipe as one graph function: the views
    of an SSL pipeline (here four) reuse one trace instead of building the
    recipe's graph again each, with the plain function's values."""
    fn = augment.get_augment(name, 32)
    plain = augment.RECIPES[name](32, True)

    @tf.function
    def views(image):
        return [fn(image, tf.constant([i, 5], tf.int64)) for i in range(4)]

    got = [v.numpy() for v in views(IMAGE)]
    assert fn.experimental_get_tracing_count() == 1
    for i, view in enumerate(got):
        expected = plain(IMAGE, tf.constant([i, 5], tf.int64)).numpy()
        np.testing.assert_allclose(view, expected, atol=1e-6)
