from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepfix.spec import CropSpec
from deepfix.tiles import TileGrid, stitch, tile, tile_weights


@st.composite
def _case(draw: st.DrawFn, overlap: bool) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    h, w = draw(st.integers(1, 45)), draw(st.integers(1, 45))
    channels = draw(st.sampled_from([None, 1, 3]))
    th, tw = draw(st.integers(1, 16)), draw(st.integers(1, 16))
    if overlap:
        sy, sx = draw(st.integers(1, th)), draw(st.integers(1, tw))
    else:
        sy, sx = th, tw
    seed = draw(st.integers(0, 2**32 - 1))
    shape = (h, w) if channels is None else (h, w, channels)
    image = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    return image, (th, tw), (sy, sx)


@settings(max_examples=150, deadline=None)
@given(_case(overlap=False))
def test_uint8_round_trip_without_overlap_is_exact(
    case: tuple[np.ndarray, tuple[int, int], tuple[int, int]],
) -> None:
    image, tile_hw, _ = case
    tiles, grid = tile(image, tile_hw)
    assert tiles.dtype == np.uint8 and tiles.shape[1:3] == tile_hw
    out = stitch(tiles, grid)
    assert out.dtype == image.dtype
    np.testing.assert_array_equal(out, image)


@settings(max_examples=150, deadline=None)
@given(_case(overlap=True))
def test_round_trip_with_overlap_blends_back_to_the_image(
    case: tuple[np.ndarray, tuple[int, int], tuple[int, int]],
) -> None:
    image, tile_hw, stride = case
    tiles, grid = tile(image, tile_hw, stride=stride)
    np.testing.assert_array_equal(stitch(tiles, grid), image)  # rounding makes uint8 exact
    as_float = image.astype(np.float32) / 255
    ftiles, fgrid = tile(as_float, tile_hw, stride=stride)
    np.testing.assert_allclose(stitch(ftiles, fgrid), as_float, rtol=0, atol=1e-6)


def test_preset_cuts_a_sample_into_its_tiles() -> None:
    size = CropSpec(mode="128x128").size
    assert size == (128, 128)
    tiles, grid = tile(np.zeros((256, 384, 3), np.uint8), size)
    assert tiles.shape == (6, 128, 128, 3)
    assert (grid.rows, grid.cols, grid.padded_hw) == (2, 3, (256, 384))


def test_odd_sizes_are_padded_by_reflection_to_cover_the_image() -> None:
    row = np.arange(5, dtype=np.uint8)[None, :]  # 1 x 5
    tiles, grid = tile(row, (1, 4))
    assert grid.padded_hw == (1, 8)
    np.testing.assert_array_equal(tiles[:, 0], [[0, 1, 2, 3], [4, 3, 2, 1]])


def test_constant_padding_fills_with_zeros() -> None:
    tiles, _ = tile(np.full((3, 3), 9, np.uint8), 4, pad_mode="constant")
    np.testing.assert_array_equal(tiles[0][3], [0, 0, 0, 0])


def test_tiny_image_becomes_one_padded_tile() -> None:
    tiles, grid = tile(np.ones((2, 3, 3), np.uint8), 64)
    assert tiles.shape == (1, 64, 64, 3) and grid.count == 1
    assert stitch(tiles, grid).shape == (2, 3, 3)


def test_tiles_follow_the_row_major_origins() -> None:
    image = np.arange(10 * 12, dtype=np.int32).reshape(10, 12)
    tiles, grid = tile(image, (4, 6), stride=(3, 3))
    for t, (y, x) in zip(tiles, grid.origins(), strict=True):
        if y + 4 <= 10 and x + 6 <= 12:
            np.testing.assert_array_equal(t, image[y : y + 4, x : x + 6])


def test_weights_are_a_partition_of_unity_across_an_overlap() -> None:
    grid = TileGrid((32, 32), (8, 8), (6, 6), 5, 5)
    ramp = tile_weights(grid)[4]  # a row where the vertical ramp is 1
    assert ramp.min() > 0 and ramp[2:6].max() == 1.0
    np.testing.assert_allclose(ramp[6:] + ramp[:2], 1.0)  # tail of one tile + head of next


def test_overlapping_tiles_are_blended_without_a_seam() -> None:
    # Each processed tile is off by a different constant; a hard paste would jump by the full
    # difference at the boundary, the blend spreads it over the overlap.
    tiles, grid = tile(np.zeros((16, 40), np.float64), (16, 16), stride=(16, 12))
    shifted = tiles + 8.0 * np.arange(grid.count)[:, None, None]
    out = stitch(shifted, grid)
    steps = np.abs(np.diff(out, axis=1))
    assert steps.max() <= 8.0 / 4 + 1e-9  # 8 spread over the 4-pixel overlap
    assert out[0, 0] == 0.0 and out[0, -1] == 8.0 * (grid.count - 1)


def test_stride_larger_than_the_tile_is_refused() -> None:
    with pytest.raises(ValueError, match="gaps"):
        tile(np.zeros((8, 8), np.uint8), 4, stride=5)


def test_tiles_that_do_not_match_the_grid_are_refused() -> None:
    tiles, grid = tile(np.zeros((8, 8), np.uint8), 4)
    with pytest.raises(ValueError, match="do not match"):
        stitch(tiles[:3], grid)
