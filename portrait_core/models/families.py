"""Model families (SD1.5, SDXL): what differs between them, in one place instead of `== "sdxl"` branches.

`family("sd15")` / `family("sdxl")` give the defaults a training or a render takes when the user leaves a
field empty, the LoRA key prefixes of each trained component, the kohya `ss_base_model_version` value and
the label users read. Inpaint variants ("sd15-inpaint") belong to their base family.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from portrait_core.errors import CheckpointError


@dataclass(frozen=True)
class ModelFamily:
    name: str                      # "sd15" / "sdxl": what files and metadata record
    label: str                     # what users read
    kohya_version: str             # kohya's ss_base_model_version
    resolution: int                # the side a training and a txt2img take by default
    lora_rank: int                 # the training's default LoRA rank and alpha
    lora_alpha: float
    lora_prefixes: dict[str, str] = field(default_factory=dict)  # trained component -> kohya key prefix

    @property
    def text_encoders(self) -> tuple[str, ...]:
        return tuple(name for name in self.lora_prefixes if name.startswith("text_encoder"))


SD15 = ModelFamily("sd15", "SD1.5", "sd_v1", 512, 128, 64.0, {"unet": "lora_unet_", "text_encoder": "lora_te_"})
SDXL = ModelFamily("sdxl", "SDXL", "sdxl_base_v1-0", 1024, 32, 16.0,
                   {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"})
FAMILIES = {known.name: known for known in (SD15, SDXL)}


def family(name: str) -> ModelFamily:
    """The family of `name` ("sd15", "sdxl", or an inpaint variant such as "sdxl-inpaint")."""
    base = name.removesuffix("-inpaint")
    if base not in FAMILIES:
        raise CheckpointError(f"model family {name!r} is not supported; Portrait Studio works with SD1.5 and SDXL")
    return FAMILIES[base]


def family_of_kohya_version(version: str | None) -> ModelFamily | None:
    """The family a LoRA's ss_base_model_version names (None when it names none we know)."""
    return next((known for known in FAMILIES.values() if known.kohya_version == version), None)


def family_of_components(names) -> ModelFamily:
    """The family whose trainable components these are (SDXL has a second text encoder)."""
    return SDXL if "text_encoder_2" in names else SD15
