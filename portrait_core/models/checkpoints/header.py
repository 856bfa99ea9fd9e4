"""A `.safetensors` file's header (tensor names, shapes, dtypes, metadata), read without loading a weight."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from portrait_core.errors import CheckpointError

# The safetensors library names what is wrong in one word; this is what each means for the file's owner.
LIBRARY_REASONS = {
    "HeaderTooSmall": "it is too short to hold a safetensors header",
    "HeaderTooLarge": "its first 8 bytes claim a header larger than safetensors allows",
    "InvalidHeaderLength": "its header runs past the end of the file (the file is truncated)",
    "InvalidHeaderDeserialization": "its header is not the JSON safetensors writes (malformed JSON, an unknown "
                                    "dtype, or metadata that is not strings)",
    "MetadataIncompleteBuffer": "its tensors do not fill the file as the header says (the file is truncated, "
                                "or holds bytes that belong to no tensor)",
    "TensorInvalidInfo": "its header gives a tensor a byte range that does not fit the tensor's dtype and shape",
    "InvalidOffset": "its header gives tensor byte ranges that overlap or leave a gap",
}
LIBRARY_REASON = re.compile(r"(\w+)(?:\((.*)\))?\s*$")


@dataclass(frozen=True)
class SafetensorsHeader:
    """The header of a `.safetensors` file: tensor shapes, dtypes and the string metadata."""

    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]
    metadata: dict[str, str]


def read_safetensors_header(path: Path | str) -> SafetensorsHeader:
    """Names, shapes, dtypes and metadata of `path`'s tensors (checked by safetensors); CheckpointError if bad."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    size = require_file(path)
    try:
        _refuse_pickle(path)
        with safe_open(str(path), framework="numpy") as reader:
            metadata = reader.metadata() or {}
            slices = {name: reader.get_slice(name) for name in reader.keys()}  # noqa: SIM118 - not a dict
            shapes = {name: tuple(part.get_shape()) for name, part in slices.items()}
            dtypes = {name: part.get_dtype() for name, part in slices.items()}
    except SafetensorError as error:
        raise CheckpointError(f"{path} ({size} bytes) is not a usable safetensors file: "
                              f"{explain_library_error(error)}") from error
    except OSError as error:
        raise CheckpointError(f"cannot read {path}: {error}") from error
    return SafetensorsHeader(shapes=shapes, dtypes=dtypes, metadata=dict(metadata))


def explain_library_error(error: Exception) -> str:
    """The safetensors library's reason in words, with its own name for it in brackets."""
    message = str(error)
    match = LIBRARY_REASON.search(message)
    reason = LIBRARY_REASONS.get(match.group(1)) if match else None
    if reason is None:
        return message
    where = f" (tensor {match.group(2)})" if match.group(2) else ""
    return f"{reason}{where} [{match.group(1)}]"


def require_file(path: Path) -> int:
    """The size of `path`; CheckpointError if it is missing or not a file."""
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file")
    return path.stat().st_size


def _refuse_pickle(path: Path) -> None:
    with path.open("rb") as stream:
        prefix = stream.read(9)
    if prefix[8:9] == b"{":  # a safetensors header is JSON; only otherwise can the length bytes look like a pickle's
        return
    # torch.save writes a zip archive (PK..) or, before torch 1.6, a raw pickle (protocol byte 0x80).
    if prefix.startswith((b"PK\x03\x04", b"\x80")):
        raise CheckpointError(
            f"{path} is a PyTorch pickle checkpoint (.ckpt/.pt); Portrait Studio reads only .safetensors, "
            "whose header can be checked before any weight is loaded. Convert it first, e.g. in the "
            "WebUI's Checkpoint Merger (primary model only, 'No interpolation', format safetensors).")
