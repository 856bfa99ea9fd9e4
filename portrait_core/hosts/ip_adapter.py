"""IP-Adapter (image prompt) for the standalone host: find and check adapter files from their headers,
load them with diffusers' own loader, and switch a loaded adapter off and on again on a shared UNet.

Layout (the one diffusers and the h94/IP-Adapter repository use): a weight file with `image_proj.*`
and `ip_adapter.*` tensors, e.g. `ip-adapter_sd15.safetensors`, and the CLIP vision encoder it was
trained with as a diffusers/transformers folder `image_encoder/` beside it (for
`sdxl_models/ip-adapter_sdxl_vit-h.safetensors`, the ViT-H encoder in `models/image_encoder/` also counts).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from portrait_core.errors import CheckpointError, ControlError
from portrait_core.hosts.base import Control
from portrait_core.log import get_logger

log = get_logger("ip_adapter")

IP_ADAPTER_KIND = "ip_adapter"
IP_ADAPTER_FOLDER = "ip-adapter"
IMAGE_ENCODER_FOLDER = "image_encoder"
# The text-encoder width each family's UNet cross-attends to; an adapter's key/value layers read it.
FAMILY_BY_CROSS_ATTENTION = {768: "sd15", 1024: "sd2", 2048: "sdxl"}
FAMILY_LABELS = {"sd15": "SD1.5", "sd2": "SD2.x", "sdxl": "SDXL"}
EXAMPLE_FILES = {"sd15": "ip-adapter_sd15.safetensors", "sd2": "an SD2 IP-Adapter",
                 "sdxl": "ip-adapter_sdxl_vit-h.safetensors or ip-adapter_sdxl.safetensors"}
_LAYER_KEY = re.compile(r"^ip_adapter\.(\d+)\.to_k_ip\.weight$")


@dataclass(frozen=True)
class IPAdapterFile:
    """An IP-Adapter weight file and what its header says about it (no weights read).

    `uses_hidden_states`: the Plus and Full-face variants read the image encoder's hidden states (of
    width `image_embed_dim`); the plain one reads its projected image embedding.
    """

    path: Path
    cross_attention_dim: int
    layers: int
    image_embed_dim: int
    uses_hidden_states: bool

    @property
    def family_label(self) -> str:
        family = FAMILY_BY_CROSS_ATTENTION.get(self.cross_attention_dim)
        return FAMILY_LABELS[family] if family else f"a model with {self.cross_attention_dim}-wide cross-attention"


def inspect_ip_adapter(path: Path) -> IPAdapterFile:
    """What the IP-Adapter at `path` fits, from its safetensors header; ControlError if it is not one we run."""
    from portrait_core.models.checkpoints.header import read_safetensors_header

    path = Path(path)
    try:
        shapes = read_safetensors_header(path).shapes
    except CheckpointError as error:
        raise ControlError(f"IP-Adapter {path}: {error}") from error
    if not any(key.startswith("image_proj.") for key in shapes) or not any(_LAYER_KEY.match(k) for k in shapes):
        raise ControlError(f"{path} is not an IP-Adapter: it has no image_proj.* and ip_adapter.*.to_k_ip tensors")
    # Plain, Plus and Full-face projections; FaceID ones have other projections and a LoRA of their own.
    known_projection = any(key in shapes for key in ("image_proj.proj.weight", "image_proj.latents",
                                                     "image_proj.proj.3.weight"))
    if not known_projection or any("_lora." in key for key in shapes):
        raise ControlError(f"{path} is an IP-Adapter FaceID model; it needs insightface face embeddings and "
                           "its own LoRA, which the standalone host does not run. Use a plain, Plus or "
                           "Full-face IP-Adapter")
    layer_keys = sorted(int(match.group(1)) for key in shapes if (match := _LAYER_KEY.match(key)))
    width = shapes[f"ip_adapter.{layer_keys[0]}.to_k_ip.weight"][1]
    if "image_proj.proj.weight" in shapes:
        return IPAdapterFile(path, width, len(layer_keys), shapes["image_proj.proj.weight"][1], False)
    embed_key = "image_proj.proj_in.weight" if "image_proj.latents" in shapes else "image_proj.proj.0.weight"
    return IPAdapterFile(path, width, len(layer_keys), shapes[embed_key][1], True)


def ip_adapter_files(folder: Path) -> list[Path]:
    """The IP-Adapter weight files in `folder` and its direct subfolders (h94's `models/`, `sdxl_models/`)."""
    if not folder.is_dir():
        return []
    candidates = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*/*.safetensors"))
    return [path for path in candidates if IMAGE_ENCODER_FOLDER not in path.parts[-3:-1] and _is_ip_adapter(path)]


def _is_ip_adapter(path: Path) -> bool:
    from portrait_core.models.checkpoints.header import read_safetensors_header

    try:
        return any(key.startswith("ip_adapter.") for key in read_safetensors_header(path).shapes)
    except CheckpointError:
        return False


def choose_ip_adapter(candidates: list[Path], cross_attention_dim: int, family: str, where: str) -> IPAdapterFile:
    """The first candidate made for this base model's family; ControlError saying what to put where if none."""
    label = FAMILY_LABELS.get(family, family)
    if not candidates:
        raise ControlError(f"no IP-Adapter for the 'ip_adapter' control: put {EXAMPLE_FILES.get(family, 'one')} "
                           f"with its {IMAGE_ENCODER_FOLDER}/ folder (the CLIP vision encoder) in {where}, "
                           "or pass ip_adapter= to the host")
    adapters = [inspect_ip_adapter(path) for path in candidates]
    fitting = [adapter for adapter in adapters if adapter.cross_attention_dim == cross_attention_dim]
    if not fitting:
        found = "; ".join(f"{a.path.name} is for {a.family_label}" for a in adapters)
        raise ControlError(f"no IP-Adapter for {label} base models in {where} ({found}); the base model is "
                           f"{label}: add {EXAMPLE_FILES.get(family, f'a {label} IP-Adapter')}")
    if len(fitting) > 1:
        log.info("several %s IP-Adapters found; using %s", label, fitting[0].path.name)
    return fitting[0]


def check_ip_adapter_fits(adapter: IPAdapterFile, unet: Any, family: str, base_name: str) -> None:
    """Refuse an adapter made for another model family (its key/value layers read another width)."""
    width = unet.config.cross_attention_dim
    label = FAMILY_LABELS.get(family, family)
    if adapter.cross_attention_dim != width:
        raise ControlError(
            f"IP-Adapter {adapter.path.name} was made for {adapter.family_label} (cross-attention width "
            f"{adapter.cross_attention_dim}), but the base model {base_name} is {label} (width {width}); "
            f"use {EXAMPLE_FILES.get(family, f'a {label} IP-Adapter')}")
    layers = sum(1 for name in unet.attn_processors if not name.endswith("attn1.processor"))
    if adapter.layers != layers:
        raise ControlError(f"IP-Adapter {adapter.path.name} conditions {adapter.layers} cross-attention layers, "
                           f"but the base model {base_name} has {layers}: it was made for another UNet")


def image_encoder_folder(adapter: IPAdapterFile) -> Path:
    """The CLIP vision encoder folder that fits `adapter`; ControlError naming where it belongs if none."""
    beside = adapter.path.parent / IMAGE_ENCODER_FOLDER
    shared = adapter.path.parent.parent / "models" / IMAGE_ENCODER_FOLDER
    problems = []
    for folder in dict.fromkeys((beside, shared)):
        if not (folder / "config.json").is_file():
            continue
        config = _read_encoder_config(folder)
        width = config.get("hidden_size") if adapter.uses_hidden_states else config.get("projection_dim")
        if width == adapter.image_embed_dim:
            return folder
        problems.append(f"{folder} gives {width}-wide features")
    detail = f" ({'; '.join(problems)}, the adapter needs {adapter.image_embed_dim})" if problems else ""
    raise ControlError(f"IP-Adapter {adapter.path.name} needs the CLIP vision encoder it was trained with: put "
                       f"its folder (config.json + model.safetensors) at {beside}{detail}")


def _read_encoder_config(folder: Path) -> dict:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ControlError(f"image encoder config {folder / 'config.json'} is unreadable: {error}") from error
    return config.get("vision_config", config)  # a full CLIPModel config nests the vision tower's


def base_cross_attention_dim(base_model: Path) -> int | None:
    """The UNet's cross-attention width of a diffusers folder or single-file checkpoint, from config or
    header only (None when it cannot be told that cheaply)."""
    from portrait_core.models.checkpoints.header import read_safetensors_header

    if base_model.is_dir():
        config_path = base_model / "unet" / "config.json"
        try:
            width = json.loads(config_path.read_text(encoding="utf-8")).get("cross_attention_dim")
        except (OSError, ValueError):
            return None
        return width if isinstance(width, int) else None
    try:
        shapes = read_safetensors_header(base_model).shapes
    except CheckpointError:
        return None
    return next((shape[1] for key, shape in shapes.items()
                 if key.startswith("model.diffusion_model.") and key.endswith("attn2.to_k.weight")), None)


def image_prompt_scale(control: Control, fraction_done: float) -> float:
    """The adapter's scale at this point of the run: its weight between `start` and `end`, else off."""
    return control.weight if control.start <= fraction_done <= control.end else 0.0


class LoadedIPAdapter:
    """An IP-Adapter loaded into a UNet by diffusers, that can be switched off (the UNet's own attention
    back, no image projection) and on again without reading anything from disk.

    The UNet is shared by every cached pipeline, and one converted for an IP-Adapter insists on image
    embeddings in every call; so the host switches it on only for calls that carry an image prompt.
    """

    def __init__(self, adapter: IPAdapterFile, *, image_encoder: Any, feature_extractor: Any,
                 adapter_processors: dict, plain_processors: dict, image_projection: Any):
        self.adapter = adapter
        self.image_encoder = image_encoder
        self.feature_extractor = feature_extractor
        self._adapter_processors = adapter_processors
        self._plain_processors = plain_processors
        self._image_projection = image_projection

    @classmethod
    def load(cls, pipeline: Any, adapter: IPAdapterFile) -> LoadedIPAdapter:
        """Load `adapter` (and its image encoder) into `pipeline` and its UNet with diffusers' loader."""
        encoder_folder = image_encoder_folder(adapter)
        unet = pipeline.unet
        plain_processors = dict(unet.attn_processors)
        if (encoder_folder / "preprocessor_config.json").is_file():
            from transformers import CLIPImageProcessor

            # Else diffusers makes a default CLIP processor at the encoder's image size.
            pipeline.register_modules(feature_extractor=CLIPImageProcessor.from_pretrained(str(encoder_folder)))
        root, subfolder, encoder_subfolder = _loader_paths(adapter.path, encoder_folder)
        pipeline.load_ip_adapter(str(root), subfolder=subfolder, weight_name=adapter.path.name,
                                 image_encoder_folder=encoder_subfolder, local_files_only=True)
        pipeline.image_encoder.requires_grad_(False).eval()
        log.info("loaded IP-Adapter %s with image encoder %s", adapter.path.name, encoder_folder)
        return cls(adapter, image_encoder=pipeline.image_encoder, feature_extractor=pipeline.feature_extractor,
                   adapter_processors=dict(unet.attn_processors), plain_processors=plain_processors,
                   image_projection=unet.encoder_hid_proj)

    def pipeline_modules(self) -> dict:
        """What a pipeline built around the same UNet needs to take `ip_adapter_image`."""
        return {"image_encoder": self.image_encoder, "feature_extractor": self.feature_extractor}

    def switch_on(self, unet: Any) -> None:
        if unet.encoder_hid_proj is not self._image_projection:
            unet.set_attn_processor(dict(self._adapter_processors))  # it pops from the dict it is given
            unet.encoder_hid_proj = self._image_projection
            unet.config.encoder_hid_dim_type = "ip_image_proj"

    def switch_off(self, unet: Any) -> None:
        if unet.encoder_hid_proj is self._image_projection:
            unet.set_attn_processor(dict(self._plain_processors))
            unet.encoder_hid_proj = None
            unet.config.encoder_hid_dim_type = None


def _loader_paths(weights: Path, encoder_folder: Path) -> tuple[Path, str, str]:
    """(root, subfolder, image_encoder_folder) as diffusers' `load_ip_adapter` takes them: an encoder
    folder name without "/" is looked up inside `subfolder`, one with "/" from `root`."""
    if encoder_folder.parent == weights.parent:
        return weights.parent, "", encoder_folder.name
    root = weights.parent.parent
    return root, weights.parent.name, encoder_folder.relative_to(root).as_posix()
