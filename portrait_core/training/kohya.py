"""Convert between the trainer's live LoRA weights (peft) and kohya-format LoRA files.

peft names a layer's adapter `<module path>.lora_A.weight` / `.lora_B.weight`; kohya names it
`lora_unet_<module_path_with_underscores>.lora_down.weight` / `.lora_up.weight` plus `.alpha`,
which is what the WebUI's built-in Lora extension reads.
"""

from __future__ import annotations

from portrait_core.models.families import FAMILIES
from portrait_core.models.lora import LoraLayer

COMPONENT_PREFIXES = {name: known.lora_prefixes for name, known in FAMILIES.items()}


def peft_to_kohya_layers(peft_state: dict, kohya_prefix: str, alpha: float) -> dict[str, LoraLayer]:
    """peft's state dict of one model -> kohya layers keyed by prefix, alpha as trained."""
    layers: dict[str, LoraLayer] = {}
    for key, tensor in peft_state.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module_path = key[: -len(".lora_A.weight")]
        up = peft_state[f"{module_path}.lora_B.weight"]
        prefix = kohya_prefix + module_path.replace(".", "_")
        layers[prefix] = LoraLayer(down=tensor.detach().float().cpu().clone(),
                                   up=up.detach().float().cpu().clone(), alpha=float(alpha))
    return layers


def kohya_to_peft_state(layers: dict[str, LoraLayer], kohya_prefix: str, module_names: list[str]) -> dict:
    """The inverse, for resuming: kohya layers of one model -> peft state dict for `set_peft_model_state_dict`."""
    by_prefix = {kohya_prefix + name.replace(".", "_"): name for name in module_names}
    state = {}
    for prefix, layer in layers.items():
        if prefix in by_prefix:
            state[f"{by_prefix[prefix]}.lora_A.weight"] = layer.down
            state[f"{by_prefix[prefix]}.lora_B.weight"] = layer.up
    return state
