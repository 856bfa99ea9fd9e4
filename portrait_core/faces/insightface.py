"""The insightface backend: an SCRFD detector and an ArcFace identity model from an insightface pack.

A pack (antelopev2 or buffalo_l) is used only when its detector and recognizer files are in a models
folder the registry searches (e.g. `<models>/insightface/buffalo_l/det_10g.onnx`); it is never
downloaded behind the user's back. Masks come from the embedded backend's face mesh and selfie
segmentation (there is no face-parsing model in the packs).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from portrait_core.core.geometry import clip_box, order_five_points
from portrait_core.errors import ModelUnavailableError
from portrait_core.faces.base import Face, check_rgb_image, normalize_embedding, sort_faces
from portrait_core.faces.embedded import EmbeddedFaceAnalyzer
from portrait_core.log import get_logger
from portrait_core.models.registry import ModelRegistry, default_registry

log = get_logger("faces")


@dataclass(frozen=True)
class InsightFacePack:
    """Registry names of a pack's detector and recognizer."""

    name: str
    detector: str
    recognizer: str


PACKS: dict[str, InsightFacePack] = {
    "antelopev2": InsightFacePack("antelopev2", "insightface/antelopev2/scrfd_10g_bnkps",
                                  "insightface/antelopev2/glintr100"),
    "buffalo_l": InsightFacePack("buffalo_l", "insightface/buffalo_l/det_10g", "insightface/buffalo_l/w600k_r50"),
}
# antelopev2's R100 recognizer is the stronger of the two, so it wins when both are installed.
PACK_PREFERENCE = ("antelopev2", "buffalo_l")


def find_installed_packs(registry: ModelRegistry | None = None) -> list[str]:
    """Packs whose detector and recognizer are both on disk, in order of preference."""
    registry = registry or default_registry()
    return [name for name in PACK_PREFERENCE
            if name in PACKS and _pack_registered(registry, PACKS[name])
            and not registry.missing([PACKS[name].detector, PACKS[name].recognizer])]


def _pack_registered(registry: ModelRegistry, pack: InsightFacePack) -> bool:
    names = set(registry.names())
    return pack.detector in names and pack.recognizer in names


def _missing_pack_message(registry: ModelRegistry, packs: list[InsightFacePack]) -> str:
    if not packs:
        return "the insightface backend needs a model pack, and the model registry lists none"
    lines = []
    for pack in packs:
        missing = [registry.expected_path(model.name) for model in
                   registry.missing([pack.detector, pack.recognizer])]
        lines.append(f"{pack.name}: missing {', '.join(str(p) for p in missing)}")
    return ("the insightface backend needs a model pack, and none is complete. "
            + "; ".join(lines)
            + ". Copy the pack's .onnx files into that folder (the whole pack folder from "
              "~/.insightface/models works too), or use the embedded backend.")


class InsightFaceAnalyzer:
    """FaceAnalyzer on an insightface SCRFD detector + ArcFace recognizer (ONNX, CPU or CUDA)."""

    # ArcFace cosine similarity: the same person typically scores 0.4-0.8, different people below 0.2.
    same_person_threshold = 0.30

    def __init__(self, detector_path: Path, recognizer_path: Path, *, pack: str = "custom",
                 det_size: int = 640, det_threshold: float = 0.5, masks: EmbeddedFaceAnalyzer | None = None):
        self.detector_path = Path(detector_path)
        self.recognizer_path = Path(recognizer_path)
        self.pack = pack
        self.name = f"insightface:{pack}"
        self.embedding_model = f"insightface/{pack}/{self.recognizer_path.stem}"
        self.embedding_size = 512  # updated from the model when it loads
        self.det_size = det_size
        self.det_threshold = det_threshold
        self._masks = masks or EmbeddedFaceAnalyzer()
        self._lock = threading.RLock()
        self._detector: Any = None
        self._recognizer: Any = None

    @classmethod
    def from_registry(cls, pack: str | None = None, *, registry: ModelRegistry | None = None,
                      download: bool = False, **options: Any) -> InsightFaceAnalyzer:
        """The analyzer for `pack` (default: the preferred installed pack); raises ModelUnavailableError
        naming the missing files and where to put them. `download=True` fetches files that have a
        pinned SHA-256 (buffalo_l) when not offline."""
        registry = registry or default_registry()
        if pack is not None and pack not in PACKS:
            raise ValueError(f"unknown insightface pack {pack!r}; known packs: {', '.join(PACKS)}")
        wanted = [PACKS[pack]] if pack else [PACKS[name] for name in PACK_PREFERENCE]
        wanted = [candidate for candidate in wanted if _pack_registered(registry, candidate)]
        for candidate in wanted:
            names = [candidate.detector, candidate.recognizer]
            installed = not registry.missing(names)
            if installed or (download and all(registry.can_download(m.name) for m in registry.missing(names))):
                detector, recognizer = (registry.resolve(n, download=download) for n in names)
                return cls(detector, recognizer, pack=candidate.name, **options)
        raise ModelUnavailableError(_missing_pack_message(registry, wanted))

    # -- model handles -------------------------------------------------------------------------

    def _models(self) -> tuple[Any, Any]:
        with self._lock:
            if self._detector is None or self._recognizer is None:
                self._detector, self._recognizer = self._load()
            return self._detector, self._recognizer

    def _load(self) -> tuple[Any, Any]:
        from insightface.model_zoo import get_model
        from insightface.model_zoo.arcface_onnx import ArcFaceONNX
        from insightface.model_zoo.scrfd import SCRFD

        providers = _onnx_providers()
        detector = get_model(str(self.detector_path), providers=providers)
        if not isinstance(detector, SCRFD):
            raise ModelUnavailableError(f"{self.detector_path} is not an SCRFD face detector "
                                        f"(insightface read it as {type(detector).__name__})")
        detector.prepare(ctx_id=-1, input_size=(self.det_size, self.det_size), det_thresh=self.det_threshold)
        recognizer = get_model(str(self.recognizer_path), providers=providers)
        if not isinstance(recognizer, ArcFaceONNX):
            raise ModelUnavailableError(f"{self.recognizer_path} is not an ArcFace identity model "
                                        f"(insightface read it as {type(recognizer).__name__})")
        self.embedding_size = int(recognizer.output_shape[-1])
        log.info("loaded insightface %s: %s, %s", self.pack, self.detector_path.name, self.recognizer_path.name)
        return detector, recognizer

    def unload(self) -> None:
        with self._lock:
            self._detector = self._recognizer = None
        self._masks.unload()

    # -- FaceAnalyzer ----------------------------------------------------------------------------

    def detect(self, image: np.ndarray, *, small_faces: bool = True) -> list[Face]:
        """All faces SCRFD finds, largest first (see `sort_faces`); one pass finds small faces too, so
        `small_faces` changes nothing here."""
        image = check_rgb_image(image)
        detector, _ = self._models()
        height, width = image.shape[:2]
        with self._lock:
            boxes, keypoints = detector.detect(np.ascontiguousarray(image[:, :, ::-1]),
                                               input_size=(self.det_size, self.det_size))
        faces = []
        for index, row in enumerate(boxes):
            box = clip_box(tuple(float(v) for v in row[:4]), width, height)
            if box[2] - box[0] < 1 or box[3] - box[1] < 1:
                continue
            # A detector without keypoints gets the five points of a frontal face in its box.
            points = order_five_points(keypoints[index]) if keypoints is not None else _points_in_box(box)
            faces.append(Face(box=box, confidence=round(float(row[4]), 4), points=points.astype(np.float32),
                              source=f"insightface:{self.detector_path.stem}"))
        return sort_faces(faces)

    def embed(self, image: np.ndarray, face: Face) -> np.ndarray:
        """ArcFace embedding (unit vector) of the face aligned by its five points."""
        from insightface.utils import face_align

        image = check_rgb_image(image)
        _, recognizer = self._models()
        size = int(recognizer.input_size[0])
        aligned = face_align.norm_crop(np.ascontiguousarray(image[:, :, ::-1]),
                                       landmark=np.asarray(face.points, dtype=np.float32), image_size=size)
        with self._lock:
            feature = recognizer.get_feat(aligned)
        return normalize_embedding(np.asarray(feature).ravel())

    def face_mask(self, image: np.ndarray, face: Face, *, eyes: bool = True, brows: bool = True,
                  lips: bool = True) -> np.ndarray:
        return self._masks.face_mask(image, face, eyes=eyes, brows=brows, lips=lips)

    def person_mask(self, image: np.ndarray) -> np.ndarray:
        return self._masks.person_mask(image)


def _onnx_providers() -> list[str]:
    import onnxruntime

    available = set(onnxruntime.get_available_providers())
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available] or \
        ["CPUExecutionProvider"]


def _points_in_box(box: tuple[float, float, float, float]) -> np.ndarray:
    """Where the five points of a frontal face sit in its box (fractions of the box)."""
    fractions = np.array([(0.33, 0.4), (0.67, 0.4), (0.5, 0.58), (0.37, 0.77), (0.63, 0.77)])
    origin = np.array(box[:2])
    return origin + fractions * np.array([box[2] - box[0], box[3] - box[1]])
