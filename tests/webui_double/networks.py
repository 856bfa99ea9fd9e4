"""Double of extensions-builtin/Lora/networks.py: the built-in Lora extension's list of LoRA files.

The real module is imported as `networks` (the extension's folder is on sys.path); its
`list_available_networks()` is what the "refresh" button and POST /sdapi/v1/refresh-loras call. The list is
what the extra-networks cards, the `sd_lora` setting and GET /sdapi/v1/loras show.
"""

from __future__ import annotations

from pathlib import Path

available_networks: dict[str, Path] = {}
available_network_aliases: dict[str, Path] = {}


def list_available_networks() -> None:
    """As the real one: forget the list, create --lora-dir if missing, list its LoRA files by file stem."""
    from modules import shared

    available_networks.clear()
    available_network_aliases.clear()
    folder = Path(shared.cmd_opts.lora_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix in (".pt", ".ckpt", ".safetensors"):
            available_networks[path.stem] = path
            available_network_aliases[path.stem] = path
