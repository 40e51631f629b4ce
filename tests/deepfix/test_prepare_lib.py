"""deepfix.prepare: ids, splits, one image -> samples or a reject, replay, tables and stats."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from deepfix.degradations import DegradationPipeline
from deepfix.io import decode, encode
from deepfix.prepare import (
    BATCH_SCHEMA,
    REJECT_SCHEMA,
    SAMPLE_SCHEMA,
    STAGES,
    BlockSummary,
    OutputLayout,
    PreparedStats,
    Preparer,
    UnaccountedImages,
    assign_split,
    check_accounted,
    outcomes_to_table,
    prepared_stats,
    rejects_table,
    replay_degraded,
    sample_id,
    split_batch,
    summarize_block,
    version_name,
    write_json,
    write_table,
)
from deepfix.sources import Rejected
from deepfix.spec import DatasetSpec, SplitSpec


def _spec(**fields: Any) -> DatasetSpec:
    return DatasetSpec.model_validate(
        {"name": "unit", "source": "/nowhere", "height": 64, "width": 64, **fields}
    )


def _png(image: np.ndarray) -> bytes:
    return encode(image)


@pytest.fixture
def two_faces(astronaut: np.ndarray) -> bytes:
    face = astronaut[0:300, 100:350]
    return _png(np.ascontiguousarray(np.concatenate([face, face], axis=1)))


@pytest.fixture
def faceless() -> bytes:
    yy, xx = np.mgrid[0:96, 0:128]
    ramp = ((xx * 2 + yy) % 256).astype(np.uint8)
    return _png(np.stack([ramp, ramp[:, ::-1], np.full_like(ramp, 80)], -1))


# ------------------------------------------------------------------------------ ids, splits


def test_sample_id_is_pinned_short_and_stable() -> None:
    # Pinned: a changed id would silently re-split and re-degrade every existing dataset.
    assert sample_id("a/b.jpg", 0) == "8f74ed98822eb869"
    assert sample_id("a/b.jpg", 1, 3) == "5d5f367fddd286f7"


def test_sample_id_tells_faces_and_tiles_apart() -> None:
    ids = {
        sample_id("a.jpg", 0),
        sample_id("a.jpg", 1),
        sample_id("a.jpg", 0, 0),
        sample_id("a.jpg", 0, 1),
        sample_id("b.jpg", 0),
        sample_id("a.jpg0", 0),
    }
    assert len(ids) == 6


def test_split_assignment_is_stable_and_seeded() -> None:
    split = SplitSpec()
    first = [assign_split(3, f"img{i}.jpg", 0, split) for i in range(200)]
    assert first == [assign_split(3, f"img{i}.jpg", 0, split) for i in range(200)]
    assert first != [assign_split(4, f"img{i}.jpg", 0, split) for i in range(200)]


def test_split_fractions_hold_over_many_faces() -> None:
    split = SplitSpec(train=0.7, val=0.2, test=0.1)
    n = 20_000
    counts = Counter(assign_split(0, f"dir/{i}.png", i % 3, split) for i in range(n))
    assert abs(counts["train"] / n - 0.7) < 0.015
    assert abs(counts["val"] / n - 0.2) < 0.015
    assert abs(counts["test"] / n - 0.1) < 0.015


def test_a_zero_fraction_split_gets_nothing() -> None:
    split = SplitSpec(train=0.5, val=0.0, test=0.5)
    assert "val" not in {assign_split(1, f"{i}", 0, split) for i in range(2000)}
    only_train = SplitSpec(train=1.0, val=0.0, test=0.0)
    assert {assign_split(1, f"{i}", 0, only_train) for i in range(2000)} == {"train"}


# ----------------------------------------------------------------------------- one image


def test_two_face_image_becomes_two_samples(two_faces: bytes) -> None:
    out = Preparer(_spec(seed=5)).prepare("pair.png", two_faces)
    assert out.policy == "faces"
    assert out.faces == 2 and len(out.samples) == 2
    assert [s.face_index for s in out.samples] == [0, 1]
    assert (out.source_width, out.source_height) == (500, 300)
    for s in out.samples:
        assert s.box is not None and s.tile_index is None
        assert decode(s.clean).shape == (64, 64, 3)
        assert s.clean != s.degraded
        assert s.id == sample_id("pair.png", s.face_index)
        assert s.split == assign_split(5, "pair.png", s.face_index, SplitSpec())


def test_tiles_become_samples_of_their_own(astronaut: np.ndarray) -> None:
    spec = _spec(crop={"mode": "custom", "width": 32, "height": 32})
    out = Preparer(spec).prepare("astro.png", _png(astronaut))
    assert [s.tile_index for s in out.samples] == [0, 1, 2, 3]
    assert {decode(s.clean).shape for s in out.samples} == {(32, 32, 3)}
    assert len({s.id for s in out.samples}) == 4
    assert len({s.split for s in out.samples}) == 1  # tiles stay with their face


@pytest.mark.parametrize(
    ("on_missing", "policy", "samples"), [("skip", "skipped", 0), ("whole", "whole", 1)]
)
def test_faceless_image_follows_on_missing(
    faceless: bytes, on_missing: str, policy: str, samples: int
) -> None:
    out = Preparer(_spec(face_detection={"on_missing": on_missing})).prepare("g.png", faceless)
    assert out.policy == policy
    assert len(out.samples) == samples
    assert all(s.box is None for s in out.samples)


def test_detection_disabled_centre_crops(faceless: bytes) -> None:
    out = Preparer(_spec(face_detection={"enabled": False})).prepare("g.png", faceless)
    assert out.policy == "disabled" and len(out.samples) == 1 and out.faces == 0


def test_bad_bytes_become_rejects_with_reasons(
    png_bomb: bytes, encoded: Callable[..., bytes]
) -> None:
    jpeg = encoded(".jpg", h=64, w=64)
    cases = {
        "empty.png": (b"", "corrupt"),
        "notes.jpg": (b"plain text, not pixels", "unsupported"),
        "bomb.png": (png_bomb, "too_large"),
        "cut.jpg": (jpeg[: len(jpeg) * 3 // 4], "corrupt"),
    }
    preparer = Preparer(_spec())
    for name, (data, reason) in cases.items():
        out = preparer.prepare(name, data)
        assert (out.policy, out.reason, out.samples) == ("rejected", reason, []), name
        assert out.detail


def test_a_format_the_spec_excludes_is_unsupported(encoded: Callable[..., bytes]) -> None:
    out = Preparer(_spec(image_type="png")).prepare("x.jpg", encoded(".jpg"))
    assert (out.policy, out.reason) == ("rejected", "unsupported")


def test_an_unreadable_item_is_a_reject(tmp_path: Path) -> None:
    (tmp_path / "there.png").write_bytes(b"")
    out = Preparer(_spec(source=str(tmp_path))).prepare("gone.png")
    assert (out.policy, out.reason) == ("rejected", "unreadable")


def test_prepare_reads_from_the_source_and_times_stages(
    tmp_path: Path, astronaut: np.ndarray
) -> None:
    cv2.imwrite(str(tmp_path / "a.jpg"), cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR))
    preparer = Preparer(_spec(source=str(tmp_path)))
    out = preparer.prepare("a.jpg")
    assert out.policy == "faces" and len(out.samples) == 1
    assert set(preparer.timings) == set(STAGES)
    assert all(preparer.timings[s] > 0 for s in STAGES)


def test_degraded_replays_bit_for_bit_from_seed_and_id(two_faces: bytes) -> None:
    spec = _spec(seed=11)
    out = Preparer(spec).prepare("pair.png", two_faces)
    pipeline = DegradationPipeline.from_specs(spec.degradations)
    for s in out.samples:
        again, applied = replay_degraded(
            decode(s.clean), seed=11, sample_id=s.id, pipeline=pipeline
        )
        assert encode(again) == s.degraded
        assert applied == s.applied
    # A fresh Preparer (another worker) produces the very same bytes.
    assert Preparer(spec).prepare("pair.png", two_faces).samples == out.samples


# ------------------------------------------------------------------------ tables and stats


def test_batch_table_has_one_image_row_per_input(two_faces: bytes, faceless: bytes) -> None:
    preparer = Preparer(_spec())
    table = outcomes_to_table(
        [
            preparer.prepare("pair.png", two_faces),
            preparer.prepare("g.png", faceless),
            preparer.prepare("bad.png", b""),
        ]
    )
    assert table.schema.equals(BATCH_SCHEMA)
    samples, images = split_batch(table)
    assert samples.schema.equals(SAMPLE_SCHEMA)
    assert samples.num_rows == 2
    assert images["source"].to_pylist() == ["pair.png", "g.png", "bad.png"]
    assert images["policy"].to_pylist() == ["faces", "skipped", "rejected"]
    assert images["samples"].to_pylist() == [2, 0, 0]
    params = json.loads(samples["params"][0].as_py())
    assert samples["degradation_types"][0].as_py() == [p["type"] for p in params]

    rejects = rejects_table(images, [Rejected("../up.jpg", "path_traversal")])
    assert rejects.schema.equals(REJECT_SCHEMA)
    assert rejects["reason"].to_pylist() == ["corrupt", "path_traversal"]
    assert all(rejects["detail"].to_pylist())


def test_stats_aggregate_blocks_and_check_counts(
    two_faces: bytes, faceless: bytes, tmp_path: Path
) -> None:
    spec = _spec(face_detection={"on_missing": "whole"})
    preparer = Preparer(spec)
    parts = []
    for batch in (
        [("pair.png", two_faces), ("g.png", faceless)],
        [("bad.png", b"nope")],
    ):
        samples, images = split_batch(outcomes_to_table(preparer.prepare(*b) for b in batch))
        parts.append(summarize_block(samples, images, ["f"] if samples.num_rows else []))
    summary = BlockSummary.merge(parts)
    layout = OutputLayout(str(tmp_path), "v1")
    stats = prepared_stats(
        spec=spec,
        spec_revision=9,
        layout=layout,
        summary=summary,
        items=3,
        listing_rejected=[Rejected("x/../y.jpg", "path_traversal")],
        wall_time_s=2.0,
    )
    assert stats.samples == 3 and sum(stats.splits.values()) == 3
    assert stats.images_listed == 4 and stats.images_used == 2
    assert stats.policies == {"faces": 1, "whole": 1, "skipped": 0, "disabled": 0}
    assert stats.faces_per_image.histogram == {"0": 1, "2": 1}
    assert stats.faces_per_image.mean == 1.0
    assert stats.rejected == {"path_traversal": 1, "unsupported": 1}
    assert stats.source_width is not None and (stats.source_width.min, stats.source_width.max) == (
        128,
        500,
    )
    assert sum(stats.degradations.values()) >= 3
    assert stats.samples_uri == f"{tmp_path}/v1/samples"
    check_accounted(stats)
    with pytest.raises(UnaccountedImages, match="4 images listed but 3"):
        check_accounted(stats.model_copy(update={"images_used": 1}))
    assert PreparedStats.model_validate(json.loads(stats.model_dump_json())) == stats


def test_version_names_sort_by_time_and_name_the_revision() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert version_name(42, when) == "v20260102030405-r42"


def test_tables_and_json_go_to_paths_and_file_uris(tmp_path: Path) -> None:
    table = pa.table({"clean": pa.array([b"\x89PNG"], pa.binary()), "n": [1]})
    uri = write_table(table, f"file://{tmp_path}/deep/er", "t.parquet")
    assert uri == f"file://{tmp_path}/deep/er/t.parquet"
    assert pq.read_table(tmp_path / "deep" / "er" / "t.parquet").equals(table)
    write_json({"a": 1}, str(tmp_path / "m" / "manifest.json"))
    assert json.loads((tmp_path / "m" / "manifest.json").read_text()) == {"a": 1}


def test_default_layout_lives_under_deepfix_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEPFIX_HOME", "/srv/df")
    layout = OutputLayout.default("faces", "v1-r2")
    assert layout.samples_uri == "/srv/df/datasets/faces/v1-r2/samples"
    assert layout.rejects_uri == "/srv/df/datasets/faces/v1-r2/rejects"
    assert layout.manifest_uri == "/srv/df/datasets/faces/v1-r2/manifest.json"
    assert OutputLayout.default("faces", "v1", root="s3://b/x/").samples_uri == (
        "s3://b/x/v1/samples"
    )
