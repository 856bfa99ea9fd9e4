"""Face image functions: colours match, landmarks land, masks and crops sit where they should, nothing else moves."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from skimage.color import rgb2lab

from portrait_core.core import face_imaging as fi
from portrait_core.errors import InputImageError

# An upright frontal face's five points in a unit square (eyes, nose tip, mouth corners).
UNIT_FACE = np.array([[0.35, 0.42], [0.65, 0.42], [0.50, 0.58], [0.39, 0.72], [0.61, 0.72]])


def face_points(centre_x: float, centre_y: float, size: float, angle_deg: float = 0.0) -> np.ndarray:
    angle = np.deg2rad(angle_deg)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return (UNIT_FACE - 0.5) * size @ rotation.T + [centre_x, centre_y]


def drawn_face(shape, points, skin=(200, 160, 140), stripes: int = 0) -> np.ndarray:
    """A cartoon face on a grey background: skin ellipse, dark eyes, a mouth; `stripes` px texture."""
    image = np.full((*shape, 3), 90, np.uint8)
    size = np.linalg.norm(points[1] - points[0]) / 0.3
    centre = tuple(int(v) for v in points[2])
    cv2.ellipse(image, centre, (int(size * 0.4), int(size * 0.55)), 0, 0, 360, skin, -1)
    if stripes:
        rows = (np.arange(shape[0]) // stripes) % 2 == 1
        skin_pixels = (image == skin).all(-1)
        image[rows[:, None] & skin_pixels] = np.array(skin) * 0.6
    for eye in points[:2]:
        cv2.circle(image, tuple(int(v) for v in eye), max(2, int(size * 0.04)), (30, 30, 40), -1)
    cv2.line(image, tuple(int(v) for v in points[3]), tuple(int(v) for v in points[4]), (120, 40, 50), 2)
    return image


def lab_stats(rgb: np.ndarray, inside: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lab = rgb2lab(rgb)[inside]  # skimage, not the cv2 conversion the code uses
    return lab.mean(0), lab.std(0)


# ---------------------------------------------------------------- colour transfer


@st.composite
def textured_images(draw):
    """Small noisy images whose colours keep a transfer inside the sRGB gamut (means 64..192, noise <= 20)."""
    height, width = draw(st.integers(4, 20)), draw(st.integers(4, 20))
    base = np.array(draw(st.lists(st.integers(64, 192), min_size=3, max_size=3)))
    noise = draw(st.integers(3, 20))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    image = np.clip(base + rng.normal(0, noise, (height, width, 3)), 0, 255).astype(np.uint8)
    mask = rng.random((height, width)) < draw(st.floats(0.2, 1.0))
    mask[:2, :2] = True
    return image, mask


@given(textured_images(), textured_images())
@settings(max_examples=60, deadline=None)
def test_colour_transfer_matches_reference_lab_statistics_inside_the_mask(target_case, reference_case):
    (target, target_mask), (reference, reference_mask) = target_case, reference_case
    out = np.asarray(fi.lab_color_transfer(target, reference, target_mask, reference_mask))
    assert (out[~target_mask] == target[~target_mask]).all()
    out_mean, out_std = lab_stats(out, target_mask)
    reference_mean, reference_std = lab_stats(reference, reference_mask)
    # Stated tolerance: 2 LAB units (L runs 0..100) on each channel's mean and std.
    assert np.abs(out_mean - reference_mean).max() <= 2.0
    assert np.abs(out_std - reference_std).max() <= 2.0


def test_colour_transfer_strength_blends_between_original_and_full():
    rng = np.random.default_rng(0)
    target = np.clip(rng.normal((90, 120, 160), 10, (16, 16, 3)), 0, 255).astype(np.uint8)
    reference = np.clip(rng.normal((210, 160, 130), 10, (16, 16, 3)), 0, 255).astype(np.uint8)
    everywhere = np.ones((16, 16), bool)
    assert (np.asarray(fi.lab_color_transfer(target, reference, strength=0.0)) == target).all()
    full = lab_stats(np.asarray(fi.lab_color_transfer(target, reference)), everywhere)[0]
    half = lab_stats(np.asarray(fi.lab_color_transfer(target, reference, strength=0.5)), everywhere)[0]
    original = lab_stats(target, everywhere)[0]
    assert np.abs(half - (original + full) / 2).max() < 3.0
    assert np.abs(full - original).max() > 20  # the halfway check above is not trivially met


def test_colour_transfer_accepts_pil_images_and_l_masks():
    target = Image.new("RGB", (8, 8), (100, 100, 100))
    reference = Image.new("RGB", (8, 8), (180, 120, 90))
    mask = Image.new("L", (8, 8), 0)
    mask.paste(255, (0, 0, 4, 8))
    out = np.asarray(fi.lab_color_transfer(target, reference, target_mask=mask))
    assert np.abs(out[:, :4].astype(int) - (180, 120, 90)).max() <= 1
    assert (out[:, 4:] == 100).all()


def test_colour_transfer_names_bad_arguments():
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(InputImageError, match="target_mask is 4x4 but the image is 8x8"):
        fi.lab_color_transfer(image, image, target_mask=np.zeros((4, 4), np.uint8))
    with pytest.raises(InputImageError, match="reference_mask is empty"):
        fi.lab_color_transfer(image, image, reference_mask=np.zeros((8, 8), np.uint8))
    with pytest.raises(InputImageError, match="strength"):
        fi.lab_color_transfer(image, image, strength=1.5)
    with pytest.raises(InputImageError, match="reference must be a"):
        fi.lab_color_transfer(image, np.zeros((8, 8), np.uint8))


# ---------------------------------------------------------------- five-point similarity and paste

SOURCE_POINTS = face_points(64, 64, 110)


def similarity_targets(angle_deg: float, scale: float, centre_x: float, centre_y: float) -> np.ndarray:
    angle = np.deg2rad(angle_deg)
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return (SOURCE_POINTS - 64) @ rotation.T + [centre_x, centre_y]


def blob_centroid(image: np.ndarray) -> np.ndarray:
    weight = image[..., 0].astype(np.float64)
    ys, xs = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    return np.array([(weight * (xs + 0.5)).sum(), (weight * (ys + 0.5)).sum()]) / weight.sum()


@given(st.floats(-45, 45), st.floats(0.5, 2.0), st.floats(110, 210), st.floats(110, 210))
@settings(max_examples=20, deadline=None)
def test_pasted_face_puts_each_landmark_within_2px_of_its_target(angle, scale, centre_x, centre_y):
    targets = similarity_targets(angle, scale, centre_x, centre_y)
    ys, xs = np.mgrid[0:128, 0:128]
    for k in range(5):
        # A bright blob at source point k; after pasting, its centroid is where point k landed.
        distance2 = (xs + 0.5 - SOURCE_POINTS[k, 0]) ** 2 + (ys + 0.5 - SOURCE_POINTS[k, 1]) ** 2
        source = np.repeat((255 * np.exp(-distance2 / 18.0)).astype(np.uint8)[..., None], 3, axis=2)
        pasted = fi.paste_aligned_face(np.zeros((320, 320, 3), np.uint8), source, SOURCE_POINTS, targets,
                                       source_mask=np.full((128, 128), 255, np.uint8), feather_width=0)
        # The brief asks for 2 px; 0.5 px also catches a half-pixel slip in the coordinate convention.
        assert np.linalg.norm(blob_centroid(np.asarray(pasted.image)) - targets[k]) <= 0.5


@given(st.lists(st.floats(-500, 500), min_size=20, max_size=20), st.booleans())
@settings(max_examples=100, deadline=None)
def test_similarity_is_never_a_reflection(coordinates, mirror_targets):
    source = np.array(coordinates[:10]).reshape(5, 2)
    target = np.array(coordinates[10:]).reshape(5, 2)
    if mirror_targets:  # the best fit to a mirror image would be a reflection; we must not return one
        target = source * [-1, 1]
    try:
        matrix = fi.five_point_similarity(source, target)
    except InputImageError:
        return  # coincident points, reported as such
    linear = matrix[:, :2]
    assert np.linalg.det(linear) >= 0
    assert np.isclose(linear[0, 0], linear[1, 1]) and np.isclose(linear[0, 1], -linear[1, 0])


def test_similarity_of_a_mirrored_face_keeps_its_handedness():
    mirrored = SOURCE_POINTS * [-1, 1] + [200, 0]
    matrix = fi.five_point_similarity(SOURCE_POINTS, mirrored)
    assert np.linalg.det(matrix[:, :2]) > 0


@given(st.floats(-45, 45), st.floats(0.5, 2.0), st.integers(0, 1000))
@settings(max_examples=15, deadline=None)
def test_paste_changes_nothing_outside_the_warped_mask(angle, scale, seed):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, 256, (240, 240, 3), dtype=np.uint8)
    source = drawn_face((128, 128), SOURCE_POINTS)
    targets = similarity_targets(angle, scale, 120, 120)
    pasted = fi.paste_aligned_face(target, source, SOURCE_POINTS, targets)
    out, mask = np.asarray(pasted.image), np.asarray(pasted.mask)
    assert (out[mask == 0] == target[mask == 0]).all()
    # ...and the face did arrive: the nose sits on skin now, not on the noise.
    nose_x, nose_y = (int(v) for v in targets[2])
    assert np.abs(out[nose_y, nose_x].astype(int) - (200, 160, 140)).max() <= 3


def test_default_paste_mask_covers_the_face_and_not_the_source_background():
    source = drawn_face((128, 128), SOURCE_POINTS)
    target = np.zeros((256, 256, 3), np.uint8)
    pasted = fi.paste_aligned_face(target, source, SOURCE_POINTS, similarity_targets(0, 1.5, 128, 128))
    mask = np.asarray(pasted.mask)
    assert mask[128, 128] == 255 and mask[5, 5] == 0 and mask[250, 250] == 0



def test_paste_fades_in_over_the_feather_width_inside_the_mask():
    source = np.full((64, 64, 3), 255, np.uint8)
    pasted = fi.paste_aligned_face(np.zeros((128, 128, 3), np.uint8), source, SOURCE_POINTS / 2,
                                   SOURCE_POINTS / 2 + 32, source_mask=np.full((64, 64), 255, np.uint8),
                                   feather_width=10)
    row = np.asarray(pasted.image)[64, :, 0].astype(int)
    assert (row[:32] == 0).all() and (row[96:] == 0).all()  # outside the pasted square: untouched
    assert 0 < row[32] < 64 and (row[42:86] == 255).all()  # fades in over 10 px, then all source
    assert (np.diff(row[32:43]) >= 0).all()


def test_points_of_the_wrong_shape_are_named():
    image = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(InputImageError, match=r"target_points must be five \(x, y\) points"):
        fi.paste_aligned_face(image, image, SOURCE_POINTS, SOURCE_POINTS[:4])
    with pytest.raises(InputImageError, match="source_points all coincide"):
        fi.five_point_similarity(np.ones((5, 2)), SOURCE_POINTS)


# ---------------------------------------------------------------- masks


def test_face_mask_from_points_covers_the_face_and_not_the_corners():
    points = face_points(100, 100, 80)
    mask = np.asarray(fi.face_mask((200, 200), points=points))
    forehead, chin = (100, int(points[0, 1] - 25)), (100, int(points[3, 1] + 15))
    for x, y in [*points.astype(int).tolist(), forehead, chin]:
        assert mask[y, x] == 255
    for x, y in [(0, 0), (199, 0), (0, 199), (199, 199)]:
        assert mask[y, x] == 0


def test_face_mask_from_points_turns_with_the_face():
    upright = np.asarray(fi.face_mask((200, 200), points=face_points(100, 100, 80)))
    sideways = np.asarray(fi.face_mask((200, 200), points=face_points(100, 100, 80, angle_deg=90)))
    assert (upright > 0).sum() == pytest.approx((sideways > 0).sum(), rel=0.05)
    assert (upright > 0).any(1).sum() > (upright > 0).any(0).sum()  # taller than wide
    assert (sideways > 0).any(0).sum() > (sideways > 0).any(1).sum()  # wider than tall


def test_face_mask_from_box_is_its_ellipse_grown_with_the_face():
    mask = np.asarray(fi.face_mask((200, 200), box=(60, 60, 140, 140), dilation=0.1))
    assert mask[100, 100] == 255 and mask[100, 61] == 255 and mask[61, 100] == 255
    assert mask[61, 61] == 0 and mask[138, 138] == 0  # box corners stay outside the ellipse
    row = mask[100] > 0
    assert row.sum() == pytest.approx(80 + 2 * 8, abs=2)  # 10% of the 80 px face on each side


@pytest.mark.parametrize("face_size", [40, 120])
def test_dilation_and_ring_widths_scale_with_face_size(face_size):
    half = face_size // 2
    box = (150 - half, 150 - half, 150 + half, 150 + half)
    grown = np.asarray(fi.face_mask((300, 300), box=box, dilation=0.2))[150] > 0
    assert grown.sum() == pytest.approx(face_size * 1.4, abs=2)
    ring = np.asarray(fi.face_ring_mask((300, 300), box=box, outer=0.15, inner=0.1))[150] > 0
    right_band = np.flatnonzero(ring[150:]) + 150
    assert right_band.min() == pytest.approx(150 + half - 0.1 * face_size, abs=1.5)
    assert right_band.max() == pytest.approx(150 + half + 0.15 * face_size, abs=1.5)


def test_ring_excludes_the_face_centre_and_includes_a_band_around_its_edge():
    points = face_points(100, 100, 80)
    ring = np.asarray(fi.face_ring_mask((200, 200), points=points))
    face = np.asarray(fi.face_mask((200, 200), points=points, dilation=0.0)) > 0
    assert ring[int(points[2, 1]), int(points[2, 0])] == 0 and not ring[face].all()
    edge = face & ~cv2.erode(face.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    assert (ring[edge] == 255).all()  # the whole seam of the first pass is repainted
    outside_band = ~cv2.dilate(face.astype(np.uint8), np.ones((61, 61), np.uint8)).astype(bool)
    assert (ring[outside_band] == 0).all()


def test_face_mask_from_a_given_mask_and_argument_errors():
    given_mask = np.zeros((50, 50), np.uint8)
    given_mask[20:30, 20:30] = 255
    grown = np.asarray(fi.face_mask((50, 50), mask=given_mask, dilation=0.3)) > 0
    assert grown[25, 17] and grown[25, 32] and not grown[25, 15] and not grown[0, 0]
    with pytest.raises(InputImageError, match="exactly one of points, box or mask"):
        fi.face_mask((50, 50), box=(0, 0, 5, 5), mask=given_mask)
    with pytest.raises(InputImageError, match="exactly one of points, box or mask"):
        fi.face_ring_mask((50, 50))
    with pytest.raises(InputImageError, match="lies outside"):
        fi.face_mask((50, 50), box=(60, 60, 80, 80))


def test_feather_stays_inside_the_mask_and_is_full_deep_inside():
    mask = np.zeros((60, 60), np.uint8)
    mask[10:50, 10:50] = 255
    soft = np.asarray(fi.feather_mask(mask, 8)).astype(int)
    assert (soft[mask == 0] == 0).all()
    assert (soft[19:41, 19:41] == 255).all()
    assert 0 < soft[30, 12] < soft[30, 15] < 255  # a rising ramp across the edge band
    assert (np.asarray(fi.feather_mask(Image.fromarray(mask), 0)) == mask).all()


# ---------------------------------------------------------------- crops


def smooth_template(width: int, height: int) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width]
    red = 128 + 100 * np.sin(xs / 23.0)
    green = 128 + 100 * np.cos(ys / 31.0)
    blue = (xs + ys) * 200.0 / (width + height)
    return np.stack([red, green, blue], -1).astype(np.uint8)


@given(st.floats(-100, 400), st.floats(-100, 300), st.floats(4, 200), st.floats(4, 200),
       st.sampled_from([64, 256, 512]), st.floats(1.0, 4.0))
@settings(max_examples=60, deadline=None)
def test_crop_boxes_are_inside_the_image_and_crops_fit_the_model(x0, y0, face_w, face_h, short_side, scale):
    template = np.zeros((240, 320, 3), np.uint8)
    face_box = (x0, y0, x0 + face_w, y0 + face_h)
    try:
        crop = fi.crop_around_face(template, face_box, scale=scale, short_side=short_side)
    except InputImageError as error:
        assert "lies outside" in str(error)
        assert x0 + face_w * (1 + scale) / 2 <= 0 or x0 + face_w * (1 - scale) / 2 >= 320 or \
            y0 + face_h * (1 + scale) / 2 <= 0 or y0 + face_h * (1 - scale) / 2 >= 240
        return
    bx0, by0, bx1, by1 = crop.box
    assert 0 <= bx0 < bx1 <= 320 and 0 <= by0 < by1 <= 240
    assert crop.image.width % 8 == 0 and crop.image.height % 8 == 0
    assert min(crop.image.size) == short_side or min(crop.image.size) == pytest.approx(short_side, abs=8)


def test_crop_is_three_face_boxes_wide_with_a_512_short_side_by_default():
    crop = fi.crop_around_face(np.zeros((1000, 1000, 3), np.uint8), (450, 430, 550, 570))
    assert crop.box == (350, 290, 650, 710)
    assert crop.image.size == (512, 720)  # 300x420 scaled by 512/300, long side rounded to 8


def test_crop_round_trip_gives_back_the_template():
    template = smooth_template(320, 240)
    crop = fi.crop_around_face(template, (200, 40, 260, 110), short_side=256)
    back = np.asarray(fi.paste_crop_back(template, crop.image, crop.box)).astype(int)
    assert np.abs(back - template).mean() < 0.5 and np.abs(back - template).max() <= 6


def test_pasted_crop_changes_only_the_crop_box_and_fades_in():
    template = smooth_template(320, 240)
    crop = fi.crop_around_face(template, (120, 80, 180, 140), short_side=128)
    processed = Image.new("RGB", crop.image.size, (255, 0, 255))
    back = np.asarray(fi.paste_crop_back(template, processed, crop.box, feather_width=10))
    x0, y0, x1, y1 = crop.box
    outside = np.ones((240, 320), bool)
    outside[y0:y1, x0:x1] = False
    assert (back[outside] == template[outside]).all()
    assert (back[y0 + 10 : y1 - 10, x0 + 10 : x1 - 10] == (255, 0, 255)).all()
    edge = back[y0 + 20, x0].astype(int)  # first column of the box: mostly template still
    assert np.abs(edge - template[y0 + 20, x0]).max() < np.abs(template[y0 + 20, x0].astype(int) - (255, 0, 255)).max()


def test_crop_at_the_image_border_is_not_faded_there():
    template = smooth_template(200, 200)
    crop = fi.crop_around_face(template, (0, 0, 40, 40), short_side=64)
    assert crop.box[:2] == (0, 0)
    processed = Image.new("RGB", crop.image.size, (0, 255, 0))
    back = np.asarray(fi.paste_crop_back(template, processed, crop.box, feather_width=10))
    assert (back[0, 0] == (0, 255, 0)).all()


def test_crop_maps_points_to_and_from_template_coordinates():
    template = np.zeros((300, 400, 3), np.uint8)
    template[150:152, 210:212] = 255  # a 2x2 marker centred on (211, 151)
    crop = fi.crop_around_face(template, (180, 120, 240, 180), short_side=256)
    marker = np.asarray(crop.image)
    centroid = blob_centroid(marker)
    assert np.linalg.norm(centroid - crop.to_crop([[211.0, 151.0]])[0]) < 0.5
    points = np.array([[190.5, 130.25], [230.0, 170.0]])
    assert np.allclose(crop.to_template(crop.to_crop(points)), points)


def test_crop_arguments_are_checked():
    template = np.zeros((100, 100, 3), np.uint8)
    with pytest.raises(InputImageError, match="short_side must be a positive multiple of 8"):
        fi.crop_around_face(template, (10, 10, 20, 20), short_side=500)
    with pytest.raises(InputImageError, match="face_box must have x0 < x1"):
        fi.crop_around_face(template, (20, 10, 10, 20))
    with pytest.raises(InputImageError, match="crop_box .* lies outside the 100x100 template"):
        fi.paste_crop_back(template, template, (100, 50, 120, 90))
    with pytest.raises(InputImageError, match="crop_box .* integer corners"):
        fi.paste_crop_back(template, template, (10.5, 10, 20, 20))


def test_close_up_crop_spanning_the_template_pastes_back():
    # The reproduction: a face filling the frame, so the 3x crop reaches both side borders.
    back = np.asarray(fi.paste_crop_back(Image.new("RGB", (100, 100)), Image.new("RGB", (50, 50), (255,) * 3),
                                         (0, 10, 100, 60)))
    assert back.shape == (100, 100, 3)
    assert (back[30, [0, 50, 99]] == 255).all()  # no fade at the side borders the crop reaches
    assert 0 < back[10, 50, 0] < 255 and 0 < back[59, 50, 0] < 255  # fades where the template goes on
    assert (back[:10] == 0).all() and (back[60:] == 0).all()


SIDE_PLACES = ("inside", "border", "beyond")


def _side(place: str, inside: int, border: int, beyond: int) -> int:
    return {"inside": inside, "border": border, "beyond": beyond}[place]


def check_pasted_crop(width: int, height: int, box: tuple[int, int, int, int], feather: float) -> None:
    """A white crop pasted on black: black outside the box, full white `feather` px away from every side
    that lies inside the image, fading (never rising) toward those sides, full at the borders it reaches."""
    x0, y0, x1, y1 = box
    back = np.asarray(fi.paste_crop_back(np.zeros((height, width, 3), np.uint8), Image.new("RGB", (7, 5), (255,) * 3),
                                         box, feather_width=feather)).astype(int)
    assert back.shape == (height, width, 3)
    assert (back == back[..., :1]).all()
    value = back[..., 0]
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    outside = np.ones((height, width), bool)
    outside[cy0:cy1, cx0:cx1] = False
    assert (value[outside] == 0).all()
    ys, xs = np.mgrid[0:height, 0:width]
    reach = np.full((height, width), np.inf)  # distance (in pixels, edge pixel = 1) to the nearest faded side
    sides = ((x0 > 0, xs - x0 + 1), (y0 > 0, ys - y0 + 1), (x1 < width, x1 - xs), (y1 < height, y1 - ys))
    for faded, distance in sides:
        if faded:
            reach = np.minimum(reach, distance)
    crop = ~outside
    assert (value[crop & (reach >= feather)] == 255).all()
    if feather > 1:
        assert (value[crop & (reach == 1)] < 255).all()
    for row in range(cy0, cy1):  # never rising toward a faded side: monotone along each row to the middle
        line = value[row, cx0:cx1]
        middle = len(line) // 2
        assert (np.diff(line[: middle + 1]) >= 0).all() or x0 <= 0
        assert (np.diff(line[middle:]) <= 0).all() or x1 >= width


@pytest.mark.parametrize("left", SIDE_PLACES)
@pytest.mark.parametrize("top", SIDE_PLACES)
@pytest.mark.parametrize("right", SIDE_PLACES)
@pytest.mark.parametrize("bottom", SIDE_PLACES)
def test_crop_touching_any_set_of_borders_pastes_with_a_fade_only_inside(left, top, right, bottom):
    # Each side of the box inside the image, on its border, or beyond it: 0 to 4 borders touched.
    box = (_side(left, 6, 0, -9), _side(top, 5, 0, -4), _side(right, 33, 40, 52), _side(bottom, 24, 30, 41))
    check_pasted_crop(40, 30, box, feather=4)


@given(st.integers(1, 24), st.integers(1, 24), st.data(), st.sampled_from([0, 1, 2.5, 6]))
@settings(max_examples=150, deadline=None)
def test_any_crop_box_overlapping_the_template_pastes_back(width, height, data, feather):
    x0 = data.draw(st.integers(-8, width - 1), "x0")
    y0 = data.draw(st.integers(-8, height - 1), "y0")
    x1 = data.draw(st.integers(max(x0 + 1, 1), width + 8), "x1")  # 1 px crops and crops larger than the image
    y1 = data.draw(st.integers(max(y0 + 1, 1), height + 8), "y1")
    check_pasted_crop(width, height, (x0, y0, x1, y1), feather)


def test_face_filling_the_frame_round_trips_through_crop_and_paste():
    template = smooth_template(160, 200)
    crop = fi.crop_around_face(template, (20, 30, 140, 170), short_side=128)
    assert crop.box == (0, 0, 160, 200)  # the 3x crop is the whole template
    back = np.asarray(fi.paste_crop_back(template, crop.image, crop.box)).astype(int)
    assert back.shape == template.shape and np.abs(back - template).mean() < 1.0


# ---------------------------------------------------------------- face fusion

TARGET_POINTS = face_points(100, 110, 100, angle_deg=8)
FUSION_SOURCE_POINTS = face_points(70, 70, 90, angle_deg=-5)


def fusion_images() -> tuple[np.ndarray, np.ndarray]:
    target = drawn_face((220, 200), TARGET_POINTS, skin=(190, 140, 120))
    source = drawn_face((140, 140), FUSION_SOURCE_POINTS, skin=(150, 170, 200), stripes=4)
    return target, source


def test_fusion_at_ratio_zero_returns_the_target_exactly():
    target, source = fusion_images()
    out = fi.fuse_faces(target, source, TARGET_POINTS, FUSION_SOURCE_POINTS, ratio=0.0)
    assert (np.asarray(out) == target).all()


def test_full_fusion_brings_the_source_face_in_with_the_target_colours():
    target, source = fusion_images()
    out = np.asarray(fi.fuse_faces(target, source, TARGET_POINTS, FUSION_SOURCE_POINTS, ratio=1.0))
    region = np.asarray(fi.face_mask((200, 220), points=TARGET_POINTS, dilation=0.05)) > 0
    assert (out[~region] == target[~region]).all()
    cheek = np.zeros_like(region)
    cheek[int(TARGET_POINTS[2, 1]) : int(TARGET_POINTS[3, 1]), 60:80] = True
    # The source's striped skin texture appears on the target's cheek...
    assert out[cheek].astype(float).std(0).mean() > 4 * target[cheek].astype(float).std(0).mean() + 5
    # ...recoloured so the face region keeps the target's colour statistics (the source's blue-ish,
    # high-contrast skin alone would put the std ~3 units off even after the Poisson blend).
    out_mean, out_std = lab_stats(out, region)
    target_mean, target_std = lab_stats(target, region)
    assert np.abs(out_mean - target_mean).max() < 1.0 and np.abs(out_std - target_std).max() < 1.0


def test_half_fusion_lies_between():
    target, source = fusion_images()
    full = np.asarray(fi.fuse_faces(target, source, TARGET_POINTS, FUSION_SOURCE_POINTS, ratio=1.0)).astype(int)
    half = np.asarray(fi.fuse_faces(target, source, TARGET_POINTS, FUSION_SOURCE_POINTS, ratio=0.5)).astype(int)
    full_change, half_change = np.abs(full - target).sum(), np.abs(half - target).sum()
    assert 0.4 * full_change < half_change < 0.6 * full_change


def test_fusion_of_a_face_cut_by_the_image_border_does_not_fail():
    border_points = TARGET_POINTS - [70, 80]  # the face hangs over the top-left corner
    target = drawn_face((220, 200), border_points, skin=(190, 140, 120))
    source = fusion_images()[1]
    out = np.asarray(fi.fuse_faces(target, source, border_points, FUSION_SOURCE_POINTS, ratio=1.0))
    region = np.asarray(fi.face_mask((200, 220), points=border_points, dilation=0.05)) > 0
    assert (out[~region] == target[~region]).all() and (out[region] != target[region]).any()



@pytest.mark.parametrize("offset", [(0, 0), (70, 80), (69, 80), (-60, -70)])
def test_fusing_a_face_with_itself_changes_nothing_even_at_the_image_border(offset):
    # A textured picture fused with itself must come back as it was; a mask touching the border
    # (offsets that push the face over an edge) must neither throw nor shift the blend by a pixel.
    rng = np.random.default_rng(3)
    picture = cv2.GaussianBlur(rng.integers(0, 256, (220, 200, 3), dtype=np.uint8), (0, 0), 1.5)
    points = TARGET_POINTS - offset
    out = np.asarray(fi.fuse_faces(picture, picture, points, points, ratio=1.0)).astype(int)
    assert np.abs(out - picture).max() <= 2


def test_fusion_leaves_no_seam_at_the_face_edge():
    target = fusion_images()[0]
    source = drawn_face((140, 140), FUSION_SOURCE_POINTS, skin=(150, 170, 200), stripes=4).astype(float)
    source = np.clip(source * np.linspace(0.5, 1.3, 140)[None, :, None], 0, 255).astype(np.uint8)  # side light
    out = np.asarray(fi.fuse_faces(target, source, TARGET_POINTS, FUSION_SOURCE_POINTS, ratio=1.0,
                                   feather_width=0)).astype(int)
    region = np.asarray(fi.face_mask((200, 220), points=TARGET_POINTS, dilation=0.05)) > 0
    edge_band = region & ~cv2.erode(region.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    change = np.abs(out - target)
    # Even with no feather, the Poisson blend meets the target at the edge; inside, the face changed.
    assert change[edge_band].mean() < 0.4 * change[region].mean()


# ---------------------------------------------------------------- skin smoothing


def noisy_skin(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = np.clip(rng.normal((200, 160, 140), 8, (80, 80, 3)), 0, 255).astype(np.uint8)
    image[:, 40:] = np.clip(image[:, 40:].astype(int) - 140, 0, 255)  # a strong edge, like an eyebrow
    mask = np.zeros((80, 80), np.uint8)
    mask[10:70, 10:70] = 255
    return image, mask


def test_skin_smoothing_reduces_texture_inside_the_mask_and_keeps_edges():
    image, mask = noisy_skin()
    out = np.asarray(fi.smooth_skin(image, mask, strength=1.0)).astype(float)
    skin = np.zeros((80, 80), bool)
    skin[15:65, 15:35] = True
    assert out[skin].std(0).mean() < 0.5 * image[skin].astype(float).std(0).mean()
    assert (out[mask == 0] == image[mask == 0]).all()
    step = out[20:60, 39].mean(0) - out[20:60, 40].mean(0)  # the two columns either side of the edge
    assert step.min() > 120  # still almost the full 140-level step: edges are not blurred


def test_skin_smoothing_strength_zero_is_identity_and_bad_input_is_named():
    image, mask = noisy_skin(1)
    assert (np.asarray(fi.smooth_skin(image, mask, strength=0.0)) == image).all()
    with pytest.raises(InputImageError, match="skin_mask is empty"):
        fi.smooth_skin(image, np.zeros((80, 80), np.uint8))
    with pytest.raises(InputImageError, match="skin_mask is 40x80 but the image is 80x80"):
        fi.smooth_skin(image, np.full((80, 40), 255, np.uint8))
