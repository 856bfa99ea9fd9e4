"""OpenPose control images from our own landmarks: mediapipe holistic (body, hands, face) drawn as OpenPose does.

OpenPose facts used here (not code): the COCO-18 body keypoint order from OpenPose's output docs
(`POSE_COCO_BODY_PARTS`: Nose, Neck, RShoulder, ..., REye, LEye, REar, LEar), and the drawing of the
ControlNet 1.1 annotator (lllyasviel/ControlNet-v1-1-nightly, Mikubill/sd-webui-controlnet
`annotator/openpose/util.py`): 17 limbs as filled ellipses 4 px wide, the canvas then dimmed to 60 %,
18 keypoints as 4 px discs in the 18 standard colours; hand bones 2 px lines in rainbow colours with
blue 4 px joints; face points 3 px white dots; all on black. An OpenPose ControlNet was trained on
exactly these images, so the colours and the left/right convention are what it reads.

"Left" and "right" are the person's own, as in OpenPose and mediapipe: for a person facing the
camera the right shoulder is on the image's left.
"""

from __future__ import annotations

import colorsys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from portrait_core.errors import InputImageError
from portrait_core.faces.base import Face
from portrait_core.faces.embedded import check_rgb_image, import_mediapipe
from portrait_core.log import get_logger

log = get_logger("pose")

BODY_KEYPOINTS = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
    "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
    "right_eye", "left_eye", "right_ear", "left_ear",
)
# The limbs OpenPose draws, as pairs of BODY_KEYPOINTS indices; limb i is drawn in KEYPOINT_COLORS[i].
LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12),
    (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)
KEYPOINT_COLORS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
    (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)
LIMB_BRIGHTNESS = 0.6  # limbs end up at 60 % of their colour; keypoints are drawn after, at full colour
# mediapipe's 21 hand landmarks are in OpenPose's hand order (wrist, then four joints per finger).
HAND_BONES = (
    (0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11), (11, 12),
    (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20),
)
HAND_JOINT_COLOR = (0, 0, 255)
FACE_COLOR = (255, 255, 255)
# OpenPose's 70 face points (the 68 of iBUG-300W, then the right and left pupils) as face-mesh
# landmarks; where no single mesh vertex sits on the iBUG point, the mean of two neighbours.
FACE_MESH_POINTS = (
    (127,), (234,), (93,), (132, 58), (58, 172), (136,), (150,), (176,), (152,), (400,), (379,), (365,),
    (397, 288), (361,), (323,), (454,), (356,),                      # jaw, image-left to image-right
    (156,), (70, 63), (105,), (66,), (107, 55),                      # right brow
    (336, 285), (296,), (334,), (293, 300), (383,),                  # left brow
    (168, 6), (197, 195), (5,), (4,), (98,), (97,), (2,), (326,), (327,),  # nose bridge, nostrils
    (33,), (160,), (158,), (133,), (153,), (144,),                   # right eye
    (362,), (385,), (387,), (263,), (373,), (380,),                  # left eye
    (61,), (39,), (37,), (0,), (267,), (269,), (291,), (321,), (314,), (17,), (84,), (91,),  # outer lips
    (78,), (82,), (13,), (312,), (308,), (317,), (14,), (87,),       # inner lips
    (468,), (473,),                                                  # pupils (refined iris centres)
)
# Sizes at a 512 px canvas (the annotator's); they scale with the canvas's short side.
REFERENCE_SIDE = 512
STICK_HALF_WIDTH = 4
KEYPOINT_RADIUS = 4
HAND_LINE_WIDTH = 2
HAND_JOINT_RADIUS = 4
FACE_DOT_RADIUS = 3
DETECT_MAX_SIDE = 1280
MIN_VISIBILITY = 0.5


class NoPersonError(InputImageError):
    """An image given as a pose source shows no person the pose model can find."""


@dataclass(frozen=True, eq=False)
class PoseResult:
    """One person's OpenPose keypoints in pixel coordinates of an image of `size` (width, height).

    `body` is (18, 2) in BODY_KEYPOINTS order, `face` (70, 2) or empty, `hands` maps "left"/"right"
    (the person's) to (21, 2); a point that is not visible is NaN.
    """

    size: tuple[int, int]
    body: np.ndarray
    body_scores: np.ndarray
    face: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    hands: dict[str, np.ndarray] = field(default_factory=dict)

    def point(self, name: str) -> tuple[float, float] | None:
        """The (x, y) of body keypoint `name`, or None when it was not found."""
        x, y = self.body[BODY_KEYPOINTS.index(name)]
        return None if np.isnan(x) else (float(x), float(y))

    @property
    def found(self) -> tuple[str, ...]:
        return tuple(name for name, (x, _) in zip(BODY_KEYPOINTS, self.body, strict=True) if not np.isnan(x))

    def resized(self, size: tuple[int, int]) -> PoseResult:
        """The same pose on a canvas of `size` (each axis scaled on its own, as a resized image)."""
        scale = np.array([size[0] / self.size[0], size[1] / self.size[1]], dtype=np.float32)
        return PoseResult(size=tuple(size), body=self.body * scale, body_scores=self.body_scores,
                          face=self.face * scale, hands={side: hand * scale for side, hand in self.hands.items()})

    def to_openpose_json(self) -> dict:
        """The OpenPose JSON layout (one person; x, y, confidence triples; 0, 0, 0 for a missing point)."""
        def triples(points: np.ndarray, scores: np.ndarray | None = None) -> list[float]:
            flat: list[float] = []
            for index, (x, y) in enumerate(points):
                score = 1.0 if scores is None else float(scores[index])
                flat += [0.0, 0.0, 0.0] if np.isnan(x) else [round(float(x), 2), round(float(y), 2), round(score, 3)]
            return flat

        person = {"pose_keypoints_2d": triples(self.body, self.body_scores),
                  "face_keypoints_2d": triples(self.face) if len(self.face) else [],
                  "hand_left_keypoints_2d": triples(self.hands["left"]) if "left" in self.hands else [],
                  "hand_right_keypoints_2d": triples(self.hands["right"]) if "right" in self.hands else []}
        return {"people": [person], "canvas_width": self.size[0], "canvas_height": self.size[1]}


class PoseModels:
    """Cache of the pose model handle, created on first use; `unload()` frees it.

    mediapipe graphs are not thread-safe, so every use goes through `lock`.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._holistic: Any = None

    def holistic(self) -> Any:
        """mediapipe holistic: pose (the "full" model, the one that ships in the wheel), face mesh with
        irises, and both hands, each cropped from the pose."""
        with self.lock:
            if self._holistic is None:
                log.debug("loading mediapipe holistic")
                self._holistic = import_mediapipe().solutions.holistic.Holistic(
                    static_image_mode=True, model_complexity=1, refine_face_landmarks=True)
            return self._holistic

    def loaded(self) -> list[str]:
        with self.lock:
            return [] if self._holistic is None else ["holistic"]

    def unload(self) -> None:
        with self.lock:
            handle, self._holistic = self._holistic, None
        if handle is not None:
            handle.close()


class PoseExtractor:
    """Finds one person's OpenPose keypoints in an image; models load on the first call."""

    def __init__(self, models: PoseModels | None = None, *, min_visibility: float = MIN_VISIBILITY,
                 detect_max_side: int = DETECT_MAX_SIDE):
        self.models = models or PoseModels()
        self.min_visibility = min_visibility
        self.detect_max_side = detect_max_side

    def unload(self) -> None:
        self.models.unload()

    def extract(self, image: Image.Image | np.ndarray | Path | str, name: str | None = None) -> PoseResult:
        """Body, hands and face keypoints of the person in `image`; NoPersonError names the image if none."""
        pixels, name = _read_image(image, name)
        height, width = pixels.shape[:2]
        with self.models.lock:
            result = self.models.holistic().process(_downscaled(pixels, self.detect_max_side))
        if result.pose_landmarks is None:
            raise NoPersonError(f"no person found in {name}: the pose model sees no body in it; "
                                "use a photo that shows a person's head and shoulders at least")
        body, scores = _body_keypoints(result.pose_landmarks.landmark, (width, height), self.min_visibility)
        if np.isnan(body[:, 0]).all():
            raise NoPersonError(f"no person found in {name}: no body keypoint is visible enough")
        face = _face_points(result.face_landmarks, (width, height))
        hands = {side: _hand_points(landmarks, (width, height))
                 for side, landmarks in (("left", result.left_hand_landmarks), ("right", result.right_hand_landmarks))
                 if landmarks is not None}
        return PoseResult(size=(width, height), body=body, body_scores=scores, face=face, hands=hands)


def extract_pose(image: Image.Image | np.ndarray | Path | str, *, name: str | None = None,
                 extractor: PoseExtractor | None = None) -> PoseResult:
    """The OpenPose keypoints of the person in `image` (a PIL image, RGB array or file path).

    Pass a long-lived `extractor` to keep the model loaded between calls; without one, a temporary
    one is made and unloaded again.
    """
    if extractor is not None:
        return extractor.extract(image, name)
    temporary = PoseExtractor()
    try:
        return temporary.extract(image, name)
    finally:
        temporary.unload()


def _read_image(image: Image.Image | np.ndarray | Path | str, name: str | None) -> tuple[np.ndarray, str]:
    if isinstance(image, (str, Path)):
        from portrait_core.prepare.photos import PhotoLimits, load_photo

        return load_photo(Path(image), PhotoLimits(min_side=16)).pixels, name or Path(image).name
    if isinstance(image, Image.Image):
        from portrait_core.prepare.photos import to_rgb

        return to_rgb(image), name or "image"
    return check_rgb_image(image, name or "image"), name or "image"


def _downscaled(pixels: np.ndarray, max_side: int) -> np.ndarray:
    """mediapipe answers in coordinates relative to the image, so a smaller copy loses nothing but time."""
    import cv2

    height, width = pixels.shape[:2]
    scale = max_side / float(max(height, width))
    if scale >= 1.0:
        return pixels
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)


def _body_keypoints(landmarks, size: tuple[int, int], min_visibility: float) -> tuple[np.ndarray, np.ndarray]:
    """The 18 OpenPose keypoints from mediapipe's 33 pose landmarks (same names, person's left/right);
    the neck, which mediapipe lacks, is the midpoint of the shoulders."""
    pose_landmark = import_mediapipe().solutions.pose.PoseLandmark
    body = np.full((len(BODY_KEYPOINTS), 2), np.nan, dtype=np.float32)
    scores = np.zeros(len(BODY_KEYPOINTS), dtype=np.float32)
    for index, name in enumerate(BODY_KEYPOINTS):
        if name == "neck":
            continue
        mark = landmarks[pose_landmark[name.upper()].value]
        scores[index] = mark.visibility
        point = np.array([mark.x * size[0], mark.y * size[1]], dtype=np.float32)
        if mark.visibility >= min_visibility and _inside(point, size):
            body[index] = point
    shoulders = [BODY_KEYPOINTS.index("right_shoulder"), BODY_KEYPOINTS.index("left_shoulder")]
    neck = BODY_KEYPOINTS.index("neck")
    body[neck] = body[shoulders].mean(axis=0)  # NaN unless both shoulders were found
    scores[neck] = scores[shoulders].min()
    return body, scores


def _inside(point: np.ndarray, size: tuple[int, int]) -> bool:
    return bool(0.0 <= point[0] < size[0] and 0.0 <= point[1] < size[1])


def _face_points(face_landmarks, size: tuple[int, int]) -> np.ndarray:
    if face_landmarks is None:
        return np.zeros((0, 2), dtype=np.float32)
    mesh = np.array([(m.x * size[0], m.y * size[1]) for m in face_landmarks.landmark], dtype=np.float32)
    if len(mesh) <= max(max(indices) for indices in FACE_MESH_POINTS):
        return np.zeros((0, 2), dtype=np.float32)  # a mesh without irises: no pupils to place
    points = np.stack([mesh[list(indices)].mean(axis=0) for indices in FACE_MESH_POINTS])
    outside = np.array([not _inside(point, size) for point in points])
    points[outside] = np.nan
    return points


def _hand_points(hand_landmarks, size: tuple[int, int]) -> np.ndarray:
    points = np.array([(m.x * size[0], m.y * size[1]) for m in hand_landmarks.landmark], dtype=np.float32)
    outside = np.array([not _inside(point, size) for point in points])
    points[outside] = np.nan
    return points


# ---- drawing -------------------------------------------------------------------------------------


def draw_openpose(size: tuple[int, int], pose: PoseResult, *, body: bool = True, hands: bool = True,
                  face: bool = True) -> Image.Image:
    """The pose as an OpenPose control image of `size` (the pose is scaled to it): body, hands, face."""
    if pose.size != tuple(size):
        pose = pose.resized(size)
    canvas = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    scale = min(size) / REFERENCE_SIDE
    if body:
        canvas = _draw_body(canvas, pose.body, scale)
    if hands:
        for hand in pose.hands.values():
            _draw_hand(canvas, hand, scale)
    if face:
        _draw_dots(canvas, pose.face, _scaled(FACE_DOT_RADIUS, scale), FACE_COLOR)
    return Image.fromarray(canvas)


def _scaled(pixels: int, scale: float) -> int:
    return max(1, round(pixels * scale))


def _draw_body(canvas: np.ndarray, keypoints: np.ndarray, scale: float) -> np.ndarray:
    import cv2

    half_width = _scaled(STICK_HALF_WIDTH, scale)
    for (start, end), color in zip(LIMBS, KEYPOINT_COLORS[:len(LIMBS)], strict=True):
        a, b = keypoints[start], keypoints[end]
        if np.isnan(a).any() or np.isnan(b).any():
            continue
        center = (a + b) / 2.0
        half_length = float(np.hypot(*(b - a))) / 2.0
        angle = float(np.degrees(np.arctan2(b[1] - a[1], b[0] - a[0])))
        outline = cv2.ellipse2Poly((round(center[0]), round(center[1])), (round(half_length), half_width),
                                   round(angle), 0, 360, 1)
        cv2.fillConvexPoly(canvas, outline, color)
    canvas = (canvas * LIMB_BRIGHTNESS).astype(np.uint8)
    radius = _scaled(KEYPOINT_RADIUS, scale)
    for point, color in zip(keypoints, KEYPOINT_COLORS, strict=True):
        if not np.isnan(point).any():
            cv2.circle(canvas, (round(point[0]), round(point[1])), radius, color, thickness=-1)
    return canvas


def hand_bone_color(index: int) -> tuple[int, int, int]:
    """Bone `index` of the hand in OpenPose's rainbow: hue index/20 at full saturation and value."""
    red, green, blue = colorsys.hsv_to_rgb(index / len(HAND_BONES), 1.0, 1.0)
    return (int(red * 255), int(green * 255), int(blue * 255))


def _draw_hand(canvas: np.ndarray, hand: np.ndarray, scale: float) -> None:
    import cv2

    width = _scaled(HAND_LINE_WIDTH, scale)
    for index, (start, end) in enumerate(HAND_BONES):
        a, b = hand[start], hand[end]
        if not (np.isnan(a).any() or np.isnan(b).any()):
            cv2.line(canvas, (round(a[0]), round(a[1])), (round(b[0]), round(b[1])), hand_bone_color(index),
                     thickness=width)
    _draw_dots(canvas, hand, _scaled(HAND_JOINT_RADIUS, scale), HAND_JOINT_COLOR)


def _draw_dots(canvas: np.ndarray, points: np.ndarray, radius: int, color: tuple[int, int, int]) -> None:
    import cv2

    for x, y in points:
        if not (np.isnan(x) or np.isnan(y)):
            cv2.circle(canvas, (round(x), round(y)), radius, color, thickness=-1)


# ---- the portrait pipeline's face-only map ---------------------------------------------------------


def face_keypoint_indices() -> list[int]:
    """Face-mesh landmarks on the contours OpenPose's face model marks: oval, brows, eyes, nose, lips."""
    mesh = import_mediapipe().solutions.face_mesh
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
