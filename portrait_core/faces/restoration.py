"""Face restoration from the user's own CodeFormer or GFPGAN file, loaded by spandrel (standalone host).

No restoration weights ship in a package (they are larger than PyPI allows), so the files the WebUI uses
are looked up in the models folder through the model registry. Each face is aligned by its five points
onto a 512 px chip laid out as these models were trained (the FFHQ layout), restored there, and pasted
back with the feathered face mask, so the image outside the faces never changes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from portrait_core.core.align import align_face, alignment_template
from portrait_core.core.face_imaging import paste_aligned_face
from portrait_core.errors import GenerationInterrupted, ModelUnavailableError
from portrait_core.log import get_logger
from portrait_core.models.registry import CODEFORMER, GFPGAN, ModelRegistry, default_registry

log = get_logger("restoration")

CHIP_SIZE = 512
# The eyes 0.246 chip widths apart, as in the 512 px FFHQ crops CodeFormer and GFPGAN were trained on: the
# ArcFace five-point layout zoomed out to 0.78 lands within a few pixels of those.
CHIP_FACE_FRACTION = 0.78
RESTORER_ORDER = (CODEFORMER, GFPGAN)  # the WebUI's default restorer first
ARCHITECTURES = {CODEFORMER: "CodeFormer", GFPGAN: "GFPGAN"}


@dataclass(frozen=True)
class RestorerFile:
    """A restoration model found on disk."""

    name: str
    path: Path
    architecture: str


class FaceRestorer:
    """Finds and runs a restoration model; the loaded network stays until `unload()`.

    `faces(pixels)` returns the faces to restore (objects with `.points`, five (x, y) rows): by default the
    best installed face analyzer, loaded on first use."""

    def __init__(self, registry: ModelRegistry | None = None, *, device: str = "cpu",
                 faces: Callable[[np.ndarray], Sequence] | None = None):
        self._registry = registry
        self.device = device
        self._faces = faces
        self._analyzer = None
        self._loaded: tuple[RestorerFile, object] | None = None
        self._lock = threading.Lock()

    @property
    def registry(self) -> ModelRegistry:
        return self._registry or default_registry()

    def find(self) -> RestorerFile | None:
        """The first restoration file present (CodeFormer before GFPGAN), without loading it."""
        for name in RESTORER_ORDER:
            path = self.registry.find(name)
            if path is not None:
                return RestorerFile(name, path, ARCHITECTURES[name])
        return None

    def missing_note(self) -> str:
        """What to put where, for the note shown when no restoration model is present."""
        places = " or ".join(f"{self.registry.get(name).description} at {self.registry.expected_path(name)} "
                             f"(from {self.registry.get(name).url})" for name in RESTORER_ORDER)
        return f"no face-restoration model on this machine: to restore faces, put {places}"

    def unload(self) -> None:
        with self._lock:
            self._loaded = None
            if self._analyzer is not None:
                self._analyzer.unload()
                self._analyzer = None

    def restore(self, image: Image.Image, codeformer_weight: float = 0.7, *,
                interrupted: Callable[[], bool] | None = None) -> Image.Image:
        """Every face of `image` restored and pasted back; `codeformer_weight` is CodeFormer's fidelity
        (0: the strongest restoration, 1: closest to the input). ModelUnavailableError (saying which file
        to put where) when no model is present."""
        if not 0.0 <= codeformer_weight <= 1.0:
            raise ValueError(f"codeformer_weight must be within 0–1, got {codeformer_weight}")
        with self._lock:
            found, network = self._load()
            result = image.convert("RGB")
            faces = list(self._detect(np.asarray(result)))
            for index, face in enumerate(faces):
                if interrupted is not None and interrupted():
                    raise GenerationInterrupted(index, len(faces))
                result = self._restore_face(result, np.asarray(face.points, dtype=np.float64), found, network,
                                            codeformer_weight)
            return result

    def _restore_face(self, image: Image.Image, points: np.ndarray, found: RestorerFile, network,
                      weight: float) -> Image.Image:
        chip, _ = align_face(np.asarray(image), points, size=CHIP_SIZE, face_fraction=CHIP_FACE_FRACTION)
        restored = run_restorer(network, found.architecture, chip, weight)
        chip_points = alignment_template(CHIP_SIZE, CHIP_FACE_FRACTION)
        return paste_aligned_face(image, restored, chip_points, points).image

    def _detect(self, pixels: np.ndarray) -> Sequence:
        if self._faces is not None:
            return self._faces(pixels)
        if self._analyzer is None:
            from portrait_core.faces.base import get_face_analyzer

            self._analyzer = get_face_analyzer("auto")
        return self._analyzer.detect(pixels)

    def _load(self) -> tuple[RestorerFile, object]:
        found = self.find()
        if found is None:
            raise ModelUnavailableError(self.missing_note())
        if self._loaded is None or self._loaded[0] != found:
            self._loaded = (found, load_restorer(found.path, found.architecture, self.device))
            log.info("loaded %s from %s", found.architecture, found.path)
        return self._loaded


def load_restorer(path: Path, architecture: str, device: str = "cpu"):
    """The torch network in `path`, told apart by spandrel from its keys; ModelUnavailableError when the
    file is not the `architecture` it was registered as (a wrong or damaged file)."""
    import torch

    from portrait_core.models.spandrel_import import spandrel_registry

    registry = spandrel_registry()
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    from spandrel import UnsupportedModelError, canonicalize_state_dict

    try:
        descriptor = registry.load(canonicalize_state_dict(state))
    except (UnsupportedModelError, KeyError, RuntimeError) as error:  # RuntimeError: shapes that do not fit
        raise ModelUnavailableError(f"{path} is not a model spandrel can load ({error})") from error
    if descriptor.architecture.id != architecture:
        raise ModelUnavailableError(f"{path} holds a {descriptor.architecture.id} model, expected {architecture}")
    return descriptor.model.to(device).eval().requires_grad_(False)


def run_restorer(network, architecture: str, chip: np.ndarray, codeformer_weight: float) -> np.ndarray:
    """One 512 px RGB uint8 chip through the network (both take and give -1..1 RGB); RGB uint8 back."""
    import torch

    parameter = next(network.parameters())
    tensor = torch.from_numpy(np.ascontiguousarray(chip.transpose(2, 0, 1))).to(parameter)
    tensor = (tensor / 127.5 - 1.0).unsqueeze(0)
    with torch.inference_mode():
        output = network(tensor, weight=codeformer_weight) if architecture == "CodeFormer" else network(tensor)
    restored = output[0] if isinstance(output, (tuple, list)) else output
    pixels = ((restored[0].float().clamp(-1, 1) + 1.0) * 127.5).round().byte().permute(1, 2, 0)
    return pixels.cpu().numpy()
