"""What generation needs of a trained identity: its LoRA, its reference face and its embedding centre."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from portrait_core.errors import IdentityError, PortraitError
from portrait_core.store import identity_paths


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
    reference = json.loads(layout.reference_info.read_text(encoding="utf-8"))
    embeddings = json.loads(layout.embeddings.read_text(encoding="utf-8"))
    manifest = json.loads(layout.manifest.read_text(encoding="utf-8")) if layout.manifest.is_file() else {}
    with Image.open(layout.reference_image) as opened:
        reference_image = np.asarray(opened.convert("RGB"))
    lora = Path(lora_dir) / f"{identity}.safetensors"
    return IdentityAssets(
        id=identity, trigger=manifest.get("trigger", identity), reference_image=reference_image,
        reference_points=np.asarray(reference["image_points"], dtype=np.float32),
        centre=np.asarray(embeddings["centre"], dtype=np.float32), embedding_model=embeddings.get("model", ""),
        lora_path=lora if lora.is_file() else None)


def prefer_trained_face(assets: IdentityAssets, identity_folder: Path, analyzer) -> IdentityAssets:
    """Use the training's best validation render (`face_reference.png`) as the reference face when a face
    can be found in it: it shows the person as the LoRA draws them. Otherwise keep the best photo."""
    from dataclasses import replace

    render = Path(identity_folder) / "face_reference.png"
    if not render.is_file():
        return assets
    with Image.open(render) as opened:
        pixels = np.asarray(opened.convert("RGB"))
    faces = analyzer.detect(pixels)
    if not faces:
        return assets
    return replace(assets, reference_image=pixels, reference_points=np.asarray(faces[0].points, dtype=np.float32))
