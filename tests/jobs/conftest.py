"""Fixtures for the job tests: a generated source folder of faces, faceless and bad files.

Everything is generated in the test run; the only bundled data is scikit-image's
``astronaut()`` (inside the wheel, no download), whose face OpenCV's Haar cascade finds.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pytest

from config_store import ConfigStore, register_collection
from deepfix.io import encode
from deepfix.prepare import (
    PREPARED_COLLECTION,
    SAMPLE_SCHEMA,
    FacesPerImage,
    OutputLayout,
    PreparedStats,
    write_table,
)


@dataclass(frozen=True)
class FaceSource:
    """A generated source folder and the truth about it."""

    path: Path
    faces: dict[str, int] = field(default_factory=lambda: {"astronaut.jpg": 1, "two_faces.png": 2})
    faceless: tuple[str, ...] = ("gradient_a.png", "gradient_b.jpg", "gradient_c.bmp")
    bad: dict[str, str] = field(
        default_factory=lambda: {
            "truncated.jpg": "corrupt",
            "empty.png": "corrupt",
            "notes.jpg": "unsupported",
            "bomb.png": "too_large",
            # A link out of the folder: rejected by the listing, never read.
            "escape.jpg": "symlink_outside_root",
        }
    )


def _write(path: Path, image: np.ndarray) -> None:
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def _png_bomb() -> bytes:
    """A tiny PNG whose IHDR declares 50000 x 50000 RGB pixels."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (1 + 3 * 50_000))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture(scope="session")
def face_source(tmp_path_factory: pytest.TempPathFactory) -> FaceSource:
    """A folder with 2 face images (1 and 2 faces), 3 faceless images and 5 bad files."""
    skdata = pytest.importorskip("skimage.data")
    root = tmp_path_factory.mktemp("prepare-source")
    astronaut = np.ascontiguousarray(skdata.astronaut())
    # Half size keeps Haar fast; the face (~46 px) stays well above min_size.
    small = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)
    _write(root / "astronaut.jpg", small)
    face = astronaut[0:300, 100:350]
    _write(root / "two_faces.png", np.concatenate([face, face], axis=1))
    yy, xx = np.mgrid[0:96, 0:128]
    truth = FaceSource(root)
    for i, name in enumerate(truth.faceless):
        ramp = ((xx * (i + 1) + yy) % 256).astype(np.uint8)
        _write(root / name, np.stack([ramp, ramp[:, ::-1], np.full_like(ramp, 80 * i)], -1))
    ok, jpeg = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 256, (64, 64, 3)))
    assert ok
    (root / "truncated.jpg").write_bytes(jpeg.tobytes()[: len(jpeg) * 3 // 4])
    (root / "empty.png").write_bytes(b"")
    (root / "notes.jpg").write_text("these are not the pixels you are looking for\n")
    (root / "bomb.png").write_bytes(_png_bomb())
    outside = tmp_path_factory.mktemp("prepare-outside") / "secret.jpg"
    outside.write_bytes(jpeg.tobytes())
    os.symlink(outside, root / "escape.jpg")
    return truth


@pytest.fixture(scope="session")
def make_spec(store: ConfigStore) -> Callable[..., dict[str, Any]]:
    """``make_spec(name, source, **fields)``: put a dataset spec in etcd; the stored value."""

    def make(name: str, source: Path, **fields: Any) -> dict[str, Any]:
        value = {"name": name, "source": str(source), "height": 64, "width": 64, **fields}
        return store.put("datasets", name, value).value

    return make


# -- a tiny prepared dataset, for the train/evaluate/enhance tests ------------------------------


def _pair(i: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    yy, xx = np.mgrid[0:size, 0:size]
    base = (np.sin(xx / (2 + i % 5)) + np.cos(yy / (3 + i % 3))) * 60 + 128
    clean = np.clip(np.stack([base, base[::-1], base.T], -1), 0, 255).astype(np.uint8)
    kind = ("gaussian_noise", "salt_pepper", "shadow")[i % 3]
    if kind == "gaussian_noise":
        degraded = np.clip(clean + rng.normal(0, 15, clean.shape), 0, 255).astype(np.uint8)
    elif kind == "salt_pepper":
        degraded = clean.copy()
        degraded[rng.random(clean.shape[:2]) < 0.05] = 255
    else:
        degraded = (clean * 0.6).astype(np.uint8)
    return clean, degraded, kind


def _default_split(i: int, n: int) -> str:
    return "train" if i < n * 2 // 3 else ("val" if i < n * 5 // 6 else "test")


def write_prepared(
    store: ConfigStore,
    root: Path,
    name: str,
    *,
    n: int = 24,
    size: int = 32,
    version: str = "v1",
    split_of: Callable[[int, int], str] | None = None,
) -> str:
    """A tiny prepared dataset, written as jobs.prepare writes one: Parquet shards of
    ``SAMPLE_SCHEMA`` under the version's ``samples/`` and a valid ``prepared/<name>`` record."""
    rng = np.random.default_rng(0)
    layout = OutputLayout(str(root / name), version)
    rows: dict[str, list] = {f: [] for f in SAMPLE_SCHEMA.names}
    for i in range(n):
        clean, degraded, kind = _pair(i, size, rng)
        split = (split_of or _default_split)(i, n)
        row = {
            "id": f"s{i:03d}",
            "split": split,
            "clean": encode(clean),
            "degraded": encode(degraded),
            "params": json.dumps([{"type": kind}]),
            "degradation_types": [kind],
            "source": f"img{i}.png",
            "face_index": 0,
            "tile_index": None,
            "box": None,
            "height": size,
            "width": size,
        }
        for k, v in row.items():
            rows[k].append(v)
    table = pa.Table.from_pydict(rows, schema=SAMPLE_SCHEMA)
    write_table(table.slice(0, n // 2), layout.samples_uri, "part-0.parquet")
    write_table(table.slice(n // 2), layout.samples_uri, "part-1.parquet")
    splits = {s: rows["split"].count(s) for s in ("train", "val", "test")}
    record = PreparedStats(
        dataset=name,
        version=layout.version,
        spec_revision=1,
        created_at=datetime.now(UTC),
        version_uri=layout.version_uri,
        samples_uri=layout.samples_uri,
        rejects_uri=layout.rejects_uri,
        manifest_uri=layout.manifest_uri,
        sample_height=size,
        sample_width=size,
        seed=0,
        samples=n,
        shards=2,
        splits=splits,
        images_listed=n,
        images_used=n,
        faces_per_image=FacesPerImage(mean=0.0, histogram={}),
        policies={"faces": 0, "whole": 0, "skipped": 0, "disabled": n},
        rejected={},
        rejected_total=0,
        source_width=None,
        source_height=None,
        degradations=dict(Counter(t for types in rows["degradation_types"] for t in types)),
        wall_time_s=1.0,
        images_per_s=float(n),
    )
    register_collection("prepared", PREPARED_COLLECTION)
    store.put("prepared", name, record.model_dump(mode="json"))
    return layout.samples_uri


WritePrepared = Callable[..., str]


@pytest.fixture(scope="session")
def write_prepared_dataset() -> WritePrepared:
    """``write_prepared``: a tiny prepared dataset in jobs.prepare's layout and etcd record."""
    return write_prepared
