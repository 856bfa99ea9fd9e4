"""Hostile and broken input over HTTP: every one is a 4xx that names what is wrong, never a 500, and changes nothing."""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from portrait_core.adapters.http.api import API_PREFIX, ApiContext, mount_api
from portrait_core.services.runtime import standalone_services
from portrait_core.services.workspace import Workspace

TRAIN, GENERATE, WORKFLOW = f"{API_PREFIX}/train", f"{API_PREFIX}/generate", f"{API_PREFIX}/workflow"
IDENTITIES = f"{API_PREFIX}/identities"


@pytest.fixture
def prepared_root(tmp_path, prepared_obama) -> Path:
    root = tmp_path / "identities"
    shutil.copytree(prepared_obama, root)
    return root


@pytest.fixture
def client(tmp_path, runner, tiny_sd15, prepared_root):
    workspace = Workspace(tmp_path / "home", tmp_path / "Lora", prepared_root)
    services = standalone_services(workspace, tiny_sd15, checkpoints_dir=tiny_sd15.parent, runner=runner)
    app = FastAPI()
    mount_api(app, ApiContext(services=services))
    # raise_server_exceptions=False: a 500 must show up as a status the test can see, not as a traceback.
    with TestClient(app, raise_server_exceptions=False) as test_client:
        test_client.runner = runner
        yield test_client
    services.close()


def disk_snapshot(folder: Path) -> dict[str, tuple]:
    return {str(p.relative_to(folder)): ("dir",) if p.is_dir() else (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def template_b64() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (256, 256), (150, 120, 100)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def post_json(client, route: str, text: str):
    return client.post(route, content=text.encode("utf-8"), headers={"content-type": "application/json"})


# -- identity names -------------------------------------------------------------------------------------

LONG_NAMES = ["a" * 256, "a" * 300, "é" * 130, "名" * 90]  # over 255 bytes, in ASCII and in UTF-8


@pytest.mark.parametrize("name", LONG_NAMES)
def test_an_identity_name_over_255_bytes_is_a_4xx_wherever_it_is_accepted(client, tmp_path, name):
    before = disk_snapshot(tmp_path)
    template = [{"data": template_b64()}]
    requests = [
        ("generate", client.post(GENERATE, json={"params": {"identities": [name]}, "templates": template}),
         ["body", "params", "identities", 0]),
        ("train", client.post(TRAIN, json={"params": {"identity": name}}), ["body", "params", "identity"]),
        ("train multipart", client.post(TRAIN, files={"params": (None, json.dumps({"identity": name}))}),
         ["body", "params", "identity"]),
        ("workflow identity", client.post(WORKFLOW, json={"workflow": {"steps": [
            {"op": "txt2img", "identity": name, "width": 64, "height": 64}]}}), ["body", "workflow", "steps"]),
        ("workflow portrait", client.post(WORKFLOW, json={"workflow": {"steps": [
            {"op": "portrait", "identities": [name], "template": "t.png"}]}, "images": {"t.png": template_b64()}}),
         ["body", "workflow", "steps"]),
        ("delete", client.delete(f"{IDENTITIES}/{name}"), ["path", "identity"]),
    ]
    for what, response, loc in requests:
        assert response.status_code == 422, (what, response.status_code, response.text)
        assert "identity" in response.text, (what, response.text)
        detail = response.json()["detail"]
        if isinstance(detail, list):  # FastAPI-shaped: it names the field
            assert loc in [item["loc"] for item in detail], (what, response.text)
    for route in (f"{API_PREFIX}/jobs/{name}", f"{API_PREFIX}/jobs/{name}/results"):
        assert client.get(route).status_code == 404, route
    assert disk_snapshot(tmp_path) == before and client.runner.jobs() == []


# -- numbers JSON does not have, and other junk in typed fields ----------------------------------------

JUNK = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "[1]", "{}", "null", "true", "3", '"Euler z"']


@pytest.mark.parametrize("junk", JUNK)
def test_sampler_junk_is_a_422_naming_the_body_or_field(client, tmp_path, junk):
    before = disk_snapshot(tmp_path)
    template = json.dumps([{"data": template_b64()}])
    responses = {
        "generate": post_json(client, GENERATE, f'{{"params": {{"identities": ["obama"], "sampler": {junk}}}, '
                                                f'"templates": {template}}}'),
        "workflow": post_json(client, WORKFLOW, f'{{"workflow": {{"steps": [{{"op": "txt2img", "sampler": {junk}, '
                                                f'"width": 64, "height": 64}}]}}}}'),
    }
    if junk not in ("true", "3"):  # a valid learning rate and CFG scale (pydantic reads true as 1.0)
        responses["train"] = post_json(client, TRAIN, f'{{"params": {{"identity": "obama", "learning_rate": {junk}}}}}')
        responses["cfg"] = post_json(client, GENERATE, f'{{"params": {{"identities": ["obama"], "cfg_scale": '
                                                       f'{junk}}}, "templates": {template}}}')
    for what, response in responses.items():
        assert response.status_code == 422, (what, response.status_code, response.text)
        detail = response.json()["detail"]
        assert detail and all(item["loc"][0] == "body" for item in detail), (what, detail)
        if junk in ("NaN", "Infinity", "-Infinity"):  # the message names the value that is not JSON
            assert junk.lstrip("-") in json.dumps(detail), (what, detail)
    assert disk_snapshot(tmp_path) == before and client.runner.jobs() == []


# -- multipart bodies ------------------------------------------------------------------------------------

def multipart(boundary: bytes, photo: bytes) -> bytes:
    return (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="params"\r\n\r\n{"identity": "obama"}\r\n'
            b"--" + boundary + b'\r\nContent-Disposition: form-data; name="photos"; filename="a.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n" + photo + b"\r\n--" + boundary + b"--\r\n")


@pytest.mark.parametrize("header", ["multipart/form-data; boundary=", 'multipart/form-data; boundary=""',
                                    "multipart/form-data; boundary= ", "multipart/form-data",
                                    "multipart/form-data; boundary=" + "x" * 71,
                                    "multipart/form-data; boundary=a\x7fb"])
def test_a_missing_or_malformed_boundary_is_a_400_and_changes_nothing(client, tmp_path, shared_faces_dir, header):
    before = disk_snapshot(tmp_path)
    body = multipart(b"", (shared_faces_dir / "obama.jpg").read_bytes())
    response = client.post(TRAIN, content=body, headers={"content-type": header})
    assert response.status_code == 400, response.text
    assert "boundary" in response.json()["detail"]
    assert disk_snapshot(tmp_path) == before and client.runner.jobs() == []


def test_a_multipart_body_cut_short_is_a_400_and_changes_nothing(client, tmp_path, shared_faces_dir):
    photo = (shared_faces_dir / "obama.jpg").read_bytes()
    body = multipart(b"cut-here", photo)
    before = disk_snapshot(tmp_path)
    # Mid-photo, just before the closing boundary, and inside it: all used to retrain from the old photos.
    for cut in (len(body) // 2, len(body) - len(b"--cut-here--\r\n") - 2, len(body) - 4):
        response = client.post(TRAIN, content=body[:cut],
                               headers={"content-type": "multipart/form-data; boundary=cut-here"})
        assert response.status_code == 400, (cut, response.text)
        assert "ends before its closing boundary" in response.json()["detail"]
    assert disk_snapshot(tmp_path) == before and client.runner.jobs() == []


# -- damaged identity files ------------------------------------------------------------------------------

DAMAGE = {"truncated": b'{"images": [', "not UTF-8": b"\xff\xfe{}", "a list": b"[1, 2]", "empty": b""}


@pytest.mark.parametrize("file", ["dataset/manifest.json", "dataset/embeddings.json", "dataset/reference.json"])
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_identity_file_is_named_and_never_a_500(client, prepared_root, file, damage):
    (prepared_root / "obama" / file).write_bytes(DAMAGE[damage])
    listing = client.get(IDENTITIES)
    assert listing.status_code == 200, listing.text
    [obama] = listing.json()["identities"]
    assert obama["id"] == "obama" and obama["prepared"] is False
    assert "identity 'obama' is damaged" in obama["damaged"] and file in obama["damaged"]
    refusals = {
        "generate": client.post(GENERATE, json={"params": {"identities": ["obama"]},
                                                "templates": [{"data": template_b64()}]}),
        "generate job": client.post(GENERATE, json={"params": {"identities": ["obama"]}, "background": True,
                                                    "templates": [{"data": template_b64()}]}),
        "retrain": client.post(TRAIN, json={"params": {"identity": "obama"}}),
        "workflow": client.post(WORKFLOW, json={"workflow": {"steps": [
            {"op": "portrait", "identities": ["obama"], "template": "t.png"}]}, "images": {"t.png": template_b64()}}),
    }
    for what, response in refusals.items():
        # 409 (the stored identity is in the way); a workflow reports it as its step's error, a 422.
        assert response.status_code == (422 if what == "workflow" else 409), (what, response.status_code,
                                                                               response.text)
        assert "identity 'obama' is damaged" in response.text and file in response.text, (what, response.text)
        assert str(prepared_root) not in response.text, "no server path reaches the client"
    assert client.runner.jobs() == []
    assert client.delete(f"{IDENTITIES}/obama").status_code == 200  # a damaged identity can still be removed


def test_a_damaged_report_does_not_stop_the_identity(client, prepared_root):
    for report in (prepared_root / "obama" / "report.json", prepared_root / "obama" / "dataset" / "report.json"):
        report.write_bytes(b"{broken")
    [obama] = client.get(IDENTITIES).json()["identities"]
    assert obama["damaged"] is None and obama["prepared"] is True  # nothing reads the reports after preparation
