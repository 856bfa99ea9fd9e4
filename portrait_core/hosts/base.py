"""The Host protocol: everything generation needs from a diffusion host, and nothing more.

The portrait pipeline never calls diffusers or the WebUI directly; it calls a Host. `DiffusersHost`
runs standalone (and in the tests); `WebUIHost` maps the same calls onto the WebUI's img2img,
ControlNet units, face restoration and upscalers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence, Tuple, runtime_checkable

from PIL import Image

from portrait_core.errors import ControlError, InputImageError

CONTROL_KINDS = ("canny", "openpose", "tile", "color", "ip_adapter", "instant_id")
CONTROL_MODES = ("balanced", "prompt", "control")


@dataclass(frozen=True)
class Control:
    """One ControlNet unit. `image` is raw unless `preprocessed` (then it is the map itself).

    `mode`: "balanced", "prompt" (my prompt is more important) or "control" (ControlNet is more
    important), as the WebUI's ControlNet modes.
    """

    kind: str
    image: Image.Image
    weight: float = 1.0
    start: float = 0.0
    end: float = 1.0
    mode: str = "balanced"
    preprocessed: bool = False

    def __post_init__(self) -> None:
        if self.kind not in CONTROL_KINDS:
            raise ControlError(f"unknown control kind {self.kind!r}; known: {', '.join(CONTROL_KINDS)}")
        if self.mode not in CONTROL_MODES:
            raise ControlError(f"control {self.kind}: unknown mode {self.mode!r}; known: {CONTROL_MODES}")
        if not 0.0 <= self.weight <= 2.0:
            raise ControlError(f"control {self.kind}: weight {self.weight} is outside 0–2")
        if not 0.0 <= self.start <= self.end <= 1.0:
            raise ControlError(f"control {self.kind}: need 0 <= start ({self.start}) <= end ({self.end}) <= 1")
        if not isinstance(self.image, Image.Image):
            raise ControlError(f"control {self.kind}: image must be a PIL image, got {type(self.image).__name__}")


LoraList = Sequence[Tuple[str, float]]


@runtime_checkable
class Host(Protocol):
    """What a diffusion host offers. Sizes are (width, height); seeds are resolved (>= 0) by the caller."""

    def inpaint(self, image: Image.Image, mask: Image.Image, prompt: str, negative: str = "", *,
                controls: Sequence[Control] = (), lora: LoraList = (), steps: int = 20,
                denoise: float = 0.45, cfg: float = 7.0, seed: int = 0, sampler: str = "Euler a",
                size: tuple[int, int] | None = None, mask_blur: int = 4) -> Image.Image:
        """Repaint the white part of `mask` (L mode, same size as `image`); the rest stays as it was."""
        ...

    def txt2img(self, prompt: str, negative: str = "", *, controls: Sequence[Control] = (),
                lora: LoraList = (), steps: int = 20, cfg: float = 7.0, seed: int = 0,
                sampler: str = "Euler a", size: tuple[int, int] = (512, 512)) -> Image.Image: ...

    def restore_faces(self, image: Image.Image, codeformer_weight: float = 0.7) -> Image.Image: ...

    def upscale(self, image: Image.Image, scale: float = 2.0, upscaler: str | None = None) -> Image.Image: ...

    def checkpoints(self) -> list[str]: ...

    def controlnet_models(self) -> list[str]: ...

    def lora_dir(self) -> Path: ...

    def progress(self, step: int, total: int, text: str = "") -> None: ...

    def interrupted(self) -> bool: ...


def floor_to_8(size: tuple[int, int]) -> tuple[int, int]:
    """An image size rounded down to multiples of 8 (what latent diffusion works in)."""
    return (max(8, size[0] // 8 * 8), max(8, size[1] // 8 * 8))


def check_generation_size(size: tuple[int, int]) -> tuple[int, int]:
    """`size` as ints, or InputImageError when it is under 64 px or not a multiple of 8 on a side."""
    width, height = (int(v) for v in size)
    if width % 8 or height % 8 or width < 64 or height < 64:
        raise InputImageError(f"size {width}x{height} must be at least 64x64 and a multiple of 8 on each side")
    return (width, height)


def check_inpaint_inputs(image: Image.Image, mask: Image.Image, size: tuple[int, int] | None, steps: int,
                         denoise: float) -> tuple[Image.Image, tuple[int, int]]:
    """What every host checks before an inpaint: the mask (as L, same size as the image), the work size
    (default: the image's, rounded down to multiples of 8) and that denoise x steps leaves a step to run."""
    from portrait_core.core import imaging

    mask = imaging.check_mask(image, mask)
    size = check_generation_size(size or floor_to_8(image.size))
    if not 0.0 < denoise <= 1.0 or int(steps * denoise) < 1:
        raise InputImageError(f"denoise {denoise} with {steps} steps leaves no step to run; raise denoise or steps")
    return mask, size
