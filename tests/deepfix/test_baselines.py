"""Conformance tests for every registered baseline, and the best-classical table."""

from __future__ import annotations

import time
from functools import cache

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage import data

from deepfix import baselines as B
from deepfix.degradations import APPLY_ORDER, get_degradation, sample_rng
from deepfix.degradations import functional as F
from deepfix.errors import ImageError, RegistryError
from deepfix.metrics import psnr
from deepfix.spec import DEGRADATION_TYPES

NAMES = B.available_baselines()


@cache
def _image(side: int = 128) -> np.ndarray:
    full = data.astronaut()
    return cv2.resize(full, (side, side), interpolation=cv2.INTER_AREA)


def _odd_image() -> np.ndarray:
    return cv2.resize(data.astronaut(), (53, 37), interpolation=cv2.INTER_AREA)


# --------------------------------------------------------------------------------------------
# Registry


def test_unknown_baseline_raises_registry_error_listing_known_names() -> None:
    with pytest.raises(RegistryError) as err:
        B.get_baseline("bilateral")
    assert "bilateral" in str(err.value)
    assert all(name in str(err.value) for name in NAMES)


def test_duplicate_baseline_raises_registry_error_listing_known_names() -> None:
    with pytest.raises(RegistryError) as err:

        @B.register_baseline("median")
        def another_median(image: np.ndarray) -> np.ndarray:
            return image

    assert "median" in str(err.value) and "wiener" in str(err.value)
    assert B.get_baseline("median") is B.median


def test_registry_holds_the_issue_baselines() -> None:
    expected = {"median", "adaptive_median", "nl_means", "unsharp_mask", "wiener", "clahe"}
    assert expected | {"gamma"} <= set(NAMES)


# --------------------------------------------------------------------------------------------
# Every baseline


@pytest.mark.parametrize("name", NAMES)
def test_baseline_keeps_dtype_and_shape(name: str) -> None:
    image = _odd_image()
    out = B.get_baseline(name)(image)
    assert out.dtype == np.uint8 and out.shape == image.shape


@pytest.mark.parametrize("name", NAMES)
def test_baseline_is_deterministic_and_leaves_its_input_untouched(name: str) -> None:
    image = _odd_image()
    before = image.copy()
    first = B.get_baseline(name)(image)
    second = B.get_baseline(name)(image)
    assert np.array_equal(image, before)
    assert first.tobytes() == second.tobytes()


@pytest.mark.parametrize("name", NAMES)
def test_baseline_rejects_non_rgb_uint8(name: str) -> None:
    with pytest.raises(ImageError):
        B.get_baseline(name)(np.zeros((16, 16), dtype=np.uint8))


@pytest.mark.parametrize("name", NAMES)
def test_baseline_handles_a_flat_image(name: str) -> None:
    flat = np.full((16, 16, 3), 128, dtype=np.uint8)
    out = B.get_baseline(name)(flat)
    # Nothing to restore on a flat image; only gamma and CLAHE may move the level.
    if name not in ("gamma", "clahe"):
        assert np.abs(out.astype(int) - 128).max() <= 1


# --------------------------------------------------------------------------------------------
# Adaptive median


def _salt_pepper(image: np.ndarray, density: float, seed: int = 1) -> np.ndarray:
    return F.salt_pepper(image, density=density, salt_ratio=0.5, seed=seed)


@settings(max_examples=25, deadline=None)
@given(density=st.floats(0.001, 0.1), seed=st.integers(0, 2**32))
def test_adaptive_median_changes_only_impulse_values(density: float, seed: int) -> None:
    # No 0/255 values in the clean image: every extreme is an impulse. Up to 10 % density
    # (twice the spec maximum) impulses never clump into a run the filter keeps as genuine.
    clean = np.clip(_image(64), 1, 254).astype(np.uint8)
    noisy = _salt_pepper(clean, density, seed)
    out = B.adaptive_median(noisy)
    impulse = (noisy == 0) | (noisy == 255)
    assert np.array_equal(out[~impulse], noisy[~impulse])
    assert not np.any((out == 0) | (out == 255))


def test_adaptive_median_keeps_a_saturated_area() -> None:
    image = np.full((32, 32, 3), 120, dtype=np.uint8)
    image[8:24, 8:24] = 255
    image[:4, :4, 2] = 0
    assert np.array_equal(B.adaptive_median(image), image)


def test_adaptive_median_beats_the_plain_median_on_impulse_noise() -> None:
    noisy = _salt_pepper(_image(), 0.05)
    assert psnr(_image(), B.adaptive_median(noisy)) > psnr(_image(), B.median(noisy)) + 3


def test_adaptive_median_is_fast_on_256px() -> None:
    noisy = _salt_pepper(_image(256), 0.3)
    B.adaptive_median(noisy)  # warm-up: first-call allocations are not the algorithm
    start = time.perf_counter()
    B.adaptive_median(noisy)
    assert time.perf_counter() - start < 0.5


def test_adaptive_median_rejects_an_even_window() -> None:
    with pytest.raises(ValueError):
        B.adaptive_median(_odd_image(), max_window=4)


# --------------------------------------------------------------------------------------------
# Other baselines


@pytest.mark.parametrize("sigma", [5.0, 10.0, 20.0])
def test_noise_estimate_is_close_on_a_smooth_image(sigma: float) -> None:
    clean = np.asarray(cv2.GaussianBlur(_image(), (0, 0), 3.0), dtype=np.uint8)
    noisy = F.gaussian_noise(clean, sigma=sigma, seed=0)
    assert B.estimate_noise_sigma(noisy) == pytest.approx(sigma, rel=0.15)


def test_wiener_keeps_the_mean_level() -> None:
    image = _image()
    assert abs(float(B.wiener(image).mean()) - float(image.mean())) < 1.0


def test_wiener_sharpens_a_gaussian_blur() -> None:
    blurred = F.gaussian_blur(_image(), sigma=1.0)
    assert psnr(_image(), B.wiener(blurred)) > psnr(_image(), blurred)


def test_gamma_moves_mean_luminance_toward_middle_grey() -> None:
    dark = (_image() * 0.4).astype(np.uint8)
    luma = cv2.cvtColor(B.gamma(dark), cv2.COLOR_RGB2GRAY).mean() / 255
    dark_luma = cv2.cvtColor(dark, cv2.COLOR_RGB2GRAY).mean() / 255
    assert abs(luma - 0.46) < abs(dark_luma - 0.46)


def test_clahe_keeps_a_grey_image_grey() -> None:
    grey = np.repeat(_image()[..., :1], 3, axis=2)
    out = B.clahe(grey).astype(int)
    assert np.abs(out[..., 0] - out[..., 1]).max() <= 2


# --------------------------------------------------------------------------------------------
# Best classical restoration


def test_best_for_covers_every_degradation_with_a_registered_baseline() -> None:
    assert set(B.BEST_FOR) == set(DEGRADATION_TYPES)
    assert set(B.BEST_FOR.values()) <= set(NAMES)
    assert set(B.RESTORE_ORDER) == set(APPLY_ORDER)


@pytest.mark.parametrize(
    "kind", ["salt_pepper", "gaussian_noise", "shadow", "gaussian_blur", "motion_blur"]
)
def test_best_pick_improves_psnr_over_the_degraded_input(kind: str) -> None:
    degradation = get_degradation(kind)()
    gains = []
    for k in range(4):
        params = degradation.sample_params(sample_rng(k, kind))
        degraded = degradation.apply(_image(), params)
        restored = B.restore_classical(degraded, [kind])
        gains.append(psnr(_image(), restored) - psnr(_image(), degraded))
    assert np.mean(gains) > 0.1, gains


def test_restore_classical_without_types_returns_a_copy() -> None:
    image = _image()
    out = B.restore_classical(image, [])
    assert np.array_equal(out, image) and out is not image


def test_restore_classical_rejects_an_unknown_type() -> None:
    with pytest.raises(RegistryError, match="known"):
        B.restore_classical(_image(), ["sepia"])


def _record_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    for name in NAMES:

        def recorder(image: np.ndarray, _name: str = name) -> np.ndarray:
            calls.append(_name)
            return image

        monkeypatch.setitem(B._REGISTRY, name, recorder)
    return calls


def test_restore_classical_removes_impulses_first_and_runs_shared_picks_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = _record_calls(monkeypatch)
    types = ["shadow", "downscale", "gaussian_blur", "gaussian_noise", "salt_pepper"]
    B.restore_classical(_image(), types)
    assert calls == ["adaptive_median", "nl_means", "unsharp_mask", "gamma"]


def test_restore_classical_uses_the_plain_median_when_jpeg_blurred_the_impulses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = _record_calls(monkeypatch)
    B.restore_classical(_image(), ["jpeg", "salt_pepper"])
    assert calls == ["median", "nl_means"]
