"""Saving results: PNGs that carry their infotext (as the WebUI writes it), results.json for portraits and
workflow.json for workflows, and reading them back for a finished background job."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image, PngImagePlugin

from portrait_core.generate.pipeline import PortraitResult
from portrait_core.params import GenerateParams
from portrait_core.store import atomic_write_bytes, atomic_write_json


def infotext(result: PortraitResult, params: GenerateParams, prompt: str, base_model: str) -> str:
    """The WebUI's "parameters" text: prompt, negative prompt, then `Key: value` pairs."""
    pairs = {
        "Steps": params.first_pass_steps, "Sampler": params.sampler, "CFG scale": params.cfg_scale,
        "Seed": result.seed, "Size": f"{result.image.width}x{result.image.height}",
        "Model": base_model, "Denoising strength": params.first_pass_denoise,
        "Portrait identities": " ".join(face.identity for face in result.faces),
        "Portrait template": result.template,
        "Portrait identity scores": " ".join("none" if f.identity_score is None else f"{f.identity_score:.3f}"
                                             for f in result.faces),
        "Portrait params": json.dumps(params.dict(), separators=(",", ":")),
    }
    text = ", ".join(f"{key}: {_quoted(value)}" for key, value in pairs.items())
    return f"{prompt}\nNegative prompt: {params.negative_prompt}\n{text}"


def _quoted(value) -> str:
    """Values with commas or colons are JSON-quoted, as the WebUI's infotext parser expects."""
    text = str(value)
    return json.dumps(text) if any(ch in text for ch in ",:\n\"") else text


def png_bytes(result: PortraitResult, text: str) -> bytes:
    return image_png(result.image, text)


def image_png(image: Image.Image, text: str = "") -> bytes:
    """PNG bytes of `image`, with `text` (when given) in its 'parameters' chunk as the WebUI writes it."""
    info = PngImagePlugin.PngInfo()
    if text:
        info.add_text("parameters", text)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def png_text(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as opened:
        return opened.info.get("parameters", "")


def save_results(results: list[tuple[PortraitResult, str]], out_dir: Path) -> Path:
    """Write each image (`<template>-<seed>.png`) and `results.json`; returns the json path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for result, text in results:
        stem = Path(result.template).stem
        path = out_dir / f"{stem}-{result.seed}.png"
        atomic_write_bytes(path, png_bytes(result, text))
        records.append({"template": result.template, "output": str(path),
                        "faces": [{"id": f.identity, "box": f.box, "identity_score": f.identity_score}
                                  for f in result.faces],
                        "seed": result.seed, "seconds": round(result.seconds, 2), "notes": result.notes})
    return atomic_write_json(out_dir / "results.json", records)


def read_saved_portraits(results_file: Path) -> list[dict]:
    """What `save_results` wrote, with each image's PNG bytes (`png`) and infotext."""
    records = []
    for record in json.loads(Path(results_file).read_text(encoding="utf-8")):
        data = Path(record["output"]).read_bytes()
        records.append({"template": record["template"], "seed": record["seed"], "faces": record["faces"],
                        "png": data, "infotext": png_text(data), "notes": record.get("notes", [])})
    return records


def write_workflow_outputs(outputs: list, out_dir: Path) -> list[Path]:
    """`step-NN-op[-k].png` per image (infotext in the PNG), `-<extra>.png` (e.g. the pose skeleton), and
    workflow.json listing them; returns the image files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written, records = [], []
    for output in outputs:
        stem = f"step-{output.index + 1:02d}-{output.op}"
        images, extras = [], {}
        for number, (image, text) in enumerate(zip(output.images, output.infotexts, strict=True)):
            path = out_dir / (f"{stem}.png" if len(output.images) == 1 else f"{stem}-{number + 1}.png")
            atomic_write_bytes(path, image_png(image, text))
            images.append(str(path))
        for name, image in output.extras.items():
            path = out_dir / f"{stem}-{name}.png"
            atomic_write_bytes(path, image_png(image))
            extras[name] = str(path)
        written += [Path(p) for p in (*images, *extras.values())]
        records.append({"step": output.index, "op": output.op, "images": images, "extras": extras,
                        "notes": output.notes})
    atomic_write_json(out_dir / "workflow.json", records)
    return written


def read_saved_workflow(summary_file: Path) -> list[dict]:
    """What `write_workflow_outputs` wrote: per step its PNGs (`pngs`), infotexts and extras (PNG bytes)."""
    steps = []
    for record in json.loads(Path(summary_file).read_text(encoding="utf-8")):
        pngs = [Path(path).read_bytes() for path in record["images"]]
        steps.append({"index": record["step"], "op": record["op"], "notes": record.get("notes", []),
                      "pngs": pngs, "infotexts": [png_text(data) for data in pngs],
                      "extras": {name: Path(path).read_bytes() for name, path in record.get("extras", {}).items()}})
    return steps
