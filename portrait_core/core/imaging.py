"""Pure image functions: control maps and compositing. Arrays or PIL images in, out; no I/O."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from portrait_core.errors import InputImageError


def canny_map(image: Image.Image, low: int = 100, high: int = 200) -> Image.Image:
    """White edges on black, as the WebUI's `canny` preprocessor draws them (same thresholds)."""
    import cv2

    gray = np.asarray(image.convert("L"))
    edges = cv2.Canny(gray, low, high)
    return Image.fromarray(edges).convert("RGB")


def color_grid_map(image: Image.Image, cell: int = 64) -> Image.Image:
    """Average colour per `cell`-pixel square, blown back up: the colour control's input.

    Like the T2I color-grid preprocessor: shrink by `cell` with area averaging, then enlarge
    with nearest-neighbour so each square is one flat colour.
    """
    if cell < 1:
        raise InputImageError(f"color grid cell must be at least 1 px, got {cell}")
    rgb = image.convert("RGB")
    small = rgb.resize((max(1, rgb.width // cell), max(1, rgb.height // cell)), Image.BOX)
    return small.resize(rgb.size, Image.NEAREST)


def tile_map(image: Image.Image, blur_radius: float = 0.0) -> Image.Image:
    """The tile control's input: the image itself, optionally softened (tile_resample)."""
    rgb = image.convert("RGB")
    return rgb.filter(ImageFilter.GaussianBlur(blur_radius)) if blur_radius > 0 else rgb


def check_mask(image: Image.Image, mask: Image.Image, name: str = "mask") -> Image.Image:
    """Return `mask` as an L image, or raise naming the argument when its size differs from the image's."""
    if mask.size != image.size:
        raise InputImageError(f"{name} is {mask.size[0]}x{mask.size[1]} but the image is "
                              f"{image.size[0]}x{image.size[1]}; they must match")
    return mask.convert("L")


def feathered_composite(original: Image.Image, generated: Image.Image, mask: Image.Image,
                        blur: int = 4) -> Image.Image:
    """Generated pixels where the mask is white, original ones where it is black, a soft seam between.

    The feather only grows inward-outward around the mask edge; pixels further than `blur`
    from the mask stay exactly as in `original`.
    """
    check_mask(original, mask)
    if generated.size != original.size:
        generated = generated.resize(original.size, Image.LANCZOS)
    soft = mask.convert("L")
    if blur > 0:
        soft = soft.filter(ImageFilter.GaussianBlur(blur / 2))
    return Image.composite(generated.convert("RGB"), original.convert("RGB"), soft)


def unsharp_upscale(image: Image.Image, scale: float) -> Image.Image:
    """Lanczos enlargement plus a light unsharp mask: the upscaler when no SR model is present."""
    if scale <= 0:
        raise InputImageError(f"upscale factor must be positive, got {scale}")
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    enlarged = image.convert("RGB").resize(size, Image.LANCZOS)
    return enlarged.filter(ImageFilter.UnsharpMask(radius=2, percent=60, threshold=2)) if scale > 1 else enlarged
