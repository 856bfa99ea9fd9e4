"""The LoRA trainer: `parse_args(argv)` + `main(args)`, run by the job runner under `accelerate launch`.

One identity's dataset in, a kohya-format LoRA out. The VAE latents of every image and its mirror
are computed once; a step is only the trainable work (text encoder + UNet with LoRA adapters).
Every `--validate-every` steps a checkpoint is saved (atomically) and, when validation inputs are
given, scored by how well it renders the person; at the end the best checkpoints are merged.

    python -m accelerate.commands.launch -m portrait_core.training.trainer --base-model M --dataset D --output-dir O
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from portrait_core.errors import PortraitError
from portrait_core.log import configure_logging, get_logger
from portrait_core.params import TrainParams

log = get_logger("trainer")

TRAINER_VERSION = "portrait-studio-trainer/1"
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
CHECKPOINT_GLOB = "checkpoint-*.safetensors"


class TrainingCancelled(Exception):  # noqa: N818 - a signal turned into control flow, not a bug
    """SIGTERM/SIGINT arrived: stop at once; atomic writes leave only complete files behind."""


# TrainParams field -> the trainer's flag for it (and the attribute the training loop reads). The values and
# their defaults come from TrainParams alone: the job writes them to a JSON file (--params); a flag overrides.
PARAM_FLAGS = {"identity": "identity", "max_train_steps": "max_steps", "steps_per_photo": "steps_per_photo",
               "batch_size": "batch_size", "gradient_accumulation": "grad_accum", "learning_rate": "learning_rate",
               "text_encoder_lr_ratio": "text_encoder_lr_ratio", "resolution": "resolution", "rank": "rank",
               "alpha": "alpha", "validate_every": "validate_every", "merge_top": "merge_top",
               "early_stop_patience": "early_stop_patience", "seed": "seed"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="portrait_core.training.trainer", description=__doc__.split("\n")[0])
    parser.add_argument("--base-model", type=Path, required=True, help="diffusers folder or .safetensors")
    parser.add_argument("--dataset", type=Path, required=True, help="folder of training images (+ .txt captions)")
    parser.add_argument("--output-dir", type=Path, required=True, help="checkpoints, progress and validation")
    parser.add_argument("--final-lora", type=Path, default=None, help="where the merged LoRA goes")
    parser.add_argument("--params", type=Path, default=None, help="TrainParams as JSON (what a job writes)")
    for name, attribute in PARAM_FLAGS.items():
        parser.add_argument("--" + attribute.replace("_", "-"), dest=attribute, default=None,
                            help=f"TrainParams.{name} (overrides --params)")
    parser.add_argument("--caption", default=None, help="caption for images without a .txt (default: a photo of ID)")
    parser.add_argument("--validation-dir", type=Path, default=None,
                        help="the identity's prepared dataset folder (manifest.json + embeddings.json)")
    parser.add_argument("--validation-images", type=int, default=2, help="templates rendered per validation")
    parser.add_argument("--validation-steps", type=int, default=20)
    parser.add_argument("--validation-denoise", type=float, default=0.7,
                        help="how much of the template face is repainted (identity must come from the LoRA)")
    parser.add_argument("--face-reference", type=Path, default=None,
                        help="where to copy the best validation render (the face reference for generation)")
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep checkpoint-N files after the merge")
    parser.add_argument("--mixed-precision", choices=["auto", "no", "fp16", "bf16"], default="auto")
    parser.add_argument("--no-resume", action="store_true", help="ignore checkpoints already in --output-dir")
    parser.add_argument("--loglevel", default="INFO")
    args = parser.parse_args(argv)
    params = train_params(args)
    for name, attribute in PARAM_FLAGS.items():
        setattr(args, attribute, getattr(params, name))
    return args


def train_params(args: argparse.Namespace) -> TrainParams:
    """The --params file with the flags given on top, validated as TrainParams (its errors name the field)."""
    values = json.loads(args.params.read_text(encoding="utf-8")) if args.params else {"identity": "person"}
    values.update({name: getattr(args, attribute) for name, attribute in PARAM_FLAGS.items()
                   if getattr(args, attribute) is not None})
    return TrainParams.parse_obj(values)


def planned_steps(n_photos: int, steps_per_photo: int, max_steps: int) -> int:
    """EasyPhoto's rule: more photos, more steps, up to a ceiling."""
    return max(1, min(n_photos * steps_per_photo, max_steps))


class ProgressLog:
    """Appends one JSON object per line to progress.jsonl; readers poll the file.

    `enabled=False` (the other processes of a data-parallel run) writes nothing: the main process reports.
    """

    def __init__(self, path: Path, enabled: bool = True):
        self.path = path
        self.enabled = enabled
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, phase: str, **fields) -> None:
        if not self.enabled:
            return
        record = {"phase": phase, "time": round(time.time(), 3), **fields}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


@dataclass
class TrainingState:
    step: int = 0
    total: int = 0
    losses: list[float] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    first_step: int = 0
    best_score: float | None = None
    validations_without_gain: int = 0

    def eta_seconds(self) -> float | None:
        done = self.step - self.first_step
        if done <= 0:
            return None
        return (time.perf_counter() - self.started) / done * (self.total - self.step)


def main(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    # Under `accelerate launch --num_processes N` every process runs this; only the main one reports and writes.
    is_main = PartialState().is_main_process
    configure_logging(args.loglevel if is_main else "WARNING")
    previous_handlers = _install_cancel_handlers()
    progress = ProgressLog(args.output_dir / "progress.jsonl", enabled=is_main)
    try:
        from portrait_core.training.loop import run_training

        final = run_training(args, progress)
    except TrainingCancelled:
        progress.write("cancelled")
        print("training cancelled; the last complete checkpoint is kept", file=sys.stderr)
        return 130
    except PortraitError as error:
        progress.write("error", error=str(error))
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
    progress.write("done", lora=str(final))
    if is_main:
        print(f"LoRA written to {final}")
    return 0


def _install_cancel_handlers() -> dict:
    """SIGTERM/SIGINT become TrainingCancelled; returns the handlers to put back afterwards."""
    def cancel(signum, frame):
        raise TrainingCancelled(signal.Signals(signum).name)

    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    for signum in previous:
        signal.signal(signum, cancel)
    return previous


def default_rank_alpha(family: str, rank: int | None, alpha: float | None) -> tuple[int, float]:
    from portrait_core.models.families import family as model_family

    default_rank, default_alpha = model_family(family).lora_rank, model_family(family).lora_alpha
    return (rank or default_rank, alpha if alpha is not None else (default_alpha if rank is None else rank / 2))


def eta_text(seconds: float | None) -> str:
    if seconds is None or math.isinf(seconds):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s"


if __name__ == "__main__":
    sys.exit(main(parse_args()))
