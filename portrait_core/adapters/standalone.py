"""The standalone app: the HTTP API (and the tabs, when Gradio's UI is built) on a FastAPI server, all on one
PortraitServices (one job runner, one DiffusersHost that owns the GPU)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from portrait_core.log import get_logger
from portrait_core.services.runtime import PortraitServices, standalone_services
from portrait_core.services.workspace import Workspace

log = get_logger("app")


@dataclass
class StandaloneApp:
    app: object  # fastapi.FastAPI
    services: PortraitServices

    @property
    def runner(self):
        return self.services.runner


def create_app(*, base_model: Path | None = None, api_auth: str | None = None, with_ui: bool = True,
               workspace: Workspace | None = None, checkpoints_dir: Path | None = None,
               services: PortraitServices | None = None) -> StandaloneApp:
    """A FastAPI app serving /sdapi/v1/portrait/ (and the UI at / when `with_ui`) on DiffusersHost. The host
    and the face models load on first use and then stay loaded for every later request."""
    from fastapi import FastAPI

    from portrait_core import __version__
    from portrait_core.adapters.http.api import ApiContext, mount_api

    services = services or standalone_services(workspace, base_model, checkpoints_dir=checkpoints_dir)
    app = FastAPI(title="Portrait Studio", version=__version__)
    mount_api(app, ApiContext(services=services, api_auth=api_auth))
    if with_ui:
        from portrait_core.adapters import ui

        ui.mount_standalone(app, services)
    app.add_event_handler("shutdown", services.close)
    return StandaloneApp(app, services)


def serve(*, host: str, port: int, base_model: Path | None, api_auth: str | None,
          workspace: Workspace | None = None, checkpoints_dir: Path | None = None) -> int:
    import uvicorn

    standalone = create_app(base_model=base_model, api_auth=api_auth, workspace=workspace,
                            checkpoints_dir=checkpoints_dir)
    print(f"Portrait Studio on http://{host}:{port}/  (API under /sdapi/v1/portrait/, docs at /docs)")
    uvicorn.run(standalone.app, host=host, port=port, log_level="warning")
    return 0
