"""``config.get``: the paper's one-line read of a dataset parameter set.

    from config_store import config
    config.get("deepfake_1")                 # the whole validated document (a dict)
    config.get("deepfake_1", "crop.mode")    # one value by dotted path
    config.get("deepfake_1", "seed", default=0)

Reads go to etcd each time (linearizable). ``config.cached()`` gives a reader that keeps
documents in memory and drops them when a watch on the collection reports a change — for hot
loops such as a Serve replica reading its spec per request.
"""

from __future__ import annotations

import copy
import logging
import threading
from typing import Any

from config_store.errors import ConfigStoreError, NotFound
from config_store.store import ConfigStore, Watcher

__all__ = ["CachedConfig", "Config", "config", "lookup"]

log = logging.getLogger(__name__)
_MISSING: Any = object()


def lookup(document: dict[str, Any], key: str, default: Any = _MISSING) -> Any:
    """Follow a dotted path (``crop.mode``, ``degradations.0.p``) through dicts and lists."""
    node: Any = document
    for part in key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif (
            isinstance(node, list)
            and part.lstrip("-").isdigit()
            and -len(node) <= int(part) < len(node)
        ):
            node = node[int(part)]
        else:
            if default is not _MISSING:
                return default
            raise NotFound(f"key {key!r} is not in the document (stopped at {part!r})")
    return node


class Config:
    """Reads documents by name; creates its ``ConfigStore`` lazily, on first use."""

    def __init__(self, store: ConfigStore | None = None, *, collection: str = "datasets") -> None:
        self._store = store
        self.collection = collection
        self._lock = threading.Lock()

    @property
    def store(self) -> ConfigStore:
        with self._lock:
            if self._store is None:
                self._store = ConfigStore()
            return self._store

    def use(self, store: ConfigStore | None) -> None:
        """Point this reader at another store (None: re-resolve from the environment)."""
        with self._lock:
            self._store = store

    def _document(self, name: str, collection: str) -> dict[str, Any]:
        return self.store.get(collection, name).value

    def get(
        self,
        name: str,
        key: str | None = None,
        default: Any = _MISSING,
        *,
        collection: str | None = None,
    ) -> Any:
        """The document ``name`` (a dict), or one value of it by dotted ``key``.

        ``default`` answers a missing key — or a missing document — instead of ``NotFound``.
        """
        try:
            doc = self._document(name, collection or self.collection)
        except NotFound:
            if default is not _MISSING:
                return default
            raise
        return doc if key is None else lookup(doc, key, default)

    def cached(self, collection: str | None = None) -> CachedConfig:
        return CachedConfig(self.store, collection=collection or self.collection)


class CachedConfig(Config):
    """A ``Config`` whose reads are served from memory, invalidated by an etcd watch."""

    def __init__(self, store: ConfigStore, *, collection: str = "datasets") -> None:
        super().__init__(store, collection=collection)
        self._cache: dict[tuple[str, str], dict[str, Any]] = {}
        self._cache_lock = threading.Lock()
        self._watchers: dict[str, Watcher] = {}

    def _ensure_watch(self, collection: str) -> bool:
        if collection in self._watchers:
            return True
        try:
            # Start the watch from the current revision before the first read, so no change
            # between read and watch can be missed.
            start = self.store.revision() + 1
            watcher = self.store.watch(collection, start_revision=start)
        except ConfigStoreError as exc:
            log.warning("cache disabled for %s: cannot watch (%s)", collection, exc)
            return False
        self._watchers[collection] = watcher
        threading.Thread(
            target=self._invalidate,
            args=(collection, watcher),
            daemon=True,
            name=f"config-watch-{collection}",
        ).start()
        return True

    def _invalidate(self, collection: str, watcher: Watcher) -> None:
        try:
            for event in watcher:
                with self._cache_lock:
                    self._cache.pop((collection, event.name), None)
        except Exception as exc:  # the watch stream broke: stop trusting the cache
            log.warning("watch on %s ended (%s); cache cleared", collection, exc)
        with self._cache_lock:
            for k in [k for k in self._cache if k[0] == collection]:
                del self._cache[k]
            self._watchers.pop(collection, None)

    def _document(self, name: str, collection: str) -> dict[str, Any]:
        with self._cache_lock:
            hit = self._cache.get((collection, name))
        if hit is not None:
            return copy.deepcopy(hit)
        watching = self._ensure_watch(collection)
        value = self.store.get(collection, name).value
        if watching:
            with self._cache_lock:
                self._cache[(collection, name)] = value
        return copy.deepcopy(value)

    def close(self) -> None:
        for watcher in list(self._watchers.values()):
            watcher.cancel()
        self._watchers.clear()


config = Config()
