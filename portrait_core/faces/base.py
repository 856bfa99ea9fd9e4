"""The FaceAnalyzer contract every face backend meets, the Face record, and backend selection."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from portrait_core.core.geometry import Box, box_area, box_center, box_size
from portrait_core.errors import EmbeddingMismatchError, InputImageError

if TYPE_CHECKING:
    from portrait_core.models.registry import ModelRegistry

BACKEND_NAMES = ("auto", "embedded", "insightface")


@dataclass(frozen=True, eq=False)
class Face:
    """One face found in an image, in that image's pixel coordinates.

    `box` is `(x0, y0, x1, y1)` clipped to the image; `points` is a float array of shape (5, 2) in the
    order left eye, right eye, nose tip, left mouth corner, right mouth corner (left/right as seen in
    the image, see `faces.geometry`); `landmarks` is the dense landmark set (the 478 face-mesh points)
    when the backend has one, used for region masks; `source` names the detector that found the face.
    """

    box: Box
    confidence: float
    points: np.ndarray
    landmarks: np.ndarray | None = field(default=None, repr=False)
    source: str = ""

    @property
    def size(self) -> float:
        """The larger side of the box in pixels (what the "face too small" rule measures)."""
        return box_size(self.box)

    @property
    def area(self) -> float:
        return box_area(self.box)

    def box_list(self, ndigits: int = 1) -> list[float]:
        """The box as a JSON-friendly list of rounded floats."""
        return [round(float(v), ndigits) for v in self.box]

    def in_crop(self, left: float, top: float, scale: float = 1.0) -> Face:
        """This face in the coordinates of a crop starting at (left, top), resized by `scale`."""
        offset = np.array([left, top], dtype=np.float64)

        def moved(points: np.ndarray) -> np.ndarray:
            return ((np.asarray(points, dtype=np.float64) - offset) * scale).astype(np.float32)

        x0, y0, x1, y1 = self.box
        box = ((x0 - left) * scale, (y0 - top) * scale, (x1 - left) * scale, (y1 - top) * scale)
        landmarks = None if self.landmarks is None else moved(self.landmarks)
        return Face(box=box, confidence=self.confidence, points=moved(self.points), landmarks=landmarks,
                    source=self.source)

    def transformed(self, matrix: np.ndarray) -> Face:
        """This face after a 2x3 similarity transform (rotation, uniform scale, shift) of its image.

        Points and landmarks are mapped exactly; the box keeps its shape, scaled, around the mapped centre.
        """
        matrix = np.asarray(matrix, dtype=np.float64)

        def mapped(points: np.ndarray) -> np.ndarray:
            return (np.asarray(points, dtype=np.float64) @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)

        scale = float(np.hypot(matrix[0, 0], matrix[1, 0]))
        cx, cy = mapped(np.array([box_center(self.box)]))[0]
        half_w, half_h = (self.box[2] - self.box[0]) * scale / 2, (self.box[3] - self.box[1]) * scale / 2
        landmarks = None if self.landmarks is None else mapped(self.landmarks)
        return Face(box=(float(cx - half_w), float(cy - half_h), float(cx + half_w), float(cy + half_h)),
                    confidence=self.confidence, points=mapped(self.points), landmarks=landmarks, source=self.source)


@runtime_checkable
class FaceAnalyzer(Protocol):
    """Everything Portrait Studio knows about faces goes through one of these.

    Images are RGB `uint8` arrays of shape (height, width, 3). Masks are `uint8` arrays of shape
    (height, width) holding 0 or 255. Embeddings are float32 unit vectors; two embeddings are only
    comparable when they come from analyzers with the same `embedding_model`.
    """

    name: str                      # "embedded" or "insightface:<pack>"
    embedding_model: str           # identifies the embedding space, e.g. "dlib_resnet_v1"
    embedding_size: int
    same_person_threshold: float   # cosine similarity at or above which two faces are one person

    def detect(self, image: np.ndarray, *, small_faces: bool = True) -> list[Face]:
        """All faces, sorted by `sort_faces` (largest first). `small_faces=False` lets a backend skip an
        extra search for small faces once it has found a large one."""
        ...

    def embed(self, image: np.ndarray, face: Face) -> np.ndarray:
        """Identity embedding of `face` (a unit vector of length `embedding_size`)."""
        ...

    def face_mask(self, image: np.ndarray, face: Face, *, eyes: bool = True, brows: bool = True,
                  lips: bool = True) -> np.ndarray:
        """The face/skin region of `face`; `eyes=False` etc. cut those regions out of it."""
        ...

    def person_mask(self, image: np.ndarray) -> np.ndarray:
        """Where people are in the image (foreground 255, background 0)."""
        ...

    def unload(self) -> None:
        """Release every loaded model; the next call loads them again."""
        ...


def check_rgb_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Return `image` as a C-contiguous RGB uint8 array, or raise InputImageError saying what is wrong."""
    if not isinstance(image, np.ndarray):
        raise InputImageError(f"{name} must be a numpy array (RGB uint8), got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputImageError(f"{name} must have shape (height, width, 3), got {image.shape}")
    if image.dtype != np.uint8:
        raise InputImageError(f"{name} must be uint8, got {image.dtype}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise InputImageError(f"{name} is empty: shape {image.shape}")
    return np.ascontiguousarray(image)


def sort_faces(faces: Iterable[Face]) -> list[Face]:
    """The documented detection order: larger box area first, then higher confidence, then left to right."""
    return sorted(faces, key=lambda f: (-round(f.area, 3), -f.confidence, f.box[0], f.box[1]))


def normalize_embedding(vector: np.ndarray) -> np.ndarray:
    """`vector` as a float32 unit vector; raises ValueError for a zero or non-finite vector."""
    vector = np.asarray(vector, dtype=np.float64).ravel()
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm == 0.0:
        raise ValueError("cannot normalize a zero or non-finite embedding")
    return (vector / norm).astype(np.float32)


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two embeddings from the same model (1 = identical, 0 = unrelated)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise EmbeddingMismatchError(
            f"cannot compare a {a.size}-D embedding with a {b.size}-D one: they come from different "
            "face models; re-embed both with the same analyzer")
    denominator = float(np.linalg.norm(a) * np.linalg.norm(b))
    if denominator == 0.0:
        raise ValueError("cannot compare a zero embedding")
    return float(np.clip(a @ b / denominator, -1.0, 1.0))


def available_backends(registry: ModelRegistry | None = None) -> list[str]:
    """Backends usable right now without downloading: "embedded" always, insightface packs when present."""
    from portrait_core.faces.insightface import find_installed_packs

    return ["embedded"] + [f"insightface:{pack}" for pack in find_installed_packs(registry)]


def get_face_analyzer(name: str = "auto", *, registry: ModelRegistry | None = None) -> FaceAnalyzer:
    """A face analyzer by backend name; models load on first use, not here.

    "embedded": mediapipe + dlib models shipped in PyPI packages (always available, offline).
    "insightface" or "insightface:<pack>": an insightface pack (antelopev2, buffalo_l) found in the
    models folders; raises ModelUnavailableError naming the missing files and where to put them.
    "auto": the insightface pack when one is installed, else the embedded backend.
    """
    from portrait_core.faces.embedded import EmbeddedFaceAnalyzer
    from portrait_core.faces.insightface import InsightFaceAnalyzer, find_installed_packs

    backend, _, pack = name.partition(":")
    if backend == "embedded" and not pack:
        return EmbeddedFaceAnalyzer()
    if backend == "insightface":
        return InsightFaceAnalyzer.from_registry(pack or None, registry=registry)
    if backend == "auto" and not pack:
        installed = find_installed_packs(registry)
        if installed:
            return InsightFaceAnalyzer.from_registry(installed[0], registry=registry)
        return EmbeddedFaceAnalyzer()
    raise ValueError(f"unknown face backend {name!r}; use one of {', '.join(BACKEND_NAMES)} "
                     "or insightface:<pack>")
