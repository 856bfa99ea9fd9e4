"""Pure mask functions: face-region polygons from dense landmarks, and fallbacks from the five points.

Masks are uint8 arrays of shape (height, width) holding 0 or 255.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from portrait_core.core.geometry import Box, box_center


def hull_mask(shape: tuple[int, int], points: np.ndarray) -> np.ndarray:
    """The filled convex hull of `points` ((n, 2) pixel coordinates) in a (height, width) mask."""
    mask = np.zeros(shape, dtype=np.uint8)
    if len(points) >= 3:
        hull = cv2.convexHull(np.round(np.asarray(points, dtype=np.float64)).astype(np.int32))
        cv2.fillConvexPoly(mask, hull, 255, lineType=cv2.LINE_8)
    return mask


def region_mask(shape: tuple[int, int], landmarks: np.ndarray, outline: Sequence[int],
                holes: Sequence[Sequence[int]] = (), hole_growth: float = 0.15) -> np.ndarray:
    """Hull of the `outline` landmarks minus the hulls of each `holes` landmark group.

    Each hole is grown by `hole_growth` times its own size so that lashes and lip edges go with it.
    """
    landmarks = np.asarray(landmarks, dtype=np.float64)
    mask = hull_mask(shape, landmarks[list(outline)])
    for hole in holes:
        points = landmarks[list(hole)]
        center = points.mean(axis=0)
        grown = center + (points - center) * (1.0 + 2.0 * hole_growth)
        mask[hull_mask(shape, grown) > 0] = 0
    return mask


def ellipse_face_mask(shape: tuple[int, int], box: Box) -> np.ndarray:
    """An upright ellipse inscribed in the face box: the face mask when no landmarks are available."""
    mask = np.zeros(shape, dtype=np.uint8)
    cx, cy = box_center(box)
    axes = (max(1, round((box[2] - box[0]) / 2)), max(1, round((box[3] - box[1]) / 2)))
    cv2.ellipse(mask, (round(cx), round(cy)), axes, 0.0, 0.0, 360.0, 255, thickness=-1)
    return mask


def box_mask(shape: tuple[int, int], box: Box) -> np.ndarray:
    """255 inside `box` (clipped to the mask), 0 elsewhere."""
    mask = np.zeros(shape, dtype=np.uint8)
    height, width = shape
    x0, y0 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    x1, y1 = min(width, int(np.ceil(box[2]))), min(height, int(np.ceil(box[3])))
    if x1 > x0 and y1 > y0:
        mask[y0:y1, x0:x1] = 255
    return mask


def binarize(soft_mask: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """A float mask in [0, 1] as a 0/255 uint8 mask."""
    return np.where(np.asarray(soft_mask) >= threshold, 255, 0).astype(np.uint8)
