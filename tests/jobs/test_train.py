"""jobs.train: a 2-worker CPU TorchTrainer run on a tiny prepared dataset.

One run (Ray Train costs ~45 s here) covers both behaviours: a worker raises once at the start
of epoch 2, the group restarts from the epoch-1 checkpoint, and the finished run registers the
model with its history.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from config_store import ConfigStore, register_collection
from deepfix.io import encode
from deepfix.model_store import ModelStore
from deepfix.prepare import (
    PREPARED_COLLECTION,
    SAMPLE_SCHEMA,
    FacesPerImage,
    OutputLayout,
    PreparedStats,
    write_table,
)

pytestmark = pytest.mark.ray


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


def write_prepared(
    store: ConfigStore, root: Path, name: str, *, n: int = 24, size: int = 32
) -> str:
    """A tiny prepared dataset, written as jobs.prepare writes one: Parquet shards of
    ``SAMPLE_SCHEMA`` under the version's ``samples/`` and a valid ``prepared/<name>`` record."""
    rng = np.random.default_rng(0)
    layout = OutputLayout(str(root / name), "v1")
    rows: dict[str, list] = {f: [] for f in SAMPLE_SCHEMA.names}
    for i in range(n):
        clean, degraded, kind = _pair(i, size, rng)
        split = "train" if i < n * 2 // 3 else ("val" if i < n * 5 // 6 else "test")
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
        degradations={},
        wall_time_s=1.0,
        images_per_s=float(n),
    )
    register_collection("prepared", PREPARED_COLLECTION)
    store.put("prepared", name, record.model_dump(mode="json"))
    return layout.samples_uri


@pytest.fixture(scope="module")
def trained(ray_session: None, store: ConfigStore, deepfix_home: Path):
    from jobs.train import TrainArgs, run

    write_prepared(store, deepfix_home / "prepared", "tiny-train")
    args = TrainArgs(
        dataset="tiny-train",
        model_name="tiny-train",
        workers=2,
        epochs=2,
        batch_size=4,
        max_failures=1,
        fail_once_at_epoch=2,
        storage=str(deepfix_home / "ray_results"),
    )
    return args, run(args, store=store)


def test_worker_failure_resumes_from_checkpoint_and_registers_model(
    trained, store: ConfigStore, deepfix_home: Path
) -> None:
    _, version = trained
    assert version.ref == "tiny-train:1"
    assert (version.dataset, version.dataset_version) == ("tiny-train", "v1")
    history = version.training["history"]
    assert [row["epoch"] for row in history] == [1, 2]
    # Epoch 2 raised once; the restarted group loaded the epoch-1 checkpoint.
    assert version.training["resumes"] == [2]
    run_dir = deepfix_home / "ray_results" / version.training["run_name"]
    assert (run_dir / "fail-once-at-epoch-2").is_file()
    assert {"val_psnr", "val_ssim", "val_accuracy", "val_loss"} <= set(version.metrics)
    best = max(history, key=lambda r: r["val_psnr"])
    assert version.training["best_epoch"] == best["epoch"]
    assert version.metrics["val_psnr"] == pytest.approx(best["val_psnr"])
    model, loaded = ModelStore(store).load("tiny-train")
    assert loaded == version
    import torch

    with torch.no_grad():
        assert model(torch.rand(1, 3, 32, 32)).shape == (1, 3, 32, 32)


def test_resume_continues_the_latest_run(trained, store: ConfigStore) -> None:
    from jobs.train import run

    args, first = trained
    version = run(
        args.model_copy(update={"epochs": 3, "resume": True, "fail_once_at_epoch": None}),
        store=store,
    )
    assert version.version == first.version + 1
    assert version.training["run_name"] == first.training["run_name"]
    assert [row["epoch"] for row in version.training["history"]] == [1, 2, 3]
    assert version.training["resumes"] == [2, 3]
