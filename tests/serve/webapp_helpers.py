"""Shared helpers of the web page tests: a real uvicorn server and a local preview pipeline.

Loaded by path from ``test_web_api.py`` and ``test_web_browser.py`` (pytest auto-loads only
``conftest.py``, which belongs to the Serve tests). Nothing here runs at import.

``LocalPipeline`` stands in for the Serve ingress's ``ServePipeline`` (``serve/ingress.py``),
which replaces it in production: the same three async methods, built from the library
(``create_detector``, ``DegradationPipeline``, a tiny randomly initialised U-Net), run in
threads so the event loop stays free.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from config_store import ConfigStore
from deepfix.degradations import DegradationPipeline, sample_rng
from deepfix.faces import FaceBox, create_detector
from deepfix.spec import DegradationSpec, FaceDetectionSpec

logger = logging.getLogger(__name__)


class LocalPipeline:
    """``detect``/``degrade``/``enhance`` from the library, for tests (not the Serve object)."""

    def __init__(self) -> None:
        self._detector = create_detector(FaceDetectionSpec())
        self._model: Any = None
        self._lock = threading.Lock()
        self.calls: list[str] = []

    def _net(self) -> Any:
        with self._lock:
            if self._model is None:
                import torch

                from deepfix.models import build_model

                torch.manual_seed(0)
                self._model = build_model(
                    {"name": "unet_plain", "kwargs": {"base_channels": 4, "depth": 1}}
                ).eval()
            return self._model

    def _enhance(self, image: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
        y = self._net().enhance(x)[0].permute(1, 2, 0).numpy()
        return np.clip(np.rint(y * 255.0), 0, 255).astype(np.uint8)

    async def detect(self, image: np.ndarray) -> list[FaceBox]:
        self.calls.append("detect")
        return await asyncio.to_thread(self._detector.detect, image)

    async def degrade(
        self, image: np.ndarray, specs: list[DegradationSpec], seed: int
    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        self.calls.append("degrade")

        def run() -> tuple[np.ndarray, list[dict[str, Any]]]:
            out = DegradationPipeline.from_specs(specs)(image, sample_rng(seed, "preview"))
            return out.image, [dict(a) for a in out.applied]

        return await asyncio.to_thread(run)

    async def enhance(
        self, image: np.ndarray, faces_only: bool
    ) -> tuple[np.ndarray, dict[str, Any]]:
        self.calls.append("enhance")
        out = await asyncio.to_thread(self._enhance, image)
        return out, {"model": "unet_plain (random init, tests only)", "faces_only": faces_only}


def make_app(store: ConfigStore, pipeline: object | None) -> Any:
    """A plain FastAPI app with the web routers, as the Serve ingress mounts them."""
    from fastapi import FastAPI

    from serve.web import api_router, router

    app = FastAPI()
    app.include_router(api_router)
    app.include_router(router)
    app.state.config_store = store
    if pipeline is not None:
        app.state.pipeline = pipeline
    return app


@contextmanager
def running(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yield its base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def face_png() -> bytes:
    """scikit-image's astronaut (bundled in the wheel, one clear frontal face) as PNG."""
    from skimage import data

    from deepfix.io import encode

    return encode(np.ascontiguousarray(data.astronaut()), "png")
