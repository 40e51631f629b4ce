"""Prepare a dataset: list its source, cut faces, degrade, write Parquet shards, record stats.

    ray job submit --working-dir . -- python -m jobs.prepare --dataset NAME [--output URI]
                                                              [--limit N]

The recipe: read the spec (and its etcd revision) -> list the source -> one Ray Data map that
fuses read, decode, detect, crop, tile, degrade and PNG-encode per batch of images
(``deepfix.prepare.Preparer``) -> a datasink that writes the sample rows as Parquet shards
and hands the small per-image rows back -> rejects table, ``manifest.json`` and the
``prepared/<NAME>`` record in etcd -> a one-screen summary.

Layout: ``<output>/<version>/samples/*.parquet``, ``<output>/<version>/rejects/rejects.parquet``
and ``<output>/<version>/manifest.json``, with ``<output>`` defaulting to
``$DEEPFIX_HOME/datasets/<NAME>`` and ``<version>`` = ``v<UTC yyyymmddHHMMSS>-r<spec revision>``.
``--output`` may be a local path or a ``file://``, ``s3://`` or ``gs://`` URI (pyarrow
filesystems).

Why tasks and not an actor pool: the per-image work is one fused UDF, and a task-based map
fuses with the write, so a block goes from the object store through decode ... encode into a
Parquet file in one task without a second object-store round trip (the plan reads
``MapBatches(_prepare_block)->Write``). The detector is still built once per worker process
(``_preparer`` is cached per process), each task runs OpenCV with one thread per reserved CPU,
and the blocks are balanced (see ``build_dataset``). Measured on 2 cores (docs/benchmarks.md),
the warm pipeline runs at 94-99 % of two plain processes splitting the same images.
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import cv2
import pyarrow as pa
import pydantic
import ray
from pydantic import BaseModel, ConfigDict, Field
from ray.data import Dataset
from ray.data.block import Block, BlockAccessor
from ray.data.datasource import Datasink, WriteResult
from rich.console import Console
from rich.table import Table

from config_store import ConfigStoreError, NotFound, StoreUnavailable, config
from config_store import ValidationError as StoreValidationError
from deepfix.errors import DeepfixError, SourceError
from deepfix.prepare import (
    BlockSummary,
    OutputLayout,
    PreparedStats,
    Preparer,
    UnaccountedImages,
    check_accounted,
    prepared_stats,
    rejects_table,
    split_batch,
    summarize_block,
    version_name,
    write_json,
    write_table,
)
from deepfix.sources import list_images
from deepfix.spec import DatasetSpec

__all__ = [
    "PrepareArgs",
    "build_dataset",
    "main",
    "parse_args",
    "run",
    "summary_table",
    "write_samples",
]

logger = logging.getLogger(__name__)

PREPARED = "prepared"


class PrepareArgs(BaseModel):
    """Arguments of the prepare job (the CLI flags, validated)."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(description="name of the dataset spec in etcd")
    output: str | None = Field(
        None, description="root path or URI; default $DEEPFIX_HOME/datasets/<dataset>"
    )
    limit: int | None = Field(None, ge=1, description="prepare only the first N listed images")
    batch_size: int = Field(64, ge=1, le=4096, description="images per block / map task")
    num_cpus: float = Field(1.0, gt=0, description="CPUs reserved per map task")
    allow_private: bool = Field(True, description="http(s) sources may be private addresses")


def parse_args(argv: Sequence[str] | None = None) -> PrepareArgs:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.prepare",
        description="Prepare a dataset spec into Parquet shards of (clean, degraded) pairs.",
    )
    parser.add_argument("--dataset", required=True, help="dataset spec name in etcd")
    parser.add_argument(
        "--output",
        help="root path or URI (s3://, gs://, file://) under which <version>/ is written; "
        "default $DEEPFIX_HOME/datasets/<dataset>",
    )
    parser.add_argument("--limit", type=int, help="prepare only the first N listed images")
    parser.add_argument("--batch-size", type=int, default=64, help="images per map task")
    parser.add_argument("--num-cpus", type=float, default=1.0, help="CPUs reserved per task")
    parser.add_argument(
        "--deny-private",
        action="store_true",
        help="refuse http(s) sources on private addresses (as the web service does)",
    )
    ns = parser.parse_args(argv)
    try:
        return PrepareArgs(
            dataset=ns.dataset,
            output=ns.output,
            limit=ns.limit,
            batch_size=ns.batch_size,
            num_cpus=ns.num_cpus,
            allow_private=not ns.deny_private,
        )
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        parser.error(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}")


# ------------------------------------------------------------------------------- Ray pieces


@functools.lru_cache(maxsize=4)
def _preparer(spec_json: str, allow_private: bool, cv2_threads: int) -> Preparer:
    # One Preparer (detector, pipeline) per worker process and spec: Ray reuses workers
    # across tasks, so the detector is built once per process, not once per batch.
    # OpenCV would start a thread per core in every worker (Haar's detectMultiScale and the
    # blurs are parallel_for loops): with one worker per CPU that oversubscribes the node, so
    # each worker gets as many OpenCV threads as CPUs it reserved.
    cv2.setNumThreads(cv2_threads)
    return Preparer(DatasetSpec.model_validate_json(spec_json), allow_private=allow_private)


def _prepare_block(
    batch: pa.Table, *, spec_json: str, allow_private: bool, cv2_threads: int
) -> pa.Table:
    preparer = _preparer(spec_json, allow_private, cv2_threads)
    return preparer.prepare_batch(batch["path"].to_pylist())


class _SampleSink(Datasink[BlockSummary]):
    """Writes sample rows as one Parquet shard per write task; returns the image rows and
    counts (never pixels) to the driver, which keeps them in ``summary``.

    Ray Data's closing "N rows written" log line counts the image rows too; the samples
    actually written are ``summary.samples``.
    """

    def __init__(self, samples_uri: str) -> None:
        self.samples_uri = samples_uri
        self.summary: BlockSummary | None = None

    def write(self, blocks: Iterable[Block], ctx: Any) -> BlockSummary:
        # ctx is Ray Data's TaskContext (an internal module); only task_idx is used.
        tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
        samples, images = split_batch(pa.concat_tables(tables))
        files = []
        if samples.num_rows:
            name = f"part-{ctx.task_idx:05d}-{uuid.uuid4().hex[:8]}.parquet"
            files.append(write_table(samples, self.samples_uri, name))
        return summarize_block(samples, images, files)

    def on_write_complete(self, write_result: WriteResult[BlockSummary]) -> None:
        self.summary = BlockSummary.merge(write_result.write_returns)


def _num_blocks(n: int, batch_size: int, num_cpus: float) -> int:
    """Blocks of at most ``batch_size`` items, rounded up to a multiple of the task slots.

    The last round of tasks is the tail where some CPUs idle: 13 blocks on 2 slots run in 7
    rounds, the last one half empty, while 14 slightly smaller blocks fill all 7.
    """
    slots = max(1, math.floor(ray.cluster_resources().get("CPU", 1) / num_cpus))
    blocks = math.ceil(n / batch_size)
    return max(1, min(n, math.ceil(blocks / slots) * slots))


def build_dataset(
    items: Sequence[str],
    spec: DatasetSpec,
    *,
    batch_size: int,
    num_cpus: float,
    allow_private: bool,
) -> Dataset:
    """The lazy Ray Data pipeline: blocks of at most ``batch_size`` paths, one map task each,
    turned into a :data:`deepfix.prepare.BATCH_SCHEMA` table by one fused UDF."""
    blocks = _num_blocks(len(items), batch_size, num_cpus)
    # Deal the sorted paths out to the blocks like cards (block k gets items k, k + blocks,
    # ...): sorted listings cluster similar files (one folder of large images at the end),
    # and dealing spreads the expensive ones so the last blocks are not the slowest ones.
    # Order does not matter downstream: ids, splits and degradations depend on paths only.
    dealt = [p for k in range(blocks) for p in items[k::blocks]]
    ds = ray.data.from_items([{"path": p} for p in dealt], override_num_blocks=blocks)
    # Ray Data's per-operator resource budget follows the cluster autoscaler's grants, which
    # start at zero and grow over seconds, so every run began with one task at a time (the
    # progress log says "backpressured: ResourceBudget"). This pipeline is one fused
    # map->write operator whose outputs are tiny summaries, so there is no memory to
    # protect: Ray core's CPU scheduling alone bounds concurrency. Set on this dataset's own
    # context only, never the process-wide one.
    ds.context.op_resource_reservation_enabled = False
    udf = functools.partial(
        _prepare_block,
        spec_json=spec.model_dump_json(),
        allow_private=allow_private,
        cv2_threads=max(1, math.floor(num_cpus)),
    )
    return ds.map_batches(
        udf,
        batch_size=None,  # a whole block per call: the blocks are already batch_size paths
        batch_format="pyarrow",
        zero_copy_batch=True,
        num_cpus=num_cpus,
    )


def write_samples(ds: Dataset, samples_uri: str) -> BlockSummary:
    """Run the pipeline, writing sample shards under ``samples_uri``; the merged summary."""
    sink = _SampleSink(samples_uri)
    ds.write_datasink(sink)
    return sink.summary or BlockSummary()


# ----------------------------------------------------------------------------------- recipe


def run(args: PrepareArgs) -> PreparedStats:
    """Prepare ``args.dataset`` on the current Ray cluster (started locally if none).

    Raises:
        NotFound: no such dataset spec; SourceError: the source cannot be listed;
        UnaccountedImages: images went missing between listing and writing.
    """
    started = time.perf_counter()
    # One read gives both the spec and the revision it is at, so they always agree.
    doc = config.store.get("datasets", args.dataset)
    spec = DatasetSpec.model_validate(doc.value)
    listing = list_images(spec.source, image_type=spec.image_type, allow_private=args.allow_private)
    items = [it.path for it in listing.items][: args.limit]
    layout = OutputLayout.default(spec.name, version_name(doc.revision), root=args.output)
    logger.info(
        "preparing %s (revision %d): %d images, %d rejected by the listing -> %s",
        spec.name,
        doc.revision,
        len(items),
        len(listing.rejected),
        layout.version_uri,
    )

    # Build a Preparer here once, so a spec whose detector cannot be built (a missing YuNet
    # model file, an unknown name) fails now with its own message, not inside every task.
    Preparer(spec, allow_private=args.allow_private)
    summary = BlockSummary()
    if items:
        if not ray.is_initialized():
            ray.init()  # RAY_ADDRESS (set by `ray job submit`) connects; else a local Ray
        ds = build_dataset(
            items,
            spec,
            batch_size=args.batch_size,
            num_cpus=args.num_cpus,
            allow_private=args.allow_private,
        )
        summary = write_samples(ds, layout.samples_uri)

    stats = prepared_stats(
        spec=spec,
        spec_revision=doc.revision,
        layout=layout,
        summary=summary,
        items=len(items),
        listing_rejected=listing.rejected,
        wall_time_s=time.perf_counter() - started,
    )
    check_accounted(stats)  # before anything is recorded: a dropped block is an error
    write_table(
        rejects_table(summary.images, listing.rejected), layout.rejects_uri, "rejects.parquet"
    )
    record = stats.model_dump(mode="json")
    write_json(record, layout.manifest_uri)
    config.store.put(PREPARED, spec.name, record)
    return stats


def summary_table(stats: PreparedStats) -> Table:
    """The one-screen summary printed at the end of the job."""
    table = Table(title=f"prepared {stats.dataset} {stats.version}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    splits = ", ".join(f"{k} {v}" for k, v in stats.splits.items())
    table.add_row("samples", f"{stats.samples} in {stats.shards} shards ({splits})")
    table.add_row(
        "images",
        f"{stats.images_listed} listed, {stats.images_used} used, "
        f"{stats.policies['skipped']} skipped, {stats.rejected_total} rejected",
    )
    table.add_row("policies", ", ".join(f"{k} {v}" for k, v in stats.policies.items()))
    hist = ", ".join(f"{k}: {v}" for k, v in stats.faces_per_image.histogram.items())
    table.add_row("faces / image", f"mean {stats.faces_per_image.mean:.2f} ({hist or '-'})")
    table.add_row("rejected", ", ".join(f"{k} {v}" for k, v in stats.rejected.items()) or "-")
    if stats.source_width and stats.source_height:
        w, h = stats.source_width, stats.source_height
        table.add_row(
            "source size",
            f"w {w.min}/{w.median:g}/{w.max}, h {h.min}/{h.median:g}/{h.max} (min/median/max)",
        )
    table.add_row("degradations", ", ".join(f"{k} {v}" for k, v in stats.degradations.items()))
    table.add_row("sample size", f"{stats.sample_height} x {stats.sample_width}")
    table.add_row("spec revision", str(stats.spec_revision))
    table.add_row("wall time", f"{stats.wall_time_s:.1f} s ({stats.images_per_s:.1f} images/s)")
    table.add_row("samples at", stats.samples_uri)
    table.add_row("rejects at", stats.rejects_uri)
    return table


# Error class -> exit code, in one place (most specific first).
_EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (NotFound, 2),
    (StoreValidationError, 2),
    (StoreUnavailable, 3),
    (ConfigStoreError, 3),
    (SourceError, 4),
    (UnaccountedImages, 5),
    (DeepfixError, 1),
)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        stats = run(args)
    except tuple(cls for cls, _ in _EXIT_CODES) as exc:
        code = next(c for cls, c in _EXIT_CODES if isinstance(exc, cls))
        logger.error("prepare %s failed: %s", args.dataset, exc)
        return code
    Console().print(summary_table(stats))
    return 0


if __name__ == "__main__":
    # Run the module's functions as ``jobs.prepare``, not ``__main__``: Ray pickles the UDF
    # by module and name, and a worker's ``__main__`` is Ray's own worker script.
    from jobs.prepare import main as _main

    sys.exit(_main())
