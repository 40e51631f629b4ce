"""Train a restoration network on a prepared dataset with Ray Train, then register it.

    ray job submit --working-dir . -- python -m jobs.train --dataset NAME [--workers N] [--gpu]
        [--epochs 45] [--batch-size 16] [--arch unet_r2] [--resume] [--model-name NAME]
        [--limit-steps N] [--storage PATH_OR_URI]

Recipe: read the ``prepared`` record of the dataset from etcd, read its Parquet shards with Ray
Data (``train`` and ``val`` splits), run a ``TorchTrainer`` (data-parallel, DDP through
``prepare_model``) whose loop is built from :mod:`deepfix.training`, checkpoint every epoch,
and register the checkpoint with the best validation PSNR in the model store with its metrics
and the per-epoch history. Prints ``NAME:VERSION``.

Fault tolerance: ``FailureConfig(max_failures)`` restarts the worker group from the latest
checkpoint (the loop loads ``ray.train.get_checkpoint()``). ``--resume`` continues an
interrupted run: Ray Train 2 restores a run from its folder when a trainer is started with the
same ``RunConfig(name, storage_path)``, so ``--resume`` re-uses the latest run folder of the
model (or ``--run-name``) instead of starting a new, timestamped one.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from config_store import ConfigStore, NotFound
from deepfix.errors import DeepfixError
from deepfix.model_store import (
    MODEL_NAME_PATTERN,
    ModelStore,
    ModelVersion,
    uri_filesystem,
)
from deepfix.models import build_model, load_arch_config
from deepfix.storage import join, storage_root
from deepfix.training import (
    MetricSums,
    PixelLoss,
    TrainConfig,
    decode_pairs,
    make_optimizer,
    make_scheduler,
    train_epoch,
    validate,
)
from jobs._exit import run_reporting_errors

__all__ = [
    "LoopConfig",
    "PreparedRef",
    "TrainArgs",
    "main",
    "read_split",
    "resolve_prepared",
    "run",
    "train_loop_per_worker",
]

logger = logging.getLogger(__name__)

PREPARED = "prepared"
_STATE_FILE = "state.json"
_MODEL_FILE = "model.pt"
_OPTIM_FILE = "optimizer.pt"


# ----------------------------------------------------------------------------- arguments


class TrainArgs(BaseModel):
    """Arguments of ``python -m jobs.train`` (also what tests pass to :func:`run`)."""

    model_config = ConfigDict(extra="forbid")

    dataset: str
    workers: int = Field(2, ge=1)
    gpu: bool = False
    # None: up to 1 CPU per worker, leaving one CPU of the cluster to Ray Data's readers
    # (on a 2-CPU machine two workers at 1 CPU each would starve the data pipeline forever).
    cpus_per_worker: float | None = Field(None, gt=0)
    epochs: int = Field(45, ge=1)
    batch_size: int = Field(16, ge=1)
    arch: str = "unet_r2"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    pixel_loss: PixelLoss = "mse"
    ssim_weight: float = Field(0.0, ge=0)
    seed: int = 0
    resume: bool = False
    model_name: str | None = Field(None, pattern=MODEL_NAME_PATTERN.pattern)
    run_name: str | None = None
    storage: str | None = None
    limit_steps: int | None = Field(None, ge=1)
    max_failures: int = Field(2, ge=0)
    # Testing hook: one worker raises once at the start of this (1-based) epoch.
    fail_once_at_epoch: int | None = Field(None, ge=1)

    def resolved_model_name(self) -> str:
        return self.model_name or f"{self.dataset}-{self.arch}".replace("_", "-")[:48]


class LoopConfig(BaseModel):
    """What ``train_loop_per_worker`` receives (as a dict, validated on its first line)."""

    model_config = ConfigDict(extra="forbid")

    train: TrainConfig
    fail_once_at_epoch: int | None = None
    fail_marker: str | None = None


class PreparedRef(BaseModel):
    """Where a prepared dataset's Parquet lives, and which version it is."""

    name: str
    uri: str
    version: str | None = None


def resolve_prepared(name: str, store: ConfigStore) -> PreparedRef:
    """Read the ``prepared`` record of dataset ``name`` (written by ``jobs.prepare``)."""
    try:
        value = store.get(PREPARED, name).value
    except NotFound:
        raise DeepfixError(
            f"dataset {name!r} is not prepared (no {PREPARED}/{name} record); run jobs.prepare"
        ) from None
    uri = value.get("output_uri") or value.get("samples_uri")
    if not uri:
        raise DeepfixError(f"{PREPARED}/{name} names no output_uri/samples_uri")
    version = value.get("version")
    return PreparedRef(name=name, uri=str(uri), version=None if version is None else str(version))


def read_split(
    uri: str,
    split: str,
    *,
    columns: tuple[str, ...] = ("degraded", "clean"),
    num_cpus: float = 0.5,
) -> Any:
    """A Ray Dataset of one split of the prepared Parquet at ``uri``.

    Args:
        num_cpus: per read task; reading is I/O-bound, and a fraction lets reads run beside
            training workers on small clusters.
    """
    import ray.data
    from ray.data.expressions import col

    fs, path = uri_filesystem(uri)
    ds = ray.data.read_parquet(path, filesystem=fs, columns=["split", *columns], num_cpus=num_cpus)
    return ds.filter(expr=col("split") == split).select_columns(list(columns))


# --------------------------------------------------------------------------- worker loop


def _batches(shard: Any, batch_size: int, *, shuffle: bool) -> Any:
    for batch in shard.iter_batches(
        batch_size=batch_size,
        batch_format="numpy",
        local_shuffle_buffer_size=batch_size * 4 if shuffle else None,
    ):
        yield decode_pairs(batch)


def _maybe_fail(cfg: LoopConfig, epoch: int, rank: int, world: int) -> None:
    if cfg.fail_once_at_epoch != epoch or cfg.fail_marker is None:
        return
    # The last rank fails: a worker other than the one that writes checkpoints, when there are
    # several. The marker makes it fail once only, across restarts of the worker group.
    if rank != world - 1 or os.path.exists(cfg.fail_marker):
        return
    Path(cfg.fail_marker).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.fail_marker).write_text(f"failed at epoch {epoch}\n")
    raise RuntimeError(f"injected failure at epoch {epoch} (rank {rank})")


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One data-parallel worker: train ``epochs``, report + checkpoint every epoch."""
    cfg = LoopConfig.model_validate(config)
    import ray.train
    import ray.train.torch

    tc = cfg.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(tc.seed)

    model = build_model(tc.arch)
    state: dict[str, Any] = {"next_epoch": 1, "history": [], "resumes": []}
    checkpoint = ray.train.get_checkpoint()
    saved: dict[str, Any] | None = None
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            model.load_state_dict(torch.load(Path(d) / _MODEL_FILE, map_location="cpu"))
            saved = torch.load(Path(d) / _OPTIM_FILE, map_location="cpu")
            state = json.loads((Path(d) / _STATE_FILE).read_text())
        state["resumes"].append(state["next_epoch"])
        logger.info("rank %d resumes at epoch %d", rank, state["next_epoch"])

    model = ray.train.torch.prepare_model(model)
    inner = getattr(model, "module", model)
    optimizer = make_optimizer(model, tc)
    scheduler = make_scheduler(optimizer, tc)
    if saved is not None:
        # After prepare_model: the optimizer state follows its parameters onto the device.
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
    amp = tc.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp) if amp else None

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    for epoch in range(state["next_epoch"], tc.epochs + 1):
        _maybe_fail(cfg, epoch, rank, world)
        lr = optimizer.param_groups[0]["lr"]
        stats = train_epoch(
            model,
            _batches(train_shard, tc.batch_size, shuffle=True),
            optimizer,
            device=device,
            pixel_loss=tc.pixel_loss,
            ssim_weight=tc.ssim_weight,
            amp=amp,
            scaler=scaler,
            max_steps=tc.max_steps_per_epoch,
        )
        # Validate the bare network: shards may differ by a batch, and DDP's forward would
        # then wait for a collective that the other worker never joins.
        sums: MetricSums = validate(
            inner,
            _batches(val_shard, tc.batch_size, shuffle=False),
            device=device,
            pixel_loss=tc.pixel_loss,
            ssim_weight=tc.ssim_weight,
            amp=amp,
            max_steps=tc.max_steps_per_epoch,
        )
        scheduler.step()
        row: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": stats.loss,
            "lr": lr,
            "train_samples": stats.samples,
            "train_seconds": stats.seconds,
            **sums.means("val_"),
            "val_samples": sums.count,
        }
        # Checkpoints are ranked by "score": validation PSNR, or minus the training loss when
        # the dataset has no validation split.
        row["score"] = row.get("val_psnr", -stats.loss)
        state["history"].append(row)
        state["next_epoch"] = epoch + 1
        metrics = {k: v for k, v in row.items() if isinstance(v, int | float)}
        if rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                torch.save(inner.state_dict(), Path(tmp) / _MODEL_FILE)
                torch.save(
                    {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
                    Path(tmp) / _OPTIM_FILE,
                )
                (Path(tmp) / _STATE_FILE).write_text(json.dumps(state))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)


# -------------------------------------------------------------------------------- driver


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def _run_name(args: TrainArgs, storage: str, model_name: str) -> str:
    if args.run_name:
        return args.run_name
    if args.resume:
        fs, path = uri_filesystem(storage)
        from pyarrow.fs import FileSelector, FileType

        try:
            infos = fs.get_file_info(FileSelector(path, allow_not_found=True))
        except OSError:
            infos = []
        runs = sorted(
            i.base_name
            for i in infos
            if i.type == FileType.Directory and i.base_name.startswith(f"{model_name}-")
        )
        if not runs:
            raise DeepfixError(f"--resume: no earlier run of {model_name!r} under {storage}")
        return runs[-1]  # timestamped names sort by time
    return f"{model_name}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"


def _cpus_per_worker(args: TrainArgs) -> float:
    if args.cpus_per_worker is not None:
        return args.cpus_per_worker
    import ray

    total = float(ray.cluster_resources().get("CPU", 1.0))
    return max(0.25, min(1.0, (total - 1.0) / args.workers))


def _best_and_latest(result: Any) -> tuple[Any, dict[str, Any], Any]:
    ranked = [(c, m) for c, m in (result.best_checkpoints or []) if "score" in m]
    if not ranked or result.checkpoint is None:
        raise DeepfixError("training finished without a checkpoint")
    best, metrics = max(ranked, key=lambda cm: (cm[1]["score"], cm[1].get("epoch", 0)))
    return best, metrics, result.checkpoint


def run(args: TrainArgs, *, store: ConfigStore | None = None) -> ModelVersion:
    """Train on the cluster ``ray`` is connected to (or a local one) and register the model."""
    import ray.train
    from ray.train.torch import TorchTrainer

    store = store or ConfigStore()
    prepared = resolve_prepared(args.dataset, store)
    model_name = args.resolved_model_name()
    arch = load_arch_config(args.arch)
    train_cfg = TrainConfig(
        arch=arch,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        pixel_loss=args.pixel_loss,
        ssim_weight=args.ssim_weight,
        max_steps_per_epoch=args.limit_steps,
        seed=args.seed,
    )
    storage = args.storage or join(storage_root(), "ray_results")
    if _is_local(storage):
        Path(uri_filesystem(storage)[1]).mkdir(parents=True, exist_ok=True)
    run_name = _run_name(args, storage, model_name)
    marker = None
    if args.fail_once_at_epoch is not None:
        base = uri_filesystem(storage)[1] if _is_local(storage) else tempfile.gettempdir()
        marker = str(Path(base) / run_name / f"fail-once-at-epoch-{args.fail_once_at_epoch}")
    loop_config = LoopConfig(
        train=train_cfg, fail_once_at_epoch=args.fail_once_at_epoch, fail_marker=marker
    )
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config.model_dump(mode="json"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=args.workers,
            use_gpu=args.gpu,
            resources_per_worker=None if args.gpu else {"CPU": _cpus_per_worker(args)},
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=args.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute="score", checkpoint_score_order="max"
            ),
        ),
        datasets={
            "train": read_split(prepared.uri, "train"),
            "val": read_split(prepared.uri, "val"),
        },
    )
    logger.info("training %s on %s (run %s under %s)", model_name, prepared.uri, run_name, storage)
    result = trainer.fit()
    best, best_metrics, latest = _best_and_latest(result)
    with latest.as_directory() as d:
        state = json.loads((Path(d) / _STATE_FILE).read_text())
    model = build_model(arch)
    with best.as_directory() as d:
        model.load_state_dict(torch.load(Path(d) / _MODEL_FILE, map_location="cpu"))
    metrics = {
        k: float(v)
        for k, v in best_metrics.items()
        if k.startswith("val_") and isinstance(v, int | float) and math.isfinite(v)
    }
    training = {
        "config": train_cfg.model_dump(mode="json"),
        "workers": args.workers,
        "gpu": args.gpu,
        "best_epoch": int(best_metrics.get("epoch", 0)),
        "history": state["history"],
        "resumes": state["resumes"],
        "run_name": run_name,
        "run_path": result.path,
    }
    version = ModelStore(store).register(
        model_name,
        model,
        arch,
        metrics=metrics,
        training=training,
        dataset=prepared.name,
        dataset_version=prepared.version,
    )
    return version


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.train", description=__doc__.split("\n")[0])
    p.add_argument("--dataset", required=True, help="prepared dataset name")
    p.add_argument("--workers", type=int, default=2, help="data-parallel workers")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker, AMP on")
    p.add_argument(
        "--cpus-per-worker", type=float, default=None, help="default: fit beside Ray Data"
    )
    p.add_argument("--epochs", type=int, default=45)
    p.add_argument("--batch-size", type=int, default=16, help="per worker")
    p.add_argument("--arch", default="unet_r2", help="packaged architecture config")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--pixel-loss", choices=["mse", "l1"], default="mse", help="per-pixel loss term")
    p.add_argument("--ssim-weight", type=float, default=0.0, help="weight of 1-SSIM in the loss")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue the latest run of the model")
    p.add_argument("--model-name", default=None, help="default: <dataset>-<arch>")
    p.add_argument("--run-name", default=None, help="Ray Train run folder name")
    p.add_argument(
        "--storage", default=None, help="default: <$DEEPFIX_STORAGE or $DEEPFIX_HOME>/ray_results"
    )
    p.add_argument("--limit-steps", type=int, default=None, help="max steps per epoch")
    p.add_argument("--max-failures", type=int, default=2)
    p.add_argument("--fail-once-at-epoch", type=int, default=None, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ns = _parser().parse_args(argv)
    args = TrainArgs.model_validate(vars(ns))
    import ray

    ray.init(ignore_reinit_error=True)

    def body() -> int:
        version = run(args)
        print(version.ref)
        return 0

    return run_reporting_errors(body)


if __name__ == "__main__":
    sys.exit(main())
