"""Writing a base model as one `.safetensors` file in the WebUI's single-file (LDM) layout.

For the tests and the tiny demo model only: nothing in the product's load path imports this module.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from portrait_core.errors import CheckpointError
from portrait_core.log import get_logger
from portrait_core.models.checkpoints.configs import (
    CONFIG_HINTS_KEY,
    HEAD_WIDTH,
    conventional_unet_heads,
    conventions,
)
from portrait_core.models.checkpoints.family import (
    COMPONENT_PREFIXES,
    SD15_TEXT_PREFIX,
    SDXL_TEXT2_PREFIX,
    SDXL_TEXT_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
)
from portrait_core.models.checkpoints.keymap import (
    open_clip_ldm_key,
    prefixed_key_map,
    unet_key_mapper,
    vae_key_mapper,
)
from portrait_core.models.checkpoints.loading import SDComponents, load_components

log = get_logger("export")


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
    unet_map = prefixed_key_map(where, "UNet", unet_state,
                                unet_key_mapper(unet_state, components.unet.config.layers_per_block), UNET_PREFIX)
    tensors = {unet_map[key]: value for key, value in unet_state.items()}
    vae_state = components.vae.state_dict()
    vae_map = prefixed_key_map(where, "VAE", vae_state,
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
    key_map = prefixed_key_map(where, "second text encoder", state, open_clip_ldm_key, SDXL_TEXT2_PREFIX)
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
    """The config values a loader cannot tell from shapes that differ from the family's released model."""
    family = components.family.removesuffix("-inpaint")
    convention = conventions(family)
    unet_config = components.unet.config
    try:
        heads = conventional_unet_heads(family, list(unet_config.block_out_channels))
    except CheckpointError:
        heads = None
    actual = {"unet": {"attention_head_dim": unet_config.num_attention_heads or unet_config.attention_head_dim}}
    expected: dict[str, dict[str, Any]] = {"unet": {"attention_head_dim": heads}}
    for part, model in (("unet", components.unet), ("vae", components.vae)):
        actual.setdefault(part, {}).update({name: model.config[name] for name in convention[part]})
        expected.setdefault(part, {}).update(convention[part])
    for part in ("text_encoder", "text_encoder_2"):
        encoder = getattr(components, part)
        if encoder is not None:
            actual[part] = {"num_attention_heads": encoder.config.num_attention_heads,
                            "hidden_act": encoder.config.hidden_act}
            expected[part] = {"num_attention_heads": encoder.config.hidden_size // HEAD_WIDTH,
                              "hidden_act": convention[part]["hidden_act"]}
    return {part: differing for part, values in actual.items()
            if (differing := {name: _jsonable(value) for name, value in values.items()
                              if not _same_setting(value, expected[part][name])})}


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
