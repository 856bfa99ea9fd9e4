"""Opt-in (`-m realwebui`): an SDXL portrait with default controls in a real A1111 1.10.1 + ControlNet 1.1.455.

Needs, besides PORTRAIT_REAL_WEBUI (see test_real_webui_http.py), the SDXL stand-ins in that WebUI:
`qa-random-sdxl.safetensors` and `thibaud_xl_openpose` from ../shared/tools/real-webui/sdxl/, and the
small canny and tile ControlNets from `dev/build_sdxl_controlnets.py`. On 24 GB of RAM an SDXL training
cannot run beside a WebUI that holds the fp32 SDXL checkpoint (the trainer alone peaks at ~21 GB at 64 px),
so the identity is trained first by the standalone CLI on the same checkpoint file, with no WebUI running,
and placed where the WebUI's Portrait Studio finds it; the portrait itself runs through the WebUI's API.
About 8 minutes on two CPU cores.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_real_webui_http import AUTH, PORT, REPO_ROOT, _tool, call

pytestmark = pytest.mark.realwebui

CHECKPOINT = "qa-random-sdxl.safetensors"
CONTROLNETS = ("diffusers_xl_canny_small", "thibaud_xl_openpose", "qa_xl_tile_small")
IDENTITY = "qa-sdxl-tier"


def _prepared_webui() -> Path:
    home = os.environ.get("PORTRAIT_REAL_WEBUI")
    if not home:
        pytest.skip("set PORTRAIT_REAL_WEBUI to a WebUI prepared by ../shared/tools/real-webui/ to run these")
    webui_dir = Path(home) / "webui"
    missing = [name for name in (f"models/Stable-diffusion/{CHECKPOINT}",
                                 *(f"models/ControlNet/{name}.safetensors" for name in CONTROLNETS))
               if not (webui_dir / name).is_file()]
    if missing:
        pytest.skip(f"the SDXL stand-ins are not built in {webui_dir} (missing {', '.join(missing)}): run "
                    "../shared/tools/real-webui/sdxl/build_sdxl.py and build_cn.py, then "
                    "dev/build_sdxl_controlnets.py, with the WebUI's Python and WEBUI_DIR set")
    return Path(home)


@pytest.fixture(scope="module")
def sdxl_identity(tmp_path_factory, shared_faces_dir):
    """An SDXL identity trained by the standalone CLI (no WebUI running), placed in the WebUI's folders."""
    home = _prepared_webui()
    root, photos = tmp_path_factory.mktemp("sdxl-home"), tmp_path_factory.mktemp("sdxl-photos")
    for path in sorted(shared_faces_dir.glob("obama*.jpg"))[:3]:
        shutil.copy(path, photos / path.name)
    checkpoint = home / "webui" / "models" / "Stable-diffusion" / CHECKPOINT
    result = subprocess.run([sys.executable, "-m", "portrait_core", "train", "--id", IDENTITY, "--root", str(root),
                             "--photos", str(photos), "--base-model", str(checkpoint), "--max-steps", "2",
                             "--resolution", "64", "--validate-every", "2", "--rank", "4"],
                            cwd=REPO_ROOT, env=os.environ | {"PORTRAIT_OFFLINE": "1"}, capture_output=True,
                            text=True, timeout=1800, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    identity_dir = home / "portrait-home" / "identities" / IDENTITY
    lora = home / "webui" / "models" / "Lora" / f"{IDENTITY}.safetensors"
    shutil.rmtree(identity_dir, ignore_errors=True)
    shutil.copytree(root / "identities" / IDENTITY, identity_dir)
    shutil.copy(root / "identities" / f"{IDENTITY}.safetensors", lora)
    try:
        yield home
    finally:
        shutil.rmtree(identity_dir, ignore_errors=True)
        lora.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def sdxl_webui(sdxl_identity, tmp_path_factory):
    """The WebUI started with the extension from this tree, switched to the SDXL checkpoint with the Lora
    extension's older functional mode (its default mode keeps fp32 backups and runs out of 24 GB)."""
    home = str(sdxl_identity)
    env = os.environ | {"REAL_WEBUI_HOME": home, "EXTENSION_DIR": str(REPO_ROOT), "WEBUI_PORT": PORT,
                        "MIRRORS_DIR": os.environ.get("MIRRORS_DIR", "/work/.mirror")}
    log = tmp_path_factory.mktemp("realwebui-sdxl") / "webui.log"
    _tool(["./install_extension.sh"], env)
    _tool(["./launch.sh", "--nowebui", "--api-auth", ":".join(AUTH), "--log", str(log), "--wait"], env)
    webui = {"env": env, "log": log, "url": f"http://127.0.0.1:{PORT}"}
    try:
        # The WebUI loads its selected checkpoint at start in a thread of its own; switching while that runs
        # fails inside the WebUI ("Cannot copy out of meta tensor"). reload-checkpoint waits for it.
        assert call(webui, "POST", "/sdapi/v1/reload-checkpoint")[0] == 200
        _, before = call(webui, "GET", "/sdapi/v1/options")
        status, _ = call(webui, "POST", "/sdapi/v1/options", {"sd_model_checkpoint": CHECKPOINT,
                                                              "lora_functional": True})
        assert status == 200
        _, now = call(webui, "GET", "/sdapi/v1/options")
        assert now["sd_model_checkpoint"].startswith(CHECKPOINT), now["sd_model_checkpoint"]
        try:
            yield webui
        finally:
            call(webui, "POST", "/sdapi/v1/options", {"sd_model_checkpoint": before["sd_model_checkpoint"],
                                                      "lora_functional": before.get("lora_functional", False)})
    finally:
        _tool(["./launch.sh", "--stop"], env, check=False)


def test_an_sdxl_portrait_with_default_controls_runs_the_controls_sdxl_has(sdxl_webui, shared_faces_dir):
    import base64

    template = base64.b64encode((shared_faces_dir / "biden.jpg").read_bytes()).decode()
    params = {"identities": [IDENTITY], "first_pass_steps": 4, "second_pass_steps": 4, "crop_size": 256, "seed": 3,
              "ip_adapter_weight": 0.0}  # every other field at its default, colour weight 0.85 included
    status, answer = call(sdxl_webui, "POST", "/sdapi/v1/portrait/generate",
                          {"params": params, "templates": [{"name": "biden.jpg", "data": template}]})
    assert status == 200, json.dumps(answer)[:2000]
    [image] = answer["images"]
    assert image["image"] and f"Model: {CHECKPOINT.removesuffix('.safetensors')}" in image["infotext"]
    assert any(note.startswith("colour control left out: no colour ControlNet or T2I-Adapter exists for SDXL")
               for note in image["notes"]), image["notes"]
    log = re.sub(r"\x1b\[[0-9;]*m", "", sdxl_webui["log"].read_text(errors="replace"))
    for model in CONTROLNETS:
        assert re.search(rf"ControlNet model {model} \[[0-9a-f]+\].* loaded", log), f"{model} never loaded"
    assert log.count("ControlNet Hooked") >= 2, "a pass ran without its ControlNet units"
    assert f"Lora/{IDENTITY}.safetensors" in log, "the Lora extension never read the SDXL LoRA"
    assert "URLError" not in log, "an SDXL call tried to download (live previews?)"
