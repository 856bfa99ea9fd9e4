"""The standalone app: the HTTP API (and the tabs, when Gradio's UI is built) on a FastAPI server, all on one
PortraitServices (one job runner, one DiffusersHost that owns the GPU)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from portrait_core.errors import PortraitError
from portrait_core.log import get_logger
from portrait_core.services.runtime import PortraitServices, standalone_services
from portrait_core.services.workspace import Workspace

log = get_logger("app")


@dataclass
class StandaloneApp:
    app: object  # fastapi.FastAPI
    services: PortraitServices
    blocks: object = None  # the tabs' gr.Blocks, when served
    upload_folder: Path | None = None  # where the tabs' uploads are kept

    @property
    def runner(self):
        return self.services.runner


def create_app(*, base_model: Path | None = None, api_auth: str | None = None, with_ui: bool = True,
               workspace: Workspace | None = None, checkpoints_dir: Path | None = None,
               services: PortraitServices | None = None) -> StandaloneApp:
    """A FastAPI app serving /sdapi/v1/portrait/ (and the UI at / when `with_ui`) on DiffusersHost. With
    `api_auth`, the API and every route of the UI need its login. The host and the face models load on first
    use and then stay loaded for every later request."""
    from fastapi import FastAPI

    from portrait_core import __version__
    from portrait_core.adapters.http.api import ApiContext, credentials_checker, mount_api, parse_api_auth

    services = services or standalone_services(workspace, base_model, checkpoints_dir=checkpoints_dir)
    credentials = parse_api_auth(api_auth)
    app = FastAPI(title="Portrait Studio", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    mount_api(app, ApiContext(services=services, api_auth=api_auth))
    _add_docs(app, credentials)
    app.add_event_handler("shutdown", services.close)
    if not with_ui:
        return StandaloneApp(app, services)
    from portrait_core.adapters import ui

    mounted = ui.mount_standalone(app, services, login=credentials_checker(credentials) if credentials else None)
    return StandaloneApp(app, services, mounted.blocks, mounted.upload_folder)


def _add_docs(app, credentials: dict[str, str]) -> None:
    """/openapi.json and /docs, behind the login when there is one."""
    from fastapi import Depends
    from fastapi.openapi.docs import get_swagger_ui_html

    from portrait_core.adapters.http.api import basic_auth_dependency

    login = [Depends(basic_auth_dependency(credentials))] if credentials else []

    @app.get("/openapi.json", include_in_schema=False, dependencies=login)
    def openapi_schema() -> dict:
        return app.openapi()

    @app.get("/docs", include_in_schema=False, dependencies=login)
    def docs():
        return get_swagger_ui_html(openapi_url="/openapi.json", title="Portrait Studio API")


API_AUTH_VARIABLE = "PORTRAIT_API_AUTH"


class ApiAuthError(PortraitError, ValueError):
    """The login given to `serve` cannot be used; the message says which source and why."""


def resolve_api_auth(flag: str | None, file: Path | None, environ=os.environ) -> str | None:
    """The `user:pass[,user2:pass2]` login of `serve`: from `--api-auth-file` (one entry per line, `#` comments),
    else `--api-auth`, else the PORTRAIT_API_AUTH variable; None for no login. The flag is visible to every
    local user in the process list, so using it logs a warning; the file should be readable by its owner only."""
    if flag and file:
        raise ApiAuthError("give either --api-auth or --api-auth-file, not both")
    if file is not None:
        value, source = _read_auth_file(Path(file)), f"--api-auth-file {file}"
    elif flag:
        log.warning("--api-auth on the command line is visible to every user of this machine in the process "
                    "list; prefer --api-auth-file or the %s variable", API_AUTH_VARIABLE)
        value, source = flag, "--api-auth"
    else:
        value, source = environ.get(API_AUTH_VARIABLE, ""), API_AUTH_VARIABLE
    from portrait_core.adapters.http.api import parse_api_auth

    try:
        parse_api_auth(value)
    except ValueError as error:
        raise ApiAuthError(f"{source}: {error}") from None
    return value or None


def _read_auth_file(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as error:
        raise ApiAuthError(f"--api-auth-file {path}: cannot read it ({error})") from None
    if mode & 0o077:
        log.warning("--api-auth-file %s can be read by other users (mode %o); chmod 600 it", path, mode & 0o777)
    entries = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not entries:
        raise ApiAuthError(f"--api-auth-file {path}: holds no user:password line")
    return ",".join(entries)


def serve(*, host: str, port: int, base_model: Path | None, api_auth: str | None,
          workspace: Workspace | None = None, checkpoints_dir: Path | None = None) -> int:
    import uvicorn

    standalone = create_app(base_model=base_model, api_auth=api_auth, workspace=workspace,
                            checkpoints_dir=checkpoints_dir)
    print(f"Portrait Studio on http://{host}:{port}/  (API under /sdapi/v1/portrait/, docs at /docs)")
    uvicorn.run(standalone.app, host=host, port=port, log_level="warning")
    return 0
