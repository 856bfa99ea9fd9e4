"""The names diffusers' weights have in the WebUI's single-file (LDM) layout (checked on load, written on export)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path

from portrait_core.errors import CheckpointError

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



def prefixed_key_map(path: Path | str, what: str, diffusers_keys: Iterable[str], mapper,
                     prefix: str) -> dict[str, str]:
    """Each diffusers key's full single-file name (`prefix` + its LDM name, "" for an unstored buffer);
    CheckpointError naming `path` and `what` if any key has no name there."""
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

