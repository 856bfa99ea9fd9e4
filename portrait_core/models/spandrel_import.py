"""Imports spandrel (and its extra architectures) even where torchvision cannot be imported.

spandrel imports two torchvision functions when it loads its architecture list: `rotate` for LaMa (an
inpainting model Portrait Studio never loads) and `normalize` for RestoreFormer. Inside the WebUI
torchvision is there and spandrel imports as usual. A standalone CPU install often has no working
torchvision (the registry's wheel is a CUDA build that fails beside a CPU torch), so for the duration of
that one import a small stand-in answers those names: `normalize` computed with torch, the rest raising
a clear error if ever called. The stand-in is removed from `sys.modules` right after, so nothing else
ever sees a fake torchvision.
"""

from __future__ import annotations

import enum
import importlib
import importlib.util
import sys
import threading
import types
from contextlib import contextmanager

from portrait_core.errors import ModelUnavailableError
from portrait_core.log import get_logger

log = get_logger("models")

_STAND_IN_NAMES = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
_lock = threading.Lock()


class _InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"


def _normalize(tensor, mean, std, inplace: bool = False):
    import torch

    mean = torch.as_tensor(mean, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
    return tensor.sub_(mean).div_(std) if inplace else (tensor - mean) / std


def _not_available(*_args, **_kwargs):
    raise ModelUnavailableError("this model needs torchvision, which is not importable in this environment")


def _torchvision_works() -> bool:
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        importlib.import_module("torchvision")
    except (ImportError, RuntimeError, OSError) as error:  # a CUDA wheel beside a CPU torch raises RuntimeError
        log.info("torchvision is installed but cannot be imported (%s); spandrel gets a stand-in", error)
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        return False
    return True


@contextmanager
def _torchvision_stand_in():
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.InterpolationMode = _InterpolationMode
    functional.normalize = _normalize
    functional.rotate = _not_available
    transforms = types.ModuleType("torchvision.transforms")
    transforms.functional = functional
    package = types.ModuleType("torchvision")
    package.transforms = transforms
    modules = dict(zip(_STAND_IN_NAMES, (package, transforms, functional), strict=True))
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name, module in modules.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]


def spandrel_registry():
    """A spandrel architecture registry of its own architectures plus spandrel-extra-arches' (CodeFormer
    is among those), built apart from spandrel's global one so the host's stays as it is. Raises
    ModelUnavailableError naming the package to install when either is missing."""
    with _lock:
        for package in ("spandrel", "spandrel_extra_arches"):
            if importlib.util.find_spec(package) is None:
                name = package.replace("_", "-")
                raise ModelUnavailableError(f"face restoration needs the Python package {name}: "
                                            f"pip install --no-deps {name} (see requirements-nodeps.txt)")
        if _torchvision_works():
            spandrel, extra = _import_both()
        else:
            with _torchvision_stand_in():
                spandrel, extra = _import_both()
        registry = spandrel.ArchRegistry()
        registry.add(*spandrel.MAIN_REGISTRY, *extra.EXTRA_REGISTRY)
        return registry


def _import_both():
    return importlib.import_module("spandrel"), importlib.import_module("spandrel_extra_arches")
