"""Property tests for the pure face geometry: crop boxes, five-point ordering, frontalness."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portrait_core.core.align import align_face, alignment_template, transform_points
from portrait_core.core.geometry import (
    MIRROR_ORDER,
    box_iou,
    box_size,
    clip_box,
    crop_box,
    flip_points_horizontally,
    frontal_score,
    head_roll_degrees,
    order_five_points,
    square_crop_box,
    yaw_ratio,
)
from portrait_core.faces.base import Face

# A level, frontal face: left eye, right eye, nose tip, left and right mouth corner (image coordinates).
FRONTAL = np.array([[-1.0, -1.0], [1.0, -1.0], [0.0, 0.2], [-0.8, 1.2], [0.8, 1.2]])

sizes = st.integers(min_value=1, max_value=4000)
coordinates = st.floats(min_value=-5000, max_value=9000, allow_nan=False)
extents = st.floats(min_value=0.0, max_value=3000, allow_nan=False)


@st.composite
def boxes(draw):
    x0, y0 = draw(coordinates), draw(coordinates)
    return x0, y0, x0 + draw(extents), y0 + draw(extents)


@st.composite
def faces(draw):
    """Five points of a plausible face: any roll, scale and position, a bit of yaw, a bit of noise."""
    angle = draw(st.floats(min_value=-math.pi, max_value=math.pi))
    scale = draw(st.floats(min_value=2.0, max_value=500.0))
    shift = np.array([draw(st.floats(-1000, 3000)), draw(st.floats(-1000, 3000))])
    yaw = draw(st.floats(min_value=-0.6, max_value=0.6))
    points = FRONTAL.copy()
    points[2, 0] += yaw
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return points @ rotation.T * scale + shift


def _inside(crop, width, height):
    x0, y0, x1, y1 = crop
    return 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height


@given(boxes(), sizes, sizes, st.floats(min_value=1.0, max_value=6.0))
def test_crop_box_is_clipped_to_the_image_and_never_empty(face_box, width, height, scale):
    crop = crop_box(face_box, width, height, scale)
    assert all(isinstance(v, int) for v in crop)
    assert _inside(crop, width, height)


@st.composite
def images_with_a_visible_face(draw):
    """(width, height, face box) where at least a pixel of the face is inside the image."""
    width, height = draw(sizes), draw(sizes)
    x0 = draw(st.floats(min_value=-2000, max_value=width - 1))
    y0 = draw(st.floats(min_value=-2000, max_value=height - 1))
    x1 = draw(st.floats(min_value=max(x0, 0.0) + 1, max_value=max(x0, 0.0) + 4000))
    y1 = draw(st.floats(min_value=max(y0, 0.0) + 1, max_value=max(y0, 0.0) + 4000))
    return width, height, (x0, y0, x1, y1)


@given(images_with_a_visible_face(), st.floats(min_value=1.0, max_value=6.0))
def test_crop_box_contains_the_visible_part_of_the_face(image_and_face, scale):
    width, height, face_box = image_and_face
    visible = clip_box(face_box, width, height)
    x0, y0, x1, y1 = crop_box(face_box, width, height, scale)
    assert x0 <= visible[0] and y0 <= visible[1] and x1 >= visible[2] and y1 >= visible[3]


def test_crop_box_is_three_times_the_face_when_it_fits():
    assert crop_box((400, 400, 500, 520), 2000, 2000, 3.0) == (300, 280, 600, 640)


@given(boxes(), sizes, sizes, st.floats(min_value=1.0, max_value=6.0))
def test_square_crop_is_square_inside_the_image_and_keeps_the_face_when_it_can(face_box, width, height, scale):
    crop = square_crop_box(face_box, width, height, scale)
    x0, y0, x1, y1 = crop
    assert _inside(crop, width, height)
    assert x1 - x0 == y1 - y0
    visible = clip_box(face_box, width, height)
    face_fits = box_size(face_box) * scale <= min(width, height) and visible == tuple(map(float, face_box))
    if face_fits and box_size(face_box) >= 1:
        assert x0 <= face_box[0] + 1 and y0 <= face_box[1] + 1 and x1 >= face_box[2] - 1 and y1 >= face_box[3] - 1


@given(boxes(), boxes())
def test_iou_is_symmetric_and_between_zero_and_one(a, b):
    assert box_iou(a, b) == pytest.approx(box_iou(b, a))
    assert 0.0 <= box_iou(a, b) <= 1.0 + 1e-9


@given(faces(), st.lists(st.booleans(), min_size=2, max_size=2))
def test_ordering_recovers_left_and_right_whatever_order_the_pairs_came_in(points, swaps):
    shuffled = points.copy()
    if swaps[0]:
        shuffled[[0, 1]] = shuffled[[1, 0]]
    if swaps[1]:
        shuffled[[3, 4]] = shuffled[[4, 3]]
    np.testing.assert_allclose(order_five_points(shuffled), points)


@given(faces(), st.floats(min_value=100, max_value=10000))
def test_ordering_under_a_horizontal_flip_swaps_left_and_right(points, width):
    mirrored = flip_points_horizontally(points, width)
    # In the mirror image the person's features trade sides: the old left eye is now the right one.
    np.testing.assert_allclose(order_five_points(mirrored), mirrored[list(MIRROR_ORDER)])


@given(faces())
def test_ordering_is_idempotent(points):
    once = order_five_points(points)
    np.testing.assert_array_equal(order_five_points(once), once)


def test_upright_face_has_its_left_eye_on_the_image_left():
    ordered = order_five_points(FRONTAL[[1, 0, 2, 4, 3]] * 50 + 300)
    assert ordered[0, 0] < ordered[1, 0] and ordered[3, 0] < ordered[4, 0]


@given(faces(), st.floats(min_value=100, max_value=10000))
def test_frontal_score_is_in_range_and_the_same_for_the_mirror_image(points, width):
    score = frontal_score(points)
    assert 0.0 <= score <= 1.0
    assert frontal_score(flip_points_horizontally(points, width)) == pytest.approx(score, abs=1e-9)


def test_frontal_score_prefers_a_level_face_looking_at_the_camera():
    turned = FRONTAL.copy()
    turned[2, 0] += 0.5
    profile = FRONTAL.copy()
    profile[2, 0] += 1.3
    tilt = np.radians(30)
    tilted = FRONTAL @ np.array([[np.cos(tilt), -np.sin(tilt)], [np.sin(tilt), np.cos(tilt)]]).T
    assert frontal_score(FRONTAL) == pytest.approx(1.0)
    assert frontal_score(FRONTAL) > frontal_score(tilted) > frontal_score(turned) > frontal_score(profile) == 0.0
    assert head_roll_degrees(tilted) == pytest.approx(30.0)
    assert yaw_ratio(turned) == pytest.approx(0.5)


@settings(max_examples=50)
@given(faces())
def test_alignment_puts_the_five_points_on_the_template(points):
    image = np.zeros((32, 32, 3), np.uint8)
    _, matrix = align_face(image, points, size=128, face_fraction=0.6)
    template = alignment_template(128, 0.6)
    # A similarity transform cannot fit the yawed nose exactly; the eyes and mouth land within a few px.
    moved = transform_points(points, matrix)
    assert np.abs(moved[[0, 1, 3, 4]] - template[[0, 1, 3, 4]]).max() < 0.1 * 128


@given(faces(), st.floats(min_value=-180, max_value=180), st.floats(min_value=0.2, max_value=5.0))
def test_a_face_moves_with_its_image(points, angle, scale):
    import cv2

    face = Face(box=(100.0, 120.0, 180.0, 220.0), confidence=0.9, points=points.astype(np.float32),
                landmarks=points.astype(np.float32))
    matrix = cv2.getRotationMatrix2D((140.0, 170.0), angle, scale)
    moved = face.transformed(matrix)
    np.testing.assert_allclose(moved.points, transform_points(points, matrix), rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(moved.landmarks, moved.points)
    assert moved.box[2] - moved.box[0] == pytest.approx(80 * scale)
    assert moved.box[3] - moved.box[1] == pytest.approx(100 * scale)
    assert ((moved.box[0] + moved.box[2]) / 2, (moved.box[1] + moved.box[3]) / 2) == pytest.approx((140, 170))
