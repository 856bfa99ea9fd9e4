"""The WebUI's model hashes of a checkpoint file (the ids its infotext and LoRA metadata carry), cached."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from portrait_core.config import settings
from portrait_core.log import get_logger
from portrait_core.models.checkpoints.header import require_file
from portrait_core.store import atomic_write_json

log = get_logger("checkpoints")

HASH_CACHE_NAME = "checkpoint-hashes.json"


def checkpoint_sha256(path: Path | str, *, cache_file: Path | None = None) -> str:
    """SHA-256 of the whole file, as the WebUI computes it; cached by path, size and mtime."""
    path = Path(path)
    require_file(path)
    stat = path.stat()
    cache_file = cache_file or settings().cache_dir / HASH_CACHE_NAME
    cache = _read_hash_cache(cache_file)
    key = str(path.resolve())
    entry = cache.get(key)
    if isinstance(entry, dict) and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
        return entry["sha256"]
    log.info("hashing %s (once; cached)", path.name)
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1024 * 1024), b""):
            digest.update(chunk)
    cache[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest.hexdigest()}
    try:
        atomic_write_json(cache_file, cache)
    except OSError as error:  # the hash is right either way; it is only computed again next time
        log.warning("cannot update the hash cache %s (%s)", cache_file, error)
    return cache[key]["sha256"]


def short_hash(path: Path | str, *, cache_file: Path | None = None) -> str:
    """The WebUI's "Model hash" (A1111 `shorthash`): the first 10 hex digits of the file's SHA-256."""
    return checkpoint_sha256(path, cache_file=cache_file)[:10]


def legacy_model_hash(path: Path | str) -> str:
    """The WebUI's old 8-digit hash (SHA-256 of 64 KiB at offset 1 MiB), still one of a checkpoint's ids."""
    path = Path(path)
    require_file(path)
    with path.open("rb") as stream:
        stream.seek(0x100000)
        return hashlib.sha256(stream.read(0x10000)).hexdigest()[:8]


def _read_hash_cache(cache_file: Path) -> dict:
    if not cache_file.is_file():
        return {}
    try:
        cache = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        log.warning("ignoring unreadable hash cache %s (%s); it will be rewritten", cache_file, error)
        return {}
    return cache if isinstance(cache, dict) else {}


def model_short_hash(path: Path | str) -> str | None:
    """The short hash a base model is known by: of the file for a single-file checkpoint, of its
    model_index.json for a diffusers folder (what the trainer records in a LoRA and what LoRA-fit checks
    compare against); None when there is no such file."""
    path = Path(path)
    target = path / "model_index.json" if path.is_dir() else path
    return short_hash(target) if target.is_file() else None
