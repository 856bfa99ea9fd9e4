"""`python -m portrait_core train`: prepare (optionally), queue the training job, show its progress."""

from __future__ import annotations

import argparse
import sys
import time

from portrait_core.jobs import DONE, FINISHED_STATES, Job, JobRunner
from portrait_core.params import TrainParams
from portrait_core.services.runtime import standalone_services
from portrait_core.training.trainer import eta_text

BAR_WIDTH = 30


def run_train_command(args: argparse.Namespace) -> int:
    from portrait_core.adapters.cli.main import workspace_of

    overrides = {"max_train_steps": args.max_steps, "resolution": args.resolution,
                 "validate_every": args.validate_every, "rank": args.rank, "alpha": args.alpha}
    params = TrainParams(identity=args.identity, **{k: v for k, v in overrides.items() if v is not None})
    workspace = workspace_of(args)
    if args.photos is not None:
        from portrait_core.models.superres import array_upscaler
        from portrait_core.prepare.preprocess import preprocess_folder

        report = preprocess_folder(args.photos, args.identity, root=workspace.identities, upscaler=array_upscaler())
        print(f"prepared {len(report.kept)} of {len(report.photos)} photos (reference {report.reference})")
    # The served base model (--base-model, else the tiny local one) is what a training without a name uses.
    services = standalone_services(workspace, args.base_model, sdxl=args.sdxl)
    try:
        started = services.training.start(params)
        for note in started.notes:
            print(f"note: {note}")
        job = _follow(services.runner, started.job)
    finally:
        services.close()
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
