"""The standalone app: the HTTP API (and the tabs, when Gradio's UI is built) on a FastAPI server."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from portrait_core.config import settings
from portrait_core.jobs import JobRunner
from portrait_core.log import get_logger

log = get_logger("app")


@dataclass
class StandaloneApp:
    app: object  # fastapi.FastAPI
    runner: JobRunner


def create_app(*, base_model: Path | None = None, api_auth: str | None = None, with_ui: bool = True,
               checkpoint_dirs: tuple[Path, ...] = ()) -> StandaloneApp:
    """A FastAPI app serving /sdapi/v1/portrait/ (and the UI at / when `with_ui`) on DiffusersHost."""
    from fastapi import FastAPI

    from portrait_core import __version__
    from portrait_core.adapters.http.api import ApiContext, mount_api

    runner = JobRunner(settings().jobs_dir)
    services: dict[str, object] = {}

    def generation():
        # Built on first use: the base model and face models then stay loaded for every later request.
        if "service" not in services:
            from portrait_core.services.generation import standalone_service

            services["service"] = standalone_service(base_model)
        return services["service"]

    app = FastAPI(title="Portrait Studio", version=__version__)
    mount_api(app, ApiContext(runner=runner, api_auth=api_auth, generation=generation,
                              checkpoint_dirs=checkpoint_dirs))
    if with_ui:
        _mount_ui(app, runner, generation, base_model)
    app.add_event_handler("shutdown", runner.close)
    return StandaloneApp(app, runner)


def _mount_ui(app, runner: JobRunner, generation, base_model: Path | None) -> None:
    from portrait_core.adapters import ui

    # The dropdown offers the served checkpoint; empty means the tiny local model (the page says so).
    choices = [str(base_model)] if base_model else []
    ui.mount_standalone(app, runner=runner, generation=generation, checkpoints=lambda: choices,
                        default_checkpoint=(lambda: choices[0]) if choices else None)


def serve(*, host: str, port: int, base_model: Path | None, api_auth: str | None) -> int:
    import uvicorn

    standalone = create_app(base_model=base_model, api_auth=api_auth)
    print(f"Portrait Studio on http://{host}:{port}/  (API under /sdapi/v1/portrait/, docs at /docs)")
    uvicorn.run(standalone.app, host=host, port=port, log_level="warning")
    return 0
