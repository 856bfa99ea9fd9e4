"""Workflows (txt2img, img2img, pose transfer, image prompt + pose, portrait, restore, upscale), now or as a
queued job, on the same host and identities as portraits.

A workflow is validated whole before anything runs or is queued: every named image supplied, every
identity known and its LoRA fitting the checkpoint in use. It runs inside one host session.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from portrait_core.errors import PortraitError
from portrait_core.generate.results import write_workflow_outputs
from portrait_core.generate.workflow import StepOutput, WorkflowError, WorkflowRunner
from portrait_core.jobs import Job, TaskContext
from portrait_core.params import WorkflowParams
from portrait_core.services.generation import GenerationService, cancel_watch, check_sampler

Progress = Callable[[int, int, str], None]


class WorkflowService:
    def __init__(self, generation: GenerationService):
        self.generation = generation

    def runner(self, progress: Progress | None = None) -> WorkflowRunner:
        return WorkflowRunner(self.generation.host, generation=self.generation, progress=progress)

    def identities_of(self, workflow: WorkflowParams) -> list[str]:
        names = []
        for step in workflow.steps:
            names += list(getattr(step, "identities", None) or [])
            if getattr(step, "identity", None):
                names.append(step.identity)
        return list(dict.fromkeys(names))

    def validate(self, workflow: WorkflowParams, images: dict[str, Image.Image]) -> list[str]:
        """WorkflowError (naming the step and field) or LoraMismatchError before anything runs; returns the
        notes on LoRAs trained on another base of the same family."""
        self.runner().validate(workflow, images)
        for index, step in enumerate(workflow.steps):
            if getattr(step, "sampler", None):
                check_sampler(self.generation.host, step.sampler, f"steps[{index}] ({step.op}): sampler")
        try:
            return self.generation.lora_notes(self.identities_of(workflow))
        except PortraitError as error:
            raise WorkflowError(str(error)) from error

    def run(self, workflow: WorkflowParams, images: dict[str, Image.Image], *,
            progress: Progress | None = None) -> list[StepOutput]:
        notes = self.validate(workflow, images)
        outputs = self.runner(progress).run(workflow, images)
        if outputs:
            outputs[0].notes[:0] = notes
        return outputs

    def submit(self, workflow: WorkflowParams, images: dict[str, Image.Image]) -> Job:
        """Queue it behind the other jobs (active for every identity it uses); refused now if it cannot run."""
        self.validate(workflow, images)
        output_dir = self.generation.workspace.workflows / uuid.uuid4().hex[:12]
        identities = self.identities_of(workflow)

        def task(context: TaskContext) -> Path:
            def progress(index: int, total: int, text: str) -> None:
                context.progress("running", step=index, total=total, text=text)

            host = self.generation.host
            with host.session("portrait studio: workflow (job)") as session, cancel_watch(context, session):
                outputs = self.run(workflow, images, progress=progress)
            write_workflow_outputs(outputs, output_dir)
            return output_dir / "workflow.json"

        with self.generation.identities.exclusive(*identities):
            return self.generation.runner.submit_task("workflow", identities, task, output_dir)
