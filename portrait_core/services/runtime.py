"""The services of one process, built once and shared by every door (tabs, HTTP routes, CLI).

One PortraitServices per process means one job runner, one lock per identity and one host: the rules
(one training per identity, what "active" means, the default base model, who owns the GPU) cannot differ
between the door a user clicked and the one a script called.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from portrait_core.hosts.base import Host
from portrait_core.jobs import Job, JobRunner
from portrait_core.services.generation import GenerationService
from portrait_core.services.identities import IdentityService
from portrait_core.services.training import TrainingService, standalone_base_model
from portrait_core.services.workflows import WorkflowService
from portrait_core.services.workspace import Workspace


class LazyHost:
    """Builds the host on first use (it may load models), once, whichever thread asks first."""

    def __init__(self, factory: Callable[[], Host]):
        self._factory = factory
        self._host: Host | None = None
        self._guard = threading.Lock()

    def __call__(self) -> Host:
        with self._guard:
            if self._host is None:
                self._host = self._factory()
            return self._host

    @property
    def built(self) -> bool:
        return self._host is not None


@dataclass
class PortraitServices:
    workspace: Workspace
    runner: JobRunner
    host: LazyHost
    identities: IdentityService
    training: TrainingService
    generation: GenerationService
    workflows: WorkflowService
    in_webui: bool = False

    @classmethod
    def create(cls, workspace: Workspace, host: Callable[[], Host], *, in_webui: bool = False,
               runner: JobRunner | None = None, analyzer=None,
               default_checkpoint: Callable[[], str | None] | None = None,
               prepare_upscaler=None, trainings_take_turn: Callable[[], bool] | None = None) -> PortraitServices:
        """`host()` builds the host (called once, on first use); `default_checkpoint()` names the checkpoint a
        training without `base_model` uses (None or "": the host's current one); `prepare_upscaler` is the
        super-resolution photo preparation uses on small faces (None: they are rejected as too small);
        `trainings_take_turn()`, asked at each training's start, true: the training runs as the host's own
        job (`host.training_turn`: the WebUI's queue, progress bar and Interrupt)."""
        lazy = host if isinstance(host, LazyHost) else LazyHost(host)
        turn = _training_turn(lazy, trainings_take_turn) if trainings_take_turn is not None else None
        runner = runner or JobRunner(workspace.jobs, trainer_turn=turn)
        identities = IdentityService(workspace, runner, gpu_session=lambda job: lazy().session(job),
                                     upscaler=prepare_upscaler)
        generation = GenerationService(workspace, identities, runner, lazy, analyzer=analyzer)
        return cls(workspace=workspace, runner=runner, host=lazy, identities=identities,
                   training=TrainingService(workspace, runner, identities, lazy, in_webui=in_webui,
                                            default_checkpoint=default_checkpoint),
                   generation=generation, workflows=WorkflowService(generation), in_webui=in_webui)

    def close(self) -> None:
        """Stop the job runner (a running training is stopped and resumes from its checkpoint next start)."""
        self.runner.close()


def training_task_id(job_id: str) -> str:
    """The WebUI task id of a training's turn: a page polls the WebUI's progress with it."""
    return f"task(portrait-train-{job_id})"


def _training_turn(host: LazyHost, wanted: Callable[[], bool]):
    def turn(job: Job):
        return host().training_turn(training_task_id(job.id)) if wanted() else contextlib.nullcontext()

    return turn


def standalone_services(workspace: Workspace | None = None, base_model: Path | str | None = None, *,
                        sdxl: bool = False, checkpoints_dir: Path | None = None, progress=None,
                        runner: JobRunner | None = None) -> PortraitServices:
    """The services on a DiffusersHost serving `base_model` (else the tiny local model, SDXL with `sdxl`)."""
    workspace = workspace or Workspace.from_settings()

    def build_host() -> Host:
        from portrait_core.hosts.diffusers_host import DiffusersHost

        return DiffusersHost(standalone_base_model(base_model, sdxl=sdxl), lora_dir=workspace.loras,
                             checkpoints_dir=checkpoints_dir, progress_callback=progress)

    if base_model is not None:
        standalone_base_model(base_model)  # a wrong path fails here, before anything is written
    lazy = LazyHost(build_host)
    return PortraitServices.create(workspace, lazy, runner=runner, prepare_upscaler=host_super_resolution(lazy))


def host_super_resolution(host: Callable[[], Host]):
    """Photo preparation's super-resolution: the standalone host's Real-ESRGAN (one network for both, under
    the host's lock), or None when Real-ESRGAN is not installed (preparation never falls back to Lanczos)."""
    from portrait_core.models.superres import REALESRGAN_NAME, ncnn_available

    if not ncnn_available():
        return None

    def upscale(pixels, scale: float):
        import numpy as np
        from PIL import Image

        return np.asarray(host().upscale(Image.fromarray(pixels), scale, REALESRGAN_NAME))

    return upscale
