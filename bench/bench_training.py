"""Training speed: our trainer's step (cached latents) against a plain loop that encodes every step.

Both variants run the same tiny SD1.5 model, data, LoRA rank and number of steps, each in its own
subprocess so that peak memory (max RSS) is measured per variant. Prints a table and the ratio.

    .venv/bin/python bench/bench_training.py [--resolution 256] [--steps 30] [--images 5]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def make_dataset(folder: Path, count: int) -> Path:
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    portrait = Image.fromarray(data.astronaut())
    for index in range(count):
        portrait.rotate(index * 4).save(folder / f"{index:04d}.png")
    return folder


def run_variant(variant: str, resolution: int, steps: int, images: int) -> dict:
    import torch

    from portrait_core.models.tiny import ensure_tiny_sd15
    from portrait_core.training.loop import build_setup, train_one_step
    from portrait_core.training.trainer import parse_args

    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    dataset = make_dataset(work / "data", images)
    args = parse_args(["--base-model", str(ensure_tiny_sd15()), "--dataset", str(dataset),
                       "--output-dir", str(work / "out"), "--resolution", str(resolution),
                       "--grad-accum", "1", "--rank", "8", "--alpha", "4"])
    setup = build_setup(args)
    generator = torch.Generator().manual_seed(0)
    step = train_one_step if variant == "ours" else reference_step(setup, dataset, resolution)
    step(setup, args, generator)  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        step(setup, args, generator)
    seconds = time.perf_counter() - started
    return {"variant": variant, "steps_per_s": steps / seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def reference_step(setup, dataset: Path, resolution: int):
    """The plain loop: decode, augment and VAE-encode the batch every step (no cache)."""
    import torch

    from portrait_core.training.dataset import _to_tensor, load_square
    from portrait_core.training.loop import _micro_batch_loss

    paths = sorted(dataset.glob("*.png"))
    vae = setup.components.vae

    class EncodeEveryStep:
        scaling_factor = setup.cache.scaling_factor

        def sample(self, indices, flips, generator):
            batch = torch.stack([_to_tensor(load_square(paths[int(i)], resolution)) for i in indices])
            batch = torch.where(flips[:, None, None, None], batch.flip(-1), batch)
            with torch.no_grad():
                return vae.encode(batch.to(vae.dtype)).latent_dist.sample(generator) * self.scaling_factor

    setup.cache = EncodeEveryStep()

    def step(setup, args, generator):
        loss = _micro_batch_loss(setup, args.batch_size, generator)
        setup.accelerator.backward(loss)
        setup.optimizer.step()
        setup.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--resolution", type=int, default=512, help="512: what SD1.5 training really uses")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2, help="runs per variant, alternating; best kept")
    parser.add_argument("--variant", choices=["ours", "reference"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.resolution, args.steps, args.images)))
        return
    best: dict[str, dict] = {}
    # Alternate the variants and keep each one's best run: other load on the machine then hurts both alike.
    for variant in ("ours", "reference") * args.rounds:
        output = subprocess.run([sys.executable, __file__, "--variant", variant, "--resolution",
                                 str(args.resolution), "--steps", str(args.steps), "--images", str(args.images)],
                                capture_output=True, text=True, check=True).stdout
        row = json.loads(output.strip().splitlines()[-1])
        if variant not in best or row["steps_per_s"] > best[variant]["steps_per_s"]:
            best[variant] = row
    rows = [best["ours"], best["reference"]]
    print(f"tiny SD1.5, {args.resolution} px, {args.steps} steps, batch 1, rank 8, {args.images} images, "
          f"best of {args.rounds} alternating runs")
    print(f"{'variant':<12}{'steps/s':>10}{'peak RSS MB':>14}")
    for row in rows:
        print(f"{row['variant']:<12}{row['steps_per_s']:>10.2f}{row['peak_rss_mb']:>14.0f}")
    print(f"speed-up of the cached trainer: {rows[0]['steps_per_s'] / rows[1]['steps_per_s']:.2f}x (target >= 1.5x)")


if __name__ == "__main__":
    main()
