"""Builds small random kohya LoRA files that fit a given model (test helper, not a test module)."""

from __future__ import annotations

from pathlib import Path

import torch

from portrait_core.models.lora import LoraLayer, module_index, write_lora_file


def random_lora_for(components: dict, path: Path, *, rank: int = 4, alpha: float = 2.0, seed: int = 0,
                    scale: float = 0.5, match: tuple[str, ...] = ("attn", "q_proj", "v_proj")) -> Path:
    """A LoRA on every matching Linear layer of `components` ({"unet": ..., "text_encoder": ...})."""
    generator = torch.Generator().manual_seed(seed)
    layers = {}
    for prefix, module in module_index(components).items():
        if not isinstance(module, torch.nn.Linear) or not any(part in prefix for part in match):
            continue
        out_features, in_features = module.weight.shape
        layers[prefix] = LoraLayer(down=torch.randn(rank, in_features, generator=generator) * scale,
                                   up=torch.randn(out_features, rank, generator=generator) * scale, alpha=alpha)
    return write_lora_file(path, layers, {"ss_network_dim": str(rank), "ss_network_alpha": str(alpha)})
