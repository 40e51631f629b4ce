"""Every endpoint of the deployed app, and every error status, against a real Serve instance."""

from __future__ import annotations

import base64
import json
import socket
import struct
import zlib
from urllib.parse import urlparse

import cv2
import numpy as np
import pytest
import requests

from config_store.errors import NotFound, StoreUnavailable
from deepfix.errors import CorruptImage, ImageTooLarge, UnsupportedImage
from deepfix.model_store import ModelNotFound

pytestmark = pytest.mark.ray

TIMEOUT = 60


def _decode(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def _assert_error(r: requests.Response, status: int, error: str | None = None) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "detail"}, body
    if error is not None:
        assert body["error"] == error, body


def _raw_http(url: str, head: str, chunks: list[bytes], *, timeout: float = 30.0) -> bytes:
    """Send a request head and body chunks over a plain socket; return what comes back.

    ``requests`` would insist on sending the whole body before reading; a server that refuses
    early closes on it and the client sees a reset instead of the 413.
    """
    parsed = urlparse(url)
    with socket.create_connection((parsed.hostname, parsed.port), timeout=timeout) as sock:
        sock.sendall(head.encode("latin-1"))
        for chunk in chunks:
            try:
                sock.sendall(chunk)
            except OSError:  # the server answered and closed: read what it said
                break
        received = b""
        while True:  # the request said "Connection: close": read to the end
            try:
                part = sock.recv(65536)
            except ConnectionResetError:
                break
            if not part:
                break
            received += part
        return received


def _status_line(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


# -- docs, health ----------------------------------------------------------------------------


def test_openapi_documents_every_endpoint(served) -> None:
    spec = requests.get(f"{served.url}/openapi.json", timeout=TIMEOUT).json()
    for path in ("/v1/enhance", "/v1/detect", "/v1/degrade", "/v1/models", "/healthz", "/readyz"):
        assert path in spec["paths"], path
    body = spec["paths"]["/v1/enhance"]["post"]["requestBody"]["content"]
    assert {"application/octet-stream", "multipart/form-data"} <= set(body)
    assert requests.get(f"{served.url}/docs", timeout=TIMEOUT).status_code == 200


def test_healthz_answers_ok(served) -> None:
    r = requests.get(f"{served.url}/healthz", timeout=TIMEOUT)
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_readyz_names_the_loaded_model(served) -> None:
    r = requests.get(f"{served.url}/readyz", timeout=TIMEOUT)
    assert r.status_code == 200
    assert r.json()["model"].startswith(f"{served.model}:")


def test_models_reports_the_served_version_and_its_metrics(served) -> None:
    info = requests.get(f"{served.url}/v1/models", timeout=TIMEOUT).json()
    assert info["ref"] == f"{served.model}@production"
    assert info["loaded"] is True
    assert info["version"] in (1, 2)
    assert "val_psnr" in info["metrics"]
    assert info["batching"]["max_batch_size"] == 8


# -- enhance ---------------------------------------------------------------------------------


def test_enhance_raw_body_returns_png_with_model_headers(served, image_bytes) -> None:
    r = requests.post(f"{served.url}/v1/enhance", data=image_bytes(48, 80), timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert _decode(r.content).shape == (48, 80, 3)
    assert r.headers["x-model-name"] == served.model
    assert int(r.headers["x-model-version"]) in (1, 2)
    assert float(r.headers["x-inference-ms"]) > 0


def test_enhance_multipart_upload_with_jpeg_output(served, image_bytes) -> None:
    files = {"file": ("face.png", image_bytes(64, 64), "image/png")}
    r = requests.post(
        f"{served.url}/v1/enhance", params={"format": "jpeg"}, files=files, timeout=TIMEOUT
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/jpeg"
    assert _decode(r.content).shape == (64, 64, 3)


def test_enhance_webp_output(served, image_bytes) -> None:
    r = requests.post(
        f"{served.url}/v1/enhance",
        params={"format": "webp"},
        data=image_bytes(32, 32, ".jpg"),
        timeout=TIMEOUT,
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/webp"
    assert r.content[:4] == b"RIFF" and r.content[8:12] == b"WEBP"


def test_enhance_faces_only_leaves_the_background_untouched(served, face_jpeg) -> None:
    r = requests.post(
        f"{served.url}/v1/enhance",
        params={"faces_only": "true"},
        data=face_jpeg,
        timeout=TIMEOUT,
    )
    assert r.status_code == 200, r.text
    assert int(r.headers["x-faces"]) >= 1
    before, after = _decode(face_jpeg), _decode(r.content)
    # The astronaut's face is in the upper middle; the bottom-left corner is far from it.
    np.testing.assert_array_equal(before[-40:, :40], after[-40:, :40])


# -- detect ----------------------------------------------------------------------------------


def test_detect_finds_the_astronaut_face(served, face_jpeg) -> None:
    r = requests.post(f"{served.url}/v1/detect", data=face_jpeg, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["width"], body["height"]) == (512, 512)
    assert len(body["faces"]) >= 1
    face = body["faces"][0]
    assert 0 < face["score"] <= 1
    assert face["x"] >= 0 and face["x"] + face["w"] <= 512


# -- degrade ---------------------------------------------------------------------------------


def test_degrade_by_dataset_uses_its_degradations_and_seed(served, image_bytes) -> None:
    url = f"{served.url}/v1/degrade"
    image = image_bytes(64, 64)
    first = requests.post(url, params={"dataset": served.dataset}, data=image, timeout=TIMEOUT)
    again = requests.post(url, params={"dataset": served.dataset}, data=image, timeout=TIMEOUT)
    assert first.status_code == 200, first.text
    assert first.headers["x-seed"] == "7"
    applied = json.loads(first.headers["x-degradations"])
    assert [a["type"] for a in applied] == ["gaussian_blur"]
    assert 1.0 <= applied[0]["params"]["sigma"] <= 2.0
    assert first.content == again.content  # same image, spec and seed: same bytes


def test_degrade_explicit_list_json_variant(served, image_bytes) -> None:
    spec = [{"type": "jpeg", "p": 1.0, "quality": [30, 30]}]
    r = requests.post(
        f"{served.url}/v1/degrade",
        params={"degradations": json.dumps(spec), "seed": "3", "response": "json"},
        data=image_bytes(64, 64),
        timeout=TIMEOUT,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["seed"] == 3
    assert body["applied"] == [{"type": "jpeg", "params": {"quality": 30}}]
    assert _decode(base64.b64decode(body["image"])).shape == (64, 64, 3)


def test_degrade_list_as_multipart_field(served, image_bytes) -> None:
    spec = [{"type": "gaussian_noise", "p": 1.0, "sigma": [5.0, 5.0]}]
    r = requests.post(
        f"{served.url}/v1/degrade",
        files={"file": ("x.png", image_bytes(32, 32), "image/png")},
        data={"degradations": json.dumps(spec)},
        timeout=TIMEOUT,
    )
    assert r.status_code == 200, r.text
    assert json.loads(r.headers["x-degradations"])[0]["type"] == "gaussian_noise"


def test_degrade_unknown_dataset_is_404(served, image_bytes) -> None:
    r = requests.post(
        f"{served.url}/v1/degrade",
        params={"dataset": "no-such-dataset"},
        data=image_bytes(),
        timeout=TIMEOUT,
    )
    _assert_error(r, 404, "not_found")


def test_degrade_dataset_must_be_a_name_not_a_url(served, image_bytes) -> None:
    r = requests.post(
        f"{served.url}/v1/degrade",
        params={"dataset": "http://127.0.0.1:1/evil"},
        data=image_bytes(),
        timeout=TIMEOUT,
    )
    _assert_error(r, 422)


def test_degrade_needs_exactly_one_source_of_degradations(served, image_bytes) -> None:
    r = requests.post(f"{served.url}/v1/degrade", data=image_bytes(), timeout=TIMEOUT)
    _assert_error(r, 422, "invalid")


def test_degrade_invalid_degradation_is_422(served, image_bytes) -> None:
    r = requests.post(
        f"{served.url}/v1/degrade",
        params={"degradations": json.dumps([{"type": "jpeg", "quality": [90, 10]}])},
        data=image_bytes(),
        timeout=TIMEOUT,
    )
    _assert_error(r, 422, "invalid")


# -- bad requests ----------------------------------------------------------------------------


def test_declared_length_over_the_cap_is_413_before_any_body(served) -> None:
    host = urlparse(served.url).netloc
    head = (
        f"POST /v1/enhance HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/png\r\n"
        f"Content-Length: {served.upload_cap + 1}\r\nConnection: close\r\n\r\n"
    )
    response = _raw_http(served.url, head, [])  # not one body byte is sent
    assert _status_line(response) == 413, response[:300]
    assert b"too_large" in response


def test_streamed_body_over_the_cap_is_413(served) -> None:
    host = urlparse(served.url).netloc
    head = (
        f"POST /v1/enhance HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/png\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    piece = b"\x89PNG" + b"\0" * (64 * 1024 - 4)
    frame = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    # No Content-Length and no final chunk: only counting the stream can catch it.
    count = served.upload_cap // len(piece) + 2
    response = _raw_http(served.url, head, [frame] * count)
    assert _status_line(response) == 413, response[:300]


def test_not_an_image_is_415(served) -> None:
    r = requests.post(f"{served.url}/v1/enhance", data=b"hello, not an image", timeout=TIMEOUT)
    _assert_error(r, 415, "unsupported_media_type")


def test_corrupt_image_is_422(served, image_bytes) -> None:
    truncated = image_bytes(64, 64)[:200]
    r = requests.post(f"{served.url}/v1/detect", data=truncated, timeout=TIMEOUT)
    _assert_error(r, 422, "corrupt_image")


def test_too_many_pixels_is_413(served) -> None:
    side = int(served.pixel_cap**0.5) + 10
    ok, buf = cv2.imencode(".png", np.zeros((side, side, 3), np.uint8))
    assert ok and len(buf) < served.upload_cap  # small in bytes, too big in pixels
    r = requests.post(f"{served.url}/v1/enhance", data=buf.tobytes(), timeout=TIMEOUT)
    _assert_error(r, 413, "too_large")


def test_decompression_bomb_header_is_413(served) -> None:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")
    r = requests.post(f"{served.url}/v1/detect", data=bomb, timeout=TIMEOUT)
    _assert_error(r, 413)


def test_bad_query_option_is_422_json(served, image_bytes) -> None:
    r = requests.post(
        f"{served.url}/v1/enhance",
        params={"format": "gif"},
        data=image_bytes(),
        timeout=TIMEOUT,
    )
    _assert_error(r, 422, "invalid")


def test_unknown_route_is_404_json(served) -> None:
    _assert_error(requests.get(f"{served.url}/v1/nothing", timeout=TIMEOUT), 404)


# -- the error table, without Ray ------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (ImageTooLarge("x"), 413),
        (UnsupportedImage("x"), 415),
        (CorruptImage("x"), 422),
        (NotFound("x"), 404),
        (ModelNotFound("x"), 404),
        (StoreUnavailable("x"), 503),
        (RuntimeError("x"), 500),
    ],
)
def test_error_table_maps_classes_to_statuses(exc: Exception, status: int) -> None:
    from serve.errors import error_body

    got, body = error_body(exc)
    assert got == status
    assert set(body) == {"error", "detail"}


# -- serve/config.yaml, without Ray ----------------------------------------------------------


def test_config_yaml_is_a_valid_serve_config_whose_args_build_the_app() -> None:
    from pathlib import Path
    from types import FunctionType

    import yaml
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve.schema import ServeDeploySchema

    from serve.app import build_app

    raw = yaml.safe_load((Path(__file__).parents[2] / "serve" / "config.yaml").read_text())
    config = ServeDeploySchema.model_validate(raw)
    (app_config,) = config.applications
    assert app_config.import_path == "serve.app:build_app"
    # The same call Serve makes: the typed builder's AppArgs validates the file's args.
    assert isinstance(build_app, FunctionType)
    app = call_user_app_builder_with_args_if_necessary(build_app, app_config.args)
    assert app._bound_deployment.name == "Ingress"
    named = {d.name for d in app_config.deployments}
    assert named == {"Ingress", "Enhancer"}
    enhancer = next(d for d in app_config.deployments if d.name == "Enhancer")
    assert set(enhancer.user_config or {}) == {"max_batch_size", "batch_wait_timeout_s"}


# -- readiness follows the model ---------------------------------------------------------------


def test_readyz_is_503_until_the_model_exists_then_200(served, image_bytes) -> None:
    """A second app on /late follows a model that is registered only after it started."""
    import time

    from ray import serve

    from serve.app import AppArgs, Scaling, build_app

    late = "serve-test-late"
    args = AppArgs(
        model=f"{late}@production",
        enhancer=Scaling(min_replicas=1, max_replicas=1, num_cpus=0.25),
        ingress=Scaling(min_replicas=1, max_replicas=1, num_cpus=0.1),
    )
    serve.run(build_app(args), name="deepfix-late", route_prefix="/late")
    url = f"{served.url}/late"
    try:
        _assert_error(requests.get(f"{url}/readyz", timeout=TIMEOUT), 503, "model_not_ready")
        r = requests.post(f"{url}/v1/enhance", data=image_bytes(), timeout=TIMEOUT)
        _assert_error(r, 503, "model_not_ready")
        assert requests.get(f"{url}/v1/models", timeout=TIMEOUT).json()["loaded"] is False

        from deepfix.models import ArchitectureConfig, build_model

        arch = ArchitectureConfig(name="unet_plain", kwargs={"base_channels": 4, "depth": 1})
        version = served.models.register(late, build_model(arch), arch, metrics={}, training={})
        served.models.promote(late, version.version, "production")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if requests.get(f"{url}/readyz", timeout=TIMEOUT).status_code == 200:
                break
            time.sleep(0.5)
        assert requests.get(f"{url}/readyz", timeout=TIMEOUT).status_code == 200
        r = requests.post(f"{url}/v1/enhance", data=image_bytes(), timeout=TIMEOUT)
        assert r.status_code == 200 and r.headers["x-model-name"] == late
    finally:
        serve.delete("deepfix-late")
