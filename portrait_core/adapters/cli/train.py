"""`python -m portrait_core train`: prepare (optionally), queue the training job, show its progress."""

from __future__ import annotations

import argparse
import sys
import time

from portrait_core.config import settings
from portrait_core.jobs import DONE, FINISHED_STATES, Job, JobRunner
from portrait_core.params import TrainParams
from portrait_core.services.training import start_training
from portrait_core.training.trainer import eta_text

BAR_WIDTH = 30


def run_train_command(args: argparse.Namespace) -> int:
    overrides = {"max_train_steps": args.max_steps, "resolution": args.resolution,
                 "validate_every": args.validate_every, "rank": args.rank, "alpha": args.alpha,
                 "base_model": args.base_model}
    params = TrainParams(identity=args.identity, **{k: v for k, v in overrides.items() if v is not None})
    if args.photos is not None:
        from portrait_core.prepare.preprocess import preprocess_folder

        report = preprocess_folder(args.photos, args.identity, root=args.root)
        print(f"prepared {len(report.kept)} of {len(report.photos)} photos (reference {report.reference})")
    if params.base_model is None:
        print("No --base-model given: training the tiny local model. It shows the pipeline working, "
              "not a likeness; pass a real SD1.5/SDXL checkpoint for that.")
    runner = JobRunner(settings().jobs_dir)
    try:
        job = start_training(runner, params, root=args.root, sdxl=args.sdxl)
        job = _follow(runner, job)
    finally:
        runner.close()
    if job.state != DONE:
        print(f"\ntraining {job.state}: {job.error or 'stopped'}", file=sys.stderr)
        return 1
    print(f"\nLoRA: {job.result_path}")
    return 0


def _follow(runner: JobRunner, job: Job) -> Job:
    """Draw a progress bar until the job ends; Ctrl-C cancels it (the last checkpoint is kept)."""
    shown = ""
    try:
        while job.state not in FINISHED_STATES:
            time.sleep(0.5)
            job = runner.get(job.id)
            line = progress_line(job.progress)
            if line != shown:
                print("\r" + line.ljust(len(shown)), end="", flush=True)
                shown = line
    except KeyboardInterrupt:
        print("\ncancelling…", flush=True)
        runner.cancel(job.id)
        job = runner.wait(job.id, timeout=30)
    return job


def progress_line(progress: dict) -> str:
    step, total = progress.get("step") or 0, progress.get("total") or 0
    filled = BAR_WIDTH if progress.get("phase") == "done" else (int(BAR_WIDTH * step / total) if total else 0)
    parts = [f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {progress.get('phase', 'starting'):<10}"]
    if total:
        parts.append(f"step {step}/{total}")
    if progress.get("loss") is not None:
        parts.append(f"loss {progress['loss']:.4f}")
    if progress.get("eta_s") is not None:
        parts.append(f"eta {eta_text(progress['eta_s'])}")
    if progress.get("identity_score") is not None:
        parts.append(f"identity {progress['identity_score']:.3f}")
    return "  ".join(parts)
