from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from deepfix import faces
from deepfix.errors import DeepfixError, RegistryError
from deepfix.faces import (
    FaceBox,
    FaceDetector,
    available_detectors,
    centre_crop,
    centre_region,
    create_detector,
    crop_faces,
    face_region,
    face_samples,
    register_detector,
)
from deepfix.spec import FaceDetectionSpec

# Where the astronaut's face is in skimage.data.astronaut() (512 x 512): about x 177..272,
# y 66..161, centred near (224, 113).
ASTRONAUT_FACE_CENTRE = (224, 113)


def _centre(box: FaceBox) -> tuple[float, float]:
    return box.x + box.w / 2, box.y + box.h / 2


@pytest.fixture(scope="module")
def haar() -> FaceDetector:
    return create_detector(FaceDetectionSpec())


# -------------------------------------------------------------------------------- registry


def test_builtin_detectors_are_registered() -> None:
    assert {"haar", "yunet"} <= set(available_detectors())


def test_unknown_detector_name_lists_the_known_ones() -> None:
    with pytest.raises(RegistryError, match=r"unknown face detector 'mtcnn'; known: haar, yunet"):
        create_detector(FaceDetectionSpec(detector="mtcnn"))


def test_duplicate_registration_is_refused() -> None:
    with pytest.raises(RegistryError, match="already registered"):
        register_detector("haar")(faces.HaarDetector)


def test_registered_factory_is_built_from_the_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(faces, "_DETECTORS", dict(faces._DETECTORS))

    class Fixed:
        def __init__(self, spec: FaceDetectionSpec) -> None:
            self.spec = spec

        def detect(self, image: np.ndarray) -> list[FaceBox]:
            return [FaceBox(0, 0, 4, 4, 0.9)]

    register_detector("fixed")(Fixed)
    detector = create_detector(FaceDetectionSpec(detector="fixed", min_size=30))
    assert isinstance(detector, Fixed) and detector.spec.min_size == 30


@pytest.mark.parametrize("name", available_detectors())
def test_every_detector_conforms(name: str, astronaut: np.ndarray) -> None:
    try:
        detector = create_detector(FaceDetectionSpec(detector=name))
    except DeepfixError as exc:  # needs a model file this machine does not have
        pytest.skip(str(exc))
    assert isinstance(detector, FaceDetector)
    boxes = detector.detect(astronaut)
    assert boxes and all(isinstance(b, FaceBox) for b in boxes)
    for b in boxes:
        assert min(b.x, b.y) >= 0 and max(b.x + b.w, b.y + b.h) <= 512
        assert 0.0 <= b.score <= 1.0
    assert detector.detect(np.zeros((200, 300, 3), np.uint8)) == []


def test_yunet_without_model_path_raises_a_clear_error() -> None:
    with pytest.raises(DeepfixError, match="model_path"):
        create_detector(FaceDetectionSpec(detector="yunet"))


def test_yunet_with_a_missing_model_file_raises(tmp_path: Path) -> None:
    spec = FaceDetectionSpec(detector="yunet", model_path=str(tmp_path / "none.onnx"))
    with pytest.raises(DeepfixError, match="not found"):
        create_detector(spec)


# ------------------------------------------------------------------------------------- haar


def test_haar_finds_the_astronaut_face(haar: FaceDetector, astronaut: np.ndarray) -> None:
    boxes = haar.detect(astronaut)
    assert len(boxes) == 1
    cx, cy = _centre(boxes[0])
    assert abs(cx - ASTRONAUT_FACE_CENTRE[0]) < 15 and abs(cy - ASTRONAUT_FACE_CENTRE[1]) < 15
    assert 80 <= boxes[0].w <= 115
    assert boxes[0].score >= FaceDetectionSpec().score_threshold


def test_haar_boxes_are_in_full_resolution_coordinates(
    haar: FaceDetector, astronaut: np.ndarray
) -> None:
    big = np.repeat(np.repeat(astronaut, 3, axis=0), 3, axis=1)  # 1536 px: detected at 640
    (box,) = haar.detect(big)
    cx, cy = _centre(box)
    assert (
        abs(cx - 3 * ASTRONAUT_FACE_CENTRE[0]) < 40 and abs(cy - 3 * ASTRONAUT_FACE_CENTRE[1]) < 40
    )
    assert 240 <= box.w <= 345


def test_haar_accepts_grayscale(haar: FaceDetector, astronaut: np.ndarray) -> None:
    assert len(haar.detect(astronaut.mean(axis=2).astype(np.uint8))) == 1


def test_haar_respects_min_size(astronaut: np.ndarray) -> None:
    assert create_detector(FaceDetectionSpec(min_size=150)).detect(astronaut) == []


def test_haar_respects_score_threshold(astronaut: np.ndarray) -> None:
    assert create_detector(FaceDetectionSpec(score_threshold=1.0)).detect(astronaut) == []


def test_haar_keeps_the_best_max_faces(astronaut: np.ndarray) -> None:
    two = np.concatenate([astronaut, astronaut], axis=1)
    everything = create_detector(FaceDetectionSpec()).detect(two)
    assert len(everything) == 2
    best = create_detector(FaceDetectionSpec(max_faces=1)).detect(two)
    assert best == [max(everything, key=lambda b: b.score)]


def test_haar_detector_survives_pickling(haar: FaceDetector, astronaut: np.ndarray) -> None:
    clone = pickle.loads(pickle.dumps(haar))
    assert clone.detect(astronaut) == haar.detect(astronaut)


# ------------------------------------------------------------------------------ face_samples


def test_two_faces_side_by_side_give_two_samples(haar: FaceDetector, astronaut: np.ndarray) -> None:
    two = np.concatenate([astronaut, astronaut], axis=1)
    result = face_samples(two, haar, FaceDetectionSpec(), (64, 48))
    assert result.policy_used == "faces"
    assert len(result.samples) == len(result.boxes) == 2
    assert all(s.shape == (64, 48, 3) and s.dtype == np.uint8 for s in result.samples)


def test_blank_image_is_skipped_by_default(haar: FaceDetector) -> None:
    result = face_samples(np.full((240, 320, 3), 90, np.uint8), haar, FaceDetectionSpec(), (32, 32))
    assert result.policy_used == "skipped" and result.samples == [] and result.boxes == []


def test_blank_image_gives_one_centre_crop_with_whole(haar: FaceDetector) -> None:
    image = np.zeros((240, 320, 3), np.uint8)
    image[:, 40:280] = 200  # the centred 240 x 240 square is the bright part
    result = face_samples(image, haar, FaceDetectionSpec(on_missing="whole"), (32, 32))
    assert result.policy_used == "whole" and len(result.samples) == 1
    assert result.samples[0].shape == (32, 32, 3) and (result.samples[0] == 200).all()


def test_disabled_detection_centre_crops_without_a_detector(astronaut: np.ndarray) -> None:
    result = face_samples(astronaut, None, FaceDetectionSpec(enabled=False), (16, 16))
    assert result.policy_used == "disabled" and result.samples[0].shape == (16, 16, 3)


def test_enabled_detection_needs_a_detector(astronaut: np.ndarray) -> None:
    with pytest.raises(ValueError, match="no detector"):
        face_samples(astronaut, None, FaceDetectionSpec(), (16, 16))


# ---------------------------------------------------------------------------- crop geometry


def test_region_is_a_square_centred_on_the_box_grown_by_margin() -> None:
    box = FaceBox(x=40, y=50, w=20, h=30)
    # longer side 30, grown by 0.5 x 30 per side -> 60, centred on (50, 65)
    assert face_region(box, (200, 200), margin=0.5) == (20, 35, 60, 60)
    assert face_region(box, (200, 200), margin=0.0) == (35, 50, 30, 30)


def test_region_is_shifted_to_stay_inside_the_image() -> None:
    assert face_region(FaceBox(0, 0, 20, 20), (100, 100), margin=0.5) == (0, 0, 40, 40)
    assert face_region(FaceBox(85, 90, 15, 10), (100, 100), margin=0.5) == (70, 70, 30, 30)


def test_region_larger_than_the_image_is_clamped_to_a_square_that_fits() -> None:
    x, y, w, h = face_region(FaceBox(10, 5, 20, 20), (30, 50), margin=0.5)
    assert (w, h) == (30, 30) and y == 0 and 0 <= x <= 20
    assert abs((x + w / 2) - 20) <= 1  # still centred on the box horizontally


def test_region_takes_the_output_aspect_so_the_resize_does_not_distort() -> None:
    x, y, w, h = face_region(FaceBox(100, 100, 40, 40), (400, 400), margin=0.0, out_hw=(50, 100))
    assert (w, h) == (80, 40) and (x + w / 2, y + h / 2) == (120, 120)


def test_crop_faces_cuts_exactly_the_region_when_sizes_match() -> None:
    image = np.arange(100 * 120 * 3, dtype=np.uint32).reshape(100, 120, 3).astype(np.uint8)
    (crop,) = crop_faces(image, [FaceBox(40, 50, 20, 20)], margin=0.5, out_hw=(40, 40))
    np.testing.assert_array_equal(crop, image[40:80, 30:70])


def test_crop_faces_resizes_up_and_down() -> None:
    image = np.full((300, 300, 3), 77, np.uint8)
    boxes = [FaceBox(10, 10, 8, 8), FaceBox(100, 100, 150, 150)]
    small, large = crop_faces(image, boxes, margin=0.25, out_hw=(64, 64))
    assert small.shape == large.shape == (64, 64, 3)
    assert (small == 77).all() and (large == 77).all()


def test_centre_crop_takes_the_largest_centred_square() -> None:
    assert centre_region((100, 200)) == (50, 0, 100, 100)
    assert centre_region((201, 100)) == (0, 50, 100, 100)
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, 50:150] = 255
    out = centre_crop(image, (20, 20))
    assert out.shape == (20, 20, 3) and (out == 255).all()
