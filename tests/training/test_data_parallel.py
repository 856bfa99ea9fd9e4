"""The trainer as 2 data-parallel processes on the CPU, started by accelerate's own launcher (gloo)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

from safetensors import safe_open

REPO_ROOT = Path(__file__).resolve().parents[2]
STEPS, CHECKPOINT_EVERY = 4, 2


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _train(launcher: list[str], model: Path, photos: Path, out: Path) -> subprocess.CompletedProcess:
    command = [*launcher, "-m", "portrait_core.training.trainer", "--base-model", str(model), "--dataset", str(photos),
               "--output-dir", str(out), "--resolution", "64", "--batch-size", "1", "--grad-accum", "2",
               "--rank", "4", "--alpha", "2", "--max-steps", str(STEPS), "--validate-every", str(CHECKPOINT_EVERY),
               "--mixed-precision", "no", "--no-resume", "--keep-checkpoints"]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)


def _lora(path: Path) -> tuple[set[str], dict[str, str]]:
    with safe_open(str(path), framework="pt") as handle:
        return set(handle.keys()), handle.metadata()


def test_two_processes_share_the_photos_average_gradients_and_one_writes(tmp_path, tiny_sd15, astronaut):
    photos = tmp_path / "photos"
    photos.mkdir()
    for index in range(3):
        astronaut.rotate(index * 5).resize((96, 96)).save(photos / f"{index:04d}.png")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--main_process_port", str(_free_port()), "--mixed_precision", "no",
              "--dynamo_backend", "no"]
    parallel = _train(launch, tiny_sd15, photos, tmp_path / "parallel")
    assert parallel.returncode == 0, parallel.stderr[-3000:]
    single = _train([sys.executable], tiny_sd15, photos, tmp_path / "single")
    assert single.returncode == 0, single.stderr[-3000:]

    # Each process trained on its own share of the photos (accelerate's split), all photos covered.
    shares = re.search(r"data parallel: 2 processes \(MULTI_CPU, gloo\); photos per process: 0: (.*); 1: (.*)",
                       parallel.stderr)
    assert shares, parallel.stderr[-3000:]
    first, second = (set(names.split(", ")) for names in shares.groups())
    assert first.isdisjoint(second) and first | second == {"0000.png", "0001.png", "0002.png"}
    # The gradients were averaged: with different photos and noise, the weights still agree at every checkpoint.
    assert parallel.stderr.count("the LoRA weights are identical in all 2 processes") == STEPS // CHECKPOINT_EVERY

    # Only the main process reported and wrote: one progress record per step, one score line per checkpoint.
    out = tmp_path / "parallel"
    progress = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    assert [r["step"] for r in progress if r["phase"] == "training"] == list(range(1, STEPS + 1))
    assert [r["phase"] for r in progress].count("done") == 1
    assert len((out / "validation.jsonl").read_text().splitlines()) == STEPS // CHECKPOINT_EVERY
    assert parallel.stdout.count("LoRA written to") == 1

    # The LoRA is the one a single process makes: same keys, same metadata (all 3 photos counted, not one share).
    parallel_keys, parallel_meta = _lora(out / "person.safetensors")
    single_keys, single_meta = _lora(tmp_path / "single" / "person.safetensors")
    assert parallel_keys == single_keys and any(key.startswith("lora_te_") for key in parallel_keys)
    assert parallel_meta == single_meta and parallel_meta["ss_num_train_images"] == "3"
