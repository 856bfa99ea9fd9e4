"""Double of internal_controlnet/args.py: ControlNetUnit, a pydantic (v1) model.

Real behaviour kept: unknown fields are silently ignored (Config.extra = "ignore") — so a misspelt
field name is lost without a word; enum fields take their string values ("Balanced", "Just Resize")
and refuse ints; `module` must name a known preprocessor (name or label); `model` is not checked
here (a missing model fails later, during generation); weight 0–2; guidance 0–1 with start <= end;
`image` must be a numpy array or a base64 / path string (a PIL image is refused when read).
"""

from __future__ import annotations

from copy import copy
from typing import Annotated, Any, Callable, ClassVar, List, Optional

import numpy as np
from internal_controlnet.enums import ControlMode, HiResFixOption, InputMode, PuLIDMode, ResizeMode
from pydantic import BaseModel, Field, root_validator, validator


def _unimplemented(*args, **kwargs):
    raise NotImplementedError("Not implemented.")


class ControlNetUnit(BaseModel):
    # (allow_reuse on the validators: the double is imported afresh for every started WebUI.)
    class Config:
        arbitrary_types_allowed = True
        extra = "ignore"

    cls_match_module: ClassVar[Callable[[str], bool]] = _unimplemented
    cls_match_model: ClassVar[Callable[[str], bool]] = _unimplemented
    cls_get_preprocessor: ClassVar[Callable[[str], Any]] = _unimplemented

    is_ui: bool = False
    input_mode: InputMode = InputMode.SIMPLE
    batch_images: Optional[Any] = None
    output_dir: str = ""
    loopback: bool = False
    enabled: bool = False
    module: str = "none"
    model: str = "None"
    weight: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    image: Optional[Any] = None
    resize_mode: ResizeMode = ResizeMode.INNER_FIT
    low_vram: bool = False
    processor_res: int = -1
    threshold_a: float = -1
    threshold_b: float = -1
    guidance_start: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    guidance_end: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    pixel_perfect: bool = False
    control_mode: ControlMode = ControlMode.BALANCED
    inpaint_crop_input_image: bool = True
    hr_option: HiResFixOption = HiResFixOption.BOTH
    save_detected_map: bool = True
    advanced_weighting: Optional[List[float]] = None
    effective_region_mask: Optional[Any] = None
    pulid_mode: PuLIDMode = PuLIDMode.FIDELITY
    ipadapter_input: Optional[List[Any]] = None
    mask: Optional[Any] = None

    @validator("module", always=True, pre=True, allow_reuse=True)
    def check_module(cls, value: str) -> str:  # noqa: N805 - pydantic validators take the class
        if not ControlNetUnit.cls_match_module(value):
            raise ValueError(f"module({value}) not found in supported modules.")
        return value

    @validator("model", always=True, pre=True, allow_reuse=True)
    def check_model(cls, value: str) -> str:  # noqa: N805
        if not ControlNetUnit.cls_match_model(value):
            raise ValueError(f"model({value}) not found in supported models.")
        return value

    @validator("resize_mode", always=True, pre=True, allow_reuse=True)
    def check_resize_mode(cls, value) -> ResizeMode:  # noqa: N805
        if isinstance(value, str):
            return ResizeMode(value)
        assert isinstance(value, ResizeMode)
        return value

    @root_validator(allow_reuse=True)
    def guidance_check(cls, values: dict) -> dict:  # noqa: N805
        start, end = values.get("guidance_start"), values.get("guidance_end")
        if start is not None and end is not None and start > end:
            raise ValueError(f"guidance_start({start}) > guidance_end({end})")
        return values

    @property
    def uses_clip(self) -> bool:
        return "ip-adapter" in self.module and "face_id" not in self.module

    @classmethod
    def parse_image(cls, image) -> np.ndarray:
        if isinstance(image, np.ndarray):
            np_image = image
        elif isinstance(image, str):
            raise ValueError("the double does not decode base64 / path images")
        else:
            raise ValueError(f"Unrecognized image format {image}.")
        if np_image.ndim == 2:
            np_image = np.stack([np_image] * 3, axis=2)
        return np_image[:, :, :3].astype(np.uint8)

    def get_input_image(self) -> Optional[np.ndarray]:
        """The unit's own image as RGB, or None (then the img2img input image is used)."""
        if self.image is None:
            return None
        image = self.image["image"] if isinstance(self.image, dict) else self.image
        return self.parse_image(image)

    @classmethod
    def from_dict(cls, values: dict) -> ControlNetUnit:
        values = copy(values)
        for alias, key in {"guidance": "guidance_end", "lowvram": "low_vram", "input_image": "image"}.items():
            if alias in values:
                assert key not in values, f"Conflict of field '{alias}' and '{key}'"
                values[key] = values.pop(alias)
        return ControlNetUnit(**values)

    @staticmethod
    def infotext_fields() -> tuple:
        return ("module", "model", "weight", "resize_mode", "processor_res", "threshold_a", "threshold_b",
                "guidance_start", "guidance_end", "pixel_perfect", "control_mode")

    def serialize(self) -> str:
        def text(value):
            return value.value if hasattr(value, "value") else str(value)

        return ", ".join(f"{' '.join(w.capitalize() for w in field.split('_'))}: {text(getattr(self, field))}"
                         for field in self.infotext_fields())
