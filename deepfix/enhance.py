"""Enhance one image with a restoration network: whole image tile-wise, or only its faces.

Whole images are cut into overlapping tiles (:func:`deepfix.tiles.tile`), restored in batches
and stitched back with the linear cross-fade of overlap-tile inference (Ronneberger et al.
2015), so memory stays bounded for any image size and tile borders leave no seams.

Faces-only: each detected face box is grown by a margin (:func:`deepfix.faces.face_region`),
that region is restored, and pasted back through a feathered mask — 1 in the middle, falling
linearly to 0 over a band at the region's edge — so the restored face blends into the
untouched surroundings without a visible rectangle (the alpha feathering of classical image
compositing; Porter & Duff 1984 for ``a * F + (1 - a) * B``).

Ray-free: ``jobs/enhance.py`` runs this inside Ray Data actors, Serve inside replicas.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from deepfix.faces import FaceBox, face_region
from deepfix.tiles import TileGrid, stitch, tile
from deepfix.training import from_uint8, to_uint8

__all__ = [
    "EnhanceOptions",
    "FaceEnhancement",
    "enhance_faces",
    "enhance_many",
    "enhance_whole",
    "feather_mask",
    "restore_batch",
]


@dataclass(frozen=True)
class EnhanceOptions:
    """How an image is fed to the network.

    Attributes:
        tile_size: side of the square tiles (smaller images are one tile of their own size).
        overlap: pixels shared by neighbouring tiles, cross-faded when stitching.
        batch_size: tiles per forward pass.
        margin: face box growth per side, x box side (as in the dataset spec).
        feather: width of the mask's ramp as a fraction of the face region's shorter side.
    """

    tile_size: int = 256
    overlap: int = 32
    batch_size: int = 8
    margin: float = 0.25
    feather: float = 0.15

    def __post_init__(self) -> None:
        if self.tile_size < 8:
            raise ValueError(f"tile_size must be >= 8, got {self.tile_size}")
        if not 0 <= self.overlap < self.tile_size:
            raise ValueError(f"overlap must be in [0, tile_size), got {self.overlap}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0 < self.feather <= 0.5:
            raise ValueError(f"feather must be in (0, 0.5], got {self.feather}")


def _device_of(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


@torch.inference_mode()
def restore_batch(model: nn.Module, images: np.ndarray, *, amp: bool = False) -> np.ndarray:
    """Restore ``N x H x W x 3`` uint8 images of one size; returns the same shape, uint8.

    Runs on the model's device; ``amp`` uses float16 autocast there when it is CUDA.
    """
    device = _device_of(model)
    x = from_uint8(images).to(device)
    with torch.autocast(device.type, dtype=torch.float16, enabled=amp and device.type == "cuda"):
        y = model(x)
    return to_uint8(y.float())


def _cut(image: np.ndarray, opts: EnhanceOptions) -> tuple[np.ndarray, TileGrid]:
    h, w = image.shape[:2]
    th, tw = min(opts.tile_size, h), min(opts.tile_size, w)
    # The overlap must leave a positive stride on images smaller than a tile.
    stride = (max(1, th - min(opts.overlap, th // 2)), max(1, tw - min(opts.overlap, tw // 2)))
    return tile(image, (th, tw), stride=stride)


def enhance_whole(
    model: nn.Module,
    image: np.ndarray,
    options: EnhanceOptions | None = None,
    *,
    amp: bool = False,
) -> np.ndarray:
    """Restore a whole RGB uint8 image tile by tile and stitch it back to its own size."""
    opts = options or EnhanceOptions()
    tiles, grid = _cut(image, opts)
    restored = np.empty_like(tiles)
    for i in range(0, len(tiles), opts.batch_size):
        restored[i : i + opts.batch_size] = restore_batch(
            model, tiles[i : i + opts.batch_size], amp=amp
        )
    return stitch(restored, grid)


def enhance_many(
    model: nn.Module,
    images: Sequence[np.ndarray],
    options: EnhanceOptions | None = None,
    *,
    amp: bool = False,
) -> list[np.ndarray]:
    """Restore several whole images, batching tiles of equal size across images.

    The same result as :func:`enhance_whole` per image, but a batch of small images fills
    one forward pass instead of one pass each (what a GPU actor wants).
    """
    opts = options or EnhanceOptions()
    cut = [_cut(im, opts) for im in images]
    by_shape: dict[tuple[int, ...], list[tuple[int, int]]] = {}
    for i, (tiles, _) in enumerate(cut):
        for j in range(len(tiles)):
            by_shape.setdefault(tiles.shape[1:], []).append((i, j))
    restored = [np.empty_like(tiles) for tiles, _ in cut]
    for refs in by_shape.values():
        for k in range(0, len(refs), opts.batch_size):
            chunk = refs[k : k + opts.batch_size]
            out = restore_batch(model, np.stack([cut[i][0][j] for i, j in chunk]), amp=amp)
            for (i, j), r in zip(chunk, out, strict=True):
                restored[i][j] = r
    return [stitch(r, grid) for r, (_, grid) in zip(restored, cut, strict=True)]


def feather_mask(h: int, w: int, ramp: int) -> np.ndarray:
    """``h x w`` float32 alpha: 1 inside, a linear ramp to ~0 over ``ramp`` pixels at the edge."""
    if ramp <= 0:
        return np.ones((h, w), dtype=np.float32)

    def side(n: int) -> np.ndarray:
        i = np.arange(n, dtype=np.float32) + 0.5
        return np.clip(np.minimum(i, n - i) / ramp, 0.0, 1.0)

    return np.outer(side(h), side(w)).astype(np.float32)


@dataclass
class FaceEnhancement:
    """The image with its faces restored, and the regions ``(x, y, w, h)`` that were pasted."""

    image: np.ndarray
    regions: list[tuple[int, int, int, int]] = field(default_factory=list)


def enhance_faces(
    model: nn.Module,
    image: np.ndarray,
    boxes: Sequence[FaceBox],
    options: EnhanceOptions | None = None,
    *,
    amp: bool = False,
) -> FaceEnhancement:
    """Restore only the face regions of ``image`` and paste them back with a feathered mask.

    Pixels outside every grown face region are returned unchanged.
    """
    opts = options or EnhanceOptions()
    out = image.astype(np.float32)
    regions = []
    for box in boxes:
        x, y, w, h = face_region(box, image.shape[:2], margin=opts.margin)
        if w < 2 or h < 2:
            continue
        crop = image[y : y + h, x : x + w]
        restored = enhance_whole(model, crop, opts, amp=amp).astype(np.float32)
        alpha = feather_mask(h, w, max(1, round(opts.feather * min(h, w))))[..., None]
        # Blend against the current output, so overlapping faces compose instead of clobber.
        out[y : y + h, x : x + w] = alpha * restored + (1.0 - alpha) * out[y : y + h, x : x + w]
        regions.append((x, y, w, h))
    return FaceEnhancement(np.clip(np.rint(out), 0, 255).astype(np.uint8), regions)
