"""Fixtures for the face tests: the shared test photos and one embedded analyzer per session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def face_photo(shared_faces_dir):
    """Load a shared photo by file name as an upright RGB array (through the product's decoder)."""
    from portrait_core.prepare.photos import load_photo

    cache: dict[str, np.ndarray] = {}

    def load(name: str) -> np.ndarray:
        if name not in cache:
            cache[name] = load_photo(shared_faces_dir / name).pixels
        return cache[name]

    return load


@pytest.fixture(scope="session")
def insightface_images_dir() -> Path:
    import insightface

    folder = Path(insightface.__file__).parent / "data" / "images"
    if not (folder / "t1.jpg").is_file():
        pytest.skip(f"insightface's sample images are not installed at {folder}")
    return folder


@pytest.fixture(scope="session")
def embedded():
    """One embedded analyzer for the session (its models load once, on first use)."""
    from portrait_core.faces.embedded import EmbeddedFaceAnalyzer

    analyzer = EmbeddedFaceAnalyzer()
    yield analyzer
    analyzer.unload()
