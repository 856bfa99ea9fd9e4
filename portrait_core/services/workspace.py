"""Where one Portrait Studio home keeps everything: a given home holds identities, LoRAs, jobs and results.

Every service reads its paths from the Workspace it was given, never from process-wide settings, so two
homes (two `--root` folders, or a test's private folder) never touch each other's files. Inside the WebUI
the LoRAs go to the WebUI's LoRA folder (`--lora-dir`, default `models/Lora`), where its Lora extension
lists them; everything else stays under the home.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from portrait_core.config import Settings, settings
from portrait_core.store import IdentityPaths, identity_paths

LORA_SUFFIX = ".safetensors"


@dataclass(frozen=True)
class Workspace:
    home: Path
    lora_override: Path | None = None  # the WebUI's LoRA folder; None: beside the identity folders
    identities_override: Path | None = None  # PORTRAIT_HOME's identities moved elsewhere; None: home/identities

    @classmethod
    def at(cls, home: Path | str, *, lora_dir: Path | str | None = None) -> Workspace:
        """The workspace of the home folder `home` (what `--root DIR` names)."""
        return cls(Path(home).expanduser(), Path(lora_dir).expanduser() if lora_dir else None)

    @classmethod
    def from_settings(cls, current: Settings | None = None) -> Workspace:
        """The configured home (PORTRAIT_HOME, default ~/.portrait-studio) and LoRA folder."""
        current = current or settings()
        moved = current.identities_dir if current.identities_dir != current.home / "identities" else None
        return cls(current.home, current.lora_dir, moved)

    @property
    def identities(self) -> Path:
        return self.identities_override or self.home / "identities"

    @property
    def loras(self) -> Path:
        return self.lora_override or self.identities

    @property
    def jobs(self) -> Path:
        return self.home / "jobs"

    @property
    def generations(self) -> Path:
        return self.home / "generations"

    @property
    def workflows(self) -> Path:
        return self.home / "workflows"

    def identity(self, identity: str) -> IdentityPaths:
        """The (validated) identity's folder layout; IdentityError for an id that is not safe."""
        return identity_paths(identity, self.identities)

    def lora_file(self, identity: str) -> Path:
        return self.loras / f"{self.identity(identity).id}{LORA_SUFFIX}"
