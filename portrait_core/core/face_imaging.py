"""Pure face image functions: colour transfer, five-point paste, face masks, crops, fusion, skin smoothing.

Conventions (the same as `portrait_core.core.geometry`):

* Images are PIL images (any mode, used as RGB) or (height, width, 3) uint8 RGB arrays; images
  come back as RGB PIL images.
* Masks are L PIL images or (height, width) uint8 arrays, 0 = outside, 255 = inside, values between
  are partial weights; bool arrays are accepted too. Masks come back as L PIL images.
* Coordinates are continuous pixel coordinates: pixel column `i` covers `[i, i + 1)`, so its centre
  is at `i + 0.5`. Points are (x, y) floats; five points are a (5, 2) array in the order left eye,
  right eye, nose tip, left mouth corner, right mouth corner (left/right as seen in the image).
* A box is `(x0, y0, x1, y1)` with `x0 < x1`, `y0 < y1`; with integer corners it covers columns
  `x0 .. x1 - 1` and rows `y0 .. y1 - 1` (x1 and y1 are exclusive).

Bad input raises `InputImageError` naming the argument.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Union

import numpy as np
from PIL import Image

from portrait_core.errors import InputImageError

ImageLike = Union[Image.Image, np.ndarray]
Box = tuple[float, float, float, float]


# ---------------------------------------------------------------- argument checks


def _rgb_array(image: ImageLike, name: str) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB")).copy()
    if not isinstance(image, np.ndarray):
        raise InputImageError(f"{name} must be a PIL image or an RGB uint8 array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputImageError(f"{name} must be a (height, width, 3) uint8 array, got {image.shape} {image.dtype}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise InputImageError(f"{name} is empty: shape {image.shape}")
    return image.copy()


def _mask_array(mask: ImageLike, name: str, shape: tuple[int, int], required: bool = True) -> np.ndarray:
    """`mask` as a (height, width) uint8 array of the given shape; `required` masks may not be all zero."""
    if isinstance(mask, Image.Image):
        array = np.asarray(mask.convert("L"))
    elif isinstance(mask, np.ndarray) and mask.ndim == 2 and mask.dtype in (np.uint8, np.bool_):
        array = mask.astype(np.uint8) * 255 if mask.dtype == np.bool_ else mask
    else:
        raise InputImageError(f"{name} must be an L image or a (height, width) uint8/bool array, got "
                              f"{type(mask).__name__} {getattr(mask, 'shape', '')}")
    if array.shape != shape:
        raise InputImageError(f"{name} is {array.shape[1]}x{array.shape[0]} but the image is "
                              f"{shape[1]}x{shape[0]}; they must match")
    if required and not array.any():
        raise InputImageError(f"{name} is empty (all zero); it must mark at least one pixel")
    return np.ascontiguousarray(array)


def _five_points(points, name: str) -> np.ndarray:
    array = np.asarray(points, dtype=np.float64)
    if array.shape != (5, 2):
        raise InputImageError(f"{name} must be five (x, y) points, shape (5, 2), got shape {array.shape}")
    if not np.isfinite(array).all():
        raise InputImageError(f"{name} contains a non-finite coordinate: {array.tolist()}")
    return array


def _box(box, name: str) -> Box:
    array = np.asarray(box, dtype=np.float64)
    if array.shape != (4,) or not np.isfinite(array).all():
        raise InputImageError(f"{name} must be four finite numbers (x0, y0, x1, y1), got {box!r}")
    x0, y0, x1, y1 = (float(v) for v in array)
    if x1 <= x0 or y1 <= y0:
        raise InputImageError(f"{name} must have x0 < x1 and y0 < y1, got {box!r}")
    return x0, y0, x1, y1


def _unit_interval(value: float, name: str) -> float:
    if not 0.0 <= value <= 1.0:
        raise InputImageError(f"{name} must be between 0 and 1, got {value}")
    return float(value)


def _blend(base: np.ndarray, over: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """`over` on `base` with per-pixel `weight` in [0, 1]; where the weight is 0 the base is kept bit for bit."""
    weight = weight.astype(np.float32)[..., None]
    mixed = over.astype(np.float32)
    mixed -= base
    mixed *= weight
    mixed += base
    np.clip(np.rint(mixed, out=mixed), 0, 255, out=mixed)
    return np.where(weight > 0, mixed.astype(np.uint8), base)


# ---------------------------------------------------------------- colour


def _lab(rgb: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab).astype(np.float64)


def _weighted_lab_stats(lab: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    total = weight.sum()
    mean = (lab * weight[..., None]).sum((0, 1)) / total
    variance = (((lab - mean) ** 2) * weight[..., None]).sum((0, 1)) / total
    return mean, np.sqrt(variance)


def lab_color_transfer(target: ImageLike, reference: ImageLike, target_mask: Optional[ImageLike] = None,
                       reference_mask: Optional[ImageLike] = None, strength: float = 1.0) -> Image.Image:
    """`target` recoloured so that its masked region has the per-channel LAB mean and std of the
    reference's masked region (Reinhard transfer); `strength` blends between the original (0) and the
    full transfer (1). Masks weight both the statistics and the change; pixels outside `target_mask`
    are returned unchanged. No mask means the whole image."""
    import cv2

    target_rgb, reference_rgb = _rgb_array(target, "target"), _rgb_array(reference, "reference")
    strength = _unit_interval(strength, "strength")
    target_weight = _optional_weight(target_mask, "target_mask", target_rgb.shape[:2])
    reference_weight = _optional_weight(reference_mask, "reference_mask", reference_rgb.shape[:2])
    target_lab = _lab(target_rgb)
    target_mean, target_std = _weighted_lab_stats(target_lab, target_weight)
    reference_mean, reference_std = _weighted_lab_stats(_lab(reference_rgb), reference_weight)
    # A flat target channel has no spread to scale; its values all map onto the reference mean.
    moved = (target_lab - target_mean) * (reference_std / np.maximum(target_std, 1e-6)) + reference_mean
    moved_rgb = cv2.cvtColor(moved.astype(np.float32), cv2.COLOR_Lab2RGB).astype(np.float64) * 255.0
    return Image.fromarray(_blend(target_rgb, np.clip(moved_rgb, 0, 255), target_weight * strength))


def _optional_weight(mask: Optional[ImageLike], name: str, shape: tuple[int, int]) -> np.ndarray:
    if mask is None:
        return np.ones(shape, dtype=np.float64)
    return _mask_array(mask, name, shape).astype(np.float64) / 255.0


# ---------------------------------------------------------------- five-point similarity transform


def five_point_similarity(source_points, target_points) -> np.ndarray:
    """The 2x3 matrix of the rotation + uniform scale + translation that maps `source_points` onto
    `target_points` with the least squared error. Never a reflection: with points as complex numbers
    the transform is z -> a*z + b, and multiplying by a complex `a` can only rotate and scale."""
    source = _five_points(source_points, "source_points")
    target = _five_points(target_points, "target_points")
    source_z = source[:, 0] + 1j * source[:, 1]
    target_z = target[:, 0] + 1j * target[:, 1]
    source_centred = source_z - source_z.mean()
    target_centred = target_z - target_z.mean()
    spread = float(np.sum(np.abs(source_centred) ** 2))
    if spread < 1e-9:
        raise InputImageError("source_points all coincide; a face needs five distinct points")
    if float(np.sum(np.abs(target_centred) ** 2)) < 1e-9:
        raise InputImageError("target_points all coincide; a face needs five distinct points")
    a = np.sum(np.conj(source_centred) * target_centred) / spread
    b = target_z.mean() - a * source_z.mean()
    return np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]])


def _warp(array: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`array` resampled into a `size` (width, height) canvas by `matrix`; black outside the source."""
    import cv2

    # OpenCV puts pixel centres on integers, we put them on half-integers: shift in and out.
    matrix = np.asarray(matrix, dtype=np.float64)
    opencv_matrix = matrix.copy()
    opencv_matrix[:, 2] += matrix[:, :2] @ np.array([0.5, 0.5]) - 0.5
    return cv2.warpAffine(array, opencv_matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=0)


class PastedFace(NamedTuple):
    """The composite, the warped source mask (0 wherever the target is unchanged), and the matrix used."""

    image: Image.Image
    mask: Image.Image
    matrix: np.ndarray


def paste_aligned_face(target: ImageLike, source: ImageLike, source_points, target_points, *,
                       source_mask: Optional[ImageLike] = None,
                       feather_width: Optional[float] = None) -> PastedFace:
    """Warp `source` so its five points land on `target_points` and composite it into `target`
    through `source_mask` (default: the face region of `source_points`), feathered inside its edge.
    `feather_width` defaults to 8% of the pasted face's size."""
    target_rgb, source_rgb = _rgb_array(target, "target"), _rgb_array(source, "source")
    matrix = five_point_similarity(source_points, target_points)
    if source_mask is None:
        source_mask = face_mask(source_rgb.shape[1::-1], points=source_points)
    source_weight = _mask_array(source_mask, "source_mask", source_rgb.shape[:2])
    size = (target_rgb.shape[1], target_rgb.shape[0])
    warped_mask = _warp(source_weight, matrix, size)
    if not warped_mask.any():
        raise InputImageError("target_points put the pasted face entirely outside the target image")
    if feather_width is None:
        feather_width = 0.08 * _mask_extent(warped_mask)
    weight = np.minimum(_feather(warped_mask, feather_width), warped_mask.astype(np.float64) / 255.0)
    pasted = _blend(target_rgb, _warp(source_rgb, matrix, size), weight)
    return PastedFace(Image.fromarray(pasted), Image.fromarray(warped_mask), matrix)


# ---------------------------------------------------------------- masks


def _distance_to_outside(inside: np.ndarray) -> np.ndarray:
    """Euclidean distance of each inside pixel to the nearest outside one (0 outside); the image
    border does not count as outside, so masks touching it are not worn away there."""
    import cv2

    return cv2.distanceTransform(inside.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def _dilate(inside: np.ndarray, radius: float) -> np.ndarray:
    return _distance_to_outside(~inside) <= radius if radius > 0 else inside.copy()


def _erode(inside: np.ndarray, radius: float) -> np.ndarray:
    return _distance_to_outside(inside) > radius if radius > 0 else inside.copy()


def _mask_extent(mask: np.ndarray) -> float:
    """The larger side of the mask's bounding box, in pixels: the face size the dilations scale with."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return float(max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1))


def _feather(mask: np.ndarray, width: float) -> np.ndarray:
    """Weights in [0, 1]: 0 outside the mask (values < 128), rising smoothly to 1 at `width` px inside."""
    inside = mask >= 128
    if width <= 0:
        return inside.astype(np.float64)
    ramp = np.clip(_distance_to_outside(inside).astype(np.float64) / width, 0.0, 1.0)
    return ramp * ramp * (3.0 - 2.0 * ramp)


def feather_mask(mask: ImageLike, width: float) -> Image.Image:
    """A soft copy of `mask` whose edge fades in over `width` px *inside* the mask: zero wherever
    the mask is below 128, full strength further than `width` px from its edge."""
    array = _mask_array(mask, "mask", np.asarray(mask).shape[:2], required=False)
    return Image.fromarray(np.rint(_feather(array, width) * 255).astype(np.uint8))


def _ellipse(shape: tuple[int, int], centre: np.ndarray, across: np.ndarray, half_across: float,
             half_along: float) -> np.ndarray:
    """Filled ellipse with one axis along the unit vector `across`; pixels whose centre is inside."""
    inside = np.zeros(shape, dtype=bool)
    # Evaluate only the square around the ellipse: templates can be far larger than the face.
    reach = max(half_across, half_along)
    x0, x1 = (int(np.clip(v, 0, shape[1])) for v in (np.floor(centre[0] - reach), np.ceil(centre[0] + reach)))
    y0, y1 = (int(np.clip(v, 0, shape[0])) for v in (np.floor(centre[1] - reach), np.ceil(centre[1] + reach)))
    ys, xs = np.mgrid[y0:y1, x0:x1]
    offset_x, offset_y = xs + 0.5 - centre[0], ys + 0.5 - centre[1]
    u = offset_x * across[0] + offset_y * across[1]
    v = -offset_x * across[1] + offset_y * across[0]
    inside[y0:y1, x0:x1] = (u / half_across) ** 2 + (v / half_along) ** 2 <= 1.0
    return inside


def _face_ellipse_from_points(shape: tuple[int, int], points: np.ndarray) -> np.ndarray:
    # Proportions of an upright frontal face measured on the ArcFace layout: the forehead reaches
    # about one eye-to-mouth distance above the eyes, the chin about 0.6 of it below the mouth, and
    # the cheeks about 1.2 eye distances either side of the middle.
    eyes, mouth = points[:2].mean(0), points[3:].mean(0)
    eye_to_mouth = float(np.linalg.norm(mouth - eyes))
    eye_distance = float(np.linalg.norm(points[1] - points[0]))
    if eye_to_mouth < 1e-6:
        raise InputImageError("points put the eyes and the mouth at the same place; not a face")
    down = (mouth - eyes) / eye_to_mouth
    top, bottom = eyes - down * eye_to_mouth, mouth + down * 0.6 * eye_to_mouth
    across = np.array([down[1], -down[0]])
    half_across = max(1.2 * eye_distance, 0.9 * eye_to_mouth)
    return _ellipse(shape, (top + bottom) / 2, across, half_across, 1.3 * eye_to_mouth)


def _face_region(size: tuple[int, int], points, box, mask) -> np.ndarray:
    """The undilated face region as a bool array, from exactly one of points / box / mask."""
    given = [name for name, value in (("points", points), ("box", box), ("mask", mask)) if value is not None]
    if len(given) != 1:
        raise InputImageError(f"give exactly one of points, box or mask for the face, got {given or 'none'}")
    shape = (int(size[1]), int(size[0]))
    if points is not None:
        region = _face_ellipse_from_points(shape, _five_points(points, "points"))
    elif box is not None:
        x0, y0, x1, y1 = _box(box, "box")
        region = _ellipse(shape, np.array([(x0 + x1) / 2, (y0 + y1) / 2]), np.array([1.0, 0.0]),
                          (x1 - x0) / 2, (y1 - y0) / 2)
    else:
        region = _mask_array(mask, "mask", shape) >= 128
    if not region.any():
        raise InputImageError(f"the face given by {given[0]} lies outside the {size[0]}x{size[1]} image")
    return region


def face_mask(size: tuple[int, int], *, points=None, box=None, mask: Optional[ImageLike] = None,
              dilation: float = 0.1) -> Image.Image:
    """The face region of a `size` (width, height) image, grown by `dilation` x the face size (the
    larger side of the region's bounding box). The region comes from exactly one of: five `points`
    (an ellipse over forehead, cheeks and chin), a face `box` (its inscribed ellipse), or a face `mask`."""
    region = _face_region(size, points, box, mask)
    grown = _dilate(region, dilation * _mask_extent(region))
    return Image.fromarray(grown.astype(np.uint8) * 255)


def face_ring_mask(size: tuple[int, int], *, points=None, box=None, mask: Optional[ImageLike] = None,
                   outer: float = 0.15, inner: float = 0.1) -> Image.Image:
    """The band around the face edge for the second pass: the face region grown by `outer` x face size
    minus the region shrunk by `inner` x face size, so the seam of the first pass lies inside it."""
    region = _face_region(size, points, box, mask)
    extent = _mask_extent(region)
    ring = _dilate(region, outer * extent) & ~_erode(region, inner * extent)
    return Image.fromarray(ring.astype(np.uint8) * 255)


# ---------------------------------------------------------------- crops


class FaceCrop(NamedTuple):
    """A crop around a face, resized for the diffusion model, and where it came from in the template."""

    image: Image.Image
    box: tuple[int, int, int, int]

    def to_crop(self, points) -> np.ndarray:
        """(n, 2) template coordinates as coordinates in `image`."""
        scale = np.array([self.image.width / (self.box[2] - self.box[0]),
                          self.image.height / (self.box[3] - self.box[1])])
        return (np.asarray(points, dtype=np.float64) - self.box[:2]) * scale

    def to_template(self, points) -> np.ndarray:
        """(n, 2) coordinates in `image` as template coordinates."""
        scale = np.array([(self.box[2] - self.box[0]) / self.image.width,
                          (self.box[3] - self.box[1]) / self.image.height])
        return np.asarray(points, dtype=np.float64) * scale + self.box[:2]


def crop_box_around(face_box, image_size: tuple[int, int], scale: float = 3.0) -> tuple[int, int, int, int]:
    """The integer box `scale` times the face box on each side, same centre, clipped to the image."""
    from portrait_core.core.geometry import crop_box, scale_box

    x0, y0, x1, y1 = _box(face_box, "face_box")
    width, height = image_size
    if scale <= 0:
        raise InputImageError(f"scale must be positive, got {scale}")
    sx0, sy0, sx1, sy1 = scale_box((x0, y0, x1, y1), scale)
    if sx1 <= 0 or sy1 <= 0 or sx0 >= width or sy0 >= height:
        raise InputImageError(f"face_box {face_box!r} lies outside the {width}x{height} image")
    try:
        return crop_box((x0, y0, x1, y1), width, height, scale=scale)
    except ValueError as error:
        raise InputImageError(f"cannot crop around face_box {face_box!r}: {error}") from error


def crop_around_face(image: ImageLike, face_box, *, scale: float = 3.0, short_side: int = 512) -> FaceCrop:
    """Cut the `scale` x face box region (clipped to the image) and resize it so its short side is
    `short_side` px and both sides are multiples of 8, as diffusion models need."""
    if short_side < 8 or short_side % 8:
        raise InputImageError(f"short_side must be a positive multiple of 8, got {short_side}")
    rgb = _rgb_array(image, "image")
    box = crop_box_around(face_box, (rgb.shape[1], rgb.shape[0]), scale)
    width, height = box[2] - box[0], box[3] - box[1]
    factor = short_side / min(width, height)
    size = (max(8, round(width * factor / 8) * 8), max(8, round(height * factor / 8) * 8))
    crop = Image.fromarray(rgb[box[1] : box[3], box[0] : box[2]]).resize(size, Image.LANCZOS)
    return FaceCrop(crop, box)


def _edge_ramp(length: int, width: float, fade_start: bool, fade_end: bool) -> np.ndarray:
    """1-D weights along one side of a crop: fading to 0 at the ends that face the rest of the image.
    Always a `length` array, also when neither end fades (a crop spanning the image on this axis)."""
    index = np.arange(length, dtype=np.float64)
    distance = np.full(length, np.inf)
    if fade_start:
        distance = np.minimum(distance, index + 1.0)
    if fade_end:
        distance = np.minimum(distance, length - index)
    ramp = np.clip(distance / width, 0.0, 1.0) if width > 0 else np.ones(length)
    return ramp * ramp * (3.0 - 2.0 * ramp)


def _integer_box(crop_box, width: int, height: int) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = _box(crop_box, "crop_box")
    if any(float(v) != int(v) for v in (x0, y0, x1, y1)):
        raise InputImageError(f"crop_box {crop_box!r} must have integer corners")
    x0, y0, x1, y1 = int(x0), int(y0), int(x1), int(y1)
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        raise InputImageError(f"crop_box {crop_box!r} lies outside the {width}x{height} template")
    return x0, y0, x1, y1


def paste_crop_back(template: ImageLike, processed: ImageLike, crop_box, *,
                    feather_width: Optional[float] = None) -> Image.Image:
    """`processed` (any size; resized to the crop box) composited into `template` at `crop_box`, faded
    in over `feather_width` px (default 5% of the box's short side) along the sides of the box that
    lie inside the image; a side on or beyond the image border is not faded. A box reaching past the
    image pastes the part that overlaps it. Pixels outside the crop box are the template's, bit for bit."""
    template_rgb = _rgb_array(template, "template")
    height, width = template_rgb.shape[:2]
    x0, y0, x1, y1 = _integer_box(crop_box, width, height)
    processed_image = Image.fromarray(_rgb_array(processed, "processed"))
    resized = np.asarray(processed_image.resize((x1 - x0, y1 - y0), Image.LANCZOS))
    if feather_width is None:
        feather_width = max(1.0, 0.05 * min(x1 - x0, y1 - y0))
    weight = np.minimum(_edge_ramp(y1 - y0, feather_width, y0 > 0, y1 < height)[:, None],
                        _edge_ramp(x1 - x0, feather_width, x0 > 0, x1 < width)[None, :])
    # The part of the box inside the image, in template and in box coordinates.
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    inside = (slice(cy0 - y0, cy1 - y0), slice(cx0 - x0, cx1 - x0))
    template_rgb[cy0:cy1, cx0:cx1] = _blend(template_rgb[cy0:cy1, cx0:cx1], resized[inside], weight[inside])
    return Image.fromarray(template_rgb)


# ---------------------------------------------------------------- face fusion and skin


def _seamless_clone(source: np.ndarray, target: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Poisson blend of `source` into `target` inside `inside`, in place (no shift)."""
    import cv2

    # seamlessClone throws when the mask reaches the image border; keep a 2 px margin.
    inside = inside.copy()
    inside[:2], inside[-2:], inside[:, :2], inside[:, -2:] = False, False, False, False
    if not inside.any():
        return target.copy()
    x, y, w, h = cv2.boundingRect(inside.astype(np.uint8))
    # OpenCV places the mask's bounding box at centre - size // 2; this centre puts it back where it was.
    centre = (x + w // 2, y + h // 2)
    return cv2.seamlessClone(source, target, inside.astype(np.uint8) * 255, centre, cv2.NORMAL_CLONE)


def fuse_faces(target: ImageLike, source: ImageLike, target_points, source_points, *, ratio: float = 0.5,
               dilation: float = 0.05, feather_width: Optional[float] = None) -> Image.Image:
    """The embedded face fusion: `source`'s face aligned onto `target`'s by the five points, Poisson
    blended into the target, recoloured toward the target face's LAB statistics, and mixed in with
    weight `ratio` (0 = target unchanged, 1 = full fusion). Only pixels inside
    `face_mask(target size, points=target_points, dilation=dilation)` can change."""
    target_rgb, source_rgb = _rgb_array(target, "target"), _rgb_array(source, "source")
    ratio = _unit_interval(ratio, "ratio")
    matrix = five_point_similarity(source_points, target_points)
    size = (target_rgb.shape[1], target_rgb.shape[0])
    region = np.asarray(face_mask(size, points=target_points, dilation=dilation)) > 0
    if ratio == 0:
        return Image.fromarray(target_rgb)
    covered = _warp(np.full(source_rgb.shape[:2], 255, np.uint8), matrix, size) == 255
    region &= covered
    if not region.any():
        raise InputImageError("source_points map the source face entirely off the target face")
    cloned = _seamless_clone(_warp(source_rgb, matrix, size), target_rgb, region)
    region_mask = region.astype(np.uint8) * 255
    recoloured = np.asarray(lab_color_transfer(cloned, target_rgb, region_mask, region_mask))
    if feather_width is None:
        feather_width = 0.1 * _mask_extent(region)
    return Image.fromarray(_blend(target_rgb, recoloured, _feather(region_mask, feather_width) * ratio))


def smooth_skin(image: ImageLike, skin_mask: ImageLike, strength: float = 0.5, *,
                radius: Optional[int] = None) -> Image.Image:
    """Edge-preserving (bilateral) smoothing of the skin, mixed in with weight `strength` x mask.
    `radius` (px) defaults to 1/50 of the skin region's size, within 2..12. Pixels outside the mask
    and everything at strength 0 are unchanged."""
    import cv2

    rgb = _rgb_array(image, "image")
    weight = _mask_array(skin_mask, "skin_mask", rgb.shape[:2]).astype(np.float64) / 255.0
    strength = _unit_interval(strength, "strength")
    if radius is None:
        radius = int(np.clip(round(_mask_extent(weight > 0) / 50), 2, 12))
    if radius < 1:
        raise InputImageError(f"radius must be at least 1 px, got {radius}")
    # Filter only the mask's bounding box (plus the filter's reach): big templates, small faces.
    x, y, w, h = cv2.boundingRect((weight > 0).astype(np.uint8))
    x0, y0 = max(0, x - radius), max(0, y - radius)
    x1, y1 = min(rgb.shape[1], x + w + radius), min(rgb.shape[0], y + h + radius)
    window = rgb[y0:y1, x0:x1]
    smoothed = cv2.bilateralFilter(window, 2 * radius + 1, sigmaColor=30, sigmaSpace=radius)
    rgb[y0:y1, x0:x1] = _blend(window, smoothed, weight[y0:y1, x0:x1] * strength)
    return Image.fromarray(rgb)
