"""Shared fixtures: a private Portrait Studio home per test session, offline, and the tiny models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"

# Nothing in the fast tier may reach a model hub; set before transformers/diffusers are imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pytest_plugins = ["tests.live_page"]  # the `browser` fixture (headless Chromium)


@pytest.fixture(scope="session", autouse=True)
def portrait_home(tmp_path_factory) -> Path:
    """Point PORTRAIT_HOME at a private folder so tests never touch the user's ~/.portrait-studio."""
    from portrait_core import config

    home = tmp_path_factory.mktemp("portrait-home")
    os.environ[config.ENV_HOME] = str(home)
    os.environ.pop(config.ENV_MODELS_DIR, None)
    os.environ.pop(config.ENV_CACHE_DIR, None)
    config.reset()
    return home


@pytest.fixture(scope="session")
def tiny_cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="session")
def tiny_sd15(tiny_cache_dir) -> Path:
    from portrait_core.models.tiny import ensure_tiny_sd15

    return ensure_tiny_sd15(seed=0, cache_dir=tiny_cache_dir)


@pytest.fixture(scope="session")
def tiny_sd15_file(tiny_cache_dir, tiny_sd15) -> Path:
    """The tiny SD1.5 model as one .safetensors file, the form the WebUI lists in models/Stable-diffusion."""
    from portrait_core.models.export import export_single_file

    return export_single_file(tiny_sd15, tiny_cache_dir / "exports" / "tiny-sd15.safetensors")


@pytest.fixture(scope="session")
def tiny_sdxl(tiny_cache_dir) -> Path:
    from portrait_core.models.tiny import ensure_tiny_sdxl

    return ensure_tiny_sdxl(seed=0, cache_dir=tiny_cache_dir)


@pytest.fixture(scope="session")
def astronaut():
    """A real frontal portrait that ships with scikit-image (public domain NASA photo)."""
    from PIL import Image
    from skimage import data

    return Image.fromarray(data.astronaut())


@pytest.fixture(scope="session")
def shared_faces_dir() -> Path:
    """The shared real test photos (`<repo>/../shared/data/faces`; CI clones shared/ beside the repo)."""
    folder = (SHARED_DIR / "data" / "faces").resolve()
    if not (folder / "obama.jpg").is_file():
        pytest.skip(f"shared test photos not found at {folder} (clone the shared/ folder beside the repo)")
    return folder


@pytest.fixture(scope="session")
def prepared_obama(tmp_path_factory, shared_faces_dir) -> Path:
    """An identities root holding 'obama', prepared from the five shared Obama photos."""
    import shutil

    from portrait_core.prepare.preprocess import preprocess_folder

    photos = tmp_path_factory.mktemp("obama-photos")
    for path in sorted(shared_faces_dir.glob("obama*.jpg")):
        shutil.copy(path, photos / path.name)
    root = tmp_path_factory.mktemp("identities")
    preprocess_folder(photos, "obama", root=root)
    return root


@pytest.fixture
def lora_dir(tmp_path):
    """The settings' LoRA folder pointed at a fresh folder for one test (trainings write there)."""
    from portrait_core import config

    folder = tmp_path / "Lora"
    config.configure(lora_dir=folder)
    yield folder
    config.reset()


@pytest.fixture
def services_at(tmp_path, tiny_sd15):
    """Build PortraitServices on a DiffusersHost (default: the tiny model) in a private home; closed afterwards.

    `services_at(identities, lora_dir=..., runner=..., home=...)`: `identities` is an identities folder to use
    instead of `<home>/identities` (e.g. the session's prepared_obama), `lora_dir` the LoRA folder (default:
    beside the identities), `runner` a JobRunner to share (default: one in `<home>/jobs`)."""
    from portrait_core.services.runtime import standalone_services
    from portrait_core.services.workspace import Workspace

    made = []

    def build(identities=None, *, lora_dir=None, runner=None, home=None, base_model=None, **options):
        workspace = Workspace(Path(home or tmp_path / "home"), lora_dir, identities)
        services = standalone_services(workspace, base_model or tiny_sd15, runner=runner, **options)
        made.append(services)
        return services

    yield build
    for services in made:
        services.close()


@pytest.fixture(scope="module")
def obama_services(tiny_sd15, prepared_obama, tmp_path_factory):
    """Services on a DiffusersHost serving the tiny model, with the prepared 'obama' and a random LoRA that
    fits the model (one set per test module: the host stays loaded across its tests)."""
    from portrait_core.hosts.diffusers_host import DiffusersHost
    from portrait_core.models.checkpoints.loading import load_components
    from tests.lora_factory import random_lora_for
    from tests.service_factory import services_on

    lora_folder = tmp_path_factory.mktemp("Lora")
    parts = load_components(tiny_sd15)
    random_lora_for({"unet": parts.unet, "text_encoder": parts.text_encoder}, lora_folder / "obama.safetensors")
    services = services_on(DiffusersHost(tiny_sd15, lora_dir=lora_folder), identities=prepared_obama,
                           home=tmp_path_factory.mktemp("home"))
    yield services
    services.close()


@pytest.fixture
def runner(tmp_path):
    """A job runner of its own for one test, closed afterwards."""
    from portrait_core.jobs import JobRunner

    jobs = JobRunner(tmp_path / "jobs")
    yield jobs
    jobs.close()


@pytest.fixture
def webui_state_restored():
    """Starting the WebUI double imports scripts/portrait_studio.py, which configures process-wide state
    (portrait_core's settings, the `portrait` logger); give the next test what it had."""
    import dataclasses
    import logging

    from portrait_core import config

    settings = config.settings()
    logger = logging.getLogger("portrait")
    saved_logger = (logger.level, list(logger.handlers), logger.propagate)
    yield
    config.configure(**dataclasses.asdict(settings))
    logger.setLevel(saved_logger[0])
    logger.handlers[:] = saved_logger[1]
    logger.propagate = saved_logger[2]
