"""The dataset configuration web page and its REST API (the paper's figures 2 and 3).

Two plain FastAPI routers, mounted by the Serve ingress and usable in any FastAPI app:

- ``router`` (HTML): ``/`` lists the parameter sets; ``/new``, ``/datasets/{name}``,
  ``/datasets/{name}/edit`` and ``/datasets/{name}/delete`` create, show, edit and delete one
  (``/new`` is outside ``/datasets/`` because ``new`` is a valid dataset name);
  ``/static/web/{file}`` serves the page's CSS and JS.
- ``api_router`` (JSON): ``/api/datasets`` and ``/api/datasets/{name}`` for scripts, with the
  revision as ``ETag`` and ``If-Match`` for optimistic concurrency; ``/api/preview`` runs the
  enhancement pipeline on one uploaded image for the form's live preview.

What the app provides on ``app.state``:

- ``config_store``: a ``ConfigStore`` (optional; one is built from ``DEEPFIX_ETCD`` otherwise);
- ``pipeline``: the object behind the preview (see ``PreviewPipeline``); without it the
  preview answers 503.

The form is generated from the pydantic models of ``deepfix.spec``: face detection and every
degradation type become fieldsets whose inputs follow the models' fields, and the store's
``ValidationError.errors`` locations map back onto those inputs. Field names are the dotted
paths of the document (``crop.width``, ``degradations.jpeg.quality.0``).

Errors are translated in one place per router: ``_ERRORS`` maps each error class to a status
code, applied by the routers' ``route_class``, so the mapping travels with the routers
(FastAPI exception handlers would belong to the app that mounts them).
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import logging
import math
import urllib.parse
from collections.abc import AsyncGenerator, Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, get_args, get_origin

import annotated_types
import jinja2
import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from config_store import (
    AlreadyExists,
    ConfigStore,
    ConfigStoreError,
    Conflict,
    Document,
    DocumentTooLarge,
    NotFound,
    StoreUnavailable,
    ValidationError,
)
from config_store.collections import NAME_PATTERN
from deepfix.errors import ImageError, ImageTooLarge, UnsupportedImage
from deepfix.faces import FaceBox, available_detectors, centre_crop, crop_faces
from deepfix.io import DecodeLimits, decode, encode
from deepfix.spec import (
    DEGRADATION_TYPES,
    DatasetSpec,
    DegradationSpec,
    FaceDetectionSpec,
    SplitSpec,
)
from serve.web import csrf

__all__ = [
    "COLLECTION",
    "PREVIEW_MAX_BYTES",
    "PreviewPipeline",
    "api_router",
    "router",
]

logger = logging.getLogger(__name__)

COLLECTION = "datasets"
PREVIEW_MAX_BYTES = 10 * 1024 * 1024  # the uploaded image
PREVIEW_MAX_PIXELS = 40_000_000
PREVIEW_MAX_SIDE = 1024  # larger samples are previewed scaled down (CPU time, response size)
FORM_MAX_BYTES = 1024 * 1024  # a form post or an API body; documents are capped far lower
_MULTIPART_OVERHEAD = 1024 * 1024  # the form fields sent along with the preview image

_HERE = Path(__file__).parent
_TEMPLATES = _HERE / "templates"
_STATIC = _HERE / "static"
_STATIC_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}

# Content-Security-Policy of every page: no inline script or style, so an injected string can
# never run even if escaping were missed somewhere; previews are data: URLs.
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}

_FLASH_COOKIE = "deepfix_flash"


class PreviewPipeline(Protocol):
    """What the ingress puts on ``app.state.pipeline`` for the preview."""

    async def detect(self, image: np.ndarray) -> list[FaceBox]: ...

    async def degrade(
        self, image: np.ndarray, specs: list[DegradationSpec], seed: int
    ) -> tuple[np.ndarray, list[dict[str, Any]]]: ...

    async def enhance(
        self, image: np.ndarray, faces_only: bool
    ) -> tuple[np.ndarray, dict[str, Any]]: ...


class ApiError(Exception):
    """An HTTP error raised by these routes themselves (bad header, body too large, ...)."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail


# --------------------------------------------------------------------------------------------
# One table from error class to HTTP status; the first matching class wins.

_ERRORS: tuple[tuple[type[Exception], int, str], ...] = (
    (StoreUnavailable, 503, "store_unavailable"),
    (NotFound, 404, "not_found"),
    (AlreadyExists, 409, "already_exists"),
    (Conflict, 412, "precondition_failed"),  # only If-Match reaches it; pages handle their own
    (DocumentTooLarge, 413, "document_too_large"),
    (ValidationError, 422, "invalid"),
    (csrf.CsrfError, 403, "csrf_failed"),
    (ImageTooLarge, 413, "image_too_large"),
    (UnsupportedImage, 415, "unsupported_image"),
    (ImageError, 422, "bad_image"),
    (ConfigStoreError, 500, "store_error"),
)


def _classify(exc: Exception) -> tuple[int, str] | None:
    if isinstance(exc, ApiError):
        return exc.status, exc.error
    for cls, status, error in _ERRORS:
        if isinstance(exc, cls):
            return status, error
    return None


def _error_body(exc: Exception, error: str) -> dict[str, Any]:
    body: dict[str, Any] = {"error": error, "detail": str(exc)}
    if isinstance(exc, ValidationError):
        body["errors"] = [{"loc": e.get("loc", []), "msg": e.get("msg", "")} for e in exc.errors]
    if isinstance(exc, Conflict):
        body["current_revision"] = exc.current_revision
    return body


class _MappedErrorRoute(APIRoute):
    """Routes whose errors listed in ``_ERRORS`` are answered by ``render``; others propagate
    to the host app's handler."""

    @staticmethod
    def render(request: Request, exc: Exception, status: int, error: str) -> Response:
        raise NotImplementedError

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                mapped = _classify(exc)
                if mapped is None:
                    raise
                status, error = mapped
                if status >= 500:
                    logger.warning("%s %s: %s", request.method, request.url.path, exc)
                return self.render(request, exc, status, error)

        return route


class _JsonErrorRoute(_MappedErrorRoute):
    """Errors become ``{"error": ..., "detail": ...}`` JSON."""

    @staticmethod
    def render(request: Request, exc: Exception, status: int, error: str) -> Response:
        return JSONResponse(_error_body(exc, error), status_code=status)


class _HtmlErrorRoute(_MappedErrorRoute):
    """Errors become an HTML error page."""

    @staticmethod
    def render(request: Request, exc: Exception, status: int, error: str) -> Response:
        return _page(
            request,
            "error.html",
            {"title": _ERROR_TITLES.get(error, "Error"), "status": status, "message": exc},
            status=status,
        )


_ERROR_TITLES = {
    "store_unavailable": "The configuration store is unavailable",
    "not_found": "Not found",
    "csrf_failed": "The form could not be verified",
    "invalid": "Invalid request",
    "too_large": "Too large",
}

router = APIRouter(route_class=_HtmlErrorRoute, include_in_schema=False)
api_router = APIRouter(prefix="/api", route_class=_JsonErrorRoute, tags=["datasets"])


# --------------------------------------------------------------------------------------------
# Shared plumbing


def _store(request: Request) -> ConfigStore:
    """``app.state.config_store``, or one built from the environment on first use."""
    store = getattr(request.app.state, "config_store", None)
    if store is None:
        store = ConfigStore()
        request.app.state.config_store = store
    return store


async def _call(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    # ConfigStore talks to etcd with blocking HTTP: keep it off the event loop.
    return await run_in_threadpool(fn, *args, **kwargs)


async def _read_capped(request: Request, cap: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``cap`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise ApiError(413, "too_large", f"the request body is over {cap} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise ApiError(413, "too_large", f"the request body is over {cap} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


@functools.cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_TEMPLATES),
        autoescape=True,  # every template is HTML: escape everything, always
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pretty_json"] = lambda v: json.dumps(v, indent=2, sort_keys=True)
    return env


def _url(request: Request, route: str, /, **params: Any) -> str:
    # The path only (with the app's root_path), so links work behind any host or proxy.
    return request.url_for(route, **params).path


def _pop_flash(request: Request) -> dict[str, str] | None:
    payload = csrf.unsign("flash", request.cookies.get(_FLASH_COOKIE))
    if payload is None:
        return None
    try:
        flash = json.loads(payload)
    except ValueError:
        return None
    return {"kind": str(flash.get("kind", "info")), "text": str(flash.get("text", ""))}


def _page(
    request: Request,
    template: str,
    context: Mapping[str, Any],
    *,
    status: int = 200,
) -> HTMLResponse:
    token, nonce = csrf.issue(request)
    flash = _pop_flash(request)
    html = (
        _environment()
        .get_template(template)
        .render(
            {
                "url": functools.partial(_url, request),
                "static_url": lambda f: _url(request, "web_static", filename=f),
                "csrf_token": token,
                "csrf_field": csrf.CSRF_FIELD,
                "flash": flash,
                **context,
            }
        )
    )
    response = HTMLResponse(html, status_code=status, headers=_SECURITY_HEADERS)
    if nonce is not None:
        csrf.set_cookie(request, response, nonce)
    if flash is not None or _FLASH_COOKIE in request.cookies:
        response.delete_cookie(_FLASH_COOKIE, path=csrf.cookie_path(request))
    return response


def _redirect(request: Request, url: str, text: str, kind: str = "success") -> RedirectResponse:
    """303 to ``url`` with a one-shot flash message in a signed cookie (post/redirect/get)."""
    response = RedirectResponse(url, status_code=303)
    response.set_cookie(
        _FLASH_COOKIE,
        csrf.sign("flash", json.dumps({"kind": kind, "text": text}).encode()),
        max_age=60,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        path=csrf.cookie_path(request),
    )
    return response


async def _read_form(request: Request) -> dict[str, str]:
    """A url-encoded form post, size-capped and CSRF-checked; the last value of a key wins."""
    if _media_type(request) != "application/x-www-form-urlencoded":
        raise ApiError(415, "unsupported_media_type", "forms are posted url-encoded")
    body = await _read_capped(request, FORM_MAX_BYTES)
    try:
        pairs = urllib.parse.parse_qsl(
            body.decode("utf-8"), keep_blank_values=True, max_num_fields=1000
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(400, "bad_form", f"the form cannot be read: {exc}") from None
    form = dict(pairs)
    csrf.verify(request, form.pop(csrf.CSRF_FIELD, None))
    return form


# --------------------------------------------------------------------------------------------
# The form, generated from the pydantic models of deepfix.spec


@dataclasses.dataclass(frozen=True)
class FieldView:
    """One input (or, for ``range``, a low/high pair ``key.0``/``key.1``) of the form."""

    key: str
    label: str
    kind: Literal["checkbox", "select", "number", "text", "range"]
    options: tuple[str, ...] = ()
    step: str = "any"
    min: float | None = None
    max: float | None = None
    help: str = ""
    optional: bool = False


@dataclasses.dataclass(frozen=True)
class DegradationView:
    type: str
    label: str
    fields: tuple[FieldView, ...]  # p first, then the ranges, in model order


_LABELS = {
    "p": "Probability",
    "min_size": "Min face size (px)",
    "on_missing": "If no face is found",
    "score_threshold": "Score threshold",
    "max_faces": "Max faces per image",
    "model_path": "Model file",
    "salt_ratio": "Salt ratio",
}
CROP_MODES = (
    ("none", "No"),
    ("64x64", "64 x 64"),
    ("128x128", "128 x 128"),
    ("256x256", "256 x 256"),
    ("512x512", "512 x 512"),
    ("custom", "Custom"),
)
_TOP_LABELS = {
    "name": "Name",
    "details": "Details",
    "source": "Path to folder / URL",
    "height": "Height",
    "width": "Width",
    "image_type": "File type",
    "crop.mode": "Crop",
    "crop.width": "Crop width",
    "crop.height": "Crop height",
    "seed": "Seed",
    "reference_image": "Reference image (path or URI)",
}


def _label(name: str) -> str:
    return _LABELS.get(name, name.replace("_", " ").capitalize())


def _bounds(metadata: Sequence[object]) -> tuple[float | None, float | None]:
    lo = hi = None
    for m in metadata:
        if isinstance(m, annotated_types.Ge):
            lo = float(m.ge)  # type: ignore[arg-type]
        elif isinstance(m, annotated_types.Le):
            hi = float(m.le)  # type: ignore[arg-type]
    return lo, hi


def _describe(
    model: type[BaseModel], prefix: str, *, choices: Mapping[str, Sequence[str]] | None = None
) -> tuple[FieldView, ...]:
    """One ``FieldView`` per field of ``model`` (but a discriminating ``type``)."""
    views = []
    for name, info in model.model_fields.items():
        if name == "type":
            continue
        ann, origin = info.annotation, get_origin(info.annotation)
        key = f"{prefix}.{name}"
        lo, hi = _bounds(info.metadata)
        # "p" is the same on every degradation and its label says it all.
        help_text = "" if name == "p" else info.description or ""
        common: dict[str, Any] = {"label": _label(name), "help": help_text}
        view: FieldView
        if choices and name in choices:
            view = FieldView(key, kind="select", options=tuple(choices[name]), **common)
        elif ann is bool:
            view = FieldView(key, kind="checkbox", **common)
        elif origin is Literal:
            view = FieldView(key, kind="select", options=tuple(map(str, get_args(ann))), **common)
        elif origin is tuple:
            step = "1" if get_args(ann)[0] is int else "any"
            view = FieldView(key, kind="range", step=step, **common)
        elif ann in (int, float):
            step = "1" if ann is int else "any"
            view = FieldView(key, kind="number", step=step, min=lo, max=hi, **common)
        else:  # str, or str | None
            optional = type(None) in get_args(ann)
            view = FieldView(key, kind="text", optional=optional, **common)
        views.append(view)
    return tuple(views)


def _degradation_models() -> dict[str, type[BaseModel]]:
    union = get_args(DegradationSpec)[0]  # Annotated[Union[...], Field(discriminator=...)]
    models = {m.model_fields["type"].default: m for m in get_args(union)}
    return {t: models[t] for t in DEGRADATION_TYPES}


@functools.cache
def _form_schema() -> tuple[
    tuple[FieldView, ...], tuple[DegradationView, ...], tuple[FieldView, ...]
]:
    """(face detection fields, one view per degradation type, split fields)."""
    detectors = available_detectors()
    faces = _describe(FaceDetectionSpec, "face_detection", choices={"detector": detectors})
    degradations = tuple(
        DegradationView(
            type=t,
            label=t.replace("_", " ").capitalize(),
            fields=_describe(model, f"degradations.{t}"),
        )
        for t, model in _degradation_models().items()
    )
    split = _describe(SplitSpec, "split")
    return faces, degradations, split


def _field_labels() -> dict[str, str]:
    """Human label of every form key (and of fieldset keys such as ``crop``)."""
    faces, degradations, split = _form_schema()
    labels = dict(_TOP_LABELS)
    labels.update({"crop": "Crop", "face_detection": "Face detection", "split": "Split"})
    labels["degradations"] = "Degradations"
    for f in faces:
        labels[f.key] = f"Face detection: {f.label.lower()}"
    for d in degradations:
        labels[f"degradations.{d.type}"] = d.label
        labels[f"degradations.{d.type}.enabled"] = f"{d.label}: enabled"
        for f in d.fields:
            labels[f.key] = f"{d.label}: {f.label.lower()}"
            if f.kind == "range":
                labels[f"{f.key}.0"] = f"{d.label}: {f.label.lower()} (low)"
                labels[f"{f.key}.1"] = f"{d.label}: {f.label.lower()} (high)"
    for f in split:
        labels[f.key] = f"Split: {f.label.lower()}"
    return labels


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "on" if value else ""
    return str(value)


def doc_to_values(value: Mapping[str, Any]) -> dict[str, str]:
    """A stored document as the flat ``{form key: text}`` the form renders."""
    faces, degradations, split = _form_schema()
    values = {k: _text(value.get(k)) for k in _TOP_LABELS if "." not in k}
    crop = value.get("crop") or {}
    for k in ("mode", "width", "height"):
        values[f"crop.{k}"] = _text(crop.get(k))
    values["crop.mode"] = values["crop.mode"] or "none"
    fd = value.get("face_detection") or {}
    for f in faces:
        values[f.key] = _text(fd.get(f.key.rsplit(".", 1)[1]))
    stored = {d.get("type"): d for d in value.get("degradations") or [] if isinstance(d, dict)}
    models = _degradation_models()
    for view in degradations:
        entry = stored.get(view.type)
        values[f"degradations.{view.type}.enabled"] = "on" if entry is not None else ""
        fields = entry if entry is not None else models[view.type]().model_dump(mode="json")
        for f in view.fields:
            raw = fields.get(f.key.rsplit(".", 1)[1])
            if f.kind == "range":
                pair = list(raw) if isinstance(raw, list | tuple) else ["", ""]
                values[f"{f.key}.0"], values[f"{f.key}.1"] = _text(pair[0]), _text(pair[-1])
            else:
                values[f.key] = _text(raw)
    sp = value.get("split") or {}
    for f in split:
        values[f.key] = _text(sp.get(f.key.rsplit(".", 1)[1]))
    return {k: v for k, v in values.items() if v != ""}


def default_values() -> dict[str, str]:
    """The form of a new parameter set: the spec's defaults, name and source empty."""
    defaults = DatasetSpec(name="new", source="new").model_dump(mode="json")
    values = doc_to_values(defaults)
    values.pop("name", None)
    values.pop("source", None)
    return values


def values_to_doc(values: Mapping[str, str], name: str) -> dict[str, Any]:
    """The submitted form as a document; strings are left for pydantic to parse and judge.

    A key absent from the form is left out (the spec's default applies); an unchecked
    checkbox is False; an unchecked degradation is left out of the list; an empty optional
    field is None.
    """
    faces, degradations, split = _form_schema()

    def put(target: dict[str, Any], key: str, field: str, *, optional: bool = False) -> None:
        if key in values:
            text = values[key].strip()
            target[field] = None if optional and not text else text

    doc: dict[str, Any] = {"name": name}
    if "details" in values:
        doc["details"] = values["details"]  # free text: kept exactly as typed
    for k in ("source", "height", "width", "image_type", "seed"):
        put(doc, k, k)
    put(doc, "reference_image", "reference_image", optional=True)
    mode = values.get("crop.mode", "none").strip() or "none"
    crop: dict[str, Any] = {"mode": mode}
    if mode == "custom":
        put(crop, "crop.width", "width", optional=True)
        put(crop, "crop.height", "height", optional=True)
    doc["crop"] = crop
    fd: dict[str, Any] = {}
    for f in faces:
        field = f.key.rsplit(".", 1)[1]
        if f.kind == "checkbox":
            fd[field] = f.key in values
        else:
            put(fd, f.key, field, optional=f.optional)
    doc["face_detection"] = fd
    chosen = []
    for view in degradations:
        if f"degradations.{view.type}.enabled" not in values:
            continue
        entry: dict[str, Any] = {"type": view.type}
        for f in view.fields:
            field = f.key.rsplit(".", 1)[1]
            if f.kind == "range":
                entry[field] = [
                    values.get(f"{f.key}.0", "").strip(),
                    values.get(f"{f.key}.1", "").strip(),
                ]
            else:
                put(entry, f.key, field)
        chosen.append(entry)
    doc["degradations"] = chosen
    sp: dict[str, Any] = {}
    for f in split:
        put(sp, f.key, f.key.rsplit(".", 1)[1])
    doc["split"] = sp
    return doc


def _clean_message(msg: str) -> str:
    return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def map_errors(
    errors: Sequence[Mapping[str, object]], doc: Mapping[str, Any]
) -> dict[str, list[str]]:
    """The store's ``errors`` as ``{form key: [messages]}``; ``""`` holds whole-form errors.

    A degradation's location carries its index in ``doc["degradations"]`` and its type tag
    (``["degradations", 2, "jpeg", "quality", 0]``); the form keys it by type instead.
    """
    order = [d.get("type") for d in doc.get("degradations", [])]
    out: dict[str, list[str]] = {}
    for e in errors:
        raw = e.get("loc")
        loc: list[object] = list(raw) if isinstance(raw, list | tuple) else []
        if len(loc) >= 2 and loc[0] == "degradations" and isinstance(loc[1], int):
            kind = order[loc[1]] if 0 <= loc[1] < len(order) else None
            loc = ["degradations", kind, *loc[3:]] if kind else ["degradations"]
        key = ".".join(str(p) for p in loc)
        out.setdefault(key, []).append(_clean_message(str(e.get("msg", ""))))
    return out


def _same(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return math.isclose(float(a), float(b))
    except ValueError:
        return False


def _differences(mine: Mapping[str, str], theirs: Mapping[str, str]) -> list[dict[str, str]]:
    """Rows (label, mine, theirs) where the submitted form differs from the current version."""
    labels = _field_labels()
    rows = []
    for key, label in labels.items():
        a, b = mine.get(key, ""), theirs.get(key, "")
        if key.startswith("degradations.") and not key.endswith(".enabled"):
            kind = key.split(".")[1]
            enabled = f"degradations.{kind}.enabled"
            if not mine.get(enabled) and not theirs.get(enabled):
                continue  # off on both sides: its numbers do not matter
        if key in ("face_detection.enabled",) or key.endswith(".enabled"):
            a, b = ("yes" if a else "no"), ("yes" if b else "no")
        if not _same(a, b):
            rows.append({"label": label, "mine": a, "theirs": b})
    return rows


def _known_keys() -> set[str]:
    return set(_field_labels())


def _form_context(
    request: Request,
    *,
    mode: Literal["create", "edit"],
    values: Mapping[str, str],
    name: str = "",
    revision: int | None = None,
    errors: Mapping[str, list[str]] | None = None,
    banner: str = "",
    conflict: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    faces, degradations, split = _form_schema()
    errors = dict(errors or {})
    known = _known_keys()
    general = [
        f"{_field_labels().get(k, k) + ': ' if k else ''}{m}"
        for k, msgs in errors.items()
        if k not in known
        for m in msgs
    ]
    action = (
        _url(request, "web_create") if mode == "create" else _url(request, "web_update", name=name)
    )
    return {
        "title": "Create New Item" if mode == "create" else f"Edit {name}",
        "mode": mode,
        "name": name,
        "action": action,
        "values": values,
        "revision": revision,
        "errors": errors,
        "general_errors": general,
        "banner": banner,
        "conflict": conflict,
        "image_types": get_args(DatasetSpec.model_fields["image_type"].annotation),
        "crop_modes": CROP_MODES,
        "faces": faces,
        "degradations": degradations,
        "split": split,
        "preview_url": _url(request, "web_preview"),
        "preview_max_mib": PREVIEW_MAX_BYTES // (1024 * 1024),
    }


# --------------------------------------------------------------------------------------------
# HTML pages


@router.get("/", name="web_index")
async def index(request: Request) -> Response:
    docs: list[Document] = await _call(_store(request).list, COLLECTION)
    rows = [
        {"no": i, "name": d.name, "details": str(d.value.get("details", ""))}
        for i, d in enumerate(docs, start=1)
    ]
    return _page(request, "index.html", {"title": "Parameter sets", "rows": rows})


@router.get("/new", name="web_new")
async def new_form(request: Request) -> Response:
    return _page(
        request, "form.html", _form_context(request, mode="create", values=default_values())
    )


@router.post("/new", name="web_create")
async def create(request: Request) -> Response:
    values = await _read_form(request)
    name = values.get("name", "").strip()
    values["name"] = name
    if not NAME_PATTERN.fullmatch(name):
        errors = {"name": ["use 1-63 characters a-z, 0-9, _ or -, starting with a letter or digit"]}
        return _page(
            request,
            "form.html",
            _form_context(request, mode="create", values=values, errors=errors),
            status=422,
        )
    doc = values_to_doc(values, name)
    try:
        await _call(_store(request).create, COLLECTION, name, doc)
    except AlreadyExists:
        errors = {"name": [f"an item named {name!r} already exists; choose another name"]}
        ctx = _form_context(request, mode="create", values=values, errors=errors)
        return _page(request, "form.html", ctx, status=409)
    except ValidationError as exc:
        errors = map_errors(exc.errors, doc) or {"": [str(exc)]}
        ctx = _form_context(request, mode="create", values=values, errors=errors)
        return _page(request, "form.html", ctx, status=422)
    return _redirect(request, _url(request, "web_index"), "Item created successfully")


@router.get("/datasets/{name}", name="web_show")
async def show(request: Request, name: str) -> Response:
    doc: Document = await _call(_store(request).get, COLLECTION, name)
    faces, degradations, split = _form_schema()
    value = doc.value
    return _page(
        request,
        "show.html",
        {
            "title": name,
            "doc": doc,
            "value": value,
            "values": doc_to_values(value),
            "crop_label": dict(CROP_MODES).get(str((value.get("crop") or {}).get("mode")), ""),
            "faces": faces,
            "degradations": degradations,
            "applied": {d.get("type") for d in value.get("degradations", [])},
            "split": split,
        },
    )


@router.get("/datasets/{name}/edit", name="web_edit")
async def edit_form(request: Request, name: str) -> Response:
    doc: Document = await _call(_store(request).get, COLLECTION, name)
    ctx = _form_context(
        request, mode="edit", name=name, values=doc_to_values(doc.value), revision=doc.revision
    )
    return _page(request, "form.html", ctx)


def _revision(values: Mapping[str, str]) -> int:
    raw = values.get("revision", "").strip()
    if not raw.isdigit():
        raise ApiError(400, "bad_form", "the form carries no revision; reload the page")
    return int(raw)


@router.post("/datasets/{name}/edit", name="web_update")
async def update(request: Request, name: str) -> Response:
    values = await _read_form(request)
    revision = _revision(values)
    values["name"] = name
    doc = values_to_doc(values, name)
    store = _store(request)
    try:
        await _call(store.update, COLLECTION, name, doc, revision=revision)
    except Conflict:
        try:
            current: Document = await _call(store.get, COLLECTION, name)
        except NotFound:
            return _deleted_meanwhile(request, name, values)
        logger.info(
            "edit of %s at revision %d lost to revision %d", name, revision, current.revision
        )
        conflict = {
            "yours": revision,
            "current": current.revision,
            "rows": _differences(values, doc_to_values(current.value)),
            "value": current.value,
            "reload_url": _url(request, "web_edit", name=name),
        }
        # The form keeps what the user typed; its revision becomes the current one, so that
        # saving again is an explicit choice to replace the version shown above.
        ctx = _form_context(
            request,
            mode="edit",
            name=name,
            values=values,
            revision=current.revision,
            conflict=conflict,
        )
        return _page(request, "form.html", ctx, status=409)
    except NotFound:
        return _deleted_meanwhile(request, name, values)
    except ValidationError as exc:
        errors = map_errors(exc.errors, doc) or {"": [str(exc)]}
        ctx = _form_context(
            request, mode="edit", name=name, values=values, revision=revision, errors=errors
        )
        return _page(request, "form.html", ctx, status=422)
    return _redirect(request, _url(request, "web_index"), "Item updated successfully")


def _deleted_meanwhile(request: Request, name: str, values: Mapping[str, str]) -> Response:
    banner = (
        f"{name!r} was deleted by someone else while you were editing it; nothing was saved. "
        "Your values are below: save them to create it again."
    )
    ctx = _form_context(request, mode="create", name=name, values=values, banner=banner)
    return _page(request, "form.html", ctx, status=404)


@router.get("/datasets/{name}/delete", name="web_confirm_delete")
async def confirm_delete(request: Request, name: str) -> Response:
    doc: Document = await _call(_store(request).get, COLLECTION, name)
    return _page(request, "delete.html", {"title": f"Delete {name}", "doc": doc, "message": ""})


@router.post("/datasets/{name}/delete", name="web_delete")
async def delete(request: Request, name: str) -> Response:
    values = await _read_form(request)
    revision = _revision(values)
    store = _store(request)
    try:
        await _call(store.delete, COLLECTION, name, revision=revision)
    except NotFound:
        return _redirect(request, _url(request, "web_index"), f"{name} was already deleted", "info")
    except Conflict:
        current: Document = await _call(store.get, COLLECTION, name)
        message = (
            f"Someone else changed {name!r} since you opened this page (revision {revision}, "
            f"now {current.revision}); it was not deleted. Review the current version below "
            "and confirm again."
        )
        ctx = {"title": f"Delete {name}", "doc": current, "message": message}
        return _page(request, "delete.html", ctx, status=409)
    return _redirect(request, _url(request, "web_index"), "Item deleted successfully")


@router.get("/static/web/{filename}", name="web_static")
async def static(filename: str) -> Response:
    # A fixed set of files next to this module: the name never reaches the filesystem unchecked.
    files = _static_files()
    if filename not in files:
        raise ApiError(404, "not_found", f"no static file {filename!r}")
    return FileResponse(
        files[filename],
        media_type=_STATIC_TYPES[files[filename].suffix],
        headers={"Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff"},
    )


@functools.cache
def _static_files() -> dict[str, Path]:
    return {p.name: p for p in _STATIC.iterdir() if p.is_file() and p.suffix in _STATIC_TYPES}


# --------------------------------------------------------------------------------------------
# REST API


def _doc_json(doc: Document) -> dict[str, Any]:
    return {"name": doc.name, "revision": doc.revision, "version": doc.version, "value": doc.value}


def _etag(doc: Document) -> str:
    return f'"{doc.revision}"'


async def _json_body(request: Request) -> dict[str, Any]:
    media = _media_type(request)
    if media != "application/json" and not media.endswith("+json"):
        # Also what keeps cross-site HTML forms (which cannot send JSON) away from the API.
        raise ApiError(415, "unsupported_media_type", "send the document as application/json")
    raw = await _read_capped(request, FORM_MAX_BYTES)
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, "bad_json", f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ValidationError(
            "a document is a JSON object", errors=[{"loc": [], "msg": "expected a JSON object"}]
        )
    return body


def _if_match(request: Request) -> int | Literal["*"] | None:
    """The revision ``If-Match`` names, ``*``, or None when the header is absent."""
    raw = request.headers.get("if-match")
    if raw is None:
        return None
    raw = raw.strip()
    if raw == "*":
        return "*"
    tag = raw.split(",")[0].strip()
    # If-Match compares strongly (RFC 9110 13.1.1): a weak or foreign tag never matches.
    if tag.startswith("W/") or not tag.strip('"').isdigit():
        raise ApiError(
            412,
            "precondition_failed",
            f"If-Match {raw!r} matches no revision; send the ETag from GET, e.g. '\"17\"'",
        )
    return int(tag.strip('"'))


@api_router.get("/datasets", name="api_list_datasets")
async def api_list(request: Request) -> Response:
    docs: list[Document] = await _call(_store(request).list, COLLECTION)
    return JSONResponse({"items": [_doc_json(d) for d in docs]})


@api_router.get("/datasets/{name}", name="api_get_dataset")
async def api_get(request: Request, name: str) -> Response:
    doc: Document = await _call(_store(request).get, COLLECTION, name)
    etag = _etag(doc)
    if request.headers.get("if-none-match", "").strip() == etag:
        return Response(status_code=304, headers={"ETag": etag})
    return JSONResponse(_doc_json(doc), headers={"ETag": etag})


@api_router.post("/datasets", name="api_create_dataset", status_code=201)
async def api_create(request: Request) -> Response:
    body = await _json_body(request)
    name = body.get("name")
    if not isinstance(name, str):
        raise ValidationError(
            "the document needs a name", errors=[{"loc": ["name"], "msg": "Field required"}]
        )
    doc: Document = await _call(_store(request).create, COLLECTION, name, body)
    headers = {"ETag": _etag(doc), "Location": _url(request, "api_get_dataset", name=name)}
    return JSONResponse(_doc_json(doc), status_code=201, headers=headers)


@api_router.put("/datasets/{name}", name="api_update_dataset")
async def api_update(request: Request, name: str) -> Response:
    match = _if_match(request)
    if match is None:
        raise ApiError(
            428,
            "precondition_required",
            "send If-Match with the ETag (revision) you read, so that no change is lost",
        )
    body = await _json_body(request)
    store = _store(request)
    if match == "*":
        match = (await _call(store.get, COLLECTION, name)).revision
    doc: Document = await _call(store.update, COLLECTION, name, body, revision=match)
    return JSONResponse(_doc_json(doc), headers={"ETag": _etag(doc)})


@api_router.delete("/datasets/{name}", name="api_delete_dataset", status_code=204)
async def api_delete(request: Request, name: str) -> Response:
    match = _if_match(request)
    revision = None if match in (None, "*") else match
    await _call(_store(request).delete, COLLECTION, name, revision=revision)
    return Response(status_code=204)


# --------------------------------------------------------------------------------------------
# Preview


async def _multipart(request: Request) -> dict[str, str | UploadFile]:
    """Parse the preview's multipart body, refusing it with 413 once it passes the cap."""
    cap = PREVIEW_MAX_BYTES + _MULTIPART_OVERHEAD

    async def capped() -> AsyncGenerator[bytes, None]:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:
                raise ApiError(413, "too_large", f"the image is over {PREVIEW_MAX_BYTES} bytes")
            yield chunk

    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise ApiError(413, "too_large", f"the image is over {PREVIEW_MAX_BYTES} bytes")
    parser = MultiPartParser(
        request.headers, capped(), max_files=1, max_fields=500, max_part_size=64 * 1024
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise ApiError(400, "bad_multipart", str(exc)) from None
    return dict(form.items())


def _data_url(image: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(encode(image, "png")).decode("ascii")


def _preview_spec(values: Mapping[str, str]) -> DatasetSpec:
    """The form's settings as a spec; name and source play no part in a preview."""
    if not any(k != csrf.CSRF_FIELD for k in values):
        return DatasetSpec(name="preview", source="preview")  # a script sent only the image
    doc = values_to_doc(values, "preview")
    doc["source"] = "preview"
    try:
        return DatasetSpec.model_validate(doc)
    except PydanticValidationError as exc:
        errors: list[dict[str, object]] = [
            {"loc": list(e["loc"]), "msg": e["msg"]}
            for e in exc.errors(include_url=False, include_context=False)
        ]
        fields = map_errors(errors, doc)
        raise ValidationError(
            "fix the form first: "
            + "; ".join(f"{k or 'form'}: {', '.join(m)}" for k, m in fields.items()),
            errors=errors,
        ) from None


def _preview_hw(spec: DatasetSpec) -> tuple[tuple[int, int], str]:
    h, w = spec.height, spec.width
    scale = min(1.0, PREVIEW_MAX_SIDE / max(h, w))
    if scale >= 1.0:
        return (h, w), ""
    out = (max(8, round(h * scale)), max(8, round(w * scale)))
    return out, f"previewed at {out[1]}x{out[0]} instead of {w}x{h}"


@api_router.post("/preview", name="web_preview")
async def preview(request: Request) -> Response:
    """Face crop, degraded copy and enhanced copy of one uploaded image, as PNG data URLs.

    The image comes in the body (multipart field ``image``) and nowhere else: the server never
    fetches a URL a client names, and the image is not stored.
    """
    # The token travels in a header: a multipart form posted from another site cannot set one.
    csrf.verify(request, request.headers.get(csrf.CSRF_HEADER))
    pipeline: PreviewPipeline | None = getattr(request.app.state, "pipeline", None)
    if pipeline is None:
        raise ApiError(
            503,
            "pipeline_unavailable",
            "the preview needs the enhancement pipeline, which this server does not run "
            "(app.state.pipeline is not set)",
        )
    if _media_type(request) != "multipart/form-data":
        raise ApiError(415, "unsupported_media_type", "send the image as multipart/form-data")
    form = await _multipart(request)
    upload = form.pop("image", None)
    if not isinstance(upload, UploadFile):
        raise ApiError(422, "no_image", "the multipart field 'image' must hold an image file")
    try:
        data = await upload.read(PREVIEW_MAX_BYTES + 1)
    finally:
        await upload.close()
    if len(data) > PREVIEW_MAX_BYTES:
        raise ApiError(413, "too_large", f"the image is over {PREVIEW_MAX_BYTES} bytes")
    values = {k: v for k, v in form.items() if isinstance(v, str)}
    spec = _preview_spec(values)
    limits = DecodeLimits(max_pixels=PREVIEW_MAX_PIXELS, max_bytes=PREVIEW_MAX_BYTES)
    image = await run_in_threadpool(decode, data, limits=limits)
    out_hw, note = _preview_hw(spec)
    fd = spec.face_detection
    boxes = await pipeline.detect(image) if fd.enabled else []
    if boxes:
        face = crop_faces(image, boxes[:1], margin=fd.margin, out_hw=out_hw)[0]
        policy = "faces"
    else:
        face = centre_crop(image, out_hw)
        policy = "disabled" if not fd.enabled else fd.on_missing.replace("skip", "skipped")
        if policy == "skipped":
            note = "; ".join(
                filter(None, [note, "no face found: the dataset job would skip this image"])
            )
    degraded, applied = await pipeline.degrade(face, list(spec.degradations), spec.seed)
    enhanced, info = await pipeline.enhance(degraded, faces_only=False)
    images = await run_in_threadpool(lambda: [_data_url(i) for i in (face, degraded, enhanced)])
    return JSONResponse(
        {
            "face": images[0],
            "degraded": images[1],
            "enhanced": images[2],
            "policy": policy,
            "boxes": [dataclasses.asdict(b) for b in boxes],
            "applied": applied,
            "enhance": info,
            "note": note,
        }
    )
