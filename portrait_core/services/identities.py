"""Identities: listing, preparing uploaded photos, renaming and deleting, one door at a time per identity.

Every door (HTTP routes, tabs, CLI) goes through one IdentityService per process, so the rules hold across
them: an identity with a queued or running job (training, or a generation that uses it, even among several
identities) is not renamed or deleted; uploads are staged and only swapped into the identity once
preparation keeps a photo, so a rejected request leaves the disk as it was; a rename moves the folder and
the LoRA together, or neither (the trigger word stays the one the LoRA was trained with).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from portrait_core.errors import DamagedIdentityError, IdentityError, IdentityNotFoundError, PortraitError
from portrait_core.jobs import Job, JobRunner
from portrait_core.log import get_logger
from portrait_core.services.loras import IDENTITY_KEY, LoraInfo, read_lora_info
from portrait_core.services.workspace import Workspace
from portrait_core.store import (
    IdentityPaths,
    atomic_directory,
    atomic_write_bytes,
    atomic_write_json,
    check_prepared_files,
    list_identities,
    read_json,
)

log = get_logger("identities")

UPLOADS_FOLDER = ".uploads"
_STALE_UPLOAD_SECONDS = 24 * 3600
GpuSession = Callable[[str], AbstractContextManager]


class IdentityBusyError(PortraitError):
    """The identity has a queued or running job that the requested change would disturb."""

    def __init__(self, message: str, job: Job):
        super().__init__(message)
        self.job = job


@dataclass(frozen=True)
class IdentityInfo:
    """What a user sees of one identity (no server paths)."""

    id: str
    prepared: bool
    reference_face: bool
    photos: int
    lora: LoraInfo | None
    active_job: Job | None
    damaged: str | None = None  # why its prepared files cannot be used (it cannot render or re-train as is)

    @property
    def has_lora(self) -> bool:
        return self.lora is not None

    def to_json(self) -> dict:
        lora = self.lora
        return {"id": self.id, "has_lora": lora is not None, "lora_name": lora.name if lora else None,
                "lora_size_bytes": lora.size_bytes if lora else None,
                "trained_at": lora.trained_at.isoformat(timespec="seconds") if lora else None,
                "base_model": lora.base_model if lora else None,
                "base_model_version": lora.base_model_version if lora else None,
                "family": lora.family if lora else None,
                "reference_face": self.reference_face, "prepared": self.prepared, "photos": self.photos,
                "active_job": self.active_job.id if self.active_job else None, "damaged": self.damaged}


class IdentityService:
    """The identities of one workspace. `gpu_session(job)` is the host's session: face models may run on
    the GPU, so preparing photos takes its turn like a generation does (None: nothing else shares it)."""

    def __init__(self, workspace: Workspace, runner: JobRunner, *, gpu_session: GpuSession | None = None,
                 upscaler=None):
        self.workspace = workspace
        self.runner = runner
        self._gpu_session = gpu_session
        self._upscaler = upscaler  # super-resolution for faces below the minimum size (None: they are rejected)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        remove_stale_uploads(workspace.identities)

    # ---- one change at a time per identity --------------------------------------------------------------
    @contextmanager
    def exclusive(self, *identities: str) -> Iterator[None]:
        """Hold these identities against every other door's change (taken in name order: no deadlock)."""
        with contextlib.ExitStack() as stack:
            for identity in sorted(set(identities)):
                stack.enter_context(self._lock(identity))
            yield

    def _lock(self, identity: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(identity, threading.Lock())

    def busy_job(self, identity: str, kind: str | None = None) -> Job | None:
        """The identity's oldest queued or running job (of `kind`, if given)."""
        jobs = sorted(self.runner.active_jobs(identity, kind), key=lambda job: job.created)
        return jobs[0] if jobs else None

    def refuse_if_busy(self, identity: str, doing: str, kind: str | None = None) -> None:
        job = self.busy_job(identity, kind)
        if job is not None:
            what = "training" if job.kind == "train" else f"{job.kind} job"
            raise IdentityBusyError(f"identity {identity!r} has a {job.state} {what} (job {job.id}); wait for it "
                                    f"or cancel it before {doing}", job)

    # ---- listing ------------------------------------------------------------------------------------
    def paths(self, identity: str) -> IdentityPaths:
        return self.workspace.identity(identity)

    def ids(self) -> list[str]:
        return list_identities(self.workspace.identities)

    def prepared_ids(self) -> list[str]:
        """Identities generation can use: those with prepared photos (their LoRA is used when there is one)."""
        return [identity for identity in self.ids() if self._is_prepared(identity)]

    def _is_prepared(self, identity: str) -> bool:
        try:
            return self.paths(identity).dataset_layout().reference_info.is_file()
        except IdentityError:
            return False

    def info(self, identity: str) -> IdentityInfo:
        from portrait_core.prepare.photos import list_photo_files

        paths = self.paths(identity)
        layout = paths.dataset_layout()
        try:
            check_prepared_files(paths)
            damaged = None
        except DamagedIdentityError as error:
            damaged = str(error)
        return IdentityInfo(id=paths.id, prepared=layout.manifest.is_file() and damaged is None,
                            reference_face=layout.reference_face.is_file(),
                            photos=len(list_photo_files(paths.photos)) if paths.photos.is_dir() else 0,
                            lora=self.lora(identity), active_job=self.busy_job(identity), damaged=damaged)

    def infos(self) -> list[IdentityInfo]:
        """Every identity we manage (symbolic links and stray entries are skipped)."""
        found = []
        for identity in self.ids():
            try:
                found.append(self.info(identity))
            except IdentityError as error:
                log.warning("skipping identity folder %s: %s", identity, error)
        return found

    def lora(self, identity: str) -> LoraInfo | None:
        """The identity's LoRA as its file says (None: not trained yet)."""
        path = self.workspace.lora_file(identity)
        return read_lora_info(path) if path.is_file() else None

    # ---- photos -------------------------------------------------------------------------------------
    def prepare_photos(self, identity: str, photos: Sequence[tuple[str, bytes]], *, top_k: int):
        """Stage uploads ((safe file name, bytes)) under `<identities>/.uploads/`, prepare them, and only then
        swap photos, dataset and report into the identity; returns the PreprocessReport. Whatever fails
        (NoUsablePhotosError, ModelUnavailableError, IdentityError, a full disk) leaves the identity as it was.
        The caller holds `exclusive(identity)`."""
        from portrait_core.prepare.preprocess import PreprocessOptions, preprocess_photos

        final = self.paths(identity)
        staging_root = self.workspace.identities / UPLOADS_FOLDER / uuid.uuid4().hex
        try:
            staged = IdentityPaths(final.id, staging_root)
            staged.photos.mkdir(parents=True)
            files = []
            for file_name, data in photos:
                (staged.photos / file_name).write_bytes(data)
                files.append(staged.photos / file_name)
            with self._session("portrait studio: prepare photos"):
                report = preprocess_photos(files, final.id, root=staging_root,
                                           options=PreprocessOptions(top_k=top_k), upscaler=self._upscaler)
            commit_prepared(staged, final)
        finally:
            _remove_upload(staging_root)
        return report

    def _session(self, job: str) -> AbstractContextManager:
        return self._gpu_session(job) if self._gpu_session is not None else nullcontext()

    # ---- rename and delete --------------------------------------------------------------------------
    def delete(self, identity: str) -> tuple[list[str], list[str]]:
        """Delete the identity's folder and its LoRA; returns (what was removed, what was kept and why).
        IdentityBusyError while a job uses it; IdentityError when there is nothing of that name."""
        with self.exclusive(identity):
            self.refuse_if_busy(identity, "deleting it")
            removed, kept = remove_identity(self.paths(identity), self.workspace.lora_file(identity))
        if not removed:
            raise IdentityNotFoundError(f"there is no identity {identity!r}")
        log.info("deleted identity %s (%s)", identity, ", ".join(removed))
        return removed, kept

    def rename(self, old: str, new: str) -> list[str]:
        """Move `old` to `new` (folder, our LoRA, manifest id); returns what moved."""
        with self.exclusive(old, new):
            self.refuse_if_busy(old, "renaming it")
            moved = rename_identity(self.paths(old), self.paths(new), self.workspace.lora_file(old),
                                    self.workspace.lora_file(new))
        log.info("renamed identity %s to %s (%s)", old, new, ", ".join(moved))
        return moved


# -- disk ----------------------------------------------------------------------------------------------

def commit_prepared(staged: IdentityPaths, final: IdentityPaths) -> None:
    """Move a staged identity's photos, dataset and report into `final`, each folder swapped in whole."""
    final.folder.mkdir(parents=True, exist_ok=True)
    for source, target in ((staged.photos, final.photos), (staged.dataset, final.dataset)):
        with atomic_directory(target) as fresh:
            for child in source.iterdir():
                os.replace(child, fresh / child.name)
    os.replace(staged.report, final.report)


def remove_identity(paths: IdentityPaths, lora: Path) -> tuple[list[str], list[str]]:
    """Delete the identity's folder and our LoRA; returns (what was removed, what was kept and why)."""
    removed, kept = [], []
    if paths.folder.is_dir():
        # Renamed aside first, so the identity disappears at once even if deleting its files is slow or fails.
        doomed = paths.root / f".deleted-{paths.id}-{uuid.uuid4().hex[:8]}"
        os.replace(paths.folder, doomed)
        _remove_tree(doomed)
        removed.append("folder")
    if lora.is_file():
        info = read_lora_info(lora)
        if info.identity == paths.id:
            lora.unlink()
            removed.append("lora")
        else:  # a LoRA of the same name that we did not train: the user's, not ours to delete
            kept.append(f"{lora.name}: not trained by Portrait Studio for {paths.id!r}")
    return removed, kept


def rename_identity(source: IdentityPaths, target: IdentityPaths, old_lora: Path, new_lora: Path) -> list[str]:
    """Move folder, LoRA and manifest id together; IdentityError (and nothing changed) when that fails."""
    if not source.folder.is_dir():
        raise IdentityNotFoundError(f"there is no identity {source.id!r}")
    if target.folder.exists() or new_lora.exists():
        raise IdentityError(f"{target.id!r} already exists; choose another name")
    source.folder.rename(target.folder)
    moved = ["folder"]
    try:
        if old_lora.is_file() and read_lora_info(old_lora).identity == source.id:
            atomic_write_bytes(new_lora, _relabelled_lora(old_lora, target.id))
            moved.append("lora")
        _relabel_manifest(target.dataset_layout().manifest, target.id)
    except (OSError, ValueError) as error:
        new_lora.unlink(missing_ok=True)
        target.folder.rename(source.folder)
        raise IdentityError(f"could not rename {source.id!r}: {error}; nothing was changed") from error
    if "lora" in moved:
        old_lora.unlink()
    return moved


def _relabelled_lora(path: Path, identity: str) -> bytes:
    from safetensors import safe_open
    from safetensors.torch import save

    with safe_open(str(path), "pt") as handle:
        metadata = dict(handle.metadata() or {})
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - safe_open has no iterator
    metadata.update({IDENTITY_KEY: identity, "ss_output_name": identity})
    return save(tensors, metadata=metadata)


def _relabel_manifest(manifest: Path, identity: str) -> None:
    if manifest.is_file():
        data = read_json(manifest)
        data.setdefault("trigger", data.get("id"))  # the word the LoRA knows stays the trigger
        data["id"] = identity
        atomic_write_json(manifest, data)


def _remove_upload(staging_root: Path) -> None:
    _remove_tree(staging_root)
    # The shared .uploads folder goes too, unless another upload is being prepared in it right now.
    with contextlib.suppress(OSError):
        staging_root.parent.rmdir()


def remove_stale_uploads(root: Path) -> None:
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
