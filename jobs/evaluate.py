"""Evaluate a registered model on a split of a prepared dataset, against classical baselines.

    python -m jobs.evaluate --model NAME[:VERSION|@ALIAS] --dataset NAME [--split test]
        [--batch-size 16] [--limit N] [--grid 4]

Recipe: resolve the model in the store, read the split's rows from the prepared Parquet, run
the degraded input, every classical baseline, the per-type best classical restoration and the
model over each sample (:mod:`deepfix.evaluation`), then write ``report.json``,
``report.md``, ``training_curves.png`` and ``samples.png`` next to the model's weights, under
``<artifact_uri>/evaluation/<dataset>/<split>/``, and merge the headline numbers
(``<split>_psnr``, ``<split>_psnr_gain_vs_best_classical``, ...) into the model's metrics.

The model runs in this process, in plain batches (pyarrow record batches of ``--batch-size``
rows): the classical baselines cost more than the network on CPU, and a test split is small
enough that a Ray Data pipeline would add start-up time without saving any.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as pads
from pydantic import BaseModel, ConfigDict, Field

from config_store import ConfigStore
from deepfix.enhance import restore_batch
from deepfix.errors import DeepfixError
from deepfix.evaluation import (
    BEST_CLASSICAL,
    EvaluationReport,
    ReportBuilder,
    evaluate_sample,
    render_markdown,
    sample_grid,
    training_curves,
)
from deepfix.io import decode, encode
from deepfix.model_store import ModelStore, load_model_version, uri_filesystem
from jobs._exit import run_reporting_errors
from jobs.train import resolve_prepared

__all__ = ["EvaluateArgs", "iter_split", "main", "run"]

logger = logging.getLogger(__name__)

_COLUMNS = ["id", "clean", "degraded", "degradation_types"]


class EvaluateArgs(BaseModel):
    """Arguments of ``python -m jobs.evaluate``."""

    model_config = ConfigDict(extra="forbid")

    model: str
    dataset: str
    split: str = "test"
    batch_size: int = Field(16, ge=1)
    limit: int | None = Field(None, ge=1, description="evaluate at most this many samples")
    grid: int = Field(4, ge=0, description="samples shown in samples.png")
    device: str = "cpu"


def iter_split(uri: str, split: str, *, batch_size: int = 16) -> Iterator[dict[str, list[Any]]]:
    """Rows of one split of the prepared Parquet at ``uri``, ``batch_size`` at a time."""
    fs, path = uri_filesystem(uri)
    dataset = pads.dataset(path, filesystem=fs, format="parquet", partitioning="hive")
    scanner = dataset.scanner(
        columns=_COLUMNS, filter=pc.field("split") == split, batch_size=batch_size
    )
    for batch in scanner.to_batches():
        if batch.num_rows:
            yield batch.to_pydict()


def _restore(model: Any, degraded: list[np.ndarray]) -> list[np.ndarray]:
    if len({d.shape for d in degraded}) == 1:
        return list(restore_batch(model, np.stack(degraded)))
    return [restore_batch(model, d[None])[0] for d in degraded]


def run(args: EvaluateArgs, *, store: ConfigStore | None = None) -> tuple[EvaluationReport, str]:
    """Evaluate and write the report; returns it and the folder (URI) it was written to."""
    store = store or ConfigStore()
    models = ModelStore(store)
    version = models.resolve(args.model)
    model = load_model_version(version, args.device)
    prepared = resolve_prepared(args.dataset, store)
    builder = ReportBuilder()
    grid_rows: list[list[np.ndarray]] = []
    for batch in iter_split(prepared.uri, args.split, batch_size=args.batch_size):
        if args.limit is not None and builder.n >= args.limit:
            break
        clean = [decode(bytes(b)) for b in batch["clean"]]
        degraded = [decode(bytes(b)) for b in batch["degraded"]]
        restored = _restore(model, degraded)
        rows = zip(clean, degraded, restored, batch["degradation_types"], strict=True)
        for c, d, r, types in rows:
            if args.limit is not None and builder.n >= args.limit:
                break
            results, best = evaluate_sample(c, d, r, list(types or []))
            builder.add(list(types or []), results)
            if len(grid_rows) < args.grid:
                grid_rows.append([c, d, best, r])
    if builder.n == 0:
        raise DeepfixError(f"split {args.split!r} of dataset {args.dataset!r} has no samples")
    history = list(version.training.get("history", []))
    report = builder.build(
        model=version.ref,
        dataset=prepared.name,
        split=args.split,
        dataset_version=prepared.version,
        architecture=str(version.architecture.get("name")),
        history_epochs=len(history),
    )
    folder = f"evaluation/{prepared.name}/{args.split}"
    report.figures = {"training curves": "training_curves.png", "samples": "samples.png"}
    models.write_file(version, f"{folder}/training_curves.png", encode(training_curves(history)))
    grid = sample_grid(grid_rows, ["clean", "degraded", BEST_CLASSICAL, "model"])
    models.write_file(version, f"{folder}/samples.png", encode(grid))
    models.write_file(version, f"{folder}/report.md", render_markdown(report).encode())
    models.write_file(version, f"{folder}/report.json", report.model_dump_json(indent=2).encode())
    models.update_metrics(version.ref, report.headline())
    out = f"{version.artifact_uri.rstrip('/')}/{folder}"
    logger.info("evaluated %s on %s/%s: report in %s", version.ref, args.dataset, args.split, out)
    return report, out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="NAME, NAME:VERSION or NAME@ALIAS")
    p.add_argument("--dataset", required=True, help="prepared dataset name")
    p.add_argument("--split", default="test")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--grid", type=int, default=4, help="samples in samples.png")
    p.add_argument("--device", default="cpu")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = EvaluateArgs.model_validate(vars(_parser().parse_args(argv)))

    def body() -> int:
        report, out = run(args)
        print(json.dumps({"report": out, **report.headline()}, indent=2))
        return 0

    return run_reporting_errors(body)


if __name__ == "__main__":
    sys.exit(main())
