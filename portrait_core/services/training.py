"""Start a training job for an identity: what the CLI, the UI and the HTTP API all call."""

from __future__ import annotations

from pathlib import Path

from portrait_core.config import settings
from portrait_core.errors import CheckpointError, PortraitError
from portrait_core.jobs import Job, JobRunner
from portrait_core.params import TrainParams
from portrait_core.store import identity_paths

TRAINER_MODULE = "portrait_core.training.trainer"


class DatasetMissingError(PortraitError):
    """The identity has no prepared dataset yet."""


def resolve_base_model(base_model: str | Path | None, *, sdxl: bool = False) -> Path:
    """The checkpoint to train on; without one, the tiny local model (which only shows the pipeline)."""
    if base_model:
        path = Path(base_model).expanduser()
        if not path.exists():
            raise CheckpointError(f"base model not found: {path}")
        return path
    from portrait_core.models.tiny import ensure_tiny_sd15, ensure_tiny_sdxl

    return ensure_tiny_sdxl() if sdxl else ensure_tiny_sd15()


def final_lora_path(identity: str) -> Path:
    return settings().lora_folder / f"{identity}.safetensors"


def trainer_command(params: TrainParams, *, base_model: Path, dataset_images: Path, dataset_dir: Path,
                    output_dir: Path, final_lora: Path, face_reference: Path) -> list[str]:
    return [TRAINER_MODULE, "--base-model", str(base_model), "--dataset", str(dataset_images),
            "--output-dir", str(output_dir), "--final-lora", str(final_lora),
            "--validation-dir", str(dataset_dir), "--face-reference", str(face_reference),
            *params.trainer_arguments()]


def start_training(runner: JobRunner, params: TrainParams, *, root: Path | None = None,
                   sdxl: bool = False) -> Job:
    """Queue a training of `params.identity` from its prepared dataset; returns the queued job."""
    paths = identity_paths(params.identity, root)
    layout = paths.dataset_layout()
    if not layout.images.is_dir() or not any(layout.images.iterdir()):
        raise DatasetMissingError(f"identity {params.identity!r} has no prepared photos in {layout.images}; "
                                  "run preprocessing first (python -m portrait_core preprocess PHOTOS --id NAME)")
    base_model = resolve_base_model(params.base_model, sdxl=sdxl)
    job_output = paths.folder / "training" / _new_run_name()
    command = trainer_command(params, base_model=base_model, dataset_images=layout.images,
                              dataset_dir=paths.dataset, output_dir=job_output,
                              final_lora=final_lora_path(params.identity),
                              face_reference=paths.folder / "face_reference.png")
    return runner.submit("train", params.identity, command, job_output, final_lora_path(params.identity))


def _new_run_name() -> str:
    import time
    import uuid

    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
