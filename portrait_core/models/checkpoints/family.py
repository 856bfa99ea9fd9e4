"""What a base model is, from its header or configs alone: family, inpainting or not, file or folder, ControlNet.

Families are "sd15", "sd2" and "sdxl", with "-inpaint" for a 9-channel UNet; a safetensors file that is
something else (a LoRA, an embedding, an IP-Adapter, a VAE or one diffusers component) is named as such.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from portrait_core.errors import CheckpointError
from portrait_core.models.checkpoints.header import read_safetensors_header

# Where each component's weights sit in the WebUI's single-file (LDM) layout.
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
# Old SD1.x files keep the CLIP weights without `text_model.` (the WebUI renames them the same way).
OLD_CLIP_LAYOUT = {
    SD15_TEXT_PREFIX + "embeddings.": SD15_TEXT_PREFIX + "text_model.embeddings.",
    SD15_TEXT_PREFIX + "encoder.": SD15_TEXT_PREFIX + "text_model.encoder.",
    SD15_TEXT_PREFIX + "final_layer_norm.": SD15_TEXT_PREFIX + "text_model.final_layer_norm.",
}


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



def inspect_checkpoint(path: Path | str) -> CheckpointInfo:
    """Family, format, size and kind of a base model or ControlNet, from its header or configs only."""
    path = Path(path)
    if path.is_dir():
        return _inspect_folder(path)
    header = read_safetensors_header(path)
    shapes = {normalize_ldm_key(key): shape for key, shape in header.shapes.items()}
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


def normalize_ldm_key(key: str) -> str:
    """`key` as current files name it (old SD1.x files lack the `text_model.` level)."""
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
        model_index = read_json(folder / "model_index.json")
        unet_config = read_json(folder / "unet" / "config.json")
        family = _family_from_unet_config(unet_config, second_encoder="text_encoder_2" in model_index)
        in_channels = unet_config.get("in_channels", 4)
        return CheckpointInfo(path=folder, family=_with_inpaint(folder, family, in_channels), format="diffusers",
                              size_bytes=size, in_channels=in_channels)
    if (folder / "config.json").is_file():
        config = read_json(folder / "config.json")
        if config.get("_class_name") == "ControlNetModel":
            family = _family_from_unet_config(config, second_encoder=True)
            return CheckpointInfo(path=folder, family=family, format="diffusers", size_bytes=size,
                                  is_controlnet=True)
    raise CheckpointError(f"{folder} is a folder but not a diffusers model (it has no model_index.json)")


def _family_from_unet_config(config: dict, *, second_encoder: bool) -> str:
    if config.get("addition_embed_type") == "text_time" and second_encoder:
        return "sdxl"
    return "sd2" if config.get("cross_attention_dim") == 1024 else "sd15"


def read_json(path: Path) -> dict:
    """A JSON object from a config file; CheckpointError naming the file if it is missing or not one."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise CheckpointError(f"{path} is missing") from error
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise CheckpointError(f"{path} is not readable JSON ({error})") from error
    if not isinstance(content, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    return content
