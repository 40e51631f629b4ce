"""Forward-pass throughput of a registered restoration network on this machine.

Usage::

    python -m bench.infer [--arch unet_r2] [--size 256] [--batch-sizes 1,2,4,8,16,32]
                          [--channels-last both|on|off] [--json OUT] [--doc]

For each batch size the network (a U-Net after Ronneberger et al. 2015 / R2U-Net after Alom et
al. 2018, see ``deepfix.models``) runs under ``torch.inference_mode`` in eval mode: warm-up
passes, then timed passes until ``--min-time`` seconds and ``--repeats`` passes are both
reached; the median pass gives images/s. FLOPs per image come from ``deepfix.models.summarize``
(conv/linear multiply-adds x 2), so achieved GFLOP/s = FLOPs/image x images/s. The same run
times a float32 ``torch.matmul`` of two N x N matrices as the machine's practical peak and
reports achieved/peak. ``torch.get_num_threads()`` is used as it is and reported: set
``OMP_NUM_THREADS`` or ``torch.set_num_threads`` outside to change it. On shared machines the
numbers are indicative only; the load average before and after is recorded for that reason.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from pydantic import BaseModel
from torch import nn

from bench import _report
from deepfix.models import (
    ArchitectureConfig,
    build_model,
    list_arch_configs,
    load_arch_config,
    summarize,
)


class Row(BaseModel):
    channels_last: bool
    batch_size: int
    ms_per_batch: float
    images_per_s: float
    gflops_per_s: float
    fraction_of_matmul: float
    repeats: int


class Report(BaseModel):
    arch: str
    params: int
    size: int
    flops_per_image: int
    device: str
    torch_version: str
    num_threads: int
    num_interop_threads: int
    cpu: str
    cpu_count: int | None
    load_average_before: tuple[float, float, float] | None
    load_average_after: tuple[float, float, float] | None
    matmul_n: int
    matmul_gflops_per_s: float
    rows: list[Row]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(
    fn: Callable[[], object],
    *,
    device: torch.device,
    warmup: int,
    repeats: int,
    min_time: float,
) -> tuple[float, int]:
    """Median seconds per call, and how many timed calls that median is over."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - started < min_time:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), len(times)


def _forward(model: nn.Module, x: torch.Tensor) -> object:
    with torch.inference_mode():
        return model(x)


def matmul_gflops(n: int, device: torch.device) -> float:
    """Best-of float32 ``a @ b`` throughput for n x n matrices, in GFLOP/s (2 n^3 per product)."""
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.rand(n, n, device=device, generator=generator)
    b = torch.rand(n, n, device=device, generator=generator)
    with torch.inference_mode():
        # Best rather than median: this is the ceiling the network is compared against.
        for _ in range(2):
            torch.matmul(a, b)
        _sync(device)
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            torch.matmul(a, b)
            _sync(device)
            best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def _config(arch: str) -> ArchitectureConfig:
    if arch in list_arch_configs():
        return load_arch_config(arch)
    return ArchitectureConfig(name=arch)


def _markdown(report: Report) -> str:
    lines = [
        f"`{report.arch}` ({report.params:,} params), {report.size}x{report.size}, "
        f"{report.flops_per_image / 1e9:.2f} GFLOP/image; {report.device}: {report.cpu}, "
        f"torch {report.torch_version}, {report.num_threads} threads; "
        f"matmul {report.matmul_n}x{report.matmul_n} fp32 = "
        f"{report.matmul_gflops_per_s:.1f} GFLOP/s; load average before/after "
        f"{_report.fmt_load(report.load_average_before)} / "
        f"{_report.fmt_load(report.load_average_after)}",
        "",
        "| channels_last | batch | ms/batch | images/s | GFLOP/s | % of matmul |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in report.rows:
        lines.append(
            f"| {'on' if row.channels_last else 'off'} | {row.batch_size} "
            f"| {row.ms_per_batch:.1f} | {row.images_per_s:.2f} | {row.gflops_per_s:.1f} "
            f"| {100 * row.fraction_of_matmul:.0f} % |"
        )
    return "\n".join(lines)


def run(
    *,
    arch: str,
    size: int,
    batch_sizes: list[int],
    channels_last: list[bool],
    device: torch.device,
    warmup: int,
    repeats: int,
    min_time: float,
    matmul_n: int,
) -> Report:
    """Measure everything and return it (no printing)."""
    load_before = _report.load_average()
    config = _config(arch)
    model: nn.Module = build_model(config).to(device).eval()
    summary = summarize(model, input_hw=(size, size))
    peak = matmul_gflops(matmul_n, device)
    rows: list[Row] = []
    for cl in channels_last:
        fmt = torch.channels_last if cl else torch.contiguous_format
        # Documented and supported by nn.Module.to, but missing from its type stubs.
        model = model.to(memory_format=fmt)  # type: ignore[call-overload]
        for batch in batch_sizes:
            x = torch.rand(batch, 3, size, size, device=device).contiguous(memory_format=fmt)

            seconds, n = _time(
                partial(_forward, model, x),
                device=device,
                warmup=warmup,
                repeats=repeats,
                min_time=min_time,
            )
            images_per_s = batch / seconds
            achieved = summary.flops * images_per_s / 1e9
            rows.append(
                Row(
                    channels_last=cl,
                    batch_size=batch,
                    ms_per_batch=1e3 * seconds,
                    images_per_s=images_per_s,
                    gflops_per_s=achieved,
                    fraction_of_matmul=achieved / peak,
                    repeats=n,
                )
            )
            print(
                f"channels_last={cl} batch={batch}: {images_per_s:.2f} img/s "
                f"({achieved:.1f} GFLOP/s)",
                file=sys.stderr,
                flush=True,
            )
    return Report(
        arch=arch,
        params=summary.trainable_params,
        size=size,
        flops_per_image=summary.flops,
        device=str(device),
        torch_version=torch.__version__,
        num_threads=torch.get_num_threads(),
        num_interop_threads=torch.get_num_interop_threads(),
        cpu=_report.cpu_name() if device.type == "cpu" else torch.cuda.get_device_name(device),
        cpu_count=os.cpu_count(),
        load_average_before=load_before,
        load_average_after=_report.load_average(),
        matmul_n=matmul_n,
        matmul_gflops_per_s=peak,
        rows=rows,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="unet_r2", help="config variant or architecture name")
    parser.add_argument("--size", type=int, default=256, help="square input side in pixels")
    parser.add_argument("--batch-sizes", default="1,2,4,8,16,32")
    parser.add_argument("--channels-last", choices=["both", "on", "off"], default="both")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes per batch size")
    parser.add_argument("--repeats", type=int, default=2, help="minimum timed passes")
    parser.add_argument("--min-time", type=float, default=1.5, help="minimum timed seconds")
    parser.add_argument("--matmul-n", type=int, default=2048)
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    parser.add_argument("--doc", action="store_true", help="rewrite docs/benchmarks.md section")
    args = parser.parse_args(argv)

    modes = {"both": [False, True], "on": [True], "off": [False]}[args.channels_last]
    report = run(
        arch=args.arch,
        size=args.size,
        batch_sizes=[int(b) for b in args.batch_sizes.split(",") if b.strip()],
        channels_last=modes,
        device=torch.device(args.device),
        warmup=args.warmup,
        repeats=args.repeats,
        min_time=args.min_time,
        matmul_n=args.matmul_n,
    )
    md = f"## Inference throughput (`bench/infer.py`)\n\n{_report.stamp()}; {_markdown(report)}"
    print(md)
    if args.doc:
        _report.write_section("infer", md)
    if args.json is not None:
        args.json.write_text(json.dumps(report.model_dump(), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
