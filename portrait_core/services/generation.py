"""Generate portraits for identities from templates: what the CLI, the UI and the HTTP API call."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from portrait_core.config import settings
from portrait_core.generate.identity import IdentityAssets, load_identity, prefer_trained_face
from portrait_core.generate.pipeline import PortraitGenerator, PortraitResult
from portrait_core.generate.results import infotext
from portrait_core.hosts.base import Host
from portrait_core.params import GenerateParams
from portrait_core.store import identity_paths


class GenerationService:
    """Holds the host and the face analyzer between calls, so a second portrait loads nothing."""

    def __init__(self, host: Host, *, analyzer=None, root: Path | None = None, base_model_name: str = ""):
        if analyzer is None:
            from portrait_core.faces import get_face_analyzer

            analyzer = get_face_analyzer("auto")
        self.generator = PortraitGenerator(host, analyzer)
        self.root = root
        self.base_model_name = base_model_name
        self._identities: dict[tuple, IdentityAssets] = {}

    def identity(self, identity: str) -> IdentityAssets:
        lora_dir = self.generator.host.lora_dir()
        lora = lora_dir / f"{identity}.safetensors"
        key = (identity, lora.stat().st_mtime_ns if lora.is_file() else None)
        if key not in self._identities:
            assets = load_identity(identity, root=self.root, lora_dir=lora_dir)
            folder = identity_paths(identity, self.root).folder
            self._identities[key] = prefer_trained_face(assets, folder, self.generator.analyzer)
        return self._identities[key]

    def generate(self, params: GenerateParams, templates: list[tuple[str, Image.Image]]
                 ) -> list[tuple[PortraitResult, str]]:
        """Every template x seed, each result with its infotext; best identity score first per template."""
        identities = [self.identity(name) for name in params.identities]
        outputs = []
        with self.generator.host.session("portrait studio: generate"):
            for name, template in templates:
                for result in self.generator.generate(template, identities, params, template_name=name):
                    prompt = self.generator.prompt(identities[0], params)
                    outputs.append((result, infotext(result, params, prompt, self.base_model_name)))
        return outputs


def standalone_service(base_model: Path | None = None, *, root: Path | None = None, progress=None):
    """A service on DiffusersHost: the given checkpoint, or the tiny local model."""
    from portrait_core.hosts.diffusers_host import DiffusersHost
    from portrait_core.services.training import resolve_base_model

    model = resolve_base_model(base_model)
    host = DiffusersHost(model, lora_dir=settings().lora_folder, progress_callback=progress)
    return GenerationService(host, root=root, base_model_name=model.name)
