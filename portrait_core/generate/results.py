"""Saving portraits: PNGs that carry their infotext (as the WebUI writes it) and results.json."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import PngImagePlugin

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
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    buffer = io.BytesIO()
    result.image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


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
