"""Inside the (double of the) WebUI: train over /sdapi/v1/portrait, then generate through WebUIHost.

The WebUI double's process_images really generates (DiffusersHost on the tiny model), so this is the
whole extension as the WebUI runs it: the script's on_app_started mounts the routes with the WebUI's
queue lock and --api-auth, training writes the LoRA into --lora-dir, and generation goes through the
WebUI's img2img with ControlNet units and the LoRA in the prompt.
"""

from __future__ import annotations

import base64
import io
import time

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from webui_double import generation, webui_started

PREFIX = "/sdapi/v1/portrait"


@pytest.fixture
def webui_app(tmp_path, tiny_sd15, tiny_sd15_file, webui_state_restored):
    data = tmp_path / "webui"
    (data / "models" / "Stable-diffusion").mkdir(parents=True)
    # The WebUI lists single files only: the tiny model as one, the WebUI's only (so its selected) checkpoint.
    (data / "models" / "Stable-diffusion" / "tiny-sd15.safetensors").symlink_to(tiny_sd15_file)
    argv = ["--lora-dir", str(tmp_path / "loras"), "--api-auth", "ana:secret"]
    with webui_started(data, argv, environ={"PORTRAIT_HOME": str(tmp_path / "home")}) as webui:
        generation.start(generation.DiffusersBackend(tiny_sd15))
        app = FastAPI()
        webui["script_callbacks"].app_started_callback(None, app)
        with TestClient(app) as client:
            client.auth = ("ana", "secret")
            yield client, tmp_path / "loras", processing_backend()
        services = _script_services()
        if services is not None:
            services.close()


def processing_backend():
    from modules import processing

    return processing.backend


def _script_services():
    from modules import scripts

    for path, module in scripts.loaded_modules.items():
        if path.endswith("portrait_studio.py"):
            return module._runtime.get("services")
    return None


def _jpeg_b64(path, scale=1) -> str:
    image = Image.open(path).convert("RGB")
    image = image.resize((image.width // scale, image.height // scale))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def test_train_then_generate_inside_the_webui(webui_app, shared_faces_dir):
    client, lora_dir, backend = webui_app
    assert client.get(f"{PREFIX}/version", auth=None).status_code == 401
    photos = [{"name": p.name, "data": _jpeg_b64(p)} for p in sorted(shared_faces_dir.glob("obama*.jpg"))]
    # No base_model: the WebUI's selected checkpoint is trained (never the tiny default of the standalone app).
    params = {"identity": "obama", "max_train_steps": 4, "resolution": 64, "validate_every": 2, "rank": 4,
              "gradient_accumulation": 1}
    response = client.post(f"{PREFIX}/train", json={"params": params, "photos": photos})
    assert response.status_code == 200, response.text
    assert response.json()["base_model"] == "tiny-sd15.safetensors" and response.json()["notes"] == []
    job_id = response.json()["job_id"]
    deadline = time.monotonic() + 240
    while client.get(f"{PREFIX}/jobs/{job_id}").json()["state"] not in ("done", "failed", "cancelled"):
        assert time.monotonic() < deadline, "training did not finish"
        time.sleep(0.5)
    job = client.get(f"{PREFIX}/jobs/{job_id}").json()
    assert job["state"] == "done", job
    assert (lora_dir / "obama.safetensors").is_file(), "the LoRA must land in the WebUI's --lora-dir"
    import networks  # the Lora extension's list (its cards, GET /sdapi/v1/loras): the new LoRA shows unasked

    deadline = time.monotonic() + 30
    while "obama" not in networks.available_networks:
        assert time.monotonic() < deadline, "the WebUI's LoRA list was not refreshed after the training"
        time.sleep(0.2)
    (listed,) = client.get(f"{PREFIX}/identities").json()["identities"]
    assert listed["base_model"] == "tiny-sd15.safetensors" and listed["family"] == "sd15"

    generate = {"identities": ["obama"], "first_pass_steps": 3, "second_pass_steps": 4,
                "crop_size": 64, "seed": 2}
    response = client.post(f"{PREFIX}/generate", json={
        "params": generate, "templates": [{"name": "biden.jpg", "data": _jpeg_b64(shared_faces_dir / "biden.jpg", 3)}]})
    assert response.status_code == 200, response.text
    image = response.json()["images"][0]
    assert image["faces"][0]["id"] == "obama"
    assert len(backend.runs) == 2, "pass 1 and pass 2 each run through the WebUI's img2img"
    first_pass, second_pass = backend.runs
    assert "<lora:obama:0.9>" in first_pass.p.prompt
    assert sorted(c.kind for c in first_pass.controls) == ["canny", "color", "openpose"]
    assert sorted(c.kind for c in second_pass.controls) == ["canny", "tile"]
