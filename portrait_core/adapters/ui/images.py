"""Images for the page: thumbnails as data URIs, and user files decoded safely into PIL images."""

from __future__ import annotations

import base64
import io
from pathlib import Path

from PIL import Image

from portrait_core.errors import UnusablePhotoError
from portrait_core.prepare.photos import PhotoLimits, decode_photo

THUMBNAIL_PX = 72
# A thumbnail is shown for any picture, however small; templates must at least hold a face.
THUMBNAIL_LIMITS = PhotoLimits(min_side=1)
TEMPLATE_LIMITS = PhotoLimits(min_side=64)


def load_image(path: Path, limits: PhotoLimits = TEMPLATE_LIMITS) -> Image.Image:
    """An upright RGB image from a file, through the same safe decoder as training photos."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise UnusablePhotoError(Path(path).name, f"cannot read the file ({error.strerror or error})") from error
    return Image.fromarray(decode_photo(data, Path(path).name, limits).pixels)


def thumbnail_data_uri(path: Path, size: int = THUMBNAIL_PX) -> str | None:
    """A small JPEG of the picture as a data: URI, or None when the file is not a picture we can read."""
    try:
        image = load_image(path, THUMBNAIL_LIMITS)
    except UnusablePhotoError:
        return None
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
