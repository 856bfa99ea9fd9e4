"""`python -m portrait_core`: the commands a user types, run as a user runs them (subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO_ROOT


def _run(args, home, timeout=300):
    env = os.environ | {"PORTRAIT_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "portrait_core", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_help_lists_every_subcommand(tmp_path):
    result = _run(["--help"], tmp_path)
    assert result.returncode == 0
    for command in ("demo", "preprocess", "train", "generate", "workflow", "serve"):
        assert command in result.stdout


def test_demo_prepares_trains_and_renders(tmp_path, tiny_sd15):
    out = tmp_path / "out"
    result = _run(["demo", "--out", str(out), "--size", "128", "--steps", "4", "--base-model", str(tiny_sd15)],
                  tmp_path)
    assert result.returncode == 0, result.stderr
    assert str(out / "index.html") in result.stdout
    summary = json.loads((out / "demo.json").read_text())
    assert summary["kept"] == summary["of"] == 6
    assert Path(summary["lora"]).is_file() and Path(summary["lora"]).suffix == ".safetensors"
    records = json.loads((out / "portraits" / "results.json").read_text())
    portrait = Image.open(records[0]["output"])
    template = Image.open(out / "portraits" / "template.png")
    assert portrait.size == template.size
    corner = (slice(0, 40), slice(0, 40))  # far from the face: untouched
    assert np.array_equal(np.asarray(portrait)[corner], np.asarray(template)[corner])
    assert "Portraits" in (out / "index.html").read_text()
    assert Image.open(out / "contact_sheet.png").height > 0


def test_demo_with_a_missing_checkpoint_fails_cleanly(tmp_path):
    result = _run(["demo", "--out", str(tmp_path / "o"), "--base-model", str(tmp_path / "nope.safetensors")],
                  tmp_path)
    assert result.returncode == 1
    assert "nope.safetensors" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("source", ["file", "variable", "flag"])
def test_serve_answers_http_on_loopback_behind_its_login(tmp_path, source):
    import socket
    import time

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = os.environ | {"PORTRAIT_HOME": str(tmp_path)}
    command = [sys.executable, "-m", "portrait_core", "serve", "--port", str(port)]
    if source == "file":
        login_file = tmp_path / "login.txt"
        login_file.write_text("# the API's users\nana:secret\n", encoding="utf-8")
        login_file.chmod(0o600)
        command += ["--api-auth-file", str(login_file)]
    elif source == "variable":
        env["PORTRAIT_API_AUTH"] = "ana:secret"
    else:
        command += ["--api-auth", "ana:secret"]
    server = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    url = f"http://127.0.0.1:{port}/sdapi/v1/portrait/version"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                response = httpx.get(url, auth=("ana", "secret"), timeout=2)
                break
            except httpx.TransportError:
                assert server.poll() is None, server.stderr.read()
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.3)
        assert response.status_code == 200 and "generate" in response.json()["capabilities"]
        assert httpx.get(url, timeout=2).status_code == 401
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
        assert page.status_code == 200 and "auth_required" in page.text, "the tabs ask for the login first"
        assert httpx.get(f"http://127.0.0.1:{port}/config", timeout=10).status_code == 401
        in_process_list = "secret" in Path(f"/proc/{server.pid}/cmdline").read_text(errors="replace")
        assert in_process_list == (source == "flag")
    finally:
        server.terminate()
        server.wait(timeout=20)
    if source == "flag":
        assert "visible to every user of this machine" in server.stderr.read()


def test_serve_refuses_a_login_file_it_cannot_use(tmp_path):
    empty = tmp_path / "login.txt"
    empty.write_text("# nobody yet\n", encoding="utf-8")
    result = _run(["serve", "--api-auth-file", str(empty)], tmp_path)
    assert result.returncode == 1 and "login.txt: holds no user:password line" in result.stderr
    result = _run(["serve", "--api-auth-file", str(empty), "--api-auth", "a:b"], tmp_path)
    assert result.returncode == 1 and "not both" in result.stderr
