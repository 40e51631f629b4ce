"""Degradations: a strict registry of sample-then-apply classes and the pipeline that chains them.

Each degradation is a thin class registered under its spec ``type`` (see :mod:`deepfix.spec`),
built from that spec model. ``sample_params(rng)`` draws a frozen, JSON-serialisable ``Params``
inside the spec's ranges; ``apply(image, params)`` is pure and deterministic and delegates to a
kernel in :mod:`deepfix.degradations.functional`. Randomness that touches pixel positions (salt
and pepper, Gaussian noise) is reduced to an integer sub-seed stored in the params, so a recorded
``applied`` list replays bit-for-bit (the torchvision ``transforms.v2`` / kornia
``augmentation`` split of parameter sampling from application).

A :class:`DegradationPipeline` applies its degradations in the fixed order :data:`APPLY_ORDER`,
each with its probability ``p``. **If no degradation fires by chance, one is forced**: it is
drawn with the same generator among the degradations with ``p > 0``, weighted by ``p``. Every
training pair is then a real (degraded != clean) pair, and the relative frequency of the types
still follows the spec. A pipeline where every ``p`` is 0 has nothing to force and returns the
image unchanged with an empty ``applied`` list.

Per-sample generators come from :func:`sample_rng`, which derives the stream from the dataset
seed and a SHA-256 of the sample id, so the result does not depend on worker count, ordering or
Python's per-process ``hash()`` salt.

Reproducibility scope: replay is bit-for-bit with the same numpy and OpenCV versions on the same
kind of CPU. numpy does not promise ``Generator`` streams across versions (NEP 19), and both
libraries pick SIMD code paths per CPU, which can move a rare pixel by one level elsewhere; the
recorded params themselves stay exact, so a dataset is always re-creatable to that tolerance.
"""

from __future__ import annotations

import builtins
import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Generic, Literal, NamedTuple, TypedDict, TypeVar, cast

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

from deepfix.degradations import functional as F
from deepfix.errors import DeepfixError, RegistryError
from deepfix.spec import (
    DegradationSpec,
    Downscale,
    GaussianBlur,
    GaussianNoise,
    Jpeg,
    MotionBlur,
    SaltPepper,
    Shadow,
)

__all__ = [
    "APPLY_ORDER",
    "AppliedDegradation",
    "Degradation",
    "DegradationParams",
    "DegradationPipeline",
    "DegradationResult",
    "DownscaleDegradation",
    "DownscaleParams",
    "GaussianBlurDegradation",
    "GaussianBlurParams",
    "GaussianNoiseDegradation",
    "GaussianNoiseParams",
    "JpegDegradation",
    "JpegParams",
    "MotionBlurDegradation",
    "MotionBlurParams",
    "SaltPepperDegradation",
    "SaltPepperParams",
    "ShadowDegradation",
    "ShadowParams",
    "available_degradations",
    "build_degradation",
    "get_degradation",
    "register_degradation",
    "replay",
    "sample_rng",
]

Image = NDArray[np.uint8]

# Illumination first: a shadow is cast on the scene before light reaches the lens. Optical blur
# (defocus, motion) and the resolution loss of a small sensor or a resize come next, in the
# order light meets them. Sensor noise is added to the already-blurred signal, impulses are
# transmission/readout faults after it, and lossy compression is the last thing that happens to
# a stored file, so its blocking acts on everything before it.
APPLY_ORDER: tuple[str, ...] = (
    "shadow",
    "gaussian_blur",
    "motion_blur",
    "downscale",
    "gaussian_noise",
    "salt_pepper",
    "jpeg",
)

# Sub-seeds stay below 2**53 so they survive a round trip through JSON in any language
# (JavaScript numbers are doubles), while leaving collisions practically impossible.
_SUB_SEED_LIMIT = 2**53

AnySpec = GaussianBlur | MotionBlur | Shadow | SaltPepper | GaussianNoise | Jpeg | Downscale


class AppliedDegradation(TypedDict):
    """One fired degradation as recorded next to a sample: JSON-ready."""

    type: str
    params: dict[str, Any]


class DegradationResult(NamedTuple):
    """What a pipeline call returns; unpacks as ``degraded, applied = pipeline(image, rng)``."""

    image: Image
    applied: list[AppliedDegradation]


# --------------------------------------------------------------------------------------------
# Params


class DegradationParams(BaseModel):
    """Base of every params model: frozen (a record, not a knob) and strict about keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class GaussianBlurParams(DegradationParams):
    sigma: float = Field(ge=0.0)


class MotionBlurParams(DegradationParams):
    length: int = Field(ge=1)
    angle: float


class ShadowParams(DegradationParams):
    shape: Literal["polygon", "gradient"]
    vertices: tuple[tuple[float, float], ...] = Field(
        (), description="polygon corners as (x, y) fractions of width and height"
    )
    direction: float = Field(0.0, description="gradient direction in degrees (polygon: unused)")
    strength: float = Field(ge=0.0, le=1.0)
    softness: float = Field(ge=0.0, le=1.0)
    gamma: float = Field(gt=0.0)


class SaltPepperParams(DegradationParams):
    density: float = Field(ge=0.0, le=1.0)
    salt_ratio: float = Field(ge=0.0, le=1.0)
    seed: int = Field(ge=0, lt=_SUB_SEED_LIMIT)


class GaussianNoiseParams(DegradationParams):
    sigma: float = Field(ge=0.0)
    seed: int = Field(ge=0, lt=_SUB_SEED_LIMIT)


class JpegParams(DegradationParams):
    quality: int = Field(ge=1, le=100)


class DownscaleParams(DegradationParams):
    factor: float = Field(ge=1.0)


# --------------------------------------------------------------------------------------------
# Base class and registry

S = TypeVar("S", bound=AnySpec)
P = TypeVar("P", bound=DegradationParams)


class Degradation(ABC, Generic[S, P]):
    """A registered degradation built from its spec model.

    Subclasses set ``spec_model`` and ``params_model`` and implement :meth:`sample_params` and
    :meth:`apply`. ``apply`` depends on the params alone, never on the spec, which is what makes
    replay possible from a recorded ``applied`` list.
    """

    type: ClassVar[str]
    # builtins.type: inside this class body ``type`` names the registry-name attribute above.
    spec_model: ClassVar[builtins.type[AnySpec]]
    params_model: ClassVar[builtins.type[DegradationParams]]

    def __init__(self, spec: S | None = None) -> None:
        """Build from a spec.

        Args:
            spec: the spec model of this type; None uses that model's defaults.
        """
        if spec is None:
            spec = cast(S, self.spec_model())
        elif not isinstance(spec, self.spec_model):
            raise DeepfixError(
                f"{type(self).__name__} needs a {self.spec_model.__name__} spec, "
                f"got {type(spec).__name__}"
            )
        self.spec: S = spec

    @property
    def p(self) -> float:
        """Probability that a pipeline applies this degradation."""
        return self.spec.p

    @abstractmethod
    def sample_params(self, rng: np.random.Generator) -> P:
        """Draw params within the spec's ranges from ``rng``."""

    @abstractmethod
    def apply(self, image: Image, params: P) -> Image:
        """Degrade a ``uint8`` RGB image; pure and deterministic in ``params``."""

    def parse_params(self, raw: Mapping[str, Any]) -> P:
        """Validate recorded params (e.g. from JSON) into this type's params model."""
        return cast(P, self.params_model.model_validate(dict(raw)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"


AnyDegradation = Degradation[Any, Any]
_REGISTRY: dict[str, type[AnyDegradation]] = {}

DegradationClass = TypeVar("DegradationClass", bound=type[AnyDegradation])


def _known() -> str:
    return ", ".join(sorted(_REGISTRY)) or "(none)"


def register_degradation(name: str) -> Callable[[DegradationClass], DegradationClass]:
    """Class decorator: register a degradation under its spec ``type`` ``name``.

    Raises:
        RegistryError: ``name`` is taken, or differs from the ``type`` of the class's spec model.
    """

    def decorator(cls: DegradationClass) -> DegradationClass:
        if name in _REGISTRY:
            raise RegistryError(f"degradation {name!r} is already registered (known: {_known()})")
        spec_type = cls.spec_model.model_fields["type"].default
        if spec_type != name:
            raise RegistryError(
                f"degradation {cls.__name__} registered as {name!r} but its spec model "
                f"{cls.spec_model.__name__} has type {spec_type!r}"
            )
        cls.type = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def get_degradation(name: str) -> type[AnyDegradation]:
    """The class registered under ``name``; raises ``RegistryError`` listing known names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise RegistryError(f"unknown degradation {name!r} (known: {_known()})") from None


def available_degradations() -> tuple[str, ...]:
    """Registered degradation names, sorted."""
    return tuple(sorted(_REGISTRY))


def build_degradation(spec: DegradationSpec) -> AnyDegradation:
    """Build the registered degradation for a spec model (looked up by ``spec.type``)."""
    return get_degradation(spec.type)(spec)


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _integer(rng: np.random.Generator, bounds: tuple[int, int]) -> int:
    # Spec integer ranges are inclusive at both ends.
    return int(rng.integers(bounds[0], bounds[1], endpoint=True))


def _sub_seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, _SUB_SEED_LIMIT))


# --------------------------------------------------------------------------------------------
# The degradations


@register_degradation("gaussian_blur")
class GaussianBlurDegradation(Degradation[GaussianBlur, GaussianBlurParams]):
    """Out-of-focus blur: an isotropic Gaussian PSF."""

    spec_model = GaussianBlur
    params_model = GaussianBlurParams

    def sample_params(self, rng: np.random.Generator) -> GaussianBlurParams:
        return GaussianBlurParams(sigma=_uniform(rng, self.spec.sigma))

    def apply(self, image: Image, params: GaussianBlurParams) -> Image:
        return F.gaussian_blur(image, sigma=params.sigma)


@register_degradation("motion_blur")
class MotionBlurDegradation(Degradation[MotionBlur, MotionBlurParams]):
    """Camera or subject motion: a line PSF of ``length`` pixels at ``angle`` degrees."""

    spec_model = MotionBlur
    params_model = MotionBlurParams

    def sample_params(self, rng: np.random.Generator) -> MotionBlurParams:
        return MotionBlurParams(
            length=_integer(rng, self.spec.length), angle=_uniform(rng, self.spec.angle)
        )

    def apply(self, image: Image, params: MotionBlurParams) -> Image:
        return F.motion_blur(image, length=params.length, angle=params.angle)


@register_degradation("shadow")
class ShadowDegradation(Degradation[Shadow, ShadowParams]):
    """Uneven illumination: a soft polygon or a linear ramp darkening, then a gamma curve.

    Polygons are star-shaped around a centre in the middle 60 % of the image, 3-7 vertices at
    jittered equal angles with radii 0.25-0.6 of the image side, clipped to the image: always a
    sizeable region, never a sliver. Half the samples are polygons, half gradients.
    """

    spec_model = Shadow
    params_model = ShadowParams

    def sample_params(self, rng: np.random.Generator) -> ShadowParams:
        shape: Literal["polygon", "gradient"] = "polygon" if rng.random() < 0.5 else "gradient"
        vertices: tuple[tuple[float, float], ...] = ()
        direction = 0.0
        if shape == "polygon":
            n = _integer(rng, (3, 7))
            cx, cy = (float(v) for v in rng.uniform(0.2, 0.8, size=2))
            step = 2.0 * math.pi / n
            start = float(rng.uniform(0.0, 2.0 * math.pi))
            jitter = rng.uniform(-0.3, 0.3, size=n) * step
            radii = rng.uniform(0.25, 0.6, size=n)
            corners = []
            for k in range(n):
                a = start + k * step + float(jitter[k])
                x = min(1.0, max(0.0, cx + float(radii[k]) * math.cos(a)))
                y = min(1.0, max(0.0, cy + float(radii[k]) * math.sin(a)))
                corners.append((x, y))
            vertices = tuple(corners)
        else:
            direction = float(rng.uniform(0.0, 360.0))
        return ShadowParams(
            shape=shape,
            vertices=vertices,
            direction=direction,
            strength=_uniform(rng, self.spec.strength),
            softness=_uniform(rng, self.spec.softness),
            gamma=_uniform(rng, self.spec.gamma),
        )

    def apply(self, image: Image, params: ShadowParams) -> Image:
        return F.shadow(
            image,
            shape=params.shape,
            vertices=params.vertices,
            direction=params.direction,
            strength=params.strength,
            softness=params.softness,
            gamma=params.gamma,
        )


@register_degradation("salt_pepper")
class SaltPepperDegradation(Degradation[SaltPepper, SaltPepperParams]):
    """Impulse noise; positions are replayed from the ``seed`` sub-seed in the params."""

    spec_model = SaltPepper
    params_model = SaltPepperParams

    def sample_params(self, rng: np.random.Generator) -> SaltPepperParams:
        return SaltPepperParams(
            density=_uniform(rng, self.spec.density),
            salt_ratio=_uniform(rng, self.spec.salt_ratio),
            seed=_sub_seed(rng),
        )

    def apply(self, image: Image, params: SaltPepperParams) -> Image:
        return F.salt_pepper(
            image, density=params.density, salt_ratio=params.salt_ratio, seed=params.seed
        )


@register_degradation("gaussian_noise")
class GaussianNoiseDegradation(Degradation[GaussianNoise, GaussianNoiseParams]):
    """Additive white Gaussian sensor noise; the field is replayed from the ``seed`` sub-seed."""

    spec_model = GaussianNoise
    params_model = GaussianNoiseParams

    def sample_params(self, rng: np.random.Generator) -> GaussianNoiseParams:
        return GaussianNoiseParams(sigma=_uniform(rng, self.spec.sigma), seed=_sub_seed(rng))

    def apply(self, image: Image, params: GaussianNoiseParams) -> Image:
        return F.gaussian_noise(image, sigma=params.sigma, seed=params.seed)


@register_degradation("jpeg")
class JpegDegradation(Degradation[Jpeg, JpegParams]):
    """JPEG compression artefacts (blocking, ringing) at a given quality."""

    spec_model = Jpeg
    params_model = JpegParams

    def sample_params(self, rng: np.random.Generator) -> JpegParams:
        return JpegParams(quality=_integer(rng, self.spec.quality))

    def apply(self, image: Image, params: JpegParams) -> Image:
        return F.jpeg(image, quality=params.quality)


@register_degradation("downscale")
class DownscaleDegradation(Degradation[Downscale, DownscaleParams]):
    """Resolution loss: area downscale by ``factor``, bicubic back to the same size."""

    spec_model = Downscale
    params_model = DownscaleParams

    def sample_params(self, rng: np.random.Generator) -> DownscaleParams:
        return DownscaleParams(factor=_uniform(rng, self.spec.factor))

    def apply(self, image: Image, params: DownscaleParams) -> Image:
        return F.downscale(image, factor=params.factor)


# --------------------------------------------------------------------------------------------
# Seeds, replay and the pipeline


def sample_rng(seed: int, sample_id: str) -> np.random.Generator:
    """A generator for one sample, derived from the dataset ``seed`` and the ``sample_id``.

    SHA-256 of (seed as 8 little-endian bytes, UTF-8 id) seeds a ``SeedSequence``: stable across
    processes, machines and Python versions, unlike the salted built-in ``hash()``.

    Args:
        seed: the dataset seed, 0 <= seed < 2**64.
        sample_id: any stable identifier of the sample (e.g. its relative path and tile index).
    """
    if not 0 <= seed < 2**64:
        raise DeepfixError(f"seed must lie in [0, 2**64), got {seed}")
    digest = hashlib.sha256(seed.to_bytes(8, "little") + sample_id.encode("utf-8")).digest()
    return np.random.default_rng(np.random.SeedSequence(int.from_bytes(digest, "little")))


def replay(image: Image, applied: Sequence[Mapping[str, Any]]) -> Image:
    """Re-apply a recorded ``applied`` list, in its recorded order; bit-for-bit reproducible.

    Needs only the registry: params fully determine every degradation, so no spec is required.
    """
    F.check_rgb_uint8(image)
    out = image
    for entry in applied:
        degradation = get_degradation(str(entry["type"]))()
        out = degradation.apply(out, degradation.parse_params(entry["params"]))
    return out if out is not image else image.copy()


class DegradationPipeline:
    """Degradations in :data:`APPLY_ORDER`, each fired with its probability ``p``.

    ``degraded, applied = pipeline(image, rng)``; ``pipeline.replay(image, applied)`` gives the
    same bytes again. At least one degradation is forced when none fires (see module docstring).
    """

    def __init__(self, degradations: Sequence[AnyDegradation]) -> None:
        """Order the degradations by :data:`APPLY_ORDER`.

        Args:
            degradations: built degradations, at most one per type, in any order.
        """
        types = [d.type for d in degradations]
        repeated = sorted({t for t in types if types.count(t) > 1})
        if repeated:
            raise DeepfixError(f"each degradation type may appear once; repeated: {repeated}")
        unordered = sorted(set(types) - set(APPLY_ORDER))
        if unordered:
            raise DeepfixError(
                f"degradation types {unordered} have no place in APPLY_ORDER {APPLY_ORDER}"
            )
        self._degradations = tuple(sorted(degradations, key=lambda d: APPLY_ORDER.index(d.type)))

    @classmethod
    def from_specs(cls, specs: Sequence[DegradationSpec]) -> DegradationPipeline:
        """Build from the spec list of a ``DatasetSpec`` (``spec.degradations``)."""
        return cls([build_degradation(s) for s in specs])

    @property
    def degradations(self) -> tuple[AnyDegradation, ...]:
        """The degradations, in application order."""
        return self._degradations

    def sample(self, rng: np.random.Generator) -> list[AppliedDegradation]:
        """Decide which degradations fire and draw their params; no image needed.

        One uniform draw per degradation decides firing (so the stream's layout does not depend
        on the outcomes), then the forced pick if needed, then the params in order.
        """
        fired = [bool(rng.random() < d.p) for d in self._degradations]
        if not any(fired):
            candidates = [i for i, d in enumerate(self._degradations) if d.p > 0]
            if candidates:
                weights = np.array([self._degradations[i].p for i in candidates])
                pick = int(rng.choice(len(candidates), p=weights / weights.sum()))
                fired[candidates[pick]] = True
        return [
            AppliedDegradation(type=d.type, params=d.sample_params(rng).model_dump(mode="json"))
            for d, on in zip(self._degradations, fired, strict=True)
            if on
        ]

    def replay(self, image: Image, applied: Sequence[Mapping[str, Any]]) -> Image:
        """Re-apply a recorded ``applied`` list bit-for-bit (see :func:`replay`)."""
        return replay(image, applied)

    def __call__(self, image: Image, rng: np.random.Generator) -> DegradationResult:
        F.check_rgb_uint8(image)
        applied = self.sample(rng)
        # Applying through the recorded JSON params (not the live models) guarantees that what
        # was stored is exactly what produced the image.
        return DegradationResult(replay(image, applied), applied)

    def __repr__(self) -> str:
        inner = ", ".join(f"{d.type}(p={d.p:g})" for d in self._degradations)
        return f"DegradationPipeline([{inner}])"
