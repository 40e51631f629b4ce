"""Conformance tests for every registered degradation, and the pipeline built from them."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from skimage import data

from deepfix import degradations as D
from deepfix.degradations import functional as F
from deepfix.errors import DeepfixError, ImageError, RegistryError
from deepfix.spec import (
    DEGRADATION_TYPES,
    DatasetSpec,
    DegradationSpec,
    GaussianBlur,
    GaussianNoise,
    Jpeg,
    SaltPepper,
    Shadow,
    default_degradations,
)

NAMES = D.available_degradations()
# Degradations whose pixel positions come from a sub-seed in the params.
SEEDED = tuple(n for n in NAMES if "seed" in D.get_degradation(n).params_model.model_fields)
PROPERTY = settings(max_examples=25, deadline=None)

# First draw of sample_rng(0, "faces/0001.jpg#0"), recorded once: a change here silently
# re-draws every dataset ever prepared.
_PINNED = 2202617135

seeds = st.integers(min_value=0, max_value=2**63 - 1)
sample_ids = st.text(max_size=24)


@cache
def _image() -> np.ndarray:
    # Non-square so a swapped height/width shows up.
    return cv2.resize(data.astronaut(), (64, 48), interpolation=cv2.INTER_AREA)


def _image_copy() -> np.ndarray:
    return _image().copy()


def _degrade(name: str, seed: int, sample_id: str) -> tuple[BaseModel, np.ndarray]:
    degradation = D.get_degradation(name)()
    params = degradation.sample_params(D.sample_rng(seed, sample_id))
    return params, degradation.apply(_image(), params)


def _range_fields(spec: BaseModel) -> dict[str, tuple[Any, Any]]:
    return {
        k: v
        for k, v in spec.model_dump().items()
        if isinstance(v, tuple) and len(v) == 2 and k not in ("type", "p")
    }


# --------------------------------------------------------------------------------------------
# Registry


def test_registry_holds_exactly_the_spec_types() -> None:
    assert set(NAMES) == set(DEGRADATION_TYPES) == set(D.APPLY_ORDER)


def test_unknown_degradation_raises_registry_error_listing_known_names() -> None:
    with pytest.raises(RegistryError) as err:
        D.get_degradation("sepia")
    message = str(err.value)
    assert "sepia" in message
    assert all(name in message for name in NAMES)
    assert isinstance(err.value, DeepfixError)


def test_duplicate_registration_raises_registry_error_listing_known_names() -> None:
    with pytest.raises(RegistryError) as err:

        @D.register_degradation("jpeg")
        class AnotherJpeg(D.JpegDegradation):
            pass

    assert "jpeg" in str(err.value) and "gaussian_blur" in str(err.value)
    assert D.get_degradation("jpeg") is D.JpegDegradation


def test_registering_under_a_name_other_than_the_spec_type_raises(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(D, "_REGISTRY", dict(D._REGISTRY))
    with pytest.raises(RegistryError, match="spec model"):

        @D.register_degradation("not_jpeg")
        class Misnamed(D.JpegDegradation):
            pass


def test_degradation_rejects_a_spec_of_another_type() -> None:
    with pytest.raises(DeepfixError, match="Jpeg"):
        D.JpegDegradation(GaussianBlur())  # type: ignore[arg-type]


@pytest.mark.parametrize("name", NAMES)
def test_build_degradation_uses_the_spec_type(name: str) -> None:
    spec = next(s for s in default_degradations() if s.type == name)
    built = D.build_degradation(spec)
    assert type(built) is D.get_degradation(name)
    assert built.type == name and built.p == spec.p


# --------------------------------------------------------------------------------------------
# Per-degradation properties (every registered name)


@pytest.mark.parametrize("name", NAMES)
@PROPERTY
@given(seed=seeds, sample_id=sample_ids)
def test_same_seed_and_id_give_identical_bytes(name: str, seed: int, sample_id: str) -> None:
    params_a, out_a = _degrade(name, seed, sample_id)
    params_b, out_b = _degrade(name, seed, sample_id)
    assert params_a == params_b
    assert out_a.tobytes() == out_b.tobytes()


@pytest.mark.parametrize("name", SEEDED)
@PROPERTY
@given(seed=seeds, ids=st.lists(sample_ids, min_size=2, max_size=2, unique=True))
def test_different_ids_give_different_pixels(name: str, seed: int, ids: list[str]) -> None:
    _, out_a = _degrade(name, seed, ids[0])
    _, out_b = _degrade(name, seed, ids[1])
    assert not np.array_equal(out_a, out_b)


@pytest.mark.parametrize("name", NAMES)
@PROPERTY
@given(seed=seeds, data_=st.data())
def test_params_lie_within_the_spec_ranges(name: str, seed: int, data_: st.DataObject) -> None:
    cls = D.get_degradation(name)
    # A random sub-range of each default range, so the test is not tied to the defaults.
    narrowed: dict[str, tuple[Any, Any]] = {}
    for field, (lo, hi) in _range_fields(cls.spec_model()).items():
        if isinstance(lo, int) and isinstance(hi, int):
            a = data_.draw(st.integers(lo, hi))
            narrowed[field] = (a, data_.draw(st.integers(a, hi)))
        else:
            x = data_.draw(st.floats(lo, hi))
            narrowed[field] = (x, data_.draw(st.floats(x, hi)))
    spec = cls.spec_model.model_validate(narrowed)
    params = cls(spec).sample_params(np.random.default_rng(seed)).model_dump()
    for field, (lo, hi) in narrowed.items():
        assert lo <= params[field] <= hi, (field, params[field], lo, hi)


@pytest.mark.parametrize("name", NAMES)
@PROPERTY
@given(seed=seeds, sample_id=sample_ids)
def test_degraded_differs_from_clean(name: str, seed: int, sample_id: str) -> None:
    _, out = _degrade(name, seed, sample_id)
    assert not np.array_equal(out, _image())


@pytest.mark.parametrize("name", NAMES)
@PROPERTY
@given(seed=seeds, sample_id=sample_ids)
def test_params_replay_from_json_bit_for_bit(name: str, seed: int, sample_id: str) -> None:
    params, out = _degrade(name, seed, sample_id)
    raw = json.loads(json.dumps(params.model_dump(mode="json")))
    degradation = D.get_degradation(name)()
    replayed = degradation.apply(_image(), degradation.parse_params(raw))
    assert replayed.tobytes() == out.tobytes()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (37, 53), (48, 64)])
def test_output_keeps_dtype_and_shape(name: str, shape: tuple[int, int]) -> None:
    resized = cv2.resize(_image(), (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
    image = np.asarray(resized, dtype=np.uint8).reshape(*shape, 3)
    degradation = D.get_degradation(name)()
    out = degradation.apply(image, degradation.sample_params(np.random.default_rng(0)))
    assert out.dtype == np.uint8
    assert out.shape == image.shape


@pytest.mark.parametrize("name", NAMES)
def test_apply_leaves_the_input_untouched(name: str) -> None:
    image = _image_copy()
    degradation = D.get_degradation(name)()
    degradation.apply(image, degradation.sample_params(np.random.default_rng(1)))
    assert np.array_equal(image, _image())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((8, 8, 3), dtype=np.float32),
        np.zeros((8, 8), dtype=np.uint8),
        np.zeros((8, 8, 4), dtype=np.uint8),
        np.zeros((0, 8, 3), dtype=np.uint8),
    ],
    ids=["float", "gray", "rgba", "empty"],
)
def test_apply_rejects_non_rgb_uint8(name: str, bad: np.ndarray) -> None:
    degradation = D.get_degradation(name)()
    with pytest.raises(ImageError):
        degradation.apply(bad, degradation.sample_params(np.random.default_rng(0)))


@pytest.mark.parametrize("name", NAMES)
def test_params_models_are_frozen(name: str) -> None:
    params = D.get_degradation(name)().sample_params(np.random.default_rng(0))
    field = next(iter(type(params).model_fields))
    with pytest.raises(ValueError):
        setattr(params, field, getattr(params, field))


# --------------------------------------------------------------------------------------------
# Kernel specifics


@pytest.mark.parametrize("length", [3, 4, 9, 12])
@pytest.mark.parametrize("angle", [0.0, 37.0, 90.0, 135.0])
def test_motion_kernel_is_normalised_and_centred(length: int, angle: float) -> None:
    kernel = F.motion_kernel(length, angle)
    assert kernel.shape[0] == kernel.shape[1] and kernel.shape[0] % 2 == 1
    assert kernel.sum() == pytest.approx(1.0, abs=1e-5)
    ys, xs = np.mgrid[: kernel.shape[0], : kernel.shape[1]]
    c = (kernel.shape[0] - 1) / 2
    assert float((kernel * ys).sum()) == pytest.approx(c, abs=1e-3)
    assert float((kernel * xs).sum()) == pytest.approx(c, abs=1e-3)


def test_salt_pepper_hits_exactly_density_times_pixels() -> None:
    image = np.full((40, 50, 3), 128, dtype=np.uint8)
    out = F.salt_pepper(image, density=0.1, salt_ratio=0.25, seed=7)
    white = np.all(out == 255, axis=2).sum()
    black = np.all(out == 0, axis=2).sum()
    assert white + black == 200
    assert white == 50
    assert np.count_nonzero(np.any(out != image, axis=2)) == 200


def test_gaussian_noise_has_the_requested_std() -> None:
    image = np.full((128, 128, 3), 128, dtype=np.uint8)
    out = F.gaussian_noise(image, sigma=10.0, seed=3)
    assert float(np.std(out.astype(np.float64) - 128)) == pytest.approx(10.0, rel=0.03)


def test_shadow_polygon_darkens_inside_and_keeps_far_outside() -> None:
    image = np.full((64, 64, 3), 200, dtype=np.uint8)
    out = F.shadow(
        image,
        shape="polygon",
        vertices=((0.25, 0.25), (0.75, 0.25), (0.75, 0.75), (0.25, 0.75)),
        direction=0.0,
        strength=0.5,
        softness=0.02,
        gamma=1.0,
    )
    assert abs(int(out[32, 32, 0]) - 100) <= 1
    assert int(out[2, 2, 0]) == 200


def test_shadow_gradient_darkens_along_its_direction() -> None:
    image = np.full((32, 32, 3), 200, dtype=np.uint8)
    out = F.shadow(
        image, shape="gradient", vertices=(), direction=0.0, strength=0.6, softness=0.0, gamma=1.0
    )
    row = out[16, :, 0].astype(int)
    assert row[0] > row[-1]
    assert np.all(np.diff(row) <= 0)


def test_downscale_by_one_is_identity() -> None:
    assert np.array_equal(F.downscale(_image(), factor=1.0), _image())


# --------------------------------------------------------------------------------------------
# sample_rng


def test_sample_rng_is_stable_across_processes() -> None:
    assert int(D.sample_rng(0, "faces/0001.jpg#0").integers(0, 2**32)) == _PINNED


def test_sample_rng_does_not_use_builtin_hash() -> None:
    import subprocess
    import sys

    code = (
        "from deepfix.degradations import sample_rng;"
        "print(int(sample_rng(0, 'faces/0001.jpg#0').integers(0, 2**32)))"
    )
    results = {
        subprocess.run(
            [sys.executable, "-c", code],
            check=True,
            capture_output=True,
            text=True,
            env={"PYTHONHASHSEED": salt},
        ).stdout.strip()
        for salt in ("1", "2")
    }
    assert results == {str(_PINNED)}


@PROPERTY
@given(seed=st.integers(0, 2**32), ids=st.lists(sample_ids, min_size=2, max_size=2, unique=True))
def test_sample_rng_differs_by_id_and_by_seed(seed: int, ids: list[str]) -> None:
    a = D.sample_rng(seed, ids[0]).integers(0, 2**62, size=2)
    b = D.sample_rng(seed, ids[1]).integers(0, 2**62, size=2)
    c = D.sample_rng(seed + 1, ids[0]).integers(0, 2**62, size=2)
    assert not np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_sample_rng_rejects_a_negative_seed() -> None:
    with pytest.raises(DeepfixError):
        D.sample_rng(-1, "x")


# --------------------------------------------------------------------------------------------
# Pipeline


def test_pipeline_applies_in_the_fixed_order() -> None:
    specs = [s.model_copy(update={"p": 1.0}) for s in reversed(default_degradations())]
    pipeline = D.DegradationPipeline.from_specs(specs)
    _, applied = pipeline(_image(), np.random.default_rng(0))
    assert [a["type"] for a in applied] == list(D.APPLY_ORDER)


@PROPERTY
@given(seed=seeds, sample_id=sample_ids)
def test_pipeline_output_is_reproducible_and_replays_from_json(seed: int, sample_id: str) -> None:
    pipeline = D.DegradationPipeline.from_specs(default_degradations())
    degraded, applied = pipeline(_image(), D.sample_rng(seed, sample_id))
    again, applied_again = pipeline(_image(), D.sample_rng(seed, sample_id))
    assert applied == applied_again
    assert degraded.tobytes() == again.tobytes()
    recorded = json.loads(json.dumps(applied))
    assert pipeline.replay(_image(), recorded).tobytes() == degraded.tobytes()
    assert D.replay(_image(), recorded).tobytes() == degraded.tobytes()
    assert not np.array_equal(degraded, _image())
    assert degraded.dtype == np.uint8 and degraded.shape == _image().shape


@PROPERTY
@given(seed=seeds)
def test_pipeline_forces_one_degradation_when_none_fires(seed: int) -> None:
    specs: list[DegradationSpec] = [Jpeg(p=1e-12), SaltPepper(p=1e-12), GaussianNoise(p=0.0)]
    pipeline = D.DegradationPipeline.from_specs(specs)
    degraded, applied = pipeline(_image(), np.random.default_rng(seed))
    assert len(applied) == 1
    assert applied[0]["type"] in ("jpeg", "salt_pepper")
    assert not np.array_equal(degraded, _image())


def test_pipeline_forced_pick_follows_p() -> None:
    pipeline = D.DegradationPipeline(
        [D.JpegDegradation(Jpeg(p=3e-12)), D.ShadowDegradation(Shadow(p=1e-12))]
    )
    rng = np.random.default_rng(0)
    picks = [pipeline.sample(rng)[0]["type"] for _ in range(400)]
    assert 0.65 < picks.count("jpeg") / len(picks) < 0.85


def test_pipeline_with_every_p_zero_returns_the_image_unchanged() -> None:
    pipeline = D.DegradationPipeline.from_specs([Jpeg(p=0.0), Shadow(p=0.0)])
    degraded, applied = pipeline(_image(), np.random.default_rng(0))
    assert applied == []
    assert np.array_equal(degraded, _image())
    assert degraded is not _image()


def test_pipeline_rejects_repeated_types() -> None:
    with pytest.raises(DeepfixError, match="jpeg"):
        D.DegradationPipeline.from_specs([Jpeg(), Jpeg(quality=(10, 20))])


def test_pipeline_builds_from_a_dataset_spec() -> None:
    spec = DatasetSpec(name="faces", source="/data/faces")
    pipeline = D.DegradationPipeline.from_specs(spec.degradations)
    assert [d.type for d in pipeline.degradations] == list(D.APPLY_ORDER)


def test_replay_of_an_unknown_type_raises_registry_error() -> None:
    with pytest.raises(RegistryError, match="known"):
        D.replay(_image(), [{"type": "sepia", "params": {}}])


def test_replay_rejects_params_with_unknown_keys() -> None:
    with pytest.raises(ValueError):
        D.replay(_image(), [{"type": "jpeg", "params": {"quality": 30, "qualty": 3}}])
