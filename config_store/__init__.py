"""config_store: JSON documents in etcd with schemas and optimistic concurrency.

Knows etcd and JSON; nothing about images. ``from config_store import config`` for reads.
"""

from config_store.collections import CollectionSchema, get_collection, register_collection
from config_store.config import CachedConfig, Config, config
from config_store.errors import (
    AlreadyExists,
    ConfigStoreError,
    Conflict,
    DocumentTooLarge,
    HistoryCompacted,
    NotFound,
    StoreUnavailable,
    ValidationError,
)
from config_store.settings import EtcdSettings, resolve_settings
from config_store.store import MAX_DOCUMENT_BYTES, ConfigStore, Document, History, WatchEvent

__all__ = [
    "MAX_DOCUMENT_BYTES",
    "AlreadyExists",
    "CachedConfig",
    "CollectionSchema",
    "Config",
    "ConfigStore",
    "ConfigStoreError",
    "Conflict",
    "Document",
    "DocumentTooLarge",
    "EtcdSettings",
    "History",
    "HistoryCompacted",
    "NotFound",
    "StoreUnavailable",
    "ValidationError",
    "WatchEvent",
    "config",
    "get_collection",
    "register_collection",
    "resolve_settings",
]
