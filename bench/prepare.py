"""Images/s of the Ray Data prepare pipeline against a plain serial loop, same images, same run.

Usage::

    python -m bench.prepare [--source DIR] [--limit N] [--size 128] [--batch-size 64]
                            [--num-cpus 1.0] [--repeats 2] [--no-faces] [--json OUT] [--doc]

(from the repository root, so that Ray workers import ``jobs.prepare`` from it).

Every side does the same work with the same code (``deepfix.prepare.Preparer``): read, decode,
detect faces (Haar), crop and resize, degrade, PNG-encode, and write Parquet shards of
``batch-size`` images into a temporary folder. The sides:

- **serial loop, one core** (the baseline of the figure): the loop in a child process pinned to
  one CPU (``sched_setaffinity``) with one OpenCV thread, so it is serial in the strict sense:
  one image at a time on one core.
- **serial loop, OpenCV default threads**: the same loop in this process with OpenCV's default
  thread pool (a thread per core). Haar's ``detectMultiScale`` and the blurs are
  ``parallel_for`` loops, so this "serial" loop already runs its hottest stage on every core;
  its ratio is reported beside the figure, never instead of it.
- **N plain processes** (no Ray): one child per CPU, each pinned to its own CPU with one OpenCV
  thread, on every N-th image: the parallel ceiling of the machine for this work.
- **Ray cold / warm**: ``jobs.prepare.build_dataset`` + ``write_samples`` on a local Ray with
  every CPU, timed from the first Ray Data call to the end of the write (``ray.init``
  excluded). Cold is the first execution after ``ray.init`` (workers import deepfix and build
  their detector inside the timing); warm runs reuse the workers.

Children time their own loops (process start-up excluded). Rounds interleave the sides so
that load from elsewhere on a shared machine hits all of them alike; each figure is the best
round. The per-stage cost per image comes from the fastest one-core round.

``--source`` defaults to ``../shared/data/faces-dev`` (real photographs, local benchmarks only)
when it exists, else a generated folder of astronaut crops (scikit-image) is used.
``--no-faces`` turns face detection off (centre crops), to show the pipeline on work that
OpenCV does not parallelise internally. The load average before and after is recorded.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pydantic import BaseModel

from bench import _report
from deepfix.prepare import STAGES, Preparer, split_batch, write_table
from deepfix.sources import list_images
from deepfix.spec import DatasetSpec, FaceDetectionSpec

DEFAULT_SOURCE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "faces-dev"


class Side(BaseModel):
    name: str
    seconds: float
    images_per_s: float
    samples: int


class Report(BaseModel):
    machine: str
    stamp: str
    source: str
    images: int
    size: int
    faces: bool
    batch_size: int
    num_cpus_per_task: float
    cpu_count: int
    pinned: bool
    load_average_before: tuple[float, float, float] | None
    load_average_after: tuple[float, float, float] | None
    opencv_threads_default: int
    serial_one_core: list[Side]
    serial_default_threads: list[Side]
    processes: list[Side]
    ray_cold: list[Side]
    ray_warm: list[Side]
    ratio: float
    """Ray warm / serial loop on one core: the figure."""
    ratio_vs_default_threads: float
    ratio_ceiling: float
    """N plain processes / serial loop on one core."""
    ceiling_vs_default_threads: float
    stage_ms_per_image: dict[str, float]


def _init_ray(ray: Any) -> None:
    # address="local": a private Ray with every CPU, never a cluster another process started.
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False


def _generate(folder: Path, n: int) -> None:
    """Astronaut crops at assorted sizes and exposures: real faces without external data."""
    try:
        from skimage.data import astronaut
    except ImportError:  # pragma: no cover - skimage is a dev dependency
        sys.exit("no --source and no faces-dev folder; install scikit-image to generate one")
    base = np.ascontiguousarray(astronaut())
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        side = int(rng.integers(160, 320))
        x, y = (int(v) for v in rng.integers(0, 120, size=2))
        crop = base[y : y + 380, x + 60 : x + 440]
        img = cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA)
        img = np.clip(img * rng.uniform(0.7, 1.2), 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"img_{i:05d}.jpg"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))


def _loop(
    spec: DatasetSpec, items: list[str], out: Path, batch: int, cv2_threads: int
) -> tuple[float, int, dict[str, float]]:
    """The plain serial loop: seconds, samples written, seconds per stage."""
    cv2.setNumThreads(cv2_threads)  # -1: OpenCV's default (a thread per core)
    preparer = Preparer(spec, allow_private=True)
    start = time.perf_counter()
    samples = 0
    for k in range(0, len(items), batch):
        table, _images = split_batch(preparer.prepare_batch(items[k : k + batch]))
        samples += table.num_rows
        if table.num_rows:
            write_table(table, str(out), f"part-{k // batch:05d}.parquet")
    seconds = time.perf_counter() - start
    cv2.setNumThreads(-1)
    return seconds, samples, dict(preparer.timings)


def _pinned_loop(
    cpu: int | None, spec_json: str, items: list[str], out: str, batch: int
) -> tuple[float, int, dict[str, float]]:
    """In a child process: the loop on one core (pinned to ``cpu`` where the OS allows)."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    return _loop(DatasetSpec.model_validate_json(spec_json), items, Path(out), batch, 1)


def _cpus() -> list[int | None]:
    """The CPUs children are pinned to, one per child; ``None`` where pinning is unsupported."""
    if hasattr(os, "sched_getaffinity"):
        return [*sorted(os.sched_getaffinity(0))]
    return [None] * (os.cpu_count() or 1)


def _processes(
    spec: DatasetSpec, items: list[str], out: Path, batch: int, n: int
) -> tuple[Side, dict[str, float]]:
    """``n`` plain processes, each pinned to its own CPU, each on every n-th image.

    ``n == 1`` is the serial loop on one core. Process start-up is excluded (each child
    times its own loop); the side's time is the slowest child's.
    """
    cpus = _cpus()[:n]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(n, mp_context=ctx) as pool:
        futures = [
            pool.submit(
                _pinned_loop, cpu, spec.model_dump_json(), items[k::n], str(out / f"p{k}"), batch
            )
            for k, cpu in enumerate(cpus)
        ]
        results = [f.result() for f in futures]
    seconds = max(r[0] for r in results)
    name = "serial loop, one core" if n == 1 else f"{n} plain processes, no Ray"
    side = Side(
        name=name,
        seconds=seconds,
        images_per_s=len(items) / seconds,
        samples=sum(r[1] for r in results),
    )
    return side, results[0][2]


def _default_threads(spec: DatasetSpec, items: list[str], out: Path, batch: int) -> Side:
    seconds, samples, _ = _loop(spec, items, out, batch, -1)
    return Side(
        name="serial loop, OpenCV default threads",
        seconds=seconds,
        images_per_s=len(items) / seconds,
        samples=samples,
    )


def _ray(spec: DatasetSpec, items: list[str], out: Path, args: argparse.Namespace) -> Side:
    from jobs.prepare import build_dataset, write_samples

    start = time.perf_counter()
    ds = build_dataset(
        items, spec, batch_size=args.batch_size, num_cpus=args.num_cpus, allow_private=True
    )
    summary = write_samples(ds, str(out))
    seconds = time.perf_counter() - start
    return Side(
        name="ray", seconds=seconds, images_per_s=len(items) / seconds, samples=summary.samples
    )


def _best(sides: list[Side]) -> float:
    return max(s.images_per_s for s in sides)


def run(args: argparse.Namespace) -> Report:
    tmp = Path(tempfile.mkdtemp(prefix="deepfix-bench-prepare-"))
    try:
        source = args.source
        if source is None:
            source = DEFAULT_SOURCE.resolve() if DEFAULT_SOURCE.is_dir() else tmp / "generated"
            if not DEFAULT_SOURCE.is_dir():
                _generate(source, args.limit or 300)
        spec = DatasetSpec(
            name="bench",
            source=str(source),
            height=args.size,
            width=args.size,
            face_detection=FaceDetectionSpec(enabled=not args.no_faces, on_missing="whole"),
        )
        items = [it.path for it in list_images(spec.source).items][: args.limit]
        if not items:
            sys.exit(f"no images in {source}")
        n = len(_cpus())

        import ray

        _init_ray(ray)
        load_before = _report.load_average()
        one_core: list[Side] = []
        default: list[Side] = []
        procs: list[Side] = []
        warm: list[Side] = []
        stage_s: dict[str, float] = {}
        cold = [_ray(spec, items, tmp / "ray-cold", args)]
        for r in range(args.repeats):
            side, stages = _processes(spec, items, tmp / f"one-{r}", args.batch_size, 1)
            one_core.append(side)
            if side.images_per_s == _best(one_core):
                stage_s = stages
            warm.append(_ray(spec, items, tmp / f"ray-warm-{r}", args))
            default.append(_default_threads(spec, items, tmp / f"default-{r}", args.batch_size))
            procs.append(_processes(spec, items, tmp / f"procs-{r}", args.batch_size, n)[0])
        ray.shutdown()
        return Report(
            machine=_report.machine(),
            stamp=_report.stamp(),
            source=str(source),
            images=len(items),
            size=args.size,
            faces=not args.no_faces,
            batch_size=args.batch_size,
            num_cpus_per_task=args.num_cpus,
            cpu_count=n,
            pinned=_cpus()[0] is not None,
            load_average_before=load_before,
            load_average_after=_report.load_average(),
            opencv_threads_default=cv2.getNumThreads(),
            serial_one_core=one_core,
            serial_default_threads=default,
            processes=procs,
            ray_cold=cold,
            ray_warm=warm,
            ratio=_best(warm) / _best(one_core),
            ratio_vs_default_threads=_best(warm) / _best(default),
            ratio_ceiling=_best(procs) / _best(one_core),
            ceiling_vs_default_threads=_best(procs) / _best(default),
            stage_ms_per_image={s: 1000 * stage_s[s] / len(items) for s in STAGES},
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def markdown(r: Report) -> str:
    work = "detect faces (Haar)" if r.faces else "no face detection (centre crops)"
    fill = functools.partial(textwrap.fill, width=100, break_on_hyphens=False)
    lines = [
        "## Dataset preparation (`bench/prepare.py`)" + ("" if r.faces else ", face detection off"),
        "",
        fill(
            f"{r.stamp}, `python -m bench.prepare{'' if r.faces else ' --no-faces'}`: "
            f"{r.machine}; {r.images} images from `{Path(r.source).name}`, {work}, "
            f"{r.size}x{r.size} samples, batch {r.batch_size}, `num_cpus` "
            f"{r.num_cpus_per_task:g} per task. Load average "
            f"{_report.fmt_load(r.load_average_before)} before, "
            f"{_report.fmt_load(r.load_average_after)} after. Best of "
            f"{len(r.ray_warm)} interleaved rounds per side; the one-core loop and the plain "
            f"processes run {'pinned to a CPU each' if r.pinned else 'unpinned (no affinity API)'}."
        ),
        "",
        "| side (same images, same run) | images/s | x serial one core "
        "| x serial default threads |",
        "|---|---:|---:|---:|",
    ]
    one, default = _best(r.serial_one_core), _best(r.serial_default_threads)
    rows = (
        ("serial loop, one core (**baseline**)", r.serial_one_core),
        (
            f"serial loop, OpenCV default threads ({r.opencv_threads_default})",
            r.serial_default_threads,
        ),
        (f"{r.cpu_count} plain processes, no Ray (ceiling)", r.processes),
        ("Ray Data, cold (first run after `ray.init`)", r.ray_cold),
        ("Ray Data, warm", r.ray_warm),
    )
    for label, sides in rows:
        best = _best(sides)
        lines.append(f"| {label} | {best:.1f} | {best / one:.2f} | {best / default:.2f} |")
    total = sum(r.stage_ms_per_image.values())
    stages = ", ".join(f"{k} {v:.2f}" for k, v in r.stage_ms_per_image.items())
    lines += [
        "",
        fill(
            f"**Figure: Ray warm = {r.ratio:.2f}x the serial loop on one core** "
            f"({r.ratio / r.ratio_ceiling:.0%} of the {r.ratio_ceiling:.2f}x that {r.cpu_count} "
            f"plain processes reach). Against the loop with OpenCV's default threads: "
            f"{r.ratio_vs_default_threads:.2f}x, where the no-Ray ceiling is "
            f"{r.ceiling_vs_default_threads:.2f}x."
        ),
        "",
        fill(f"Per-stage cost on one core, ms per image: {stages} (sum {total:.1f})."),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=None, help="folder of face images")
    parser.add_argument("--limit", type=int, default=None, help="use the first N images")
    parser.add_argument("--size", type=int, default=128, help="sample height and width")
    parser.add_argument("--batch-size", type=int, default=64, help="images per map task")
    parser.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per map task")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds per side")
    parser.add_argument("--no-faces", action="store_true", help="face detection off")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    parser.add_argument(
        "--doc", action="store_true", help="rewrite the prepare section of docs/benchmarks.md"
    )
    args = parser.parse_args(argv)
    report = run(args)
    md = markdown(report)
    print(md)
    if args.json is not None:
        args.json.write_text(json.dumps(report.model_dump(), indent=2) + "\n")
    if args.doc:
        _report.write_section("prepare" if report.faces else "prepare-no-faces", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
