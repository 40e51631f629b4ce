"""The dataset parameter set ("study"): the paper's configuration form, made precise.

A ``DatasetSpec`` is what lives as JSON in etcd under ``/deepfix/datasets/<name>``. Everything
but ``name`` and ``source`` has a default, so ``{"name": "x", "source": "/data/faces"}`` is a
whole, valid study.

Sample geometry, in the order the preparation job applies it:
1. faces are detected (``face_detection``) and each box is expanded by ``margin`` to a square,
   or, with detection off / no face under ``on_missing="whole"``, the image is centre-cropped
   to a square;
2. the crop is resized to ``height`` x ``width`` (the clean sample);
3. with ``crop.mode`` other than ``none`` the sample is cut into tiles of that size (the paper's
   64/128/256/512/custom presets), each tile becoming its own training pair.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from config_store.collections import NAME_PATTERN, CollectionSchema

__all__ = [
    "CROP_PRESETS",
    "DATASETS_COLLECTION",
    "DEGRADATION_TYPES",
    "IMAGE_TYPES",
    "CropSpec",
    "DatasetSpec",
    "DegradationSpec",
    "Downscale",
    "FaceDetectionSpec",
    "GaussianBlur",
    "GaussianNoise",
    "Jpeg",
    "MotionBlur",
    "SaltPepper",
    "Shadow",
    "SplitSpec",
    "default_degradations",
]

IMAGE_TYPES = ("any", "jpg", "png", "bmp", "tiff", "webp")
CROP_PRESETS: dict[str, int] = {"64x64": 64, "128x128": 128, "256x256": 256, "512x512": 512}

FloatRange = tuple[float, float]
IntRange = tuple[int, int]


class _Strict(BaseModel):
    # Unknown keys are typos in hand-written JSON: refuse them rather than drop them silently.
    model_config = ConfigDict(extra="forbid")


def _ordered(value: tuple[float, float], lo: float, hi: float, what: str) -> tuple[float, float]:
    a, b = value
    if a > b:
        raise ValueError(f"{what} range [{a}, {b}] has low > high")
    if a < lo or b > hi:
        raise ValueError(f"{what} range [{a}, {b}] must lie within [{lo}, {hi}]")
    return value


class _DegradationBase(_Strict):
    p: float = Field(0.5, ge=0.0, le=1.0, description="probability this degradation is applied")


class GaussianBlur(_DegradationBase):
    type: Literal["gaussian_blur"] = "gaussian_blur"
    sigma: FloatRange = (0.6, 2.0)

    @field_validator("sigma")
    @classmethod
    def _sigma(cls, v: FloatRange) -> FloatRange:
        return _ordered(v, 0.1, 20.0, "sigma")


class MotionBlur(_DegradationBase):
    type: Literal["motion_blur"] = "motion_blur"
    length: IntRange = (5, 13)
    angle: FloatRange = (0.0, 180.0)

    @field_validator("length")
    @classmethod
    def _length(cls, v: IntRange) -> IntRange:
        _ordered(v, 3, 63, "length")
        return v

    @field_validator("angle")
    @classmethod
    def _angle(cls, v: FloatRange) -> FloatRange:
        return _ordered(v, 0.0, 360.0, "angle")


class Shadow(_DegradationBase):
    """Uneven illumination: a soft-edged dark region or gradient, then a gamma change."""

    type: Literal["shadow"] = "shadow"
    strength: FloatRange = (0.3, 0.7)  # fraction of brightness removed inside the shadow
    gamma: FloatRange = (0.7, 1.5)
    softness: FloatRange = (0.05, 0.25)  # edge blur as a fraction of the image side

    @field_validator("strength")
    @classmethod
    def _strength(cls, v: FloatRange) -> FloatRange:
        return _ordered(v, 0.0, 1.0, "strength")

    @field_validator("gamma")
    @classmethod
    def _gamma(cls, v: FloatRange) -> FloatRange:
        return _ordered(v, 0.1, 5.0, "gamma")

    @field_validator("softness")
    @classmethod
    def _softness(cls, v: FloatRange) -> FloatRange:
        return _ordered(v, 0.0, 1.0, "softness")


class SaltPepper(_DegradationBase):
    type: Literal["salt_pepper"] = "salt_pepper"
    density: FloatRange = (0.005, 0.05)  # share of pixels replaced
    salt_ratio: FloatRange = (0.3, 0.7)  # share of replaced pixels set white

    @field_validator("density")
    @classmethod
    def _density(cls, v: FloatRange) -> FloatRange:
        return _ordered(v, 0.0, 1.0, "density")

    @field_validator("salt_ratio")
    @classmethod
    def _ratio(cls, v: FloatRange) -> FloatRange:
        return _ordered(v, 0.0, 1.0, "salt_ratio")


class GaussianNoise(_DegradationBase):
    type: Literal["gaussian_noise"] = "gaussian_noise"
    sigma: FloatRange = (3.0, 15.0)  # standard deviation in 0..255 units

    @field_validator("sigma")
    @classmethod
    def _sigma(cls, v: FloatRange) -> FloatRange:
        return _ordered(v, 0.0, 128.0, "sigma")


class Jpeg(_DegradationBase):
    type: Literal["jpeg"] = "jpeg"
    quality: IntRange = (20, 60)

    @field_validator("quality")
    @classmethod
    def _quality(cls, v: IntRange) -> IntRange:
        _ordered(v, 1, 100, "quality")
        return v


class Downscale(_DegradationBase):
    type: Literal["downscale"] = "downscale"
    factor: FloatRange = (1.5, 3.0)  # shrink by this factor, then back up to size

    @field_validator("factor")
    @classmethod
    def _factor(cls, v: FloatRange) -> FloatRange:
        return _ordered(v, 1.0, 16.0, "factor")


DegradationSpec = Annotated[
    GaussianBlur | MotionBlur | Shadow | SaltPepper | GaussianNoise | Jpeg | Downscale,
    Field(discriminator="type"),
]
DEGRADATION_TYPES = (
    "gaussian_blur",
    "motion_blur",
    "shadow",
    "salt_pepper",
    "gaussian_noise",
    "jpeg",
    "downscale",
)


def default_degradations() -> list[DegradationSpec]:
    """The paper's three main degradations always considered, the rest as lighter extras."""
    return [
        GaussianBlur(p=0.4),
        MotionBlur(p=0.2),
        Shadow(p=0.4),
        SaltPepper(p=0.4),
        GaussianNoise(p=0.3),
        Jpeg(p=0.3),
        Downscale(p=0.2),
    ]


class CropSpec(_Strict):
    mode: Literal["none", "64x64", "128x128", "256x256", "512x512", "custom"] = "none"
    width: int | None = Field(None, ge=8, le=4096)
    height: int | None = Field(None, ge=8, le=4096)

    @model_validator(mode="after")
    def _custom_needs_size(self) -> CropSpec:
        if self.mode == "custom":
            if self.width is None or self.height is None:
                raise ValueError("crop mode 'custom' needs both width and height")
        elif self.mode != "none":
            side = CROP_PRESETS[self.mode]
            if self.width not in (None, side) or self.height not in (None, side):
                raise ValueError(f"crop mode {self.mode!r} fixes width and height at {side}")
            self.width = self.height = side
        return self

    @property
    def size(self) -> tuple[int, int] | None:
        """(height, width) of a tile, or None for ``mode="none"``."""
        if self.mode == "none":
            return None
        assert self.width is not None and self.height is not None
        return (self.height, self.width)


class FaceDetectionSpec(_Strict):
    enabled: bool = True
    detector: str = Field("haar", description="registered detector name: haar, yunet")
    min_size: int = Field(24, ge=8, le=4096, description="smallest face side in source pixels")
    margin: float = Field(0.25, ge=0.0, le=2.0, description="box growth per side, x box side")
    score_threshold: float = Field(0.6, ge=0.0, le=1.0)
    max_faces: int = Field(8, ge=1, le=256, description="keep at most this many faces per image")
    on_missing: Literal["skip", "whole"] = Field(
        "skip", description="no face found: skip the image, or centre-crop the whole image"
    )
    model_path: str | None = Field(None, description="model file for detectors that need one")


class SplitSpec(_Strict):
    train: float = Field(0.8, ge=0.0, le=1.0)
    val: float = Field(0.1, ge=0.0, le=1.0)
    test: float = Field(0.1, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitSpec:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split fractions must sum to 1, got {total:g}")
        return self


_SOURCE_SCHEMES = ("file://", "http://", "https://", "s3://", "gs://")


class DatasetSpec(_Strict):
    """One dataset parameter set. Stored in etcd; read with ``config.get(name)``."""

    name: str = Field(pattern=NAME_PATTERN.pattern, description="slug, also the etcd key")
    details: str = Field("", max_length=4000)
    source: str = Field(
        min_length=1,
        max_length=4096,
        description="folder path, file:// or http(s):// folder index or .zip/.tar/.tar.gz "
        "archive, s3:// or gs:// URI",
    )
    height: int = Field(256, ge=8, le=4096)
    width: int = Field(256, ge=8, le=4096)
    image_type: Literal["any", "jpg", "png", "bmp", "tiff", "webp"] = "any"
    crop: CropSpec = Field(default_factory=CropSpec)
    face_detection: FaceDetectionSpec = Field(default_factory=FaceDetectionSpec)
    degradations: list[DegradationSpec] = Field(default_factory=default_degradations)
    split: SplitSpec = Field(default_factory=SplitSpec)
    seed: int = Field(0, ge=0, le=2**63 - 1)
    reference_image: str | None = Field(
        None, max_length=4096, description="path or URI of the preview image; never bytes"
    )
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        v = v.strip()
        if "://" in v and not v.startswith(_SOURCE_SCHEMES):
            raise ValueError(f"source scheme must be one of {', '.join(_SOURCE_SCHEMES)}")
        return v

    @field_validator("reference_image")
    @classmethod
    def _reference(cls, v: str | None) -> str | None:
        if v is not None and v.startswith("data:"):
            raise ValueError("reference_image is a path or URI, not inline image data")
        return v

    @field_validator("degradations")
    @classmethod
    def _unique_types(cls, v: list[DegradationSpec]) -> list[DegradationSpec]:
        seen = [d.type for d in v]
        dupes = sorted({t for t in seen if seen.count(t) > 1})
        if dupes:
            raise ValueError(f"each degradation type may appear once; repeated: {dupes}")
        return v

    @model_validator(mode="after")
    def _tile_fits(self) -> DatasetSpec:
        size = self.crop.size
        if size is not None and (size[0] > self.height or size[1] > self.width):
            raise ValueError(
                f"crop {size[1]}x{size[0]} is larger than the sample {self.width}x{self.height}"
            )
        return self


DATASETS_COLLECTION = CollectionSchema(model=DatasetSpec, timestamps=True, name_field="name")
