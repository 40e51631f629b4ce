"""deepfix.enhance: tile-wise whole-image enhancement and faces-only paste-back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from deepfix.enhance import (
    EnhanceOptions,
    enhance_faces,
    enhance_many,
    enhance_whole,
    feather_mask,
    restore_batch,
)
from deepfix.faces import FaceBox
from deepfix.models import ArchitectureConfig, build_model


class Brighten(nn.Module):
    """A per-pixel stand-in network: output = input + 0.2 (so tiles must stitch exactly)."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor(0.2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 200, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize(("h", "w"), [(70, 90), (20, 12), (64, 64)])
def test_whole_image_tiles_stitch_seamlessly(h: int, w: int) -> None:
    image = _image(h, w)
    out = enhance_whole(Brighten(), image, EnhanceOptions(tile_size=32, overlap=8, batch_size=3))
    expected = restore_batch(Brighten(), image[None])[0]
    assert out.shape == image.shape
    np.testing.assert_allclose(out.astype(int), expected.astype(int), atol=1)


def test_enhance_many_matches_enhance_whole() -> None:
    torch.manual_seed(0)
    model = build_model(
        ArchitectureConfig(name="unet_r2", kwargs={"base_channels": 4, "depth": 1, "t": 1})
    ).eval()
    images = [_image(40, 50, 1), _image(24, 24, 2), _image(40, 50, 3)]
    opts = EnhanceOptions(tile_size=32, overlap=8, batch_size=4)
    batched = enhance_many(model, images, opts)
    for image, out in zip(images, batched, strict=True):
        np.testing.assert_array_equal(out, enhance_whole(model, image, opts))


def test_feather_mask_is_one_inside_and_falls_off_at_the_edges() -> None:
    mask = feather_mask(20, 30, 5)
    assert mask.shape == (20, 30) and mask.dtype == np.float32
    assert mask[10, 15] == 1.0
    assert mask[0, 0] < 0.05 and mask[0, 15] < 0.2
    assert np.all(np.diff(mask[:10, 15]) >= 0)  # monotone ramp into the middle
    assert feather_mask(4, 4, 0).min() == 1.0


def test_faces_only_changes_only_the_face_regions() -> None:
    image = _image(80, 100)
    box = FaceBox(x=40, y=20, w=20, h=20)
    result = enhance_faces(Brighten(), image, [box], EnhanceOptions(margin=0.25, feather=0.2))
    (x, y, w, h) = result.regions[0]
    assert (x, y, w, h) == (35, 15, 30, 30)
    outside = np.ones(image.shape[:2], bool)
    outside[y : y + h, x : x + w] = False
    np.testing.assert_array_equal(result.image[outside], image[outside])
    centre = result.image[y + h // 2, x + w // 2].astype(int)
    assert np.all(centre >= image[y + h // 2, x + w // 2].astype(int) + 45)  # fully restored
    edge = result.image[y, x + w // 2].astype(int) - image[y, x + w // 2].astype(int)
    assert np.all(edge < 25)  # feathered: barely changed at the border


def test_faces_only_without_faces_returns_the_image() -> None:
    image = _image(30, 30)
    result = enhance_faces(Brighten(), image, [])
    np.testing.assert_array_equal(result.image, image)
    assert result.regions == []


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="overlap"):
        EnhanceOptions(tile_size=32, overlap=32)
