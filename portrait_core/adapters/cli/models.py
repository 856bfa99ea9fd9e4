"""`python -m portrait_core models [--check]`: every model file the product can use, whether it is on this
machine, its size and where it comes from; `--check` also verifies each present file's SHA-256."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from portrait_core.errors import ModelUnavailableError
from portrait_core.models.registry import ModelRegistry, default_registry


def add_models_parser(sub) -> None:
    models = sub.add_parser("models", help="list the model files Portrait Studio can use and whether they are here")
    models.add_argument("--check", action="store_true", help="verify the SHA-256 of every file found (slow)")
    models.add_argument("--models-dir", type=Path, default=None,
                        help="models folder to look in (default: PORTRAIT_MODELS_DIR, else <home>/models)")


def run_models_command(args: argparse.Namespace, out: TextIO = sys.stdout,
                       registry: ModelRegistry | None = None) -> int:
    """Prints one block per model; returns 1 when `--check` found a file that does not match its digest."""
    registry = registry or default_registry()
    if args.models_dir is not None:
        registry = ModelRegistry(registry.files(), models_dir=args.models_dir, extra_dirs=registry.search_dirs()[1:])
    out.write(f"models folder: {registry.models_dir}\n")
    mismatches = 0
    for name in registry.names():
        model = registry.get(name)
        path = registry.find(name)
        status = "present" if path is not None else "missing"
        if path is not None and args.check:
            status = _check(registry, name, path)
            mismatches += status.startswith("MISMATCH")
        size = _megabytes(path.stat().st_size if path is not None else model.size)
        out.write(f"{name}  [{model.kind or 'model'}]  {status}  {size}\n"
                  f"    {model.description}\n"
                  f"    at:     {path or registry.expected_path(name)}\n"
                  f"    source: {model.source}\n")
    return 1 if mismatches else 0


def _check(registry: ModelRegistry, name: str, path: Path) -> str:
    if registry.get(name).sha256 is None:
        return "present (no published SHA-256 to check against)"
    try:
        registry.verify(name, path)
    except ModelUnavailableError as error:
        return f"MISMATCH: {error}"
    return "present, SHA-256 verified"


def _megabytes(size: int | None) -> str:
    return "size unknown" if size is None else f"{size / 1e6:.1f} MB"
