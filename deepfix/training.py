"""Training pieces that know nothing about Ray: decode a batch, the loss, one epoch, validation.

``jobs/train.py`` wires these into a Ray Train ``train_loop_per_worker``; ``bench/train.py``
runs them in a plain loop. The network modules (:mod:`deepfix.models`) know nothing about
optimisers, and this module knows nothing about Ray.

The loss is a per-pixel distance plus an optional SSIM term: ``D + w * (1 - SSIM)`` with ``w``
configurable and 0 by default (Zhao, Gallo, Frosio & Kautz, "Loss Functions for Image
Restoration with Neural Networks", IEEE TCI 2017, found that mixing in SSIM helps perceived
quality). ``D`` is the mean squared error by default, or L1 (``pixel_loss="l1"``), which Zhao
et al. prefer for denoising and demosaicking. L1 is not the default here because, measured on
64x64 face crops with the network starting as the identity (zero head), it stays there for
salt-and-pepper noise: at the identity most pixels are exactly right, and L1 pulls every one
of them back with the same force as the few noisy ones, so the head decays to zero (test PSNR
21.35 dB before and after 200 steps, where MSE reached 34.8 dB and a 3x3 median 32.5 dB); on
the full degradation mix MSE led L1 by 0.9 dB after 400 steps. SSIM is
:func:`deepfix.metrics.ssim_batch` (Wang et al. 2004), differentiable as written. Optimiser
and schedule are AdamW (Loshchilov & Hutter, ICLR 2019) with cosine annealing over the epochs
(Loshchilov & Hutter, "SGDR", ICLR 2017).

Validation metrics are summed per image and reduced across data-parallel workers with
``torch.distributed`` when it is initialised, so every worker reports the same numbers. An
identical restoration has infinite PSNR; it counts as :data:`PSNR_CAP` dB in the means.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from deepfix.io import decode
from deepfix.metrics import accuracy_batch, psnr_batch, ssim_batch
from deepfix.models import ArchitectureConfig

__all__ = [
    "PSNR_CAP",
    "EpochStats",
    "MetricSums",
    "PixelLoss",
    "TrainConfig",
    "decode_pairs",
    "from_uint8",
    "make_optimizer",
    "make_scheduler",
    "restoration_loss",
    "to_uint8",
    "train_epoch",
    "validate",
]

PSNR_CAP = 100.0

Batch = tuple[Tensor, Tensor]  # (degraded, clean), float (N, 3, H, W) in [0, 1]
PixelLoss = Literal["mse", "l1"]


class TrainConfig(BaseModel):
    """Hyper-parameters of one training run (the Ray-free part).

    Attributes:
        arch: the network to build.
        epochs: passes over the training split (45, as in the paper).
        batch_size: images per step and worker.
        lr: peak AdamW learning rate, annealed to ``lr * min_lr_ratio`` by a cosine.
        weight_decay: AdamW's decoupled weight decay.
        pixel_loss: the per-pixel distance ``D``: ``"mse"`` or ``"l1"``.
        ssim_weight: weight ``w`` of the ``w * (1 - SSIM)`` loss term; 0 is ``D`` alone.
        amp: mixed precision (float16 autocast + gradient scaling); used on CUDA only.
        max_steps_per_epoch: stop an epoch early (smoke runs and tests); None runs it all.
        seed: seeds the network's initialisation.
    """

    model_config = ConfigDict(extra="forbid")

    arch: ArchitectureConfig
    epochs: int = Field(45, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0)
    min_lr_ratio: float = Field(0.01, ge=0, le=1)
    weight_decay: float = Field(1e-4, ge=0)
    pixel_loss: PixelLoss = "mse"
    ssim_weight: float = Field(0.0, ge=0)
    amp: bool = True
    max_steps_per_epoch: int | None = Field(None, ge=1)
    seed: int = 0


# -------------------------------------------------------------------------------- decoding


def from_uint8(images: Sequence[np.ndarray] | np.ndarray) -> Tensor:
    """``N x H x W x 3`` uint8 RGB (array or list of one size) -> float ``(N, 3, H, W)``, [0, 1]."""
    stacked = np.stack(list(images)) if not isinstance(images, np.ndarray) else images
    if stacked.ndim == 3:
        stacked = stacked[None]
    arr = np.ascontiguousarray(stacked)
    if not arr.flags.writeable:  # torch warns on read-only views (tiles, decoded buffers)
        arr = arr.copy()
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0


def to_uint8(batch: Tensor) -> np.ndarray:
    """Float ``(N, 3, H, W)`` in [0, 1] -> ``N x H x W x 3`` uint8 (clamped, rounded)."""
    out = (batch.detach().float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    return out.permute(0, 2, 3, 1).cpu().numpy()


def _common_crop(images: list[np.ndarray], h: int, w: int) -> list[np.ndarray]:
    out = []
    for im in images:
        y = (im.shape[0] - h) // 2
        x = (im.shape[1] - w) // 2
        out.append(im[y : y + h, x : x + w])
    return out


def decode_pairs(
    batch: Mapping[str, Any],
    *,
    degraded_key: str = "degraded",
    clean_key: str = "clean",
) -> Batch:
    """Decode a batch of prepared rows (PNG bytes) into ``(degraded, clean)`` tensors.

    A prepared dataset holds one sample size, but a dataset re-prepared with other crops could
    mix sizes; the batch is then centre-cropped to its smallest height and width so it stacks.

    Args:
        batch: columns as Ray Data or pyarrow give them (arrays or lists of ``bytes``).
    """
    degraded = [decode(bytes(b)) for b in batch[degraded_key]]
    clean = [decode(bytes(b)) for b in batch[clean_key]]
    for d, c in zip(degraded, clean, strict=True):
        if d.shape != c.shape:
            raise ValueError(f"degraded {d.shape} and clean {c.shape} differ in size")
    h = min(im.shape[0] for im in clean)
    w = min(im.shape[1] for im in clean)
    if any(im.shape[:2] != (h, w) for im in clean):
        degraded, clean = _common_crop(degraded, h, w), _common_crop(clean, h, w)
    return from_uint8(degraded), from_uint8(clean)


# ------------------------------------------------------------------------------------ loss


def restoration_loss(
    restored: Tensor,
    clean: Tensor,
    *,
    pixel_loss: PixelLoss = "mse",
    ssim_weight: float = 0.0,
) -> Tensor:
    """``D + ssim_weight * (1 - SSIM)``, averaged over the batch, ``D`` = MSE or L1.

    ``restored`` is the network's raw (unclamped) output, so gradients are not cut at 0 and 1.
    """
    distance = F.mse_loss if pixel_loss == "mse" else F.l1_loss
    loss = distance(restored.float(), clean.float())
    if ssim_weight > 0:
        loss = loss + ssim_weight * (1.0 - ssim_batch(clean.float(), restored.float()).mean())
    return loss


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig
) -> torch.optim.lr_scheduler.LRScheduler:
    """Cosine annealing stepped once per epoch (so a resumed run continues the same curve)."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=config.epochs, eta_min=config.lr * config.min_lr_ratio
    )


# ---------------------------------------------------------------------------------- epochs


@dataclass
class EpochStats:
    """Mean training loss of one epoch, over the images this process (or all, reduced) saw."""

    loss: float
    samples: int
    steps: int
    seconds: float

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0


def _reduce(values: list[float], device: torch.device) -> list[float]:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return [float(x) for x in t.tolist()]


def _autocast(device: torch.device, amp: bool) -> torch.autocast:
    enabled = amp and device.type == "cuda"
    return torch.autocast(device_type=device.type, dtype=torch.float16, enabled=enabled)


def train_epoch(
    model: nn.Module,
    batches: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    *,
    device: torch.device | str = "cpu",
    pixel_loss: PixelLoss = "mse",
    ssim_weight: float = 0.0,
    amp: bool = False,
    scaler: torch.amp.GradScaler | None = None,
    max_steps: int | None = None,
    reduce: bool = True,
) -> EpochStats:
    """One pass of optimisation over ``batches``.

    Args:
        batches: ``(degraded, clean)`` tensor pairs (any device; moved to ``device``).
        amp: float16 autocast on CUDA; pass a ``GradScaler`` with it.
        max_steps: stop after this many steps.
        reduce: sum loss and counts over data-parallel workers (when initialised).
    """
    device = torch.device(device)
    model.train()
    loss_sum, samples, steps = 0.0, 0, 0
    start = time.perf_counter()
    for degraded, clean in batches:
        if max_steps is not None and steps >= max_steps:
            break
        degraded = degraded.to(device, non_blocking=True)
        clean = clean.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, amp):
            restored = model(degraded)
        loss = restoration_loss(restored, clean, pixel_loss=pixel_loss, ssim_weight=ssim_weight)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        n = degraded.shape[0]
        loss_sum += float(loss.detach()) * n
        samples += n
        steps += 1
    seconds = time.perf_counter() - start
    if reduce:
        loss_sum, total = _reduce([loss_sum, float(samples)], device)
        samples = int(total)
    return EpochStats(
        loss=loss_sum / samples if samples else math.nan,
        samples=samples,
        steps=steps,
        seconds=seconds,
    )


@dataclass
class MetricSums:
    """Per-image sums of validation metrics; ``means()`` divides by ``count``."""

    loss: float = 0.0
    psnr: float = 0.0
    ssim: float = 0.0
    accuracy: float = 0.0
    count: int = 0

    def add(self, restored: Tensor, clean: Tensor, loss: float) -> None:
        image = restored.float().clamp(0.0, 1.0)
        target = clean.float()
        n = image.shape[0]
        self.loss += loss * n
        self.psnr += float(psnr_batch(target, image).clamp(max=PSNR_CAP).sum())
        self.ssim += float(ssim_batch(target, image).sum())
        self.accuracy += float(accuracy_batch(target, image).sum())
        self.count += n

    def reduced(self, device: torch.device | str = "cpu") -> MetricSums:
        """Summed over data-parallel workers (unchanged when not distributed)."""
        loss, psnr, ssim, acc, count = _reduce(
            [self.loss, self.psnr, self.ssim, self.accuracy, float(self.count)],
            torch.device(device),
        )
        return MetricSums(loss, psnr, ssim, acc, round(count))

    def means(self, prefix: str = "val_") -> dict[str, float]:
        if self.count == 0:
            return {}
        return {
            f"{prefix}loss": self.loss / self.count,
            f"{prefix}psnr": self.psnr / self.count,
            f"{prefix}ssim": self.ssim / self.count,
            f"{prefix}accuracy": self.accuracy / self.count,
        }


@torch.no_grad()
def validate(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    device: torch.device | str = "cpu",
    pixel_loss: PixelLoss = "mse",
    ssim_weight: float = 0.0,
    amp: bool = False,
    max_steps: int | None = None,
    reduce: bool = True,
) -> MetricSums:
    """Loss, PSNR, SSIM and accuracy of the model's (clamped) restorations over ``batches``."""
    device = torch.device(device)
    model.eval()
    sums = MetricSums()
    for step, (degraded, clean) in enumerate(batches):
        if max_steps is not None and step >= max_steps:
            break
        degraded = degraded.to(device, non_blocking=True)
        clean = clean.to(device, non_blocking=True)
        with _autocast(device, amp):
            restored = model(degraded)
        loss = float(
            restoration_loss(restored, clean, pixel_loss=pixel_loss, ssim_weight=ssim_weight)
        )
        sums.add(restored, clean, loss)
    return sums.reduced(device) if reduce else sums
