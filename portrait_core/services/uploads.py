"""What one upload may carry, and the names uploaded files are saved under: the same for every door."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

PHOTO_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
MAX_TEMPLATES = 16  # templates per generation request
_MB = 1024 * 1024
_UNSAFE_NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True)
class UploadLimits:
    """What one request may carry. `POST train`: the whole body, the photos, each photo, its params text.
    `POST generate` and `POST workflow`: the whole body (by default room for MAX_TEMPLATES images of
    `max_template_bytes` each in base64, plus 1 MB for the parameters) and each image in it."""

    max_request_bytes: int = 256 * _MB
    max_photos: int = 50
    max_photo_bytes: int = 30 * _MB
    max_params_bytes: int = 64 * 1024
    max_template_bytes: int = 30 * _MB
    max_generate_bytes: int = MAX_TEMPLATES * (30 * _MB * 4 // 3 + 4) + _MB


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
