"""The Generator of Eq. 4: locate the lung, crop the five lobe regions,
resize them; TensorFlow ops only (runs in `tf.data` and in graphs).
Run it on the full-resolution image (`RegionAware.prepare` does, before the
pipeline's cache), not on the load-size copy.

Locate (paper section 5.3, made concrete for real slices):
1. Gray image, smoothed by a 3x3 mean (JPEG noise would otherwise make
   every window "contain more than one value"), then binarized by Otsu's
   threshold: tissue (bright) vs air (dark: the lungs and the air around
   the patient).
2. The body box: rows and columns whose share of tissue pixels exceeds
   `min_fraction`. This drops thin structures that are not the patient:
   text labels, arrows, rulers and image borders from the source papers.
3. The lung mask: air enclosed by the body (between the first and last
   tissue pixel of its row and of its column, so the air around the
   patient is not), inside the body box shrunk by `body_margin` per side.
4. The paper's boundary map of that mask: a pixel is a boundary pixel when
   its 3x3 window holds more than one distinct value. The lung box spans
   the boundary pixels between the 2nd and 98th percentiles of their
   coordinates (robust to stray pixels).

Fallback: when no body or no lung is found (fewer than 16 boundary
pixels, or a mask that is mostly boundary: noise), or the lung box is smaller
than `min_lung_fraction` of the image on a side (a blank, cropped or
non-CT image), the box is the central `fallback_box` of the image. Every
crop is clipped to the image and at least 1/16 of its side, so a crop is
never empty. `lung_box(..., return_found=True)` says which images fell back.

Regions: five location tuples `(cx, cy, w, h)` relative to the lung box
(`LOBES`), in the order right upper, right middle, right lower, left upper,
left lower (the region classifier's classes 0..4). Orientation: CT slices
are shown in radiological convention, where the patient's right lung is on
the image's LEFT (`orientation="radiological"`, the default; the COVID19-CT
images follow it); `"neurological"` mirrors the boxes.

Crop and resize (`square_boxes`, `crop_squares`): the region task must be
solved from anatomy, not from how a crop was made. A lobe box resized to a
square is stretched by its own aspect ratio, and the stretch leaves a
texture signature (on pure noise, one statistic told right-lung from
left-lung crops 100% of the time). So each region is a SQUARE around its
lobe centre with the same side for all five regions of an image (the
largest lobe extent, so every lobe is covered), shifted inside the image at
its border, and resized with antialiasing: all five crops of an image are
made by exactly the same geometry. `region_boxes` stays the anatomical
lobe boxes (what each square must cover).
"""

from __future__ import annotations

import tensorflow as tf

REGIONS = (
    "right_upper",
    "right_middle",
    "right_lower",
    "left_upper",
    "left_lower",
)

# (cx, cy, w, h) in the lung box, patient's right on the image's left. The
# right lung has three lobes (the middle lobe sits in front, between the
# horizontal and oblique fissures: on an axial slice it shows in the middle
# third), the left lung two; neighbouring regions overlap a little.
LOBES = (
    (0.25, 0.22, 0.5, 0.44),
    (0.25, 0.50, 0.5, 0.40),
    (0.25, 0.78, 0.5, 0.44),
    (0.75, 0.28, 0.5, 0.56),
    (0.75, 0.72, 0.5, 0.56),
)
ORIENTATIONS = ("radiological", "neurological")


def _otsu_threshold(gray: tf.Tensor, bins: int = 64) -> tf.Tensor:
    """Otsu's threshold of values in [0, 1] (maximal between-class variance)."""
    histogram = tf.cast(
        tf.histogram_fixed_width(gray, [0.0, 1.0], nbins=bins), tf.float32
    )
    centers = (tf.range(bins, dtype=tf.float32) + 0.5) / bins
    weight0 = tf.cumsum(histogram)
    weight1 = tf.reduce_sum(histogram) - weight0
    sum0 = tf.cumsum(histogram * centers)
    mean0 = sum0 / tf.maximum(weight0, 1e-6)
    mean1 = (tf.reduce_sum(histogram * centers) - sum0) / tf.maximum(
        weight1, 1e-6
    )
    between = weight0 * weight1 * tf.square(mean0 - mean1)
    return (tf.cast(tf.argmax(between), tf.float32) + 1.0) / bins


def boundary_map(binary: tf.Tensor) -> tf.Tensor:
    """The paper's boundary map: True where the 3x3 window around a pixel
    holds more than one distinct value. `binary`: (H, W) float."""
    x = binary[None, :, :, None]
    high = tf.nn.max_pool2d(x, 3, 1, "SAME")
    low = -tf.nn.max_pool2d(-x, 3, 1, "SAME")
    return (high > low)[0, :, :, 0]


def _extent(mask_1d: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """First and last True index (0, -1 when none)."""
    indices = tf.cast(tf.where(mask_1d)[:, 0], tf.float32)
    return (
        tf.cond(
            tf.size(indices) > 0, lambda: tf.reduce_min(indices), lambda: 0.0
        ),
        tf.cond(
            tf.size(indices) > 0, lambda: tf.reduce_max(indices), lambda: -1.0
        ),
    )


def _between_ends(mask: tf.Tensor, axis: int) -> tf.Tensor:
    """True between the first and the last True of each row (`axis=1`) or
    column (`axis=0`) of a 2-D bool mask."""
    n = tf.shape(mask)[axis]
    as_int = tf.cast(mask, tf.int32)
    first = tf.argmax(as_int, axis=axis, output_type=tf.int32)
    last = (
        n
        - 1
        - tf.argmax(tf.reverse(as_int, [axis]), axis=axis, output_type=tf.int32)
    )
    any_true = tf.reduce_any(mask, axis=axis)
    index = tf.range(n)
    if axis == 1:
        first, last, any_true = first[:, None], last[:, None], any_true[:, None]
        index = index[None, :]
    else:
        first, last, any_true = first[None, :], last[None, :], any_true[None, :]
        index = index[:, None]
    return (index >= first) & (index <= last) & any_true


def _percentile(values: tf.Tensor, q: float) -> tf.Tensor:
    values = tf.sort(values)
    n = tf.shape(values)[0]
    index = tf.cast(tf.round(q * tf.cast(n - 1, tf.float32)), tf.int32)
    return values[index]


def lung_box(
    image: tf.Tensor,
    min_fraction: float = 0.1,
    body_margin: float = 0.04,
    min_lung_fraction: float = 0.2,
    fallback_box: tuple[float, float, float, float] = (0.1, 0.1, 0.9, 0.9),
    max_edge_fraction: float = 0.5,
    return_found: bool = False,
):
    """The lung's bounding box `(y0, x0, y1, x1)`, normalized to [0, 1].

    Args:
        image: (H, W, C) float in [0, 1].
        min_fraction: float. Share of tissue pixels a row/column needs to
            belong to the body (drops text, arrows, borders).
        body_margin: float. Body box shrink (fraction of its side) that
            drops the body's outline from the lung's boundary pixels.
        min_lung_fraction: float. Smaller lung boxes fall back.
        fallback_box: the box used when no lung is found.
        max_edge_fraction: float. A lung mask whose boundary pixels exceed
            this share of its pixels is noise, not a lung: fallback.
        return_found: bool. Also return whether the lung was found.
    """
    image = tf.convert_to_tensor(image, tf.float32)
    gray = tf.reduce_mean(image, axis=-1)
    height = tf.cast(tf.shape(gray)[0], tf.float32)
    width = tf.cast(tf.shape(gray)[1], tf.float32)
    smooth = tf.nn.avg_pool2d(gray[None, :, :, None], 3, 1, "SAME")[0, :, :, 0]
    tissue = tf.cast(smooth > _otsu_threshold(smooth), tf.float32)

    rows = tf.reduce_mean(tissue, axis=1) > min_fraction
    cols = tf.reduce_mean(tissue, axis=0) > min_fraction
    by0, by1 = _extent(rows)
    bx0, bx1 = _extent(cols)
    ys = tf.range(height)[:, None]
    xs = tf.range(width)[None, :]
    body_box = (ys >= by0) & (ys <= by1) & (xs >= bx0) & (xs <= bx1)
    body = (tissue > 0.5) & body_box
    # Air enclosed by the body: between the first and last tissue pixel of
    # its row and of its column (the air around the patient is not).
    enclosed = _between_ends(body, axis=1) & _between_ends(body, axis=0)
    my = body_margin * (by1 - by0)
    mx = body_margin * (bx1 - bx0)
    inner = (
        (ys > by0 + my) & (ys < by1 - my) & (xs > bx0 + mx) & (xs < bx1 - mx)
    )
    lung = tf.cast((tissue < 0.5) & enclosed & inner, tf.float32)
    edges = boundary_map(lung) & (lung > 0.5)
    points = tf.cast(tf.where(edges), tf.float32)  # (N, 2): y, x
    # A lung is a coherent region: most of its pixels are not on its
    # boundary. Noise, or a texture without a body, is mostly boundary.
    area = tf.reduce_sum(lung)
    coherent = (
        tf.cast(tf.shape(points)[0], tf.float32) < max_edge_fraction * area
    )
    enough = (tf.shape(points)[0] >= 16) & coherent

    def from_points():
        y0 = _percentile(points[:, 0], 0.02) / height
        y1 = (_percentile(points[:, 0], 0.98) + 1.0) / height
        x0 = _percentile(points[:, 1], 0.02) / width
        x1 = (_percentile(points[:, 1], 0.98) + 1.0) / width
        return tf.stack([y0, x0, y1, x1])

    fallback = tf.constant(fallback_box, tf.float32)
    box = tf.cond(enough, from_points, lambda: fallback)
    found = (
        enough
        & (box[2] - box[0] >= min_lung_fraction)
        & (box[3] - box[1] >= min_lung_fraction)
    )
    box = tf.where(found, box, fallback)
    if return_found:
        return box, found
    return box


def region_boxes(
    box: tf.Tensor, orientation: str = "radiological"
) -> tf.Tensor:
    """(5, 4) normalized `(y0, x0, y1, x1)` of the lobe regions in `box`."""
    if orientation not in ORIENTATIONS:
        raise ValueError(
            f"`orientation` must be one of {ORIENTATIONS}. Received: "
            f"orientation={orientation!r}"
        )
    lobes = tf.constant(LOBES, tf.float32)
    cx, cy, w, h = tf.unstack(lobes, axis=1)
    if orientation == "neurological":
        cx = 1.0 - cx
    y0, x0, y1, x1 = tf.unstack(box)
    bh, bw = y1 - y0, x1 - x0
    top = y0 + (cy - h / 2) * bh
    left = x0 + (cx - w / 2) * bw
    bottom = y0 + (cy + h / 2) * bh
    right = x0 + (cx + w / 2) * bw
    boxes = tf.clip_by_value(
        tf.stack([top, left, bottom, right], axis=1), 0.0, 1.0
    )
    # Never empty: at least 1/16 of the image on each side.
    minimum = 1.0 / 16.0
    bottom = tf.maximum(boxes[:, 2], tf.minimum(boxes[:, 0] + minimum, 1.0))
    top = tf.minimum(boxes[:, 0], bottom - minimum)
    right = tf.maximum(boxes[:, 3], tf.minimum(boxes[:, 1] + minimum, 1.0))
    left = tf.minimum(boxes[:, 1], right - minimum)
    return tf.stack([top, left, bottom, right], axis=1)


def square_boxes(
    box: tf.Tensor, height, width, orientation: str = "radiological"
) -> tf.Tensor:
    """(5, 4) int32 pixel boxes `(y0, x0, y1, x1)` (ends exclusive) of the
    square crops around the lobe centres of `box`, for an image of
    `height` x `width` pixels.

    All five squares of an image have the same side: the largest extent
    (width or height, in pixels) of the five lobe boxes, so each square
    covers its lobe. A square that crosses the image border is shifted
    inside it (neither squashed nor padded: padding would sit at a place
    that tells the region, e.g. above the upper lobes); the side is at most
    the image's shorter side (at least 1/16 of it, so never empty).
    Corners are whole pixels. Why square and equal: lobe boxes of
    different aspect ratios, each resized to a square, are stretched
    differently, and that stretch alone tells right from left crops even on
    pure noise (`tests/plugins/test_region_shortcut.py`).
    """
    if orientation not in ORIENTATIONS:
        raise ValueError(
            f"`orientation` must be one of {ORIENTATIONS}. Received: "
            f"orientation={orientation!r}"
        )
    height = tf.cast(height, tf.float32)
    width = tf.cast(width, tf.float32)
    lobes = tf.constant(LOBES, tf.float32)
    cx, cy, w, h = tf.unstack(lobes, axis=1)
    if orientation == "neurological":
        cx = 1.0 - cx
    y0, x0, y1, x1 = tf.unstack(tf.cast(box, tf.float32))
    box_h, box_w = (y1 - y0) * height, (x1 - x0) * width
    shorter = tf.minimum(height, width)
    side = tf.reduce_max(tf.maximum(w * box_w, h * box_h))
    side = tf.clip_by_value(
        tf.math.ceil(side), tf.maximum(1.0, tf.floor(shorter / 16.0)), shorter
    )
    centre_y = (y0 + cy * (y1 - y0)) * height
    centre_x = (x0 + cx * (x1 - x0)) * width
    top = tf.clip_by_value(tf.round(centre_y - side / 2), 0.0, height - side)
    left = tf.clip_by_value(tf.round(centre_x - side / 2), 0.0, width - side)
    boxes = tf.stack([top, left, top + side, left + side], axis=1)
    return tf.cast(boxes, tf.int32)


def crop_squares(image: tf.Tensor, boxes: tf.Tensor, size: int) -> tf.Tensor:
    """The pixel `boxes` (from `square_boxes`) of `image` (H, W, C), each
    resized to `size` x `size` with an antialiased bilinear filter:
    `(5, size, size, C)`.

    Crop first, then resize each crop: `tf.image.crop_and_resize` samples
    without antialiasing, so downsampling a large full-resolution crop with
    it aliases (keeps a random subset of pixels) instead of averaging.
    """
    image = tf.convert_to_tensor(image, tf.float32)
    crops = []
    for i in range(len(REGIONS)):
        y0, x0, y1, x1 = tf.unstack(boxes[i])
        crop = image[y0:y1, x0:x1]
        crop = tf.image.resize(crop, [size, size], antialias=True)
        crops.append(tf.clip_by_value(crop, 0.0, 1.0))
    return tf.stack(crops)


def generate_regions(
    image: tf.Tensor, size: int, orientation: str = "radiological", **locate
) -> tf.Tensor:
    """Eq. 4: the five regions of `image` (H, W, C), each a square around
    its lobe (`square_boxes`) resized to `size` x `size`: a
    `(5, size, size, C)` tensor (order: `REGIONS`). Give it the
    full-resolution image: cropping the load-size cache would upsample
    each region 2-3x and lose the fine texture the regions are for."""
    image = tf.convert_to_tensor(image, tf.float32)
    shape = tf.shape(image)
    boxes = square_boxes(
        lung_box(image, **locate), shape[0], shape[1], orientation
    )
    return crop_squares(image, boxes, size)
