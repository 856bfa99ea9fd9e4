"""The /sdapi/v1/portrait HTTP API through FastAPI's TestClient: real files, the real job runner, the tiny model."""

from __future__ import annotations

import base64
import json
import shutil
import threading
import time
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from portrait_core import __version__
from portrait_core.adapters.http.api import (
    API_PREFIX,
    ApiContext,
    UploadLimits,
    mount_api,
    parse_api_auth,
)
from portrait_core.jobs import FINISHED_STATES
from portrait_core.params import params_json_schema
from portrait_core.services.runtime import PortraitServices, standalone_services
from portrait_core.services.uploads import safe_photo_name
from portrait_core.services.workspace import Workspace

TRAIN = f"{API_PREFIX}/train"
IDENTITIES = f"{API_PREFIX}/identities"
LIMITS = UploadLimits(max_request_bytes=8_000_000, max_photos=6, max_photo_bytes=2_000_000)


@pytest.fixture
def obama_photos(shared_faces_dir) -> list[Path]:
    return sorted(shared_faces_dir.glob("obama*.jpg"))


@pytest.fixture
def prepared_root(tmp_path, prepared_obama) -> Path:
    """A private copy of the identities root holding a prepared 'obama'."""
    root = tmp_path / "identities"
    shutil.copytree(prepared_obama, root)
    return root


def make_services(runner, root, *, tiny=None) -> PortraitServices:
    """The services of a standalone server on the tiny model (clients may name it by its folder name), with
    identities in `root` and LoRAs in the settings' LoRA folder (the `lora_dir` fixture)."""
    from portrait_core import config

    workspace = Workspace(root.parent / "home", config.settings().lora_dir, root)
    return standalone_services(workspace, tiny, checkpoints_dir=tiny.parent if tiny is not None else None,
                               runner=runner)


def make_client(runner, root, *, tiny=None, services=None, **context) -> TestClient:
    app = FastAPI()
    services = services or make_services(runner, root, tiny=tiny)
    mount_api(app, ApiContext(services=services, limits=context.pop("limits", LIMITS), **context))
    client = TestClient(app)
    client.services = services
    return client


def train_params(tiny, **overrides) -> dict:
    values = {"identity": "obama", "base_model": tiny.name, "max_train_steps": 6, "resolution": 64,
              "validate_every": 3, "rank": 4, "alpha": 2.0, "gradient_accumulation": 1, "learning_rate": 1e-3}
    return values | overrides


def base64_photos(paths, names) -> list[dict]:
    return [{"name": name, "data": base64.b64encode(path.read_bytes()).decode("ascii")}
            for path, name in zip(paths, names, strict=True)]


def follow_job(client, job_id, timeout=180.0, until=lambda job: job["state"] in FINISHED_STATES) -> list[dict]:
    """Poll GET jobs/{id} until `until(job)`; returns every status seen."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get(f"{API_PREFIX}/jobs/{job_id}")
        assert response.status_code == 200, response.text
        seen.append(response.json())
        if until(seen[-1]):
            return seen
        time.sleep(0.25)
    raise AssertionError(f"job {job_id} did not get there in {timeout} s; last status {seen[-1]}")


def assert_progress_advanced_to_done(statuses: list[dict]) -> None:
    fractions = [s["fraction"] for s in statuses if s["fraction"] is not None]
    assert fractions == sorted(fractions), "progress went backwards"
    final = statuses[-1]
    assert final["state"] == "done", final["error"]
    assert final["fraction"] == 1.0 and final["lora"] == "obama" and final["eta_s"] is None
    assert any(s["state"] == "running" for s in statuses), "never saw the job running"


def disk_snapshot(folder: Path) -> dict[str, tuple]:
    return {str(p.relative_to(folder)): ("dir",) if p.is_dir() else (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def error_locs(response) -> list[list]:
    return [item["loc"] for item in response.json()["detail"]]


# -- schema, version, mounting ------------------------------------------------------------------------

def test_schema_and_version(tmp_path, runner):
    client = make_client(runner, tmp_path / "identities")
    assert client.get(f"{API_PREFIX}/schema").json() == json.loads(json.dumps(params_json_schema()))
    version = client.get(f"{API_PREFIX}/version").json()
    assert version["version"] == __version__ and version["api_version"] == 1
    assert len(version["params_schema_version"]) == 12 and "train" in version["capabilities"]
    body = client.get("/openapi.json").json()["paths"][TRAIN]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(body)
    assert "max_train_steps" in body["application/json"]["schema"]["properties"]["params"]["properties"]


def test_mounting_twice_replaces_the_routes(tmp_path, runner):
    app = FastAPI()
    services = make_services(runner, tmp_path / "identities")
    for _ in range(2):
        mount_api(app, ApiContext(services=services))
    paths = [route.path for route in app.routes if route.path.startswith(API_PREFIX)]
    assert len(paths) == len(set(paths)) == 11


# -- auth ----------------------------------------------------------------------------------------------

def test_auth_on_requires_one_of_the_configured_users(tmp_path, runner):
    client = make_client(runner, tmp_path / "identities", api_auth="alice:s3cret,bob:pa:ss")
    for path in (f"{API_PREFIX}/version", IDENTITIES, f"{API_PREFIX}/schema"):
        missing = client.get(path)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Basic"
        assert client.get(path, auth=("alice", "wrong")).status_code == 401
        assert client.get(path, auth=("mallory", "s3cret")).status_code == 401
        assert client.get(path, auth=("alice", "s3cret")).status_code == 200
        assert client.get(path, auth=("bob", "pa:ss")).status_code == 200
    assert client.post(TRAIN, json={"params": {"identity": "x"}}).status_code == 401
    assert client.delete(f"{IDENTITIES}/x").status_code == 401
    assert client.get(f"{API_PREFIX}/jobs/abc").status_code == 401


def test_auth_off_lets_everyone_in(tmp_path, runner):
    client = make_client(runner, tmp_path / "identities", api_auth="")
    assert client.get(f"{API_PREFIX}/version").status_code == 200


def test_api_auth_is_parsed_like_the_webui_flag():
    assert parse_api_auth("a:b,c:d:e") == {"a": "b", "c": "d:e"}
    assert parse_api_auth(None) == {} and parse_api_auth("") == {}
    with pytest.raises(ValueError, match="entry 2"):
        parse_api_auth("a:b,nocolon")


# -- rejected requests change nothing ------------------------------------------------------------------

def rejected_requests(tiny, photo: Path):
    """(description, request kwargs, expected status, expected error loc or None)."""
    photo_b64 = base64_photos([photo], ["a.jpg"])
    files = [("photos", ("a.jpg", photo.read_bytes(), "image/jpeg"))]
    return [
        ("steps out of range", {"json": {"params": train_params(tiny, max_train_steps=0), "photos": photo_b64}},
         422, ["body", "params", "max_train_steps"]),
        ("misspelt field", {"json": {"params": train_params(tiny, learning_rat=1), "photos": photo_b64}},
         422, ["body", "params", "learning_rat"]),
        ("multipart bad rank", {"files": files, "data": {"params": json.dumps(train_params(tiny, rank="many"))}},
         422, ["body", "params", "rank"]),
        ("multipart without params", {"files": files}, 422, ["body", "params"]),
        ("multipart extra field", {"files": files, "data": {"params": json.dumps(train_params(tiny)), "x": "1"}},
         422, ["body", "x"]),
        ("traversal identity", {"json": {"params": train_params(tiny, identity="../../etc")}},
         422, ["body", "params", "identity"]),
        ("device-name identity", {"json": {"params": train_params(tiny, identity="con"), "photos": photo_b64}},
         422, ["body", "params", "identity"]),
        ("server path as model", {"json": {"params": train_params(tiny, base_model="/etc/passwd")}},
         422, ["body", "params", "base_model"]),
        ("escaping model name", {"json": {"params": train_params(tiny, base_model=f"../{tiny.parent.name}")}},
         422, ["body", "params", "base_model"]),
        ("unknown model", {"json": {"params": train_params(tiny, base_model="nope")}},
         422, ["body", "params", "base_model"]),
        ("bad base64", {"json": {"params": train_params(tiny), "photos": [{"name": "a", "data": "no!"}]}},
         422, ["body", "photos", 0, "data"]),
        ("too many photos", {"json": {"params": train_params(tiny), "photos": photo_b64 * 7}},
         422, ["body", "photos"]),
        ("photo too large", {"files": [("photos", ("big.jpg", b"\xff" * 2_000_001, "image/jpeg"))],
                             "data": {"params": json.dumps(train_params(tiny))}}, 413, ["body", "photos", 0]),
        ("request too large", {"content": b"{" + b" " * 8_000_001 + b"}",
                               "headers": {"content-type": "application/json"}}, 413, None),
        ("chunked request too large", {"content": iter([b"{", b" " * 8_000_001, b"}"]),
                                       "headers": {"content-type": "application/json"}}, 413, None),
        ("not JSON", {"content": b"{nope", "headers": {"content-type": "application/json"}}, 422, ["body"]),
        ("wrong content type", {"content": b"hi", "headers": {"content-type": "text/plain"}}, 415, None),
    ]


def test_rejected_requests_name_the_field_and_leave_the_disk_unchanged(tmp_path, runner, lora_dir, tiny_sd15,
                                                                       prepared_root, obama_photos):
    client = make_client(runner, prepared_root, tiny=tiny_sd15)
    before = disk_snapshot(tmp_path)
    for description, request, status, loc in rejected_requests(tiny_sd15, obama_photos[0]):
        response = client.post(TRAIN, **request)
        assert response.status_code == status, (description, response.text)
        if loc is not None:
            assert loc in error_locs(response), (description, response.text)
    assert disk_snapshot(tmp_path) == before
    assert runner.jobs() == []


def test_photos_that_keep_nothing_are_a_422_with_the_report_and_change_nothing(tmp_path, runner, lora_dir,
                                                                              tiny_sd15, prepared_root):
    from PIL import Image

    client = make_client(runner, prepared_root, tiny=tiny_sd15)
    before = disk_snapshot(tmp_path)
    tiny_image = tmp_path / "small.png"
    Image.new("RGB", (40, 40), "white").save(tiny_image)
    files = [("photos", ("notes.txt", b"just some text", "text/plain")),
             ("photos", ("small.png", tiny_image.read_bytes(), "image/png"))]
    tiny_image.unlink()
    response = client.post(TRAIN, files=files, data={"params": json.dumps(train_params(tiny_sd15))})
    assert response.status_code == 422, response.text
    assert ["body", "photos"] in error_locs(response)
    reasons = {entry["file"]: entry["reason"] for entry in response.json()["report"]["photos"]}
    assert "not a picture" in reasons["01-notes"] and "too small" in reasons["02-small.png"]
    assert disk_snapshot(tmp_path) == before, "a rejected upload changed the identity"


# -- ids in paths ----------------------------------------------------------------------------------------

HOSTILE_IDS = ["..", "...", ".hidden", "a.b", "con", "%2e%2e", "..%2F..%2Fsentinel", "..%5C..%5Csentinel",
               "obama%2F..%2F..%2Fsentinel", "%00", "x" * 65]


def test_hostile_ids_in_paths_touch_nothing(tmp_path, runner, lora_dir, prepared_root):
    (tmp_path / "sentinel").write_text("keep me")
    client = make_client(runner, prepared_root)
    before = disk_snapshot(tmp_path)
    for hostile in HOSTILE_IDS:
        deleted = client.delete(f"{IDENTITIES}/{hostile}")
        assert deleted.status_code in (400, 404, 405, 422), (hostile, deleted.text)
        for path in (f"{API_PREFIX}/jobs/{hostile}", f"{API_PREFIX}/jobs/{hostile}/cancel"):
            method = client.post if path.endswith("cancel") else client.get
            assert method(path).status_code in (400, 404, 405, 422), (hostile, path)
    assert disk_snapshot(tmp_path) == before


@pytest.mark.parametrize(("client_name", "saved"), [
    ("holiday.JPG", "01-holiday.jpg"),
    ("../../../etc/passwd", "01-passwd"),
    ("..\\..\\boot.ini", "01-boot"),
    ("C:\\Users\\me\\My photo (2).jpeg", "01-My_photo_2.jpeg"),
    (".bashrc", "01-photo"),
    ("évé.png", "01-v.png"),
    ("", "01-photo"),
    ("x" * 300 + ".png", "01-" + "x" * 40 + ".png"),
    ("a\x00b.jpg", "01-a_b.jpg"),
    ("photo.php", "01-photo"),
])
def test_client_file_names_never_become_paths(client_name, saved):
    assert safe_photo_name(0, client_name) == saved


# -- training through the API ----------------------------------------------------------------------------

HOSTILE_NAMES = ["../../outside.jpg", "..\\..\\windows.jpg", "/etc/cron.d/evil", ".bashrc", "CON"]


def test_train_with_base64_photos_runs_to_done(tmp_path, runner, lora_dir, tiny_sd15, obama_photos):
    root = tmp_path / "identities"
    client = make_client(runner, root, tiny=tiny_sd15)
    before = set(disk_snapshot(tmp_path))
    photos = base64_photos(obama_photos, HOSTILE_NAMES)
    photos[0]["data"] = "data:image/jpeg;base64," + photos[0]["data"]  # as a browser's FileReader gives it
    photos[1]["data"] = "\n".join(photos[1]["data"][i:i + 76] for i in range(0, len(photos[1]["data"]), 76))
    response = client.post(TRAIN, json={"params": train_params(tiny_sd15), "photos": photos})
    assert response.status_code == 200, response.text
    answer = response.json()
    saved = ["01-outside.jpg", "02-windows.jpg", "03-evil", "04-photo", "05-CON"]
    assert [p["file"] for p in answer["photos"]] == saved
    assert sorted(p.name for p in (root / "obama" / "photos").iterdir()) == saved
    assert sum(entry["kept"] for entry in answer["report"]["photos"]) >= 3
    statuses = follow_job(client, answer["job_id"])
    assert_progress_advanced_to_done(statuses)
    new = {Path(p) for p in set(disk_snapshot(tmp_path)) - before}
    allowed = (Path("identities/obama"), Path("Lora"), Path("jobs"), Path("identities"))
    assert all(p in allowed or any(a in p.parents for a in allowed[:3]) for p in new), sorted(map(str, new))
    assert not (root / ".uploads").exists(), "the staging folder was left behind"
    (listed,) = client.get(IDENTITIES).json()["identities"]
    assert listed["id"] == "obama" and listed["has_lora"] and listed["base_model"] == tiny_sd15.name
    assert listed["lora_size_bytes"] == (lora_dir / "obama.safetensors").stat().st_size
    assert listed["reference_face"] and listed["prepared"] and listed["photos"] == 5
    assert listed["trained_at"] and listed["active_job"] is None


def test_train_with_multipart_waits_for_the_gpu_then_runs_to_done(tmp_path, runner, lora_dir, tiny_sd15,
                                                                  obama_photos):
    root = tmp_path / "identities"
    client = make_client(runner, root, tiny=tiny_sd15)
    files = [("photos", (path.name, path.read_bytes(), "image/jpeg")) for path in obama_photos]
    responses = []
    request = threading.Thread(target=lambda: responses.append(
        client.post(TRAIN, files=files, data={"params": json.dumps(train_params(tiny_sd15))})))
    with client.services.host().session("a generation"):  # it holds the GPU: preparation must wait for it
        request.start()
        time.sleep(1.5)
        assert request.is_alive() and not responses
        assert not (root / "obama").exists(), "prepared while a generation held the GPU"
    request.join(timeout=120)
    (response,) = responses
    assert response.status_code == 200, response.text
    assert [p["file"] for p in response.json()["photos"]] == [f"0{i + 1}-{p.stem}.jpg"
                                                              for i, p in enumerate(obama_photos)]
    assert_progress_advanced_to_done(follow_job(client, response.json()["job_id"]))
    assert (lora_dir / "obama.safetensors").is_file()


def test_cancel_a_running_training_and_refuse_changes_meanwhile(tmp_path, runner, lora_dir, tiny_sd15,
                                                                prepared_root, obama_photos):
    client = make_client(runner, prepared_root, tiny=tiny_sd15)
    # No photos: train again from the identity's prepared dataset.
    response = client.post(TRAIN, json={"params": train_params(tiny_sd15, max_train_steps=5000,
                                                                validate_every=5000)})
    assert response.status_code == 200, response.text
    assert response.json()["report"] is None
    job_id = response.json()["job_id"]
    follow_job(client, job_id, until=lambda job: (job["progress"].get("step") or 0) > 0)
    assert client.delete(f"{IDENTITIES}/obama").status_code == 409
    again = client.post(TRAIN, json={"params": train_params(tiny_sd15),
                                     "photos": base64_photos(obama_photos[:1], ["a.jpg"])})
    assert again.status_code == 409 and job_id in again.text
    assert client.get(IDENTITIES).json()["identities"][0]["active_job"] == job_id
    assert client.post(f"{API_PREFIX}/jobs/{job_id}/cancel").status_code == 200
    final = follow_job(client, job_id, timeout=60)[-1]
    assert final["state"] == "cancelled" and final["lora"] is None and final["eta_s"] is None
    assert not (lora_dir / "obama.safetensors").exists()
    assert client.post(f"{API_PREFIX}/jobs/{job_id}/cancel").json()["state"] == "cancelled"
    assert (prepared_root / "obama" / "dataset").is_dir(), "a refused upload replaced the dataset"


# -- identities ------------------------------------------------------------------------------------------

def write_lora(path: Path, metadata: dict) -> None:
    """A small kohya LoRA whose first byte is 0x80 (its header length's low byte), the byte a raw pickle
    starts with: the metadata must still be read as safetensors."""
    import torch

    from portrait_core.models.lora import LoraLayer, write_lora_file

    layer = LoraLayer(down=torch.zeros(2, 4), up=torch.zeros(4, 2), alpha=1.0)
    for padding in range(256):
        write_lora_file(path, {"lora_unet_x": layer}, metadata | {"padding": "p" * padding})
        if path.read_bytes()[:1] == b"\x80":
            return
    raise AssertionError("no padding gave a header length ending in 0x80")


def test_identities_list_and_delete(tmp_path, runner, lora_dir, prepared_root):
    write_lora(lora_dir / "obama.safetensors", {"portrait_studio.identity": "obama", "ss_base_model_version": "sd_v1",
                                                "portrait_studio.base_model": "v1-5-pruned.safetensors"})
    (prepared_root / "alice" / "photos").mkdir(parents=True)
    write_lora(lora_dir / "alice.safetensors", {"ss_output_name": "someone else's LoRA"})
    (prepared_root / "not an id").mkdir()
    client = make_client(runner, prepared_root)
    listed = {item["id"]: item for item in client.get(IDENTITIES).json()["identities"]}
    assert sorted(listed) == ["alice", "obama"]
    obama, alice = listed["obama"], listed["alice"]
    assert obama["has_lora"] and obama["lora_name"] == "obama" and obama["base_model"] == "v1-5-pruned.safetensors"
    assert obama["base_model_version"] == "sd_v1" and obama["reference_face"] and obama["prepared"]
    assert obama["lora_size_bytes"] == (lora_dir / "obama.safetensors").stat().st_size and obama["trained_at"]
    assert not alice["prepared"] and not alice["reference_face"] and alice["photos"] == 0
    deleted = client.delete(f"{IDENTITIES}/alice").json()
    assert deleted["removed"] == ["folder"] and "alice.safetensors" in deleted["kept"][0]
    assert (lora_dir / "alice.safetensors").is_file(), "deleted a LoRA Portrait Studio did not train"
    assert client.delete(f"{IDENTITIES}/obama").json()["removed"] == ["folder", "lora"]
    assert not (prepared_root / "obama").exists() and not (lora_dir / "obama.safetensors").exists()
    assert client.get(IDENTITIES).json()["identities"] == []
    assert client.delete(f"{IDENTITIES}/obama").status_code == 404
    assert sorted(p.name for p in prepared_root.iterdir()) == ["not an id"]
