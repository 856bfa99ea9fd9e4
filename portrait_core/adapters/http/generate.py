"""`POST /sdapi/v1/portrait/generate` and its results: portraits over HTTP, now or as a queued job."""

from __future__ import annotations

import base64
import json
import threading
import uuid
from pathlib import Path
from typing import Callable, Dict, List, Optional

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from portrait_core.config import settings
from portrait_core.errors import PortraitError, UnusablePhotoError
from portrait_core.generate.results import png_bytes, save_results
from portrait_core.params import GenerateParams, StrictModel, WorkflowParams

MAX_TEMPLATES = 16


class TemplateUpload(StrictModel):
    name: str = Field("template.png", max_length=255, description="only used to label the result")
    data: str = Field(..., description="the image file's bytes in base64 (a data: URL prefix is accepted)")


class GenerateRequest(StrictModel):
    params: GenerateParams
    templates: List[TemplateUpload] = Field(..., min_items=1, max_items=MAX_TEMPLATES)
    background: bool = Field(False, description="queue as a job and answer at once with its id")


class GeneratedFace(BaseModel):
    id: str
    box: List[float]
    identity_score: Optional[float]


class GeneratedImage(BaseModel):
    template: str
    seed: int
    image: str = Field(..., description="PNG in base64, with the infotext in its 'parameters' chunk")
    faces: List[GeneratedFace]
    infotext: str
    notes: List[str] = []


class GenerateResponse(BaseModel):
    job_id: Optional[str] = None
    images: List[GeneratedImage] = []


class WorkflowRequest(StrictModel):
    workflow: WorkflowParams
    images: Dict[str, str] = Field(default_factory=dict, description="the images the steps name: name -> base64")
    background: bool = Field(False, description="queue as a job and answer at once with its id")


class WorkflowStepResult(BaseModel):
    index: int
    op: str
    images: List[str] = Field(..., description="PNGs in base64, infotext in their 'parameters' chunk")
    infotexts: List[str]
    extras: Dict[str, str] = Field({}, description="e.g. 'pose': the skeleton the step used (PNG, base64)")
    notes: List[str] = []


class WorkflowResponse(BaseModel):
    job_id: Optional[str] = None
    steps: List[WorkflowStepResult] = []


class JobResultsResponse(BaseModel):
    job_id: str
    images: List[GeneratedImage] = Field([], description="a generate job's portraits")
    steps: List[WorkflowStepResult] = Field([], description="a workflow job's steps")


def add_generate_routes(router: APIRouter, api, service: Callable[[], object]) -> None:
    """Register the routes; `api` is the router's handler object (runner, GPU lock, decoding limits)."""
    routes = _GenerateRoutes(api, service)
    router.add_api_route("/generate", routes.generate, methods=["POST"], response_model=GenerateResponse,
                         summary="Render identities into template photos")
    router.add_api_route("/jobs/{job_id}/results", routes.results, methods=["GET"],
                         response_model=JobResultsResponse, summary="The images of a finished background job")
    router.add_api_route("/workflow", routes.workflow, methods=["POST"], response_model=WorkflowResponse,
                         summary="Run a workflow (txt2img, pose transfer, image prompt + pose, restore ...)")


class _GenerateRoutes:
    def __init__(self, api, service: Callable[[], object]):
        self.api, self.service = api, service

    def generate(self, request: GenerateRequest) -> dict:
        templates = [(_label(upload.name, index), _decode_template(upload, index))
                     for index, upload in enumerate(request.templates)]
        if request.background:
            return {"job_id": self._queue(request.params, templates).id, "images": []}
        outputs = self._run(request.params, templates)  # the host owns the GPU: its session serialises callers
        return {"images": [_image_record(result, text) for result, text in outputs]}

    def workflow(self, request: WorkflowRequest) -> dict:
        images = {name: _decode_template(TemplateUpload(name=name, data=data), name, field="images")
                  for name, data in request.images.items()}
        runner = self._workflow_runner()
        try:
            runner.validate(request.workflow, images)  # rejected before anything runs or is queued
        except PortraitError as error:
            raise HTTPException(422, str(error)) from error
        if request.background:
            return {"job_id": self._queue_workflow(runner, request.workflow, images).id, "steps": []}
        try:
            outputs = runner.run(request.workflow, images)
        except PortraitError as error:
            raise HTTPException(422, str(error)) from error
        return {"steps": [_step_record(output) for output in outputs]}

    def _workflow_runner(self):
        from portrait_core.generate.workflow import WorkflowRunner

        service = self.service()
        return WorkflowRunner(service.generator.host, generation=service)

    def _queue_workflow(self, runner, workflow: WorkflowParams, images: dict):
        output_dir = settings().home / "workflows" / uuid.uuid4().hex[:12]

        def task(context) -> Path:
            from portrait_core.adapters.cli.workflow import write_outputs

            context.progress("running", step=0, total=len(workflow.steps))
            write_outputs(runner.run(workflow, images), output_dir)
            return output_dir / "workflow.json"

        return self.api.context.runner.submit_task("workflow", "", task, output_dir)

    def results(self, job_id: str) -> dict:
        job = self.api._job(job_id)
        if job.kind not in ("generate", "workflow"):
            raise HTTPException(404, f"job {job_id} is a {job.kind} job; it has no images")
        if job.state != "done" or not job.result_path:
            raise HTTPException(409, f"job {job_id} is {job.state}" + (f": {job.error}" if job.error else ""))
        if job.kind == "workflow":
            return {"job_id": job_id, "images": [], "steps": _read_saved_workflow(Path(job.result_path))}
        return {"job_id": job_id, "images": _read_saved(Path(job.result_path))}

    def _run(self, params: GenerateParams, templates: list) -> list:
        try:
            return self.service().generate(params, templates)
        except PortraitError as error:
            raise HTTPException(422, str(error)) from error

    def _queue(self, params: GenerateParams, templates: list):
        output_dir = settings().home / "generations" / uuid.uuid4().hex[:12]

        def task(context) -> Path:
            service = self.service()
            stop_watch = _interrupt_on_cancel(context, service)
            try:
                context.progress("generating", step=0, total=len(templates) * params.batch)
                outputs = service.generate(params, templates)
            finally:
                stop_watch.set()
            return save_results(outputs, output_dir)

        return self.api.context.runner.submit_task("generate", ",".join(params.identities), task, output_dir)


def _interrupt_on_cancel(context, service) -> threading.Event:
    """Watch for a cancel request and interrupt the host's current diffusion call when it comes."""
    finished = threading.Event()

    def watch() -> None:
        while not finished.wait(0.2):
            if context.cancelled():
                interrupt = getattr(service.generator.host, "interrupt", None)
                if interrupt is not None:
                    interrupt()
                return

    threading.Thread(target=watch, name="portrait-generate-cancel", daemon=True).start()
    return finished


def _decode_template(upload: TemplateUpload, index, field: str = "templates"):
    from PIL import Image

    from portrait_core.prepare.photos import decode_photo

    text = upload.data.split(",", 1)[1] if upload.data.startswith("data:") else upload.data
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
        return Image.fromarray(decode_photo(data, upload.name).pixels)
    except (ValueError, UnusablePhotoError) as error:
        loc = ["body", field, index, "data"] if field == "templates" else ["body", field, index]
        raise HTTPException(422, [{"loc": loc, "msg": str(error), "type": "value_error"}]) from error


def _label(name: str, index: int) -> str:
    """A display label for the template: the client's name reduced to safe characters, never a path."""
    stem = "".join(ch for ch in Path(name).name if ch.isalnum() or ch in "-_.")[:80].lstrip(".")
    return stem or f"template-{index + 1}.png"


def _image_record(result, text: str) -> dict:
    return {"template": result.template, "seed": result.seed,
            "image": base64.b64encode(png_bytes(result, text)).decode("ascii"),
            "faces": [{"id": f.identity, "box": f.box, "identity_score": f.identity_score} for f in result.faces],
            "infotext": text, "notes": result.notes}


def _b64_png(image) -> str:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _step_record(output) -> dict:
    from portrait_core.adapters.cli.workflow import _png

    return {"index": output.index, "op": output.op, "infotexts": output.infotexts, "notes": output.notes,
            "images": [base64.b64encode(_png(image, text)).decode("ascii")
                       for image, text in zip(output.images, output.infotexts, strict=True)],
            "extras": {name: _b64_png(image) for name, image in output.extras.items()}}


def _read_saved_workflow(summary_file: Path) -> list[dict]:
    steps = []
    for record in json.loads(summary_file.read_text(encoding="utf-8")):
        files = [Path(path) for path in record["images"]]
        images = [p for p in files if not p.stem.endswith("-pose")]
        steps.append({"index": record["step"], "op": record["op"], "notes": record.get("notes", []),
                      "images": [base64.b64encode(p.read_bytes()).decode("ascii") for p in images],
                      "infotexts": [_png_text(p) for p in images],
                      "extras": {p.stem.rsplit("-", 1)[1]: base64.b64encode(p.read_bytes()).decode("ascii")
                                 for p in files if p.stem.endswith("-pose")}})
    return steps


def _png_text(path: Path) -> str:
    from PIL import Image

    with Image.open(path) as opened:
        return opened.info.get("parameters", "")


def _read_saved(results_file: Path) -> list[dict]:
    from PIL import Image

    records = []
    for record in json.loads(results_file.read_text(encoding="utf-8")):
        image_path = Path(record["output"])
        with Image.open(image_path) as opened:
            text = opened.info.get("parameters", "")
        records.append({"template": record["template"], "seed": record["seed"], "faces": record["faces"],
                        "image": base64.b64encode(image_path.read_bytes()).decode("ascii"), "infotext": text,
                        "notes": record.get("notes", [])})
    return records
