"""PSNR / SSIM against scikit-image, torch batch versions against numpy, accuracy edge cases."""

from __future__ import annotations

import math
from functools import cache

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from deepfix import metrics as M
from deepfix.errors import ImageError

PROPERTY = settings(max_examples=30, deadline=None)
TOL = 1e-3


@cache
def _clean() -> np.ndarray:
    return cv2.resize(data.astronaut(), (96, 80), interpolation=cv2.INTER_AREA)


def _noisy() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.clip(_clean() + rng.normal(0.0, 20.0, _clean().shape), 0, 255).astype(np.uint8)


def _blurred() -> np.ndarray:
    return cv2.GaussianBlur(_clean(), (7, 7), 1.5)


def _jpeg() -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", _clean(), [cv2.IMWRITE_JPEG_QUALITY, 20])
    assert ok
    return np.asarray(cv2.imdecode(buf, cv2.IMREAD_UNCHANGED), dtype=np.uint8)


def _dark() -> np.ndarray:
    return (_clean() // 2).astype(np.uint8)


DISTORTIONS = {"noisy": _noisy, "blurred": _blurred, "jpeg": _jpeg, "dark": _dark}


def _batch(*images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0


# --------------------------------------------------------------------------------------------
# numpy versus scikit-image


@pytest.mark.parametrize("distortion", DISTORTIONS)
def test_psnr_matches_skimage(distortion: str) -> None:
    other = DISTORTIONS[distortion]()
    expected = peak_signal_noise_ratio(_clean(), other, data_range=255)
    assert M.psnr(_clean(), other) == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize("distortion", DISTORTIONS)
def test_ssim_matches_skimage_on_rgb(distortion: str) -> None:
    other = DISTORTIONS[distortion]()
    expected = structural_similarity(_clean(), other, channel_axis=-1, data_range=255)
    assert M.ssim(_clean(), other) == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize("distortion", DISTORTIONS)
def test_ssim_matches_skimage_on_grayscale(distortion: str) -> None:
    a = np.asarray(cv2.cvtColor(_clean(), cv2.COLOR_RGB2GRAY), dtype=np.uint8)
    b = np.asarray(cv2.cvtColor(DISTORTIONS[distortion](), cv2.COLOR_RGB2GRAY), dtype=np.uint8)
    expected = structural_similarity(a, b, data_range=255)
    assert M.ssim(a, b) == pytest.approx(expected, abs=TOL)


image_pairs = st.tuples(st.integers(7, 24), st.integers(7, 24), st.sampled_from([1, 3])).flatmap(
    lambda s: st.tuples(arrays(np.uint8, (s[0], s[1], s[2])), arrays(np.uint8, (s[0], s[1], s[2])))
)


@PROPERTY
@given(pair=image_pairs)
def test_psnr_and_ssim_match_skimage_on_random_small_images(
    pair: tuple[np.ndarray, np.ndarray],
) -> None:
    a, b = pair
    if not np.array_equal(a, b):
        assert M.psnr(a, b) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255), abs=TOL)
    expected = structural_similarity(a, b, channel_axis=-1, data_range=255)
    assert M.ssim(a, b) == pytest.approx(expected, abs=TOL)


def test_psnr_of_identical_images_is_inf() -> None:
    assert M.psnr(_clean(), _clean()) == math.inf


def test_ssim_of_identical_images_is_one() -> None:
    assert M.ssim(_clean(), _clean()) == pytest.approx(1.0, abs=1e-12)


def test_ssim_rejects_images_smaller_than_the_window() -> None:
    tiny = np.zeros((6, 20, 3), dtype=np.uint8)
    with pytest.raises(ImageError, match="7x7"):
        M.ssim(tiny, tiny)


@pytest.mark.parametrize("fn", [M.psnr, M.ssim, M.accuracy])
def test_numpy_metrics_reject_mismatched_shapes(fn: object) -> None:
    with pytest.raises(ImageError, match="shape"):
        fn(_clean(), _clean()[:-1])  # type: ignore[operator]


@pytest.mark.parametrize("fn", [M.psnr, M.ssim, M.accuracy])
def test_numpy_metrics_reject_non_uint8(fn: object) -> None:
    with pytest.raises(ImageError, match="uint8"):
        fn(_clean().astype(np.float32), _clean())  # type: ignore[operator]


# --------------------------------------------------------------------------------------------
# torch batches versus numpy


def test_psnr_batch_matches_numpy_per_image() -> None:
    others = [f() for f in DISTORTIONS.values()]
    got = M.psnr_batch(_batch(*[_clean()] * len(others)), _batch(*others))
    assert got.shape == (len(others),)
    for value, other in zip(got.tolist(), others, strict=True):
        assert value == pytest.approx(M.psnr(_clean(), other), abs=TOL)


def test_ssim_batch_matches_numpy_per_image() -> None:
    others = [f() for f in DISTORTIONS.values()]
    got = M.ssim_batch(_batch(*[_clean()] * len(others)), _batch(*others))
    assert got.shape == (len(others),)
    for value, other in zip(got.tolist(), others, strict=True):
        assert value == pytest.approx(M.ssim(_clean(), other), abs=TOL)


def test_batch_metrics_accept_float64() -> None:
    clean, noisy = _batch(_clean()).double(), _batch(_noisy()).double()
    assert M.ssim_batch(clean, noisy).dtype == torch.float64
    assert M.ssim_batch(clean, noisy).item() == pytest.approx(M.ssim(_clean(), _noisy()), abs=TOL)


def test_psnr_batch_of_identical_images_is_inf() -> None:
    got = M.psnr_batch(_batch(_clean(), _clean()), _batch(_clean(), _noisy()))
    assert math.isinf(got[0].item()) and got[0].item() > 0
    assert math.isfinite(got[1].item())


@PROPERTY
@given(pair=image_pairs)
def test_batch_metrics_match_numpy_on_random_small_images(
    pair: tuple[np.ndarray, np.ndarray],
) -> None:
    a, b = pair
    ta, tb = _batch(a), _batch(b)
    assert M.ssim_batch(ta, tb).item() == pytest.approx(M.ssim(a, b), abs=TOL)
    assert M.accuracy_batch(ta, tb).item() == pytest.approx(M.accuracy(a, b), abs=1e-6)
    if not np.array_equal(a, b):
        assert M.psnr_batch(ta, tb).item() == pytest.approx(M.psnr(a, b), abs=TOL)


def test_batch_metrics_reject_non_nchw() -> None:
    flat = torch.zeros(3, 16, 16)
    with pytest.raises(ImageError, match=r"\(N, C, H, W\)"):
        M.psnr_batch(flat, flat)


def test_batch_metrics_reject_integer_tensors() -> None:
    t = torch.zeros(1, 3, 16, 16, dtype=torch.uint8)
    with pytest.raises(ImageError, match="floating"):
        M.ssim_batch(t, t)


# --------------------------------------------------------------------------------------------
# Accuracy


def _shifted(delta: int) -> np.ndarray:
    base = np.full((8, 8, 3), 100, dtype=np.uint8)
    return (base.astype(np.int16) + delta).astype(np.uint8)


@pytest.mark.parametrize(
    ("delta", "expected"), [(0, 1.0), (8, 1.0), (-8, 1.0), (9, 0.0), (-9, 0.0)]
)
def test_accuracy_counts_values_within_eight_levels(delta: int, expected: float) -> None:
    clean = _shifted(0)
    assert M.accuracy(clean, _shifted(delta)) == expected
    assert M.accuracy_batch(_batch(clean), _batch(_shifted(delta))).item() == expected


def test_accuracy_is_a_share_over_all_channels() -> None:
    clean = _shifted(0)
    restored = clean.copy()
    restored[..., 0] = 200  # one channel of three is far off
    assert M.accuracy(clean, restored) == pytest.approx(2 / 3)
    assert M.accuracy_batch(_batch(clean), _batch(restored)).item() == pytest.approx(2 / 3)


def test_accuracy_does_not_wrap_around_uint8() -> None:
    clean = np.zeros((4, 4, 3), dtype=np.uint8)
    assert M.accuracy(clean, np.full_like(clean, 255)) == 0.0


def test_accuracy_tolerance_zero_is_exact_equality() -> None:
    clean = _shifted(0)
    restored = clean.copy()
    restored[0, 0, 0] += 1
    expected = 1 - 1 / clean.size
    assert M.accuracy(clean, restored, tolerance=0) == pytest.approx(expected)
    got = M.accuracy_batch(_batch(clean), _batch(restored), tolerance=0).item()
    assert got == pytest.approx(expected)


def test_accuracy_rejects_a_negative_tolerance() -> None:
    with pytest.raises(ValueError):
        M.accuracy(_clean(), _clean(), tolerance=-1)


# --------------------------------------------------------------------------------------------
# Summary


def test_compute_metrics_gathers_the_three_metrics() -> None:
    got = M.compute_metrics(_clean(), _noisy())
    assert isinstance(got, M.ImageMetrics)
    assert got.psnr == pytest.approx(M.psnr(_clean(), _noisy()))
    assert got.ssim == pytest.approx(M.ssim(_clean(), _noisy()))
    assert got.accuracy == pytest.approx(M.accuracy(_clean(), _noisy()))


def test_image_metrics_round_trip_an_infinite_psnr_through_json() -> None:
    perfect = M.compute_metrics(_clean(), _clean())
    assert perfect.psnr == math.inf and perfect.accuracy == 1.0
    assert M.ImageMetrics.model_validate_json(perfect.model_dump_json()) == perfect
