"""jobs.prepare end to end on the session's local Ray: a generated folder in, Parquet out.

Two runs share the session Ray: ``skip`` (faceless images yield nothing) without tiles, and
``whole`` (faceless images are centre-cropped) with 32 x 32 tiles.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from config_store import ConfigStore
from deepfix.degradations import DegradationPipeline
from deepfix.io import decode, encode
from deepfix.prepare import SAMPLE_SCHEMA, PreparedStats, replay_degraded
from deepfix.spec import DatasetSpec
from jobs.prepare import PrepareArgs, main, run

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]
Run = tuple[PreparedStats, DatasetSpec, Any]  # stats, spec, the source's truth


def _read(uri: str) -> pa.Table:
    return pq.read_table(uri)


@pytest.fixture(scope="module")
def skip_run(
    ray_session: None,
    face_source: Any,
    make_spec: Callable[..., dict[str, Any]],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[PreparedStats, DatasetSpec, Any]:
    spec = DatasetSpec.model_validate(
        make_spec("prep-skip", face_source.path, seed=7, face_detection={"on_missing": "skip"})
    )
    out = tmp_path_factory.mktemp("prepared-skip")
    return run(PrepareArgs(dataset="prep-skip", output=str(out), batch_size=3)), spec, face_source


def test_every_face_becomes_one_sample(skip_run: Run) -> None:
    stats, _, truth = skip_run
    samples = _read(stats.samples_uri)
    assert samples.num_rows == stats.samples == sum(truth.faces.values())
    assert Counter(samples["source"].to_pylist()) == truth.faces
    assert stats.policies == {
        "faces": len(truth.faces),
        "whole": 0,
        "skipped": len(truth.faceless),
        "disabled": 0,
    }
    assert stats.faces_per_image.histogram == {"0": 3, "1": 1, "2": 1}


def test_samples_follow_the_schema(skip_run: Run) -> None:
    stats, _, _ = skip_run
    samples = _read(stats.samples_uri)
    assert samples.schema.equals(SAMPLE_SCHEMA, check_metadata=False)
    assert set(samples["split"].to_pylist()) <= {"train", "val", "test"}
    ids = samples["id"].to_pylist()
    assert len(set(ids)) == len(ids)
    assert set(samples["height"].to_pylist()) == {64}
    assert set(samples["width"].to_pylist()) == {64}
    assert all(box is not None and len(box) == 4 for box in samples["box"].to_pylist())
    assert samples["tile_index"].null_count == samples.num_rows


def test_every_bad_file_is_a_reject_with_its_reason(
    skip_run: Run,
) -> None:
    stats, _, truth = skip_run
    rejects = _read(stats.rejects_uri)
    reasons = dict(zip(rejects["source"].to_pylist(), rejects["reason"].to_pylist(), strict=True))
    assert reasons == truth.bad
    assert all(rejects["detail"].to_pylist())


def test_counts_in_equal_counts_out(skip_run: Run) -> None:
    stats, _, truth = skip_run
    listed = len(truth.faces) + len(truth.faceless) + len(truth.bad)
    assert stats.images_listed == listed
    assert stats.images_used + stats.policies["skipped"] + stats.rejected_total == listed


def test_stats_in_etcd_match_the_parquet(skip_run: Run, store: ConfigStore) -> None:
    stats, _, _ = skip_run
    doc = store.get("prepared", "prep-skip")
    recorded = PreparedStats.model_validate(doc.value)
    assert recorded == stats
    assert recorded.spec_revision == store.get("datasets", "prep-skip").revision
    samples = _read(recorded.samples_uri)
    assert recorded.splits == {
        s: samples["split"].to_pylist().count(s) for s in ("train", "val", "test")
    }
    types = Counter(t for ts in samples["degradation_types"].to_pylist() for t in ts)
    assert recorded.degradations == dict(types)
    rejects = _read(recorded.rejects_uri)
    assert recorded.rejected == dict(Counter(rejects["reason"].to_pylist()))
    assert recorded.source_width is not None and recorded.source_width.max == 500
    manifest = Path(recorded.manifest_uri)
    assert PreparedStats.model_validate(json.loads(manifest.read_text())) == recorded


def test_degraded_differs_and_replays_bit_for_bit(
    skip_run: Run,
) -> None:
    stats, spec, _ = skip_run
    samples = _read(stats.samples_uri).to_pylist()
    pipeline = DegradationPipeline.from_specs(spec.degradations)
    for row in samples:
        clean = decode(row["clean"])
        assert not np.array_equal(clean, decode(row["degraded"]))
        degraded, applied = replay_degraded(
            clean, seed=spec.seed, sample_id=row["id"], pipeline=pipeline
        )
        assert encode(degraded) == row["degraded"]
        assert json.loads(row["params"]) == applied
        assert row["degradation_types"] == [a["type"] for a in applied]


def test_whole_policy_with_tiles(
    ray_session: None,
    face_source: Any,
    make_spec: Callable[..., dict[str, Any]],
    tmp_path: Path,
) -> None:
    make_spec(
        "prep-whole",
        face_source.path,
        face_detection={"on_missing": "whole"},
        crop={"mode": "custom", "width": 32, "height": 32},
    )
    truth = face_source
    stats = run(PrepareArgs(dataset="prep-whole", output=f"file://{tmp_path}", batch_size=4))
    samples = _read(str(tmp_path / stats.version / "samples"))
    crops = sum(truth.faces.values()) + len(truth.faceless)
    assert samples.num_rows == stats.samples == 4 * crops
    assert stats.policies["whole"] == len(truth.faceless)
    assert set(samples["tile_index"].to_pylist()) == {0, 1, 2, 3}
    assert {(r["height"], r["width"]) for r in samples.select(["height", "width"]).to_pylist()} == {
        (32, 32)
    }
    whole = samples.filter(pa.compute.is_in(samples["source"], pa.array(truth.faceless)))
    assert whole["box"].null_count == whole.num_rows
    # All tiles of one face share the face's split: no face straddles train and test.
    per_face: dict[tuple[str, int], set[str]] = {}
    for r in samples.select(["source", "face_index", "split"]).to_pylist():
        per_face.setdefault((r["source"], r["face_index"]), set()).add(r["split"])
    assert all(len(s) == 1 for s in per_face.values())


def test_missing_dataset_exits_2_without_ray(etcd_server: object) -> None:
    assert main(["--dataset", "no-such-dataset"]) == 2


def test_help_works_from_the_repo_root() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "jobs.prepare", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "--dataset" in out.stdout
