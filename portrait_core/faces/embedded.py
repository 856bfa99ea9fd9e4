"""The offline face backend, built only from models that ship inside PyPI packages.

* Detection: mediapipe's BlazeFace detectors (full-range and short-range) on the whole image, plus the
  short-range detector on overlapping tiles so that small faces in group photos are found too; the
  candidates are merged and each is refined with mediapipe's face mesh (478 landmarks, irises
  included), which gives the five points and the region masks.
* Identity: dlib's ResNet face-recognition model (128-D) from the `face_recognition_models` package,
  aligned with dlib's 5-landmark shape predictor from the same package.
* Person mask: mediapipe selfie segmentation.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from portrait_core.core.geometry import (
    LEVEL_TOLERANCE_DEGREES,
    Box,
    box_center,
    box_size,
    boxes_overlap_as_same_face,
    clip_box,
    head_roll_degrees,
    order_five_points,
    points_in_box,
)
from portrait_core.core.masks import binarize, ellipse_face_mask, region_mask
from portrait_core.faces.base import Face, check_rgb_image, normalize_embedding, sort_faces
from portrait_core.log import get_logger
from portrait_core.models.registry import package_file

log = get_logger("faces")

DLIB_MODELS_PACKAGE = "face_recognition_models"
DLIB_RECOGNITION_FILE = "models/dlib_face_recognition_resnet_model_v1.dat"
DLIB_SHAPE_FILE = "models/shape_predictor_5_face_landmarks.dat"

# Face-mesh indices: iris centres (with refined landmarks), nose tip, mouth corners.
MESH_FIVE_POINTS = (468, 473, 1, 61, 291)
MESH_CROP_SIZE = 256
# Detections are collected from this score up; below `min_confidence` they are dropped, and below
# 0.75 they are kept only when the face mesh confirms them.
DETECTOR_FLOOR = 0.4
SEGMENTATION_MAX_SIDE = 512
PAD_FRACTION = 0.4
GREY = (128, 128, 128)


def import_mediapipe():
    # mediapipe's native logging floods the console with INFO lines; keep it to errors unless the
    # user chose otherwise. It must be set before mediapipe first loads its native library.
    os.environ.setdefault("GLOG_minloglevel", "2")
    import mediapipe

    return mediapipe


class EmbeddedModels:
    """Cache of the embedded backend's model handles, created on first use; `unload()` frees them.

    mediapipe graphs are not thread-safe, so every use goes through `lock`.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._handles: dict[str, Any] = {}

    def _get(self, key: str, factory: Callable[[], Any]) -> Any:
        with self.lock:
            if key not in self._handles:
                log.debug("loading %s", key)
                self._handles[key] = factory()
            return self._handles[key]

    def face_detector(self, full_range: bool) -> Any:
        def create():
            return import_mediapipe().solutions.face_detection.FaceDetection(
                model_selection=1 if full_range else 0, min_detection_confidence=DETECTOR_FLOOR)
        return self._get(f"face_detection_{'full' if full_range else 'short'}", create)

    def face_mesh(self) -> Any:
        def create():
            return import_mediapipe().solutions.face_mesh.FaceMesh(
                static_image_mode=True, max_num_faces=1, refine_landmarks=True, min_detection_confidence=0.3)
        return self._get("face_mesh", create)

    def selfie_segmentation(self) -> Any:
        def create():
            return import_mediapipe().solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)
        return self._get("selfie_segmentation", create)

    def mesh_regions(self) -> dict[str, list[int]]:
        return self._get("mesh_regions", _mesh_regions)

    def shape_predictor(self) -> Any:
        def create():
            import dlib

            return dlib.shape_predictor(str(package_file(DLIB_MODELS_PACKAGE, DLIB_SHAPE_FILE)))
        return self._get("dlib_shape_predictor", create)

    def recognizer(self) -> Any:
        def create():
            import dlib

            return dlib.face_recognition_model_v1(str(package_file(DLIB_MODELS_PACKAGE, DLIB_RECOGNITION_FILE)))
        return self._get("dlib_recognizer", create)

    def loaded(self) -> list[str]:
        with self.lock:
            return sorted(self._handles)

    def unload(self) -> None:
        with self.lock:
            handles, self._handles = self._handles, {}
        for handle in handles.values():
            close = getattr(handle, "close", None)
            if callable(close):
                close()


def _mesh_regions() -> dict[str, list[int]]:
    """Landmark indices of each face-mesh region, from mediapipe's own connection tables."""
    mesh = import_mediapipe().solutions.face_mesh

    def indices(*connection_sets):
        return sorted({index for connections in connection_sets for edge in connections for index in edge})

    return {
        "oval": indices(mesh.FACEMESH_FACE_OVAL),
        "left_eye": indices(mesh.FACEMESH_LEFT_EYE, mesh.FACEMESH_LEFT_IRIS),
        "right_eye": indices(mesh.FACEMESH_RIGHT_EYE, mesh.FACEMESH_RIGHT_IRIS),
        "left_brow": indices(mesh.FACEMESH_LEFT_EYEBROW),
        "right_brow": indices(mesh.FACEMESH_RIGHT_EYEBROW),
        "lips": indices(mesh.FACEMESH_LIPS),
    }


@dataclass(frozen=True)
class _Candidate:
    box: Box
    score: float
    keypoints: np.ndarray  # (6, 2): two eyes, nose tip, mouth centre, two ear tragions
    source: str


class EmbeddedFaceAnalyzer:
    """FaceAnalyzer on mediapipe + dlib (see module docstring); all models load on first use."""

    name = "embedded"
    embedding_model = "dlib_face_recognition_resnet_model_v1"
    embedding_size = 128
    # dlib's documented same-person rule is a Euclidean distance under 0.6 between raw descriptors,
    # whose length is about 1.4 here, i.e. a cosine similarity of about 0.91. Measured on the shared
    # photos: same person 0.95..1.00, different people 0.80..0.84.
    same_person_threshold = 0.90

    def __init__(self, models: EmbeddedModels | None = None, *, min_confidence: float = 0.5,
                 detect_max_side: int = 1280, tiles: bool = True):
        self.models = models or EmbeddedModels()
        self.min_confidence = min_confidence
        self.detect_max_side = detect_max_side
        self.tiles = tiles

    def unload(self) -> None:
        self.models.unload()

    # -- detection ---------------------------------------------------------------------------

    def detect(self, image: np.ndarray, *, small_faces: bool = True) -> list[Face]:
        """All faces, largest first (see `sort_faces`), each with five points and, when the face mesh
        fits it, the 478 dense landmarks. `small_faces=False`: once the whole-image detectors have found a
        large face, skip the tiled search for small ones (photo preparation: a photo is about its main face)."""
        image = check_rgb_image(image)
        work, scale = _downscale(image, self.detect_max_side)
        candidates = _merge_candidates(self._candidates(work, small_faces) or self._padded_candidates(work))
        faces = []
        for candidate in candidates:
            face = self._refine(image, _rescale_candidate(candidate, 1.0 / scale))
            if face is not None:
                faces.append(face)
        return sort_faces(faces)

    def _candidates(self, work: np.ndarray, small_faces: bool = True) -> list[_Candidate]:
        with self.models.lock:
            found = _run_detector(self.models.face_detector(full_range=True), work, "full_range")
            found += _run_detector(self.models.face_detector(full_range=False), work, "short_range")
            if self.tiles and (small_faces or not _has_large_face(found, work, self.min_confidence)):
                for left, top, tile in _tiles(work):
                    found += _run_detector(self.models.face_detector(full_range=False), tile, "tile",
                                           offset=(left, top))
        return [c for c in found if c.score >= self.min_confidence and box_size(c.box) >= 8]

    def _padded_candidates(self, work: np.ndarray) -> list[_Candidate]:
        """Second chance for tight crops and faces cut by the frame: BlazeFace wants some context around
        a face, so detect again on the image inside a grey border (measured: recovers crops from
        forehead to chin and half faces that the plain pass misses)."""
        pad = max(8, round(max(work.shape[:2]) * PAD_FRACTION))
        padded = cv2.copyMakeBorder(work, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=GREY)
        with self.models.lock:
            found = _run_detector(self.models.face_detector(full_range=False), padded, "padded",
                                  offset=(-pad, -pad))
            found += _run_detector(self.models.face_detector(full_range=True), padded, "padded",
                                   offset=(-pad, -pad))
        return [c for c in found if c.score >= self.min_confidence and box_size(c.box) >= 8]

    def _refine(self, image: np.ndarray, candidate: _Candidate) -> Face | None:
        """Face mesh around the candidate; the mesh doubles as a check on weak detections."""
        height, width = image.shape[:2]
        landmarks = self.mesh_landmarks(image, candidate.box)
        if landmarks is None and candidate.score < max(self.min_confidence, 0.75):
            return None  # a weak detection the face mesh cannot confirm: most likely not a face
        if landmarks is not None:
            points = order_five_points(landmarks[list(MESH_FIVE_POINTS)])
        else:
            points = _five_points_from_keypoints(candidate.keypoints)
        box = clip_box(candidate.box, width, height)
        if box[2] - box[0] < 1 or box[3] - box[1] < 1:
            return None
        return Face(box=box, confidence=round(candidate.score, 4), points=points.astype(np.float32),
                    landmarks=landmarks, source=candidate.source)

    def mesh_landmarks(self, image: np.ndarray, box: Box) -> np.ndarray | None:
        """The 478 face-mesh landmarks (image coordinates) of the face in `box`, or None if none fits."""
        side = max(box_size(box) * 2.0, 8.0)
        cx, cy = box_center(box)
        zoom = MESH_CROP_SIZE / side
        left, top = cx - side / 2.0, cy - side / 2.0
        to_crop = np.array([[zoom, 0.0, -zoom * left], [0.0, zoom, -zoom * top]])
        crop = cv2.warpAffine(image, to_crop, (MESH_CROP_SIZE, MESH_CROP_SIZE), flags=cv2.INTER_AREA,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=GREY)
        with self.models.lock:
            result = self.models.face_mesh().process(crop)
        if not result.multi_face_landmarks:
            return None
        marks = result.multi_face_landmarks[0].landmark
        crop_points = np.array([(m.x, m.y) for m in marks], dtype=np.float64) * MESH_CROP_SIZE
        landmarks = crop_points / zoom + np.array([left, top])
        if not points_in_box(landmarks[list(MESH_FIVE_POINTS)], box, margin=0.25):
            return None  # the mesh locked onto a neighbouring face
        return landmarks.astype(np.float32)

    # -- identity ----------------------------------------------------------------------------

    def embed(self, image: np.ndarray, face: Face) -> np.ndarray:
        """dlib 128-D identity vector (unit length) of `face`."""
        import dlib

        image, face = _upright(check_rgb_image(image), face)
        x0, y0, x1, y1 = (round(v) for v in face.box)
        rectangle = dlib.rectangle(int(x0), int(y0), int(max(x1 - 1, x0)), int(max(y1 - 1, y0)))
        with self.models.lock:
            shape = self.models.shape_predictor()(image, rectangle)
            descriptor = self.models.recognizer().compute_face_descriptor(image, shape)
        return normalize_embedding(np.asarray(descriptor))

    # -- masks -------------------------------------------------------------------------------

    def face_mask(self, image: np.ndarray, face: Face, *, eyes: bool = True, brows: bool = True,
                  lips: bool = True) -> np.ndarray:
        """Face region from the face-mesh outline; `eyes=False`, `brows=False`, `lips=False` cut those
        regions out. Without landmarks (mesh does not fit), an ellipse in the face box."""
        image = check_rgb_image(image)
        shape = image.shape[:2]
        landmarks = face.landmarks if face.landmarks is not None else self.mesh_landmarks(image, face.box)
        if landmarks is None:
            return ellipse_face_mask(shape, face.box)
        regions = self.models.mesh_regions()
        holes = [regions[name] for name, keep in (("left_eye", eyes), ("right_eye", eyes),
                                                   ("left_brow", brows), ("right_brow", brows),
                                                   ("lips", lips)) if not keep]
        return region_mask(shape, landmarks, regions["oval"], holes)

    def person_mask(self, image: np.ndarray) -> np.ndarray:
        """Selfie segmentation of every person in the image (255 foreground, 0 background)."""
        image = check_rgb_image(image)
        height, width = image.shape[:2]
        small, _ = _downscale(image, SEGMENTATION_MAX_SIDE)
        with self.models.lock:
            soft = self.models.selfie_segmentation().process(small).segmentation_mask
        soft = cv2.resize(np.asarray(soft, dtype=np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
        return binarize(soft, 0.5)


def _upright(image: np.ndarray, face: Face) -> tuple[np.ndarray, Face]:
    """dlib's landmark model expects an upright face: when the eye line is tilted more than
    LEVEL_TOLERANCE_DEGREES (a sideways photo, a tilted head), return a levelled region around the face
    and the face in it; otherwise the image and face unchanged."""
    roll = head_roll_degrees(face.points)
    if abs(roll) <= LEVEL_TOLERANCE_DEGREES:
        return image, face
    side = max(8, round(face.size * 2.5))
    cx, cy = box_center(face.box)
    matrix = cv2.getRotationMatrix2D((cx, cy), roll, 1.0)
    matrix[:, 2] += (side / 2.0 - cx, side / 2.0 - cy)
    region = cv2.warpAffine(image, matrix, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return region, face.transformed(matrix)


def _downscale(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """`image` shrunk so its longer side is at most `max_side`, and the scale applied (<= 1)."""
    height, width = image.shape[:2]
    scale = min(1.0, max_side / float(max(height, width)))
    if scale >= 1.0:
        return image, 1.0
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), scale


def _tiles(image: np.ndarray, min_tile: int = 192):
    """Overlapping square tiles half the image's short side wide (a face up to a third of a tile is
    wholly inside at least one tile); nothing for small images."""
    height, width = image.shape[:2]
    side = min(height, width) // 2
    if side < min_tile:
        return
    stride = max(1, side * 2 // 3)
    tops = sorted({*range(0, max(1, height - side), stride), height - side})
    lefts = sorted({*range(0, max(1, width - side), stride), width - side})
    for top in tops:
        for left in lefts:
            yield left, top, np.ascontiguousarray(image[top:top + side, left:left + side])


def _has_large_face(found: list[_Candidate], image: np.ndarray, min_confidence: float) -> bool:
    """A confident face at least a sixth of the image's short side: more than a tile (half the short side)
    holds whole within a third of its width, so the tiled search could only add smaller faces."""
    large = min(image.shape[:2]) / 6.0
    return any(c.score >= max(min_confidence, 0.75) and box_size(c.box) >= large for c in found)


def _run_detector(detector: Any, image: np.ndarray, source: str,
                  offset: tuple[int, int] = (0, 0)) -> list[_Candidate]:
    height, width = image.shape[:2]
    result = detector.process(image)
    found = []
    for detection in result.detections or []:
        relative = detection.location_data.relative_bounding_box
        x0 = relative.xmin * width + offset[0]
        y0 = relative.ymin * height + offset[1]
        box = (x0, y0, x0 + relative.width * width, y0 + relative.height * height)
        keypoints = np.array([(k.x * width + offset[0], k.y * height + offset[1])
                              for k in detection.location_data.relative_keypoints], dtype=np.float64)
        found.append(_Candidate(box=box, score=float(detection.score[0]), keypoints=keypoints, source=source))
    return found


def _merge_candidates(candidates: list[_Candidate]) -> list[_Candidate]:
    """Greedy non-maximum suppression across detectors: the best-scoring box of each face wins."""
    kept: list[_Candidate] = []
    for candidate in sorted(candidates, key=lambda c: -c.score):
        if not any(boxes_overlap_as_same_face(candidate.box, other.box) for other in kept):
            kept.append(candidate)
    return kept


def _rescale_candidate(candidate: _Candidate, factor: float) -> _Candidate:
    if factor == 1.0:
        return candidate
    box = tuple(v * factor for v in candidate.box)
    return _Candidate(box=box, score=candidate.score, keypoints=candidate.keypoints * factor,
                      source=candidate.source)


def _five_points_from_keypoints(keypoints: np.ndarray) -> np.ndarray:
    """Five points from BlazeFace's keypoints (eyes, nose tip, mouth centre): the mouth corners are
    placed on either side of the mouth centre, parallel to the eye line, 0.8 eye distances apart."""
    left_eye, right_eye, nose, mouth = (np.asarray(k, dtype=np.float64) for k in keypoints[:4])
    half_mouth = (right_eye - left_eye) * 0.4
    points = np.stack([left_eye, right_eye, nose, mouth - half_mouth, mouth + half_mouth])
    return order_five_points(points)
