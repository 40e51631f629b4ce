"""Where clients find etcd: ``DEEPFIX_ETCD``, else what ``deepfix up`` recorded, else loopback.

``DEEPFIX_HOME`` (default ``~/.local/share/deepfix``) holds the local stack's data and its
``run/`` records; TLS client material comes from ``DEEPFIX_ETCD_CA``/``_CERT``/``_KEY``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel

__all__ = [
    "DEFAULT_ENDPOINT",
    "EtcdSettings",
    "deepfix_home",
    "etcd_record_path",
    "resolve_settings",
]

DEFAULT_ENDPOINT = "http://127.0.0.1:2379"


class EtcdSettings(BaseModel):
    endpoints: list[str]
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    timeout: float = 5.0
    source: str = "default"  # which rule chose the endpoints, shown by `status` and errors


def deepfix_home() -> Path:
    return Path(os.environ.get("DEEPFIX_HOME") or Path.home() / ".local/share/deepfix")


def etcd_record_path() -> Path:
    """The file in which ``deepfix up`` records the local etcd it started."""
    return deepfix_home() / "run" / "etcd.json"


def _split(endpoints: str) -> list[str]:
    return [e.strip().rstrip("/") for e in endpoints.split(",") if e.strip()]


def resolve_settings(
    endpoints: str | list[str] | None = None, timeout: float = 5.0
) -> EtcdSettings:
    """Resolve endpoints by the documented precedence: argument, env, local record, default."""
    tls = {
        "ca": os.environ.get("DEEPFIX_ETCD_CA") or None,
        "cert": os.environ.get("DEEPFIX_ETCD_CERT") or None,
        "key": os.environ.get("DEEPFIX_ETCD_KEY") or None,
    }
    if endpoints:
        eps = _split(endpoints) if isinstance(endpoints, str) else list(endpoints)
        return EtcdSettings(endpoints=eps, timeout=timeout, source="argument", **tls)
    env = os.environ.get("DEEPFIX_ETCD")
    if env:
        return EtcdSettings(endpoints=_split(env), timeout=timeout, source="DEEPFIX_ETCD", **tls)
    record = etcd_record_path()
    try:
        recorded = json.loads(record.read_text())["endpoint"]
    except (OSError, ValueError, KeyError):
        recorded = None
    if recorded:
        return EtcdSettings(endpoints=[recorded], timeout=timeout, source=str(record), **tls)
    return EtcdSettings(endpoints=[DEFAULT_ENDPOINT], timeout=timeout, source="default", **tls)
