"""Random-weight SDXL canny and tile ControlNet stand-ins for the real-WebUI tier's SDXL portrait.

The real files a user installs (`diffusers_xl_canny_small`, an SDXL tile model) are diffusers
ControlNets; these have the same layout in the "small" variant (no transformer layers, which the
ControlNet extension loads with its `controlnet_sdxl_small_config`), so two of them fit beside an
fp32 SDXL checkpoint in 24 GB of RAM. Run it with the prepared WebUI's Python (it has diffusers):

    WEBUI_DIR=$REAL_WEBUI_HOME/webui $REAL_WEBUI_HOME/webui/venv/bin/python dev/build_sdxl_controlnets.py

The SDXL checkpoint and OpenPose stand-ins come from ../shared/tools/real-webui/sdxl/.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import torch
from diffusers import ControlNetModel
from safetensors.torch import save_file

NAMES = ("diffusers_xl_canny_small.safetensors", "qa_xl_tile_small.safetensors")

# SDXL base's ControlNet configuration (the values of its UNet), with the small variant's zero transformer layers.
SDXL_SMALL = {
    "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64, "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280], "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"], "in_channels": 4,
    "layers_per_block": 2, "projection_class_embeddings_input_dim": 2816, "transformer_layers_per_block": [0, 0, 0],
    "use_linear_projection": True, "conditioning_embedding_out_channels": [16, 32, 96, 256],
}


def random_state(seed: int) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        shapes = {key: tuple(value.shape) for key, value in ControlNetModel(**SDXL_SMALL).state_dict().items()}
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith(".bias"):
            tensor = torch.zeros(shape)
        elif len(shape) == 1:
            tensor = torch.ones(shape)  # norm weights
        else:
            tensor = torch.randn(shape, generator=generator) / math.sqrt(math.prod(shape[1:]))
        if key.startswith("controlnet_") and "cond_embedding" not in key:
            tensor = tensor * 0.1  # the zero convolutions: small, so the UNet's own output still dominates
        state[key] = tensor.half().contiguous()
    return state


def main() -> int:
    folder = Path(os.environ["WEBUI_DIR"]) / "models" / "ControlNet"
    folder.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(NAMES, start=11):
        path = folder / name
        if path.is_file():
            print(f"{path} exists")
            continue
        save_file(random_state(seed), str(path))
        print(f"{path}: {path.stat().st_size / 1e6:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
