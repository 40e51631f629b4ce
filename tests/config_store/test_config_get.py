"""``config.get``: whole documents, dotted keys, defaults, and the watch-invalidated cache."""

from __future__ import annotations

import time

import pytest

from config_store import ConfigStore, NotFound, config
from config_store.config import Config, lookup


@pytest.fixture()
def deepfake(store: ConfigStore) -> str:
    name = f"deepfake-{time.monotonic_ns() % 10**9}"
    store.create("datasets", name, {"source": "/data", "crop": {"mode": "128x128"}})
    return name


def test_get_returns_whole_validated_document(deepfake: str) -> None:
    doc = config.get(deepfake)
    assert doc["name"] == deepfake and doc["split"] == {"train": 0.8, "val": 0.1, "test": 0.1}


def test_get_by_dotted_key(deepfake: str) -> None:
    assert config.get(deepfake, "crop.mode") == "128x128"
    assert config.get(deepfake, "crop.width") == 128
    assert config.get(deepfake, "degradations.0.type") == "gaussian_blur"


def test_get_default_for_missing_key_and_document(deepfake: str) -> None:
    assert config.get(deepfake, "crop.nothing", default="d") == "d"
    assert config.get("no-such-dataset", default=None) is None
    with pytest.raises(NotFound):
        config.get(deepfake, "crop.nothing")
    with pytest.raises(NotFound):
        config.get("no-such-dataset")


def test_lookup_walks_lists_and_dicts() -> None:
    assert lookup({"a": [{"b": 1}, {"b": 2}]}, "a.1.b") == 2
    assert lookup({"a": [1]}, "a.5", default=0) == 0


def test_cached_reader_sees_changes_after_watch_invalidation(
    store: ConfigStore, deepfake: str
) -> None:
    cached = Config(store).cached()
    try:
        assert cached.get(deepfake, "seed") == 0
        store.modify("datasets", deepfake, lambda v: {**v, "seed": 42})
        deadline = time.monotonic() + 10
        while cached.get(deepfake, "seed") != 42 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cached.get(deepfake, "seed") == 42
    finally:
        cached.close()


def test_cached_reader_serves_from_memory(store: ConfigStore, deepfake: str) -> None:
    cached = Config(store).cached()
    try:
        cached.get(deepfake)
        assert ("datasets", deepfake) in cached._cache
    finally:
        cached.close()
