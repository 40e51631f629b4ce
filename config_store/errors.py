"""The one error hierarchy of config_store.

Backend failures (requests, the etcd gateway) are translated into these in one place,
``config_store._etcd.translate_errors``; callers catch ``ConfigStoreError`` or a child.
"""

from __future__ import annotations

__all__ = [
    "AlreadyExists",
    "ConfigStoreError",
    "Conflict",
    "DocumentTooLarge",
    "HistoryCompacted",
    "NotFound",
    "StoreUnavailable",
    "ValidationError",
]


class ConfigStoreError(Exception):
    """Root of every error config_store raises."""


class NotFound(ConfigStoreError):
    """The document (or collection entry) does not exist."""


class AlreadyExists(ConfigStoreError):
    """``create`` found a document under that name already."""


class Conflict(ConfigStoreError):
    """The document changed since the revision the caller read; nothing was written."""

    def __init__(self, message: str, *, current_revision: int | None = None) -> None:
        super().__init__(message)
        self.current_revision = current_revision


class ValidationError(ConfigStoreError):
    """The document does not satisfy its collection's schema, or a name is not a slug."""

    def __init__(self, message: str, *, errors: list[dict[str, object]] | None = None) -> None:
        super().__init__(message)
        # pydantic-style error list ({"loc": [...], "msg": ...}) so UIs can show errors per field.
        self.errors = errors or []


class DocumentTooLarge(ValidationError):
    """The serialised document is over the store's size cap; it was not sent."""


class HistoryCompacted(ConfigStoreError):
    """etcd compacted the revisions that held earlier versions of a document."""


class StoreUnavailable(ConfigStoreError):
    """etcd cannot be reached at any configured endpoint."""
