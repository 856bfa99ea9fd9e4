"""Body-size limits of POST generate and POST workflow: refused with 413 before the body is held in memory."""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from portrait_core.adapters.http.api import API_PREFIX, ApiContext, mount_api
from portrait_core.services.runtime import standalone_services
from portrait_core.services.uploads import MAX_TEMPLATES, UploadLimits
from portrait_core.services.workspace import Workspace
from tests.live_page import served

LIMIT = 64_000
LIMITS = UploadLimits(max_generate_bytes=LIMIT, max_template_bytes=20_000)
ROUTES = [f"{API_PREFIX}/generate", f"{API_PREFIX}/workflow"]


@pytest.fixture
def app(tmp_path, runner, tiny_sd15):
    # Every request here is refused before anything is generated (or a model loaded).
    services = standalone_services(Workspace(tmp_path / "home"), tiny_sd15, runner=runner)
    application = FastAPI()
    mount_api(application, ApiContext(services=services, api_auth="ana:secret", limits=LIMITS))
    yield application
    services.close()


@pytest.fixture
def client(app):
    with TestClient(app) as test_client:
        test_client.auth = ("ana", "secret")
        yield test_client


def test_the_default_limit_has_room_for_every_template_at_its_largest():
    limits = UploadLimits()
    assert limits.max_generate_bytes >= MAX_TEMPLATES * limits.max_template_bytes * 4 / 3
    assert limits.max_generate_bytes < 1024 ** 3  # and it is a limit, not 'anything'


@pytest.mark.parametrize("route", ROUTES)
def test_a_body_over_the_limit_is_refused_with_413(client, route):
    body = b'{"params": {"identities": ["ana"]}, "templates": [{"data": "' + b"A" * LIMIT + b'"}]}'
    response = client.post(route, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413, response.text
    assert str(LIMIT) in response.json()["detail"]
    chunked = client.post(route, content=iter([body[:100], body[100:]]), headers={"content-type": "application/json"})
    assert chunked.status_code == 413, chunked.text


@pytest.mark.parametrize("route", ROUTES)
def test_a_body_under_the_limit_is_read_and_validated_as_before(client, route):
    response = client.post(route, json={"params": {"identities": ["ana"], "steps_typo": 1}, "templates": []})
    assert response.status_code == 422
    assert all(item["loc"][0] == "body" for item in response.json()["detail"])


def test_one_image_over_its_own_limit_is_a_413_naming_it(client):
    big = base64.b64encode(b"\xff" * 30_000).decode("ascii")  # under the body limit, over the per-image one
    response = client.post(ROUTES[0], json={"params": {"identities": ["ana"]}, "templates": [{"data": big}]})
    assert response.status_code == 413, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "templates", 0, "data"]
    workflow = {"steps": [{"op": "upscale", "image": "pose.png"}]}
    response = client.post(ROUTES[1], json={"workflow": workflow, "images": {"pose.png": big}})
    assert response.status_code == 413, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "images", "pose.png"]


def png_b64(size: tuple[int, int]) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, (120, 110, 100)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


@pytest.mark.parametrize("background", [False, True])
def test_outputs_over_the_size_limit_are_a_422_naming_the_step_or_template(client, runner, background):
    upscales = [{"op": "upscale", "scale": 4}] * 5
    workflow = {"steps": [{"op": "txt2img", "width": 64, "height": 64, "steps": 2}, *upscales]}
    response = client.post(ROUTES[1], json={"workflow": workflow, "background": background})
    assert response.status_code == 422, response.text
    assert "steps[4] (upscale)" in response.json()["detail"] and "16384x16384" in response.json()["detail"]
    params = {"identities": ["ana"], "upscale": 4}
    response = client.post(ROUTES[0], json={"params": params, "background": background,
                                            "templates": [{"name": "wide.png", "data": png_b64((2100, 1000))}]})
    assert response.status_code == 422, response.text
    assert "template wide.png (2100x1000 px upscaled x4) is too large" in response.json()["detail"]
    assert runner.jobs() == [], "nothing was queued"


def test_the_request_body_is_still_documented(client):
    schema = client.get("/openapi.json").json()["paths"][ROUTES[0]]["post"]["requestBody"]
    assert "application/json" in schema["content"]


# -- over a real socket: the server answers before the client has sent the body --------------------------

def status_while_body_unfinished(port: int, route: str, headers: str, first: bytes) -> int:
    """Send the headers and `first`, never the rest of the body, and read the status line of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(f"POST {route} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                           f"Authorization: Basic {base64.b64encode(b'ana:secret').decode()}\r\n{headers}\r\n"
                           .encode("ascii") + first)
        answer = b""
        while b"\r\n" not in answer:
            received = connection.recv(4096)  # a server waiting for the whole body would time out here
            assert received, f"connection closed without an answer: {answer!r}"
            answer += received
    return int(answer.split(b" ", 2)[1])


@pytest.mark.parametrize("route", ROUTES)
def test_an_endless_streamed_body_is_refused_after_its_first_chunk(app, route):
    first = b"A" * (2 * LIMIT)
    with served(app) as url:
        port = int(url.rstrip("/").rsplit(":", 1)[1])
        # Chunked: the server cannot know the size in advance; it counts, and stops at the limit.
        chunk = f"{len(first):x}\r\n".encode("ascii") + first + b"\r\n"
        assert status_while_body_unfinished(port, route, "Transfer-Encoding: chunked\r\n", chunk) == 413
        # Declared: a 100 GB Content-Length is refused before a byte of the body has been sent.
        assert status_while_body_unfinished(port, route, f"Content-Length: {100 * 1024 ** 3}\r\n", b"") == 413


def test_version_tells_a_client_the_limits_this_server_applies(client):
    limits = client.get(f"{API_PREFIX}/version").json()["limits"]
    assert limits["generate_body_bytes"] == LIMIT and limits["template_bytes"] == 20_000
    assert limits["workflow_images"] == MAX_TEMPLATES


def test_a_workflow_with_too_many_or_long_named_images_is_a_422_before_any_is_decoded(client):
    workflow = {"steps": [{"op": "upscale", "image": "a.png"}]}
    images = {f"{index}.png": "x" for index in range(MAX_TEMPLATES + 1)}
    response = client.post(ROUTES[1], json={"workflow": workflow, "images": images})
    assert response.status_code == 422, response.text
    assert f"at most {MAX_TEMPLATES}" in response.text
    response = client.post(ROUTES[1], json={"workflow": workflow, "images": {"n" * 101 + ".png": "x"}})
    assert response.status_code == 422, response.text
    assert "longer than 100 characters" in response.text


def test_a_background_job_that_cannot_be_saved_is_a_507_and_nothing_is_queued(client, runner):
    jobs_dir = runner.jobs_dir
    as_root = os.geteuid() == 0  # root writes through permissions; an immutable folder stops it too
    immutable = ["chattr", "+i", str(jobs_dir)]
    if as_root and subprocess.run(immutable, check=False, capture_output=True).returncode != 0:
        pytest.skip("cannot make a folder immutable here")
    if not as_root:
        jobs_dir.chmod(0o555)
    try:
        workflow = {"steps": [{"op": "txt2img", "width": 64, "height": 64, "steps": 2}]}
        response = client.post(ROUTES[1], json={"workflow": workflow, "background": True})
        assert response.status_code == 507, response.text
        assert "nothing was queued" in response.json()["detail"]
        assert runner.jobs() == []
    finally:
        if as_root:
            subprocess.run(["chattr", "-i", str(jobs_dir)], check=True)
        else:
            jobs_dir.chmod(0o755)
