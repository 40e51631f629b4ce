"""Where prepared datasets, models and training runs are written.

``DEEPFIX_STORAGE`` names a shared root URI (``s3://bucket/deepfix``, ``gs://...``, or a shared
filesystem path) that every node of a cluster can read; without it, everything goes under the
local ``$DEEPFIX_HOME`` — right for the single-machine stack, wrong for a multi-node cluster,
where a worker cannot read the head's disk.
"""

from __future__ import annotations

import os

from config_store.settings import deepfix_home

__all__ = ["join", "storage_root"]


def storage_root() -> str:
    """``$DEEPFIX_STORAGE`` (a path or URI), else ``$DEEPFIX_HOME``."""
    root = os.environ.get("DEEPFIX_STORAGE", "").strip()
    return root.rstrip("/") if root else str(deepfix_home())


def join(root: str, *parts: str) -> str:
    """Join path segments onto a local path or a URI with ``/`` (never ``os.sep`` for URIs)."""
    return "/".join([root.rstrip("/"), *(p.strip("/") for p in parts)])
