"""Training an identity: the one place that decides what to train on and whether a training may start.

Every door (the Train tab, `POST train`, `python -m portrait_core train`) calls `TrainingService.start`:
- the base model: the checkpoint the client names (as the host lists it; a path only from the command
  line); without one, the default checkpoint of the Settings, else the host's current checkpoint: inside
  the WebUI the one selected there (the tiny test model is refused there), standalone the served
  `--base-model`, else the tiny local model with a note saying it shows the pipeline, not a likeness;
- one training per identity across all doors (IdentityBusyError otherwise), photos prepared and swapped
  in under the same hold, so a refused request changes nothing on disk;
- the identity, its LoRA and the job live in the service's Workspace (one home holds everything).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from portrait_core.errors import CheckpointError, ModelUnavailableError, PortraitError
from portrait_core.hosts.base import Host
from portrait_core.jobs import Job, JobRunner, JobStateError
from portrait_core.log import get_logger
from portrait_core.params import TrainParams
from portrait_core.services.identities import IdentityService
from portrait_core.services.workspace import Workspace
from portrait_core.store import atomic_write_json, check_prepared_files

log = get_logger("training")

TRAINER_MODULE = "portrait_core.training.trainer"
TINY_MODEL_NOTE = ("no base checkpoint given: training the tiny local model, which shows the pipeline working, "
                   "not a likeness; pass a real SD1.5/SDXL checkpoint for that")


class DatasetMissingError(PortraitError):
    """The identity has no prepared dataset yet."""


@dataclass(frozen=True)
class TrainingStarted:
    job: Job
    base_model: Path
    report: object | None = None  # the PreprocessReport of the photos sent with the request
    notes: list[str] = field(default_factory=list)


class TrainingService:
    """`host()` gives the generation host (built on first use): it knows the checkpoints and the GPU."""

    def __init__(self, workspace: Workspace, runner: JobRunner, identities: IdentityService,
                 host: Callable[[], Host], *, in_webui: bool = False,
                 default_checkpoint: Callable[[], str | None] | None = None):
        self.workspace, self.runner, self.identities = workspace, runner, identities
        self._host = host
        self.in_webui = in_webui
        # The checkpoint a training without `base_model` uses before the host's current one (WebUI Settings).
        self._default_checkpoint = default_checkpoint

    def retry(self, job_id: str) -> Job:
        """Queue a failed or cancelled training again (it resumes from its last checkpoint), holding its
        identities like every other change: a delete, rename or new training of the same identity waits."""
        job = self.runner.get(job_id)
        with self.identities.exclusive(*job.identities):
            gone = [name for name in job.identities if name not in self.identities.ids()]
            if gone and job.kind == "train":
                raise JobStateError(f"identity {gone[0]!r} does not exist any more (deleted or renamed); "
                                    f"job {job.id} cannot resume: train it again")
            return self.runner.retry(job_id)

    def start(self, params: TrainParams, photos: Sequence[tuple[str, bytes]] = (), *,
              base_model_path: Path | None = None) -> TrainingStarted:
        """Prepare `photos` ((safe file name, bytes); none: train again from the prepared ones) and queue the
        training. `params.base_model` is a checkpoint name as the host lists it; `base_model_path` (the
        command line only) a file or folder on this machine. Refusals raise before anything is written."""
        with self.identities.exclusive(params.identity):
            self.identities.refuse_if_busy(params.identity, "starting another training", kind="train")
            base_model, notes = self.base_model(params.base_model, path=base_model_path)
            report = self.identities.prepare_photos(params.identity, photos, top_k=params.top_k_photos) \
                if photos else None
            job = self._submit(params, base_model)
        log.info("queued training %s for %s on %s (%d photos sent)", job.id, params.identity, base_model.name,
                 len(photos))
        return TrainingStarted(job, base_model, report, notes)

    def base_model(self, name: str | None, *, path: Path | None = None) -> tuple[Path, list[str]]:
        """The checkpoint a training of `name` (or `path`) uses, and the notes to show; CheckpointError naming
        what is wrong (field `base_model`)."""
        if path is not None:
            chosen = Path(path).expanduser()
            if not chosen.exists():
                raise CheckpointError(f"base model not found: {chosen}")
        elif name or (name := self._default_name()):
            try:
                chosen = self._host().checkpoint_file(name)
            except ModelUnavailableError as error:
                raise CheckpointError(str(error)) from error
        else:
            chosen = self._current_checkpoint()
        if not is_tiny_model(chosen):
            return chosen, []
        if self.in_webui:  # its LoRA makes the WebUI's own txt2img fail (NaN); it is a test model, not a base
            raise CheckpointError("the tiny local test model cannot be trained inside the WebUI; choose one of the "
                                  "WebUI's checkpoints (base_model), or leave it empty for the selected one")
        return chosen, [TINY_MODEL_NOTE]

    def _default_name(self) -> str | None:
        return (self._default_checkpoint() or None) if self._default_checkpoint is not None else None

    def _current_checkpoint(self) -> Path:
        current = self._host().current_checkpoint()
        if current is None or current.path is None:
            raise CheckpointError("no base checkpoint given and none is selected in the WebUI: choose the "
                                  "checkpoint to train on (base_model)")
        return current.path

    def _submit(self, params: TrainParams, base_model: Path) -> Job:
        paths = self.workspace.identity(params.identity)
        layout = paths.dataset_layout()
        if not layout.images.is_dir() or not any(layout.images.iterdir()):
            raise DatasetMissingError(f"identity {params.identity!r} has no prepared photos; send 5–20 photos "
                                      "(or run python -m portrait_core preprocess PHOTOS --id NAME first)")
        check_prepared_files(paths)  # a damaged dataset is refused naming the file, not failed in the trainer
        job_output = paths.folder / "training" / _new_run_name()
        final_lora = self.workspace.lora_file(params.identity)
        params_file = atomic_write_json(job_output / "params.json", params.dict(exclude={"base_model"}))
        command = trainer_command(params_file, base_model=base_model, dataset_images=layout.images,
                                  dataset_dir=paths.dataset, output_dir=job_output, final_lora=final_lora,
                                  face_reference=paths.folder / "face_reference.png")
        job = self.runner.submit("train", params.identity, command, job_output, final_lora)
        threading.Thread(target=self._announce_lora, args=(job.id,), name="portrait-lora-refresh",
                         daemon=True).start()
        return job

    def _announce_lora(self, job_id: str) -> None:
        """Once the training is done, the host lists the new LoRA at once (no refresh click in the WebUI)."""
        job = self.runner.wait(job_id, timeout=7 * 24 * 3600)
        if job.state == "done":
            try:
                self._host().refresh_loras()
            except Exception as error:  # noqa: BLE001 - a listing refresh must never fail a finished training
                log.warning("the host could not refresh its LoRA list after job %s: %s", job_id, error)


def is_tiny_model(path: Path) -> bool:
    """The locally built random-weight test model (a folder with the tiny builder's marker)."""
    from portrait_core.models.tiny import MARKER_FILE

    return (Path(path) / MARKER_FILE).is_file()


def standalone_base_model(base_model: Path | str | None, *, sdxl: bool = False) -> Path:
    """What a standalone host serves: the given checkpoint, else the tiny local model (built once)."""
    if base_model:
        path = Path(base_model).expanduser()
        if not path.exists():
            raise CheckpointError(f"base model not found: {path}")
        return path
    from portrait_core.models.tiny import ensure_tiny_sd15, ensure_tiny_sdxl

    return ensure_tiny_sdxl() if sdxl else ensure_tiny_sd15()


def trainer_command(params_file: Path, *, base_model: Path, dataset_images: Path, dataset_dir: Path,
                    output_dir: Path, final_lora: Path, face_reference: Path) -> list[str]:
    """The trainer's command line: paths, and the TrainParams file (the one place its settings come from)."""
    return [TRAINER_MODULE, "--base-model", str(base_model), "--dataset", str(dataset_images),
            "--output-dir", str(output_dir), "--final-lora", str(final_lora), "--params", str(params_file),
            "--validation-dir", str(dataset_dir), "--face-reference", str(face_reference)]


def _new_run_name() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
