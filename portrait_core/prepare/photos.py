"""Safe decoding of user photos into upright RGB arrays, with a plain-language reason for every rejection.

A photo is read into memory once, checked against size limits before any pixel is decoded (so a
decompression bomb is refused from its header), decoded by Pillow restricted to ordinary picture
formats, checked for truncation, turned upright by its EXIF orientation, converted to sRGB when it
carries a colour profile, and converted to 8-bit RGB: transparency goes onto white, 16-bit and
float images are scaled, CMYK and grayscale are converted. Anything unusable raises
`UnusablePhotoError` whose `reason` is meant for the user.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageFile, ImageOps, UnidentifiedImageError

from portrait_core.errors import UnusablePhotoError
from portrait_core.log import get_logger

log = get_logger("photos")

# MPO (multi-picture JPEG) is opened by the JPEG plugin, which reports the format as "MPO".
SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
IGNORED_FILE_NAMES = frozenset({"thumbs.db", "desktop.ini", "icon\r"})
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_WIDE_GRAY_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


@dataclass(frozen=True)
class PhotoLimits:
    """What a photo must satisfy: short side at least `min_side`; at most `max_pixels` and `max_bytes`."""

    min_side: int = 256
    max_pixels: int = 64_000_000
    max_bytes: int = 100 * 1024 * 1024


@dataclass(frozen=True, eq=False)
class Photo:
    """A decoded photo: `pixels` is upright RGB uint8 (height, width, 3); `sha256` is of the file bytes."""

    name: str
    pixels: np.ndarray
    format: str
    sha256: str

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])


def list_photo_files(folder: Path) -> list[Path]:
    """Every regular, non-hidden file in `folder` (not recursive), in natural name order (2 before 10).

    Non-image files are listed too: the caller reports them as rejected rather than silently skipping.
    """
    folder = Path(folder)
    files = [p for p in folder.iterdir()
             if p.is_file() and not p.name.startswith(".") and p.name.lower() not in IGNORED_FILE_NAMES]
    return sorted(files, key=lambda p: (_natural_key(p.stem), p.suffix.lower(), p.name))


def _natural_key(name: str) -> list[tuple[int, int, str]]:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower())
            for part in re.split(r"(\d+)", name) if part]


def load_photo(path: Path, limits: PhotoLimits | None = None) -> Photo:
    """Read and decode a photo file; raises UnusablePhotoError with the reason when it cannot be used."""
    limits = limits or PhotoLimits()
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > limits.max_bytes:
            raise UnusablePhotoError(path.name, f"file too large ({size / 1e6:.0f} MB; the limit is "
                                                f"{limits.max_bytes / 1e6:.0f} MB)")
        data = path.read_bytes()
    except OSError as error:
        raise UnusablePhotoError(path.name, f"cannot read the file ({error.strerror or error})") from error
    return decode_photo(data, path.name, limits)


def decode_photo(data: bytes, name: str, limits: PhotoLimits | None = None) -> Photo:
    """Decode photo bytes (e.g. an upload) named `name`; raises UnusablePhotoError with the reason."""
    limits = limits or PhotoLimits()
    if not data:
        raise UnusablePhotoError(name, "not a picture: the file is empty")
    image = _open_checked(data, name, limits)
    try:
        image.load()
    except _DECODE_ERRORS as error:
        raise UnusablePhotoError(name, f"truncated or corrupt {image.format} file: {error}") from error
    if _looks_truncated(data, image.format):
        raise UnusablePhotoError(name, f"truncated {image.format} file: its end is missing")
    upright = _to_srgb(_exif_upright(image, name), name)
    pixels = to_rgb(upright)
    height, width = pixels.shape[:2]
    if min(width, height) < limits.min_side:
        raise UnusablePhotoError(name, f"too small ({width}×{height} px; need at least {limits.min_side} px "
                                       "on the short side)")
    return Photo(name=name, pixels=pixels, format=str(image.format), sha256=hashlib.sha256(data).hexdigest())


def _open_checked(data: bytes, name: str, limits: PhotoLimits) -> Image.Image:
    """Open (header only) and refuse oversized images before any pixel is decoded."""
    try:
        with warnings.catch_warnings():
            # We apply our own, lower pixel limit right below; Pillow's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except Image.DecompressionBombError as error:
        raise UnusablePhotoError(name, f"too large to open safely ({error})") from error
    except UnidentifiedImageError as error:
        raise UnusablePhotoError(name, f"not a picture: {describe_non_picture(data)}") from error
    except _DECODE_ERRORS as error:
        raise UnusablePhotoError(name, f"corrupt file ({error})") from error
    width, height = image.size
    if width * height > limits.max_pixels:
        raise UnusablePhotoError(name, f"too large to open safely ({width}×{height} px = "
                                       f"{width * height / 1e6:.0f} megapixels; the limit is "
                                       f"{limits.max_pixels / 1e6:.0f})")
    if width < 1 or height < 1:
        raise UnusablePhotoError(name, f"corrupt file (size {width}×{height})")
    return image


def _looks_truncated(data: bytes, image_format: str | None) -> bool:
    """Structural end-of-file check that works even when another extension has set Pillow's
    LOAD_TRUNCATED_IMAGES (then Pillow fills the missing part with grey instead of failing)."""
    if not ImageFile.LOAD_TRUNCATED_IMAGES:
        return False  # Pillow itself already raised for a truncated file
    if image_format in ("JPEG", "MPO"):
        start_of_scan = data.find(b"\xff\xda")
        # In entropy-coded data 0xFF is always stuffed, so FFD9 after the scan can only be the real end.
        return start_of_scan < 0 or data.find(b"\xff\xd9", start_of_scan) < 0
    if image_format == "PNG":
        return b"IEND" not in data[-1024:]
    return False


def _exif_upright(image: Image.Image, name: str) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except (*_DECODE_ERRORS, TypeError, KeyError, AttributeError) as error:
        log.warning("%s: unreadable EXIF orientation (%s); using the photo as stored", name, error)
        return image


def _to_srgb(image: Image.Image, name: str) -> Image.Image:
    """Convert RGB/CMYK pixels with an embedded colour profile to sRGB (phones often use Display P3)."""
    icc = image.info.get("icc_profile")
    if not icc or image.mode not in ("RGB", "CMYK"):
        return image
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if ImageCms.getProfileDescription(profile).strip().lower().startswith("srgb"):
            return image if image.mode == "RGB" else image.convert("RGB")
        srgb = ImageCms.createProfile("sRGB")
        return ImageCms.profileToProfile(image, profile, srgb, outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as error:
        log.warning("%s: unusable colour profile (%s); colours are used as stored", name, error)
        return image


def to_rgb(image: Image.Image) -> np.ndarray:
    """Any Pillow image as RGB uint8: alpha composited on white, 16-bit/float scaled, others converted."""
    mode = image.mode
    if mode == "RGB":
        return np.array(image, dtype=np.uint8)
    if mode in _WIDE_GRAY_MODES:
        gray = wide_gray_to_uint8(np.asarray(image), mode)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode in _ALPHA_MODES or "transparency" in image.info:
        return composite_on_white(np.asarray(image.convert("RGBA")))
    return np.array(image.convert("RGB"), dtype=np.uint8)


def wide_gray_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Scale a 16-bit, 32-bit integer or float grayscale array to 0..255.

    16-bit modes use the full 0..65535 range. Mode "I" (Pillow's container for 16-bit PNGs) is read as
    8-bit data when it fits in 0..255, as 16-bit when it fits in 0..65535, else scaled by its maximum.
    Float data in 0..1 is scaled by 255, other float data by its maximum.
    """
    values = np.asarray(values, dtype=np.float64)
    finite_max = float(np.nanmax(values)) if values.size else 0.0
    if mode.startswith("I;16"):
        scale = 65535.0
    elif mode == "F":
        scale = 1.0 if finite_max <= 1.0 else finite_max
    elif finite_max <= 255.0:
        scale = 255.0
    elif finite_max <= 65535.0:
        scale = 65535.0
    else:
        scale = finite_max
    scaled = np.nan_to_num(values / scale * 255.0, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """RGBA uint8 (h, w, 4) -> RGB uint8 (h, w, 3), transparent parts white."""
    color = rgba[:, :, :3].astype(np.float32)
    alpha = rgba[:, :, 3:4].astype(np.float32) / 255.0
    blended = color * alpha + 255.0 * (1.0 - alpha)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


_SIGNATURES = (
    (b"%PDF", "the file is a PDF document"),
    (b"PK\x03\x04", "the file is a ZIP archive (or an Office document)"),
    (b"\x1f\x8b", "the file is a gzip archive"),
    (b"Rar!", "the file is a RAR archive"),
    (b"7z\xbc\xaf\x27\x1c", "the file is a 7-Zip archive"),
    (b"8BPS", "the file is a Photoshop document; export it as JPEG or PNG"),
    (b"%!PS", "the file is a PostScript document"),
    (b"\x00\x00\x01\x00", "the file is a Windows icon"),
    (b"\x7fELF", "the file is a program"),
    (b"MZ", "the file is a program"),
    (b"ID3", "the file is an MP3 audio file"),
    (b"OggS", "the file is an Ogg audio/video file"),
)
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1")


def describe_non_picture(data: bytes) -> str:
    """A short description of what a file is when it is not a picture we can decode."""
    head = data[:512]
    for magic, description in _SIGNATURES:
        if head.startswith(magic):
            return description
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _HEIF_BRANDS:
            return "the file is a HEIC/HEIF photo, which is not supported; export it as JPEG or PNG"
        if brand in (b"avif", b"avis"):
            return "the file is an AVIF picture, which is not supported; export it as JPEG or PNG"
        return "the file is a video"
    if head.startswith(b"RIFF") and head[8:12] != b"WEBP":
        return "the file is a RIFF media file (audio or video)"
    return _describe_text(head) or ("its content is not a JPEG, PNG, WebP, BMP, TIFF or GIF image "
                                    "(unknown or damaged format)")


def _describe_text(head: bytes) -> str | None:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if text and all(ch.isprintable() or ch.isspace() for ch in text):
        lowered = text.lstrip().lower()
        if lowered.startswith(("<!doctype html", "<html")):
            return "the file is a web page (HTML), not the picture itself"
        if lowered.startswith("<svg") or (lowered.startswith("<?xml") and "<svg" in lowered):
            return "the file is an SVG drawing; export it as PNG or JPEG"
        return "the file is text"
    return None
