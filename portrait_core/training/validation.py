"""Validation during training: repaint template faces with the current LoRA and score the identity.

Templates are the identity's own prepared crops (from `manifest.json`): the face region is repainted
at `--validation-denoise`, so what comes back must come from the LoRA, and the new face is compared
with the robust centre of the user's embeddings (`embeddings.json`). A render in which no face is
found scores None: it neither helps nor blocks the merge.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from portrait_core.errors import InputImageError
from portrait_core.log import get_logger
from portrait_core.training.merge import ValidationScore

log = get_logger("validation")
VALIDATION_SEED = 1234


@dataclass
class ValidationTemplate:
    name: str
    image: Image.Image
    mask: Image.Image
    caption: str


def load_templates(dataset_dir: Path, resolution: int, count: int) -> list[ValidationTemplate]:
    """Up to `count` templates, spread over the dataset (best-ranked crop first)."""
    manifest = _read(dataset_dir / "manifest.json")
    entries = manifest.get("images") or []
    if not entries:
        raise InputImageError(f"{dataset_dir / 'manifest.json'} lists no images to validate with")
    picks = sorted({round(i * (len(entries) - 1) / max(1, count - 1)) for i in range(min(count, len(entries)))})
    templates = []
    for index in picks:
        entry = entries[index]
        with Image.open(dataset_dir / entry["image"]) as opened:
            image = opened.convert("RGB")
        scale = resolution / min(image.size)
        size = (round(image.width * scale) // 8 * 8, round(image.height * scale) // 8 * 8)
        box = [v * scale for v in entry["face_box"]]
        templates.append(ValidationTemplate(Path(entry["image"]).stem, image.resize(size, Image.LANCZOS),
                                            face_ellipse(size, box), manifest.get("caption", "")))
    return templates


def face_ellipse(size: tuple[int, int], box: list[float], grow: float = 1.15) -> Image.Image:
    """A white ellipse over the face box, a little larger than it, on black."""
    x0, y0, x1, y1 = box
    cx, cy, half_w, half_h = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * grow / 2, (y1 - y0) * grow / 2
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).ellipse((cx - half_w, cy - half_h, cx + half_w, cy + half_h), fill=255)
    return mask


class IdentityValidator:
    """Renders the templates with the live LoRA weights and scores each render against the user."""

    def __init__(self, args, setup):
        from portrait_core.faces import get_face_analyzer
        from portrait_core.hosts.diffusers_host import DiffusersHost

        embeddings = _read(Path(args.validation_dir) / "embeddings.json")
        if embeddings.get("centre") is None:
            raise InputImageError(f"{args.validation_dir}/embeddings.json has no identity centre")
        self.centre = np.asarray(embeddings["centre"], dtype=np.float32)
        self.analyzer = get_face_analyzer(embeddings.get("backend", "embedded"))
        self.templates = load_templates(Path(args.validation_dir), setup.resolution, args.validation_images)
        self.host = DiffusersHost.from_components(setup.components, device=str(setup.accelerator.device))
        self.out_dir = Path(args.output_dir) / "validation"
        self.steps, self.denoise = args.validation_steps, args.validation_denoise

    def __call__(self, setup, checkpoint: Path, step: int) -> list[ValidationScore]:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        models = list(setup.trainable.values())
        for model in models:
            model.eval()
        try:
            with setup.accelerator.autocast():
                return [self._render_and_score(template, checkpoint, step) for template in self.templates]
        finally:
            for model in models:
                model.train()

    def _render_and_score(self, template: ValidationTemplate, checkpoint: Path, step: int) -> ValidationScore:
        from portrait_core.store import atomic_write_bytes

        render = self.host.inpaint(template.image, template.mask, template.caption, steps=self.steps,
                                   denoise=self.denoise, seed=VALIDATION_SEED, cfg=7.0)
        path = self.out_dir / f"step-{step:06d}-{template.name}.png"
        atomic_write_bytes(path, _png(render))
        score = identity_score(self.analyzer, render, template.mask, self.centre)
        return ValidationScore(checkpoint, step, path, score)


def identity_score(analyzer, image: Image.Image, mask: Image.Image, centre: np.ndarray) -> float | None:
    """Similarity to the user's `centre` of the face whose centre lies in `mask` (None: no such face)."""
    from portrait_core.faces.base import similarity

    pixels = np.asarray(image.convert("RGB"))
    faces = [face for face in analyzer.detect(pixels) if _centre_inside(face.box, mask)]
    if not faces:
        return None
    return round(float(similarity(analyzer.embed(pixels, faces[0]), centre)), 4)


def make_validator(args, setup) -> IdentityValidator:
    return IdentityValidator(args, setup)


def _centre_inside(box, mask: Image.Image) -> bool:
    x, y = int((box[0] + box[2]) / 2), int((box[1] + box[3]) / 2)
    return 0 <= x < mask.width and 0 <= y < mask.height and mask.getpixel((x, y)) > 0


def _read(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputImageError(f"cannot read {path}: {error}") from error


def _png(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
