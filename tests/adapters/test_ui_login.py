"""`serve --api-auth` puts the tabs behind the same login as the API, and no file input can be made to read a
file the client did not upload. Everything runs on a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import httpx
import pytest
from PIL import Image

from portrait_core.adapters.standalone import create_app
from tests.live_page import served

LOGIN = ("qa", "s3cret:with-colon")
PUBLIC = {"/", "/login", "/login/", "/favicon.ico", "/theme.css", "/robots.txt"}


@pytest.fixture
def app_with_login(services_at, tmp_path):
    standalone = create_app(api_auth=":".join(LOGIN), services=services_at(home=tmp_path / "home"))
    with served(standalone.app) as url:
        yield url, standalone


@pytest.fixture
def open_app(services_at, tmp_path):
    standalone = create_app(services=services_at(home=tmp_path / "home"))
    with served(standalone.app) as url:
        yield url, standalone


def gradio_routes(standalone) -> list[tuple[str, str]]:
    """(method, path) of every route of the mounted Gradio app, path parameters filled in."""
    gradio_app = next(route.app.gradio_app for route in standalone.app.routes if hasattr(route.app, "gradio_app"))
    found = []
    for route in gradio_app.routes:
        path = re.sub(r"\{[^}]+\}", "x", route.path).replace("file=x", "file=/etc/passwd")
        for method in sorted(getattr(route, "methods", None) or {"WEBSOCKET"}):
            found.append((method, path))
    return found


def test_every_gradio_route_refuses_a_client_without_the_login(app_with_login):
    url, standalone = app_with_login
    routes = gradio_routes(standalone)
    assert {"/run/{api_name}", "/upload", "/config", "/queue/join", "/reset"} <= {
        route.path for route in next(r.app.gradio_app for r in standalone.app.routes
                                     if hasattr(r.app, "gradio_app")).routes}
    probed = 0
    with httpx.Client(base_url=url.rstrip("/"), timeout=30) as client:
        for method, path in routes:
            if method == "WEBSOCKET" or path in PUBLIC or path.startswith(("/assets/", "/static/")):
                continue
            answer = client.request(method, path, json={"fn_index": 0, "data": []})
            assert answer.status_code == 401, f"{method} {path} answered {answer.status_code} without the login"
            probed += 1
        page = client.get("/")
    assert probed >= 20
    # The page itself is only the login form: no component of the tabs is in it.
    assert page.status_code == 200 and re.search(r'"auth_required":\s*true', page.text)
    assert "portrait-train-start" not in page.text


def test_the_queue_socket_closes_on_a_client_without_the_login(app_with_login):
    import websockets

    url, _ = app_with_login

    async def join() -> str:
        async with websockets.connect(url.replace("http", "ws") + "queue/join") as socket:
            await socket.send(json.dumps({"fn_index": 0, "session_hash": "probe"}))
            return await socket.recv()

    with pytest.raises(websockets.exceptions.WebSocketException):
        asyncio.run(join())


def test_signing_in_opens_the_tabs_and_a_wrong_password_does_not(app_with_login):
    url, _ = app_with_login
    with httpx.Client(base_url=url.rstrip("/"), timeout=30) as client:
        wrong = client.post("/login", data={"username": LOGIN[0], "password": "nope"})
        assert wrong.status_code == 400 and client.get("/config").status_code == 401
        signed_in = client.post("/login", data={"username": LOGIN[0], "password": LOGIN[1]})
        assert signed_in.status_code == 200
        config = client.get("/config")
    assert config.status_code == 200 and "portrait-train-start" in config.text
    # The API takes the same user name and password, as HTTP Basic.
    assert httpx.get(url + "sdapi/v1/portrait/version", auth=LOGIN).status_code == 200
    assert httpx.get(url + "sdapi/v1/portrait/version").status_code == 401
    assert httpx.get(url + "docs").status_code == 401 and httpx.get(url + "openapi.json").status_code == 401
    assert httpx.get(url + "openapi.json", auth=LOGIN).status_code == 200


# -- file inputs ---------------------------------------------------------------------------------------------

def start_training(client: httpx.Client, standalone, photos_value: list, identity: str) -> dict:
    """POST /run/predict of the Train tab's Start button, as the page sends it, with `photos_value` as the
    photos input's payload."""
    blocks = standalone.blocks
    index, dependency = next((i, d) for i, d in enumerate(blocks.dependencies)
                             if any(getattr(blocks.blocks[t], "elem_id", None) == "portrait-train-start"
                                    for t in d["targets"]) and d["trigger"] == "click")
    data = []
    for key in dependency["inputs"]:
        component = blocks.blocks[key]
        elem_id = getattr(component, "elem_id", None)
        value = component.value if hasattr(component, "value") else None
        data.append(photos_value if elem_id == "portrait-train-photos"
                    else identity if elem_id == "portrait-train-identity" else value)
    answer = client.post("/run/predict", json={"fn_index": index, "data": data, "session_hash": "probe"})
    return {"status": answer.status_code, "text": answer.text}


@pytest.mark.parametrize("named", ["/etc/passwd", "../../../../etc/passwd", "PHOTOS_OF_ANOTHER_IDENTITY"])
def test_a_photo_input_naming_a_server_file_is_refused_and_copies_nothing(open_app, tmp_path, shared_faces_dir,
                                                                           named):
    url, standalone = open_app
    if named == "PHOTOS_OF_ANOTHER_IDENTITY":
        named = str(shared_faces_dir / "obama.jpg")
    before = set(Path(standalone.upload_folder).rglob("*"))
    with httpx.Client(base_url=url.rstrip("/"), timeout=60) as client:
        answer = start_training(client, standalone, [{"name": named, "is_file": True, "data": None}], "attacker")
    assert "was not uploaded from this page" in answer["text"], answer
    assert set(Path(standalone.upload_folder).rglob("*")) == before  # nothing copied
    assert not (tmp_path / "home" / "identities" / "attacker").exists()
    assert not standalone.runner.jobs()


def test_a_photo_uploaded_through_the_page_is_read(open_app, tmp_path):
    url, standalone = open_app
    small = tmp_path / "small-face.png"
    Image.new("RGB", (40, 40), "gray").save(small)
    with httpx.Client(base_url=url.rstrip("/"), timeout=120) as client:
        stored = client.post("/upload", files={"files": (small.name, small.read_bytes(), "image/png")}).json()
        payload = [{"name": stored[0], "orig_name": small.name, "is_file": True, "data": None}]
        answer = start_training(client, standalone, payload, "ana")
    assert Path(stored[0]).is_relative_to(standalone.upload_folder)
    # The photo was read and judged: the report names it and says why it cannot be used.
    assert answer["status"] == 200 and "small-face.png" in answer["text"] and "too small" in answer["text"]


def test_uploads_go_to_a_private_folder_removed_when_the_server_stops(services_at, tmp_path, monkeypatch):
    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)
    standalone = create_app(services=services_at(home=tmp_path / "home"))
    folder = Path(standalone.upload_folder)
    with served(standalone.app) as url:
        stored = httpx.post(url + "upload", files={"files": ("a.png", b"not a picture", "image/png")}).json()
        assert Path(stored[0]).is_relative_to(folder)
        assert folder.stat().st_mode & 0o777 == 0o700
    assert not folder.exists()
