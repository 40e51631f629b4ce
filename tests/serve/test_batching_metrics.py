"""Batching forms batches, metrics reach Ray's exporter, and the model follows its alias."""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

pytestmark = pytest.mark.ray

TIMEOUT = 60


def _enhance(url: str, data: bytes) -> requests.Response:
    return requests.post(f"{url}/v1/enhance", data=data, timeout=TIMEOUT)


def _metrics_port() -> int:
    import ray

    # Not fixed by the session's ray.init: read it from this driver's node.
    node = ray._private.worker.global_worker.node
    assert node is not None, "ray is not initialised"
    return int(node.metrics_export_port)


def _scrape_until(pattern: str, timeout_s: float = 45.0) -> str:
    """Poll Ray's metrics endpoint until ``pattern`` appears (export lags a few seconds)."""
    url = f"http://127.0.0.1:{_metrics_port()}/metrics"
    deadline = time.monotonic() + timeout_s
    text = ""
    while time.monotonic() < deadline:
        try:
            text = requests.get(url, timeout=10).text
        except requests.RequestException:
            text = ""
        if re.search(pattern, text, re.MULTILINE):
            return text
        time.sleep(1.0)
    found = sorted({m for m in re.findall(r"^(ray_deepfix_\w+)", text, re.MULTILINE)})
    raise AssertionError(f"{pattern!r} not exported within {timeout_s} s; deepfix series: {found}")


def test_concurrent_requests_are_merged_into_batches(served, image_bytes) -> None:
    image = image_bytes(256, 256, ".jpg")
    with ThreadPoolExecutor(8) as pool:
        for _ in range(3):  # a few rounds, so one unlucky scheduling cannot fail the test
            responses = list(pool.map(lambda _: _enhance(served.url, image), range(8)))
            assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    sizes = requests.get(f"{served.url}/v1/models", timeout=TIMEOUT).json()["batching"][
        "recent_batch_sizes"
    ]
    assert max(sizes) > 1, sizes


def test_custom_metrics_are_exported_next_to_serve_ones(served, image_bytes, face_jpeg) -> None:
    assert _enhance(served.url, image_bytes(64, 64)).status_code == 200
    assert requests.post(f"{served.url}/v1/detect", data=face_jpeg, timeout=TIMEOUT).ok
    text = _scrape_until(
        r'^ray_deepfix_requests_total\{(?=[^}]*endpoint="/v1/enhance")(?=[^}]*status="200")'
    )
    for series in (
        "ray_deepfix_request_latency_ms_bucket",
        "ray_deepfix_input_bytes_bucket",
        "ray_deepfix_batch_size_bucket",
        "ray_deepfix_faces_per_image_bucket",
        "ray_deepfix_model_info",
    ):
        if series not in text:
            text = _scrape_until(re.escape(series))
    assert re.search(r'^ray_deepfix_model_info\{[^}]*model="serve-test"', text, re.MULTILINE)
    assert "ray_serve_" in text  # Serve's built-in series on the same port


def test_alias_move_is_followed_while_requests_keep_succeeding(served, image_bytes) -> None:
    """Moves ``production`` to v2 (the app keeps serving v2 afterwards)."""
    image = image_bytes(64, 64)
    statuses: list[int] = []
    versions: list[int] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            r = _enhance(served.url, image)
            statuses.append(r.status_code)
            if r.status_code == 200:
                versions.append(int(r.headers["x-model-version"]))

    workers = [threading.Thread(target=load) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        time.sleep(1.0)
        served.models.promote(served.model, 2, "production")
        deadline = time.monotonic() + 30.0
        version = None
        while time.monotonic() < deadline:
            version = requests.get(f"{served.url}/v1/models", timeout=TIMEOUT).json()["version"]
            if version == 2:
                break
            time.sleep(0.25)
        assert version == 2, "the replica did not load v2 within 30 s"
        time.sleep(1.0)  # some requests on the new version too
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=TIMEOUT)
    assert statuses and all(s == 200 for s in statuses), sorted(set(statuses))
    assert 1 in versions and 2 in versions
    # A second after the swap, every request runs on the new version.
    assert versions[-4:] == [2, 2, 2, 2], versions[-12:]
