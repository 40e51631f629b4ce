"""deepfix.model_store against the session's real etcd, and the `deepfix models` CLI."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from config_store import ConfigStore, register_collection
from deepfix.errors import ModelStoreError
from deepfix.model_store import (
    MODEL_VERSIONS_COLLECTION,
    MODELS_COLLECTION,
    WEIGHTS_FILE,
    ModelNotFound,
    ModelStore,
    join_uri,
    parse_ref,
)
from deepfix.models import ArchitectureConfig, build_model
from deepfix.models_cli import app as models_app

TINY = ArchitectureConfig(name="unet_r2", kwargs={"base_channels": 4, "depth": 1, "t": 1})


@pytest.fixture(scope="module")
def models(store: ConfigStore, tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    # The pyproject entry points register these where deepfix is (re)installed.
    register_collection("models", MODELS_COLLECTION)
    register_collection("model_versions", MODEL_VERSIONS_COLLECTION)
    return ModelStore(store, root_uri=str(tmp_path_factory.mktemp("models")))


_counter = iter(range(10_000))


@pytest.fixture
def name() -> str:
    """A fresh model name per test (the etcd is shared by the session)."""
    return f"test-model-{next(_counter)}"


def _register(models: ModelStore, name: str, seed: int = 0, **kw: object):
    torch.manual_seed(seed)
    model = build_model(TINY)
    return model, models.register(
        name, model, TINY, metrics={"val_psnr": 20.0 + seed}, training={"epochs": 1}, **kw
    )


def test_register_resolve_load_round_trip(models: ModelStore, name: str) -> None:
    model, v1 = _register(models, name, seed=1, dataset="faces", dataset_version="3")
    assert (v1.version, v1.dataset, v1.dataset_version) == (1, "faces", "3")
    loaded, meta = models.load(f"{name}:1")
    assert meta == v1 == models.resolve(name)
    x = torch.rand(1, 3, 16, 16)
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    for file in (WEIGHTS_FILE, "arch.json", "training.json", "metrics.json"):
        assert (Path(v1.artifact_uri) / file).is_file()


def test_resolve_latest_and_alias(models: ModelStore, name: str) -> None:
    _register(models, name, seed=1)
    _register(models, name, seed=2)
    assert models.resolve(name).version == 2
    models.promote(name, 1, "production")
    assert models.resolve(f"{name}@production").version == 1
    assert models.aliases(name) == {"production": 1}
    assert [v.version for v in models.list(name)] == [1, 2]


@pytest.mark.parametrize("suffix", [":9", "@staging"])
def test_resolve_unknown_version_or_alias_raises_not_found(
    models: ModelStore, name: str, suffix: str
) -> None:
    _register(models, name)
    with pytest.raises(ModelNotFound):
        models.resolve(name + suffix)


def test_parse_ref_forms() -> None:
    assert parse_ref("m") == ("m", None, None)
    assert parse_ref("m:3") == ("m", 3, None)
    assert parse_ref("m@production") == ("m", None, "production")
    with pytest.raises(ModelStoreError):
        parse_ref("m:3@x")


def test_load_refuses_modified_weights(models: ModelStore, name: str) -> None:
    _, v = _register(models, name)
    path = Path(v.artifact_uri) / WEIGHTS_FILE
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelStoreError, match="sha256"):
        models.load(v.ref)


def test_load_reports_missing_weights(models: ModelStore, name: str) -> None:
    _, v = _register(models, name)
    (Path(v.artifact_uri) / WEIGHTS_FILE).unlink()
    with pytest.raises(ModelStoreError, match="cannot read"):
        models.load(v.ref)


def test_concurrent_promotions_lose_no_alias(models: ModelStore, name: str) -> None:
    _register(models, name, seed=1)
    _register(models, name, seed=2)
    aliases = [f"a{i}" for i in range(8)]
    barrier = threading.Barrier(len(aliases))
    errors: list[BaseException] = []

    def promote(alias: str, version: int) -> None:
        try:
            barrier.wait()
            models.promote(name, version, alias)
        except BaseException as exc:  # collected, asserted below
            errors.append(exc)

    threads = [threading.Thread(target=promote, args=(a, 1 + i % 2)) for i, a in enumerate(aliases)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert models.aliases(name) == {a: 1 + i % 2 for i, a in enumerate(aliases)}


def test_concurrent_registrations_get_distinct_versions(models: ModelStore, name: str) -> None:
    got: list[int] = []
    barrier = threading.Barrier(4)

    def register(seed: int) -> None:
        barrier.wait()
        got.append(_register(models, name, seed=seed)[1].version)

    threads = [threading.Thread(target=register, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == [1, 2, 3, 4]
    assert models.record(name).versions == [1, 2, 3, 4]


def test_promote_unknown_version_raises(models: ModelStore, name: str) -> None:
    _register(models, name)
    with pytest.raises(ModelNotFound):
        models.promote(name, 5, "production")


def test_delete_refuses_aliased_version(models: ModelStore, name: str) -> None:
    _, v1 = _register(models, name)
    models.promote(name, 1, "production")
    with pytest.raises(ModelStoreError, match="production"):
        models.delete(name, 1)
    assert models.resolve(f"{name}:1") == v1


def test_delete_removes_metadata_and_artifacts(models: ModelStore, name: str) -> None:
    _register(models, name, seed=1)
    _, v2 = _register(models, name, seed=2)
    models.delete(name, 2)
    assert not Path(v2.artifact_uri).exists()
    assert models.resolve(name).version == 1
    with pytest.raises(ModelNotFound):
        models.resolve(f"{name}:2")
    # Numbers are never reused: a new registration gets 3.
    assert _register(models, name, seed=3)[1].version == 3


def test_update_metrics_merges(models: ModelStore, name: str) -> None:
    _, v = _register(models, name)
    updated = models.update_metrics(name, {"test_psnr": 25.5})
    assert updated.metrics == {"val_psnr": 20.0, "test_psnr": 25.5}
    assert models.resolve(v.ref).metrics == updated.metrics


def test_non_finite_metrics_are_refused_before_a_version_is_used(
    models: ModelStore, name: str
) -> None:
    with pytest.raises(ValueError, match="finite"):
        models.register(name, build_model(TINY), TINY, metrics={"psnr": float("inf")}, training={})
    assert _register(models, name)[1].version == 1


def test_watch_sees_registration_and_promotion(models: ModelStore, name: str) -> None:
    _register(models, name)
    events = []
    with models.watch(name) as watcher:

        def consume() -> None:
            # Registering writes the record twice (number allocated, then version listed).
            for ev in watcher:
                events.append(ev)
                if ev.value and ev.value["aliases"]:
                    return

        t = threading.Thread(target=consume, daemon=True)
        t.start()
        _register(models, name, seed=2)
        models.promote(name, 2, "production")
        t.join(timeout=10)
    versions = [e.value["versions"] for e in events if e.value]
    assert [1, 2] in versions
    assert events[-1].value is not None and events[-1].value["aliases"] == {"production": 2}


def test_file_uri_root(store: ConfigStore, tmp_path: Path, name: str) -> None:
    models = ModelStore(store, root_uri=f"file://{tmp_path}")
    _, v = _register(models, name)
    assert v.artifact_uri == join_uri(f"file://{tmp_path}", name, "1")
    assert (tmp_path / name / "1" / WEIGHTS_FILE).is_file()
    assert models.load(v.ref)[1] == v


# ------------------------------------------------------------------------------------ CLI


def test_cli_list_show_promote_delete(
    models: ModelStore, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("deepfix.models_cli._models", lambda: models)
    _register(models, name, seed=1)
    _register(models, name, seed=2)
    runner = CliRunner()
    result = runner.invoke(models_app, ["list", "--name", name])
    assert result.exit_code == 0, result.output
    assert name in result.output
    result = runner.invoke(models_app, ["promote", f"{name}:1", "--alias", "production"])
    assert result.exit_code == 0 and "production" in result.output
    result = runner.invoke(models_app, ["show", f"{name}@production"])
    assert result.exit_code == 0 and '"version": 1' in result.output
    result = runner.invoke(models_app, ["delete", f"{name}:1"])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "production" in result.output
    assert runner.invoke(models_app, ["delete", f"{name}:2"]).exit_code == 0


def test_cli_unknown_model_exits_1(models: ModelStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("deepfix.models_cli._models", lambda: models)
    result = CliRunner().invoke(models_app, ["show", "no-such-model"])
    assert result.exit_code == 1
    assert "no model named" in result.output


def test_cli_store_unavailable_exits_3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    down = ConfigStore("http://127.0.0.1:9", timeout=0.5)
    monkeypatch.setattr("deepfix.models_cli._models", lambda: ModelStore(down, str(tmp_path)))
    result = CliRunner().invoke(models_app, ["list"])
    assert result.exit_code == 3, result.output


def test_cli_summary_prints_totals() -> None:
    result = CliRunner().invoke(models_app, ["summary", "unet_r2", "--size", "32"])
    assert result.exit_code == 0, result.output
    assert "params" in result.output
