"""config.get latency (p50/p99) against a local etcd, a cached read, create/update throughput.

    python -m bench.config_store [--reads 2000] [--writes 500] [--doc]

Uses DEEPFIX_ETCD when set; otherwise starts a private etcd on free loopback ports.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench._report import machine, stamp, write_section
from config_store import ConfigStore
from config_store.config import Config
from config_store.server import LocalEtcd, free_port


def timed(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))] * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reads", type=int, default=2000)
    ap.add_argument("--writes", type=int, default=500)
    ap.add_argument("--doc", action="store_true", help="rewrite the section of docs/benchmarks.md")
    args = ap.parse_args()

    server = None
    endpoint = os.environ.get("DEEPFIX_ETCD")
    if not endpoint:
        server = LocalEtcd(Path(tempfile.mkdtemp(prefix="bench-etcd-")), free_port(), free_port())
        server.start()
        endpoint = server.endpoint
    try:
        store = ConfigStore(endpoint)
        name = f"bench-{int(time.time())}"
        store.create("datasets", name, {"source": "/data/bench", "details": "benchmark"})
        reader = Config(store)
        cached = reader.cached()
        for _ in range(50):  # warm connections and the cache
            reader.get(name)
            cached.get(name)
        direct = timed(lambda: reader.get(name, "crop.mode"), args.reads)
        hits = timed(lambda: cached.get(name, "crop.mode"), args.reads)
        cached.close()

        t = time.perf_counter()
        for i in range(args.writes):
            store.create("bench", f"{name}-{i}", {"i": i})
        create_rate = args.writes / (time.perf_counter() - t)
        doc = store.create("bench", f"{name}-counter", {"i": 0})
        t = time.perf_counter()
        for i in range(args.writes):
            doc = store.update("bench", doc.name, {"i": i + 1}, revision=doc.revision)
        update_rate = args.writes / (time.perf_counter() - t)
        for i in range(args.writes):
            store.delete("bench", f"{name}-{i}")
        store.delete("bench", f"{name}-counter")
        store.delete("datasets", name)
    finally:
        if server is not None:
            server.stop()

    rows = [
        ("`config.get(name, key)` (linearizable read)", f"{pct(direct, .5):.2f}",
         f"{pct(direct, .99):.2f}", f"{1 / statistics.mean(direct):,.0f}/s"),
        ("`config.cached().get(name, key)` (watch-invalidated)", f"{pct(hits, .5):.3f}",
         f"{pct(hits, .99):.3f}", f"{1 / statistics.mean(hits):,.0f}/s"),
        ("`create` (txn, create_revision == 0)", "", "", f"{create_rate:,.0f}/s"),
        ("`update` (txn, mod_revision compare)", "", "", f"{update_rate:,.0f}/s"),
    ]  # fmt: skip
    table = "\n".join(
        ["| operation | p50 ms | p99 ms | throughput (1 client) |", "|---|---|---|---|"]
        + [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    )
    md = (
        f"## Config store (`bench/config_store.py`)\n\n"
        f"{stamp()}; {machine()}; etcd at {endpoint} (loopback, single node); "
        f"{args.reads} reads, {args.writes} writes of each kind.\n\n{table}\n\n"
        f"The cached reader is "
        f"{statistics.median(direct) / statistics.median(hits):,.0f}x faster at p50 than a "
        f"linearizable read; it serves from memory and drops an entry when etcd's watch "
        f"reports a change.\n"
    )
    print(md)
    if args.doc:
        write_section("config_store", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
