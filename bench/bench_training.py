"""Training speed: our trainer against diffusers' own DreamBooth-LoRA example, side by side in one run.

    .venv/bin/python bench/bench_training.py --reference DIR/train_dreambooth_lora.py [--resolutions 64,256,512]
        [--steps 12] [--repeats 3] [--photos DIR]

Both trainers are launched as they are used: our product trainer (`-m portrait_core.training.trainer`)
and the example script (diffusers v0.31.0 `examples/dreambooth/train_dreambooth_lora.py`, kept outside
this project), each in a fresh process on the same tiny SD1.5 folder, the same photos, batch 1, no
gradient accumulation, LoRA rank 8 on the UNet's attention and the text encoder, constant lr 1e-4,
float32, centre crop, seed 0. `step_clock.py` records the wall and CPU clocks after every optimizer step
of either process (torch's own global optimizer hook: neither script is changed). Runs alternate
(ours, example, then example, ours, ...) so that load from elsewhere hurts both alike; every figure is
given as min / median of the repetitions, and the ratios (example ÷ ours: above 1 means ours is faster)
compare the two in the same run.

    launch -> 1st step   from starting the process to the end of the first optimizer step
    s / step, CPU s / step  over steps 2..N (the first step's one-off work is in the launch figure)

Without `--reference` only our trainer is measured and the comparison is reported as skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
COMPAT = BENCH / "reference_compat"
sys.path.insert(0, str(REPO_ROOT))

RANK = 8
PROMPT = "a photo of person"


@dataclass
class Run:
    trainer: str
    resolution: int
    launch_s: float
    s_per_step: float
    cpu_per_step: float
    peak_rss_mb: float
    note: str = ""


def make_photos(folder: Path, count: int) -> Path:
    """`count` 512 px portraits (skimage's astronaut, turned a little each time)."""
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    portrait = Image.fromarray(data.astronaut())
    for index in range(count):
        portrait.rotate(index * 4).save(folder / f"{index:04d}.png")
    return folder


def our_command(model: Path, photos: Path, out: Path, *, resolution: int, steps: int) -> list[str]:
    return ["-m", "portrait_core.training.trainer", "--base-model", str(model), "--dataset", str(photos),
            "--output-dir", str(out), "--resolution", str(resolution), "--batch-size", "1", "--grad-accum", "1",
            "--rank", str(RANK), "--alpha", str(RANK), "--max-steps", str(steps), "--steps-per-photo", "10000",
            "--validate-every", "10000", "--learning-rate", "1e-4", "--mixed-precision", "no", "--no-resume",
            "--seed", "0", "--caption", PROMPT]


def example_command(script: Path, model: Path, photos: Path, out: Path, *, resolution: int, steps: int) -> list[str]:
    return [str(script), "--pretrained_model_name_or_path", str(model), "--instance_data_dir", str(photos),
            "--instance_prompt", PROMPT, "--output_dir", str(out), "--resolution", str(resolution), "--center_crop",
            "--train_batch_size", "1", "--gradient_accumulation_steps", "1", "--learning_rate", "1e-4",
            "--lr_scheduler", "constant", "--lr_warmup_steps", "0", "--max_train_steps", str(steps),
            "--checkpointing_steps", "100000", "--train_text_encoder", "--rank", str(RANK), "--seed", "0",
            "--mixed_precision", "no"]


def real_torchvision_imports() -> bool:
    probe = subprocess.run([sys.executable, "-c", "import torchvision.transforms"], check=False, capture_output=True)
    return probe.returncode == 0


def run_once(trainer: str, command: list[str], work: Path, *, resolution: int, steps: int, lora_name: str,
             extra_path: list[Path], threads: int | None) -> Run:
    """Launch one training process under the step clock; its figures, or an error naming what failed."""
    out = work / "out"
    clock = work / "clock.jsonl"
    log_path = work / "log.txt"
    before = ["--before", "transformers_compat"] if trainer == "example" else []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(p) for p in [REPO_ROOT, *extra_path]))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    with log_path.open("w", encoding="utf-8") as log_file:
        started = time.time()
        process = subprocess.Popen([sys.executable, str(BENCH / "step_clock.py"), str(clock), *before, "--", *command],
                                   stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=work)
        _, status, usage = os.wait4(process.pid, 0)
    returncode = os.waitstatus_to_exitcode(status)
    ticks = [json.loads(line) for line in clock.read_text().splitlines()] if clock.is_file() else []
    lines = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    tail = [line for line in lines if "Error" in line][-1:] or lines[-1:] or ["(no output)"]
    if len(ticks) != steps or not (out / lora_name).is_file():
        raise SystemExit(f"{trainer} at {resolution} px: {len(ticks)} of {steps} steps, LoRA "
                         f"{'written' if (out / lora_name).is_file() else 'missing'}, exit {returncode}: {tail[0]}"
                         f" (log: {log_path})")
    note = "" if returncode == 0 else f"exit {returncode} after its LoRA was written: {tail[0][:160]}"
    return Run(trainer, resolution, launch_s=ticks[0]["wall"] - started,
               s_per_step=(ticks[-1]["wall"] - ticks[0]["wall"]) / (steps - 1),
               cpu_per_step=(ticks[-1]["cpu"] - ticks[0]["cpu"]) / (steps - 1),
               peak_rss_mb=usage.ru_maxrss / 1024, note=note)


def summary(runs: list[Run], field: str) -> tuple[float, float]:
    values = [getattr(run, field) for run in runs]
    return min(values), statistics.median(values)


def print_table(runs: list[Run], resolutions: list[int], compared: bool) -> None:
    fields = [("launch_s", "launch->1st step s"), ("s_per_step", "s / step"), ("cpu_per_step", "CPU s / step"),
              ("peak_rss_mb", "peak RSS MB")]
    header = f"{'px':>4}  {'trainer':<16}" + "".join(f"{title:>22}" for _, title in fields) + f"{'steps/s':>10}"
    print(header)
    print("-" * len(header))
    for resolution in resolutions:
        by_trainer = {name: [r for r in runs if r.trainer == name and r.resolution == resolution]
                      for name in ("ours", "example")}
        for name, group in by_trainer.items():
            if not group:
                continue
            cells = "".join(f"{'{:.3g} / {:.3g}'.format(*summary(group, key)):>22}" for key, _ in fields)
            print(f"{resolution:>4}  {name:<16}{cells}{1 / summary(group, 's_per_step')[1]:>10.2f}")
        if compared:
            cells = ""
            for key, _ in fields:
                (ours_min, ours_median), (ref_min, ref_median) = summary(by_trainer["ours"], key), \
                    summary(by_trainer["example"], key)
                cells += f"{f'{ref_min / ours_min:.2f}x / {ref_median / ours_median:.2f}x':>22}"
            print(f"{resolution:>4}  {'example / ours':<16}{cells}")
    notes = sorted({f"{r.trainer}: {r.note}" for r in runs if r.note})
    for note in notes:
        print("note:", note)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", type=Path, default=None,
                        help="diffusers v0.31.0 examples/dreambooth/train_dreambooth_lora.py, kept outside the project")
    parser.add_argument("--resolutions", default="64,256,512")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per run (>= 3)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per trainer and size (>= 3)")
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--photos", type=Path, default=None, help="a folder of photos (default: made up)")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS for both (1 keeps figures sane while other work shares the cores)")
    args = parser.parse_args()
    if args.steps < 3 or args.repeats < 1:
        parser.error("--steps must be at least 3 and --repeats at least 1")
    if args.reference is not None and not args.reference.is_file():
        parser.error(f"--reference {args.reference} is not a file")

    from portrait_core.models.tiny import ensure_tiny_sd15

    model = ensure_tiny_sd15()
    resolutions = [int(value) for value in args.resolutions.split(",")]
    root = Path(tempfile.mkdtemp(prefix="bench-train-"))
    photos = args.photos or make_photos(root / "photos", args.images)
    example_path = [COMPAT]
    compat_notes = ["diffusers 0.31's training code is run beside the WebUI's transformers 4.30.2 through "
                    "reference_compat/transformers_compat.py (the two names it needs from transformers >= 4.34)"]
    if args.reference is not None and not real_torchvision_imports():
        example_path.append(COMPAT / "no_torchvision")
        compat_notes.append("torchvision cannot be imported here: the example's Resize/CenterCrop/ToTensor/"
                            "Normalize come from reference_compat/no_torchvision (the same PIL operations)")
    trainers = ["ours", "example"] if args.reference else ["ours"]
    runs: list[Run] = []
    for repeat in range(args.repeats):
        for resolution in resolutions:
            for trainer in (trainers if repeat % 2 == 0 else trainers[::-1]):
                work = root / f"{trainer}-{resolution}-{repeat}"
                work.mkdir()
                sizes = {"resolution": resolution, "steps": args.steps}
                if trainer == "ours":
                    command = our_command(model, photos, work / "out", **sizes)
                    run = run_once(trainer, command, work, **sizes, lora_name="person.safetensors", extra_path=[],
                                   threads=args.threads)
                else:
                    command = example_command(args.reference, model, photos, work / "out", **sizes)
                    run = run_once(trainer, command, work, **sizes, lora_name="pytorch_lora_weights.safetensors",
                                   extra_path=example_path, threads=args.threads)
                print(f"  {trainer:<8}{resolution:>4} px  run {repeat + 1}: {run.s_per_step:.3f} s/step, "
                      f"launch {run.launch_s:.2f} s", file=sys.stderr, flush=True)
                runs.append(run)
    print(f"tiny SD1.5, {args.images if args.photos is None else 'given'} photos, batch 1, no accumulation, "
          f"rank {RANK} (UNet attention + text encoder), fp32, {args.steps} steps per run, "
          f"{args.repeats} interleaved repetitions, {args.threads or 'default'} threads; cells: min / median")
    print_table(runs, resolutions, compared=args.reference is not None)
    if args.reference is None:
        print("comparison with the diffusers example skipped: no --reference given "
              "(pass --reference DIR/train_dreambooth_lora.py, diffusers v0.31.0 examples/dreambooth)")
    else:
        print("ratios are example / ours: above 1 means our trainer is faster (or lighter); target >= 1.5x")
        for note in compat_notes:
            print("note:", note)


if __name__ == "__main__":
    main()
