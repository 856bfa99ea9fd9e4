"""Builds PortraitServices on a host a test already has (test helper, not a test module)."""

from __future__ import annotations

from pathlib import Path

from portrait_core.jobs import JobRunner
from portrait_core.services.runtime import PortraitServices
from portrait_core.services.workspace import Workspace


def services_on(host, *, identities: Path, home: Path, analyzer=None, runner: JobRunner | None = None,
                in_webui: bool = False) -> PortraitServices:
    """The services every door uses, on `host`, with identities in `identities` and the LoRAs where the
    host looks for them. Close them (`services.close()`) when done."""
    workspace = Workspace(Path(home), Path(host.lora_dir()), Path(identities))
    return PortraitServices.create(workspace, lambda: host, runner=runner or JobRunner(Path(home) / "jobs"),
                                   analyzer=analyzer, in_webui=in_webui)
