"""Identities on disk: validated ids, the identity folder layout, and writes that survive a crash.

Layout of one identity (`<identities root>/<id>/`):

    photos/                 the user's uploaded originals (the UI saves uploads here)
    report.json             the latest preprocessing run: one entry per input photo
    dataset/                the prepared training set, replaced as a whole (see `atomic_directory`)
        images/0000.png     training crops, best first, with the caption beside each (0000.txt)
        manifest.json       what the trainer needs: captions, trigger word, per-image face geometry
        reference.png       the best photo's training crop
        reference_face.png  the best face aligned to the standard five-point layout (512 px)
        reference.json      the reference face's source, box and five points in both images
        embeddings.json     identity embeddings of the kept photos and their robust centre
        report.json         the report of the run that built this dataset

A file is written with `atomic_write_bytes`/`atomic_write_json` (temporary file, fsync, rename); a
folder is built with `atomic_directory` and swapped in only once complete, so a crash or a failed re-run
leaves the previous version in place.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from portrait_core.config import settings
from portrait_core.errors import DamagedIdentityError, IdentityError
from portrait_core.log import get_logger

log = get_logger("store")

IDENTITY_ID_MAX_LENGTH = 64
IDENTITY_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"
_IDENTITY_ID = re.compile(IDENTITY_ID_PATTERN)
_WINDOWS_DEVICE_NAMES = frozenset({"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)),
                                   *(f"lpt{i}" for i in range(10))})
_STALE_STAGING_SECONDS = 24 * 3600


def validate_identity_id(identity: object) -> str:
    """Return `identity` if it is a safe id: ASCII letters, digits, `-` and `_`, starting with a letter
    or digit, at most 64 characters, not a reserved device name; else raise IdentityError saying why."""
    if not isinstance(identity, str):
        raise IdentityError(f"identity id must be a string, got {type(identity).__name__}")
    if not identity:
        raise IdentityError("identity id is empty; use letters, digits, '-' and '_'")
    if len(identity) > IDENTITY_ID_MAX_LENGTH:
        raise IdentityError(f"identity id {identity[:20]!r}... is {len(identity)} characters long; "
                            f"the limit is {IDENTITY_ID_MAX_LENGTH}")
    if not _IDENTITY_ID.fullmatch(identity):
        raise IdentityError(f"identity id {identity!r} is not allowed: use ASCII letters, digits, '-' and '_', "
                            "starting with a letter or digit (no spaces, dots or slashes)")
    if identity.lower() in _WINDOWS_DEVICE_NAMES:
        raise IdentityError(f"identity id {identity!r} is a reserved device name on Windows; choose another")
    return identity


@dataclass(frozen=True)
class DatasetLayout:
    """File names inside a dataset folder (the live `dataset/` or a staging copy being built)."""

    folder: Path

    @property
    def images(self) -> Path:
        return self.folder / "images"

    @property
    def manifest(self) -> Path:
        return self.folder / "manifest.json"

    @property
    def reference_image(self) -> Path:
        return self.folder / "reference.png"

    @property
    def reference_face(self) -> Path:
        return self.folder / "reference_face.png"

    @property
    def reference_info(self) -> Path:
        return self.folder / "reference.json"

    @property
    def embeddings(self) -> Path:
        return self.folder / "embeddings.json"

    @property
    def report(self) -> Path:
        return self.folder / "report.json"

    def image(self, index: int) -> Path:
        return self.images / f"{index:04d}.png"

    def caption(self, index: int) -> Path:
        return self.images / f"{index:04d}.txt"


@dataclass(frozen=True)
class IdentityPaths:
    """Where one identity's files live."""

    id: str
    root: Path

    @property
    def folder(self) -> Path:
        return self.root / self.id

    @property
    def photos(self) -> Path:
        return self.folder / "photos"

    @property
    def dataset(self) -> Path:
        return self.folder / "dataset"

    @property
    def report(self) -> Path:
        return self.folder / "report.json"

    def dataset_layout(self, folder: Path | None = None) -> DatasetLayout:
        return DatasetLayout(folder if folder is not None else self.dataset)


def identity_paths(identity: str, root: Path | None = None) -> IdentityPaths:
    """The paths of a (validated) identity under `root` (default: the settings' identities folder)."""
    identity = validate_identity_id(identity)
    root = Path(root) if root is not None else settings().identities_dir
    folder = root / identity
    if folder.is_symlink():
        raise IdentityError(f"identity folder {folder} is a symbolic link; refusing to write through it")
    if folder.exists() and not folder.is_dir():
        raise IdentityError(f"{folder} exists and is not a folder")
    return IdentityPaths(id=identity, root=root)


def list_identities(root: Path | None = None) -> list[str]:
    """Ids of the identity folders under `root`, sorted; other entries are ignored."""
    root = Path(root) if root is not None else settings().identities_dir
    if not root.is_dir():
        return []
    names = []
    for entry in root.iterdir():
        if entry.is_dir() and not entry.is_symlink() and _IDENTITY_ID.fullmatch(entry.name):
            names.append(entry.name)
    return sorted(names)


def read_json(path: Path) -> Any:
    """Parse a JSON file; raises IdentityError naming the file when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise IdentityError(f"{path} does not exist") from error
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise IdentityError(f"{path} is unreadable: {error}") from error


# -- reading a prepared dataset -----------------------------------------------------------------------

def read_identity_json(identity: str, folder: Path, path: Path, required: tuple[str, ...] = ()) -> dict:
    """A JSON object file of the identity whose folder is `folder`; DamagedIdentityError naming the identity
    and the file when it cannot be read, is not a JSON object, or lacks one of the `required` keys."""
    file = _relative_name(path, folder)
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DamagedIdentityError(identity, file, "is missing") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise DamagedIdentityError(identity, file, f"cannot be read ({str(error)[:200]})") from None
    if not isinstance(value, dict):
        raise DamagedIdentityError(identity, file, f"holds a JSON {type(value).__name__}, not an object")
    missing = [key for key in required if key not in value]
    if missing:
        raise DamagedIdentityError(identity, file, f"lacks {', '.join(missing)}")
    return value


def check_prepared_files(paths: IdentityPaths) -> None:
    """DamagedIdentityError when a prepared identity's dataset files (manifest, embeddings, reference face
    information) are unreadable or incomplete; nothing when the identity is not prepared at all."""
    layout = paths.dataset_layout()
    if not layout.manifest.is_file() and not layout.reference_info.is_file():
        return
    read_identity_json(paths.id, paths.folder, layout.manifest, ("images",))
    read_identity_json(paths.id, paths.folder, layout.reference_info, ("image_points",))
    embeddings = read_identity_json(paths.id, paths.folder, layout.embeddings, ("centre",))
    _vector(paths.id, _relative_name(layout.embeddings, paths.folder), embeddings["centre"], "centre")


def _vector(identity: str, file: str, value: Any, key: str) -> np.ndarray:
    try:
        vector = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise DamagedIdentityError(identity, file, f"has a {key} that is not a list of numbers") from None
    if vector.ndim != 1 or not vector.size or not np.isfinite(vector).all():
        raise DamagedIdentityError(identity, file, f"has a {key} that is not a list of finite numbers")
    return vector


def _relative_name(path: Path, folder: Path) -> str:
    try:
        return Path(path).relative_to(folder).as_posix()
    except ValueError:
        return Path(path).name


@dataclass(frozen=True, eq=False)
class IdentityEmbeddings:
    """Identity vectors written by preprocessing; comparable only with vectors of the same `model`."""

    backend: str
    model: str
    threshold: float
    centre: np.ndarray
    photos: dict[str, np.ndarray]  # source photo file -> unit vector


@dataclass(frozen=True, eq=False)
class ReferenceFace:
    """The identity's best face: its training crop and its aligned chip, each with the five points."""

    source: str
    image: np.ndarray          # reference.png, RGB uint8
    points: np.ndarray         # (5, 2) in `image`
    box: tuple[float, float, float, float]
    face_image: np.ndarray     # reference_face.png: aligned 512 px chip
    face_points: np.ndarray    # (5, 2) in `face_image`


def _prepared_layout(identity: str, root: Path | None) -> DatasetLayout:
    layout = identity_paths(identity, root).dataset_layout()
    if not layout.manifest.is_file():
        raise IdentityError(f"identity {identity!r} has no prepared dataset at {layout.folder}; "
                            "run preprocessing first")
    return layout


def load_identity_embeddings(identity: str, root: Path | None = None) -> IdentityEmbeddings:
    """The prepared identity's embeddings (IdentityError when it has no dataset yet, DamagedIdentityError
    when the file is unreadable)."""
    layout = _prepared_layout(identity, root)
    folder = identity_paths(identity, root).folder
    info = read_identity_json(identity, folder, layout.embeddings,
                              ("backend", "model", "same_person_threshold", "centre", "photos"))
    file = _relative_name(layout.embeddings, folder)
    try:
        return IdentityEmbeddings(
            backend=info["backend"], model=info["model"], threshold=float(info["same_person_threshold"]),
            centre=_vector(identity, file, info["centre"], "centre"),
            photos={p["file"]: np.asarray(p["embedding"], dtype=np.float32) for p in info["photos"]})
    except (KeyError, TypeError, ValueError) as error:
        raise DamagedIdentityError(identity, file, f"is malformed ({error!r})") from error


def load_reference_face(identity: str, root: Path | None = None) -> ReferenceFace:
    """The prepared identity's reference face (IdentityError when it has no dataset yet, DamagedIdentityError
    when its files are unreadable)."""
    layout = _prepared_layout(identity, root)
    folder = identity_paths(identity, root).folder
    info = read_identity_json(identity, folder, layout.reference_info,
                              ("source", "image_points", "image_face_box", "face_image_points"))
    try:
        with Image.open(layout.reference_image) as image, Image.open(layout.reference_face) as chip:
            pixels, chip_pixels = np.asarray(image.convert("RGB")), np.asarray(chip.convert("RGB"))
        return ReferenceFace(source=info["source"], image=pixels,
                             points=np.asarray(info["image_points"], dtype=np.float32),
                             box=tuple(float(v) for v in info["image_face_box"]), face_image=chip_pixels,
                             face_points=np.asarray(info["face_image_points"], dtype=np.float32))
    except (KeyError, TypeError, ValueError, OSError) as error:
        raise DamagedIdentityError(identity, _relative_name(layout.folder, folder),
                                   f"holds an unusable reference face ({error!r})") from error


# -- atomic writes ----------------------------------------------------------------------------------

def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write `data` to `path` so that readers see the old file or the new one, never a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(temporary, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    _fsync_directory(path.parent)
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, value: Any) -> Path:
    """Write `value` as indented UTF-8 JSON; NaN and infinity are refused (ValueError), not written."""
    text = json.dumps(value, indent=2, ensure_ascii=False, allow_nan=False)
    return atomic_write_text(path, text + "\n")


@contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Build a folder in a staging copy, then swap it in for `final` only if the block completes.

    Yields the (empty) staging folder. If the block raises, the staging folder is deleted and `final`
    is untouched. The swap renames the old folder aside, renames the new one into place and then
    deletes the old one; a crash in between is repaired by the next call (the old folder comes back).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    restore_interrupted_replacement(final)
    staging = final.parent / f".{final.name}.staging-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
        _fsync_tree(staging)
        _swap_in(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def _swap_in(staging: Path, final: Path) -> None:
    previous = None
    if final.exists():
        previous = final.parent / f".{final.name}.previous-{uuid.uuid4().hex[:8]}"
        os.replace(final, previous)
    try:
        os.replace(staging, final)
    except OSError:
        if previous is not None:
            os.replace(previous, final)
        raise
    _fsync_directory(final.parent)
    if previous is not None:
        _remove_tree(previous)


def restore_interrupted_replacement(final: Path) -> bool:
    """Repair what a crash during `atomic_directory` can leave: put the previous folder back if the new
    one never arrived, and delete leftovers (old copies, staging folders older than a day).
    Returns True when a previous folder was restored."""
    final = Path(final)
    if not final.parent.is_dir():
        return False
    previous = sorted(final.parent.glob(f".{final.name}.previous-*"), key=lambda p: p.stat().st_mtime)
    restored = False
    if previous and not final.exists():
        os.replace(previous.pop(), final)
        log.warning("restored %s from an interrupted replacement", final)
        restored = True
    for leftover in previous:
        _remove_tree(leftover)
    for staging in final.parent.glob(f".{final.name}.staging-*"):
        if time.time() - staging.stat().st_mtime > _STALE_STAGING_SECONDS:
            _remove_tree(staging)
    return restored


def _remove_tree(folder: Path) -> None:
    try:
        shutil.rmtree(folder)
    except OSError as error:
        # The new data is already in place; a leftover copy only costs disk space and is retried later.
        log.warning("could not delete %s (%s); it will be retried next time", folder, error)


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as stream:
                os.fsync(stream.fileno())
    for directory in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        _fsync_directory(directory)


def _fsync_directory(folder: Path) -> None:
    if os.name == "nt":
        return  # Windows cannot open a directory for fsync; NTFS journals the rename itself
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
