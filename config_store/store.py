"""Collections of JSON documents on etcd, with optimistic concurrency.

Keys are ``/deepfix/<collection>/<name>``. Every write that must not clobber a concurrent one
is an etcd transaction comparing the key's ``mod_revision`` (or ``create_revision == 0`` for
create), so a stale writer gets ``Conflict`` and nothing is written — the pattern of etcd's own
STM and of python-etcd3's ``replace``.
"""

from __future__ import annotations

import builtins
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import pydantic

from config_store._etcd import EtcdGateway, b64, prefix_end, unb64
from config_store.collections import check_name, get_collection
from config_store.errors import (
    AlreadyExists,
    Conflict,
    DocumentTooLarge,
    HistoryCompacted,
    NotFound,
    ValidationError,
)
from config_store.settings import EtcdSettings, resolve_settings

__all__ = [
    "MAX_DOCUMENT_BYTES",
    "ConfigStore",
    "Document",
    "History",
    "WatchEvent",
    "Watcher",
]

log = logging.getLogger(__name__)

# etcd refuses requests over 1.5 MiB; documents are parameter sets, never images, so a far lower
# cap catches mistakes (an image pasted into a field) before they reach the wire.
MAX_DOCUMENT_BYTES = 256 * 1024
KEY_ROOT = "/deepfix"


@dataclass(frozen=True)
class Document:
    """One stored document and the etcd revisions that identify this version of it."""

    collection: str
    name: str
    value: dict[str, Any]
    revision: int  # etcd mod_revision: pass it back to update/delete
    create_revision: int
    version: int  # 1 on create, +1 per write


@dataclass(frozen=True)
class History:
    versions: list[Document]  # newest first
    compacted: bool  # True when older versions existed but etcd compacted them away


@dataclass(frozen=True)
class WatchEvent:
    type: Literal["put", "delete"]
    collection: str
    name: str
    value: dict[str, Any] | None
    revision: int


@dataclass
class Watcher:
    """Iterator of ``WatchEvent``s; ``cancel()`` (or leaving the ``with``) stops it."""

    _events: Iterator[WatchEvent]
    _cancel: Callable[[], None]
    _closed: bool = field(default=False)

    def __iter__(self) -> Iterator[WatchEvent]:
        return self._events

    def __next__(self) -> WatchEvent:
        return next(self._events)

    def cancel(self) -> None:
        if not self._closed:
            self._closed = True
            self._cancel()

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _kv_document(collection: str, name: str, kv: dict[str, Any]) -> Document:
    return Document(
        collection=collection,
        name=name,
        value=json.loads(unb64(kv["value"])) if kv.get("value") else {},
        revision=int(kv.get("mod_revision", 0)),
        create_revision=int(kv.get("create_revision", 0)),
        version=int(kv.get("version", 0)),
    )


def _constant(value: dict[str, Any]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda _old: value


class ConfigStore:
    """A client for deepfix's documents in etcd.

    Args:
        endpoints: etcd endpoints; None resolves ``DEEPFIX_ETCD``, the local stack's record,
            then ``http://127.0.0.1:2379``.
        timeout: seconds per etcd request, so an unreachable etcd fails fast.
        settings: fully resolved settings (overrides ``endpoints``/``timeout``).
    """

    def __init__(
        self,
        endpoints: str | list[str] | None = None,
        *,
        timeout: float = 5.0,
        settings: EtcdSettings | None = None,
    ) -> None:
        self.settings = settings or resolve_settings(endpoints, timeout)
        self._gw = EtcdGateway(self.settings)

    @property
    def endpoint(self) -> str:
        return self._gw.endpoint

    # -- keys -------------------------------------------------------------------------------

    @staticmethod
    def key(collection: str, name: str) -> str:
        return f"{KEY_ROOT}/{check_name('collection', collection)}/{check_name('document', name)}"

    @staticmethod
    def _prefix(collection: str) -> str:
        return f"{KEY_ROOT}/{check_name('collection', collection)}/"

    # -- validation -------------------------------------------------------------------------

    def validate(
        self,
        collection: str,
        name: str,
        value: dict[str, Any],
        *,
        created_at: str | None = None,
    ) -> dict[str, Any]:
        """Return the document as it would be stored: schema-validated, defaults filled, stamped.

        Raises ``ValidationError`` (with per-field errors) or ``DocumentTooLarge``.
        """
        check_name("document", name)
        if not isinstance(value, dict):
            raise ValidationError(f"{collection}/{name}: a document is a JSON object")
        schema = get_collection(collection)
        doc = dict(value)
        if schema is not None:
            if schema.name_field:
                given = doc.setdefault(schema.name_field, name)
                if given != name:
                    raise ValidationError(
                        f"{collection}/{name}: field {schema.name_field!r} is {given!r}, "
                        f"but the document is stored as {name!r}",
                        errors=[{"loc": [schema.name_field], "msg": "must equal the key name"}],
                    )
            if schema.timestamps:
                now = _now()
                doc["created_at"] = created_at or doc.get("created_at") or now
                doc["updated_at"] = now
            try:
                model = schema.model.model_validate(doc)
            except pydantic.ValidationError as exc:
                errors: list[dict[str, object]] = [
                    {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
                    for e in exc.errors(include_url=False, include_context=False)
                ]
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"]) or "document"
                more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
                raise ValidationError(
                    f"{collection}/{name}: {where}: {first['msg']}{more}", errors=errors
                ) from None
            doc = model.model_dump(mode="json")
        size = len(json.dumps(doc, separators=(",", ":")).encode())
        if size > MAX_DOCUMENT_BYTES:
            raise DocumentTooLarge(
                f"{collection}/{name}: document is {size} bytes, over the "
                f"{MAX_DOCUMENT_BYTES}-byte cap (store paths/URIs, never image data)"
            )
        return doc

    # -- reads ------------------------------------------------------------------------------

    def _range(self, key: str, *, revision: int | None = None) -> dict[str, Any] | None:
        body: dict[str, Any] = {"key": b64(key)}
        if revision is not None:
            body["revision"] = revision
        resp = self._gw.call("/kv/range", body)
        kvs = resp.get("kvs") or []
        return kvs[0] if kvs else None

    def get(self, collection: str, name: str) -> Document:
        """The current document; linearizable (etcd's default range read)."""
        kv = self._range(self.key(collection, name))
        if kv is None:
            raise NotFound(f"{collection}/{name} does not exist")
        return _kv_document(collection, name, kv)

    def exists(self, collection: str, name: str) -> bool:
        try:
            self.get(collection, name)
        except NotFound:
            return False
        return True

    def list(self, collection: str) -> builtins.list[Document]:
        """Every document of the collection, sorted by name (one range read: one revision)."""
        prefix = self._prefix(collection)
        resp = self._gw.call(
            "/kv/range",
            {"key": b64(prefix), "range_end": prefix_end(prefix), "sort_target": "KEY"},
        )
        docs = []
        for kv in resp.get("kvs") or []:
            name = unb64(kv["key"]).decode()[len(prefix) :]
            docs.append(_kv_document(collection, name, kv))
        return docs

    def revision(self) -> int:
        """The store's current revision (a consistent point to export or watch from)."""
        resp = self._gw.call("/kv/range", {"key": b64(KEY_ROOT), "count_only": True})
        return int(resp["header"]["revision"])

    # -- writes -----------------------------------------------------------------------------

    def _txn(
        self, compare: builtins.list[dict[str, Any]], success: builtins.list[dict[str, Any]]
    ) -> tuple[bool, int]:
        resp = self._gw.call("/kv/txn", {"compare": compare, "success": success, "failure": []})
        # The gateway omits false booleans, so an absent "succeeded" means the compare failed.
        return bool(resp.get("succeeded", False)), int(resp["header"]["revision"])

    def _stored(self, collection: str, name: str, doc: dict[str, Any]) -> str:
        return b64(json.dumps(doc, separators=(",", ":"), sort_keys=True))

    def create(self, collection: str, name: str, value: dict[str, Any]) -> Document:
        """Create ``name``; ``AlreadyExists`` if any document holds the key (atomically)."""
        key = self.key(collection, name)
        doc = self.validate(collection, name, value, created_at=_now())
        ok, rev = self._txn(
            [{"key": b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": 0}],
            [{"request_put": {"key": b64(key), "value": self._stored(collection, name, doc)}}],
        )
        if not ok:
            raise AlreadyExists(f"{collection}/{name} already exists")
        return Document(collection, name, doc, revision=rev, create_revision=rev, version=1)

    def update(
        self, collection: str, name: str, value: dict[str, Any], *, revision: int
    ) -> Document:
        """Replace ``name`` if it is still at ``revision``; else ``Conflict`` and no write."""
        key = self.key(collection, name)
        current = self.get(collection, name)
        if current.revision != revision:
            raise Conflict(
                f"{collection}/{name} changed since revision {revision} "
                f"(now {current.revision}); re-read and apply your change again",
                current_revision=current.revision,
            )
        doc = self.validate(collection, name, value, created_at=current.value.get("created_at"))
        ok, rev = self._txn(
            [{"key": b64(key), "result": "EQUAL", "target": "MOD", "mod_revision": revision}],
            [{"request_put": {"key": b64(key), "value": self._stored(collection, name, doc)}}],
        )
        if not ok:
            # Someone wrote between our read and the txn: the txn guarded it, report it.
            latest = self._range(key)
            raise Conflict(
                f"{collection}/{name} changed since revision {revision}; re-read and retry",
                current_revision=int(latest["mod_revision"]) if latest else None,
            )
        return Document(
            collection,
            name,
            doc,
            revision=rev,
            create_revision=current.create_revision,
            version=current.version + 1,
        )

    def modify(
        self,
        collection: str,
        name: str,
        change: Callable[[dict[str, Any]], dict[str, Any]],
        *,
        attempts: int = 50,
    ) -> Document:
        """Read-modify-write with retry on ``Conflict``: ``change`` gets a copy of the value."""
        for attempt in range(attempts):
            current = self.get(collection, name)
            try:
                return self.update(
                    collection,
                    name,
                    change(json.loads(json.dumps(current.value))),
                    revision=current.revision,
                )
            except Conflict:
                # Back off a little so that contending writers do not retry in lock-step.
                time.sleep(min(0.05, 0.002 * (attempt + 1)))
        raise Conflict(f"{collection}/{name}: gave up after {attempts} conflicting attempts")

    def put(self, collection: str, name: str, value: dict[str, Any]) -> Document:
        """Create or overwrite without a revision check (import with --overwrite, records)."""
        try:
            return self.create(collection, name, value)
        except AlreadyExists:
            return self.modify(collection, name, _constant(value))

    def delete(self, collection: str, name: str, *, revision: int | None = None) -> None:
        """Delete ``name``; with ``revision``, only if it is still at that revision."""
        key = self.key(collection, name)
        if revision is None:
            compare = [
                {"key": b64(key), "result": "GREATER", "target": "CREATE", "create_revision": 0}
            ]
        else:
            compare = [
                {"key": b64(key), "result": "EQUAL", "target": "MOD", "mod_revision": revision}
            ]
        ok, _ = self._txn(compare, [{"request_delete_range": {"key": b64(key)}}])
        if ok:
            return
        latest = self._range(key)
        if latest is None:
            raise NotFound(f"{collection}/{name} does not exist")
        raise Conflict(
            f"{collection}/{name} changed since revision {revision} "
            f"(now {latest['mod_revision']}); not deleted",
            current_revision=int(latest["mod_revision"]),
        )

    # -- history and watch ------------------------------------------------------------------

    def history(self, collection: str, name: str, *, limit: int = 50) -> History:
        """Earlier versions, newest first, read at earlier revisions until etcd compacted them."""
        key = self.key(collection, name)
        current = self.get(collection, name)
        versions = [current]
        compacted = False
        doc = current
        while doc.version > 1 and len(versions) < limit:
            try:
                kv = self._range(key, revision=doc.revision - 1)
            except HistoryCompacted:
                compacted = True
                break
            if kv is None:  # deleted and re-created: the older life is another history
                break
            doc = _kv_document(collection, name, kv)
            versions.append(doc)
        return History(versions=versions, compacted=compacted)

    def watch(
        self,
        collection: str,
        name: str | None = None,
        *,
        start_revision: int | None = None,
    ) -> Watcher:
        """Stream changes to one document, or to the whole collection when ``name`` is None."""
        key = self.key(collection, name) if name else self._prefix(collection)
        prefix_len = len(self._prefix(collection))
        raw_events, cancel = self._gw.watch(key, prefix=name is None, start_revision=start_revision)

        def events() -> Iterator[WatchEvent]:
            for ev in raw_events:
                kv = ev["kv"]
                raw_key = kv["key"]
                doc_name = (raw_key if isinstance(raw_key, str) else raw_key.decode())[prefix_len:]
                if ev.get("type") == "DELETE":
                    yield WatchEvent("delete", collection, doc_name, None, int(kv["mod_revision"]))
                else:
                    raw = kv.get("value") or b"{}"
                    value = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
                    yield WatchEvent("put", collection, doc_name, value, int(kv["mod_revision"]))

        return Watcher(events(), cancel)

    # -- export / import --------------------------------------------------------------------

    def export(self, collection: str) -> dict[str, Any]:
        docs = self.list(collection)
        return {
            "collection": collection,
            "exported_at": _now(),
            "documents": {d.name: d.value for d in docs},
        }

    def import_(
        self, collection: str, data: dict[str, Any], *, overwrite: bool = False
    ) -> dict[str, int]:
        """Load an ``export``: validates every document first, so a bad file writes nothing."""
        if data.get("collection", collection) != collection:
            raise ValidationError(
                f"the file holds collection {data.get('collection')!r}, not {collection!r}"
            )
        documents = data.get("documents")
        if not isinstance(documents, dict):
            raise ValidationError("an import file is {'collection': ..., 'documents': {name: doc}}")
        for name, value in documents.items():
            self.validate(collection, name, value)
        counts = {"created": 0, "replaced": 0, "skipped": 0}
        for name, value in documents.items():
            try:
                self.create(collection, name, value)
                counts["created"] += 1
            except AlreadyExists:
                if overwrite:
                    self.modify(collection, name, _constant(value))
                    counts["replaced"] += 1
                else:
                    counts["skipped"] += 1
        return counts

    def health(self) -> dict[str, Any]:
        """etcd's status of the current endpoint (version, revision, leader)."""
        status = self._gw.call("/maintenance/status", {})
        return {
            "endpoint": self.endpoint,
            "version": status.get("version"),
            "revision": int(status.get("header", {}).get("revision", 0)),
            "db_size": int(status.get("dbSize", status.get("db_size", 0))),
        }
