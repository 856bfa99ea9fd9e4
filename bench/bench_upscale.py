"""Super-resolution cost: Real-ESRGAN x4plus on ncnn (CPU) at two tile sizes, beside the Lanczos fallback.

Run from the repository root:

    .venv/bin/python -m bench.bench_upscale [--side 256] [--tiles 128 256] [--repeat 3]

Each measurement runs in a fresh Python process, so its peak RSS (the process's high-water mark) is its
own: the model load, the tiles in flight and the output. The configurations take turns (`--repeat` rounds,
one measurement of each per round), and the table prints min and median seconds per megapixel of output,
the peak, and each configuration's time against the first one's, all from the same run.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
from PIL import Image


def _portrait(side: int) -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut()).resize((side, side), Image.LANCZOS)


def run_one(kind: str, tile: int, side: int) -> dict:
    """One configuration in this process: {"seconds": ..., "megapixels": ..., "peak_mb": ...}."""
    image = _portrait(side)
    if kind == "lanczos":
        from portrait_core.models.superres import lanczos_upscale

        started = time.perf_counter()
        result = lanczos_upscale(image, 4)
    else:
        from portrait_core.models.superres import RealESRGAN

        backend = RealESRGAN(tile=tile)
        backend.upscale(image.resize((16, 16)))  # loads the network; not timed
        started = time.perf_counter()
        result = backend.upscale(image)
    seconds = time.perf_counter() - started
    megapixels = np.prod(result.size) / 1e6
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux
    return {"seconds": seconds, "megapixels": float(megapixels), "peak_mb": peak_mb}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=256, help="input side in px (the output is 4x)")
    parser.add_argument("--tiles", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds (each a new process)")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "TILE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_one(args.child[0], int(args.child[1]), args.side)))
        return 0
    configurations = [("Real-ESRGAN", tile) for tile in args.tiles] + [("lanczos", 0)]
    rows: dict[tuple[str, int], list[dict]] = {configuration: [] for configuration in configurations}
    for _ in range(args.repeat):
        for kind, tile in configurations:
            child = subprocess.run([sys.executable, "-m", "bench.bench_upscale", "--side", str(args.side),
                                    "--child", kind, str(tile)], capture_output=True, text=True, check=True)
            rows[(kind, tile)].append(json.loads(child.stdout.strip().splitlines()[-1]))
    print(f"input {args.side}x{args.side} px -> output {4 * args.side}x{4 * args.side} px; "
          f"{args.repeat} interleaved rounds, each measurement a new process; cells: min / median")
    print("| upscaler | tile | s per output MP | peak RSS (MB) | time vs the first row (min) |\n"
          "| --- | --- | --- | --- | --- |")
    first = None
    for (kind, tile), samples in rows.items():
        per_mp = [sample["seconds"] / sample["megapixels"] for sample in samples]
        peaks = [sample["peak_mb"] for sample in samples]
        first = min(per_mp) if first is None else first
        label = f"{tile} px" if tile else "-"
        print(f"| {kind} | {label} | {min(per_mp):.2f} / {statistics.median(per_mp):.2f} | "
              f"{min(peaks):.0f} / {statistics.median(peaks):.0f} | {min(per_mp) / first:.3f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
