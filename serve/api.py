"""The HTTP API: routes, upload caps and response shapes; no Ray in here.

``build_api(pipeline, limits)`` returns the FastAPI app that the ingress deployment serves.
The work behind each route is the ``pipeline`` (:class:`Pipeline`), the same object the web
page's preview uses (``app.state.pipeline``), so the API and the page run one code path.

Uploads are bytes only: the raw request body (any content type; the format is sniffed from
magic bytes) or one file part of a ``multipart/form-data`` body. The byte cap is enforced
before the body is held whole: a ``Content-Length`` over the cap is refused at once, and the
body is counted chunk by chunk as it streams in. Nothing a client sends is ever fetched as a
URL; a dataset is named by its slug and read from etcd.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import pydantic
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deepfix.errors import CorruptImage, ImageTooLarge
from deepfix.io import DecodeLimits, decode, encode
from deepfix.spec import DatasetSpec, DegradationSpec
from serve.errors import InvalidRequest, ModelNotReady, install_error_handler
from serve.web.routes import PreviewPipeline
from serve.web.routes import api_router as web_api_router
from serve.web.routes import router as web_router

__all__ = [
    "MEDIA_TYPES",
    "DegradeJSON",
    "DetectResponse",
    "ErrorBody",
    "FaceModel",
    "Limits",
    "ModelInfo",
    "Pipeline",
    "RequestMetrics",
    "Upload",
    "build_api",
    "read_upload",
]

log = logging.getLogger(__name__)

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
OutputFormat = Literal["png", "jpeg", "webp"]
_DEGRADATIONS = pydantic.TypeAdapter(list[DegradationSpec])


class Limits(BaseModel):
    """What one request may carry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1, description="image bytes (10 MiB)")
    max_pixels: int = Field(16_000_000, ge=1, description="width x height after the header")
    multipart_overhead: int = Field(
        64 * 1024, ge=0, description="extra body bytes allowed for multipart framing and fields"
    )

    def decode_limits(self) -> DecodeLimits:
        return DecodeLimits(max_pixels=self.max_pixels, max_bytes=self.max_upload_bytes)


class Pipeline(PreviewPipeline, Protocol):
    """The work behind the routes; ``serve.ingress.ServePipeline`` is the Serve-backed one.
    The web page's preview needs the detect/degrade/enhance part (``PreviewPipeline``)."""

    async def dataset(self, name: str) -> DatasetSpec: ...

    async def model_info(self) -> dict[str, Any]: ...

    async def ready(self) -> bool: ...


class RequestMetrics(Protocol):
    def request(self, endpoint: str, status: int, latency_ms: float) -> None: ...

    def upload(self, endpoint: str, size: int) -> None: ...


# -- response bodies -------------------------------------------------------------------------


class ErrorBody(BaseModel):
    error: str = Field(description="short machine-readable tag, e.g. too_large")
    detail: str


class FaceModel(BaseModel):
    x: int
    y: int
    w: int
    h: int
    score: float


class DetectResponse(BaseModel):
    width: int
    height: int
    faces: list[FaceModel]
    timings: dict[str, float]


class DegradeJSON(BaseModel):
    image: str = Field(description="the degraded image, base64")
    media_type: str
    seed: int
    applied: list[dict[str, Any]] = Field(description="fired degradations and their params")


class BatchingInfo(BaseModel):
    max_batch_size: int
    batch_wait_timeout_s: float
    recent_batch_sizes: list[int] = Field(description="sizes of the replica's latest batches")
    batches: int = Field(0, description="batches run since the replica started")
    batched_calls: int = Field(0, description="forward calls in those batches")
    in_flight: int = Field(0, description="enhance requests inside the replica now")


class ModelInfo(BaseModel):
    ref: str = Field(description="what the service follows, e.g. deepfix-demo@production")
    loaded: bool
    name: str | None = None
    version: int | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    architecture: dict[str, Any] | None = None
    dataset: str | None = None
    created_at: str | None = None
    loaded_at: str | None = None
    sha256: str | None = None
    error: str | None = None
    replica: str | None = None
    face_detector: str | None = None
    batching: BatchingInfo | None = None


class Health(BaseModel):
    status: str
    model: str | None = None


# -- uploads ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    """An uploaded image's bytes and the text fields of a multipart body."""

    data: bytes
    fields: dict[str, str] = field(default_factory=dict)


def _too_large(size: int | str, cap: int) -> ImageTooLarge:
    return ImageTooLarge(f"request body of {size} bytes is over the upload cap of {cap} bytes")


async def read_upload(request: Request, limits: Limits) -> Upload:
    """The image bytes of ``request``, refused as soon as they pass the cap.

    Raises:
        ImageTooLarge: ``Content-Length`` or the streamed byte count is over the cap.
        CorruptImage: a multipart body without exactly one file part, or a malformed one.
    """
    multipart = request.headers.get("content-type", "").startswith("multipart/form-data")
    cap = limits.max_upload_bytes + (limits.multipart_overhead if multipart else 0)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise _too_large(declared, cap)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise _too_large(f"more than {cap}", cap)
    if not multipart:
        return Upload(data=bytes(body))
    return await _parse_multipart(request, bytes(body), limits)


async def _parse_multipart(request: Request, body: bytes, limits: Limits) -> Upload:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=16)
    except Exception as exc:  # python-multipart's parse errors have no common base
        raise CorruptImage(f"malformed multipart body: {exc}") from exc
    files = [v for v in form.values() if isinstance(v, UploadFile)]
    if len(files) != 1:
        raise CorruptImage(f"a multipart body needs exactly one file part, got {len(files)}")
    data = await files[0].read()
    if len(data) > limits.max_upload_bytes:
        raise _too_large(len(data), limits.max_upload_bytes)
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    await form.close()
    return Upload(data=data, fields=fields)


_BINARY = {"type": "string", "format": "binary"}
_IMAGE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The image: the raw body (format sniffed; PNG, JPEG, WebP, BMP, TIFF) "
        "or a multipart/form-data body with one file part.",
        "content": {
            "application/octet-stream": {"schema": _BINARY},
            "image/*": {"schema": _BINARY},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": _BINARY,
                        "degradations": {
                            "type": "string",
                            "description": "degrade only: the JSON list of degradations",
                        },
                    },
                    "required": ["file"],
                }
            },
        },
    }
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorBody, "description": "over the upload cap or the pixel cap"},
    415: {"model": ErrorBody, "description": "not an image of an accepted format"},
    422: {"model": ErrorBody, "description": "corrupt image or invalid options"},
    503: {"model": ErrorBody, "description": "no model loaded yet, or at capacity"},
}


def _image_response(image_bytes: bytes, fmt: OutputFormat, headers: dict[str, str]) -> Response:
    return Response(content=image_bytes, media_type=MEDIA_TYPES[fmt], headers=headers)


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


# -- metrics middleware ----------------------------------------------------------------------


class _MetricsMiddleware:
    """Counts every request by route template and status, and times it (pure ASGI, so the
    request body still streams)."""

    def __init__(self, app: ASGIApp, metrics: RequestMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            # The route template, never the raw path: unknown paths must not mint new series.
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.request(endpoint, status, _ms(start))


# -- the app ---------------------------------------------------------------------------------


def build_api(
    pipeline: Pipeline,
    limits: Limits | None = None,
    *,
    metrics: RequestMetrics | None = None,
    mount_web: bool = True,
) -> FastAPI:
    """The FastAPI app of the service (OpenAPI at ``/docs``).

    Args:
        pipeline: does the work; also published as ``app.state.pipeline`` for the web page.
        limits: upload and pixel caps.
        metrics: per-request counters; None records nothing.
        mount_web: include the dataset web page's routers (``serve.web.routes``).
    """
    limits = limits or Limits()
    decode_limits = limits.decode_limits()
    app = FastAPI(
        title="deepfix",
        version="1",
        description="Restore degraded face images: enhance, detect faces, degrade for previews.",
    )
    app.state.pipeline = pipeline
    app.state.limits = limits
    install_error_handler(app)
    if metrics is not None:
        app.add_middleware(_MetricsMiddleware, metrics=metrics)

    async def image_of(request: Request, endpoint: str) -> tuple[np.ndarray, Upload]:
        upload = await read_upload(request, limits)
        if metrics is not None:
            metrics.upload(endpoint, len(upload.data))
        image = await run_in_threadpool(decode, upload.data, limits=decode_limits)
        return image, upload

    async def encoded(image: np.ndarray, fmt: OutputFormat, quality: int | None) -> bytes:
        return await run_in_threadpool(encode, image, fmt, quality=quality)

    v1 = APIRouter(prefix="/v1", tags=["v1"])

    @v1.post(
        "/enhance",
        openapi_extra=_IMAGE_BODY,
        response_class=Response,
        responses={
            200: {
                "content": {t: {} for t in MEDIA_TYPES.values()},
                "description": "The enhanced image; X-Model-Version and X-Inference-Ms headers "
                "name the model version that ran and its time.",
            },
            **_ERRORS,
        },
    )
    async def enhance(
        request: Request,
        faces_only: bool = Query(False, description="restore detected faces only"),
        format: OutputFormat = Query("png", description="output format"),
        quality: int | None = Query(None, ge=1, le=100, description="JPEG/WebP quality"),
    ) -> Response:
        """Restore an image: the whole image tile-wise, or only its faces (soft paste-back)."""
        start = time.perf_counter()
        image, _ = await image_of(request, "/v1/enhance")
        out, info = await pipeline.enhance(image, faces_only)
        data = await encoded(out, format, quality)
        timings = info.get("timings", {})
        headers = {
            "X-Model-Name": str(info.get("name")),
            "X-Model-Version": str(info.get("version")),
            "X-Model-Ref": str(info.get("ref")),
            "X-Inference-Ms": f"{timings.get('enhance_ms', 0.0):.1f}",
            "X-Model-Ms": f"{timings.get('model_ms', 0.0):.1f}",
            "X-Queue-Ms": f"{timings.get('queue_ms', 0.0):.1f}",
            "X-Total-Ms": f"{_ms(start):.1f}",
        }
        if faces_only:
            headers["X-Faces"] = str(len(info.get("faces", [])))
        return _image_response(data, format, headers)

    @v1.post("/detect", openapi_extra=_IMAGE_BODY, responses=_ERRORS)
    async def detect(request: Request) -> DetectResponse:
        """Face boxes (full-resolution pixels) and scores, best first."""
        start = time.perf_counter()
        image, _ = await image_of(request, "/v1/detect")
        detect_start = time.perf_counter()
        boxes = await pipeline.detect(image)
        return DetectResponse(
            width=int(image.shape[1]),
            height=int(image.shape[0]),
            faces=[FaceModel(x=b.x, y=b.y, w=b.w, h=b.h, score=b.score) for b in boxes],
            timings={"detect_ms": _ms(detect_start), "total_ms": _ms(start)},
        )

    @v1.post(
        "/degrade",
        openapi_extra=_IMAGE_BODY,
        response_model=None,
        responses={
            200: {
                "content": {
                    **{t: {} for t in MEDIA_TYPES.values()},
                    "application/json": {"schema": DegradeJSON.model_json_schema()},
                },
                "description": "The degraded image (X-Degradations header: the applied params), "
                "or with response=json the image in base64 and the params.",
            },
            404: {"model": ErrorBody, "description": "unknown dataset"},
            **_ERRORS,
        },
    )
    async def degrade(
        request: Request,
        dataset: str | None = Query(
            None, description="a dataset in the config store: its degradations are used"
        ),
        degradations: str | None = Query(
            None, description="or an explicit JSON list of degradations"
        ),
        seed: int | None = Query(
            None, ge=0, le=2**63 - 1, description="default: the dataset's seed, else 0"
        ),
        format: OutputFormat = Query("png"),
        quality: int | None = Query(None, ge=1, le=100),
        response: Literal["image", "json"] = Query("image"),
    ) -> Response | DegradeJSON:
        """Degrade an image as a dataset (or an explicit list) would, reproducibly by seed."""
        image, upload = await image_of(request, "/v1/degrade")
        explicit = degradations if degradations is not None else upload.fields.get("degradations")
        if (dataset is None) == (explicit is None):
            raise InvalidRequest("give exactly one of dataset= or degradations=")
        if dataset is not None:
            spec = await pipeline.dataset(dataset)
            specs, default_seed = list(spec.degradations), spec.seed
        else:
            assert explicit is not None
            specs, default_seed = _DEGRADATIONS.validate_json(explicit), 0
            types = [s.type for s in specs]
            repeated = sorted({t for t in types if types.count(t) > 1})
            if repeated:
                raise InvalidRequest(f"each degradation type may appear once; repeated: {repeated}")
        used_seed = default_seed if seed is None else seed
        out, applied = await pipeline.degrade(image, specs, used_seed)
        data = await encoded(out, format, quality)
        if response == "json":
            return DegradeJSON(
                image=base64.b64encode(data).decode("ascii"),
                media_type=MEDIA_TYPES[format],
                seed=used_seed,
                applied=applied,
            )
        headers = {
            "X-Seed": str(used_seed),
            "X-Degradations": json.dumps(applied, separators=(",", ":"), ensure_ascii=True),
        }
        return _image_response(data, format, headers)

    @v1.get("/models", responses={503: {"model": ErrorBody}})
    async def models() -> ModelInfo:
        """The served model (following its alias), its metrics and the batching state."""
        return ModelInfo.model_validate(await pipeline.model_info())

    app.include_router(v1)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> Health:
        """The ingress is up (it says nothing about the model)."""
        return Health(status="ok")

    @app.get("/readyz", tags=["ops"], responses={503: {"model": ErrorBody}})
    async def readyz() -> Health:
        """200 once a model is loaded and answering; 503 before."""
        if not await pipeline.ready():
            raise ModelNotReady("no model is loaded yet")
        info = await pipeline.model_info()
        return Health(status="ready", model=f"{info.get('name')}:{info.get('version')}")

    if mount_web:
        # The dataset pages and their JSON API; the preview calls app.state.pipeline.
        app.include_router(web_api_router)
        app.include_router(web_router)
    return app
