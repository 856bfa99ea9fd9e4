"""HTTP API under /sdapi/v1/portrait: train, jobs, identities, schema and version, for the WebUI and the standalone app.

`build_router(ApiContext(...))` returns a FastAPI `APIRouter`; `mount_api(app, context)` adds it to an app
(the WebUI calls it from `on_app_started(demo, app)`, where `demo` is None under `--nowebui`). Every route
applies the WebUI's `--api-auth` itself, because the host only protects its own `/sdapi/v1` routes.

The routes only translate: they read and check the request, call the process's PortraitServices (the same
object the tabs use, so the rules — one training per identity, the default base model, who owns the GPU —
are the same whichever door a user takes) and turn its answers and errors into HTTP. `POST train` prepares
the photos inside the request (about 0.3-0.5 s per photo on the CPU), then queues the training as a job and
answers with the job id and the preparation report; a refused request changes nothing on disk.
Generation routes (`POST generate`, `POST workflow`) are in `adapters.http.generate`.
"""

from __future__ import annotations

import base64
import binascii
import email.message
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from portrait_core import __version__
from portrait_core.adapters.http.bodies import check_declared_length, limited_stream, strict_json_loads
from portrait_core.errors import (
    CheckpointError,
    IdentityError,
    IdentityNotFoundError,
    ModelUnavailableError,
    NoUsablePhotosError,
)
from portrait_core.jobs import Job, JobNotFoundError, JobStateError, JobStoreError, job_status
from portrait_core.log import get_logger
from portrait_core.params import MAX_OUTPUT_PIXELS, MAX_OUTPUT_SIDE, StrictModel, TrainParams, params_json_schema
from portrait_core.services.identities import IdentityBusyError
from portrait_core.services.runtime import PortraitServices
from portrait_core.services.training import DatasetMissingError
from portrait_core.services.uploads import MAX_TEMPLATES, UploadLimits, safe_photo_name
from portrait_core.store import validate_identity_id

log = get_logger("api")

API_PREFIX = "/sdapi/v1/portrait"
API_VERSION = 1
# What this server can do; clients check it before calling routes that later versions add (generate, workflow).
CAPABILITIES = ("train", "jobs", "identities", "generate", "workflow")
_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")


@dataclass(frozen=True)
class ApiContext:
    """What the routes need: the process's services (shared with the tabs), the WebUI's `--api-auth` value
    (`user:pass,...`) and the upload limits."""

    services: PortraitServices
    api_auth: Optional[str] = None
    limits: UploadLimits = field(default_factory=UploadLimits)


# -- request and response shapes -------------------------------------------------------------------------

class PhotoUpload(StrictModel):
    name: str = Field("photo", max_length=255, description="the client's file name; only used to label the copy")
    data: str = Field(..., description="the file's bytes in base64 (a data: URL prefix is accepted)")


class TrainRequest(StrictModel):
    params: TrainParams
    photos: List[PhotoUpload] = Field(default_factory=list,
                                      description="empty: train again from the identity's prepared photos")


class JobProgress(BaseModel):
    phase: Optional[str] = None
    step: Optional[int] = None
    total: Optional[int] = None
    loss: Optional[float] = None
    eta_s: Optional[float] = None
    identity_score: Optional[float] = None


class JobStatus(BaseModel):
    id: str
    kind: str
    identity: str
    state: str = Field(..., description="queued, running, done, failed or cancelled")
    progress: JobProgress
    fraction: Optional[float] = Field(None, description="0..1 when known")
    eta_s: Optional[float] = None
    error: Optional[str] = None
    lora: Optional[str] = Field(None, description="the LoRA's name for <lora:NAME:weight>, once done")
    created: float
    started: Optional[float] = None
    finished: Optional[float] = None
    retryable: bool = Field(False, description="failed or cancelled training: POST jobs/{id}/retry resumes it")


class SavedPhoto(BaseModel):
    name: str = Field(..., description="the name the client sent")
    file: str = Field(..., description="the name it was saved under in the identity's photos/ folder")
    bytes: int


class TrainResponse(BaseModel):
    job_id: str
    job: JobStatus
    report: Optional[Dict[str, Any]] = Field(None, description="preparation report; null when no photos were sent")
    photos: List[SavedPhoto] = Field(default_factory=list)
    base_model: str = Field(..., description="the checkpoint the training uses (its file name)")
    notes: List[str] = Field(default_factory=list)


class IdentityInfo(BaseModel):
    id: str
    has_lora: bool
    lora_name: Optional[str] = None
    lora_size_bytes: Optional[int] = None
    trained_at: Optional[str] = Field(None, description="when the LoRA was written (UTC, ISO 8601)")
    base_model: Optional[str] = None
    base_model_version: Optional[str] = None
    family: Optional[str] = Field(None, description="the model family the LoRA was trained for: sd15 or sdxl")
    reference_face: bool
    prepared: bool
    photos: int
    active_job: Optional[str] = None
    damaged: Optional[str] = Field(None, description="set when the identity's prepared files cannot be read: "
                                   "which file and why (it cannot render or re-train until its photos are "
                                   "uploaded again)")


class IdentitiesResponse(BaseModel):
    identities: List[IdentityInfo]


class DeleteResponse(BaseModel):
    deleted: str
    removed: List[str]
    kept: List[str] = Field(default_factory=list, description="what was left in place, and why")


class VersionResponse(BaseModel):
    name: str
    version: str
    api_version: int
    params_schema_version: str
    capabilities: List[str]
    limits: Dict[str, int] = Field(default_factory=dict, description="what one request may carry and make "
                                   "(bytes, counts, pixels); per-field ranges are in GET schema")


@dataclass
class _Photo:
    name: str
    file: str
    data: bytes


@dataclass
class _TrainUpload:
    params: TrainParams
    photos: List[_Photo]


# -- mounting ------------------------------------------------------------------------------------------

def mount_api(app: FastAPI, context: ApiContext) -> APIRouter:
    """Add the routes to `app`, replacing any this function added before (a second `on_app_started`)."""
    router = build_router(context)
    app.router.routes[:] = [route for route in app.router.routes
                            if not str(getattr(route, "path", "")).startswith(API_PREFIX + "/")]
    app.include_router(router)
    app.openapi_schema = None  # FastAPI caches the schema; /docs must show the new routes
    return router


def build_router(context: ApiContext) -> APIRouter:
    """The routes under /sdapi/v1/portrait, each behind `--api-auth` when it is set."""
    from portrait_core.adapters.http.generate import add_generate_routes

    api = _PortraitApi(context)
    router = APIRouter(prefix=API_PREFIX, tags=["Portrait Studio"], dependencies=api.dependencies())
    _add_train_routes(router, api)
    _add_job_routes(router, api)
    _add_retry_routes(router, api)
    _add_identity_routes(router, api)
    _add_info_routes(router, context.limits)
    add_generate_routes(router, api, context.services, context.limits)
    return router


def _add_train_routes(router: APIRouter, api: _PortraitApi) -> None:
    router.add_api_route("/train", api.train, methods=["POST"], response_model=TrainResponse,
                         summary="Prepare photos and queue a LoRA training", openapi_extra=_train_body_doc())


def _add_job_routes(router: APIRouter, api: _PortraitApi) -> None:
    router.add_api_route("/jobs/{job_id}", api.get_job, methods=["GET"], response_model=JobStatus)
    router.add_api_route("/jobs/{job_id}/cancel", api.cancel_job, methods=["POST"], response_model=JobStatus)


def _add_retry_routes(router: APIRouter, api: _PortraitApi) -> None:
    router.add_api_route("/jobs/{job_id}/retry", api.retry_job, methods=["POST"], response_model=JobStatus,
                         summary="Queue a failed or cancelled training again; it resumes from its last checkpoint")


def _add_identity_routes(router: APIRouter, api: _PortraitApi) -> None:
    router.add_api_route("/identities", api.identities, methods=["GET"], response_model=IdentitiesResponse)
    router.add_api_route("/identities/{identity}", api.delete_identity, methods=["DELETE"],
                         response_model=DeleteResponse)


def _add_info_routes(router: APIRouter, limits: UploadLimits) -> None:
    router.add_api_route("/schema", params_json_schema, methods=["GET"], summary="JSON schema of the parameters")
    router.add_api_route("/version", lambda: version_info(limits), methods=["GET"], response_model=VersionResponse)


def version_info(limits: UploadLimits | None = None) -> dict:
    schema_text = json.dumps(params_json_schema(), sort_keys=True)
    return {"name": "Portrait Studio", "version": __version__, "api_version": API_VERSION,
            # A content hash: it changes exactly when a parameter model changes, with nobody to forget a bump.
            "params_schema_version": hashlib.sha256(schema_text.encode("utf-8")).hexdigest()[:12],
            "capabilities": list(CAPABILITIES), "limits": request_limits(limits or UploadLimits())}


def request_limits(limits: UploadLimits) -> Dict[str, int]:
    """The limits no field range in the schema states: a refused request gets 413 (bytes) or 422 (the rest)."""
    return {"train_body_bytes": limits.max_request_bytes, "train_photos": limits.max_photos,
            "photo_bytes": limits.max_photo_bytes, "train_params_bytes": limits.max_params_bytes,
            "generate_body_bytes": limits.max_generate_bytes, "workflow_body_bytes": limits.max_generate_bytes,
            "template_bytes": limits.max_template_bytes, "templates_per_request": MAX_TEMPLATES,
            "workflow_images": MAX_TEMPLATES, "output_side_px": MAX_OUTPUT_SIDE,
            "output_pixels": MAX_OUTPUT_PIXELS}


# -- auth ----------------------------------------------------------------------------------------------

def parse_api_auth(value: Optional[str]) -> Dict[str, str]:
    """`user:pass,user2:pass2` (the WebUI's --api-auth) as {user: password}; empty or None: no auth.

    The host splits entries on "," and each on ":"; a password may contain ":" here (the host would refuse
    to start with one), so only the first ":" separates. An entry without ":" is an error naming it.
    """
    credentials: Dict[str, str] = {}
    for position, entry in enumerate((value or "").split(",") if value else [], start=1):
        user, separator, password = entry.partition(":")
        if not separator:
            raise ValueError(f"--api-auth entry {position} has no ':' between user name and password")
        credentials[user] = password
    return credentials


def credentials_checker(credentials: Dict[str, str]) -> Callable[[str, str], bool]:
    """`check(user, password)`: True for one of these credentials. Digests make every comparison the same
    length, and every entry is compared, so the time taken says nothing about which user exists or how much
    of a password was right."""
    expected = [(_digest(user), _digest(password)) for user, password in credentials.items()]

    def check(user: str, password: str) -> bool:
        given_user, given_password = _digest(user), _digest(password)
        matched = False
        for known_user, known_password in expected:
            user_ok = hmac.compare_digest(given_user, known_user)
            password_ok = hmac.compare_digest(given_password, known_password)
            matched |= user_ok and password_ok
        return matched

    return check


def basic_auth_dependency(credentials: Dict[str, str]):
    """A FastAPI dependency accepting only these HTTP Basic credentials (401 otherwise)."""
    check = credentials_checker(credentials)
    basic = Depends(HTTPBasic())

    def require_api_auth(given: HTTPBasicCredentials = basic) -> str:
        if not check(given.username, given.password):
            raise HTTPException(status_code=401, detail="Incorrect username or password",
                                headers={"WWW-Authenticate": "Basic"})
        return given.username

    return require_api_auth


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


# -- the routes ----------------------------------------------------------------------------------------

class _PortraitApi:
    """Route handlers over the process's services: they translate requests and errors, nothing more."""

    def __init__(self, context: ApiContext):
        self.context = context
        self.services = context.services
        self.credentials = parse_api_auth(context.api_auth)

    def dependencies(self) -> list:
        return [Depends(basic_auth_dependency(self.credentials))] if self.credentials else []

    # ---- train -------------------------------------------------------------------------------------
    async def train(self, request: Request):
        upload = await read_train_request(request, self.context.limits)
        try:
            return await run_in_threadpool(self._start, upload)
        except NoUsablePhotosError as error:
            detail = [_error_item(("body", "photos"), str(error), "value_error.no_usable_photos")]
            return JSONResponse(status_code=422, content={"detail": detail, "report": error.report.to_json()})

    def _start(self, upload: _TrainUpload) -> dict:
        photos = [(photo.file, photo.data) for photo in upload.photos]
        try:
            started = self.services.training.start(upload.params, photos)
        except IdentityBusyError as error:
            raise HTTPException(409, str(error)) from error
        except CheckpointError as error:
            raise _field_error(422, ("body", "params", "base_model"), str(error)) from error
        except DatasetMissingError as error:
            raise _field_error(422, ("body", "photos"), f"no photos sent and {error}") from error
        except ModelUnavailableError as error:
            raise HTTPException(503, f"face models are not available: {error}") from error
        except IdentityError as error:  # e.g. the identity's folder is a symbolic link: we do not write through it
            raise HTTPException(409, str(error)) from error
        except JobStoreError as error:  # e.g. a full disk: nothing was queued
            raise HTTPException(507, str(error)) from error
        job = started.job
        return {"job_id": job.id, "job": job_status(job), "base_model": started.base_model.name,
                "notes": started.notes, "report": started.report.to_json() if started.report else None,
                "photos": [{"name": p.name, "file": p.file, "bytes": len(p.data)} for p in upload.photos]}

    # ---- jobs --------------------------------------------------------------------------------------
    def get_job(self, job_id: str) -> dict:
        return job_status(self.job(job_id))

    def cancel_job(self, job_id: str) -> dict:
        self.job(job_id)
        return job_status(self.services.runner.cancel(job_id))

    def retry_job(self, job_id: str) -> dict:
        """409 unless the job is a failed or cancelled training whose identity has no other training."""
        self.job(job_id)
        try:
            return job_status(self.services.training.retry(job_id))
        except JobStateError as error:
            raise HTTPException(409, str(error)) from error
        except JobStoreError as error:
            raise HTTPException(507, str(error)) from error

    def job(self, job_id: str) -> Job:
        try:
            if not _JOB_ID.fullmatch(job_id):
                raise JobNotFoundError(f"no job with id {job_id[:80]!r}")
            return self.services.runner.get(job_id)
        except JobNotFoundError as error:
            raise HTTPException(404, str(error)) from error

    # ---- identities --------------------------------------------------------------------------------
    def identities(self) -> dict:
        return {"identities": [info.to_json() for info in self.services.identities.infos()]}

    def delete_identity(self, identity: str) -> dict:
        identity = _path_identity(identity)
        try:
            removed, kept = self.services.identities.delete(identity)
        except IdentityBusyError as error:
            raise HTTPException(409, str(error)) from error
        except IdentityNotFoundError as error:
            raise HTTPException(404, str(error)) from error
        except IdentityError as error:  # e.g. the folder is a symbolic link: not ours to delete
            raise HTTPException(409, str(error)) from error
        return {"deleted": identity, "removed": removed, "kept": kept}


# -- reading a train request ---------------------------------------------------------------------------

async def read_train_request(request: Request, limits: UploadLimits) -> _TrainUpload:
    """The params and photos of a JSON (base64) or multipart request; every check happens before any write."""
    check_declared_length(request, limits.max_request_bytes)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        return await _read_json_request(request, limits)
    if content_type == "multipart/form-data":
        return await _read_multipart_request(request, limits)
    raise HTTPException(415, "send application/json (photos in base64) or multipart/form-data (photo files)")


async def _read_json_request(request: Request, limits: UploadLimits) -> _TrainUpload:
    body = b"".join([chunk async for chunk in limited_stream(request, limits.max_request_bytes)])
    try:
        raw = strict_json_loads(body)
    except ValueError as error:
        raise _field_error(422, ("body",), f"the body is not valid JSON: {error}", "value_error.json") from error
    try:
        parsed = TrainRequest.parse_obj(raw)
    except ValidationError as error:
        items = [_error_item(("body", *e["loc"]), e["msg"], e["type"]) for e in error.errors()]
        raise HTTPException(422, items) from error
    params = parsed.params
    _check_photo_count(len(parsed.photos), limits)
    photos = [_Photo(p.name, safe_photo_name(i, p.name), decode_base64_photo(p.data, i, limits))
              for i, p in enumerate(parsed.photos)]
    return _TrainUpload(params=params, photos=photos)


class _CheckedMultiPartParser(MultiPartParser):
    """Starlette's parser, remembering whether the closing boundary arrived: it takes a body cut short (a
    dropped connection, a client that gave up) for a complete one without the parts that were cut."""

    complete = False

    def on_end(self) -> None:
        self.complete = True


async def _read_multipart_request(request: Request, limits: UploadLimits) -> _TrainUpload:
    boundary = _multipart_boundary(request.headers.get("content-type", ""))
    parser = _CheckedMultiPartParser(request.headers, limited_stream(request, limits.max_request_bytes),
                                     max_files=limits.max_photos + 1, max_fields=8)
    try:
        form = await parser.parse()
    except MultiPartException as error:
        raise HTTPException(400, f"malformed multipart body: {error.message}") from error
    except ValueError as error:  # python-multipart's own parse errors (a part that breaks the format)
        for spooled in parser._files_to_close_on_error:  # Starlette closes them only on its own errors
            spooled.close()
        raise HTTPException(400, f"malformed multipart body: {error}") from error
    if not parser.complete:
        await form.close()
        raise HTTPException(400, f"the multipart body ends before its closing boundary (--{boundary}--): the "
                                 "upload was cut short; nothing was changed, send it again")
    try:
        params_text, uploads = None, []
        for key, value in form.multi_items():
            if key == "params":
                params_text = await _form_text(value, limits.max_params_bytes)
            elif key == "photos" and isinstance(value, UploadFile):
                uploads.append(value)
            else:
                raise _field_error(422, ("body", key), "unexpected form field: send 'params' (JSON text) and "
                                                       "'photos' (files)", "value_error.extra")
        params = _parse_params_text(params_text)
        _check_photo_count(len(uploads), limits)
        photos = [await _read_upload(upload, index, limits) for index, upload in enumerate(uploads)]
    finally:
        await form.close()
    return _TrainUpload(params=params, photos=photos)


def _multipart_boundary(content_type: str) -> str:
    """The boundary of a multipart Content-Type; 400 unless it is 1-70 of the characters RFC 2046 allows."""
    message = email.message.Message()
    message["content-type"] = content_type
    boundary = message.get_param("boundary")
    if not isinstance(boundary, str) or not _BOUNDARY.fullmatch(boundary):
        raise HTTPException(400, "malformed multipart body: the Content-Type needs a boundary of 1 to 70 "
                                 f"letters, digits or '()+_,-./:=? (not ending with a space), got {boundary!r}")
    return boundary


async def _form_text(value: Any, limit: int) -> str:
    data = await value.read(limit + 1) if isinstance(value, UploadFile) else str(value).encode("utf-8")
    if len(data) > limit:
        raise _field_error(413, ("body", "params"), f"params is larger than {limit} bytes")
    return data.decode("utf-8", errors="replace")


def _parse_params_text(text: Optional[str]) -> TrainParams:
    if text is None:
        raise _field_error(422, ("body", "params"), "field required", "value_error.missing")
    try:
        raw = strict_json_loads(text)
    except ValueError as error:
        raise _field_error(422, ("body", "params"), f"params is not valid JSON: {error}", "value_error.json") from error
    try:
        return TrainParams.parse_obj(raw)
    except ValidationError as error:
        items = [_error_item(("body", "params", *e["loc"]), e["msg"], e["type"]) for e in error.errors()]
        raise HTTPException(422, items) from error


async def _read_upload(upload: UploadFile, index: int, limits: UploadLimits) -> _Photo:
    data = await upload.read(limits.max_photo_bytes + 1)
    if len(data) > limits.max_photo_bytes:
        raise _photo_too_large(index, upload.filename, limits)
    name = upload.filename or f"photo-{index + 1}"
    return _Photo(name=name[:255], file=safe_photo_name(index, name), data=data)


def _check_photo_count(count: int, limits: UploadLimits) -> None:
    if count > limits.max_photos:
        raise _field_error(422, ("body", "photos"), f"{count} photos sent; at most {limits.max_photos} per request",
                           "value_error.list.max_items")


def decode_base64_photo(text: str, index: int, limits: UploadLimits) -> bytes:
    """The bytes of one base64 photo (optionally a data: URL); 413 over the size limit, 422 if not base64."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    text = "".join(text.split())  # line-wrapped base64 (the `base64` tool's default) is still base64
    if len(text) // 4 * 3 > limits.max_photo_bytes + 2:
        raise _photo_too_large(index, None, limits)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise _field_error(422, ("body", "photos", index, "data"), f"not valid base64: {error}") from error
    if len(data) > limits.max_photo_bytes:
        raise _photo_too_large(index, None, limits)
    return data


# -- errors --------------------------------------------------------------------------------------------

def _error_item(loc: Sequence[Any], msg: str, error_type: str = "value_error") -> dict:
    """One entry of a 422 body, shaped like FastAPI's own validation errors."""
    return {"loc": list(loc), "msg": msg, "type": error_type}


def _field_error(status: int, loc: Sequence[Any], msg: str, error_type: str = "value_error") -> HTTPException:
    return HTTPException(status, [_error_item(loc, msg, error_type)])


def _photo_too_large(index: int, name: Optional[str], limits: UploadLimits) -> HTTPException:
    label = f" ({name[:80]!r})" if name else ""
    return _field_error(413, ("body", "photos", index), f"photo {index}{label} is larger than "
                                                        f"{limits.max_photo_bytes} bytes")


def _path_identity(identity: str) -> str:
    try:
        return validate_identity_id(identity)
    except IdentityError as error:
        raise _field_error(422, ("path", "identity"), str(error)) from error


def _inline_definitions(schema: dict) -> dict:
    """A pydantic 1 schema with its `#/definitions/...` references inlined (OpenAPI cannot resolve them)."""
    definitions = schema.get("definitions", {})  # read only: pydantic caches and reuses this dict

    def inline(node):
        if isinstance(node, dict):
            reference = node.get("$ref", "")
            if reference.startswith("#/definitions/"):
                return inline(definitions[reference.rsplit("/", 1)[1]])
            return {key: inline(value) for key, value in node.items()}
        return [inline(item) for item in node] if isinstance(node, list) else node

    return inline({key: value for key, value in schema.items() if key != "definitions"})


def _train_body_doc() -> dict:
    """The request body of POST train for /docs: FastAPI cannot describe a route that reads two content types."""
    multipart = {"type": "object", "required": ["params"], "properties": {
        "params": {"type": "string", "description": "TrainParams as JSON text"},
        "photos": {"type": "array", "items": {"type": "string", "format": "binary"}}}}
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": _inline_definitions(TrainRequest.schema())},
        "multipart/form-data": {"schema": multipart}}}}
