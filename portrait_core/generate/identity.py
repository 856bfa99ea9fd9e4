"""What generation needs of a trained identity: its LoRA, its reference face and its embedding centre."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from portrait_core.errors import DamagedIdentityError, IdentityError, PortraitError
from portrait_core.log import get_logger
from portrait_core.store import check_prepared_files, identity_paths, read_identity_json

log = get_logger("identity")


class IdentityNotReadyError(PortraitError):
    """The identity exists but lacks what generation needs (prepared photos or a LoRA)."""


@dataclass(frozen=True)
class IdentityAssets:
    id: str
    trigger: str
    reference_image: np.ndarray  # RGB crop of the best photo
    reference_points: np.ndarray  # its five points, (5, 2)
    centre: np.ndarray  # robust centre of the user's face embeddings
    embedding_model: str
    lora_path: Path | None

    @property
    def has_lora(self) -> bool:
        return self.lora_path is not None


def load_identity(identity: str, *, root: Path | None = None, lora_dir: Path) -> IdentityAssets:
    """Read an identity's assets; raise naming the identity and what to do when something is missing."""
    paths = identity_paths(identity, root)
    if not paths.folder.is_dir():
        raise IdentityError(f"no identity {identity!r} in {paths.folder.parent}; prepare and train it first "
                            f"(python -m portrait_core train --id {identity} --photos DIR)")
    layout = paths.dataset_layout()
    if not layout.reference_info.is_file() or not layout.embeddings.is_file():
        raise IdentityNotReadyError(f"identity {identity!r} has no prepared photos; run "
                                    f"python -m portrait_core preprocess PHOTOS --id {identity}")
    check_prepared_files(paths)  # DamagedIdentityError naming the identity and the file
    reference = read_identity_json(identity, paths.folder, layout.reference_info, ("image_points",))
    embeddings = read_identity_json(identity, paths.folder, layout.embeddings, ("centre",))
    manifest = read_identity_json(identity, paths.folder, layout.manifest) if layout.manifest.is_file() else {}
    lora = Path(lora_dir) / f"{identity}.safetensors"
    return IdentityAssets(
        id=identity, trigger=_text(manifest.get("trigger"), identity), reference_image=_reference_image(paths),
        reference_points=_five_points(identity, reference["image_points"]),
        centre=np.asarray(embeddings["centre"], dtype=np.float32), embedding_model=_text(embeddings.get("model"), ""),
        lora_path=lora if lora.is_file() else None)


def _text(value, default: str) -> str:
    return value if isinstance(value, str) and value else default


def _reference_image(paths) -> np.ndarray:
    layout = paths.dataset_layout()
    try:
        with Image.open(layout.reference_image) as opened:
            return np.asarray(opened.convert("RGB"))
    except (OSError, ValueError) as error:
        raise DamagedIdentityError(paths.id, "dataset/reference.png", f"cannot be read ({error})") from None


def _five_points(identity: str, value) -> np.ndarray:
    try:
        points = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        points = np.zeros(0)
    if points.shape != (5, 2) or not np.isfinite(points).all():
        raise DamagedIdentityError(identity, "dataset/reference.json", "has no five finite image_points")
    return points


def prefer_trained_face(assets: IdentityAssets, identity_folder: Path, analyzer) -> IdentityAssets:
    """Use the training's best validation render (`face_reference.png`) as the reference face when a face
    can be found in it: it shows the person as the LoRA draws them. Otherwise keep the best photo."""
    from dataclasses import replace

    render = Path(identity_folder) / "face_reference.png"
    if not render.is_file():
        return assets
    try:
        with Image.open(render) as opened:
            pixels = np.asarray(opened.convert("RGB"))
    except (OSError, ValueError) as error:  # only a better reference face is lost: go on with the best photo
        log.warning("identity %s: face_reference.png cannot be read (%s); using the best photo", assets.id, error)
        return assets
    faces = analyzer.detect(pixels)
    if not faces:
        return assets
    return replace(assets, reference_image=pixels, reference_points=np.asarray(faces[0].points, dtype=np.float32))
