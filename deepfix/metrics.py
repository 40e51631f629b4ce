"""Image quality metrics: PSNR, SSIM and the paper's pixel "accuracy", for numpy and torch.

Definitions (all comparisons are ``clean`` vs ``restored``; the arguments are symmetric except
where noted):

* **PSNR** ``= 10 * log10(MAX**2 / MSE)`` with ``MAX = 255`` on ``uint8`` images and ``1`` on
  ``[0, 1]`` float tensors; MSE over every pixel and channel. It matches scikit-image's
  ``peak_signal_noise_ratio(..., data_range=255)``. **Identical images give ``float('inf')``**,
  returned explicitly rather than capped: a cap would hide the difference between a perfect and a
  very good restoration. Callers that average over a dataset must decide how to treat ``inf``
  (e.g. report the count of perfect images and average the rest, or average MSE and convert).
* **SSIM** after Wang, Bovik, Sheikh & Simoncelli, "Image quality assessment: from error
  visibility to structural similarity", IEEE TIP 13(4), 2004, with scikit-image's defaults for
  ``structural_similarity(..., channel_axis=-1, data_range=255)``: a 7x7 *uniform* window, sample
  (N-1) covariance, ``K1 = 0.01``, ``K2 = 0.03``, ``C1 = (K1 L)^2``, ``C2 = (K2 L)^2``; the SSIM map
  is averaged over the region where the window fits entirely inside the image (skimage pads and
  then crops 3 pixels from every side, which is the same set of pixels, so the border mode never
  matters), and per-channel means are averaged. Images need at least 7 pixels per side.
* **Accuracy** (the paper's "accuracy", made precise): the share of pixel values, over all
  channels, whose restored value lies within ``tolerance`` of the clean one, with the tolerance
  in 0..255 levels, default 8 (i.e. ``|restored - clean| <= 8`` on ``uint8``, +-8/255 on
  ``[0, 1]`` tensors). 1.0 means every value is within tolerance.

The torch versions take ``(N, C, H, W)`` float tensors in ``[0, 1]`` (values outside are not
clamped: clamp model outputs first, as a saved image would be) and return one value per image
as a tensor of shape ``(N,)``. They agree with the numpy versions on ``uint8 / 255`` inputs.
"""

from __future__ import annotations

import math
from typing import cast

import numpy as np
import torch
import torch.nn.functional as TF
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict

from deepfix.errors import ImageError

__all__ = [
    "ACCURACY_TOLERANCE",
    "SSIM_WINDOW",
    "ImageMetrics",
    "accuracy",
    "accuracy_batch",
    "compute_metrics",
    "psnr",
    "psnr_batch",
    "ssim",
    "ssim_batch",
]

ACCURACY_TOLERANCE = 8
SSIM_WINDOW = 7
_K1 = 0.01
_K2 = 0.03
# Tensors holding k/255 values carry float rounding; this slack (far below half a level) lets
# them compare exactly like their uint8 originals at the tolerance boundary.
_LEVEL_SLACK = 1e-3


class ImageMetrics(BaseModel):
    """PSNR (dB, ``inf`` for identical images), SSIM and accuracy of one restored image.

    JSON writes an infinite PSNR as the string ``"Infinity"`` and reads it back.
    """

    model_config = ConfigDict(frozen=True, ser_json_inf_nan="strings")

    psnr: float
    ssim: float
    accuracy: float


def _pair(clean: NDArray[np.generic], restored: NDArray[np.generic]) -> None:
    for what, image in (("clean", clean), ("restored", restored)):
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
            kind = getattr(image, "dtype", type(image).__name__)
            raise ImageError(f"{what} must be a uint8 numpy array, got {kind}")
        if image.ndim not in (2, 3):
            raise ImageError(f"{what} must be HxW or HxWxC, got shape {image.shape}")
    if clean.shape != restored.shape:
        raise ImageError(f"shape mismatch: clean {clean.shape} vs restored {restored.shape}")


def _pair_batch(clean: torch.Tensor, restored: torch.Tensor) -> None:
    for what, t in (("clean", clean), ("restored", restored)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise ImageError(f"{what} must be a floating-point tensor")
        if t.ndim != 4:
            raise ImageError(f"{what} must be (N, C, H, W), got shape {tuple(t.shape)}")
    if clean.shape != restored.shape:
        raise ImageError(
            f"shape mismatch: clean {tuple(clean.shape)} vs restored {tuple(restored.shape)}"
        )


def _work_dtype(t: torch.Tensor) -> torch.dtype:
    # Half precision cannot hold the SSIM variances (E[x^2] - E[x]^2 cancels); float32 is
    # enough to agree with the float64 numpy reference to well under 1e-3.
    return torch.float64 if t.dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------------------------
# numpy


def psnr(clean: NDArray[np.uint8], restored: NDArray[np.uint8]) -> float:
    """PSNR in dB of two ``uint8`` images (HxW or HxWxC); ``inf`` when they are identical."""
    _pair(clean, restored)
    diff = clean.astype(np.float64) - restored.astype(np.float64)
    mse = float(np.mean(diff * diff))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(255.0**2 / mse)


def _box_mean_valid(x: NDArray[np.float64], k: int) -> NDArray[np.float64]:
    # Mean over every k x k window that fits inside the image, by an integral image. On uint8
    # inputs x, x*x and x*y hold integers, so the float64 sums are exact.
    c = np.zeros((x.shape[0] + 1, x.shape[1] + 1), dtype=np.float64)
    c[1:, 1:] = x.cumsum(axis=0).cumsum(axis=1)
    s = c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]
    return cast(NDArray[np.float64], s / float(k * k))


def _ssim_channel(x: NDArray[np.float64], y: NDArray[np.float64], data_range: float) -> float:
    k = SSIM_WINDOW
    cov_norm = k * k / (k * k - 1.0)  # sample covariance, as skimage's default
    ux, uy = _box_mean_valid(x, k), _box_mean_valid(y, k)
    uxx, uyy, uxy = _box_mean_valid(x * x, k), _box_mean_valid(y * y, k), _box_mean_valid(x * y, k)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1 = (_K1 * data_range) ** 2
    c2 = (_K2 * data_range) ** 2
    num = (2.0 * ux * uy + c1) * (2.0 * vxy + c2)
    den = (ux * ux + uy * uy + c1) * (vx + vy + c2)
    return float(np.mean(num / den))


def ssim(clean: NDArray[np.uint8], restored: NDArray[np.uint8]) -> float:
    """Mean SSIM of two ``uint8`` images (HxW or HxWxC), as scikit-image computes it."""
    _pair(clean, restored)
    if min(clean.shape[:2]) < SSIM_WINDOW:
        raise ImageError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}")
    x = clean.astype(np.float64)
    y = restored.astype(np.float64)
    if x.ndim == 2:
        return _ssim_channel(x, y, 255.0)
    return float(np.mean([_ssim_channel(x[..., c], y[..., c], 255.0) for c in range(x.shape[2])]))


def accuracy(
    clean: NDArray[np.uint8],
    restored: NDArray[np.uint8],
    *,
    tolerance: float = ACCURACY_TOLERANCE,
) -> float:
    """Share of pixel values (all channels) with ``|restored - clean| <= tolerance`` levels."""
    _pair(clean, restored)
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    diff = np.abs(clean.astype(np.int16) - restored.astype(np.int16))
    return float(np.mean(diff <= tolerance))


def compute_metrics(
    clean: NDArray[np.uint8],
    restored: NDArray[np.uint8],
    *,
    tolerance: float = ACCURACY_TOLERANCE,
) -> ImageMetrics:
    """PSNR, SSIM and accuracy of one restored ``uint8`` image against its clean original."""
    return ImageMetrics(
        psnr=psnr(clean, restored),
        ssim=ssim(clean, restored),
        accuracy=accuracy(clean, restored, tolerance=tolerance),
    )


# --------------------------------------------------------------------------------------------
# torch


def psnr_batch(clean: torch.Tensor, restored: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of ``(N, C, H, W)`` tensors in ``[0, 1]``; ``inf`` where identical."""
    _pair_batch(clean, restored)
    dtype = _work_dtype(clean)
    diff = clean.to(dtype) - restored.to(dtype)
    mse = diff.pow(2).flatten(1).mean(dim=1)
    # 10*log10(1/0) is +inf in IEEE arithmetic, which is the documented value.
    return -10.0 * torch.log10(mse)


def ssim_batch(clean: torch.Tensor, restored: torch.Tensor) -> torch.Tensor:
    """Per-image mean SSIM of ``(N, C, H, W)`` tensors in ``[0, 1]`` (same definition as numpy)."""
    _pair_batch(clean, restored)
    if min(clean.shape[-2:]) < SSIM_WINDOW:
        raise ImageError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}")
    dtype = _work_dtype(clean)
    x = clean.to(dtype)
    y = restored.to(dtype)
    k = SSIM_WINDOW
    cov_norm = k * k / (k * k - 1.0)

    def box(t: torch.Tensor) -> torch.Tensor:
        # No padding: exactly the windows that fit, i.e. skimage's cropped region.
        return TF.avg_pool2d(t, kernel_size=k, stride=1)

    ux, uy = box(x), box(y)
    vx = cov_norm * (box(x * x) - ux * ux)
    vy = cov_norm * (box(y * y) - uy * uy)
    vxy = cov_norm * (box(x * y) - ux * uy)
    c1 = _K1**2
    c2 = _K2**2
    num = (2.0 * ux * uy + c1) * (2.0 * vxy + c2)
    den = (ux * ux + uy * uy + c1) * (vx + vy + c2)
    # Equal-size channels, so the mean over (C, H, W) is the mean of per-channel means.
    return (num / den).flatten(1).mean(dim=1)


def accuracy_batch(
    clean: torch.Tensor,
    restored: torch.Tensor,
    *,
    tolerance: float = ACCURACY_TOLERANCE,
) -> torch.Tensor:
    """Per-image share of values within ``tolerance`` levels (of 255) of the clean ones."""
    _pair_batch(clean, restored)
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    dtype = _work_dtype(clean)
    diff = (clean.to(dtype) - restored.to(dtype)).abs() * 255.0
    within = diff <= tolerance + _LEVEL_SLACK
    return within.flatten(1).to(dtype).mean(dim=1)
