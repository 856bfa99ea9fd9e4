"""`POST /sdapi/v1/portrait/generate` and its results: portraits over HTTP, now or as a queued job."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, List, Optional

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field, validator

from portrait_core.adapters.http.bodies import limited_body_route
from portrait_core.errors import DamagedIdentityError, PortraitError, UnusablePhotoError
from portrait_core.generate.results import image_png, png_bytes, read_saved_portraits, read_saved_workflow
from portrait_core.jobs import JobStoreError
from portrait_core.params import GenerateParams, StrictModel, WorkflowParams
from portrait_core.services.identities import IdentityBusyError
from portrait_core.services.runtime import PortraitServices
from portrait_core.services.uploads import MAX_TEMPLATES, UploadLimits


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
    images: Dict[str, str] = Field(default_factory=dict, maxProperties=MAX_TEMPLATES,
                                   description="the images the steps name: name -> base64")
    background: bool = Field(False, description="queue as a job and answer at once with its id")

    @validator("images")
    def _bounded(cls, images: Dict[str, str]) -> Dict[str, str]:  # noqa: N805
        if len(images) > MAX_TEMPLATES:
            raise ValueError(f"{len(images)} images sent; at most {MAX_TEMPLATES} per workflow")
        long_names = [name for name in images if len(name) > 100]
        if long_names:
            raise ValueError(f"image name {long_names[0][:40]!r}... is longer than 100 characters")
        return images


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


def add_generate_routes(router: APIRouter, api, services: PortraitServices,
                        limits: UploadLimits) -> None:
    """Register the routes; `api` is the router's handler object (job lookup). Bodies over
    `limits.max_generate_bytes` are refused with 413 before they are read."""
    routes = _GenerateRoutes(api, services, limits)
    limited = limited_body_route(limits.max_generate_bytes)
    router.add_api_route("/generate", routes.generate, methods=["POST"], response_model=GenerateResponse,
                         summary="Render identities into template photos", route_class_override=limited)
    router.add_api_route("/jobs/{job_id}/results", routes.results, methods=["GET"],
                         response_model=JobResultsResponse, summary="The images of a finished background job")
    router.add_api_route("/workflow", routes.workflow, methods=["POST"], response_model=WorkflowResponse,
                         summary="Run a workflow (txt2img, pose transfer, image prompt + pose, restore ...)",
                         route_class_override=limited)


class _GenerateRoutes:
    def __init__(self, api, services: PortraitServices, limits: UploadLimits):
        self.api, self.services, self.limits = api, services, limits

    def generate(self, request: GenerateRequest) -> dict:
        templates = [(_label(upload.name, index), _decode_template(upload, index, self.limits))
                     for index, upload in enumerate(request.templates)]
        generation = self.services.generation
        with _as_http():
            if request.background:
                return {"job_id": generation.submit(request.params, templates).id, "images": []}
            outputs = generation.generate(request.params, templates)  # the host's session serialises callers
        return {"images": [_image_record(result, text) for result, text in outputs]}

    def workflow(self, request: WorkflowRequest) -> dict:
        images = {name: _decode_template(TemplateUpload(name=name, data=data), name, self.limits, field="images")
                  for name, data in request.images.items()}
        workflows = self.services.workflows
        with _as_http():
            if request.background:
                return {"job_id": workflows.submit(request.workflow, images).id, "steps": []}
            outputs = workflows.run(request.workflow, images)
        return {"steps": [_step_record(output) for output in outputs]}

    def results(self, job_id: str) -> dict:
        job = self.api.job(job_id)
        if job.kind not in ("generate", "workflow"):
            raise HTTPException(404, f"job {job_id} is a {job.kind} job; it has no images")
        if job.state != "done" or not job.result_path:
            raise HTTPException(409, f"job {job_id} is {job.state}" + (f": {job.error}" if job.error else ""))
        if job.kind == "workflow":
            steps = [_saved_step_record(step) for step in read_saved_workflow(Path(job.result_path))]
            return {"job_id": job_id, "images": [], "steps": steps}
        images = [{**record, "image": _b64(record.pop("png"))} for record in read_saved_portraits(Path(
            job.result_path))]
        return {"job_id": job_id, "images": images}


@contextmanager
def _as_http() -> Iterator[None]:
    """A refusal of the services as the HTTP answer: busy or a damaged identity → 409, anything else they
    refuse → 422; a job that could not be saved (full disk) → 507, and nothing was queued."""
    try:
        yield
    except (IdentityBusyError, DamagedIdentityError) as error:
        raise HTTPException(409, str(error)) from error
    except JobStoreError as error:
        raise HTTPException(507, str(error)) from error
    except PortraitError as error:
        raise HTTPException(422, str(error)) from error


def _decode_template(upload: TemplateUpload, index, limits: UploadLimits, field: str = "templates"):
    from PIL import Image

    from portrait_core.prepare.photos import decode_photo

    loc = ["body", field, index, "data"] if field == "templates" else ["body", field, index]
    text = upload.data.split(",", 1)[1] if upload.data.startswith("data:") else upload.data
    text = "".join(text.split())
    if len(text) // 4 * 3 > limits.max_template_bytes + 2:
        raise HTTPException(413, [{"loc": loc, "msg": f"{field} {index!r} is larger than {limits.max_template_bytes} "
                                   "bytes", "type": "value_error.too_large"}])
    try:
        data = base64.b64decode(text, validate=True)
        return Image.fromarray(decode_photo(data, upload.name).pixels)
    except (ValueError, UnusablePhotoError) as error:
        raise HTTPException(422, [{"loc": loc, "msg": str(error), "type": "value_error"}]) from error


def _label(name: str, index: int) -> str:
    """A display label for the template: the client's name reduced to safe characters, never a path."""
    stem = "".join(ch for ch in Path(name).name if ch.isalnum() or ch in "-_.")[:80].lstrip(".")
    return stem or f"template-{index + 1}.png"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _image_record(result, text: str) -> dict:
    return {"template": result.template, "seed": result.seed, "image": _b64(png_bytes(result, text)),
            "faces": [{"id": f.identity, "box": f.box, "identity_score": f.identity_score} for f in result.faces],
            "infotext": text, "notes": result.notes}


def _step_record(output) -> dict:
    return {"index": output.index, "op": output.op, "infotexts": output.infotexts, "notes": output.notes,
            "images": [_b64(image_png(image, text)) for image, text in zip(output.images, output.infotexts,
                                                                            strict=True)],
            "extras": {name: _b64(image_png(image)) for name, image in output.extras.items()}}


def _saved_step_record(step: dict) -> dict:
    return {"index": step["index"], "op": step["op"], "notes": step["notes"], "infotexts": step["infotexts"],
            "images": [_b64(data) for data in step["pngs"]],
            "extras": {name: _b64(data) for name, data in step["extras"].items()}}
