"""What a trained LoRA says about itself, and whether it fits the checkpoint it is about to be used with.

The trainer records the base model it trained on (family, name, short hash) in the LoRA's metadata. A
LoRA of another family (an SD1.5 LoRA on SDXL, or the reverse) cannot work: it is refused with a message
naming both. A different base model of the same family works, but may look different: a note says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from portrait_core.errors import LoraFileError
from portrait_core.hosts.base import CheckpointRef
from portrait_core.log import get_logger
from portrait_core.models.families import FAMILIES, family_of_kohya_version

log = get_logger("loras")

IDENTITY_KEY = "portrait_studio.identity"
FAMILY_KEY = "portrait_studio.family"
BASE_MODEL_KEY = "portrait_studio.base_model"
BASE_HASH_KEY = "portrait_studio.base_model_hash"


class LoraMismatchError(LoraFileError):
    """The LoRA was trained for another model family than the checkpoint in use."""


@dataclass(frozen=True)
class LoraInfo:
    name: str
    size_bytes: int
    trained_at: datetime
    identity: str | None          # None: not one of ours
    family: str | None            # "sd15", "sdxl", or None when the file does not say
    base_model: str | None
    base_model_hash: str | None
    base_model_version: str | None  # kohya's ss_base_model_version, as written


def read_lora_info(path: Path) -> LoraInfo:
    """The LoRA's header metadata, read by the safetensors library itself (no tensor is loaded)."""
    metadata = _metadata(path)
    version = metadata.get("ss_base_model_version")
    by_version = family_of_kohya_version(version)
    family = metadata.get(FAMILY_KEY) or (by_version.name if by_version else None)
    stat = path.stat()
    return LoraInfo(name=path.stem, size_bytes=stat.st_size,
                    trained_at=datetime.fromtimestamp(stat.st_mtime, timezone.utc),
                    identity=metadata.get(IDENTITY_KEY), family=family,
                    base_model=metadata.get(BASE_MODEL_KEY) or metadata.get("ss_sd_model_name"),
                    base_model_hash=metadata.get(BASE_HASH_KEY), base_model_version=version)


def _metadata(path: Path) -> dict[str, str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError) as error:
        log.warning("cannot read the metadata of %s: %s", path, error)
        return {}


def family_label(name: str | None) -> str:
    known = FAMILIES.get((name or "").removesuffix("-inpaint"))
    return known.label if known else (name or "an unknown model family")


def lora_fit_note(lora: LoraInfo, checkpoint: CheckpointRef | None) -> str | None:
    """None when the LoRA fits `checkpoint`; a note when it was trained on another base of the same family.
    LoraMismatchError, naming both, when it was made for another family."""
    if checkpoint is None:
        return None
    if lora.family is not None and lora.family != checkpoint.family:
        raise LoraMismatchError(
            f"the LoRA of {lora.identity or lora.name!r} was trained for {family_label(lora.family)} "
            f"({lora.base_model or 'unknown base'}), but the checkpoint in use, {checkpoint.name}, is "
            f"{family_label(checkpoint.family)}; switch to an {family_label(lora.family)} checkpoint or train "
            f"the identity again on this one")
    if _same_base(lora, checkpoint):
        return None
    return (f"LoRA {lora.name!r} was trained on {lora.base_model or 'another checkpoint'}; rendering with "
            f"{checkpoint.name} (same family, so it works, but the likeness may differ)")


def _same_base(lora: LoraInfo, checkpoint: CheckpointRef) -> bool:
    if lora.base_model_hash and checkpoint.short_hash:
        return lora.base_model_hash.lower() == checkpoint.short_hash.lower()
    if not lora.base_model:
        return True  # nothing recorded to compare with: no note we could stand behind
    return Path(lora.base_model).name == Path(checkpoint.name.split(" [")[0]).name
