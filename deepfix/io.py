"""Image bytes in and out: sniff, size-check, decode to RGB uint8, encode.

Untrusted bytes are refused *before* a full decode: the format is sniffed from magic bytes, the
byte count is checked, and the width and height are read from the header so that a
decompression bomb (a few KiB of PNG declaring 50000 x 50000 pixels) is refused without
allocating its pixels. Header layouts follow the format specifications:

- PNG: W3C PNG Specification (Third Edition), section 11.2.2 (IHDR).
- JPEG: ITU-T T.81 (JFIF), Annex B (marker segments; SOFn carries height then width).
- BMP: Microsoft BITMAPFILEHEADER / BITMAPINFOHEADER / BITMAPCOREHEADER.
- TIFF: TIFF 6.0 section 2 (IFD entries, tags 256 ImageWidth and 257 ImageLength) and the
  BigTIFF extension (version 43, 8-byte offsets).
- WebP: RFC 9649 (RIFF container; the VP8, VP8L and VP8X chunk headers).

Decoding is OpenCV's ``imdecode`` with ``IMREAD_COLOR_RGB``: grayscale becomes RGB, alpha is
discarded (not composited), 16-bit samples are scaled to 8 bits and the EXIF orientation is
applied, so every decoded image is an upright ``H x W x 3`` ``uint8`` array.
"""

from __future__ import annotations

import logging
import struct
from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from deepfix.errors import CorruptImage, ImageTooLarge, UnsupportedImage

__all__ = [
    "FORMATS",
    "IMAGE_EXTENSIONS",
    "DecodeLimits",
    "ImageInfo",
    "decode",
    "encode",
    "extensions_for",
    "image_format",
    "probe",
]

logger = logging.getLogger(__name__)

FORMATS = ("jpeg", "png", "bmp", "tiff", "webp")

# image_type names of the dataset spec -> file extensions (lower case, with the dot).
IMAGE_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "jpg": (".jpg", ".jpeg"),
    "png": (".png",),
    "bmp": (".bmp",),
    "tiff": (".tif", ".tiff"),
    "webp": (".webp",),
}

_TYPE_TO_FORMAT = {"jpg": "jpeg", "png": "png", "bmp": "bmp", "tiff": "tiff", "webp": "webp"}

EncodeFormat = Literal["png", "jpeg", "jpg", "webp"]


def extensions_for(image_type: str) -> tuple[str, ...]:
    """File extensions that an ``image_type`` of the spec selects; ``"any"`` selects all.

    Raises:
        ValueError: for a name outside ``any, jpg, png, bmp, tiff, webp``.
    """
    if image_type == "any":
        return tuple(ext for exts in IMAGE_EXTENSIONS.values() for ext in exts)
    if image_type not in IMAGE_EXTENSIONS:
        known = ", ".join(["any", *IMAGE_EXTENSIONS])
        raise ValueError(f"unknown image_type {image_type!r}; known: {known}")
    return IMAGE_EXTENSIONS[image_type]


class DecodeLimits(BaseModel):
    """What ``decode`` accepts. The web service and the batch job may pass different caps."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_pixels: int = Field(40_000_000, ge=1, description="width x height cap (40 MP)")
    max_bytes: int = Field(50 * 1024 * 1024, ge=1, description="encoded size cap (50 MiB)")
    formats: tuple[str, ...] = Field(FORMATS, description="allowed sniffed formats")

    def for_image_type(self, image_type: str) -> DecodeLimits:
        """These caps, accepting only the format that an ``image_type`` of the spec names."""
        extensions_for(image_type)  # validates the name
        formats = FORMATS if image_type == "any" else (_TYPE_TO_FORMAT[image_type],)
        return self.model_copy(update={"formats": formats})


class ImageInfo(BaseModel):
    """Format and size read from the header alone."""

    model_config = ConfigDict(frozen=True)

    format: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def image_format(data: bytes) -> str | None:
    """The format named by the leading magic bytes: one of ``FORMATS``, or None."""
    head = bytes(data[:18])
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    # "BM" alone is weak evidence (plain text can start with it); require a known DIB size.
    if head.startswith(b"BM") and struct.unpack("<I", head[14:18].ljust(4))[0] in _BMP_DIB_SIZES:
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


def probe(data: bytes, *, limits: DecodeLimits | None = None) -> ImageInfo:
    """Sniff the format and read width and height from the header, without decoding pixels.

    Raises:
        ImageTooLarge: over ``limits.max_bytes`` (checked first) or ``limits.max_pixels``.
        UnsupportedImage: not one of ``limits.formats`` (or not an image at all).
        CorruptImage: empty, or the header is truncated or inconsistent.
    """
    limits = limits or DecodeLimits()
    if len(data) == 0:
        raise CorruptImage("empty file (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ImageTooLarge(f"{len(data)} bytes is over the cap of {limits.max_bytes} bytes")
    fmt = image_format(data)
    if fmt is None:
        raise UnsupportedImage(
            f"not a recognised image (allowed: {', '.join(limits.formats)}); "
            f"starts with {bytes(data[:8])!r}"
        )
    if fmt not in limits.formats:
        raise UnsupportedImage(f"format {fmt} is not allowed here ({', '.join(limits.formats)})")
    try:
        width, height = _HEADER_READERS[fmt](memoryview(data))
    except (struct.error, IndexError, ValueError) as exc:
        raise CorruptImage(f"{fmt} header is truncated or malformed: {exc}") from exc
    if width <= 0 or height <= 0:
        raise CorruptImage(f"{fmt} header declares an empty image ({width}x{height})")
    if width * height > limits.max_pixels:
        raise ImageTooLarge(
            f"{fmt} declares {width}x{height} = {width * height} pixels, "
            f"over the cap of {limits.max_pixels}"
        )
    return ImageInfo(format=fmt, width=width, height=height)


def decode(data: bytes, *, limits: DecodeLimits | None = None) -> np.ndarray:
    """Decode image bytes to an upright RGB ``uint8`` array of shape ``H x W x 3``.

    The header is checked with ``probe`` first, so oversized or foreign input never reaches
    the decoder.

    Raises:
        ImageTooLarge, UnsupportedImage, CorruptImage: see ``probe``; CorruptImage also when
            the pixel data does not decode (truncated or damaged).
    """
    info = probe(data, limits=limits)
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        image = cv2.imdecode(buf, cv2.IMREAD_COLOR_RGB)
    except cv2.error as exc:
        raise CorruptImage(f"{info.format} does not decode: {exc}") from exc
    if image is None:
        raise CorruptImage(f"{info.format} does not decode (truncated or damaged data)")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        # IMREAD_COLOR_RGB promises 8-bit RGB; anything else is a codec surprise, not an image.
        raise CorruptImage(f"{info.format} decoded to {image.dtype} {image.shape}, not RGB uint8")
    return image


def encode(
    image: np.ndarray,
    fmt: EncodeFormat = "png",
    *,
    quality: int | None = None,
    png_compression: int = 1,
) -> bytes:
    """Encode an RGB (or grayscale) ``uint8`` array to PNG, JPEG or WebP bytes.

    Args:
        image: ``H x W x 3`` RGB or ``H x W`` grayscale, ``uint8``.
        fmt: ``png``, ``jpeg`` (``jpg``) or ``webp``.
        quality: JPEG/WebP quality 1..100 (defaults 95 and 90); ignored for PNG.
        png_compression: zlib level 0..9. The default 1 is much cheaper than OpenCV's 3 for a
            few percent more bytes, which is the right trade for intermediate datasets.

    Raises:
        ValueError: wrong dtype or shape, unknown format, or a parameter out of range.
    """
    if image.dtype != np.uint8:
        raise ValueError(f"encode needs uint8, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 3:
        pixels = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    elif image.ndim == 2:
        pixels = image
    else:
        raise ValueError(f"encode needs H x W x 3 RGB or H x W gray, got shape {image.shape}")
    if fmt == "png":
        if not 0 <= png_compression <= 9:
            raise ValueError(f"png_compression must be 0..9, got {png_compression}")
        ext, params = ".png", [cv2.IMWRITE_PNG_COMPRESSION, png_compression]
    elif fmt in ("jpeg", "jpg"):
        ext, params = ".jpg", [cv2.IMWRITE_JPEG_QUALITY, _quality(quality, 95)]
    elif fmt == "webp":
        ext, params = ".webp", [cv2.IMWRITE_WEBP_QUALITY, _quality(quality, 90)]
    else:
        raise ValueError(f"unknown encode format {fmt!r}; known: png, jpeg, webp")
    ok, out = cv2.imencode(ext, pixels, params)
    if not ok:  # pragma: no cover - OpenCV only fails here on an impossible image
        raise ValueError(f"OpenCV could not encode a {image.shape} image as {fmt}")
    return bytes(out.tobytes())


def _quality(quality: int | None, default: int) -> int:
    q = default if quality is None else quality
    if not 1 <= q <= 100:
        raise ValueError(f"quality must be 1..100, got {q}")
    return q


# ---- header readers: (width, height) from the first bytes, raising struct.error/ValueError ----


def _png_size(b: memoryview) -> tuple[int, int]:
    # Signature (8) + chunk length (4) + b"IHDR" (4) + width (4) + height (4), big-endian.
    if bytes(b[12:16]) != b"IHDR":
        raise ValueError("first chunk is not IHDR")
    width, height = struct.unpack(">II", b[16:24])
    return int(width), int(height)


# SOF markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but do not.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(b: memoryview) -> tuple[int, int]:
    pos, n = 2, len(b)
    while pos < n:
        if b[pos] != 0xFF:
            raise ValueError(f"expected a marker at byte {pos}")
        while pos < n and b[pos] == 0xFF:  # fill bytes may pad before a marker
            pos += 1
        if pos >= n:
            break
        marker = b[pos]
        pos += 1
        if marker == 0xD9 or marker == 0xDA:  # EOI, or SOS before any frame header
            raise ValueError("no frame header (SOF) before the scan data")
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # standalone markers, no length
            continue
        (length,) = struct.unpack(">H", b[pos : pos + 2])
        if length < 2:
            raise ValueError(f"segment length {length} at byte {pos}")
        if marker in _JPEG_SOF:
            # length (2), precision (1), height (2), width (2)
            height, width = struct.unpack(">HH", b[pos + 3 : pos + 7])
            return int(width), int(height)
        pos += length
    raise ValueError("ended before a frame header (SOF)")


_BMP_DIB_SIZES = (12, 40, 52, 56, 64, 108, 124)


def _bmp_size(b: memoryview) -> tuple[int, int]:
    (dib_size,) = struct.unpack("<I", b[14:18])
    if dib_size == 12:  # BITMAPCOREHEADER (OS/2): unsigned 16-bit sizes
        width, height = struct.unpack("<HH", b[18:22])
    elif dib_size >= 40:
        width, height = struct.unpack("<ii", b[18:26])
    else:
        raise ValueError(f"unknown DIB header size {dib_size}")
    return int(width), abs(int(height))  # negative height = top-down rows


def _tiff_size(b: memoryview) -> tuple[int, int]:
    endian = "<" if bytes(b[:2]) == b"II" else ">"
    (version,) = struct.unpack(endian + "H", b[2:4])
    big = version == 43
    if big:
        (ifd,) = struct.unpack(endian + "Q", b[8:16])
        (count,) = struct.unpack(endian + "Q", b[ifd : ifd + 8])
        start, entry_size, value_at = ifd + 8, 20, 12
    else:
        (ifd,) = struct.unpack(endian + "I", b[4:8])
        (count,) = struct.unpack(endian + "H", b[ifd : ifd + 2])
        start, entry_size, value_at = ifd + 2, 12, 8
    if count > 4096:
        raise ValueError(f"first IFD claims {count} entries")
    sizes: dict[int, int] = {}
    for i in range(count):
        at = start + i * entry_size
        tag, typ = struct.unpack(endian + "HH", b[at : at + 4])
        if tag not in (256, 257):
            continue
        value = b[at + value_at : at + value_at + 8]
        if typ == 3:  # SHORT
            sizes[tag] = struct.unpack(endian + "H", value[:2])[0]
        elif typ == 4:  # LONG
            sizes[tag] = struct.unpack(endian + "I", value[:4])[0]
        elif typ == 16 and big:  # LONG8
            sizes[tag] = struct.unpack(endian + "Q", value[:8])[0]
        else:
            raise ValueError(f"tag {tag} has field type {typ}")
    if 256 not in sizes or 257 not in sizes:
        raise ValueError("first IFD has no ImageWidth/ImageLength")
    return int(sizes[256]), int(sizes[257])


def _webp_size(b: memoryview) -> tuple[int, int]:
    chunk = bytes(b[12:16])
    data = 20  # RIFF header (12) + chunk fourcc (4) + chunk size (4)
    if chunk == b"VP8 ":
        # 3-byte frame tag, then the start code 9d 01 2a, then 14-bit width and height.
        if bytes(b[data + 3 : data + 6]) != b"\x9d\x01\x2a":
            raise ValueError("VP8 start code missing")
        width, height = struct.unpack("<HH", b[data + 6 : data + 10])
        return int(width) & 0x3FFF, int(height) & 0x3FFF
    if chunk == b"VP8L":
        if b[data] != 0x2F:
            raise ValueError("VP8L signature missing")
        (bits,) = struct.unpack("<I", b[data + 1 : data + 5])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        # flags (1) + reserved (3), then 24-bit canvas width - 1 and height - 1.
        w = b[data + 4] | b[data + 5] << 8 | b[data + 6] << 16
        h = b[data + 7] | b[data + 8] << 8 | b[data + 9] << 16
        return w + 1, h + 1
    raise ValueError(f"unknown first WebP chunk {chunk!r}")


_HEADER_READERS = {
    "png": _png_size,
    "jpeg": _jpeg_size,
    "bmp": _bmp_size,
    "tiff": _tiff_size,
    "webp": _webp_size,
}
