"""Cut images into fixed-size tiles and stitch them back without seams.

The paper's crop presets (64, 128, 256, 512 or a custom size, ``CropSpec.size``) turn each
clean sample into tiles that become training pairs; at inference a large image is restored
tile by tile and stitched back.

``tile`` pads the bottom and right edges (``numpy.pad`` modes, reflect by default) so that
tiles of the requested size at the requested stride cover the whole image. ``stitch`` undoes
it: without overlap the tiles are copied back exactly; with overlap each tile is weighted by a
separable linear ramp over the overlapping band (weight 1 in its interior) and the sum is
divided by the summed weights. In the interior the ramps of neighbouring tiles add up to one,
so this is the linear cross-fade of overlap-tile inference (Ronneberger et al., "U-Net", MICCAI
2015, section 2; Preibisch et al., "Globally optimal stitching of tiled 3D microscopic image
acquisitions", Bioinformatics 2009, for the linear blending) and unchanged tiles stitch back to
the original image up to float rounding; integer images are rounded back exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["PadMode", "TileGrid", "stitch", "tile", "tile_weights"]

PadMode = Literal["reflect", "symmetric", "edge", "constant"]


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of one image came from: enough to stitch them back."""

    image_hw: tuple[int, int]
    tile_hw: tuple[int, int]
    stride: tuple[int, int]
    rows: int
    cols: int

    @property
    def count(self) -> int:
        return self.rows * self.cols

    @property
    def padded_hw(self) -> tuple[int, int]:
        """Size of the padded image the tiles exactly cover."""
        (th, tw), (sy, sx) = self.tile_hw, self.stride
        return (self.rows - 1) * sy + th, (self.cols - 1) * sx + tw

    @property
    def overlaps(self) -> bool:
        return self.stride != self.tile_hw

    def origins(self) -> list[tuple[int, int]]:
        """Top-left ``(y, x)`` of each tile, in the (row-major) order of the tiles."""
        sy, sx = self.stride
        return [(r * sy, c * sx) for r in range(self.rows) for c in range(self.cols)]


def _pair(value: int | tuple[int, int], what: str) -> tuple[int, int]:
    a, b = (value, value) if isinstance(value, int) else value
    if a < 1 or b < 1:
        raise ValueError(f"{what} must be positive, got {value}")
    return int(a), int(b)


def _steps(n: int, t: int, s: int) -> int:
    return 1 if n <= t else math.ceil((n - t) / s) + 1


def tile(
    image: np.ndarray,
    tile_hw: int | tuple[int, int],
    *,
    stride: int | tuple[int, int] | None = None,
    pad_mode: PadMode = "reflect",
) -> tuple[np.ndarray, TileGrid]:
    """Cut ``image`` (``H x W`` or ``H x W x C``) into tiles covering all of it.

    Args:
        tile_hw: tile (height, width), or one side for square tiles.
        stride: step between tiles, at most the tile size; defaults to the tile size (no
            overlap).
        pad_mode: how the bottom and right edges are filled when the tiles overhang them.

    Returns:
        ``N x th x tw [x C]`` tiles in row-major order (same dtype), and their ``TileGrid``.

    Raises:
        ValueError: a size is not positive, or the stride exceeds the tile size.
    """
    if image.ndim not in (2, 3) or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"expected a non-empty H x W or H x W x C image, got {image.shape}")
    th, tw = _pair(tile_hw, "tile size")
    sy, sx = _pair(stride, "stride") if stride is not None else (th, tw)
    if sy > th or sx > tw:
        raise ValueError(f"stride {(sy, sx)} larger than the tile {(th, tw)} would leave gaps")
    h, w = image.shape[:2]
    grid = TileGrid((h, w), (th, tw), (sy, sx), _steps(h, th, sy), _steps(w, tw, sx))
    ph, pw = grid.padded_hw
    pad = [(0, ph - h), (0, pw - w)] + [(0, 0)] * (image.ndim - 2)
    padded = np.pad(image, pad, mode=pad_mode) if (ph, pw) != (h, w) else image
    # Window view (rows x cols x [C x] th x tw) without copying, then one copy into tiles.
    windows = sliding_window_view(padded, (th, tw), axis=(0, 1))[::sy, ::sx]
    if image.ndim == 3:
        windows = np.moveaxis(windows, 2, -1)
    tiles = np.ascontiguousarray(windows).reshape(grid.count, th, tw, *image.shape[2:])
    return tiles, grid


def _ramp(t: int, s: int) -> np.ndarray:
    overlap = t - s
    if overlap <= 0:
        return np.ones(t)
    i = np.arange(t) + 0.5
    return np.minimum(1.0, np.minimum(i, t - i) / overlap)


def tile_weights(grid: TileGrid) -> np.ndarray:
    """The ``th x tw`` blending weight of every tile: 1 inside, a linear ramp over overlaps."""
    (th, tw), (sy, sx) = grid.tile_hw, grid.stride
    return np.outer(_ramp(th, sy), _ramp(tw, sx))


def stitch(tiles: np.ndarray, grid: TileGrid) -> np.ndarray:
    """Put tiles from ``tile`` (or processed copies of the same shape) back into one image.

    Returns:
        The ``grid.image_hw`` image, with the dtype of ``tiles``; integer results are rounded
        and clipped to the dtype's range.

    Raises:
        ValueError: the tiles do not match the grid.
    """
    th, tw = grid.tile_hw
    if tiles.ndim not in (3, 4) or tiles.shape[0] != grid.count or tiles.shape[1:3] != (th, tw):
        raise ValueError(
            f"tiles of shape {tiles.shape} do not match the grid ({grid.count} x {th} x {tw})"
        )
    h, w = grid.image_hw
    ph, pw = grid.padded_hw
    extra = tiles.shape[3:]
    if not grid.overlaps:
        out = np.empty((ph, pw, *extra), dtype=tiles.dtype)
        for t, (y, x) in zip(tiles, grid.origins(), strict=True):
            out[y : y + th, x : x + tw] = t
        return out[:h, :w]
    weight = tile_weights(grid)
    wexp = weight.reshape(th, tw, *([1] * len(extra)))
    acc = np.zeros((ph, pw, *extra), dtype=np.float64)
    total = np.zeros((ph, pw), dtype=np.float64)
    for t, (y, x) in zip(tiles, grid.origins(), strict=True):
        acc[y : y + th, x : x + tw] += t * wexp
        total[y : y + th, x : x + tw] += weight
    blended = acc[:h, :w] / total[:h, :w].reshape(h, w, *([1] * len(extra)))
    if np.issubdtype(tiles.dtype, np.integer):
        info = np.iinfo(tiles.dtype)
        return np.clip(np.rint(blended), info.min, info.max).astype(tiles.dtype)
    return blended.astype(tiles.dtype)
