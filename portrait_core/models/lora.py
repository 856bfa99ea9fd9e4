"""Kohya-format LoRA files: read, validate and merge them into a diffusers model's weights.

A kohya file holds, per adapted layer `<prefix>`, `<prefix>.lora_down.weight` (rank x in),
`<prefix>.lora_up.weight` (out x rank) and `<prefix>.alpha`; prefixes start with `lora_unet_`,
`lora_te_` (SD1.5) or `lora_te1_`/`lora_te2_` (SDXL), followed by the layer's module path with
dots written as underscores. Applying one adds `weight * alpha / rank * up @ down` to the layer.

`LoraPatcher` keeps the untouched originals of every layer it changes, so switching LoRA sets
(or weights) restores the base weights exactly before the new set is merged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from portrait_core.errors import LoraFileError
from portrait_core.log import get_logger

log = get_logger("lora")

PREFIX_TO_COMPONENT = {"lora_unet_": "unet", "lora_te_": "text_encoder", "lora_te1_": "text_encoder",
                       "lora_te2_": "text_encoder_2"}
MAX_CACHED_FILES = 4  # parsed LoRA files kept in memory; a portrait run reuses the same few
_SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha")


@dataclass
class LoraLayer:
    down: object  # torch.Tensor, rank x in (x kh x kw for convolutions)
    up: object  # torch.Tensor, out x rank (x 1 x 1)
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    def delta(self, target_shape) -> object:
        """The weight change `alpha / rank * up @ down`, shaped like the target layer's weight."""
        down = self.down.float().flatten(1)
        up = self.up.float().flatten(1)
        return ((up @ down) * (self.alpha / self.rank)).reshape(target_shape)


def read_lora_file(path: Path) -> dict[str, LoraLayer]:
    """Layers of a kohya LoRA file, keyed by prefix; raise LoraFileError naming the file if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise LoraFileError(f"LoRA file not found: {path}")
    tensors = _load_safetensors(path)
    grouped: dict[str, dict[str, object]] = {}
    for key, tensor in tensors.items():
        suffix = next((s for s in _SUFFIXES if key.endswith(s)), None)
        if suffix is None:
            raise LoraFileError(f"{path.name} is not a kohya LoRA: unexpected key {key!r}")
        grouped.setdefault(key[: -len(suffix)], {})[suffix] = tensor
    if not grouped:
        raise LoraFileError(f"{path.name} is not a LoRA: it holds no lora_down/lora_up weights")
    return {prefix: _layer(path, prefix, parts) for prefix, parts in grouped.items()}


def _load_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if path.suffix.lower() != ".safetensors":
        raise LoraFileError(f"{path.name}: only .safetensors LoRA files are read (pickles can run code)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise LoraFileError(f"{path.name} is not a readable safetensors file: {error}") from error


def _layer(path: Path, prefix: str, parts: dict) -> LoraLayer:
    if ".lora_down.weight" not in parts or ".lora_up.weight" not in parts:
        raise LoraFileError(f"{path.name}: layer {prefix} lacks its lora_down or lora_up weight")
    down, up = parts[".lora_down.weight"], parts[".lora_up.weight"]
    if down.shape[0] != up.shape[1]:
        raise LoraFileError(f"{path.name}: layer {prefix} has down rank {down.shape[0]} but up rank {up.shape[1]}")
    alpha = float(parts[".alpha"].item()) if ".alpha" in parts else float(down.shape[0])
    return LoraLayer(down=down, up=up, alpha=alpha)


def module_index(components: dict[str, object]) -> dict[str, object]:
    """Map every kohya prefix this model can take to its layer (Linear or Conv2d).

    SD1.5 text-encoder layers are `lora_te_`; with a second text encoder (SDXL) they are
    `lora_te1_` and `lora_te2_`, as kohya writes them.
    """
    import torch

    is_sdxl = components.get("text_encoder_2") is not None
    skip = {"lora_te_"} if is_sdxl else {"lora_te1_", "lora_te2_"}
    index: dict[str, object] = {}
    for lora_prefix, component_name in PREFIX_TO_COMPONENT.items():
        model = components.get(component_name)
        if model is None or lora_prefix in skip:
            continue
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
                index[lora_prefix + name.replace(".", "_")] = module
    return index


class LoraPatcher:
    """Merges LoRA sets into a model in place, and restores the base weights exactly when they change."""

    def __init__(self, components: dict[str, object]):
        self._index = module_index(components)
        self._originals: dict[int, tuple[object, object]] = {}  # id(layer) -> (layer, base weight)
        self._applied: tuple = ()
        self._file_cache: dict[tuple, dict[str, LoraLayer]] = {}

    @property
    def applied(self) -> tuple:
        return self._applied

    def apply(self, loras: list[tuple[Path, float]]) -> None:
        """Make exactly `loras` (path, weight) active; a repeat of the current set costs nothing."""
        wanted = tuple((Path(path), float(weight)) for path, weight in loras if float(weight) != 0.0)
        layers = [(self._read(path), weight, path) for path, weight in wanted]  # validate before touching
        if wanted == self._applied:
            return
        self.restore()
        for file_layers, weight, path in layers:
            self._merge(file_layers, weight, path)
        self._applied = wanted

    def restore(self) -> None:
        import torch

        with torch.no_grad():
            for module, original in self._originals.values():
                module.weight.copy_(original)
        self._originals.clear()
        self._applied = ()

    def _read(self, path: Path) -> dict[str, LoraLayer]:
        stat = path.stat() if path.is_file() else None
        key = (str(path), stat.st_mtime_ns if stat else None, stat.st_size if stat else None)
        if key not in self._file_cache:
            layers = read_lora_file(path)
            unknown = [prefix for prefix in layers if prefix not in self._index]
            if unknown:
                raise LoraFileError(
                    f"{path.name} does not fit this base model: {len(unknown)} of {len(layers)} layers "
                    f"match no layer (e.g. {', '.join(unknown[:3])}); was it trained for another model family?")
            self._check_shapes(path, layers)
            if len(self._file_cache) >= MAX_CACHED_FILES:
                self._file_cache.pop(next(iter(self._file_cache)))
            self._file_cache[key] = layers
        return self._file_cache[key]

    def _check_shapes(self, path: Path, layers: dict[str, LoraLayer]) -> None:
        for prefix, layer in layers.items():
            target = self._index[prefix].weight
            fits = layer.up.shape[0] == target.shape[0] and layer.down[0].numel() == target[0].numel()
            if not fits:
                raise LoraFileError(f"{path.name}: layer {prefix} has up {tuple(layer.up.shape)} and down "
                                    f"{tuple(layer.down.shape)}, which do not fit the model's {tuple(target.shape)}")

    def _merge(self, layers: dict[str, LoraLayer], weight: float, path: Path) -> None:
        import torch

        with torch.no_grad():
            for prefix, layer in layers.items():
                module = self._index[prefix]
                target = module.weight
                if id(module) not in self._originals:
                    self._originals[id(module)] = (module, target.detach().clone())
                target.add_(layer.delta(target.shape).to(target.dtype) * weight)
        log.debug("merged %d layers of %s at weight %.2f", len(layers), path.name, weight)


def write_lora_file(path: Path, layers: dict[str, LoraLayer], metadata: dict[str, str] | None = None) -> Path:
    """Write layers as a kohya LoRA file, atomically: a failure leaves any previous file untouched."""
    import torch
    from safetensors.torch import save

    from portrait_core.store import atomic_write_bytes

    tensors = {}
    for prefix, layer in layers.items():
        tensors[f"{prefix}.lora_down.weight"] = layer.down.detach().contiguous()
        tensors[f"{prefix}.lora_up.weight"] = layer.up.detach().contiguous()
        tensors[f"{prefix}.alpha"] = torch.tensor(float(layer.alpha))
    data = save(tensors, metadata={key: str(value) for key, value in (metadata or {}).items()})
    return atomic_write_bytes(Path(path), data)
