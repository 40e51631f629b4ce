"""Closed-loop load on ``POST /v1/enhance`` over loopback, batching off and on, vs in-process.

    python -m bench.serve [--requests 48] [--concurrency 1,8,32] [--batch-sizes 1,8]
                          [--size 256] [--arch unet_r2] [--level-cap-s 90] [--wall-cap-s 900]
                          [--json OUT] [--doc]

For each ``max_batch_size`` the app is (re)deployed with that ``user_config``; for each
concurrency ``c``, ``c`` client threads each send one request, wait for the answer, send the
next, until ``--requests`` answers came back or ``--level-cap-s`` passed (bounded either way).
Reported per level: requests/s, p50/p99 latency, mean batch size the replica formed.

The same run measures the model in-process on the same images with the same thread count as
the replica (1 thread: Ray sets ``OMP_NUM_THREADS`` from ``num_cpus=1``): the model alone
(``deepfix.enhance.enhance_whole``) and decode + model + encode; "Serve overhead" is
p50 latency at concurrency 1 over the in-process decode + model + encode time.

Without ``RAY_ADDRESS`` it starts a private etcd (free loopback ports, temp ``DEEPFIX_HOME``)
and a private Ray (``num_cpus`` = this machine's CPUs); with ``RAY_ADDRESS`` (and the stack's
etcd, ``DEEPFIX_ETCD`` or the local stack's record) it uses those. Either way it registers a
random-weight ``bench-serve`` model (latency does not depend on the weights) and serves it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import requests
from pydantic import BaseModel

from bench import _report

# Ray workers import `serve.*` from the repository root (given to them via PYTHONPATH).
_ROOT = Path(__file__).resolve().parent.parent

log = logging.getLogger("bench.serve")

MODEL = "bench-serve"
APP = "deepfix-bench"


class Level(BaseModel):
    max_batch_size: int
    concurrency: int
    requests: int
    errors: int
    seconds: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    mean_batch: float


class Report(BaseModel):
    machine: str
    stamp: str
    arch: str
    size: int
    batch_wait_timeout_s: float
    torch_threads: int
    in_process_model_ms: float
    in_process_total_ms: float
    in_process_total_ms_before_after: tuple[float, float]
    in_process_batch8_ms_per_image: float
    load_average_before: tuple[float, float, float] | None
    load_average_after: tuple[float, float, float] | None
    levels: list[Level]


def _pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def _images(n: int, size: int) -> list[bytes]:
    """``n`` distinct face-sized PNGs: smooth gradients with noise, like a degraded photo."""
    rng = np.random.default_rng(0)
    out = []
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for _ in range(n):
        base = np.stack([xx, yy, (xx + yy) / 2], axis=-1) * rng.uniform(80, 200, 3)
        noisy = base + rng.normal(0, 12, base.shape)
        rgb = np.clip(noisy, 0, 255).astype(np.uint8)
        ok, buf = cv2.imencode(".png", rgb)
        assert ok
        out.append(bytes(buf.tobytes()))
    return out


@contextlib.contextmanager
def _cluster(num_cpus: int) -> Iterator[None]:
    """A private etcd + Ray, or the running stack when ``RAY_ADDRESS`` is set."""
    import ray

    env = {"PYTHONPATH": str(_ROOT)}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(runtime_env={"env_vars": env}, log_to_driver=False)
        try:
            yield
        finally:
            ray.shutdown()
        return
    from config_store.config import config
    from config_store.server import LocalEtcd, free_port

    with tempfile.TemporaryDirectory(prefix="deepfix-bench-serve-") as home:
        etcd = LocalEtcd(Path(home) / "etcd", free_port(), free_port())
        etcd.start()
        os.environ.update(DEEPFIX_HOME=home, DEEPFIX_ETCD=etcd.endpoint)
        config.use(None)
        env.update(DEEPFIX_HOME=home, DEEPFIX_ETCD=etcd.endpoint)
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": env},
        )
        try:
            yield
        finally:
            ray.shutdown()
            etcd.stop()


def _register(arch_name: str) -> None:
    from deepfix.model_store import ModelStore
    from deepfix.models import ArchitectureConfig, build_model, list_arch_configs, load_arch_config

    arch = (
        load_arch_config(arch_name)
        if arch_name in list_arch_configs()
        else ArchitectureConfig(name=arch_name)
    )
    store = ModelStore()
    version = store.register(
        MODEL, build_model(arch), arch, metrics={}, training={"note": "bench: random weights"}
    )
    store.promote(MODEL, version.version, "production")


def _in_process(images: list[bytes], repeats: int) -> tuple[list[float], list[float], float]:
    """Per-image ms of the model alone and of decode + model + encode (``repeats`` samples
    each), and ms per image in one batch of 8."""
    import torch

    from deepfix.enhance import enhance_whole, restore_batch
    from deepfix.io import decode, encode
    from deepfix.model_store import ModelStore

    model, _ = ModelStore().load(f"{MODEL}@production")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what the replica gets (OMP_NUM_THREADS=1 for num_cpus=1)
    try:
        decoded = [decode(b) for b in images]
        enhance_whole(model, decoded[0])  # warm-up
        model_ms, total_ms = [], []
        for i in range(repeats):
            data = images[i % len(images)]
            t0 = time.perf_counter()
            image = decode(data)
            t1 = time.perf_counter()
            out = enhance_whole(model, image)
            t2 = time.perf_counter()
            encode(out, "png")
            t3 = time.perf_counter()
            model_ms.append((t2 - t1) * 1e3)
            total_ms.append((t3 - t0) * 1e3)
        stack = np.stack([decoded[i % len(decoded)] for i in range(8)])
        t0 = time.perf_counter()
        restore_batch(model, stack)
        batch8 = (time.perf_counter() - t0) * 1e3 / 8
    finally:
        torch.set_num_threads(threads)
    return model_ms, total_ms, batch8


def _deploy(max_batch_size: int, wait_s: float, port: int, enhancer_cpus: float) -> str:
    from ray import serve

    from serve.app import AppArgs, Scaling, build_app
    from serve.enhancer import BatchConfig

    args = AppArgs(
        model=f"{MODEL}@production",
        batching=BatchConfig(max_batch_size=max_batch_size, batch_wait_timeout_s=wait_s),
        enhancer=Scaling(
            min_replicas=1,
            max_replicas=1,
            max_ongoing_requests=64,
            max_queued_requests=-1,
            num_cpus=enhancer_cpus,
        ),
        ingress=Scaling(
            min_replicas=1,
            max_replicas=1,
            max_ongoing_requests=256,
            max_queued_requests=-1,
            num_cpus=0.25,
        ),
    )
    serve.run(build_app(args), name=APP, route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.RequestException):
            info = requests.get(f"{url}/v1/models", timeout=5).json()
            if info.get("loaded") and info["batching"]["max_batch_size"] == max_batch_size:
                return url
        time.sleep(0.5)
    raise TimeoutError(f"the app did not come up with max_batch_size={max_batch_size}")


def _batching(url: str) -> dict[str, int]:
    info = requests.get(f"{url}/v1/models", timeout=30).json()["batching"]
    return {"batches": int(info["batches"]), "batched_calls": int(info["batched_calls"])}


def _closed_loop(
    url: str, images: list[bytes], concurrency: int, total: int, cap_s: float
) -> tuple[list[float], int, float]:
    """Latencies (ms) of ``total`` requests from ``concurrency`` clients; errors; seconds."""
    latencies: list[float] = []
    errors = 0
    issued = 0
    lock = threading.Lock()
    start = time.perf_counter()

    def client() -> None:
        nonlocal issued, errors
        session = requests.Session()
        while True:
            with lock:
                if issued >= total or time.perf_counter() - start > cap_s:
                    return
                i = issued
                issued += 1
            t0 = time.perf_counter()
            try:
                r = session.post(f"{url}/v1/enhance", data=images[i % len(images)], timeout=120)
                ok = r.status_code == 200
            except requests.RequestException:
                ok = False
            ms = (time.perf_counter() - t0) * 1e3
            with lock:
                if ok:
                    latencies.append(ms)
                else:
                    errors += 1

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors, time.perf_counter() - start


def run(
    *,
    arch: str,
    size: int,
    requests_per_level: int,
    concurrency: list[int],
    batch_sizes: list[int],
    batch_wait_s: float,
    level_cap_s: float,
    wall_cap_s: float,
) -> Report:
    from ray import serve

    from config_store.server import free_port

    started = time.monotonic()
    load_before = _report.load_average()
    cpus = os.cpu_count() or 2
    images = _images(8, size)
    levels: list[Level] = []
    with _cluster(cpus):
        _register(arch)
        # In-process before and after the load, so that a change in the machine's load over
        # the run shows up in both baselines rather than in the ratios alone.
        model_ms, total_ms, batch8 = _in_process(images, repeats=12)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        try:
            for bs in batch_sizes:
                url = _deploy(bs, batch_wait_s, port, enhancer_cpus=1.0)
                _closed_loop(url, images, 2, 4, level_cap_s)  # warm-up
                for c in concurrency:
                    remaining = wall_cap_s - (time.monotonic() - started)
                    if remaining <= 0:
                        log.warning("wall-time cap reached: skipping batch %d, c=%d", bs, c)
                        continue
                    before = _batching(url)
                    lat, errors, seconds = _closed_loop(
                        url, images, c, requests_per_level, min(level_cap_s, remaining)
                    )
                    after = _batching(url)
                    batches = after["batches"] - before["batches"]
                    calls = after["batched_calls"] - before["batched_calls"]
                    level = Level(
                        max_batch_size=bs,
                        concurrency=c,
                        requests=len(lat),
                        errors=errors,
                        seconds=seconds,
                        requests_per_s=len(lat) / seconds if seconds else 0.0,
                        p50_ms=_pct(lat, 0.50),
                        p99_ms=_pct(lat, 0.99),
                        mean_batch=calls / batches if batches else float("nan"),
                    )
                    log.info("%s", level)
                    levels.append(level)
        finally:
            serve.shutdown()
        more_model, more_total, batch8_after = _in_process(images, repeats=12)
    return Report(
        machine=_report.machine(),
        stamp=_report.stamp(),
        arch=arch,
        size=size,
        batch_wait_timeout_s=batch_wait_s,
        torch_threads=1,
        in_process_model_ms=statistics.median(model_ms + more_model),
        in_process_total_ms=statistics.median(total_ms + more_total),
        in_process_total_ms_before_after=(
            statistics.median(total_ms),
            statistics.median(more_total),
        ),
        in_process_batch8_ms_per_image=min(batch8, batch8_after),
        load_average_before=load_before,
        load_average_after=_report.load_average(),
        levels=levels,
    )


def _rate(report: Report) -> float:
    return 1e3 / report.in_process_total_ms


def markdown(report: Report) -> str:
    load = report.load_average_before
    lines = [
        "## Serve (`bench/serve.py`)",
        "",
        f"{report.stamp}; {report.machine}; load average before/after "
        f"{load[0] if load else float('nan'):.2f} / "
        f"{report.load_average_after[0] if report.load_average_after else float('nan'):.2f}. "
        f"`POST /v1/enhance`, {report.size}x{report.size} PNG in and out, `{report.arch}` "
        f"(random weights), one Enhancer replica (`num_cpus=1`, 1 torch thread) and one "
        f"ingress on loopback; closed loop; `batch_wait_timeout_s={report.batch_wait_timeout_s}`.",
        "",
        f"In-process, same images, 1 thread (p50 over runs before and after the load): model "
        f"{report.in_process_model_ms:.1f} ms, decode + model + encode "
        f"{report.in_process_total_ms:.1f} ms = {_rate(report):.2f} images/s (before/after: "
        f"{report.in_process_total_ms_before_after[0]:.0f} / "
        f"{report.in_process_total_ms_before_after[1]:.0f} ms); one batch of 8 costs "
        f"{report.in_process_batch8_ms_per_image:.1f} ms per image.",
        "",
        "| max_batch_size | concurrency | requests | req/s | p50 ms | p99 ms | mean batch "
        "| p50 / in-process | req/s / in-process |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for lv in report.levels:
        lines.append(
            f"| {lv.max_batch_size} | {lv.concurrency} | {lv.requests}"
            f"{f' ({lv.errors} errors)' if lv.errors else ''} | {lv.requests_per_s:.2f} "
            f"| {lv.p50_ms:.0f} | {lv.p99_ms:.0f} | {lv.mean_batch:.1f} "
            f"| {lv.p50_ms / report.in_process_total_ms:.2f}x "
            f"| {lv.requests_per_s / _rate(report):.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="unet_r2", help="packaged config or architecture name")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--requests", type=int, default=48, help="requests per level")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--batch-sizes", default="1,8", help="max_batch_size values to compare")
    parser.add_argument("--batch-wait", type=float, default=0.02, help="batch_wait_timeout_s")
    parser.add_argument("--level-cap-s", type=float, default=90.0, help="wall cap per level")
    parser.add_argument("--wall-cap-s", type=float, default=900.0, help="wall cap overall")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    parser.add_argument(
        "--doc", action="store_true", help="replace the serve section of docs/benchmarks.md"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    report = run(
        arch=args.arch,
        size=args.size,
        requests_per_level=args.requests,
        concurrency=[int(c) for c in args.concurrency.split(",") if c.strip()],
        batch_sizes=[int(b) for b in args.batch_sizes.split(",") if b.strip()],
        batch_wait_s=args.batch_wait,
        level_cap_s=args.level_cap_s,
        wall_cap_s=args.wall_cap_s,
    )
    text = markdown(report)
    print(text)
    if args.json is not None:
        args.json.write_text(json.dumps(report.model_dump(), indent=2) + "\n")
    if args.doc:
        _report.write_section("serve", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
