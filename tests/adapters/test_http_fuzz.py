"""Schema fuzzing over a real loopback server: bodies drawn from the routes' own JSON schemas, and the
same bodies broken, never get a 500. Nothing here renders: no identity exists and every image is junk,
so a body the schema accepts is refused by the services (unknown identity, undecodable image)."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request

import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from portrait_core.adapters.http.api import API_PREFIX, ApiContext, mount_api
from portrait_core.adapters.http.generate import GenerateRequest, WorkflowRequest
from portrait_core.params import TrainParams
from portrait_core.services.runtime import standalone_services
from portrait_core.services.workspace import Workspace
from tests.live_page import served

AUTH = "Basic " + base64.b64encode(b"ana:secret").decode("ascii")
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sd15):
    from portrait_core.jobs import JobRunner

    home = tmp_path_factory.mktemp("fuzz")
    runner = JobRunner(home / "jobs")
    services = standalone_services(Workspace(home / "home"), tiny_sd15, runner=runner)
    app = FastAPI()
    mount_api(app, ApiContext(services=services, api_auth="ana:secret"))
    with served(app) as url:
        yield url.rstrip("/"), home, runner
    services.close()
    runner.close()


def send(url: str, method: str, path: str, body: bytes | None = None, content_type: str = "application/json"):
    request = urllib.request.Request(url + path, data=body, method=method,
                                     headers={"Authorization": AUTH, "Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            status, text = answer.status, answer.read()
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read()
    assert status < 500, f"{method} {path} answered {status}: {text[:500]!r}\nbody: {(body or b'')[:500]!r}"
    return status


def junk_images(body: dict) -> dict:
    """Every image a body carries becomes junk, so nothing the fuzzer draws can start a render."""
    for template in body.get("templates", []):
        template["data"] = base64.b64encode(b"not an image").decode("ascii")
    if "images" in body or "workflow" in body:
        body["images"] = {**dict.fromkeys(body.get("images", {}), "!!"), "fuzz.png": "bm90IGFuIGltYWdl"}
    return body


def broken(text: str, cut: int, flip: int) -> bytes:
    data = bytearray(text.encode("utf-8"))
    if data:
        data[flip % len(data)] ^= 0x5A
    return bytes(data[: max(1, len(data) - cut)])


@pytest.mark.parametrize("route,model", [("/generate", GenerateRequest), ("/workflow", WorkflowRequest)])
def test_bodies_from_the_schema_and_broken_ones_are_never_a_500(server, route, model):
    url, _, runner = server

    @FUZZ
    @given(body=from_schema(model.schema()), cut=st.integers(0, 40), flip=st.integers(0, 10_000))
    def check(body, cut, flip):
        text = json.dumps(junk_images(body))
        status = send(url, "POST", API_PREFIX + route, text.encode("utf-8"))
        assert status in (409, 413, 422), status  # nothing exists to render, so every body is refused
        send(url, "POST", API_PREFIX + route, broken(text, cut, flip))

    check()
    assert runner.jobs() == [], "a refused request queued nothing"


def test_train_params_from_the_schema_never_get_a_500_or_a_job(server):
    url, home, runner = server
    boundary = "fuzzboundary"

    @FUZZ
    @given(params=from_schema(TrainParams.schema()), cut=st.integers(0, 40), flip=st.integers(0, 10_000))
    def check(params, cut, flip):
        # No photos and no identity with photos: the request is refused whatever the parameters say.
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"params\"\r\n\r\n{json.dumps(params)}\r\n"
                f"--{boundary}--\r\n")
        content_type = f"multipart/form-data; boundary={boundary}"
        assert send(url, "POST", API_PREFIX + "/train", body.encode("utf-8"), content_type) in (400, 409, 422)
        send(url, "POST", API_PREFIX + "/train", broken(body, cut, flip), content_type)

    check()
    assert runner.jobs() == []
    assert not any((home / "home").rglob("*.safetensors")), "nothing was trained"


@FUZZ
@given(name=st.text(max_size=300), method=st.sampled_from(["GET", "POST", "DELETE"]))
def _id_probe(url, name, method):
    quoted = urllib.request.quote(name, safe="")
    for path in (f"/jobs/{quoted}", f"/jobs/{quoted}/cancel", f"/jobs/{quoted}/retry", f"/jobs/{quoted}/results",
                 f"/identities/{quoted}"):
        send(url, method, API_PREFIX + path, b"" if method == "POST" else None)


def test_any_id_in_any_route_is_never_a_500(server):
    url, home, _ = server
    before = sorted(path.relative_to(home) for path in home.rglob("*"))
    _id_probe(url)
    assert sorted(path.relative_to(home) for path in home.rglob("*")) == before, "an id probe changed the disk"

