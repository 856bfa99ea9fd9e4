"""OpenPose-style control images drawn from our own landmarks (no annotator weights needed)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from portrait_core.faces.base import Face


def face_keypoint_indices() -> list[int]:
    """Face-mesh landmarks on the contours OpenPose's face model marks: oval, brows, eyes, nose, lips."""
    import mediapipe as mp

    mesh = mp.solutions.face_mesh
    contours = (mesh.FACEMESH_FACE_OVAL, mesh.FACEMESH_LEFT_EYEBROW, mesh.FACEMESH_RIGHT_EYEBROW,
                mesh.FACEMESH_LEFT_EYE, mesh.FACEMESH_RIGHT_EYE, mesh.FACEMESH_LIPS, mesh.FACEMESH_NOSE)
    return sorted({index for connections in contours for edge in connections for index in edge})


def face_pose_map(size: tuple[int, int], face: Face) -> Image.Image:
    """White dots on black where the face's keypoints are, as OpenPose draws a face.

    Uses the dense landmarks when the backend has them, else the five points.
    """
    canvas = Image.new("RGB", size, "black")
    draw = ImageDraw.Draw(canvas)
    points = face.points
    if face.landmarks is not None and len(face.landmarks) >= 468:
        points = np.asarray(face.landmarks)[face_keypoint_indices()]
    radius = max(1.0, min(size) / 256)
    for x, y in np.asarray(points, dtype=float)[:, :2]:
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill="white")
    return canvas
