"""POST /sdapi/v1/portrait/jobs/{id}/retry through FastAPI's TestClient: a real cancelled training resumes."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient

from portrait_core.adapters.http.api import API_PREFIX, ApiContext, mount_api
from portrait_core.jobs import FINISHED_STATES
from portrait_core.params import TrainParams


def _client(services) -> TestClient:
    app = FastAPI()
    mount_api(app, ApiContext(services=services))
    return TestClient(app)


def _status(client, job_id) -> dict:
    response = client.get(f"{API_PREFIX}/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()


def _follow(client, job_id, until, timeout=240.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = _status(client, job_id)
        if until(status):
            return status
        time.sleep(0.25)
    raise AssertionError(f"job {job_id} did not get there; last status {status}")


def test_a_cancelled_training_resumes_from_its_checkpoint_over_http(tmp_path, prepared_obama, runner, lora_dir,
                                                                    services_at):
    root = tmp_path / "identities"
    shutil.copytree(prepared_obama, root)
    services = services_at(root, lora_dir=lora_dir, runner=runner)
    client = _client(services)
    params = TrainParams(identity="obama", max_train_steps=40, resolution=64, validate_every=5, rank=4, alpha=2.0,
                         gradient_accumulation=1, learning_rate=1e-3)
    job = services.training.start(params).job
    retry = f"{API_PREFIX}/jobs/{job.id}/retry"
    first_checkpoint = Path(job.output_dir) / "checkpoint-5.safetensors"
    running = _follow(client, job.id, lambda s: first_checkpoint.is_file() or s["state"] in FINISHED_STATES)
    assert running["state"] == "running" and running["retryable"] is False
    refused = client.post(retry)
    assert refused.status_code == 409 and "running" in refused.json()["detail"]
    client.post(f"{API_PREFIX}/jobs/{job.id}/cancel")
    cancelled = _follow(client, job.id, lambda s: s["state"] in FINISHED_STATES, timeout=60)
    assert cancelled["state"] == "cancelled" and cancelled["retryable"] is True
    kept = max(int(path.stem.split("-")[1]) for path in Path(job.output_dir).glob("checkpoint-*.safetensors"))

    response = client.post(retry)
    assert response.status_code == 200, response.text
    assert response.json()["state"] in ("queued", "running") and response.json()["error"] is None
    done = _follow(client, job.id, lambda s: s["state"] in FINISHED_STATES)
    assert done["state"] == "done" and done["lora"] == "obama", done["error"]
    assert (lora_dir / "obama.safetensors").is_file()
    records = [json.loads(line) for line in (Path(job.output_dir) / "progress.jsonl").read_text().splitlines()]
    restart = max(i for i, record in enumerate(records) if record["phase"] == "loading")
    assert next(r["step"] for r in records[restart:] if r["phase"] == "training") == kept + 1
    again = client.post(retry)
    assert again.status_code == 409 and "only failed or cancelled" in again.json()["detail"]


def test_retry_of_an_unknown_or_generation_job_is_refused(tmp_path, runner, services_at):
    client = _client(services_at(tmp_path / "identities", runner=runner))
    assert client.post(f"{API_PREFIX}/jobs/nosuchjob/retry").status_code == 404
    assert client.post(f"{API_PREFIX}/jobs/..%2F..%2Fetc/retry").status_code == 404

    def out_of_memory(context):
        raise MemoryError

    job = runner.submit_task("generate", "ana", out_of_memory, tmp_path / "out")
    assert runner.wait(job.id, timeout=20).state == "failed"
    status = _status(client, job.id)
    assert status["retryable"] is False and "ran out of memory" in status["error"]
    refused = client.post(f"{API_PREFIX}/jobs/{job.id}/retry")
    assert refused.status_code == 409 and "submit it again" in refused.json()["detail"]


def test_a_retry_waits_for_a_change_of_its_identity_and_refuses_one_deleted_meanwhile(tmp_path, prepared_obama,
                                                                                      runner, services_at):
    import threading

    root = tmp_path / "identities"
    shutil.copytree(prepared_obama, root)
    services = services_at(root, runner=runner)
    client = _client(services)
    job = runner.wait(runner.submit("train", "obama", ["portrait_core.no_such_module"], tmp_path / "run").id, 30)
    assert job.state == "failed"
    answers = []
    with services.identities.exclusive("obama"):  # as a delete holds it while it removes the folder
        retrying = threading.Thread(target=lambda: answers.append(client.post(f"{API_PREFIX}/jobs/{job.id}/retry")))
        retrying.start()
        retrying.join(timeout=1.0)
        assert retrying.is_alive() and not answers, "the retry went ahead while the identity was being changed"
        shutil.rmtree(root / "obama")
    retrying.join(timeout=30)
    [answer] = answers
    assert answer.status_code == 409 and "does not exist any more" in answer.json()["detail"]
    assert runner.get(job.id).state == "failed" and runner.active_jobs("obama") == []
