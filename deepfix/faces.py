"""Face detection and face-centred crops: the first step of the sample geometry in ``spec``.

Detectors are registered by name (``@register_detector``) and built from a
``FaceDetectionSpec`` with ``create_detector``; they take RGB ``uint8`` images and return boxes
in full-resolution pixel coordinates.

- ``haar``: the Viola-Jones cascade (Viola & Jones, "Rapid Object Detection using a Boosted
  Cascade of Simple Features", CVPR 2001) with Lienhart's frontal-face model that ships with
  OpenCV (``haarcascade_frontalface_default.xml``). No download, CPU only.
- ``yunet``: OpenCV's ``FaceDetectorYN`` (Wu et al., "YuNet: A Tiny Millisecond-level Face
  Detector", Machine Intelligence Research 2023). Needs ``model_path`` to an ONNX file that
  the operator provides; nothing is ever downloaded.

Both run on a copy downscaled so its longest side is at most ``max_side`` (640 by default):
detection cost grows with the pixel count, and faces worth restoring are rarely smaller than
``min_size * max_side / longest_side`` pixels. Boxes are mapped back to full resolution.

Crops follow the spec: each box is grown by ``margin`` x its side on every side into a square
centred on the box, shifted to stay inside the image, then resized to ``height x width``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeVar, runtime_checkable

import cv2
import numpy as np

from deepfix.errors import DeepfixError, RegistryError
from deepfix.spec import FaceDetectionSpec

__all__ = [
    "FaceBox",
    "FaceDetector",
    "FaceResult",
    "HaarDetector",
    "Policy",
    "YuNetDetector",
    "available_detectors",
    "centre_crop",
    "centre_region",
    "create_detector",
    "crop_faces",
    "face_region",
    "face_samples",
    "register_detector",
]

logger = logging.getLogger(__name__)

Policy = Literal["faces", "whole", "skipped", "disabled"]


@dataclass(frozen=True)
class FaceBox:
    """A detected face: top-left corner, size in full-resolution pixels, score in 0..1."""

    x: int
    y: int
    w: int
    h: int
    score: float = 1.0


@runtime_checkable
class FaceDetector(Protocol):
    """Anything that finds faces in an RGB ``uint8`` image, best first."""

    def detect(self, image: np.ndarray) -> list[FaceBox]: ...


DetectorFactory = Callable[[FaceDetectionSpec], FaceDetector]
_F = TypeVar("_F", bound=DetectorFactory)
_DETECTORS: dict[str, DetectorFactory] = {}


def register_detector(name: str) -> Callable[[_F], _F]:
    """Class or function decorator: make ``name`` buildable by ``create_detector``.

    Raises:
        RegistryError: ``name`` is already registered.
    """

    def add(factory: _F) -> _F:
        if name in _DETECTORS:
            raise RegistryError(
                f"face detector {name!r} is already registered; "
                f"known: {', '.join(available_detectors())}"
            )
        _DETECTORS[name] = factory
        return factory

    return add


def available_detectors() -> list[str]:
    """Registered detector names, sorted."""
    return sorted(_DETECTORS)


def create_detector(spec: FaceDetectionSpec) -> FaceDetector:
    """Build the detector ``spec.detector`` names, configured by ``spec``.

    Build one per process (in a Ray UDF's ``__init__``): the OpenCV objects inside are not
    shared between processes.

    Raises:
        RegistryError: unknown name; the message lists the known ones.
        DeepfixError: the detector cannot be built from this spec (e.g. a missing model file).
    """
    factory = _DETECTORS.get(spec.detector)
    if factory is None:
        raise RegistryError(
            f"unknown face detector {spec.detector!r}; known: {', '.join(available_detectors())}"
        )
    return factory(spec)


def _to_gray(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0]
    raise ValueError(f"expected H x W x 3 RGB or H x W gray, got shape {image.shape}")


def _downscale(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """A copy whose longest side is at most ``max_side``, and the scale factor used (<= 1)."""
    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale >= 1.0:
        return image, 1.0
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), scale


def _finish(
    boxes: list[FaceBox], spec: FaceDetectionSpec, image_hw: tuple[int, int]
) -> list[FaceBox]:
    """Clip to the image, drop small or low-score boxes, keep the ``max_faces`` best."""
    H, W = image_hw
    kept: list[FaceBox] = []
    for b in boxes:
        x0, y0 = max(0, b.x), max(0, b.y)
        x1, y1 = min(W, b.x + b.w), min(H, b.y + b.h)
        box = FaceBox(x0, y0, x1 - x0, y1 - y0, b.score)
        if min(box.w, box.h) >= spec.min_size and box.score >= spec.score_threshold:
            kept.append(box)
    kept.sort(key=lambda b: (-b.score, b.y, b.x))
    return kept[: spec.max_faces]


@register_detector("haar")
class HaarDetector:
    """OpenCV's frontal-face Haar cascade on a downscaled grayscale copy.

    Score: ``detectMultiScale3`` with ``outputRejectLevels`` reports, per face, the summed
    weak-classifier output ``F`` of the cascade's last stage. The cascade is trained with Gentle
    AdaBoost, whose additive model estimates half the log-odds, ``F ~ 1/2 log(p / (1 - p))``
    (Friedman, Hastie & Tibshirani, "Additive logistic regression", Ann. Stat. 2000), so
    ``score = 1 / (1 + exp(-2F))`` is that estimate of ``p``, for windows that already passed
    every earlier stage. Frontal faces score about 0.99 and more; the default threshold 0.6
    means ``F >= 0.2``, which drops the weakest survivors. ``min_neighbors`` (grouping of
    overlapping hits) remains the main guard against false positives.
    """

    CASCADE = "haarcascade_frontalface_default.xml"

    def __init__(
        self,
        spec: FaceDetectionSpec,
        *,
        max_side: int = 640,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
    ) -> None:
        self.spec = spec
        self.max_side = max_side
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self._cascade: cv2.CascadeClassifier | None = None

    def _classifier(self) -> cv2.CascadeClassifier:
        # Built on first use so a detector can be pickled to a worker before it is used there.
        if self._cascade is None:
            path = os.path.join(cv2.data.haarcascades, self.CASCADE)  # type: ignore[attr-defined]
            cascade = cv2.CascadeClassifier(path)
            if cascade.empty():
                raise DeepfixError(f"cannot load the OpenCV Haar cascade at {path}")
            self._cascade = cascade
        return self._cascade

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        state["_cascade"] = None
        return state

    def detect(self, image: np.ndarray) -> list[FaceBox]:
        gray, scale = _downscale(_to_gray(image), self.max_side)
        # Equalising makes the cascade less sensitive to exposure, as in OpenCV's facedetect.py.
        gray = cv2.equalizeHist(gray)
        # The cascade window is 24 px; min_size is in source pixels.
        min_side = max(1, math.floor(self.spec.min_size * scale))
        rects, _levels, weights = self._classifier().detectMultiScale3(
            gray,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(min_side, min_side),
            outputRejectLevels=True,
        )
        boxes = [
            FaceBox(
                x=round(x / scale),
                y=round(y / scale),
                w=round(w / scale),
                h=round(h / scale),
                score=float(1.0 / (1.0 + math.exp(-2.0 * float(weight)))),
            )
            for (x, y, w, h), weight in zip(rects, np.ravel(weights), strict=True)
        ]
        return _finish(boxes, self.spec, image.shape[:2])


@register_detector("yunet")
class YuNetDetector:
    """OpenCV's YuNet CNN detector from an ONNX file at ``spec.model_path``.

    Its scores are already probabilities (0..1); ``score_threshold`` is passed to OpenCV.
    """

    def __init__(
        self, spec: FaceDetectionSpec, *, max_side: int = 640, nms_threshold: float = 0.3
    ) -> None:
        if not spec.model_path:
            raise DeepfixError(
                "face detector 'yunet' needs face_detection.model_path: the path of a YuNet "
                "ONNX model (e.g. face_detection_yunet_2023mar.onnx from the OpenCV model zoo); "
                "models are never downloaded"
            )
        if not os.path.isfile(spec.model_path):
            raise DeepfixError(f"YuNet model file not found: {spec.model_path}")
        self.spec = spec
        self.max_side = max_side
        self.nms_threshold = nms_threshold
        self._net: cv2.FaceDetectorYN | None = None

    def _detector(self, size: tuple[int, int]) -> cv2.FaceDetectorYN:
        if self._net is None:
            assert self.spec.model_path is not None
            try:
                self._net = cv2.FaceDetectorYN.create(
                    self.spec.model_path,
                    "",
                    size,
                    score_threshold=self.spec.score_threshold,
                    nms_threshold=self.nms_threshold,
                )
            except cv2.error as exc:
                raise DeepfixError(
                    f"cannot load YuNet model {self.spec.model_path}: {exc}"
                ) from exc
        self._net.setInputSize(size)
        return self._net

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        state["_net"] = None
        return state

    def detect(self, image: np.ndarray) -> list[FaceBox]:
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
        small, scale = _downscale(image, self.max_side)
        h, w = small.shape[:2]
        _, faces = self._detector((w, h)).detect(cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
        boxes = [
            FaceBox(
                x=round(float(f[0]) / scale),
                y=round(float(f[1]) / scale),
                w=round(float(f[2]) / scale),
                h=round(float(f[3]) / scale),
                score=float(f[14]),
            )
            for f in (faces if faces is not None else [])
        ]
        return _finish(boxes, self.spec, image.shape[:2])


# ------------------------------------------------------------------------------------ crops


def _fit_region(
    cx: float, cy: float, rw: float, rh: float, image_hw: tuple[int, int]
) -> tuple[int, int, int, int]:
    """Integer region of about ``rw x rh`` centred on ``(cx, cy)``, moved inside the image.

    A region larger than the image is shrunk, keeping its aspect ratio, until it fits.
    """
    H, W = image_hw
    shrink = min(1.0, W / rw, H / rh)
    w = min(W, max(1, round(rw * shrink)))
    h = min(H, max(1, round(rh * shrink)))
    x = min(max(0, round(cx - w / 2)), W - w)
    y = min(max(0, round(cy - h / 2)), H - h)
    return x, y, w, h


def face_region(
    box: FaceBox,
    image_hw: tuple[int, int],
    *,
    margin: float,
    out_hw: tuple[int, int] | None = None,
) -> tuple[int, int, int, int]:
    """The ``(x, y, w, h)`` crop for a face box.

    The box's longer side grows by ``margin`` x side on each side into a square centred on the
    box. For a non-square ``out_hw`` the short side of the square grows further to the output
    aspect ratio, so the resize does not distort the face. The region is shifted to stay
    inside the image; if it is larger than the image it is shrunk to fit (keeping its aspect).
    """
    side = max(box.w, box.h) * (1.0 + 2.0 * margin)
    aspect = 1.0 if out_hw is None else out_hw[1] / out_hw[0]  # width / height
    rw, rh = side * max(1.0, aspect), side * max(1.0, 1.0 / aspect)
    return _fit_region(box.x + box.w / 2, box.y + box.h / 2, rw, rh, image_hw)


def centre_region(
    image_hw: tuple[int, int], out_hw: tuple[int, int] | None = None
) -> tuple[int, int, int, int]:
    """The largest centred ``(x, y, w, h)`` region with the aspect of ``out_hw`` (square when
    None): the ``whole`` policy."""
    H, W = image_hw
    aspect = 1.0 if out_hw is None else out_hw[1] / out_hw[0]
    return _fit_region(W / 2, H / 2, H * aspect, H, image_hw)


def _cut_and_resize(
    image: np.ndarray, region: tuple[int, int, int, int], out_hw: tuple[int, int]
) -> np.ndarray:
    x, y, w, h = region
    crop = image[y : y + h, x : x + w]
    oh, ow = out_hw
    if (h, w) == (oh, ow):
        return crop.copy()
    # INTER_AREA averages source pixels when shrinking (no aliasing); INTER_CUBIC is sharper
    # when enlarging.
    interpolation = cv2.INTER_AREA if w * h >= ow * oh else cv2.INTER_CUBIC
    return cv2.resize(crop, (ow, oh), interpolation=interpolation)


def crop_faces(
    image: np.ndarray,
    boxes: list[FaceBox],
    *,
    margin: float,
    out_hw: tuple[int, int],
) -> list[np.ndarray]:
    """One ``out_hw`` crop per box (see ``face_region``), in the order of ``boxes``."""
    hw = (image.shape[0], image.shape[1])
    return [
        _cut_and_resize(image, face_region(b, hw, margin=margin, out_hw=out_hw), out_hw)
        for b in boxes
    ]


def centre_crop(image: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """The largest centred region with the output aspect, resized to ``out_hw``."""
    return _cut_and_resize(image, centre_region(image.shape[:2], out_hw), out_hw)


@dataclass
class FaceResult:
    """The samples cut from one image and which policy produced them.

    ``policy_used``: ``faces`` (one sample per detected face), ``whole`` (no face, centre crop
    by ``on_missing="whole"``), ``skipped`` (no face, ``on_missing="skip"``: no samples) or
    ``disabled`` (detection off: one centre crop).
    """

    samples: list[np.ndarray]
    policy_used: Policy
    boxes: list[FaceBox] = field(default_factory=list)


def face_samples(
    image: np.ndarray,
    detector: FaceDetector | None,
    spec: FaceDetectionSpec,
    out_hw: tuple[int, int],
) -> FaceResult:
    """Apply the spec's face policy to one RGB image.

    Args:
        detector: from ``create_detector(spec)``; may be None when ``spec.enabled`` is False.
        out_hw: the sample's (height, width).

    Raises:
        ValueError: detection is enabled but no detector was given.
    """
    if not spec.enabled:
        return FaceResult([centre_crop(image, out_hw)], "disabled")
    if detector is None:
        raise ValueError("face detection is enabled but no detector was given")
    boxes = detector.detect(image)
    if boxes:
        return FaceResult(
            crop_faces(image, boxes, margin=spec.margin, out_hw=out_hw), "faces", boxes
        )
    if spec.on_missing == "whole":
        return FaceResult([centre_crop(image, out_hw)], "whole")
    return FaceResult([], "skipped")
