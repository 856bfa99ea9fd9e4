"""Workflows on the tiny models: chaining, every intermediate kept, validation before anything runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from portrait_core.generate.workflow import WorkflowError, WorkflowRunner
from portrait_core.hosts.diffusers_host import DiffusersHost
from portrait_core.params import WorkflowParams
from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def host(tiny_sd15):
    return DiffusersHost(tiny_sd15)


@pytest.fixture(scope="module")
def standing(shared_faces_dir):
    image = Image.open(shared_faces_dir / "obama3.jpg").convert("RGB")
    return image.resize((image.width // 4, image.height // 4))


def test_chained_workflow_returns_every_intermediate(host, standing):
    workflow = WorkflowParams(steps=[
        {"op": "txt2img", "prompt": "a man on a stage", "width": 64, "height": 64, "steps": 3, "seed": 1},
        {"op": "pose_transfer", "pose_image": "pose.jpg", "prompt": "a dancer", "controlnet_scale": 0.7,
         "steps": 3, "width": 64, "height": 96, "seed": 2, "samples": 2},
        {"op": "restore", "codeformer_weight": 0.6},
        {"op": "upscale", "scale": 2},
    ])
    outputs = WorkflowRunner(host).run(workflow, {"pose.jpg": standing})
    assert [o.op for o in outputs] == ["txt2img", "pose_transfer", "restore", "upscale"]
    assert outputs[0].images[0].size == (64, 64)
    assert len(outputs[1].images) == 2 and outputs[1].images[0].size == (64, 96)
    assert "ControlNet openpose scale: 0.7" in outputs[1].infotexts[0] and "Seed: 3" in outputs[1].infotexts[1]
    skeleton = np.asarray(outputs[1].extras["pose"])
    assert skeleton.shape == (96, 64, 3) and skeleton.any(), "the skeleton the step used is returned"
    assert outputs[2].notes and "restoration skipped" in outputs[2].notes[0]  # no CodeFormer file here
    assert "codeformer-v0.1.0.pth" in outputs[2].notes[0] and "GFPGANv1.4.pth" in outputs[2].notes[0]
    assert outputs[3].images[0].size == (128, 192)


def test_invalid_later_step_is_rejected_before_the_first_runs(tiny_sd15, standing):
    fresh = DiffusersHost(tiny_sd15)
    workflow = WorkflowParams(steps=[
        {"op": "txt2img", "prompt": "x", "width": 64, "height": 64, "steps": 2},
        {"op": "pose_transfer", "pose_image": "not-uploaded.png", "prompt": "y"},
    ])
    with pytest.raises(WorkflowError, match=r"steps\[1\] \(pose_transfer\): pose_image 'not-uploaded.png'"):
        WorkflowRunner(fresh).run(workflow, {})
    unknown = WorkflowParams(steps=[{"op": "txt2img", "identity": "ghost", "width": 64, "height": 64}])
    with pytest.raises(WorkflowError, match="ghost"):
        WorkflowRunner(fresh).run(unknown, {})
    assert fresh.load_count == 0, "nothing may run (or load) before the whole workflow is valid"


def test_first_step_without_an_input_is_named():
    with pytest.raises(WorkflowError, match=r"steps\[0\] \(restore\): image is required"):
        WorkflowRunner(DiffusersHost(REPO_ROOT)).validate(WorkflowParams(steps=[{"op": "restore"}]), {})


def test_image_prompt_needs_an_ip_adapter_on_this_host(host, standing):
    workflow = WorkflowParams(steps=[{"op": "image_prompt_pose", "ip_image": "look.png", "pose_image": "pose.png"}])
    if "ip_adapter" in host.controlnet_models():
        pytest.skip("this host has an IP-Adapter; covered by the IP-Adapter tests")
    with pytest.raises(WorkflowError, match="IP-Adapter"):
        WorkflowRunner(host).run(workflow, {"look.png": standing, "pose.png": standing})


def test_pose_from_an_image_without_a_person_is_a_clear_error(host):
    wall = Image.new("RGB", (128, 128), (200, 190, 180))
    workflow = WorkflowParams(steps=[{"op": "pose_transfer", "pose_image": "wall.png", "steps": 2}])
    with pytest.raises(WorkflowError, match=r"steps\[0\].*wall"):
        WorkflowRunner(host).run(workflow, {"wall.png": wall})


def test_workflow_command_writes_each_step(tmp_path, shared_faces_dir, tiny_sd15):
    (tmp_path / "pose.jpg").write_bytes((shared_faces_dir / "obama3.jpg").read_bytes())
    (tmp_path / "flow.json").write_text(json.dumps({"steps": [
        {"op": "txt2img", "prompt": "a stage", "width": 64, "height": 64, "steps": 2, "seed": 1},
        {"op": "pose_transfer", "pose_image": "pose.jpg", "prompt": "a dancer", "controlnet_scale": 0.6,
         "steps": 2, "width": 64, "height": 64},
        {"op": "upscale", "scale": 2}]}))
    env = os.environ | {"PORTRAIT_HOME": str(tmp_path / "home")}
    result = subprocess.run([sys.executable, "-m", "portrait_core", "workflow", str(tmp_path / "flow.json"),
                             "--out", str(tmp_path / "out"), "--base-model", str(tiny_sd15)],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert names == ["step-01-txt2img.png", "step-02-pose_transfer-pose.png", "step-02-pose_transfer.png",
                     "step-03-upscale.png"]
    text = Image.open(tmp_path / "out" / "step-02-pose_transfer.png").info["parameters"]
    assert "ControlNet openpose scale: 0.6" in text
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"steps": [{"op": "txt2img"}, {"op": "teleport"}]}))
    result = subprocess.run([sys.executable, "-m", "portrait_core", "workflow", str(bad)], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1 and "steps[1]: unknown op 'teleport'" in result.stderr


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_image_prompt_and_pose_run_on_both_families(family, tiny_sd15, tiny_sdxl, tiny_cache_dir, standing,
                                                    astronaut):
    from portrait_core.models.tiny import ensure_tiny_ip_adapter

    base = tiny_sd15 if family == "sd15" else tiny_sdxl
    host = DiffusersHost(base, ip_adapter=ensure_tiny_ip_adapter(family, cache_dir=tiny_cache_dir))
    workflow = WorkflowParams(steps=[
        {"op": "image_prompt_pose", "ip_image": "look.png", "pose_image": "pose.jpg", "prompt": "on a beach",
         "ip_adapter_scale": 0.45, "controlnet_scale": 0.8, "steps": 2, "width": 64, "height": 96, "seed": 5},
        {"op": "pose_transfer", "pose_image": "pose.jpg", "steps": 2, "width": 64, "height": 64}])
    outputs = WorkflowRunner(host).run(workflow, {"look.png": astronaut, "pose.jpg": standing})
    assert outputs[0].images[0].size == (64, 96) and outputs[1].images[0].size == (64, 64)
    text = outputs[0].infotexts[0]
    assert "IP-Adapter scale: 0.45" in text and "ControlNet openpose scale: 0.8" in text
    assert outputs[0].extras["pose"].size == (64, 96)


@pytest.mark.usefixtures("webui_state_restored")
def test_codeformer_step_reaches_the_webuis_restorer_with_its_weight(tmp_path, tiny_sd15, standing):
    from webui_double import generation, webui_started

    from portrait_core.hosts.webui_host import WebUIHost

    codeformer = tmp_path / "webui" / "models" / "Codeformer"
    codeformer.mkdir(parents=True)
    (codeformer / "codeformer-v0.1.0.pth").write_bytes(b"weights")
    with webui_started(tmp_path / "webui", ["--lora-dir", str(tmp_path / "loras")]):
        generation.start(generation.DiffusersBackend(tiny_sd15))
        from modules import codeformer_model

        workflow = WorkflowParams(steps=[{"op": "restore", "image": "photo.jpg", "codeformer_weight": 0.35}])
        outputs = WorkflowRunner(WebUIHost()).run(workflow, {"photo.jpg": standing})
        restorer = codeformer_model.codeformer
    assert outputs[0].images[0].size == standing.size
    assert restorer.calls == [0.35] and outputs[0].notes == []


@pytest.mark.usefixtures("webui_state_restored")
def test_restore_without_codeformer_weights_keeps_the_image_with_a_note(tmp_path, tiny_sd15, standing):
    from webui_double import generation, webui_started

    from portrait_core.hosts.webui_host import WebUIHost

    with webui_started(tmp_path / "webui", ["--lora-dir", str(tmp_path / "loras")]):
        generation.start(generation.DiffusersBackend(tiny_sd15))
        workflow = WorkflowParams(steps=[{"op": "restore", "image": "photo.jpg"}])
        outputs = WorkflowRunner(WebUIHost()).run(workflow, {"photo.jpg": standing})
    assert outputs[0].images[0] is not None and np.array_equal(np.asarray(outputs[0].images[0]),
                                                                np.asarray(standing))
    assert "codeformer-v0.1.0.pth" in outputs[0].notes[0]


def test_an_identity_puts_its_own_face_and_lora_into_a_pose(tiny_sd15, tiny_cache_dir, prepared_obama, standing,
                                                           tmp_path):
    from portrait_core.models.checkpoints.loading import load_components
    from portrait_core.models.tiny import ensure_tiny_ip_adapter
    from tests.lora_factory import random_lora_for
    from tests.service_factory import services_on

    parts = load_components(tiny_sd15)
    random_lora_for({"unet": parts.unet, "text_encoder": parts.text_encoder}, tmp_path / "obama.safetensors")
    adapter = ensure_tiny_ip_adapter("sd15", cache_dir=tiny_cache_dir)
    host = DiffusersHost(tiny_sd15, lora_dir=tmp_path, ip_adapter=adapter)
    services = services_on(host, identities=prepared_obama, home=tmp_path / "home")
    runner = WorkflowRunner(host, generation=services.generation)
    workflow = WorkflowParams(steps=[{"op": "image_prompt_pose", "identity": "obama", "pose_image": "pose.jpg",
                                      "steps": 2, "width": 64, "height": 64, "seed": 3}])
    [output] = runner.run(workflow, {"pose.jpg": standing})
    assert output.images[0].size == (64, 64)
    assert "Portrait identities: obama" in output.infotexts[0] and "IP-Adapter scale: 0.6" in output.infotexts[0]
