"""Training end to end on the tiny model: a real accelerate subprocess, job queue, cancel, crash, resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from portrait_core.hosts.diffusers_host import DiffusersHost
from portrait_core.jobs import CANCELLED, DONE, FAILED, JobRunner
from portrait_core.params import TrainParams
from portrait_core.services.identities import IdentityBusyError

KOHYA_KEY = r"lora_(unet|te)_[a-z0-9_]+\.(lora_down\.weight|lora_up\.weight|alpha)"


def _params(**overrides) -> TrainParams:
    values = {"identity": "obama", "max_train_steps": 20, "resolution": 64, "validate_every": 10, "rank": 4,
              "alpha": 2.0, "gradient_accumulation": 1, "learning_rate": 1e-3}
    return TrainParams(**(values | overrides))


def _start(services_at, runner, root, lora_dir, params: TrainParams):
    """Queue a training through the TrainingService, as every door does (the tiny model is the served one)."""
    return services_at(root, lora_dir=lora_dir, runner=runner).training.start(params).job


def _progress(job) -> list[dict]:
    path = Path(job.output_dir) / "progress.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _wait_for(condition, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    raise AssertionError("condition not reached in time")


def test_full_run_makes_a_kohya_lora_that_changes_the_image(prepared_obama, runner, lora_dir, services_at,
                                                            tiny_sd15):
    import re

    first = _start(services_at, runner, prepared_obama, lora_dir, _params())
    with pytest.raises(IdentityBusyError, match=f"job {first.id}"):  # one training per identity, whoever asks
        _start(services_at, runner, prepared_obama, lora_dir, _params(max_train_steps=2, validate_every=2))
    assert [job.id for job in runner.jobs()] == [first.id]
    # The trainer's settings come from the TrainParams the request gave, as one file (no flag repeats them).
    command = runner.get(first.id).command
    params_file = Path(command[command.index("--params") + 1])
    assert json.loads(params_file.read_text())["rank"] == 4 and "--rank" not in command
    job = runner.wait(first.id, timeout=300)
    assert job.state == DONE, job.error
    lora = Path(job.result_path)
    assert lora == lora_dir / "obama.safetensors" and lora.is_file()
    with safe_open(str(lora), "pt") as handle:
        keys, metadata = list(handle.keys()), handle.metadata()
        alphas = {handle.get_tensor(k).item() for k in keys if k.endswith(".alpha")}
    assert keys and all(re.fullmatch(KOHYA_KEY, key) for key in keys)
    assert any(k.startswith("lora_te_") for k in keys) and any("attn2_to_k" in k for k in keys)
    assert alphas == {2.0}, "alpha must be written as trained, not reset to the rank"
    assert metadata["ss_network_dim"] == "4" and metadata["ss_base_model_version"] == "sd_v1"
    assert metadata["portrait_studio.identity"] == "obama" and metadata["ss_num_train_images"] == "5"
    phases = [record["phase"] for record in _progress(job)]
    assert phases.count("checkpoint") == 2 and phases[-1] == "done"
    # The VAE pre-encoding (minutes on a CPU at 512 px) reports its own steps, between loading and training.
    encoding = [record for record in _progress(job) if record["phase"] == "encoding"]
    # 5 photos + mirrors, reported image by image (on a CPU they are encoded one at a time)
    assert [(r["step"], r["total"]) for r in encoding] == [(done, 10) for done in range(11)]
    assert encoding[-1]["eta_s"] == 0 and phases.index("loading") < phases.index("encoding") < phases.index("training")
    assert not list(Path(job.output_dir).glob("checkpoint-*.safetensors")), "checkpoints left after the merge"
    host = DiffusersHost(tiny_sd15, lora_dir=lora_dir)
    plain = np.asarray(host.txt2img("a photo of obama", steps=3, size=(64, 64), seed=3), dtype=float)
    styled = np.asarray(host.txt2img("a photo of obama", steps=3, size=(64, 64), seed=3,
                                     lora=[("obama", 1.0)]), dtype=float)
    assert np.abs(plain - styled).mean() > 0.5


def test_cancel_keeps_the_previous_lora_and_leaves_no_temp_files(prepared_obama, runner, lora_dir, services_at):
    lora_dir.mkdir(parents=True)
    previous = lora_dir / "obama.safetensors"
    previous.write_bytes(b"the LoRA from last week")
    job = _start(services_at, runner, prepared_obama, lora_dir, _params(max_train_steps=2000, validate_every=3))
    _wait_for(lambda: any(r.get("phase") == "checkpoint" for r in _safe_progress(runner, job.id)))
    started = time.monotonic()
    runner.cancel(job.id)
    job = runner.wait(job.id, timeout=60)
    assert job.state == CANCELLED
    assert time.monotonic() - started < 15, "cancel took too long"
    assert previous.read_bytes() == b"the LoRA from last week"
    output = Path(job.output_dir)
    assert list(output.glob("checkpoint-*.safetensors")), "the last good checkpoint was not kept"
    leftovers = [p.name for folder in (output, lora_dir) for p in folder.iterdir() if ".tmp" in p.name]
    assert leftovers == []


def _safe_progress(runner, job_id):
    job = runner.get(job_id)
    path = Path(job.output_dir) / "progress.jsonl"
    return _progress(job) if path.is_file() else []


def test_trainer_crash_reports_the_trainers_own_message(prepared_obama, tmp_path, runner, lora_dir, services_at):
    root = tmp_path / "broken-root"
    shutil.copytree(prepared_obama, root)
    (root / "obama" / "dataset" / "images" / "0001.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    job = runner.wait(_start(services_at, runner, root, lora_dir, _params()).id, timeout=300)
    assert job.state == FAILED
    assert "0001.png" in job.error and "failed to obtain" not in job.error.lower()


def test_killed_trainer_resumes_from_its_checkpoint(prepared_obama, runner, lora_dir, services_at):
    job = _start(services_at, runner, prepared_obama, lora_dir, _params(max_train_steps=30, validate_every=10))
    checkpoint = lambda: list(Path(runner.get(job.id).output_dir).glob("checkpoint-10.safetensors"))  # noqa: E731
    _wait_for(checkpoint)
    os.killpg(runner._process.pid, signal.SIGKILL)  # a crash: no chance to clean up
    assert runner.wait(job.id, timeout=60).state == FAILED
    runner.retry(job.id)
    job = runner.wait(job.id, timeout=300)
    assert job.state == DONE, job.error
    records = _progress(job)
    restart = max(i for i, record in enumerate(records) if record["phase"] == "loading")
    first_step_after = next(r["step"] for r in records[restart:] if r["phase"] == "training")
    assert first_step_after == 11
    trainer_log = (Path(job.output_dir) / "trainer.log").read_text(encoding="utf-8")
    assert "resuming from checkpoint-10.safetensors (optimizer state restored)" in trainer_log
    assert not list(Path(job.output_dir).glob("checkpoint-*")), "checkpoints and optimizer states are removed"


def test_jobs_survive_a_restart_of_the_runner(tmp_path, prepared_obama, lora_dir, services_at, tiny_sd15):
    first_runner = JobRunner(tmp_path / "jobs")
    job = _start(services_at, first_runner, prepared_obama, lora_dir, _params(max_train_steps=12, validate_every=6))
    _wait_for(lambda: list(Path(first_runner.get(job.id).output_dir).glob("checkpoint-6.safetensors")))
    first_runner.close()  # the app shuts down mid-training
    second_runner = JobRunner(tmp_path / "jobs")
    try:
        assert second_runner.wait(job.id, timeout=300).state == DONE
    finally:
        second_runner.close()


KILLED_SERVER = """
import sys, time
from pathlib import Path
from portrait_core.jobs import JobRunner
from portrait_core.params import TrainParams
from portrait_core.services.runtime import standalone_services
from portrait_core.services.workspace import Workspace
home, identities, lora_dir, model = map(Path, sys.argv[1:5])
runner = JobRunner(home / "jobs")
services = standalone_services(Workspace(home, lora_dir, identities), model, runner=runner)
params = TrainParams(identity="obama", max_train_steps=30, resolution=64, validate_every=10, rank=4, alpha=2.0,
                     gradient_accumulation=1, learning_rate=1e-3)
print(services.training.start(params).job.id, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads process states from /proc")
def test_a_server_killed_mid_training_resumes_with_one_trainer_and_the_old_lora_kept(tmp_path, prepared_obama,
                                                                                   tiny_sd15):
    import subprocess
    import sys

    from portrait_core.models.checkpoints.loading import load_components
    from tests.lora_factory import random_lora_for

    home, identities, lora_dir = tmp_path / "home", tmp_path / "identities", tmp_path / "Lora"
    shutil.copytree(prepared_obama, identities)
    lora_dir.mkdir()
    parts = load_components(tiny_sd15)
    previous = random_lora_for({"unet": parts.unet, "text_encoder": parts.text_encoder},
                               lora_dir / "obama.safetensors").read_bytes()
    server = subprocess.Popen([sys.executable, "-c", KILLED_SERVER, str(home), str(identities), str(lora_dir),
                               str(tiny_sd15)], cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE,
                              text=True)
    orphan = None
    try:
        job_id = server.stdout.readline().strip()
        job_file = home / "jobs" / f"{job_id}.json"
        output_dir = Path(json.loads(job_file.read_text())["output_dir"])
        _wait_for((output_dir / "checkpoint-10.safetensors").is_file, timeout=240)
        orphan = json.loads(job_file.read_text())["trainer"]["pid"]
        server.send_signal(signal.SIGKILL)  # no shutdown: the trainer (its own session) keeps running
        server.wait(10)
        assert _alive(orphan), "the trainer outlives the killed server: the case under test"
        runner = JobRunner(home / "jobs")  # the server starts again
        try:
            while (job := runner.get(job_id)).state not in (DONE, FAILED, CANCELLED):
                trainer = job.trainer or {}
                if trainer.get("pid") not in (None, orphan):
                    assert not _alive(orphan), "two trainers run in one folder"
                if (lora_dir / "obama.safetensors").read_bytes() != previous:  # then only the finished merge
                    with safe_open(str(lora_dir / "obama.safetensors"), "pt") as lora:
                        assert "portrait_studio.merged_from" in lora.metadata(), "a LoRA that is not the merge"
                time.sleep(0.2)
            assert job.state == DONE, job.error
        finally:
            runner.close()
        assert not _alive(orphan)
        assert (lora_dir / "obama.safetensors").read_bytes() != previous, "the new LoRA replaced the old one"
        records = _progress(job)
        restart = max(i for i, record in enumerate(records) if record["phase"] == "loading")
        resumed_at = next(r["step"] for r in records[restart:] if r["phase"] == "training")
        assert resumed_at > 10 and (resumed_at - 1) % 10 == 0, f"resumed at step {resumed_at}, not after a checkpoint"
    finally:
        server.kill()
        server.wait(10)
        if orphan and _alive(orphan):
            os.killpg(orphan, signal.SIGKILL)
