"""Typed parameters: the one contract the UI, the HTTP API and the CLI all build (pydantic 1.10).

Defaults live here once. Models forbid unknown fields, so a misspelt field is an error that names
it instead of being silently ignored. Later issues extend TrainParams and GenerateParams.
"""

from __future__ import annotations

from typing import Dict, List, Literal, Optional, Union

from pydantic import BaseModel, Extra, Field, ValidationError, root_validator, validator

from portrait_core.errors import IdentityError
from portrait_core.store import IDENTITY_ID_MAX_LENGTH, IDENTITY_ID_PATTERN, validate_identity_id

# Sampler names as the WebUI shows them; every host maps them onto its own schedulers.
SAMPLERS = ("Euler a", "Euler", "DPM++ 2M", "DPM++ 2M Karras", "DDIM", "UniPC", "LMS", "Heun", "PNDM")
SamplerName = Literal["Euler a", "Euler", "DPM++ 2M", "DPM++ 2M Karras", "DDIM", "UniPC", "LMS", "Heun", "PNDM"]

MIN_SIZE, MAX_SIZE = 64, 2048
# The largest image a workflow step or a portrait may produce (after upscaling): a side of 8192 px and 64
# megapixels, the same area as the largest photo accepted as a template, so every template renders at
# upscale 1. Bigger outputs (e.g. a 64 px txt2img upscaled x4 five times: 65536 px) are refused up front.
MAX_OUTPUT_SIDE, MAX_OUTPUT_PIXELS = 8192, 64_000_000


def output_size_problem(width: int, height: int) -> Optional[str]:
    """Why an output of `width` x `height` px is too large, or None when it fits the limits above."""
    if max(width, height) > MAX_OUTPUT_SIDE or width * height > MAX_OUTPUT_PIXELS:
        return (f"the output would be {width}x{height} px ({width * height / 1e6:.1f} megapixels); the limit is "
                f"{MAX_OUTPUT_SIDE} px a side and {MAX_OUTPUT_PIXELS / 1e6:.0f} megapixels")
    return None


class IdentityId(str):
    """An identity's id wherever a parameter names one: the one rule, `store.validate_identity_id` (ASCII
    letters, digits, '-' and '_', starting with a letter or digit, at most 64 characters, no device name)."""

    @classmethod
    def __get_validators__(cls):
        yield cls._validate

    @classmethod
    def _validate(cls, value):
        try:
            return validate_identity_id(value)
        except IdentityError as error:
            raise ValueError(str(error)) from None

    @classmethod
    def __modify_schema__(cls, schema: dict) -> None:
        schema.update(type="string", minLength=1, maxLength=IDENTITY_ID_MAX_LENGTH, pattern=IDENTITY_ID_PATTERN)


class StrictModel(BaseModel):
    class Config:
        extra = Extra.forbid
        validate_assignment = True


class TrainParams(StrictModel):
    """LoRA training of one identity; reference defaults from ARCHITECTURE.md (EasyPhoto's).

    `resolution`, `rank` and `alpha` left empty take the model family's default: 512 / 128 / 64
    for SD1.5, 1024 / 32 / 16 for SDXL.
    """

    identity: IdentityId
    base_model: Optional[str] = Field(None, description="checkpoint path or name; empty: the tiny local model")
    resolution: Optional[int] = Field(None, ge=64, le=2048)
    max_train_steps: int = Field(800, ge=1, le=100_000)
    steps_per_photo: int = Field(200, ge=1, le=10_000)
    batch_size: int = Field(1, ge=1, le=64)
    gradient_accumulation: int = Field(4, ge=1, le=256)
    learning_rate: float = Field(1e-4, gt=0, le=1.0)
    text_encoder_lr_ratio: float = Field(0.5, ge=0, le=1.0, description="text encoder LR = ratio x LR")
    rank: Optional[int] = Field(None, ge=1, le=1024)
    alpha: Optional[float] = Field(None, gt=0, le=1024)
    validate_every: int = Field(100, ge=1, le=100_000)
    merge_top: int = Field(4, ge=1, le=100, description="best validation images that vote in the final merge")
    early_stop_patience: int = Field(0, ge=0, le=100, description="stop after K validations without gain; 0: off")
    top_k_photos: int = Field(15, ge=1, le=100)
    seed: int = Field(42, ge=0, le=2**32 - 1)

    @validator("resolution")
    def _resolution_multiple_of_8(cls, value):  # noqa: N805
        if value is not None and value % 8:
            raise ValueError(f"resolution must be a multiple of 8, got {value}")
        return value


class GenerateParams(StrictModel):
    """One portrait from a template; reference defaults from ARCHITECTURE.md (EasyPhoto's).

    Pass 1 repaints the face (canny + openpose + color controls and the LoRA), pass 2 the ring
    around it (canny + tile). Face fusion pastes the user's reference face before pass 1 and after it.
    """

    identities: List[IdentityId] = Field(..., min_items=1, max_items=16,
                                         description="one identity per template face, left to right")
    face_order: Optional[List[int]] = Field(None, description="which template face (0 = leftmost) each "
                                                              "identity goes to; default: 0, 1, 2 ...")
    prompt: str = Field("", max_length=2000, description="added after the identity's trigger words")
    negative_prompt: str = Field("blurry, lowres, deformed face, bad anatomy, watermark, text", max_length=2000)
    lora_weight: float = Field(0.9, ge=0.0, le=2.0)
    first_pass_steps: int = Field(50, ge=1, le=150)
    first_pass_denoise: float = Field(0.45, ge=0.01, le=1.0)
    second_pass_steps: int = Field(20, ge=1, le=150)
    second_pass_denoise: float = Field(0.30, ge=0.0, le=1.0, description="0 skips the second pass")
    cfg_scale: float = Field(7.0, ge=1.0, le=30.0)
    canny_weight: float = Field(0.50, ge=0.0, le=2.0, description="pass 1")
    openpose_weight: float = Field(0.50, ge=0.0, le=2.0, description="pass 1")
    color_weight: float = Field(0.85, ge=0.0, le=2.0, description="pass 1")
    canny_end: float = Field(1.0, ge=0.0, le=1.0, description="pass 1: canny acts until this fraction of the "
                                                              "steps, then stops running (1 = every step)")
    color_end: float = Field(1.0, ge=0.0, le=1.0, description="pass 1: the colour control acts until this "
                                                              "fraction of the steps (1 = every step)")
    second_canny_weight: float = Field(1.0, ge=0.0, le=2.0, description="pass 2")
    tile_weight: float = Field(1.0, ge=0.0, le=2.0, description="pass 2")
    ip_adapter_weight: Optional[float] = Field(None, ge=0.0, le=2.0, description="image prompt from the "
                                               "reference face: default 0 beside a LoRA, 0.6 without one")
    face_fusion_before: float = Field(0.5, ge=0.0, le=1.0)
    face_fusion_after: float = Field(0.5, ge=0.0, le=1.0)
    color_transfer: bool = True
    skin_retouch: float = Field(0.0, ge=0.0, le=1.0, description="edge-preserving skin smoothing; 0 = off")
    restore_faces: bool = True
    codeformer_weight: float = Field(0.7, ge=0.0, le=1.0, description="CodeFormer fidelity (1 = keep most)")
    upscale: float = Field(1.0, ge=1.0, le=4.0, description="super-resolution of the result; 1 = off")
    crop_scale: float = Field(3.0, ge=1.2, le=8.0, description="work crop = this x the face box")
    crop_size: int = Field(512, ge=64, le=2048, description="short side of the work crop (multiple of 8)")
    sampler: SamplerName = "Euler a"
    seed: int = Field(-1, ge=-1, le=2**32 - 1)
    batch: int = Field(1, ge=1, le=16, description="seeds seed, seed+1, ...; results ranked by identity score")

    @validator("crop_size")
    def _crop_multiple_of_8(cls, value):  # noqa: N805
        if value % 8:
            raise ValueError(f"crop_size must be a multiple of 8, got {value}")
        return value

    @root_validator(skip_on_failure=True)
    def _one_face_per_identity(cls, values):  # noqa: N805
        order = values.get("face_order")
        if order is not None and (len(order) != len(values["identities"]) or len(set(order)) != len(order)
                                  or min(order) < 0):
            raise ValueError("face_order must give one distinct face index (>= 0) per identity")
        return values


IMAGE_REF = r"^[A-Za-z0-9][A-Za-z0-9_.\- ]{0,127}$"


class _DiffusionStep(StrictModel):
    """Fields every generating workflow step shares."""

    prompt: str = Field("", max_length=2000)
    negative_prompt: str = Field("blurry, lowres, bad anatomy, deformed, watermark, text", max_length=2000)
    steps: int = Field(30, ge=1, le=150)
    cfg_scale: float = Field(7.0, ge=1.0, le=30.0)
    sampler: SamplerName = "Euler a"
    seed: int = Field(-1, ge=-1, le=2**32 - 1)
    samples: int = Field(1, ge=1, le=4, description="images made by this step (seeds seed, seed+1, ...)")
    width: Optional[int] = Field(None, ge=MIN_SIZE, le=MAX_SIZE, description="default: the input's, else 1024/512")
    height: Optional[int] = Field(None, ge=MIN_SIZE, le=MAX_SIZE)
    identity: Optional[IdentityId] = Field(None, description="a trained identity: its LoRA joins the prompt")
    lora_weight: float = Field(0.9, ge=0.0, le=2.0)

    @validator("width", "height")
    def _multiple_of_8(cls, value, field):  # noqa: N805
        if value is not None and value % 8:
            raise ValueError(f"{field.name} must be a multiple of 8, got {value}")
        return value


class Txt2ImgStep(_DiffusionStep):
    op: Literal["txt2img"]


class Img2ImgStep(_DiffusionStep):
    op: Literal["img2img"]
    image: Optional[str] = Field(None, regex=IMAGE_REF, description="default: the previous step's output")
    denoise: float = Field(0.5, gt=0.0, le=1.0)


class PoseTransferStep(_DiffusionStep):
    op: Literal["pose_transfer"]
    pose_image: Optional[str] = Field(None, regex=IMAGE_REF, description="default: the previous step's output")
    controlnet_scale: float = Field(0.6, ge=0.0, le=2.0)


class ImagePromptPoseStep(_DiffusionStep):
    op: Literal["image_prompt_pose"]
    ip_image: Optional[str] = Field(None, regex=IMAGE_REF, description="the look; default: the identity's "
                                    "reference face when `identity` is set, else the previous step's output")
    pose_image: str = Field(..., regex=IMAGE_REF, description="the pose")
    ip_adapter_scale: float = Field(0.6, ge=0.0, le=2.0)
    controlnet_scale: float = Field(0.6, ge=0.0, le=2.0)


class PortraitStep(StrictModel):
    op: Literal["portrait"]
    identities: List[IdentityId] = Field(..., min_items=1, max_items=16)
    template: Optional[str] = Field(None, regex=IMAGE_REF, description="default: the previous step's output")
    options: Dict[str, Union[float, int, bool, str]] = Field(default_factory=dict,
                                                              description="other GenerateParams fields")

    @root_validator(skip_on_failure=True)
    def _valid_generate_params(cls, values):  # noqa: N805
        GenerateParams(identities=values["identities"], **values["options"])  # raises naming the bad field
        return values


class RestoreStep(StrictModel):
    op: Literal["restore"]
    image: Optional[str] = Field(None, regex=IMAGE_REF)
    codeformer_weight: float = Field(0.7, ge=0.0, le=1.0)


class UpscaleStep(StrictModel):
    op: Literal["upscale"]
    image: Optional[str] = Field(None, regex=IMAGE_REF)
    scale: float = Field(2.0, ge=1.0, le=4.0)
    upscaler: Optional[str] = Field(None, max_length=100)


WorkflowStep = Union[Txt2ImgStep, Img2ImgStep, PoseTransferStep, ImagePromptPoseStep, PortraitStep,
                     RestoreStep, UpscaleStep]
STEP_MODELS = {model.__fields__["op"].type_.__args__[0]: model for model in WorkflowStep.__args__}
IMAGE_INPUT_FIELDS = {"img2img": "image", "pose_transfer": "pose_image", "image_prompt_pose": "ip_image",
                      "portrait": "template", "restore": "image", "upscale": "image"}


class WorkflowParams(StrictModel):
    """An ordered list of steps; a step's image input defaults to the previous step's output."""

    steps: List[WorkflowStep] = Field(..., min_items=1, max_items=20)

    @validator("steps", pre=True)
    def _parse_by_op(cls, steps):  # noqa: N805
        """Each step is checked against its own op's model, so errors name the step, the op and the field."""
        if not isinstance(steps, list):
            return steps
        return [_parse_step(index, step) for index, step in enumerate(steps)]

    def image_names(self) -> list[str]:
        """Every named image the steps refer to (the caller must supply them)."""
        names = []
        for step in self.steps:
            for attribute in ("image", "pose_image", "ip_image", "template"):
                value = getattr(step, attribute, None)
                if value and value not in names:
                    names.append(value)
        return names

    def check_inputs(self, available: set[str]) -> None:
        """Raise ValueError naming the step and field when an image input cannot be satisfied."""
        produced = False
        for index, step in enumerate(self.steps):
            field_name = IMAGE_INPUT_FIELDS.get(step.op)
            value = getattr(step, field_name) if field_name else None
            if value is not None and value not in available:
                raise ValueError(f"steps[{index}] ({step.op}): {field_name} {value!r} was not supplied")
            uses_reference_face = step.op == "image_prompt_pose" and step.identity is not None
            if field_name and value is None and not produced and not uses_reference_face:
                raise ValueError(f"steps[{index}] ({step.op}): {field_name} is required, "
                                 "no earlier step makes an image")
            produced = True


def _parse_step(index: int, step):
    if not isinstance(step, dict):
        return step
    model = STEP_MODELS.get(step.get("op"))
    if model is None:
        raise ValueError(f"steps[{index}]: unknown op {step.get('op')!r}; use one of {', '.join(STEP_MODELS)}")
    try:
        return model(**step)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise ValueError(f"steps[{index}] ({step['op']}): {problems}") from None


def params_json_schema() -> dict:
    """JSON schema of every parameter model, for `GET /sdapi/v1/portrait/schema` and the docs."""
    models = (TrainParams, GenerateParams, WorkflowParams)  # what the endpoints accept
    return {model.__name__: model.schema() for model in models}
