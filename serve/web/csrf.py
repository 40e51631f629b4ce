"""CSRF tokens and signed cookies for the web pages: the signed double-submit cookie pattern.

OWASP's "Cross-Site Request Forgery Prevention Cheat Sheet", signed double-submit cookie:

- the first page that renders a form sets ``deepfix_csrf``, a random nonce, as an ``HttpOnly``,
  ``SameSite=Strict`` cookie;
- every form carries ``csrf_token = HMAC-SHA256(secret, "csrf:" + nonce)`` in a hidden field
  (the preview's ``fetch`` sends the same value in the ``X-CSRF-Token`` header);
- a POST is accepted only when the cookie is present and the token is its HMAC.

Another site can make the browser send the cookie (SameSite aside) but can neither read it nor
compute the HMAC without the server's secret, and a cookie it manages to plant (a sibling
subdomain) comes without a matching token.

The secret comes from ``DEEPFIX_WEB_SECRET``. Without it one is generated per process, which
is fine for one process but breaks every form rendered by one Serve replica and posted to
another: **set ``DEEPFIX_WEB_SECRET`` to the same value on every replica** (for example through
the Serve application's ``runtime_env.env_vars``). The same secret signs the flash-message
cookie (``sign``/``unsign``).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import logging
import os
import secrets

from fastapi import Request, Response

__all__ = [
    "CSRF_COOKIE",
    "CSRF_FIELD",
    "CSRF_HEADER",
    "SECRET_ENV",
    "CsrfError",
    "cookie_path",
    "issue",
    "set_cookie",
    "sign",
    "token_for",
    "unsign",
    "verify",
]

logger = logging.getLogger(__name__)

SECRET_ENV = "DEEPFIX_WEB_SECRET"
SECURE_COOKIES_ENV = "DEEPFIX_WEB_SECURE_COOKIES"
CSRF_COOKIE = "deepfix_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
_MIN_SECRET_BYTES = 16


class CsrfError(Exception):
    """The request carries no CSRF cookie, no token, or a token that is not the cookie's."""


@functools.cache
def _secret() -> bytes:
    """The signing key: ``DEEPFIX_WEB_SECRET`` or, failing that, random for this process."""
    configured = os.environ.get(SECRET_ENV, "")
    if configured:
        if len(configured.encode()) < _MIN_SECRET_BYTES:
            logger.warning(
                "%s is shorter than %d bytes; use a long random value",
                SECRET_ENV,
                _MIN_SECRET_BYTES,
            )
        return configured.encode()
    logger.warning(
        "%s is not set: generated a per-process secret. Forms only work when they are posted "
        "back to the replica that rendered them; set %s to one shared value on every replica.",
        SECRET_ENV,
        SECRET_ENV,
    )
    return secrets.token_bytes(32)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(purpose: str, payload: bytes) -> str:
    # The purpose label keeps a value signed for one use (a flash message) from passing as
    # another (a CSRF token).
    return _b64(hmac.new(_secret(), purpose.encode() + b":" + payload, hashlib.sha256).digest())


def sign(purpose: str, payload: bytes) -> str:
    """``payload`` as text with its signature, for a cookie: ``<b64 payload>.<b64 mac>``."""
    return f"{_b64(payload)}.{_mac(purpose, payload)}"


def unsign(purpose: str, value: str | None) -> bytes | None:
    """The payload of a ``sign``-ed value, or None when it is missing, malformed or forged."""
    if not value or "." not in value:
        return None
    body, _, mac = value.partition(".")
    try:
        payload = _unb64(body)
    except (ValueError, TypeError):
        return None
    if not hmac.compare_digest(mac, _mac(purpose, payload)):
        return None
    return payload


def _secure(request: Request) -> bool:
    return request.url.scheme == "https" or os.environ.get(SECURE_COOKIES_ENV, "") == "1"


def cookie_path(request: Request) -> str:
    """``/`` under the app's mount point, so the cookie reaches every page of the app."""
    return (request.scope.get("root_path") or "").rstrip("/") + "/"


def issue(request: Request) -> tuple[str, str | None]:
    """The form token for this browser, and a new nonce to set as cookie when it has none."""
    nonce = request.cookies.get(CSRF_COOKIE, "")
    fresh = None
    if len(nonce) < 32:
        nonce = fresh = secrets.token_urlsafe(32)
    return _mac("csrf", nonce.encode()), fresh


def set_cookie(request: Request, response: Response, nonce: str) -> None:
    """Set the nonce cookie that ``issue`` created on ``response``."""
    response.set_cookie(
        CSRF_COOKIE,
        nonce,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
        path=cookie_path(request),
    )


def token_for(request: Request) -> str | None:
    """The token that matches the request's cookie, or None when it has none yet."""
    nonce = request.cookies.get(CSRF_COOKIE, "")
    return _mac("csrf", nonce.encode()) if len(nonce) >= 32 else None


def verify(request: Request, submitted: str | None) -> None:
    """Raise ``CsrfError`` unless ``submitted`` is the token of the request's cookie."""
    expected = token_for(request)
    if expected is None:
        raise CsrfError("the CSRF cookie is missing: reload the page and submit again")
    if not submitted or not hmac.compare_digest(submitted, expected):
        raise CsrfError("the form's CSRF token does not match: reload the page and submit again")
