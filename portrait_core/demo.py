"""`python -m portrait_core demo`: a masked, ControlNet-guided inpaint on a tiny local model.

The demo shows the diffusion side working end to end on any machine, offline: it builds (once) a
tiny Stable Diffusion, repaints the face region of a public-domain portrait with canny and color
controls, and writes the result with a contact sheet. With the tiny model the pixels are noise:
it shows the pipeline, not the look. Point `--base-model` at a real SD1.5 checkpoint for that.
Later issues grow it into prepare photos -> train -> generate.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from PIL import Image, ImageDraw

from portrait_core.hosts.base import Control
from portrait_core.log import get_logger

log = get_logger("demo")

# Where the face is in skimage's astronaut photo (512x512): the region the demo repaints.
ASTRONAUT_FACE_BOX = (170, 60, 330, 260)


def sample_portrait() -> Image.Image:
    """Eileen Collins' NASA portrait (public domain), as shipped by scikit-image."""
    from skimage import data

    return Image.fromarray(data.astronaut())


def face_ellipse_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).ellipse(box, fill=255)
    return mask


def run_demo(out_dir: Path, base_model: Path | None = None, size: int = 256, steps: int = 10,
             seed: int = 1) -> int:
    from portrait_core.hosts.diffusers_host import DiffusersHost
    from portrait_core.tiny_sd import ensure_tiny_sd15

    started = time.perf_counter()
    model = Path(base_model) if base_model else ensure_tiny_sd15()
    if base_model is None:
        print(f"Using the tiny local model at {model} (random weights: expect noise, not a face).")
    portrait = sample_portrait().resize((size, size), Image.LANCZOS)
    scale = size / 512
    mask = face_ellipse_mask(portrait.size, tuple(round(v * scale) for v in ASTRONAUT_FACE_BOX))
    controls = [Control("canny", portrait, weight=0.5), Control("color", portrait, weight=0.85)]
    host = DiffusersHost(model, progress_callback=_print_progress)
    result = host.inpaint(portrait, mask, "a studio portrait photo of a woman, soft light",
                          "blurry, deformed", controls=controls, steps=steps, denoise=0.6, seed=seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    result_path = out_dir / "demo_inpaint.png"
    result.save(result_path)
    sheet_path = out_dir / "demo_contact_sheet.png"
    _contact_sheet([portrait, mask.convert("RGB"), *_control_maps(controls), result]).save(sheet_path)
    seconds = time.perf_counter() - started
    _write_summary(out_dir, model=model, size=size, steps=steps, seed=seed, seconds=seconds)
    print(f"\nWrote {result_path} and {sheet_path} ({seconds:.1f} s).")
    return 0


def _control_maps(controls: list[Control]) -> list[Image.Image]:
    from portrait_core import imaging

    makers = {"canny": imaging.canny_map, "color": imaging.color_grid_map, "tile": imaging.tile_map}
    return [makers[c.kind](c.image) for c in controls]


def _contact_sheet(images: list[Image.Image], labels_height: int = 0) -> Image.Image:
    width, height = images[0].size
    sheet = Image.new("RGB", (width * len(images), height + labels_height), "white")
    for index, image in enumerate(images):
        sheet.paste(image.convert("RGB").resize((width, height)), (index * width, 0))
    return sheet


def _write_summary(out_dir: Path, *, model: Path, size: int, steps: int, seed: int, seconds: float) -> None:
    summary = {"base_model": str(model), "size": size, "steps": steps, "seed": seed,
               "seconds": round(seconds, 2), "contact_sheet": "input | mask | canny | color grid | result"}
    (out_dir / "demo.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")


def _print_progress(step: int, total: int, text: str) -> None:
    print(f"\r{text}: step {step}/{total}", end="", flush=True)
