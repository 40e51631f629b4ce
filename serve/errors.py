"""HTTP errors of the service: one table from error class to status, one handler.

Every failure a request can cause is raised as a class of the library's hierarchies
(``DeepfixError``, ``ConfigStoreError``) or of pydantic/FastAPI validation, and turned into a
JSON body ``{"error": <short tag>, "detail": <message>}`` here and nowhere else. Errors that
come back from the enhancer replica through a ``DeploymentHandle`` are unwrapped from Ray's
``RayTaskError`` (and Serve's back-pressure refusals translated) in :func:`unwrap_remote`, the
one place where remote calls are awaited.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable
from typing import TypeVar

import pydantic
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from config_store.errors import (
    AlreadyExists,
    ConfigStoreError,
    Conflict,
    NotFound,
    StoreUnavailable,
)
from config_store.errors import ValidationError as StoreValidationError
from deepfix.errors import (
    CorruptImage,
    DeepfixError,
    ImageError,
    ImageTooLarge,
    ModelStoreError,
    RegistryError,
    UnsupportedImage,
)
from deepfix.model_store import ModelNotFound

__all__ = [
    "InvalidRequest",
    "ModelNotReady",
    "Overloaded",
    "ServeError",
    "error_body",
    "install_error_handler",
    "status_for",
    "unwrap_remote",
]

log = logging.getLogger(__name__)

T = TypeVar("T")


class ServeError(DeepfixError):
    """Root of the errors the serving layer itself raises."""


class InvalidRequest(ServeError):
    """The request is malformed in a way no schema caught (e.g. two options that exclude)."""


class ModelNotReady(ServeError):
    """No model is loaded yet (or the alias names nothing loadable)."""


class Overloaded(ServeError):
    """The enhancer's queue is full (Serve's ``max_queued_requests``): retry later."""


# Most specific first is not needed: the lookup walks the exception's MRO, so a child class
# finds its own row before its parent's.
_STATUS: dict[type[BaseException], tuple[int, str]] = {
    ImageTooLarge: (413, "too_large"),
    UnsupportedImage: (415, "unsupported_media_type"),
    CorruptImage: (422, "corrupt_image"),
    ImageError: (422, "bad_image"),
    InvalidRequest: (422, "invalid"),
    ModelNotReady: (503, "model_not_ready"),
    Overloaded: (503, "overloaded"),
    ModelNotFound: (404, "model_not_found"),
    ModelStoreError: (503, "model_store"),
    RegistryError: (422, "unknown_name"),
    DeepfixError: (500, "internal"),
    NotFound: (404, "not_found"),
    StoreValidationError: (422, "invalid"),
    AlreadyExists: (409, "already_exists"),
    Conflict: (409, "conflict"),
    StoreUnavailable: (503, "store_unavailable"),
    ConfigStoreError: (500, "config_store"),
    pydantic.ValidationError: (422, "invalid"),
    RequestValidationError: (422, "invalid"),
}


def status_for(exc: BaseException) -> tuple[int, str]:
    """``(HTTP status, error tag)`` of an exception; 500 for anything not in the table."""
    if isinstance(exc, StarletteHTTPException):
        tag = re.sub(r"[^a-z0-9]+", "_", str(exc.detail).lower()).strip("_") or "http_error"
        return exc.status_code, tag
    for cls in type(exc).__mro__:
        if cls in _STATUS:
            return _STATUS[cls]
    return 500, "internal"


def _detail(exc: BaseException) -> str:
    if isinstance(exc, RequestValidationError | pydantic.ValidationError):
        parts = []
        for e in exc.errors()[:5]:
            where = ".".join(str(p) for p in e.get("loc", ()))
            parts.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
        return "; ".join(parts)
    if isinstance(exc, StarletteHTTPException):
        return str(exc.detail)
    return str(exc) or type(exc).__name__


def error_body(exc: BaseException) -> tuple[int, dict[str, str]]:
    """The status and JSON body the handler answers ``exc`` with."""
    status, tag = status_for(exc)
    detail = _detail(exc) if status < 500 or isinstance(exc, ServeError) else _safe(exc)
    return status, {"error": tag, "detail": detail}


def _safe(exc: BaseException) -> str:
    # Server-side failures keep their message (operators read it) but never a traceback.
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


async def _handle(request: Request, exc: Exception) -> JSONResponse:
    status, body = error_body(exc)
    if status >= 500:
        log.error("%s %s -> %d: %s", request.method, request.url.path, status, exc, exc_info=exc)
    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse(body, status_code=status, headers=headers)


def install_error_handler(app: FastAPI) -> None:
    """Route every error class of the table (and unknown ones, as 500) to the one handler."""
    for cls in (
        DeepfixError,
        ConfigStoreError,
        pydantic.ValidationError,
        RequestValidationError,
        StarletteHTTPException,
        Exception,
    ):
        app.add_exception_handler(cls, _handle)


async def unwrap_remote(call: Awaitable[T]) -> T:
    """Await a ``DeploymentHandle`` response, re-raising the replica's own error class.

    Ray wraps a remote exception in ``RayTaskError``; its ``cause`` is the original
    ``DeepfixError``/``ConfigStoreError`` that the table knows. Serve's ``BackPressureError``
    (the enhancer's queue is full) becomes :class:`Overloaded`.
    """
    from ray.exceptions import RayTaskError
    from ray.serve.exceptions import BackPressureError

    try:
        return await call
    except BackPressureError as exc:
        raise Overloaded(f"the enhancer is at capacity; retry shortly ({exc})") from None
    except RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, DeepfixError | ConfigStoreError | pydantic.ValidationError):
            raise cause from None
        raise
