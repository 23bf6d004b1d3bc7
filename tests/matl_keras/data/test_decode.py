"""The one decoding path: formats by content, channels, bad files."""

import io
import logging

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from matl_keras.data import decode
from matl_keras.errors import DataError

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)


def _pil_bytes(array, fmt, mode=None):
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format=fmt)
    return buffer.getvalue()


def _write(path, data):
    path.write_bytes(data)
    return str(path)


def _decode_both_ways(data):
    """Eager and inside tf.data, which must agree."""
    eager = decode.decode_image(tf.constant(data)).numpy()
    graph = next(
        iter(tf.data.Dataset.from_tensors(data).map(decode.decode_image))
    ).numpy()
    np.testing.assert_array_equal(eager, graph)
    return eager


def test_png_rgb_round_trips():
    out = _decode_both_ways(_pil_bytes(RGB, "PNG"))
    assert out.shape == (20, 30, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out * 255, RGB, atol=1e-3)


def test_jpeg_named_png_decodes_by_content(tmp_path):
    path = _write(tmp_path / "x.png", _pil_bytes(RGB, "JPEG"))
    assert decode.check_image_file(path) is None
    out = _decode_both_ways(open(path, "rb").read())
    assert out.shape == (20, 30, 3)
    reference = np.asarray(Image.open(path).convert("RGB"), np.float32)
    assert (
        np.abs(out * 255 - reference).mean() < 2
    )  # JPEG decoders differ a bit


def test_grayscale_is_repeated_over_three_channels():
    gray = RGB[..., 0]
    out = _decode_both_ways(_pil_bytes(gray, "PNG"))
    assert out.shape == (20, 30, 3)
    for c in range(3):
        np.testing.assert_allclose(out[..., c] * 255, gray, atol=1e-3)


def test_rgba_drops_alpha_like_pil_convert_rgb():
    alpha = np.full((20, 30, 1), 7, np.uint8)
    data = _pil_bytes(np.concatenate([RGB, alpha], -1), "PNG")
    out = _decode_both_ways(data)
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    np.testing.assert_allclose(out * 255, expected, atol=1e-3)


def test_gray_alpha_uses_gray():
    la = np.stack([RGB[..., 0], RGB[..., 1]], -1)
    out = _decode_both_ways(_pil_bytes(la, "PNG", mode="LA"))
    np.testing.assert_allclose(out[..., 2] * 255, RGB[..., 0], atol=1e-3)


def test_16_bit_png_is_scaled_to_unit_range():
    values = np.array([[0, 65535], [32768, 1000]], np.uint16)[..., None]
    data = tf.io.encode_png(tf.constant(values)).numpy()
    out = _decode_both_ways(data)
    np.testing.assert_allclose(out[..., 0], values[..., 0] / 65535.0, atol=1e-4)


@pytest.mark.parametrize("fmt", ["BMP", "GIF"])
def test_bmp_and_gif(fmt):
    out = _decode_both_ways(_pil_bytes(RGB, fmt))
    assert out.shape == (20, 30, 3)


@pytest.mark.parametrize(
    "name, data, reason",
    [
        ("empty.png", b"", "empty file"),
        ("text.png", b"this is not an image\n", "not an image"),
        ("trunc.png", None, "corrupt or truncated"),
        ("trunc.jpg", None, "corrupt or truncated"),
    ],
)
def test_bad_files_get_a_reason(tmp_path, name, data, reason):
    if data is None:
        full = _pil_bytes(RGB, "PNG" if name.endswith("png") else "JPEG")
        data = full[: len(full) // 2]
    path = _write(tmp_path / name, data)
    assert reason in decode.check_image_file(path)


def test_missing_file_gets_a_reason(tmp_path):
    assert "cannot be read" in decode.check_image_file(str(tmp_path / "no"))


def _mixed_folder(tmp_path):
    good = [
        _write(tmp_path / f"ok{i}.png", _pil_bytes(RGB, "PNG"))
        for i in range(3)
    ]
    bad = [
        _write(tmp_path / "empty.png", b""),
        _write(tmp_path / "text.png", b"hello"),
        _write(tmp_path / "trunc.jpg", _pil_bytes(RGB, "JPEG")[:100]),
    ]
    return good, bad


def test_refuse_lists_every_bad_file(tmp_path):
    good, bad = _mixed_folder(tmp_path)
    with pytest.raises(DataError) as e:
        decode.filter_bad_images(good + bad, "refuse", "ds split 'train'")
    message = str(e.value)
    assert "3 of 6 image files cannot be used" in message
    for path in bad:
        assert path in message
    assert "on_bad_image='skip'" in message


def test_skip_keeps_good_files_and_warns_with_a_count(tmp_path, caplog):
    good, bad = _mixed_folder(tmp_path)
    with caplog.at_level(logging.WARNING):
        keep, found = decode.filter_bad_images(bad + good, "skip", "ds")
    assert keep == [3, 4, 5]
    assert sorted(b.path for b in found) == sorted(bad)
    assert "skipping 3 of 6" in caplog.text


def test_policy_is_checked(tmp_path):
    with pytest.raises(DataError, match="on_bad_image"):
        decode.filter_bad_images([], "ignore", "ds")


# --- every bad file named, in every split, before anything trains ----------


def _png_claiming(width, height):
    """A small valid PNG whose IHDR (CRC fixed) claims width x height."""
    import struct
    import zlib

    data = bytearray(_pil_bytes(RGB, "PNG"))
    ihdr = data[12:29]  # b"IHDR" + 13 bytes of fields
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def _corrupt_chunk_png():
    data = bytearray(_pil_bytes(RGB, "PNG"))
    start = data.index(b"IDAT") + 8
    data[start : start + 20] = b"\xff" * 20  # IDAT bytes that fail their CRC
    return bytes(data)


VALID = {
    "rgb.png": lambda: _pil_bytes(RGB, "PNG"),
    "jpeg_named.png": lambda: _pil_bytes(RGB, "JPEG"),
    "gray16.png": lambda: tf.io.encode_png(
        tf.constant(RNG.integers(0, 65535, (9, 7, 1), dtype=np.uint16))
    ).numpy(),
    "rgba.png": lambda: _pil_bytes(
        np.concatenate([RGB, np.full((20, 30, 1), 9, np.uint8)], -1), "PNG"
    ),
    "upper.JPG": lambda: _pil_bytes(RGB, "JPEG"),
    "scan.gif": lambda: _pil_bytes(RGB, "GIF"),
    "scan.bmp": lambda: _pil_bytes(RGB, "BMP"),
    "scan.tif": lambda: _pil_bytes(RGB, "TIFF"),
    "gray16.tiff": lambda: _pil_bytes(
        RNG.integers(0, 65535, (9, 7), dtype=np.uint16), "TIFF"
    ),
    "scan.webp": lambda: _pil_bytes(RGB, "WEBP"),
    "webp_named.png": lambda: _pil_bytes(RGB, "WEBP"),
}
BROKEN = {
    "truncated.png": (
        lambda: _pil_bytes(RGB, "PNG")[:300],
        "corrupt or truncated",
    ),
    "truncated.jpg": (
        lambda: _pil_bytes(RGB, "JPEG")[:300],
        "corrupt or truncated",
    ),
    "page.jpg": (
        lambda: b"<!DOCTYPE html>\n<html><body>404 Not Found</body></html>\n",
        "not an image: an HTML page",
    ),
    "notes.png": (lambda: b"patient 12, slice 40\n", "not an image: text"),
    "empty.png": (lambda: b"", "empty file (0 bytes)"),
    "bomb.png": (
        lambda: _png_claiming(60000, 60000),
        "the header claims 3600000000 pixels, more than the limit of "
        "100000000 (max_image_pixels); not decoded",
    ),
    "big.png": (
        lambda: _png_claiming(12000, 10000),
        "the header claims 12000x10000 = 120000000 pixels, more than the "
        "limit of 100000000",
    ),
    "crc.png": (
        _corrupt_chunk_png,
        "corrupt or truncated image data (Invalid PNG data, size ",
    ),
    "random.jpg": (
        lambda: np.random.default_rng(1).bytes(2000),
        "not an image: the content is not PNG, JPEG, BMP, GIF, TIFF or WebP",
    ),
    "truncated.tif": (
        lambda: _pil_bytes(RGB, "TIFF")[:200],
        "corrupt or truncated",
    ),
    "icon.png": (
        lambda: _pil_bytes(RGB[:16, :16], "ICO"),
        "unsupported image format ICO (use PNG, JPEG, BMP, GIF, TIFF or WebP)",
    ),
}


def _awkward_folder(root):
    """root/<split>/<class>/ with valid and broken files in both splits."""
    paths = {}
    for i, (name, make) in enumerate(VALID.items()):
        split, label = ("train", "a") if i % 2 else ("val", "b")
        folder = root / split / label
        folder.mkdir(parents=True, exist_ok=True)
        paths[name] = _write(folder / name, make())
    for i, (name, (make, _)) in enumerate(BROKEN.items()):
        split, label = ("train", "b") if i % 2 else ("val", "a")
        folder = root / split / label
        folder.mkdir(parents=True, exist_ok=True)
        paths[name] = _write(folder / name, make())
    return paths


def test_check_splits_names_every_bad_file_of_every_split(tmp_path):
    from matl_keras_plugins.datasets.image_folder import ImageFolder

    paths = _awkward_folder(tmp_path)
    dataset = ImageFolder(str(tmp_path), positive_class="b")
    with pytest.raises(DataError) as e:
        decode.check_splits(
            dataset, ["train", "val"], "refuse", "sstl_m/pretrain.on_bad_image"
        )
    message = str(e.value)
    lines = message.splitlines()
    assert lines[0] == (
        f"ImageFolder: {len(BROKEN)} image files cannot be used "
        "(train 5 of 10, val 6 of 12):"
    )
    for name, (_, reason) in BROKEN.items():
        line = [l for l in lines if l.endswith(name) or f"{name}:" in l]
        assert len(line) == 1, (name, message)
        assert reason in line[0], (name, line[0])
        split = "train" if "/train/" in paths[name] else "val"
        assert line[0].startswith(f"  {split}: {paths[name]}: ")
    for name in VALID:
        assert name not in message
    assert lines[-1] == (
        "Fix or remove them, or skip them with gin: "
        "sstl_m/pretrain.on_bad_image = 'skip'"
    )


def test_skipped_bad_files_are_not_decoded_again_and_valid_ones_load(
    tmp_path, monkeypatch
):
    from matl_keras_plugins.datasets.image_folder import ImageFolder

    from matl_keras.data import pipeline

    _awkward_folder(tmp_path)
    dataset = ImageFolder(str(tmp_path), positive_class="b")
    bad = decode.check_splits(dataset, ["train", "val"], "skip", "x")
    assert sum(len(b) for b in bad.values()) == len(BROKEN)

    def not_again(*args, **kwargs):
        raise AssertionError("checked twice")

    monkeypatch.setattr(decode, "check_image_file", not_again)
    split = pipeline.build_split(
        dataset,
        "train",
        image_size=16,
        batch_size=4,
        training=False,
        on_bad_image="skip",
    )
    assert split.num_examples == 5 and split.skipped == 5
    images = np.concatenate([x.numpy() for x, _ in split.data])
    assert images.shape == (5, 16, 16, 3) and np.isfinite(images).all()


@pytest.mark.parametrize("name", ["scan.tif", "gray16.tiff", "scan.webp"])
def test_tiff_and_webp_decode_like_pillow_in_the_pipeline(tmp_path, name):
    data = VALID[name]()
    out = _decode_both_ways_file(data)
    with Image.open(io.BytesIO(data)) as image:
        if image.mode.startswith("I;16"):
            expected = np.asarray(image).astype(np.float32)[..., None] / 65535
            expected = np.repeat(expected, 3, -1)
        else:
            expected = np.asarray(image.convert("RGB"), np.float32) / 255
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert decode.check_image_file(_write(tmp_path / name, data)) is None


def _decode_both_ways_file(data):
    eager = decode.decode_file_image(tf.constant(data)).numpy()
    graph = next(
        iter(tf.data.Dataset.from_tensors(data).map(decode.decode_file_image))
    ).numpy()
    np.testing.assert_array_equal(eager, graph)
    return eager


def test_png_and_jpeg_decode_as_before_through_the_file_path():
    for data in (_pil_bytes(RGB, "PNG"), _pil_bytes(RGB, "JPEG")):
        np.testing.assert_array_equal(
            _decode_both_ways_file(data), _decode_both_ways(data)
        )


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path, monkeypatch):
    path = _write(tmp_path / "bomb.png", _png_claiming(60000, 60000))
    small = _write(tmp_path / "big.png", _png_claiming(12000, 10000))

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded")

    monkeypatch.setattr(decode, "decode_image", no_decoding)
    monkeypatch.setattr(decode, "pillow_array", no_decoding)
    assert "3600000000 pixels" in decode.check_image_file(path)
    assert "12000x10000" in decode.check_image_file(small)
    # The limit is configurable: a lower one refuses a normal scan.
    scan = _write(tmp_path / "scan.png", _pil_bytes(RGB, "PNG"))
    assert "30x20 = 600 pixels, more than the limit of 500" in (
        decode.check_image_file(scan, 500)
    )
