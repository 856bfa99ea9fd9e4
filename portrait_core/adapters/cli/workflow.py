"""`python -m portrait_core workflow FILE.json --out DIR`: run a workflow file, write every step's images."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image

from portrait_core.errors import InputImageError
from portrait_core.generate.results import write_workflow_outputs
from portrait_core.params import WorkflowParams
from portrait_core.prepare.photos import load_photo
from portrait_core.services.runtime import standalone_services


def run_workflow_command(args: argparse.Namespace) -> int:
    workflow_file = Path(args.file)
    try:
        workflow = WorkflowParams(**json.loads(workflow_file.read_text(encoding="utf-8")))
    except (OSError, ValueError) as error:
        raise InputImageError(f"{workflow_file}: {error}") from error
    # Image names in the file are plain file names (no folders), looked up next to the file.
    images = {name: Image.fromarray(load_photo(workflow_file.parent / name).pixels)
              for name in workflow.image_names()}
    from portrait_core.adapters.cli.main import workspace_of

    services = standalone_services(workspace_of(args), args.base_model, progress=_print_progress)
    try:
        outputs = services.workflows.run(workflow, images)
    finally:
        services.close()
    for path in write_workflow_outputs(outputs, args.out):
        print(path)
    for output in outputs:
        for note in output.notes:
            print(f"step {output.index} ({output.op}) note: {note}")
    return 0


def _print_progress(step: int, total: int, text: str) -> None:
    print(f"\r  {text}: step {step}/{total}", end="" if step < total else "\n", flush=True)
