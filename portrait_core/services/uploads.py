"""What one upload may carry, and the names uploaded files are saved under: the same for every door."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

PHOTO_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
MAX_TEMPLATES = 16  # templates per generation request
_UNSAFE_NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True)
class UploadLimits:
    """What one `POST train` may carry."""

    max_request_bytes: int = 256 * 1024 * 1024
    max_photos: int = 50
    max_photo_bytes: int = 30 * 1024 * 1024
    max_params_bytes: int = 64 * 1024


def safe_photo_name(index: int, client_name: Optional[str]) -> str:
    """The name we save a photo under: its position, then letters, digits, '-' and '_' of the client's name
    (never a path), then its extension if it is a picture's: 'C:\\x\\..\\My photo.JPG' -> '01-My_photo.jpg'."""
    base = re.split(r"[\\/]", client_name or "")[-1]
    stem, dot, extension = base.rpartition(".")
    if not dot:
        stem, extension = base, ""
    suffix = f".{extension.lower()}" if f".{extension.lower()}" in PHOTO_EXTENSIONS else ""
    label = _UNSAFE_NAME_CHARACTERS.sub("_", stem).strip("_-")[:40] or "photo"
    return f"{index + 1:02d}-{label}{suffix}"
