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
    assert np.abs(out * 255 - reference).mean() < 2  # JPEG decoders differ a bit


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
    good = [_write(tmp_path / f"ok{i}.png", _pil_bytes(RGB, "PNG")) for i in range(3)]
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
