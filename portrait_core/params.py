"""Typed parameters: the one contract the UI, the HTTP API and the CLI all build (pydantic 1.10).

Defaults live here once. Models forbid unknown fields, so a misspelt field is an error that names
it instead of being silently ignored. Later issues extend TrainParams and GenerateParams.
"""

from __future__ import annotations

from typing import List, Literal, Optional, Tuple

from pydantic import BaseModel, Extra, Field, root_validator, validator

ControlKind = Literal["canny", "openpose", "tile", "color", "ip_adapter", "instant_id"]
ControlMode = Literal["balanced", "prompt", "control"]
# Sampler names as the WebUI shows them; every host maps them onto its own schedulers.
SAMPLERS = ("Euler a", "Euler", "DPM++ 2M", "DPM++ 2M Karras", "DDIM", "UniPC", "LMS", "Heun", "PNDM")
SamplerName = Literal["Euler a", "Euler", "DPM++ 2M", "DPM++ 2M Karras", "DDIM", "UniPC", "LMS", "Heun", "PNDM"]

MIN_SIZE, MAX_SIZE = 64, 2048


class StrictModel(BaseModel):
    class Config:
        extra = Extra.forbid
        validate_assignment = True


class ControlParams(StrictModel):
    """One ControlNet unit's settings (the image travels separately, see hosts.base.Control)."""

    kind: ControlKind
    weight: float = Field(1.0, ge=0.0, le=2.0, description="control strength, as the WebUI's 0–2 slider")
    start: float = Field(0.0, ge=0.0, le=1.0, description="fraction of the steps where the control starts")
    end: float = Field(1.0, ge=0.0, le=1.0, description="fraction of the steps where the control stops")
    mode: ControlMode = "balanced"

    @root_validator(skip_on_failure=True)
    def _start_before_end(cls, values):  # noqa: N805 - pydantic validators take the class
        if values["start"] > values["end"]:
            raise ValueError(f"start ({values['start']}) must not be after end ({values['end']})")
        return values


class LoraWeight(StrictModel):
    """A LoRA by name (a file in the LoRA folder, without extension) and its weight in the prompt."""

    name: str = Field(..., min_length=1, max_length=200, regex=r"^[A-Za-z0-9_\-][A-Za-z0-9_\-. ]*$")
    weight: float = Field(0.9, ge=-4.0, le=4.0)


class DiffusionParams(StrictModel):
    """What one txt2img or inpaint call on a host needs besides its images."""

    prompt: str = ""
    negative_prompt: str = ""
    steps: int = Field(20, ge=1, le=150)
    cfg_scale: float = Field(7.0, ge=1.0, le=30.0)
    denoise: float = Field(0.45, ge=0.0, le=1.0, description="img2img/inpaint strength")
    seed: int = Field(-1, ge=-1, le=2**32 - 1, description="-1 picks a random seed, reported back")
    sampler: SamplerName = "Euler a"
    width: int = Field(512, ge=MIN_SIZE, le=MAX_SIZE)
    height: int = Field(512, ge=MIN_SIZE, le=MAX_SIZE)
    mask_blur: int = Field(4, ge=0, le=64, description="feather of the mask edge, in pixels")
    controls: List[ControlParams] = Field(default_factory=list)
    loras: List[LoraWeight] = Field(default_factory=list)

    @validator("width", "height")
    def _multiple_of_8(cls, value, field):  # noqa: N805
        if value % 8:
            raise ValueError(f"{field.name} must be a multiple of 8, got {value}")
        return value

    @property
    def size(self) -> Tuple[int, int]:
        return (self.width, self.height)


class TrainParams(StrictModel):
    """LoRA training of one identity (reference defaults from ARCHITECTURE.md; issue #4 fills the rest)."""

    identity: str = Field(..., min_length=1, max_length=64, regex=r"^[A-Za-z0-9_-]+$")
    base_model: Optional[str] = None
    resolution: int = Field(512, ge=64, le=2048)
    max_train_steps: int = Field(800, ge=1, le=100_000)
    steps_per_photo: int = Field(200, ge=1, le=10_000)
    batch_size: int = Field(1, ge=1, le=64)
    gradient_accumulation: int = Field(4, ge=1, le=256)
    learning_rate: float = Field(1e-4, gt=0, le=1.0)
    rank: int = Field(128, ge=1, le=1024)
    alpha: float = Field(64.0, gt=0, le=1024)
    validate_every: int = Field(100, ge=1, le=100_000)
    top_k_photos: int = Field(15, ge=1, le=100)
    seed: int = Field(42, ge=0, le=2**32 - 1)


class GenerateParams(StrictModel):
    """One portrait from a template (reference defaults from ARCHITECTURE.md; issue #5 fills the rest)."""

    identities: List[str] = Field(..., min_items=1)
    lora_weight: float = Field(0.9, ge=0.0, le=2.0)
    first_pass_steps: int = Field(50, ge=1, le=150)
    first_pass_denoise: float = Field(0.45, ge=0.0, le=1.0)
    second_pass_steps: int = Field(20, ge=1, le=150)
    second_pass_denoise: float = Field(0.30, ge=0.0, le=1.0)
    cfg_scale: float = Field(7.0, ge=1.0, le=30.0)
    face_fusion_before: float = Field(0.5, ge=0.0, le=1.0)
    face_fusion_after: float = Field(0.5, ge=0.0, le=1.0)
    codeformer_weight: float = Field(0.7, ge=0.0, le=1.0)
    sampler: SamplerName = "Euler a"
    seed: int = Field(-1, ge=-1, le=2**32 - 1)
    batch: int = Field(1, ge=1, le=16)

    @validator("identities", each_item=True)
    def _identity_names(cls, value):  # noqa: N805
        if not value or not all(ch.isalnum() or ch in "-_" for ch in value):
            raise ValueError(f"identity {value!r} may hold only letters, digits, '-' and '_'")
        return value


def params_json_schema() -> dict:
    """JSON schema of every parameter model, for `GET /sdapi/v1/portrait/schema` and the docs."""
    models = (ControlParams, LoraWeight, DiffusionParams, TrainParams, GenerateParams)
    return {model.__name__: model.schema() for model in models}
