"""The diffusers configs of a single-file checkpoint: the shipped ones for a known layout, else inferred.

A single file carries no configs. When its tensor shapes are those of a released model (SD1.5, SDXL, or
their inpainting variants), the configs come from the files in `known_configs/`, which ship with the
package. Otherwise (a custom or tiny model) they are inferred from the shapes; what shapes cannot tell
(attention heads, norm groups, sample size, activation) follows the family's released model unless the
file's metadata says otherwise — our exporter writes that note only when a model departs from it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from portrait_core.errors import CheckpointError
from portrait_core.log import get_logger
from portrait_core.models.checkpoints.family import (
    SD15_TEXT_PREFIX,
    SDXL_TEXT2_PREFIX,
    SDXL_TEXT_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
)

log = get_logger("checkpoints")

KNOWN_CONFIGS_DIR = Path(__file__).with_name("known_configs")
# Metadata key where our exporter notes the configs that depart from the family's released model.
CONFIG_HINTS_KEY = "portrait_studio.config"
# The config fields tensor shapes decide: a file whose inferred values equal a known config's is that layout.
SHAPE_FIELDS = {
    "unet": ("in_channels", "out_channels", "layers_per_block", "block_out_channels", "down_block_types",
             "up_block_types", "cross_attention_dim", "transformer_layers_per_block", "use_linear_projection",
             "addition_embed_type", "addition_time_embed_dim", "projection_class_embeddings_input_dim"),
    "vae": ("in_channels", "out_channels", "latent_channels", "layers_per_block", "block_out_channels"),
    "text_encoder": ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "max_position_embeddings"),
    "text_encoder_2": ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                       "max_position_embeddings", "projection_dim"),
}
# The fields shapes cannot tell that an inferred config takes from the family's released model.
CONVENTION_FIELDS = {"unet": ("norm_num_groups", "sample_size"),
                     "vae": ("norm_num_groups", "sample_size", "scaling_factor"),
                     "text_encoder": ("hidden_act",), "text_encoder_2": ("hidden_act",)}
HEAD_WIDTH = 64  # released CLIP / OpenCLIP text towers and SD2 / SDXL UNets use 64-wide attention heads
ACTIVATIONS = ("quick_gelu", "gelu")
CLIP_TOKEN_IDS = {"bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 1}  # start, end, SD's pad id


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


# ---------------------------------------------------------------------------------------------
# The configs a single file loads with


def single_file_configs(family: str, shapes: dict[str, tuple[int, ...]], metadata: dict[str, str],
                        path: Path) -> dict[str, dict[str, Any]]:
    """Each component's config ("unet", "vae", "text_encoder"[, "text_encoder_2"]) for the file at `path`.

    `family` is the file's ("sd15", "sdxl-inpaint", ...), `shapes` its tensor shapes under normalised keys.
    """
    hints = read_config_hints(path, metadata)
    inferred = infer_configs(family.removesuffix("-inpaint"), shapes, hints, path)
    known = known_configs(family)
    if known.keys() == inferred.keys() and all(_same_shape_fields(part, known[part], inferred[part])
                                               for part in inferred):
        log.debug("%s has the layout of a released %s model: using its shipped configs", path, family)
        return {part: {**config, **hints.get(part, {})} for part, config in known.items()}
    log.debug("%s: configs inferred from its tensor shapes (not a released %s layout)", path, family)
    return inferred


def known_configs(family: str) -> dict[str, dict[str, Any]]:
    """The shipped configs of the family's released model ("sd15", "sdxl"; "-inpaint": a 9-channel UNet)."""
    base = family.removesuffix("-inpaint")
    configs = json.loads((KNOWN_CONFIGS_DIR / f"{base}.json").read_text(encoding="utf-8"))
    if family.endswith("-inpaint"):  # the latents, the mask and the masked image's latents
        configs["unet"]["in_channels"] = 9
    return configs


def conventions(family: str) -> dict[str, dict[str, Any]]:
    """What shapes cannot tell, as the family's released model has it (e.g. {"vae": {"scaling_factor": ...}})."""
    return {part: {name: config[name] for name in CONVENTION_FIELDS[part]}
            for part, config in known_configs(family).items()}


def scheduler_config() -> dict[str, Any]:
    """SD1.5's and SDXL's noise schedule (scaled-linear betas over 1000 training steps)."""
    return json.loads((KNOWN_CONFIGS_DIR / "scheduler.json").read_text(encoding="utf-8"))


def _same_shape_fields(part: str, known: dict[str, Any], inferred: dict[str, Any]) -> bool:
    return all(known.get(name) == inferred.get(name) for name in SHAPE_FIELDS[part])


def read_config_hints(path: Path, metadata: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The checked config notes our exporter left in `metadata` (CheckpointError if one is invalid)."""
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


# ---------------------------------------------------------------------------------------------
# Inferring diffusers configs from LDM tensor shapes (keys without their component prefix)


def infer_configs(family: str, shapes: dict, hints: dict, path: Path) -> dict[str, dict[str, Any]]:
    """Every component's config of a `family` ("sd15"/"sdxl") file, from its (prefixed) tensor shapes.

    What shapes cannot tell comes from `hints` (the file's notes), else from the family's released model.
    """
    settings = {part: {**values, **hints.get(part, {})} for part, values in conventions(family).items()}
    configs = {"text_encoder": infer_clip_text_config(
        _strip_prefix(shapes, SDXL_TEXT_PREFIX if family == "sdxl" else SD15_TEXT_PREFIX),
        settings["text_encoder"], path)}
    pooled_dim = None
    if family == "sdxl":
        configs["text_encoder_2"] = infer_open_clip_text_config(_strip_prefix(shapes, SDXL_TEXT2_PREFIX),
                                                                settings["text_encoder_2"], path)
        pooled_dim = configs["text_encoder_2"]["projection_dim"]
    configs["unet"] = infer_unet_config(_strip_prefix(shapes, UNET_PREFIX), family, settings["unet"],
                                        pooled_dim, path)
    configs["vae"] = infer_vae_config(_strip_prefix(shapes, VAE_PREFIX), settings["vae"], path)
    return configs


def _strip_prefix(shapes: dict, prefix: str) -> dict:
    return {key[len(prefix):]: value for key, value in shapes.items() if key.startswith(prefix)}


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


def infer_unet_config(shapes: dict, family: str, settings: dict, pooled_dim: int | None, path=None) -> dict:
    """The UNet's config from its shapes; `settings` gives norm_num_groups, sample_size[, attention_head_dim]."""
    layers, levels = _unet_levels(path, shapes)
    firsts = [1 + level * (layers + 1) for level in range(levels)]
    channels = [_shape(path, shapes, f"input_blocks.{i}.0.in_layers.2.weight")[0] for i in firsts]
    depths = [len(_indices(shapes, f"input_blocks.{i}.1.transformer_blocks.")) for i in firsts]
    up_attention = [bool(_indices(shapes, f"output_blocks.{level * (layers + 1)}.1.transformer_blocks."))
                    for level in range(levels)]
    context = [shape for key, shape in shapes.items() if key.endswith("attn2.to_k.weight")]
    if not context or "middle_block.1.proj_in.weight" not in shapes:
        raise CheckpointError(f"{path}: its UNet has no cross-attention in the middle block; not an SD UNet")
    config = {
        "sample_size": settings["sample_size"],
        "in_channels": _shape(path, shapes, "input_blocks.0.0.weight")[1],
        "out_channels": _shape(path, shapes, "out.2.weight")[0],
        "layers_per_block": layers, "block_out_channels": channels,
        "down_block_types": ["CrossAttnDownBlock2D" if depth else "DownBlock2D" for depth in depths],
        "up_block_types": ["CrossAttnUpBlock2D" if attention else "UpBlock2D" for attention in up_attention],
        "cross_attention_dim": context[0][1],
        "transformer_layers_per_block": 1 if max(depths) <= 1 else [max(depth, 1) for depth in depths],
        "use_linear_projection": len(shapes["middle_block.1.proj_in.weight"]) == 2,
        "norm_num_groups": settings["norm_num_groups"],
        "attention_head_dim": settings.get("attention_head_dim") or conventional_unet_heads(family, channels, path),
    }
    if family == "sdxl":
        config.update(_sdxl_time_embedding_config(path, shapes, pooled_dim))
    return config


def conventional_unet_heads(family: str, channels: list[int], path=None) -> int | list[int]:
    """Diffusers' `attention_head_dim` (a head count, despite its name) as the family's released models have it:
    SD1.x has the same number of heads at every level, SD2 and SDXL have 64-wide heads."""
    if family == "sd15":
        return known_configs(family)["unet"]["attention_head_dim"]
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


def infer_vae_config(shapes: dict, settings: dict, path=None) -> dict:
    """The VAE's config from its shapes; `settings` gives norm_num_groups, sample_size and scaling_factor."""
    levels = sorted(_indices(shapes, "encoder.down."))
    if not levels or levels != list(range(len(levels))):
        raise CheckpointError(f"{path}: unrecognised VAE layout (encoder levels {levels})")
    return {
        "in_channels": _shape(path, shapes, "encoder.conv_in.weight")[1],
        "out_channels": _shape(path, shapes, "decoder.conv_out.weight")[0],
        "latent_channels": _shape(path, shapes, "post_quant_conv.weight")[0],
        "layers_per_block": len(_indices(shapes, "encoder.down.0.block.")),
        "block_out_channels": [_shape(path, shapes, f"encoder.down.{i}.block.0.conv1.weight")[0] for i in levels],
        "down_block_types": ["DownEncoderBlock2D"] * len(levels),
        "up_block_types": ["UpDecoderBlock2D"] * len(levels),
        **{name: settings[name] for name in CONVENTION_FIELDS["vae"]},
    }


# Where each text-encoder layout keeps the tensors whose shapes give its sizes: the token embedding
# (vocabulary x width), the first MLP layer (its width first), the layers, the position embedding.
TEXT_LAYOUT_KEYS = {
    "clip": ("text_model.embeddings.token_embedding.weight", "text_model.encoder.layers.0.mlp.fc1.weight",
             "text_model.encoder.layers.", "text_model.embeddings.position_embedding.weight"),
    "open_clip": ("token_embedding.weight", "transformer.resblocks.0.mlp.c_fc.weight", "transformer.resblocks.",
                  "positional_embedding"),
}


def infer_clip_text_config(shapes: dict, settings: dict, path=None) -> dict:
    """A CLIP text encoder's config from its shapes; `settings` gives hidden_act[, num_attention_heads]."""
    return _text_config(path, shapes, settings, TEXT_LAYOUT_KEYS["clip"])


def infer_open_clip_text_config(shapes: dict, settings: dict, path=None) -> dict:
    """SDXL's second (OpenCLIP) text encoder's config from its shapes in the OpenCLIP layout."""
    config = _text_config(path, shapes, settings, TEXT_LAYOUT_KEYS["open_clip"])
    return {**config, "projection_dim": _shape(path, shapes, "text_projection")[1]}


def _text_config(path, shapes: dict, settings: dict, keys: tuple[str, str, str, str]) -> dict:
    token_key, mlp_key, layers_prefix, position_key = keys
    vocab, hidden = _shape(path, shapes, token_key)
    heads = settings.get("num_attention_heads") or hidden // HEAD_WIDTH
    if not heads or hidden % heads:
        raise CheckpointError(f"{path}: cannot tell the attention heads of a {hidden}-wide text encoder")
    return {"vocab_size": vocab, "hidden_size": hidden, "intermediate_size": _shape(path, shapes, mlp_key)[0],
            "num_hidden_layers": len(_indices(shapes, layers_prefix)),
            "max_position_embeddings": _shape(path, shapes, position_key)[0],
            "num_attention_heads": heads, "hidden_act": settings["hidden_act"], **CLIP_TOKEN_IDS}


