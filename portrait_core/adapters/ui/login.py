"""The tabs behind the same login as the API (`serve --api-auth`).

Two locks on one door. Gradio's own login (`blocks.auth`) shows the login form at `/` and sets its session
cookie. `LoginGate`, wrapped around the mounted Gradio app, then refuses every request without a valid
session cookie with 401, whatever the route: Gradio 3.41 itself leaves some (e.g. `/reset`,
`/startup-events`) open. Only what the login form needs to appear is public. A script driving the tabs
signs in as the page does (`POST /login` with `username` and `password` form fields) and keeps the cookie.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from portrait_core.log import get_logger

log = get_logger("ui")
Check = Callable[[str, str], bool]
# The login page and what it loads before anyone has signed in.
PUBLIC_PATHS = frozenset({"/", "/login", "/login/", "/favicon.ico", "/theme.css", "/robots.txt"})
PUBLIC_PREFIXES = ("/assets/", "/static/")
SESSION_COOKIES = ("access-token", "access-token-unsecure")


class LoginGate:
    """ASGI middleware in front of a Gradio app: 401 (a closed socket for websockets) unless signed in."""

    def __init__(self, gradio_app):
        self.gradio_app = gradio_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and not self._allowed(scope):
            log.warning("refused %s %s: not signed in", scope.get("method", "WEBSOCKET"), scope.get("path"))
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            response = JSONResponse({"detail": "Not authenticated: sign in on the page, or send HTTP Basic "
                                               "credentials"}, status_code=401,
                                    headers={"WWW-Authenticate": 'Basic realm="Portrait Studio"'})
            await response(scope, receive, send)
            return
        await self.gradio_app(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        path = _path_in_app(scope)
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            return True
        cookies = HTTPConnection(scope).cookies
        tokens = getattr(self.gradio_app, "tokens", {})
        return any(cookies.get(name) in tokens for name in SESSION_COOKIES)


def _path_in_app(scope: Scope) -> str:
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return (path[len(root):] if root and path.startswith(root) else path) or "/"


def put_behind_login(app, gradio_app) -> None:
    """Wrap the Mount of `gradio_app` on `app` in a LoginGate (after `gr.mount_gradio_app`)."""
    for route in app.routes:
        if getattr(route, "app", None) is gradio_app:
            route.app = LoginGate(gradio_app)
            return
    raise RuntimeError("the Gradio app is not mounted on this app")
