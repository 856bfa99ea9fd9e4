"""Renaming an identity: its folder and its LoRA move together, or neither does.

The trigger word stays the one the LoRA was trained with (it is in the dataset's manifest), so a
renamed identity renders exactly as before under its new name.
"""

from __future__ import annotations

from pathlib import Path

from portrait_core.errors import IdentityError
from portrait_core.log import get_logger
from portrait_core.store import atomic_write_bytes, atomic_write_json, identity_paths, read_json

log = get_logger("rename")
IDENTITY_KEY = "portrait_studio.identity"


def rename_identity(old: str, new: str, *, root: Path | None = None, lora_folder: Path) -> list[str]:
    """Move `old` to `new` (folder, our LoRA, manifest id); returns what moved. IdentityError says why not."""
    source, target = identity_paths(old, root), identity_paths(new, root)
    old_lora, new_lora = Path(lora_folder) / f"{old}.safetensors", Path(lora_folder) / f"{new}.safetensors"
    if not source.folder.is_dir():
        raise IdentityError(f"there is no identity {old!r}")
    if target.folder.exists() or new_lora.exists():
        raise IdentityError(f"{new!r} already exists; choose another name")
    source.folder.rename(target.folder)
    moved = ["folder"]
    try:
        if _is_our_lora(old_lora, old):
            atomic_write_bytes(new_lora, _relabelled_lora(old_lora, new))
            moved.append("lora")
        _relabel_manifest(target.dataset_layout().manifest, new)
    except (OSError, ValueError) as error:
        new_lora.unlink(missing_ok=True)
        target.folder.rename(source.folder)
        raise IdentityError(f"could not rename {old!r}: {error}; nothing was changed") from error
    if "lora" in moved:
        old_lora.unlink()
    log.info("renamed identity %s to %s (%s)", old, new, ", ".join(moved))
    return moved


def _is_our_lora(path: Path, identity: str) -> bool:
    if not path.is_file():
        return False
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return (handle.metadata() or {}).get(IDENTITY_KEY) == identity


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
