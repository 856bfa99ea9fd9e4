"""Training-photo preparation: check, score and select a user's photos, then write the identity's dataset.

1. Decode every file safely (`photos.load_photo`); unusable files are rejected with the reason.
2. Detect faces and embed them (every face big enough to matter, so group photos count).
3. Find the identity: the person who appears across the most photos (`find_identity_centre`), and in
   each photo the face that matches them best; photos whose best face is somebody else are rejected
   as "different person", with the score.
4. Reject faces that are too small or turned away (frontalness from the five points). With a super-resolution
   `upscaler`, a face between half the minimum size and the minimum is kept instead, and its crop is
   super-resolved rather than enlarged (EasyPhoto does the same); report.json says which were (`enhanced`).
5. Rank by identity score x frontal score (x 0.9 for a face cut by the photo's edge): the best is the
   reference face; keep the top k.
6. Crop each kept photo around its face (a square 3x the face size, 512 px), keep the person inside a widened
   face box on a white background (other faces painted out), optionally smooth the skin and enhance
   upscaled crops, and write the dataset folder atomically (`store.atomic_directory`), so a failed
   re-run leaves the previous dataset in place. `report.json` records every input photo.
"""

from __future__ import annotations

import io
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

import cv2
import numpy as np
from PIL import Image

from portrait_core import __version__
from portrait_core.core.align import align_face, transform_points
from portrait_core.core.geometry import (
    LEVEL_TOLERANCE_DEGREES,
    frontal_score,
    head_roll_degrees,
    scale_box,
    square_crop_box,
)
from portrait_core.core.masks import box_mask
from portrait_core.errors import InputImageError, NoUsablePhotosError, UnusablePhotoError
from portrait_core.faces.base import Face, FaceAnalyzer, get_face_analyzer, similarity
from portrait_core.log import get_logger
from portrait_core.prepare.photos import Photo, PhotoLimits, list_photo_files, load_photo
from portrait_core.store import (
    DatasetLayout,
    IdentityPaths,
    atomic_directory,
    atomic_write_bytes,
    atomic_write_json,
    identity_paths,
)

log = get_logger("preprocess")

Progress = Callable[[int, int, str], None]
Enhancer = Callable[[np.ndarray], np.ndarray]
Upscaler = Callable[[np.ndarray, float], np.ndarray]  # (RGB pixels, scale) -> RGB pixels `scale` times the size

# Ranking factor for a face cut by the photo's edge: it is still kept, but a whole face is preferred,
# above all as the reference face.
EDGE_PENALTY = 0.9
UPLOAD_ADVICE = ("Upload 5 to 20 photos of one person (JPEG, PNG or WebP): the face clearly visible, facing "
                 "the camera, at least {min_face} px tall, and the same person in most of the photos.")


@dataclass(frozen=True)
class PreprocessOptions:
    """Knobs of the preparation; the defaults follow the EasyPhoto reference values."""

    top_k: int = 15
    min_face_px: int = 128
    min_frontal: float = 0.25
    identity_threshold: float | None = None   # default: the analyzer's same_person_threshold
    crop_scale: float = 3.0
    crop_short_side: int | None = 512         # None keeps the crop's own resolution
    white_background: bool = True
    keep_box_scale: float = 2.2               # the widened face box the person mask is limited to
    retouch: bool = False
    trigger: str | None = None                # caption token; default: the identity id
    max_faces_per_photo: int = 8
    photo_limits: PhotoLimits = field(default_factory=PhotoLimits)

    def __post_init__(self) -> None:
        checks = {
            "top_k": self.top_k >= 1,
            "min_face_px": self.min_face_px >= 0,
            "min_frontal": 0.0 <= self.min_frontal <= 1.0,
            "identity_threshold": self.identity_threshold is None or -1.0 <= self.identity_threshold <= 1.0,
            "crop_scale": self.crop_scale >= 1.0,
            "crop_short_side": self.crop_short_side is None or 64 <= self.crop_short_side <= 4096,
            "keep_box_scale": self.keep_box_scale >= 1.0,
            "max_faces_per_photo": self.max_faces_per_photo >= 1,
        }
        for name, valid in checks.items():
            if not valid:
                raise ValueError(f"PreprocessOptions.{name} has an invalid value: {getattr(self, name)!r}")


@dataclass
class PhotoEntry:
    """One line of report.json."""

    file: str
    kept: bool = False
    reason: str | None = None
    identity_score: float | None = None
    frontal_score: float | None = None
    face_box: list[float] | None = None
    enhanced: bool = False  # its face was below the minimum size and was super-resolved before cropping

    def to_json(self) -> dict:
        return {"file": self.file, "kept": self.kept, "reason": self.reason,
                "identity_score": self.identity_score, "frontal_score": self.frontal_score,
                "face_box": self.face_box, "enhanced": self.enhanced}


@dataclass
class PreprocessReport:
    """report.json: the identity, the reference photo and one entry per input file, in input order."""

    id: str
    reference: str | None
    photos: list[PhotoEntry]
    dataset: Path | None = None

    @property
    def kept(self) -> list[PhotoEntry]:
        return [entry for entry in self.photos if entry.kept]

    def to_json(self) -> dict:
        return {"id": self.id, "reference": self.reference, "photos": [p.to_json() for p in self.photos]}


@dataclass
class _Analysis:
    """What the first pass learns about one photo."""

    path: Path
    entry: PhotoEntry
    sha256: str | None = None
    faces: list[Face] = field(default_factory=list)
    embeddings: list[np.ndarray] = field(default_factory=list)
    subject: int | None = None
    rank_score: float = 0.0
    image_size: tuple[int, int] = (0, 0)  # width, height of the upright photo
    small_face: bool = False  # below the minimum size, kept because it will be super-resolved

    @property
    def face(self) -> Face:
        assert self.subject is not None
        return self.faces[self.subject]


@dataclass(frozen=True)
class IdentityCentre:
    """The robust centre of the identity's embeddings and how many photos support it."""

    vector: np.ndarray
    support: int


# -- public entry points -----------------------------------------------------------------------------

def preprocess_folder(photos_dir: Path, identity: str, **kwargs) -> PreprocessReport:
    """`preprocess_photos` over every file in `photos_dir` (natural name order)."""
    return preprocess_photos(list_photo_files(Path(photos_dir)), identity, **kwargs)


def preprocess_photos(files: Sequence[Path], identity: str, *, root: Path | None = None,
                      analyzer: FaceAnalyzer | None = None, options: PreprocessOptions | None = None,
                      enhance: Enhancer | None = None, progress: Progress | None = None,
                      upscaler: Upscaler | None = None) -> PreprocessReport:
    """Check, score and select `files`, write the identity's dataset and report; returns the report.

    `upscaler` (super-resolution): faces under `options.min_face_px` (but at least half of it) are kept and
    their crops super-resolved instead of being rejected as too small.

    Raises NoUsablePhotosError (carrying the report, which is still written to `<identity>/report.json`)
    when no photo can be kept; the previous dataset, if any, is then left as it was. Without an
    `analyzer`, the best installed backend is loaded for this call and unloaded after it.
    """
    paths = identity_paths(identity, root)
    options = options or PreprocessOptions()
    if analyzer is None:
        analyzer = get_face_analyzer("auto")
        try:
            return preprocess_photos(files, identity, root=root, analyzer=analyzer, options=options,
                                     enhance=enhance, progress=progress, upscaler=upscaler)
        finally:
            analyzer.unload()  # we loaded the models, so we free them
    threshold = options.identity_threshold
    threshold = analyzer.same_person_threshold if threshold is None else threshold
    analyses = _analyse_all(files, analyzer, options, progress)
    centre = find_identity_centre([a.embeddings for a in analyses if a.embeddings], threshold)
    for analysis in analyses:
        if analysis.embeddings and centre is not None:
            _judge(analysis, centre, threshold, options, can_enhance=upscaler is not None)
    kept = _select_top(analyses, options.top_k)
    report = PreprocessReport(id=paths.id, reference=None, photos=[a.entry for a in analyses])
    if kept:
        kept = _write_dataset(paths, kept, analyzer=analyzer, options=options, centre=centre, report=report,
                              enhance=enhance, progress=progress, upscaler=upscaler)
    if not kept:
        atomic_write_json(paths.report, report.to_json())
        raise NoUsablePhotosError(_no_usable_message(report, options), report)
    atomic_write_json(paths.report, report.to_json())
    report.dataset = paths.dataset
    log.info("%s: kept %d of %d photos; reference %s", paths.id, len(kept), len(analyses), report.reference)
    return report


def run_from_cli(photos_dir: Path, identity: str, root: Path | None) -> int:
    """`python -m portrait_core preprocess PHOTOS_DIR --id NAME [--root DIR]`; returns the exit code."""
    photos_dir = Path(photos_dir)
    if not photos_dir.is_dir():
        sys.stderr.write(f"error: {photos_dir} is not a folder of photos\n")
        return 2
    paths = identity_paths(identity, root)  # reject a bad id before any model loads
    files = list_photo_files(photos_dir)
    if not files:
        sys.stderr.write(f"error: {photos_dir} contains no files. "
                         f"{UPLOAD_ADVICE.format(min_face=PreprocessOptions().min_face_px)}\n")
        return 1
    from portrait_core.models.superres import array_upscaler

    analyzer = get_face_analyzer("auto")
    try:
        report = preprocess_photos(files, paths.id, root=paths.root, analyzer=analyzer, upscaler=array_upscaler())
    except NoUsablePhotosError as error:
        write_summary(error.report, paths, sys.stdout)
        sys.stderr.write(f"error: {error}\n")
        return 1
    finally:
        analyzer.unload()
    write_summary(report, paths, sys.stdout)
    return 0


# -- pass 1: decode, detect, embed -------------------------------------------------------------------

def _analyse_all(files: Sequence[Path], analyzer: FaceAnalyzer, options: PreprocessOptions,
                 progress: Progress | None) -> list[_Analysis]:
    analyses: list[_Analysis] = []
    seen: dict[str, str] = {}
    for index, path in enumerate(files):
        if progress is not None:
            progress(index, len(files), f"checking {Path(path).name}")
        analysis = _analyse_photo(Path(path), analyzer, options, seen)
        analyses.append(analysis)
        if analysis.entry.reason:
            log.info("%s: rejected, %s", analysis.entry.file, analysis.entry.reason)
    return analyses


def _analyse_photo(path: Path, analyzer: FaceAnalyzer, options: PreprocessOptions,
                   seen: dict[str, str]) -> _Analysis:
    analysis = _Analysis(path=path, entry=PhotoEntry(file=path.name))
    try:
        photo = load_photo(path, options.photo_limits)
    except UnusablePhotoError as error:
        analysis.entry.reason = error.reason
        return analysis
    analysis.sha256 = photo.sha256
    analysis.image_size = (photo.width, photo.height)
    if photo.sha256 in seen:
        analysis.entry.reason = f"duplicate of {seen[photo.sha256]}"
        return analysis
    seen[photo.sha256] = path.name
    try:
        _find_faces(analysis, photo, analyzer, options)
    except (RuntimeError, ValueError, cv2.error, InputImageError) as error:
        # A model failing on one photo must not sink the others: report it and go on.
        log.exception("%s: face analysis failed", path.name)
        analysis.entry.reason = f"face analysis failed ({type(error).__name__}: {error})"
    return analysis


def _find_faces(analysis: _Analysis, photo: Photo, analyzer: FaceAnalyzer, options: PreprocessOptions) -> None:
    faces = analyzer.detect(photo.pixels, small_faces=False)  # a large face found: no tiled search for more
    if not faces:
        analysis.entry.reason = "no face found"
        return
    # Faces under half the minimum size can never be kept; skipping them keeps crowd photos fast.
    usable = [f for f in faces if f.size >= options.min_face_px / 2][: options.max_faces_per_photo]
    if not usable:
        analysis.entry.face_box = faces[0].box_list()
        analysis.entry.reason = _too_small_reason(faces[0], options)
        return
    analysis.faces = usable
    analysis.embeddings = [analyzer.embed(photo.pixels, face) for face in usable]


def _too_small_reason(face: Face, options: PreprocessOptions) -> str:
    return f"face too small ({face.size:.0f} px; need at least {options.min_face_px} px)"


# -- pass 2: identity, scores, selection -------------------------------------------------------------

def find_identity_centre(embeddings_per_photo: Sequence[Sequence[np.ndarray]], threshold: float,
                         rounds: int = 3) -> IdentityCentre | None:
    """Robust centre of the person who appears in the most photos.

    Seed: the face whose best matches in the *other* photos add up highest (a medoid over photos, so
    a stranger who appears once cannot win). Then, `rounds` times: in each photo take the face closest
    to the centre; the photos whose closest face is at least `threshold` similar are the inliers; the
    centre becomes the normalised mean of the inliers. One wrong photo therefore never moves it.
    """
    photos = [[np.asarray(e, dtype=np.float64) for e in faces] for faces in embeddings_per_photo if faces]
    if not photos:
        return None
    centre = _seed_embedding(photos)
    support = 1
    for _ in range(rounds):
        closest = [max(faces, key=lambda e, c=centre: similarity(e, c)) for faces in photos]
        inliers = [e for e in closest if similarity(e, centre) >= threshold] or [centre]
        support = len(inliers)
        mean = np.mean(inliers, axis=0)
        centre = mean / np.linalg.norm(mean)
    return IdentityCentre(vector=centre.astype(np.float32), support=support)


def _seed_embedding(photos: list[list[np.ndarray]]) -> np.ndarray:
    best, best_support = photos[0][0], -np.inf
    for index, faces in enumerate(photos):
        for face in faces:
            support = sum(max(similarity(face, other) for other in others)
                          for j, others in enumerate(photos) if j != index)
            if support > best_support + 1e-9:
                best, best_support = face, support
    return best


def _judge(analysis: _Analysis, centre: IdentityCentre, threshold: float, options: PreprocessOptions, *,
           can_enhance: bool = False) -> None:
    """Pick the photo's subject face, score it, and reject it if it is not a usable face of the identity
    (a small one is kept when `can_enhance`: its crop will be super-resolved)."""
    scores = [similarity(e, centre.vector) for e in analysis.embeddings]
    analysis.subject = int(np.argmax(scores))
    entry, face = analysis.entry, analysis.face
    entry.identity_score = round(scores[analysis.subject], 4)
    entry.frontal_score = round(frontal_score(face.points), 4)
    entry.face_box = face.box_list()
    if entry.identity_score < threshold:
        entry.reason = (f"different person (identity score {entry.identity_score:.2f}; the person in most "
                        f"photos scores at least {threshold:.2f})")
    elif face.size < options.min_face_px and not can_enhance:
        entry.reason = _too_small_reason(face, options)
    elif entry.frontal_score < options.min_frontal:
        entry.reason = (f"face turned away from the camera (frontal score {entry.frontal_score:.2f}; "
                        f"need {options.min_frontal:.2f})")
    analysis.small_face = face.size < options.min_face_px
    analysis.rank_score = entry.identity_score * entry.frontal_score
    if _cut_by_edge(face, analysis.image_size):
        analysis.rank_score *= EDGE_PENALTY
    if entry.reason:
        log.info("%s: rejected, %s", entry.file, entry.reason)


def _cut_by_edge(face: Face, image_size: tuple[int, int], margin: float = 1.0) -> bool:
    """True when the face box touches the photo's border: part of the face is probably outside it."""
    width, height = image_size
    x0, y0, x1, y1 = face.box
    return x0 <= margin or y0 <= margin or x1 >= width - margin or y1 >= height - margin


def _select_top(analyses: list[_Analysis], top_k: int) -> list[_Analysis]:
    """Candidates best first (identity x frontal); the ones past `top_k` are rejected with their score."""
    candidates = [a for a in analyses if a.subject is not None and not a.entry.reason]
    candidates.sort(key=lambda a: -a.rank_score)
    for analysis in candidates[top_k:]:
        analysis.entry.reason = (f"not among the {top_k} best photos (identity x frontal score "
                                 f"{analysis.rank_score:.2f})")
    return candidates[:top_k]


# -- pass 3: crops, masks, dataset -------------------------------------------------------------------

@dataclass
class _Crop:
    pixels: np.ndarray
    face: Face            # the subject face in crop coordinates
    upscaled: bool
    enhanced: bool = False


def _write_dataset(paths: IdentityPaths, kept: list[_Analysis], *, analyzer: FaceAnalyzer,
                   options: PreprocessOptions, centre: IdentityCentre | None, report: PreprocessReport,
                   enhance: Enhancer | None, progress: Progress | None,
                   upscaler: Upscaler | None = None) -> list[_Analysis]:
    """Crop the kept photos, then build the dataset folder in staging and swap it in; returns the
    photos that made it in (none: nothing is written and the previous dataset stays)."""
    prepared: list[tuple[_Analysis, _Crop, Photo]] = []
    for index, analysis in enumerate(kept):
        if progress is not None:
            progress(index, len(kept), f"cropping {analysis.entry.file}")
        result = _prepare_crop(analysis, analyzer, options, enhance, upscaler if analysis.small_face else None)
        if result is not None:
            prepared.append(result)
    if not prepared:
        return []
    report.reference = prepared[0][0].entry.file
    for analysis, crop, _ in prepared:
        analysis.entry.kept = True
        analysis.entry.enhanced = crop.enhanced
    with atomic_directory(paths.dataset) as staging:
        layout = paths.dataset_layout(staging)
        layout.images.mkdir()
        for index, (_, crop, _) in enumerate(prepared):
            _save_image(layout, index, crop, _caption(paths.id, options))
        _save_reference(layout, prepared[0])
        _save_metadata(layout, paths.id, prepared, analyzer=analyzer, options=options, centre=centre,
                       report=report)
    return [analysis for analysis, _, _ in prepared]


def _prepare_crop(analysis: _Analysis, analyzer: FaceAnalyzer, options: PreprocessOptions,
                  enhance: Enhancer | None, upscaler: Upscaler | None = None) -> tuple[_Analysis, _Crop, Photo] | None:
    try:
        photo = load_photo(analysis.path, options.photo_limits)
    except UnusablePhotoError as error:
        analysis.entry.reason = f"could not be read again while cropping ({error.reason})"
        return None
    if photo.sha256 != analysis.sha256:
        analysis.entry.reason = "the file changed while it was being prepared; run again"
        return None
    others = [f for i, f in enumerate(analysis.faces) if i != analysis.subject]
    crop = make_training_crop(photo.pixels, analysis.face, others, analyzer, options, upscaler=upscaler)
    if enhance is not None and crop.upscaled:
        crop = _enhanced(crop, enhance)
    return analysis, crop, photo


def make_training_crop(pixels: np.ndarray, face: Face, other_faces: Sequence[Face], analyzer: FaceAnalyzer,
                       options: PreprocessOptions, *, upscaler: Upscaler | None = None) -> _Crop:
    """Square crop centred on `face` (crop_scale x its size, kept inside the photo), eyes levelled,
    resized to `crop_short_side` (enlarged by `upscaler`, when given, instead of Lanczos), background cleaned."""
    pixels, face, other_faces = level_eyes(pixels, face, other_faces)
    height, width = pixels.shape[:2]
    x0, y0, x1, y1 = square_crop_box(face.box, width, height, options.crop_scale)
    region = pixels[y0:y1, x0:x1]
    scale = 1.0 if options.crop_short_side is None else options.crop_short_side / min(region.shape[:2])
    size = (max(1, round(region.shape[1] * scale)), max(1, round(region.shape[0] * scale)))
    interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LANCZOS4
    super_resolve = upscaler is not None and scale > 1.0
    if super_resolve:
        resized = _super_resolved(region, scale, size, upscaler)
    else:
        resized = cv2.resize(region, size, interpolation=interpolation) if scale != 1.0 else region.copy()
    crop = _Crop(pixels=resized, face=face.in_crop(x0, y0, scale), upscaled=scale > 1.05, enhanced=super_resolve)
    others = [f.in_crop(x0, y0, scale) for f in other_faces]
    if options.white_background:
        crop.pixels = on_white_background(crop.pixels, subject_mask(crop.pixels, crop.face, others, analyzer,
                                                                    options.keep_box_scale))
    if options.retouch:
        skin = analyzer.face_mask(crop.pixels, crop.face, eyes=False, brows=False, lips=False)
        crop.pixels = smooth_skin_array(crop.pixels, skin)
    return crop


def _super_resolved(region: np.ndarray, scale: float, size: tuple[int, int], upscaler: Upscaler) -> np.ndarray:
    result = np.asarray(upscaler(region, scale))
    if result.ndim != 3 or result.shape[2] != 3 or result.dtype != np.uint8:
        raise InputImageError(f"the super-resolution returned {result.shape} {result.dtype}; expected RGB uint8")
    if (result.shape[1], result.shape[0]) != size:  # a rounding pixel apart
        result = cv2.resize(result, size, interpolation=cv2.INTER_AREA)
    return result


def level_eyes(pixels: np.ndarray, face: Face, other_faces: Sequence[Face]) -> tuple[np.ndarray, Face, list[Face]]:
    """The photo turned so that `face`'s eyes are level (canvas grown to keep every pixel, new corners
    white), with the faces moved along; unchanged when the tilt is within LEVEL_TOLERANCE_DEGREES."""
    roll = head_roll_degrees(face.points)
    if abs(roll) <= LEVEL_TOLERANCE_DEGREES:
        return pixels, face, list(other_faces)
    height, width = pixels.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2.0, height / 2.0), roll, 1.0)
    cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
    new_width, new_height = math.ceil(height * sin + width * cos), math.ceil(height * cos + width * sin)
    matrix[:, 2] += (new_width / 2.0 - width / 2.0, new_height / 2.0 - height / 2.0)
    levelled = cv2.warpAffine(pixels, matrix, (new_width, new_height), flags=cv2.INTER_CUBIC,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=(255, 255, 255))
    return levelled, face.transformed(matrix), [other.transformed(matrix) for other in other_faces]


def subject_mask(image: np.ndarray, face: Face, other_faces: Sequence[Face], analyzer: FaceAnalyzer,
                 keep_box_scale: float) -> np.ndarray:
    """The person mask limited to a widened box around the subject's face (head, hair, neck and a bit of
    shoulder), minus other people's faces and any part not connected to the subject's face; the
    subject's own face region is always kept."""
    shape = image.shape[:2]
    keep_box = scale_box(face.box, keep_box_scale, keep_box_scale * 1.1, shift_y=0.25)
    mask = np.minimum(analyzer.person_mask(image), box_mask(shape, keep_box))
    for other in other_faces:
        mask[box_mask(shape, scale_box(other.box, 1.3)) > 0] = 0
    face_region = analyzer.face_mask(image, face)
    return np.maximum(keep_connected_to(mask, face_region), face_region)


def keep_connected_to(mask: np.ndarray, anchor: np.ndarray) -> np.ndarray:
    """The parts of `mask` (0/255) that touch `anchor` (0/255); e.g. drop a bystander's shoulder."""
    count, labels = cv2.connectedComponents((mask > 0).astype(np.uint8), connectivity=8)
    touching = np.unique(labels[(anchor > 0) & (labels > 0)])
    if count <= 1 or touching.size == 0:
        return mask
    return np.where(np.isin(labels, touching), 255, 0).astype(np.uint8)


def on_white_background(image: np.ndarray, mask: np.ndarray, feather: float = 2.0) -> np.ndarray:
    """`image` where `mask` is set, white elsewhere, with a softened edge (`feather` px Gaussian)."""
    alpha = mask.astype(np.float32) / 255.0
    if feather > 0:
        alpha = cv2.GaussianBlur(alpha, (0, 0), feather)
    alpha = alpha[:, :, None]
    blended = image.astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def smooth_skin_array(image: np.ndarray, skin_mask: np.ndarray, strength: float = 0.6) -> np.ndarray:
    """face_imaging.smooth_skin on arrays (the dataset is built from arrays)."""
    from portrait_core.core.face_imaging import smooth_skin

    if not skin_mask.any():  # no skin found: nothing to smooth
        return image
    return np.asarray(smooth_skin(image, skin_mask, strength))


def _enhanced(crop: _Crop, enhance: Enhancer) -> _Crop:
    result = np.asarray(enhance(crop.pixels))
    if result.shape != crop.pixels.shape or result.dtype != np.uint8:
        raise InputImageError(f"the enhancer returned {result.shape} {result.dtype}; expected "
                              f"{crop.pixels.shape} uint8 (same size as its input)")
    return _Crop(pixels=result, face=crop.face, upscaled=crop.upscaled, enhanced=True)


def _caption(identity: str, options: PreprocessOptions) -> str:
    trigger = options.trigger or identity
    return f"{trigger}, a photo of a person" + (", white background" if options.white_background else "")


def _png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=4)
    return buffer.getvalue()


def _save_image(layout: DatasetLayout, index: int, crop: _Crop, caption: str) -> None:
    layout.image(index).write_bytes(_png_bytes(crop.pixels))
    layout.caption(index).write_text(caption + "\n", encoding="utf-8")


def _save_reference(layout: DatasetLayout, reference: tuple[_Analysis, _Crop, Photo]) -> None:
    analysis, crop, photo = reference
    chip, matrix = align_face(photo.pixels, analysis.face.points, size=512, face_fraction=0.6)
    atomic_write_bytes(layout.reference_image, _png_bytes(crop.pixels))
    atomic_write_bytes(layout.reference_face, _png_bytes(chip))
    atomic_write_json(layout.reference_info, {
        "source": analysis.entry.file,
        "identity_score": analysis.entry.identity_score,
        "frontal_score": analysis.entry.frontal_score,
        "source_face_box": analysis.entry.face_box,
        "source_points": _points_json(analysis.face.points),
        "image": layout.reference_image.name,
        "image_face_box": crop.face.box_list(),
        "image_points": _points_json(crop.face.points),
        "face_image": layout.reference_face.name,
        "face_image_points": _points_json(transform_points(analysis.face.points, matrix)),
    })


def _points_json(points: np.ndarray) -> list[list[float]]:
    return [[round(float(x), 2), round(float(y), 2)] for x, y in np.asarray(points)]


def _save_metadata(layout: DatasetLayout, identity: str, written: list[tuple[_Analysis, _Crop, Photo]], *,
                   analyzer: FaceAnalyzer, options: PreprocessOptions, centre: IdentityCentre | None,
                   report: PreprocessReport) -> None:
    images = []
    for index, (analysis, crop, _) in enumerate(written):
        images.append({
            "image": f"{layout.images.name}/{layout.image(index).name}",
            "caption": f"{layout.images.name}/{layout.caption(index).name}",
            "source": analysis.entry.file, "width": crop.pixels.shape[1], "height": crop.pixels.shape[0],
            "face_box": crop.face.box_list(), "points": _points_json(crop.face.points),
            "identity_score": analysis.entry.identity_score, "frontal_score": analysis.entry.frontal_score,
            "upscaled": crop.upscaled, "enhanced": crop.enhanced,
        })
    atomic_write_json(layout.manifest, {
        "format": 1, "id": identity, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "portrait_studio": __version__, "face_backend": analyzer.name,
        "trigger": options.trigger or identity, "caption": _caption(identity, options),
        "resolution": options.crop_short_side, "crop_scale": options.crop_scale,
        "white_background": options.white_background, "retouch": options.retouch,
        "reference": {"source": report.reference, "image": layout.reference_image.name,
                      "face_image": layout.reference_face.name},
        "images": images,
    })
    atomic_write_json(layout.embeddings, _embeddings_json(written, analyzer, centre))
    atomic_write_json(layout.report, report.to_json())


def _embeddings_json(written: list[tuple[_Analysis, _Crop, Photo]], analyzer: FaceAnalyzer,
                     centre: IdentityCentre | None) -> dict:
    def vector(values: np.ndarray) -> list[float]:
        return [round(float(v), 6) for v in np.asarray(values).ravel()]

    return {
        "backend": analyzer.name, "model": analyzer.embedding_model, "dim": int(analyzer.embedding_size),
        "same_person_threshold": analyzer.same_person_threshold,
        "centre": vector(centre.vector) if centre is not None else None,
        "photos": [{"file": a.entry.file, "image": f"images/{i:04d}.png", "identity_score": a.entry.identity_score,
                    "embedding": vector(a.embeddings[a.subject])} for i, (a, _, _) in enumerate(written)],
    }


# -- messages ----------------------------------------------------------------------------------------

def _no_usable_message(report: PreprocessReport, options: PreprocessOptions) -> str:
    counts: dict[str, int] = {}
    for entry in report.photos:
        key = (entry.reason or "unknown").split(" (")[0]
        counts[key] = counts.get(key, 0) + 1
    summary = ", ".join(f"{count}× {reason}" for reason, count in sorted(counts.items(), key=lambda kv: -kv[1]))
    return (f"no usable photo among {len(report.photos)} for '{report.id}' ({summary}). "
            + UPLOAD_ADVICE.format(min_face=options.min_face_px))


def write_summary(report: PreprocessReport, paths: IdentityPaths, stream: TextIO) -> None:
    """A human-readable table of the report (what the CLI prints)."""
    kept = len(report.kept)
    stream.write(f"{paths.id}: {kept} of {len(report.photos)} photos kept"
                 + (f", reference {report.reference}\n" if report.reference else "\n"))
    width = max([len(e.file) for e in report.photos] + [4])
    for entry in report.photos:
        status = "kept" if entry.kept else "rejected"
        scores = ""
        if entry.identity_score is not None:
            scores = f"identity {entry.identity_score:.2f}  frontal {entry.frontal_score:.2f}"
        detail = scores if entry.kept else (entry.reason or "")
        marker = "  (reference)" if entry.file == report.reference and entry.kept else ""
        stream.write(f"  {status:<8}  {entry.file:<{width}}  {detail}{marker}\n")
    if kept:
        stream.write(f"dataset: {paths.dataset}\n")
    stream.write(f"report:  {paths.report}\n")
