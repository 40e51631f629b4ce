"""ConfigStore against a real etcd: every operation and every error class."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import pytest
from pydantic import BaseModel

from config_store import (
    AlreadyExists,
    CollectionSchema,
    ConfigStore,
    Conflict,
    DocumentTooLarge,
    NotFound,
    StoreUnavailable,
    ValidationError,
    register_collection,
)
from config_store.server import free_port

_names = itertools.count()


def uniq(prefix: str = "doc") -> str:
    return f"{prefix}-{next(_names)}-{int(time.time() * 1000) % 100000}"


class Counter(BaseModel):
    count: int = 0
    label: str = ""


register_collection("counters", CollectionSchema(model=Counter))


def dataset(source: str = "/data/faces", **extra: Any) -> dict[str, Any]:
    return {"source": source, **extra}


def test_create_then_get_returns_validated_document_with_defaults(store: ConfigStore) -> None:
    name = uniq("ds")
    created = store.create("datasets", name, dataset())
    got = store.get("datasets", name)
    assert got.value == created.value
    assert got.value["name"] == name
    assert got.value["height"] == 256 and got.value["crop"]["mode"] == "none"
    assert got.revision == created.revision and got.version == 1
    assert got.value["created_at"] and got.value["updated_at"]


def test_create_existing_raises_already_exists_and_keeps_first(store: ConfigStore) -> None:
    name = uniq()
    store.create("datasets", name, dataset(details="first"))
    with pytest.raises(AlreadyExists):
        store.create("datasets", name, dataset(details="second"))
    assert store.get("datasets", name).value["details"] == "first"


def test_get_missing_raises_not_found(store: ConfigStore) -> None:
    with pytest.raises(NotFound):
        store.get("datasets", uniq("missing"))


def test_list_is_sorted_and_scoped_to_collection(store: ConfigStore) -> None:
    names = [f"ls-{uniq()}" for _ in range(3)]
    for n in reversed(names):
        store.create("counters", n, {"count": 1})
    listed = [d.name for d in store.list("counters") if d.name in names]
    assert listed == sorted(names)
    assert not any(d.name in names for d in store.list("datasets"))


def test_update_with_current_revision_writes(store: ConfigStore) -> None:
    name = uniq()
    doc = store.create("datasets", name, dataset())
    new = store.update("datasets", name, {**doc.value, "seed": 7}, revision=doc.revision)
    assert new.revision > doc.revision and new.version == 2
    assert store.get("datasets", name).value["seed"] == 7
    assert store.get("datasets", name).value["created_at"] == doc.value["created_at"]


def test_update_with_stale_revision_conflicts_and_writes_nothing(store: ConfigStore) -> None:
    name = uniq()
    doc = store.create("datasets", name, dataset())
    store.update("datasets", name, {**doc.value, "seed": 1}, revision=doc.revision)
    with pytest.raises(Conflict) as info:
        store.update("datasets", name, {**doc.value, "seed": 2}, revision=doc.revision)
    assert info.value.current_revision is not None
    assert store.get("datasets", name).value["seed"] == 1


def test_update_missing_raises_not_found(store: ConfigStore) -> None:
    with pytest.raises(NotFound):
        store.update("datasets", uniq(), dataset(), revision=1)


def test_delete_with_stale_revision_conflicts(store: ConfigStore) -> None:
    name = uniq()
    doc = store.create("datasets", name, dataset())
    store.update("datasets", name, {**doc.value, "seed": 3}, revision=doc.revision)
    with pytest.raises(Conflict):
        store.delete("datasets", name, revision=doc.revision)
    assert store.exists("datasets", name)


def test_delete_removes_and_second_delete_is_not_found(store: ConfigStore) -> None:
    name = uniq()
    doc = store.create("datasets", name, dataset())
    store.delete("datasets", name, revision=doc.revision)
    assert not store.exists("datasets", name)
    with pytest.raises(NotFound):
        store.delete("datasets", name)


def test_invalid_document_raises_validation_error_with_field(store: ConfigStore) -> None:
    name = uniq()
    with pytest.raises(ValidationError) as info:
        store.create("datasets", name, dataset(height=3))
    assert info.value.errors[0]["loc"] == ["height"]
    assert not store.exists("datasets", name)


def test_bad_name_raises_validation_error(store: ConfigStore) -> None:
    for bad in ("Upper", "-lead", "a/b", "x" * 64, ""):
        with pytest.raises(ValidationError):
            store.create("datasets", bad, dataset())


def test_name_field_must_match_key(store: ConfigStore) -> None:
    with pytest.raises(ValidationError):
        store.create("datasets", uniq(), dataset(name="someone-else"))


def test_oversized_document_is_refused_before_sending(store: ConfigStore) -> None:
    name = uniq()
    with pytest.raises(DocumentTooLarge):
        store.create("free", name, {"blob": "x" * (300 * 1024)})
    assert not store.exists("free", name)


def test_schemaless_collection_accepts_any_object(store: ConfigStore) -> None:
    name = uniq()
    store.create("free", name, {"anything": [1, 2, {"x": None}]})
    assert store.get("free", name).value == {"anything": [1, 2, {"x": None}]}


def test_history_lists_earlier_versions_newest_first(store: ConfigStore) -> None:
    name = uniq()
    doc = store.create("counters", name, {"count": 0})
    for i in range(1, 4):
        doc = store.update("counters", name, {"count": i}, revision=doc.revision)
    hist = store.history("counters", name)
    assert [v.value["count"] for v in hist.versions] == [3, 2, 1, 0]
    assert [v.version for v in hist.versions] == [4, 3, 2, 1]
    assert not hist.compacted


def test_history_reports_compaction(store: ConfigStore) -> None:
    name = uniq()
    doc = store.create("counters", name, {"count": 0})
    doc = store.update("counters", name, {"count": 1}, revision=doc.revision)
    store._gw.call("/kv/compaction", {"revision": doc.revision, "physical": True})
    hist = store.history("counters", name)
    assert [v.value["count"] for v in hist.versions] == [1]
    assert hist.compacted


def test_watch_streams_puts_and_deletes(store: ConfigStore) -> None:
    name = uniq()
    events: list[tuple[str, str]] = []
    with store.watch("counters", name) as watcher:
        got_all = threading.Event()

        def consume() -> None:
            for ev in watcher:
                events.append((ev.type, ev.name))
                if len(events) == 3:
                    got_all.set()
                    return

        threading.Thread(target=consume, daemon=True).start()
        time.sleep(0.3)  # let the watch register before writing
        doc = store.create("counters", name, {"count": 1})
        store.update("counters", name, {"count": 2}, revision=doc.revision)
        store.delete("counters", name)
        assert got_all.wait(10)
    assert events == [("put", name), ("put", name), ("delete", name)]


def test_export_import_round_trip(store: ConfigStore) -> None:
    names = [uniq("ex") for _ in range(2)]
    for n in names:
        store.create("exports", n, {"v": n})
    data = store.export("exports")
    assert {n: {"v": n} for n in names}.items() <= data["documents"].items()
    for n in names:
        store.delete("exports", n)
    counts = store.import_("exports", data)
    assert counts["created"] >= 2
    assert store.get("exports", names[0]).value == {"v": names[0]}
    again = store.import_("exports", data)
    assert again["created"] == 0 and again["skipped"] >= 2


def test_import_validates_everything_before_writing(store: ConfigStore) -> None:
    good, bad = uniq("good"), uniq("bad")
    data = {"collection": "datasets", "documents": {good: dataset(), bad: dataset(width=1)}}
    with pytest.raises(ValidationError):
        store.import_("datasets", data)
    assert not store.exists("datasets", good)


def test_no_lost_update_under_eight_concurrent_writers(store: ConfigStore) -> None:
    name = uniq("race")
    store.create("counters", name, {"count": 0})
    conflicts = 0
    lock = threading.Lock()

    def worker() -> None:
        nonlocal conflicts
        client = ConfigStore(store.settings.endpoints)
        for _ in range(25):
            while True:
                doc = client.get("counters", name)
                try:
                    client.update(
                        "counters",
                        name,
                        {"count": doc.value["count"] + 1},
                        revision=doc.revision,
                    )
                    break
                except Conflict:
                    with lock:
                        conflicts += 1

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert store.get("counters", name).value["count"] == 200
    assert conflicts > 0  # the writers really did contend


def test_modify_retries_on_conflict(store: ConfigStore) -> None:
    name = uniq()
    store.create("counters", name, {"count": 0})
    threads = [
        threading.Thread(
            target=lambda: [
                store.modify("counters", name, lambda v: {**v, "count": v["count"] + 1})
                for _ in range(10)
            ]
        )
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert store.get("counters", name).value["count"] == 40


def test_unreachable_etcd_raises_store_unavailable_quickly() -> None:
    dead = ConfigStore(f"http://127.0.0.1:{free_port()}", timeout=2.0)
    start = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        dead.get("datasets", "anything")
    assert time.monotonic() - start < 5
    assert "127.0.0.1" in str(info.value) and "deepfix up" in str(info.value)


def test_failover_to_second_endpoint(store: ConfigStore) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    client = ConfigStore([dead, *store.settings.endpoints], timeout=2.0)
    name = uniq()
    client.create("counters", name, {"count": 5})
    assert client.get("counters", name).value["count"] == 5
