"""Base models: tell what a checkpoint is, load it offline, and write the WebUI's single-file layout.

A base model comes as a diffusers folder or as one `.safetensors` file in the LDM layout the WebUI
keeps in `models/Stable-diffusion/`. A single file carries no configs, so they are inferred from the
tensor shapes; what shapes cannot tell (attention heads, norm groups, sample size, activation) follows
the family's convention unless the file's metadata says otherwise — our exporter writes that note
only when a model departs from the convention, as the tiny test models do.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from portrait_core.config import settings
from portrait_core.errors import CheckpointError
from portrait_core.log import get_logger
from portrait_core.models.tiny import SD_SCHEDULER_CONFIG
from portrait_core.models.tokenizer import END_TOKEN, load_clip_tokenizer, write_tokenizer_files

log = get_logger("checkpoints")

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD15_TEXT_PREFIX = "cond_stage_model.transformer."
SD2_TEXT_PREFIX = "cond_stage_model.model."
SDXL_TEXT_PREFIX = "conditioner.embedders.0.transformer."
SDXL_TEXT2_PREFIX = "conditioner.embedders.1.model."
SDXL_REFINER_TEXT_PREFIX = "conditioner.embedders.0.model."
COMPONENT_PREFIXES = {
    "sd15": (UNET_PREFIX, VAE_PREFIX, SD15_TEXT_PREFIX),
    "sdxl": (UNET_PREFIX, VAE_PREFIX, SDXL_TEXT_PREFIX, SDXL_TEXT2_PREFIX),
}
# Metadata key where our exporter notes the configs that depart from the family convention.
CONFIG_HINTS_KEY = "portrait_studio.config"
HASH_CACHE_NAME = "checkpoint-hashes.json"
SDXL_SECOND_PAD_TOKEN = "!"  # noqa: S105 - SDXL's OpenCLIP tokenizer pads with "!" (id 0), not the end token
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library refuses larger headers too
DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U64": 8, "U32": 4, "U16": 2}
# Old SD1.x files keep the CLIP weights without `text_model.` (the WebUI renames them the same way).
OLD_CLIP_LAYOUT = {
    SD15_TEXT_PREFIX + "embeddings.": SD15_TEXT_PREFIX + "text_model.embeddings.",
    SD15_TEXT_PREFIX + "encoder.": SD15_TEXT_PREFIX + "text_model.encoder.",
    SD15_TEXT_PREFIX + "final_layer_norm.": SD15_TEXT_PREFIX + "text_model.final_layer_norm.",
}
# What tensor shapes cannot tell, as the released models of each family have it.
CONVENTIONS = {
    "sd15": {"unet": {"norm_num_groups": 32, "sample_size": 64},
             "vae": {"norm_num_groups": 32, "sample_size": 512, "scaling_factor": 0.18215},
             "text_encoder": {"hidden_act": "quick_gelu"}},
    "sdxl": {"unet": {"norm_num_groups": 32, "sample_size": 128},
             "vae": {"norm_num_groups": 32, "sample_size": 1024, "scaling_factor": 0.13025},
             "text_encoder": {"hidden_act": "quick_gelu"}, "text_encoder_2": {"hidden_act": "gelu"}},
}
HEAD_WIDTH = 64  # released CLIP / OpenCLIP text towers and SD2 / SDXL UNets use 64-wide attention heads
SD15_UNET_HEADS = 8  # SD1.x: 8 heads at every level; SD2 and SDXL: 64-wide heads instead
ACTIVATIONS = ("quick_gelu", "gelu")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


HINT_CHECKS: dict[str, dict[str, Callable[[Any], bool]]] = {
    "unet": {
        "attention_head_dim": lambda v: _positive_int(v) or (
            isinstance(v, list) and bool(v) and all(_positive_int(n) for n in v)),
        "norm_num_groups": _positive_int, "sample_size": _positive_int,
    },
    "vae": {"norm_num_groups": _positive_int, "sample_size": _positive_int,
            "scaling_factor": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0},
    "text_encoder": {"num_attention_heads": _positive_int, "hidden_act": lambda v: v in ACTIVATIONS},
}
HINT_CHECKS["text_encoder_2"] = HINT_CHECKS["text_encoder"]


@dataclass(frozen=True)
class SafetensorsHeader:
    """The parsed, validated header of a `.safetensors` file: tensor shapes, dtypes and metadata."""

    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]
    metadata: dict[str, str]


@dataclass(frozen=True)
class CheckpointInfo:
    """What a base model or ControlNet is, read from its header or configs (no weights loaded)."""

    path: Path
    family: str  # "sd15" | "sd2" | "sdxl", with "-inpaint" appended for a 9-channel UNet
    format: str  # "single-file" | "diffusers"
    size_bytes: int
    is_controlnet: bool = False
    in_channels: int = 4
    metadata: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def base_family(self) -> str:
        return self.family.removesuffix("-inpaint")

    @property
    def is_inpaint(self) -> bool:
        return self.family.endswith("-inpaint")

    @property
    def name(self) -> str:
        """The name the WebUI lists: the file name without its extension, or the folder name."""
        return self.path.stem if self.format == "single-file" else self.path.name


@dataclass(kw_only=True, eq=False)
class SDComponents:
    """The parts of a Stable Diffusion pipeline, loaded from one base model."""

    family: str
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    text_encoder_2: Any = None
    tokenizer_2: Any = None
    source: Path

    def pipeline_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `StableDiffusion(XL)(Inpaint/ControlNet)Pipeline(...)`."""
        parts = {"unet": self.unet, "vae": self.vae, "text_encoder": self.text_encoder,
                 "tokenizer": self.tokenizer, "scheduler": self.scheduler}
        if self.text_encoder_2 is not None:
            parts.update(text_encoder_2=self.text_encoder_2, tokenizer_2=self.tokenizer_2)
        else:
            parts.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        return parts


# ---------------------------------------------------------------------------------------------
# Reading a safetensors header (8-byte little-endian length, JSON, then the tensor bytes)


def read_safetensors_header(path: Path) -> SafetensorsHeader:
    """Parse and check the header of `path` without reading any tensor; CheckpointError if it is bad."""
    path = Path(path)
    size = _file_size(path)
    with path.open("rb") as stream:
        prefix = stream.read(8)
        first = stream.read(1)
        if first != b"{":  # a safetensors header is JSON; only then can the length bytes look like a pickle's
            _refuse_pickle(path, prefix)
        if len(prefix) < 8:
            raise CheckpointError(f"{path} is not a safetensors file: only {size} bytes long")
        header_length = int.from_bytes(prefix, "little")
        if not 2 <= header_length <= min(size - 8, MAX_HEADER_BYTES):
            raise CheckpointError(
                f"{path} is not a safetensors file (or is truncated): its header claims {header_length} "
                f"bytes, the file has {size - 8} after the length field")
        raw = first + stream.read(header_length - 1)
    header = _parse_header_json(path, raw)
    metadata = _header_metadata(path, header.pop("__metadata__", {}))
    shapes, dtypes = _tensor_entries(path, header, data_size=size - 8 - header_length)
    return SafetensorsHeader(shapes=shapes, dtypes=dtypes, metadata=metadata)


def _file_size(path: Path) -> int:
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file")
    return path.stat().st_size


def _refuse_pickle(path: Path, prefix: bytes) -> None:
    # torch.save writes a zip archive (PK..) or, before torch 1.6, a raw pickle (protocol byte 0x80).
    if prefix.startswith((b"PK\x03\x04", b"\x80")):
        raise CheckpointError(
            f"{path} is a PyTorch pickle checkpoint (.ckpt/.pt); Portrait Studio reads only .safetensors, "
            "whose header can be checked before any weight is loaded. Convert it first, e.g. in the "
            "WebUI's Checkpoint Merger (primary model only, 'No interpolation', format safetensors).")


def _parse_header_json(path: Path, raw: bytes) -> dict:
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise CheckpointError(f"{path} is not a safetensors file: its header is not JSON ({error})") from error
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a safetensors file: its header is not a JSON object")
    return header


def _header_metadata(path: Path, metadata: Any) -> dict[str, str]:
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise CheckpointError(f"{path}: safetensors __metadata__ must map strings to strings")
    return metadata


def _tensor_entries(path: Path, header: dict, data_size: int):
    shapes, dtypes, spans = {}, {}, []
    for name, entry in header.items():
        dtype, shape, begin, end = _entry_fields(path, name, entry)
        expected = math.prod(shape) * DTYPE_SIZES[dtype]
        if end - begin != expected:
            raise CheckpointError(f"{path}: header lies about tensor {name!r}: {dtype} {list(shape)} needs "
                                  f"{expected} bytes, its offsets span {end - begin}")
        if end > data_size:
            raise CheckpointError(f"{path} is truncated: tensor {name!r} ends at byte {end} of the data, "
                                  f"which has only {data_size} bytes")
        shapes[name], dtypes[name] = shape, dtype
        spans.append((begin, end, name))
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            raise CheckpointError(f"{path}: tensor {name!r} starts at byte {begin}, expected {position} "
                                  "(tensors overlap or leave a gap)")
        position = end
    if position != data_size:
        raise CheckpointError(f"{path}: {data_size - position} bytes after the last tensor belong to none")
    return shapes, dtypes


def _entry_fields(path: Path, name: str, entry: Any) -> tuple[str, tuple[int, ...], int, int]:
    try:
        dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
    except (TypeError, KeyError, ValueError) as error:
        raise CheckpointError(f"{path}: header entry {name!r} is malformed ({entry!r:.80})") from error
    if dtype not in DTYPE_SIZES:
        raise CheckpointError(f"{path}: tensor {name!r} has unknown dtype {dtype!r}")
    numbers = [*shape, begin, end] if isinstance(shape, list) else None
    if numbers is None or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers):
        raise CheckpointError(f"{path}: tensor {name!r} has a malformed shape or offsets")
    if end < begin:
        raise CheckpointError(f"{path}: tensor {name!r} ends before it begins")
    return dtype, tuple(shape), begin, end


# ---------------------------------------------------------------------------------------------
# Telling what a file or folder is


def inspect_checkpoint(path: Path | str) -> CheckpointInfo:
    """Family, format, size and kind of a base model or ControlNet, from its header or configs only."""
    path = Path(path)
    if path.is_dir():
        return _inspect_folder(path)
    header = read_safetensors_header(path)
    shapes = {_normalize_ldm_key(key): shape for key, shape in header.shapes.items()}
    _refuse_non_checkpoint(path, shapes)
    if _is_controlnet(shapes):
        return CheckpointInfo(path=path, family=_controlnet_family(shapes), format="single-file",
                              size_bytes=path.stat().st_size, is_controlnet=True, metadata=header.metadata)
    unet_input = shapes.get(UNET_PREFIX + "input_blocks.0.0.weight")
    if unet_input is None or len(unet_input) != 4:
        raise CheckpointError(
            f"{path} is not a Stable Diffusion checkpoint: it has no UNet ({UNET_PREFIX}*); "
            f"first keys: {', '.join(sorted(shapes)[:3])}")
    family = _with_inpaint(path, _text_encoder_family(path, shapes), unet_input[1])
    return CheckpointInfo(path=path, family=family, format="single-file", size_bytes=path.stat().st_size,
                          in_channels=unet_input[1], metadata=header.metadata)


def _normalize_ldm_key(key: str) -> str:
    for old, new in OLD_CLIP_LAYOUT.items():
        if key.startswith(old):
            return new + key[len(old):]
    return key


# Files that are safetensors but not a base model, and how to tell them from their keys.
NOT_A_CHECKPOINT: tuple[tuple[str, Callable[[str], bool]], ...] = (
    ("a LoRA (or LyCORIS) network; load it as a LoRA, not as a base model",
     lambda k: k.startswith(("lora_unet_", "lora_te")) or any(
         part in k for part in (".lora_down.", ".lora_up.", ".lora_A.", ".lora_B.", ".hada_w1", ".lokr_w1"))),
    ("a textual-inversion embedding", lambda k: k.startswith(("string_to_param", "emb_params"))),
    ("an IP-Adapter", lambda k: k.startswith(("image_proj.", "ip_adapter."))),
)


def _refuse_non_checkpoint(path: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    for description, matches in NOT_A_CHECKPOINT:
        if any(matches(key) for key in shapes):
            raise CheckpointError(f"{path} is not a Stable Diffusion checkpoint: it is {description}")
    if UNET_PREFIX + "input_blocks.0.0.weight" in shapes or _is_controlnet(shapes):
        return
    if "encoder.down.0.block.0.conv1.weight" in shapes or "encoder.down_blocks.0.resnets.0.conv1.weight" in shapes:
        raise CheckpointError(f"{path} is not a Stable Diffusion checkpoint: it is a VAE on its own")
    if "conv_in.weight" in shapes or "text_model.embeddings.token_embedding.weight" in shapes:
        raise CheckpointError(f"{path} is one component of a diffusers model; give the model's folder instead")


def _is_controlnet(shapes: dict[str, tuple[int, ...]]) -> bool:
    starts = ("control_model.", "controlnet_cond_embedding.", "input_hint_block.", "zero_convs.")
    return any(key.startswith(starts) or ".input_hint_block." in key for key in shapes)


def _controlnet_family(shapes: dict[str, tuple[int, ...]]) -> str:
    if any(key.startswith("add_embedding.") or "label_emb." in key for key in shapes):
        return "sdxl"
    context = next((shape[1] for key, shape in shapes.items() if key.endswith("attn2.to_k.weight")), None)
    return "sd2" if context == 1024 else "sd15"


def _text_encoder_family(path: Path, shapes: dict[str, tuple[int, ...]]) -> str:
    def has(prefix: str) -> bool:
        return any(key.startswith(prefix) for key in shapes)

    if has(SDXL_TEXT2_PREFIX) and has(SDXL_TEXT_PREFIX):
        return "sdxl"
    if has(SDXL_REFINER_TEXT_PREFIX):
        raise CheckpointError(f"{path} is an SDXL refiner; it cannot serve as a base model")
    if has(SD2_TEXT_PREFIX):
        return "sd2"
    if has(SD15_TEXT_PREFIX):
        return "sd15"
    raise CheckpointError(f"{path} has a UNet but no text encoder we recognise "
                          f"({SD15_TEXT_PREFIX}*, {SD2_TEXT_PREFIX}* or conditioner.embedders.*)")


def _with_inpaint(path: Path, family: str, in_channels: int) -> str:
    if in_channels == 4:
        return family
    if in_channels == 9:
        return family + "-inpaint"
    raise CheckpointError(f"{path}: its UNet takes {in_channels} input channels; only 4 (text-to-image) "
                          "and 9 (inpainting) are supported")


def _inspect_folder(folder: Path) -> CheckpointInfo:
    size = sum(item.stat().st_size for item in folder.rglob("*") if item.is_file())
    if (folder / "model_index.json").is_file():
        model_index = _read_json(folder / "model_index.json")
        unet_config = _read_json(folder / "unet" / "config.json")
        family = _family_from_unet_config(unet_config, second_encoder="text_encoder_2" in model_index)
        in_channels = unet_config.get("in_channels", 4)
        return CheckpointInfo(path=folder, family=_with_inpaint(folder, family, in_channels), format="diffusers",
                              size_bytes=size, in_channels=in_channels)
    if (folder / "config.json").is_file():
        config = _read_json(folder / "config.json")
        if config.get("_class_name") == "ControlNetModel":
            family = _family_from_unet_config(config, second_encoder=True)
            return CheckpointInfo(path=folder, family=family, format="diffusers", size_bytes=size,
                                  is_controlnet=True)
    raise CheckpointError(f"{folder} is a folder but not a diffusers model (it has no model_index.json)")


def _family_from_unet_config(config: dict, *, second_encoder: bool) -> str:
    if config.get("addition_embed_type") == "text_time" and second_encoder:
        return "sdxl"
    return "sd2" if config.get("cross_attention_dim") == 1024 else "sd15"


def _read_json(path: Path) -> dict:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise CheckpointError(f"{path} is missing") from error
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise CheckpointError(f"{path} is not readable JSON ({error})") from error
    if not isinstance(content, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    return content


# ---------------------------------------------------------------------------------------------
# The WebUI's model hash


def checkpoint_sha256(path: Path | str, *, cache_file: Path | None = None) -> str:
    """SHA-256 of the whole file, as the WebUI computes it; cached by path, size and mtime."""
    path = Path(path)
    _file_size(path)
    stat = path.stat()
    cache_file = cache_file or settings().cache_dir / HASH_CACHE_NAME
    cache = _read_hash_cache(cache_file)
    key = str(path.resolve())
    entry = cache.get(key)
    if isinstance(entry, dict) and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
        return entry["sha256"]
    log.info("hashing %s (once; cached)", path.name)
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1024 * 1024), b""):
            digest.update(chunk)
    cache[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest.hexdigest()}
    _write_atomically(cache_file, lambda target: target.write_text(json.dumps(cache, indent=1), encoding="utf-8"))
    return cache[key]["sha256"]


def short_hash(path: Path | str, *, cache_file: Path | None = None) -> str:
    """The WebUI's "Model hash" (A1111 `shorthash`): the first 10 hex digits of the file's SHA-256."""
    return checkpoint_sha256(path, cache_file=cache_file)[:10]


def legacy_model_hash(path: Path | str) -> str:
    """The WebUI's old 8-digit hash (SHA-256 of 64 KiB at offset 1 MiB), still one of a checkpoint's ids."""
    path = Path(path)
    _file_size(path)
    with path.open("rb") as stream:
        stream.seek(0x100000)
        return hashlib.sha256(stream.read(0x10000)).hexdigest()[:8]


def _read_hash_cache(cache_file: Path) -> dict:
    if not cache_file.is_file():
        return {}
    try:
        cache = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        log.warning("ignoring unreadable hash cache %s (%s); it will be rewritten", cache_file, error)
        return {}
    return cache if isinstance(cache, dict) else {}


# ---------------------------------------------------------------------------------------------
# Loading


def load_components(path: Path | str, *, dtype=None, cache_dir: Path | None = None) -> SDComponents:
    """Load a base model (diffusers folder or single `.safetensors` file) offline; dtype defaults to float32.

    `cache_dir` (default: the settings' cache folder) holds the CLIP tokenizers a single file lacks.
    """
    import torch

    info = inspect_checkpoint(path)
    if info.is_controlnet:
        raise CheckpointError(f"{info.path} is a ControlNet ({info.family}), not a base model")
    dtype = dtype or torch.float32
    log.info("loading %s (%s, %s)", info.path, info.family, info.format)
    if info.format == "diffusers":
        return _load_diffusers_folder(info, dtype)
    if info.base_family == "sd2":
        raise CheckpointError(f"{info.path}: SD2 single-file checkpoints are not supported (whether one predicts "
                              "noise or velocity cannot be told from its weights); use a diffusers folder")
    return _load_single_file(info, dtype, cache_dir or settings().cache_dir)


def _load_diffusers_folder(info: CheckpointInfo, dtype) -> SDComponents:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    folder, sdxl = info.path, info.base_family == "sdxl"
    weights = {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel}
    if sdxl:
        weights["text_encoder_2"] = CLIPTextModelWithProjection
    parts = {}
    for subfolder, model_class in weights.items():
        _check_folder_weights(folder / subfolder)
        parts[subfolder] = _from_pretrained(model_class, folder, subfolder, torch_dtype=dtype,
                                            use_safetensors=True)
    for subfolder in ("tokenizer", "tokenizer_2") if sdxl else ("tokenizer",):
        parts[subfolder] = _from_pretrained(CLIPTokenizer, folder, subfolder)
    return SDComponents(family=info.family, scheduler=_folder_scheduler(folder), source=folder, **parts)


def _check_folder_weights(subfolder: Path) -> None:
    weight_files = sorted(subfolder.glob("*.safetensors"))
    if not weight_files:
        raise CheckpointError(f"{subfolder} holds no .safetensors weights (only safetensors are read)")
    for weight_file in weight_files:
        read_safetensors_header(weight_file)


def _from_pretrained(model_class, folder: Path, subfolder: str, **kwargs):
    from safetensors import SafetensorError

    try:
        return model_class.from_pretrained(str(folder), subfolder=subfolder, local_files_only=True, **kwargs)
    except (OSError, ValueError, RuntimeError, SafetensorError) as error:
        raise CheckpointError(f"{folder / subfolder}: cannot load {model_class.__name__} ({error})") from error


def _folder_scheduler(folder: Path):
    import diffusers

    config_file = folder / "scheduler" / "scheduler_config.json"
    class_name = _read_json(config_file).get("_class_name", "")
    scheduler_class = getattr(diffusers, class_name, None) if class_name.endswith("Scheduler") else None
    if not (isinstance(scheduler_class, type) and issubclass(scheduler_class, diffusers.SchedulerMixin)):
        raise CheckpointError(f"{config_file}: unknown scheduler class {class_name!r}")
    return _from_pretrained(scheduler_class, folder, "scheduler")


@dataclass(frozen=True)
class _SingleFile:
    """One single-file checkpoint being loaded: its shapes (all keys), tensors (component keys), notes."""

    path: Path
    family: str
    shapes: dict[str, tuple[int, ...]]
    state: dict[str, Any]
    hints: dict[str, dict[str, Any]]
    dtype: Any


def _load_single_file(info: CheckpointInfo, dtype, cache_dir: Path) -> SDComponents:
    header = read_safetensors_header(info.path)
    source = _SingleFile(
        path=info.path, family=info.base_family, dtype=dtype,
        shapes={_normalize_ldm_key(key): shape for key, shape in header.shapes.items()},
        state=_read_component_tensors(info.path, COMPONENT_PREFIXES[info.base_family]),
        hints=_read_config_hints(info.path, header.metadata))
    parts = {}
    if source.family == "sdxl":
        parts["text_encoder"] = _clip_text_from_file(source, SDXL_TEXT_PREFIX)
        parts["text_encoder_2"] = _open_clip_text_from_file(source)
        parts["tokenizer_2"] = cached_clip_tokenizer(SDXL_SECOND_PAD_TOKEN, cache_dir)
        pooled_dim = parts["text_encoder_2"].config.projection_dim
    else:
        parts["text_encoder"] = _clip_text_from_file(source, SD15_TEXT_PREFIX)
        pooled_dim = None
    parts["unet"] = _unet_from_file(source, pooled_dim)
    parts["vae"] = _vae_from_file(source)
    return SDComponents(family=info.family, tokenizer=cached_clip_tokenizer(END_TOKEN, cache_dir),
                        scheduler=default_scheduler(), source=info.path, **parts)


def _read_component_tensors(path: Path, prefixes: tuple[str, ...]) -> dict:
    """The tensors under the model's component prefixes (EMA copies and schedule buffers are skipped)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as reader:
            names = list(reader.keys())
            state = {_normalize_ldm_key(name): reader.get_tensor(name)
                     for name in names if _normalize_ldm_key(name).startswith(prefixes)}
    except (OSError, SafetensorError) as error:
        raise CheckpointError(f"{path}: cannot read its tensors ({error})") from error
    skipped = len(names) - len(state)
    if skipped:
        log.debug("%s: %d tensors outside the model's components ignored (EMA, schedule buffers)", path, skipped)
    return state


def _read_config_hints(path: Path, metadata: dict[str, str]) -> dict[str, dict[str, Any]]:
    raw = metadata.get(CONFIG_HINTS_KEY)
    if raw is None:
        return {}
    try:
        hints = json.loads(raw)
    except ValueError as error:
        raise CheckpointError(f"{path}: metadata {CONFIG_HINTS_KEY!r} is not JSON ({error})") from error
    if not isinstance(hints, dict) or not all(isinstance(fields, dict) for fields in hints.values()):
        raise CheckpointError(f"{path}: metadata {CONFIG_HINTS_KEY!r} must map components to settings")
    checked: dict[str, dict[str, Any]] = {}
    for component, fields in hints.items():
        for name, value in fields.items():
            check = HINT_CHECKS.get(component, {}).get(name)
            if check is None:
                log.debug("%s: ignoring unknown config note %s.%s", path, component, name)
            elif not check(value):
                raise CheckpointError(f"{path}: metadata {CONFIG_HINTS_KEY!r} gives {component}.{name} = "
                                      f"{value!r}, which is not a valid value")
            else:
                checked.setdefault(component, {})[name] = value
    return checked


def cached_clip_tokenizer(pad_token: str, cache_dir: Path):
    """The CLIP tokenizer (padding with `pad_token`), written once into the cache folder."""
    folder = cache_dir / "clip-tokenizers" / ("pad-end" if pad_token == END_TOKEN else f"pad-{ord(pad_token)}")
    if not (folder / "tokenizer_config.json").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            write_tokenizer_files(staging, pad_token=pad_token)
            staging.rename(folder)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            if not (folder / "tokenizer_config.json").is_file():  # not a race another process won
                raise
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return load_clip_tokenizer(folder)


def default_scheduler():
    """SD1.5/SDXL's noise schedule for a single file (which stores none); hosts swap it per sampler."""
    from diffusers import EulerAncestralDiscreteScheduler

    accepted = inspect.signature(EulerAncestralDiscreteScheduler.__init__).parameters
    return EulerAncestralDiscreteScheduler.from_config(
        {key: value for key, value in SD_SCHEDULER_CONFIG.items() if key in accepted})


# ---------------------------------------------------------------------------------------------
# Building each component from the file: infer its config, check keys strictly, convert, assign


def _unet_from_file(source: _SingleFile, pooled_dim: int | None):
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    shapes = _strip_prefix(source.shapes, UNET_PREFIX)
    config = infer_unet_config(shapes, source.family, source.hints.get("unet", {}), pooled_dim, source.path)
    model = _build_empty(UNet2DConditionModel.from_config, config)
    mapper = unet_key_mapper(model.state_dict(), config["layers_per_block"])
    return _fill_component(source, "UNet", model, mapper, prefix=UNET_PREFIX,
                           convert=lambda part: convert_ldm_unet_checkpoint(part, config))


def _vae_from_file(source: _SingleFile):
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    shapes = _strip_prefix(source.shapes, VAE_PREFIX)
    config = infer_vae_config(shapes, source.family, source.hints.get("vae", {}), source.path)
    model = _build_empty(AutoencoderKL.from_config, config)
    return _fill_component(source, "VAE", model, vae_key_mapper(len(config["block_out_channels"])),
                           prefix=VAE_PREFIX, convert=lambda part: convert_ldm_vae_checkpoint(part, config))


def _clip_text_from_file(source: _SingleFile, prefix: str):
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel

    default_act = CONVENTIONS[source.family]["text_encoder"]["hidden_act"]
    config = infer_clip_text_config(_strip_prefix(source.shapes, prefix), source.hints.get("text_encoder", {}),
                                    default_act, source.path)
    model = _build_empty(CLIPTextModel, CLIPTextConfig(**config))
    # position_ids is a constant buffer: the model's own is kept, and merged checkpoints often
    # carry a float-rounded copy of it, so the file's copy is optional and never used.
    return _fill_component(source, "text encoder", model, lambda key: key, prefix=prefix,
                           convert=lambda part: convert_ldm_clip_checkpoint(part, remove_prefix=prefix),
                           optional={prefix + "text_model.embeddings.position_ids"})


def _open_clip_text_from_file(source: _SingleFile):
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    prefix = SDXL_TEXT2_PREFIX
    config = infer_open_clip_text_config(_strip_prefix(source.shapes, prefix),
                                         source.hints.get("text_encoder_2", {}), source.path)
    model = _build_empty(CLIPTextModelWithProjection, CLIPTextConfig(**config))
    return _fill_component(source, "second text encoder", model, open_clip_ldm_key, prefix=prefix,
                           convert=lambda part: convert_open_clip_checkpoint(model, part, prefix=prefix),
                           optional={prefix + "logit_scale"})


def _build_empty(factory, *args):
    """Build a model with its parameters on the meta device: the file's tensors are assigned later."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        return factory(*args)


def _fill_component(source: _SingleFile, what: str, model, mapper, *, prefix: str, convert,
                    optional=frozenset()):
    """Check the file's keys against the model's, convert them with diffusers, and load strictly."""
    key_map = _prefixed_map(source.path, what, model.state_dict(), mapper, prefix)
    file_state = _under(source.state, prefix)
    expected = {ldm_key for ldm_key in key_map.values() if ldm_key} - set(optional)
    _require_same_keys(source.path, what, expected, set(file_state) - set(optional))
    converted = {key: value.to(source.dtype) if value.is_floating_point() else value
                 for key, value in convert(file_state).items()}
    # Buffers were built for real (only parameters are on meta); they are constants, so keep ours.
    converted.update({key: value for key, value in model.state_dict().items() if not value.is_meta})
    try:
        model.load_state_dict(converted, strict=True, assign=True)
    except RuntimeError as error:
        detail = " ".join(str(error).strip().splitlines()[:4])[:600]
        raise CheckpointError(f"{source.path}: the {what} weights do not fit the architecture inferred from "
                              f"the file: {detail}") from error
    return model.eval()


def _require_same_keys(path: Path, what: str, expected: set[str], present: set[str]) -> None:
    missing, leftover = sorted(expected - present), sorted(present - expected)
    problems = [f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})"
                for label, keys in (("missing", missing), ("left over", leftover)) if keys]
    if problems:
        raise CheckpointError(f"{path}: the {what} keys do not match the architecture inferred from the "
                              f"file: {'; '.join(problems)}")


def _prefixed_map(path, what, diffusers_keys: Iterable[str], mapper, prefix: str) -> dict[str, str]:
    key_map, unmapped = {}, []
    for key in diffusers_keys:
        ldm_key = mapper(key)
        if ldm_key is None:
            unmapped.append(key)
        else:
            key_map[key] = prefix + ldm_key if ldm_key else ""
    if unmapped:
        raise CheckpointError(f"{path}: no single-file name for {len(unmapped)} {what} weights "
                              f"(e.g. {', '.join(unmapped[:3])})")
    return key_map


def _under(state: dict, prefix: str) -> dict:
    return {key: value for key, value in state.items() if key.startswith(prefix)}


def _strip_prefix(shapes: dict, prefix: str) -> dict:
    return {key[len(prefix):]: value for key, value in shapes.items() if key.startswith(prefix)}


# ---------------------------------------------------------------------------------------------
# Inferring diffusers configs from LDM tensor shapes (keys without their component prefix)


def _shape(path, shapes: dict, key: str) -> tuple[int, ...]:
    if key not in shapes:
        raise CheckpointError(f"{path}: expected weight {key!r} is missing, so its architecture cannot be read")
    return shapes[key]


def _indices(shapes: dict, prefix: str) -> set[int]:
    """The distinct N in keys `<prefix>N.`."""
    found = {key[len(prefix):].split(".", 1)[0] for key in shapes if key.startswith(prefix)}
    return {int(part) for part in found if part.isdigit()}


def _unet_levels(path, shapes: dict) -> tuple[int, int]:
    """(layers_per_block, resolution levels): level k holds its resnets then one downsampler, except the last."""
    count = max(_indices(shapes, "input_blocks."), default=-1) + 1
    downsamplers = sorted(i for i in range(count) if f"input_blocks.{i}.0.op.weight" in shapes)
    layers = downsamplers[0] - 1 if downsamplers else count - 1
    if layers < 1 or count % (layers + 1):
        raise CheckpointError(f"{path}: unrecognised UNet layout ({count} input blocks)")
    return layers, count // (layers + 1)


def infer_unet_config(shapes: dict, family: str, hints: dict, pooled_dim: int | None, path=None) -> dict:
    layers, levels = _unet_levels(path, shapes)
    firsts = [1 + level * (layers + 1) for level in range(levels)]
    channels = [_shape(path, shapes, f"input_blocks.{i}.0.in_layers.2.weight")[0] for i in firsts]
    depths = [len(_indices(shapes, f"input_blocks.{i}.1.transformer_blocks.")) for i in firsts]
    up_attention = [bool(_indices(shapes, f"output_blocks.{level * (layers + 1)}.1.transformer_blocks."))
                    for level in range(levels)]
    context = [shape for key, shape in shapes.items() if key.endswith("attn2.to_k.weight")]
    if not context or "middle_block.1.proj_in.weight" not in shapes:
        raise CheckpointError(f"{path}: its UNet has no cross-attention in the middle block; not an SD UNet")
    convention = CONVENTIONS[family]["unet"]
    config = {
        "sample_size": hints.get("sample_size", convention["sample_size"]),
        "in_channels": _shape(path, shapes, "input_blocks.0.0.weight")[1],
        "out_channels": _shape(path, shapes, "out.2.weight")[0],
        "layers_per_block": layers, "block_out_channels": channels,
        "down_block_types": ["CrossAttnDownBlock2D" if depth else "DownBlock2D" for depth in depths],
        "up_block_types": ["CrossAttnUpBlock2D" if attention else "UpBlock2D" for attention in up_attention],
        "cross_attention_dim": context[0][1],
        "transformer_layers_per_block": 1 if max(depths) <= 1 else [max(depth, 1) for depth in depths],
        "use_linear_projection": len(shapes["middle_block.1.proj_in.weight"]) == 2,
        "norm_num_groups": hints.get("norm_num_groups", convention["norm_num_groups"]),
        "attention_head_dim": hints.get("attention_head_dim") or conventional_unet_heads(family, channels, path),
    }
    if family == "sdxl":
        config.update(_sdxl_time_embedding_config(path, shapes, pooled_dim))
    return config


def conventional_unet_heads(family: str, channels: list[int], path=None) -> int | list[int]:
    """Diffusers' `attention_head_dim` (a head count, despite its name) as the family's released models have it."""
    if family == "sd15":
        return SD15_UNET_HEADS
    if any(width % HEAD_WIDTH for width in channels):
        raise CheckpointError(f"{path}: cannot tell the UNet's attention heads for widths {channels}")
    return [width // HEAD_WIDTH for width in channels]


def _sdxl_time_embedding_config(path, shapes: dict, pooled_dim: int | None) -> dict:
    # SDXL adds six size/crop numbers (each embedded to `addition_time_embed_dim`) to the pooled text embedding.
    total = _shape(path, shapes, "label_emb.0.0.weight")[1]
    time_dims = total - (pooled_dim or 0)
    if pooled_dim is None or time_dims <= 0 or time_dims % 6:
        raise CheckpointError(f"{path}: its UNet's added embedding ({total} inputs) does not fit the "
                              f"pooled text embedding ({pooled_dim}) plus six time embeddings")
    return {"addition_embed_type": "text_time", "addition_time_embed_dim": time_dims // 6,
            "projection_class_embeddings_input_dim": total}


def infer_vae_config(shapes: dict, family: str, hints: dict, path=None) -> dict:
    levels = sorted(_indices(shapes, "encoder.down."))
    if not levels or levels != list(range(len(levels))):
        raise CheckpointError(f"{path}: unrecognised VAE layout (encoder levels {levels})")
    convention = CONVENTIONS[family]["vae"]
    return {
        "in_channels": _shape(path, shapes, "encoder.conv_in.weight")[1],
        "out_channels": _shape(path, shapes, "decoder.conv_out.weight")[0],
        "latent_channels": _shape(path, shapes, "post_quant_conv.weight")[0],
        "layers_per_block": len(_indices(shapes, "encoder.down.0.block.")),
        "block_out_channels": [_shape(path, shapes, f"encoder.down.{i}.block.0.conv1.weight")[0] for i in levels],
        "down_block_types": ["DownEncoderBlock2D"] * len(levels),
        "up_block_types": ["UpDecoderBlock2D"] * len(levels),
        "norm_num_groups": hints.get("norm_num_groups", convention["norm_num_groups"]),
        "sample_size": hints.get("sample_size", convention["sample_size"]),
        "scaling_factor": hints.get("scaling_factor", convention["scaling_factor"]),
    }


def infer_clip_text_config(shapes: dict, hints: dict, default_act: str, path=None) -> dict:
    vocab, hidden = _shape(path, shapes, "text_model.embeddings.token_embedding.weight")
    return _text_config(
        path, hints, default_act, vocab_size=vocab, hidden_size=hidden,
        intermediate_size=_shape(path, shapes, "text_model.encoder.layers.0.mlp.fc1.weight")[0],
        num_hidden_layers=len(_indices(shapes, "text_model.encoder.layers.")),
        max_position_embeddings=_shape(path, shapes, "text_model.embeddings.position_embedding.weight")[0])


def infer_open_clip_text_config(shapes: dict, hints: dict, path=None) -> dict:
    vocab, hidden = _shape(path, shapes, "token_embedding.weight")
    return _text_config(
        path, hints, CONVENTIONS["sdxl"]["text_encoder_2"]["hidden_act"], vocab_size=vocab, hidden_size=hidden,
        intermediate_size=_shape(path, shapes, "transformer.resblocks.0.mlp.c_fc.weight")[0],
        num_hidden_layers=len(_indices(shapes, "transformer.resblocks.")),
        max_position_embeddings=_shape(path, shapes, "positional_embedding")[0],
        projection_dim=_shape(path, shapes, "text_projection")[1])


def _text_config(path, hints: dict, default_act: str, **sizes) -> dict:
    hidden = sizes["hidden_size"]
    heads = hints.get("num_attention_heads") or hidden // HEAD_WIDTH
    if not heads or hidden % heads:
        raise CheckpointError(f"{path}: cannot tell the attention heads of a {hidden}-wide text encoder")
    # Token ids of the real CLIP vocabulary (start, end) and the pad id SD's configs carry.
    return {**sizes, "num_attention_heads": heads, "hidden_act": hints.get("hidden_act", default_act),
            "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 1}


# ---------------------------------------------------------------------------------------------
# Key names: diffusers -> the WebUI's single-file (LDM) layout; used to export and to check loads

RESNET_TO_LDM = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                 "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
UNET_FIXED_TO_LDM = {
    "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
}
UNET_BLOCK_KEY = re.compile(r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)")
UNET_MID_KEY = re.compile(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)")
VAE_ATTENTION_TO_LDM = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
VAE_FIXED_TO_LDM = {"encoder.conv_norm_out": "encoder.norm_out", "decoder.conv_norm_out": "decoder.norm_out",
                    **{name: name for name in ("encoder.conv_in", "encoder.conv_out", "decoder.conv_in",
                                               "decoder.conv_out", "quant_conv", "post_quant_conv")}}
VAE_KEY = re.compile(r"(encoder|decoder)\.(down_blocks|up_blocks|mid_block)\.(?:(\d+)\.)?"
                     r"(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)\.(weight|bias)")
OPEN_CLIP_LAYER_TO_LDM = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc",
                          "mlp.fc2": "mlp.c_proj", "self_attn.out_proj": "attn.out_proj",
                          "self_attn.q_proj": "attn.in_proj", "self_attn.k_proj": "attn.in_proj",
                          "self_attn.v_proj": "attn.in_proj"}
OPEN_CLIP_FIXED_TO_LDM = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight", "text_model.final_layer_norm.bias": "ln_final.bias",
    "text_projection.weight": "text_projection",
    "text_model.embeddings.position_ids": "",  # a constant buffer OpenCLIP does not store
}
OPEN_CLIP_LAYER_KEY = re.compile(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)")


def unet_key_mapper(diffusers_keys: Iterable[str], layers_per_block: int) -> Callable[[str], str | None]:
    """A function naming each diffusers UNet weight in the LDM layout (None if it has no name there)."""
    if not isinstance(layers_per_block, int):
        raise CheckpointError(f"UNets with per-level layers_per_block ({layers_per_block}) cannot be exported")
    up_with_attention = {int(key.split(".")[1]) for key in diffusers_keys if key.startswith("up_blocks.")
                         and ".attentions." in key}

    def to_ldm(key: str) -> str | None:
        module, _, leaf = key.rpartition(".")
        if module in UNET_FIXED_TO_LDM:
            return f"{UNET_FIXED_TO_LDM[module]}.{leaf}"
        if match := UNET_MID_KEY.fullmatch(key):
            kind, index, rest = match.groups()
            if kind == "attentions":
                return f"middle_block.1.{rest}" if index == "0" else None
            return _with_resnet_rest(f"middle_block.{2 * int(index)}", rest)
        if match := UNET_BLOCK_KEY.fullmatch(key):
            return _unet_block_key(match.groups(), layers_per_block, up_with_attention)
        return None

    return to_ldm


def _unet_block_key(groups, layers: int, up_with_attention: set[int]) -> str | None:
    side, block, kind, index, rest = groups
    block, index = int(block), int(index)
    down = side == "down"
    first = 1 + block * (layers + 1) if down else block * (layers + 1)
    top = "input_blocks" if down else "output_blocks"
    if kind == "resnets" and index < layers + (0 if down else 1):
        return _with_resnet_rest(f"{top}.{first + index}.0", rest)
    if kind == "attentions" and index < layers + (0 if down else 1):
        return f"{top}.{first + index}.1.{rest}"
    if kind == "downsamplers" and index == 0 and rest.startswith("conv."):
        return f"input_blocks.{first + layers}.0.op.{rest.removeprefix('conv.')}"
    if kind == "upsamplers" and index == 0:
        # The upsampler follows the attention when the level has one, else directly the resnet.
        return f"output_blocks.{first + layers}.{2 if block in up_with_attention else 1}.{rest}"
    return None


def _with_resnet_rest(ldm_block: str, rest: str) -> str | None:
    module, _, leaf = rest.partition(".")
    return f"{ldm_block}.{RESNET_TO_LDM[module]}.{leaf}" if module in RESNET_TO_LDM else None


def vae_key_mapper(levels: int) -> Callable[[str], str | None]:
    """A function naming each diffusers VAE weight in the LDM layout (decoder levels count the other way)."""

    def to_ldm(key: str) -> str | None:
        module, _, leaf = key.rpartition(".")
        if module in VAE_FIXED_TO_LDM:
            return f"{VAE_FIXED_TO_LDM[module]}.{leaf}"
        match = VAE_KEY.fullmatch(key)
        return _vae_block_key(match.groups(), levels) if match else None

    return to_ldm


def _vae_block_key(groups, levels: int) -> str | None:
    side, blocks, level, kind, index, module, leaf = groups
    if kind == "attentions" and blocks == "mid_block" and index == "0" and module in VAE_ATTENTION_TO_LDM:
        return f"{side}.mid.attn_1.{VAE_ATTENTION_TO_LDM[module]}.{leaf}"
    if kind == "resnets" and module in ("norm1", "conv1", "norm2", "conv2", "conv_shortcut"):
        ldm_module = "nin_shortcut" if module == "conv_shortcut" else module
        if blocks == "mid_block":
            return f"{side}.mid.block_{int(index) + 1}.{ldm_module}.{leaf}"
        return f"{_vae_level(side, level, levels)}.block.{index}.{ldm_module}.{leaf}"
    if kind in ("downsamplers", "upsamplers") and index == "0" and module == "conv" and level is not None:
        sampler = "downsample" if kind == "downsamplers" else "upsample"
        return f"{_vae_level(side, level, levels)}.{sampler}.conv.{leaf}"
    return None


def _vae_level(side: str, level: str, levels: int) -> str:
    return f"encoder.down.{level}" if side == "encoder" else f"decoder.up.{levels - 1 - int(level)}"


def open_clip_ldm_key(key: str) -> str | None:
    """Name of a CLIPTextModelWithProjection weight in the OpenCLIP layout SDXL files use.

    q/k/v all name the one fused `attn.in_proj_*`; "" marks a buffer that is not stored.
    """
    if key in OPEN_CLIP_FIXED_TO_LDM:
        return OPEN_CLIP_FIXED_TO_LDM[key]
    match = OPEN_CLIP_LAYER_KEY.fullmatch(key)
    if not match or match.group(2) not in OPEN_CLIP_LAYER_TO_LDM:
        return None
    layer, module, leaf = match.groups()
    ldm_module = OPEN_CLIP_LAYER_TO_LDM[module]
    if ldm_module == "attn.in_proj":
        return f"transformer.resblocks.{layer}.attn.in_proj_{leaf}"
    return f"transformer.resblocks.{layer}.{ldm_module}.{leaf}"


# ---------------------------------------------------------------------------------------------
# Export to the single-file layout


def export_single_file(source: SDComponents | Path | str, out_path: Path | str, *, dtype=None,
                       overwrite: bool = False) -> Path:
    """Write a base model as one `.safetensors` in the WebUI's layout, atomically; returns the path.

    `source` is loaded SDComponents or anything `load_components` reads. `dtype` (e.g. torch.float16,
    as most WebUI checkpoints are) casts the floating-point weights; by default they keep theirs.
    """
    out_path = Path(out_path)
    if out_path.suffix != ".safetensors":
        raise CheckpointError(f"{out_path}: a single-file checkpoint must end in .safetensors")
    if out_path.exists() and not overwrite:
        raise CheckpointError(f"{out_path} already exists (pass overwrite=True to replace it)")
    components = source if isinstance(source, SDComponents) else load_components(source)
    tensors = components_to_ldm(components)
    if dtype is not None:
        tensors = {key: value.to(dtype) if value.is_floating_point() else value for key, value in tensors.items()}
    metadata = _export_metadata(components, out_path)

    def write(target: Path) -> None:
        from safetensors.torch import save_file

        save_file(tensors, str(target), metadata=metadata)

    _write_atomically(out_path, write)
    log.info("wrote %s (%s, %d tensors)", out_path, components.family, len(tensors))
    return out_path


def components_to_ldm(components: SDComponents) -> dict:
    """Every weight of the components under its single-file name (contiguous, ready to save)."""
    family = components.family.removesuffix("-inpaint")
    if family not in COMPONENT_PREFIXES:
        raise CheckpointError(f"{components.source}: exporting {components.family} models is not supported")
    where = components.source
    unet_state = components.unet.state_dict()
    unet_map = _prefixed_map(where, "UNet", unet_state,
                             unet_key_mapper(unet_state, components.unet.config.layers_per_block), UNET_PREFIX)
    tensors = {unet_map[key]: value for key, value in unet_state.items()}
    vae_state = components.vae.state_dict()
    vae_map = _prefixed_map(where, "VAE", vae_state,
                            vae_key_mapper(len(components.vae.config.block_out_channels)), VAE_PREFIX)
    # LDM keeps the VAE's attention projections as 1x1 convolutions.
    tensors.update({vae_map[key]: value[:, :, None, None] if ".mid.attn_1." in vae_map[key] and value.ndim == 2
                    else value for key, value in vae_state.items()})
    text_prefix = SDXL_TEXT_PREFIX if family == "sdxl" else SD15_TEXT_PREFIX
    tensors.update({text_prefix + key: value for key, value in components.text_encoder.state_dict().items()})
    if family == "sdxl":
        tensors.update(_open_clip_state(where, components.text_encoder_2.state_dict()))
    return {key: value.detach().contiguous() for key, value in tensors.items()}


def _open_clip_state(where, state: dict) -> dict:
    key_map = _prefixed_map(where, "second text encoder", state, open_clip_ldm_key, SDXL_TEXT2_PREFIX)
    tensors: dict = {}
    fused: dict[str, dict[str, Any]] = {}
    for key, value in state.items():
        ldm_key = key_map[key]
        if ".attn.in_proj_" in ldm_key:
            fused.setdefault(ldm_key, {})[key.split("self_attn.")[1][0]] = value  # "q", "k" or "v"
        elif ldm_key.endswith("text_projection"):
            tensors[ldm_key] = value.T  # OpenCLIP multiplies by it from the right
        elif ldm_key:
            tensors[ldm_key] = value
    import torch

    for ldm_key, parts in fused.items():
        tensors[ldm_key] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return tensors


def _export_metadata(components: SDComponents, out_path: Path) -> dict[str, str]:
    family = components.family.removesuffix("-inpaint")
    # Stability's model-spec names (as kohya's sd-scripts write them); the spec has none for inpainting.
    architecture = {"sd15": "stable-diffusion-v1", "sdxl": "stable-diffusion-xl-v1-base"}[family]
    metadata = {"format": "pt", "modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": architecture,
                "modelspec.prediction_type": "epsilon", "modelspec.title": out_path.stem}
    hints = config_hints(components)
    if hints:
        metadata[CONFIG_HINTS_KEY] = json.dumps(hints, sort_keys=True)
    return metadata


def config_hints(components: SDComponents) -> dict[str, dict[str, Any]]:
    """The config values a loader could not infer from shapes and that differ from the family's convention."""
    family = components.family.removesuffix("-inpaint")
    convention = CONVENTIONS[family]
    unet_config, vae_config = components.unet.config, components.vae.config
    actual = {"unet": {"attention_head_dim": unet_config.num_attention_heads or unet_config.attention_head_dim},
              "vae": {}}
    expected: dict[str, dict[str, Any]] = {"unet": {}, "vae": dict(convention["vae"])}
    try:
        expected["unet"]["attention_head_dim"] = conventional_unet_heads(family, list(unet_config.block_out_channels))
    except CheckpointError:
        expected["unet"]["attention_head_dim"] = None
    for name in ("norm_num_groups", "sample_size"):
        actual["unet"][name], expected["unet"][name] = unet_config[name], convention["unet"][name]
    actual["vae"] = {name: vae_config[name] for name in convention["vae"]}
    encoders = {"text_encoder": components.text_encoder, "text_encoder_2": components.text_encoder_2}
    for name, encoder in encoders.items():
        if encoder is not None:
            text_config = encoder.config
            actual[name] = {"num_attention_heads": text_config.num_attention_heads,
                            "hidden_act": text_config.hidden_act}
            expected[name] = {"num_attention_heads": text_config.hidden_size // HEAD_WIDTH,
                              "hidden_act": convention[name]["hidden_act"]}
    return {component: differing for component, values in actual.items()
            if (differing := {name: _jsonable(value) for name, value in values.items()
                              if not _same_setting(value, expected[component][name])})}


def _same_setting(value: Any, convention: Any) -> bool:
    if isinstance(value, (list, tuple)) or isinstance(convention, (list, tuple)):
        length = len(value) if isinstance(value, (list, tuple)) else len(convention)

        def spread(item):
            return list(item) if isinstance(item, (list, tuple)) else [item] * length

        return spread(value) == spread(convention)
    return value == convention


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _write_atomically(out_path: Path, write: Callable[[Path], Any]) -> None:
    """Write through a temporary file in the same folder, then rename: readers never see a partial file."""
    temporary_path = out_path.with_name(f".{out_path.name}.{uuid.uuid4().hex[:12]}.partial")
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        # Created as a plain file (0o666 less the umask): mkstemp's 0o600 would hide an exported
        # checkpoint from a WebUI running as another user.
        os.close(os.open(temporary_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as error:
        raise CheckpointError(f"cannot write {out_path}: {error}") from error
    try:
        write(temporary_path)
        with temporary_path.open("rb+") as stream:
            os.fsync(stream.fileno())
        os.replace(temporary_path, out_path)
    except OSError as error:
        temporary_path.unlink(missing_ok=True)
        raise CheckpointError(f"cannot write {out_path}: {error}") from error
    except BaseException:
        temporary_path.unlink(missing_ok=True)
        raise
