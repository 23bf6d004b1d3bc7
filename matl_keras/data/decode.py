"""The one image-decoding path of matl-keras.

Every file-based dataset decodes through `decode_file_image`, the exported
serving graph through `decode_image`: the format is taken from the bytes (a
`.png` that is really a JPEG is common in public medical data). PNG, JPEG,
BMP and GIF are decoded by TensorFlow; TIFF and WebP (by content) by Pillow,
on purpose, in files only (a Python function cannot be saved in a serving
graph). Whatever comes out (grayscale, grayscale+alpha, RGB, RGBA; 8 or 16
bit) becomes float32 RGB in [0, 1]: gray is repeated over three channels,
alpha is dropped (as PIL's `convert("RGB")` does), 16-bit values are scaled
by 1/65535.

`check_splits` checks every file of every split a stage uses once, before
training, so that each unusable file is named (with its reason) in one
message at start, never as a crash in the middle of an epoch. An image
whose header claims more than `MAX_PIXELS` pixels is refused from its header,
before anything is decoded (a 60000 x 60000 PNG is a few KB on disk and
10 GiB decoded).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import io
import os
import re
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from matl_keras.errors import DataError

ON_BAD_IMAGE = ("refuse", "skip")
# What file-based datasets list (any case); the content decides the decoder.
IMAGE_EXTENSIONS = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
)
FORMATS = "PNG, JPEG, BMP, GIF, TIFF or WebP"
# Default refusal limit on width x height, read from the header.
MAX_PIXELS = 100_000_000
# The first bytes of the formats Pillow decodes: TIFF (both byte orders),
# WebP (`RIFF....WEBP`).
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*")


def uses_pillow(data: bytes) -> bool:
    """Whether `data` is TIFF or WebP (decoded with Pillow)."""
    return data[:4] in _TIFF_MAGIC or (
        data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    )


def _uses_pillow_tf(contents: tf.Tensor) -> tf.Tensor:
    """`uses_pillow` in TensorFlow ops (padded: short files are fine)."""
    head = tf.strings.substr(
        tf.strings.join([contents, tf.constant(b"\x00" * 12)]), 0, 12
    )
    first = tf.strings.substr(head, 0, 4)
    tiff = tf.reduce_any(tf.equal(first, list(_TIFF_MAGIC)))
    webp = tf.logical_and(
        tf.equal(first, b"RIFF"),
        tf.equal(tf.strings.substr(head, 8, 4), b"WEBP"),
    )
    return tf.logical_or(tiff, webp)


def _pillow():
    """PIL.Image, with its decompression-bomb warning (from 89 megapixels)
    off: the limit here is `max_pixels`, checked from the header."""
    import warnings

    from PIL import Image

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    return Image


def pillow_array(data: bytes) -> np.ndarray:
    """Decodes TIFF/WebP bytes (first page) with Pillow: float32
    `(h, w, c)` in [0, 1]; 16-bit gray scaled by 1/65535, everything else
    through `convert("RGB")`."""
    Image = _pillow()  # noqa: N806

    with Image.open(io.BytesIO(bytes(data))) as image:
        if image.mode.startswith("I;16"):
            gray = np.asarray(image).astype(np.float32) / 65535.0
            return gray[..., None]
        rgb = np.asarray(image.convert("RGB"), np.float32)
    return rgb / 255.0


def decode_file_image(contents: tf.Tensor) -> tf.Tensor:
    """`decode_image`'s formats, plus TIFF and WebP (by content, decoded
    with Pillow): what the input pipeline reads from files.

    Args:
        contents: scalar `tf.string`, the encoded file.

    Returns:
        float32 `(height, width, 3)` in [0, 1].
    """

    def pillow():
        # Not tf.numpy_function: NumPy strips trailing NUL bytes off a
        # string, and TIFF/WebP files may end with one.
        image = tf.py_function(
            lambda data: pillow_array(data.numpy()), [contents], tf.float32
        )
        image.set_shape([None, None, None])
        return to_rgb(image)

    return tf.cond(
        _uses_pillow_tf(contents), pillow, lambda: decode_image(contents)
    )


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


def _not_an_image(data: bytes) -> str:
    head = data[:1024].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head:
        return "not an image: an HTML page (a failed download?)"
    try:
        text = data[:1024].decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c.isspace() for c in text):
        return "not an image: text"
    return f"not an image: the content is not {FORMATS}"


def _header_reason(data: bytes, max_pixels: int) -> str | None:
    """Why the header alone rules the file out (not an image, a corrupt
    header, more pixels than `max_pixels`), read without decoding."""
    from PIL import UnidentifiedImageError

    Image = _pillow()  # noqa: N806
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Image.DecompressionBombError as e:
        # Pillow's own limit (2 x Image.MAX_IMAGE_PIXELS) stopped it first.
        match = re.search(r"\((\d+) pixels\)", str(e))
        pixels = int(match.group(1)) if match else None
        if pixels is None or pixels > max_pixels:
            return _too_large(f"{pixels or 'too many'} pixels", max_pixels)
        return None
    except UnidentifiedImageError:
        return _not_an_image(data)
    except Exception as e:  # noqa: BLE001 - Pillow raises many kinds
        return f"corrupt or truncated image header ({type(e).__name__}: {e})"
    if width * height > max_pixels:
        return _too_large(
            f"{width}x{height} = {width * height} pixels", max_pixels
        )
    if width == 0 or height == 0:
        return "image has zero width or height"
    return None


def _too_large(claim: str, max_pixels: int) -> str:
    return (
        f"the header claims {claim}, more than the limit of {max_pixels} "
        "(max_image_pixels); not decoded"
    )


def check_image_file(path: str, max_pixels: int = MAX_PIXELS) -> str | None:
    """Returns why `path` is not a usable image, or None if it is.

    The header is read first (format, size: a claimed size over
    `max_pixels` is refused without decoding), then the file is decoded
    exactly as the input pipeline will decode it.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if not data:
        return "empty file (0 bytes)"
    reason = _header_reason(data, max_pixels)
    if reason is not None:
        return reason
    if uses_pillow(data):
        try:
            image = pillow_array(data)
        except Exception as e:  # noqa: BLE001 - Pillow raises many kinds
            return f"corrupt or truncated image data ({type(e).__name__}: {e})"
    else:
        try:
            image = decode_image(tf.constant(data))
        except tf.errors.InvalidArgumentError as e:
            return _decode_reason(e.message, data)
    if image.shape[0] == 0 or image.shape[1] == 0:
        return "image has zero width or height"
    return None


def _decode_reason(message: str, data: bytes = b"") -> str:
    if "Unknown image file format" in message:
        Image = _pillow()  # noqa: N806
        try:
            with Image.open(io.BytesIO(data)) as image:
                found = image.format
        except Exception:  # noqa: BLE001
            found = None
        if found:
            return f"unsupported image format {found} (use {FORMATS})"
        return f"not an image: the content is not {FORMATS}"
    if "Input is empty" in message:
        return "empty file (0 bytes)"
    # TensorFlow wraps its reason: "{{function_node ...}} Invalid PNG
    # data, size 300 [Op:DecodeImage] name: ".
    detail = re.sub(r"\{\{.*?\}\}|\[Op:[^\]]*\]|\bname:.*$", "", message)
    detail = (detail.strip() or message).splitlines()[0]
    return f"corrupt or truncated image data ({detail})"


# Bad files found per list of paths (by a digest of the list), so that the
# input pipeline does not decode again what `check_splits` just checked, and
# the pixel limit `check_splits` was given (a subset of a split, checked
# later, gets the same). Reset by every `check_splits` (a stage's start).
_CHECKED: dict[str, list[BadImage]] = {}
_STAGE = {"max_pixels": MAX_PIXELS}


def _digest(paths: Sequence[str]) -> str:
    return hashlib.sha1("\0".join(paths).encode()).hexdigest()


def find_bad_images(
    paths: Sequence[str], max_pixels: int | None = None
) -> list[BadImage]:
    """Checks every file once (in threads) and returns the unusable ones
    (a list this process checked since the stage started is not checked
    again). `max_pixels` None: the current stage's limit (`MAX_PIXELS`
    unless `check_splits` was given another)."""
    _pillow()  # its warning filter set before the threads start
    if max_pixels is None:
        max_pixels = _STAGE["max_pixels"]
    key = _digest(paths)
    if key in _CHECKED:
        return list(_CHECKED[key])
    workers = min(32, 2 * (os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        reasons = list(
            pool.map(lambda p: check_image_file(p, max_pixels), paths)
        )
    bad = [BadImage(p, r) for p, r in zip(paths, reasons) if r is not None]
    _CHECKED[key] = bad
    return list(bad)


def _check_policy(on_bad_image: str) -> None:
    if on_bad_image not in ON_BAD_IMAGE:
        raise DataError(
            f"`on_bad_image` must be one of {ON_BAD_IMAGE}. Received: "
            f"on_bad_image={on_bad_image!r}"
        )


def filter_bad_images(
    paths: Sequence[str],
    on_bad_image: str,
    context: str,
) -> tuple[list[int], list[BadImage]]:
    """Applies the bad-image policy to `paths` (the input pipeline's check
    of one split; the stages name every bad file of all their splits
    earlier, with `check_splits`).

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
    _check_policy(on_bad_image)
    bad = find_bad_images(paths)
    if bad and on_bad_image == "refuse":
        listing = "\n".join(f"  {b}" for b in bad)
        raise DataError(
            f"{context}: {len(bad)} of {len(paths)} image files cannot be "
            f"used:\n{listing}\nFix or remove them, or skip them with "
            "on_bad_image='skip'."
        )
    if bad:
        from absl import logging

        logging.warning(
            "%s: skipping %d of %d image files that cannot be used (first: %s)",
            context,
            len(bad),
            len(paths),
            bad[0],
        )
    bad_paths = {b.path for b in bad}
    keep = [i for i, p in enumerate(paths) if p not in bad_paths]
    return keep, bad


def check_splits(
    dataset,
    splits: Sequence[str],
    on_bad_image: str,
    binding: str,
    max_pixels: int = MAX_PIXELS,
) -> dict[str, list[BadImage]]:
    """Checks every image file of every split in `splits` before anything
    trains, and names all the unusable ones at once.

    Args:
        dataset: Dataset. A loaded dataset plugin.
        splits: sequence of str. The splits the stage will read.
        on_bad_image: str. `"refuse"`: raise a `DataError` that lists every
            bad file of every split with its reason; `"skip"`: log them
            (the input pipeline then leaves them out, without decoding
            them again).
        binding: str. The gin binding that sets `on_bad_image` in the
            calling stage (e.g. `sstl_m/pretrain.on_bad_image`), for the
            message.
        max_pixels: int. Refuse images whose header claims more pixels.

    Returns:
        The bad files by split (splits without any left out).

    Raises:
        DataError: with `"refuse"`, when any file is bad; a split is
            missing.
        PluginError: the dataset's `examples()` broke its contract.
    """
    from matl_keras.data.dataset import FileExamples
    from matl_keras.data.dataset import examples_of

    _check_policy(on_bad_image)
    _CHECKED.clear()
    _STAGE["max_pixels"] = max_pixels
    bad: dict[str, list[BadImage]] = {}
    totals: dict[str, int] = {}
    for split in dict.fromkeys(splits):
        examples = examples_of(dataset, split)
        if isinstance(examples, FileExamples):
            found = find_bad_images(examples.paths, max_pixels)
            totals[split] = len(examples)
            if found:
                bad[split] = found
    if not bad:
        return bad
    count = sum(len(b) for b in bad.values())
    where = ", ".join(
        f"{split} {len(b)} of {totals[split]}" for split, b in bad.items()
    )
    if on_bad_image == "refuse":
        listing = "\n".join(
            f"  {split}: {b}" for split, found in bad.items() for b in found
        )
        raise DataError(
            f"{dataset.name}: {count} image files cannot be used ({where}):"
            f"\n{listing}\nFix or remove them, or skip them with gin: "
            f"{binding} = 'skip'"
        )
    from absl import logging

    logging.warning(
        "%s: skipping %d image files that cannot be used (%s): %s",
        dataset.name,
        count,
        where,
        "; ".join(f"{s}: {b}" for s, found in bad.items() for b in found),
    )
    return bad
