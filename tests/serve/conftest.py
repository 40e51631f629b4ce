"""One real Serve application for the whole session, on the session's local Ray.

Two tiny random-weight model versions are registered in the model store (etcd + a temp
``DEEPFIX_HOME``); ``production`` points at v1 and the app follows ``serve-test@production``.
The app is deployed once: tests that change state (the alias move) say so and leave the app
serving.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import cv2
import numpy as np
import pytest
import requests

from config_store import ConfigStore
from config_store.server import free_port
from deepfix.model_store import ModelStore
from deepfix.models import ArchitectureConfig, build_model

MODEL = "serve-test"
DATASET = "serve-test-blur"
UPLOAD_CAP = 256 * 1024
PIXEL_CAP = 1_000_000
BATCH_WAIT_S = 0.1
APP_NAME = "deepfix-test"


@dataclass(frozen=True)
class ServedApp:
    url: str
    models: ModelStore
    model: str
    dataset: str
    upload_cap: int
    pixel_cap: int


def _register_versions(models: ModelStore) -> None:
    arch = ArchitectureConfig(name="unet_plain", kwargs={"base_channels": 4, "depth": 1})
    for seed in (1, 2):
        import torch

        torch.manual_seed(seed)
        models.register(
            MODEL,
            build_model(arch),
            arch,
            metrics={"val_psnr": 20.0 + seed},
            training={"note": "random weights for the serve tests"},
        )
    models.promote(MODEL, 1, "production")


def _wait_ready(url: str, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            r = requests.get(f"{url}/readyz", timeout=5)
            if r.status_code == 200:
                return
            last = r.text
        except requests.RequestException as exc:
            last = repr(exc)
        time.sleep(0.5)
    raise TimeoutError(f"the app at {url} was not ready in {timeout_s} s: {last}")


@pytest.fixture(scope="session")
def served(ray_session: None, store: ConfigStore) -> Iterator[ServedApp]:
    """The deepfix app on a free loopback port, following ``serve-test@production``."""
    from ray import serve

    from serve.api import Limits
    from serve.app import AppArgs, Scaling, build_app
    from serve.enhancer import BatchConfig

    models = ModelStore(store)
    _register_versions(models)
    store.put(
        "datasets",
        DATASET,
        {
            "name": DATASET,
            "source": "/nonexistent/never-read",
            "seed": 7,
            "degradations": [{"type": "gaussian_blur", "p": 1.0, "sigma": [1.0, 2.0]}],
        },
    )
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = AppArgs(
        model=f"{MODEL}@production",
        limits=Limits(max_upload_bytes=UPLOAD_CAP, max_pixels=PIXEL_CAP),
        batching=BatchConfig(max_batch_size=8, batch_wait_timeout_s=BATCH_WAIT_S),
        model_poll_s=5.0,
        # One replica each, so that concurrent requests meet in one batch queue; small CPU
        # shares so the app fits the session's 2 CPUs next to other Ray work.
        enhancer=Scaling(
            min_replicas=1,
            max_replicas=1,
            max_ongoing_requests=32,
            max_queued_requests=64,
            num_cpus=0.5,
        ),
        ingress=Scaling(
            min_replicas=1,
            max_replicas=1,
            max_ongoing_requests=64,
            max_queued_requests=128,
            num_cpus=0.25,
        ),
    )
    serve.run(build_app(args), name=APP_NAME, route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    _wait_ready(url)
    yield ServedApp(
        url=url,
        models=models,
        model=MODEL,
        dataset=DATASET,
        upload_cap=UPLOAD_CAP,
        pixel_cap=PIXEL_CAP,
    )
    serve.shutdown()


@pytest.fixture(scope="session")
def image_bytes() -> Callable[..., bytes]:
    """``image_bytes(h, w, ext=".png", seed=0)``: a random RGB image, encoded."""

    def make(h: int = 64, w: int = 64, ext: str = ".png", seed: int = 0) -> bytes:
        rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
        ok, buf = cv2.imencode(ext, rgb)
        assert ok
        return bytes(buf.tobytes())

    return make


@pytest.fixture(scope="session")
def face_jpeg() -> bytes:
    """scikit-image's astronaut (one frontal face), as JPEG."""
    from skimage import data

    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    assert ok
    return bytes(buf.tobytes())
