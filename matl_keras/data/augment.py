"""Training-time augmentation recipes with stateless, per-example randomness.

A recipe is `augment(image, seed) -> image`: a float32 `(h, w, 3)` image in
[0, 1] (normally the load-size image, `h, w >= size`) and a stateless seed
(an int32 or int64 tensor of shape `[2]`) give a `(size, size, 3)` image in
[0, 1]. The output is a pure function of `(image, seed)`: every draw is a
`tf.random.stateless_*` / `tf.image.stateless_*` op on a seed split from
`seed` with `tf.random.experimental.stateless_split`.

Why not Keras' random preprocessing layers: they draw from a stateful
`SeedGenerator` and take no per-example seed, so inside a parallel
`tf.data` map which image gets which draw depends on thread scheduling
(run-to-run differences of one command with one seed). Here the input
pipeline hands each example its own seed, derived from (run seed, epoch,
position), so a run, and a resumed run, sees the same views.

Recipes run per example inside `tf.data` (not per batch, where Keras'
`RandomCrop` would give every image of a batch the same crop).

Recipes and their sources:
- `none`: central `size` crop (evaluation's transform).
- `crop_flip`: STL-N (He et al. 2016): random `size` crop + flip.
- `stl_m`: STL-M (paper section 6.2): translation, rotation, flip and
  intensity shift, each with p=0.5.
- `moco_v2`: MoCo v2's `aug_plus` (facebookresearch/moco `main_moco.py`):
  RandomResizedCrop(scale 0.2-1), ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.8,
  RandomGrayscale p=0.2, GaussianBlur(sigma 0.1-2) p=0.5, flip, with
  torchvision's semantics for each transform.
- `sstl_m_paper`: the paper's literal SSTL-M recipe (section 6.2): random
  `size` crop of the resized image, colour jitter p=0.5, flip, grayscale
  p=0.5.
- `ct_intensity`: for gray CT slices: resized crop, window/level and gamma
  jitter on the gray values, blur, flip; no hue, saturation or grayscale,
  which do nothing on a gray image.
- `crop_blur`: MoCo v2's geometry and blur without any intensity change
  (the gray values a CT diagnosis reads stay as they are in both views).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import tensorflow as tf

from matl_keras.errors import ConfigError

Augment = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]

# RGB -> luma weights of torchvision's `rgb_to_grayscale` (ITU-R 601-2) and
# of `tf.image.rgb_to_grayscale`.
_LUMA = (0.2989, 0.587, 0.114)


def center_crop(image: tf.Tensor, size: int) -> tf.Tensor:
    """Central `size` x `size` patch of an image (evaluation)."""
    height = tf.shape(image)[0]
    width = tf.shape(image)[1]
    top = (height - size) // 2
    left = (width - size) // 2
    image = image[top : top + size, left : left + size, :]
    image.set_shape([size, size, 3])
    return image


# --- stateless draws ----------------------------------------------------------


def split_seed(seed: tf.Tensor, count: int) -> list[tf.Tensor]:
    """`count` independent stateless seeds (shape `[2]`) from one. Seeds
    are taken as int64 (an int32 seed of equal value gives the same
    draws; TensorFlow's stateless ops would not)."""
    seed = tf.cast(seed, tf.int64)
    return tf.unstack(tf.random.experimental.stateless_split(seed, count))


def uniform(seed, low=0.0, high=1.0, shape=()) -> tf.Tensor:
    """Stateless float32 draw(s) from U[low, high)."""
    return tf.random.stateless_uniform(
        shape, seed, minval=low, maxval=high, dtype=tf.float32
    )


def coin(seed, p: float) -> tf.Tensor:
    """A stateless boolean that is True with probability `p`."""
    return uniform(seed) < p


def with_probability(
    transform: Callable[[tf.Tensor, tf.Tensor], tf.Tensor], p: float
) -> Augment:
    """`transform(image, seed)` with probability `p`, else the image
    unchanged (torchvision's `RandomApply`); the coin and the transform
    draw from independent halves of `seed`. The result is clipped to
    [0, 1]."""
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"`p` must be in [0, 1]. Received: p={p}")

    def apply(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        coin_seed, seed = split_seed(seed, 2)
        return tf.cond(
            coin(coin_seed, p),
            lambda: tf.clip_by_value(transform(image, seed), 0.0, 1.0),
            lambda: image,
        )

    return apply


def _randint(seed, high) -> tf.Tensor:
    """A stateless int32 draw from 0..high-1 (`high` a scalar tensor >= 1)."""
    high = tf.maximum(tf.cast(high, tf.int32), 1)
    value = tf.cast(uniform(seed) * tf.cast(high, tf.float32), tf.int32)
    return tf.minimum(value, high - 1)


# --- geometry -----------------------------------------------------------------


def flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Horizontal flip with p=0.5."""
    return tf.cond(
        coin(seed, 0.5), lambda: tf.reverse(image, axis=[1]), lambda: image
    )


def random_crop(image: tf.Tensor, seed: tf.Tensor, size: int) -> tf.Tensor:
    """A uniformly placed `size` x `size` patch (the image must be at least
    that large)."""
    return tf.image.stateless_random_crop(image, [size, size, 3], seed)


def resized_crop_box(
    seed: tf.Tensor,
    height: tf.Tensor,
    width: tf.Tensor,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    tries: int = 10,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """`(top, left, crop_height, crop_width)` of torchvision's
    `RandomResizedCrop.get_params`: an area fraction drawn from U[scale]
    and a log-uniform aspect ratio from `ratio`; the first of `tries`
    draws that fits in the image, else the central crop of the image
    with the aspect ratio clamped to `ratio`. All `tries` draws are made
    at once (vectorised) and the first that fits is taken, which gives
    torchvision's distribution."""
    area_seed, ratio_seed, top_seed, left_seed = split_seed(seed, 4)
    h = tf.cast(height, tf.float32)
    w = tf.cast(width, tf.float32)
    target = h * w * uniform(area_seed, scale[0], scale[1], [tries])
    aspect = tf.exp(
        uniform(ratio_seed, math.log(ratio[0]), math.log(ratio[1]), [tries])
    )
    crop_w = tf.round(tf.sqrt(target * aspect))
    crop_h = tf.round(tf.sqrt(target / aspect))
    fits = (crop_w > 0) & (crop_w <= w) & (crop_h > 0) & (crop_h <= h)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
    # Central fallback, as torchvision: the whole image when its aspect is
    # within `ratio`, else the largest central crop of the clamped aspect.
    in_ratio = w / h
    fallback_w = tf.where(in_ratio > ratio[1], tf.round(h * ratio[1]), w)
    fallback_h = tf.where(in_ratio < ratio[0], tf.round(w / ratio[0]), h)
    found = tf.reduce_any(fits)
    crop_h = tf.cast(tf.where(found, crop_h[first], fallback_h), tf.int32)
    crop_w = tf.cast(tf.where(found, crop_w[first], fallback_w), tf.int32)
    height = tf.cast(height, tf.int32)
    width = tf.cast(width, tf.int32)
    top = tf.where(
        found,
        _randint(top_seed, height - crop_h + 1),
        (height - crop_h) // 2,
    )
    left = tf.where(
        found,
        _randint(left_seed, width - crop_w + 1),
        (width - crop_w) // 2,
    )
    return top, left, crop_h, crop_w


def random_resized_crop(
    image: tf.Tensor,
    seed: tf.Tensor,
    size: int,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
) -> tf.Tensor:
    """torchvision's `RandomResizedCrop(size, scale, ratio)`: the box of
    `resized_crop_box`, resized bilinearly (antialiased, as PIL resizes
    MoCo's images) to `size` x `size`."""
    shape = tf.shape(image)
    top, left, crop_h, crop_w = resized_crop_box(
        seed, shape[0], shape[1], scale, ratio
    )
    patch = image[top : top + crop_h, left : left + crop_w, :]
    out = tf.image.resize(patch, (size, size), antialias=True)
    return tf.clip_by_value(out, 0.0, 1.0)


def affine(
    image: tf.Tensor,
    angle: tf.Tensor,
    shift_y: tf.Tensor,
    shift_x: tf.Tensor,
) -> tf.Tensor:
    """Rotates by `angle` radians about the image centre, then shifts by
    (`shift_y`, `shift_x`) pixels; bilinear, zero outside (as Keras'
    `RandomRotation`/`RandomTranslation` with `fill_mode="constant"`).

    The transform maps each output pixel `p` to the input point
    `R^-1 (p - c - t) + c` (c: centre, t: shift), the form
    `ImageProjectiveTransformV3` takes."""
    shape = tf.shape(image)
    h = tf.cast(shape[0], tf.float32)
    w = tf.cast(shape[1], tf.float32)
    cy, cx = (h - 1.0) / 2.0, (w - 1.0) / 2.0
    cos, sin = tf.cos(angle), tf.sin(angle)
    ox, oy = cx + shift_x, cy + shift_y
    transform = tf.stack(
        [
            cos,
            sin,
            cx - cos * ox - sin * oy,
            -sin,
            cos,
            cy + sin * ox - cos * oy,
            0.0,
            0.0,
        ]
    )
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None],
        transforms=transform[None],
        output_shape=shape[:2],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )
    return out[0]


# --- intensity ----------------------------------------------------------------


def grayscale(image: tf.Tensor) -> tf.Tensor:
    """Luma of an RGB image, repeated over 3 channels."""
    gray = tf.tensordot(image, tf.constant(_LUMA), axes=[[-1], [0]])
    return tf.repeat(gray[..., None], 3, axis=-1)


def adjust_brightness(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """torchvision's brightness: multiplicative (`x * factor`, clipped), so
    black stays black and no mid-gray is clipped to black."""
    return tf.clip_by_value(image * factor, 0.0, 1.0)


def adjust_contrast(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """torchvision's contrast: blend with the mean gray value."""
    mean = tf.reduce_mean(grayscale(image)[..., 0])
    return tf.clip_by_value(mean + factor * (image - mean), 0.0, 1.0)


def adjust_saturation(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """torchvision's saturation: blend with the grayscale image."""
    gray = grayscale(image)
    return tf.clip_by_value(gray + factor * (image - gray), 0.0, 1.0)


def adjust_hue(image: tf.Tensor, delta: tf.Tensor) -> tf.Tensor:
    """Hue rotated by `delta` of a full turn (torchvision's and
    `tf.image.adjust_hue`'s convention)."""
    return tf.clip_by_value(tf.image.adjust_hue(image, delta), 0.0, 1.0)


def color_jitter(
    image: tf.Tensor,
    seed: tf.Tensor,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
    hue: float = 0.1,
) -> tf.Tensor:
    """torchvision's `ColorJitter(brightness, contrast, saturation, hue)`:
    factors from U[1 - b, 1 + b] (hue: U[-hue, hue]) applied in a random
    order, as torchvision does (`torch.randperm(4)`)."""
    order_seed, b_seed, c_seed, s_seed, h_seed = split_seed(seed, 5)
    b = uniform(b_seed, 1.0 - brightness, 1.0 + brightness)
    c = uniform(c_seed, 1.0 - contrast, 1.0 + contrast)
    s = uniform(s_seed, 1.0 - saturation, 1.0 + saturation)
    h = uniform(h_seed, -hue, hue)
    order = tf.argsort(uniform(order_seed, shape=[4]))
    for slot in range(4):
        image = tf.switch_case(
            order[slot],
            [
                lambda x=image: adjust_brightness(x, b),
                lambda x=image: adjust_contrast(x, c),
                lambda x=image: adjust_saturation(x, s),
                lambda x=image: adjust_hue(x, h),
            ],
        )
    return image


def blur_kernel_size(size: int) -> int:
    """Odd kernel side of about 10% of the image side (SimCLR's choice,
    23 px at 224), at least 3. Small images truncate the kernel: at 32 px
    it spans 3 pixels whatever sigma."""
    side = max(3, int(0.1 * size))
    return side if side % 2 else side + 1


def gaussian_blur(image: tf.Tensor, sigma: tf.Tensor, kernel: int) -> tf.Tensor:
    """Separable Gaussian blur (two depthwise convolutions) with reflected
    borders; the kernel is `kernel` taps, normalised to sum 1."""
    radius = kernel // 2
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    taps = tf.exp(-(x**2) / (2.0 * sigma**2))
    taps = taps / tf.reduce_sum(taps)
    padded = tf.pad(
        image[None],
        [[0, 0], [radius, radius], [radius, radius], [0, 0]],
        mode="REFLECT",
    )
    vertical = tf.tile(tf.reshape(taps, [kernel, 1, 1, 1]), [1, 1, 3, 1])
    horizontal = tf.reshape(vertical, [1, kernel, 3, 1])
    out = tf.nn.depthwise_conv2d(padded, vertical, [1, 1, 1, 1], "VALID")
    out = tf.nn.depthwise_conv2d(out, horizontal, [1, 1, 1, 1], "VALID")
    return tf.clip_by_value(out[0], 0.0, 1.0)


def random_blur(size: int, sigma: tuple[float, float] = (0.1, 2.0)) -> Augment:
    """Gaussian blur with sigma from U[sigma] (MoCo v2's `GaussianBlur`)."""
    kernel = blur_kernel_size(size)

    def blur(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        return gaussian_blur(image, uniform(seed, *sigma), kernel)

    return blur


def window_level(
    image: tf.Tensor,
    seed: tf.Tensor,
    width: tuple[float, float] = (0.7, 1.3),
    level: float = 0.1,
) -> tf.Tensor:
    """A CT window/level change on the displayed gray values: the window
    width is scaled by U[width] (contrast about the image mean is divided
    by it) and its level moved by U[-level, level] of the value range.
    The same on every channel, so a gray image stays gray."""
    width_seed, level_seed = split_seed(seed, 2)
    scale = uniform(width_seed, *width)
    shift = uniform(level_seed, -level, level)
    mean = tf.reduce_mean(image)
    return tf.clip_by_value((image - mean) / scale + mean - shift, 0.0, 1.0)


def gamma(
    image: tf.Tensor, seed: tf.Tensor, value: tuple[float, float] = (0.7, 1.5)
) -> tf.Tensor:
    """`x ** g` with g from U[value]: a nonlinear change of the gray-value
    mapping (dark or bright tissue emphasised), 0 and 1 fixed."""
    return tf.clip_by_value(image, 0.0, 1.0) ** uniform(seed, *value)


def intensity_shift(
    image: tf.Tensor, seed: tf.Tensor, delta: float = 0.1
) -> tf.Tensor:
    """Adds U[-delta, delta] to every value (Keras' `RandomBrightness`,
    STL-M's intensity shift), clipped."""
    return tf.clip_by_value(image + uniform(seed, -delta, delta), 0.0, 1.0)


# --- recipes ------------------------------------------------------------------


def _finish(image: tf.Tensor, size: int) -> tf.Tensor:
    image = tf.clip_by_value(image, 0.0, 1.0)
    image.set_shape([size, size, 3])
    return image


def _none(size: int, use_flip: bool) -> Augment:
    del use_flip

    def augment(image, seed):
        del seed
        return center_crop(image, size)

    return augment


def _crop_flip(size: int, use_flip: bool) -> Augment:
    """STL-N (He et al. 2016): random `size` crop of the resized image and a
    horizontal flip with p=0.5."""

    def augment(image, seed):
        crop_seed, flip_seed = split_seed(seed, 2)
        image = random_crop(image, crop_seed, size)
        if use_flip:
            image = flip(image, flip_seed)
        return _finish(image, size)

    return augment


def _stl_m(size: int, use_flip: bool) -> Augment:
    """STL-M (paper section 6.2, chest X-rays): translation, rotation,
    horizontal flip and intensity shift, each with p=0.5, on the centre
    crop. The magnitudes (10% shift, 10 degrees, 0.1 intensity) are the
    paper's unstated values made explicit (those of the Keras layers this
    recipe used before). Translation and rotation are one resampling."""
    max_angle = math.radians(10.0)
    max_shift = 0.1 * size
    shift_p = with_probability(intensity_shift, 0.5)

    def augment(image, seed):
        seeds = split_seed(seed, 6)
        image = center_crop(image, size)
        translate = coin(seeds[0], 0.5)
        rotate = coin(seeds[1], 0.5)
        shifts = uniform(seeds[2], -max_shift, max_shift, [2])
        angle = uniform(seeds[3], -max_angle, max_angle)
        zero = tf.zeros([2])
        shifts = tf.where(translate, shifts, zero)
        angle = tf.where(rotate, angle, 0.0)
        image = tf.cond(
            translate | rotate,
            lambda: affine(image, angle, shifts[0], shifts[1]),
            lambda: image,
        )
        if use_flip:
            image = flip(image, seeds[4])
        image = shift_p(image, seeds[5])
        return _finish(image, size)

    return augment


def _resized_crop_recipe(size: int, use_flip: bool, *steps: Augment) -> Augment:
    """RandomResizedCrop(size, scale=(0.2, 1)) of the load-size image, then
    `steps` in order, GaussianBlur(sigma in [0.1, 2]) with p=0.5 and the
    horizontal flip: the geometry MoCo v2 and the CT recipe share."""
    blur = with_probability(random_blur(size), 0.5)

    def augment(image, seed):
        seeds = split_seed(seed, len(steps) + 3)
        image = random_resized_crop(image, seeds[0], size)
        for step, step_seed in zip((*steps, blur), seeds[1:-1]):
            image = step(image, step_seed)
        if use_flip:
            image = flip(image, seeds[-1])
        return _finish(image, size)

    return augment


def _moco_v2(size: int, use_flip: bool) -> Augment:
    """MoCo v2 (Chen et al. 2020; `aug_plus` of facebookresearch/moco
    `main_moco.py`), in its order: RandomResizedCrop(size, scale=(0.2, 1))
    of the load-size image, ColorJitter(0.4, 0.4, 0.4, 0.1) with p=0.8
    (random order of the four, as torchvision), RandomGrayscale(p=0.2),
    GaussianBlur(sigma in [0.1, 2]) with p=0.5, horizontal flip."""
    return _resized_crop_recipe(
        size,
        use_flip,
        with_probability(color_jitter, 0.8),
        with_probability(lambda x, s: grayscale(x), 0.2),
    )


def _sstl_m_paper(size: int, use_flip: bool) -> Augment:
    """SSTL-M as the paper writes it (section 6.2, "following MoCo"): a
    random `size` crop of the resized image (at most a 1/8 shift at
    224 of 256), colour jitter with p=0.5, horizontal flip, grayscale
    with p=0.5. The jitter is MoCo's (torchvision's ColorJitter(0.4, 0.4,
    0.4, 0.1), multiplicative brightness)."""
    jitter = with_probability(color_jitter, 0.5)
    gray = with_probability(lambda x, s: grayscale(x), 0.5)

    def augment(image, seed):
        seeds = split_seed(seed, 4)
        image = random_crop(image, seeds[0], size)
        image = jitter(image, seeds[1])
        if use_flip:
            image = flip(image, seeds[2])
        image = gray(image, seeds[3])
        return _finish(image, size)

    return augment


def _ct_intensity(size: int, use_flip: bool) -> Augment:
    """CT-aware SSL views: MoCo v2's geometry (RandomResizedCrop scale
    0.2-1, blur p=0.5, flip) with the colour jitter replaced by what
    changes a gray CT slice: window/level jitter (width x U[0.7, 1.3],
    level +-0.1) with p=0.8 and gamma U[0.7, 1.5] with p=0.5. The crop
    scale is MoCo's so that a comparison with `moco_v2` measures the
    intensity part only."""
    return _resized_crop_recipe(
        size,
        use_flip,
        with_probability(window_level, 0.8),
        with_probability(gamma, 0.5),
    )


def _crop_blur(size: int, use_flip: bool) -> Augment:
    """MoCo v2's geometry (RandomResizedCrop scale 0.2-1, blur p=0.5,
    flip) and nothing that changes the gray values: the control that
    measures what the intensity jitter of `moco_v2` and `ct_intensity`
    costs or buys on CT, where attenuation (how bright a region is) is
    itself a finding."""
    return _resized_crop_recipe(size, use_flip)


RECIPES: dict[str, Callable[[int, bool], Augment]] = {
    "none": _none,
    "crop_flip": _crop_flip,
    "stl_m": _stl_m,
    "moco_v2": _moco_v2,
    "sstl_m_paper": _sstl_m_paper,
    "ct_intensity": _ct_intensity,
    "crop_blur": _crop_blur,
}


def two_views(augment: Augment, image, seed: tf.Tensor):
    """Two independent draws of `augment` of one image (an SSL method's
    positive pair), from the two halves of `seed`; `image` may be the
    pipeline's `{"image": ..., **prepare}` dict."""
    first, second = split_seed(seed, 2)
    image = image["image"] if isinstance(image, dict) else image
    return augment(image, first), augment(image, second)


def get_augment(name: str, size: int, *, flip: bool = True) -> Augment:
    """The augmentation recipe `name` for output size `size`.

    Args:
        name: str. One of `RECIPES`.
        size: int. Output side.
        flip: bool. Whether the recipe's horizontal flip is used (region
            crops must keep their side: `flip=False`).

    Returns:
        `augment(image, seed)`, see the module docstring.
    """
    if name not in RECIPES:
        raise ConfigError(
            f"`augment` must be one of {sorted(RECIPES)}. Received: "
            f"augment={name!r}"
        )
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ConfigError(
            f"augmentation `size` must be a positive int. Received: {size!r}"
        )
    return traced_once(RECIPES[name](size, bool(flip)))


def traced_once(augment: Augment) -> Augment:
    """`augment` as a graph function traced once per input signature,
    without autograph.

    Called as plain Python inside a tf.data map, a recipe builds its whole
    graph again for every view (MoCo's two, region_aware's five crops and
    two views) and autograph first rewrites its source: that tracing was
    the largest part of building an SSL input pipeline (py-spy: 18% of a
    tiny SSTL-M + fine-tuning job's samples; building region_aware's
    pipeline took 5.0 s before, 2.5 s after). The recipes need no
    autograph: their randomness is stateless and every branch an explicit
    `tf.cond` / `tf.switch_case`. The values are those of the plain
    function (the same ops on the same seeds).
    """
    return tf.function(augment, autograph=False, reduce_retracing=True)
