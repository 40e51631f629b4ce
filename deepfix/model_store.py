"""Versioned trained models: metadata in etcd, weights and reports as files under a root URI.

Layout in etcd (two collections of :mod:`config_store`):

* ``models/<name>`` — one small :class:`ModelRecord` per model name: the registered version
  numbers, the next number to hand out and the aliases (``production`` -> 3). Every change
  (a version registered or deleted, an alias moved) is a compare-and-swap on this document
  (``ConfigStore.update(revision=)``), so concurrent writers never lose each other's change,
  and watching this one key is enough to follow a model (Serve replicas follow an alias so).
* ``model_versions/<name>-v<version>`` — one :class:`ModelVersion` per version: architecture,
  dataset, metrics, training configuration and curves, artifact URI and the weights' SHA-256.
  Kept apart from the record so that a model's history of versions is not bounded by the size
  cap of one document.

Artifacts of a version live under ``<root_uri>/<name>/<version>/``: ``model.safetensors``
(the state dict), ``arch.json``, ``training.json``, ``metrics.json`` and any extra files
(evaluation reports and figures are added later next to them). The root is a local folder
(``<$DEEPFIX_STORAGE or $DEEPFIX_HOME>/models`` by default), ``file://``, ``s3://`` or
``gs://``: every file goes through :mod:`pyarrow.fs`, so the code does not care which.

Registration allocates a number (CAS on the record), writes the artifacts, writes the version
document and only then lists the version in the record, so readers never see a version whose
files are not complete; a crash in between burns the number and leaves no listed version.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
from pydantic import BaseModel, Field, field_validator
from torch import nn

from config_store import (
    AlreadyExists,
    CollectionSchema,
    ConfigStore,
    Conflict,
    NotFound,
    register_collection,
)
from config_store.store import Watcher
from deepfix.errors import ModelStoreError
from deepfix.models import ArchitectureConfig, build_model
from deepfix.storage import join, storage_root

__all__ = [
    "MODELS_COLLECTION",
    "MODEL_NAME_PATTERN",
    "MODEL_VERSIONS_COLLECTION",
    "WEIGHTS_FILE",
    "ModelNotFound",
    "ModelRecord",
    "ModelStore",
    "ModelVersion",
    "join_uri",
    "load_model_version",
    "parse_ref",
    "read_uri",
    "uri_filesystem",
    "write_uri",
]

logger = logging.getLogger(__name__)

MODELS = "models"
MODEL_VERSIONS = "model_versions"
WEIGHTS_FILE = "model.safetensors"
# 48 characters, so that "<name>-v<version>" still fits etcd document names (63 characters).
MODEL_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,47}$")
_ALIAS_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_REF_PATTERN = re.compile(r"^(?P<name>[^:@]+)(?::(?P<version>\d+)|@(?P<alias>[^:@]+))?$")


class ModelNotFound(ModelStoreError):
    """No such model, version or alias (HTTP handlers map it to 404)."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class ModelVersion(BaseModel):
    """One registered version of a model: what it is, what it was trained on, where it lives.

    Attributes:
        architecture: the ``ArchitectureConfig`` dump that rebuilds the network.
        dataset, dataset_version: the prepared dataset it was trained on, when known.
        metrics: headline numbers (validation at registration; evaluation adds test numbers).
        training: the training configuration, per-epoch history and run details.
        artifact_uri: folder (or URI prefix) holding ``model.safetensors`` and the reports.
        sha256: hex digest of ``model.safetensors``; ``load`` refuses any other bytes.
    """

    name: str
    version: int = Field(ge=1)
    architecture: dict[str, Any]
    dataset: str | None = None
    dataset_version: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    created_at: str
    artifact_uri: str
    sha256: str

    @field_validator("metrics")
    @classmethod
    def _finite(cls, v: dict[str, float]) -> dict[str, float]:
        # JSON has no infinity; a stored "Infinity" would break other readers of etcd.
        bad = sorted(k for k, x in v.items() if not math.isfinite(x))
        if bad:
            raise ValueError(f"metrics must be finite numbers; not finite: {bad}")
        return v

    @property
    def ref(self) -> str:
        """``name:version``, the exact reference of this version."""
        return f"{self.name}:{self.version}"

    def arch(self) -> ArchitectureConfig:
        return ArchitectureConfig.model_validate(self.architecture)


class ModelRecord(BaseModel):
    """The etcd document of one model name: its versions and aliases."""

    name: str
    next_version: int = Field(1, ge=1)
    versions: list[int] = Field(default_factory=list)
    aliases: dict[str, int] = Field(default_factory=dict)
    created_at: str | None = None
    updated_at: str | None = None

    @property
    def latest(self) -> int | None:
        return max(self.versions) if self.versions else None


MODELS_COLLECTION = CollectionSchema(model=ModelRecord, timestamps=True, name_field="name")
MODEL_VERSIONS_COLLECTION = CollectionSchema(model=ModelVersion)


def _register_schemas() -> None:
    # The entry points in pyproject.toml register these where deepfix is installed; a Ray job
    # shipped with --working-dir may run where it is not, so make sure here (idempotent).
    register_collection(MODELS, MODELS_COLLECTION)
    register_collection(MODEL_VERSIONS, MODEL_VERSIONS_COLLECTION)


def parse_ref(ref: str) -> tuple[str, int | None, str | None]:
    """Split ``name``, ``name:3`` or ``name@production`` into (name, version, alias)."""
    match = _REF_PATTERN.fullmatch(ref.strip())
    if not match:
        raise ModelStoreError(f"bad model reference {ref!r}: use NAME, NAME:VERSION or NAME@ALIAS")
    version = match["version"]
    return match["name"], int(version) if version else None, match["alias"]


def _check_model_name(name: str) -> str:
    if not MODEL_NAME_PATTERN.fullmatch(name):
        raise ModelStoreError(
            f"invalid model name {name!r}: use 1-48 characters [a-z0-9_-], starting with a "
            "letter or digit"
        )
    return name


def _version_key(name: str, version: int) -> str:
    return f"{name}-v{version}"


# ------------------------------------------------------------------------------ URIs / files


def uri_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and path of a local path, ``file://``, ``s3://`` or ``gs://`` URI."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())
    try:
        return pafs.FileSystem.from_uri(uri)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise ModelStoreError(f"cannot open {uri}: {exc}") from exc


def join_uri(base: str, *parts: str) -> str:
    """``base/part/...`` for paths and URIs alike."""
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def write_uri(uri: str, data: bytes) -> None:
    """Write ``data`` to the file at ``uri``, creating parent folders."""
    fs, path = uri_filesystem(uri)
    parent = path.rsplit("/", 1)[0]
    try:
        if parent:
            fs.create_dir(parent, recursive=True)
        with fs.open_output_stream(path) as f:
            f.write(data)
    except OSError as exc:
        raise ModelStoreError(f"cannot write {uri}: {exc}") from exc


def read_uri(uri: str) -> bytes:
    """The bytes of the file at ``uri``; ``ModelStoreError`` when it is missing."""
    fs, path = uri_filesystem(uri)
    try:
        with fs.open_input_stream(path) as f:
            return bytes(f.read())
    except (FileNotFoundError, OSError) as exc:
        raise ModelStoreError(f"cannot read {uri}: {exc}") from exc


def _delete_dir(uri: str) -> None:
    fs, path = uri_filesystem(uri)
    try:
        fs.delete_dir(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ModelStoreError(f"cannot delete {uri}: {exc}") from exc


def _state_bytes(model: nn.Module) -> bytes:
    from safetensors.torch import save

    # Unwrap DDP (prepare_model) so weights load into a bare network; contiguous CPU copies
    # because safetensors refuses views and device tensors.
    inner = getattr(model, "module", model)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in inner.state_dict().items()}
    return save(state)


def load_model_version(version: ModelVersion, device: str = "cpu") -> nn.Module:
    """Build the network of ``version`` and load its weights, after checking their SHA-256.

    Needs no etcd: Ray actors get the resolved ``ModelVersion`` and load from its artifacts.

    Raises:
        ModelStoreError: the weights are missing, do not match the digest, or do not fit.
    """
    from safetensors.torch import load

    data = read_uri(join_uri(version.artifact_uri, WEIGHTS_FILE))
    digest = hashlib.sha256(data).hexdigest()
    if digest != version.sha256:
        raise ModelStoreError(
            f"{version.ref}: {WEIGHTS_FILE} has sha256 {digest[:12]}..., the store recorded "
            f"{version.sha256[:12]}...; refusing to load modified weights"
        )
    model = build_model(version.arch())
    try:
        model.load_state_dict(load(data), strict=True)
    except (RuntimeError, ValueError) as exc:
        raise ModelStoreError(f"{version.ref}: weights do not fit the architecture: {exc}") from exc
    return model.to(device).eval()


# ------------------------------------------------------------------------------------ store


class ModelStore:
    """Register, resolve, load, promote and delete model versions.

    Args:
        store: the etcd document store; None connects with the default settings.
        root_uri: where artifacts go; default ``<storage root>/models``, the storage root being
            ``$DEEPFIX_STORAGE`` (shared by a cluster's nodes) or else ``$DEEPFIX_HOME``.
    """

    def __init__(self, store: ConfigStore | None = None, root_uri: str | None = None) -> None:
        _register_schemas()
        self.store = store or ConfigStore()
        self.root_uri = root_uri or join(storage_root(), "models")

    # -- reads -----------------------------------------------------------------------------

    def record(self, name: str) -> ModelRecord:
        """The record (versions, aliases) of model ``name``."""
        try:
            doc = self.store.get(MODELS, _check_model_name(name))
        except NotFound:
            raise ModelNotFound(f"no model named {name!r}") from None
        return ModelRecord.model_validate(doc.value)

    def names(self) -> builtins.list[str]:
        """Every model name, sorted."""
        return [d.name for d in self.store.list(MODELS)]

    def _get_version(self, name: str, version: int) -> ModelVersion:
        try:
            doc = self.store.get(MODEL_VERSIONS, _version_key(name, version))
        except NotFound:
            raise ModelNotFound(f"model {name!r} has no version {version}") from None
        return ModelVersion.model_validate(doc.value)

    def resolve(self, ref: str) -> ModelVersion:
        """The version ``ref`` names: ``name`` (latest), ``name:3`` or ``name@production``."""
        name, version, alias = parse_ref(ref)
        record = self.record(name)
        if alias is not None:
            if alias not in record.aliases:
                known = ", ".join(sorted(record.aliases)) or "(none)"
                raise ModelNotFound(f"model {name!r} has no alias {alias!r}; aliases: {known}")
            version = record.aliases[alias]
        elif version is None:
            version = record.latest
            if version is None:
                raise ModelNotFound(f"model {name!r} has no versions")
        if version not in record.versions:
            raise ModelNotFound(f"model {name!r} has no version {version}")
        return self._get_version(name, version)

    def load(self, ref: str, device: str = "cpu") -> tuple[nn.Module, ModelVersion]:
        """The network of ``ref`` in eval mode on ``device``, and its metadata."""
        version = self.resolve(ref)
        return load_model_version(version, device), version

    def list(self, name: str | None = None) -> builtins.list[ModelVersion]:
        """Versions of ``name`` (or of every model), by name then version."""
        if name is not None:
            record = self.record(name)
            return [self._get_version(name, v) for v in sorted(record.versions)]
        listed = {(d.name, v) for d in self.store.list(MODELS) for v in d.value.get("versions", [])}
        out = [ModelVersion.model_validate(d.value) for d in self.store.list(MODEL_VERSIONS)]
        # A version document without a listing is a registration in progress (or one that
        # crashed half-way): not a version yet.
        return sorted(
            (v for v in out if (v.name, v.version) in listed), key=lambda v: (v.name, v.version)
        )

    def aliases(self, name: str) -> dict[str, int]:
        return dict(sorted(self.record(name).aliases.items()))

    def watch(self, name: str) -> Watcher:
        """Events whenever a version of ``name`` is registered or deleted or an alias moves.

        Each event's ``value`` is the :class:`ModelRecord` dump (None when the model is gone).
        """
        return self.store.watch(MODELS, _check_model_name(name))

    # -- writes ----------------------------------------------------------------------------

    def _change_record(
        self, name: str, change: Callable[[ModelRecord], None], *, attempts: int = 50
    ) -> ModelRecord:
        """Read-modify-CAS on the record; ``change`` mutates it and may raise to abort."""
        for attempt in range(attempts):
            try:
                doc = self.store.get(MODELS, name)
            except NotFound:
                raise ModelNotFound(f"no model named {name!r}") from None
            record = ModelRecord.model_validate(doc.value)
            change(record)
            try:
                new = self.store.update(
                    MODELS, name, record.model_dump(mode="json"), revision=doc.revision
                )
            except Conflict:
                # Someone else changed the record first: re-read and apply again on top, so
                # neither change is lost. A little jitter keeps contenders out of lock-step.
                time.sleep(min(0.05, 0.002 * (attempt + 1)))
                continue
            return ModelRecord.model_validate(new.value)
        raise Conflict(f"{MODELS}/{name}: gave up after {attempts} conflicting attempts")

    def _allocate(self, name: str) -> int:
        try:
            self.store.create(MODELS, name, ModelRecord(name=name, next_version=2).model_dump())
            return 1
        except AlreadyExists:
            pass
        allocated: list[int] = []

        def bump(record: ModelRecord) -> None:
            allocated[:] = [record.next_version]
            record.next_version += 1

        self._change_record(name, bump)
        return allocated[0]

    def register(
        self,
        name: str,
        model: nn.Module,
        arch: ArchitectureConfig,
        *,
        metrics: dict[str, float],
        training: dict[str, Any],
        dataset: str | None = None,
        dataset_version: str | None = None,
        extra_files: dict[str, bytes] | None = None,
    ) -> ModelVersion:
        """Store ``model``'s weights and metadata as the next version of ``name``.

        Args:
            model: the trained network (a DDP wrapper is unwrapped).
            arch: the config that rebuilds it.
            metrics: headline numbers (finite).
            training: configuration, history and run details (JSON-serialisable).
            extra_files: more files for the artifact folder, by relative path.
        """
        _check_model_name(name)
        weights = _state_bytes(model)
        sha = hashlib.sha256(weights).hexdigest()
        # Validate everything that can fail before a version number is burned.
        metrics = {k: float(v) for k, v in metrics.items()}
        ModelVersion(
            name=name,
            version=1,
            architecture=arch.model_dump(mode="json"),
            metrics=metrics,
            training=training,
            created_at=_now(),
            artifact_uri="",
            sha256=sha,
        )
        version = self._allocate(name)
        artifact_uri = join_uri(self.root_uri, name, str(version))
        mv = ModelVersion(
            name=name,
            version=version,
            architecture=arch.model_dump(mode="json"),
            dataset=dataset,
            dataset_version=dataset_version,
            metrics=metrics,
            training=training,
            created_at=_now(),
            artifact_uri=artifact_uri,
            sha256=sha,
        )
        files = {
            WEIGHTS_FILE: weights,
            "arch.json": json.dumps(mv.architecture, indent=2).encode(),
            "training.json": json.dumps(training, indent=2, default=str).encode(),
            "metrics.json": json.dumps(metrics, indent=2).encode(),
            **(extra_files or {}),
        }
        try:
            for rel, data in files.items():
                write_uri(join_uri(artifact_uri, rel), data)
            self.store.create(MODEL_VERSIONS, _version_key(name, version), mv.model_dump())

            def publish(record: ModelRecord) -> None:
                record.versions = sorted({*record.versions, version})

            self._change_record(name, publish)
        except Exception:
            logger.exception("registering %s:%d failed; cleaning up", name, version)
            _delete_dir(artifact_uri)
            with contextlib.suppress(NotFound):
                self.store.delete(MODEL_VERSIONS, _version_key(name, version))
            raise
        logger.info("registered %s at %s", mv.ref, artifact_uri)
        return mv

    def promote(self, name: str, version: int, alias: str) -> None:
        """Point ``alias`` at ``version`` (compare-and-swap; retried on a concurrent change)."""
        if not _ALIAS_PATTERN.fullmatch(alias):
            raise ModelStoreError(
                f"invalid alias {alias!r}: 1-32 characters [a-z0-9_-], starting with a letter"
            )

        def point(record: ModelRecord) -> None:
            # Checked on every attempt: a concurrent delete of the version must win cleanly.
            if version not in record.versions:
                raise ModelNotFound(f"model {name!r} has no version {version}")
            record.aliases[alias] = version

        self._change_record(_check_model_name(name), point)
        logger.info("%s@%s -> %d", name, alias, version)

    def delete(self, name: str, version: int) -> None:
        """Delete a version (metadata, then artifacts); refused while an alias points to it."""

        def drop(record: ModelRecord) -> None:
            if version not in record.versions:
                raise ModelNotFound(f"model {name!r} has no version {version}")
            holding = sorted(a for a, v in record.aliases.items() if v == version)
            if holding:
                raise ModelStoreError(
                    f"{name}:{version} is aliased as {', '.join(holding)}; promote another "
                    "version to that alias first"
                )
            record.versions.remove(version)

        self._change_record(_check_model_name(name), drop)
        try:
            mv = self._get_version(name, version)
            self.store.delete(MODEL_VERSIONS, _version_key(name, version))
        except ModelNotFound:
            return
        _delete_dir(mv.artifact_uri)

    def update_metrics(self, ref: str, metrics: dict[str, float]) -> ModelVersion:
        """Merge ``metrics`` into the version's metrics (e.g. test numbers from evaluation)."""
        mv = self.resolve(ref)
        clean = {k: float(v) for k, v in metrics.items()}
        ModelVersion.model_validate({**mv.model_dump(), "metrics": clean})  # finite check

        def merge(value: dict[str, Any]) -> dict[str, Any]:
            value["metrics"] = {**value.get("metrics", {}), **clean}
            return value

        doc = self.store.modify(MODEL_VERSIONS, _version_key(mv.name, mv.version), merge)
        updated = ModelVersion.model_validate(doc.value)
        write_uri(
            join_uri(updated.artifact_uri, "metrics.json"),
            json.dumps(updated.metrics, indent=2).encode(),
        )
        return updated

    # -- artifacts -------------------------------------------------------------------------

    def write_file(self, version: ModelVersion, relpath: str, data: bytes) -> str:
        """Write ``data`` next to the version's weights; returns the file's URI."""
        uri = join_uri(version.artifact_uri, relpath)
        write_uri(uri, data)
        return uri

    def read_file(self, version: ModelVersion, relpath: str) -> bytes:
        return read_uri(join_uri(version.artifact_uri, relpath))
