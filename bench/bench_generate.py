"""Portrait speed on the tiny model: how much of a portrait is diffusion, and cold vs warm.

Prints, side by side in one run: the wall time of one portrait, the time spent inside its diffusion
calls, their ratio (target <= 1.10: the pipeline's own work is small), and a cold portrait (models
loaded by the call) against a warm one (target: warm >= 3x faster).

    .venv/bin/python bench/bench_generate.py [--crop-size 512] [--steps 50] [--second-steps 20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def prepare_identity(work: Path) -> Path:
    """The demo's sample person, prepared and given a briefly trained LoRA (in-process, 2 steps)."""
    from portrait_core import config
    from portrait_core.adapters.cli.demo import DEMO_IDENTITY, write_sample_photos
    from portrait_core.models.tiny import ensure_tiny_sd15
    from portrait_core.prepare.preprocess import preprocess_folder
    from portrait_core.training.trainer import main, parse_args

    root = work / "identities"
    config.configure(lora_dir=root)
    write_sample_photos(work / "photos")
    preprocess_folder(work / "photos", DEMO_IDENTITY, root=root)
    main(parse_args(["--base-model", str(ensure_tiny_sd15()), "--identity", DEMO_IDENTITY,
                     "--dataset", str(root / DEMO_IDENTITY / "dataset" / "images"),
                     "--output-dir", str(work / "run"), "--final-lora", str(root / f"{DEMO_IDENTITY}.safetensors"),
                     "--resolution", "64", "--max-steps", "2", "--validate-every", "2", "--grad-accum", "1"]))
    return root


def timed_portrait(service, params, template) -> tuple[float, float]:
    started = time.perf_counter()
    result = service.generate(params, [("template.png", template)])[0][0]
    return time.perf_counter() - started, result.diffusion_seconds


def measure(root, crop: int, steps: int, second_steps: int) -> list[tuple[str, float, float]]:
    """Cold (a new service: every model loads inside the call) then warm, for one setting."""
    from portrait_core.adapters.cli.demo import DEMO_IDENTITY, studio_template
    from portrait_core.params import GenerateParams
    from portrait_core.services.runtime import standalone_services
    from portrait_core.services.workspace import Workspace

    params = GenerateParams(identities=[DEMO_IDENTITY], seed=1, crop_size=crop, first_pass_steps=steps,
                            second_pass_steps=second_steps)
    services = standalone_services(Workspace.at(root.parent))  # the home whose identities/ `root` is
    service = services.generation
    template = studio_template()
    try:
        cold = timed_portrait(service, params, template)
        warm = timed_portrait(service, params, template)
    finally:
        services.close()
    label = f"{crop}px {steps}+{second_steps}"
    return [(f"{label} cold", *cold), (f"{label} warm", *warm)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--crop-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=50, help="first pass (reference default 50)")
    parser.add_argument("--second-steps", type=int, default=20, help="second pass (reference default 20)")
    args = parser.parse_args()
    root = prepare_identity(Path(tempfile.mkdtemp(prefix="bench-generate-")))
    # Two settings: the reference defaults (diffusion dominates, so the pipeline's overhead shows), and a
    # small fast one (model loading dominates, so what caching saves shows).
    rows = measure(root, args.crop_size, args.steps, args.second_steps) + measure(root, 128, 10, 5)
    print("\ntiny SD1.5 on this machine; template 960x960; one face")
    print(f"{'portrait':<22}{'wall s':>9}{'diffusion s':>14}{'wall/diffusion':>16}")
    for name, wall, diffusion in rows:
        print(f"{name:<22}{wall:>9.2f}{diffusion:>14.2f}{wall / diffusion:>16.3f}")
    print(f"pipeline overhead, defaults, warm: {rows[1][1] / rows[1][2]:.3f} (target <= 1.10)")
    print(f"warm vs cold, small setting: {rows[2][1] / rows[3][1]:.1f}x faster (target >= 3x); "
          f"at the defaults: {rows[0][1] / rows[1][1]:.2f}x (diffusion dominates on CPU)")


if __name__ == "__main__":
    main()
