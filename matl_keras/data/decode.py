"""The one image-decoding path of matl-keras.

Every file-based dataset and the exported serving graph decode through
`decode_image`: the format is taken from the bytes (a `.png` that is really a
JPEG is common in public medical data), and whatever comes out (grayscale,
grayscale+alpha, RGB, RGBA; 8 or 16 bit) becomes float32 RGB in [0, 1]:
gray is repeated over three channels, alpha is dropped (as PIL's
`convert("RGB")` does), 16-bit values are scaled by 1/65535.

`find_bad_images` decodes every file once before training so that a corrupt
file is reported by name at start, never as a crash in the middle of an epoch.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
from collections.abc import Sequence

import tensorflow as tf

from matl_keras.errors import DataError

ON_BAD_IMAGE = ("refuse", "skip")
# What file-based datasets list (any case); the content decides the decoder.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def decode_image(contents: tf.Tensor) -> tf.Tensor:
    """Decodes PNG/JPEG/BMP/GIF bytes by content.

    Args:
        contents: scalar `tf.string`, the encoded file.

    Returns:
        float32 `(height, width, 3)` in [0, 1].
    """
    image = tf.io.decode_image(
        contents, channels=0, dtype=tf.float32, expand_animations=False
    )
    return to_rgb(image)


def to_rgb(image: tf.Tensor) -> tf.Tensor:
    """Maps 1, 2, 3 or 4 channels to 3 (gray repeated, alpha dropped)."""
    channels = tf.shape(image)[-1]
    image = tf.cond(
        channels >= 3,
        lambda: image[..., :3],
        lambda: tf.tile(image[..., :1], [1, 1, 3]),
    )
    image.set_shape([None, None, 3])
    return image


@dataclasses.dataclass(frozen=True)
class BadImage:
    """A file that cannot be used, and why."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def check_image_file(path: str) -> str | None:
    """Returns why `path` is not a usable image, or None if it is."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if not data:
        return "empty file (0 bytes)"
    try:
        image = decode_image(tf.constant(data))
    except tf.errors.InvalidArgumentError as e:
        return _decode_reason(e.message)
    if image.shape[0] == 0 or image.shape[1] == 0:
        return "image has zero width or height"
    return None


def _decode_reason(message: str) -> str:
    if "Unknown image file format" in message:
        return "not an image: the content is not PNG, JPEG, BMP or GIF"
    if "Input is empty" in message:
        return "empty file (0 bytes)"
    detail = message.split("]")[-1].strip() or message
    return f"corrupt or truncated image data ({detail.splitlines()[0]})"


def find_bad_images(paths: Sequence[str]) -> list[BadImage]:
    """Decodes every file once (in threads) and returns the unusable ones."""
    workers = min(32, 2 * (os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        reasons = list(pool.map(check_image_file, paths))
    return [BadImage(p, r) for p, r in zip(paths, reasons) if r is not None]


def filter_bad_images(
    paths: Sequence[str],
    on_bad_image: str,
    context: str,
) -> tuple[list[int], list[BadImage]]:
    """Applies the bad-image policy to `paths`.

    Args:
        paths: image files.
        on_bad_image: `"refuse"` (raise, listing every bad file) or `"skip"`
            (drop them with a warning that counts them).
        context: str. What the files are, for messages (dataset and split).

    Returns:
        Indices of the usable paths, and the bad files.

    Raises:
        DataError: with `"refuse"`, when any file is bad.
    """
    if on_bad_image not in ON_BAD_IMAGE:
        raise DataError(
            f"`on_bad_image` must be one of {ON_BAD_IMAGE}. Received: "
            f"on_bad_image={on_bad_image!r}"
        )
    bad = find_bad_images(paths)
    if bad and on_bad_image == "refuse":
        listing = "\n".join(f"  {b}" for b in bad)
        raise DataError(
            f"{context}: {len(bad)} of {len(paths)} image files cannot be "
            f"used:\n{listing}\nFix or remove them, or skip them with "
            "on_bad_image='skip' (gin: train.on_bad_image = 'skip')."
        )
    if bad:
        from absl import logging

        logging.warning(
            "%s: skipping %d of %d image files that cannot be used "
            "(first: %s)",
            context,
            len(bad),
            len(paths),
            bad[0],
        )
    bad_paths = {b.path for b in bad}
    keep = [i for i, p in enumerate(paths) if p not in bad_paths]
    return keep, bad
