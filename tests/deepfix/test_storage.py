from __future__ import annotations

import pytest

from deepfix.storage import join, storage_root


def test_storage_root_defaults_to_deepfix_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEEPFIX_STORAGE", raising=False)
    monkeypatch.setenv("DEEPFIX_HOME", "/tmp/somewhere")
    assert storage_root() == "/tmp/somewhere"


def test_storage_root_prefers_shared_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEPFIX_STORAGE", "s3://bucket/deepfix/")
    assert storage_root() == "s3://bucket/deepfix"
    assert join(storage_root(), "models", "/demo/") == "s3://bucket/deepfix/models/demo"
