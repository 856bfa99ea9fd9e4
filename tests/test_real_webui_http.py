"""Opt-in (`-m realwebui`): the extension inside a real, running A1111 1.10.1 + sd-webui-controlnet 1.1.455.

PORTRAIT_REAL_WEBUI names a WebUI prepared by `../shared/tools/real-webui/` (its REAL_WEBUI_HOME: setup done,
stand-in models built). The module installs this repository's committed tree into it (`install_extension.sh`
takes `git archive HEAD`: commit first), starts it with `--nowebui --api-auth`, runs the tools' `smoke.py`
(train on a named checkpoint, the LoRA listed and applied by the WebUI's own txt2img, generate, pose
transfer) and then what the double cannot show: which checkpoint a training without `base_model` uses,
one training per identity, the WebUI's own sampler list, and that every ControlNet unit really hooked.
About 10 minutes on two CPU cores.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.realwebui

REPO_ROOT = Path(__file__).resolve().parents[1]
TOOLS = REPO_ROOT.parent / "shared" / "tools" / "real-webui"
AUTH = ("qa", "secret")
PORT = "7871"
STAND_IN = "qa-random-sd15.safetensors"


@pytest.fixture(scope="module")
def webui(tmp_path_factory):
    home = os.environ.get("PORTRAIT_REAL_WEBUI")
    if not home:
        pytest.skip("set PORTRAIT_REAL_WEBUI to a WebUI prepared by ../shared/tools/real-webui/ to run these")
    if not (Path(home) / "webui" / "launch.py").is_file():
        pytest.skip(f"{home} holds no prepared WebUI (no webui/launch.py); run the tools' setup.sh first")
    env = os.environ | {"REAL_WEBUI_HOME": home, "EXTENSION_DIR": str(REPO_ROOT), "WEBUI_PORT": PORT,
                        "MIRRORS_DIR": os.environ.get("MIRRORS_DIR", "/work/.mirror")}
    log = tmp_path_factory.mktemp("realwebui") / "webui.log"
    _tool(["./install_extension.sh"], env)
    _tool(["./launch.sh", "--nowebui", "--api-auth", ":".join(AUTH), "--log", str(log), "--wait"], env)
    try:
        yield {"env": env, "log": log, "url": f"http://127.0.0.1:{PORT}"}
    finally:
        _tool(["./launch.sh", "--stop"], env, check=False)


def _tool(command, env, *, check=True, timeout=2400):
    result = subprocess.run(command, cwd=TOOLS, env=env, capture_output=True, text=True, timeout=timeout,
                            check=False)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def call(webui, method, path, body=None):
    request = urllib.request.Request(webui["url"] + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", "Authorization": "Basic " +
                                              base64.b64encode(":".join(AUTH).encode()).decode()})
    try:
        with urllib.request.urlopen(request, timeout=1800) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def wait_for(webui, job_id, timeout=1800):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, job = call(webui, "GET", f"/sdapi/v1/portrait/jobs/{job_id}")
        if job["state"] in ("done", "failed", "cancelled"):
            return job
        time.sleep(3)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s")


def test_the_tools_smoke_checks_pass(webui, tmp_path):
    result = _tool([sys.executable, "smoke.py", "--auth", ":".join(AUTH), "--out", str(tmp_path)], webui["env"])
    assert "10 of 10 ok" in result.stdout, result.stdout
    log = re.sub(r"\x1b\[[0-9;]*m", "", webui["log"].read_text(errors="replace"))
    # generate's two passes (canny + openpose + colour adapter, then canny + tile) and pose transfer's openpose
    for model in ("control_v11p_sd15_canny", "control_v11p_sd15_openpose", "control_v11f1e_sd15_tile",
                  "t2iadapter_color_sd14v1"):
        assert re.search(rf"ControlNet model {model} \[[0-9a-f]+\].* loaded", log), f"{model} never loaded"
    assert log.count("ControlNet Hooked") >= 3, "a pass ran without its ControlNet units"


def test_training_without_a_base_model_uses_the_webuis_checkpoint_once_per_identity(webui, shared_faces_dir):
    photos = [{"name": p.name, "data": base64.b64encode(p.read_bytes()).decode()}
              for p in sorted(shared_faces_dir.glob("obama*.jpg"))[:3]]
    params = {"identity": "qa-default", "max_train_steps": 2, "resolution": 64, "validate_every": 2, "rank": 4,
              "gradient_accumulation": 1}
    status, started = call(webui, "POST", "/sdapi/v1/portrait/train", {"params": params, "photos": photos})
    assert status == 200, started
    assert started["base_model"] == STAND_IN and started["notes"] == []
    status, again = call(webui, "POST", "/sdapi/v1/portrait/train", {"params": params})
    assert status == 409 and started["job_id"] in str(again)
    assert wait_for(webui, started["job_id"])["state"] == "done"
    _, listing = call(webui, "GET", "/sdapi/v1/portrait/identities")
    [identity] = [entry for entry in listing["identities"] if entry["id"] == "qa-default"]
    assert (identity["base_model"], identity["family"]) == (STAND_IN, "sd15")


def test_a_sampler_the_webui_lacks_is_refused_before_anything_runs(webui, shared_faces_dir):
    template = base64.b64encode((shared_faces_dir / "biden.jpg").read_bytes()).decode()
    status, answer = call(webui, "POST", "/sdapi/v1/portrait/generate", {
        "params": {"identities": ["qa-default"], "sampler": "PNDM"}, "templates": [{"name": "b.jpg",
                                                                                   "data": template}]})
    assert status == 422 and "'PNDM' is not offered by this host" in str(answer)


def test_a_training_is_one_of_the_webuis_jobs_and_its_interrupt_stops_it(webui, shared_faces_dir):
    """/sdapi/v1/progress (what the top bar and API clients read) follows the training's steps under the
    training's task id; the WebUI's Interrupt cancels it; the console's total bar counted its steps."""
    photos = [{"name": p.name, "data": base64.b64encode(p.read_bytes()).decode()}
              for p in sorted(shared_faces_dir.glob("obama*.jpg"))[:3]]
    name = f"qa-turn-{os.getpid()}-{int(time.time())}"  # a first training: no earlier LoRA
    params = {"identity": name, "max_train_steps": 60, "resolution": 64, "validate_every": 30, "rank": 4,
              "gradient_accumulation": 1, "base_model": STAND_IN}
    status, started = call(webui, "POST", "/sdapi/v1/portrait/train", {"params": params, "photos": photos})
    assert status == 200, started
    job_id = started["job_id"]
    seen = []
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        _, answer = call(webui, "GET", "/sdapi/v1/progress?skip_current_image=true")
        seen.append(answer)
        if answer["state"]["job_no"] >= 3:
            break
        time.sleep(1)
    latest = seen[-1]
    assert latest["state"]["job"] == f"task(portrait-train-{job_id})", latest
    assert latest["state"]["job_count"] == 60 and latest["progress"] >= 3 / 60, latest
    assert latest["textinfo"] == f"Portrait Studio: training {name} (training)", latest
    status, _ = call(webui, "POST", "/sdapi/v1/interrupt")
    assert status == 200
    assert wait_for(webui, job_id, timeout=120)["state"] == "cancelled"
    log = re.sub(r"\x1b\[[0-9;]*m", "", webui["log"].read_text(errors="replace"))
    assert re.search(r"Total progress: +\d+%\|.*\| [1-9]\d*/60 ", log), "the console's total bar never counted steps"
    _, listing = call(webui, "GET", "/sdapi/v1/portrait/identities")
    [identity] = [entry for entry in listing["identities"] if entry["id"] == name]
    assert identity["has_lora"] is False, "an interrupted first training left a LoRA"
    call(webui, "DELETE", f"/sdapi/v1/portrait/identities/{name}")
