"""The dataset schema as properties: valid specs round-trip; invalid ones are refused."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from deepfix.spec import CROP_PRESETS, DEGRADATION_TYPES, DatasetSpec, default_degradations

names = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,20}", fullmatch=True)
sizes = st.integers(8, 4096)


@st.composite
def splits(draw: st.DrawFn) -> dict[str, float]:
    a = draw(st.integers(0, 100))
    b = draw(st.integers(0, 100 - a))
    return {"train": a / 100, "val": b / 100, "test": (100 - a - b) / 100}


@st.composite
def specs(draw: st.DrawFn) -> dict[str, object]:
    h, w = draw(sizes), draw(sizes)
    modes = ["none"] + [m for m, s in CROP_PRESETS.items() if s <= min(h, w)]
    return {
        "name": draw(names),
        "source": draw(st.sampled_from(["/data", "file:///d", "https://h/x.zip", "s3://b/k"])),
        "height": h,
        "width": w,
        "image_type": draw(st.sampled_from(["any", "jpg", "png", "bmp", "tiff", "webp"])),
        "crop": {"mode": draw(st.sampled_from(modes))},
        "split": draw(splits()),
        "seed": draw(st.integers(0, 2**63 - 1)),
        "degradations": [
            {"type": t, "p": draw(st.floats(0, 1))}
            for t in draw(st.lists(st.sampled_from(DEGRADATION_TYPES), unique=True))
        ],
    }


@settings(max_examples=150, deadline=None)
@given(specs())
def test_valid_spec_round_trips_through_json(raw: dict[str, object]) -> None:
    spec = DatasetSpec.model_validate(raw)
    again = DatasetSpec.model_validate(json.loads(spec.model_dump_json()))
    assert again == spec


@settings(max_examples=100, deadline=None)
@given(specs(), st.sampled_from(["height", "width"]), st.integers(-5, 7) | st.integers(4097, 10**6))
def test_out_of_range_sizes_are_refused(raw: dict[str, object], field: str, bad: int) -> None:
    with pytest.raises(ValidationError):
        DatasetSpec.model_validate({**raw, field: bad})


@settings(max_examples=100, deadline=None)
@given(specs(), st.floats(0.01, 0.5))
def test_split_not_summing_to_one_is_refused(raw: dict[str, object], extra: float) -> None:
    split = dict(raw["split"])  # type: ignore[call-overload]
    split["train"] = split["train"] + extra
    with pytest.raises(ValidationError):
        DatasetSpec.model_validate({**raw, "split": split})


@settings(max_examples=50, deadline=None)
@given(names, st.text(min_size=1, max_size=5).filter(lambda k: k.isidentifier()))
def test_unknown_fields_are_refused(name: str, key: str) -> None:
    with pytest.raises(ValidationError):
        DatasetSpec.model_validate({"name": name, "source": "/d", f"x_{key}": 1})


def test_custom_crop_needs_width_and_height() -> None:
    with pytest.raises(ValidationError):
        DatasetSpec(name="a", source="/d", crop={"mode": "custom", "width": 32})  # type: ignore[arg-type]
    spec = DatasetSpec(name="a", source="/d", crop={"mode": "custom", "width": 32, "height": 48})  # type: ignore[arg-type]
    assert spec.crop.size == (48, 32)


def test_crop_larger_than_sample_is_refused() -> None:
    with pytest.raises(ValidationError):
        DatasetSpec(name="a", source="/d", height=64, width=64, crop={"mode": "128x128"})  # type: ignore[arg-type]


def test_degradation_ranges_must_be_ordered_and_bounded() -> None:
    with pytest.raises(ValidationError):
        DatasetSpec(
            name="a", source="/d", degradations=[{"type": "gaussian_blur", "sigma": [3, 1]}]
        )  # type: ignore[list-item]
    with pytest.raises(ValidationError):
        DatasetSpec(name="a", source="/d", degradations=[{"type": "jpeg", "quality": [0, 50]}])  # type: ignore[list-item]


def test_duplicate_degradation_type_is_refused() -> None:
    with pytest.raises(ValidationError):
        DatasetSpec(name="a", source="/d", degradations=[{"type": "jpeg"}, {"type": "jpeg"}])  # type: ignore[list-item]


def test_defaults_cover_every_degradation_type() -> None:
    assert [d.type for d in default_degradations()] == list(DEGRADATION_TYPES)


def test_source_scheme_and_reference_image_rules() -> None:
    with pytest.raises(ValidationError):
        DatasetSpec(name="a", source="ftp://host/x")
    with pytest.raises(ValidationError):
        DatasetSpec(name="a", source="/d", reference_image="data:image/png;base64,AAAA")
