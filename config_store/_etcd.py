"""A thin layer over etcd3gw: endpoint failover, base64 keys, and error translation.

Everything that talks HTTP to etcd's v3 JSON gateway goes through ``EtcdGateway``; gateway and
requests exceptions become config_store errors in ``translate_errors`` and nowhere else.
"""

from __future__ import annotations

import base64
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit

import requests
from etcd3gw import exceptions as gw_exc
from etcd3gw.client import Etcd3Client

from config_store.errors import ConfigStoreError, HistoryCompacted, StoreUnavailable
from config_store.settings import EtcdSettings

P = ParamSpec("P")
R = TypeVar("R")

START_HINT = (
    "start the local stack with `deepfix up` (or `make demo`), or point DEEPFIX_ETCD at a "
    "running etcd"
)


def b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def unb64(data: str) -> bytes:
    return base64.b64decode(data)


def prefix_end(prefix: str) -> str:
    """etcd's range_end for "every key starting with prefix" (last byte + 1)."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return b64(bytes(raw))


def _is_compacted(detail: str) -> bool:
    return "compacted" in detail


def translate_errors(endpoint_of: Callable[[], str]) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorator: map etcd3gw/requests failures to config_store errors, naming the endpoint."""

    def deco(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return fn(*args, **kwargs)
            except ConfigStoreError:
                raise
            except (
                gw_exc.ConnectionFailedError,
                gw_exc.ConnectionTimeoutError,
                requests.ConnectionError,
                requests.Timeout,
            ) as exc:
                raise StoreUnavailable(
                    f"etcd is not reachable at {endpoint_of()}: {START_HINT}"
                ) from exc
            except gw_exc.Etcd3Exception as exc:
                detail = exc.detail_text or str(exc)
                if _is_compacted(detail):
                    raise HistoryCompacted(
                        "earlier versions were compacted by etcd and can no longer be read"
                    ) from exc
                raise ConfigStoreError(
                    f"etcd at {endpoint_of()} refused the request: {detail}"
                ) from exc
            except requests.RequestException as exc:
                raise StoreUnavailable(f"etcd request to {endpoint_of()} failed: {exc}") from exc

        return wrapper

    return deco


class EtcdGateway:
    """Talks to the first reachable endpoint; moves to the next on connection failure."""

    def __init__(self, settings: EtcdSettings) -> None:
        if not settings.endpoints:
            raise StoreUnavailable(f"no etcd endpoint configured: {START_HINT}")
        self.settings = settings
        self._clients = [self._make_client(ep) for ep in settings.endpoints]
        self._current = 0
        self._lock = threading.Lock()

    def _make_client(self, endpoint: str) -> Etcd3Client:
        parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise StoreUnavailable(f"bad etcd endpoint {endpoint!r}: use http(s)://host:port")
        s = self.settings
        return Etcd3Client(
            host=parts.hostname,
            port=parts.port or 2379,
            protocol=parts.scheme,
            ca_cert=s.ca,
            cert_cert=s.cert,
            cert_key=s.key,
            timeout=s.timeout,
            # etcd >= 3.4 serves /v3/; naming it skips a discovery round trip per client.
            api_path="/v3/",
        )

    @property
    def endpoint(self) -> str:
        return self.settings.endpoints[self._current]

    @property
    def client(self) -> Etcd3Client:
        return self._clients[self._current]

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to the gateway ``path``, failing over between endpoints."""

        @translate_errors(lambda: ", ".join(self.settings.endpoints))
        def _call() -> dict[str, Any]:
            last: Exception | None = None
            for _ in range(len(self._clients)):
                client = self.client
                try:
                    result: dict[str, Any] = client.post(client.get_url(path), json=body)
                    return result
                except (gw_exc.ConnectionFailedError, gw_exc.ConnectionTimeoutError) as exc:
                    last = exc
                    with self._lock:
                        self._current = (self._current + 1) % len(self._clients)
            assert last is not None
            raise last

        return _call()

    def watch(
        self, key: str, *, prefix: bool, start_revision: int | None
    ) -> tuple[Iterator[dict[str, Any]], Callable[[], None]]:
        """Start a watch; returns the event iterator and the function that cancels it."""
        client = self.client
        kwargs: dict[str, Any] = {}
        if start_revision is not None:
            kwargs["start_revision"] = start_revision
        start = client.watch_prefix if prefix else client.watch
        events, cancel = translate_errors(lambda: self.endpoint)(start)(key, **kwargs)
        return events, cancel  # type: ignore[return-value]
