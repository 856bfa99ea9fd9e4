"""The OpenPose extractor on real photos: keypoints where the person is, sides right, OpenPose's colours."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from portrait_core.errors import InputImageError
from portrait_core.generate.pose import (
    BODY_KEYPOINTS,
    HAND_BONES,
    HAND_JOINT_COLOR,
    KEYPOINT_COLORS,
    LIMB_BRIGHTNESS,
    LIMBS,
    NoPersonError,
    PoseExtractor,
    PoseResult,
    draw_openpose,
    extract_pose,
    hand_bone_color,
)

# What a person standing with crossed arms, cut at the knees, shows (obama3.jpg).
FULL_FIGURE_KEYPOINTS = {"nose", "neck", "right_shoulder", "left_shoulder", "right_elbow", "left_elbow",
                         "right_wrist", "left_wrist", "right_hip", "left_hip", "right_eye", "left_eye"}
PORTRAIT_KEYPOINTS = {"nose", "neck", "right_shoulder", "left_shoulder", "right_eye", "left_eye"}


@pytest.fixture(scope="module")
def extractor():
    extractor = PoseExtractor()
    yield extractor
    extractor.unload()


@pytest.fixture(scope="module")
def full_figure(shared_faces_dir):
    from portrait_core.prepare.photos import load_photo

    return load_photo(shared_faces_dir / "obama3.jpg").pixels


@pytest.fixture(scope="module")
def full_figure_pose(extractor, full_figure):
    return extractor.extract(full_figure, "obama3.jpg")


@pytest.fixture(scope="module")
def astronaut_pose(extractor, astronaut):
    return extractor.extract(astronaut, "astronaut")


@pytest.fixture(scope="module")
def person_mask():
    from portrait_core.faces import get_face_analyzer

    analyzer = get_face_analyzer("embedded")

    def mask_of(pixels: np.ndarray) -> np.ndarray:
        mask = analyzer.person_mask(pixels)
        # Joints sit on the body's outline (shoulders, ears); allow 2 % of the image's size around it.
        margin = max(3, round(0.02 * max(pixels.shape[:2])))
        return cv2.dilate(mask, np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)) > 0

    yield mask_of
    analyzer.unload()


def _found_points(pose: PoseResult) -> dict[str, tuple[float, float]]:
    return {name: pose.point(name) for name in pose.found}


def _assert_inside(mask: np.ndarray, points, what: str) -> None:
    for name, (x, y) in points:
        assert mask[int(y), int(x)], f"{what} {name} at ({x:.0f}, {y:.0f}) is outside the person"


def test_full_figure_finds_the_visible_body_keypoints_inside_the_person(full_figure_pose, full_figure, person_mask):
    found = _found_points(full_figure_pose)
    assert set(found) >= FULL_FIGURE_KEYPOINTS, f"missing {FULL_FIGURE_KEYPOINTS - set(found)}"
    assert not {"right_ankle", "left_ankle"} & set(found), "the ankles are below the frame, yet were found"
    _assert_inside(person_mask(full_figure), found.items(), "keypoint")


def test_body_keypoints_are_anatomically_ordered(full_figure_pose):
    point = full_figure_pose.point
    assert point("nose")[1] < point("neck")[1] < point("right_hip")[1] < point("right_knee")[1]
    neck = np.array(point("neck"))
    assert np.allclose(neck, (np.array(point("right_shoulder")) + np.array(point("left_shoulder"))) / 2)


@pytest.mark.parametrize("pose_name", ["full_figure_pose", "astronaut_pose"])
def test_left_and_right_are_the_persons_own(request, pose_name):
    pose = request.getfixturevalue(pose_name)
    for part in ("shoulder", "eye", "ear"):
        right, left = pose.point(f"right_{part}"), pose.point(f"left_{part}")
        assert right[0] < left[0], f"the person's right {part} should be on the image's left (facing the camera)"
    face = pose.face
    assert face[36, 0] < face[45, 0], "face point 36 (right eye corner) should be left of 45"
    assert face[68, 0] < face[69, 0], "the right pupil (68) should be left of the left pupil (69)"


def test_portrait_finds_head_and_shoulders_inside_the_person(astronaut_pose, astronaut, person_mask):
    pixels = np.asarray(astronaut)
    found = _found_points(astronaut_pose)
    assert set(found) >= PORTRAIT_KEYPOINTS, f"missing {PORTRAIT_KEYPOINTS - set(found)}"
    _assert_inside(person_mask(pixels), found.items(), "keypoint")


def test_face_points_cover_the_face(astronaut_pose, astronaut, person_mask):
    face = astronaut_pose.face
    assert face.shape == (70, 2) and not np.isnan(face).any()
    _assert_inside(person_mask(np.asarray(astronaut)), [(str(i), p) for i, p in enumerate(face)], "face point")
    nose, left_ear, right_ear = (np.array(astronaut_pose.point(n)) for n in ("nose", "left_ear", "right_ear"))
    head_width = left_ear[0] - right_ear[0]
    assert np.all(np.hypot(*(face - nose).T) < head_width), "a face point lies farther from the nose than a head"
    chin, brow = face[8], face[19]
    assert brow[1] < nose[1] < chin[1]


def test_drawn_keypoints_have_openpose_colours(full_figure_pose):
    size = (448, 728)  # a smaller canvas than the photo: the pose is scaled to it
    canvas = np.asarray(draw_openpose(size, full_figure_pose, hands=False, face=False))
    pose = full_figure_pose.resized(size)
    radius = max(1, round(4 * min(size) / 512))
    for index, name in enumerate(BODY_KEYPOINTS):
        if name not in pose.found:
            continue
        x, y = (round(v) for v in pose.point(name))
        others = [pose.point(other) for other in pose.found[pose.found.index(name) + 1:]]
        if any(np.hypot(x - ox, y - oy) <= 2 * radius for ox, oy in others):
            continue  # a later keypoint's disc covers this one
        assert tuple(canvas[y, x]) == KEYPOINT_COLORS[index], f"{name} drawn in the wrong colour"


def test_drawn_limbs_are_dimmed_limb_colours_on_black(full_figure_pose):
    size = full_figure_pose.size
    canvas = np.asarray(draw_openpose(size, full_figure_pose, hands=False, face=False))
    for limb_index in (0, 1):  # neck to right shoulder (red), neck to left shoulder (orange)
        start, end = LIMBS[limb_index]
        middle = (full_figure_pose.body[start] + full_figure_pose.body[end]) / 2
        expected = tuple(int(c * LIMB_BRIGHTNESS) for c in KEYPOINT_COLORS[limb_index])
        assert tuple(canvas[round(middle[1]), round(middle[0])]) == expected
    assert (canvas.max(axis=2) == 0).mean() > 0.9, "the background should be black"
    assert tuple(canvas[0, 0]) == (0, 0, 0)


def test_face_is_drawn_as_white_dots(astronaut_pose):
    canvas = np.asarray(draw_openpose((512, 512), astronaut_pose, body=False, hands=False))
    for x, y in astronaut_pose.face:
        assert tuple(canvas[round(y), round(x)]) == (255, 255, 255)
    lit = canvas.max(axis=2) > 0
    assert np.array_equal(canvas[lit].min(axis=1), canvas[lit].max(axis=1)), "face dots must be grey/white only"


def test_visible_hand_is_found_at_the_wrist(extractor, shared_faces_dir):
    # obama.jpg: arms crossed, his right hand resting on his left arm, fingers visible.
    pose = extractor.extract(shared_faces_dir / "obama.jpg")
    assert "right" in pose.hands
    hand_wrist = pose.hands["right"][0]
    body_wrist = np.array(pose.point("right_wrist"))
    assert np.hypot(*(hand_wrist - body_wrist)) < 0.1 * pose.size[1], "the hand is not at the right wrist"


def test_hands_are_drawn_as_rainbow_bones_with_blue_joints():
    body = np.full((18, 2), np.nan, np.float32)
    hand = np.array([(100 + 20 * (i % 5), 100 + 30 * (i // 5)) for i in range(21)], np.float32)
    pose = PoseResult(size=(256, 256), body=body, body_scores=np.zeros(18), hands={"left": hand})
    canvas = np.asarray(draw_openpose((256, 256), pose))
    for x, y in hand:
        assert tuple(canvas[int(y), int(x)]) == HAND_JOINT_COLOR
    assert hand_bone_color(0) == (255, 0, 0) and len(HAND_BONES) == 20
    assert hand_bone_color(10)[2] > 200 and hand_bone_color(10)[0] == 0, "bone 10 is cyan-blue (hue 0.5)"


def test_openpose_json_layout(full_figure_pose):
    document = full_figure_pose.to_openpose_json()
    person = document["people"][0]
    assert len(person["pose_keypoints_2d"]) == 18 * 3 and len(person["face_keypoints_2d"]) == 70 * 3
    assert person["pose_keypoints_2d"][10 * 3: 11 * 3] == [0.0, 0.0, 0.0], "right ankle is missing: zeros"
    assert document["canvas_width"] == full_figure_pose.size[0]


def test_no_person_raises_a_clear_error_naming_the_image(extractor, tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (384, 384, 3), dtype=np.uint8)
    with pytest.raises(NoPersonError, match=r"no person found in noise\.png"):
        extractor.extract(noise, "noise.png")
    wall = tmp_path / "wall.jpg"
    Image.new("RGB", (512, 384), (205, 195, 170)).save(wall)
    with pytest.raises(NoPersonError, match=r"wall\.jpg"):
        extractor.extract(wall)
    assert issubclass(NoPersonError, InputImageError)


def test_models_load_lazily_and_unload(astronaut):
    extractor = PoseExtractor()
    assert extractor.models.loaded() == []
    extractor.extract(astronaut)
    assert extractor.models.loaded() == ["holistic"]
    extractor.unload()
    assert extractor.models.loaded() == []
    assert "nose" in extract_pose(astronaut).found  # one-shot use loads and frees its own models
