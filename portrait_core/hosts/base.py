"""The Host protocol: everything generation needs from a diffusion host, and nothing more.

The portrait pipeline never calls diffusers or the WebUI directly; it calls a Host. `DiffusersHost`
runs standalone (and in the tests); `WebUIHost` maps the same calls onto the WebUI's img2img,
ControlNet units, face restoration and upscalers.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence, Tuple, runtime_checkable

from PIL import Image

from portrait_core.errors import CheckpointError, ControlError, InputImageError

CONTROL_KINDS = ("canny", "openpose", "tile", "color", "ip_adapter")
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


@dataclass(frozen=True)
class CheckpointRef:
    """A checkpoint as a host knows it: the name users see, its file (when on this machine), its model
    family ("sd15" / "sdxl") and the WebUI's short hash (first 10 hex of its SHA-256) when known."""

    name: str
    path: Path | None
    family: str
    short_hash: str | None = None


class HostSession:
    """One caller's turn on the GPU (see `Host.session`). `interrupt()` stops this turn only: once the
    session has ended, or before it began, it does nothing (a cancelled background job must never stop
    somebody else's generation)."""

    def __init__(self, job: str, interrupt: Callable[[], None]):
        self.job = job
        self._interrupt = interrupt
        self._active = False
        self._guard = threading.Lock()

    @property
    def active(self) -> bool:
        return self._active

    def interrupt(self) -> bool:
        """Interrupt the host if this session is the one running now; True when it was."""
        with self._guard:
            if self._active:
                self._interrupt()
            return self._active

    def _set_active(self, active: bool) -> None:
        with self._guard:
            self._active = active


class SessionLock:
    """The GPU lock a standalone host owns: reentrant within a thread, one session handle per turn.

    `turn(job, on_start)` yields the HostSession; `on_start()` runs when a thread's outermost session
    begins (a host clears its interrupt flag there, so an Interrupt aimed at an earlier turn cannot
    leak into this one, and one aimed at this turn stops all its remaining calls)."""

    def __init__(self, interrupt: Callable[[], None]):
        self._lock = threading.RLock()
        self._interrupt = interrupt
        self._local = threading.local()

    @contextmanager
    def turn(self, job: str, on_start: Callable[[], None] = lambda: None) -> Iterator[HostSession]:
        current = getattr(self._local, "session", None)
        if current is not None:  # nested: the thread's outer session goes on
            yield current
            return
        with self._lock:
            session = HostSession(job, self._interrupt)
            on_start()
            session._set_active(True)
            self._local.session = session
            try:
                yield session
            finally:
                self._local.session = None
                session._set_active(False)


@runtime_checkable
class Host(Protocol):
    """What a diffusion host offers. Sizes are (width, height); seeds are resolved (>= 0) by the caller.

    The host OWNS the GPU: every call takes the host's own lock, and `session(job)` holds it across
    several calls (both passes of a portrait, a whole workflow) so nothing else runs in between.
    Callers (HTTP routes, tabs, jobs, workflows) never pick a lock themselves."""

    def session(self, job: str = "portrait studio") -> AbstractContextManager[HostSession]:
        """Hold the GPU across several calls; nests within one thread."""
        ...

    def interrupt(self) -> None:
        """Stop the running call after its current step (any thread; what an Interrupt button does)."""
        ...

    def samplers(self) -> list[str]:
        """The sampler names this host accepts (the WebUI's own list inside the WebUI)."""
        ...

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

    def checkpoint_file(self, name: str) -> Path:
        """The file of a checkpoint named as `checkpoints()` lists it; CheckpointError naming it otherwise."""
        ...

    def current_checkpoint(self) -> CheckpointRef | None:
        """The checkpoint this host renders with now (None: none is loaded or selected)."""
        ...

    def controlnet_models(self) -> list[str]: ...

    def lora_dir(self) -> Path: ...

    def refresh_loras(self) -> None:
        """Make a LoRA file just written in `lora_dir()` known to the host's own lists (the WebUI's LoRA
        list and cards); a host that looks LoRAs up on disk at every call does nothing."""
        ...

    def progress(self, step: int, total: int, text: str = "") -> None: ...

    def interrupted(self) -> bool: ...


_WEBUI_TITLE_HASH = re.compile(r"\s*\[[0-9a-fA-F]{8,10}\]$")  # "v1-5.safetensors [6ce0161689]" as the WebUI lists it


def find_checkpoint(name: str, folders: Sequence[Path]) -> Path:
    """A checkpoint named by a client inside one of `folders`: a file or diffusers folder name, relative, with
    or without `.safetensors` or the WebUI's ' [hash]'. A path, '..', a drive or an unknown name is a
    CheckpointError naming it (a client never names a server path)."""
    cleaned = _WEBUI_TITLE_HASH.sub("", str(name).strip())
    parts = re.split(r"[\\/]", cleaned)
    if cleaned.startswith(("/", "\\", "~")) or ":" in cleaned or any(p in ("", ".", "..") for p in parts):
        raise CheckpointError(f"{name!r} is not a checkpoint name (give the name, not a path)")
    # No '..', root or drive can appear in `parts`, so a candidate stays inside its folder (a symbolic link
    # placed there by the server's owner, e.g. to another drive, is followed: that is their choice).
    for folder in map(Path, folders):
        for candidate in (folder.joinpath(*parts), folder.joinpath(*parts[:-1], parts[-1] + ".safetensors")):
            if candidate.exists():
                return candidate
    raise CheckpointError(f"no checkpoint named {name!r} on this server")


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
