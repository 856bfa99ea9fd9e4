"""Photo decoding: every ordinary photo becomes upright RGB, every hostile file a reason (never a traceback)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image, ImageFile

from portrait_core.errors import InputImageError, UnusablePhotoError
from portrait_core.prepare.photos import (
    PhotoLimits,
    composite_on_white,
    decode_photo,
    list_photo_files,
    load_photo,
    wide_gray_to_uint8,
)

SHARED_FACES = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "faces"


def _encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _gradient(width=400, height=300) -> np.ndarray:
    x = np.linspace(0, 255, width, dtype=np.float64)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.float64)[:, None].repeat(width, 1)
    return np.stack([x, y, 255 - x], axis=2).astype(np.uint8)


def _reason(data: bytes, name="photo.jpg", limits=None) -> str:
    with pytest.raises(UnusablePhotoError) as raised:
        decode_photo(data, name, limits)
    assert isinstance(raised.value, InputImageError) and raised.value.file == name
    return raised.value.reason


def test_exif_orientation_turns_the_photo_upright():
    pixels = np.zeros((300, 400, 3), np.uint8)
    pixels[:50, :, 0] = 255  # a red band along the top as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display needs a 90° clockwise turn
    photo = decode_photo(_encode(Image.fromarray(pixels), "JPEG", exif=exif.tobytes(), quality=95), "rotated.jpg")
    assert (photo.width, photo.height) == (300, 400)
    assert photo.pixels[200, -10, 0] > 200 and photo.pixels[200, 10, 0] < 60  # the band is now on the right


def test_transparency_becomes_white():
    rgba = np.zeros((300, 300, 4), np.uint8)
    rgba[:, :150] = (10, 20, 30, 255)  # opaque left half, fully transparent right half
    photo = decode_photo(_encode(Image.fromarray(rgba, "RGBA"), "PNG"), "cutout.png")
    assert tuple(photo.pixels[150, 10]) == (10, 20, 30) and tuple(photo.pixels[150, 290]) == (255, 255, 255)
    gray_alpha = Image.fromarray(rgba[:, :, [0, 3]], "LA")
    assert tuple(decode_photo(_encode(gray_alpha, "PNG"), "la.png").pixels[150, 290]) == (255, 255, 255)


def test_palette_with_a_transparent_colour_becomes_white():
    image = Image.new("P", (300, 300), 1)
    image.putpalette([0, 0, 0, 200, 50, 50] + [0] * 762)
    image.paste(0, (0, 0, 100, 300))
    photo = decode_photo(_encode(image, "PNG", transparency=0), "palette.png")
    assert tuple(photo.pixels[10, 10]) == (255, 255, 255) and tuple(photo.pixels[10, 200]) == (200, 50, 50)


def test_sixteen_bit_grayscale_uses_the_full_range(tmp_path):
    values = np.linspace(0, 65535, 300 * 300).reshape(300, 300).astype(np.uint16)
    path = tmp_path / "deep.png"
    assert __import__("cv2").imwrite(str(path), values)
    photo = load_photo(path)
    assert photo.pixels[0, 0, 0] == 0 and photo.pixels[-1, -1, 0] == 255
    assert abs(int(photo.pixels[150, 150, 0]) - 128) <= 2
    assert np.array_equal(photo.pixels[:, :, 0], photo.pixels[:, :, 2])


def test_sixteen_bit_colour_keeps_its_colours(tmp_path):
    rgb = _gradient().astype(np.uint16) * 257
    path = tmp_path / "deep-colour.png"
    assert __import__("cv2").imwrite(str(path), rgb[:, :, ::-1])  # OpenCV writes BGR
    np.testing.assert_allclose(load_photo(path).pixels, _gradient(), atol=1)


def test_cmyk_and_grayscale_become_rgb():
    cmyk = Image.new("CMYK", (300, 300), (0, 255, 255, 0))  # pure red ink-wise
    red = decode_photo(_encode(cmyk, "JPEG", quality=95), "print.jpg").pixels[150, 150]
    assert red[0] > 200 and red[1] < 60 and red[2] < 60
    gray = decode_photo(_encode(Image.new("L", (300, 300), 90), "JPEG"), "gray.jpg").pixels
    assert gray.shape == (300, 300, 3) and abs(int(gray[5, 5, 0]) - 90) <= 2
    bilevel = decode_photo(_encode(Image.new("1", (300, 300), 1), "PNG"), "bw.png").pixels
    assert tuple(bilevel[0, 0]) == (255, 255, 255)


def test_float_tiff_is_scaled():
    values = np.linspace(0.0, 1.0, 300 * 300, dtype=np.float32).reshape(300, 300)
    photo = decode_photo(_encode(Image.fromarray(values, "F"), "TIFF"), "scan.tif")
    assert photo.pixels[0, 0, 0] == 0 and photo.pixels[-1, -1, 0] == 255


def test_the_shared_rgba_photo_decodes_like_its_jpeg_twin():
    if not (SHARED_FACES / "32bit.png").is_file():
        pytest.skip(f"shared test photos not found at {SHARED_FACES.resolve()}")
    rgba = load_photo(SHARED_FACES / "32bit.png")
    jpeg = load_photo(SHARED_FACES / "obama2.jpg")
    assert rgba.pixels.shape == jpeg.pixels.shape and rgba.format == "PNG"
    assert np.abs(rgba.pixels.astype(int) - jpeg.pixels.astype(int)).mean() < 8


@pytest.mark.parametrize(("content", "expected"), [
    (b"just some notes, not a photo\n", "text"),
    (b"<!DOCTYPE html><html><body>photo</body></html>", "web page"),
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "PDF"),
    (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\0" * 64, "HEIC"),
    (b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2" + b"\0" * 64, "video"),
    (b"PK\x03\x04" + b"\0" * 100, "ZIP"),
    (b"", "empty"),
    (bytes(range(256)) * 8, "unknown or damaged"),
])
def test_files_that_are_not_pictures_say_what_they_are(content, expected):
    reason = _reason(content)
    assert reason.startswith("not a picture") and expected in reason


def test_a_truncated_jpeg_is_rejected():
    data = _encode(Image.fromarray(_gradient()), "JPEG", quality=95)
    assert "truncated" in _reason(data[: len(data) // 2])


def test_a_truncated_file_is_rejected_even_when_pillow_is_told_to_accept_them(monkeypatch):
    # Other WebUI extensions set this global; Pillow then fills the missing half with grey silently.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    jpeg = _encode(Image.fromarray(_gradient()), "JPEG", quality=95)
    assert "truncated" in _reason(jpeg[: len(jpeg) // 2])
    png = _encode(Image.fromarray(_gradient()), "PNG")
    assert "truncated" in _reason(png[: len(png) - 200], "cut.png")
    assert decode_photo(jpeg, "whole.jpg").width == 400  # a complete file is still fine


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [12_000, 100_000])
def test_a_decompression_bomb_is_refused_from_its_header(side):
    reason = _reason(_png_header_only(side, side), "bomb.png")
    assert reason.startswith("too large to open safely")


def test_limits_on_size_are_explained():
    small = _encode(Image.fromarray(_gradient(120, 90)), "PNG")
    assert _reason(small, "thumb.png") == "too small (120×90 px; need at least 256 px on the short side)"
    big = _encode(Image.fromarray(_gradient()), "PNG")
    assert _reason(big, "x.png", PhotoLimits(min_side=1000)).startswith("too small (400×300 px")
    assert "megapixels" in _reason(big, "x.png", PhotoLimits(max_pixels=1000))


def test_a_file_over_the_byte_limit_is_not_even_read(tmp_path):
    path = tmp_path / "huge.jpg"
    path.write_bytes(b"\0" * 5000)
    with pytest.raises(UnusablePhotoError, match="file too large"):
        load_photo(path, PhotoLimits(max_bytes=1000))


def test_a_missing_file_is_a_reason_too(tmp_path):
    with pytest.raises(UnusablePhotoError, match="cannot read the file"):
        load_photo(tmp_path / "gone.jpg")


def test_photo_files_are_listed_in_natural_order_without_hidden_or_system_files(tmp_path):
    for name in ("img10.jpg", "img2.jpg", "IMG1.png", ".hidden.jpg", "Thumbs.db", "desktop.ini", "notes.txt",
                 "obama.jpg", "obama2.jpg"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "subfolder").mkdir()
    names = [p.name for p in list_photo_files(tmp_path)]
    assert names == ["IMG1.png", "img2.jpg", "img10.jpg", "notes.txt", "obama.jpg", "obama2.jpg"]


@given(arrays(np.uint16, st.tuples(st.integers(1, 8), st.integers(1, 8))))
def test_sixteen_bit_scaling_stays_in_range_and_keeps_order(values):
    scaled = wide_gray_to_uint8(values, "I;16")
    assert scaled.dtype == np.uint8
    order = np.argsort(values.ravel(), kind="stable")
    assert np.all(np.diff(scaled.ravel()[order].astype(int)) >= 0)
    assert np.all(scaled[values == 65535] == 255) and np.all(scaled[values == 0] == 0)


@given(arrays(np.uint8, st.tuples(st.integers(1, 6), st.integers(1, 6), st.just(4))))
def test_compositing_on_white_keeps_opaque_pixels_and_whitens_clear_ones(rgba):
    rgb = composite_on_white(rgba)
    opaque, clear = rgba[:, :, 3] == 255, rgba[:, :, 3] == 0
    assert np.array_equal(rgb[opaque], rgba[:, :, :3][opaque])
    assert np.all(rgb[clear] == 255)
    assert np.all(rgb.astype(int) >= np.minimum(rgba[:, :, :3], 255).astype(int) - 1)  # white only adds light
