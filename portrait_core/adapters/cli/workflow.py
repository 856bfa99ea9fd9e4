"""`python -m portrait_core workflow FILE.json --out DIR`: run a workflow file, write every step's images."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image

from portrait_core.errors import InputImageError
from portrait_core.generate.workflow import StepOutput, WorkflowRunner
from portrait_core.params import WorkflowParams
from portrait_core.prepare.photos import load_photo


def run_workflow_command(args: argparse.Namespace) -> int:
    workflow_file = Path(args.file)
    try:
        workflow = WorkflowParams(**json.loads(workflow_file.read_text(encoding="utf-8")))
    except (OSError, ValueError) as error:
        raise InputImageError(f"{workflow_file}: {error}") from error
    # Image names in the file are plain file names (no folders), looked up next to the file.
    images = {name: Image.fromarray(load_photo(workflow_file.parent / name).pixels)
              for name in workflow.image_names()}
    runner = standalone_runner(args.base_model, root=args.root)
    outputs = runner.run(workflow, images)
    for path in write_outputs(outputs, args.out):
        print(path)
    for output in outputs:
        for note in output.notes:
            print(f"step {output.index} ({output.op}) note: {note}")
    return 0


def standalone_runner(base_model: Path | None, *, root: Path | None = None) -> WorkflowRunner:
    from portrait_core.services.generation import standalone_service

    service = standalone_service(base_model, root=root, progress=_print_progress)
    return WorkflowRunner(service.generator.host, generation=service, root=root)


def write_outputs(outputs: list[StepOutput], out_dir: Path) -> list[Path]:
    """`step-NN-op[-k].png` per image (infotext in the PNG), `-pose.png` for skeletons, and workflow.json."""
    from portrait_core.store import atomic_write_bytes, atomic_write_json

    out_dir.mkdir(parents=True, exist_ok=True)
    written, records = [], []
    for output in outputs:
        stem = f"step-{output.index + 1:02d}-{output.op}"
        for number, (image, text) in enumerate(zip(output.images, output.infotexts, strict=True)):
            path = out_dir / (f"{stem}.png" if len(output.images) == 1 else f"{stem}-{number + 1}.png")
            atomic_write_bytes(path, _png(image, text))
            written.append(path)
        for name, image in output.extras.items():
            path = out_dir / f"{stem}-{name}.png"
            atomic_write_bytes(path, _png(image, ""))
            written.append(path)
        records.append({"step": output.index, "op": output.op, "images": [str(p) for p in written[-len(
            output.images) - len(output.extras):]], "notes": output.notes})
    atomic_write_json(out_dir / "workflow.json", records)
    return written


def _png(image: Image.Image, text: str) -> bytes:
    import io

    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    if text:
        info.add_text("parameters", text)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def _print_progress(step: int, total: int, text: str) -> None:
    print(f"\r  {text}: step {step}/{total}", end="" if step < total else "\n", flush=True)
