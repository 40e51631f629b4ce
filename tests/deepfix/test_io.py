from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from deepfix import io
from deepfix.errors import CorruptImage, ImageError, ImageTooLarge, UnsupportedImage
from deepfix.io import DecodeLimits, decode, encode, extensions_for, image_format, probe

EXT_FORMAT = {".png": "png", ".jpg": "jpeg", ".bmp": "bmp", ".tiff": "tiff", ".webp": "webp"}


@pytest.mark.parametrize("ext", list(EXT_FORMAT))
def test_probe_reads_format_and_size_from_the_header(
    ext: str, encoded: Callable[..., bytes]
) -> None:
    info = probe(encoded(ext, h=23, w=37))
    assert (info.format, info.width, info.height) == (EXT_FORMAT[ext], 37, 23)


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tiff"])
def test_lossless_formats_decode_to_the_same_rgb_pixels(
    ext: str, rgb: Callable[..., np.ndarray]
) -> None:
    image = rgb(19, 31)
    ok, buf = cv2.imencode(ext, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert ok
    np.testing.assert_array_equal(decode(buf.tobytes()), image)


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_lossy_encode_decode_round_trip_stays_close(fmt: str) -> None:
    # A smooth image, so that lossy codecs have little to lose.
    yy, xx = np.mgrid[0:64, 0:80]
    image = np.stack([yy * 3, xx * 3, (yy + xx) * 2], axis=-1).astype(np.uint8)
    out = decode(encode(image, fmt, quality=95))  # type: ignore[arg-type]
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - image).mean() < 3


def test_grayscale_input_becomes_rgb() -> None:
    gray = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    out = decode(encode(gray, "png"))
    assert out.shape == (12, 10, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)


def test_rgba_input_becomes_rgb_dropping_alpha(rgb: Callable[..., np.ndarray]) -> None:
    image = rgb(8, 9)
    bgra = np.dstack([cv2.cvtColor(image, cv2.COLOR_RGB2BGR), np.full((8, 9), 7, np.uint8)])
    out = decode(cv2.imencode(".png", bgra)[1].tobytes())
    np.testing.assert_array_equal(out, image)


def test_sixteen_bit_input_becomes_uint8() -> None:
    deep = np.full((5, 6, 3), 65535, np.uint16)
    out = decode(cv2.imencode(".png", deep)[1].tobytes())
    assert out.dtype == np.uint8 and (out == 255).all()


def test_decompression_bomb_is_refused_before_decoding(
    png_bomb: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    def must_not_decode(*args: object) -> None:
        raise AssertionError("imdecode was called on a bomb")

    monkeypatch.setattr(io.cv2, "imdecode", must_not_decode)
    assert len(png_bomb) < 1000
    with pytest.raises(ImageTooLarge, match="50000x50000") as err:
        decode(png_bomb)
    assert err.value.reason == "too_large"


def test_pixel_cap_is_configurable(encoded: Callable[..., bytes]) -> None:
    data = encoded(".png", h=20, w=20)
    assert decode(data, limits=DecodeLimits(max_pixels=400)).shape == (20, 20, 3)
    with pytest.raises(ImageTooLarge, match="over the cap of 399"):
        decode(data, limits=DecodeLimits(max_pixels=399))


def test_byte_cap_is_checked_first(encoded: Callable[..., bytes]) -> None:
    data = encoded(".png")
    with pytest.raises(ImageTooLarge, match="bytes"):
        probe(data, limits=DecodeLimits(max_bytes=len(data) - 1))


def test_default_caps_are_40_megapixels_and_50_mib() -> None:
    limits = DecodeLimits()
    assert (limits.max_pixels, limits.max_bytes) == (40_000_000, 50 * 1024 * 1024)


def test_truncated_jpeg_is_corrupt(encoded: Callable[..., bytes]) -> None:
    data = encoded(".jpg", h=64, w=64)
    with pytest.raises(CorruptImage) as err:
        decode(data[: len(data) * 3 // 4])
    assert err.value.reason == "corrupt"


def test_jpeg_cut_inside_its_header_is_corrupt(encoded: Callable[..., bytes]) -> None:
    with pytest.raises(CorruptImage, match="header"):
        decode(encoded(".jpg")[:40])


def test_zero_byte_file_is_corrupt() -> None:
    with pytest.raises(CorruptImage, match="empty"):
        decode(b"")


def test_text_file_named_jpg_is_unsupported(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    path.write_text("BMW is a car, not a bitmap\n")
    with pytest.raises(UnsupportedImage) as err:
        decode(path.read_bytes())
    assert err.value.reason == "unsupported"


def test_png_signature_with_garbage_is_corrupt() -> None:
    with pytest.raises(CorruptImage):
        decode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)


def test_damaged_png_body_is_corrupt(encoded: Callable[..., bytes]) -> None:
    data = encoded(".png", h=32, w=32)
    with pytest.raises(CorruptImage, match="does not decode"):
        decode(data[:60] + b"\xff" * (len(data) - 60))


def test_all_image_errors_share_the_image_error_base() -> None:
    assert all(issubclass(e, ImageError) for e in (CorruptImage, UnsupportedImage, ImageTooLarge))


def test_allowed_formats_can_be_narrowed(encoded: Callable[..., bytes]) -> None:
    only_png = DecodeLimits().for_image_type("png")
    assert only_png.formats == ("png",)
    decode(encoded(".png"), limits=only_png)
    with pytest.raises(UnsupportedImage, match="jpeg is not allowed"):
        decode(encoded(".jpg"), limits=only_png)


def test_image_format_sniffs_magic_bytes(encoded: Callable[..., bytes]) -> None:
    for ext, fmt in EXT_FORMAT.items():
        assert image_format(encoded(ext)) == fmt
    assert image_format(b"GIF89a....") is None
    assert image_format(b"BM but only text follows here") is None
    assert image_format(b"") is None


def test_top_down_bmp_reports_a_positive_height(encoded: Callable[..., bytes]) -> None:
    data = bytearray(encoded(".bmp", h=10, w=7))
    data[22:26] = struct.pack("<i", -10)  # a negative height marks top-down row order
    assert (probe(bytes(data)).width, probe(bytes(data)).height) == (7, 10)


def test_png_encode_defaults_to_cheap_compression_level_1(rgb: Callable[..., np.ndarray]) -> None:
    image = np.repeat(rgb(16, 16), 4, axis=0)  # compressible
    assert encode(image) == encode(image, "png", png_compression=1)
    small, fast = encode(image, png_compression=9), encode(image, png_compression=1)
    assert len(small) <= len(fast)
    np.testing.assert_array_equal(decode(small), decode(fast))


def test_jpeg_quality_trades_size(rgb: Callable[..., np.ndarray]) -> None:
    image = rgb(64, 64)
    assert len(encode(image, "jpeg", quality=20)) < len(encode(image, "jpeg", quality=95))
    assert image_format(encode(image, "jpg")) == "jpeg"
    assert image_format(encode(image, "webp")) == "webp"


@pytest.mark.parametrize(
    ("image", "kwargs"),
    [
        (np.zeros((4, 4, 3), np.float32), {}),
        (np.zeros((4, 4, 4), np.uint8), {}),
        (np.zeros((4, 4, 3), np.uint8), {"fmt": "gif"}),
        (np.zeros((4, 4, 3), np.uint8), {"fmt": "jpeg", "quality": 0}),
        (np.zeros((4, 4, 3), np.uint8), {"png_compression": 10}),
    ],
)
def test_encode_rejects_bad_input(image: np.ndarray, kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        encode(image, **kwargs)  # type: ignore[arg-type]


def test_extensions_for_image_types() -> None:
    assert extensions_for("jpg") == (".jpg", ".jpeg")
    assert extensions_for("tiff") == (".tif", ".tiff")
    assert set(extensions_for("any")) >= {".png", ".webp", ".bmp", ".jpeg", ".tif"}
    with pytest.raises(ValueError, match="known: any, jpg"):
        extensions_for("gif")
