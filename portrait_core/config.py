"""Where Portrait Studio keeps models, identities and caches, and whether it may download.

Standalone, the settings come from environment variables; inside the WebUI the extension's
script calls `configure()` with the values of the `--portrait-*` command-line flags.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

ENV_HOME = "PORTRAIT_HOME"
ENV_MODELS_DIR = "PORTRAIT_MODELS_DIR"
ENV_OFFLINE = "PORTRAIT_OFFLINE"
ENV_CACHE_DIR = "PORTRAIT_CACHE_DIR"

_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Settings:
    home: Path
    models_dir: Path
    identities_dir: Path
    cache_dir: Path
    offline: bool
    lora_dir: Path | None = None  # the WebUI's --lora-dir; standalone, LoRAs live beside the identities

    @property
    def lora_folder(self) -> Path:
        return self.lora_dir or self.identities_dir

    @property
    def jobs_dir(self) -> Path:
        return self.home / "jobs"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        home = Path(env.get(ENV_HOME) or Path.home() / ".portrait-studio").expanduser()
        models = Path(env.get(ENV_MODELS_DIR) or home / "models").expanduser()
        cache = Path(env.get(ENV_CACHE_DIR) or home / "cache").expanduser()
        offline = env.get(ENV_OFFLINE, "").strip().lower() in _TRUE
        return cls(home=home, models_dir=models, identities_dir=home / "identities",
                   cache_dir=cache, offline=offline)


_current: Settings | None = None


def settings() -> Settings:
    """The settings in force: those given to `configure()`, else read from the environment."""
    global _current  # noqa: PLW0603 - one process-wide configuration, set once by the host
    if _current is None:
        _current = Settings.from_env()
    return _current


def configure(**changes) -> Settings:
    """Override some settings (e.g. `models_dir=` from `--portrait-models-dir`); returns the result."""
    global _current  # noqa: PLW0603
    base = settings()
    for key in ("home", "models_dir", "identities_dir", "cache_dir", "lora_dir"):
        if changes.get(key) is not None:
            changes[key] = Path(changes[key]).expanduser()
    _current = replace(base, **{k: v for k, v in changes.items() if v is not None})
    return _current


def reset() -> None:
    """Forget overrides (tests use this to start from the environment again)."""
    global _current  # noqa: PLW0603
    _current = None
