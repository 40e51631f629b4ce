"""Training throughput: Ray Train (N CPU workers) vs a plain single-process PyTorch loop.

Usage::

    python -m bench.train [--samples 192] [--size 64] [--epochs 3] [--batch-size 16]
                          [--workers 2] [--arch unet_r2] [--json OUT] [--doc]

Both sides train the same network (``deepfix.models``, a U-Net after Ronneberger et al. 2015 /
R2U-Net after Alom et al. 2018) with the same loop pieces (:mod:`deepfix.training`) on the
same synthetic Parquet dataset in the prepared-dataset schema, written once to a temp folder:

* **plain**: one process reads the Parquet with pyarrow, decodes PNG batches and runs
  ``train_epoch``, with every core to torch's intra-op threads;
* **ray**: ``jobs.train``'s ``train_loop_per_worker`` under a ``TorchTrainer`` with ``--workers``
  CPU workers (DDP, gloo), Ray Data streaming-split of ``read_parquet``, a checkpoint per
  epoch: exactly what ``python -m jobs.train`` runs, minus etcd and the model store.

Reported: training samples/s per epoch, measured around ``train_epoch`` only (reading,
decoding and the optimiser step included; validation and checkpointing excluded), over the
epochs after the first (which pays for warm-up and Ray Data start-up); and the wall time of
the whole run, start-up included. The plain loop runs once with one intra-op thread and once
with as many as the Ray side has in total; the ratio is ray / the faster plain run. On a
shared machine the numbers are indicative only; the load average before and after is recorded
for that reason.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from pydantic import BaseModel

from bench import _report


class SideResult(BaseModel):
    setup: str
    workers: int
    threads_per_worker: int
    samples_per_epoch: int
    epoch_samples_per_s: list[float]
    steady_samples_per_s: float
    wall_s: float


class BenchReport(BaseModel):
    arch: str
    size: int
    samples: int
    batch_size: int
    epochs: int
    machine: str
    load_average_before: tuple[float, float, float] | None
    load_average_after: tuple[float, float, float] | None
    plain: list[SideResult]
    ray: SideResult

    @property
    def best_plain(self) -> SideResult:
        return max(self.plain, key=lambda s: s.steady_samples_per_s)

    @property
    def ratio(self) -> float:
        return self.ray.steady_samples_per_s / self.best_plain.steady_samples_per_s


def write_dataset(folder: Path, *, samples: int, size: int, seed: int = 0) -> str:
    """Noisy/clean PNG pairs, 7/8 ``train`` and 1/8 ``val``, in two Parquet shards."""
    from deepfix.io import encode

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    rows: dict[str, list[Any]] = {"split": [], "clean": [], "degraded": []}
    for i in range(samples):
        base = (np.sin(xx / (3 + i % 7)) + np.cos(yy / (2 + i % 5))) * 60 + 128
        clean = np.clip(np.stack([base, base.T, base[::-1]], -1), 0, 255).astype(np.uint8)
        noisy = np.clip(clean + rng.normal(0, 15, clean.shape), 0, 255).astype(np.uint8)
        rows["split"].append("val" if i % 8 == 7 else "train")
        rows["clean"].append(encode(clean))
        rows["degraded"].append(encode(noisy))
    table = pa.Table.from_pydict(rows)
    folder.mkdir(parents=True, exist_ok=True)
    half = samples // 2
    pq.write_table(table.slice(0, half), folder / "part-0.parquet")
    pq.write_table(table.slice(half), folder / "part-1.parquet")
    return str(folder)


def _steady(per_epoch: list[float]) -> float:
    later = per_epoch[1:] or per_epoch
    return statistics.mean(later)


def run_plain(uri: str, config: Any, *, threads: int) -> SideResult:
    """The same epochs in this process: pyarrow batches -> decode -> train_epoch."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    from deepfix.models import build_model
    from deepfix.training import decode_pairs, make_optimizer, make_scheduler, train_epoch

    start = time.perf_counter()
    torch.set_num_threads(threads)
    torch.manual_seed(config.seed)
    model = build_model(config.arch)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config)
    dataset = pads.dataset(uri, format="parquet")

    def batches() -> Any:
        scanner = dataset.scanner(
            columns=["degraded", "clean"],
            filter=pc.field("split") == "train",
            batch_size=config.batch_size,
        )
        for rb in scanner.to_batches():
            if rb.num_rows:
                yield decode_pairs(rb.to_pydict())

    rates, samples = [], 0
    for _ in range(config.epochs):
        stats = train_epoch(
            model,
            batches(),
            optimizer,
            pixel_loss=config.pixel_loss,
            ssim_weight=config.ssim_weight,
        )
        scheduler.step()
        rates.append(stats.samples_per_s)
        samples = stats.samples
    return SideResult(
        setup=f"plain PyTorch, 1 process, {threads} thread{'s' if threads > 1 else ''}",
        workers=1,
        threads_per_worker=torch.get_num_threads(),
        samples_per_epoch=samples,
        epoch_samples_per_s=rates,
        steady_samples_per_s=_steady(rates),
        wall_s=time.perf_counter() - start,
    )


def run_ray(uri: str, config: Any, *, workers: int, storage: str) -> SideResult:
    """jobs.train's loop under a TorchTrainer with ``workers`` CPU workers."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from jobs.train import LoopConfig, read_split, train_loop_per_worker

    start = time.perf_counter()
    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    per_worker = max(0.25, min(1.0, (cpus - 1.0) / workers))
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=LoopConfig(train=config).model_dump(mode="json"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers, resources_per_worker={"CPU": per_worker}
        ),
        run_config=ray.train.RunConfig(name="bench-train", storage_path=storage),
        datasets={"train": read_split(uri, "train"), "val": read_split(uri, "val")},
    )
    result = trainer.fit()
    rows = [m for _, m in sorted(result.best_checkpoints or [], key=lambda cm: cm[1]["epoch"])]
    # train_samples is summed over workers; train_seconds is rank 0's time around the epoch.
    rates = [m["train_samples"] / m["train_seconds"] for m in rows]
    # Ray gives an actor with a fractional CPU one intra-op thread (OMP_NUM_THREADS=1).
    threads = max(1, int(per_worker))
    return SideResult(
        setup=f"Ray Train, {workers} CPU workers (DDP)",
        workers=workers,
        threads_per_worker=threads,
        samples_per_epoch=int(rows[-1]["train_samples"]) if rows else 0,
        epoch_samples_per_s=rates,
        steady_samples_per_s=_steady(rates) if rates else 0.0,
        wall_s=time.perf_counter() - start,
    )


def run(
    *,
    arch: str,
    samples: int,
    size: int,
    epochs: int,
    batch_size: int,
    workers: int,
    address: str,
) -> BenchReport:
    """Measure both sides and return the report (no printing)."""
    import ray

    from deepfix.models import load_arch_config
    from deepfix.training import TrainConfig

    config = TrainConfig(arch=load_arch_config(arch), epochs=epochs, batch_size=batch_size)
    load_before = _report.load_average()
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        uri = write_dataset(Path(tmp) / "data", samples=samples, size=size)
        # One intra-op thread, and as many as the Ray side has in total: on a busy machine
        # more threads can be slower (they wait on each other), so both are measured.
        plain = [
            run_plain(uri, config, threads=t) for t in sorted({1, workers, os.cpu_count() or 1})
        ]
        started_here = not ray.is_initialized()
        if started_here:
            ray.init(
                address=address,
                num_cpus=os.cpu_count() if address == "local" else None,
                include_dashboard=False,
                log_to_driver=False,
            )
        try:
            # Per-worker batch size stays the same, as in jobs.train (--batch-size is per worker).
            ray_side = run_ray(uri, config, workers=workers, storage=str(Path(tmp) / "ray"))
        finally:
            if started_here:
                ray.shutdown()
    return BenchReport(
        arch=arch,
        size=size,
        samples=samples,
        batch_size=batch_size,
        epochs=epochs,
        machine=f"{_report.machine()}, torch {torch.__version__}",
        load_average_before=load_before,
        load_average_after=_report.load_average(),
        plain=plain,
        ray=ray_side,
    )


def markdown(report: BenchReport) -> str:
    def load(v: tuple[float, float, float] | None) -> str:
        return "n/a" if v is None else f"{v[0]:.1f}"

    lines = [
        "## Training throughput (`bench/train.py`)",
        "",
        f"{report.machine}; `{report.arch}` on {report.size}x{report.size} noisy/clean pairs, "
        f"{report.samples} samples (7/8 train), batch {report.batch_size} per worker, "
        f"{report.epochs} epochs; steady = mean of epochs 2..{report.epochs}. "
        f"Load average {load(report.load_average_before)} before, "
        f"{load(report.load_average_after)} after.",
        "",
        "| setup | workers x threads | train samples/epoch | steady samples/s | wall s (all) |",
        "|---|---|---:|---:|---:|",
    ]
    for side in (*report.plain, report.ray):
        lines.append(
            f"| {side.setup} | {side.workers} x {side.threads_per_worker} | "
            f"{side.samples_per_epoch} | {side.steady_samples_per_s:.1f} | {side.wall_s:.1f} |"
        )
    lines += [
        "",
        f"Ray / best plain steady throughput: **{report.ratio:.2f}x** "
        f"(vs {report.best_plain.setup}).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="unet_r2", help="packaged architecture config")
    parser.add_argument("--samples", type=int, default=192)
    parser.add_argument("--size", type=int, default=64, help="square sample side")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16, help="per worker")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--address", default="local", help="Ray address; 'local' starts a private Ray"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    parser.add_argument("--doc", action="store_true", help="rewrite docs/benchmarks.md section")
    args = parser.parse_args(argv)
    report = run(
        arch=args.arch,
        samples=args.samples,
        size=args.size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        workers=args.workers,
        address=args.address,
    )
    md = markdown(report)
    print(md)
    if args.json:
        args.json.write_text(json.dumps(report.model_dump(), indent=2))
    if args.doc:
        _report.write_section("train", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
