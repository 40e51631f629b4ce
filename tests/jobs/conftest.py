"""Fixtures for the job tests: a generated source folder of faces, faceless and bad files.

Everything is generated in the test run; the only bundled data is scikit-image's
``astronaut()`` (inside the wheel, no download), whose face OpenCV's Haar cascade finds.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from config_store import ConfigStore


@dataclass(frozen=True)
class FaceSource:
    """A generated source folder and the truth about it."""

    path: Path
    faces: dict[str, int] = field(default_factory=lambda: {"astronaut.jpg": 1, "two_faces.png": 2})
    faceless: tuple[str, ...] = ("gradient_a.png", "gradient_b.jpg", "gradient_c.bmp")
    bad: dict[str, str] = field(
        default_factory=lambda: {
            "truncated.jpg": "corrupt",
            "empty.png": "corrupt",
            "notes.jpg": "unsupported",
            "bomb.png": "too_large",
            # A link out of the folder: rejected by the listing, never read.
            "escape.jpg": "symlink_outside_root",
        }
    )


def _write(path: Path, image: np.ndarray) -> None:
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def _png_bomb() -> bytes:
    """A tiny PNG whose IHDR declares 50000 x 50000 RGB pixels."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (1 + 3 * 50_000))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture(scope="session")
def face_source(tmp_path_factory: pytest.TempPathFactory) -> FaceSource:
    """A folder with 2 face images (1 and 2 faces), 3 faceless images and 5 bad files."""
    skdata = pytest.importorskip("skimage.data")
    root = tmp_path_factory.mktemp("prepare-source")
    astronaut = np.ascontiguousarray(skdata.astronaut())
    # Half size keeps Haar fast; the face (~46 px) stays well above min_size.
    small = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)
    _write(root / "astronaut.jpg", small)
    face = astronaut[0:300, 100:350]
    _write(root / "two_faces.png", np.concatenate([face, face], axis=1))
    yy, xx = np.mgrid[0:96, 0:128]
    truth = FaceSource(root)
    for i, name in enumerate(truth.faceless):
        ramp = ((xx * (i + 1) + yy) % 256).astype(np.uint8)
        _write(root / name, np.stack([ramp, ramp[:, ::-1], np.full_like(ramp, 80 * i)], -1))
    ok, jpeg = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 256, (64, 64, 3)))
    assert ok
    (root / "truncated.jpg").write_bytes(jpeg.tobytes()[: len(jpeg) * 3 // 4])
    (root / "empty.png").write_bytes(b"")
    (root / "notes.jpg").write_text("these are not the pixels you are looking for\n")
    (root / "bomb.png").write_bytes(_png_bomb())
    outside = tmp_path_factory.mktemp("prepare-outside") / "secret.jpg"
    outside.write_bytes(jpeg.tobytes())
    os.symlink(outside, root / "escape.jpg")
    return truth


@pytest.fixture(scope="session")
def make_spec(store: ConfigStore) -> Callable[..., dict[str, Any]]:
    """``make_spec(name, source, **fields)``: put a dataset spec in etcd; the stored value."""

    def make(name: str, source: Path, **fields: Any) -> dict[str, Any]:
        value = {"name": name, "source": str(source), "height": 64, "width": 64, **fields}
        return store.put("datasets", name, value).value

    return make
