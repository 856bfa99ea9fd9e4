"""POST /sdapi/v1/portrait/generate through FastAPI's TestClient, on the tiny model and real photos."""

from __future__ import annotations

import base64
import io
import time

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from portrait_core.adapters.http.api import ApiContext, mount_api
from portrait_core.hosts.diffusers_host import DiffusersHost
from tests.lora_factory import random_lora_for
from tests.service_factory import services_on

FAST = {"identities": ["obama"], "first_pass_steps": 3, "second_pass_steps": 3, "crop_size": 128, "seed": 4}
PREFIX = "/sdapi/v1/portrait"


@pytest.fixture(scope="module")
def service(tiny_sd15, prepared_obama, tmp_path_factory):
    from portrait_core.models.checkpoints.loading import load_components

    lora_dir = tmp_path_factory.mktemp("Lora")
    parts = load_components(tiny_sd15)
    random_lora_for({"unet": parts.unet, "text_encoder": parts.text_encoder}, lora_dir / "obama.safetensors")
    services = services_on(DiffusersHost(tiny_sd15, lora_dir=lora_dir), identities=prepared_obama,
                           home=tmp_path_factory.mktemp("home"))
    yield services
    services.close()


@pytest.fixture(scope="module")
def template_b64(shared_faces_dir):
    image = Image.open(shared_faces_dir / "biden.jpg").convert("RGB")
    image = image.resize((image.width // 3, image.height // 3))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return base64.b64encode(buffer.getvalue()).decode("ascii"), image.size


@pytest.fixture
def client(service):
    app = FastAPI()
    mount_api(app, ApiContext(services=service, api_auth="ana:secret"))
    with TestClient(app) as test_client:
        test_client.auth = ("ana", "secret")
        yield test_client


def _decode(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data)))


def test_generate_returns_scored_images_with_infotext(client, template_b64):
    data, size = template_b64
    response = client.post(f"{PREFIX}/generate", json={"params": FAST, "templates": [{"name": "../../biden.jpg",
                                                                                         "data": data}]})
    assert response.status_code == 200, response.text
    image = response.json()["images"][0]
    assert image["template"] == "biden.jpg" and image["seed"] == 4
    assert image["faces"][0]["id"] == "obama" and len(image["faces"][0]["box"]) == 4
    png = _decode(image["image"])
    assert png.size == size
    assert png.info["parameters"] == image["infotext"] and "Seed: 4" in image["infotext"]


def test_generate_needs_the_api_login(client, template_b64):
    response = client.post(f"{PREFIX}/generate", json={"params": FAST, "templates": [{"data": template_b64[0]}]},
                           auth=("ana", "wrong"))
    assert response.status_code == 401


def test_bad_template_and_unknown_identity_are_named(client, template_b64):
    response = client.post(f"{PREFIX}/generate", json={"params": FAST, "templates": [{"data": "bm90IGFuIGltYWdl"}]})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "templates", 0, "data"]
    unknown = dict(FAST, identities=["nobody"])
    response = client.post(f"{PREFIX}/generate", json={"params": unknown, "templates": [{"data": template_b64[0]}]})
    assert response.status_code == 422 and "nobody" in response.text
    response = client.post(f"{PREFIX}/generate", json={"params": dict(FAST, crop_size=100),
                                                       "templates": [{"data": template_b64[0]}]})
    assert response.status_code == 422 and "crop_size" in response.text


def test_background_generation_is_a_job_with_results(client, template_b64):
    response = client.post(f"{PREFIX}/generate", json={"params": FAST, "background": True,
                                                       "templates": [{"name": "b.jpg", "data": template_b64[0]}]})
    job_id = response.json()["job_id"]
    deadline = time.monotonic() + 120
    while client.get(f"{PREFIX}/jobs/{job_id}").json()["state"] not in ("done", "failed") and \
            time.monotonic() < deadline:
        time.sleep(0.3)
    status = client.get(f"{PREFIX}/jobs/{job_id}").json()
    assert status["state"] == "done", status
    results = client.get(f"{PREFIX}/jobs/{job_id}/results").json()
    assert results["images"][0]["template"] == "b.jpg"
    assert _decode(results["images"][0]["image"]).size == template_b64[1]


def test_version_lists_generate(client):
    assert "generate" in client.get(f"{PREFIX}/version").json()["capabilities"]


def test_workflow_route_runs_and_rejects_bad_steps_before_running(client, shared_faces_dir):
    pose = _jpeg(shared_faces_dir / "obama3.jpg", 4)
    flow = {"steps": [
        {"op": "txt2img", "prompt": "a stage", "width": 64, "height": 64, "steps": 2, "seed": 1},
        {"op": "pose_transfer", "pose_image": "pose.jpg", "prompt": "a dancer", "controlnet_scale": 0.6,
         "steps": 2, "width": 64, "height": 64}, {"op": "upscale", "scale": 2}]}
    response = client.post(f"{PREFIX}/workflow", json={"workflow": flow, "images": {"pose.jpg": pose}})
    assert response.status_code == 200, response.text
    steps = response.json()["steps"]
    assert [s["op"] for s in steps] == ["txt2img", "pose_transfer", "upscale"]
    assert _decode(steps[2]["images"][0]).size == (128, 128)
    assert "pose" in steps[1]["extras"] and "ControlNet openpose scale: 0.6" in steps[1]["infotexts"][0]
    missing = client.post(f"{PREFIX}/workflow", json={"workflow": flow, "images": {}})
    assert missing.status_code == 422 and "steps[1] (pose_transfer): pose_image 'pose.jpg'" in missing.text
    bogus = client.post(f"{PREFIX}/workflow", json={"workflow": {"steps": [{"op": "teleport"}]}})
    assert bogus.status_code == 422 and "unknown op" in bogus.text


def test_background_workflow_results(client, shared_faces_dir):
    flow = {"steps": [{"op": "txt2img", "prompt": "a stage", "width": 64, "height": 64, "steps": 2, "seed": 1},
                      {"op": "upscale", "scale": 2}]}
    job_id = client.post(f"{PREFIX}/workflow", json={"workflow": flow, "background": True}).json()["job_id"]
    deadline = time.monotonic() + 120
    while client.get(f"{PREFIX}/jobs/{job_id}").json()["state"] not in ("done", "failed") and \
            time.monotonic() < deadline:
        time.sleep(0.3)
    results = client.get(f"{PREFIX}/jobs/{job_id}/results").json()
    assert [s["op"] for s in results["steps"]] == ["txt2img", "upscale"]
    assert _decode(results["steps"][1]["images"][0]).size == (128, 128)


def _jpeg(path, scale):
    image = Image.open(path).convert("RGB")
    image = image.resize((image.width // scale, image.height // scale))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
