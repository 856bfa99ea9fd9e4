"""Pure geometry for faces: boxes, crop boxes, five-point ordering and frontalness.

Conventions used everywhere in `portrait_core.faces`:

* Coordinates are continuous pixel coordinates: pixel column `i` covers `[i, i + 1)`, so a horizontal
  flip of an image `width` pixels wide maps `x` to `width - x`.
* A box is `(x0, y0, x1, y1)` with `x0 <= x1` and `y0 <= y1`.
* The five points are, in this order: left eye, right eye, nose tip, left mouth corner, right mouth
  corner, where *left* and *right* are as seen in the image for an upright face (the person's right
  eye is the image-left eye). This is the order insightface and ArcFace alignment use.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Box = tuple[float, float, float, float]

LEFT_EYE, RIGHT_EYE, NOSE_TIP, LEFT_MOUTH, RIGHT_MOUTH = range(5)
# Eye-line tilt up to which a face counts as level (no straightening before embedding or cropping).
LEVEL_TOLERANCE_DEGREES = 10.0
# How much of the frontal score a fully sideways (90 degrees or more) eye line costs.
ROLL_PENALTY = 0.25
# Index permutation that swaps left and right in a five-point array.
MIRROR_ORDER = (RIGHT_EYE, LEFT_EYE, NOSE_TIP, RIGHT_MOUTH, LEFT_MOUTH)


def box_size(box: Box) -> float:
    """The larger side of a box, in pixels: the face size the training thresholds refer to."""
    return float(max(box[2] - box[0], box[3] - box[1]))


def box_center(box: Box) -> tuple[float, float]:
    return (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0


def box_area(box: Box) -> float:
    return float(max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1]))


def clip_box(box: Box, width: int, height: int) -> Box:
    """The part of `box` inside a `width` x `height` image (possibly empty: zero width or height)."""
    x0 = min(max(box[0], 0.0), float(width))
    y0 = min(max(box[1], 0.0), float(height))
    x1 = min(max(box[2], x0), float(width))
    y1 = min(max(box[3], y0), float(height))
    return float(x0), float(y0), float(x1), float(y1)


def scale_box(box: Box, scale_x: float, scale_y: float | None = None, shift_y: float = 0.0) -> Box:
    """`box` scaled about its centre; `shift_y` moves the centre down by that fraction of the box height."""
    scale_y = scale_x if scale_y is None else scale_y
    cx, cy = box_center(box)
    cy += shift_y * (box[3] - box[1])
    half_w = (box[2] - box[0]) * scale_x / 2.0
    half_h = (box[3] - box[1]) * scale_y / 2.0
    return cx - half_w, cy - half_h, cx + half_w, cy + half_h


def intersection_area(a: Box, b: Box) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    return float(max(0.0, width) * max(0.0, height))


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (0 when either is empty)."""
    inter = intersection_area(a, b)
    union = box_area(a) + box_area(b) - inter
    return inter / union if union > 0 else 0.0


def crop_box(face_box: Box, width: int, height: int, scale: float = 3.0) -> tuple[int, int, int, int]:
    """Integer crop around a face: the face box scaled `scale` times about its centre, clipped to the image.

    The result always contains the (clipped) face box and is at least one pixel wide and high, so it can be
    used directly as `image[y0:y1, x0:x1]`.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if scale < 1.0:
        raise ValueError(f"crop scale must be at least 1 (the face itself), got {scale}")
    visible = clip_box(face_box, width, height)
    x0, y0, x1, y1 = clip_box(scale_box(face_box, scale), width, height)
    # Scaling about the centre can round a hair inside the face box; the crop must still contain it.
    x0, y0, x1, y1 = min(x0, visible[0]), min(y0, visible[1]), max(x1, visible[2]), max(y1, visible[3])
    left, top = min(math.floor(x0), width - 1), min(math.floor(y0), height - 1)
    right, bottom = max(math.ceil(x1), left + 1), max(math.ceil(y1), top + 1)
    return int(left), int(top), int(min(right, width)), int(min(bottom, height))


def square_crop_box(face_box: Box, width: int, height: int, scale: float = 3.0) -> tuple[int, int, int, int]:
    """Integer square crop centred on a face, `scale` times the face size wide, moved (not clipped) to
    lie inside the image; smaller only when the image itself is smaller than that.

    Square crops keep the face in frame when a trainer centre-crops its images to squares.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if scale < 1.0:
        raise ValueError(f"crop scale must be at least 1 (the face itself), got {scale}")
    side = max(1, min(math.floor(box_size(face_box) * scale), width, height))
    cx, cy = box_center(face_box)
    left = min(max(round(cx - side / 2.0), 0), width - side)
    top = min(max(round(cy - side / 2.0), 0), height - side)
    return int(left), int(top), int(left + side), int(top + side)


def flip_points_horizontally(points: np.ndarray, width: float) -> np.ndarray:
    """The points' positions in the mirror image (x -> width - x); the order of the rows is unchanged."""
    flipped = np.array(points, dtype=np.float64, copy=True)
    flipped[:, 0] = width - flipped[:, 0]
    return flipped


def face_axes(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors (right, down) of a face, from its eye and mouth midpoints.

    `down` points from between the eyes to between the mouth corners; `right` is `down` turned a
    quarter turn, so it is the image's +x axis for an upright face whatever order each pair is in.
    """
    points = np.asarray(points, dtype=np.float64)
    eye_mid = (points[LEFT_EYE] + points[RIGHT_EYE]) / 2.0
    mouth_mid = (points[LEFT_MOUTH] + points[RIGHT_MOUTH]) / 2.0
    down = mouth_mid - eye_mid
    norm = float(np.hypot(*down))
    if norm < 1e-9:
        return np.array([1.0, 0.0]), np.array([0.0, 1.0])
    down = down / norm
    return np.array([down[1], -down[0]]), down


def order_five_points(points: np.ndarray) -> np.ndarray:
    """Five points in the canonical order (see module docstring), whatever order each pair came in.

    The eyes (rows 0-1) and mouth corners (rows 3-4) are each put left-then-right along the face's own
    horizontal axis, so the order is right for tilted and upside-down faces too.
    """
    points = np.asarray(points, dtype=np.float64)
    if points.shape != (5, 2):
        raise ValueError(f"five points must have shape (5, 2), got {points.shape}")
    right, _ = face_axes(points)
    ordered = points.copy()
    for first, second in ((LEFT_EYE, RIGHT_EYE), (LEFT_MOUTH, RIGHT_MOUTH)):
        if float(points[first] @ right) > float(points[second] @ right):
            ordered[first], ordered[second] = points[second], points[first]
    return ordered


def head_roll_degrees(points: np.ndarray) -> float:
    """Tilt of the eye line from horizontal, in degrees (positive: the right eye is lower)."""
    points = np.asarray(points, dtype=np.float64)
    dx, dy = points[RIGHT_EYE] - points[LEFT_EYE]
    return math.degrees(math.atan2(dy, dx))


def yaw_ratio(points: np.ndarray) -> float:
    """Sideways offset of the nose tip from the eye/mouth centre line, in half eye distances.

    0 for a face looking at the camera; about 0.5 at a three-quarter view; 1 or more in profile.
    The sign says which way the head is turned (positive: the nose points to the image right).
    """
    points = order_five_points(points)
    right, _ = face_axes(points)
    eye_mid = (points[LEFT_EYE] + points[RIGHT_EYE]) / 2.0
    mouth_mid = (points[LEFT_MOUTH] + points[RIGHT_MOUTH]) / 2.0
    center = (eye_mid + mouth_mid) / 2.0
    half_eye_distance = abs(float((points[RIGHT_EYE] - points[LEFT_EYE]) @ right)) / 2.0
    offset = float((points[NOSE_TIP] - center) @ right)
    if half_eye_distance < 1e-9:
        return math.copysign(math.inf, offset) if offset else math.inf
    return offset / half_eye_distance


def frontal_score(points: np.ndarray) -> float:
    """How squarely a face looks at the camera, from 0 (profile) to 1 (frontal, level).

    The product of a yaw term `1 - |yaw_ratio|` (clipped to [0, 1]) and a roll term that falls
    linearly from 1 (level eyes) to `1 - ROLL_PENALTY` at 90 degrees or more of tilt. Roll costs little
    because a tilted or sideways face is straightened when it is cropped; turning away cannot be undone.
    Mirror images score the same.
    """
    yaw_term = max(0.0, 1.0 - min(1.0, abs(yaw_ratio(points))))
    roll = abs(head_roll_degrees(order_five_points(points)))
    roll_term = 1.0 - ROLL_PENALTY * min(roll, 90.0) / 90.0
    return float(yaw_term * roll_term)


def points_in_box(points: np.ndarray, box: Box, margin: float = 0.0) -> bool:
    """True when every point lies inside `box` grown by `margin` times its size on each side."""
    points = np.asarray(points, dtype=np.float64)
    grow_x = (box[2] - box[0]) * margin
    grow_y = (box[3] - box[1]) * margin
    inside_x = (points[:, 0] >= box[0] - grow_x) & (points[:, 0] <= box[2] + grow_x)
    inside_y = (points[:, 1] >= box[1] - grow_y) & (points[:, 1] <= box[3] + grow_y)
    return bool(np.all(inside_x & inside_y))


def boxes_overlap_as_same_face(a: Box, b: Box, iou_threshold: float = 0.3) -> bool:
    """True when two detections are the same face: enough overlap, or one mostly inside the other."""
    if box_iou(a, b) >= iou_threshold:
        return True
    smaller = min(box_area(a), box_area(b))
    return smaller > 0 and intersection_area(a, b) / smaller >= 0.7


def bounding_box(points: Sequence[Sequence[float]] | np.ndarray) -> Box:
    points = np.asarray(points, dtype=np.float64)
    return (float(points[:, 0].min()), float(points[:, 1].min()),
            float(points[:, 0].max()), float(points[:, 1].max()))
