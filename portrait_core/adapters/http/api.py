"""HTTP API under /sdapi/v1/portrait: train, jobs, identities, schema and version, for the WebUI and the standalone app.

`build_router(ApiContext(...))` returns a FastAPI `APIRouter`; `mount_api(app, context)` adds it to an app
(the WebUI calls it from `on_app_started(demo, app)`, where `demo` is None under `--nowebui`). Every route
applies the WebUI's `--api-auth` itself, because the host only protects its own `/sdapi/v1` routes.

`POST train` prepares the photos inside the request (face detection and cropping on the CPU, about 0.3-0.5 s
per photo), then queues the training as a job and answers with the job id and the preparation report; the
training itself runs in the job runner's subprocess, one at a time. Uploads are staged under
`<identities>/.uploads/` and swapped into the identity only when preparation keeps at least one photo, so a
rejected request leaves the disk as it was.

Generation (`POST generate`, `POST workflow`) arrives later as another `_add_*_routes` group that takes
`context.gpu_lock` around the host's diffusion calls, like preparation does here.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from portrait_core import __version__
from portrait_core.config import settings
from portrait_core.errors import CheckpointError, IdentityError, ModelUnavailableError, NoUsablePhotosError
from portrait_core.jobs import DONE, FINISHED_STATES, QUEUED, RUNNING, Job, JobNotFoundError, JobRunner
from portrait_core.log import get_logger
from portrait_core.params import StrictModel, TrainParams, params_json_schema
from portrait_core.store import (
    IdentityPaths,
    atomic_directory,
    identity_paths,
    list_identities,
    validate_identity_id,
)

log = get_logger("api")

API_PREFIX = "/sdapi/v1/portrait"
API_VERSION = 1
# What this server can do; clients check it before calling routes that later versions add (generate, workflow).
CAPABILITIES = ("train", "jobs", "identities")
PROGRESS_FIELDS = ("phase", "step", "total", "loss", "eta_s", "identity_score")
PHOTO_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
UPLOADS_FOLDER = ".uploads"
_STALE_UPLOAD_SECONDS = 24 * 3600
_UNSAFE_NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9_-]+")
_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_WEBUI_TITLE_HASH = re.compile(r"\s*\[[0-9a-fA-F]{8,10}\]$")  # "v1-5.safetensors [6ce0161689]" as the WebUI lists it


@dataclass(frozen=True)
class UploadLimits:
    """What one `POST train` may carry."""

    max_request_bytes: int = 256 * 1024 * 1024
    max_photos: int = 50
    max_photo_bytes: int = 30 * 1024 * 1024
    max_params_bytes: int = 64 * 1024


@dataclass(frozen=True)
class ApiContext:
    """What the routes need from their host. `api_auth` is the WebUI's `--api-auth` value (`user:pass,...`);
    `gpu_lock` is the host's queue lock (A1111: `modules.call_queue.queue_lock`); `checkpoint_dirs` are the
    folders a client's `base_model` name is looked up in (a client never names a server path)."""

    runner: JobRunner
    identities_root: Optional[Path] = None  # None: the settings' identities folder at request time
    api_auth: Optional[str] = None
    gpu_lock: Optional[AbstractContextManager] = None
    checkpoint_dirs: Sequence[Path] = ()
    limits: UploadLimits = field(default_factory=UploadLimits)
    # Gives the GenerationService (host + face models, kept loaded); None: no generate routes.
    generation: Optional[Callable[[], Any]] = None


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


class SavedPhoto(BaseModel):
    name: str = Field(..., description="the name the client sent")
    file: str = Field(..., description="the name it was saved under in the identity's photos/ folder")
    bytes: int


class TrainResponse(BaseModel):
    job_id: str
    job: JobStatus
    report: Optional[Dict[str, Any]] = Field(None, description="preparation report; null when no photos were sent")
    photos: List[SavedPhoto] = Field(default_factory=list)


class IdentityInfo(BaseModel):
    id: str
    has_lora: bool
    lora_name: Optional[str] = None
    lora_size_bytes: Optional[int] = None
    trained_at: Optional[str] = Field(None, description="when the LoRA was written (UTC, ISO 8601)")
    base_model: Optional[str] = None
    base_model_version: Optional[str] = None
    reference_face: bool
    prepared: bool
    photos: int
    active_job: Optional[str] = None


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
    api = _PortraitApi(context)
    router = APIRouter(prefix=API_PREFIX, tags=["Portrait Studio"], dependencies=api.dependencies())
    _add_train_routes(router, api)
    _add_job_routes(router, api)
    _add_identity_routes(router, api)
    _add_info_routes(router, generation=context.generation is not None)
    if context.generation is not None:
        from portrait_core.adapters.http.generate import add_generate_routes

        add_generate_routes(router, api, context.generation)
    return router


def _add_train_routes(router: APIRouter, api: _PortraitApi) -> None:
    router.add_api_route("/train", api.train, methods=["POST"], response_model=TrainResponse,
                         summary="Prepare photos and queue a LoRA training", openapi_extra=_train_body_doc())


def _add_job_routes(router: APIRouter, api: _PortraitApi) -> None:
    router.add_api_route("/jobs/{job_id}", api.get_job, methods=["GET"], response_model=JobStatus)
    router.add_api_route("/jobs/{job_id}/cancel", api.cancel_job, methods=["POST"], response_model=JobStatus)


def _add_identity_routes(router: APIRouter, api: _PortraitApi) -> None:
    router.add_api_route("/identities", api.identities, methods=["GET"], response_model=IdentitiesResponse)
    router.add_api_route("/identities/{identity}", api.delete_identity, methods=["DELETE"],
                         response_model=DeleteResponse)


def _add_info_routes(router: APIRouter, *, generation: bool) -> None:
    router.add_api_route("/schema", params_json_schema, methods=["GET"], summary="JSON schema of the parameters")
    router.add_api_route("/version", lambda: version_info(generation=generation), methods=["GET"],
                         response_model=VersionResponse)


def version_info(*, generation: bool = False) -> dict:
    schema_text = json.dumps(params_json_schema(), sort_keys=True)
    return {"name": "Portrait Studio", "version": __version__, "api_version": API_VERSION,
            # A content hash: it changes exactly when a parameter model changes, with nobody to forget a bump.
            "params_schema_version": hashlib.sha256(schema_text.encode("utf-8")).hexdigest()[:12],
            "capabilities": [*CAPABILITIES, "generate", "workflow"] if generation else list(CAPABILITIES)}


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


def basic_auth_dependency(credentials: Dict[str, str]):
    """A FastAPI dependency accepting only these HTTP Basic credentials (401 otherwise)."""
    # Digests make every comparison the same length, and every entry is compared, so the time taken
    # says nothing about which user exists or how much of a password was right.
    expected = [(_digest(user), _digest(password)) for user, password in credentials.items()]
    basic = Depends(HTTPBasic())

    def require_api_auth(given: HTTPBasicCredentials = basic) -> str:
        user, password = _digest(given.username), _digest(given.password)
        matched = False
        for known_user, known_password in expected:
            user_ok = hmac.compare_digest(user, known_user)
            password_ok = hmac.compare_digest(password, known_password)
            matched |= user_ok and password_ok
        if not matched:
            raise HTTPException(status_code=401, detail="Incorrect username or password",
                                headers={"WWW-Authenticate": "Basic"})
        return given.username

    return require_api_auth


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


# -- the routes ----------------------------------------------------------------------------------------

class _PortraitApi:
    """Route handlers sharing one context: the job runner, the identities folder, the locks."""

    def __init__(self, context: ApiContext):
        self.context = context
        self.credentials = parse_api_auth(context.api_auth)
        self.gpu_lock = context.gpu_lock if context.gpu_lock is not None else threading.Lock()
        self._identity_locks: Dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        _remove_stale_uploads(self.root)

    @property
    def root(self) -> Path:
        return Path(self.context.identities_root or settings().identities_dir)

    def dependencies(self) -> list:
        return [Depends(basic_auth_dependency(self.credentials))] if self.credentials else []

    def identity_lock(self, identity: str) -> threading.Lock:
        """One lock per identity: an upload, a training start and a delete of the same person never overlap."""
        with self._locks_guard:
            return self._identity_locks.setdefault(identity, threading.Lock())

    def active_job(self, identity: str) -> Optional[Job]:
        return next((job for job in self.context.runner.jobs()
                     if job.identity == identity and job.state in (QUEUED, RUNNING)), None)

    # ---- train -------------------------------------------------------------------------------------
    async def train(self, request: Request):
        upload = await read_train_request(request, self.context.limits)
        upload.params = self._with_server_checkpoint(upload.params)
        try:
            return await run_in_threadpool(self._prepare_and_queue, upload)
        except NoUsablePhotosError as error:
            detail = [_error_item(("body", "photos"), str(error), "value_error.no_usable_photos")]
            return JSONResponse(status_code=422, content={"detail": detail, "report": error.report.to_json()})

    def _with_server_checkpoint(self, params: TrainParams) -> TrainParams:
        if params.base_model is None:
            return params
        path = resolve_checkpoint(params.base_model, self.context.checkpoint_dirs)
        return params.copy(update={"base_model": str(path)})

    def _prepare_and_queue(self, upload: _TrainUpload) -> dict:
        params = upload.params
        with self.identity_lock(params.identity):
            busy = self.active_job(params.identity)
            if busy is not None:
                raise HTTPException(409, f"identity {params.identity!r} already has a {busy.state} training "
                                         f"(job {busy.id}); wait for it or cancel it first")
            report = self._prepare(upload) if upload.photos else None
            job = self._start_training(params)
        log.info("API: queued training %s for %s (%d photos uploaded)", job.id, params.identity, len(upload.photos))
        return {"job_id": job.id, "job": job_status(job), "report": report,
                "photos": [{"name": p.name, "file": p.file, "bytes": len(p.data)} for p in upload.photos]}

    def _prepare(self, upload: _TrainUpload) -> dict:
        photos = [(photo.file, photo.data) for photo in upload.photos]
        try:
            report = prepare_upload(self.root, upload.params.identity, photos, top_k=upload.params.top_k_photos,
                                    gpu_lock=self.gpu_lock)
        except ModelUnavailableError as error:
            raise HTTPException(503, f"face models are not available: {error}") from error
        except IdentityError as error:  # e.g. the identity's folder is a symbolic link: we do not write through it
            raise HTTPException(409, str(error)) from error
        return report.to_json()

    def _start_training(self, params: TrainParams) -> Job:
        from portrait_core.services.training import DatasetMissingError, start_training

        try:
            return start_training(self.context.runner, params, root=self.root)
        except DatasetMissingError as error:
            raise _field_error(422, ("body", "photos"), f"no photos sent and {error}") from error
        except CheckpointError as error:
            raise _field_error(422, ("body", "params", "base_model"), str(error)) from error

    # ---- jobs --------------------------------------------------------------------------------------
    def get_job(self, job_id: str) -> dict:
        return job_status(self._job(job_id))

    def cancel_job(self, job_id: str) -> dict:
        self._job(job_id)
        return job_status(self.context.runner.cancel(job_id))

    def _job(self, job_id: str) -> Job:
        try:
            if not _JOB_ID.fullmatch(job_id):
                raise JobNotFoundError(f"no job with id {job_id[:80]!r}")
            return self.context.runner.get(job_id)
        except JobNotFoundError as error:
            raise HTTPException(404, str(error)) from error

    # ---- identities --------------------------------------------------------------------------------
    def identities(self) -> dict:
        active = {job.identity: job.id for job in self.context.runner.jobs() if job.state in (QUEUED, RUNNING)}
        root = self.root
        return {"identities": [identity_info(identity_paths(identity, root), active.get(identity))
                               for identity in list_identities(root)]}

    def delete_identity(self, identity: str) -> dict:
        identity = _path_identity(identity)
        with self.identity_lock(identity):
            busy = self.active_job(identity)
            if busy is not None:
                raise HTTPException(409, f"identity {identity!r} has a {busy.state} training (job {busy.id}); "
                                         "cancel it before deleting")
            try:
                paths = identity_paths(identity, self.root)
            except IdentityError as error:  # e.g. the folder is a symbolic link: not ours to delete
                raise HTTPException(409, str(error)) from error
            removed, kept = remove_identity(paths)
        if not removed:
            raise HTTPException(404, f"no identity {identity!r}")
        log.info("API: deleted identity %s (%s)", identity, ", ".join(removed))
        return {"deleted": identity, "removed": removed, "kept": kept}


# -- reading a train request ---------------------------------------------------------------------------

async def read_train_request(request: Request, limits: UploadLimits) -> _TrainUpload:
    """The params and photos of a JSON (base64) or multipart request; every check happens before any write."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_request_bytes:
        raise _too_large(limits)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        return await _read_json_request(request, limits)
    if content_type == "multipart/form-data":
        return await _read_multipart_request(request, limits)
    raise HTTPException(415, "send application/json (photos in base64) or multipart/form-data (photo files)")


async def _limited_stream(request: Request, limit: int) -> AsyncIterator[bytes]:
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise HTTPException(413, f"the request is larger than {limit} bytes")
        yield chunk


async def _read_json_request(request: Request, limits: UploadLimits) -> _TrainUpload:
    body = b"".join([chunk async for chunk in _limited_stream(request, limits.max_request_bytes)])
    try:
        raw = json.loads(body)
    except ValueError as error:
        raise _field_error(422, ("body",), f"the body is not valid JSON: {error}", "value_error.json") from error
    try:
        parsed = TrainRequest.parse_obj(raw)
    except ValidationError as error:
        items = [_error_item(("body", *e["loc"]), e["msg"], e["type"]) for e in error.errors()]
        raise HTTPException(422, items) from error
    params = check_train_params(parsed.params)
    _check_photo_count(len(parsed.photos), limits)
    photos = [_Photo(p.name, safe_photo_name(i, p.name), decode_base64_photo(p.data, i, limits))
              for i, p in enumerate(parsed.photos)]
    return _TrainUpload(params=params, photos=photos)


async def _read_multipart_request(request: Request, limits: UploadLimits) -> _TrainUpload:
    parser = MultiPartParser(request.headers, _limited_stream(request, limits.max_request_bytes),
                             max_files=limits.max_photos + 1, max_fields=8)
    try:
        form = await parser.parse()
    except MultiPartException as error:
        raise HTTPException(400, f"malformed multipart body: {error.message}") from error
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


async def _form_text(value: Any, limit: int) -> str:
    data = await value.read(limit + 1) if isinstance(value, UploadFile) else str(value).encode("utf-8")
    if len(data) > limit:
        raise _field_error(413, ("body", "params"), f"params is larger than {limit} bytes")
    return data.decode("utf-8", errors="replace")


def _parse_params_text(text: Optional[str]) -> TrainParams:
    if text is None:
        raise _field_error(422, ("body", "params"), "field required", "value_error.missing")
    try:
        raw = json.loads(text)
    except ValueError as error:
        raise _field_error(422, ("body", "params"), f"params is not valid JSON: {error}", "value_error.json") from error
    try:
        return check_train_params(TrainParams.parse_obj(raw))
    except ValidationError as error:
        items = [_error_item(("body", "params", *e["loc"]), e["msg"], e["type"]) for e in error.errors()]
        raise HTTPException(422, items) from error


async def _read_upload(upload: UploadFile, index: int, limits: UploadLimits) -> _Photo:
    data = await upload.read(limits.max_photo_bytes + 1)
    if len(data) > limits.max_photo_bytes:
        raise _photo_too_large(index, upload.filename, limits)
    name = upload.filename or f"photo-{index + 1}"
    return _Photo(name=name[:255], file=safe_photo_name(index, name), data=data)


def check_train_params(params: TrainParams) -> TrainParams:
    """What TrainParams alone cannot know: the identity id must also be safe as a folder name everywhere."""
    try:
        validate_identity_id(params.identity)
    except IdentityError as error:
        raise _field_error(422, ("body", "params", "identity"), str(error)) from error
    return params


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


def safe_photo_name(index: int, client_name: Optional[str]) -> str:
    """The name we save a photo under: its position, then letters, digits, '-' and '_' of the client's name
    (never a path), then its extension if it is a picture's: 'C:\\x\\..\\My photo.JPG' -> '01-My_photo.jpg'."""
    base = re.split(r"[\\/]", client_name or "")[-1]
    stem, dot, extension = base.rpartition(".")
    if not dot:
        stem, extension = base, ""
    suffix = f".{extension.lower()}" if f".{extension.lower()}" in PHOTO_EXTENSIONS else ""
    label = _UNSAFE_NAME_CHARACTERS.sub("_", stem).strip("_-")[:40] or "photo"
    return f"{index + 1:02d}-{label}{suffix}"


def resolve_checkpoint(name: str, folders: Sequence[Path]) -> Path:
    """A client's `base_model` as a checkpoint inside one of `folders`: a file or diffusers folder name,
    relative, with or without `.safetensors` or the WebUI's ' [hash]'. Anything else is a 422."""
    loc = ("body", "params", "base_model")
    cleaned = _WEBUI_TITLE_HASH.sub("", name.strip())
    parts = re.split(r"[\\/]", cleaned)
    if not folders:
        raise _field_error(422, loc, "this server takes no base_model from clients; leave it empty")
    if cleaned.startswith(("/", "\\", "~")) or ":" in cleaned or any(p in ("", ".", "..") for p in parts):
        raise _field_error(422, loc, f"{name!r} is not a checkpoint name (give the name, not a path)")
    # No '..', root or drive can appear in `parts`, so a candidate stays inside its folder (a symbolic link
    # placed there by the server's owner, e.g. to another drive, is followed: that is their choice).
    for folder in map(Path, folders):
        for candidate in (folder.joinpath(*parts), folder.joinpath(*parts[:-1], parts[-1] + ".safetensors")):
            if candidate.exists():
                return candidate
    raise _field_error(422, loc, f"no checkpoint named {name!r} on this server")


# -- disk ----------------------------------------------------------------------------------------------

def prepare_upload(root: Path, identity: str, photos: Sequence[tuple[str, bytes]], *, top_k: int,
                   gpu_lock: AbstractContextManager):
    """Stage uploaded photos ((safe file name, bytes), see `safe_photo_name`) under `<root>/.uploads/`, prepare
    them, and only then swap photos, dataset and report into the identity; returns the PreprocessReport.
    Whatever fails (NoUsablePhotosError, ModelUnavailableError, IdentityError) leaves the identity as it was.
    The HTTP API and the UI both call this."""
    from portrait_core.prepare.preprocess import PreprocessOptions, preprocess_photos

    staging_root = root / UPLOADS_FOLDER / uuid.uuid4().hex
    try:
        staged = identity_paths(identity, staging_root)
        staged.photos.mkdir(parents=True)
        files = []
        for file_name, data in photos:
            (staged.photos / file_name).write_bytes(data)
            files.append(staged.photos / file_name)
        with gpu_lock:  # face models may run on the GPU (insightface); never beside a generation
            report = preprocess_photos(files, identity, root=staging_root, options=PreprocessOptions(top_k=top_k))
        commit_prepared(staged, identity_paths(identity, root))
    finally:
        _remove_upload(staging_root)
    return report


def commit_prepared(staged: IdentityPaths, final: IdentityPaths) -> None:
    """Move a staged identity's photos, dataset and report into `final`, each folder swapped in whole."""
    final.folder.mkdir(parents=True, exist_ok=True)
    for source, target in ((staged.photos, final.photos), (staged.dataset, final.dataset)):
        with atomic_directory(target) as fresh:
            for child in source.iterdir():
                os.replace(child, fresh / child.name)
    os.replace(staged.report, final.report)


def remove_identity(paths: IdentityPaths) -> tuple[list[str], list[str]]:
    """Delete the identity's folder and its LoRA; returns (what was removed, what was kept and why)."""
    from portrait_core.services.training import final_lora_path

    removed, kept = [], []
    if paths.folder.is_dir():
        # Renamed aside first, so the identity disappears at once even if deleting its files is slow or fails.
        doomed = paths.root / f".deleted-{paths.id}-{uuid.uuid4().hex[:8]}"
        os.replace(paths.folder, doomed)
        _remove_tree(doomed)
        removed.append("folder")
    lora = final_lora_path(paths.id)
    if lora.is_file():
        if _lora_metadata(lora).get("portrait_studio.identity") == paths.id:
            lora.unlink()
            removed.append("lora")
        else:  # a LoRA of the same name that we did not train: the user's, not ours to delete
            kept.append(f"{lora.name}: not trained by Portrait Studio for {paths.id!r}")
    return removed, kept


def _remove_upload(staging_root: Path) -> None:
    _remove_tree(staging_root)
    # The shared .uploads folder goes too, unless another upload is being prepared in it right now.
    with contextlib.suppress(OSError):
        staging_root.parent.rmdir()


def _remove_stale_uploads(root: Path) -> None:
    """What a crash can leave: staging folders of uploads, and identity folders renamed for deletion."""
    uploads = root / UPLOADS_FOLDER
    if uploads.is_dir():
        for folder in uploads.iterdir():
            if time.time() - folder.stat().st_mtime > _STALE_UPLOAD_SECONDS:
                _remove_tree(folder)
    if root.is_dir():
        for folder in root.glob(".deleted-*"):
            _remove_tree(folder)


def _remove_tree(folder: Path) -> None:
    if not folder.exists():
        return
    try:
        shutil.rmtree(folder)
    except OSError as error:
        log.warning("could not delete %s (%s); delete it by hand", folder, error)


# -- views ---------------------------------------------------------------------------------------------

def job_status(job: Job) -> dict:
    """What a client sees of a job: no command line, no server paths."""
    progress = {key: job.progress[key] for key in PROGRESS_FIELDS if key in job.progress}
    step, total = progress.get("step"), progress.get("total")
    if job.state == DONE:
        fraction = 1.0
    elif step is not None and total:
        fraction = round(min(step / total, 1.0), 4)
    else:
        fraction = 0.0 if job.state == QUEUED else None
    done_with_lora = job.kind == "train" and job.state == DONE and job.result_path
    return {"id": job.id, "kind": job.kind, "identity": job.identity, "state": job.state, "progress": progress,
            "fraction": fraction, "eta_s": None if job.state in FINISHED_STATES else progress.get("eta_s"),
            "error": job.error, "lora": Path(job.result_path).stem if done_with_lora else None,
            "created": job.created, "started": job.started, "finished": job.finished}


def identity_info(paths: IdentityPaths, active_job: Optional[str]) -> dict:
    from portrait_core.prepare.photos import list_photo_files
    from portrait_core.services.training import final_lora_path

    lora = final_lora_path(paths.id)
    has_lora = lora.is_file()
    metadata = _lora_metadata(lora) if has_lora else {}
    stat = lora.stat() if has_lora else None
    layout = paths.dataset_layout()
    return {
        "id": paths.id, "has_lora": has_lora, "lora_name": lora.stem if has_lora else None,
        "lora_size_bytes": stat.st_size if stat else None,
        "trained_at": datetime.fromtimestamp(stat.st_mtime, timezone.utc).isoformat(timespec="seconds")
        if stat else None,
        "base_model": metadata.get("portrait_studio.base_model") or metadata.get("ss_sd_model_name"),
        "base_model_version": metadata.get("ss_base_model_version"),
        "reference_face": layout.reference_face.is_file(), "prepared": layout.manifest.is_file(),
        "photos": len(list_photo_files(paths.photos)) if paths.photos.is_dir() else 0,
        "active_job": active_job,
    }


def _lora_metadata(path: Path) -> Dict[str, str]:
    """The LoRA's header metadata, read by the safetensors library itself (no tensor is loaded)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError) as error:
        log.warning("cannot read the metadata of %s: %s", path, error)
        return {}


# -- errors --------------------------------------------------------------------------------------------

def _error_item(loc: Sequence[Any], msg: str, error_type: str = "value_error") -> dict:
    """One entry of a 422 body, shaped like FastAPI's own validation errors."""
    return {"loc": list(loc), "msg": msg, "type": error_type}


def _field_error(status: int, loc: Sequence[Any], msg: str, error_type: str = "value_error") -> HTTPException:
    return HTTPException(status, [_error_item(loc, msg, error_type)])


def _too_large(limits: UploadLimits) -> HTTPException:
    return HTTPException(413, f"the request is larger than {limits.max_request_bytes} bytes")


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
