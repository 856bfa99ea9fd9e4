"""Five-point face alignment: the similarity transform onto a standard face layout, and the aligned chip."""

from __future__ import annotations

import cv2
import numpy as np

# Where the five points (left eye, right eye, nose tip, left and right mouth corner) of an upright,
# frontal face sit in the standard 112x112 ArcFace crop.
ARCFACE_TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                                 [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)


def alignment_template(size: int, face_fraction: float = 1.0) -> np.ndarray:
    """The five-point layout for a `size` x `size` chip; `face_fraction` < 1 zooms out around the
    centre so that hair, ears and chin fit in (1.0 is the tight ArcFace crop)."""
    if size < 8:
        raise ValueError(f"chip size must be at least 8 px, got {size}")
    if not 0.1 <= face_fraction <= 1.0:
        raise ValueError(f"face_fraction must be in [0.1, 1], got {face_fraction}")
    unit = ARCFACE_TEMPLATE_112 / 112.0
    return ((unit - 0.5) * face_fraction + 0.5) * size


def alignment_matrix(points: np.ndarray, size: int, face_fraction: float = 1.0) -> np.ndarray:
    """2x3 similarity transform (rotation, uniform scale, shift) taking `points` onto the template."""
    source = np.asarray(points, dtype=np.float64).reshape(5, 2)
    matrix, _ = cv2.estimateAffinePartial2D(source, alignment_template(size, face_fraction), method=cv2.LMEDS)
    if matrix is None or not np.all(np.isfinite(matrix)):
        raise ValueError("cannot align a face whose five points are degenerate (coincident or collinear)")
    return matrix


def align_face(image: np.ndarray, points: np.ndarray, size: int = 512,
               face_fraction: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """The aligned `size` x `size` face chip and the 2x3 matrix that maps image to chip coordinates."""
    matrix = alignment_matrix(points, size, face_fraction)
    chip = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    return chip, matrix


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to (n, 2) points."""
    points = np.asarray(points, dtype=np.float64)
    return points @ np.asarray(matrix, dtype=np.float64)[:, :2].T + np.asarray(matrix, dtype=np.float64)[:, 2]
