"""jobs.train: a 2-worker CPU TorchTrainer run on a tiny prepared dataset.

One run (Ray Train costs ~45 s here) covers both behaviours: a worker raises once at the start
of epoch 2, the group restarts from the epoch-1 checkpoint, and the finished run registers the
model with its history.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from config_store import ConfigStore
from deepfix.io import encode
from deepfix.model_store import ModelStore

pytestmark = pytest.mark.ray


def write_prepared(
    store: ConfigStore, root: Path, name: str, *, n: int = 24, size: int = 32
) -> Path:
    """A tiny prepared dataset: ``n`` noisy/clean 32x32 pairs in the prepare job's schema."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    rows: dict[str, list] = {k: [] for k in (
        "id", "split", "clean", "degraded", "params", "degradation_types", "source",
        "face_index", "box", "height", "width",
    )}
    for i in range(n):
        base = (np.sin(xx / (2 + i % 5)) + np.cos(yy / (3 + i % 3))) * 60 + 128
        clean = np.clip(np.stack([base, base[::-1], base.T], -1), 0, 255).astype(np.uint8)
        kind = ("gaussian_noise", "salt_pepper", "shadow")[i % 3]
        if kind == "gaussian_noise":
            degraded = np.clip(clean + rng.normal(0, 15, clean.shape), 0, 255).astype(np.uint8)
        elif kind == "salt_pepper":
            degraded = clean.copy()
            mask = rng.random(clean.shape[:2]) < 0.05
            degraded[mask] = rng.choice([0, 255], size=(int(mask.sum()), 1))
        else:
            degraded = (clean * 0.6).astype(np.uint8)
        split = "train" if i < n * 2 // 3 else ("val" if i < n * 5 // 6 else "test")
        rows["id"].append(f"s{i:03d}")
        rows["split"].append(split)
        rows["clean"].append(encode(clean))
        rows["degraded"].append(encode(degraded))
        rows["params"].append(json.dumps([{"type": kind}]))
        rows["degradation_types"].append([kind])
        rows["source"].append(f"img{i}.png")
        rows["face_index"].append(0)
        rows["box"].append(None)
        rows["height"].append(size)
        rows["width"].append(size)
    schema = pa.schema([
        ("id", pa.string()), ("split", pa.string()), ("clean", pa.binary()),
        ("degraded", pa.binary()), ("params", pa.string()),
        ("degradation_types", pa.list_(pa.string())), ("source", pa.string()),
        ("face_index", pa.int64()), ("box", pa.list_(pa.int64())), ("height", pa.int64()),
        ("width", pa.int64()),
    ])
    out = root / name / "v1"
    out.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pydict(rows, schema=schema)
    pq.write_table(table.slice(0, n // 2), out / "part-0.parquet")
    pq.write_table(table.slice(n // 2), out / "part-1.parquet")
    store.put("prepared", name, {"version": "v1", "output_uri": str(out), "samples": n})
    return out
