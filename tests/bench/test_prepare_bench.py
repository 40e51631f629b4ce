"""bench/prepare.py: its sides do the same work, and its report states the figure it measured.

No timing is asserted: the sides run on a handful of generated images, and the report is
rendered from given numbers (pure logic).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import _report
from bench.prepare import (
    Report,
    Side,
    _default_threads,
    _generate,
    _processes,
    markdown,
)
from deepfix.prepare import STAGES
from deepfix.sources import list_images
from deepfix.spec import DatasetSpec, FaceDetectionSpec

pytest.importorskip("skimage")


def test_serial_sides_write_the_same_samples(tmp_path: Path) -> None:
    source = tmp_path / "images"
    _generate(source, 6)
    spec = DatasetSpec(
        name="bench-test",
        source=str(source),
        height=32,
        width=32,
        face_detection=FaceDetectionSpec(on_missing="whole"),
    )
    items = [it.path for it in list_images(spec.source).items]
    assert len(items) == 6

    one_core, stages = _processes(spec, items, tmp_path / "one", 4, 1)
    two, _ = _processes(spec, items, tmp_path / "two", 4, 2)
    default = _default_threads(spec, items, tmp_path / "default", 4)

    assert one_core.name == "serial loop, one core"
    assert one_core.samples >= 6  # every image gives a face crop or a centre crop
    assert two.samples == default.samples == one_core.samples
    assert set(stages) == set(STAGES) and stages["detect"] > 0
    assert len(list((tmp_path / "one" / "p0").glob("*.parquet"))) == 2  # 6 images, shards of 4
    assert len(list((tmp_path / "two").glob("p*/*.parquet"))) == 2  # 3 images per process


def _side(name: str, images_per_s: float) -> Side:
    return Side(name=name, seconds=100 / images_per_s, images_per_s=images_per_s, samples=100)


def test_report_figure_is_ray_warm_over_the_one_core_loop() -> None:
    report = Report(
        machine=_report.machine(),
        stamp="2026-01-01 00:00 UTC",
        source="/data/faces",
        images=100,
        size=128,
        faces=True,
        batch_size=64,
        num_cpus_per_task=1.0,
        cpu_count=2,
        pinned=True,
        load_average_before=None,
        load_average_after=None,
        opencv_threads_default=2,
        serial_one_core=[_side("one", 20.0), _side("one", 25.0)],
        serial_default_threads=[_side("default", 40.0)],
        processes=[_side("procs", 48.0)],
        ray_cold=[_side("cold", 30.0)],
        ray_warm=[_side("warm", 44.0), _side("warm", 45.0)],
        ratio=45.0 / 25.0,
        ratio_vs_default_threads=45.0 / 40.0,
        ratio_ceiling=48.0 / 25.0,
        ceiling_vs_default_threads=48.0 / 40.0,
        stage_ms_per_image=dict.fromkeys(STAGES, 1.0),
    )
    md = markdown(report)
    # Best rounds: 25 (one core), 45 (warm); 45 / 25 = 1.80, 48 / 25 = 1.92, 45 / 40 = 1.12.
    assert "**Figure: Ray warm = 1.80x the serial loop on one core**" in md
    assert "94% of the 1.92x" in md
    assert "Against the loop with OpenCV's default threads: 1.12x" in md
    assert "| Ray Data, warm | 45.0 | 1.80 | 1.12 |" in md
    assert "(sum 6.0)" in md
