"""Fixtures for the deepfix image tests: small synthetic images, hostile files, a local web server.

Everything is generated in the test run; the only bundled data used is scikit-image's
``astronaut()``, which ships inside the wheel (no pooch download).
"""

from __future__ import annotations

import functools
import http.server
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


@pytest.fixture
def rgb() -> Callable[..., np.ndarray]:
    """``rgb(h, w, seed=0)``: a random RGB uint8 image."""

    def make(h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
        return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)

    return make


@pytest.fixture
def encoded(rgb: Callable[..., np.ndarray]) -> Callable[..., bytes]:
    """``encoded(ext, h, w, seed=0)``: a random image encoded by OpenCV as ``.png``, ``.jpg``..."""

    def make(ext: str = ".png", h: int = 24, w: int = 32, seed: int = 0) -> bytes:
        ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb(h, w, seed), cv2.COLOR_RGB2BGR))
        assert ok
        return bytes(buf.tobytes())

    return make


@pytest.fixture
def png_bomb() -> bytes:
    """A ~100-byte PNG whose IHDR declares 50000 x 50000 RGB pixels (7.5 GB decoded)."""
    ihdr = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0)
    # A few rows of zeros; the rest is missing, which a decoder would discover far too late.
    idat = zlib.compress(b"\x00" * (1 + 3 * 50_000) * 2)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


@pytest.fixture
def astronaut() -> np.ndarray:
    skdata = pytest.importorskip("skimage.data")
    return np.ascontiguousarray(skdata.astronaut())


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass


@pytest.fixture
def serve() -> Iterator[Callable[..., str]]:
    """``serve(directory, handler=None)``: serve a folder on 127.0.0.1 (port 0); the base URL.

    ``handler`` may be a ``SimpleHTTPRequestHandler`` subclass for special routes.
    """
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(
        directory: Path, handler: type[http.server.SimpleHTTPRequestHandler] | None = None
    ) -> str:
        cls: type[http.server.SimpleHTTPRequestHandler] = handler or _QuietHandler
        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(cls, directory=str(directory))
        )
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
