"""`POST /sdapi/v1/portrait/generate` and its results: portraits over HTTP, now or as a queued job."""

from __future__ import annotations

import base64
import json
import threading
import uuid
from pathlib import Path
from typing import Callable, List, Optional

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from portrait_core.config import settings
from portrait_core.errors import PortraitError, UnusablePhotoError
from portrait_core.generate.results import png_bytes, save_results
from portrait_core.params import GenerateParams, StrictModel

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


def add_generate_routes(router: APIRouter, api, service: Callable[[], object]) -> None:
    """Register the routes; `api` is the router's handler object (runner, GPU lock, decoding limits)."""
    routes = _GenerateRoutes(api, service)
    router.add_api_route("/generate", routes.generate, methods=["POST"], response_model=GenerateResponse,
                         summary="Render identities into template photos")
    router.add_api_route("/jobs/{job_id}/results", routes.results, methods=["GET"], response_model=GenerateResponse,
                         summary="The images of a finished background generation")


class _GenerateRoutes:
    def __init__(self, api, service: Callable[[], object]):
        self.api, self.service = api, service

    def generate(self, request: GenerateRequest) -> dict:
        templates = [(_label(upload.name, index), _decode_template(upload, index))
                     for index, upload in enumerate(request.templates)]
        if request.background:
            return {"job_id": self._queue(request.params, templates).id, "images": []}
        from contextlib import nullcontext

        from portrait_core.generate.service import manages_gpu_lock

        service = self.service()
        # A host with its own session (the WebUI's) takes the GPU lock itself, and that lock is not reentrant.
        with nullcontext() if manages_gpu_lock(service.generator.host) else self.api.gpu_lock:
            outputs = self._run(request.params, templates)
        return {"images": [_image_record(result, text) for result, text in outputs]}

    def results(self, job_id: str) -> dict:
        job = self.api._job(job_id)
        if job.kind != "generate":
            raise HTTPException(404, f"job {job_id} is a {job.kind} job; it has no images")
        if job.state != "done" or not job.result_path:
            raise HTTPException(409, f"job {job_id} is {job.state}" + (f": {job.error}" if job.error else ""))
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


def _decode_template(upload: TemplateUpload, index: int):
    from PIL import Image

    from portrait_core.photos import decode_photo

    text = upload.data.split(",", 1)[1] if upload.data.startswith("data:") else upload.data
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
        return Image.fromarray(decode_photo(data, upload.name).pixels)
    except (ValueError, UnusablePhotoError) as error:
        raise HTTPException(422, [{"loc": ["body", "templates", index, "data"], "msg": str(error),
                                   "type": "value_error"}]) from error


def _label(name: str, index: int) -> str:
    """A display label for the template: the client's name reduced to safe characters, never a path."""
    stem = "".join(ch for ch in Path(name).name if ch.isalnum() or ch in "-_.")[:80].lstrip(".")
    return stem or f"template-{index + 1}.png"


def _image_record(result, text: str) -> dict:
    return {"template": result.template, "seed": result.seed,
            "image": base64.b64encode(png_bytes(result, text)).decode("ascii"),
            "faces": [{"id": f.identity, "box": f.box, "identity_score": f.identity_score} for f in result.faces],
            "infotext": text, "notes": result.notes}


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
